"""A warm `hub` for the CLI tests: each command still runs in its own fresh process (its own exit status,
its own stdin/stdout/stderr file descriptors, SIGKILL by HUB_CRASH_AT and all), but that process is forked
from a server that has already imported torch, instead of paying 1-2 s of torch imports per command.

    run([sys.executable, "-m", "hubtool", *args], env=..., input=..., timeout=...)
    run([".venv/bin/hub", *args], ...)

return what subprocess.run(..., capture_output=True, text=...) returns. Only torch (and numpy, safetensors,
sqlalchemy, yaml: libraries that read none of the settings the tests vary) is imported ahead: hubtool
itself, transformers and huggingface_hub (which read HF_* at import) load in the child, after its
environment is set, exactly as in a cold start.

A command runs cold (a plain subprocess) when warmth could change what it tests: the environment changes a
setting read at import time (PYTHON*, LD_PRELOAD, OMP/MKL/CUDA/TORCH/TRITON settings), or the argv is not
`hub` itself. HUB_TEST_COLD=1 runs every command cold (the check that the warm runner hides nothing);
tests that assert what `hub` imports must call subprocess themselves (test_cli's import-time test does,
through PYTHONPROFILEIMPORTTIME).

Server: one per pytest process (each xdist worker has its own), started on first use, stopped at exit.
For each request it forks a handler, which forks the command's process, sends back its pid, waits for it,
and sends back its exit status (negative for a signal, as subprocess does).
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

PRELOAD = ("torch", "numpy", "safetensors.torch", "sqlalchemy.orm", "yaml", "typer", "rich.console", "rich.table")
_IMPORT_TIME = ("PYTHON", "LD_", "OMP_", "MKL_", "KMP_", "CUDA_", "TORCH", "TRITON", "OPENBLAS", "NVIDIA_")
_HUB_SCRIPT = Path(sys.executable).with_name("hub")

# --- the wire: a length-prefixed JSON message, optionally with file descriptors ------------------------------


def _send(sock: socket.socket, msg: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(msg).encode()
    data = struct.pack("<I", len(data)) + data
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.sendall(data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("warm hub: connection closed")
        buf += chunk
    return buf


def _recv(sock: socket.socket, with_fds: int = 0) -> tuple[dict, list[int]]:
    fds: list[int] = []
    if with_fds:
        head, fds, _, _ = socket.recv_fds(sock, 4, with_fds)
        head += _recv_exact(sock, 4 - len(head))
    else:
        head = _recv_exact(sock, 4)
    (n,) = struct.unpack("<I", head)
    return json.loads(_recv_exact(sock, n)), list(fds)


# --- the server ------------------------------------------------------------------------------------------------


def _serve(path: str) -> None:
    import importlib
    import signal

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    listener.settimeout(5)
    parent = os.getppid()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # handlers are reaped by the kernel
    print("ready", flush=True)
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            if os.getppid() != parent:  # the tests are gone
                os._exit(0)
            continue
        if os.fork() == 0:
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            handler = os.getpid()
            try:
                _handle(conn)
            finally:
                if os.getpid() == handler:  # the command's process goes on up to the interpreter's exit
                    os._exit(0)
        conn.close()


def _handle(conn: socket.socket) -> None:
    request, fds = _recv(conn, with_fds=3)
    pid = os.fork()
    if pid == 0:
        conn.close()
        _child(request, fds)
        sys.exit(0)  # hub returned: exit 0, through the interpreter's own exit
    for fd in fds:
        os.close(fd)
    _send(conn, {"pid": pid})
    _, status, usage = os.wait4(pid, 0)
    _send(conn, {"returncode": os.waitstatus_to_exitcode(status), "cpu": usage.ru_utime + usage.ru_stime})


def _child(request: dict, fds: list[int]) -> None:
    """Become `hub ARGS`: its fds, directory, environment and argv, then run it as `python -m hubtool` or the
    script would. Whatever ends it (SystemExit, an uncaught exception) rises out of the server's __main__,
    so the interpreter exits the way a cold one does: its exit code, its traceback, atexit, thread joins,
    and the finalization that closes SQLite connections (checkpointing their WAL)."""
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        if "numpy" in sys.modules:  # a fresh process draws a fresh global seed
            sys.modules["numpy"].random.seed()
    except BaseException:  # noqa: BLE001 - a setup failure must not run on as the server
        os._exit(126)
    import runpy

    if request["script"]:
        sys.argv = [request["script"], *request["args"]]
        sys.path[0] = str(Path(request["script"]).parent)
        runpy.run_path(request["script"], run_name="__main__")
    else:
        sys.argv = ["-m", *request["args"]]
        sys.path[0] = os.getcwd()
        runpy.run_module("hubtool", run_name="__main__", alter_sys=True)


# --- the client ------------------------------------------------------------------------------------------------

_server: dict[str, Any] = {}
stats = {"warm": 0, "warm_cpu_s": 0.0}  # commands run warm, and their CPU seconds (user + system)
_lock = threading.Lock()


def _start() -> str:
    with _lock:
        if _server.get("pid") == os.getpid():
            return _server["path"]
        folder = tempfile.mkdtemp(prefix="warmhub-")
        path = os.path.join(folder, "s")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HUB_", "HF_"))}
        proc = subprocess.Popen([sys.executable, __file__, path], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, cwd=folder)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready", "warm hub did not start"
        _server.update(pid=os.getpid(), path=path, proc=proc, env=env)

        def stop() -> None:
            proc.kill()
            proc.wait()
            proc.stdout.close()

        atexit.register(stop)
        return path


def _warm_form(argv: list[str]) -> tuple[str | None, list[str]] | None:
    """(script or None for `-m hubtool`, args) when argv is `hub` itself; None otherwise."""
    if len(argv) >= 3 and argv[0] == sys.executable and argv[1:3] == ["-m", "hubtool"]:
        return None, argv[3:]
    if argv and Path(argv[0]) == _HUB_SCRIPT:
        return str(_HUB_SCRIPT), argv[1:]
    return None


def _import_time_settings(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(_IMPORT_TIME) or k.endswith("_NUM_THREADS")}


def run(argv: list[Any], *, env: dict[str, str] | None = None, input: str | bytes | None = None,
        timeout: float | None = None, text: bool = False, cwd: str | os.PathLike | None = None,
        **kwargs: Any) -> subprocess.CompletedProcess:
    """subprocess.run(argv, env=env, input=input, capture_output=True, timeout=timeout, text=text, check=False),
    forked warm when nothing the test varies is read at import time (see the module's docstring)."""
    argv = [a if isinstance(a, bytes) else str(a) for a in argv]
    env = dict(os.environ if env is None else env)
    form = None if any(isinstance(a, bytes) for a in argv) else _warm_form(argv)
    if form is None or os.environ.get("HUB_TEST_COLD") == "1" or kwargs:
        return subprocess.run(argv, env=env, input=input, capture_output=True, timeout=timeout, text=text,
                              cwd=cwd, check=False, **kwargs)
    path = _start()
    if _import_time_settings(env) != _import_time_settings(_server["env"]):
        return subprocess.run(argv, env=env, input=input, capture_output=True, timeout=timeout, text=text,
                              cwd=cwd, check=False)
    script, args = form
    stdin_r, stdin_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        request = {"script": script, "args": args, "env": env, "cwd": os.fspath(cwd or os.getcwd())}
        _send(sock, request, [stdin_r, out_w, err_w])
    finally:
        for fd in (stdin_r, out_w, err_w):
            os.close(fd)
    pid = _recv(sock)[0]["pid"]
    data = input.encode() if isinstance(input, str) else input
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}

    def feed() -> None:
        try:
            if data:
                os.write(stdin_w, data)  # small inputs only: what the tests type at a prompt
        except BrokenPipeError:
            pass
        finally:
            os.close(stdin_w)

    def drain(fd: int) -> None:
        while block := os.read(fd, 65536):
            chunks[fd].append(block)
        os.close(fd)

    threads = [threading.Thread(target=feed, daemon=True)]
    threads += [threading.Thread(target=drain, args=(fd,), daemon=True) for fd in (out_r, err_r)]
    for t in threads:
        t.start()
    sock.settimeout(timeout)
    try:
        done = _recv(sock)[0]
        returncode = done["returncode"]
        stats["warm"] += 1
        stats["warm_cpu_s"] += done["cpu"]
    except TimeoutError:
        os.kill(pid, 9)
        sock.settimeout(None)
        _recv(sock)
        for t in threads:
            t.join()
        raise subprocess.TimeoutExpired(argv, timeout or 0, b"".join(chunks[out_r]), b"".join(chunks[err_r]))
    finally:
        sock.close()
    for t in threads:
        t.join()
    stdout, stderr = b"".join(chunks[out_r]), b"".join(chunks[err_r])
    if text:  # what text=True does: the locale's encoding (UTF-8 here), universal newlines
        def decode(b: bytes) -> str:
            return b.decode().replace("\r\n", "\n").replace("\r", "\n")

        return subprocess.CompletedProcess(argv, returncode, decode(stdout), decode(stderr))
    return subprocess.CompletedProcess(argv, returncode, stdout, stderr)


if __name__ == "__main__":
    _serve(sys.argv[1])
