"""Browsing and moving experts: list, show, import, export, rm, alias, verify."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from hubtool.cli import app
from hubtool.cli._common import (
    CatalogOpt,
    JsonOpt,
    NameOpt,
    TaskOpt,
    YesOpt,
    console,
    fail,
    human_bytes,
    open_catalog,
    print_json,
)

RefArg = Annotated[str, typer.Argument(help="Expert reference: NAME, NAME@VERSION or NAME@ALIAS.")]


def _metric_summary(metrics: dict) -> str:
    # {task: {metric: value}} -> "rougeL 41.2 · exact_match 30.0" (first task's metrics, at most three)
    parts = []
    for per_task in metrics.values():
        for metric, value in list(per_task.items())[:3]:
            parts.append(f"{metric} {value:.4g}")
        break
    return " · ".join(parts) or "-"


@app.command("list")
def list_(
    task: TaskOpt = None,
    base: Annotated[Optional[str], typer.Option("--base", help="Only experts of this base model.")] = None,
    kind: Annotated[Optional[str], typer.Option("--kind", help="sparse, block-sparse, lora, full-delta or merged.")] = None,
    tag: Annotated[Optional[str], typer.Option("--tag", help="Only experts with this tag.")] = None,
    where: Annotated[Optional[str], typer.Option("--where", help="Filter, e.g. 'rougeL>=30, keep_ratio<0.1'.")] = None,
    sort: Annotated[Optional[str], typer.Option("--sort", help="Field or metric to sort by; '-' prefix for descending.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many rows.")] = 50,
    json_: JsonOpt = False,
    catalog: CatalogOpt = None,
) -> None:
    """List experts in the catalog."""
    rows = open_catalog(catalog).list(task=task, base=base, kind=kind, tag=tag, where=where, sort=sort, limit=limit)
    if json_:
        print_json([r.to_dict() for r in rows])
        return
    if not rows:
        console.print("No experts match.", style="dim")
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in ("expert", "kind", "task", "base", "keep", "nnz", "size", "metrics", "created"):
        table.add_column(col, justify="right" if col in ("keep", "nnz", "size") else "left")
    for r in rows:
        table.add_row(
            r.ref,
            r.kind,
            r.task,
            r.base_model,
            "-" if r.keep_ratio is None else f"{r.keep_ratio:g}",
            f"{r.nnz:,}",
            human_bytes(r.bytes),
            _metric_summary(r.metrics),
            str(r.created_at)[:16],
        )
    console.print(table)


@app.command()
def show(ref: RefArg, json_: JsonOpt = False, catalog: CatalogOpt = None) -> None:
    """Show one expert: metadata, per-layer nnz, metrics and lineage."""
    from hubtool.format.header import read_header

    cat = open_catalog(catalog)
    rec = cat.get(ref)
    header = read_header(cat.blob_path(rec))
    lineage = cat.lineage(rec.ref)
    info = rec.to_dict() | {"weights": header["weights"], "lineage": lineage}
    if json_:
        print_json(info)
        return
    from rich.table import Table

    console.print(f"[bold]{rec.ref}[/]  {rec.kind} expert for task [cyan]{rec.task}[/]")
    facts = [
        ("base model", f"{rec.base_model}" + (f" ({rec.base_revision})" if rec.base_revision else "")),
        ("targets", rec.targets or "-"),
        ("keep ratio", "-" if rec.keep_ratio is None else f"{rec.keep_ratio:g}"),
        ("nnz", f"{rec.nnz:,}"),
        ("size", human_bytes(rec.bytes)),
        ("sha256", rec.sha256),
        ("created", str(rec.created_at)),
        ("tags", ", ".join(rec.tags) or "-"),
    ]
    if rec.hub_repo:
        facts.append(("hub", f"{rec.hub_repo}@{rec.hub_commit}"))
    for key, value in facts:
        console.print(f"  [dim]{key:>11}[/] {value}", highlight=False)
    if rec.metrics:
        console.print("[bold]metrics[/]")
        for task_name, per_task in rec.metrics.items():
            vals = ", ".join(f"{m} {v:.4g}" for m, v in per_task.items())
            console.print(f"  {task_name}: {vals}", highlight=False)
    if lineage.get("parents") or lineage.get("children"):
        console.print("[bold]lineage[/]")
        for p in lineage.get("parents", []):
            console.print(f"  parent  {p}", highlight=False)
        for c in lineage.get("children", []):
            console.print(f"  child   {c}", highlight=False)
    table = Table(box=None, header_style="bold", title=None)
    for col in ("weight", "shape", "nnz", "density", "encoding"):
        table.add_column(col, justify="left" if col in ("weight", "encoding") else "right")
    for weight, t in header["weights"].items():
        rows, cols = t["shape"]
        table.add_row(weight, f"{rows}×{cols}", f"{t['nnz']:,}", f"{t['nnz'] / (rows * cols):.4f}", t.get("encoding", "-"))
    console.print(table)


@app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(help="A packed expert (.safetensors) or a PEFT adapter folder.")],
    name: NameOpt = None,
    task: TaskOpt = None,
    tag: Annotated[Optional[list[str]], typer.Option("--tag", help="Tag to attach (repeatable).")] = None,
    catalog: CatalogOpt = None,
) -> None:
    """Import a packed expert file or a PEFT adapter folder (LoRA, SHiRA) into the catalog."""
    from hubtool.api import import_expert

    rec = import_expert(path, name=name, task=task, tags=tag or (), catalog=catalog)
    console.print(f"Imported [bold]{rec.ref}[/] ({rec.kind}, task {rec.task}, {rec.nnz:,} entries, {human_bytes(rec.bytes)})")


@app.command()
def export(
    ref: RefArg,
    out: Annotated[Path, typer.Option("--out", help="Output folder (peft) or file (hubtool).")],
    fmt: Annotated[str, typer.Option("--format", help="peft (a PeftModel folder) or hubtool (the packed file).")] = "peft",
    catalog: CatalogOpt = None,
) -> None:
    """Export an expert as a PEFT adapter folder or as its packed file."""
    from hubtool.api import export_expert

    where = export_expert(ref, out, fmt=fmt, catalog=catalog)
    console.print(f"Exported [bold]{ref}[/] to {where}")


@app.command()
def rm(ref: RefArg, yes: YesOpt = False, catalog: CatalogOpt = None) -> None:
    """Remove an expert version (its blob goes when nothing else uses it)."""
    cat = open_catalog(catalog)
    rec = cat.get(ref)
    if not yes and not typer.confirm(f"Remove {rec.ref}?"):
        raise typer.Exit(1)
    cat.remove(rec.ref)
    console.print(f"Removed [bold]{rec.ref}[/]")


@app.command()
def alias(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION (or NAME for the latest) the alias should point to.")],
    alias_name: Annotated[str, typer.Argument(metavar="ALIAS", help="Alias name, e.g. best or prod.")],
    catalog: CatalogOpt = None,
) -> None:
    """Point NAME@ALIAS at a version (moves it if it exists)."""
    cat = open_catalog(catalog)
    rec = cat.get(ref)
    cat.alias(rec.name, alias_name, rec.version)
    console.print(f"{rec.name}@{alias_name} → {rec.ref}")


@app.command()
def verify(json_: JsonOpt = False, catalog: CatalogOpt = None) -> None:
    """Re-hash every blob; report mismatches, missing blobs and orphan files."""
    report = open_catalog(catalog).verify()
    data = report if isinstance(report, dict) else report.to_dict()
    if json_:
        print_json(data)
    else:
        console.print(f"checked {data.get('checked', 0)} blobs")
        for key in ("mismatched", "missing", "orphans"):
            for item in data.get(key, []):
                console.print(f"  [red]{key[:-1] if key.endswith('s') else key}[/] {item}", highlight=False)
    if data.get("mismatched") or data.get("missing"):
        raise typer.Exit(1)
    if not json_:
        console.print("[green]ok[/]")
