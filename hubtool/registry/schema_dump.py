"""Print the DDL the migrations produce on an empty SQLite catalog (the content of schema/registry.sql).

python -m hubtool.registry.schema_dump > schema/registry.sql
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from sqlalchemy import text

from hubtool.registry import db

HEADER = (
    "-- The catalog schema (SQLite) as the migrations create it. Generated; do not edit:\n"
    "--   python -m hubtool.registry.schema_dump > schema/registry.sql\n"
)


def dump_schema() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        engine = db.make_engine(f"sqlite:///{Path(tmp) / 'registry.db'}")
        try:
            db.ensure_schema(engine)
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


if __name__ == "__main__":
    sys.stdout.write(dump_schema())
