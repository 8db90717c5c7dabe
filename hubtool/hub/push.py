"""`hub push`: an expert, a composed model folder or a library of experts into one Hub repo.

    from hubtool import push
    push("qa@3", repo="org/qa")                      # one expert
    push("merged/", repo="org/merged")               # a composed model folder, as it is
    push(repo="org/qa-library", library=True, tasks="qa")   # many experts, one repo

One expert's repo holds:
  <name>.safetensors                  the packed file, byte for byte the catalog's blob
  adapter_config.json,                a PEFT export (SHiRA for sparse / block-sparse, LoRA for lora), so
  adapter_model.safetensors           PeftModel.from_pretrained(base, "org/qa") works from the Hub; left
                                      out, with a note in the card, for deltas PEFT cannot hold (full)
  hubtool.json                        the catalog record (ExpertRecord.to_dict without the local fields
                                      blob, aliases, hub_repo, hub_commit) plus category, lineage, the
                                      file's name, and the PEFT export's sidecar (format, weights_sha256,
                                      expert, weights: what `hub import` of a downloaded folder reads)
  README.md                           the model card (hubtool.hub.card)
A library: experts/<name>-v<version>.safetensors, hubtool_library.json ({"experts": [record, ...]}), a card.

Everything goes up through huggingface_hub's HfApi: create_repo(exist_ok=True), then one create_commit.
Large files never travel base64 inside the commit body: they are uploaded first (preupload_lfs_files:
through Xet where the Hub offers it and hf_xet is installed, else streamed LFS), and a Hub that asks for a
file over MAX_INLINE_BYTES inline ("regular" upload mode) is refused before anything is committed.
The client asks the server for the oid of every path first and leaves out unchanged files, and makes
no commit at all when nothing changed; the files are built deterministically (sorted keys, no times of
the push) so pushing the same expert again changes nothing. Files an earlier push of the same kind wrote
that this one does not (an old expert's file, a PEFT export that no longer applies, a library's dropped
expert, a model's old shards) are deleted in the same commit; what that push wrote is read from the
records it left (hubtool.json, hubtool_library.json, a model's index). Other files this push would leave
stale (a user's own weights/model.safetensors, a composed model in the repo an expert goes to) make it
refuse, unless force=True (`--force`) deletes them. The repo id and the commit go into the catalog
(Catalog.set_hub).
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hubtool import checks
from hubtool.errors import HubError, NotFoundError
from hubtool.fileio import crash_point
from hubtool.hub.client import check_repo_id, check_revision, hub_errors, make_api, quiet_client
from hubtool.hub.layout import (
    EXPERT_FORMAT,
    HUB_FORMAT_VERSION,
    LIBRARY_FILE,
    LIBRARY_FOLDER,
    LIBRARY_FORMAT,
    PEFT_FILES,
    RECORD_FILE,
)

# Record fields that describe this machine's catalog, not the expert: never pushed.
_LOCAL_FIELDS = ("blob", "aliases", "hub_repo", "hub_commit")
# Paths an expert or library push owns: what an earlier push left there and this one doesn't write goes.
_MANAGED = ("*.safetensors", "*.safetensors.index.json", f"{LIBRARY_FOLDER}/*", "adapter_config.json",
            RECORD_FILE, LIBRARY_FILE, "hubtool_recipe.yml")  # fmt: skip
# A model folder push replaces weights and hubtool files; other files of the repo (a LICENSE) stay.
_MANAGED_MODEL = (*_MANAGED, "*.bin", "*.pt", "*.pth", "*.gguf")
# The largest file a push lets a Hub take inline (base64 in the commit body): the Hub's own LFS threshold.
MAX_INLINE_BYTES = 10 * 1024 * 1024


@dataclass
class PushResult:
    repo_id: str
    commit: str  # the head after the push (the earlier head when nothing changed)
    changed: bool  # False: every file was already there, no commit was made
    url: str
    revision: str = "main"
    files: list[str] = field(default_factory=list)  # what the repo holds from this push
    deleted: list[str] = field(default_factory=list)  # files of an earlier push removed
    experts: list[str] = field(default_factory=list)  # refs pushed (none for a model folder)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def push(
    target: str | os.PathLike | None = None,
    *,
    repo: str | None = None,
    library: bool = False,
    tasks: str | list[str] | None = None,
    experts: str | list[str] | None = None,
    private: bool = False,
    revision: str | None = None,
    message: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    catalog: Any = None,
    force: bool = False,
) -> PushResult:
    """Push an expert ref ("qa", "qa@3"), a model folder (an existing directory), or with library=True
    the experts that `tasks` / `experts` select into `repo`. `token`/`endpoint` None: HF_TOKEN / the
    stored login and HF_ENDPOINT, as the HF tools do. `force`: also delete the repo's files that no
    earlier push of the same kind wrote (without it such files make the push refuse)."""
    common = {
        "private": private,
        "revision": revision,
        "message": message,
        "endpoint": endpoint,
        "token": token,
        "force": force,
    }
    if library:
        if target is not None:
            raise HubError("push --library: give the experts with --tasks or --experts, not a NAME or DIR")
        if repo is None:
            raise HubError("push --library: give the repo to publish into")
        return push_library(repo, tasks=tasks, experts=experts, catalog=catalog, **common)
    if tasks is not None or experts is not None:
        raise HubError("push: --tasks and --experts select the experts of a library; add --library REPO")
    if target is None:
        raise HubError("push: give an expert (NAME or NAME@VERSION) or a model folder")
    if Path(target).expanduser().is_dir():
        if repo is None:
            raise HubError(f"push {target}: a model folder needs --repo ORG/NAME")
        return push_folder(target, repo, **common)
    return push_expert(str(target), repo, catalog=catalog, **common)


# --- one expert -------------------------------------------------------------------------------------------


def push_expert(
    ref: str,
    repo: str | None = None,
    *,
    private: bool = False,
    revision: str | None = None,
    message: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    catalog: Any = None,
    force: bool = False,
) -> PushResult:
    """Push one catalog expert; `repo` defaults to its name in the token's own namespace."""
    _check_target(repo, revision)
    cat = _catalog(catalog)
    rec = cat.get(ref)
    repo = repo or check_repo_id(rec.name, f"repo (from the expert name {rec.name!r})")
    with _staging() as stage:
        record, notes = stage_expert(cat, rec, stage)

        def card(repo_id: str) -> str:
            from hubtool.hub.card import expert_card

            return expert_card(
                record, repo_id=repo_id, peft_format=record.get("peft"), note=record.get("peft_note")
            )

        result = _commit(
            stage,
            repo,
            card=card,
            managed=_MANAGED,
            kind="expert",
            message=message or f"hub push {rec.ref}",
            what=f"pushing {rec.ref}",
            private=private,
            revision=revision,
            endpoint=endpoint,
            token=token,
            force=force,
        )
    result.experts, result.notes = [rec.ref], notes
    cat.set_hub(rec.ref, result.repo_id, result.commit)
    return result


