"""Routing with no task id (hubtool.route): the centroid and Arrow routers choose the right expert on toy
cases built for them, evaluate_routed equals scoring each group by hand and leaves the base bit for bit,
and `hub generate --route` answers with the chosen expert."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import torch
from tiny import make_tiny_llama, save_word_tokenizer

from hubtool.data.tasks import Example, TaskData, load_task
from hubtool.delta import Expert, SparseDelta
from hubtool.errors import HubError
from hubtool.format import fingerprint, pack
from hubtool.registry import Catalog
from hubtool.route import ExpertSwap, Router, evaluate_routed, top_right_singular_vector

COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "pink", "brown"]
ANIMALS = ["cat", "dog", "cow", "horse", "fish", "bird", "mouse", "sheep"]
OTHER = ["what", "is", "the", "answer", "yes", "no"]
WORDS = COLORS + ANIMALS + OTHER
TARGETS = ("q_proj", "v_proj")
# Templated prompts, one template per task: what makes routing easy (docs/compose.md says so).
TEMPLATE = {"colors": "what is the answer", "animals": "yes no"}
GROUP = {"colors": COLORS, "animals": ANIMALS}


def _prompts(task: str, n: int, seed: int, template: bool = True) -> list[str]:
    rng = random.Random(f"{task}-{seed}")
    words = [" ".join(rng.choice(GROUP[task]) for _ in range(rng.randint(3, 8))) for _ in range(n)]
    return [f"{TEMPLATE[task]} {w}" if template else w for w in words]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny Llama whose colour words' embeddings lie along one direction e_c and the animal words' along
    another, e_a (orthonormal, [64]): each task's inputs to every layer are then aligned with its own
    direction, which Arrow's experts below are built on. Saved with a word tokenizer."""
    path = tmp_path_factory.mktemp("route") / "base"
    model = make_tiny_llama(vocab=4 + len(WORDS))
    gen = torch.Generator().manual_seed(7)
    e_c, e_a = torch.linalg.qr(torch.randn(64, 2, generator=gen)).Q.T  # two orthonormal [64] rows
    emb = model.model.embed_tokens.weight
    with torch.no_grad():
        for i, w in enumerate(WORDS, start=4):
            if w in COLORS:
                emb[i] += e_c  # init std 0.02: |row| is about 0.16, so e_c dominates it
            elif w in ANIMALS:
                emb[i] += e_a
    model.save_pretrained(path)
    tokenizer = save_word_tokenizer(path, WORDS)
    return path, model, tokenizer, {"colors": e_c, "animals": e_a}


def _expert(model, path, name, task, direction, seed, keep=0.5) -> Expert:
    """A sparse expert on q_proj/v_proj of both layers: the kept half of the entries of
    u direction^T [out, in] plus noise, so its top right singular vector is about `direction` [64]."""
    gen = torch.Generator().manual_seed(seed)
    deltas = {}
    for wname, w in model.named_parameters():
        if not (wname.endswith(".weight") and any(t in wname for t in TARGETS)):
            continue
        out, n = w.shape[0], w.numel()
        u = torch.randn(out, generator=gen)
        dense = 0.3 * torch.outer(u / u.norm(), direction) + 0.002 * torch.randn(w.shape, generator=gen)
        idx = torch.randperm(n, generator=gen)[: int(keep * n)].sort().values
        deltas[wname] = SparseDelta(tuple(w.shape), idx, dense.reshape(-1)[idx], fingerprint(w.detach()))
    return Expert(name=name, task=task, kind="sparse", base_model=str(path.resolve()), deltas=deltas,
                  keep_ratio=keep, value_dtype="float32", targets="qv")


@pytest.fixture(scope="module")
def experts(base):
    path, model, _, dirs = base
    return {t: _expert(model, path, f"{t}-x", t, dirs[t], seed=i) for i, t in enumerate(("colors", "animals"))}


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# --- the routers on toy cases ----------------------------------------------------------------------------


