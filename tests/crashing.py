"""Crash harness: kill -9 the real `hub` CLI (or the `hub serve` it talks to) and check what is left.

Shared by tests/test_crash.py (a handful of runs) and benchmarks/crash.py (--runs N per operation).

    lab = Lab(tmp_path)                                  # a HUB_HOME, a tiny base model, packed experts
    run = lab.hub("import", lab.new_file(), at="register-placed")         # dies at that crash point
    run = lab.hub("import", lab.new_file(), after="blob-stage", delay=0.01) # SIGKILL 10 ms after it
    problems = lab.check()                               # [] when the catalog and store are consistent

How a kill is aimed: hubtool.fileio.crash_point(label) marks the write paths (blob-stage, blob-place,
register-placed, register-commit, blob-trashed, remove-committed, write:<file>, folder:<dir>,
folder-rename:<dir>, push-commit, pull-register, fetch-start, fetch-downloaded). With `at` the child
SIGKILLs itself at the first label matching the glob. With `after` the child reports every label on a
pipe (HUB_CRASH_NOTIFY_FD) and this process SIGKILLs it (or another process: the server) `delay`
seconds after the first label matching the glob: a random delay there is a kill at a random point of the
part that matters, from outside, as kill -9 from a shell would be.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # benchmarks/crash.py imports this file too
    sys.path.insert(0, str(TESTS))

from conftest import write_sparse_expert

HUB = (sys.executable, "-m", "hubtool")


@dataclass
class Run:
    args: tuple[str, ...]
    killed: bool  # SIGKILLed before it finished (by itself at `at`, or by us)
    returncode: int | None
    seconds: float  # start to exit
    after_seconds: float | None  # from the `after` label to exit (None: label never reached)
    stdout: str
    stderr: str
    labels: list[str] = field(default_factory=list)
    label_times: dict[str, float] = field(default_factory=dict)  # unkilled runs: label -> s after `after`

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run_cli(
    args: Sequence[object],
    env: dict[str, str],
    *,
    at: str | None = None,
    after: str | None = None,
    delay: float | None = 0.0,
    victim: Any = None,
    then_child: bool = False,
    timeout: float = 300.0,
) -> Run:
    """Run `hub ARGS`, killed as `at` / `after`+`delay` say (see the module docstring; delay None: never
    killed, only timed from the `after` label to its exit). `victim`: a Popen to
    SIGKILL instead of the child (the server, for a commit killed server-side); then_child: SIGKILL the
    child right after the victim (saves the client's retries when only the server's state matters)."""
    args = tuple(map(str, args))
    env = {**env, "COLUMNS": "250"}
    env.pop("HUB_CRASH_AT", None)
    env.pop("HUB_CRASH_NOTIFY_FD", None)
    if at is not None:
        env["HUB_CRASH_AT"] = at
    read_fd = write_fd = None
    if after is not None:
        read_fd, write_fd = os.pipe()
        env["HUB_CRASH_NOTIFY_FD"] = str(write_fd)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen([*HUB, *args], env=env, stdout=out, stderr=err,
                                pass_fds=() if write_fd is None else (write_fd,))  # fmt: skip
        labels: list[str] = []
        times: dict[str, float] = {}  # label -> seconds after the `after` label (unkilled runs only)
        reached = None
        if write_fd is not None:
            os.close(write_fd)
            reached = _wait_for(read_fd, after, labels, started + timeout)
            if reached is not None and delay is None:  # not to be killed: time every later label
                _timed(read_fd, times, started + timeout)
            if reached is not None and delay is not None:
                if delay > 0:
                    time.sleep(delay)
                target = victim or proc
                if proc.poll() is None and target.poll() is None:
                    target.send_signal(signal.SIGKILL)
                    if victim is not None and then_child:
                        target.wait()
                        proc.send_signal(signal.SIGKILL)
            _drain(read_fd, labels)
        try:
            returncode = proc.wait(timeout=max(1.0, started + timeout - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            returncode = proc.wait()
        ended = time.monotonic()
        if read_fd is not None:
            _drain(read_fd, labels)
            os.close(read_fd)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    killed = returncode == -signal.SIGKILL
    if victim is not None and victim.poll() is not None:
        killed = killed or victim.returncode == -signal.SIGKILL
    if reached is not None:
        times = {label: t - reached for label, t in times.items()}
    return Run(args, killed, returncode, ended - started, None if reached is None else ended - reached,
               stdout, stderr, labels, times)  # fmt: skip


def _timed(fd: int, times: dict[str, float], deadline: float) -> None:
    """Read labels until EOF, noting when each first arrived (monotonic seconds)."""
    buffer = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 4096) if ready else b""
        if not chunk:
            return
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            times.setdefault(line.decode(), time.monotonic())


def _wait_for(fd: int, pattern: str, labels: list[str], deadline: float) -> float | None:
    """Read labels until one matches `pattern`; the time it arrived, or None at EOF / the deadline."""
    buffer = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            labels.append(line.decode())
            if fnmatchcase(labels[-1], pattern):
                return time.monotonic()
    return None


def _drain(fd: int, labels: list[str]) -> None:
    os.set_blocking(fd, False)
    try:
        data = os.read(fd, 1 << 16)
    except (BlockingIOError, OSError):
        return
    labels.extend(line.decode() for line in data.split(b"\n") if line)


# -- what a lab holds -------------------------------------------------------------------------------------


def tiny_base(folder: Path):
    """A tiny Llama base model folder with a word tokenizer; (path, model)."""
    from tiny import make_tiny_llama, save_word_tokenizer

    model = make_tiny_llama(folder)
    save_word_tokenizer(folder, ["what", "is", "the", "answer", "yes", "no"])
    return folder.resolve(), model


def tiny_expert(base: Path, model: Any, path: Path, name: str, seed: int, task: str = "squad") -> Path:
    """Pack an expert of the tiny base's q/k/v projections (the base's fingerprints) to `path`."""
    import torch

    from hubtool.format import Expert, SparseDelta, fingerprint, pack

    gen = torch.Generator().manual_seed(seed)
    deltas = {}
    for wname, w in model.named_parameters():
        if wname.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
            n = w.numel()
            idx = torch.randperm(n, generator=gen)[: n // 10].sort().values
            deltas[wname] = SparseDelta(tuple(w.shape), idx, torch.randn(idx.numel(), generator=gen) * 0.1,
                                        fingerprint(w.detach()))  # fmt: skip
    pack(Expert(name=name, task=task, kind="sparse", deltas=deltas, keep_ratio=0.1, value_dtype="float32",
                base_model=str(base), targets="q_proj|k_proj|v_proj"), path)  # fmt: skip
    return path


class Lab:
    """One HUB_HOME (its SQLite catalog and blob store) with a tiny base model and a supply of experts;
    optionally a `hub serve` (tests/hubserver.py) as HF_ENDPOINT."""

    def __init__(self, root: Path, *, server: Any = None, base: tuple[Path, Any] | None = None) -> None:
        self.root = Path(root)
        self.home = self.root / "home"
        self.server = server
        self._base = base
        self.files = self.root / "files"
        self.files.mkdir(parents=True, exist_ok=True)
        self.seed = 1000
        self.env = self.env_for(self.home)

    @property
    def base(self) -> Path:
        if self._base is None:  # made on first use: transformers costs seconds to import
            self._base = tiny_base(self.root / "base")
        return self._base[0]

    @property
    def model(self) -> Any:
        self.base  # noqa: B018
        return self._base[1]

    def env_for(self, home: Path, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUB_", "HUGGING"))}
        env.update(HUB_HOME=str(home), OMP_NUM_THREADS="1", HF_HOME=str(self.root / "hf-home"),
                   HF_HUB_CACHE=str(self.root / "hf-cache"))  # fmt: skip
        if self.server is not None:
            from hubserver import ALICE

            env.update(HF_ENDPOINT=self.server.url, HF_TOKEN=ALICE)
        env.update(extra)
        return env

    def new_file(self, name: str = "qa", *, fitted: bool = False) -> Path:
        """A fresh packed expert (new content each call). fitted: of the tiny base (composable)."""
        self.seed += 1
        path = self.files / f"{name}-{self.seed}.safetensors"
        if fitted:
            return tiny_expert(self.base, self.model, path, name, self.seed)
        return write_sparse_expert(path, name=name, seed=self.seed)

    def catalog(self, home: Path | None = None, url: str | None = None):
        """The catalog of `home` (its registry.db, or `url`: a shared one) with home's blob store."""
        from hubtool.registry import Catalog

        home = home or self.home
        return Catalog(url or f"sqlite:///{home / 'registry.db'}", blobs=home / "blobs")

    def register(self, name: str = "qa", *, fitted: bool = False):
        with self.catalog() as cat:
            return cat.register(self.new_file(name, fitted=fitted))

    def hub(self, *args: object, env: dict | None = None, **kill: Any) -> Run:
        return run_cli(args, env or self.env, **kill)

    # -- checks ------------------------------------------------------------------------------------------

    def check(
        self,
        home: Path | None = None,
        env: dict | None = None,
        *,
        cli: bool = False,
        shared_catalog: bool = False,
    ) -> tuple[list[str], dict]:
        """What a crash may not leave, checked in `home`: (problems, the first verify's report, plus
        "repaired": what --repair removed or restored).

        - no half blob: every blob-address file hashes to its name (rows or not);
        - no orphan row: every row's blob is there, or in the trash a killed `hub rm` left (which
          --repair puts back), or on its Hub repo;
        - a repair ends ok, and a second verify finds nothing.
        cli: run `hub verify [--repair] --json` in subprocesses; else Catalog.verify() in this process
        (the same code, a second faster).
        shared_catalog: `home` shares another home's catalog (HUB_CATALOG) but not its store, so that home's
        rows that were never pushed are `missing` here by design (verify is right to say so); every other
        finding still counts.
        """
        home = home or self.home
        env = env or self.env_for(home)
        problems = []
        blobs = home / "blobs"
        for path in sorted(blobs.rglob("*.safetensors")) if blobs.is_dir() else []:
            if path.name.startswith((".tmp-", ".trash-")):
                continue
            if hashlib.sha256(path.read_bytes()).hexdigest() != path.name.removesuffix(".safetensors"):
                problems.append(f"half blob {path}")
        if cli:
            report = _json(run_cli(["verify", "--json"], env), problems)
            fixed = _json(run_cli(["verify", "--repair", "--json"], env), problems)
            again = _json(run_cli(["verify", "--json"], env), problems)
        else:
            with _hub_home(home), self.catalog(home, env.get("HUB_CATALOG")) as cat:
                report = cat.verify().to_dict()
                fixed = cat.verify(repair=True).to_dict()
                again = cat.verify().to_dict()
        for ref in report.get("mismatched", []):
            problems.append(f"row {ref}: blob does not match")
        trash = {Path(p).name.removeprefix(".trash-") for p in report.get("trash", [])}
        with self.catalog(home, env.get("HUB_CATALOG")) as cat:
            for ref in [] if shared_catalog else report.get("missing", []):
                if Path(cat.get(ref).blob).name not in trash:
                    problems.append(f"orphan row {ref}: its blob is nowhere")
        if not _clean(fixed, shared_catalog):
            problems.append(f"verify --repair left problems: {json.dumps(fixed)[:400]}")
        if not _clean(again, shared_catalog):
            problems.append(f"verify after --repair still finds problems: {json.dumps(again)[:400]}")
        report["repaired"] = fixed.get("removed", []) + [{"kind": "restored", "path": p}
                                                         for p in fixed.get("restored", [])]  # fmt: skip
        return problems, report

    def still_works(self, env: dict | None = None, *, compose: bool = False) -> list[str]:
        """list, show, import again (and compose): every command works after the crash."""
        env = env or self.env
        problems = []
        listed = run_cli(["list", "--json", "--limit", "1000"], env)
        rows = _json(listed, problems)
        if not isinstance(rows, list):
            return problems + ["hub list gave no rows"]
        for row in rows[-1:]:
            shown = run_cli(["show", row["ref"], "--json"], env)
            if shown.returncode != 0:
                problems.append(f"hub show {row['ref']}: {shown.stderr.strip()[:300]}")
        imported = run_cli(["import", self.new_file("again")], env)
        if imported.returncode != 0:
            problems.append(f"hub import again: {imported.stderr.strip()[:300]}")
        if compose:
            with self.catalog() as cat:
                fitted = [r.ref for r in cat.list() if self._base and r.base_model == str(self.base)]
            if fitted:
                out = self.root / f"still-{time.monotonic_ns()}"
                done = run_cli(["compose", "--experts", ",".join(fitted[-2:]), "--out", out], env)
                if done.returncode != 0 or not folder_complete(out):
                    problems.append(f"hub compose: {done.stderr.strip()[:300]}")
        return problems


