"""Shared pieces of the `hub serve` benchmarks (hub_throughput, hub_load).

- Server: a real `python -m hubtool serve` subprocess on a free 127.0.0.1 port, with a token file and a
  --root under the benchmark's workdir (as tests/test_serve.py starts it); its peak RSS is read from
  /proc/<pid>/status (VmHWM), its per-request times from its access log.
- make_safetensors: a real safetensors file of random bf16 tensors (torch.randn), any size in MiB.
- client workers: `python benchmarks/hub_common.py push|pull|... ARGS` runs one real huggingface_hub call
  (HfApi.upload_file / hf_hub_download, default settings: only HF_ENDPOINT, HF_TOKEN, HF_HOME and the
  cache folder are set) in a fresh process and prints {"seconds", "vmhwm_kib", ...} as JSON. The time is
  taken around the call only (imports excluded); VmHWM is the worker's own peak RSS (reset at exec).
  Others: push-many (one client of the concurrent push load), push-lfs (the LFS basic path), build-body
  (the client's work alone), get-socket / get-httpx (a GET without huggingface_hub).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "tok-bench-0123456789abcdef"
USER = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def read_through(path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def fsync_file(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def vmhwm_kib(pid: int | str = "self") -> int:
    return proc_status(pid, "VmHWM")


def proc_status(pid: int | str, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values, linear between order statistics."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return statistics.median(values)


class Server:
    """`python -m hubtool serve` on a free loopback port; stop() sends SIGTERM (SIGKILL after 15 s)."""

    def __init__(self, workdir: Path, name: str = "root", *, log_level: str = "info",
                 pythonpath: str | None = None) -> None:
        """pythonpath: put in front of the server's sys.path (os.pathsep-separated): a source tree holding
        hubtool/ (e.g. a `git archive` of an older commit, for before/after) and/or a `pip install --target`
        folder of optional packages (pybase64, httptools, uvloop); default: this checkout and its venv."""
        self.root = workdir / name
        self.token_file = workdir / "tokens.txt"
        self.token_file.write_text(f"# hub serve benchmark user\n{USER} {TOKEN}\n")
        self.token_file.chmod(0o600)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"serve-{name}.log"
        cmd = [sys.executable, "-m", "hubtool", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--root", str(self.root), "--token-file", str(self.token_file), "--log-level", log_level]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUB_"))}
        env["HUB_HOME"] = str(workdir / "hub-home")
        if pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(str(Path(p).absolute()) for p in pythonpath.split(os.pathsep))
        with open(self.log, "wb") as log:
            # cwd: not the checkout (python -m puts the cwd first on sys.path, before PYTHONPATH)
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub serve exited ({self.proc.returncode}):\n{self.log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"hub serve did not listen within 60 s:\n{self.log.read_text()}") from None
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def vmhwm_kib(self) -> int:
        return proc_status(self.proc.pid, "VmHWM")

    def vmrss_kib(self) -> int:
        return proc_status(self.proc.pid, "VmRSS")

    def cpu_seconds(self) -> float:
        """user + system CPU time of the server process so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def request_ms(self, method: str, pattern: str) -> list[float]:
        """Times (ms) of logged requests `method path` whose path matches the regex `pattern`."""
        out = []
        rx = re.compile(rf" {method} ({pattern}) \d+ (\d+)ms$")
        for line in self.log.read_text(errors="replace").splitlines():
            m = rx.search(line)
            if m:
                out.append(float(m.group(2)))
        return out

    def modules(self) -> str:
        """Which optional speed-ups the server process has loaded (from /proc/<pid>/maps)."""
        maps = Path(f"/proc/{self.proc.pid}/maps").read_text()
        found = [m for m in ("pybase64", "httptools", "uvloop") if f"/{m}/" in maps]
        return ", ".join(found) or "none"

    def client_env(self, home: Path) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
        env.update(HF_ENDPOINT=self.url, HF_TOKEN=TOKEN, HF_HOME=str(home / "hf-home"),
                   HF_HUB_CACHE=str(home / "hf-cache"))
        return env

    def api(self):
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.url, token=TOKEN)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


