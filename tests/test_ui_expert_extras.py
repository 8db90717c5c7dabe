"""The expert side of the catalog pages (issue 16's should-haves): the lineage graph (hubtool/ui/lineage.py's
layout, drawn as server-side SVG on /_/lineage and on each expert page), a merged expert's recipe with the
command that makes it again, "composes well with" (the merges an expert went into, with their measured
retention), and where an expert spent its kept entries.

The catalog is real: two experts trained on a tiny random Llama (hubtool.train, 3 steps each), merged by a
real compose with --eval (so the merge has measured scores), a merge of that merge, a child whose parent was
removed, and an expert whose base model and task are markup. The pages come from a real `hub ui` over HTTP
(tests/test_ui.py's helpers); the recipe's command is run with the real CLI and must make the same merge.
"""

from __future__ import annotations

import html
import itertools
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, unquote, urlencode

import pytest
from test_ui import CSP, _check_page, _env, _wait_address, get
from tiny import make_tiny_llama, save_word_tokenizer

from hubtool.ui import lineage
from hubtool.ui.lineage import Item

COLORS = ["red", "blue", "green", "pink"]
SIZES = ["small", "big"]
THINGS = [f"thing{i}" for i in range(40)]
TRAIN = {"max_steps": 3, "batch_size": 4, "lr": 1e-2, "max_length": 32, "eval_limit": 8, "quiet": True,
         "keep_ratio": 0.1, "mask_interval": 1}  # fmt: skip
EVIL_BASE = "<script>alert('base')</script>"
EVIL_TASK = '<svg onload="alert(1)">'


# -- the layout, alone -------------------------------------------------------------------------------------


def test_depths_follow_the_deepest_parent_and_survive_a_cycle() -> None:
    parents = {"a@1": (), "b@1": (), "m@1": ("a@1", "b@1"), "mm@1": ("m@1", "a@1"), "x@1": ("gone@1",)}
    assert lineage.depths(parents) == {"a@1": 1, "b@1": 1, "m@1": 2, "mm@1": 3, "gone@1": 1, "x@1": 2}
    cyclic = lineage.depths({"p@1": ("q@1",), "q@1": ("p@1",), "r@1": ("q@1",)})
    assert set(cyclic) == {"p@1", "q@1", "r@1"} and cyclic["r@1"] == cyclic["q@1"] + 1


def _no_overlaps(graph: lineage.Graph) -> None:
    for column in range(len(graph.columns)):
        boxes = sorted((n.y, n.y + n.height) for n in graph.nodes if n.column == column)
        assert all(top_b >= bottom_a for (_, bottom_a), (top_b, _) in itertools.pairwise(boxes)), boxes
        xs = {n.x for n in graph.nodes if n.column == column}
        assert len(xs) == 1
    for node in graph.nodes:
        assert 0 <= node.x and node.x + node.width <= graph.width
        assert 0 <= node.y and node.y + node.height <= graph.height


def test_layout_puts_each_depth_in_its_column_without_overlaps() -> None:
    items = [Item("a@1"), Item("b@1"), Item("c@1"), Item("m@1", ("a@1", "b@1"), "merged"),
             Item("mm@1", ("m@1", "c@1"), "merged"), Item("x@1", ("gone@1",), "sparse")]  # fmt: skip
    graph = lineage.lineage_graph("tiny", items)
    column = {n.key: n.column for n in graph.nodes}
    assert column == {"\0base": 0, "a@1": 1, "b@1": 1, "c@1": 1, "gone@1": 1, "m@1": 2, "x@1": 2, "mm@1": 3}
    assert [c["title"] for c in graph.columns] == ["base model", "trained on the base", "made from those", "made from those in turn"]
    edges = {(e.src, e.dst) for e in graph.edges}
    assert {("a@1", "m@1"), ("b@1", "m@1"), ("m@1", "mm@1"), ("c@1", "mm@1"), ("gone@1", "x@1")} <= edges
    assert ("\0base", "gone@1") not in edges and ("\0base", "a@1") in edges  # a removed parent hangs alone
    nodes = {n.key: n for n in graph.nodes}
    assert nodes["gone@1"].href is None and nodes["gone@1"].role == "missing"
    assert nodes["m@1"].href == "/_/experts/m@1" and nodes["\0base"].href == "/_/lineage?base=tiny"
    _no_overlaps(graph)
    for e in graph.edges:  # every edge runs left to right, from a box's right side to the next one's left
        a, b = nodes[e.src], nodes[e.dst]
        assert e.path.startswith(f"M{a.x + a.width},") and f" {b.x}," in e.path