@contextmanager
def _hub_home(home: Path) -> Iterator[None]:
    """HUB_HOME for an in-process Catalog.verify (it sweeps $HUB_HOME/tmp)."""
    old = os.environ.get("HUB_HOME")
    os.environ["HUB_HOME"] = str(home)
    try:
        yield
    finally:
        if old is None:
            del os.environ["HUB_HOME"]
        else:
            os.environ["HUB_HOME"] = old


def _clean(report: dict, shared_catalog: bool) -> bool:
    """A verify report's ok; with shared_catalog, not counting rows whose blobs this home never had."""
    if not shared_catalog:
        return bool(report.get("ok"))
    kinds = ("mismatched", "orphans", "recent", "temp", "trash", "scratch", "errors")
    return bool(report) and not any(report.get(k) for k in kinds)


def _json(run: Run, problems: list[str]) -> Any:
    try:
        return json.loads(run.stdout)
    except ValueError:
        problems.append(f"hub {' '.join(run.args)} (exit {run.returncode}): {run.stderr.strip()[:300]}")
        return {}


def folder_complete(folder: Path) -> bool:
    """A composed model folder is whole: config, index, every shard it lists with a full safetensors body."""
    index = folder / "model.safetensors.index.json"
    if not (folder / "config.json").is_file() or not index.is_file():
        return False
    shards = set(json.loads(index.read_text())["weight_map"].values())
    return all(safetensors_complete(folder / s) for s in shards)


