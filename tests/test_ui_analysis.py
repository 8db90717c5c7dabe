"""The analysis pages (hubtool/ui/analysis.py): the overlap heatmap, overlap with the other experts of a base,
the compare view and the compose dry-run form, read over real HTTP from a real `hub ui` on a real SQLite
catalog of packed sparse experts (tests/test_ui.py's helpers and `ui` fixture).

The numbers on the pages are checked against merge/overlap.py's (pairwise_overlap on the same catalog) and
against the real `hub overlap --json` / `hub compose --dry-run --json`, each run as the command the page
shows; bad input is a 400 page with one line; hostile text stays text; the dry run writes nothing.
"""
# ruff: noqa: F811  (the imported `ui` fixture is a parameter of the tests)

from __future__ import annotations

import hashlib
import html
import json
import re
import shlex
import sqlite3
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

# ui: test_ui's fixture (a real `hub ui --port 0`), here on this module's `home`; the tests take it by name
from test_ui import HOSTILE, Page, _check_page, get, hub, ui  # noqa: F401

BASE = "tiny-llama"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A HUB_HOME whose catalog holds, on tiny-llama: qa@1, qa@2 (squad), sum@1 (xsum; a child of qa@1, a
    hostile tag and description), gen@1 (gsm8k); on other-base: cls@1; the base's score on squad."""
    from conftest import write_sparse_expert

    from hubtool.registry import Catalog

    home = tmp_path_factory.mktemp("ui-analysis") / "hub"
    files = home.parent / "packed"
    files.mkdir()
    with Catalog(f"sqlite:///{home / 'registry.db'}", blobs=home / "blobs") as cat:

        def packed(name: str, task: str, seed: int, **meta: Any) -> Path:
            return write_sparse_expert(files / f"{name}-{seed}.safetensors", name=name, task=task, seed=seed,
                                       **meta)  # fmt: skip

        cat.register(packed("qa", "squad", 1, metrics={"squad": {"exact_match": 40.0}}))
        cat.register(packed("qa", "squad", 2, metrics={"squad": {"exact_match": 55.5, "loss": 1.5}}))
        cat.register(packed("sum", "xsum", 3, metrics={"xsum": {"rougeL": 31.25}, "squad": {"exact_match": 44.0,
                                                                                       "loss": 1.25}}),
                     parents=["qa@1"], tags=[HOSTILE], description=HOSTILE)  # fmt: skip
        cat.register(packed("gen", "gsm8k", 5, metrics={"gsm8k": {"exact_match": 12.0}}))
        cat.register(packed("cls", "sst2", 4, base_model="other-base", metrics={"sst2": {"accuracy": 81.0}}))
        cat.set_base_metrics(BASE, "squad", {"exact_match": 30.0})
    return home


@pytest.fixture(scope="module")
def catalog(home: Path, ui: str) -> Any:
    """The same catalog, opened here, for merge/overlap.py's own numbers (after the server is up)."""
    from hubtool.registry import Catalog

    with Catalog(f"sqlite:///{home / 'registry.db'}", blobs=home / "blobs") as cat:
        yield cat


def overlap_of(cat: Any, refs: list[str]) -> Any:
    from hubtool.merge.compose import build_recipe
    from hubtool.merge.overlap import pairwise_overlap
    from hubtool.merge.plan import make_plan

    return pairwise_overlap(make_plan(cat, build_recipe(experts=refs)))


def cells(page: Page, table_id: str) -> list[list[str]]:
    """A table's body: each row's header and cells, as text (tags dropped)."""
    body = page.table(table_id).split("<tbody>", 1)[1]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.DOTALL)
    text = lambda cell: " ".join(html.unescape(re.sub(r"<[^>]+>", " ", cell)).split())
    return [[text(c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.DOTALL)] for row in rows]


def error_line(page: Page) -> str:
    found = re.search(r'<p class="error" role="alert" id="analysis-error">(.*?)</p>', page.body, re.DOTALL)
    assert found, page.text()[:500]
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", found.group(1))).split())


