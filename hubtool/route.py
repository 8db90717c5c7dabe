"""Routing with no task id: per input, pick ONE expert of a set (one per task), then answer with base + it.

    from hubtool.route import Router, evaluate_routed
    router = Router.fit(model, tokenizer, {"squad": qa, "xsum": summ}, prompts={"squad": [...], "xsum": [...]},
                        method="centroid")                      # arrow needs no prompts
    router.choose(["Summarize in one sentence: ..."])           # -> ["xsum"]
    metrics, predictions, choices = evaluate_routed(model, tokenizer, router, experts, task_data)

Two routers, both run on the base model's weights (fit and choose before any expert is added):

- **centroid**: a prompt's feature is the base model's final-layer hidden state averaged over the prompt's
  tokens (mean pooling: in a small model the last token's state is mostly "what comes next", the mean is
  "what this text is about"). A task's centroid is the mean feature of its first `max_val` validation
  prompts. A language model's hidden states share a common direction that says nothing about the task
  (anisotropy), so features and centroids are centred on the mean of the centroids before the cosine;
  with two tasks the boundary is then the hyperplane halfway between the centroids. An input goes to the nearest centroid by cosine.
- **arrow** (Ostapenko et al. 2024, "Towards Modular LLMs by Building and Reusing a Library of LoRAs"):
  per expert and adapted linear layer, v is the top right singular vector of the layer's delta
  (dense [out, in]); an input's score for an expert is, at each adapted layer, |<x, v>| of the layer's
  input x averaged over the prompt's tokens, summed over the layers (one forward of the base, the inputs
  read by forward pre-hooks). No data is needed. A layer an expert leaves alone adds 0 to its score.

Prompts are encoded as `hub generate` and evaluation encode them (the chat template when the tokenizer
has one, hubtool.generate.prompt_token_ids), cut from the left to the model's window.

Templated prompts ("Question: ... Answer:", "Summarize in one sentence: ...") make routing far easier
than inputs in the wild: the template alone names the task. Routing accuracy on a task's own test split
is an upper bound on what a user's free-form text gets.

evaluate_routed scores a task with each example answered by its chosen expert: the examples are grouped
by expert, each expert is added once (a scatter-add of its entries, hubtool.apply) and its group scored,
and the base weights are restored by copying saved values back (never by subtracting, which does not
round back to the base bit for bit). torch is imported inside functions.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hubtool.errors import FormatError, HubError, shown

if TYPE_CHECKING:
    from typing import Self  # typing.Self is 3.11+

ROUTERS = ("centroid", "arrow")
MAX_VAL = 32  # validation prompts per task for a centroid


def check_method(method: Any, field_: str = "--route") -> str:
    if method not in ROUTERS:
        raise HubError(f"{field_} {shown(method, 40)}: expected one of {', '.join(ROUTERS)}")
    return method


@dataclass
class Router:
    """A fitted router over `tasks` (one expert each); choose() runs `model` as it is, so call it while
    the model holds the base weights."""

    method: str  # "centroid" | "arrow"
    tasks: list[str]  # the experts' keys, in the order of the score columns
    model: Any
    tokenizer: Any
    batch_size: int = 8
    chat_template: bool = True
    centroids: Any = None  # centroid: [E, H] centred, unit-norm centroids
    center: Any = None  # centroid: [H], the mean of the raw centroids (zeros with one task)
    directions: dict[str, Any] = field(default_factory=dict)  # arrow: module name -> [E, in] unit rows (0: not adapted)

    @classmethod
    def fit(
        cls,
        model: Any,
        tokenizer: Any,
        experts: Mapping[str, Any],
        prompts: Mapping[str, Sequence[str]] | None = None,
        method: str = "centroid",
        *,
        max_val: int = MAX_VAL,
        batch_size: int = 8,
        chat_template: bool = True,
    ) -> Router:
        """A router between `experts` ({task: Expert}). centroid places each task's centroid from the first
        `max_val` of its `prompts` ({task: [prompt, ...]}); arrow reads only the experts' deltas."""
        from hubtool import checks

        check_method(method, "method")
        checks.count(max_val, "max_val")
        checks.count(batch_size, "batch_size")
        if not experts:
            raise HubError("experts: expected at least one expert to route between, got none")
        tasks = list(experts)
        router = cls(method, tasks, model, tokenizer, batch_size=batch_size, chat_template=chat_template)
        if method == "centroid":
            router._fit_centroids(_check_prompts(tasks, prompts), max_val)
        else:
            router._fit_arrow(experts)
        return router

    # --- fitting ----------------------------------------------------------------------------------------

    def _fit_centroids(self, prompts: Mapping[str, Sequence[str]], max_val: int) -> None:
        import torch

        raw = torch.stack([self._features(list(prompts[t][:max_val])).mean(0) for t in self.tasks])  # [E, H]
        # Centred on the centroids' mean (the module docstring says why); one task has nothing to centre on.
        self.center = raw.mean(0) if len(self.tasks) > 1 else torch.zeros_like(raw[0])
        self.centroids = torch.nn.functional.normalize(raw - self.center, dim=-1)

    def _fit_arrow(self, experts: Mapping[str, Any]) -> None:
        import torch

        device = _device(self.model)  # the SVDs run where the model is (a GPU does 8 x 90 in a moment)
        rows: dict[str, list[Any]] = {}  # module name -> per task: [in] unit vector, or None (not adapted)
        for e, task in enumerate(self.tasks):
            expert = experts[task]
            found = 0
            for weight, delta in expert.deltas.items():
                module = _linear(self.model, weight, expert, delta)
                if module is None:
                    continue
                v = top_right_singular_vector(delta.to_dense(torch.float32).to(device))
                rows.setdefault(module, [None] * len(self.tasks))[e] = v
                found += 1
            if not found:
                raise HubError(f"expert {expert.name} (task {task}): adapts no linear layer of the model; "
                               "arrow routing reads the top singular vector of a linear layer's delta")
        for module, vs in rows.items():
            width = next(v for v in vs if v is not None).numel()
            self.directions[module] = torch.stack(
                [v if v is not None else torch.zeros(width, device=device) for v in vs])  # [E, in]

    # --- choosing ---------------------------------------------------------------------------------------

    def scores(self, prompts: Sequence[str]) -> Any:
        """[len(prompts), E] scores, higher is closer: cosines (centroid) or summed |<x, v>| (arrow)."""
        import torch

        prompts = _check_inputs(prompts)
        if not prompts:
            return torch.zeros((0, len(self.tasks)))
        if self.method == "centroid":
            feats = torch.nn.functional.normalize(self._features(prompts) - self.center, dim=-1)  # [n, H]
            return feats @ self.centroids.T
        return self._arrow_scores(prompts)

    def choose(self, prompts: Sequence[str]) -> list[str]:
        """The task (a key of the experts given to fit) whose expert should answer each prompt."""
        return [self.tasks[i] for i in self.scores(prompts).argmax(-1).tolist()]

    def _features(self, prompts: list[str]) -> Any:
        """[n, H] fp32: the final-layer hidden states mean-pooled over each prompt's tokens."""
        import torch

        out: list[Any] = [None] * len(prompts)
        with torch.no_grad():
            for batch, input_ids, mask, positions in self._batches(prompts):
                hidden = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                    output_hidden_states=True, logits_to_keep=1).hidden_states[-1]  # [B, T, H]
                pooled = _masked_mean(hidden.float(), mask)  # [B, H]
                for i, row in zip(batch, pooled):
                    out[i] = row
        return torch.stack(out)

    def _arrow_scores(self, prompts: list[str]) -> Any:
        import torch

        mask_now: list[Any] = [None]
        total: list[Any] = [None]

        def hook_for(directions: Any):
            def hook(_module: Any, args: tuple[Any, ...]) -> None:
                x = args[0].float()  # [B, T, in]: the layer's input
                proj = (x @ directions.T).abs()  # [B, T, E]
                score = _masked_mean(proj, mask_now[0])  # [B, E]
                total[0] = score if total[0] is None else total[0] + score
            return hook

        handles = [self.model.get_submodule(name).register_forward_pre_hook(hook_for(d))
                   for name, d in self.directions.items()]
        out: list[Any] = [None] * len(prompts)
        try:
            with torch.no_grad():
                for batch, input_ids, mask, positions in self._batches(prompts):
                    mask_now[0], total[0] = mask, None
                    self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, logits_to_keep=1)
                    for i, row in zip(batch, total[0]):
                        out[i] = row
        finally:
            for h in handles:
                h.remove()
        return torch.stack(out)

    def _batches(self, prompts: list[str]):
        """(indexes, input_ids [B, T], attention_mask [B, T], position_ids [B, T]), left-padded as in
        evaluation, longest prompts first so a batch carries little padding."""
        from hubtool.evaluate import _batches, _cut, _left_pad, model_window, pad_id
        from hubtool.generate import prompt_token_ids

        window = model_window(self.model)
        ids = []
        for n, p in enumerate(prompts):
            row = _cut(prompt_token_ids(self.tokenizer, p, chat_template=self.chat_template), window)
            if not row:
                raise HubError(f"prompt {n}: the tokenizer gives no tokens for it; expected some text")
            ids.append(row)
        for batch in _batches(sorted(range(len(ids)), key=lambda i: -len(ids[i])), self.batch_size):
            input_ids, mask = _left_pad([ids[i] for i in batch], pad_id(self.tokenizer), _device(self.model))
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens start at 0
            yield batch, input_ids, mask, positions


