"""Training and evaluating experts: train, eval, tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hubtool.cli import app
from hubtool.cli._common import (
    BaseOpt,
    BatchSizeOpt,
    CatalogOpt,
    JsonOpt,
    LimitOpt,
    MaxNewTokensOpt,
    NameOpt,
    TrustRemoteCodeOpt,
    _parser,
    console,
    count_option,
    esc,
    print_json,
    seed_option,
    setting_options,
)
from hubtool.sparse.config import (  # stdlib-only: cheap at startup
    AdapterConfig,
    TrainConfig,
    check_avoid_beta,
)

PANEL = "Train and evaluate"  # the group these commands are listed under in `hub --help`


@app.command(rich_help_panel=PANEL)
@setting_options(adapter=AdapterConfig, training=TrainConfig)
def train(
    *,
    task: Annotated[
        str,
        typer.Option("--task", help="Built-in task name, a task folder, or (with --data) a new task's name."),
    ],
    data: Annotated[
        Path | None,
        typer.Option("--data", help="JSONL/CSV file or HF datasets folder of prompt→answer pairs."),
    ] = None,
    category: Annotated[
        str | None,
        typer.Option(
            "--category",
            help="The task's category (qa, summarize, classify, multiple-choice, math, ...), recorded in "
            "the catalog. Default: the data folder's task.json, the built-in's, or the one recorded before.",
        ),
    ] = None,
    base: Annotated[
        str, typer.Option("--base", help="Base model: embedded name, HF id or local folder.")
    ] = "smollm2-135m",
    # The settings: one option per field of AdapterConfig and TrainConfig that declares a flag
    # (hubtool.sparse.config), generated with its default, help and rule by setting_options.
    adapter: AdapterConfig,
    training: TrainConfig,
    name: NameOpt = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run of the same name.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    avoid: Annotated[
        str | None,
        typer.Option(
            "--avoid",
            help="Steer the mask away from entries these experts keep: tasks, categories or expert "
            "NAME\\[@VERSION], comma-separated (sparse kinds; LoRA/full experts are skipped).",
        ),
    ] = None,
    avoid_catalog: Annotated[
        bool,
        typer.Option("--avoid-catalog", help="Avoid every expert of the catalog on this base model but the task's own."),
    ] = False,
    avoid_beta: Annotated[
        float | None,
        typer.Option(
            "--avoid-beta",
            parser=_parser(float, check_avoid_beta),
            metavar="FLOAT",
            help="Scores are divided by 1 + B x (experts keeping the entry); inf: disjoint masks. Default 1.",
        ),
    ] = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
    catalog: CatalogOpt = None,
    method: Annotated[str | None, typer.Option("--method", hidden=True, help="The old name of --kind.")] = None,
) -> None:
    """Train one expert for a task, evaluate it, pack it and register it in the catalog."""
    from hubtool.train import train as train_expert

    result = train_expert(
        task,
        adapter=adapter,
        training=training,
        base=base,
        method=method,
        data=data,
        category=category,
        name=name,
        resume=resume,
        quiet=quiet,
        catalog=catalog,
        trust_remote_code=trust_remote_code,
        avoid=[] if avoid is None else avoid.split(","),
        avoid_catalog=avoid_catalog,
        avoid_beta=avoid_beta,
    )
    if result.interrupted:
        console.print(
            f"Interrupted after {result.steps} steps; checkpoint in {esc(result.out_dir)}. "
            "Run the same command with --resume to continue."
        )
        raise typer.Exit(130)
    rec = result.record
    if rec is None:  # a data-parallel rank other than 0: rank 0 registers the expert
        return
    console.print(f"Registered [bold]{esc(rec.ref)}[/] ({esc(rec.kind)}, {rec.nnz:,} trained entries)")
    for task_name, per_task in (rec.metrics or {}).items():
        console.print(
            f"  {esc(task_name)}: " + esc(", ".join(f"{m} {v:.4g}" for m, v in per_task.items())), highlight=False
        )
    avoided = result.config.get("avoid")
    if avoided is not None:
        experts = ", ".join(avoided["experts"]) or "none found"
        console.print(
            f"  avoided (beta {avoided['beta']}, {avoided['covered_share']:.1%} of the entries covered): {esc(experts)}",
            highlight=False,
        )
        if avoided["skipped"]:
            console.print(f"  not counted: {esc('; '.join(avoided['skipped']))}", highlight=False)


def options_table() -> str:
    """The markdown table of `hub train`'s generated options (docs/training.md holds it; a test checks it
    is current): flag, default, the library's field, help."""
    from dataclasses import MISSING, fields

    rows = ["| option | default | library | what |", "|---|---|---|---|"]
    for group, cls in (("adapter", AdapterConfig), ("training", TrainConfig)):
        for f in fields(cls):
            if f.metadata.get("flag"):
                default = "-" if f.default is None or f.default is MISSING else f"`{f.default}`"
                text = f.metadata["help"].replace("|", "\\|")
                rows.append(f"| `{f.metadata['flag']}` | {default} | `{cls.__name__}.{f.name}` | {text} |")
    return "\n".join(rows) + "\n"