def test_centroid_routes_each_task_to_its_own_expert(base, experts):
    _, model, tok, _ = base
    val = {t: _prompts(t, 16, seed=0) for t in experts}
    router = Router.fit(model, tok, experts, val, "centroid", max_val=16)
    assert router.tasks == ["colors", "animals"] and router.centroids.shape == (2, 64)
    for task in experts:
        test = _prompts(task, 40, seed=1)  # unseen prompts of the same distribution
        assert router.choose(test) == [task] * 40
        s = router.scores(test)
        own = router.tasks.index(task)
        assert (s[:, own] - s[:, 1 - own]).min() > 0.5  # a clear margin, not a coin toss
    assert router.choose([]) == []
    # max_val: only the first prompts place a centroid (the rest here would drag it to the other task)
    spoiled = {"colors": val["colors"][:4] + _prompts("animals", 12, seed=2), "animals": val["animals"]}
    assert Router.fit(model, tok, experts, spoiled, "centroid", max_val=4).choose(_prompts("colors", 5, 3)) == \
        ["colors"] * 5


def test_top_right_singular_vector_matches_svd():
    gen = torch.Generator().manual_seed(0)
    for shape in ((48, 64), (64, 32), (32, 32)):  # wide, tall, square: both Gram sides
        a = torch.randn(shape, generator=gen)
        v = top_right_singular_vector(a)
        ref = torch.linalg.svd(a.double()).Vh[0].float()
        assert v.shape == (shape[1],) and abs(float(v @ ref)) == pytest.approx(1.0, abs=1e-4)
    assert torch.equal(top_right_singular_vector(torch.zeros(4, 6)), torch.zeros(6))


def test_arrow_routes_by_the_experts_top_singular_vectors(base, experts):
    _, model, tok, dirs = base
    router = Router.fit(model, tok, experts, method="arrow")  # no prompts: only the deltas
    assert sorted(router.directions) == sorted(
        f"model.layers.{i}.self_attn.{t}" for i in range(2) for t in TARGETS)
    for rows in router.directions.values():  # [2, in]: each expert's v is about its direction, up to sign
        assert abs(float(rows[0] @ dirs["colors"])) > 0.9 and abs(float(rows[1] @ dirs["animals"])) > 0.9
    for task in experts:
        # untemplated: only the words' directions, which the deltas' singular vectors line up with
        assert router.choose(_prompts(task, 30, seed=1, template=False)) == [task] * 30
    # the same experts under swapped task names: every choice swaps too, so the deltas drive it
    swapped = Router.fit(model, tok, {"colors": experts["animals"], "animals": experts["colors"]}, method="arrow")
    assert swapped.choose(_prompts("colors", 10, seed=1, template=False)) == ["animals"] * 10
    # a layer only one expert adapts adds nothing to the other's score
    q0 = "model.layers.0.self_attn.q_proj.weight"
    only = Expert(name="one", task="one", kind="sparse", base_model="x", deltas={q0: experts["colors"].deltas[q0]})
    r = Router.fit(model, tok, {"one": only, "animals": experts["animals"]}, method="arrow")
    assert torch.equal(r.directions["model.layers.1.self_attn.q_proj"][0], torch.zeros(64))


def test_router_bad_input(base, experts):
    _, model, tok, _ = base
    val = {t: _prompts(t, 4, seed=0) for t in experts}
    cases = [
        (lambda: Router.fit(model, tok, experts, val, "knn"), "method 'knn': expected one of centroid, arrow"),
        (lambda: Router.fit(model, tok, {}, val), "experts: expected at least one"),
        (lambda: Router.fit(model, tok, experts, None, "centroid"), "prompts: the centroid router needs"),
        (lambda: Router.fit(model, tok, experts, {"colors": val["colors"], "animals": []}), "task 'animals' has none"),
        (lambda: Router.fit(model, tok, experts, {**val, "math": ["x"]}), "task 'math' has no expert"),
        (lambda: Router.fit(model, tok, experts, val, max_val=0), "max_val 0"),
        (lambda: Router.fit(model, tok, experts, method="arrow").choose("red blue"), "one string"),
        (lambda: Router.fit(model, tok, experts, method="arrow").choose(["red", " "]), r"prompts\[1\]"),
    ]
    emb = Expert(name="emb", task="emb", kind="full", base_model="x",
                 deltas={"model.embed_tokens.weight": SparseDelta((4 + len(WORDS), 64), torch.tensor([0]), torch.ones(1))})
    cases.append((lambda: Router.fit(model, tok, {"emb": emb}, method="arrow"), "adapts no linear layer"))
    for call, match in cases:
        with pytest.raises(HubError, match=match):
            call()