def top_right_singular_vector(delta: Any) -> Any:
    """v [in], unit norm, of delta [out, in] for its largest singular value (sign arbitrary; zeros for an
    all-zero delta). From the Gram matrix of the smaller side with eigh: half the time of an SVD of the
    576 x 576 q_proj of SmolLM2, same vector."""
    import torch

    a = delta.float()
    if a.shape[0] >= a.shape[1]:
        v = torch.linalg.eigh(a.T @ a).eigenvectors[:, -1]  # [in]; eigenvalues ascend
    else:
        u = torch.linalg.eigh(a @ a.T).eigenvectors[:, -1]  # [out]
        v = a.T @ u  # = sigma_1 v_1
    norm = v.norm()
    return v / norm if norm > 0 else torch.zeros_like(v)


class ExpertSwap:
    """The base model with at most one of `experts` added at a time. Every weight any expert adapts is
    checked (names, shapes, fingerprints) and saved before anything is written; use() copies the saved
    values back before adding the next expert, restore() leaves the base bit for bit."""

    def __init__(self, model: Any, experts: Mapping[str, Any]) -> None:
        from hubtool.apply import check_base

        self.model, self.experts = model, experts
        self.current: str | None = None
        self.saved: dict[str, Any] = {}
        for expert in experts.values():
            for name, weight in check_base(model, expert).items():
                if name not in self.saved:
                    self.saved[name] = weight.detach().clone()

    def use(self, task: str | None) -> None:
        """Make the model base + experts[task] (None: the base alone)."""
        import torch

        from hubtool.apply import apply_expert

        if task == self.current:
            return
        self.restore()
        if task is None:
            return
        with torch.no_grad():
            # Fingerprints were checked on the base in __init__ and the weights are the base again.
            apply_expert(self.model, self.experts[task], check_fingerprint=False)
        self.current = task

    def restore(self) -> None:
        import torch

        if self.current is None:
            return
        weights = dict(self.model.named_parameters(remove_duplicate=False))
        with torch.no_grad():
            for name, values in self.saved.items():
                weights[name].copy_(values)
        self.current = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


