"""Trying a model: greedy text from a composed folder, one expert, an in-memory compose, or the base model.

    from hubtool.generate import generate
    generate("merged/", "What is the capital of France?")            # a folder `hub compose --out` wrote
    generate("qa-sparse@2", "What is ...?")                          # an expert on its own base model
    generate(prompt="What is ...?", tasks="qa,summarize")             # composed in memory, nothing written
    generate(prompt="What is ...?", base="smollm2-135m")             # the base model alone
    generate(prompt="What is ...?", tasks="qa,summarize", route="centroid")  # ONE expert, chosen per prompt

The in-memory compose is the same plan and the same merged deltas as `hub compose` (make_plan,
merged_deltas), added in fp32 into the fp32 base model after the fingerprint check. On an fp32 base it is
the folder `hub compose --out` writes, bit for bit; on a bf16 base the folder is rounded to bf16 once
and the in-memory model is not.

With `route` ("centroid" or "arrow", hubtool.route) the experts `tasks`/`experts` choose are not merged:
the router picks one of them for the prompt, with no task id, and the base model plus that one expert
answers (generate_routed also says which). The centroid router places each task's centroid from its
first MAX_VAL validation prompts, loaded through the catalog; a task without any is refused.

The prompt goes through the tokenizer's chat template when it has one (hubtool.data.prompts, as in
training and evaluation), unless chat_template=False; decoding is greedy and stops at EOS. Only the new
text is returned. torch and transformers are imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubtool.errors import FingerprintError, FormatError, HubError


@dataclass
class Target:
    """What generate() will load, decided (and checked) before any model is loaded."""

    kind: str  # "folder" | "expert" | "compose" | "base" | "route"
    source: str  # the folder / base model to load
    label: str  # for messages: the folder, the expert ref, "compose of a@1, b@2", the base model
    record: Any = None  # kind "expert": the catalog record
    plan: Any = None  # kind "compose" and "route": the plan (route: one expert per task, none merged)
    catalog: Any = None  # kind "expert" and "route": the catalog it is loaded from
    route: str | None = None  # kind "route": "centroid" | "arrow"
    prompts: dict[str, list[str]] | None = None  # kind "route", centroid: {task: its validation prompts}


def resolve_target(
    target: str | None = None,
    *,
    tasks: list[str] | str | None = None,
    experts: list[str] | str | None = None,
    method: str | None = None,
    where: str | None = None,
    base: str | None = None,
    catalog: Any = None,
) -> Target:
    """The model a generate() call means. Raises HubError for bad input; reads no tensor."""
    composing = bool(tasks) or bool(experts)
    if target is not None and not str(target).strip():
        raise HubError("TARGET: expected a model folder or an expert NAME[@VERSION], got an empty string")
    if target is not None and composing:
        raise HubError(
            f"TARGET {target}: give either TARGET (a model folder or an expert) or --tasks/--experts "
            "(composed in memory), not both"
        )
    if method is not None and not composing:
        raise HubError("--method: only with --tasks or --experts (it says how to merge them)")
    if target is None and not composing:
        if base is None:
            raise HubError("nothing to generate with: give TARGET (a model folder or an expert), "
                           "--tasks/--experts, or --base MODEL")
        return Target("base", base, base)
    if target is not None:
        path = Path(target).expanduser()
        if path.is_dir():
            if base is not None:
                raise HubError(f"--base: TARGET {target} is a model folder; --base goes with an expert or --tasks")
            if not (path / "config.json").is_file():
                raise HubError(f"TARGET {target}: not a model folder (expected a config.json in it)")
            _need_tokenizer(path, f"TARGET {target}")
            return Target("folder", str(path.resolve()), str(target))
        if path.exists() or "/" in str(target) or str(target).endswith(".safetensors"):
            raise HubError(
                f"TARGET {target}: not a model folder; expected a folder `hub compose --out` wrote, "
                "or an expert NAME[@VERSION] from the catalog (a base model goes with --base)"
            )
        cat = _catalog(catalog)
        try:
            rec = cat.get(str(target))
        except HubError as err:
            raise HubError(f"TARGET {target}: not a model folder, and not an expert in the catalog ({err})") from None
        source = base if base is not None else rec.base_model
        return Target("expert", source, rec.ref, record=rec, catalog=cat)
    from hubtool.merge.compose import build_recipe
    from hubtool.merge.plan import make_plan

    recipe = build_recipe(tasks, experts=experts, method=method, where=where)
    plan = make_plan(_catalog(catalog), recipe)
    source = base if base is not None else plan.base_model
    label = f"{plan.recipe.method} of {', '.join(c.ref for c in plan.choices)}"
    return Target("compose", source, label, plan=plan)


def resolve_routed(
    route: str,
    target: str | None = None,
    *,
    tasks: list[str] | str | None = None,
    experts: list[str] | str | None = None,
    method: str | None = None,
    where: str | None = None,
    base: str | None = None,
    catalog: Any = None,
    max_val: int | None = None,
) -> Target:
    """What a routed generate() means: the experts `tasks`/`experts` choose (one per task) and, for the
    centroid router, each task's first `max_val` validation prompts. Raises HubError; reads no tensor."""
    from hubtool.merge.compose import build_recipe
    from hubtool.merge.plan import make_plan
    from hubtool.route import MAX_VAL, check_method

    check_method(route)
    if target is not None:
        raise HubError(f"TARGET {target}: --route chooses among the experts of --tasks/--experts; leave TARGET out")
    if not tasks and not experts:
        raise HubError("--route: expected --tasks or --experts, the experts to route between")
    if method is not None:
        raise HubError("--method: not with --route (routing answers with one expert and merges nothing)")
    cat = _catalog(catalog)
    plan = make_plan(cat, build_recipe(tasks, experts=experts, where=where))
    of_task: dict[str, str] = {}
    for c in plan.choices:
        if c.task in of_task:
            raise HubError(f"--experts: {of_task[c.task]} and {c.ref} are both experts of task {c.task}; "
                           "routing picks one expert per task")
        of_task[c.task] = c.ref
    prompts = None
    if route == "centroid":
        prompts = {c.task: _validation_prompts(c, cat, MAX_VAL if max_val is None else max_val)
                   for c in plan.choices}
    source = base if base is not None else plan.base_model
    label = f"{route} routing between {', '.join(c.ref for c in plan.choices)}"
    return Target("route", source, label, plan=plan, catalog=cat, route=route, prompts=prompts)


