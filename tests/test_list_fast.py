"""`hub list`'s SQLite read path (hubtool/registry/fastlist.py) against Catalog.list, the normal path.

One real catalog (1,000 synthetic rows from benchmarks/bulk.py's fill_synthetic plus real registrations with tags,
aliases, several tasks, metrics under two tasks, a task category), listed both ways with many filter,
sort and limit combinations: the records must be equal, field for field. Then the plans (EXPLAIN
QUERY PLAN: each filter searches an index), the budgeted walks giving up, the cases that must take
the normal path, and the real `hub list` in a subprocess importing neither SQLAlchemy's ORM nor
SQLModel nor torch.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

# benchmarks/bulk.py: a benchmark fixture (never for a real catalog), kept out of the package
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bulk
from bulk import N_TASKS, fill_synthetic

from hubtool.registry import Catalog, db, fastlist

N = 1_000


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    from conftest import write_sparse_expert

    home = tmp_path_factory.mktemp("fastlist")
    url, blobs = f"sqlite:///{home / 'registry.db'}", home / "blobs"
    fill_synthetic(url, N)
    with Catalog(url, blobs=blobs) as cat:

        def packed(name: str, task: str, seed: int, **meta) -> Path:
            return write_sparse_expert(
                home / f"{name}-{seed}.safetensors", name=name, task=task, seed=seed, **meta
            )

        cat.register(
            packed("qa", "squad", 1, metrics={"squad": {"rougeL": 48.0, "exact_match": 30.0}}),
            tags=["demo", "b"],
        )
        cat.register(packed("qa", "squad", 2, keep_ratio=None), tags=["demo"], description="second")
        cat.register(
            packed("mix", "squad", 3, metrics={"rougeL": 12.5}), tasks=["xsum", "task3"], tags=["merged"]
        )
        cat.register(packed("boolq-e", "boolq", 4, base_model="other-base", config={"lr": 1e-4}))
        cat.set_metrics("mix", "xsum", {"rougeL": 49.99, "loss": 0.5})
        cat.alias("qa", "best", 1)
        cat.alias("qa", "prod", 2)
        cat.add_task("mine", category="qa")
    return url, blobs


CASES = [
    {},
    {"limit": 5},
    {"limit": None},
    {"task": "task3"},
    {"task": "task3", "limit": 2},  # "mix" has task3 as a secondary task and sorts first
    {"task": "task5", "limit": 2},
    {"tasks": ["task3", "xsum", "task9"], "limit": 4},
    {"task": "task3", "tag": "synthetic", "limit": 2},
    {"where": "task=task3, loss<2.5", "limit": 3},
    {"kind": "lora", "where": "task=task3", "sort": "-created", "limit": 2},  # drives from its 2nd filter
    {"task": "squad"},
    {"task": "xsum", "limit": 3},
    {"task": "nope"},
    {"tasks": ["task3", "task4"]},
    {"tasks": ["squad", "boolq"], "sort": "-rougeL"},
    {"tasks": []},
    {"base": "smollm2-135m"},
    {"base": "other-base"},
    {"kind": "lora"},
    {"kind": "sparse", "base": "tiny-llama"},
    {"kind": "full-delta"},
    {"tag": "synthetic", "limit": 7},
    {"tag": "demo"},
    {"tag": "b", "task": "squad"},
    {"where": "rougeL>=40"},
    {"where": "rougeL>=49.9"},
    {"where": "rougeL>40 and loss<1.5", "sort": "loss"},
    {"where": "rougeL!=12.5, kind=sparse"},
    {"where": "exact_match=30"},
    {"where": "task=xsum"},
    {"where": "task!=task3", "limit": 50},
    {"where": "keep_ratio<0.01, nnz>=2000.5"},
    {"where": "name=qa"},
    {"where": "base!=smollm2-135m", "sort": "-version"},
    {"where": "version>=2, bytes<20000", "sort": "-bytes,name"},
    {"sort": "-rougeL"},
    {"sort": "rougeL"},
    {"sort": "-rougeL", "limit": 200},
    {"sort": "-exact_match"},  # one expert has it: the page ends with those lacking it
    {"sort": "exact_match,-created"},
    {"sort": "-created"},
    {"sort": "created", "limit": 3},
    {"sort": "name", "task": "task5"},
    {"sort": "task,-nnz"},
    {"sort": "-keep_ratio", "limit": 10},
    {"sort": "kind,base"},
    {"task": "task7", "sort": "-rougeL"},
    {"task": "task7", "where": "rougeL>=25", "sort": "-rougeL,-loss"},
    {"base": "smollm2-135m", "sort": "-loss", "limit": 40},
    {"kind": "merged", "tag": "synthetic", "where": "loss<=2", "sort": "rougeL", "limit": 9},
]


@pytest.mark.parametrize(
    ("drive_max", "budget"),
    [(fastlist.DRIVE_MAX, fastlist.WALK_STEPS_PER_MATCH), (10, fastlist.WALK_STEPS_PER_MATCH), (10, 0)],
    ids=["drives", "walks", "walks-give-up"],
)
def test_read_path_lists_exactly_what_catalog_list_does(catalog, drive_max, budget, monkeypatch):
    """Every plan gives Catalog.list's records: driven from the filters' indexes (at 1,000 rows, the
    default thresholds), walking in order (thresholds as if the catalog were large), and walks that
    run out of budget at once and fall back to driving."""
    url, blobs = catalog
    monkeypatch.setattr(fastlist, "DRIVE_MAX", drive_max)
    monkeypatch.setattr(fastlist, "WALK_STEPS_PER_MATCH", budget)  # 0: every budgeted walk gives up
    reader = fastlist.open_reader(url)
    assert reader is not None, "an up-to-date SQLite catalog must take the read path"
    nonempty = 0
    with Catalog(url, blobs=blobs) as cat, reader:
        results = [(kw, cat.list(**kw), reader.list(**kw)) for kw in ({"limit": 25, **kw} for kw in CASES)]
    for kw, slow, fast in results:
        assert fast == slow, f"list({kw}) differs"
        assert [r.to_dict() for r in fast] == [r.to_dict() for r in slow]
        assert json.dumps([r.to_dict() for r in fast]) == json.dumps([r.to_dict() for r in slow])
        nonempty += bool(fast)
    assert nonempty >= len(CASES) - 4  # the cases do list something (only a few are meant to be empty)


def test_tasks_for_matches_the_catalogs(catalog):
    from hubtool.errors import NotFoundError

    url, blobs = catalog
    with Catalog(url, blobs=blobs) as cat, fastlist.open_reader(url) as reader:
        for spec in ("task3", "squad", "qa", " qa ", "summarize", "classify", "mine"):
            for with_experts in (True, False):
                assert reader.tasks_for(spec, with_experts=with_experts) == cat.tasks_for(
                    spec, with_experts=with_experts
                )
        assert reader.expert_tasks() == {f"task{i}" for i in range(N_TASKS)} | {"squad", "xsum", "boolq"}
        for spec in ("qq", ""):
            with pytest.raises(NotFoundError) as fast:
                reader.tasks_for(spec)
            with pytest.raises(NotFoundError) as slow:
                cat.tasks_for(spec)
            assert str(fast.value) == str(slow.value)


def _plans(reader: fastlist.Reader, **kw) -> list[list[str]]:
    """EXPLAIN QUERY PLAN of each step of the plan, its walk first."""
    out = []
    for step in reader.plan(limit=25, **kw):
        lines = []
        if step.walk:
            lines += [r[3] for r in reader.conn.execute("EXPLAIN QUERY PLAN " + step.walk, step.walk_params)]
        lines += [r[3] for r in reader.conn.execute("EXPLAIN QUERY PLAN " + step.sql, step.params)]
        out.append(lines)
    return out


@pytest.mark.parametrize(
    ("kw", "index"),
    [
        ({"task": "task3"}, "ix_expert_tasks_task (task=?)"),
        ({"tasks": ["task3", "task4"]}, "ix_expert_tasks_task (task=?)"),
        ({"where": "task=xsum"}, "ix_expert_tasks_task (task=?)"),
        ({"tag": "demo"}, "ix_expert_tags_tag (tag=?)"),
        ({"base": "other-base"}, "ix_experts_base_model (base_model=?)"),
        ({"base": "smollm2-135m"}, "ix_experts_base_model (base_model=?)"),
        ({"kind": "lora"}, "ix_experts_kind (kind=?)"),
        ({"where": "rougeL>=49"}, "ix_metrics_metric_value (metric=? AND value>?)"),
        ({"where": "loss<1.01"}, "ix_metrics_metric_value (metric=? AND value<?)"),
        ({"where": "name=qa"}, "sqlite_autoindex_experts_1 (name=?)"),
    ],
)
def test_each_filter_searches_an_index(catalog, kw, index):
    url, _ = catalog
    with fastlist.open_reader(url) as reader:
        plans = _plans(reader, **kw)
    first = plans[0]
    assert len(plans) == 1, f"{kw}: a selective filter drives the query, no walk first: {plans}"
    assert any(line.startswith("SEARCH") and line.endswith(index) for line in first), f"{kw}: {first}"
    assert not any(line.startswith("SCAN e") for line in first), f"{kw} scans experts: {first}"


def test_many_matches_walk_the_order_with_a_budget_then_drive(catalog, monkeypatch):
    url, _ = catalog
    monkeypatch.setattr(fastlist, "DRIVE_MAX", 100)  # as if this were a large catalog
    with fastlist.open_reader(url) as reader:
        steps = reader.plan(tag="synthetic", limit=25)  # every synthetic row: walk (name, version)
        plans = _plans(reader, tag="synthetic")
        assert [s.budget is not None for s in steps] == [True, False]
        assert plans[0][0] == "SCAN e USING INDEX sqlite_autoindex_experts_1"  # in order, stops at 25 rows
        assert plans[1][:2] == [  # the fallback: from the tag's index, each expert by its id
            "SEARCH d USING COVERING INDEX ix_expert_tags_tag (tag=?)",
            "SEARCH e USING INTEGER PRIMARY KEY (rowid=?)",
        ]
        # --task with many matches: walk the primary task's (task, name, version) index, plus the
        # experts having the task as a secondary one ("mix", by id)
        monkeypatch.setattr(fastlist, "DRIVE_MAX", 10)
        steps = reader.plan(task="task3", limit=2)
        assert len(steps) == 2 and "json_each" in steps[0].sql and json.loads(steps[0].params[3]) == [N + 3]
        plan = [r[3] for r in reader.conn.execute("EXPLAIN QUERY PLAN " + steps[0].sql, steps[0].params)]
        assert "SEARCH e USING COVERING INDEX ix_experts_task (task=?)" in plan
        assert [r.ref for r in reader.list(task="task3", limit=2)] == ["mix@1", "task3-e0@1"]
        # sorted by a metric: walk the metric's index from the top, then list those experts
        plans = _plans(reader, sort="-rougeL")
        assert plans[0][0] == "SEARCH m USING COVERING INDEX ix_metrics_metric_value (metric=?)"
        plans = _plans(reader, sort="-created")
        assert plans[0][0] == "SCAN e USING INDEX ix_experts_created_at"
        # the default order, unfiltered: the (name, version) index
        assert _plans(reader) == [["SCAN e USING INDEX sqlite_autoindex_experts_1"]]


def test_catalogs_the_read_path_leaves_to_catalog(tmp_path):
    assert fastlist.schema_head() == db.SCHEMA_HEAD
    assert fastlist.open_reader(f"sqlite:///{tmp_path / 'missing.db'}") is None
    assert not (tmp_path / "missing.db").exists()  # never created by the read path
    assert fastlist.open_reader("sqlite://") is None
    assert fastlist.open_reader("sqlite:///:memory:") is None
    assert fastlist.open_reader("postgresql+psycopg://u@localhost/db") is None
    assert fastlist.open_reader(f"sqlite:///{tmp_path}") is None  # a directory
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    assert fastlist.open_reader(f"sqlite:///{garbage}") is None
    old = tmp_path / "old.db"  # a catalog one migration behind: Catalog must upgrade it
    url = f"sqlite:///{old}"
    Catalog(url, blobs=tmp_path / "blobs").close()
    with sqlite3.connect(old) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0004'")
    assert fastlist.open_reader(url) is None
    with sqlite3.connect(old) as conn:
        conn.execute("UPDATE alembic_version SET version_num = ?", (db.SCHEMA_HEAD,))
    reader = fastlist.open_reader(url)
    assert reader is not None and reader.list(limit=5) == []
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.conn.execute("DELETE FROM experts")  # query_only: the read path cannot write
    reader.close()


def test_hub_list_reads_without_sqlalchemy_orm_sqlmodel_or_torch(catalog, tmp_path):
    url, _ = catalog
    script = Path(sys.executable).with_name("hub")
    hub = [str(script)] if script.is_file() else [sys.executable, "-m", "hubtool"]
    env = {k: v for k, v in os.environ.items() if k != "HUB_CATALOG"} | {
        "HUB_HOME": str(tmp_path),
        "COLUMNS": "250",
        "PYTHONPROFILEIMPORTTIME": "1",
    }
    commands = [
        ["list", "--task", "task3", "--json"],
        [
            "list",
            "--tasks",
            "qa,task4",
            "--where",
            "rougeL>=1",
            "--sort",
            "-rougeL",
            "--limit",
            "3",
            "--json",
        ],
        ["list", "--tag", "demo", "--base", "tiny-llama", "--kind", "sparse"],
    ]
    for args in commands:
        out = subprocess.run(
            [*hub, *args, "--catalog", url], check=False, env=env, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr[-2000:]
        modules = {
            line.rsplit("|", 1)[1].strip()
            for line in out.stderr.splitlines()
            if line.startswith("import time:")
        }
        assert "hubtool.registry.fastlist" in modules
        heavy = sorted(
            m for m in modules if m.split(".")[0] in ("sqlmodel", "torch", "transformers", "alembic")
        )
        heavy += sorted(m for m in modules if m == "sqlalchemy.orm" or m.startswith("sqlalchemy.orm."))
        assert not heavy, f"hub {' '.join(args)} imported {heavy[:5]}"
        if "--json" in args:
            rows = json.loads(out.stdout)
            with Catalog(url, blobs=tmp_path / "blobs") as cat:
                task = args[args.index("--task") + 1] if "--task" in args else None
                tasks = None if task else cat.tasks_for("qa") + ["task4"]
                expected = cat.list(
                    task=task,
                    tasks=sorted(tasks) if tasks else None,
                    where="rougeL>=1" if not task else None,
                    sort="-rougeL" if not task else None,
                    limit=3 if not task else 25,
                )
            assert rows == [r.to_dict() for r in expected]
        else:
            assert "qa@1" in out.stdout and "qa@2" in out.stdout and "base model: tiny-llama" in out.stdout


def test_fill_synthetic_writes_the_same_rows_through_sqlalchemy(tmp_path, hub_home):
    """The sqlite3 fill (fast, SQLite) and the SQLAlchemy one (other databases) agree, row for row."""
    fast, slow = tmp_path / "fast.db", tmp_path / "slow.db"
    bulk.fill_synthetic(f"sqlite:///{fast}", 300)
    Catalog(f"sqlite:///{slow}", blobs=tmp_path / "blobs").close()
    bulk._fill_sqlalchemy(f"sqlite:///{slow}", 300)
    tables = ("experts", "expert_tasks", "metrics", "expert_tags", "expert_names", "aliases")
    with sqlite3.connect(fast) as a, sqlite3.connect(slow) as b:
        for table in tables:
            rows = a.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
            assert rows and rows == b.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall(), table
        # the indexes dropped for the fill are back, exactly as the migrations wrote them
        ddl = "SELECT name, sql FROM sqlite_master WHERE type = 'index' ORDER BY name"
        assert a.execute(ddl).fetchall() == b.execute(ddl).fetchall()


def test_a_failing_query_hands_over_to_the_normal_path(tmp_path, hub_home):
    """A catalog at SCHEMA_HEAD whose tables are damaged: the read path raises Unavailable (the CLI
    then asks Catalog, which reports the error) instead of answering wrongly."""
    path = tmp_path / "damaged.db"
    url = f"sqlite:///{path}"
    fill_synthetic(url, 40)
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE expert_tags")
    reader = fastlist.open_reader(url)
    assert reader is not None
    with reader, pytest.raises(fastlist.Unavailable, match="expert_tags"):
        reader.list(limit=5)


def _random_cases(seed: int, n: int) -> list[dict]:
    """Random combinations of every filter, sort and limit (fixed seed), on values that exist."""
    import random

    rng = random.Random(seed)
    choices = {
        "task": ["task3", "task7", "squad", "xsum"],
        "tasks": [["task1", "task2"], ["xsum", "task3"], ["boolq"]],
        "base": ["smollm2-135m", "tiny-llama", "HuggingFaceTB/SmolLM2-360M-Instruct"],
        "kind": ["lora", "sparse", "merged", "block-sparse"],
        "tag": ["synthetic", "demo", "merged"],
        "where": [
            "rougeL>=30",
            "loss<1.4",
            "task=task3",
            "task!=task4",
            "keep_ratio<0.02",
            "nnz>5000",
            "version>=2",
        ],
        "sort": ["-rougeL", "loss", "-created", "name", "-nnz", "kind,-rougeL", "-exact_match"],
        "limit": [1, 2, 5, 25, None],
    }
    out = []
    for _ in range(n):
        keys = rng.sample(sorted(choices), rng.randint(1, 4))
        out.append({k: rng.choice(choices[k]) for k in keys})
    return out


@pytest.mark.parametrize(("drive_max", "budget"), [(fastlist.DRIVE_MAX, 10), (10, 10), (10, 0)])
def test_random_combinations_list_the_same(catalog, drive_max, budget, monkeypatch):
    url, blobs = catalog
    monkeypatch.setattr(fastlist, "DRIVE_MAX", drive_max)
    monkeypatch.setattr(fastlist, "WALK_STEPS_PER_MATCH", budget)
    with Catalog(url, blobs=blobs) as cat, fastlist.open_reader(url) as reader:
        listed = 0
        for kw in _random_cases(seed=9, n=40):
            kw = {"limit": 25, **kw}
            rows = reader.list(**kw)
            assert rows == cat.list(**kw), f"list({kw}) differs"
            listed += bool(rows)
    assert listed >= 15  # about half of the combinations match something
