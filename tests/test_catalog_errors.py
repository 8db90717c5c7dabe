"""A catalog that can't work is one clean error line, exit 1, through the real `hub` in a subprocess: corrupt,
foreign, stale, newer, read-only and directory catalog files, bad `--catalog` URLs, a missing driver, an
unreachable server, a PostgreSQL database that is missing, foreign or read-only for the role. Each line
names the catalog (a file by its path, a server by its URL with the password masked) and says what was
expected; never SQLAlchemy's text, a traceback or the password."""

from __future__ import annotations

import importlib.util
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import text
from test_cli import hub, ok, one_line_error

from hubtool.registry import Catalog, db

SECRET = "s3cret-pw"


def clean_failure(result, *words: str) -> str:
    """exit 1 (a user's error, not exit 2's internal one), one line, no SQLAlchemy text, no password."""
    line = one_line_error(result, *words)
    assert result.returncode == 1, line
    for leak in ("sqlalche.me", "sqlalchemy", "[SQL:", "Background on this error", SECRET):
        assert leak not in result.stderr + result.stdout, line
    return line


def check_all(cases: list[tuple[list, tuple[str, ...]]]) -> list[str]:
    """Run each case's `hub ARGS` (four at a time: each is a fresh interpreter) and check it failed
    cleanly with its words; the error lines, in order."""
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda case: hub(*case[0]), cases))
    return [clean_failure(result, *words) for result, (_, words) in zip(results, cases)]


def sqlite_file(path: Path, *statements: str) -> str:
    conn = sqlite3.connect(path)
    for sql in statements:
        conn.execute(sql)
    conn.commit()
    conn.close()
    return f"sqlite:///{path}"


def a_catalog(path: Path, packed) -> str:
    url = f"sqlite:///{path}"
    with Catalog(url, blobs=path.parent / "blobs") as cat:
        cat.register(packed("qa"))
    return url


def test_bad_catalog_files(hub_home, tmp_path, packed):
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(os.urandom(8192))
    foreign = sqlite_file(
        tmp_path / "foreign.db", "CREATE TABLE users (id INTEGER)", "CREATE TABLE orders (id INT)"
    )
    other_app = sqlite_file(tmp_path / "other-app.db", "CREATE TABLE alembic_version (version_num VARCHAR(32))",
                            "INSERT INTO alembic_version VALUES ('ab12cd34')", "CREATE TABLE widgets (id INT)")  # fmt: skip
    newer = a_catalog(tmp_path / "newer" / "registry.db", packed)
    sqlite_file(tmp_path / "newer" / "registry.db", "UPDATE alembic_version SET version_num = '9999'")
    # Stale: the revision says 0002 but the tables are newer (restored from a backup, or edited).
    stale = a_catalog(tmp_path / "stale" / "registry.db", packed)
    sqlite_file(tmp_path / "stale" / "registry.db", "UPDATE alembic_version SET version_num = '0002'")
    # Drift: the revision is the newest but a table lost a column.
    drift = a_catalog(tmp_path / "drift" / "registry.db", packed)
    sqlite_file(tmp_path / "drift" / "registry.db", "ALTER TABLE experts DROP COLUMN value_dtype")
    folder = tmp_path / "a-folder"
    folder.mkdir()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")

    check_all([
        (["list", "--catalog", f"sqlite:///{corrupt}"], (str(corrupt), "not a SQLite database", "expected")),
        (["list", "--catalog", foreign], ("foreign.db", "not a hubtool catalog", "orders, users", "expected")),
        (["list", "--catalog", other_app], ("other-app.db", "not a hubtool catalog", "'ab12cd34'")),
        (["list", "--catalog", newer], ("registry.db", "'9999' (table alembic_version) is not one this hubtool",
                                         "upgrade hubtool")),
        (["list", "--catalog", stale], ("stale/registry.db", "from revision 0002", "expected the tables")),
        (["list", "--catalog", drift], ("drift/registry.db", "don't match", "value_dtype", "expected")),
        (["list", "--catalog", f"sqlite:///{folder}"], (str(folder), "is a directory", "registry.db")),
        (["list", "--catalog", f"sqlite:///{blocker}/sub/registry.db"], (str(blocker), "can't create", "expected")),
    ])  # fmt: skip
    assert corrupt.stat().st_size == 8192  # untouched
    tables = sqlite3.connect(tmp_path / "foreign.db").execute("SELECT name FROM sqlite_master").fetchall()
    assert sorted(tables) == [("orders",), ("users",)]  # nothing was migrated into someone else's file