def make_safetensors(path: Path, mib: int, seed: int = 0) -> int:
    """A safetensors file of random bf16 tensors ([<=1920, 4096] each, N(0, 0.02)) with `mib` MiB of data;
    returns its size. Rebuilt only when missing or of another size."""
    want_data = mib << 20
    if path.is_file():
        with open(path, "rb") as f:
            header = int.from_bytes(f.read(8), "little")
        if path.stat().st_size == 8 + header + want_data:
            return path.stat().st_size
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    rows, tensors, i = want_data // (4096 * 2), {}, 0
    while rows > 0:
        n = min(rows, 1920)
        tensors[f"model.layers.{i}.mlp.down_proj.weight"] = (torch.randn(n, 4096, generator=gen) * 0.02).to(
            torch.bfloat16
        )
        rows -= n
        i += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)
    return path.stat().st_size


def stamp(path: Path, value: int) -> None:
    """Overwrite the first 8 data bytes of a safetensors file (still a valid file; a new sha256), so every
    round pushes new content and the server cannot deduplicate it."""
    with open(path, "r+b") as f:
        header = int.from_bytes(f.read(8), "little")
        f.seek(8 + header)
        f.write(value.to_bytes(8, "little"))


def run_worker(args: list[str], env: dict, *, timeout: float, log: Path | None = None) -> dict:
    """Run one client worker (this file's `push` / `pull` / ...) in a fresh process; its JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    with open(log or os.devnull, "ab") as err:
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=err, timeout=timeout, cwd=ROOT,
                              check=False)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:] if log is not None else ""
        raise RuntimeError(f"worker {args[:2]} failed ({proc.returncode}):\n{tail}")
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def command_line() -> str:
    import shlex

    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    python = os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else sys.executable
    return " ".join(shlex.quote(a) for a in [python, str(script), *sys.argv[1:]])


def check_disk(path: Path, need: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path).free
    print(f"disk: {free / 2**30:.1f} GiB free at {path}, this run needs up to {need / 2**30:.1f} GiB")
    if free < need * 1.2:
        sys.exit(f"not enough free disk at {path}")


# -- client workers (fresh processes) ------------------------------------------------------------------


def _worker(argv: list[str]) -> None:
    kind = argv[0]
    if kind == "push":  # push REPO FILE PATH_IN_REPO
        from huggingface_hub import HfApi

        repo, file, dest = argv[1:4]
        api = HfApi()
        t0 = time.perf_counter()
        info = api.upload_file(path_or_fileobj=file, path_in_repo=dest, repo_id=repo)
        seconds = time.perf_counter() - t0
        result = {"seconds": seconds, "commit": info.oid}
    elif kind == "push-many":  # push-many REPO START DEADLINE FILE...: one client of a concurrent push load
        # Imports first, then waits for START (epoch seconds, shared by all clients), then one upload_file per
        # file until DEADLINE; prints every call's latency and every error.
        from huggingface_hub import HfApi

        repo, start, deadline, files = argv[1], float(argv[2]), float(argv[3]), argv[4:]
        api = HfApi()
        api.whoami()  # connection and first-call costs before the start
        time.sleep(max(0.0, start - time.time()))
        lat, errors, pushed, nbytes = [], [], [], 0
        for file in files:
            if time.time() > deadline:
                break
            dest = f"push/{Path(file).name}"
            t0 = time.perf_counter()
            try:
                api.upload_file(path_or_fileobj=file, path_in_repo=dest, repo_id=repo)
                lat.append(time.perf_counter() - t0)
                nbytes += os.path.getsize(file)
                pushed.append([repo, dest, file])
            except Exception as err:  # noqa: BLE001 (counted and reported)
                errors.append(f"{type(err).__name__}: {str(err)[:200]}")
        result = {"lat": lat, "errors": errors, "pushed": pushed, "bytes": nbytes, "end": time.time()}
    elif kind == "push-lfs":  # push-lfs REPO FILE PATH_IN_REPO: the LFS basic transfer (raw PUT), not default
        # What huggingface_hub < 1.20 does: the server answers `lfs` to such a user agent, and with Xet off the
        # client uploads through the LFS batch API (a signed PUT of the raw bytes), then commits an lfsFile line.
        os.environ["HF_HUB_DISABLE_XET"] = "1"
        from huggingface_hub import HfApi

        repo, file, dest = argv[1:4]
        api = HfApi(headers={"user-agent": "hub-bench/1.0; hf_hub/1.19.0"})
        t0 = time.perf_counter()
        info = api.upload_file(path_or_fileobj=file, path_in_repo=dest, repo_id=repo)
        seconds = time.perf_counter() - t0
        result = {"seconds": seconds, "commit": info.oid}
    elif kind == "build-body":  # build-body FILE: the client's own work for a regular upload, no server
        # upload_file's CPU work before and while it sends: sha256 + sample of the file (CommitOperationAdd),
        # then the NDJSON body exactly as huggingface_hub's _send_commit builds it (base64 inline, json.dumps).
        import json as json_

        from huggingface_hub._commit_api import CommitOperationAdd, _prepare_commit_payload

        file = argv[1]
        t0 = time.perf_counter()
        op = CommitOperationAdd(path_in_repo="model.safetensors", path_or_fileobj=file)
        op._upload_mode = "regular"
        payload = _prepare_commit_payload(operations=[op], files_to_copy={}, commit_message="x")
        data = b"".join(json_.dumps(item).encode() + b"\n" for item in payload)
        seconds = time.perf_counter() - t0
        result = {"seconds": seconds, "body_bytes": len(data)}
    elif kind == "hash-files":  # hash-files FILE...: hf_xet's own chunking + hashing, no upload (its ceiling)
        import hf_xet

        t0 = time.perf_counter()
        hf_xet.hash_files(list(argv[1:]))
        result = {"seconds": time.perf_counter() - t0}
    elif kind == "push-folder":  # push-folder REPO DIR: HfApi.upload_folder, default settings
        from huggingface_hub import HfApi

        repo, folder = argv[1:3]
        t0 = time.perf_counter()
        info = HfApi().upload_folder(folder_path=folder, repo_id=repo)
        result = {"seconds": time.perf_counter() - t0, "commit": info.oid}
    elif kind == "get-socket":  # get-socket PATH: GET into memory over a plain socket (no HTTP library)
        import socket as socket_
        from urllib.parse import urlsplit

        url = urlsplit(os.environ["HF_ENDPOINT"])
        t0 = time.perf_counter()
        with socket_.create_connection((url.hostname, url.port)) as s:
            s.sendall(f"GET {argv[1]} HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer "
                      f"{os.environ['HF_TOKEN']}\r\nConnection: close\r\n\r\n".encode())
            buf = memoryview(bytearray(8 << 20))
            n = 0
            while k := s.recv_into(buf):
                n += k
        result = {"seconds": time.perf_counter() - t0, "bytes": n}
    elif kind == "get-httpx":  # get-httpx PATH: the client's HTTP stack alone (httpx2 stream, iter_raw, no file)
        import httpx2

        t0 = time.perf_counter()
        n = 0
        with httpx2.Client() as client, client.stream(
            "GET", os.environ["HF_ENDPOINT"] + argv[1], headers={"Authorization": f"Bearer {os.environ['HF_TOKEN']}"}
        ) as response:
            for chunk in response.iter_raw():
                n += len(chunk)
        result = {"seconds": time.perf_counter() - t0, "bytes": n}
    elif kind == "pull":  # pull REPO FILENAME CACHE_DIR
        from huggingface_hub import hf_hub_download

        repo, filename, cache = argv[1:4]
        t0 = time.perf_counter()
        got = hf_hub_download(repo, filename, cache_dir=cache)
        seconds = time.perf_counter() - t0
        result = {"seconds": seconds, "path": str(Path(got).resolve())}
    else:
        raise SystemExit(f"unknown worker {kind}")
    result["vmhwm_kib"] = vmhwm_kib()
    print(json.dumps(result))


if __name__ == "__main__":
    _worker(sys.argv[1:])
