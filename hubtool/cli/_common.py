"""What every command shares: option aliases declared once, one console, one error format.

Nothing here imports torch or transformers: `hub --help` and `hub list` must stay fast.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Any

import typer
from rich.console import Console

from hubtool.errors import shown
from hubtool.fileio import human_bytes  # noqa: F401  (the CLI modules import it from here)

# Rich gives a pipe or a file 80 columns, and a table that does not fit cuts its cells ("classifi…"):
# there the consoles are made wide instead, so tables keep their natural width and logs stay readable
# and greppable. A terminal, or an explicit COLUMNS, keeps Rich's own width.
PIPE_WIDTH = 4096


def _console(stream: Any, *, stderr: bool = False) -> Console:
    isatty = getattr(stream, "isatty", None)
    wide = not (isatty is not None and isatty()) and not os.environ.get("COLUMNS")
    return Console(stderr=stderr, width=PIPE_WIDTH if wide else None)


console = _console(sys.stdout)
err_console = _console(sys.stderr, stderr=True)

# Shared option aliases (huggingface_hub's CLI style): one declaration, used by every command.
CatalogOpt = Annotated[
    str | None,
    typer.Option(
        "--catalog",
        envvar="HUB_CATALOG",
        help="Catalog URL (any SQLAlchemy URL). Default: $HUB_HOME/registry.db.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]
TaskOpt = Annotated[str | None, typer.Option("--task", help="Task name.")]
BaseOpt = Annotated[
    str | None, typer.Option("--base", help="Base model: embedded name, HF id or local folder.")
]
NameOpt = Annotated[
    str | None, typer.Option("--name", help="Expert name (default: from the file or the task).")
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
TrustRemoteCodeOpt = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code",
        help="Run Python code that a base model's config names (auto_map). Off: never run, never ask.",
    ),
]


# --- numeric options: the rules are hubtool.checks' (the library API applies the same ones) ----------


def _parser(kind: type, check: Any, **bounds: Any) -> Any:
    """A Typer `parser` for a numeric option: text -> int/float, then `check` (a hubtool.checks rule).
    A bad value is a usage error: "Invalid value for '--batch-size': 0: expected a whole number of at least 1"."""

    def parse(value: Any) -> Any:
        from hubtool.errors import HubError

        if isinstance(value, str):
            text = value.strip()
            try:
                value = int(text) if kind is int else float(text)
            except ValueError:  # also the int-str limit on a 5000-digit value
                raise typer.BadParameter(
                    f"expected {'a whole number' if kind is int else 'a number'}, got {shown(text, 40)}"
                ) from None
        try:
            return check(value, "", **bounds)
        except HubError as err:
            raise typer.BadParameter(str(err).strip()) from None

    parse.__name__ = kind.__name__  # Click shows the parser's name as the metavar type
    return parse


def count_option(*names: str, low: int = 1, **kw: Any) -> Any:
    """An option holding a whole number >= low (default 1)."""
    from hubtool import checks

    return typer.Option(*names, parser=_parser(int, checks.count, low=low), metavar="INT", **kw)


def number_option(*names: str, low: float | None = None, low_open: bool = False, high: float | None = None,
                  **kw: Any) -> Any:
    """An option holding a finite number, optionally bounded (see hubtool.checks.number)."""
    from hubtool import checks

    parse = _parser(float, checks.number, low=low, low_open=low_open, high=high)
    return typer.Option(*names, parser=parse, metavar="FLOAT", **kw)


def positive_option(*names: str, **kw: Any) -> Any:
    return number_option(*names, low=0.0, low_open=True, **kw)


def ratio_option(*names: str, **kw: Any) -> Any:
    """A fraction in (0, 1]: keep ratio, density."""
    return number_option(*names, low=0.0, low_open=True, high=1.0, **kw)


def seed_option(*names: str, **kw: Any) -> Any:
    from hubtool import checks

    return typer.Option(*names, parser=_parser(int, checks.count, low=0, high=checks.MAX_SEED), metavar="INT", **kw)


# Numeric options several commands share.
BatchSizeOpt = Annotated[int, count_option("--batch-size", help="Examples per forward pass.")]
MaxNewTokensOpt = Annotated[int, count_option("--max-new-tokens", help="Longest generated answer.")]
LimitOpt = Annotated[int | None, count_option("--limit", help="At most N examples.")]


TasksOpt = Annotated[
    str | None,
    typer.Option("--tasks", help="Tasks or categories, comma-separated, e.g. qa,xsum (see `hub tasks`)."),
]


def open_catalog(url: str | None):
    # Imported here so `hub --help` never pays for SQLAlchemy. A row pushed from another machine sharing
    # the catalog: its blob is fetched from its Hub repo on first use.
    from hubtool.hub.pull import hub_download
    from hubtool.registry import Catalog

    return Catalog(url, download=hub_download())


def resolve_tasks(cat: Any, value: str, *, with_experts: bool = True) -> list[str]:
    """A --tasks value, "qa,xsum", -> the sorted task names it means (Catalog.tasks_for on each item:
    a task stays itself, a category becomes its tasks)."""
    specs = [spec.strip() for spec in value.split(",") if spec.strip()]
    if not specs:
        fail(f"--tasks {value!r}: expected task names or categories, comma-separated")
    return sorted({task for spec in specs for task in cat.tasks_for(spec, with_experts=with_experts)})


def print_json(obj: Any) -> None:
    # Plain stdout (not Rich) so the output pipes cleanly into jq.
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def esc(value: object) -> str:
    """Text that came from a user or a file (paths, tasks, tags, base models) made safe to print with
    Rich markup on: "[/x]" in a tag would otherwise crash the printer, "[bold]" would vanish."""
    from rich.markup import escape

    return escape(str(value))


def fail(message: str) -> None:
    """Raise the one user-facing error type; `main` prints it on one line."""
    from hubtool.errors import HubError

    raise HubError(message)


# --- options generated from settings dataclasses (hubtool.sparse.config.setting) ------------------------


def setting_option(f: Any, annotation: Any) -> Any:
    """The Typer option of one setting field: its flag and help; numbers parsed and checked at parse time
    by the field's own rule (a usage error naming the option), text checked when the config is built."""
    import types
    import typing

    meta = f.metadata
    inner = [a for a in typing.get_args(annotation) if a is not type(None)] if isinstance(
        annotation, types.UnionType) else [annotation]  # fmt: skip
    kind = inner[0] if len(inner) == 1 else None
    if kind in (int, float) and meta.get("check") is not None:
        return typer.Option(meta["flag"], parser=_parser(kind, meta["check"]), metavar=kind.__name__.upper(),
                            help=meta["help"])  # fmt: skip
    return typer.Option(meta["flag"], help=meta["help"])