# --- evaluate_routed ------------------------------------------------------------------------------------


def _task(name: str, examples: list[Example]) -> TaskData:
    return TaskData(name, [], [], examples)


def _mixed_examples() -> list[Example]:
    """Colour prompts scored by options, animal prompts by generation, interleaved."""
    out = []
    for i, (c, a) in enumerate(zip(_prompts("colors", 6, seed=4), _prompts("animals", 6, seed=4))):
        out.append(Example(c, "yes", options=["yes", "no", "red blue"]))
        out.append(Example(a, ANIMALS[i % 8]))
    return out


def test_evaluate_routed_equals_each_group_scored_by_hand(base, experts):
    from transformers import AutoModelForCausalLM

    from hubtool.apply import apply_expert
    from hubtool.evaluate import metrics_of, predict

    path, model, tok, _ = base
    router = Router.fit(model, tok, experts, method="arrow")
    before = _params(model)
    examples = _mixed_examples()
    metrics, preds, choices = evaluate_routed(model, tok, router, experts, _task("mixed", examples),
                                              max_new_tokens=3, batch_size=4)
    assert choices == ["colors", "animals"] * 6  # routed as built
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the base, bit for bit
    assert [p.example for p in preds] == examples  # back in the examples' order
    assert "routing_accuracy" not in metrics and metrics["n"] == 12  # "mixed" has no expert of its own
    # by hand: a fresh base per group, its expert added, the group predicted in order
    for task in experts:
        idx = [i for i, c in enumerate(choices) if c == task]
        fresh = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
        apply_expert(fresh, experts[task])
        want = predict(fresh, tok, [examples[i] for i in idx], max_new_tokens=3, batch_size=4)
        assert [(preds[i].text, preds[i].option_logprobs) for i in idx] == \
            [(w.text, w.option_logprobs) for w in want], task
        other = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
        apply_expert(other, experts["animals" if task == "colors" else "colors"])
        wrong = predict(other, tok, [examples[i] for i in idx if examples[i].options], batch_size=4)
        if wrong:  # the other expert scores the options differently: the group's expert mattered
            assert [w.option_logprobs for w in wrong] != [preds[i].option_logprobs for i in idx if examples[i].options]
    assert {k: v for k, v in metrics.items() if k in ("rougeL", "exact_match", "accuracy")} == \
        {k: v for k, v in metrics_of(preds).items() if k in ("rougeL", "exact_match", "accuracy")}
    # a task with an expert of its own reports the share routed to it, in percent
    own = [Example(p, "yes", options=["yes", "no"]) for p in _prompts("colors", 4, seed=5)]
    own += [Example(p, "no", options=["yes", "no"]) for p in _prompts("animals", 1, seed=5)]
    m, _, ch = evaluate_routed(model, tok, router, experts, _task("colors", own))
    assert ch == ["colors"] * 4 + ["animals"] and m["routing_accuracy"] == pytest.approx(80.0)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    with pytest.raises(HubError, match="not the router's tasks"):
        evaluate_routed(model, tok, router, {"colors": experts["colors"]}, _task("colors", own))
    with pytest.raises(HubError, match="--limit"):
        evaluate_routed(model, tok, router, experts, _task("colors", own), limit=0)


