"""hub overlap (pairwise Jaccard of masks, table, JSON, PNG) and hub generate (folder, expert, in-memory compose)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from tiny import make_tiny_llama, save_word_tokenizer

from hubtool.delta import BlockSparseDelta, Expert, FullDelta, LoraDelta, SparseDelta
from hubtool.errors import FingerprintError, HubError, NotFoundError
from hubtool.format import fingerprint, pack
from hubtool.merge.compose import build_recipe, compose
from hubtool.merge.overlap import heatmap_png, layer_of, pairwise_overlap, write_heatmap
from hubtool.merge.plan import make_plan
from hubtool.registry import Catalog

W0 = "model.layers.0.self_attn.q_proj.weight"
W0K = "model.layers.0.self_attn.k_proj.weight"
W1 = "model.layers.1.self_attn.q_proj.weight"
SHAPE = (5, 10)  # 50 entries
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def cat(hub_home):
    return Catalog(blobs=hub_home / "blobs")


def _register(cat, tmp_path, expert, **kw):
    path = tmp_path / f"{expert.name}-{len(list(tmp_path.glob('*.safetensors')))}.safetensors"
    pack(expert, path)
    return cat.register(path, **kw)


def _sparse(positions) -> SparseDelta:
    idx = torch.tensor(sorted(positions), dtype=torch.int64)
    return SparseDelta(SHAPE, idx, torch.ones(idx.numel()))


def _mask_expert(name, task, deltas, kind="sparse") -> Expert:
    return Expert(name=name, task=task, kind=kind, base_model="tiny-test-base", deltas=deltas, value_dtype="float32")


def _plan(cat, refs):
    return make_plan(cat, build_recipe(experts=",".join(refs)))


# --- overlap figures on masks built for the test ---------------------------------------------------------


@pytest.fixture
def masks(cat, tmp_path):
    """A keeps 0..9 of W0 and 0..19 of W1; B 5..24 of W0 and 10..29 of W1; C == A on W0 only;
    D 30..39 of W0 only (disjoint from A, B and C)."""
    specs = {
        "a": {W0: range(10), W1: range(20)},
        "b": {W0: range(5, 25), W1: range(10, 30)},
        "c": {W0: range(10)},
        "d": {W0: range(30, 40)},
    }
    refs = []
    for name, weights in specs.items():
        e = _mask_expert(name, f"task-{name}", {w: _sparse(p) for w, p in weights.items()})
        refs.append(_register(cat, tmp_path, e).ref)
    return refs


def test_pairwise_jaccard_overall_and_per_layer(cat, masks):
    report = pairwise_overlap(_plan(cat, masks))
    a, b, c, d = range(4)
    assert report.refs == masks
    l0, l1 = report.per_layer["layer 0"], report.per_layer["layer 1"]
    assert list(report.per_layer) == ["layer 0", "layer 1"]
    assert l0[a][b] == pytest.approx(5 / 25)  # |0..9 ∩ 5..24| = 5, |∪| = 25
    assert l0[a][c] == 1.0 and l0[c][a] == 1.0  # identical masks
    assert l0[a][d] == 0.0 and l0[b][d] == 0.0 and l0[c][d] == 0.0  # disjoint
    assert l1[a][b] == pytest.approx(10 / 30)
    assert l1[a][c] == 0.0  # C holds nothing of layer 1: 0 of A's 20
    assert l1[c][d] is None  # neither touches layer 1: undefined, not 0
    assert all(l0[i][i] == 1.0 for i in range(4))
    # overall: counts pooled over the weights, then divided
    assert report.intersections[a][b] == 15 and report.unions[a][b] == 55
    assert report.overall[a][b] == pytest.approx(15 / 55)
    assert report.overall[a][c] == pytest.approx(10 / 30)
    assert report.overall[a][d] == 0.0
    assert [report.intersections[i][i] for i in range(4)] == [30, 40, 10, 10]  # diagonal = |A|
    assert report.overall == [list(row) for row in zip(*report.overall)]  # symmetric
    assert report.layer_intersections["layer 1"][a][b] == 10 and report.layer_unions["layer 1"][a][b] == 30
    # mean pairwise Jaccard per layer; pairs with an undefined value are left out
    pairs0 = [l0[i][j] for i, j in report.pairs]
    assert report.layer_means()["layer 0"] == pytest.approx(sum(pairs0) / 6)
    assert report.layer_means()["layer 1"] == pytest.approx((10 / 30 + 0 + 0 + 0 + 0) / 5)
    data = report.to_dict()
    assert json.loads(json.dumps(data))["layers"][1]["jaccard"][c][d] is None  # valid JSON, no NaN


def test_layers_pool_the_weights_of_one_layer(cat, tmp_path):
    # two weights of layer 0: A keeps 0..9 of each, B keeps 0..4 of q and 0..9 of k -> (5 + 10) / (10 + 10)
    a = _mask_expert("a", "ta", {W0: _sparse(range(10)), W0K: _sparse(range(10))})
    b = _mask_expert("b", "tb", {W0: _sparse(range(5)), W0K: _sparse(range(10))})
    refs = [_register(cat, tmp_path, e).ref for e in (a, b)]
    report = pairwise_overlap(_plan(cat, refs))
    assert list(report.per_layer) == ["layer 0"]
    assert report.per_layer["layer 0"][0][1] == pytest.approx(15 / 20)
    assert layer_of("lm_head.weight") == "lm_head.weight" and layer_of(W1) == "layer 1"


def test_dense_and_block_deltas_cover_their_entries(cat, tmp_path):
    a = _mask_expert("a", "ta", {W0: _sparse(range(10))})
    lora = _mask_expert("l", "tl", {W0: LoraDelta(SHAPE, torch.randn(2, 10), torch.randn(5, 2), 1.0)}, kind="lora")
    full = _mask_expert("f", "tf", {W0: FullDelta(SHAPE, torch.randn(SHAPE))}, kind="full")
    # block 8 on [5, 10]: tile 0 covers rows 0..4, cols 0..7 = 40 entries, 8 of them in row 0 (A's 0..9)
    block = _mask_expert("k", "tk", {W0: BlockSparseDelta(SHAPE, 8, torch.tensor([0]), torch.randn(1, 8, 8))},
                         kind="block-sparse")
    refs = [_register(cat, tmp_path, e).ref for e in (a, lora, full, block)]
    report = pairwise_overlap(_plan(cat, refs))
    a_, l_, f_, k_ = range(4)
    assert report.overall[a_][l_] == pytest.approx(10 / 50)  # LoRA touches every entry of W
    assert report.overall[l_][f_] == 1.0
    assert report.overall[a_][k_] == pytest.approx(8 / 42)
    assert report.overall[k_][f_] == pytest.approx(40 / 50)


def test_heatmap_png_is_a_real_png(cat, masks, tmp_path):
    report = pairwise_overlap(_plan(cat, masks))
    data = heatmap_png(report)
    assert data.startswith(PNG_MAGIC) and len(data) > 5_000
    out = tmp_path / "figs" / "overlap.png"
    assert write_heatmap(report, out) == out.stat().st_size
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert [p.name for p in out.parent.iterdir()] == ["overlap.png"]  # no temp file left behind


def test_cli_overlap_table_json_png_and_errors(cat, masks, tmp_path):
    hub = [sys.executable, "-m", "hubtool"]
    png = tmp_path / "o.png"
    run = subprocess.run([*hub, "overlap", "--experts", ",".join(masks[:3]), "--png", str(png)],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert "Jaccard" in run.stdout and "layer 0" in run.stdout and "layer 1" in run.stdout
    assert "0.200" in run.stdout and "1.000" in run.stdout and all(r in run.stdout for r in masks[:3])
    assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 5_000
    js = subprocess.run([*hub, "overlap", "--tasks", "task-a,task-b", "--json"], capture_output=True, text=True, check=False)
    assert js.returncode == 0, js.stderr
    data = json.loads(js.stdout)
    assert data["experts"][0]["ref"] == masks[0] and data["overall"][0][1] == pytest.approx(15 / 55)
    assert [row["layer"] for row in data["layers"]] == ["layer 0", "layer 1"]
    bad = subprocess.run([*hub, "overlap", "--experts", masks[0]], capture_output=True, text=True, check=False)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1 and "two or more" in bad.stderr


def test_overlap_bad_input_fails_before_reading(cat, masks, tmp_path):
    from typer.testing import CliRunner

    from hubtool.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["overlap", "--tasks", "nope"])
    assert isinstance(result.exception, NotFoundError) and "nope" in str(result.exception)
    result = runner.invoke(app, ["overlap", "--experts", ",".join(masks), "--png", str(tmp_path / "o.jpg")])
    assert isinstance(result.exception, HubError) and "--png" in str(result.exception)
    assert not (tmp_path / "o.jpg").exists()


# --- hub generate on a tiny random Llama ------------------------------------------------------------------

WORDS = ["what", "is", "the", "answer", "yes", "no", "red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "river", "stone", "fire", "water"]
TARGETS = ("q_proj", "v_proj")


@pytest.fixture
def llama(tmp_path):
    """A tiny Llama whose vocabulary is exactly the word tokenizer's, so every generated id decodes."""
    path = tmp_path / "base"
    model = make_tiny_llama(path, vocab=4 + len(WORDS))
    save_word_tokenizer(path, WORDS)
    return path, model


