"""A real `hub serve` subprocess for tests (tests/ is on sys.path under pytest's default import mode).

    from hubserver import ALICE, Server, write_tokens
    srv = Server(tmp_path / "root", write_tokens(tmp_path / "tokens.txt"))
    api = srv.api()          # HfApi(endpoint=srv.url, token=ALICE)
    srv.stop()

Each server listens on a free loopback port with its own --root; its log (never a token) goes to
<root's parent>/serve-<root name>-<port>.log. The environment of the server drops HF_* and HUB_*.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ALICE, BOB = "tok-alice-0123456789", "tok-bob-9876543210"
TOKENS = f"# hub serve users\nalice {ALICE}\n\n# bob joined later\nbob {BOB}\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_tokens(path: Path, text: str = TOKENS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


class Server:
    def __init__(self, root: Path, token_file: Path | None, *extra: str, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root.parent / f"serve-{root.name}-{self.port}.log"
        cmd = [sys.executable, "-m", "hubtool", "serve", "--port", str(self.port), "--root", str(root)]
        if token_file is not None:
            cmd += ["--token-file", str(token_file)]
        cmd += extra
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUB_"))}
        env["HUB_HOME"] = str(root.parent / "hub-home")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub serve exited ({self.proc.returncode}):\n{self.log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"hub serve did not listen within 60 s:\n{self.log.read_text()}"
                    ) from None
                time.sleep(0.05)

    def stop(self, *, kill: bool = False) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)

    def status(self, key: str) -> int:
        """A /proc/PID/status value in kB (VmHWM: peak RSS)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def api(self, token: str | bool = ALICE):
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.url, token=token)

    def raw(
        self,
        method: str,
        path: str,
        *,
        token: str | None = ALICE,
        body: bytes | None = None,
        headers: dict | None = None,
    ):
        """One request with the exact path given (no normalisation) -> (status, headers, body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            hdrs = dict(headers or {})
            if token:
                hdrs["Authorization"] = f"Bearer {token}"
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()


def client_env(srv: Server, tmp: Path, token: str | None = ALICE, **extra: str) -> dict:
    """The environment of a client subprocess: HF_ENDPOINT at `srv`, HF_TOKEN (unless None), and an
    HF_HOME / HF_HUB_CACHE of its own under `tmp`, so no stored login or cache of the machine is used."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=srv.url, HF_HOME=str(tmp / "hf-home"), HF_HUB_CACHE=str(tmp / "hf-cache"))
    if token is not None:
        env["HF_TOKEN"] = token
    env.update(extra)
    return env