def evaluate_routed(
    model: Any,
    tokenizer: Any,
    router: Router,
    experts: Mapping[str, Any],
    task: Any,
    *,
    split: str = "test",
    limit: int | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    max_prompt_tokens: int | None = None,
) -> tuple[dict[str, float], list[Any], list[str]]:
    """(metrics, predictions, choices) of `task` (a TaskData or a name for load_task) with each example
    answered by the expert `router` chooses for it; predictions and choices in the examples' order.
    metrics are evaluate()'s plus routing_accuracy (percent routed to experts[task.name], when the task
    has an expert here). `model` holds the base weights before and after."""
    from hubtool.evaluate import metrics_of, predict, scored_examples
    from hubtool.registry.task_loader import load_task

    if set(router.tasks) != set(experts):
        raise HubError(f"experts: {', '.join(experts)} are not the router's tasks ({', '.join(router.tasks)})")
    data = load_task(task) if isinstance(task, str) else task
    examples = scored_examples(data, split=split, limit=limit, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               max_prompt_tokens=max_prompt_tokens)
    was_training = model.training
    model.eval()
    try:
        start = time.perf_counter()
        with ExpertSwap(model, experts) as swap:  # checks every expert before the first forward
            choices = router.choose([e.input for e in examples])
            groups: dict[str, list[int]] = {}
            for i, t in enumerate(choices):
                groups.setdefault(t, []).append(i)
            predictions: list[Any] = [None] * len(examples)
            for t, idx in groups.items():
                swap.use(t)
                group = predict(model, tokenizer, [examples[i] for i in idx], max_new_tokens=max_new_tokens,
                                batch_size=batch_size, max_prompt_tokens=max_prompt_tokens)
                for i, p in zip(idx, group):
                    predictions[i] = p
        seconds = time.perf_counter() - start
    finally:
        model.train(was_training)
    metrics = {**metrics_of(predictions), "n": float(len(predictions)), "seconds": seconds,
               "examples_per_s": len(predictions) / seconds}
    if data.name in experts:
        metrics["routing_accuracy"] = 100 * sum(c == data.name for c in choices) / len(choices)
    return metrics, predictions, choices