def stage_expert(cat: Any, rec: Any, folder: Path) -> tuple[dict[str, Any], list[str]]:
    """Write an expert's repo files (all but the card) into `folder`; (its hubtool.json record, notes)."""
    from hubtool.registry.blobs import copy_verified

    file = f"{rec.name}.safetensors"
    _check_name(rec)
    copy_verified(cat.blob_path(rec), folder / file, rec.sha256, rec.ref)
    record = pushed_record(cat, rec, file)
    peft_format, sidecar, note = _peft_export(cat, rec, folder)
    notes = []
    if peft_format is None:
        record["peft_note"] = note
        notes.append(f"no PEFT adapter in the repo: {note}")
    doc = {**(sidecar or {}), **record, "peft": peft_format}
    _write_json(folder / RECORD_FILE, doc)
    return doc, notes


def pushed_record(cat: Any, rec: Any, file: str) -> dict[str, Any]:
    """What the Hub learns of a catalog version: its record without this machine's fields, plus the task's
    category and description, the lineage edges to its parents and the packed file's name in the repo."""
    record = {k: v for k, v in rec.to_dict().items() if k not in _LOCAL_FIELDS}
    record["category"] = cat.category_of(rec.task)
    try:
        task = cat.get_task(rec.task)
        record["task_info"] = {"description": task.description, "category": task.category,
                               "tags": sorted(task.tags), "sizes": dict(sorted(task.sizes.items()))}  # fmt: skip
    except NotFoundError:
        pass
    record["lineage"] = {
        "parents": [{k: p[k] for k in ("ref", "role", "weight")} for p in cat.lineage(rec.ref)["parents"]]
    }
    record["hub_format"], record["hub_format_version"] = EXPERT_FORMAT, HUB_FORMAT_VERSION
    record["file"] = file
    return record


