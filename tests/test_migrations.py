"""The migrations build the schema the tables describe, on SQLite and on PostgreSQL; schema/registry.sql
and schema/registry.postgres.sql are their output; the fast path (no alembic import) knows the newest
revision. Every database test runs on both ([sqlite] / [postgres])."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from hubtool.errors import HubError
from hubtool.format.header import read_header
from hubtool.registry import Catalog, db, migrate
from hubtool.registry.blobs import blob_location
from hubtool.registry.schema_dump import dump_schema
from hubtool.registry.tables import metadata

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schema" / "registry.sql"
PG_SCHEMA_FILE = SCHEMA_FILE.with_name("registry.postgres.sql")


def test_known_head_is_the_newest_migration():
    assert db.SCHEMA_HEAD == migrate.script_head()


def test_opening_an_empty_database_upgrades_it_to_head(tmp_path, empty_catalog_url):
    url = empty_catalog_url
    engine = db.make_engine(url)
    assert db.stored_revision(engine) is None
    Catalog(url, blobs=tmp_path / "blobs").close()
    assert db.stored_revision(engine) == db.SCHEMA_HEAD
    tables = set(inspect(engine).get_table_names())
    assert {"experts", "metrics", "expert_tags", "expert_tasks", "aliases", "lineage", "tasks"} <= tables
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        else:  # reads see one snapshot; timestamps come back in UTC
            assert conn.exec_driver_sql("SHOW transaction_isolation").scalar() == "repeatable read"
            assert conn.exec_driver_sql("SHOW TimeZone").scalar() == "UTC"
    with db.write_transaction(engine) as conn:  # writes see every commit made while they waited
        if engine.dialect.name == "postgresql":
            assert conn.exec_driver_sql("SHOW transaction_isolation").scalar() == "read committed"
    engine.dispose()


def test_migrations_match_the_table_definitions(tmp_path, empty_catalog_url):
    engine = db.make_engine(empty_catalog_url)
    migrate.ensure_schema(engine, blobs=tmp_path / "blobs")
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    engine.dispose()
    assert diff == []


def test_schema_file_is_in_sync_with_the_migrations():
    assert SCHEMA_FILE.read_text() == dump_schema(), (
        "schema/registry.sql is stale: python -m hubtool.registry.schema_dump > schema/registry.sql"
    )


def test_postgres_schema_file_is_in_sync_with_the_migrations(pg_url):
    assert PG_SCHEMA_FILE.read_text() == dump_schema(pg_url), (
        "schema/registry.postgres.sql is stale: python tests/postgres.py schema > schema/registry.postgres.sql"
    )


def test_a_catalog_newer_than_this_hubtool_is_refused(tmp_path, empty_catalog_url):
    url = empty_catalog_url
    Catalog(url, blobs=tmp_path / "blobs").close()
    engine = db.make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(HubError, match=r"'9999' \(table alembic_version\) is not one this hubtool knows"):
        Catalog(url, blobs=tmp_path / "blobs")


def write_0001_catalog(url: str, blobs: Path, path: Path) -> None:
    """A catalog as hubtool at schema 0001 left it: the 0001 migration only, then one expert (qa@1,
    with a task, tag, metrics, an alias and a parent edge) written the way 0001's register() did."""
    engine = db.make_engine(url)
    migrate.upgrade(engine, "0001")
    header = read_header(path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    (blobs / blob_location(sha)).parent.mkdir(parents=True)
    shutil.copyfile(path, blobs / blob_location(sha))
    expert = {
        "name": "qa", "version": 1, "kind": header["kind"], "task": "qa", "base_model": header["base_model"],
        "nnz": sum(int(w["nnz"]) for w in header["weights"].values()), "bytes": path.stat().st_size,
        "sha256": sha, "blob": blob_location(sha), "created_at": "2026-11-25 10:00:00.000000",
        "config": json.dumps({"lr": 0.001}),
    }  # fmt: skip
    with engine.begin() as conn:
        conn.execute(
            text(f"INSERT INTO experts ({', '.join(expert)}) VALUES ({', '.join(':' + k for k in expert)})"),
            expert,
        )
        conn.execute(text("INSERT INTO expert_names VALUES ('qa', 1)"))
        conn.execute(text("INSERT INTO expert_tasks VALUES (1, 'qa')"))
        conn.execute(text("INSERT INTO expert_tags VALUES (1, 'demo')"))
        conn.execute(text("INSERT INTO metrics VALUES (1, 'rougeL', 'qa', 31.5), (1, 'em', 'qa', 0.25)"))
        conn.execute(text("INSERT INTO aliases VALUES ('qa', 'best', 1)"))
        conn.execute(text("INSERT INTO lineage VALUES (1, 'seed@2', 'init', NULL)"))
    engine.dispose()


def test_a_0001_catalog_is_upgraded_with_its_data_intact(tmp_path, packed, empty_catalog_url):
    url, blobs = empty_catalog_url, tmp_path / "blobs"
    path = packed("qa", "qa", seed=4)
    write_0001_catalog(url, blobs, path)
    engine = db.make_engine(url)
    assert db.stored_revision(engine) == "0001"
    assert "base_metrics" not in inspect(engine).get_table_names()

    with Catalog(url, blobs=blobs) as cat:
        assert db.stored_revision(engine) == db.SCHEMA_HEAD == "0006"
        assert "base_metrics" in inspect(engine).get_table_names()
        rec = cat.get("qa@best")
        assert (rec.ref, rec.tasks, rec.tags, rec.aliases) == ("qa@1", ["qa"], ["demo"], ["best"])
        assert rec.metrics == {"qa": {"em": 0.25, "rougeL": 31.5}} and rec.config == {"lr": 0.001}
        assert cat.lineage("qa")["parents"] == [
            {"ref": "seed@2", "role": "init", "weight": None, "present": False}
        ]
        assert cat.load("qa").nnz == rec.nnz and cat.verify().ok
        # The old expert gains against baselines recorded after the upgrade; versions carry on.
        cat.set_base_metrics(rec.base_model, "qa", {"rougeL": 20.0})
        assert cat.gains("qa") == {"qa": {"rougeL": 11.5}}
        assert cat.register(packed("qa", "qa", seed=5)).version == 2
    engine.dispose()


def test_0004_renames_the_full_delta_kind(tmp_path, packed, empty_catalog_url):
    """Rows registered under the old name "full-delta" read as "full" after the upgrade (one vocabulary)."""
    url, blobs = empty_catalog_url, tmp_path / "blobs"
    write_0001_catalog(url, blobs, packed("qa", "qa", seed=4))
    engine = db.make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE experts SET kind = 'full-delta'"))
    engine.dispose()
    with Catalog(url, blobs=blobs) as cat:
        assert cat.get("qa@1").kind == "full"
        assert [r.ref for r in cat.list(kind="full")] == ["qa@1"]


def test_counts_past_32_bits_fit(tmp_path, catalog_url, packed):
    """nnz of a full delta of a 7B model and the bytes of a > 2 GiB blob overflow a 32-bit INTEGER
    (PostgreSQL's); the catalog keeps them exactly on both databases."""
    with Catalog(catalog_url, blobs=tmp_path / "blobs") as cat:
        rec = cat.register(packed("big"))
        with cat.engine.begin() as conn:
            conn.execute(text("UPDATE experts SET nnz = :n, bytes = :b"), {"n": 7 * 10**9, "b": 5 * 2**30})
        assert (cat.get(rec.ref).nnz, cat.get(rec.ref).bytes) == (7 * 10**9, 5 * 2**30)
