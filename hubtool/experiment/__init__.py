"""`hub experiment`: the paper's experiment (train, evaluate, compose, evaluate the merges, report),
run with hubtool's own commands against one catalog, every stage cached there.

    from hubtool.experiment import experiment
    experiment("smoke", out="results")                  # run what is missing, then write results.md
    experiment("full", plan_only=True)                  # the jobs as `hub ...` command lines

Modules: presets (what runs), jobs (the plan: one job per train / eval / compose, each keyed by its
config), runner (running a plan in one process), report (the page), smoke (the smoke preset's world).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def experiment(
    preset: str = "quick",
    *,
    tasks: list[str] | None = None,
    held_out: list[str] | None = None,
    seeds: list[int] | None = None,
    kinds: list[str] | None = None,
    methods: list[str] | None = None,
    out: str | Path | None = "docs/results",
    catalog: str | None = None,
    stages: tuple[str, ...] | None = None,
    plan_only: bool = False,
    report_only: bool = False,
    command: str | None = None,
    console: Any = None,
) -> dict[str, Any]:
    """Run a preset's pending jobs (or only `stages`), then write its report section into <out>.md.
    Returns {"plan": Plan, "counts": {...}, "report": path or None, "experiment": Experiment}."""
    from hubtool.experiment.presets import get_preset
    from hubtool.experiment.report import write_report
    from hubtool.experiment.runner import STAGES, Experiment

    spec = get_preset(preset, tasks=tasks, held_out=held_out, seeds=seeds, kinds=kinds, methods=methods)
    if stages is not None and spec.protocol != "n8":
        bad = [s for s in stages if s not in (*STAGES, "report")]
        if bad:
            from hubtool.errors import HubError

            raise HubError(f"--stage {bad[0]!r}: expected one of {', '.join((*STAGES, 'report'))}")
    if out is not None and not plan_only:
        from hubtool.experiment.report import check_out

        check_out(out)  # before any job runs, not after hours of them
        from hubtool.extras import need

        need("plots", "hub experiment's report (its figures)")
    if spec.protocol == "n8":
        from hubtool.experiment.n8 import STEPS

        bad = [s for s in stages or () if s not in (*STEPS, "report")]
        if bad:
            from hubtool.errors import HubError

            raise HubError(f"--stage {bad[0]!r}: the {spec.name} preset's steps are {', '.join((*STEPS, 'report'))}")
        if report_only and not plan_only:
            # The n8 report reads only the committed files under <out>/<preset>/: no catalog, no task data, no
            # base model, so a fresh clone without ../shared rebuilds it.
            from hubtool.experiment.n8_report import write_n8_report

            report = write_n8_report(out, spec, command or f"hub experiment --preset {preset}") if out is not None else None
            return {"experiment": None, "counts": {}, "report": report, "plan": None}
    exp = Experiment.open(spec, catalog)
    result: dict[str, Any] = {"experiment": exp, "counts": {}, "report": None}
    if plan_only:
        result["plan"] = exp.plan() if spec.protocol != "n8" else None
        return result
    if spec.protocol == "n8":
        from hubtool.experiment.n8 import run_n8

        steps = tuple(s for s in (stages or STEPS) if s != "report")
        if steps:
            run_n8(exp, out, console=console, steps=steps)
        result["plan"] = None
        if out is not None and (stages is None or "report" in stages):
            from hubtool.experiment.n8_report import write_n8_report

            result["report"] = write_n8_report(out, spec, command or f"hub experiment --preset {preset}")
        return result
    run_stages = tuple(s for s in (stages or STAGES) if s != "report")
    if not report_only and run_stages:
        result["counts"] = exp.run(stages=run_stages, console=console)
    result["plan"] = exp.plan()
    if out is not None and (stages is None or "report" in stages or report_only):
        result["report"] = write_report(exp, out, command or f"hub experiment --preset {preset}")
    return result


def plan_commands(exp: Any, plan: Any, preset: str, stages: tuple[str, ...] | None = None) -> list[str]:
    """What `hub experiment --plan` prints: the pending jobs as `hub ...` command lines, every job after the
    pending jobs it depends on, with the estimate and what to run next as `#` comments (n8: its steps)."""
    import shlex

    if exp.preset.protocol == "n8":
        from hubtool.experiment import n8

        return [(f"# hub experiment --preset {preset}: runs in one process, step by step, each step skipping what "
                "the catalog holds:"), "# " + " -> ".join(n8.STEPS), n8.__doc__ or ""]
    from hubtool.experiment.runner import order

    pending = [j for j in plan.jobs if not exp.done(j) and (stages is None or j.stage in stages)]
    hours = sum(j.cost for j in pending) / 3600
    lines = [(f"# hub experiment --preset {preset}: {len(pending)} pending jobs of {len(plan.jobs)}, in dependency "
             f"order (about {hours:.1f} h on 2 CPU cores)")]
    lines += [job.command() for job in _dependency_order(order(pending, plan, exp.tasks))]
    if not plan.complete:
        lines.append("# the lr sweep above decides the training jobs: run `hub experiment --plan` again once it is done")
    lines.append(f"# then: hub experiment --preset {preset} --report-only --catalog {shlex.quote(exp.catalog_url)}")
    return lines


def _dependency_order(jobs: list[Any]) -> list[Any]:
    """Jobs with every pending dependency before them (stable otherwise)."""
    pending = {j.key for j in jobs}
    done: set[str] = set()
    out, remaining = [], list(jobs)
    while remaining:
        ready = [j for j in remaining if all(d in done or d not in pending for d in j.deps)]
        if not ready:  # a cycle cannot happen (deps point at earlier stages); the rest as they are
            ready = remaining
        out += ready
        done |= {j.key for j in ready}
        remaining = [j for j in remaining if j.key not in done]
    return out