def test_a_read_only_catalog_lists_but_refuses_writes_cleanly(hub_home, tmp_path, packed):
    path = tmp_path / "ro" / "registry.db"
    a_catalog(path, packed)
    # SQLite's read-only open: what a file without write permission gets (root ignores permission bits,
    # so the URI says it instead).
    url = f"sqlite:///file:{path}?mode=ro&uri=true"
    assert "qa@1" in ok(hub("list", "--catalog", url))
    clean_failure(hub("import", packed("qa", seed=2), "--catalog", url), str(path), "read-only", "expected")
    clean_failure(hub("rm", "qa@1", "--yes", "--catalog", url), str(path), "read-only")
    with Catalog(f"sqlite:///{path}", blobs=path.parent / "blobs") as cat:  # still there, unchanged
        assert [r.ref for r in cat.list()] == ["qa@1"] and cat.verify().ok


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes through permission bits; the mode=ro test covers it"
)
def test_read_only_permissions_on_the_file_and_its_folder(hub_home, tmp_path, packed):
    path = tmp_path / "ro" / "registry.db"
    url = a_catalog(path, packed)
    path.chmod(0o444)
    try:
        clean_failure(hub("import", packed("qa", seed=2), "--catalog", url), str(path), "read-only")
    finally:
        path.chmod(0o644)
    path.parent.chmod(0o555)
    try:
        clean_failure(hub("import", packed("qa", seed=3), "--catalog", url), str(path))
    finally:
        path.parent.chmod(0o755)


def test_bad_urls_and_missing_drivers(hub_home):
    missing = next(d for m, d in (("MySQLdb", "mysql"), ("pymssql", "mssql+pymssql"), ("oracledb", "oracle"))
                   if importlib.util.find_spec(m) is None)  # fmt: skip
    lines = check_all([
        (["list", "--catalog", "foo://"], ("'foo://'", "unknown database kind 'foo'", "sqlite:///")),
        (["list", "--catalog", "not a url"], ("'not a url'", "expected a SQLAlchemy URL", "postgresql+psycopg://")),
        (["list", "--catalog", "/some/path/registry.db"], ("/some/path/registry.db", "sqlite:///")),
        (["list", "--catalog", f"{missing}://me:{SECRET}@localhost/db"], ("is not installed", "me:***@localhost")),
        # Nothing listens on port 1; a name that can't resolve (.invalid never does).
        (["list", "--catalog", f"postgresql+psycopg://me:{SECRET}@127.0.0.1:1/db"],
         ("postgresql+psycopg://me:***@127.0.0.1:1/db", "can't connect", "Connection refused", "expected a reachable")),
        (["list", "--catalog", "postgresql+psycopg://nohost.invalid/db"], ("nohost.invalid", "can't connect")),
    ])  # fmt: skip
    assert len(lines) == 6
    clean_failure(hub("list", HUB_CATALOG="foo://"), "unknown database kind 'foo'")  # the variable too


def test_postgres_catalog_errors(hub_home, pg_server, packed):
    base = pg_server.url("postgres").rsplit("/", 1)[0]  # postgresql+psycopg://postgres@127.0.0.1:PORT
    with_password = base.replace("postgres@", f"postgres:{SECRET}@")
    foreign = pg_server.create_database()
    engine = db.make_engine(foreign)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE invoices (id INT)"))
    engine.dispose()
    newer = pg_server.create_database(migrated=True)
    engine = db.make_engine(newer)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    # A role that may only read: listing works, removing says what the role lacks.
    url = pg_server.create_database(migrated=True)
    with Catalog(url, blobs=hub_home / "blobs") as cat:
        cat.register(packed("qa"))
    pg_server.admin("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'reader') "
                    "THEN CREATE ROLE reader LOGIN; END IF; END $$")  # fmt: skip
    engine = db.make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("GRANT SELECT ON ALL TABLES IN SCHEMA public TO reader"))
    engine.dispose()
    reader = f"{base.replace('postgres@', f'reader:{SECRET}@')}/{url.rsplit('/', 1)[1]}"

    check_all([
        (["list", "--catalog", f"{with_password}/no_such_db"], ("postgres:***@", "no_such_db", "does not exist")),
        (["list", "--catalog", foreign], (foreign, "not a hubtool catalog", "invoices", "expected")),
        (["list", "--catalog", newer], (newer, "'9999' (table alembic_version) is not one this hubtool knows")),
        (["rm", "qa@1", "--yes", "--catalog", reader], ("reader:***@", "permission denied", "expected a database role")),
    ])  # fmt: skip
    assert "qa@1" in ok(hub("list", "--catalog", reader))
