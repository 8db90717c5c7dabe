"""Crash consistency: the real CLI killed with SIGKILL inside registration, `hub rm`, compose --out, push
(client and server side) and pull; afterwards `hub verify` finds no orphan row and no half blob,
`hub verify --repair` removes what was left, and every command works. A handful of runs (tests/crashing.py;
benchmarks/crash.py does 50 per operation at random points)."""

from __future__ import annotations

import random

import pytest
from crashing import Lab, out_problems, served_problems


@pytest.fixture
def lab(tmp_path):
    return Lab(tmp_path)


@pytest.mark.slow
def test_killed_registrations_removals_and_compose_leave_nothing_half(lab, tmp_path):
    lab.register("keep", fitted=True)
    lab.register("keep2", fitted=True)
    victim = lab.register("victim")

    # registration: killed after placing its blob, before its row commits -> an unreferenced blob
    placed = lab.hub("import", lab.new_file("placed"), at="register-placed")
    # registration: killed while staging the copy -> a temp file in the store
    staged = lab.hub("import", lab.new_file("staged"), at="blob-stage")
    # `hub rm`: killed between moving the blob aside and committing -> the row's blob is in the trash
    removed = lab.hub("rm", victim.ref, "-y", at="blob-trashed")
    # compose --out: killed just before the rename -> no --out, a hidden temp folder beside it
    out = tmp_path / "merged"
    composed = lab.hub("compose", "--experts", "keep,keep2", "--out", out, at="folder-rename:merged")
    assert all(r.killed for r in (placed, staged, removed, composed)), [r.stderr for r in (placed, staged)]
    assert not out.exists() and list(tmp_path.glob(".merged.tmp-*"))

    problems, report = lab.check()
    assert problems == []
    assert len(report["orphans"]) == 1 and len(report["temp"]) == 1 and len(report["trash"]) == 1
    assert report["missing"] == [victim.ref]  # until --repair puts the trashed blob back
    kinds = sorted(item["kind"] for item in report["repaired"])
    assert kinds == ["orphan", "restored", "temp"], report["repaired"]
    with lab.catalog() as cat:
        assert {r.name for r in cat.list()} == {"keep", "keep2", "victim"}  # no row of a killed import
        assert cat.load(victim.ref).nnz == victim.nnz

    # compose again to the same --out: the stale temp folder goes, the folder is whole
    again = lab.hub("compose", "--experts", "keep,keep2", "--out", out)
    assert again.ok, again.stderr
    assert out_problems(out) == [] and not list(tmp_path.glob(".merged.tmp-*"))
    assert lab.still_works() == []


@pytest.fixture
def served(tmp_path):
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    from hubserver import Server, write_tokens

    srv = Server(tmp_path / "serve" / "root", write_tokens(tmp_path / "serve" / "tokens.txt"))
    yield srv
    srv.stop()


@pytest.mark.slow
def test_killed_push_pull_and_server_commit(served, tmp_path):
    from hubserver import ALICE, Server

    from hubtool.hub.push import push_expert

    lab = Lab(tmp_path / "lab", server=served)
    first = lab.register("qa")
    with lab.catalog() as cat:
        before = push_expert(first.ref, "org/qa", endpoint=served.url, token=ALICE, catalog=cat).commit
    second = lab.register("qa")

    # the client killed at a random point of its commit request
    client = lab.hub("push", second.ref, "--repo", "org/qa", after="push-commit", delay=random.uniform(0, 0.05))
    assert served_problems(served, "org/qa", before, tmp_path / "dl1") == []

    # the server killed while it takes the commit, then started again on the same root and port
    server_side = lab.hub("push", second.ref, "--repo", "org/qa", after="push-commit",
                          delay=random.uniform(0, 0.05), victim=served.proc, then_child=True)  # fmt: skip
    if served.proc.poll() is not None:
        restarted = Server(served.root, served.root.parent / "tokens.txt", port=served.port)
        served.proc = restarted.proc
    assert served_problems(served, "org/qa", before, tmp_path / "dl2") == []
    assert client.returncode is not None and server_side.returncode is not None

    # pull into a new home, killed before its registration -> scratch folder left, nothing registered
    home = tmp_path / "puller"
    env = lab.env_for(home)
    pulled = lab.hub("pull", "org/qa", env=env, at="pull-register")
    assert pulled.killed, pulled.stderr
    problems, report = lab.check(home, env)
    assert problems == [] and len(report["scratch"]) == 1
    assert [r["kind"] for r in report["repaired"]] == ["scratch"]
    assert lab.hub("pull", "org/qa", env=env).ok  # and it works afterwards

    problems, _ = lab.check()
    assert problems == [] and lab.still_works() == []
    # pushing after all that works and the repo serves it
    with lab.catalog() as cat:
        push_expert(second.ref, "org/qa", endpoint=served.url, token=ALICE, catalog=cat)
    assert served_problems(served, "org/qa", before, tmp_path / "dl3") == []