def _expert(model, base_path, name, task, seed, keep=0.3, scale=1.0) -> Expert:
    gen = torch.Generator().manual_seed(seed)
    deltas = {}
    for wname, w in model.named_parameters():
        if not (wname.endswith(".weight") and any(t in wname for t in TARGETS)):
            continue
        shape, n = tuple(w.shape), w.numel()
        idx = torch.randperm(n, generator=gen)[: int(keep * n)].sort().values
        deltas[wname] = SparseDelta(shape, idx, torch.randn(idx.numel(), generator=gen) * scale, fingerprint(w.detach()))
    return Expert(name=name, task=task, kind="sparse", base_model=str(base_path.resolve()), deltas=deltas,
                  keep_ratio=keep, value_dtype="float32", targets="qv")


@pytest.fixture
def experts(llama, cat, tmp_path):
    path, model = llama
    a = _register(cat, tmp_path, _expert(model, path, "qa-x", "squad", seed=1))
    b = _register(cat, tmp_path, _expert(model, path, "sum-x", "xsum", seed=2))
    return a, b


PROMPT = "what is the answer"


def _ids_of(target=None, **kw):
    from hubtool.generate import generate_ids, load_target, resolve_target

    model, tok = load_target(resolve_target(target, **kw))
    return generate_ids(model, tok, PROMPT, max_new_tokens=8), model, tok