def url(ui: str, path: str, params: dict[str, Any] | list[tuple[str, str]]) -> str:
    return ui + path + "?" + urllib.parse.urlencode(params)


# -- the overlap heatmap ------------------------------------------------------------------------------------


def test_heatmap_of_named_experts_shows_hub_overlaps_numbers(ui: str, home: Path, catalog: Any) -> None:
    refs = ["qa@1", "qa@2", "sum@1"]
    page = get(url(ui, "overlap", {"experts": ",".join(refs)}))
    _check_page(page)
    report = overlap_of(catalog, refs)
    grid = cells(page, "overlap")
    assert [row[0] for row in grid] == refs
    for i, row in enumerate(grid):
        assert row[1:] == [f"{v:.4f}" for v in report.overall[i]]
    assert 0 < report.overall[0][1] < 1  # a real, partial overlap: the test can tell numbers apart
    assert f"Mean over the pairs: {report.overall_mean():.4f}" in page.text()
    # the per-layer breakdown, collapsed: one row per layer with its mean, and each layer's N×N matrix
    assert "<details>" in page.body
    layers = {row[0]: row for row in cells(page, "layers")}
    for layer, mean in report.layer_means().items():
        assert layers[layer][1] == f"{mean:.4f}"
    assert [r[1:] for r in cells(page, "layer-1")] == [[f"{v:.4f}" for v in row] for row in report.per_layer["layer 0"]]
    # every cell's shade comes with its number; the diagonal is marked as the expert itself
    assert re.search(r'<td class="num o[0-5]">0\.\d{4}</td>', page.body)
    assert '<td class="num self">1.0000</td>' in page.body
    # the command the page shows prints the same numbers
    command = shlex.split(page.command())
    assert command == ["hub", "overlap", "--experts", ",".join(refs)]
    result = hub(*command[1:], "--json", home=home)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["overall"] == report.overall


def test_heatmap_of_tasks_picks_as_compose_does(ui: str, home: Path, catalog: Any) -> None:
    page = get(url(ui, "overlap", {"tasks": "squad,xsum,gsm8k", "base": BASE}))
    _check_page(page)
    assert [row[2] for row in cells(page, "chosen")] == ["qa@2", "sum@1", "gen@1"]  # best exact_match of squad
    report = overlap_of(catalog, ["qa@2", "sum@1", "gen@1"])
    assert [row[1:] for row in cells(page, "overlap")] == [[f"{v:.4f}" for v in row] for row in report.overall]
    command = shlex.split(page.command())
    assert command == ["hub", "overlap", "--tasks", "squad,xsum,gsm8k", "--where", f"base={BASE}"]
    result = hub(*command[1:], "--json", home=home)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert [e["ref"] for e in shown["experts"]] == ["qa@2", "sum@1", "gen@1"] and shown["overall"] == report.overall


def test_the_overlap_form_alone_and_its_state(ui: str) -> None:
    page = get(ui + "overlap")
    _check_page(page)
    assert 'id="overlap"' not in page.body and "Name 2 to 16 experts" in page.text()
    page = get(url(ui, "overlap", {"experts": "qa@1, qa@2", "pick": "latest"}))
    assert page.form()["experts"] == "qa@1, qa@2"


