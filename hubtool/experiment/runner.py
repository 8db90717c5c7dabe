"""Running an experiment's plan in one process: cached jobs skipped, the rest run in dependency order.

Each job does what its command line does, through the same library calls (hubtool.train,
hubtool.compose, hubtool.evaluate), but the base model for scoring is loaded once: an expert is
added into its weights, the tasks are scored, and the weights are restored from a saved copy
(never by subtracting, which would not round back to the base bit for bit).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubtool.data.metrics import HEADLINE
from hubtool.errors import HubError
from hubtool.experiment.jobs import ComposeJob, EvalJob, Job, Plan, Planner, Task, TrainJob
from hubtool.experiment.presets import Preset
from hubtool.fileio import atomic_write
from hubtool.paths import hub_home

STAGES = ("sweep", "train", "eval", "compose", "tune")
# The tuned merge's per-task weights act outside overlap-mean's ratio: in overlap-mean itself
# Σ w_t v_t / Σ_covering w_t is v_t wherever one expert alone covers an entry, so a weight could only
# change the shared entries (why the quick preset's "tuned" row did nothing; issue 14).
TUNED_METHOD = "rescaled-overlap-mean"


def write_text(path: Path, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text.encode())


def base_key(base: str) -> dict[str, Any]:
    """What a cache key says of the base model: its id and revision, or, for a local folder, a digest of
    its files' contents (its absolute path differs from machine to machine; the same job must not)."""
    from pathlib import Path

    from hubtool.models import base_id, resolve_base

    folder = Path(base).expanduser()
    if folder.is_dir():
        resolve_base(base)  # the same checks as for any base: a folder must hold a config.json
        return {"id": "local folder", "content": folder_digest(folder)}
    return {"id": base_id(base), "revision": resolve_base(base)[1]}


def folder_digest(folder: Path) -> str:
    """sha256 over the folder's files (relative names and contents, in name order): a model folder's
    identity wherever it lies."""
    import hashlib

    outer = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        inner = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                inner.update(chunk)
        outer.update(f"{path.relative_to(folder).as_posix()}\0{inner.hexdigest()}\n".encode())
    return outer.hexdigest()


