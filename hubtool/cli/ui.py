"""`hub ui`: the catalog's web pages on this machine, read-only (Starlette, Jinja2 and uvicorn imported only
when it runs)."""

from __future__ import annotations

from typing import Annotated

import typer

from hubtool.cli import app
from hubtool.cli._common import CatalogOpt

PANEL = "Catalog"
PORT = 8920  # hubtool.ui.app.PORT (not imported here: `hub --help` stays free of the server's modules)

UI_HELP = f"""Browse the catalog in a web browser (read-only, on 127.0.0.1).

The experts (filters, --where/--sort), each expert (metrics against the base,
versions, lineage, density per layer) and the tasks with their leaderboards:

    hub ui                        then open http://127.0.0.1:{PORT}/_/
    hub ui --catalog postgresql+psycopg://host/hub --port 9000

`hub serve --catalog URL` serves the same pages beside the Hub API (docs/ui.md).
"""


@app.command(rich_help_panel=PANEL, help=UI_HELP)
def ui(
    catalog: CatalogOpt = None,
    port: Annotated[
        int, typer.Option("--port", help="TCP port on 127.0.0.1 (0: any free port).", min=0, max=65535)
    ] = PORT,
) -> None:
    from hubtool.extras import need

    need("server", "hub ui")
    from hubtool.ui.app import serve

    serve(catalog, port=port)