def run_routed(target: Target, prompt: str, *, max_new_tokens: int = 64, chat_template: bool = True,
               threads: int = 2) -> tuple[Any, str]:
    """(the plan's Choice the router picked for `prompt`, the greedy new text of base + that expert)."""
    from hubtool.apply import apply_expert
    from hubtool.route import Router

    model, tokenizer = load_target(target, threads=threads)  # the base alone: routers read base states
    experts = {c.task: target.catalog.load(c.ref) for c in target.plan.choices}
    router = Router.fit(model, tokenizer, experts, target.prompts, target.route, chat_template=chat_template)
    task = router.choose([prompt])[0]
    apply_expert(model, experts[task])
    new = generate_ids(model, tokenizer, prompt, max_new_tokens=max_new_tokens, chat_template=chat_template)
    choice = next(c for c in target.plan.choices if c.task == task)
    return choice, tokenizer.decode(new, skip_special_tokens=True).strip()


def load_target(target: Target, *, threads: int = 2) -> tuple[Any, Any]:
    """(fp32 model in eval mode, tokenizer) for a resolved target, experts applied (kind "route": none,
    run_routed adds the one it picks)."""
    import torch

    from hubtool.models import load_base, resolve_base

    source, _ = resolve_base(target.source)  # checks a folder / id before the model loads
    if Path(source).is_dir():
        _need_tokenizer(Path(source), target.label)
    if target.kind == "expert":
        expert = target.catalog.load(target.record.ref)  # checks the blob's sha256
        model, tokenizer = load_base(target.source, dtype=torch.float32)
        from hubtool.apply import apply_expert

        apply_expert(model, expert)
    elif target.kind == "compose":
        model, tokenizer = load_base(target.source, dtype=torch.float32)
        apply_plan(model, target.plan, threads=threads)
    else:
        model, tokenizer = load_base(target.source, dtype=torch.float32)
    if tokenizer is None:
        raise HubError(f"{target.label}: no tokenizer files next to {source}; generate needs one")
    return model, tokenizer


def apply_plan(model: Any, plan: Any, *, threads: int = 2) -> int:
    """Add the plan's merged deltas into `model` in place (fp32), one weight at a time, after checking
    each weight's name, shape and base fingerprint. Returns the number of weights changed."""
    import torch

    from hubtool.format.fingerprint import fingerprint
    from hubtool.merge.execute import merged_deltas

    params = dict(model.named_parameters(remove_duplicate=False))
    refs = ", ".join(c.ref for c in plan.choices)
    done = 0
    with torch.no_grad():
        for name, delta in merged_deltas(plan, threads=threads):
            weight = params.get(name)
            if weight is None:
                raise FormatError(f"experts {refs}: weight {name} is not in the base model {plan.base_model}")
            if tuple(weight.shape) != tuple(delta.shape):
                raise FormatError(f"experts {refs}: weight {name} has shape {list(weight.shape)} in the base "
                                  f"model, the experts expect {list(delta.shape)}")
            if delta.fingerprint is not None:
                got = fingerprint(weight)
                if got != delta.fingerprint:
                    raise FingerprintError(
                        f"experts {refs} were trained against a different base weight for {name}: expected "
                        f"{delta.fingerprint}, the base model {plan.base_model} has {got}"
                    )
            delta.add_to_(weight.data)
            done += 1
    return done


