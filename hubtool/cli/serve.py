"""Sharing: `hub serve`, a Hugging Face Hub-compatible server (Starlette + uvicorn, imported only here)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hubtool.cli import app
from hubtool.hub.server import defaults  # stdlib only: neither Starlette nor uvicorn

PANEL = "Share"

SERVE_HELP = f"""Serve a Hugging Face Hub-compatible API for air-gapped teams.

The unmodified huggingface_hub client (hf, HfApi, hf_hub_download,
snapshot_download) and transformers (from_pretrained, push_to_hub) use it
with their default settings. Point them at it before Python starts:

    export HF_ENDPOINT=http://{defaults.HOST}:{defaults.PORT}
    export HF_TOKEN=<your token>     (or: HF_ENDPOINT=... hf auth login)

Token file: one '<user> <token>' line per user, '#' starts a comment;
re-read when it changes. Every token may read and write every repo;
without --public-read, reads need a token too.

Storage under --root: content-addressed blobs plus commits and refs per
repo (docs/hub.md). Large files from huggingface_hub clients travel through
Xet (the server's own CAS under /_xet) or, with Xet disabled, streamed LFS.

Web pages for the catalog (--catalog) are under /_/ (docs/ui.md); without a
token file's login in the browser they need --public-read.
"""


@app.command(rich_help_panel=PANEL, help=SERVE_HELP)
def serve(
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")
    ] = defaults.HOST,
    port: Annotated[int, typer.Option("--port", help="TCP port.", min=1, max=65535)] = defaults.PORT,
    root: Annotated[
        Path | None,
        typer.Option("--root", envvar="HUB_SERVE_ROOT", help="Storage folder. Default: $HUB_HOME/serve."),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            envvar="HUB_SERVE_TOKEN_FILE",
            help="File of '<user> <token>' lines (# comments). Without it nobody can write.",
        ),
    ] = None,
    public_read: Annotated[
        bool, typer.Option("--public-read", help="Let anyone read public repos without a token.")
    ] = False,
    log_level: Annotated[
        str, typer.Option("--log-level", help=" | ".join(defaults.LOG_LEVELS))
    ] = defaults.LOG_LEVEL,
    auth_burst: Annotated[
        int,
        typer.Option(
            "--auth-burst",
            min=0,
            help="Failed authentications a client may make at once before 429s (0: no limit).",
        ),
    ] = defaults.AUTH_BURST,
    auth_rate: Annotated[
        float,
        typer.Option("--auth-rate", min=0.001, help="Failed authentications per second after the burst."),
    ] = defaults.AUTH_RATE,
    max_commit_gib: Annotated[
        float,
        typer.Option("--max-commit-gib", min=0.000001, help="Largest commit body accepted (413 above)."),
    ] = defaults.MAX_COMMIT_BODY / 2**30,
    catalog: Annotated[
        str | None,
        typer.Option(
            "--catalog",
            envvar="HUB_CATALOG",
            help="Catalog whose pages /_/ shows (read-only). Default: $HUB_HOME/registry.db.",
        ),
    ] = None,
    check_root: Annotated[
        bool,
        typer.Option(
            "--check-root",
            help="Check the root's Xet store instead of serving (every xorb re-hashed, every file resolved, "
            "orphans and temp files listed), then exit: 1 if a problem remains.",
        ),
    ] = False,
    repair: Annotated[
        bool,
        typer.Option("--repair", help="With --check-root: remove the orphans and temp files it lists."),
    ] = False,
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            min=0,
            help="With --check-root: seconds an orphan or temp file is spared "
            "(an upload to a running server may be in flight).",
        ),
    ] = 600.0,
) -> None:
    from hubtool.errors import HubError
    from hubtool.paths import hub_home

    if repair and not check_root:
        raise typer.BadParameter("--repair: only with --check-root")
    if check_root:
        return _check_root(root or hub_home() / "serve", repair=repair, grace=grace)

    if log_level not in defaults.LOG_LEVELS:
        raise typer.BadParameter(f"--log-level: expected one of {', '.join(defaults.LOG_LEVELS)}")
    if token_file is not None and not token_file.is_file():
        raise HubError(f"--token-file {token_file}: no such file")
    from hubtool.extras import need

    need("server", "hub serve")
    from hubtool.hub.server import run
    from hubtool.ui.pages import CatalogPages
    from hubtool.ui.view import CatalogView

    run(
        root=root or hub_home() / "serve",
        host=host,
        port=port,
        token_file=token_file,
        public_read=public_read,
        log_level=log_level,
        auth_burst=auth_burst,
        auth_rate=auth_rate,
        max_commit_bytes=int(max_commit_gib * 2**30),
        # the catalog is opened on the first page asked for: a server nobody browses never touches it
        extra_routes=CatalogPages(CatalogView(catalog)).routes(),
    )


def _check_root(root: Path, *, repair: bool, grace: float) -> None:
    """`hub serve --check-root`: the Xet store's full check (server/xet/store.py, XetStore.check)."""
    from hubtool.cli._common import console, fail
    from hubtool.errors import HubError
    from hubtool.extras import need

    if not (root / "repos").is_dir():
        raise HubError(f"--root {root}: not a `hub serve` root (no repos/ folder)")
    need("server", "hub serve --check-root")
    from hubtool.hub.server.storage import Storage
    from hubtool.hub.server.xet.store import XetStore

    report = XetStore(Storage(root, clean_tmp=False)).check(repair=repair, grace=grace)
    console.print(f"checked {report.xorbs} xorbs, {report.files} Xet files", highlight=False)
    for kind, items in (("bad", report.bad), ("dangling", report.dangling), ("orphan", report.orphans),
                        ("temp", report.temp), ("index", report.stale_index), ("recent", report.recent),
                        ("removed", report.removed)):  # fmt: skip
        for item in items:
            console.print(f"  {kind:<8} {item}", highlight=False, markup=False, soft_wrap=True)
    if report.freed_bytes:
        console.print(f"freed {report.freed_bytes} bytes of xorbs", highlight=False)
    if not report.ok:
        fix = "" if repair or report.bad or report.dangling else "; --repair removes the leftovers"
        fail(f"the Xet store of {root} has problems (see the list above){fix}")
    console.print("ok")