def _peft_export(cat: Any, rec: Any, folder: Path) -> tuple[str | None, dict | None, str | None]:
    """(PEFT format, the export's sidecar, None), or (None, None, why not) when PEFT cannot load it."""
    from hubtool.format.header import read_header

    deltas = {w["delta"] for w in read_header(cat.blob_path(rec))["weights"].values()}
    if "full" in deltas:
        return (
            None,
            None,
            "PEFT has no adapter type that holds a full weight delta; `hub pull` and apply_expert do",
        )
    if "lora" in deltas and deltas != {"lora"}:
        return None, None, "it mixes LoRA and sparse deltas, which no single PEFT adapter type holds"
    from hubtool.hub.card import base_hub_id
    from hubtool.interop.peft import SIDECAR_FILE, export_peft

    expert = cat.load(rec.ref)
    base = base_hub_id(rec.base_model) or rec.base_model
    formats = ["lora"] if deltas == {"lora"} else ["shira", "supertuning"]
    for i, fmt in enumerate(formats):
        out = folder / f".peft-{fmt}"
        try:
            export_peft(expert, out, base_model_name_or_path=base, format=fmt)
        except HubError:
            if i + 1 == len(formats):
                raise
            continue  # SHiRA cannot hold a layer this dense; Super-Tuning can
        for name in PEFT_FILES:
            os.replace(out / name, folder / name)
        sidecar = json.loads((out / SIDECAR_FILE).read_text())
        shutil.rmtree(out)
        return fmt, sidecar, None
    raise AssertionError("unreachable")


# --- a model folder -----------------------------------------------------------------------------------------


def push_folder(
    folder: str | os.PathLike,
    repo: str,
    *,
    private: bool = False,
    revision: str | None = None,
    message: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    force: bool = False,
) -> PushResult:
    """Upload a model folder as it is (a composed model: its card and recipe are in it). Hidden files and
    folders (.git, .cache) stay behind."""
    _check_target(repo, revision)
    folder = Path(folder).expanduser().absolute()
    if not folder.is_dir():
        raise HubError(f"{folder}: not a folder")
    if not _folder_files(folder):
        raise HubError(f"{folder}: no files to push")
    return _commit(
        folder,
        repo,
        card=None,
        managed=_MANAGED_MODEL,
        kind="model",
        message=message or f"hub push {folder.name}",
        what=f"pushing {folder}",
        private=private,
        revision=revision,
        endpoint=endpoint,
        token=token,
        force=force,
    )


# --- a library ------------------------------------------------------------------------------------------------


def push_library(
    repo: str,
    *,
    tasks: str | list[str] | None = None,
    experts: str | list[str] | None = None,
    private: bool = False,
    revision: str | None = None,
    message: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    catalog: Any = None,
    force: bool = False,
) -> PushResult:
    """Publish a set of experts into one repo: `tasks` (task names or categories: the latest version of
    each expert for them) and/or `experts` (refs)."""
    _check_target(repo, revision)
    cat = _catalog(catalog)
    records = select_experts(cat, tasks=tasks, experts=experts)
    with _staging() as stage:
        entries = []
        from hubtool.registry.blobs import copy_verified

        for rec in records:
            _check_name(rec)
            file = f"{LIBRARY_FOLDER}/{rec.name}-v{rec.version}.safetensors"
            copy_verified(cat.blob_path(rec), stage / file, rec.sha256, rec.ref)
            entries.append(pushed_record(cat, rec, file))
        _write_json(stage / LIBRARY_FILE, {"hub_format": LIBRARY_FORMAT, "hub_format_version": HUB_FORMAT_VERSION,
                                           "experts": entries})  # fmt: skip

        def card(repo_id: str) -> str:
            from hubtool.hub.card import library_card

            return library_card(entries, repo_id=repo_id)

        result = _commit(
            stage,
            repo,
            card=card,
            managed=_MANAGED,
            kind="library",
            message=message or f"hub push --library: {len(records)} experts",
            what=f"pushing a library of {len(records)} experts",
            private=private,
            revision=revision,
            endpoint=endpoint,
            token=token,
            force=force,
        )
    result.experts = [r.ref for r in records]
    for rec in records:
        cat.set_hub(rec.ref, result.repo_id, result.commit)
    return result


