"""Bring a catalog's schema to SCHEMA_HEAD: the alembic migrations, run programmatically (no alembic.ini,
nothing to configure).

`ensure_schema` runs on every catalog open, so this module is cheap to import: alembic (slow to import,
and `hub list` must start fast) is imported only when a catalog is not at SCHEMA_HEAD. It builds on db.py
(engines, write transactions, readable errors); db.py knows nothing of migrations.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, inspect

from hubtool.errors import HubError
from hubtool.registry.db import SCHEMA_HEAD, describe, retry, stored_revision, write_transaction

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"


def ensure_schema(engine: Engine, *, blobs: Path | None = None) -> None:
    """Bring the database to SCHEMA_HEAD. Imports alembic only when there is something to do.
    `blobs` is the catalog's blob store, for migrations that read blob headers (default $HUB_HOME/blobs).
    A database holding tables but no revision is someone else's: refused, never migrated into."""
    revision = stored_revision(engine)
    if revision == SCHEMA_HEAD:
        return
    if revision is None:
        tables = sorted(retry(lambda: inspect(engine).get_table_names(), "opening the catalog", engine.url))
        if tables:
            # Another process may have created the schema (tables and revision in one transaction) between
            # the two reads: the revision, read again after the tables, tells that from a foreign database.
            revision = stored_revision(engine)
            if revision == SCHEMA_HEAD:
                return
        if tables and revision is None:
            shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
            raise HubError(
                f"catalog {describe(engine.url)}: not a hubtool catalog (it has tables {shown} but no schema "
                "revision); expected an empty database or a catalog hubtool created"
            )
    if revision:
        doing = f"upgrading the catalog schema from revision {revision} to {SCHEMA_HEAD}"
        expected = (
            f"the tables of revision {revision} (was the catalog edited, or restored from another version?)"
        )
    else:
        doing, expected = "creating the catalog schema", None
    retry(lambda: upgrade(engine, blobs=blobs), doing, engine.url, expected)


def _config() -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _scripts() -> Any:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config())


def script_head() -> str:
    """The newest revision among the migration scripts."""
    head = _scripts().get_current_head()
    assert head is not None
    return head


def upgrade(engine: Engine, revision: str = "head", *, blobs: Path | None = None) -> None:
    """Migrate to `revision`; `blobs` (the blob store) is there for migrations that read blob headers."""
    from alembic import command

    known = {s.revision for s in _scripts().walk_revisions()}
    current = stored_revision(engine)
    if current is not None and current not in known:
        if "experts" not in inspect(engine).get_table_names():
            raise HubError(
                f"catalog {describe(engine.url)}: not a hubtool catalog (schema revision {current!r} but no "
                "experts table); expected an empty database or a catalog hubtool created"
            )
        raise HubError(
            f"catalog {describe(engine.url)}: schema revision {current!r} (table alembic_version) is not one "
            f"this hubtool knows (its newest is {script_head()!r}): a newer hubtool wrote this catalog "
            "(upgrade hubtool), or the row was changed by hand"
        )
    cfg = _config()
    # The whole upgrade runs in one write transaction: concurrent openers of a fresh catalog queue on
    # the lock, and the second finds the work already done (DDL is transactional on SQLite and PostgreSQL).
    with write_transaction(engine) as conn:
        cfg.attributes["connection"] = conn
        cfg.attributes["blobs"] = blobs
        command.upgrade(cfg, revision)