@app.command("eval", rich_help_panel=PANEL)
def eval_(
    target: Annotated[
        str | None,
        typer.Argument(help="Expert NAME[@VERSION], a packed file, a PEFT folder or a model folder."),
    ] = None,
    task: Annotated[
        str | None, typer.Option("--task", help="Task to evaluate on (with --compare: tasks, comma-separated).")
    ] = None,
    base: BaseOpt = None,
    split: Annotated[str, typer.Option("--split", help="train | validation | test")] = "test",
    limit: LimitOpt = None,
    max_new_tokens: MaxNewTokensOpt = 64,
    max_prompt_tokens: Annotated[
        int | None,
        count_option("--max-prompt-tokens", help="Cut prompts from the left to N tokens (as --max-length does in training)."),
    ] = None,
    batch_size: BatchSizeOpt = 8,
    json_: JsonOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
    catalog: CatalogOpt = None,
    compare: Annotated[
        str | None,
        typer.Option(
            "--compare",
            metavar="A,B",
            help="Compare two stored evaluations example by example instead of evaluating: expert refs, or "
            "'base' for the other's base model. Prints A and B, A - B, A / B as retention and the normalised "
            "gain (A - base) / (B - base), each with a 95% paired bootstrap interval.",
        ),
    ] = None,
    draws: Annotated[int, count_option("--draws", help="Bootstrap draws for --compare.")] = 2000,
    seed: Annotated[int, seed_option("--seed", help="Seed of the bootstrap draws for --compare.")] = 0,
) -> None:
    """Evaluate an expert (or, with only --base, the base model) on a task; store the metrics and the
    per-example results. With --compare A,B: compare two stored evaluations with confidence intervals."""
    from hubtool.api import evaluate_expert

    if compare is not None:
        if target is not None or base is not None:
            raise typer.BadParameter("--compare A,B compares stored evaluations: give no expert and no --base")
        _compare(compare, task, split=split, draws=draws, seed=seed, json_=json_, catalog=catalog)
        return
    if task is None:
        raise typer.BadParameter("--task: expected the task to evaluate on")
    if target is None and base is None:
        raise typer.BadParameter("give an expert (NAME, file or folder) or --base MODEL")
    metrics = evaluate_expert(
        target,
        task,
        base=base,
        split=split,
        limit=limit,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        catalog=catalog,
        trust_remote_code=trust_remote_code,
        max_prompt_tokens=max_prompt_tokens,
    )
    if json_:
        print_json(metrics)
        return
    run = {k: metrics.pop(k) for k in ("n", "seconds", "examples_per_s") if k in metrics}
    scores = ", ".join(f"{m} {v:.3g}" for m, v in metrics.items())
    console.print(f"[bold]{esc(target or base)}[/] on {esc(task)} ({split}): {esc(scores)}", highlight=False)
    if run:
        console.print(
            f"  {run.get('n', 0):.0f} examples in {run.get('seconds', 0):.1f} s "
            f"({run.get('examples_per_s', 0):.2f}/s)",
            style="dim",
            highlight=False,
        )


