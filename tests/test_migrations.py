"""The migrations build the schema the tables describe, schema/registry.sql is their output, and the
fast path (no alembic import) knows the newest revision."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from hubtool.errors import HubError
from hubtool.registry import Catalog, db, migrate
from hubtool.registry.schema_dump import dump_schema
from hubtool.registry.tables import metadata

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schema" / "registry.sql"


def test_known_head_is_the_newest_migration():
    assert db.SCHEMA_HEAD == migrate.script_head()


def test_opening_an_empty_database_upgrades_it_to_head(tmp_path):
    url = f"sqlite:///{tmp_path / 'new' / 'registry.db'}"
    engine = db.make_engine(url)
    assert db.stored_revision(engine) is None
    Catalog(url, blobs=tmp_path / "blobs").close()
    assert db.stored_revision(engine) == db.SCHEMA_HEAD
    tables = set(inspect(engine).get_table_names())
    assert {"experts", "metrics", "expert_tags", "expert_tasks", "aliases", "lineage", "tasks"} <= tables
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


def test_migrations_match_the_table_definitions(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    db.ensure_schema(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    engine.dispose()
    assert diff == []


def test_schema_file_is_in_sync_with_the_migrations():
    assert SCHEMA_FILE.read_text() == dump_schema(), (
        "schema/registry.sql is stale: python -m hubtool.registry.schema_dump > schema/registry.sql"
    )


def test_a_catalog_newer_than_this_hubtool_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    Catalog(url, blobs=tmp_path / "blobs").close()
    engine = db.make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(HubError, match="'9999' is newer than this hubtool"):
        Catalog(url, blobs=tmp_path / "blobs")