def test_generate_expert_target_applies_the_expert(llama, experts, cat):
    _, base_model = llama
    a, _ = experts
    ids, model, tok = _ids_of(a.ref, catalog=cat)
    assert 0 < len(ids) <= 8 and all(0 <= i < 4 + len(WORDS) for i in ids)
    expert = cat.load(a.ref)
    params = dict(model.named_parameters())
    for name, delta in expert.deltas.items():
        want = base_model.state_dict()[name] + delta.to_dense()
        torch.testing.assert_close(params[name].detach(), want, rtol=0, atol=0)
    # the library call returns the decoded new text, and the name alone means the latest version
    from hubtool.generate import generate

    text = generate(a.name, PROMPT, max_new_tokens=8, catalog=cat)
    assert text == tok.decode(ids, skip_special_tokens=True).strip() and set(text.split()) <= set(WORDS)


def test_generate_in_memory_compose_equals_the_composed_folder(llama, experts, cat, tmp_path):
    for method in ("overlap-mean", "ties"):
        out = tmp_path / f"merged-{method}"
        compose(tasks="squad,xsum", method=method, out=out, catalog=cat)
        folder_ids, folder_model, _ = _ids_of(str(out))
        mem_ids, mem_model, _ = _ids_of(tasks="squad,xsum", method=method, catalog=cat)
        assert mem_ids == folder_ids
        got = dict(mem_model.named_parameters())
        for name, p in folder_model.named_parameters():
            assert torch.equal(got[name], p), name
    base_ids, _, _ = _ids_of(base=str(llama[0]))
    assert isinstance(base_ids, list)