def read_timings(path: Path) -> dict[str, Any]:
    """timings.json as written by record_time; a damaged file is one clear error, before any job runs."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HubError(f"{path}: not a timings file ({err}); expected a JSON object of job -> seconds; "
                       "move it away to start the record afresh") from None
    if not isinstance(data, dict):
        raise HubError(f"{path}: expected a JSON object of job -> {{seconds, commit}}, got {type(data).__name__}")
    return data


def experiment_dir() -> Path:
    """Where experiments keep their catalog, timings and tuning traces: one for every preset, so a
    job that two presets share (quick is the first part of full) runs once."""
    return hub_home() / "experiments"


@dataclass
class Experiment:
    """A preset resolved against this machine: its tasks loaded, its catalog open, its plan built."""

    preset: Preset
    root: Path  # $HUB_HOME/experiments: catalog, timings, tuning traces, the smoke world
    catalog_url: str
    catalog: Any
    base: str  # what --base is given as
    tasks: list[Task]
    timings: dict[str, Any] = field(default_factory=dict)  # job key -> {seconds, commit}, from this machine's runs
    _commit: str | None = None

    @classmethod
    def open(cls, preset: Preset, catalog_url: str | None = None) -> Experiment:
        from hubtool.data import load_task
        from hubtool.registry import Catalog
        from hubtool.train import data_fingerprint

        root = experiment_dir()
        root.mkdir(parents=True, exist_ok=True)
        base, refs = preset.base, {t: t for t in (*preset.held_in, *preset.held_out)}
        if preset.uses_smoke_model:
            from hubtool.experiment.smoke import prepare

            folder, task_root = prepare(root / "smoke")
            base = str(folder)
            refs = {t: str(task_root / t) if (task_root / t).is_dir() else t for t in refs}
        url = catalog_url or f"sqlite:///{root / 'catalog.db'}"
        catalog = Catalog(url)
        # Every task is loaded (and so checked) before any work starts.
        tasks = []
        for ref in (*preset.held_in, *preset.held_out):
            where = "--held-out" if ref in preset.held_out else "--tasks"
            try:
                data = load_task(refs[ref], catalog=catalog)
            except HubError as err:
                raise HubError(f"{where} {ref!r}: {err}") from None
            if not data.test:
                raise HubError(f"{where} {ref!r}: task {data.name!r} has no test examples to score")
            tasks.append(Task(data.name, refs[ref], data, data_fingerprint(data), ref in preset.held_out))
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise HubError(f"tasks {names}: two refs name the same task")
        timings_path = root / "timings.json"
        timings = read_timings(timings_path)
        exp = cls(preset, root, url, catalog, base, tasks, timings)
        exp._base_key = base_key(base)
        from hubtool.experiment.report import source_commit

        exp._commit = source_commit()  # at start: the code this process runs, whatever is committed later
        return exp

    def planner(self) -> Planner:
        return Planner(self.preset, self.tasks, base=self.base, base_key=self._base_key,
                       catalog_url=self.catalog_url, catalog=self.catalog)

    def plan(self) -> Plan:
        return self.planner().plan()

    # --- what is done -------------------------------------------------------------------------------

    def done(self, job: Job) -> bool:
        from hubtool.errors import NotFoundError
        from hubtool.models import base_id

        if isinstance(job, EvalJob):
            if job.target is None:
                scores = self.catalog.base_metrics(base_id(self.base), job.task.name)
                return any(m in scores for m in HEADLINE)
            try:
                # Training stores train_loss / val_loss under the task too: a score is what marks it done.
                scores = self.catalog.get(job.target).metrics.get(job.task.name, {})
            except NotFoundError:
                return False
            return any(m in scores for m in HEADLINE)
        try:
            self.catalog.get(job.key)
            return True
        except NotFoundError:
            return False

    def record_time(self, key: str, seconds: float) -> None:
        """Seconds and the source commit of each job run here: the report states which code made its numbers."""
        self.timings[key] = {"seconds": round(seconds, 2), "commit": self._commit}
        write_text(self.root / "timings.json", json.dumps(self.timings, indent=1, sort_keys=True))

    # --- running --------------------------------------------------------------------------------------

    def run(self, *, stages: tuple[str, ...] = STAGES, console: Any = None) -> dict[str, int]:
        """Run every pending job of the given stages, one at a time, always the runnable job of highest
        priority (see `priority`), re-planning after each (the sweep's results fix the training jobs).
        Returns {"cached": jobs found done, "ran": jobs run}."""
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        counts = {"cached": -1, "ran": 0}
        scorer = Scorer(self)
        columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[jobs]}"),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
        progress = Progress(*columns, console=console, disable=console is None, transient=False)
        # The bar counts estimated seconds, so the ETA weighs a training run above an eval.
        bar = progress.add_task("planning", total=None, jobs="")
        spent = 0.0
        try:
            with progress:
                while True:
                    plan = self.plan()
                    keys = {j.key for j in plan.jobs}
                    finished = {j.key for j in plan.jobs if self.done(j)}
                    mine = [j for j in plan.jobs if j.stage in stages]
                    pending = [j for j in mine if j.key not in finished]
                    if counts["cached"] < 0:
                        counts["cached"] = len(mine) - len(pending)
                    runnable = [j for j in pending if all(d in finished or d not in keys for d in j.deps)]
                    if not runnable:
                        if pending and console is not None:
                            console.print(f"{len(pending)} jobs wait for jobs of other stages", style="yellow")
                        break
                    job = min(runnable, key=lambda j: priority(j, plan, self.tasks))
                    left = {s: sum(1 for j in pending if j.stage == s) for s in STAGES}
                    todo = ", ".join(f"{k} {v}" for k, v in left.items() if v)
                    note = "" if plan.complete else " + the jobs the lr sweep decides"
                    progress.update(bar, total=spent + sum(j.cost for j in pending), completed=spent,
                                    description=f"[bold]{job.stage}[/] {job.key[:40]}",
                                    jobs=f"{counts['ran']} run, {counts['cached']} cached; to do: {todo}{note}")
                    start = time.perf_counter()
                    self.run_job(job, plan, scorer)
                    self.record_time(job.key, time.perf_counter() - start)
                    if not self.done(job):  # a bug, not a user error: never loop on it
                        raise RuntimeError(f"job {job.key} ran but its result is not in the catalog")
                    spent += job.cost
                    counts["ran"] += 1
                    progress.update(bar, completed=spent)
                progress.update(bar, description="done", jobs=f"{counts['ran']} run, {counts['cached']} cached")
        finally:
            scorer.close()
        return counts

    def run_job(self, job: Job, plan: Plan, scorer: Scorer) -> None:
        if isinstance(job, TrainJob):
            from hubtool.train import train

            train(job.task.ref, name=job.key, catalog=self.catalog, quiet=True, **job.settings)  # its TrainConfig: eval_limit=0
        elif isinstance(job, EvalJob):
            scorer.evaluate(job)
        elif isinstance(job, ComposeJob) and job.stage == "tune":
            scorer.tune(job)
        elif isinstance(job, ComposeJob):
            from hubtool.merge.compose import compose

            compose(experts=job.experts, method=job.method, weights=job.weights, as_expert=job.key,
                    catalog=self.catalog)
        else:  # pragma: no cover - every job class is handled above
            raise HubError(f"job {job.key}: unknown kind {type(job).__name__}")


def priority(job: Job, plan: Plan, tasks: list[Task]) -> tuple:
    """What runs first, so that a run stopped early has whole table rows, not scattered cells:
      0  the lr sweep
      1  per held-in task in order: each kind's seed-0 expert and its score (and the base's scores)
      2  the merges of all N experts, the paper's main methods and kinds first, each with its scores
      3  the tuned merge and its scores
      4  the smaller subsets
      5  the extra seeds
    Within a level a compose comes before the evals that need it; evals of one model stay together,
    so the scorer adds each expert into the base once."""
    from hubtool.experiment.presets import EXPERIMENT_METHODS, KINDS, TUNED

    merges = {m.key: m for m in plan.merges}
    seeds = {name: seed for (_, _, seed), name in plan.experts.items()}
    held_in = [t.name for t in tasks if not t.held_out]
    n = len(held_in)
    task = getattr(job, "task", None)
    t = held_in.index(task.name) if task is not None and task.name in held_in else len(held_in)
    merge = merges.get(job.key) or merges.get(getattr(job, "target", None) or "")
    if job.stage == "sweep":
        return (0, 0, job.key)
    if merge is not None:
        level = 2 if len(merge.experts) == n and merge.method != TUNED else 3 if len(merge.experts) == n else 4
        rank = ((EXPERIMENT_METHODS + (TUNED,)).index(merge.method), list(KINDS).index(merge.kind), len(merge.experts))
        return (level, rank, merge.key, 0 if isinstance(job, ComposeJob) else 1, t)
    if isinstance(job, EvalJob) and job.target is None:
        return (1, (t, -1, ""), 0)
    first = min(seeds.values(), default=0)  # the merged experts' seed: their rows come first
    seed = job.seed if isinstance(job, TrainJob) else seeds.get(getattr(job, "target", "") or "", first)
    kind = job.kind.label if isinstance(job, TrainJob) else next(
        (k for (_, k, _), name in plan.experts.items() if name == getattr(job, "target", None)), "")
    order_in = (t, list(KINDS).index(kind) if kind in KINDS else 0, job.key if isinstance(job, TrainJob) else job.deps[0])
    return (1 if seed == first else 5, order_in, 0 if isinstance(job, TrainJob) else 1)


def order(jobs: list[Job], plan: Plan, tasks: list[Task]) -> list[Job]:
    """Jobs in the order `run` would take them (dependencies aside)."""
    return sorted(jobs, key=lambda j: priority(j, plan, tasks))


_CANDIDATE = "<in-memory candidate>"  # never a catalog name (not a NAME), so never taken as cached


class Scorer:
    """One base model in memory, experts added into it and taken out again by restoring saved weights."""

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp
        self.model = self.tokenizer = None
        self.saved: dict[str, Any] = {}  # weight name -> the base's values
        self.current: str | None = None  # what is added into the weights now

    def _load(self) -> None:
        if self.model is None:
            import torch

            from hubtool.models import load_base

            # fp32, as `hub eval` does: an expert's small deltas would mostly round away in bf16.
            self.model, self.tokenizer = load_base(self.exp.base, dtype=torch.float32)
            if self.tokenizer is None:
                raise HubError(f"base model {self.exp.base}: no tokenizer files; evaluation needs one")

    def use(self, name: str | None, expert: Any = None) -> None:
        """Make the model the base plus the catalog's expert `name` (None: the base alone), or plus an
        in-memory `expert` (a tuning candidate)."""
        import torch

        from hubtool.apply import apply_expert

        self._load()
        if expert is None and name == self.current:
            return
        weights = dict(self.model.named_parameters())
        with torch.no_grad():
            for weight, values in self.saved.items():
                weights[weight].copy_(values)
            self.current = None
            if name is None and expert is None:
                return
            delta = expert if expert is not None else self.exp.catalog.load(name)
            for weight in delta.deltas:
                if weight in weights and weight not in self.saved:
                    self.saved[weight] = weights[weight].detach().clone()
            apply_expert(self.model, delta)
        self.current = name if expert is None else _CANDIDATE

    def evaluate(self, job: EvalJob) -> dict[str, float]:
        from hubtool.evaluate import score
        from hubtool.models import base_id, resolve_base

        self.use(job.target)
        scored = score(self.model, self.tokenizer, job.task.data, **job.settings)
        # Per-example rows too: the report's paired bootstrap (hubtool/stats.py) reads them back.
        if job.target is None:
            scored.store(self.exp.catalog, base_model=base_id(self.exp.base),
                         base_revision=resolve_base(self.exp.base)[1])
        else:
            scored.store(self.exp.catalog, job.target)
        return scored.metrics

    # --- beyond the paper: per-task weights chosen on validation loss -----------------------------------

    def val_loss(self, task: Task) -> float:
        """Token-weighted answer-only loss over the first max_val validation examples."""
        import torch

        from hubtool.data.prompts import build_training_example, collate
        from hubtool.evaluate import pad_id
        from hubtool.sparse.loss import causal_lm_loss

        p = self.exp.preset
        rows = [build_training_example(self.tokenizer, e, p.max_length) for e in task.data.validation[: p.max_val]]
        total = count = 0.0
        with torch.inference_mode():
            for start in range(0, len(rows), p.batch_size):
                batch = collate(rows[start : start + p.batch_size], pad_id(self.tokenizer))
                n = int((batch["labels"][:, 1:] != -100).sum())
                total += float(causal_lm_loss(self.model, batch)) * n
                count += n
        return total / max(count, 1.0)

    def tune(self, job: ComposeJob) -> list[float]:
        """Coordinate search over per-task weights (1.0 to start; each of tune_weights tried in turn for
        each task, kept when the mean validation loss ratio falls), then the merged expert registered
        with the chosen weights. The search trace goes to <experiment>/tune-<name>.json."""
        from hubtool.merge.compose import build_recipe
        from hubtool.merge.execute import merged_expert
        from hubtool.merge.plan import make_plan

        self._load()
        tasks = [t for t in self.exp.tasks if t.name in job.tasks]
        trace: list[dict[str, Any]] = []

        def objective(weights: list[float]) -> float:
            recipe = build_recipe(experts=job.experts, method=TUNED_METHOD, weights=weights)
            self.use(None, merged_expert(make_plan(self.exp.catalog, recipe), "candidate"))
            losses = [self.val_loss(t) for t in tasks]
            trace.append({"weights": list(weights), "val_loss": losses})
            return sum(losses[i] / start_losses[i] for i in range(len(tasks))) / len(tasks)

        start_losses = [1.0] * len(tasks)
        weights = [1.0] * len(job.experts)
        objective(weights)
        start_losses = trace[0]["val_loss"]
        best = 1.0
        for i in range(len(weights)):
            for w in self.exp.preset.tune_weights:
                trial = [*weights[:i], w, *weights[i + 1 :]]
                value = objective(trial)
                if value < best - 1e-4:
                    best, weights = value, trial
        from hubtool.merge.compose import compose

        self.use(None)
        compose(experts=job.experts, method=TUNED_METHOD, weights=weights, as_expert=job.key, catalog=self.exp.catalog)
        write_text(self.exp.root / f"tune-{job.key}.json",
                   json.dumps({"weights": weights, "objective": best, "trace": trace}, indent=1))
        return weights

    def close(self) -> None:
        self.model = self.tokenizer = None
        self.saved.clear()
