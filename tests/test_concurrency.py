"""Eight real processes register experts into one fresh SQLite catalog at the same moment."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

from hubtool.registry import Catalog

PROCESSES = 8
PER_PROCESS = 4  # two under the process's own name, two under the shared name "shared"


def _register_all(url: str, blobs: str, files: list[str], start_at: float) -> list[str]:
    """Runs in a spawned process: open the catalog (maybe creating it) and register, all at once."""
    import hubtool.format.packed  # noqa: F401  (torch: import it before the race, not during)

    time.sleep(max(0.0, start_at - time.time()))
    catalog = Catalog(url, blobs=Path(blobs))
    refs = []
    for i, path in enumerate(files):
        name = "shared" if i % 2 else None  # None: the name written in the file (own per process)
        refs.append(catalog.register(path, name=name, tags=[f"t{i}"]).ref)
    catalog.close()
    return refs


def test_eight_processes_register_at_once_and_lose_nothing(tmp_path):
    from conftest import write_sparse_expert

    url, blobs = f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "blobs"
    jobs = []
    for p in range(PROCESSES):
        files = [
            str(write_sparse_expert(tmp_path / f"p{p}-{i}.safetensors", name=f"p{p}", seed=100 * p + i))
            for i in range(PER_PROCESS)
        ]
        jobs.append(files)
    # One identical file for everybody too: dedup under contention.
    common = write_sparse_expert(tmp_path / "common.safetensors", name="common", seed=999)
    for files in jobs:
        files.append(str(common))

    start_at = time.time() + 8.0  # after every child has imported torch (2 cores, 8 processes)
    with mp.get_context("spawn").Pool(PROCESSES) as pool:
        results = pool.starmap(_register_all, [(url, str(blobs), files, start_at) for files in jobs])

    every = [ref for refs in results for ref in refs]
    assert len(every) == len(set(every)) == PROCESSES * (PER_PROCESS + 1)
    catalog = Catalog(url, blobs=blobs)
    assert len(catalog.list()) == len(every)
    shared = sorted(r.version for r in catalog.list() if r.name == "shared")
    assert shared == list(range(1, PROCESSES * PER_PROCESS // 2 + 1))  # no gaps, no duplicates
    for p in range(PROCESSES):
        assert [r.ref for r in catalog.list(where=f"name=p{p}")] == [f"p{p}@1", f"p{p}@2"]
    assert all(len(r.tags) == 1 for r in catalog.list())
    report = catalog.verify()
    assert report.ok, report
    assert report.checked == PROCESSES * PER_PROCESS + 1  # the common file is stored once
