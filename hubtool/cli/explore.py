"""Seeing overlap and trying the result: `hub overlap` and `hub generate` (beside `hub compose`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from hubtool.cli import app
from hubtool.cli._common import (
    BaseOpt,
    CatalogOpt,
    JsonOpt,
    MaxNewTokensOpt,
    console,
    err_console,
    esc,
    fail,
    print_json,
)
from hubtool.cli.compose import METHOD_HELP, PANEL, ExpertsOpt, TasksOpt, WhereOpt

PickOpt = Annotated[str | None, typer.Option("--pick", help="best (default: by stored metric) | latest")]
MethodOpt = Annotated[
    str | None,
    typer.Option("--method", help=f"With --tasks/--experts: {METHOD_HELP}"),
]
RouteOpt = Annotated[
    str | None,
    typer.Option("--route", help="With --tasks/--experts: answer with ONE of the experts, picked for the prompt "
                 "with no task id: centroid (nearest centroid of the base's hidden states over each task's "
                 "validation prompts) | arrow (top singular vectors of each expert's deltas). Says which on stderr."),
]
# Pairs shown one column each in the per-layer table; beyond this, mean/min/max only.
_MAX_PAIR_COLUMNS = 6


@app.command(rich_help_panel=PANEL)
def overlap(
    tasks: TasksOpt = None,
    experts: ExpertsOpt = None,
    where: WhereOpt = None,
    pick: PickOpt = None,
    png: Annotated[
        Path | None, typer.Option("--png", help="Also write a heatmap PNG here (overall and layer × pair).")
    ] = None,
    json_: JsonOpt = False,
    catalog: CatalogOpt = None,
) -> None:
    """Pairwise mask overlap (Jaccard) of the experts `hub compose` would merge, overall and per layer."""
    from hubtool.cli._common import open_catalog
    from hubtool.merge.compose import build_recipe
    from hubtool.merge.overlap import pairwise_overlap, write_heatmap
    from hubtool.merge.plan import make_plan

    if png is not None and (png.is_dir() or png.suffix.lower() != ".png"):
        fail(f"--png {png}: expected a file name ending in .png")
    recipe = build_recipe(tasks, experts=experts, where=where, pick=pick)
    plan = make_plan(open_catalog(catalog), recipe)
    if len(plan.choices) < 2:
        chosen = ", ".join(c.ref for c in plan.choices)
        fail(f"--tasks/--experts: overlap compares two or more experts; this chose only {chosen}")
    report = pairwise_overlap(plan)
    written = write_heatmap(report, png) if png is not None else None
    if json_:
        print_json({"base_model": plan.base_model,
                    "experts": [{"ref": c.ref, "task": c.task, "kind": c.record.kind, "chosen": c.reason}
                                for c in plan.choices],
                    **report.to_dict(), "png": str(png) if png is not None else None})
        return
    _print_experts(plan)
    _print_matrix(report)
    _print_layers(report)
    if written is not None:
        console.print(f"Wrote [bold]{esc(png)}[/] ({written:,} bytes)")


def _print_experts(plan) -> None:
    from rich.table import Table

    table = Table(box=None, header_style="bold", title=f"experts on {esc(plan.base_model)}", title_justify="left")
    for col in ("#", "task", "expert", "kind", "chosen"):
        table.add_column(col, no_wrap=col != "chosen", justify="right" if col == "#" else "left")
    for i, c in enumerate(plan.choices, 1):
        table.add_row(str(i), esc(c.task), c.ref, esc(c.record.kind), esc(c.reason))
    console.print(table)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _print_matrix(report) -> None:
    from rich.table import Table

    n = len(report.refs)
    table = Table(box=None, header_style="bold", title="Jaccard |A∩B|/|A∪B|, all weights",
                  title_justify="left")
    table.add_column("expert", no_wrap=True)
    for j in range(n):
        table.add_column(str(j + 1), justify="right")
    for i, ref in enumerate(report.refs):
        table.add_row(f"{i + 1} {ref}", *(_fmt(v) if i != j else f"[dim]{_fmt(v)}[/]"
                                          for j, v in enumerate(report.overall[i])))
    console.print(table)


def _print_layers(report) -> None:
    from rich.table import Table

    pairs = report.pairs
    wide = len(pairs) <= _MAX_PAIR_COLUMNS
    table = Table(box=None, header_style="bold", title="per layer: pairwise Jaccard", title_justify="left")
    table.add_column("layer", no_wrap=True)
    table.add_column("mean", justify="right")
    if wide:
        for i, j in pairs:
            table.add_column(f"{i + 1}×{j + 1}", justify="right")
    else:
        table.add_column("min", justify="right")
        table.add_column("max", justify="right")
    for layer, mean in report.layer_means().items():
        matrix = report.per_layer[layer]
        vals = [matrix[i][j] for i, j in pairs]
        if wide:
            rest = [_fmt(v) for v in vals]
        else:
            known = [v for v in vals if v is not None]
            rest = [_fmt(min(known) if known else None), _fmt(max(known) if known else None)]
        table.add_row(esc(layer), _fmt(mean), *rest)
    overall = [report.overall[i][j] for i, j in pairs]
    if wide:
        tail = [_fmt(v) for v in overall]
    else:
        known = [v for v in overall if v is not None]
        tail = [_fmt(min(known) if known else None), _fmt(max(known) if known else None)]
    table.add_row("[bold]all[/]", _fmt(report.overall_mean()), *tail)
    console.print(table)


@app.command(rich_help_panel=PANEL)
def generate(
    args: Annotated[
        list[str],
        typer.Argument(metavar="[TARGET] PROMPT",
                       help="TARGET: a model folder (`hub compose --out`) or an expert NAME\\[@VERSION]; "
                       "leave it out with --tasks/--experts (composed in memory) or --base. PROMPT: the text."),
    ],
    tasks: TasksOpt = None,
    experts: ExpertsOpt = None,
    method: MethodOpt = None,
    where: WhereOpt = None,
    base: BaseOpt = None,
    max_new_tokens: MaxNewTokensOpt = 64,
    chat_template: Annotated[
        bool, typer.Option("--chat-template/--no-chat-template",
                           help="Wrap the prompt in the tokenizer's chat template when it has one.")
    ] = True,
    catalog: CatalogOpt = None,
    route: RouteOpt = None,
) -> None:
    """Greedy text from a composed folder, an expert, experts composed in memory or routed to, or the base model."""
    from hubtool.generate import generate as run

    if len(args) > 2:
        fail(f"expected [TARGET] PROMPT, got {len(args)} arguments; quote the prompt")
    target, prompt = (args[0], args[1]) if len(args) == 2 else (None, args[0])

    def routed(choice) -> None:  # on stderr, so stdout stays the model's text alone
        err_console.print(f"routed ({route}) to [bold]{esc(choice.ref)}[/] (task {esc(choice.task)})")

    # The catalog is opened only when TARGET is an expert or experts are chosen (not for a folder).
    text = run(target, prompt, tasks=tasks, experts=experts, method=method, where=where, base=base,
               max_new_tokens=max_new_tokens, chat_template=chat_template, catalog=catalog, route=route,
               on_route=routed)
    # Plain stdout: the model's text is not Rich markup, and it pipes cleanly.
    sys.stdout.write(text + "\n")
