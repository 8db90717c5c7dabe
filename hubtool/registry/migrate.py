"""Run the catalog's alembic migrations programmatically (no alembic.ini, nothing to configure).

Imported only when a catalog is not at SCHEMA_HEAD (see db.ensure_schema), since alembic is slow
to import and `hub list` must start fast.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

from hubtool.errors import HubError
from hubtool.registry.db import describe, stored_revision, write_transaction

MIGRATIONS = Path(__file__).parent / "migrations"


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def script_head() -> str:
    """The newest revision among the migration scripts."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def upgrade(engine: Engine, revision: str = "head", *, blobs: Path | None = None) -> None:
    """Migrate to `revision`; `blobs` (the blob store) is there for migrations that read blob headers."""
    known = {s.revision for s in ScriptDirectory.from_config(_config()).walk_revisions()}
    current = stored_revision(engine)
    if current is not None and current not in known:
        if "experts" not in inspect(engine).get_table_names():
            raise HubError(
                f"catalog {describe(engine.url)}: not a hubtool catalog (schema revision {current!r} but no "
                "experts table); expected an empty database or a catalog hubtool created"
            )
        raise HubError(
            f"catalog {describe(engine.url)}: schema revision {current!r} is newer than this hubtool knows "
            f"(up to {script_head()!r}); upgrade hubtool"
        )
    cfg = _config()
    # The whole upgrade runs in one write transaction: concurrent openers of a fresh catalog queue on
    # the lock, and the second finds the work already done (DDL is transactional on SQLite and PostgreSQL).
    with write_transaction(engine) as conn:
        cfg.attributes["connection"] = conn
        cfg.attributes["blobs"] = blobs
        command.upgrade(cfg, revision)
