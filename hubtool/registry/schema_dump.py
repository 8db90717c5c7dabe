"""Print the DDL the migrations produce on an empty catalog: SQLite (schema/registry.sql) or PostgreSQL
(schema/registry.postgres.sql).

python -m hubtool.registry.schema_dump > schema/registry.sql
python -m hubtool.registry.schema_dump postgresql+psycopg://USER@HOST/EMPTY_DB > schema/registry.postgres.sql
  (or `python tests/postgres.py schema > schema/registry.postgres.sql`, which starts a server for it)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from sqlalchemy import Connection, text

from hubtool.registry import db, migrate

HEADER = (
    "-- The catalog schema (SQLite) as the migrations create it. Generated; do not edit:\n"
    "--   python -m hubtool.registry.schema_dump > schema/registry.sql\n"
)
PG_HEADER = (
    "-- The catalog schema (PostgreSQL) as the migrations create it, read back from pg_catalog.\n"
    "-- Generated; do not edit:\n"
    "--   python tests/postgres.py schema > schema/registry.postgres.sql\n"
)


def dump_schema(url: str | None = None) -> str:
    """The DDL after migrating an empty database: a temp SQLite file, or the empty PostgreSQL
    database at `url` (which is left migrated)."""
    if url is not None:
        engine = db.make_engine(url)
        try:
            migrate.ensure_schema(engine, blobs=Path(tempfile.gettempdir()) / "hubtool-schema-dump-no-blobs")
            with engine.connect() as conn:
                return PG_HEADER + "\n" + _postgres_ddl(conn)
        finally:
            engine.dispose()
    with tempfile.TemporaryDirectory() as tmp:
        engine = db.make_engine(f"sqlite:///{Path(tmp) / 'registry.db'}")
        try:
            migrate.ensure_schema(engine)
            with engine.connect() as conn:
                # Tables first, then their indexes, each group by name: a stable order to diff.
                rows = conn.execute(
                    text(
                        "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL "
                        "ORDER BY CASE type WHEN 'table' THEN 0 ELSE 1 END, tbl_name, name"
                    )
                ).scalars()
                # SQLite keeps the DDL text as written, trailing spaces and all; tidy it for the file.
                statements = [
                    "\n".join(line.rstrip() for line in sql.strip().splitlines()) + ";\n" for sql in rows
                ]
        finally:
            engine.dispose()
    return HEADER + "\n" + "\n".join(statements)


def _postgres_ddl(conn: Connection) -> str:
    """CREATE TABLE (columns in order, then constraints by name) and CREATE INDEX statements for the
    public schema, tables and indexes by name. Rebuilt from pg_catalog rather than pg_dump, whose output
    (SET lines, comments, ALTER ... OWNER) changes between server versions."""
    tables = conn.execute(
        text(
            "SELECT c.oid, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY c.relname"
        )
    ).all()
    out = []
    for oid, name in tables:
        columns = conn.execute(
            text(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, "
                "pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a "
                "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
                "WHERE a.attrelid = :oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
            ),
            {"oid": oid},
        ).all()
        constraints = conn.execute(
            text(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = :oid AND contype IN ('p', 'u', 'f', 'c') ORDER BY conname"
            ),
            {"oid": oid},
        ).all()
        lines = [
            f"    {col} {kind}"
            + (" NOT NULL" if not_null else "")
            + (f" DEFAULT {default}" if default else "")
            for col, kind, not_null, default in columns
        ] + [f"    CONSTRAINT {cname} {definition}" for cname, definition in constraints]
        out.append(f"CREATE TABLE {name} (\n" + ",\n".join(lines) + "\n);\n")
    indexes = conn.execute(
        text(
            "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid "
            "JOIN pg_namespace n ON n.oid = t.relnamespace "
            "WHERE n.nspname = 'public' AND NOT EXISTS "
            "(SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) "
            "ORDER BY t.relname, c.relname"
        )
    ).scalars()
    out.extend(f"{definition};\n" for definition in indexes)
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(dump_schema(sys.argv[1] if len(sys.argv) > 1 else None))
