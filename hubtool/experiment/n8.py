"""The n8 protocol (issue 14): eight held-in tasks scored per example, fair baselines, and the attempts
at >= 90% retention, each a table row with its 95% interval.

A run takes the steps below in this order, so a run stopped anywhere leaves whole table rows:

  gate      per candidate task (held-in, then the spares): the seed-0 sparse expert and the base scored
            on validation; a task whose expert gains less than `gate` points is replaced by the next spare
  base      the base model on the test split of every task (held-in and held-out)
  <kind>    for sparse, LoRA, full: the seed-0 experts and their test scores; the N=8 merge's λ swept on
            validation (overlap-mean for sparse, task arithmetic for LoRA and full: the same factors of
            each method's default λ); the chosen λ's merge on test, held-in and held-out
  methods   the paper's merges at their defaults: sparse overlap-mean λ=1, TIES for every kind
  diagnose  the oracle-mask merge (task t scored with the merge restricted to t's own positions)
  improve   rescaled overlap-mean with per-expert λ_t (coordinate search on validation loss), sparse TIES,
            Iso-C (λ swept on validation)
  route     per input, one expert chosen with no task id: nearest centroid, Arrow
  avoid     the 8 sparse experts retrained one after another with catalog-aware masks, then merged
  keep      the 8 sparse experts at keep ratio `low_keep`, then merged
  seeds     the other seeds of the single-task sparse and LoRA rows
  subsets   the main merges of the first 2 and 4 experts, for the retention-vs-N plot

Every λ, weight and variant is chosen on validation examples, never on test. Every evaluation's
per-example outcomes go to the catalog (Catalog.set_examples) and, when `out` is given, to
<out>/<preset>/evals/*.jsonl with the run's decisions in <out>/<preset>/state.json: the report (n8_report) is
rebuilt from those files alone, so committing them as each step finishes keeps the results if the
machine is lost. Subjects that are not catalog experts (the oracle merges, the routers) are stored
under a pseudo base-model name, "oracle:<merge>" or "route:<method>:<experts digest>".
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from hubtool.errors import HubError, NotFoundError
from hubtool.experiment.jobs import Task, digest
from hubtool.experiment.presets import KINDS
from hubtool.fileio import atomic_write

BASE = "base"  # the subject name of the base model in rows and files
MAIN = {"sparse": "overlap-mean", "lora": "task-arithmetic", "full": "task-arithmetic"}  # the swept merge per kind
STEPS = ("gate", "base", "sparse", "lora", "full", "methods", "diagnose", "improve", "route", "avoid", "keep", "seeds",
         "subsets")


def _lam_tag(lam: float) -> str:
    return f"l{lam:g}".replace(".", "p")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:150]


MAX_EXTEND = 4  # grid points a sweep may add past an end of its grid


def best_lam(scores: dict[float, float], default: float) -> float:
    """The λ with the best mean validation score; ties go to the λ closest to the default (log scale)."""
    return max(scores, key=lambda lam: (round(scores[lam], 9), -abs(math.log(lam / default))))


def next_lam(scores: dict[float, float], default: float, factors: tuple[float, ...]) -> float | None:
    """The next λ to try when the best so far lies at an end of the grid: one grid step (the last two
    factors' spacing x default) past the largest, or half the smallest. None when the best is inside,
    the grid has a single point, or MAX_EXTEND points were already added. Why: a best at the grid's end
    says only that the optimum lies beyond it, and a method whose default λ is far from its optimum here
    would otherwise be judged at a λ the sweep never bracketed. The rule is the same for every kind."""
    if len(factors) < 2 or len(scores) >= len(factors) + MAX_EXTEND:
        return None
    best, top, bottom = best_lam(scores, default), max(scores), min(scores)
    if best == top:
        ordered = sorted(factors)
        return top + default * (ordered[-1] - ordered[-2])
    if best == bottom:
        return bottom / 2
    return None


class N8:
    """One n8 run against the experiment's catalog: every step cached there, decisions in `state`."""

    def __init__(self, exp: Any, out: str | Path | None = None, console: Any = None) -> None:
        from hubtool.experiment.runner import Scorer
        from hubtool.models import base_id

        self.exp, self.p, self.cat, self.console = exp, exp.preset, exp.catalog, console
        self.scorer = Scorer(exp)
        self.base_id = base_id(exp.base)
        self.out = Path(out) if out is not None else None
        self.dump = self.out / self.p.name if self.out is not None else None
        self.tasks: dict[str, Task] = {t.name: t for t in exp.tasks}
        self.held_out = [t.name for t in exp.tasks if t.held_out]
        self.state: dict[str, Any] = {"preset": self.p.label, "rows": {}, "gate": {}, "lam": {}, "notes": []}
        self.held_in: list[str] = []
        self.lr = {label: KINDS[label].lr * self.p.lr_factor for label in self.p.kinds}
        # name -> how to make it (train or compose), run only when a missing evaluation needs it: with
        # the per-example files of an earlier run in place, a new machine re-makes only what it must.
        self.makers: dict[str, Any] = {}

    # --- bookkeeping ----------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, highlight=False)

    def save_state(self) -> None:
        if self.dump is None:
            return
        self.state["held_in"], self.state["held_out"] = self.held_in, self.held_out
        self.dump.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.dump / "state.json") as f:
            f.write(json.dumps(self.state, indent=1, default=str).encode())  # rows in the order they were made

    def row(self, label: str, subjects: dict[str, str], *, kind: str, single: str | None = None,
            group: str = "merged", note: str = "") -> None:
        """A table row: which subject's outcomes give each task's cell; `single` names the row its
        retention and gain are measured against."""
        self.state["rows"][label] = {"subjects": subjects, "kind": kind, "single": single, "group": group,
                                     "note": note}
        self.save_state()

    def _exists(self, name: str) -> bool:
        try:
            self.cat.get(name)
            return True
        except NotFoundError:
            return False

    def _timed(self, key: str, fn: Any) -> Any:
        start = time.perf_counter()
        result = fn()
        self.exp.record_time(key, time.perf_counter() - start)
        return result

    # --- the pieces: train, score, merge --------------------------------------------------------------

    def expert(self, task: str, label: str, seed: int, *, keep_ratio: float | None = None,
               avoid: list[str] | None = None) -> str:
        """The expert of (task, kind, seed), trained if the catalog lacks it; its name carries the hash
        of everything that made it."""
        from hubtool.experiment.jobs import Planner

        preset = self.p if keep_ratio is None else replace(self.p, keep_ratio=keep_ratio)
        planner = Planner(preset, list(self.tasks.values()), base=self.exp.base, base_key=self.exp._base_key,
                          catalog_url=self.exp.catalog_url, catalog=self.cat)
        job = planner.train_job(self.tasks[task], KINDS[label], seed, self.lr[label])
        name, settings = job.key, dict(job.settings)
        if avoid:  # (the first of the avoid step's experts avoids nothing: it is the plain expert)
            beta = self.p.avoid_beta
            settings.update(avoid=list(avoid), avoid_beta=beta)
            name = f"{task}-{label}-avoid-s{seed}-{digest({'job': job.key, 'avoid': avoid, 'beta': str(beta)})}"
        def make() -> None:
            from hubtool.train import train

            for other in settings.get("avoid", ()):
                self.materialize(other)
            self.say(f"train {name}")
            self._timed(name, lambda: train(self.tasks[task].ref, name=name, catalog=self.cat, quiet=True,
                                            **settings))

        self.makers.setdefault(name, make)
        return name

    def materialize(self, name: str) -> str:
        """Make `name` (an expert or a merge) unless the catalog has it."""
        if not self._exists(name):
            maker = self.makers.get(name)
            if maker is None:
                raise HubError(f"{name}: not in the catalog and nothing here knows how to make it")
            maker()
        return name

    def _subject(self, subject: str) -> tuple[str | None, str | None]:
        """(expert ref, base_model) for Catalog.examples / set_examples."""
        if subject == BASE:
            return None, self.base_id
        if ":" in subject:  # a pseudo subject: an oracle merge or a router
            return None, subject
        return subject, None

    def outcomes(self, subject: str, task: str, split: str = "test") -> list[dict] | None:
        """Stored outcomes: the catalog's, else those of an earlier run's file (<out>/<preset>/evals), which
        go into the catalog too (an expert that is not in this catalog keeps them in the file only)."""
        ref, base = self._subject(subject)
        if ref is None or self._exists(ref):
            rows = self.cat.examples(ref, task, base_model=base, split=split)
            if rows:
                return rows
        path = self._file(subject, task, split)
        if path is None or not path.is_file():
            return None
        lines = path.read_text().splitlines()
        try:
            head, rows = json.loads(lines[0]), [json.loads(x) for x in lines[1:] if x.strip()]
        except (IndexError, json.JSONDecodeError) as err:
            raise HubError(f"{path}: not an evaluation file ({err})") from None
        if (head.get("subject"), head.get("task"), head.get("split")) != (subject, task, split) or not rows:
            raise HubError(f"{path}: expected the outcomes of {subject} on {task} ({split})")
        if ref is None or self._exists(ref):
            self.cat.set_examples(ref, task, rows, base_model=base, split=split, settings=head.get("settings"))
        return rows

    def _file(self, subject: str, task: str, split: str) -> Path | None:
        if self.dump is None:
            return None
        return self.dump / "evals" / _safe(subject) / f"{_safe(task)}.{split}.jsonl"

    def score(self, subject: str, task: str, split: str = "test", *, expert: Any = None) -> list[dict]:
        """Per-example outcomes of `subject` on a split of `task`, scored now unless stored. `expert`: an
        in-memory expert to score under a pseudo subject name."""
        rows = self.outcomes(subject, task, split)
        if rows is not None:
            return rows
        from hubtool.evaluate import score

        t = self.tasks[task]
        limit = self.p.eval_limit if split == "test" else self.p.val_limit
        if expert is not None:
            self.scorer.use(None, expert)
        else:
            self.scorer.use(None if subject == BASE or ":" in subject else self.materialize(subject))
        self.say(f"score {subject} on {task} ({split})")
        start = time.perf_counter()
        scored = score(self.scorer.model, self.scorer.tokenizer, t.data, split=split, limit=limit,
                       max_new_tokens=t.max_new_tokens, batch_size=self.p.batch_size, max_prompt_tokens=self.p.max_length)
        self.exp.record_time(f"eval:{subject}:{task}:{split}", time.perf_counter() - start)
        self.store(subject, task, split, scored.rows, scored.settings, scored.metrics)
        return scored.rows

    def store(self, subject: str, task: str, split: str, rows: list[dict], settings: dict, metrics: dict) -> None:
        from hubtool.evaluate import RUN_KEYS
        from hubtool.models import resolve_base

        ref, base = self._subject(subject)
        self.cat.set_examples(ref, task, rows, base_model=base, split=split, settings=settings)
        if split == "test":
            scores = {k: float(v) for k, v in metrics.items() if k not in RUN_KEYS}
            if subject == BASE:
                self.cat.set_base_metrics(self.base_id, task, scores, revision=resolve_base(self.exp.base)[1])
            elif ref is not None:
                self.cat.set_metrics(ref, task, scores)
        self.export(subject, task, split, rows, settings)

    def export(self, subject: str, task: str, split: str, rows: list[dict], settings: dict | None = None) -> None:
        """<out>/<preset>/evals/<subject>/<task>.<split>.jsonl: a header line, then one line per example."""
        path = self._file(subject, task, split)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        head = {"subject": subject, "task": task, "split": split, "n": len(rows), "commit": self.exp._commit,
                "settings": settings}
        keep = ("idx", "key", "value", "metrics", "gold_logprob", "text", "routed_to")
        lines = [json.dumps(head)] + [json.dumps({k: r[k] for k in keep if k in r}) for r in rows]
        with atomic_write(path) as f:
            f.write(("\n".join(lines) + "\n").encode())

    def mean_value(self, subject: str, tasks: list[str], split: str) -> float:
        """Mean over tasks of the per-task mean outcome (equal task weight), scoring what is missing."""
        means = []
        for task in tasks:
            rows = self.score(subject, task, split)
            means.append(sum(r["value"] for r in rows) / len(rows))
        return sum(means) / len(means)

    def merge(self, label: str, method: str, experts: list[str], *, lam: float | None = None,
              weights: list[float] | None = None, tag: str = "") -> str:
        """A merged expert of the catalog (compose --as-expert), made if missing."""
        from hubtool.merge.compose import compose

        key = {"experts": experts, "method": method, "lam": lam, "weights": weights}
        lam_part = f"-{_lam_tag(lam)}" if lam is not None else ""
        name = f"merge-{label}{tag}-{method}{lam_part}-n{len(experts)}-{digest(key)}"
        def make() -> None:
            for expert in experts:
                self.materialize(expert)
            self.say(f"compose {name}")
            self._timed(name, lambda: compose(experts=experts, method=method, lam=lam, weights=weights,
                                              as_expert=name, catalog=self.cat))

        self.makers.setdefault(name, make)
        return name

    def default_lam(self, method: str) -> float:
        from hubtool.merge.methods import METHODS

        return float(METHODS[method].defaults.get("lam", 1.0))

    def sweep(self, label: str, method: str, experts: list[str], tag: str = "") -> float:
        """λ for `method` on these experts: the same factors of the method's default λ for every kind,
        each merge scored on the first val_limit validation examples of every held-in task; the best
        mean wins (ties: the factor closest to 1). When the best is at an end of the grid, the grid is
        extended past that end (next_lam) until a point inside wins. Recorded in state["lam"]."""
        key = f"{label}{tag} {method}"
        default = self.default_lam(method)
        lams = [default * f for f in self.p.lam_factors]
        scores: dict[float, float] = {}
        while True:
            for lam in lams:
                if lam not in scores:
                    name = self.merge(label, method, experts, lam=lam, tag=tag)
                    scores[lam] = self.mean_value(name, self.held_in, "validation")
            more = next_lam(scores, default, self.p.lam_factors)
            if more is None:
                break
            lams.append(more)
        best = best_lam(scores, default)
        self.state["lam"][key] = {"grid": {f"{lam:g}": scores[lam] for lam in sorted(scores)}, "chosen": best,
                                  "split": "validation", "limit": self.p.val_limit,
                                  "extended": [f"{lam:g}" for lam in lams[len(self.p.lam_factors):]]}
        self.save_state()
        return best

    def score_row(self, label: str, subject: str, *, kind: str, single: str | None, held_out: bool = False,
                  group: str = "merged", note: str = "") -> None:
        """Score one catalog subject on every held-in task (and the held-out ones) and record its row."""
        tasks = self.held_in + (self.held_out if held_out else [])
        for task in tasks:
            self.score(subject, task)
        self.row(label, {t: subject for t in tasks}, kind=kind, single=single, group=group, note=note)

    # --- the steps ------------------------------------------------------------------------------------

    def gate(self) -> None:
        """Pick the 8 held-in tasks: each candidate's seed-0 sparse expert must beat the base by at least
        `gate` points on validation; a failing task is replaced by the next spare. When the spares run out,
        the failing candidates that gained most fill the remaining places, marked as such: the merge is still
        of N experts (its interference is what is measured), and the report gives R and G over the passing
        tasks apart."""
        from hubtool.data import load_task
        from hubtool.train import data_fingerprint

        for ref in self.p.spares:
            if ref not in self.tasks:
                data = load_task(ref, catalog=self.cat)
                self.tasks[data.name] = Task(data.name, ref, data, data_fingerprint(data), False)
        candidates = [t.name for t in self.exp.tasks if not t.held_out] + list(self.p.spares)
        want = len([t for t in self.exp.tasks if not t.held_out])
        seed = self.p.merge_seed
        self.held_in, failed = [], []
        for task in candidates:
            if len(self.held_in) == want:
                break
            name = self.expert(task, "sparse", seed)
            base = self.mean_value(BASE, [task], "validation")
            mine = self.mean_value(name, [task], "validation")
            passed = mine - base >= self.p.gate
            self.state["gate"][task] = {"base": base, "expert": mine, "gain": mine - base, "passed": passed,
                                        "limit": self.p.val_limit}
            (self.held_in if passed else failed).append(task)
            self.save_state()
        fill = sorted(failed, key=lambda t: -self.state["gate"][t]["gain"])[: want - len(self.held_in)]
        for task in failed:
            g = self.state["gate"][task]
            g["filled"] = task in fill
            if task not in fill:
                self._note(f"{task} replaced: its seed-{seed} sparse expert gained {g['gain']:+.1f} points on "
                           f"validation (gate: {self.p.gate:g})")
        if fill:
            self._note(f"only {len(self.held_in)} of the {len(candidates)} candidate tasks passed the gate, so "
                       f"{', '.join(fill)} (the failing ones that gained most) fill the merge to N={want}; R and G "
                       f"are also given over the {len(self.held_in)} passing tasks")
        self.state["passed"] = list(self.held_in)
        self.held_in += fill
        if len(self.held_in) < 2:
            raise HubError(f"the pilot gate kept {len(self.held_in)} tasks; merging needs at least 2")
        self.save_state()

    def _note(self, text: str) -> None:
        if text not in self.state["notes"]:
            self.state["notes"].append(text)

    def experts_of(self, label: str, seed: int | None = None, **extra: Any) -> list[str]:
        seed = self.p.merge_seed if seed is None else seed
        return [self.expert(t, label, seed, **extra) for t in self.held_in]

    def single_row(self, label: str, names: list[str], kind: str, *, note: str = "") -> None:
        for task, name in zip(self.held_in, names):
            self.score(name, task)
        self.row(label, dict(zip(self.held_in, names)), kind=kind, group="single", note=note)

    def kind(self, label: str) -> None:
        """One kind's single-task row and its main merge with λ swept on validation (held-in and held-out):
        after the three kinds, claim 2 can be judged."""
        names = self.experts_of(label)
        single = f"{label} single-task"
        self.single_row(single, names, label)
        method = MAIN[label]
        lam = self.sweep(label, method, names)
        merged = self.merge(label, method, names, lam=lam)
        self.score_row(f"{label} merged: {method} λ={lam:g} (val)", merged, kind=label, single=single, held_out=True)

    def methods(self) -> None:
        """The paper's merges at their own defaults: overlap-mean λ=1 for sparse, TIES for every kind."""
        for label in self.p.kinds:
            names, single = self.experts_of(label), f"{label} single-task"
            if label == "sparse":
                paper = self.merge(label, MAIN[label], names, lam=1.0)
                self.score_row(f"{label} merged: {MAIN[label]} λ=1 (paper)", paper, kind=label, single=single)
            ties = self.merge(label, "ties", names)
            self.score_row(f"{label} merged: ties", ties, kind=label, single=single)

    def chosen(self, label: str, tag: str = "") -> float:
        return float(self.state["lam"][f"{label}{tag} {MAIN[label]}"]["chosen"])

    def diagnose(self) -> None:
        """The oracle-mask row: task t scored with the sparse merge restricted to t's own positions."""
        from hubtool.merge.diagnostics import coverage_histogram, oracle_mask

        names = self.experts_of("sparse")
        lam = self.chosen("sparse")
        merged_name = self.merge("sparse", "overlap-mean", names, lam=lam)
        subjects = {}
        for task, name in zip(self.held_in, names):
            subject = f"oracle:{merged_name}:{task}"
            if self.outcomes(subject, task) is None:
                merged = self.cat.load(self.materialize(merged_name))
                self.score(subject, task, expert=oracle_mask(merged, self.cat.load(self.materialize(name))))
            subjects[task] = subject
        self.row(f"sparse merged: overlap-mean λ={lam:g}, oracle mask", subjects, kind="sparse",
                 single="sparse single-task", group="diagnostic",
                 note="each task scored with the merge restricted to its own expert's positions")
        if self.out is not None and "overlap_mean" not in self.state:
            for name in names:
                self.materialize(name)
            from hubtool.merge.compose import build_recipe
            from hubtool.merge.overlap import pairwise_overlap, write_heatmap
            from hubtool.merge.plan import make_plan

            report = pairwise_overlap(make_plan(self.cat, build_recipe(experts=names, method="overlap-mean")))
            self.out.mkdir(parents=True, exist_ok=True)
            write_heatmap(report, self.out / f"{self.p.name}-overlap.png")
            self.state["overlap_mean"] = report.overall_mean()
        if "coverage" not in self.state:
            hist = coverage_histogram({n: self.cat.load(self.materialize(n)) for n in names})
            self.state["coverage"] = {task: hist[n] for task, n in zip(self.held_in, names)}
            self.save_state()

    def improve(self) -> None:
        """Rescaled overlap-mean with per-expert λ_t, sparse TIES, Iso-C: each a row."""
        names = self.experts_of("sparse")
        lam = self.chosen("sparse")
        weights = self.tune_weights(names, lam)
        rescaled = self.merge("sparse", "rescaled-overlap-mean", names, lam=lam, weights=weights)
        self.score_row(f"sparse merged: rescaled overlap-mean λ={lam:g}, λ_t (val loss)", rescaled, kind="sparse",
                       single="sparse single-task",
                       note="per-expert λ_t " + ", ".join(f"{t} {w:g}" for t, w in zip(self.held_in, weights)))
        sties = self.merge("sparse", "sparse-ties", names)
        self.score_row("sparse merged: sparse TIES", sties, kind="sparse", single="sparse single-task")
        iso_lam = self.sweep("sparse", "iso-c", names)
        iso = self.merge("sparse", "iso-c", names, lam=iso_lam)
        self.score_row(f"sparse merged: Iso-C λ={iso_lam:g} (val)", iso, kind="sparse", single="sparse single-task")

    def tune_weights(self, names: list[str], lam: float) -> list[float]:
        """Coordinate search over per-expert λ_t (start 1; each of tune_weights tried in turn, kept when
        the mean validation-loss ratio over the held-in tasks falls). Cached in state."""
        key = f"rescaled {digest({'experts': names, 'lam': lam, 'try': list(self.p.tune_weights)})}"
        if key in self.state.get("tuned", {}):
            return list(self.state["tuned"][key]["weights"])
        from hubtool.merge.compose import build_recipe
        from hubtool.merge.execute import merged_expert
        from hubtool.merge.plan import make_plan

        tasks = [self.tasks[t] for t in self.held_in]
        for name in names:
            self.materialize(name)
        trace: list[dict[str, Any]] = []

        def losses(weights: list[float]) -> list[float]:
            recipe = build_recipe(experts=names, method="rescaled-overlap-mean", lam=lam, weights=weights)
            self.scorer.use(None, merged_expert(make_plan(self.cat, recipe), "candidate"))
            out = [self.scorer.val_loss(t) for t in tasks]
            trace.append({"weights": list(weights), "val_loss": out})
            return out

        self.say("tune per-expert λ_t on validation loss")
        start = losses([1.0] * len(names))
        best, weights = 1.0, [1.0] * len(names)
        for i in range(len(names)):
            for w in self.p.tune_weights:
                trial = [*weights[:i], w, *weights[i + 1 :]]
                value = sum(a / b for a, b in zip(losses(trial), start)) / len(tasks)
                if value < best - 1e-4:
                    best, weights = value, trial
        self.scorer.use(None)
        self.state.setdefault("tuned", {})[key] = {"weights": weights, "objective": best, "trace": trace,
                                                   "split": "validation", "examples": self.p.max_val}
        self.save_state()
        return weights

    def route(self) -> None:
        """Routing with no task id: per input, one seed-0 sparse expert chosen by nearest centroid of the
        base's hidden states over each task's validation prompts, or by Arrow."""
        from hubtool.route import Router, evaluate_routed

        names = self.experts_of("sparse")
        for method in ("centroid", "arrow"):
            subject = f"route:{method}:{digest(names)}"
            if all(self.outcomes(subject, t) is not None for t in self.held_in):
                self.row(f"sparse routed: {method}", {t: subject for t in self.held_in}, kind="sparse",
                         single="sparse single-task", group="routing")
                continue
            self.scorer.use(None)
            experts = {t: self.cat.load(self.materialize(n)) for t, n in zip(self.held_in, names)}
            prompts = {t: [e.input for e in self.tasks[t].data.validation[: self.p.max_val]] for t in self.held_in}
            router = Router.fit(self.scorer.model, self.scorer.tokenizer, experts, prompts, method=method)
            accuracy = {}
            for task in self.held_in:
                if self.outcomes(subject, task) is not None:
                    continue
                t = self.tasks[task]
                settings = {"split": "test", "limit": self.p.eval_limit, "max_new_tokens": t.max_new_tokens,
                            "batch_size": self.p.batch_size, "max_prompt_tokens": self.p.max_length}
                self.say(f"route ({method}) on {task}")
                metrics, predictions, choices = evaluate_routed(self.scorer.model, self.scorer.tokenizer, router,
                                                                experts, t.data, **settings)
                from hubtool.evaluate import example_rows

                rows = example_rows(predictions)
                for r, c in zip(rows, choices):
                    r["routed_to"] = c
                accuracy[task] = sum(c == task for c in choices) / len(choices)
                self.store(subject, task, "test", rows, settings, metrics)
            self.scorer.current = None  # evaluate_routed restored the base's weights itself
            self.row(f"sparse routed: {method}", {t: subject for t in self.held_in}, kind="sparse",
                     single="sparse single-task", group="routing")

    def avoid(self) -> None:
        """The sparse experts retrained one after another, each avoiding the masks of the ones before it
        (catalog-aware masks, β = avoid_beta), their single-task row and their swept merge."""
        names: list[str] = []
        for task in self.held_in:
            names.append(self.expert(task, "sparse", self.p.merge_seed, avoid=list(names)))
        label = f"sparse avoid β={self.p.avoid_beta:g} single-task"
        self.single_row(label, names, "sparse", note="each expert trained avoiding the masks of the ones before it")
        # Their own λ sweep: with disjoint masks overlap-mean is a plain sum, so the plain experts' λ
        # (chosen where entries are shared and averaged) need not suit them.
        lam = self.sweep("sparse", "overlap-mean", names, tag="-avoid")
        merged = self.merge("sparse", "overlap-mean", names, lam=lam, tag="-avoid")
        self.score_row(f"sparse avoid β={self.p.avoid_beta:g} merged: overlap-mean λ={lam:g} (val)", merged,
                       kind="sparse", single=label)

    def keep(self) -> None:
        names = self.experts_of("sparse", keep_ratio=self.p.low_keep)
        label = f"sparse k={self.p.low_keep:g} single-task"
        self.single_row(label, names, "sparse")
        tag = f"-k{_lam_tag(self.p.low_keep)}"
        lam = self.sweep("sparse", "overlap-mean", names, tag=tag)  # their own λ, as for every merge row
        merged = self.merge("sparse", "overlap-mean", names, lam=lam, tag=tag)
        self.score_row(f"sparse k={self.p.low_keep:g} merged: overlap-mean λ={lam:g} (val)", merged, kind="sparse",
                       single=label)

    def seeds(self) -> None:
        for label in self.p.kinds:
            if label not in self.p.seed_kinds:
                continue
            for seed in self.p.seeds:
                if seed == self.p.merge_seed:
                    continue
                names = self.experts_of(label, seed)
                self.single_row(f"{label} single-task seed {seed}", names, label)

    def subsets(self) -> None:
        from hubtool.experiment.presets import subset_sizes

        for label in self.p.kinds:
            names = self.experts_of(label)
            lam = self.chosen(label)
            for n in subset_sizes(len(names))[:-1]:
                merged = self.merge(label, MAIN[label], names[:n], lam=lam)
                tasks = self.held_in[:n]
                for task in tasks:
                    self.score(merged, task)
                self.row(f"{label} merged: {MAIN[label]} λ={lam:g}, N={n}", {t: merged for t in tasks}, kind=label,
                         single=f"{label} single-task", group=f"subset {n}")

    # --- the run ----------------------------------------------------------------------------------------

    def run(self, steps: tuple[str, ...] = STEPS) -> None:
        """Every step in order (the gate always: it decides the held-in tasks); each skips what is stored."""
        self.load_state()
        self.gate()
        try:
            for step in steps:
                if step == "gate":
                    pass  # run above, always
                elif step == "base":
                    for task in self.held_in + self.held_out:
                        self.score(BASE, task)
                    self.row("base model", {t: BASE for t in self.held_in + self.held_out}, kind="base", group="base")
                elif step in KINDS:
                    if step in self.p.kinds:
                        self.kind(step)
                else:
                    getattr(self, step)()
                self.state.setdefault("done", [])
                if step not in self.state["done"]:
                    self.state["done"].append(step)
                self.save_state()
        finally:
            self.scorer.close()

    def load_state(self) -> None:
        """Decisions of an earlier run of the same preset (the tuning traces; rows are rebuilt as steps run)."""
        if self.dump is None or not (self.dump / "state.json").is_file():
            return
        try:
            old = json.loads((self.dump / "state.json").read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise HubError(f"{self.dump / 'state.json'}: not a state file ({err})") from None
        if old.get("preset") == self.p.label:
            for key in ("coverage", "overlap_mean"):
                if key in old:
                    self.state[key] = old[key]
            self.state["tuned"] = old.get("tuned", {})
            self.state["rows"] = old.get("rows", {})
            self.state["done"] = old.get("done", [])


def run_n8(exp: Any, out: str | Path | None, console: Any = None, steps: tuple[str, ...] | None = None) -> N8:
    run = N8(exp, out, console)
    run.run(steps or STEPS)
    return run