def select_experts(cat: Any, *, tasks: str | list[str] | None, experts: str | list[str] | None) -> list[Any]:
    """The library's experts, sorted by name and version: every `experts` ref, plus the latest version of
    each expert name whose tasks include one that `tasks` means (a task or a category)."""
    specs, refs = checks.items(tasks), checks.items(experts)
    if not specs and not refs:
        raise HubError(
            "push --library: select experts with --tasks TASKS (names or categories) or --experts REFS"
        )
    chosen = {}
    for ref in refs:
        rec = cat.get(ref)
        chosen[rec.ref] = rec
    if specs:
        names = sorted({t for spec in specs for t in cat.tasks_for(spec)})
        latest: dict[str, Any] = {}
        for rec in cat.list(tasks=names):
            if rec.name not in latest or rec.version > latest[rec.name].version:
                latest[rec.name] = rec
        if not latest:
            raise NotFoundError(
                f"push --library --tasks {','.join(specs)}: no experts for {', '.join(names)}"
            )
        chosen.update({rec.ref: rec for rec in latest.values()})
    return sorted(chosen.values(), key=lambda r: (r.name, r.version))


# --- the commit -------------------------------------------------------------------------------------------------


def _commit(
    folder: Path,
    repo: str,
    *,
    card: Any,
    managed: tuple[str, ...],
    kind: str,
    message: str,
    what: str,
    private: bool,
    revision: str | None,
    endpoint: str | None,
    token: str | None,
    force: bool = False,
) -> PushResult:
    """create_repo(exist_ok) -> the branch -> the card (it names the final repo id) -> one create_commit of
    every file in `folder`, deleting the managed files this one doesn't write that an earlier push of the
    same `kind` ("expert", "library", "model") wrote; any other such file: refused unless `force`."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    api = make_api(endpoint, token)
    errors = {"endpoint": endpoint, "token": token, "revision": revision}
    with quiet_client():
        with hub_errors(what, repo=repo, **errors):
            url = api.create_repo(repo, private=True if private else None, exist_ok=True)
        repo_id = url.repo_id
        with hub_errors(what, repo=repo_id, **errors):
            if revision and revision != "main":
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            info = api.repo_info(repo_id, revision=revision)
        if card is not None:
            (folder / "README.md").write_text(card(repo_id), encoding="utf-8")
        files = _folder_files(folder)
        remote = sorted(s.rfilename for s in (info.siblings or []))
        stale = [p for p in remote if p not in files and any(fnmatch.fnmatch(p, m) for m in managed)]
        if stale and not force:
            with hub_errors(what, repo=repo_id, **errors):
                owned = written_by_push(api, repo_id, info.sha, set(remote), kind)
            foreign = [p for p in stale if p not in owned]
            if foreign:
                more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
                raise HubError(
                    f"{what}: {repo_id} holds {', '.join(foreign[:3])}{more}, which no earlier `hub push` of "
                    f"{_KIND_WORDS[kind]} wrote there and this push would delete; push to another repo, or pass "
                    "--force to delete them"
                )
        additions = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(folder / p)) for p in files]
        operations = [*additions, *[CommitOperationDelete(path_in_repo=p) for p in stale]]
        with hub_errors(what, repo=repo_id, **errors):
            # Large files up first, streamed (Xet or LFS); create_commit then skips them.
            api.preupload_lfs_files(repo_id, additions=additions, revision=revision, free_memory=False)
        _refuse_inline(additions, what, api.endpoint)
        crash_point("push-commit")
        with hub_errors(what, repo=repo_id, **errors):
            commit = api.create_commit(
                repo_id, operations, commit_message=message, revision=revision, parent_commit=info.sha
            )
        crash_point("push-committed")
    return PushResult(
        repo_id=repo_id,
        commit=commit.oid,
        changed=commit.oid != info.sha,
        url=str(url),
        revision=revision or "main",
        files=files,
        deleted=stale if commit.oid != info.sha else [],
    )


def _refuse_inline(additions: list[Any], what: str, endpoint: str) -> None:
    """HubError if the Hub wants a changed file over MAX_INLINE_BYTES base64-encoded in the commit body."""
    for op in additions:
        size = op.upload_info.size
        if op._upload_mode == "regular" and size > MAX_INLINE_BYTES and op._remote_oid != op._local_oid:
            raise HubError(
                f"{what}: the Hub at {endpoint} asks for {op.path_in_repo} ({size} bytes) inline in the commit "
                f"(base64), not through Xet or LFS; hub push sends no file over {MAX_INLINE_BYTES} bytes that "
                "way: push to a Hub that takes large files through Xet or LFS (hub serve does)"
            )


_KIND_WORDS = {"expert": "an expert", "library": "a library", "model": "a model folder"}
_MODEL_INDEX = "model.safetensors.index.json"
_MAX_RECORD_BYTES = 64 << 20  # a record or index read back from the repo (a library of 10,000 experts fits)


def written_by_push(api: Any, repo_id: str, commit: str, remote: set[str], kind: str) -> set[str]:
    """The files of `repo_id` at `commit` that an earlier push of `kind` wrote, as the records it left
    say: an expert's hubtool.json (its packed file, the PEFT files when it names a PEFT format), a
    library's hubtool_library.json (its experts' files), a model folder's index (its shards; with a
    composed model's hubtool.json, the recipe too). A record that is absent, unreadable or of another
    kind owns nothing: its files are not this push's to delete."""
    index_file, recipe_file = _MODEL_INDEX, "hubtool_recipe.yml"  # merge.execute's INDEX, RECIPE_FILE
    def read(path: str) -> Any:
        if path not in remote:
            return None
        from hubtool.format import safejson
        from hubtool.paths import tmp_dir

        try:
            import tempfile

            tmp_dir().mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=tmp_dir(), prefix="push-record-") as folder:
                local = Path(api.hf_hub_download(repo_id, path, revision=commit, local_dir=folder))
                if local.stat().st_size > _MAX_RECORD_BYTES:
                    return None
                return safejson.loads(local.read_bytes(), f"{repo_id}/{path}")
        except HubError:  # not JSON, too deep: a record this push cannot trust owns nothing
            return None

    def files_of(*records: Any) -> set[str]:
        return {f for r in records if isinstance(r, dict) and isinstance(f := r.get("file"), str)}

    owned: set[str] = set()
    if kind == "expert":
        record = read(RECORD_FILE)
        if isinstance(record, dict) and "sha256" in record and files_of(record):
            owned |= {RECORD_FILE, *files_of(record)}
            if record.get("peft"):
                owned |= set(PEFT_FILES)
    elif kind == "library":
        doc = read(LIBRARY_FILE)
        if isinstance(doc, dict) and isinstance(doc.get("experts"), list):
            owned |= {LIBRARY_FILE, *files_of(*doc["experts"])}
    else:
        index = read(index_file)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if isinstance(weight_map, dict):
            owned |= {index_file, *(v for v in weight_map.values() if isinstance(v, str))}
        record = read(RECORD_FILE)
        if isinstance(record, dict) and record.get("hubtool") == "compose":
            owned |= {RECORD_FILE, recipe_file}
    return owned


