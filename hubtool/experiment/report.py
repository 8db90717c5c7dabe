"""The experiment's report: every number read back from the catalog, none typed in.

Writes one section of a markdown file (between `<!-- section: NAME -->` markers, so the quick and the
full preset, and benchmarks/lm_eval_agreement.py, share docs/results.md without overwriting each other),
plus two PNGs beside it: the retention plot and the sparse experts' overlap heatmap.

The score of a task is its headline metric (compose's HEADLINE: accuracy for tasks with options,
else Rouge-L, as the paper reports it). Retention of a merge = its mean held-in score over the mean
single-task score of the same kind on the same tasks.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubtool.data.metrics import HEADLINE
from hubtool.experiment.jobs import ComposeJob, Plan, digest
from hubtool.experiment.presets import KINDS, TUNED
from hubtool.fileio import atomic_write

CLAIMS = (
    "Sparse adapters beat LoRA and full fine-tuning on held-in tasks (single-task).",
    "Merged, sparse adapters keep more held-in performance than merged LoRA or merged full fine-tunes.",
    "Held-out performance after merging stays weak for every method.",
    "Adapting the attention QKV projections beats adapting the MLP layers.",
)
WEAK = 2.0  # points: a merge "stays weak" held-out when it gains at most this over the base


def write_section(path: str | Path, name: str, body: str, *, title: str = "# Results") -> None:
    """Put `body` between this section's markers in the markdown file `path` (replacing what was
    there, or appended), atomically. Other sections are kept as they are."""
    path = Path(path)
    begin, end = f"<!-- section: {name} -->", f"<!-- /section: {name} -->"
    text = path.read_text() if path.is_file() else f"{title}\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    with atomic_write(path) as f:
        f.write(text.encode())


def source_commit() -> str:
    """The commit of the hubtool source that ran, with "+ uncommitted changes" when the tree differs."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "hubtool"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        from hubtool import __version__

        return f"hubtool {__version__} (not a git checkout)"
    return head + (" + uncommitted changes in hubtool/" if dirty else "")


@dataclass
class Scores:
    """Headline scores read from the catalog: single experts, merges and the base."""

    exp: Any  # runner.Experiment
    plan: Plan

    def metric(self, task: str) -> str:
        """accuracy for a task with options, else rougeL (what the base's scores hold, else the data says)."""
        base = self.base_metrics(task)
        found = next((m for m in HEADLINE if m in base), None)
        if found is not None:
            return found
        data = next((t.data for t in self.exp.tasks if t.name == task), None)
        return "accuracy" if data is not None and data.kind == "classification" else "rougeL"

    def base_metrics(self, task: str) -> dict[str, float]:
        from hubtool.models import base_id

        return self.exp.catalog.base_metrics(base_id(self.exp.base), task)

    def base(self, task: str) -> float | None:
        return self.base_metrics(task).get(self.metric(task))

    def of(self, name: str | None, task: str) -> float | None:
        from hubtool.errors import NotFoundError

        if name is None:
            return None
        try:
            return self.exp.catalog.get(name).metrics.get(task, {}).get(self.metric(task))
        except NotFoundError:
            return None

    def single(self, kind: str, task: str, seed: int | None = None) -> float | None:
        seed = self.exp.preset.merge_seed if seed is None else seed
        return self.of(self.plan.experts.get((task, kind, seed)), task)


def _seconds(entry: Any) -> float:
    return float(entry["seconds"] if isinstance(entry, dict) else entry)


