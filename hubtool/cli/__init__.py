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
from hubtool.cli import catalog as _catalog  # noqa: E402,F401
from hubtool.cli import train as _train  # noqa: E402,F401


def main() -> None:
    from hubtool.errors import HubError

    debug = "--debug" in sys.argv or os.environ.get("HUB_DEBUG") == "1"
    try:
        app(prog_name="hub")
    except HubError as err:
        if debug:
            raise
        from hubtool.cli._common import err_console

        err_console.print(f"[bold red]Error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as err:  # a bug, not a user error: still one line unless --debug
        if debug:
            raise
        from hubtool.cli._common import err_console

        err_console.print(
            f"[bold red]Error:[/] {type(err).__name__}: {err} (run with --debug for the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2)