def test_a_big_base_is_bounded_and_says_how_many_are_left_out() -> None:
    items = [Item(f"e{i}@1") for i in range(500)]
    items += [Item(f"m{i}@1", (f"e{i}@1", f"e{i + 1}@1"), "merged") for i in range(0, 300, 2)]
    graph = lineage.lineage_graph("tiny", items, max_nodes=200)
    assert len(graph.nodes) == 200 and graph.left_out == len(items) - 199
    keys = {n.key for n in graph.nodes}
    # merges come first, each with the parents it needs (no merge drawn without its parents)
    merges = [k for k in keys if k.startswith("m")]
    assert len(merges) == 66  # 66 merges x 3 nodes = 198, + the base = 199; one more plain expert fills it
    for m in merges:
        i = int(m[1:].split("@")[0])
        assert {f"e{i}@1", f"e{i + 1}@1"} <= keys
    _no_overlaps(graph)
    assert all(len(n.label) <= lineage.LABEL_CHARS for n in graph.nodes)


def test_a_child_follows_its_parents_and_long_names_are_cut() -> None:
    long = "x" * 60 + "@1"
    items = [Item("z@1"), Item("a@1"), Item(long), Item("m@1", ("z@1",), "merged"), Item("n@1", (long,), "merged")]
    graph = lineage.lineage_graph("tiny", items)
    y = {n.key: n.y for n in graph.nodes}
    assert y["m@1"] > y["n@1"]  # z@1 sorts after xxx...@1 in column 1; their children keep that order
    cut = next(n for n in graph.nodes if n.key == long)
    assert cut.label.endswith("…") and cut.title.startswith(long)


def test_neighbourhood_is_parents_self_children() -> None:
    me = Item("m@1", kind="merged")
    graph = lineage.neighbourhood(me, "tiny", [Item("a@1"), Item("b@1", present=False)], [Item("mm@1", kind="merged")])
    assert [c["title"] for c in graph.columns] == ["parents", "this expert", "children"]
    assert {(e.src, e.dst) for e in graph.edges} == {("a@1", "m@1"), ("b@1", "m@1"), ("m@1", "mm@1")}
    alone = lineage.neighbourhood(Item("a@1"), "tiny", [], [])
    assert [n.role for n in alone.nodes] == ["base", "self"] and len(alone.edges) == 1
    _no_overlaps(graph)