def _compare(pair: str, tasks: str | None, *, split: str, draws: int, seed: int, json_: bool,
             catalog: str | None) -> None:
    """`hub eval --compare A,B`: the paired bootstrap over the stored per-example results (api.compare)."""
    from hubtool.api import compare

    refs = [r.strip() for r in pair.split(",")]
    if len(refs) != 2 or not all(refs):
        raise typer.BadParameter(f"--compare {pair!r}: expected two refs A,B (an expert ref or 'base' each)")
    names = None if tasks is None else [t.strip() for t in tasks.split(",")]
    if names is not None and not all(names):
        raise typer.BadParameter(f"--task {tasks!r}: expected task names, comma-separated")
    result = compare(refs[0], refs[1], tasks=names, split=split, draws=draws, seed=seed, catalog=catalog)
    if json_:
        print_json(result)
        return
    from rich.table import Table

    from hubtool.stats import Estimate, fmt

    def cell(est: dict | None) -> str:
        if est is None:
            return "-"
        return fmt(Estimate(*(float("nan") if est[k] is None else est[k] for k in ("value", "low", "high"))))

    with_base = result["base"] is not None
    console.print(
        f"A = [bold]{esc(result['a'])}[/], B = [bold]{esc(result['b'])}[/]"
        + (f", base = {esc(result['base'])}" if with_base else "")
        + f" ({esc(split)} split): mean [95% interval], {draws:,} paired draws (seed {seed})",
        highlight=False,
    )
    table = Table(box=None, header_style="bold")
    columns = ["task", "metric", "n", "A", "B", "A - B", "retention A/B %"]
    if with_base:
        columns += ["base", "gain (A-base)/(B-base) %"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("task", "metric") else "right")

    def add(task: str, metric: str, n: int, row: dict) -> None:
        cells = [esc(task), esc(metric), f"{n:,}", cell(row["a"]), cell(row["b"]), cell(row["difference"]),
                 cell(row["retention"])]  # fmt: skip
        if with_base:
            cells += [cell(row["base"]), cell(row["gain"])]
        table.add_row(*cells)

    for row in result["tasks"]:
        add(row["task"], row["metric"], row["n"], row)
    overall = result["overall"]
    if overall["tasks"] > 1:
        add(f"all ({overall['tasks']} tasks)", "", overall["n"], overall)
    console.print(table)
    if overall["tasks"] > 1:
        console.print("  all: the mean over tasks of each task's mean (equal weight); retention and gain sum "
                      "the task means", style="dim", highlight=False)  # fmt: skip


@app.command(rich_help_panel=PANEL)
def tasks(json_: JsonOpt = False, catalog: CatalogOpt = None) -> None:
    """List the tasks with their category and sizes: those available offline (built-in, shared data,
    HUB_TASKS_PATH) and those registered in the catalog by `hub train --data`."""
    from hubtool.cli._common import open_catalog
    from hubtool.data import list_tasks

    infos = list_tasks(open_catalog(catalog).list_tasks())
    if json_:
        print_json([i.__dict__ for i in infos])
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in ("task", "category", "kind", "train", "validation", "test", "catalog", "source"):
        table.add_column(col, justify="right" if col in ("train", "validation", "test") else "left")
    for i in infos:
        table.add_row(
            esc(i.name),
            esc(i.category or "-"),
            esc(i.kind),
            *(f"{i.sizes.get(s, 0):,}" for s in ("train", "validation", "test")),
            "yes" if i.registered else "-",
            esc(i.source),
        )
    console.print(table)
