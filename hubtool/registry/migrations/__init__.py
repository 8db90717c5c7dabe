"""The catalog's Alembic migrations (versions/NNNN_*.py, run by registry/migrate.py) and SCHEMA_HEAD, the
newest of them, declared here once: read from the scripts' file names, stdlib only, so `hub list`'s fast
path (fastlist.py) and db.py compare a catalog to it without importing alembic or SQLAlchemy."""

from __future__ import annotations

import re
from pathlib import Path

SCHEMA_HEAD = max(p.name[:4] for p in (Path(__file__).parent / "versions").iterdir()
                  if re.fullmatch(r"\d{4}_\w+\.py", p.name))  # fmt: skip
