"""The catalog of experts: SQL tables, content-addressed blobs, migrations.

`from hubtool.registry import Catalog` must stay cheap (it is on `hub list`'s path): no torch,
transformers or alembic at import time.
"""

from hubtool.registry.catalog import Catalog, parse_ref
from hubtool.registry.records import ExpertRecord, TaskRecord, VerifyReport

__all__ = ["Catalog", "ExpertRecord", "TaskRecord", "VerifyReport", "parse_ref"]
