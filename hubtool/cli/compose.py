"""Merging experts: compose (and, beside it, overlap and generate)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hubtool.cli import app
from hubtool.cli._common import (
    CatalogOpt,
    JsonOpt,
    TasksOpt,
    console,
    count_option,
    esc,
    human_bytes,
    number_option,
    print_json,
    ratio_option,
    seed_option,
)
from hubtool.errors import shown
from hubtool.merge.methods import METHODS
from hubtool.merge.recipe import DEFAULT_METHOD

PANEL = "Merge"
# The registered merge methods (hubtool/merge/methods.py), written out: `hub --help` imports no torch.
# tests/test_merge_new.py checks that every registered method is named here.
# Help built from the merge registry (merge/methods.py imports torch only when a method runs).
METHOD_HELP = " | ".join(m + (" (default)" if m == DEFAULT_METHOD else "") for m in METHODS) + " (docs/compose.md)"
TAKES_DENSITY = ", ".join(m for m, spec in METHODS.items() if "density" in spec.params)
TAKES_NORMALIZE = ", ".join(m for m, spec in METHODS.items() if "normalize" in spec.params)

ExpertsOpt = Annotated[
    str | None, typer.Option("--experts", help="Comma list of experts NAME@VERSION instead of a query.")
]
WhereOpt = Annotated[str | None, typer.Option("--where", help="Only experts matching, e.g. 'rougeL>=10'.")]


def _floats(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    import math

    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = [math.nan]
    if not values or not all(math.isfinite(v) for v in values):
        raise typer.BadParameter(f"{what}: expected comma-separated finite numbers, got {shown(text, 60)}")
    return values


@app.command(rich_help_panel=PANEL)
def compose(
    tasks: TasksOpt = None,
    experts: ExpertsOpt = None,
    method: Annotated[
        str | None,
        typer.Option("--method", help=METHOD_HELP),
    ] = None,
    where: WhereOpt = None,
    pick: Annotated[str | None, typer.Option("--pick", help="best (default: by stored metric) | latest")] = None,
    weights: Annotated[
        str | None, typer.Option("--weights", help="Per-expert weights, one per --tasks item or --experts entry.")
    ] = None,
    density: Annotated[
        float | None, ratio_option("--density", help=f"Fraction of entries kept, in (0, 1] ({TAKES_DENSITY}).")
    ] = None,
    lam: Annotated[float | None, number_option("--lambda", help="Scale of the merged delta.")] = None,
    seed: Annotated[int | None, seed_option("--seed", help="Seed of the dare-* random drop.")] = None,
    normalize: Annotated[
        bool | None,
        typer.Option("--normalize/--no-normalize", help=f"Divide by the experts' weights ({TAKES_NORMALIZE}; default: ties yes, dare-* no)."),
    ] = None,
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="Output weights: bfloat16 | float16 | float32 (default: the base's).")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write a Hugging Face model folder here.")] = None,
    as_expert: Annotated[
        str | None, typer.Option("--as-expert", help="Register a merged expert of this name instead.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; write nothing.")] = False,
    eval_: Annotated[bool, typer.Option("--eval", help="Score the result on every task it covers.")] = False,
    eval_limit: Annotated[
        int | None, count_option("--eval-limit", help="Examples per task (default: as each expert was scored).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="A recipe YAML (mergekit-style); flags override it.")
    ] = None,
    push: Annotated[
        str | None, typer.Option("--push", help="Then push the result to this Hub repo ORG/NAME (as `hub push`).")
    ] = None,
    json_: JsonOpt = False,
    catalog: CatalogOpt = None,
) -> None:
    """Merge the experts a catalog query selects into a model folder (--out) or a merged expert (--as-expert)."""
    from hubtool.cli._common import open_catalog
    from hubtool.merge.compose import compose as run

    if push is not None:  # before any work: a bad repo id must not cost a merge
        from hubtool.hub.client import check_repo_id

        check_repo_id(push, "--push")
        if dry_run:
            raise typer.BadParameter("--push: nothing to push with --dry-run")
    cat = open_catalog(catalog)
    progress_ctx, progress = _progress(quiet=json_ or dry_run)
    with progress_ctx:
        result = run(
            tasks, experts=experts, method=method, where=where, pick=pick, weights=_floats(weights, "--weights"),
            density=density, lam=lam, seed=seed, normalize=normalize, dtype=dtype, config=config, out=out, as_expert=as_expert,
            dry_run=dry_run, catalog=cat, progress=progress, evaluate=eval_,
        )
    plan = result.plan
    if json_ and dry_run:
        print_json({"recipe": plan.recipe.to_dict(), "experts": [
            {"ref": c.ref, "task": c.task, "weight": c.weight, "chosen": c.reason} for c in plan.choices],
            "overlap": result.overlap, "output_bytes": result.output_bytes})
        return
    if not json_:
        _print_choices(plan)
    if dry_run:
        _print_overlap(plan, result.overlap or {})
        what = "merged expert" if as_expert else "model folder"
        console.print(f"Output: {what}, about {human_bytes(result.output_bytes)}. Nothing was written (--dry-run).")
        return
    if result.out is not None and not json_:
        console.print(f"Wrote [bold]{esc(result.out)}[/] ({plan.recipe.method}, {len(plan.weights)} weights merged)")
    if result.record is not None and not json_:
        rec = result.record
        console.print(f"Registered [bold]{rec.ref}[/] (merged, {rec.nnz:,} entries, {human_bytes(rec.bytes)})")
    rows = []
    if eval_:
        from hubtool.merge.compose import evaluate_result

        rows = evaluate_result(result, catalog=cat, limit=eval_limit)
        if not json_:
            _print_eval(rows)
    pushed = None
    if push is not None:  # endpoint and token: HF_ENDPOINT, HF_TOKEN or the stored login
        from hubtool.hub.push import push_expert, push_folder

        pushed = (push_folder(result.out, push) if result.out is not None
                  else push_expert(result.record.ref, push, catalog=cat))  # fmt: skip
        if not json_:
            console.print(f"Pushed to {esc(pushed.url)} (commit {pushed.commit[:12]})", highlight=False)
    if json_:
        print_json({"out": str(result.out) if result.out else None,
                    "expert": result.record.ref if result.record else None,
                    "recipe": plan.recipe.to_dict(), "evaluation": rows,
                    "pushed": pushed.to_dict() if pushed else None})


def _progress(quiet: bool):
    import contextlib

    if quiet:
        return contextlib.nullcontext(), None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("merging"), BarColumn(), MofNCompleteColumn(), TextColumn("weights"),
                   TimeElapsedColumn(), console=console, transient=True)
    task_id = None

    def update(what: str, done: int, total: int) -> None:
        nonlocal task_id
        if what != "weights":
            return
        if task_id is None:
            task_id = bar.add_task("merge", total=total)
        bar.update(task_id, completed=done)

    return bar, update


def _print_choices(plan) -> None:
    from rich.table import Table

    table = Table(box=None, header_style="bold", title=f"{plan.recipe.method} on {esc(plan.base_model)}",
                  title_justify="left")
    for col in ("task", "expert", "kind", "weight", "chosen"):
        table.add_column(col, no_wrap=col != "chosen")
    for c in plan.choices:
        table.add_row(esc(c.task), c.ref, esc(c.record.kind), f"{c.weight:g}", esc(c.reason))
    console.print(table)


def _print_overlap(plan, counts: dict[str, list[int]]) -> None:
    """Per layer: entries touched by exactly 1, 2, ..., N experts (weights of one layer summed)."""
    import re

    from rich.table import Table

    n = len(plan.choices)
    by_layer: dict[str, list[int]] = {}
    for name, hist in counts.items():
        m = re.search(r"\.(\d+)\.", name)
        key = f"layer {m.group(1)}" if m else name
        acc = by_layer.setdefault(key, [0] * n)
        for i, v in enumerate(hist):
            acc[i] += v
    table = Table(box=None, header_style="bold", title="entries touched by k experts", title_justify="left")
    table.add_column("layer")
    for k in range(1, n + 1):
        table.add_column(f"k={k}", justify="right")
    table.add_column("overlap", justify="right")
    total = [0] * n
    for key, hist in sorted(by_layer.items(), key=lambda kv: _layer_key(kv[0])):
        table.add_row(esc(key), *(f"{v:,}" for v in hist), _share(hist))
        total = [a + b for a, b in zip(total, hist)]
    table.add_row("[bold]all[/]", *(f"{v:,}" for v in total), _share(total))
    console.print(table)


def _layer_key(key: str):
    parts = key.split()
    return (0, int(parts[1])) if len(parts) == 2 and parts[1].isdigit() else (1, key)


def _share(hist: list[int]) -> str:
    touched = sum(hist)
    return f"{100 * (touched - hist[0]) / touched:.1f}%" if touched and hist else "-"


def _print_eval(rows: list[dict]) -> None:
    from rich.table import Table

    table = Table(box=None, header_style="bold", title="merged vs single expert vs base", title_justify="left")
    for col in ("task", "metric", "merged", "expert", "base", "retention", "n"):
        table.add_column(col, justify="left" if col in ("task", "metric") else "right")
    fmt = lambda v: "-" if v is None else f"{v:.3g}"
    for r in rows:
        table.add_row(esc(r["task"]), esc(r["metric"] or "-"), fmt(r["merged"]), fmt(r["single"]), fmt(r["base"]),
                      "-" if r["retention"] is None else f"{r['retention']:.0f}%", str(r["examples"]))
    console.print(table)