# --- helpers ---------------------------------------------------------------------------------------------

def _check_prompts(tasks: list[str], prompts: Mapping[str, Sequence[str]] | None) -> Mapping[str, Sequence[str]]:
    if prompts is None:
        raise HubError("prompts: the centroid router needs validation prompts for each task ({task: [prompt, ...]})")
    extra = [t for t in prompts if t not in tasks]
    if extra:
        raise HubError(f"prompts: task {extra[0]!r} has no expert here (experts: {', '.join(tasks)})")
    for t in tasks:
        given = prompts.get(t)
        if not given:
            raise HubError(f"prompts: task {t!r} has none; expected at least one prompt to place its centroid")
        _check_inputs(given, f"prompts[{t!r}]")
    return prompts


def _check_inputs(prompts: Sequence[str], where: str = "prompts") -> list[str]:
    if isinstance(prompts, str):
        raise HubError(f"{where}: expected a list of prompts, got one string")
    out = list(prompts)
    for n, p in enumerate(out):
        if not isinstance(p, str) or not p.strip():
            raise HubError(f"{where}[{n}] {shown(p, 40)}: expected some text")
    return out


def _masked_mean(x: Any, mask: Any) -> Any:
    """x [B, T, D] averaged over the positions where mask [B, T] is 1 -> [B, D]."""
    m = mask.to(x.dtype).unsqueeze(-1)  # [B, T, 1]
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


def _device(model: Any) -> Any:
    return getattr(model, "device", None) or next(model.parameters()).device


def _linear(model: Any, weight: str, expert: Any, delta: Any) -> str | None:
    """The module name of an adapted weight when it is a Linear's (the layers Arrow reads); None for
    another weight (an embedding: its input is ids, not a vector)."""
    import torch

    if not weight.endswith(".weight"):
        return None
    name = weight.removesuffix(".weight")
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise FormatError(f"expert {expert.name}: weight {weight} is not in the model") from None
    if not isinstance(module, torch.nn.Linear):
        return None
    if tuple(module.weight.shape) != tuple(delta.shape):
        raise FormatError(f"expert {expert.name}: weight {weight} has shape {list(module.weight.shape)}, "
                          f"the expert expects {list(delta.shape)}")
    return name