def _folder_files(folder: Path) -> list[str]:
    """Relative posix paths of the regular files under `folder`, sorted; hidden parts (.git, .cache) skipped."""
    out = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        out.append(rel.as_posix())
    return sorted(out)


# --- small helpers ---------------------------------------------------------------------------------------------


def _check_target(repo: str | None, revision: str | None) -> None:
    """Before any work: the repo id and the branch must be ones the Hub accepts."""
    if repo is not None:
        check_repo_id(repo, "--repo")
    if revision is not None:
        check_revision(revision, "--revision")


def _check_name(rec: Any) -> None:
    from hubtool.registry.lookup import NAME

    if not NAME.fullmatch(rec.name):  # a row edited by hand must not become a path outside the repo
        raise HubError(f"{rec.ref}: catalog name {rec.name!r} is not a valid expert name; fix the row")


def _catalog(catalog: Any) -> Any:
    from hubtool.hub.pull import hub_download  # a row pushed from another machine: its blob, fetched
    from hubtool.registry import Catalog

    return Catalog.open(catalog, download=hub_download())


def _staging():
    """A temp folder beside the blob store ($HUB_HOME/tmp), removed afterwards; locked while in use, so
    after a kill `hub verify --repair` knows it for a leftover."""
    from hubtool.fileio import scratch_dir
    from hubtool.paths import tmp_dir

    return scratch_dir(tmp_dir(), "push-")


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n",
                    encoding="utf-8")  # fmt: skip