def setting_options(**groups: type) -> Any:
    """Decorator of a Typer command: each parameter named in `groups` (e.g. adapter=AdapterConfig) is
    replaced, in the command's signature, by one option per field of that dataclass that declares a flag
    (its default, help and rule: hubtool.sparse.config.setting); on a call those options are gathered,
    checked by their rules and built into the dataclass, passed to the command as that parameter. A field
    without a flag keeps its default. The other parameters stay declared by hand."""
    import dataclasses
    import functools
    import inspect
    import typing

    def decorate(func: Any) -> Any:
        signature = inspect.signature(func, eval_str=True)
        params: list[inspect.Parameter] = []
        owner: dict[str, tuple[str, Any]] = {}  # option parameter -> (group, field)
        for param in signature.parameters.values():
            cls = groups.get(param.name)
            if cls is None:
                params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY))
                continue
            hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                if not f.metadata.get("flag"):
                    continue
                if f.name in owner or f.name in signature.parameters:
                    raise TypeError(f"setting_options: two options named {f.name!r}")
                annotation = Annotated[hints[f.name], setting_option(f, hints[f.name])]
                params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                                annotation=annotation))  # fmt: skip
                owner[f.name] = (param.name, f)

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            from hubtool.sparse.config import checked

            values: dict[str, dict[str, Any]] = {group: {} for group in groups}
            for name, (group, f) in owner.items():
                values[group][f.name] = kwargs.pop(name)
            for group, cls in groups.items():
                kwargs[group] = checked(cls, values[group])
            return func(**kwargs)

        command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params if p.annotation is not inspect.Parameter.empty}
        del command.__wrapped__  # Typer reads the generated signature, not the function's own
        return command

    return decorate
