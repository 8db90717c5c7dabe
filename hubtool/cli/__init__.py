"""The `hub` command line: a thin Typer layer over the library API (hubtool.Catalog, hubtool.train, ...).

One module per noun registers its commands on `app`; `main` formats every error the same way.
"""

from __future__ import annotations

import os
import sys

import typer

app = typer.Typer(
    name="hub",
    help="hubtool: train, store, find, merge and share sparse parameter-efficient experts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    """hubtool: train, store, find, merge and share sparse parameter-efficient experts."""
    if debug:
        os.environ["HUB_DEBUG"] = "1"


# Each module registers its commands on `app` at import (cheap: no torch, no SQLAlchemy).
# Registration order is `hub --help` order: the data flow, training first.
from hubtool.cli import train as _train  # noqa: F401, I001
from hubtool.cli import compose as _compose  # noqa: F401
from hubtool.cli import explore as _explore  # noqa: F401
from hubtool.cli import catalog as _catalog  # noqa: F401
from hubtool.cli import ui as _ui  # noqa: F401
from hubtool.cli import serve as _serve  # noqa: F401
from hubtool.cli import hub as _hub  # noqa: F401
from hubtool.cli import experiment as _experiment  # noqa: F401


def main() -> None:
    """Run `hub`; every failure ends as one `Error: ...` line on stderr and a non-zero exit."""
    from hubtool.errors import HubError

    debug = "--debug" in sys.argv or os.environ.get("HUB_DEBUG") == "1"
    try:
        # standalone_mode=False hands usage errors to us instead of Typer's multi-line panel.
        code = app(prog_name="hub", standalone_mode=False)
    except typer.TyperException as err:  # Click's usage errors (bad option value, missing argument, ...)
        message = err.format_message()
        if not message.strip():  # bare `hub`: Typer has already printed the help
            sys.exit(err.exit_code)
        ctx = getattr(err, "ctx", None)
        # Exit 1 like every other user error (Click would say 2): exit 2 means a bug in hubtool, so a
        # script or the fuzzer can tell "you typed it wrong" from "we got it wrong".
        _fail(message + (f" (see '{ctx.command_path} --help')" if ctx is not None else ""), 1)
    except typer.Abort:
        _fail("aborted", 1)
    except HubError as err:
        if debug:
            raise
        _fail(str(err), err.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except OSError as err:
        # The file system refused a path the user gave (too long, permission denied, disk full, ...):
        # not a bug, and the error carries the path. Without one it is treated as a bug below.
        if debug or err.filename is None or err.strerror is None:
            if debug:
                raise
            _fail(f"{type(err).__name__}: {err} (run with --debug for the traceback)", 2)
        _fail(f"{_shorten(str(err.filename), 200)}: {err.strerror}", 1)
    except Exception as err:  # a bug, not a user error: still one line unless --debug
        if debug:
            raise
        _fail(f"{type(err).__name__}: {err} (run with --debug for the traceback)", 2)
    # A command that returns normally gives None; `raise typer.Exit(n)` and --help give their code.
    sys.exit(code if isinstance(code, int) else 0)


_MAX_MESSAGE = 2000  # characters: a 100 kB name in a message must not become a 100 kB line


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(message: str, code: int) -> None:
    from rich.markup import escape

    from hubtool.cli._common import err_console

    # One line even when the message wraps another tool's multi-line text; escaped, because a path
    # or name holding "[/x]" would otherwise be read as Rich markup (and crash the error printer).
    line = escape(_shorten(" ".join(message.split()), _MAX_MESSAGE))
    err_console.print(f"[bold red]Error:[/] {line}", highlight=False, soft_wrap=True)
    sys.exit(code)
