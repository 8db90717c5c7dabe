"""`hub experiment`: the paper's experiment reproduced with hubtool's own train / eval / compose."""

from __future__ import annotations

import shlex
import sys
from typing import Annotated

import typer

from hubtool.cli import app
from hubtool.cli._common import console, esc

PANEL = "Merge"


def _items(text: str | None) -> list[str] | None:
    """None (not given) stays None: a preset's own list applies; "" is an empty list."""
    from hubtool import checks

    return None if text is None else checks.items(text)


def _ints(text: str | None, what: str) -> list[int] | None:
    try:
        return None if text is None else [int(t) for t in _items(text) or []]
    except ValueError:
        raise typer.BadParameter(f"{what}: expected comma-separated integers, got {text!r}") from None


@app.command(rich_help_panel=PANEL)
def experiment(
    preset: Annotated[str, typer.Option("--preset", help="smoke (a tiny model, < 1 min) | quick (~30 min) | full (hours) | "
                                                  "n8 (issue 14's protocol, hours) | smoke-n8 (n8 on the tiny model)")] = "quick",
    tasks: Annotated[str | None, typer.Option("--tasks", help="Held-in tasks (names or folders), comma-separated.")] = None,
    held_out: Annotated[
        list[str] | None,
        typer.Option("--held-out", help="Held-out tasks (names or task folders); repeat or comma-separate."),
    ] = None,
    seeds: Annotated[str | None, typer.Option("--seeds", help="Seeds of the single-task sparse and LoRA rows, e.g. 0,1,2.")] = None,
    kinds: Annotated[str | None, typer.Option("--kinds", help="sparse, block-sparse, lora, full, sparse-mlp (comma list).")] = None,
    methods: Annotated[str | None, typer.Option("--methods", help="Merge methods (comma list).")] = None,
    out: Annotated[str, typer.Option("--out", help="Report: writes OUT.md (this preset's section) and OUT/*.png.")] = "docs/results",
    stage: Annotated[
        list[str] | None,
        typer.Option("--stage", help="Only these stages: sweep, train, eval, compose, tune, report (repeatable); "
                                   "n8: gate, base, sparse, lora, full, diagnose, improve, route, avoid, keep, seeds, subsets."),
    ] = None,
    plan: Annotated[bool, typer.Option("--plan", help="Print the pending jobs as hub command lines, in dependency order; run nothing.")] = False,
    report_only: Annotated[bool, typer.Option("--report-only", help="Run nothing; write the report from the catalog.")] = False,
    catalog: Annotated[
        str | None,
        typer.Option("--catalog", envvar="HUB_EXPERIMENT_CATALOG",
                     help="Catalog URL for the experiment's experts. Default: $HUB_HOME/experiments/catalog.db."),
    ] = None,
) -> None:
    """Train, evaluate and merge experts as the paper does, then write the results page.

    Every job is cached in the catalog under a name carrying the hash of its config: a rerun skips
    what exists, so a run can be stopped and resumed, or split across machines with --plan."""
    from hubtool.experiment import experiment as run

    held = [h for item in held_out or [] for h in _items(item) or []] or None
    stages = tuple(s for item in stage or [] for s in _items(item) or []) or None
    command = "hub " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["experiment"] else None
    result = run(
        preset, tasks=_items(tasks), held_out=held, seeds=_ints(seeds, "--seeds"), kinds=_items(kinds),
        methods=_items(methods), out=out, catalog=catalog, stages=stages, plan_only=plan,
        report_only=report_only, command=command, console=None if plan else console,
    )
    if plan:
        from hubtool.experiment import plan_commands

        for line in plan_commands(result["experiment"], result["plan"], preset, stages):
            print(line)
        return
    counts = result["counts"]
    if counts:
        console.print(f"{counts.get('ran', 0)} jobs run, {counts.get('cached', 0)} found in the catalog", highlight=False)
    if result["report"] is not None:
        console.print(f"Report: [bold]{esc(result['report'])}[/]", highlight=False)

