"""One blob store, many catalogs: `hub verify [--repair]` on one of them never calls another's blobs orphans
and never deletes them, and `hub rm` never deletes a blob another catalog still uses.

$HUB_HOME/blobs is shared by every catalog opened with that HUB_HOME: the default registry.db, the
experiment's $HUB_HOME/experiments/catalog.db, any `--catalog sqlite:///other.db`, a PostgreSQL catalog.
Real SQLite files, a real PostgreSQL server (tests/postgres.py), the real CLI in subprocesses; the orphan
is made the way a crash makes one (a registration killed after placing its blob, HUB_CRASH_AT).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hubtool.registry import Catalog
from hubtool.registry.blobs import CATALOGS_DIR


def hub(*args: object, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hubtool", *map(str, args)],
        env={**env, "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"{result.args}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def report(result: subprocess.CompletedProcess) -> dict:
    try:
        return json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"{result.args}: exit {result.returncode}\n{result.stdout}\n{result.stderr}") from None


@pytest.fixture
def env(hub_home: Path) -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith(("HUB_", "HF_"))} | {
        "HUB_HOME": str(hub_home),
        "HF_HUB_OFFLINE": "1",
    }


def killed_import(path: Path, env: dict, *catalog: str) -> None:
    """`hub import` SIGKILLed after placing its blob, before its row commits: a true orphan."""
    result = hub("import", path, *catalog, env={**env, "HUB_CRASH_AT": "register-placed"})
    assert result.returncode == -9, result.stderr


@pytest.mark.slow
def test_repair_on_one_catalog_keeps_every_other_catalogs_blobs(hub_home, env, packed, tmp_path):
    """A (the default catalog), B (`--catalog` elsewhere) and E (the experiment's catalog) share one store.
    verify on A lists none of B's or E's blobs as orphans; --repair on A removes only the crash's orphan;
    B and E still load every expert, and `hub rm` in A of a file B holds too leaves B's copy."""
    other = f"sqlite:///{tmp_path / 'elsewhere' / 'other.db'}"
    experiments = f"sqlite:///{hub_home / 'experiments' / 'catalog.db'}"
    shared_file = packed("both", seed=7)
    ok(hub("import", packed("a", seed=1), env=env))
    ok(hub("import", shared_file, env=env))
    ok(hub("import", packed("b", seed=2), "--catalog", other, env=env))
    ok(hub("import", shared_file, "--catalog", other, env=env))
    with Catalog(experiments) as cat:  # as `hub experiment` registers: the library, its own catalog
        cat.register(packed("e", seed=3))
    orphan_file = packed("orphan", seed=4)
    killed_import(orphan_file, env)
    blobs = sorted(p for p in (hub_home / "blobs").rglob("*.safetensors"))
    assert len(blobs) == 5  # a, both (stored once), b, e, the orphan

    plain = report(hub("verify", "--json", env=env))
    assert len(plain["orphans"]) == 1 and plain["unclaimed"] == [] and plain["unchecked"] == []
    assert sorted(plain["others"]) == sorted([str(tmp_path / "elsewhere" / "other.db"),
                                              str(hub_home / "experiments" / "catalog.db")])  # fmt: skip
    orphan = Path(plain["orphans"][0])
    assert plain["shared"] == 2  # b's and e's blobs: theirs, not orphans

    # Other catalogs share the store: a registration of theirs may be between placing and committing, so
    # an unreferenced blob is spared for --grace seconds (600 by default), even on SQLite.
    young = report(hub("verify", "--repair", "--json", env=env))
    assert young["removed"] == [] and young["recent"] == [str(orphan)]
    repaired = report(hub("verify", "--repair", "--grace", "0", "--json", env=env))
    assert repaired["removed"] == [{"path": str(orphan), "kind": "orphan"}] and repaired["ok"], repaired
    assert sorted(p for p in (hub_home / "blobs").rglob("*.safetensors")) == [b for b in blobs if b != orphan]

    # B and E lose nothing: every row loads, and their own verify is clean
    for url in (other, experiments):
        listed = report(hub("list", "--json", "--catalog", url, env=env))
        for row in listed:
            out = tmp_path / "export" / url.rsplit("/", 1)[1] / f"{row['ref']}.safetensors"
            ok(hub("export", row["ref"], "--format", "hubtool", "--out", out, "--catalog", url, env=env))
        assert report(hub("verify", "--json", "--catalog", url, env=env))["ok"]

    # `hub rm` in A of the file B also holds: A's row goes, the blob stays for B
    with Catalog(other) as cat:
        both_blob = cat.blobs.path(cat.get("both").blob)
    ok(hub("rm", "both", "-y", env=env))
    with Catalog(other) as cat:
        assert cat.load("both").nnz > 0
    after = report(hub("verify", "--repair", "--grace", "0", "--json", env=env))
    assert after["ok"] and after["removed"] == [] and after["shared"] == 3
    # The last catalog that held it removes it: the blob is kept while another catalog may be registering
    # the same content (it was touched within --grace), then nobody uses it and a repair removes it.
    ok(hub("rm", "both", "-y", "--catalog", other, env=env))
    assert report(hub("verify", "--json", env=env))["orphans"] == [str(both_blob)]
    gone = report(hub("verify", "--repair", "--grace", "0", "--json", env=env))
    assert gone["ok"] and gone["removed"] == [{"path": str(both_blob), "kind": "orphan"}]
    assert len(list((hub_home / "blobs").rglob("*.safetensors"))) == 3


def test_a_catalog_that_cannot_be_checked_keeps_every_unproven_blob(hub_home, env, packed, tmp_path):
    """A catalog on the store's list that cannot be opened: verify says which and exits 1, --repair keeps
    every blob it cannot prove unreferenced. Once its file is gone (the catalog was deleted: it holds
    nothing), --repair forgets it and removes what nobody references."""
    other_db = tmp_path / "other.db"
    ok(hub("import", packed("a", seed=1), env=env))
    ok(hub("import", packed("b", seed=2), "--catalog", f"sqlite:///{other_db}", env=env))
    killed_import(packed("orphan", seed=3), env)
    other_db.rename(tmp_path / "other.db.bak")
    other_db.write_bytes(b"not a database at all, " * 100)  # a corrupt file where the catalog was

    text = hub("verify", "--repair", "--grace", "0", env=env)
    assert text.returncode == 1
    assert str(other_db) in text.stdout and "could not check" in " ".join(text.stdout.split()), text.stdout
    doc = report(hub("verify", "--repair", "--grace", "0", "--json", env=env))
    assert doc["removed"] == [] and len(doc["unclaimed"]) == 2 and not doc["ok"]  # b's blob and the orphan
    assert doc["unchecked"][0].startswith(str(other_db))

    other_db.unlink()
    doc = report(hub("verify", "--repair", "--grace", "0", "--json", env=env))
    assert doc["ok"] and doc["gone"] == [str(other_db)] and len(doc["removed"]) == 2, doc
    assert report(hub("verify", "--json", env=env))["gone"] == []  # forgotten: no longer on the list
    assert ok(hub("list", env=env)).count("a@1") == 1
    assert report(hub("verify", "--json", env=env))["ok"]


def test_a_store_written_before_catalogs_were_recorded(hub_home, env, packed, tmp_path):
    """A home from before the store kept its list of catalogs: the experiment's catalog beside registry.db
    is found without the list, and an unreferenced blob older than the list may belong to a catalog
    nobody recorded: it is `unclaimed`, listed and never deleted."""
    with Catalog() as cat:
        a = cat.register(packed("a", seed=1))
    with Catalog(f"sqlite:///{hub_home / 'experiments' / 'catalog.db'}") as cat:
        e = cat.register(packed("e", seed=2))
    with Catalog(f"sqlite:///{tmp_path / 'old' / 'other.db'}") as cat:
        o = cat.register(packed("o", seed=3))
    blob_dir = hub_home / "blobs"
    for entry in sorted((blob_dir / CATALOGS_DIR).iterdir(), reverse=True):
        entry.unlink()  # as an older hubtool left the store: no list
    (blob_dir / CATALOGS_DIR).rmdir()
    old = os.stat(blob_dir / o.blob).st_mtime - 3600
    for blob in (a.blob, e.blob, o.blob):
        os.utime(blob_dir / blob, (old, old))

    with Catalog() as cat:
        cat.register(packed("new", seed=4))  # the first write of this version starts the list
        for repair in (False, True):
            rep = cat.verify(repair=repair, grace=0)
            assert rep.ok and rep.orphans == [] and rep.removed == [], rep.to_dict()
            assert rep.unclaimed == [blob_dir / o.blob] and rep.shared == 1  # e's: its catalog is known
    assert (blob_dir / o.blob).is_file() and (blob_dir / e.blob).is_file()
    text = hub("verify", env=env)
    assert text.returncode == 0 and "unclaimed" in text.stdout and str(blob_dir / o.blob) in text.stdout


def test_postgresql_catalog_shares_the_store(hub_home, packed, pg_server):
    """A PostgreSQL catalog and the default SQLite one on one store: each one's repair keeps the other's
    blobs; a PostgreSQL catalog that cannot be reached (its database dropped) keeps every unproven blob."""
    pg = pg_server.create_database(migrated=True)
    with Catalog() as local, Catalog(pg) as team:
        mine = local.register(packed("mine", seed=1))
        theirs = team.register(packed("theirs", seed=2))
        for cat, other in ((local, theirs), (team, mine)):
            rep = cat.verify(repair=True, grace=0)
            assert rep.ok and rep.removed == [] and rep.orphans == [] and rep.shared == 1, rep.to_dict()
            assert cat.blobs.path(other.blob).is_file()
        assert team.load("theirs").nnz == theirs.nnz and local.load("mine").nnz == mine.nnz
        assert json.loads((hub_home / "blobs" / CATALOGS_DIR / _entry_for(hub_home, pg)).read_text())["url"] == pg
        mode = (hub_home / "blobs" / CATALOGS_DIR / _entry_for(hub_home, pg)).stat().st_mode & 0o777
        assert mode == 0o600  # it may hold a password
        team.close()
        pg_server.admin(f'DROP DATABASE "{pg.rsplit("/", 1)[1]}"')
        rep = local.verify(repair=True, grace=0)
        assert not rep.ok and rep.removed == [] and rep.unclaimed == [local.blobs.path(theirs.blob)]
        assert len(rep.unchecked) == 1 and "***" not in rep.unchecked[0] and "127.0.0.1" in rep.unchecked[0]


def _entry_for(hub_home: Path, url: str) -> str:
    """The list entry holding `url` (entries are named by a hash of the URL)."""
    for path in (hub_home / "blobs" / CATALOGS_DIR).glob("*.json"):
        if json.loads(path.read_text())["url"] == url:
            return path.name
    raise AssertionError(f"{url} is not on the store's list")


def test_an_unreachable_catalog_is_named_without_its_password(hub_home, packed):
    """A PostgreSQL catalog on the list whose server is down: named with its password masked, its possible
    blobs kept; the list entry holding the password is readable by its owner only."""
    import socket

    from hubtool.registry.blobs import enroll

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql+psycopg://team:s3cret-pw@127.0.0.1:{port}/hub"
    with Catalog() as cat:
        kept = cat.register(packed("kept", seed=1))
        enroll(hub_home / "blobs", url)
        entry = hub_home / "blobs" / CATALOGS_DIR / _entry_for(hub_home, url)
        assert entry.stat().st_mode & 0o777 == 0o600
        cat.remove("kept")  # the other catalog cannot be asked: the blob stays
        assert cat.blobs.path(kept.blob).is_file()
        rep = cat.verify(repair=True, grace=0)
    assert rep.removed == [] and rep.unclaimed == [hub_home / "blobs" / kept.blob] and not rep.ok
    assert len(rep.unchecked) == 1 and f"team:***@127.0.0.1:{port}/hub" in rep.unchecked[0]
    assert "s3cret" not in json.dumps(rep.to_dict())