@pytest.mark.parametrize("params, line", [
    ({"experts": "qa@1"}, "experts: 1 expert given; expected 2 to 16"),
    ({"experts": ",".join(f"e{i}" for i in range(17))}, "experts: 17 experts given; expected 2 to 16"),
    ({"experts": "qa@1,qa@1"}, "experts: 'qa@1' is given twice"),
    ({"experts": "qa@1,nope"}, "nope"),
    ({"experts": "qa@1,cls@1"}, "do not share one base model"),
    ({"tasks": "squad"}, "tasks: chose 1 expert (qa@2); the overlap compares 2 to 16"),
    ({"tasks": "squad,xsum", "experts": "qa@1,qa@2"}, "experts and tasks: give one of them"),
    ({"tasks": "squad,xsum", "where": "rougeL>"}, "--where"),
    ({"tasks": "no-such-task,xsum"}, "no-such-task"),
    ({"pick": "worst", "tasks": "squad,xsum"}, "pick 'worst': expected best or latest"),
    ({"with": "qa@1", "experts": "qa@1,qa@2"}, "with: give either with=NAME or experts/tasks"),
    ({"with": "nope"}, "with: "),
])  # fmt: skip
def test_bad_overlap_input_is_a_400_page_with_one_line(ui: str, params: dict, line: str) -> None:
    page = get(url(ui, "overlap", params))
    _check_page(page, 400)
    assert line in error_line(page)
    assert 'id="overlap"' not in page.body


def test_overlap_with_the_other_experts_of_its_base(ui: str, catalog: Any) -> None:
    expert = get(ui + "experts/qa@1")
    _check_page(expert)
    link = re.search(r'<a id="overlap-with" href="([^"]+)"', expert.body)
    assert link and link.group(1).replace("&amp;", "&") == "/_/overlap?with=qa%401"
    page = get(ui.removesuffix("/_/") + link.group(1))
    _check_page(page)
    rows = cells(page, "with")
    # the others of tiny-llama (cls@1 is of another base), ranked by Jaccard with qa@1, pairwise_overlap's numbers
    expected = sorted(((overlap_of(catalog, ["qa@1", ref]).overall[0][1], ref) for ref in ("qa@2", "sum@1", "gen@1")),
                      key=lambda vr: (-vr[0], vr[1]))  # fmt: skip
    assert [(r[0], r[1], r[4]) for r in rows] == [(str(k), ref, f"{v:.4f}") for k, (v, ref) in enumerate(expected, 1)]
    assert "The 3 most recent of its base's 3 other expert versions (at most 50)" in page.text()
    report = overlap_of(catalog, ["qa@1", expected[0][1]])
    assert rows[0][5:7] == [f"{report.intersections[0][1]:,}", f"{report.unions[0][1]:,}"]


def test_hostile_input_stays_text_on_every_analysis_page(ui: str) -> None:
    for path, params in (("overlap", {"experts": HOSTILE + ",qa@1"}), ("overlap", {"with": HOSTILE}),
                         ("compare", {"experts": f"qa@1,{HOSTILE}"}), ("compose", {"tasks": HOSTILE}),
                         ("compose", {"tasks": "squad", "where": HOSTILE})):  # fmt: skip
        page = get(url(ui, path, params))
        _check_page(page, 400)
        assert "<script" not in page.body, (path, params)
        assert HOSTILE in page.text(), (path, params)  # the form shows what was asked, as text
    page = get(url(ui, "compare", {"experts": "qa@1,sum@1"}))  # sum@1's hostile tag
    _check_page(page)
    assert "<script" not in page.body and HOSTILE in page.text()


# -- compare ----------------------------------------------------------------------------------------------


def test_compare_side_by_side_with_the_best_marked(ui: str, catalog: Any) -> None:
    page = get(url(ui, "compare", {"experts": "qa@1,qa@2,sum@1"}))
    _check_page(page)
    facts = {row[0]: row[1:] for row in cells(page, "compare")}
    assert facts["kind"] == ["sparse"] * 3 and facts["keep ratio"] == ["0.1"] * 3
    assert facts["base model"] == [BASE] * 3
    assert facts["parents"] == ["-", "-", "qa@1"]
    records = [catalog.get(r) for r in ("qa@1", "qa@2", "sum@1")]
    assert facts["bytes"] == [f"{r.bytes:,}" for r in records]
    assert all(re.fullmatch(r"\d+\.\d\d \(bound \d+\.\d\d\)", b) for b in facts["bits per entry"])
    metrics = {(row[0], row[1]): row[2:] for row in cells(page, "compare-metrics")}
    # highest exact_match, lowest loss: the marker is text, not only a colour
    assert metrics[("squad", "exact_match")] == ["40", "★ 55.5", "44", "30"]
    assert metrics[("squad", "loss (lower is better)")] == ["-", "1.5", "★ 1.25", "-"]
    assert metrics[("xsum", "rougeL")] == ["-", "-", "31.25", "-"]  # one value: nothing to beat
    report = overlap_of(catalog, ["qa@1", "qa@2", "sum@1"])
    assert [row[1:] for row in cells(page, "compare-overlap")] == [[f"{v:.4f}" for v in row] for row in report.overall]


