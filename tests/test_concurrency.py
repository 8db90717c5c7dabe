"""Many writers at once, on SQLite and on PostgreSQL: 8 real processes register into one catalog nobody
has created yet while the real `hub list` reads it (benchmarks/concurrency.py at a small size); 3 `hub train`
processes launched together against one catalog and blob store; PostgreSQL's conflict errors are retried."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from hubtool.registry import Catalog, db

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import concurrency as bench

PROCESSES = 8
PER_PROCESS = 6  # file 0: the same bytes in every process (name "common"); odd files under "shared"


def test_eight_writers_and_hub_list_readers_lose_nothing(tmp_path, empty_catalog_url):
    jobs = bench.make_files(tmp_path / "files", PROCESSES, PER_PROCESS)
    out = bench.many_writers(empty_catalog_url, tmp_path / "blobs", jobs, readers=2)

    assert out["errors"] == []  # writers' and readers' (every reader snapshot gapless, every exit 0)
    assert out["rows"] == out["expected"] == len(out["refs"]) == out["unique_refs"] == PROCESSES * PER_PROCESS
    assert out["gaps"] == 0 and out["reads"] >= 2
    records = out["records"]
    shared = sorted(r.version for r in records if r.name == bench.SHARED)
    assert shared == list(range(1, PROCESSES * (PER_PROCESS // 2) + 1))  # no gaps, no duplicates
    assert sorted(r.version for r in records if r.name == "common") == list(range(1, PROCESSES + 1))
    for p in range(PROCESSES):
        assert sorted(r.version for r in records if r.name == f"p{p}") == [1, 2]
    assert all(len(r.tags) == 1 for r in records)
    assert out["verify_ok"]
    assert out["blobs"] == PROCESSES * (PER_PROCESS - 1) + 1  # the common file is stored once


HOLD_WRITE_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")  # the RESERVED lock: what a first opener holds while it creates the schema
print("held", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
print("released", flush=True)
"""


def test_a_new_catalog_opens_while_another_process_holds_its_write_lock(tmp_path):
    """The race two `hub` commands on a new HUB_HOME run: the second opener finds a fresh (not yet WAL)
    file whose write lock the first holds. SQLite answers the switch to WAL with an immediate "database is
    locked" there, without its busy handler (a CI run failed so); opening must wait for the lock instead."""
    path = tmp_path / "registry.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_WRITE_LOCK, str(path), "1.0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with Catalog(f"sqlite:///{path}", blobs=tmp_path / "blobs") as catalog:
            assert holder.poll() is not None or holder.stdout.readline().strip() == "released"
            assert catalog.list() == []
            assert db.stored_revision(catalog.engine) == db.SCHEMA_HEAD
    finally:
        holder.wait(timeout=30)
    assert holder.returncode == 0


def test_three_hub_train_processes_at_once_lose_nothing(hub_home, tmp_path):
    """What a scheduler does: start several trainings of one task together on one catalog and store."""
    from test_cli import HUB, _env
    from test_cli_train import COLORS, THINGS
    from tiny import make_tiny_llama, save_word_tokenizer

    base, data = tmp_path / "base", tmp_path / "colors.jsonl"
    make_tiny_llama(base)
    save_word_tokenizer(base, ["what", "color", "is", "?", *COLORS, *THINGS])
    rows = [f'{{"input": "what color is {t} ?", "output": "{COLORS[i % 4]}"}}' for i, t in enumerate(THINGS)]
    data.write_text("\n".join(rows) + "\n")
    argv = [
        *HUB,
        "train",
        "--task",
        "colors",
        "--data",
        str(data),
        "--base",
        str(base),
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--max-length",
        "32",
        "--eval-limit",
        "0",
        "--quiet",
    ]
    procs = [
        subprocess.Popen(
            [*argv, "--seed", str(seed)],
            env=_env(OMP_NUM_THREADS="1"),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for seed in range(3)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in outputs]
    said = sorted(int(m) for out, _ in outputs for m in re.findall(r"Registered colors-sparse@(\d+)", out))
    assert said == [1, 2, 3]
    with Catalog() as cat:
        records = cat.list(where="name=colors-sparse")
        assert [r.version for r in records] == [1, 2, 3]
        assert cat.get_task("colors").data_source == str(data.resolve())
        report = cat.verify()  # (equal seeds or not, tiny trainings may give equal bytes: one blob each)
        assert report.ok and report.checked == len({r.sha256 for r in records}) and report.orphans == []
        for r in records:
            assert cat.load(r.ref).nnz == r.nnz
    leftovers = (
        [p for p in (hub_home / "tmp").rglob("*") if p.is_file()] if (hub_home / "tmp").exists() else []
    )
    assert leftovers == []


def _error(engine, *statements: str) -> DBAPIError:
    with pytest.raises(DBAPIError) as caught, engine.connect() as conn:
        for sql in statements:
            conn.execute(text(sql))
    return caught.value


def test_postgres_conflicts_count_as_transient_and_are_retried(tmp_path, pg_url):
    """Real PostgreSQL errors: a unique violation, a serialization failure and a deadlock are worth
    another try (db.retry); a mistake in a statement is not."""
    Catalog(pg_url, blobs=tmp_path / "blobs").close()
    engine = db.make_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO expert_names VALUES ('a', 1), ('b', 1)"))

    unique = _error(engine, "INSERT INTO expert_names VALUES ('a', 2)")
    assert db._sqlstate(unique) == "23505" and db._is_transient(unique)

    # Serialization failure: a REPEATABLE READ transaction (the engine's default) updates a row that
    # another transaction changed after its snapshot was taken.
    with pytest.raises(DBAPIError) as caught, engine.connect() as first:
        first.execute(text("SELECT last_version FROM expert_names WHERE name = 'a'"))
        with engine.begin() as second:
            second.execute(text("UPDATE expert_names SET last_version = 5 WHERE name = 'a'"))
        first.execute(text("UPDATE expert_names SET last_version = 6 WHERE name = 'a'"))
    assert db._sqlstate(caught.value) == "40001" and db._is_transient(caught.value)

    # Deadlock: two transactions lock 'a' and 'b' in opposite orders; PostgreSQL aborts one of them.
    locked, errors = threading.Barrier(2), []

    def lock(first: str, then: str) -> None:
        try:
            with engine.connect().execution_options(isolation_level="READ COMMITTED") as conn, conn.begin():
                conn.execute(text(f"UPDATE expert_names SET last_version = 7 WHERE name = '{first}'"))
                locked.wait(timeout=30)
                conn.execute(text(f"UPDATE expert_names SET last_version = 7 WHERE name = '{then}'"))
        except DBAPIError as err:
            errors.append(err)

    threads = [threading.Thread(target=lock, args=pair) for pair in (("a", "b"), ("b", "a"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(errors) == 1 and db._sqlstate(errors[0]) == "40P01" and db._is_transient(errors[0])

    mistake = _error(engine, "SELEC last_version FROM expert_names")  # a syntax error
    assert not db._is_transient(mistake)

    attempts = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise unique
        return "done"

    assert db.retry(flaky, "testing", engine.url) == "done" and len(attempts) == 3
    with pytest.raises(Exception, match=r"catalog postgresql\+psycopg://postgres@.*: testing failed: "):
        db.retry(lambda: (_ for _ in ()).throw(mistake), "testing", engine.url)
    engine.dispose()
