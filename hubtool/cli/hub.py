"""Sharing through a Hub: `hub push` and `hub pull` (huggingface_hub's HfApi; imported inside the commands)."""

from __future__ import annotations

from typing import Annotated

import typer

from hubtool.cli import app
from hubtool.cli._common import CatalogOpt, JsonOpt, TasksOpt, console, err_console, esc, print_json

PANEL = "Share"

EndpointOpt = Annotated[
    str | None,
    typer.Option(
        "--endpoint", help="Hub URL, e.g. a `hub serve`. Default: $HF_ENDPOINT, else huggingface.co."
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="Hub token. Default: $HF_TOKEN, else the stored login (hf auth login). Never printed or stored.",
        show_default=False,
    ),
]

PUSH_HELP = """Push an expert, a composed model folder or a library of experts to a Hub repo.

    hub push qa@3 --repo org/qa            one expert: packed file, PEFT adapter,
                                           hubtool.json (its record), model card
    hub push merged/ --repo org/merged     a model folder as it is (hub compose --out)
    hub push --library org/lib --tasks qa  many experts, one repo (experts/, an index)

Pushing what is already there makes no new commit. Works with the Hugging Face
Hub and with `hub serve` (--endpoint or HF_ENDPOINT).
"""


@app.command(rich_help_panel=PANEL, help=PUSH_HELP)
def push(
    target: Annotated[
        str | None,
        typer.Argument(help="Expert (NAME, NAME@VERSION, NAME@ALIAS) or a model folder.", show_default=False),
    ] = None,
    repo: Annotated[
        str | None,
        typer.Option("--repo", help="Repo ORG/NAME (an expert's default: its name, in your namespace)."),
    ] = None,
    library: Annotated[
        str | None,
        typer.Option("--library", help="Publish --tasks / --experts as one library repo ORG/NAME."),
    ] = None,
    tasks: TasksOpt = None,
    experts: Annotated[
        str | None, typer.Option("--experts", help="Library: experts NAME[@VERSION], comma-separated.")
    ] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the repo private.")] = False,
    revision: Annotated[
        str | None, typer.Option("--revision", help="Branch to commit to (created if needed). Default: main.")
    ] = None,
    message: Annotated[str | None, typer.Option("--message", "-m", help="Commit message.")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Also delete the repo's files that no earlier push of this kind wrote.")
    ] = False,
    endpoint: EndpointOpt = None,
    token: TokenOpt = None,
    json_: JsonOpt = False,
    catalog: CatalogOpt = None,
) -> None:
    from hubtool.errors import HubError
    from hubtool.hub.client import check_repo_id

    if library is not None and repo is not None:
        raise HubError("push: --library names the repo already; drop --repo")
    for value, what in ((repo, "--repo"), (library, "--library")):
        if value is not None:
            check_repo_id(value, what)  # before anything is read or built
    from hubtool.hub.push import push as run

    result = run(
        target, repo=library or repo, library=library is not None, tasks=tasks, experts=experts, private=private,
        revision=revision, message=message, endpoint=endpoint, token=token, catalog=catalog, force=force,
    )  # fmt: skip
    if json_:
        print_json(result.to_dict())
        return
    for note in result.notes:
        err_console.print(f"[yellow]Note:[/] {esc(note)}", highlight=False)
    what = ", ".join(result.experts) if result.experts else str(target)
    if len(result.experts) > 3:
        what = f"{len(result.experts)} experts"
    if result.changed:
        console.print(
            f"Pushed [bold]{esc(what)}[/] to {esc(result.url)} ({esc(result.revision)}, commit {result.commit[:12]})",
            highlight=False,
        )
    else:
        console.print(
            f"{esc(result.url)} already holds [bold]{esc(what)}[/] ({esc(result.revision)}, commit "
            f"{result.commit[:12]}); nothing to commit",
            highlight=False,
        )


PULL_HELP = """Pull the expert(s) of a Hub repo into the local catalog.

    hub pull org/qa                   an expert repo (hub push NAME)
    hub pull org/lib@v1 --expert qa   one expert of a library, at a tag or commit
    hub pull qa@3                     a catalog row's blob, from the Hub repo the row
                                      was pushed to (a shared catalog, another disk)

Each file is checked against its record's sha256 and the format before it is
registered; an expert already present (same name and sha256) is not added again.
"""


@app.command(rich_help_panel=PANEL, help=PULL_HELP)
def pull(
    repo: Annotated[str, typer.Argument(help="Repo ORG/NAME, optionally @REVISION (branch, tag or commit).")],
    expert: Annotated[
        str | None, typer.Option("--expert", help="From a library: this expert only (NAME or NAME@VERSION).")
    ] = None,
    endpoint: EndpointOpt = None,
    token: TokenOpt = None,
    json_: JsonOpt = False,
    catalog: CatalogOpt = None,
) -> None:
    import warnings

    if "/" not in repo and expert is None and _pull_row(repo, endpoint, token, json_, catalog):
        return
    from hubtool.hub.client import split_repo

    split_repo(repo)  # a bad id fails before the catalog is opened
    from hubtool.hub.pull import pull as run

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the result carries them; printed once below
        result = run(repo, expert=expert, endpoint=endpoint, token=token, catalog=catalog)
    if json_:
        print_json(result.to_dict())
        return
    for message in result.warnings:
        err_console.print(f"[yellow]Warning:[/] {esc(message)}", highlight=False)
    where = f"{result.repo_id}@{result.commit[:12]}"
    for rec in result.registered:
        origin = result.origins.get(rec.ref)
        was = f", {esc(origin)} there" if origin and origin != rec.ref else ""
        console.print(
            f"Pulled [bold]{rec.ref}[/] from {esc(where)} ({esc(rec.kind)}, task {esc(rec.task)}{was})",
            highlight=False,
        )
    for rec in result.present:
        console.print(
            f"{rec.ref} is already in the catalog (same sha256); nothing registered", highlight=False
        )


def _pull_row(ref: str, endpoint: str | None, token: str | None, json_: bool, catalog: str | None) -> bool:
    """`hub pull NAME@VERSION`: when `ref` is a row of the catalog, fetch its blob (True); else False, and
    `ref` is a repo of the token's own namespace."""
    from hubtool.cli._common import open_catalog
    from hubtool.errors import HubError, NotFoundError

    cat = open_catalog(catalog)
    try:
        cat.get(ref)
    except NotFoundError:
        return False
    except HubError:  # not a ref at all ("a@b@c"): let the repo parser say what is wrong
        return False
    from hubtool.hub.pull import fetch_row

    rec, fetched = fetch_row(ref, endpoint=endpoint, token=token, catalog=cat)
    path = cat.blob_path(rec, fetch=False)
    if json_:
        print_json({"ref": rec.ref, "fetched": fetched, "blob": str(path), "hub_repo": rec.hub_repo,
                    "hub_commit": rec.hub_commit})  # fmt: skip
    elif fetched:
        console.print(f"Fetched [bold]{rec.ref}[/] from {esc(rec.hub_repo)}@{rec.hub_commit[:12]} into {esc(path)}",
                      highlight=False)  # fmt: skip
    else:
        console.print(f"{rec.ref} is here already ({esc(path)}); nothing fetched", highlight=False)
    return True
