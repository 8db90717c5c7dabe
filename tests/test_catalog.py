"""The catalog on a real SQLite file and on a real PostgreSQL database (every test runs on both: the
hub_home fixture below points HUB_CATALOG at the test's database), a real blob store, real packed experts."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC
from pathlib import Path

import pytest
import torch
from sqlalchemy import text

from hubtool.errors import FormatError, HubError, NotFoundError
from hubtool.format import unpack
from hubtool.registry import Catalog


@pytest.fixture
def hub_home(hub_home: Path, catalog_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """conftest's hub_home, with the catalog on SQLite ($HUB_HOME/registry.db) or a fresh PostgreSQL
    database; the blob store stays $HUB_HOME/blobs."""
    monkeypatch.setenv("HUB_CATALOG", catalog_url)
    return hub_home


@pytest.fixture
def cat(hub_home: Path) -> Catalog:
    with Catalog() as catalog:
        yield catalog


def store_files(hub_home: Path) -> list[Path]:
    """Blobs, temp and trash files in the store; not its list of catalogs (blobs/catalogs/)."""
    blobs = hub_home / "blobs"
    files = sorted(p for p in blobs.rglob("*") if p.is_file()) if blobs.exists() else []
    return [p for p in files if p.relative_to(blobs).parts[0] != "catalogs"]


def test_register_takes_metadata_from_the_file(cat, hub_home, packed):
    path = packed("qa", "qa", metrics={"qa": {"rougeL": 31.5}}, config={"lr": 1e-3})
    rec = cat.register(path, tags=["demo", "demo", "v0"], description="first try")
    header_nnz = sum(d.nnz for d in unpack(path).deltas.values())

    assert (rec.ref, rec.name, rec.version, rec.kind, rec.task, rec.tasks) == (
        "qa@1",
        "qa",
        1,
        "sparse",
        "qa",
        ["qa"],
    )
    assert (rec.base_model, rec.keep_ratio, rec.nnz) == ("tiny-llama", 0.1, header_nnz)
    assert rec.bytes == path.stat().st_size
    assert rec.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert cat.blob_path(rec) == hub_home / "blobs" / rec.sha256[:2] / f"{rec.sha256}.safetensors"
    assert cat.blob_path(rec).read_bytes() == path.read_bytes()
    assert rec.metrics == {"qa": {"rougeL": 31.5}} and rec.config == {"lr": 1e-3}
    assert rec.tags == ["demo", "v0"] and rec.description == "first try"
    assert rec.created_at.tzinfo is not None and rec.created_at.utcoffset() == UTC.utcoffset(None)
    # The same record comes back from a fresh Catalog on the same database, and serialises to JSON.
    again = Catalog().get("qa@1")
    assert again.to_dict() == rec.to_dict()
    assert json.loads(json.dumps(rec.to_dict()))["ref"] == "qa@1"


def test_explicit_arguments_override_the_file(cat, packed):
    path = packed("qa", "qa", metrics={"qa": {"rougeL": 30.0, "em": 0.5}})
    rec = cat.register(
        path,
        name="qa-small",
        task="squad",
        tasks=["trivia"],
        metrics={"rougeL": 33.0, "trivia": {"em": 0.2}},
        config={"seed": 7},
    )
    assert (rec.name, rec.task, rec.tasks) == ("qa-small", "squad", ["squad", "trivia"])
    # flat metrics go under the primary task; the file's metrics stay under theirs
    assert rec.metrics == {
        "qa": {"em": 0.5, "rougeL": 30.0},
        "squad": {"rougeL": 33.0},
        "trivia": {"em": 0.2},
    }
    assert rec.config == {"seed": 7}


def test_versions_count_up_per_name_and_are_never_reused(cat, packed):
    assert [cat.register(packed("qa", seed=s)).version for s in range(3)] == [1, 2, 3]
    assert cat.register(packed("summ", "summ")).version == 1
    assert cat.get("qa").ref == "qa@3" and cat.get("qa@latest").ref == "qa@3"
    assert cat.get("qa@2").ref == "qa@2"
    cat.remove("qa@3")
    assert cat.get("qa").ref == "qa@2"
    assert cat.register(packed("qa", seed=9)).version == 4  # qa@3 stays gone for good


def test_lookup_errors_say_what_is_missing(cat, packed):
    cat.register(packed("qa"))
    for ref, words in [
        ("nope", "no expert named 'nope'"),
        ("qa@7", "no version 7 (latest is 1)"),
        ("qa@best", "no alias 'best'"),
    ]:
        with pytest.raises(NotFoundError, match=words.replace("(", r"\(").replace(")", r"\)")) as err:
            cat.get(ref)
        assert "\n" not in str(err.value)
    for bad in ("", "qa@", "a b", "@3"):
        with pytest.raises(HubError, match="expected NAME"):
            cat.get(bad)


def copy_of(path: Path) -> Path:
    """A second file with the same bytes. (Packing twice needn't give identical bytes: safetensors
    writes __metadata__ keys in hash-map order.)"""
    other = path.with_name(f"copy-{path.name}")
    other.write_bytes(path.read_bytes())
    return other


def test_identical_content_gets_a_new_version_but_shares_the_blob(cat, hub_home, packed):
    path = packed("qa", seed=1)
    first = cat.register(path)
    second = cat.register(copy_of(path))  # a different file, byte-identical content
    assert (first.version, second.version) == (1, 2)
    assert first.sha256 == second.sha256 and first.blob == second.blob
    assert store_files(hub_home) == [cat.blob_path(first)]


def test_remove_deletes_the_blob_only_with_its_last_row(cat, hub_home, packed):
    path = packed("qa", seed=1)
    a = cat.register(path, tags=["x"], metrics={"rougeL": 1.0})
    b = cat.register(copy_of(path), name="qa-copy")
    other = cat.register(packed("summ", "summ", seed=2))
    cat.alias("qa", "best", 1)

    removed = cat.remove("qa@best")
    assert removed.ref == "qa@1"
    assert cat.blob_path(b).exists()  # still used by qa-copy@1
    with pytest.raises(NotFoundError):
        cat.get("qa@1")
    with pytest.raises(NotFoundError):  # the alias went with its version
        cat.get("qa@best")
    assert cat.list(tag="x") == [] and cat.list(where="rougeL>0") == []

    cat.remove("qa-copy")
    assert not cat.blob_path(a).exists()
    assert store_files(hub_home) == [cat.blob_path(other)]
    assert cat.verify().ok


def test_aliases_resolve_move_and_reject_numbers(cat, packed):
    for s in range(3):
        cat.register(packed("qa", seed=s))
    assert cat.alias("qa", "best", 2).aliases == ["best"]
    assert cat.get("qa@best").version == 2
    cat.alias("qa", "stable", "best")  # an alias may be set from another alias
    cat.alias("qa", "best", 3)  # moving
    assert cat.get("qa@best").version == 3 and cat.get("qa@stable").version == 2
    assert cat.get("qa@3").aliases == ["best"]
    for bad in ("3", "007", "latest", "has space", "-x"):
        with pytest.raises(HubError, match="alias"):
            cat.alias("qa", bad, 1)
    with pytest.raises(NotFoundError):
        cat.alias("qa", "best", 9)
    assert cat.get("qa@best").version == 3  # a failed move leaves the alias where it was
    cat.unalias("qa", "stable")
    with pytest.raises(NotFoundError):
        cat.get("qa@stable")
    with pytest.raises(NotFoundError):
        cat.unalias("qa", "stable")


def test_lineage_records_parents_and_children(cat, packed):
    cat.register(packed("qa", seed=1))
    cat.register(packed("summ", "summ", seed=2))
    cat.register(packed("summ", "summ", seed=3))
    cat.alias("summ", "best", 1)
    merged = cat.register(
        packed("qa-summ", "qa", seed=4, kind="merged"),
        tasks=["summ"],
        parents=["qa", {"ref": "summ@best", "weight": 0.5, "role": "merge"}, "elsewhere@5", "qa@1"],
    )
    # Parents are pinned to the version they meant at registration; unknown refs are kept as given.
    assert cat.lineage(merged.ref) == {
        "parents": [
            {"ref": "elsewhere@5", "role": None, "weight": None, "present": False},
            {"ref": "qa@1", "role": None, "weight": None, "present": True},
            {"ref": "summ@1", "role": "merge", "weight": 0.5, "present": True},
        ],
        "children": [],
    }
    assert cat.lineage("summ@best")["children"] == [{"ref": "qa-summ@1", "role": "merge", "weight": 0.5}]
    assert cat.lineage("summ@2")["children"] == []
    # Removing a parent keeps the child's history.
    cat.remove("qa@1")
    parents = cat.lineage("qa-summ")["parents"]
    assert [(p["ref"], p["present"]) for p in parents] == [
        ("elsewhere@5", False),
        ("qa@1", False),
        ("summ@1", True),
    ]
    # Parents written into the file are used when none are given.
    child = cat.register(packed("child", "qa", seed=5, parents=["summ@2"]))
    assert [p["ref"] for p in cat.lineage(child.ref)["parents"]] == ["summ@2"]


@pytest.fixture
def populated(cat, packed) -> Catalog:
    cat.register(packed("qa", "qa", seed=1), metrics={"rougeL": 35.0, "em": 0.4}, tags=["good"])
    cat.register(packed("qa", "qa", seed=2, keep_ratio=0.05), metrics={"rougeL": 28.0})
    cat.register(packed("summ", "summ", seed=3, base_model="other-base"), metrics={"rougeL": 40.0})
    cat.register(packed("both", "qa", seed=4, kind="merged"), tasks=["summ"], tags=["good"])
    return cat


def refs(records) -> list[str]:
    return [r.ref for r in records]


def test_list_filters(populated):
    cat = populated
    assert refs(cat.list()) == ["both@1", "qa@1", "qa@2", "summ@1"]
    assert refs(cat.list(task="summ")) == ["both@1", "summ@1"]  # secondary tasks count
    assert refs(cat.list(base="other-base")) == ["summ@1"]
    assert refs(cat.list(kind="merged")) == ["both@1"]
    assert refs(cat.list(tag="good")) == ["both@1", "qa@1"]
    assert refs(cat.list(task="qa", tag="good", kind="sparse")) == ["qa@1"]
    assert refs(cat.list(limit=2)) == ["both@1", "qa@1"]
    assert cat.count(task="qa") == 3 and cat.count(where="rougeL>=30") == 2
    # every record of a page carries its metrics and tags
    by_ref = {r.ref: r for r in cat.list()}
    assert by_ref["qa@1"].metrics == {"qa": {"em": 0.4, "rougeL": 35.0}} and by_ref["qa@1"].tags == ["good"]
    assert by_ref["both@1"].tasks == ["qa", "summ"] and by_ref["both@1"].metrics == {}


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("rougeL>=30", ["qa@1", "summ@1"]),
        ("rougeL > 35", ["summ@1"]),
        ("rougeL<35, em>0", []),
        ("rougeL=28", ["qa@2"]),
        ("rougeL!=28", ["qa@1", "summ@1"]),
        ("keep_ratio<0.1", ["qa@2"]),
        ("kind=merged", ["both@1"]),
        ("kind != sparse", ["both@1"]),
        ("base='other-base'", ["summ@1"]),
        ("task=summ and rougeL>=30", ["summ@1"]),
        ("task!=summ", ["qa@1", "qa@2"]),
        ("version>=2", ["qa@2"]),
        ("nnz>0 AND em>=0.4", ["qa@1"]),
        ("bleu>0", []),
    ],
)
def test_where_filters_in_sql(populated, where, expected):
    assert refs(populated.list(where=where)) == expected


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        ("-rougeL", ["summ@1", "qa@1", "qa@2", "both@1"]),  # never measured sorts last
        ("rougeL", ["qa@2", "qa@1", "summ@1", "both@1"]),
        ("-version,name", ["qa@2", "both@1", "qa@1", "summ@1"]),
        ("keep_ratio", ["qa@2", "both@1", "qa@1", "summ@1"]),
        ("-name", ["summ@1", "qa@1", "qa@2", "both@1"]),
    ],
)
def test_sort(populated, sort, expected):
    assert refs(populated.list(sort=sort)) == expected


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("rougeL>>30", "rougeL>>30"),
        ("rougeL >= high", "rougeL needs a number"),
        ("keep_ratio<nan", "keep_ratio needs a number"),
        ("kind>sparse", "kind is text"),
        ("rougeL>=30,", "expected comparisons"),
        ("30<=rougeL", "can't read '30<=rougeL'"),
        ("rougeL>=30; drop table experts", "needs a number"),
        ("rougeL>1 and and em<2", "expected comparisons"),
    ],
)
def test_bad_where_is_a_one_line_hub_error(populated, bad, message):
    with pytest.raises(HubError) as err:
        populated.list(where=bad)
    assert message in str(err.value) and repr(bad) in str(err.value) and "\n" not in str(err.value)
    assert populated.count() == 4  # nothing was dropped


def test_bad_sort_is_a_hub_error(populated):
    with pytest.raises(HubError, match="--sort"):
        populated.list(sort="rougeL desc")


def test_set_metrics_and_hub(populated):
    cat = populated
    rec = cat.set_metrics("qa@2", "qa", {"rougeL": 36.0, "bleu": 12})
    assert rec.metrics == {"qa": {"bleu": 12.0, "rougeL": 36.0}}
    assert refs(cat.list(where="rougeL>=35", sort="-rougeL")) == ["summ@1", "qa@2", "qa@1"]
    with pytest.raises(HubError, match="finite number"):
        cat.set_metrics("qa@2", "qa", {"rougeL": "high"})
    rec = cat.set_hub("qa@2", "me/qa-expert", "abc123")
    assert (rec.hub_repo, rec.hub_commit) == ("me/qa-expert", "abc123")
    assert cat.get("qa@1").hub_repo is None


def test_base_metrics_are_set_replaced_and_read_per_base_model_and_task(cat):
    assert cat.base_metrics("smollm2-135m", "qa") == {}
    cat.set_base_metrics("smollm2-135m", "qa", {"rougeL": 20.0, "em": 0.1}, revision="r1")
    cat.set_base_metrics("smollm2-135m", "summ", {"rougeL": 15})
    cat.set_base_metrics("other-base", "qa", {"rougeL": 25.0})
    assert cat.base_metrics("smollm2-135m", "qa") == {"em": 0.1, "rougeL": 20.0}
    # Re-evaluating replaces the metrics measured again and their revision; the others stay.
    cat.set_base_metrics("smollm2-135m", "qa", {"rougeL": 22.5, "accuracy": 0.6}, revision="r2")
    assert cat.base_metrics("smollm2-135m", "qa") == {"accuracy": 0.6, "em": 0.1, "rougeL": 22.5}
    assert cat.base_metrics("smollm2-135m", "summ") == {"rougeL": 15.0}
    assert cat.base_metrics("other-base", "qa") == {"rougeL": 25.0}
    with cat.engine.connect() as conn:
        sql = text("SELECT metric, base_revision FROM base_metrics WHERE base_model = :b AND task = :t")
        revisions = dict(conn.execute(sql, {"b": "smollm2-135m", "t": "qa"}).all())
    assert revisions == {"accuracy": "r2", "em": "r1", "rougeL": "r2"}
    assert Catalog().base_metrics("smollm2-135m", "qa")["rougeL"] == 22.5  # stored, not cached

    with pytest.raises(HubError, match=r"'rougeL'.*finite number"):
        cat.set_base_metrics("smollm2-135m", "qa", {"em": 0.2, "rougeL": float("nan")})
    with pytest.raises(HubError, match="at least one metric"):
        cat.set_base_metrics("smollm2-135m", "qa", {})
    assert cat.base_metrics("smollm2-135m", "qa")["em"] == 0.1  # a rejected call changes nothing


def test_gains_are_expert_minus_its_own_base_model(populated):
    cat = populated
    cat.set_base_metrics("tiny-llama", "qa", {"rougeL": 20.0, "em": 0.1, "accuracy": 0.5})
    cat.set_base_metrics("tiny-llama", "summ", {"rougeL": 30.0})
    qa1 = cat.get("qa@1")
    assert cat.gains("qa@1") == {
        "qa": {m: pytest.approx(qa1.metrics["qa"][m] - base) for m, base in (("rougeL", 20.0), ("em", 0.1))}
    }
    assert cat.gains("qa") == {"qa": {"rougeL": 8.0}}  # qa@2 has rougeL only
    assert cat.gains("summ@1") == {}  # its base is other-base, never evaluated
    assert cat.gains("both@1") == {}  # no metrics of its own
    cat.set_metrics("both@1", "summ", {"rougeL": 31.0, "bleu": 9.0})
    assert cat.gains("both@1") == {"summ": {"rougeL": 1.0}}
    cat.set_base_metrics("other-base", "summ", {"rougeL": 42.5})
    assert cat.gains("summ@1") == {"summ": {"rougeL": -2.5}}
    # Gains are asked for per expert; list rows stay as they were (no baseline lookups in list()).
    assert "gains" not in cat.get("qa@1").to_dict() and "gains" not in cat.list()[0].to_dict()
    with pytest.raises(NotFoundError, match="no expert named 'nope'"):
        cat.gains("nope")


def test_verify_finds_corrupt_missing_and_orphan_blobs(cat, hub_home, packed):
    path = packed("qa", seed=1)
    a = cat.register(path)
    b = cat.register(packed("summ", "summ", seed=2))
    c = cat.register(packed("other", seed=3))
    assert cat.verify().ok and cat.verify().checked == 3

    blob = cat.blob_path(a)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    cat.blob_path(b).unlink()
    orphan = hub_home / "blobs" / "ff" / ("f" * 64 + ".safetensors")
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"nobody points here")

    report = cat.verify()
    assert (report.mismatched, report.missing, report.orphans) == (["qa@1"], ["summ@1"], [orphan])
    assert not report.ok and report.to_dict()["ok"] is False
    with pytest.raises(HubError, match="does not match its sha256"):
        cat.load("qa@1")
    assert cat.load(c.ref).nnz == c.nnz
    # Re-registering the same content repairs the corrupted blob instead of trusting it.
    cat.register(copy_of(path))
    assert cat.verify().mismatched == []


def test_load_gives_back_the_packed_expert(cat, packed):
    path = packed("qa", seed=3)
    cat.register(path)
    loaded, original = cat.load("qa"), unpack(path)
    assert loaded.deltas.keys() == original.deltas.keys()
    for key, delta in original.deltas.items():
        assert torch.equal(loaded.deltas[key].to_dense(), delta.to_dense())


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_a_bad_file_is_not_registered_and_leaves_nothing_behind(cat, hub_home, packed, tmp_path, damage):
    good = cat.register(packed("qa", seed=1))
    bad = tmp_path / "bad.safetensors"
    if damage == "truncate":
        bad.write_bytes(packed("qa", seed=2).read_bytes()[:-40])
    elif damage == "garbage":
        bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    expected = NotFoundError if damage == "missing" else FormatError
    with pytest.raises(expected, match="bad.safetensors"):
        cat.register(bad, name="qa")
    assert refs(cat.list()) == ["qa@1"]
    assert store_files(hub_home) == [cat.blob_path(good)]  # no new blob, no temp file
    assert cat.register(packed("qa", seed=3)).version == 2  # and no version was used up


def test_tasks(cat):
    cat.add_task("qa", description="questions", tags=["en", "en"], data_source="squad", sizes={"train": 100})
    cat.add_task("summ")
    cat.add_task("qa", description="answers", sizes={"train": 200, "eval": 20})  # replaces
    tasks = cat.list_tasks()
    assert [t.name for t in tasks] == ["qa", "summ"]
    assert tasks[0].to_dict() | {"created_at": None} == {
        "name": "qa",
        "description": "answers",
        "category": None,
        "tags": [],
        "data_source": None,
        "sizes": {"train": 200, "eval": 20},
        "created_at": None,
    }
    assert cat.add_task("x", tags=["b", "a"]).tags == ["a", "b"]
    with pytest.raises(NotFoundError, match="no task named 'nope'"):
        cat.get_task("nope")


def test_explicit_url_and_hub_catalog(tmp_path, hub_home, packed, monkeypatch):
    url = f"sqlite:///{tmp_path / 'elsewhere' / 'cat.db'}"
    monkeypatch.delenv("HUB_CATALOG")
    Catalog(url).register(packed("qa"))
    assert (tmp_path / "elsewhere" / "cat.db").exists() and not (hub_home / "registry.db").exists()
    monkeypatch.setenv("HUB_CATALOG", url)
    assert Catalog().get("qa").ref == "qa@1"


def test_listing_imports_neither_torch_nor_alembic(cat, packed, hub_home):
    cat.register(packed("qa"))  # the catalog exists and is at the newest schema
    code = (
        "import sys\n"
        "from hubtool.registry import Catalog\n"
        "print([r.ref for r in Catalog().list(task='qa', limit=5)])\n"
        "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'alembic') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HUB_HOME": str(hub_home)},
    )
    assert out.stdout.splitlines() == ["['qa@1']", "[]"]


def test_fill_synthetic_makes_a_listable_catalog(tmp_path, packed, catalog_url):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bulk import N_TASKS, fill_synthetic  # benchmarks/bulk.py: a benchmark fixture

    url = catalog_url
    fill_synthetic(url, 10 * N_TASKS)
    cat = Catalog(url, blobs=tmp_path / "blobs")
    page = cat.list(task="task3", sort="-rougeL", limit=5)
    assert len(page) == 5 and cat.count(task="task3") == 10 and cat.count() == 10 * N_TASKS
    scores = [r.metrics["task3"]["rougeL"] for r in page]
    assert scores == sorted(scores, reverse=True) and all(r.tags == ["synthetic"] for r in page)
    # expert_names was filled too: a real registration continues a synthetic name's versions
    name = page[0].name
    last = max(r.version for r in cat.list(where=f"name={name}"))
    assert cat.register(packed(name), name=name).version == last + 1
    with pytest.raises(HubError, match="needs an empty catalog"):
        fill_synthetic(url, 1)


def test_open_takes_a_catalog_or_its_url(cat, packed):
    """Library calls take either: the same object back, or a new one on the same database."""
    assert Catalog.open(cat) is cat
    rec = cat.register(packed("opened"), name="opened")
    other = Catalog.open(cat.url)
    assert other is not cat and other.url == cat.url and other.get("opened").version == rec.version
    other.close()


def test_describe_is_what_hub_show_json_prints(cat, packed, hub_home):
    """The CLI only renders: `hub show --json` prints Catalog.describe, which reads the header and lineage."""
    parent = cat.register(packed("qa", "qa", metrics={"qa": {"rougeL": 30.0}}))
    child = cat.register(packed("qa2", "qa", seed=1, metrics={"qa": {"rougeL": 35.0}}), parents=[parent.ref])
    cat.set_base_metrics(child.base_model, "qa", {"rougeL": 20.0})
    info = cat.describe("qa2")
    assert info["ref"] == child.ref and info["gain"] == {"qa": {"rougeL": 15.0}}
    assert info["base_metrics"] == {"qa": {"rougeL": 20.0}}
    assert [p["ref"] for p in info["lineage"]["parents"]] == [parent.ref]
    assert sum(w["nnz"] for w in info["weights"].values()) == child.nnz
    out = subprocess.run([sys.executable, "-m", "hubtool", "show", "qa2", "--json"], capture_output=True, text=True,
                         check=True, env={**os.environ, "HUB_HOME": str(hub_home)})  # fmt: skip
    assert json.loads(out.stdout) == json.loads(json.dumps(info, default=str))