# -- the pages, over a real catalog -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """colors-sparse@1 and sizes-sparse@1 (trained), colors-sizes@1 (their ties merge, scored by compose's
    eval), both@1 (a merge of colors-sizes@1 and sizes-sparse@1), orphan@1 (its parent gone@1 removed), and
    evil@1 (markup for its base model and task)."""
    import torch
    from conftest import write_sparse_expert

    from hubtool.merge.compose import compose, evaluate_result
    from hubtool.registry import Catalog
    from hubtool.train import train

    root = tmp_path_factory.mktemp("extras")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HUB_HOME", str(root / "hub"))
        mp.delenv("HUB_CATALOG", raising=False)
        mp.delenv("HUB_DEBUG", raising=False)
        base = root / "base"
        make_tiny_llama(base)
        save_word_tokenizer(base, ["what", "color", "size", "is", "?", *COLORS, *SIZES, *THINGS])
        for name, question, answers in (("colors", "color", COLORS), ("sizes", "size", SIZES)):
            rows = [{"input": f"what {question} is {t} ?", "output": answers[i % len(answers)], "options": answers}
                    for i, t in enumerate(THINGS)]  # fmt: skip
            data = root / f"{name}.jsonl"
            data.write_text("".join(json.dumps(r) + "\n" for r in rows))
            train(name, data=str(data), base=str(base), **TRAIN)
        with Catalog() as cat:
            merged = compose(experts="colors-sparse@1,sizes-sparse@1", method="ties", density=0.5, lam=0.9,
                             weights=[1.0, 0.5], as_expert="colors-sizes", catalog=cat)  # fmt: skip
            evaluate_result(merged, catalog=cat)
            compose(experts="colors-sizes@1,sizes-sparse@1", as_expert="both", catalog=cat)
            files = root / "packed"
            files.mkdir()
            mine = {"base_model": str(base.resolve()), "task": "colors"}
            cat.register(write_sparse_expert(files / "gone.safetensors", name="gone", **mine))
            cat.register(write_sparse_expert(files / "orphan.safetensors", name="orphan", seed=1, **mine),
                         parents=["gone@1"])  # fmt: skip
            cat.remove("gone@1")
            cat.register(write_sparse_expert(files / "evil.safetensors", name="evil", task=EVIL_TASK, seed=2,
                                             base_model=EVIL_BASE))  # fmt: skip
        torch.set_num_threads(threads)
        yield {"home": root / "hub", "base": str(base.resolve()), "root": root}


@pytest.fixture(scope="module")
def ui(home: dict[str, Any]) -> Iterator[str]:
    log = home["root"] / "ui.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hubtool", "ui", "--port", "0"], stdout=out,
                                stderr=subprocess.STDOUT, env=_env(home["home"]))  # fmt: skip
    try:
        yield _wait_address(proc, log)
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def _expert(ui: str, ref: str) -> Any:
    page = get(ui + "experts/" + quote(ref, safe="@"))
    _check_page(page)
    return page


def _section(page: Any, heading_id: str) -> str:
    found = re.search(rf'<section aria-labelledby="{heading_id}">(.*?)</section>', page.body, re.DOTALL)
    assert found, f"no section {heading_id!r}"
    return found.group(1)


def _text(markup: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", markup)).split())


def _links(markup: str) -> list[tuple[str, str]]:
    """(href, text) of each link, the href decoded (the pages write @ as is or as %40)."""
    return [(unquote(html.unescape(h)), _text(t)) for h, t in re.findall(r'<a href="([^"]+)">(.*?)</a>', markup, re.DOTALL)]


def _svg_links(markup: str) -> list[str]:
    svg = re.search(r"<svg.*?</svg>", markup, re.DOTALL)
    assert svg, "no SVG"
    return [h for h, _ in _links(svg.group(0))]


def test_lineage_page_draws_base_experts_merges_and_merges_of_merges(ui: str, home: dict[str, Any]) -> None:
    page = get(ui + "lineage?" + urlencode({"base": home["base"]}))
    _check_page(page)
    svg = re.search(r"<svg.*?</svg>", page.body, re.DOTALL).group(0)
    titles = re.findall(r'<text class="column-title"[^>]*>([^<]+)</text>', svg)
    assert titles == ["base model", "trained on the base", "made from those", "made from those in turn"]
    links = _svg_links(page.body)
    for ref in ("colors-sparse@1", "sizes-sparse@1", "colors-sizes@1", "both@1", "orphan@1"):
        assert f"/_/experts/{ref}" in links
    assert "/_/experts/gone@1" not in links and "gone@1 (removed)" in _text(svg)
    assert "/_/experts/evil@1" not in links  # another base model
    # one line per parent -> child (and base -> each expert trained on it)
    # base -> the 2 trained experts; their 2 lines to the merge; the merge's and sizes-sparse's to both@1;
    # gone@1 -> orphan@1 (the removed parent: no line from the base to it)
    assert len(re.findall(r'<path class="edge"', svg)) == 2 + 2 + 2 + 1
    nodes = _text(re.search(r'<ul id="lineage-nodes">(.*?)</ul>', page.body, re.DOTALL).group(1))
    assert "made from those in turn: both@1" in nodes and "made from those: colors-sizes@1" in nodes
    assert "more not drawn" not in page.text()


def test_lineage_page_by_task_keeps_the_parents_a_merge_needs(ui: str, home: dict[str, Any]) -> None:
    page = get(ui + "lineage?" + urlencode({"base": home["base"], "task": "sizes"}))
    _check_page(page)
    links = _svg_links(page.body)
    assert "/_/experts/sizes-sparse@1" in links and "/_/experts/colors-sizes@1" in links
    assert "/_/experts/colors-sparse@1" in links  # not a sizes expert, but a parent of a merge that is
    assert "/_/experts/orphan@1" not in links
    assert page.form()["task"] == "sizes"


def test_lineage_page_without_a_base_lists_them_and_an_unknown_one_is_a_404(ui: str, home: dict[str, Any]) -> None:
    page = get(ui + "lineage")
    _check_page(page)
    bases = re.search(r'<ul id="bases">(.*?)</ul>', page.body, re.DOTALL).group(1)
    assert f'href="/_/lineage?{html.escape(urlencode({"base": home["base"]}))}"' in bases
    assert EVIL_BASE in _text(bases) and "<script>" not in page.body
    missing = get(ui + "lineage?base=no-such-base")
    _check_page(missing, 404)
    assert "no expert has base model 'no-such-base'" in missing.text()


def test_hostile_base_and_task_are_text_in_the_svg(ui: str) -> None:
    page = get(ui + "lineage?" + urlencode({"base": EVIL_BASE}))
    _check_page(page)
    svg = re.search(r"<svg.*?</svg>", page.body, re.DOTALL).group(0)
    assert "<script" not in svg and "<svg onload" not in page.body and "alert(1)\">" not in page.body
    assert EVIL_BASE[:20] in _text(svg)  # the label, cut, as text
    assert "&lt;script&gt;" in svg and "&lt;svg onload=&#34;alert(1)&#34;&gt;" in svg  # title: task, escaped
    assert _svg_links(page.body) == [unquote(f"/_/lineage?{urlencode({'base': EVIL_BASE})}"), "/_/experts/evil@1"]
    expert = _expert(ui, "evil@1")
    assert "<script>alert" not in expert.body and "<svg onload" not in expert.body


def test_expert_page_draws_its_neighbourhood(ui: str, home: dict[str, Any]) -> None:
    page = _expert(ui, "colors-sizes@1")
    graph = _section(page, "h-graph")
    assert _svg_links(graph) == ["/_/experts/colors-sparse@1", "/_/experts/sizes-sparse@1",
                                 "/_/experts/colors-sizes@1", "/_/experts/both@1"]  # fmt: skip
    assert "parents this expert children" in _text(graph)
    assert f'href="/_/lineage?{html.escape(urlencode({"base": home["base"]}))}"' in graph
    trained = _section(_expert(ui, "colors-sparse@1"), "h-graph")
    assert _svg_links(trained)[0] == unquote(f"/_/lineage?{urlencode({'base': home['base']})}")  # its parent: the base
    assert "/_/experts/colors-sizes@1" in _svg_links(trained)
    orphan = _text(_section(_expert(ui, "orphan@1"), "h-graph"))
    assert "gone@1 (removed)" in orphan


def test_recipe_shows_parents_pinned_and_a_command_that_makes_the_same_merge(ui: str, home: dict[str, Any]) -> None:
    from hubtool.registry import Catalog

    page = _expert(ui, "colors-sizes@1")
    recipe = _section(page, "h-recipe")
    text = _text(recipe)
    assert "Merged with ties : density 0.5, lambda 0.9" in text
    with Catalog(f"sqlite:///{home['home'] / 'registry.db'}") as cat:
        shas = {ref: cat.get(ref).sha256 for ref in ("colors-sparse@1", "sizes-sparse@1")}
    rows = re.search(r'<table id="recipe-parents">(.*?)</table>', recipe, re.DOTALL).group(1)
    for ref, weight, task in (("colors-sparse@1", "1", "colors"), ("sizes-sparse@1", "0.5", "sizes")):
        assert (f"/_/experts/{ref}", ref) in _links(rows)
        assert f"{ref} {task} {weight} sparse" in _text(rows) and shas[ref] in rows
    command = html.unescape(re.search(r'<code id="recipe-command">(.*?)</code>', recipe, re.DOTALL).group(1))
    assert command == ("hub compose --experts colors-sparse@1,sizes-sparse@1 --method ties --weights 1.0,0.5 "
                       "--density 0.5 --lambda 0.9 --as-expert colors-sizes")  # fmt: skip
    yaml_text = html.unescape(re.search(r'<code id="recipe-yaml">(.*?)</code>', recipe, re.DOTALL).group(1))
    assert "merge_method: ties" in yaml_text and all(sha in yaml_text for sha in shas.values())
    # run it: a second version of colors-sizes, entry for entry the first
    args = shlex.split(command)
    result = subprocess.run([sys.executable, "-m", "hubtool", *args[1:]], capture_output=True, text=True,
                            timeout=300, env=_env(home["home"]), check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Registered colors-sizes@2" in result.stdout
    with Catalog(f"sqlite:///{home['home'] / 'registry.db'}") as cat:
        first, again = cat.load("colors-sizes@1"), cat.load("colors-sizes@2")
        cat.remove("colors-sizes@2")  # the other tests see the catalog as built
    assert first.deltas.keys() == again.deltas.keys()
    for name, delta in first.deltas.items():
        assert delta.indices.tolist() == again.deltas[name].indices.tolist()
        assert delta.values.tolist() == again.deltas[name].values.tolist()
    # a trained expert has no recipe section
    assert 'aria-labelledby="h-recipe"' not in _expert(ui, "colors-sparse@1").body


def test_composes_well_with_lists_the_merges_and_their_retention(ui: str, home: dict[str, Any]) -> None:
    from hubtool.registry import Catalog

    with Catalog(f"sqlite:///{home['home'] / 'registry.db'}") as cat:
        single = cat.get("sizes-sparse@1").metrics["sizes"]["accuracy"]
        merged = cat.get("colors-sizes@1").metrics["sizes"]["accuracy"]
    assert single > 0
    page = _expert(ui, "sizes-sparse@1")
    section = _section(page, "h-composes")
    table = re.search(r'<table id="composes">(.*?)</table>', section, re.DOTALL).group(1)
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.DOTALL)[1:]
    by_merge = {re.search(r"<td><a [^>]*>([^<]+)</a>", r).group(1): r for r in rows}
    assert set(by_merge) == {"colors-sizes@1", "both@1"}
    row = by_merge["colors-sizes@1"]
    retention = f"{100 * merged / single:.1f}%"
    assert f"sizes accuracy {merged:.4g} / {single:.4g} = {retention}" in _text(row)
    assert _text(row).startswith("colors-sizes@1 ties 0.5 colors-sparse@1 sizes")
    assert ("/_/experts/colors-sparse@1", "colors-sparse@1") in _links(row)  # the other parent, linked
    assert _text(row).endswith(retention)
    assert "not scored on a task of this expert" in _text(by_merge["both@1"])  # never evaluated
    assert rows.index(by_merge["colors-sizes@1"]) == 0  # measured first
    nothing = _section(_expert(ui, "both@1"), "h-composes")
    assert "No merge includes this expert yet." in _text(nothing)


def test_budget_shows_each_layer_and_module_share_with_bars(ui: str, home: dict[str, Any]) -> None:
    from hubtool.registry import Catalog

    page = _expert(ui, "colors-sparse@1")
    section = _section(page, "h-budget")
    with Catalog(f"sqlite:///{home['home'] / 'registry.db'}") as cat:
        weights = cat.describe("colors-sparse@1")["weights"]
    total = sum(w["nnz"] for w in weights.values())
    assert f"Where its {total:,} kept entries went" in _text(section)
    layers = _text(re.search(r'<table id="budget-layers">(.*?)</table>', section, re.DOTALL).group(1))
    modules = re.search(r'<table id="budget-modules">(.*?)</table>', section, re.DOTALL).group(1)
    for layer in ("0", "1"):
        kept = sum(w["nnz"] for n, w in weights.items() if f".layers.{layer}." in n)
        assert f"{layer} {kept:,} {100 * kept / total:.1f}%" in layers
    for module in ("q_proj", "k_proj", "v_proj"):
        kept = sum(w["nnz"] for n, w in weights.items() if n.endswith(f"{module}.weight"))
        assert f"{module} {kept:,} {100 * kept / total:.1f}%" in _text(modules)
    bars = re.findall(r'<span class="bar (w\d+)" aria-hidden="true">', modules)
    assert bars[0] == "w100" and all(int(b[1:]) % 5 == 0 for b in bars)  # q_proj is the largest: 64x64
    css = get(ui + "static/hub.css").body
    assert all(f".bar.{b} {{ width: {b[1:]}%; }}" in css for b in bars)
    assert ' style="' not in page.body and "<script" not in page.body  # the CSP allows neither
    assert page.headers["Content-Security-Policy"] == CSP

