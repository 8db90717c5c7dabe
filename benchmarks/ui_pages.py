"""The catalog list page at scale (issue 16): time to first byte of `GET /_/?filters` from a running `hub ui`
side by side with `hub list --json` for the same filter, then the server's RSS while paging through every
expert.

1. For each filter: the median time to first byte of the page over real HTTP (a fresh connection per
   request, after one warm-up), and the median wall time of `hub list --json` with the same filter in a
   fresh process (after one warm-up); the ratio page / command (the goal: <= 1.5x).
2. Paging: from /_/?limit=PAGE, follow the page's own "next" link to the end, sampling the server's RSS
   (/proc/PID/status VmRSS) after every page; start, peak and end RSS (the goal: flat).

Usage:
  .venv/bin/python benchmarks/ui_pages.py [--experts 100000] [--repeat 7] [--page 1000]
The catalog is benchmarks/list_latency.py's (benchmarks/bulk.py's synthetic experts), kept in --workdir
(default /tmp/hub-bench) and reused by later runs with the same --experts.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from list_latency import catalog  # benchmarks/list_latency.py, beside this script

# (label, the page's query parameters, the same filter as `hub list` arguments)
FILTERS = [
    ("(no filter)", {}, []),
    ("task task7", {"task": "task7"}, ["--task", "task7"]),
    ("category task3,task4", {"category": "task3,task4"}, ["--tasks", "task3,task4"]),
    ("base smollm2-135m", {"base": "smollm2-135m"}, ["--base", "smollm2-135m"]),
    ("kind lora", {"kind": "lora"}, ["--kind", "lora"]),
    ("tag synthetic", {"tag": "synthetic"}, ["--tag", "synthetic"]),
    ("where rougeL>=40 sort -rougeL", {"where": "rougeL>=40", "sort": "-rougeL"},
     ["--where", "rougeL>=40", "--sort", "-rougeL"]),
    ("sort -created limit 100", {"sort": "-created", "limit": "100"}, ["--sort", "-created", "--limit", "100"]),
]  # fmt: skip


def start_ui(url: str, home: str) -> tuple[subprocess.Popen, str, Path]:
    """A real `hub ui --port 0` on the catalog: (the process, its address, its log)."""
    log = Path(home) / "ui.log"
    env = dict(os.environ, HUB_HOME=home)
    env.pop("HUB_CATALOG", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hubtool", "ui", "--port", "0", "--catalog", url],
                                stdout=out, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = re.search(r"http://127\.0\.0\.1:\d+/_/", log.read_text())
        if found:
            return proc, found.group(0), log
        if proc.poll() is not None:
            raise SystemExit(f"hub ui exited ({proc.returncode}):\n{log.read_text()}")
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"hub ui printed no address in 120 s:\n{log.read_text()}")


def fetch(address: str, path: str) -> tuple[float, float, int, str]:
    """(seconds to the first byte of the answer, seconds to its end, status, body) of GET path, on a fresh
    connection (Connection: close: the body ends where the stream does)."""
    parts = urlsplit(address)
    request = f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: text/html\r\nConnection: close\r\n\r\n"
    t0 = time.perf_counter()
    with socket.create_connection((parts.hostname, parts.port), timeout=600) as sock:
        sock.sendall(request.encode())
        chunks = [sock.recv(65536)]
        first = time.perf_counter() - t0
        while chunk := sock.recv(1 << 20):
            chunks.append(chunk)
    total = time.perf_counter() - t0
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = dechunk(body)
    return first, total, status, body.decode("utf-8", "replace")


def dechunk(data: bytes) -> bytes:
    out, at = [], 0
    while True:
        end = data.index(b"\r\n", at)
        size = int(data[at:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(data[end + 2 : end + 2 + size])
        at = end + 2 + size + 2


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit(f"no VmRSS for process {pid}")


def time_to_first_byte(address: str, repeat: int) -> None:
    """Each filter at the defaults of both (25 rows, unless the filter gives a limit)."""
    bindir = Path(sys.executable).parent
    env = dict(os.environ, COLUMNS="120")
    env.pop("HUB_CATALOG", None)
    print(f"\n{'filter':<34} {'rows':>5} {'page TTFB ms':>13} {'page all ms':>12} {'hub list --json ms':>19} "
          f"{'page / list':>12}")  # fmt: skip
    worst = 0.0
    for label, params, args in FILTERS:
        path = "/_/?" + urlencode(params)
        argv = [str(bindir / "hub"), "list", *args, "--json", "--catalog", URL]
        first, total, status, body = fetch(address, path)  # warm-up
        if status != 200:
            raise SystemExit(f"GET {path}: {status}\n{body[:2000]}")
        rows = len(re.findall(r'<td><a href="/_/experts/', body))
        ttfb, alls = [], []
        for _ in range(repeat):
            first, total, status, _ = fetch(address, path)
            ttfb.append(first)
            alls.append(total)
        subprocess.run(argv, check=True, capture_output=True, env=env)  # warm-up
        cli = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            done = subprocess.run(argv, check=True, capture_output=True, env=env)
            cli.append(time.perf_counter() - t0)
        listed = done.stdout.count(b'"ref"')
        if listed != rows:
            print(f"  note: the page shows {rows} rows, hub list --json {listed}")
        ratio = statistics.median(ttfb) / statistics.median(cli)
        worst = max(worst, ratio)
        print(f"{label:<34} {rows:>5} {1000 * statistics.median(ttfb):>13.1f} {1000 * statistics.median(alls):>12.1f} "
              f"{1000 * statistics.median(cli):>19.1f} {ratio:>11.2f}x")  # fmt: skip
    print(f"slowest page / hub list --json (medians): {worst:.2f}x (goal <= 1.50x)")


def page_through(proc: subprocess.Popen, address: str, page_size: int, experts: int) -> None:
    path = f"/_/?limit={page_size}"
    start = rss_kib(proc.pid)
    samples, seen, pages, slowest = [start], 0, 0, 0.0
    t0 = time.perf_counter()
    while path:
        _, total, status, body = fetch(address, path)
        if status != 200:
            raise SystemExit(f"GET {path}: {status}\n{body[:2000]}")
        pages += 1
        slowest = max(slowest, total)
        seen += len(re.findall(r'<td><a href="/_/experts/', body))
        samples.append(rss_kib(proc.pid))
        found = re.search(r'<a href="(/_/\?[^"]+)" rel="next"', body)
        path = html.unescape(found.group(1)) if found else None
    elapsed = time.perf_counter() - t0
    print(f"\npaging through every expert: {pages} pages of {page_size}, {seen} rows "
          f"({'all' if seen == experts else f'expected {experts}'}), {elapsed:.1f} s, slowest page {slowest:.3f} s")  # fmt: skip
    print(f"server RSS: start {start / 1024:.1f} MiB, peak {max(samples) / 1024:.1f} MiB, "
          f"end {samples[-1] / 1024:.1f} MiB (goal: flat)")  # fmt: skip


def main() -> None:
    global URL
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experts", type=int, default=100_000, help="experts in the catalog")
    ap.add_argument("--repeat", type=int, default=7, help="timed requests and commands per filter")
    ap.add_argument("--page", type=int, default=1000, help="rows per page when paging (the list's ?limit)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/hub-bench"))
    a = ap.parse_args()
    if not 1 <= a.page <= 10_000:
        raise SystemExit(f"--page {a.page}: expected a number in [1, 10000] (the page's limit)")
    URL, built = catalog(a.workdir, a.experts)
    print(f"catalog: {URL} ({a.experts} experts, " + ("reused)" if built is None else f"built in {built:.1f} s)"))
    with tempfile.TemporaryDirectory(prefix="hub-ui-bench-") as home:
        proc, address, _ = start_ui(URL, home)
        try:
            print(f"hub ui: {address} (pid {proc.pid})")
            time_to_first_byte(address, a.repeat)
            page_through(proc, address, a.page, a.experts)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


URL = ""

if __name__ == "__main__":
    main()