def test_expert_swap_leaves_nothing_of_the_previous_expert(base, experts):
    from hubtool.apply import apply_expert

    _, model, _, _ = base
    before = _params(model)
    want = {n: t.clone() for n, t in before.items()}
    apply_expert(want, experts["animals"])  # base + animals, on a state dict
    with ExpertSwap(model, experts) as swap:
        swap.use("colors")
        assert not all(torch.equal(p, before[n]) for n, p in model.named_parameters())
        swap.use("animals")
        assert all(torch.equal(p, want[n]) for n, p in model.named_parameters())
        swap.use(None)
        assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
        swap.use("colors")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # __exit__ restored it


# --- hub generate --route ---------------------------------------------------------------------------------


def _write_task(folder, task, validation=True):
    folder.mkdir(parents=True)
    for split, n, seed in (("train", 8, 10), ("validation", 8 if validation else 0, 11), ("test", 4, 12)):
        rows = [json.dumps({"input": p, "output": "yes"}) for p in _prompts(task, n, seed)]
        (folder / f"{split}.jsonl").write_text("".join(r + "\n" for r in rows))
    return folder


@pytest.mark.slow
def test_cli_generate_route(base, experts, hub_home, tmp_path):
    from hubtool.generate import generate, resolve_routed

    path, _, _, _ = base
    cat = Catalog(blobs=hub_home / "blobs")
    refs = {}
    for task, expert in experts.items():
        cat.record_task(load_task(_write_task(tmp_path / "tasks" / task, task)))
        pack(expert, tmp_path / f"{task}.safetensors")
        refs[task] = cat.register(tmp_path / f"{task}.safetensors").ref
    hub = [sys.executable, "-m", "hubtool", "generate"]
    env = {**os.environ, "HUB_HOME": str(hub_home)}
    prompt = _prompts("animals", 1, seed=20)[0]
    out = subprocess.run([*hub, prompt, "--tasks", "colors,animals", "--route", "centroid", "--max-new-tokens", "4"],
                         capture_output=True, text=True, env=env, check=False)
    assert out.returncode == 0, out.stderr
    assert f"routed (centroid) to {refs['animals']} (task animals)" in out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and set(lines[0].split()) <= set(WORDS)
    # the answer is base + the chosen expert's
    assert lines[0] == generate(refs["animals"], prompt, max_new_tokens=4, catalog=cat)
    assert generate(prompt=_prompts("colors", 1, 21, template=False)[0], experts=",".join(refs.values()),
                    route="arrow", max_new_tokens=4, catalog=cat) == \
        generate(refs["colors"], _prompts("colors", 1, 21, template=False)[0], max_new_tokens=4, catalog=cat)

    # a task with no validation examples: centroid refuses in one line, arrow needs none
    third = _expert(base[1], path, "bare-x", "bare", torch.ones(64) / 8, seed=3)
    cat.record_task(load_task(_write_task(tmp_path / "tasks" / "bare", "colors", validation=False)))
    pack(third, tmp_path / "bare.safetensors")
    cat.register(tmp_path / "bare.safetensors")
    out = subprocess.run([*hub, prompt, "--tasks", "colors,bare", "--route", "centroid"],
                         capture_output=True, text=True, env=env, check=False)
    assert out.returncode == 1 and out.stdout == ""
    refused = (f"Error: --route centroid: task bare of {third.name}@1 has no validation examples to place its "
               "centroid; --route arrow needs none")
    assert out.stderr.strip().splitlines() == [refused]
    cases = [
        ({"route": "knn", "tasks": "colors"}, "--route 'knn': expected one of centroid, arrow"),
        ({"route": "arrow"}, "--route: expected --tasks or --experts"),
        ({"route": "arrow", "tasks": "colors", "method": "ties"}, "--method: not with --route"),
        ({"route": "arrow", "target": refs["colors"]}, "leave TARGET out"),
    ]
    for kw, match in cases:
        with pytest.raises(HubError, match=match):
            resolve_routed(catalog=cat, **kw)


def test_route_module_stays_light():
    code = "import sys, hubtool.route; print('torch' in sys.modules or 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
