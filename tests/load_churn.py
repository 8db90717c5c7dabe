"""Downloads and pushes against one repo while another client deletes and recreates it (shared by
tests/test_serve_load.py at a small size and benchmarks/hub_load.py --churn at full size).

    from load_churn import churn
    result = churn(srv, downloads=8, pushers=4, seconds=10, file_kib=64, workdir=tmp)

Clients are the real huggingface_hub (hf_hub_download, HfApi.upload_file / delete_repo / create_repo), as
threads of this process, each download with a cache folder of its own (deleted after every call, so each
call goes to the server). Every pushed version of the file has random content whose sha256 is recorded
before the push starts; a download passes when its bytes hash to one of those (it was in some complete
commit: nothing else can produce that hash) and fails as "wrong bytes" otherwise. Any exception that is
not a clean huggingface_hub HTTP error (RepositoryNotFound, RevisionNotFound, EntryNotFound, or an
HfHubHTTPError carrying a 4xx/5xx status) is "unclean": a truncated body, a mixed file, a connection
reset. Every loop stops at its deadline; calls in flight finish within the client's own timeouts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

FILE = "weights.bin"


@dataclass
class ChurnResult:
    calls: Counter = field(default_factory=Counter)  # kind -> successful calls
    errors: Counter = field(default_factory=Counter)  # "kind: ExceptionName [status]" -> count
    unclean: list = field(default_factory=list)  # (kind, description) of errors that are not clean
    wrong_bytes: int = 0
    latencies: dict = field(default_factory=lambda: {"download": [], "push": [], "churn": []})
    seconds: float = 0.0
    cycles: int = 0  # delete + recreate rounds
    valid: set = field(default_factory=set)  # sha256 of every version pushed (or attempted)


def _clean(err: BaseException) -> tuple[bool, str]:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    name = type(err).__name__
    if isinstance(err, (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError)):
        return True, name
    if isinstance(err, HfHubHTTPError):
        status = getattr(err.response, "status_code", None) if err.response is not None else None
        return status is not None and 400 <= status < 600, f"{name} {status}"
    # hf_xet (the Xet path of downloads and pushes) raises RuntimeError with the CAS's HTTP status in its text
    # (huggingface_hub re-raises a push's as ConnectionError "Network error: ..."):
    # a 4xx/5xx answer there is as clean as HfHubHTTPError's (a reconstruction of a file whose repo was just
    # deleted: 404; a shard naming a xorb lost with a killed server: 400). Its other errors (bad data, a
    # connection reset) stay unclean.
    xet_status = re.search(r"HTTP status (?:client|server) error \((\d{3})", str(err))
    if type(err) in (RuntimeError, ConnectionError) and xet_status:
        return True, f"Xet HTTP {xet_status.group(1)}"
    return False, name


def churn(
    srv,
    *,
    downloads: int,
    pushers: int,
    seconds: float,
    file_kib: int,
    workdir: Path,
    repo: str = "alice/churn",
    token: str | None = None,
    churn_pause: float = 0.3,
) -> ChurnResult:
    from hubserver import ALICE
    from huggingface_hub import hf_hub_download

    token = token or ALICE
    api = srv.api(token)
    result = ChurnResult()
    valid: set[str] = result.valid
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def new_content() -> bytes:
        data = os.urandom(file_kib * 1024)
        with lock:
            valid.add(hashlib.sha256(data).hexdigest())
        return data

    def record(kind: str, t0: float, err: BaseException | None) -> None:
        with lock:
            if err is None:
                result.calls[kind] += 1
                result.latencies[kind].append(time.perf_counter() - t0)
                return
            ok, label = _clean(err)
            result.errors[f"{kind}: {label}"] += 1
            if not ok:
                import traceback

                where = traceback.extract_tb(err.__traceback__)[-1]
                at = f" (at {Path(where.filename).name}:{where.lineno})"
                result.unclean.append((kind, f"{type(err).__name__}: {str(err)[:300]}{at}"))

    api.create_repo(repo, exist_ok=True)
    api.upload_file(path_or_fileobj=new_content(), path_in_repo=FILE, repo_id=repo)

    def downloader(k: int) -> None:
        cache = workdir / f"churn-dl-{k}"
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                got = hf_hub_download(repo, FILE, cache_dir=cache, endpoint=srv.url, token=token)
                digest = hashlib.sha256(Path(got).read_bytes()).hexdigest()
                with lock:
                    if digest not in valid:
                        result.wrong_bytes += 1
                record("download", t0, None)
            except Exception as err:  # noqa: BLE001 (classified: clean or not)
                record("download", t0, err)
            finally:
                shutil.rmtree(cache, ignore_errors=True)

    def pusher(k: int) -> None:
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                api.upload_file(
                    path_or_fileobj=new_content(),
                    path_in_repo=FILE,
                    repo_id=repo,
                    commit_message=f"pusher {k}",
                )
                record("push", t0, None)
            except Exception as err:  # noqa: BLE001
                record("push", t0, err)

    def churner() -> None:
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                api.delete_repo(repo, missing_ok=True)
                api.create_repo(repo, exist_ok=True)
                api.upload_file(path_or_fileobj=new_content(), path_in_repo=FILE, repo_id=repo)
                record("churn", t0, None)
                with lock:
                    result.cycles += 1
            except Exception as err:  # noqa: BLE001
                record("churn", t0, err)
            time.sleep(churn_pause)

    threads = [threading.Thread(target=downloader, args=(k,)) for k in range(downloads)]
    threads += [threading.Thread(target=pusher, args=(k,)) for k in range(pushers)]
    threads.append(threading.Thread(target=churner))
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 300)
    result.seconds = time.perf_counter() - t0
    if any(t.is_alive() for t in threads):
        result.unclean.append(("client", "a client thread did not finish (a hang)"))
    return result


def check_store(root: Path) -> list[str]:
    """Problems in a server root at rest: a ref naming a missing commit, a commit naming a missing or
    wrong-sized blob, leftovers in .tmp (half commits, half deletes, temp uploads)."""
    problems = []
    for refs_file in (root / "repos").glob("*/*/*/refs.json"):
        repo_dir = refs_file.parent
        refs = json.loads(refs_file.read_text())
        for kind in ("heads", "tags"):
            for name, cid in refs.get(kind, {}).items():
                commit_file = repo_dir / "commits" / f"{cid}.json"
                if not commit_file.is_file():
                    problems.append(f"{repo_dir.name}: {kind} {name} -> missing commit {cid}")
                    continue
        for commit_file in (repo_dir / "commits").glob("*.json"):
            tree = json.loads(commit_file.read_text())["tree"]
            for path, (sha, size, _oid, _lfs, *xet) in tree.items():
                if xet and xet[0]:  # stored as Xet: the file must reconstruct to its sha256
                    problems += _check_xet_file(root, f"{repo_dir.name}@{commit_file.stem[:12]}: {path}", sha, size,
                                                xet[0])  # fmt: skip
                    continue
                blob = root / "blobs" / sha[:2] / sha
                if not blob.is_file() or blob.stat().st_size != size:
                    problems.append(f"{repo_dir.name}@{commit_file.stem[:12]}: {path} -> missing/short blob")
                elif hashlib.sha256(blob.read_bytes()).hexdigest() != sha:
                    problems.append(
                        f"{repo_dir.name}@{commit_file.stem[:12]}: {path} -> blob content differs"
                    )
    leftovers = list((root / ".tmp").iterdir())
    if leftovers:
        problems.append(f".tmp holds {len(leftovers)} leftovers: {[p.name for p in leftovers[:5]]}")
    return problems


def _check_xet_file(root: Path, where: str, sha: str, size: int, xet_hash: str) -> list[str]:
    """A committed Xet-stored file, reconstructed from the server's own store, hashes to its sha256."""
    from types import SimpleNamespace

    from hubtool.hub.server.xet.store import XetStore

    store = XetStore(SimpleNamespace(root=root))
    digest = hashlib.sha256()
    try:
        for piece in store.stream(xet_hash, 0, size - 1) if size else ():
            digest.update(piece)
    except OSError as err:
        return [f"{where} -> Xet file {xet_hash[:12]} cannot be reconstructed ({err})"]
    return [] if digest.hexdigest() == sha else [f"{where} -> Xet file {xet_hash[:12]} reconstructs to other bytes"]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
