"""Browsing and moving experts: list, show, import, export, rm, alias, verify."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hubtool.cli import app
from hubtool.cli._common import (
    CatalogOpt,
    JsonOpt,
    NameOpt,
    TaskOpt,
    TasksOpt,
    TrustRemoteCodeOpt,
    YesOpt,
    console,
    count_option,
    esc,
    fail,
    human_bytes,
    open_catalog,
    print_json,
    resolve_tasks,
)
from hubtool.data.metrics import metric_summary

RefArg = Annotated[str, typer.Argument(help="Expert reference: NAME, NAME@VERSION or NAME@ALIAS.")]

PANEL = "Catalog"  # the group these commands are listed under in `hub --help`


@app.command("list", rich_help_panel=PANEL)
def list_(
    task: TaskOpt = None,
    tasks: TasksOpt = None,
    base: Annotated[str | None, typer.Option("--base", help="Only experts of this base model.")] = None,
    kind: Annotated[
        str | None, typer.Option("--kind", help="sparse, block-sparse, lora, full or merged.")
    ] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="Only experts with this tag.")] = None,
    where: Annotated[
        str | None, typer.Option("--where", help="Filter, e.g. 'rougeL>=30, keep_ratio<0.1'.")
    ] = None,
    sort: Annotated[
        str | None, typer.Option("--sort", help="Field or metric to sort by; '-' prefix for descending.")
    ] = None,
    limit: Annotated[int, count_option("--limit", help="At most this many rows.")] = 25,
    json_: JsonOpt = False,
    catalog: CatalogOpt = None,
) -> None:
    """List experts in the catalog."""
    query = dict(task=task, base=base, kind=kind, tag=tag, where=where, sort=sort, limit=limit)  # noqa: C408
    rows = _list_rows(catalog, tasks, query)
    if json_:
        print_json([r.to_dict() for r in rows])
        return
    if not rows:
        console.print("No experts match.", style="dim")
        return
    from rich.table import Table

    # One base model for every row (the usual case) becomes a caption instead of a repeated column.
    bases = {r.base_model for r in rows}
    one_base = bases.pop() if len(bases) == 1 else None
    table = Table(box=None, header_style="bold", caption=f"base model: {esc(one_base)}" if one_base else None,
                  caption_justify="left")
    # nnz, sha256, created and the rest are in `hub show` and --json. Names never wrap (they are what
    # you copy into the next command); only the metrics cell wraps in a narrow terminal.
    columns = ["expert", "task", "kind", "keep", "size"] + ([] if one_base else ["base"]) + ["metrics"]
    for col in columns:
        table.add_column(col, justify="right" if col in ("keep", "size") else "left", no_wrap=col != "metrics")
    for r in rows:
        cells = [r.ref, esc(r.task), esc(r.kind), "-" if r.keep_ratio is None else f"{r.keep_ratio:.3g}",
                 human_bytes(r.bytes)]
        cells += [] if one_base else [esc(r.base_model)]
        table.add_row(*cells, esc(metric_summary(r.metrics)))
    console.print(table)


def _list_rows(catalog: str | None, tasks: str | None, query: dict) -> list:
    """Catalog.list, on SQLite through the stdlib read path (registry/fastlist.py: no SQLAlchemy to
    import, a third of `hub list`'s start-up); anything it can't answer goes the normal way."""
    from hubtool.registry import fastlist

    reader = fastlist.open_reader(catalog)
    if reader is not None:
        try:
            with reader:
                names = None if tasks is None else resolve_tasks(reader, tasks)
                return reader.list(tasks=names, **query)
        except fastlist.Unavailable:
            pass  # e.g. a damaged file: the normal path reports it
    cat = open_catalog(catalog)
    names = None if tasks is None else resolve_tasks(cat, tasks)  # categories become their tasks
    return cat.list(tasks=names, **query)


@app.command(rich_help_panel=PANEL)
def show(
    ref: RefArg,
    all_weights: Annotated[
        bool, typer.Option("--all-weights", help="One row per weight (default: layers with equal rows collapse).")
    ] = False,
    json_: JsonOpt = False,
    catalog: CatalogOpt = None,
) -> None:
    """Show one expert: metadata, aliases, per-layer nnz, metrics (and gain over the base) and lineage."""
    cat = open_catalog(catalog)
    rec = cat.get(ref)
    info = cat.describe(rec.ref)
    lineage, baselines, gains = info["lineage"], info["base_metrics"], info["gain"]
    if json_:
        print_json(info)
        return
    from rich.table import Table

    console.print(f"[bold]{rec.ref}[/]  {esc(rec.kind)} expert for task [cyan]{esc(rec.task)}[/]")
    facts = [
        ("base model", f"{rec.base_model}" + (f" ({rec.base_revision})" if rec.base_revision else "")),
        ("targets", rec.targets or "-"),
        ("keep ratio", "-" if rec.keep_ratio is None else f"{rec.keep_ratio:g}"),
        ("nnz", f"{rec.nnz:,}"),
        ("value dtype", info["value_dtype"]),
        ("size", human_bytes(rec.bytes)),
        ("sha256", rec.sha256),
        ("created", str(rec.created_at)),
        ("tags", ", ".join(rec.tags) or "-"),
        ("aliases", ", ".join(f"{rec.name}@{a}" for a in rec.aliases) or "-"),
    ]
    if len(rec.tasks) > 1:
        facts.append(("tasks", ", ".join(rec.tasks)))
    if rec.hub_repo:
        facts.append(("hub", f"{rec.hub_repo}@{rec.hub_commit}"))
    for key, value in facts:
        console.print(f"  [dim]{key:>11}[/] {esc(value)}", highlight=False)
    if rec.metrics:
        console.print("[bold]metrics[/]")
        for task_name, per_task in rec.metrics.items():
            parts = []
            for metric, value in per_task.items():
                text = f"{metric} {value:.4g}"
                if metric in gains.get(task_name, {}):
                    text += f" ({gains[task_name][metric]:+.4g} over the base's {baselines[task_name][metric]:.4g})"
                parts.append(text)
            console.print(f"  {esc(task_name)}: {esc(', '.join(parts))}", highlight=False)
    if lineage.get("parents") or lineage.get("children"):
        console.print("[bold]lineage[/]")
        for p in lineage.get("parents", []):
            gone = "" if p.get("present", True) else " (removed)"
            console.print(f"  parent  {esc(_edge(p))}{gone}", highlight=False)
        for c in lineage.get("children", []):
            console.print(f"  child   {esc(_edge(c))}", highlight=False)
    table = Table(box=None, header_style="bold", title=None)
    columns = ("weight", "shape", "nnz", "density", "encoding") if all_weights else (
        "weight", "count", "shape", "nnz", "density", "encoding")
    for col in columns:
        table.add_column(col, justify="left" if col in ("weight", "encoding") else "right")
    for label, group in _weight_rows(info["weights"], collapse=not all_weights):
        rows, cols = group[0]["shape"]
        nnz = group[0]["nnz"]
        table.add_row(
            esc(label.removesuffix(".weight")),  # every adapted tensor is a weight; the suffix is noise
            *([] if all_weights else [f"×{len(group)}" if len(group) > 1 else ""]),
            f"{rows}×{cols}",
            f"{nnz:,}",
            f"{nnz / (rows * cols):.4f}",
            esc(group[0].get("encoding", "-")),
        )
    console.print(table)


def _weight_rows(weights: dict[str, dict], collapse: bool) -> list[tuple[str, list[dict]]]:
    """Rows of the per-weight table in natural order (layers.2 before layers.10). Collapsed, weights
    that differ only in their layer number and share shape, nnz and encoding are one row
    ("model.layers.*.self_attn.q_proj.weight  ×30"): a 30-layer expert fits on a screen."""
    import re

    def natural(name: str) -> list:
        return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]

    groups: dict[tuple, list[str]] = {}  # (pattern, shape, nnz, encoding) -> weight names
    for name in sorted(weights, key=natural):
        info = weights[name]
        pattern = re.sub(r"\.\d+\.", ".*.", name) if collapse else name
        groups.setdefault((pattern, tuple(info["shape"]), info["nnz"], info.get("encoding")), []).append(name)
    # A group of one shows the weight's own name, not a pattern.
    return [
        (key[0] if len(names) > 1 else names[0], [weights[n] for n in names]) for key, names in groups.items()
    ]


def _edge(edge: dict) -> str:
    # {"ref": "qa@2", "role": ..., "weight": 0.5} -> "qa@2 (weight 0.5)"
    extras = [str(edge["role"])] if edge.get("role") else []
    if edge.get("weight") is not None:
        extras.append(f"weight {edge['weight']:g}")
    return edge["ref"] + (f" ({', '.join(extras)})" if extras else "")


@app.command("import", rich_help_panel=PANEL)
def import_(
    path: Annotated[Path, typer.Argument(help="A packed expert (.safetensors) or a PEFT adapter folder.")],
    name: NameOpt = None,
    task: TaskOpt = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Tag to attach (repeatable).")] = None,
    base: Annotated[
        str | None,
        typer.Option(
            "--base", help="PEFT folders only: the base model, when adapter_config.json lacks or misnames it."
        ),
    ] = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
    dtype: Annotated[
        str | None,
        typer.Option("--dtype", help="Convert the values to bf16, fp16 or fp32 (default: keep their dtype)."),
    ] = None,
    catalog: CatalogOpt = None,
) -> None:
    """Import a packed expert file or a PEFT adapter folder (LoRA, SHiRA, Super-Tuning) into the catalog."""
    from hubtool.api import import_expert

    rec = import_expert(
        path,
        name=name,
        task=task,
        tags=tag or (),
        base=base,
        dtype=dtype,
        catalog=catalog,
        trust_remote_code=trust_remote_code,
    )
    console.print(
        f"Imported [bold]{rec.ref}[/] ({esc(rec.kind)}, task {esc(rec.task)}, {rec.nnz:,} entries, {human_bytes(rec.bytes)})",
        highlight=False,
    )


@app.command(rich_help_panel=PANEL)
def export(
    ref: RefArg,
    # str, not Path: Path would drop the trailing "/" that makes "--out exports/" mean a folder
    out: Annotated[str, typer.Option("--out", help="Output folder (peft), or file or folder/ (hubtool).")],
    fmt: Annotated[
        str, typer.Option("--format", help="peft (a PeftModel folder) or hubtool (the packed file).")
    ] = "peft",
    force: Annotated[
        bool, typer.Option("--force", help="Replace --out if it exists (only once the new one is complete).")
    ] = False,
    catalog: CatalogOpt = None,
) -> None:
    """Export an expert as a PEFT adapter folder or as its packed file."""
    from hubtool.api import export_expert

    where = export_expert(ref, out, fmt=fmt, catalog=catalog, force=force)
    console.print(f"Exported [bold]{esc(ref)}[/] to {esc(where)}", highlight=False)


@app.command(rich_help_panel=PANEL)
def rm(ref: RefArg, yes: YesOpt = False, catalog: CatalogOpt = None) -> None:
    """Remove an expert version (its blob goes when nothing else uses it)."""
    cat = open_catalog(catalog)
    rec = cat.get(ref)
    if not yes and not typer.confirm(f"Remove {rec.ref}?"):
        console.print(f"Kept {rec.ref}")
        raise typer.Exit(1)
    cat.remove(rec.ref)
    console.print(f"Removed [bold]{rec.ref}[/]")


@app.command(rich_help_panel=PANEL)
def alias(
    ref: Annotated[
        str, typer.Argument(help="NAME@VERSION (or NAME for the latest) the alias should point to.")
    ],
    alias_name: Annotated[str, typer.Argument(metavar="ALIAS", help="Alias name, e.g. best or prod.")],
    catalog: CatalogOpt = None,
) -> None:
    """Point NAME@ALIAS at a version (moves it if it exists)."""
    cat = open_catalog(catalog)
    rec = cat.get(ref)
    cat.alias(rec.name, alias_name, rec.version)
    console.print(f"{rec.name}@{alias_name} → {rec.ref}")


@app.command(rich_help_panel=PANEL)
def verify(
    repair: Annotated[
        bool,
        typer.Option("--repair", help="Remove what a crash left (temp, trash and scratch files, unreferenced "
                                      "blobs) and say what went."),
    ] = False,
    grace: Annotated[
        float,
        typer.Option("--grace", min=0, help="Seconds an unreferenced blob is spared, on databases without one "
                                             "write lock (PostgreSQL) or when other catalogs share the blob "
                                             "store: a registration may be in flight."),
    ] = 600.0,
    json_: JsonOpt = False,
    catalog: CatalogOpt = None,
) -> None:
    """Re-hash every blob; report mismatches, missing blobs, and what a crash left behind.

    Leftovers are unreferenced blobs, the store's .tmp- and .trash- files and $HUB_HOME/tmp entries that no
    live process holds. Unreferenced means by no catalog sharing the blob store (every catalog that has
    written to it is asked); a blob one of them may use is never removed. Exits 1 while any problem remains
    (after --repair: what it could not remove), or when a catalog sharing the store could not be checked.
    """
    cat = open_catalog(catalog)
    report = cat.verify(repair=repair, grace=grace)
    if json_:
        print_json(report.to_dict())
    else:
        _print_report(cat, report)
    if not report.ok:  # exit 1 as every user-facing failure: one `Error:` line on stderr, after the report
        fail(_verify_summary(report, repair))


def _verify_summary(report, repair: bool) -> str:
    counts = [(len(report.mismatched), "mismatched"), (len(report.missing), "missing"),
              (len(report.damaged), "damaged value(s) in the catalog file"), (len(report.orphans), "orphan(s)"),
              (len(report.recent), "recent unreferenced blob(s)"), (len(report.temp), "temp file(s)"),
              (len(report.trash), "trash file(s)"), (len(report.scratch), "scratch entr(ies)"),
              (len(report.errors), "entr(ies) --repair could not remove"),
              (len(report.unchecked), "catalog(s) sharing the store not checked")]  # fmt: skip
    found = ", ".join(f"{n} {what}" for n, what in counts if n)
    leftovers = report.orphans or report.temp or report.trash or report.scratch
    hint = "; `hub verify --repair` removes the leftovers" if leftovers and not repair else ""
    return f"hub verify found {found} (see its report){hint}"


def _print_report(cat, report) -> None:
    def line(tag: str, text: str) -> None:
        console.print(f"  {tag} {text}", highlight=False)

    console.print(f"checked {report.checked} blobs")
    if report.others:
        names = ", ".join(map(esc, report.others))
        line("[dim]shared[/]  ", f"the blob store is shared with {len(report.others)} other catalog(s) ({names}); "
             f"{report.shared} blob(s) only they use, left alone")
    for item in report.unchecked:
        line("[red]unchecked[/]", f"could not check {esc(item)}; every blob it may use is kept")
    for name in report.gone:
        line("[dim]gone[/]    ", f"{esc(name)}: a catalog on the store's list whose file is gone (it uses no blob; "
             "--repair takes it off the list)")
    for ref in report.mismatched:
        line("[red]mismatch[/]", f"{ref}: {esc(_blob_of(cat, ref))} no longer hashes to its sha256")
    for ref in report.missing:
        blob = _blob_of(cat, ref)
        trashed = Path(blob).with_name(".trash-" + Path(blob).name).exists()
        why = " (a killed `hub rm` left it in the trash: `hub verify --repair` puts it back)" if trashed else ""
        gone = "is a folder, not the blob file" if Path(blob).is_dir() else "is gone"
        line("[red]missing[/] ", f"{ref}: {esc(blob)} {gone}{why}")
    if report.remote:
        shown = ", ".join(report.remote[:5]) + (f" and {len(report.remote) - 5} more" if len(report.remote) > 5 else "")
        line("[cyan]remote[/]  ", f"{esc(shown)}: blob on its Hub repo, fetched on first use (or `hub pull REF`)")
    for path in report.orphans:
        line("[yellow]orphan[/]  ", f"{esc(path)} (no expert uses it; `hub verify --repair` removes it)")
    for path in report.recent:
        line("[yellow]recent[/]  ", f"{esc(path)} (unreferenced, but younger than --grace: kept, a registration "
             "may be in flight)")
    why = "a catalog could not be checked" if report.unchecked else "it predates the store's list of catalogs"
    for path in report.unclaimed:
        line("[yellow]unclaimed[/]", f"{esc(path)} (no catalog checked uses it, but {why}: kept; delete it by hand "
             "if no catalog of yours does)")
    for kind, paths_, what in (
        ("temp", report.temp, "a temp file a killed write left"),
        ("trash", report.trash, "a blob a killed `hub rm` left"),
        ("scratch", report.scratch, "scratch space a killed command left"),
    ):
        for path in paths_:
            line(f"[yellow]{kind:<8}[/]", f"{esc(path)} ({what}; `hub verify --repair` removes it)")
    for path in report.in_use:
        line("[dim]in use[/]  ", f"{esc(path)} (held by a running command, or just written; left alone)")
    for item in report.removed:
        line("[green]removed[/] ", f"{esc(item['path'])} ({item['kind']})")
    for location in report.restored:
        line("[green]restored[/]", f"{esc(location)} (a row still needed it)")
    for error in report.errors:
        line("[red]error[/]   ", esc(error))
    for item in report.damaged:
        line("[red]damaged[/] ", f"{esc(item)} (the catalog file was edited or damaged: restore it from a backup, "
             "or write valid JSON there with the sqlite3 shell)")
    if report.ok:
        console.print("[green]ok[/]")
    elif report.damaged:
        console.print("[red]the catalog file holds values hubtool did not write[/]")
    elif not (report.mismatched or report.missing or report.unchecked):
        console.print("[yellow]blobs ok; leftovers remain[/] (`hub verify --repair` removes them)")
    elif not (report.mismatched or report.missing):
        console.print("[yellow]blobs ok; not every catalog sharing the blob store could be checked[/]")


def _blob_of(cat, ref: str) -> str:
    return str(cat.blob_path(cat.get(ref), fetch=False))