def mean(values: list[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else sum(values) / len(values)  # type: ignore[arg-type]


def fmt(v: float | None, spread: float | None = None) -> str:
    if v is None:
        return "…"
    return f"{v:.1f}" + (f" ± {spread:.1f}" if spread is not None else "")


class Report:
    def __init__(self, exp: Any, plan: Plan) -> None:
        self.exp, self.plan, self.s = exp, plan, Scores(exp, plan)
        self.held_in = [t.name for t in exp.tasks if not t.held_out]
        self.held_out = [t.name for t in exp.tasks if t.held_out]
        self.n = len(self.held_in)

    # --- numbers --------------------------------------------------------------------------------------

    def single_mean(self, kind: str, tasks: list[str] | None = None, seed: int | None = None) -> float | None:
        return mean([self.s.single(kind, t, seed) for t in (tasks or self.held_in)])

    def seed_spread(self, kind: str) -> tuple[float | None, float | None, int]:
        """(mean, standard deviation) over seeds of the held-in mean, and how many seeds are complete."""
        seeds = self.exp.preset.seeds if kind in self.exp.preset.seed_kinds else (self.exp.preset.merge_seed,)
        means = [m for m in (self.single_mean(kind, seed=s) for s in seeds) if m is not None]
        if len(means) < 2:
            return (means[0] if means else None), None, len(means)
        return statistics.mean(means), statistics.stdev(means), len(means)

    def merge(self, kind: str, method: str, n: int | None = None) -> ComposeJob | None:
        n = n or self.n
        return next((m for m in self.plan.merges if m.kind == kind and m.method == method and len(m.experts) == n), None)

    def merged_mean(self, job: ComposeJob | None, tasks: list[str]) -> float | None:
        return None if job is None else mean([self.s.of(job.key, t) for t in tasks])

    def retention(self, job: ComposeJob | None) -> float | None:
        if job is None:
            return None
        merged, single = self.merged_mean(job, job.tasks), self.single_mean(job.kind, job.tasks)
        return None if merged is None or not single else 100 * merged / single

    def series(self) -> list[tuple[str, str]]:
        return list(dict.fromkeys((m.kind, m.method) for m in self.plan.merges))

    # --- the page -------------------------------------------------------------------------------------

    def table(self) -> tuple[str, bool]:
        """The paper-shaped table and whether it is complete."""
        cols = ["model", "held-in mean", "held-out mean", "retention", *self.held_in, *self.held_out]
        head = [f"{c}" if c not in self.held_out else f"{c} (held-out)" for c in cols]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(cols)]
        complete = True

        def row(label: str, cells: list[float | None], hi: str, ho: str, ret: str) -> None:
            nonlocal complete
            complete = complete and "…" not in (hi, ho if self.held_out else "", ret)
            lines.append("| " + " | ".join([label, hi, ho, ret, *(fmt(c) if c is not None else "…" for c in cells)]) + " |")

        base = [self.s.base(t) for t in self.held_in + self.held_out]
        row("base model", base, fmt(mean(base[: self.n])), fmt(mean(base[self.n:])) if self.held_out else "–", "–")
        for kind in self.exp.preset.kinds:
            m, sd, k = self.seed_spread(kind)
            cells = [self.s.single(kind, t) for t in self.held_in] + ["–"] * len(self.held_out)
            label = f"{kind} single-task" + (f" ({k} seeds)" if k > 1 else "")
            lines.append("| " + " | ".join([label, fmt(m, sd), "–", "100", *(c if c == "–" else fmt(c) for c in cells)]) + " |")
            complete = complete and m is not None
        waiting = []
        for kind, method in self.series():
            job = self.merge(kind, method)
            cells = [self.s.of(job.key if job else None, t) for t in self.held_in + self.held_out]
            if all(c is None for c in cells):  # nothing measured yet: listed below the table, not as a row of …
                waiting.append(f"{kind} {method}")
                complete = False
                continue
            ho = fmt(mean(cells[self.n:])) if self.held_out else "–"
            row(f"{kind} merged: {method}", cells, fmt(mean(cells[: self.n])), ho, fmt(self.retention(job)))
        if waiting:
            lines += ["", f"Merges of all {self.n} experts not yet scored: {', '.join(waiting)}."]
        return "\n".join(lines), complete

    def plot(self, path: Path) -> bool:
        """Mean held-in score and retention against the number of merged experts; False if no point yet."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
        any_point = False
        for kind, method in self.series():
            points = []
            for job in sorted((m for m in self.plan.merges if (m.kind, m.method) == (kind, method)),
                              key=lambda m: len(m.experts)):
                score, ret = self.merged_mean(job, job.tasks), self.retention(job)
                if score is not None and ret is not None:
                    points.append((len(job.experts), score, ret))
            if not points:
                continue
            any_point = True
            style = "-" if kind == "sparse" else "--" if kind in ("lora", "full") else ":"
            xs = [p[0] for p in points]
            ax1.plot(xs, [p[1] for p in points], style, marker="o", label=f"{kind}: {method}")
            ax2.plot(xs, [p[2] for p in points], style, marker="o", label=f"{kind}: {method}")
        ax1.set(xlabel="experts merged (N)", ylabel="mean held-in score of the merged tasks",
                title="Merged score")
        ax2.set(xlabel="experts merged (N)", ylabel="retention (% of single-task)", title="Retention")
        ax2.axhline(90, color="grey", lw=0.8, ls=":")
        for ax in (ax1, ax2):
            ax.grid(alpha=0.3)
            ax.set_xticks(sorted({len(m.experts) for m in self.plan.merges}) or [2])
        if any_point:
            ax2.legend(fontsize=7, loc="best")
            fig.tight_layout()
            with atomic_write(path) as f:
                fig.savefig(f, format="png", dpi=110)
        plt.close(fig)
        return any_point

    def heatmap(self, path: Path) -> float | None:
        """The sparse experts' pairwise overlap (Jaccard) heatmap; returns the mean Jaccard."""
        from hubtool.merge.compose import build_recipe
        from hubtool.merge.overlap import pairwise_overlap, write_heatmap
        from hubtool.merge.plan import make_plan

        names = [self.plan.experts.get((t, "sparse", self.exp.preset.merge_seed)) for t in self.held_in]
        if "sparse" not in self.exp.preset.kinds or not all(names) or not all(self._exists(n) for n in names):
            return None
        report = pairwise_overlap(make_plan(self.exp.catalog, build_recipe(experts=names, method="overlap-mean")))
        write_heatmap(report, path)
        return report.overall_mean()

    def _exists(self, name: str) -> bool:
        from hubtool.errors import NotFoundError

        try:
            self.exp.catalog.get(name)
            return True
        except NotFoundError:
            return False

    def verdicts(self) -> list[str]:
        out = []
        p = self.exp.preset
        single = {k: self.seed_spread(k)[0] for k in p.kinds}

        def compare(kinds: tuple[str, ...]) -> tuple[dict[str, float | None], str]:
            """Mean held-in single-task score per kind; while some are missing, over the tasks every
            kind has a score for (marked partial), so a stopped run still says what it has."""
            if all(single.get(k) is not None for k in kinds):
                return {k: single[k] for k in kinds}, ""
            tasks = [t for t in self.held_in if all(self.s.single(k, t) is not None for k in kinds)]
            if not tasks:
                return {k: None for k in kinds}, ""
            return ({k: self.single_mean(k, tasks) for k in kinds},
                    f" (partial: on {len(tasks)} of {self.n} tasks, {', '.join(tasks)})")

        # 1. single-task: sparse vs LoRA and full
        if all(k in single for k in ("sparse", "lora", "full")):
            means, scope = compare(("sparse", "lora", "full"))
            s, lo, fu = means["sparse"], means["lora"], means["full"]
            if None in (s, lo, fu):
                v = "not yet measured"
            else:
                beats = [n for n, x in (("LoRA", lo), ("full", fu)) if s > x]
                v = "**holds**" if len(beats) == 2 else "**partly holds** (beats " + beats[0] + ")" if beats else "**does not hold**"
            out.append(f"1. {CLAIMS[0]} {v}{scope}: mean held-in score sparse {fmt(s)}, LoRA {fmt(lo)}, full {fmt(fu)}.")
        else:
            out.append(f"1. {CLAIMS[0]} Not tested (needs the sparse, lora and full kinds).")
        # 2. merged retention at the largest N: sparse overlap-mean vs the best LoRA / full merge
        best = {}
        for kind in ("sparse", "lora", "full"):
            rets = {m: self.retention(self.merge(kind, m)) for k, m in self.series() if k == kind}
            rets = {m: r for m, r in rets.items() if r is not None}
            best[kind] = max(rets.items(), key=lambda kv: kv[1]) if rets else None
        sparse_om = self.retention(self.merge("sparse", "overlap-mean"))
        others = {k: b for k, b in best.items() if k != "sparse" and b is not None}
        if sparse_om is None or not others:
            out.append(f"2. {CLAIMS[1]} Not yet measured (needs the N={self.n} merges of sparse and of lora or full).")
        else:
            wins = sum(sparse_om > r for _, r in others.values())
            v = "**holds**" if wins == len(others) else "**partly holds**" if wins else "**does not hold**"
            rest = ", ".join(f"best {k} merge {r:.0f}% ({m})" for k, (m, r) in others.items())
            out.append(f"2. {CLAIMS[1]} {v} at N={self.n}: retention sparse overlap-mean {sparse_om:.0f}%, {rest}.")
        # 3. held-out stays weak: no N=all merge gains more than WEAK points over the base
        base_ho = mean([self.s.base(t) for t in self.held_out]) if self.held_out else None
        gains = {}
        for kind, method in self.series():
            job = self.merge(kind, method)
            ho = self.merged_mean(job, self.held_out) if self.held_out else None
            if ho is not None and base_ho is not None:
                gains[f"{kind} {method}"] = ho - base_ho
        if not gains:
            out.append(f"3. {CLAIMS[2]} Not yet measured.")
        else:
            top = max(gains.items(), key=lambda kv: kv[1])
            v = "**holds**" if top[1] <= WEAK else "**does not hold**"
            out.append(f"3. {CLAIMS[2]} {v}: base held-out mean {base_ho:.1f}; the best merge ({top[0]}) gains "
                       f"{top[1]:+.1f} points, the worst {min(gains.values()):+.1f} (weak = at most {WEAK:g} points "
                       "above the base).")
        # 4. qkv vs mlp
        if "sparse" in single and "sparse-mlp" in single:
            means, scope = compare(("sparse", "sparse-mlp"))
            q, m = means["sparse"], means["sparse-mlp"]
            v = "not yet measured" if None in (q, m) else "**holds**" if q > m else "**does not hold**"
            out.append(f"4. {CLAIMS[3]} {v}{scope}: sparse on qkv {fmt(q)}, sparse on the MLP {fmt(m)} "
                       "(mean held-in score).")
        else:
            out.append(f"4. {CLAIMS[3]} Not tested in this preset (needs the sparse-mlp kind; the full preset has it).")
        return out

    def beyond(self) -> str:
        tuned, om = self.merge("sparse", TUNED), self.merge("sparse", "overlap-mean")
        r_t, r_o = self.retention(tuned), self.retention(om)
        if tuned is None:
            return "Not run in this preset."
        weights = self._tuned_weights(tuned)
        w = ", ".join(f"{t} {x:g}" for t, x in zip(tuned.tasks, weights)) if weights else "…"
        goal = "…" if r_t is None else ("met" if r_t >= 90 else "not met")
        return (f"Overlap-mean with per-task weights chosen on validation loss (coordinate search over "
                f"{', '.join(f'{x:g}' for x in self.exp.preset.tune_weights)} against 1.0, first "
                f"{self.exp.preset.max_val} validation examples per task, never the test split): retention "
                f"{fmt(r_t)}% vs overlap-mean {fmt(r_o)}% at N={self.n}. Chosen weights: {w}. "
                f"Goal ≥ 90% retention: {goal}.")

    def _tuned_weights(self, job: ComposeJob) -> list[float] | None:
        from hubtool.errors import NotFoundError

        try:
            rec = self.exp.catalog.get(job.key)
        except NotFoundError:
            return None
        experts = rec.config.get("merge", {}).get("recipe", {}).get("experts", [])
        return [float(e.get("parameters", {}).get("weight", 1.0)) for e in experts] or None

    def stage_times(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for job in self.plan.jobs:
            if job.key in self.exp.timings:
                out[job.stage] = out.get(job.stage, 0.0) + _seconds(self.exp.timings[job.key])
        return out

    def commits(self) -> str:
        """Which source commits ran this preset's jobs (a job run elsewhere, e.g. from --plan on a
        cluster, has no timing here and counts as "elsewhere")."""
        counts: dict[str, int] = {}
        for job in self.plan.jobs:
            entry = self.exp.timings.get(job.key)
            c = entry.get("commit", "unknown") if isinstance(entry, dict) else "unknown" if entry else "elsewhere"
            if entry is not None or self.s.exp.done(job):
                counts[c] = counts.get(c, 0) + 1
        return ", ".join(f"`{c}` ({n} jobs)" for c, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "–"

    def sweep_table(self) -> str:
        if not self.plan.sweep:
            return "No sweep: the paper's learning rates as they are."
        task = self.held_in[0]
        lines = [(f"Validation loss on {task} after {self.exp.preset.steps} steps, by learning rate "
                  "(the lowest is used for every task of that kind):"), "",
                 "| kind | lr | val loss | chosen |", "|---|---|---|---|"]
        for kind, runs in self.plan.sweep.items():
            for lr, name in sorted(runs.items()):
                loss = self.planner_loss(name)
                chosen = "yes" if self.plan.lrs.get(kind) == lr else ""
                paper = " (paper)" if math.isclose(lr, KINDS[kind].lr) else ""
                lines.append(f"| {kind} | {lr:g}{paper} | {fmt(loss) if loss is None else f'{loss:.4f}'} | {chosen} |")
        return "\n".join(lines)

    def planner_loss(self, name: str) -> float | None:
        return self.exp.planner()._val_loss(name)

    def render(self, images: Path, rel: str, command: str) -> str:
        p = self.exp.preset
        table, complete = self.table()
        stem = p.name if not p.overrides else f"{p.name}-{digest(p.overrides)}"
        plot = self.plot(images / f"{stem}-retention.png")
        jac = self.heatmap(images / f"{stem}-overlap.png")
        times = self.stage_times()
        status = "complete" if complete and self.plan.complete else "**partial: cells marked … are not run yet**"
        lines = [
            f"## Preset `{p.label}` ({status})",
            "",
            (f"{p.description}. Base model `{p.base}`. Report written by commit `{source_commit()}`; "
             f"the jobs were run by {self.commits()}."),
            "",
            f"Command: `{command}`",
            "",
            "| setting | value |", "|---|---|",
            f"| held-in tasks | {', '.join(self.held_in)} |",
            f"| held-out tasks | {', '.join(self.held_out) or '–'} |",
            (f"| kinds | {', '.join(p.kinds)} (keep ratio {p.keep_ratio:g}; LoRA r={p.rank}, alpha {p.alpha:g}; "
             f"block {p.block_size}×{p.block_size}) |"),
            (f"| training | {p.steps} steps × batch {p.batch_size}, ≤ {p.max_length} tokens, first {p.max_train} "
             f"training examples, best of 5 checkpoints by loss on {p.max_val} validation examples; sparse "
             f"masks re-selected every {p.mask_interval} steps in the first {p.mask_steps}, then frozen |"),
            f"| learning rates | {', '.join(f'{k} {v:g}' for k, v in self.plan.lrs.items()) or '…'} |",
            f"| evaluation | first {p.eval_limit} test examples per task; greedy, prompts cut to {p.max_length} tokens |",
            f"| merge methods | {', '.join(p.methods)} (overlap-mean on the sparse kinds only: on a dense kind it is the mean) |",
            f"| seeds | {', '.join(map(str, p.seeds))} for the single-task {' and '.join(p.seed_kinds)} rows; merges use seed {p.merge_seed} |",
            (f"| wall time per stage | {', '.join(f'{k} {v / 60:.1f} min' for k, v in times.items()) or '–'} "
             f"(total {sum(times.values()) / 60:.1f} min) |"),
            "",
            ("Scores in percent: accuracy for tasks with options, Rouge-L otherwise; retention = merged mean "
             "held-in score / single-task mean of the same kind on the same tasks."),
            "",
            table,
            "",
            "### The paper's claims here",
            "",
            *self.verdicts(),
            "",
            "### Beyond the paper",
            "",
            self.beyond(),
            "",
            "### Learning rates",
            "",
            self.sweep_table(),
            "",
        ]
        if plot:
            lines += ["### Score and retention against the number of merged experts", "",
                      f"![retention]({rel}/{stem}-retention.png)", ""]
        if jac is not None:
            lines += [f"### Overlap of the sparse experts' masks (mean pairwise Jaccard {jac:.3f})", "",
                      f"![overlap]({rel}/{stem}-overlap.png)", ""]
        return "\n".join(lines)


def check_out(out: str | Path) -> Path:
    """--out, checked before any job runs: a name whose OUT.md and OUT/ can be written."""
    from hubtool.errors import HubError

    text = str(out)
    if not text.strip() or Path(text).name in ("", ".", ".."):
        raise HubError(f"--out {text!r}: expected a path like docs/results (the report is OUT.md, its plots OUT/*.png)")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise HubError(f"--out {text}: is a file; expected a folder for the plots (the report goes to {path.with_suffix('.md')})")
    md = path.with_suffix(".md")
    if md.exists() and not md.is_file():
        raise HubError(f"--out {text}: {md} is not a file")
    parent = path.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise HubError(f"--out {text}: {parent} is not a writable folder")
    return path


def write_report(exp: Any, out: str | Path, command: str) -> Path:
    """Write the preset's section of <out>.md and its PNGs into <out>/; returns the markdown path."""
    out = Path(out)
    images = out
    images.mkdir(parents=True, exist_ok=True)
    md = out.with_suffix(".md")
    body = Report(exp, exp.plan()).render(images, out.name, command)
    write_section(md, f"preset {exp.preset.label}", body,
                  title="# Results: the paper's experiment, reproduced with `hub experiment`\n\n"
                        "Every number below is written by `hub experiment` (or the benchmark script named in "
                        "its section) from the catalog; nothing is typed in by hand.")
    return md