def safetensors_complete(path: Path) -> bool:
    """The header parses and the file is as long as its tensors' offsets say."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return path.stat().st_size == 8 + n + end
    except (OSError, ValueError, KeyError):
        return False


def out_problems(out: Path) -> list[str]:
    """--out is absent or complete; never half-written."""
    if not out.exists():
        return []
    return [] if folder_complete(out) else [f"half-written --out {out}"]


def served_problems(server: Any, repo: str, before: str | None, tmp: Path) -> list[str]:
    """The repo on the (restarted) server serves a complete commit: its head is the one before the push or
    a new one, and every file of that commit downloads whole (LFS files hash to their listed sha256)."""
    api = server.api()
    problems = []
    try:
        info = api.repo_info(repo, files_metadata=True)
    except Exception as err:  # noqa: BLE001 (any failure to serve the repo is the finding)
        if before is None:
            return []  # the repo never got its first commit, or was never created: nothing to serve
        return [f"{repo}: not served after the crash ({type(err).__name__}: {err})"]
    for sibling in info.siblings or []:
        try:
            path = api.hf_hub_download(repo, sibling.rfilename, revision=info.sha, local_dir=tmp / info.sha)
        except Exception as err:  # noqa: BLE001
            problems.append(f"{repo}@{info.sha[:12]}: {sibling.rfilename} not served ({err})")
            continue
        lfs = getattr(sibling, "lfs", None)
        if lfs and hashlib.sha256(Path(path).read_bytes()).hexdigest() != lfs.sha256:
            problems.append(f"{repo}@{info.sha[:12]}: {sibling.rfilename} is not what its commit lists")
    return problems