def test_the_list_checkboxes_open_the_compare_view(ui: str) -> None:
    listing = get(ui)
    _check_page(listing)
    boxes = re.findall(r'<input type="checkbox" name="expert" value="([^"]+)" form="compare-form"', listing.body)
    assert boxes == ["cls@1", "gen@1", "qa@1", "qa@2", "sum@1"]
    assert re.search(r'<form id="compare-form"[^>]*method="get" action="/_/compare"', listing.body)
    page = get(url(ui, "compare", [("expert", "qa@2"), ("expert", "cls@1")]))  # what checking two submits
    _check_page(page)
    assert [c[0] for c in cells(page, "compare")][:2] == ["kind", "task"]
    assert "No overlap: they are of different base models" in page.text()


@pytest.mark.parametrize("params, line", [
    ([("experts", "qa@1")], "experts: 1 expert given; expected 2 to 4"),
    ([("experts", "qa@1,qa@2,sum@1,gen@1,cls@1")], "experts: 5 experts given; expected 2 to 4"),
    ([("expert", "qa@1"), ("expert", "nope@3")], "nope"),
    ([("experts", "qa@best,qa@2")], "qa@best"),
    ([("experts", "qa,qa@2")], "two of them are the same expert version"),
])  # fmt: skip
def test_bad_compare_input_is_a_400_page(ui: str, params: list, line: str) -> None:
    page = get(url(ui, "compare", params))
    _check_page(page, 400)
    assert line in error_line(page)
    assert 'id="compare"' not in page.body


# -- the compose dry run --------------------------------------------------------------------------------------


def _snapshot(home: Path) -> dict[str, Any]:
    """Every file under HUB_HOME (size and content hash; SQLite's -wal/-shm by size alone, as readers touch
    them), and every table's row count."""
    files = {}
    for path in sorted(home.rglob("*")):
        if path.is_file():
            rel = str(path.relative_to(home))
            data = path.read_bytes()
            files[rel] = (len(data), None if rel.endswith(("-wal", "-shm")) else hashlib.sha256(data).hexdigest())
    with sqlite3.connect(f"file:{home / 'registry.db'}?mode=ro", uri=True) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        counts = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    return {"files": files, "rows": counts}


def test_compose_dry_run_shows_the_plan_of_hub_compose_and_writes_nothing(ui: str, home: Path) -> None:
    form = get(ui + "compose")
    _check_page(form)
    from hubtool.merge.methods import METHODS

    options = re.findall(r'<option value="([^"]*)"', form.body.split('id="m-method"', 1)[1].split("</select>", 1)[0])
    assert options == ["", *METHODS]
    assert 'id="plan"' not in form.body
    before = _snapshot(home)
    params = {"tasks": "squad,xsum,gsm8k", "method": "ties", "density": "0.5", "weights": "1,0.5,2", "name": "mix"}
    page = get(url(ui, "compose", params))
    _check_page(page)
    after = _snapshot(home)
    assert after == before  # no catalog row, no file
    command = shlex.split(page.command())
    assert command == ["hub", "compose", "--tasks", "squad,xsum,gsm8k", "--method", "ties", "--weights", "1,0.5,2",
                       "--density", "0.5", "--as-expert", "mix", "--dry-run"]  # fmt: skip
    result = hub(*command[1:], "--json", home=home)
    assert result.returncode == 0, result.stderr
    planned = json.loads(result.stdout)
    rows = cells(page, "plan")
    assert [(r[0], r[1], r[3], r[4]) for r in rows] == [
        (e["task"], e["ref"], f"{e['weight']:g}", e["chosen"]) for e in planned["experts"]]
    assert [r[1] for r in rows] == ["qa@2", "sum@1", "gen@1"]
    size = planned["output_bytes"]
    assert "Output: merged expert, about" in page.text() and f"({size:,} bytes)" in page.text()
    hist = [sum(h[k] for h in planned["overlap"].values()) for k in range(3)]
    total = cells(page, "plan-overlap")[-1]
    assert total[0] == "all" and total[1:4] == [f"{v:,}" for v in hist]
    assert f"{100 * (sum(hist) - hist[0]) / sum(hist):.1f}%" == total[4]
    assert "merge_method: ties" in page.text() and "density: 0.5" in page.text()
    assert _snapshot(home) == before