def prompt_token_ids(tokenizer: Any, prompt: str, *, chat_template: bool = True) -> list[int]:
    """The prompt's ids: through the chat template when asked and the tokenizer has one, else plain text
    with the tokenizer's own special tokens (e.g. Llama's BOS)."""
    from hubtool.data.prompts import has_chat_template, prompt_ids

    if chat_template and has_chat_template(tokenizer):
        return prompt_ids(tokenizer, prompt)
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def generate_ids(model: Any, tokenizer: Any, prompt: str, *, max_new_tokens: int = 64,
                 chat_template: bool = True) -> list[int]:
    """The new token ids of a greedy continuation of `prompt`, cut before the first EOS."""
    import torch
    from transformers import GenerationConfig

    from hubtool.evaluate import _cut, pad_id, prompt_budget, stop_ids

    ids = prompt_token_ids(tokenizer, prompt, chat_template=chat_template)
    if not ids:
        raise HubError("prompt: the tokenizer gives no tokens for it; expected some text")
    # Kept from the end (where the question is) to what the window leaves after max_new_tokens.
    ids = _cut(ids, prompt_budget(model, max_new_tokens))

    stops = stop_ids(model, tokenizer)  # the same stops and padding as evaluation
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
                              pad_token_id=pad_id(tokenizer), eos_token_id=stops or None)
    input_ids = torch.tensor([ids], dtype=torch.long, device=model.device)
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                             generation_config=config)
    row = out[0, input_ids.shape[1]:].tolist()
    cut = min((row.index(s) for s in stops if s in row), default=len(row))
    return row[:cut]


def generate(
    target: str | None = None,
    prompt: str = "",
    *,
    tasks: list[str] | str | None = None,
    experts: list[str] | str | None = None,
    method: str | None = None,
    where: str | None = None,
    base: str | None = None,
    max_new_tokens: int = 64,
    chat_template: bool = True,
    catalog: Any = None,
    route: str | None = None,
    on_route: Callable[[Any], None] | None = None,
) -> str:
    """The greedy continuation of `prompt` (new text only) by a model folder, an expert NAME[@VERSION],
    the experts `tasks`/`experts` choose (composed in memory with `method`, or with `route` the one of
    them a router picks for the prompt; `on_route` is told which, a plan Choice), or the `base` model alone."""
    check_request(prompt, max_new_tokens)
    if route is not None:
        resolved = resolve_routed(route, target, tasks=tasks, experts=experts, method=method, where=where,
                                  base=base, catalog=catalog)
        choice, text = run_routed(resolved, prompt, max_new_tokens=max_new_tokens, chat_template=chat_template)
        if on_route is not None:
            on_route(choice)
        return text
    resolved = resolve_target(target, tasks=tasks, experts=experts, method=method, where=where, base=base,
                              catalog=catalog)
    model, tokenizer = load_target(resolved)
    new = generate_ids(model, tokenizer, prompt, max_new_tokens=max_new_tokens, chat_template=chat_template)
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def check_request(prompt: str, max_new_tokens: int) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise HubError("PROMPT: expected some text, got an empty prompt")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as err:  # argv bytes that are not UTF-8 arrive as lone surrogates
        char = ord(prompt[err.start])
        what = f"byte 0x{char - 0xDC00:02x}" if 0xDC80 <= char <= 0xDCFF else f"an unpaired surrogate U+{char:04X}"
        raise HubError(f"PROMPT: not UTF-8 text ({what} at character {err.start}); expected UTF-8") from None
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise HubError(f"--max-new-tokens {max_new_tokens}: expected a whole number of at least 1")


# --- helpers ---------------------------------------------------------------------------------------------

def _need_tokenizer(folder: Path, what: str) -> None:
    from hubtool.models import TOKENIZER_FILES

    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise HubError(f"{what}: {folder} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); generate needs one")


def _validation_prompts(choice: Any, catalog: Any, max_val: int) -> list[str]:
    """The first max_val validation prompts of the task an expert was chosen for (through the catalog)."""
    from hubtool.data.tasks import load_task

    try:
        data = load_task(choice.task, catalog=catalog)
    except HubError as err:
        raise HubError(f"--route centroid: task {choice.task} of {choice.ref}: {err}") from None
    prompts = [e.input for e in data.validation[:max_val]]
    if not prompts:
        raise HubError(f"--route centroid: task {choice.task} of {choice.ref} has no validation examples to "
                       "place its centroid; --route arrow needs none")
    return prompts


def _catalog(catalog: Any) -> Any:
    from hubtool.hub.pull import hub_download
    from hubtool.registry import Catalog

    return Catalog.open(catalog, download=hub_download())
