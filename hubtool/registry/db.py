"""Engine set-up, write transactions, the schema check and readable errors for the catalog database.

SQLite is the default and gets special care so that many processes can share one catalog:
  - WAL: readers never block the writer and vice versa;
  - busy_timeout: a writer waits for the lock instead of failing at once;
  - BEGIN IMMEDIATE for write transactions: the write lock is taken up front, so two writers never
    both read "last version = 3" and then collide when upgrading their read locks (which SQLite
    answers with an immediate "database is locked", no matter the timeout);
  - a bounded retry with jitter on anything still reported as locked or busy.
PostgreSQL gets the same semantics: a write transaction runs at READ COMMITTED and first takes one
transaction-scoped advisory lock (WRITE_LOCK), the counterpart of BEGIN IMMEDIATE, so writers run one
after another and each statement after the lock sees every earlier commit; reads run at REPEATABLE READ,
one snapshot per transaction, as a deferred BEGIN gives on SQLite. The unique (name, version) constraint
plus the retry (unique violations, serialization failures, deadlocks) stay as the second line of defence.

Every database failure a user can cause (a bad URL, a missing driver, an unreachable server, a corrupt,
foreign, newer, read-only or directory catalog) leaves here as one HubError line naming the catalog,
with its password masked (catalog_error).
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError, OperationalError

from hubtool.errors import HubError, shown

# The newest migration (declared in migrations/__init__.py; tests/test_migrations.py checks alembic agrees):
# comparing to it lets an up-to-date catalog open without importing alembic (migrate.ensure_schema).
from hubtool.registry.migrations import SCHEMA_HEAD  # noqa: F401  (read as db.SCHEMA_HEAD)

BUSY_TIMEOUT_MS = 30_000
RETRIES = 8
PG_CONNECT_TIMEOUT_S = 10  # an unreachable server fails in seconds, not after the OS's TCP timeout
# pg_advisory_xact_lock key of the catalog's write lock ("hubcat" in ASCII); advisory locks are per
# database, so catalogs sharing one server never wait on each other.
WRITE_LOCK = 0x687562636174
# PostgreSQL SQLSTATEs worth another try: serialization failure, deadlock, lock not available.
_PG_TRANSIENT = {"40001", "40P01", "55P03"}
_PG_UNDEFINED_TABLE = "42P01"

URL_EXAMPLES = "sqlite:///path/to/registry.db or postgresql+psycopg://user@host:5432/dbname"

T = TypeVar("T")


def mask(url: str | URL) -> str:
    """The URL as it may appear in a message: the password as ***, even when the URL does not parse."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)


def describe(url: str | URL) -> str:
    """How messages name a catalog: a SQLite catalog by its file (absolute), any other by its URL with
    the password masked."""
    parsed = url if isinstance(url, URL) else make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return str(Path(parsed.database.removeprefix("file:")).expanduser().absolute())
    return mask(parsed)


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except ArgumentError:
        raise HubError(
            f"catalog URL {mask(url)!r}: expected a SQLAlchemy URL such as {URL_EXAMPLES}"
        ) from None


def make_engine(url: str) -> Engine:
    """An engine for the catalog at `url`; a HubError for a URL, driver or path that can't work."""
    parsed = _parse(url)
    backend = parsed.get_backend_name()
    try:
        if backend == "sqlite":
            return _sqlite_engine(parsed)
        if backend == "postgresql":
            return _postgres_engine(parsed)
        return create_engine(parsed, pool_pre_ping=True)
    except NoSuchModuleError:
        raise HubError(
            f"catalog URL {mask(parsed)!r}: unknown database kind {parsed.drivername!r}; expected {URL_EXAMPLES}"
        ) from None
    except ImportError as err:  # the dialect is known but its driver module is not installed
        raise HubError(
            f"catalog URL {mask(parsed)!r}: the driver for {parsed.drivername!r} is not installed "
            f"({err.name or err}); for PostgreSQL use postgresql+psycopg://... with the 'postgres' extra: "
            "pip install 'hubtool[postgres]'"
        ) from None