def test_cli_generate_all_three_target_forms(llama, experts, cat, tmp_path):
    from typer.testing import CliRunner

    from hubtool.cli import app

    path, _ = llama
    a, b = experts
    out = tmp_path / "merged"
    compose(experts=f"{a.ref},{b.ref}", out=out, catalog=cat)
    runner = CliRunner()
    texts = {}
    for form, args in {
        "folder": [str(out), PROMPT],
        "expert": [a.ref, PROMPT],
        "compose": ["--experts", f"{a.ref},{b.ref}", PROMPT],
        "base": ["--base", str(path), PROMPT, "--no-chat-template"],
    }.items():
        result = runner.invoke(app, ["generate", *args, "--max-new-tokens", "6"])
        assert result.exit_code == 0, (form, result.output, result.exception)
        lines = result.stdout.splitlines()
        assert len(lines) == 1 and set(lines[0].split()) <= set(WORDS), (form, result.stdout)
        texts[form] = lines[0]
    assert texts["folder"] == texts["compose"]  # same experts, same method, one written, one in memory


def test_chat_template_wraps_the_prompt_when_the_tokenizer_has_one(llama):
    from transformers import AutoTokenizer

    from hubtool.generate import prompt_token_ids

    tok = AutoTokenizer.from_pretrained(llama[0])
    assert not getattr(tok, "chat_template", None)  # the tiny tokenizer has none: plain text either way
    plain = prompt_token_ids(tok, PROMPT, chat_template=False)
    assert prompt_token_ids(tok, PROMPT) == plain
    assert plain == list(tok(PROMPT)["input_ids"])
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}answer{% endif %}"
    wrapped = prompt_token_ids(tok, PROMPT)
    assert tok.convert_ids_to_tokens(wrapped) == [*PROMPT.split(), "answer"]
    assert prompt_token_ids(tok, PROMPT, chat_template=False) == plain


def test_generate_bad_input_fails_before_any_model_loads(llama, experts, cat, tmp_path, monkeypatch):
    import hubtool.models
    from hubtool.generate import generate

    def no_load(*a, **kw):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(hubtool.models, "load_base", no_load)
    a, _ = experts
    no_tok = tmp_path / "no-tokenizer"
    make_tiny_llama(no_tok, vocab=32)
    cases = [
        ({"target": str(tmp_path / "nope") + "/"}, "TARGET"),
        ({"target": "ghost@1"}, "TARGET ghost@1"),
        ({"target": a.ref, "tasks": "squad"}, "not both"),
        ({}, "nothing to generate"),
        ({"target": a.ref, "prompt": "  "}, "PROMPT"),
        ({"target": a.ref, "max_new_tokens": 0}, "--max-new-tokens"),
        ({"target": str(no_tok)}, "no tokenizer"),
        ({"tasks": "nope"}, "nope"),
        ({"target": a.ref, "method": "ties"}, "--method"),
        ({"tasks": "squad", "method": "nope"}, "merge_method"),
    ]
    for kw, match in cases:
        kw.setdefault("prompt", PROMPT)
        with pytest.raises(HubError, match=match):
            generate(catalog=cat, **kw)


def test_generate_refuses_a_different_base(llama, experts, cat, tmp_path):
    other = tmp_path / "other"
    make_tiny_llama(other, vocab=4 + len(WORDS), seed=1)
    save_word_tokenizer(other, WORDS)
    from hubtool.generate import generate

    a, b = experts
    with pytest.raises(FingerprintError, match="different base weight"):
        generate(prompt=PROMPT, experts=f"{a.ref},{b.ref}", base=str(other), catalog=cat)
    with pytest.raises(FingerprintError, match="different base weight"):
        generate(a.ref, PROMPT, base=str(other), catalog=cat)


def test_help_stays_light():
    code = ("import sys, hubtool.cli.explore, hubtool.generate, hubtool.merge.overlap; "
            "print(any(m in sys.modules for m in ('torch', 'transformers', 'matplotlib')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
