"""Engine set-up, write transactions and the schema check for the catalog database.

SQLite is the default and gets special care so that many processes can share one catalog:
  - WAL: readers never block the writer and vice versa;
  - busy_timeout: a writer waits for the lock instead of failing at once;
  - BEGIN IMMEDIATE for write transactions: the write lock is taken up front, so two writers never
    both read "last version = 3" and then collide when upgrading their read locks (which SQLite
    answers with an immediate "database is locked", no matter the timeout);
  - a bounded retry with jitter on anything still reported as locked or busy.
Other databases (Postgres later) get plain transactions; the unique (name, version) constraint plus
the same retry covers version races there.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from hubtool.errors import HubError

# The newest migration in migrations/versions. Checked against the scripts by tests/test_migrations.py;
# comparing to it lets an up-to-date catalog open without importing alembic at all.
SCHEMA_HEAD = "0005"

BUSY_TIMEOUT_MS = 30_000
RETRIES = 8

T = TypeVar("T")


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        # The driver's own transaction handling would send a plain BEGIN behind our back; turn it off
        # and send BEGIN ourselves in _on_begin.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; safe with WAL
        cur.execute("PRAGMA foreign_keys = ON")  # child rows (metrics, tags, ...) cascade with experts
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("hub_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """One write transaction holding the write lock from its first statement (SQLite)."""
    with engine.connect() as conn:
        conn = conn.execution_options(hub_write=True)
        with conn.begin():
            yield conn


def _is_transient(err: DBAPIError) -> bool:
    if isinstance(err, IntegrityError):
        return True  # a concurrent writer took the same (name, version); allocate again
    msg = str(err.orig).lower()
    return isinstance(err, OperationalError) and ("locked" in msg or "busy" in msg)


def retry(fn: Callable[[], T], what: str) -> T:
    """Run fn (one whole transaction), again after a random back-off if the database was busy."""
    for attempt in range(RETRIES):
        try:
            return fn()
        except DBAPIError as err:
            if not _is_transient(err):
                raise
            if attempt == RETRIES - 1:
                raise HubError(f"catalog: {what} failed {RETRIES} times: {err.orig}") from err
            time.sleep(random.uniform(0.0, 0.05 * 2**attempt))
    raise AssertionError("unreachable")


def stored_revision(engine: Engine) -> str | None:
    """The alembic revision the database is at; None for a fresh database. One cheap query."""
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DBAPIError:
        return None  # no alembic_version table yet


def ensure_schema(engine: Engine, *, blobs: Path | None = None) -> None:
    """Bring the database to SCHEMA_HEAD. Imports alembic only when there is something to do.
    `blobs` is the catalog's blob store, for migrations that read blob headers (default $HUB_HOME/blobs)."""
    if stored_revision(engine) == SCHEMA_HEAD:
        return
    from hubtool.registry import migrate

    retry(lambda: migrate.upgrade(engine, blobs=blobs), "upgrading the catalog schema")