def test_compose_dry_run_of_a_model_folder_never_downloads_the_base(ui: str, home: Path) -> None:
    before = _snapshot(home)
    page = get(url(ui, "compose", {"experts": "qa@1,sum@1", "output": "model"}))
    _check_page(page)
    assert "Output: model folder, size not estimated: the base model tiny-llama's files are not on this machine" \
        in page.text()
    assert shlex.split(page.command()) == ["hub", "compose", "--experts", "qa@1,sum@1", "--dry-run"]
    assert [r[1] for r in cells(page, "plan")] == ["qa@1", "sum@1"]
    assert _snapshot(home) == before


@pytest.mark.parametrize("params, line", [
    ({"tasks": "squad", "method": "nope"}, "method 'nope': expected one of"),
    ({"tasks": "squad", "density": "lots"}, "density 'lots': expected a finite number"),
    ({"tasks": "squad", "method": "overlap-mean", "density": "0.5"}, "overlap-mean takes no density"),
    ({"tasks": "squad", "method": "ties", "density": "1.5"}, "density 1.5: expected a number in (0, 1]"),
    ({"tasks": "squad", "seed": "-1"}, "seed '-1': expected a whole number"),
    ({"tasks": "squad,xsum", "weights": "1"}, "--weights: 1 numbers for 2 --tasks items"),
    ({"tasks": "squad", "normalize": "maybe"}, "normalize 'maybe': expected yes, no or blank"),
    ({"tasks": "squad", "name": "a b"}, "name 'a b': expected letters, digits"),
    ({"tasks": "no-such-task"}, "no-such-task"),
    ({"experts": "qa@1,cls@1"}, "do not share one base model"),
    ({"tasks": "squad", "experts": "qa@1"}, "tasks and experts: give one of them"),
])  # fmt: skip
def test_bad_compose_input_is_a_400_page_and_writes_nothing(ui: str, home: Path, params: dict, line: str) -> None:
    before = _snapshot(home)
    page = get(url(ui, "compose", params))
    _check_page(page, 400)
    assert line in error_line(page)
    assert 'id="plan"' not in page.body
    assert _snapshot(home) == before


def test_an_error_names_the_expert_not_the_servers_folders(ui: str, home: Path, catalog: Any) -> None:
    """A blob missing on the serving machine: the 400 line says which, with $HUB_HOME, never the real path."""
    from conftest import write_sparse_expert

    for seed in (7, 8):
        path = write_sparse_expert(home.parent / "packed" / f"lost-{seed}.safetensors", name="lost", task="squad",
                                   seed=seed, base_model="lost-base")  # fmt: skip
        catalog.register(path)
    catalog.blob_path(catalog.get("lost@1")).unlink()
    page = get(url(ui, "overlap", {"experts": "lost@1,lost@2"}))
    assert page.status == 400
    line = error_line(page)
    assert str(home) not in page.body and "$HUB_HOME" in line, line