def _sqlite_engine(parsed: URL) -> Engine:
    if parsed.database and parsed.database != ":memory:" and not parsed.query.get("uri"):
        path = Path(parsed.database).expanduser()
        if path.is_dir():
            raise HubError(
                f"catalog {describe(parsed)}: is a directory; expected the path of a SQLite file, "
                f"e.g. sqlite:///{path.absolute() / 'registry.db'}"
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise HubError(
                f"catalog {describe(parsed)}: can't create the folder {path.parent} ({err.strerror or err}); "
                "expected a folder (or a path where one can be made)"
            ) from None
    engine = create_engine(parsed, json_deserializer=_json_loads(describe(parsed)))
    _translate_schema_drift(engine)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        # The driver's own transaction handling would send a plain BEGIN behind our back; turn it off
        # and send BEGIN ourselves in _on_begin.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _enable_wal(cur)
        cur.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; safe with WAL
        cur.execute("PRAGMA foreign_keys = ON")  # child rows (metrics, tags, ...) cascade with experts
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("hub_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _enable_wal(cur: sqlite3.Cursor) -> None:
    """PRAGMA journal_mode = WAL, waiting as busy_timeout would. Switching a fresh (rollback-journal)
    file to WAL needs an exclusive lock, and SQLite answers "database is locked" at once, without
    calling the busy handler, while a second process opening the same new catalog holds its lock.
    Once the file is in WAL mode (persistent, in its header) the pragma changes nothing."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cur.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as err:
            busy = "locked" in str(err).lower() or "busy" in str(err).lower()
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.005, 0.05))


def _postgres_engine(parsed: URL) -> Engine:
    connect_args: dict[str, object] = {}
    if parsed.get_driver_name() in ("psycopg", "psycopg2"):  # libpq keywords
        if "connect_timeout" not in parsed.query:
            connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
        if "options" not in parsed.query:
            connect_args["options"] = "-c TimeZone=UTC"  # timestamps come back in UTC, as on SQLite
    engine = create_engine(
        parsed, pool_pre_ping=True, isolation_level="REPEATABLE READ", connect_args=connect_args
    )  # (its json columns refuse text that is not JSON: no _json_loads needed)
    _translate_schema_drift(engine)
    return engine


def _json_loads(where: str) -> Callable[[str], object]:
    """How the catalog's JSON columns (experts.config, tasks.tags, ...) are read: a value that is not JSON
    (the file was edited, or damaged) is one HubError naming the catalog, not a JSONDecodeError."""

    def loads(value: str) -> object:
        try:
            return json.loads(value)
        except ValueError as err:
            raise HubError(
                f"catalog {where}: a stored value is not valid JSON ({shown(value, 60)}: {err}); expected "
                "the JSON hubtool wrote (was the file edited or damaged?): run `hub verify` to find the rows"
            ) from None

    return loads


def damaged(where: str, reason: str) -> HubError:
    """A SQLite catalog whose pages are scrambled ("database disk image is malformed")."""
    return HubError(
        f"catalog {where}: the file is damaged ({reason}); expected an intact SQLite file: run `hub verify` "
        "to check it, then restore it from a backup"
    )


def _is_damaged(err: BaseException) -> bool:
    return "malformed" in str(getattr(err, "orig", None) or err).lower()


# Errors that mean the tables are not the ones the stored revision promises (edited, restored from
# another version, half-copied): SQLite's wording, PostgreSQL's undefined table / column.
_DRIFT_WORDS = ("no such table", "no such column", "has no column named")
_PG_DRIFT = {"42P01", "42703"}


def _translate_schema_drift(engine: Engine) -> None:
    """A query on a table or column that is not there becomes one HubError naming the catalog, wherever
    it happens (reads too). The alembic_version probe of stored_revision is left alone: there, a
    missing table means a fresh database."""

    @event.listens_for(engine, "handle_error")
    def _on_error(ctx) -> None:  # type: ignore[no-untyped-def]
        err = ctx.sqlalchemy_exception
        if isinstance(err, DBAPIError) and engine.dialect.name == "sqlite" and _is_damaged(err):
            raise damaged(describe(engine.url), _first_line(err))
        if not isinstance(err, DBAPIError) or "alembic_version" in (ctx.statement or ""):
            return
        if _sqlstate(err) in _PG_DRIFT or any(w in str(err.orig).lower() for w in _DRIFT_WORDS):
            raise HubError(
                f"catalog {describe(engine.url)}: its tables don't match its schema revision "
                f"({_first_line(err)}); expected the tables hubtool's migrations create (was it edited, "
                "or restored from another version?)"
            )


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """One write transaction holding the catalog's write lock from its first statement."""
    with engine.connect() as conn:
        postgres = engine.dialect.name == "postgresql"
        if postgres:  # statements after the lock must see the commits made while we waited for it
            conn = conn.execution_options(isolation_level="READ COMMITTED")
        conn = conn.execution_options(hub_write=True)
        with conn.begin():
            if postgres:
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITE_LOCK})
            yield conn


