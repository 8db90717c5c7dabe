"""Shared fixtures: a throw-away HUB_HOME, a factory for small packed expert files, and catalog URLs on
SQLite and on a real PostgreSQL server (tests/postgres.py)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import postgres
import pytest


@pytest.fixture(scope="session")
def pg_server() -> Iterator[postgres.PostgresServer]:
    """One PostgreSQL server for the session (about 1 s to initdb and start). Absent binaries skip the
    test here, but fail it under CI (CI=true), where .ci/run installs them: CI must run both databases."""
    try:
        server = postgres.start()
    except postgres.Unavailable as why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and PostgreSQL is required: {why}", pytrace=False)
        pytest.skip(f"no PostgreSQL here: {why}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: postgres.PostgresServer) -> str:
    """A fresh, empty PostgreSQL database for this test."""
    return pg_server.create_database()


@pytest.fixture(params=["sqlite", "postgres"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The catalog battery's database: a SQLite file ($HUB_HOME/registry.db of the hub_home fixture) or
    a fresh PostgreSQL database already at the newest schema (pg_url is the empty one the migration
    tests start from). Test ids end in [sqlite] / [postgres]."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hub' / 'registry.db'}"
    return request.getfixturevalue("pg_server").create_database(migrated=True)


@pytest.fixture
def hub_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HUB_HOME in a temp dir, so the default catalog and blob store are private to the test."""
    home = tmp_path / "hub"
    monkeypatch.setenv("HUB_HOME", str(home))
    monkeypatch.delenv("HUB_CATALOG", raising=False)
    return home


@pytest.fixture(params=["sqlite", "postgres"])
def empty_catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database, nothing migrated yet: a SQLite file that does not exist yet, or a fresh
    PostgreSQL database (for the migration tests)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'new' / 'registry.db'}"
    return request.getfixturevalue("pg_url")


def write_sparse_expert(
    path: Path, *, name: str = "qa", task: str = "qa", seed: int = 0, **meta: Any
) -> Path:
    """Pack a small random sparse expert (two weights, [16, 32] and [8, 32], keep ratio 0.1).

    Different seeds give different content; the same seed gives byte-identical files.
    `meta` goes to Expert (metrics, parents, config, base_model, kind, ...).
    """
    import torch

    from hubtool.format import Expert, SparseDelta, pack

    gen = torch.Generator().manual_seed(seed)
    deltas = {}
    for weight, shape in (
        ("model.layers.0.self_attn.q_proj.weight", (16, 32)),
        ("model.layers.0.self_attn.k_proj.weight", (8, 32)),
    ):
        n = shape[0] * shape[1]
        positions = torch.randperm(n, generator=gen)[: n // 10].sort().values
        deltas[weight] = SparseDelta(shape, positions, torch.randn(positions.numel(), generator=gen))
    meta.setdefault("base_model", "tiny-llama")
    meta.setdefault("kind", "sparse")
    meta.setdefault("keep_ratio", 0.1)
    pack(Expert(name=name, task=task, deltas=deltas, **meta), path)
    return path


@pytest.fixture
def packed(tmp_path: Path) -> Callable[..., Path]:
    """packed(name="qa", task="qa", seed=0, **meta) -> path of a fresh packed expert file."""
    counter = iter(range(10**6))

    def make(name: str = "qa", task: str = "qa", seed: int = 0, **meta: Any) -> Path:
        folder = tmp_path / "packed"
        folder.mkdir(exist_ok=True)
        return write_sparse_expert(
            folder / f"{name}-{seed}-{next(counter)}.safetensors", name=name, task=task, seed=seed, **meta
        )

    return make


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """The fuzzer's world (tests/fuzzing.py: a tiny base, registered experts, exports, task files) in a
    private HUB_HOME, built once per test module (test_fuzz.py, test_bad_input.py)."""
    from fuzzing import World

    root = tmp_path_factory.mktemp("world")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HUB_HOME", str(root / "home"))
        mp.delenv("HUB_CATALOG", raising=False)
        mp.delenv("HUB_DEBUG", raising=False)
        yield World.build(root)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Torch on one thread for a module of tiny models: they gain nothing from threads, and lose much to
    them when the cores are busy. Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
