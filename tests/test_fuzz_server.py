"""Request fuzzing of a real `hub serve` (tests/fuzz_server.py; benchmarks/fuzz_server.py runs 10,000 cases).

A few hundred mutated commit NDJSON bodies, preupload and LFS batch JSON, URLs with hostile paths and odd
headers, with a fixed seed: every answer is a clean 4xx with a JSON error (or a correct accept), never a
500, a traceback in the server's log, a hang, or memory growth, and nothing is written outside --root.
"""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from fuzz_server import REPO, Fuzzer
from hubserver import Server, write_tokens

CASES = 300


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    # A 1 MiB commit cap (so "body too large" cases stay cheap); a failed-auth limit high enough that the
    # header cases with bad tokens are answered 401, not 429 (the limiter has its own test).
    srv = Server(
        base / "root",
        write_tokens(base / "tokens.txt"),
        "--max-commit-gib",
        str(1 / 1024),
        "--auth-burst",
        "100000",
    )
    yield srv
    srv.stop()


def test_fuzzed_requests_get_clean_answers(fuzz_server):
    fuzz = Fuzzer(fuzz_server, seed=1234, timeout=20)
    fuzz.setup()
    report = fuzz.run(CASES)
    assert not report.failures, "\n".join(map(repr, report.failures[:10]))
    # The mix really exercised every kind, with both refusals and accepts.
    assert set(report.by_kind) == {"commit", "preupload", "lfs", "path", "header", "card", "xet"}
    assert sum(n for s, n in report.by_status.items() if 400 <= s < 500) > CASES // 2
    assert report.accepted["commit"] > 0 and report.accepted["preupload"] > 0
    assert report.by_kind["xet"] > 20 and report.accepted["xet"] > 0  # the CAS refused and accepted
    assert 413 in report.by_status  # the commit cap answered
    assert not fuzz.log_problems(), fuzz.log_problems()[:5]
    assert fuzz_server.proc.poll() is None
    growth_mib = (report.rss_end_kib - report.rss_start_kib) / 1024
    assert growth_mib < 64, f"server RSS grew {growth_mib:.0f} MiB over {CASES} cases"
    assert report.slowest < 10, f"slowest answer took {report.slowest:.1f} s"
    assert not fuzz.check_root({"tokens.txt", "hub-home"})


def test_costly_patterns_and_deep_json_are_refused_fast(fuzz_server):
    """Two denial-of-service shapes found by fuzzing: a .gitignore pattern that a translated regex matches in
    exponential time, and JSON nested past Python's recursion limit."""
    fuzz = Fuzzer(fuzz_server, seed=0)
    fuzz.setup()
    body = {"files": [{"path": "a" * 120, "size": 1, "sample": ""}], "gitIgnore": "*a*a*a*a*a*a*a*a*a*b\n"}
    t0 = time.perf_counter()
    status, _, answer = fuzz_server.raw(
        "POST",
        f"/api/models/{REPO}/preupload/main",
        body=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert status == 200 and json.loads(answer)["files"][0]["shouldIgnore"] is False
    assert time.perf_counter() - t0 < 5
    for raw in (b"[" * 100_000, b'{"files": ' + b"[" * 70 + b"]" * 70 + b"}"):
        status, headers, answer = fuzz_server.raw(
            "POST",
            f"/api/models/{REPO}/preupload/main",
            body=raw,
            headers={"Content-Type": "application/json"},
        )
        assert status == 400 and headers["x-error-code"] == "InvalidJson", answer
    assert not fuzz.log_problems()


def test_every_hostile_path_is_refused_in_every_place(fuzz_server):
    """Each hostile path of the corpus as a committed file, an LFS file, a delete, a copy source and target,
    a preupload entry, a /resolve and a /tree path: 400 InvalidPath (or 404 for URLs that normalise to no
    file), nothing committed, nothing outside --root."""
    import base64

    from fuzz_server import EVIL_PATHS, dumps

    fuzz = Fuzzer(fuzz_server, seed=0)
    fuzz.setup()
    api = fuzz_server.api()
    before = api.repo_info(REPO).sha
    header = dumps({"key": "header", "value": {"summary": "evil"}})
    content = base64.b64encode(b"x").decode()
    for path in [
        p
        for p in EVIL_PATHS
        if p
        not in (
            "a?b",
            "a#b",
            "CON",
            "nul",
            "\u202e.txt",
            "é/ü.txt",
            "a%00b",
            "日本語/ファイル.bin",
            "%2e%2e/x",
            "%2e%2e%2fx",
            "a/%2e%2e/b",
            "~/x",
            "$HOME/x",
            " ",
            "a" * 255 + "/b",
        )
    ]:
        codes = {"InvalidPath", "InvalidCommitBody", "InvalidJson"} if "\ud800" in path else {"InvalidPath"}
        for line in (
            {"key": "file", "value": {"path": path, "content": content, "encoding": "base64"}},
            {"key": "lfsFile", "value": {"path": path, "algo": "sha256", "oid": fuzz.oids[0]}},
            {"key": "deletedFile", "value": {"path": path}},
            {"key": "copyFile", "value": {"srcPath": "config.json", "path": path}},
            {"key": "copyFile", "value": {"srcPath": path, "path": "ok.json"}},
        ):
            status, headers, body = fuzz_server.raw(
                "POST",
                f"/api/models/{REPO}/commit/main",
                body=header + b"\n" + dumps(line),
                headers={"Content-Type": "application/x-ndjson"},
            )
            assert status == 400 and headers["x-error-code"] in codes, (path, line["key"], status, body)
        preupload = dumps({"files": [{"path": path, "size": 1, "sample": ""}]})
        status, headers, _ = fuzz_server.raw(
            "POST",
            f"/api/models/{REPO}/preupload/main",
            body=preupload,
            headers={"Content-Type": "application/json"},
        )
        assert status == 400 and headers["x-error-code"] in codes, path
    assert api.repo_info(REPO).sha == before  # nothing was committed
    assert not fuzz.check_root({"tokens.txt", "hub-home"})
    assert not fuzz.log_problems()