def _sqlstate(err: DBAPIError) -> str | None:
    orig = err.orig
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)  # psycopg 3 / psycopg2


def _is_transient(err: DBAPIError) -> bool:
    if isinstance(err, IntegrityError):
        return True  # a concurrent writer took the same (name, version); allocate again
    if _sqlstate(err) in _PG_TRANSIENT:
        return True
    msg = str(err.orig).lower()
    return isinstance(err, OperationalError) and ("locked" in msg or "busy" in msg)


def _first_line(err: BaseException) -> str:
    lines = str(getattr(err, "orig", None) or err).strip().splitlines()
    return lines[0].strip() if lines else type(err).__name__


def catalog_error(url: str | URL, err: DBAPIError, doing: str, expected: str | None = None) -> HubError:
    """One line for a database failure: the catalog (password masked), what we were doing, why, and
    what was expected (`expected` when the cause is not one recognised here); never SQLAlchemy's
    statement dump or its background link."""
    parsed = url if isinstance(url, URL) else make_url(url)
    where, reason = describe(parsed), _first_line(err)
    if parsed.password:
        reason = reason.replace(parsed.password, "***")
    low, state = reason.lower(), _sqlstate(err)
    if parsed.get_backend_name() == "sqlite" and "malformed" in low:
        return damaged(where, reason)
    if parsed.get_backend_name() == "sqlite" and "file is not a database" in low:
        reason = "not a SQLite database (corrupt, or another kind of file); expected a catalog file"
    elif parsed.get_backend_name() == "sqlite" and ("readonly" in low or "read-only" in low):
        reason = (
            "the file or its folder is read-only; expected both writable "
            "(SQLite keeps -wal and -shm files beside the catalog)"
        )
    elif parsed.get_backend_name() == "sqlite" and "unable to open" in low:
        reason = (
            "can't open the file or make its -wal/-shm files beside it (no permission, or not a "
            "file); expected a readable SQLite file in a writable folder"
        )
    elif state == "42501":  # insufficient privilege
        reason += "; expected a database role allowed to read and write the catalog's tables"
    elif state == "25006":  # read-only transaction: a standby, or default_transaction_read_only
        reason += "; expected a writable server (the primary, not a read-only standby)"
    elif isinstance(err, OperationalError) and state is None and parsed.get_backend_name() != "sqlite":
        reason = (  # failed before any statement ran
            f"can't connect ({reason}); expected a reachable database server and an existing database"
            + (" (createdb NAME)" if parsed.get_backend_name() == "postgresql" else "")
        )
    elif expected:
        reason += f"; expected {expected}"
    return HubError(f"catalog {where}: {doing} failed: {reason}")


def retry(fn: Callable[[], T], what: str, url: str | URL | None = None, expected: str | None = None) -> T:
    """Run fn (one whole transaction), again after a random back-off if the database was busy. Given the
    catalog's `url`, any other database error becomes one HubError line (catalog_error)."""
    for attempt in range(RETRIES):
        try:
            return fn()
        except DBAPIError as err:
            if not _is_transient(err):
                if url is None:
                    raise
                raise catalog_error(url, err, what, expected) from err
            if attempt == RETRIES - 1:
                where = f"catalog {describe(url)}" if url is not None else "catalog"
                raise HubError(f"{where}: {what} failed {RETRIES} times: {_first_line(err)}") from err
            time.sleep(random.uniform(0.0, 0.05 * 2**attempt))
    raise AssertionError("unreachable")


def _no_table(err: DBAPIError) -> bool:
    return _sqlstate(err) == _PG_UNDEFINED_TABLE or "no such table" in str(err.orig).lower()


def stored_revision(engine: Engine) -> str | None:
    """The alembic revision the database is at; None for a fresh database. One cheap query, again
    after a back-off while another process holds the database (retry)."""

    def probe() -> str | None:
        try:
            with engine.connect() as conn:
                return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except DBAPIError as err:
            if _no_table(err):
                return None  # no alembic_version table yet
            raise

    return retry(probe, "opening the catalog", engine.url)
