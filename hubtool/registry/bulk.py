"""Fill a catalog with synthetic expert rows, fast, for the `hub list` benchmark.

Rows point at fake blobs (a made-up sha256; no file exists), so `verify()` on such a catalog reports
every row missing. Never use this on a real catalog.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, insert, select, text

from hubtool.errors import HubError
from hubtool.registry import db
from hubtool.registry.blobs import blob_location
from hubtool.registry.catalog import Catalog
from hubtool.registry.tables import aliases, expert_names, expert_tags, expert_tasks, experts, metrics

N_TASKS = 20
VERSIONS = 4  # experts per name
KINDS = ("sparse", "block-sparse", "lora", "merged")
BASES = ("smollm2-135m", "HuggingFaceTB/SmolLM2-360M-Instruct")


def fill_synthetic(url: str, n: int) -> None:
    """Insert n expert versions into an empty catalog, spread over N_TASKS tasks, each with two
    metrics and a tag; one executemany per table in a single transaction."""
    Catalog(url).close()  # creates or upgrades the schema
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows, task_rows, metric_rows, tag_rows = [], [], [], []
    name_versions: dict[str, int] = {}
    for i in range(1, n + 1):
        task = f"task{i % N_TASKS}"
        name = f"{task}-e{i // (N_TASKS * VERSIONS)}"
        version = name_versions[name] = name_versions.get(name, 0) + 1
        sha = hashlib.sha256(f"synthetic {i}".encode()).hexdigest()
        rows.append(
            {
                "id": i,
                "name": name,
                "version": version,
                "kind": KINDS[(i // 7) % len(KINDS)],
                "task": task,
                "base_model": BASES[(i // N_TASKS) % len(BASES)],
                "base_revision": None,
                "targets": "qkv",
                "keep_ratio": (i % 50 + 1) / 1000,
                "nnz": 1000 + i % 9000,
                "bytes": 4000 + i % 36000,
                "sha256": sha,
                "blob": blob_location(sha),
                "created_at": t0 + timedelta(seconds=i),
                "config": {"seed": i},
                "description": None,
                "hub_repo": None,
                "hub_commit": None,
            }
        )
        task_rows.append({"expert_id": i, "task": task})
        metric_rows.append({"expert_id": i, "task": task, "metric": "rougeL", "value": (i * 7919) % 100 / 2})
        metric_rows.append(
            {"expert_id": i, "task": task, "metric": "loss", "value": 1 + (i * 104729) % 1000 / 500}
        )
        tag_rows.append({"expert_id": i, "tag": "synthetic"})
    engine = db.make_engine(url)
    try:
        with db.write_transaction(engine) as conn:
            if conn.execute(select(func.count()).select_from(experts)).scalar():
                raise HubError(f"catalog {url}: fill_synthetic needs an empty catalog")
            conn.execute(insert(experts), rows)
            conn.execute(insert(expert_tasks), task_rows)
            conn.execute(insert(metrics), metric_rows)
            conn.execute(insert(expert_tags), tag_rows)
            conn.execute(
                insert(expert_names), [{"name": k, "last_version": v} for k, v in name_versions.items()]
            )
            conn.execute(insert(aliases), [{"name": rows[0]["name"], "alias": "best", "expert_id": 1}])
            if n and conn.dialect.name == "postgresql":  # explicit ids leave the id sequence behind; catch it up
                conn.execute(text("SELECT setval(pg_get_serial_sequence('experts', 'id'), :n)"), {"n": n})
    finally:
        engine.dispose()
