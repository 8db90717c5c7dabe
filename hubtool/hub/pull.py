"""`hub pull`: experts from a Hub repo (one expert, or a library) into the local catalog.

    from hubtool import pull
    result = pull("org/qa")                          # the expert of an expert repo
    result = pull("org/qa-library@v1", expert="qa")  # one expert of a library, at a tag
    result.registered, result.present, result.warnings

The revision is resolved to its commit first, and every file is read at that commit, so the record and
the files belong together. Each packed file must hash to the sha256 its record names and pass the
format's full validation (read_header + unpack) before anything is registered. An expert keeps its
record (name, tasks, tags, metrics, config, lineage parents, description) and gets where it came from
(repo and commit: Catalog.set_hub); its version is the next one of that name in this catalog. An
expert already present (same name and sha256) is not registered again. A base model that does not
match this machine's is a warning here; applying the expert then fails on its fingerprints.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubtool.errors import FormatError, HubError, NotFoundError
from hubtool.hub.client import check_revision, hub_errors, make_api, quiet_client, split_repo
from hubtool.hub.layout import LIBRARY_FILE, RECORD_FILE
from hubtool.registry.blobs import Download, HubOrigin

_SAFE_PATH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")


@dataclass
class PullResult:
    repo_id: str
    revision: str  # as asked ("main" by default)
    commit: str  # what it resolved to
    registered: list[Any] = field(default_factory=list)  # ExpertRecords added to the catalog
    present: list[Any] = field(default_factory=list)  # ExpertRecords that were already there
    origins: dict[str, str] = field(default_factory=dict)  # local ref -> the ref it had where it was pushed
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "repo_id": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
            "registered": [r.ref for r in self.registered],
            "present": [r.ref for r in self.present],
            "origins": dict(self.origins),
            "warnings": list(self.warnings),
        }


def pull(
    repo: str,
    *,
    revision: str | None = None,
    expert: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    catalog: Any = None,
) -> PullResult:
    """Download and register the expert(s) of `repo` ("org/name" or "org/name@revision"); `expert` picks
    one of a library by name (its latest version there) or NAME@VERSION (the version it had when pushed)."""
    from hubtool.registry.lookup import parse_ref

    repo_id, spec_revision = split_repo(repo, "repo")
    if revision is not None and spec_revision is not None and revision != spec_revision:
        raise HubError(f"pull {repo}: the revision is given twice ({spec_revision!r} and {revision!r})")
    revision = revision or spec_revision
    if revision is not None:
        check_revision(revision)
    wanted = parse_ref(expert) if expert is not None else None
    cat = _catalog(catalog, endpoint, token)
    api = make_api(endpoint, token)
    what = f"pulling {repo_id}" + (f"@{revision}" if revision else "")
    errors = {"endpoint": endpoint, "token": token, "repo": repo_id, "revision": revision}

    from hubtool.fileio import crash_point, scratch_dir
    from hubtool.paths import tmp_dir

    # A scratch folder with a liveness lock: after a kill, `hub verify --repair` knows it is a leftover.
    with quiet_client(), scratch_dir(tmp_dir(), "pull-") as tmp:
        with hub_errors(what, **errors):
            info = api.repo_info(repo_id, revision=revision)
        commit = info.sha
        files = {s.rfilename for s in (info.siblings or [])}
        where = f"{repo_id}@{commit[:12]}"

        def download(paths: list[str]) -> Path:
            from huggingface_hub import snapshot_download

            with hub_errors(what, **{**errors, "revision": commit}):
                snapshot_download(repo_id, revision=commit, allow_patterns=paths, local_dir=tmp,
                                  endpoint=endpoint, token=token)  # fmt: skip
            return Path(tmp)

        entries = _entries(files, where, download)
        entries = _pick(entries, wanted, where)
        result = PullResult(repo_id=repo_id, revision=revision or "main", commit=commit)
        todo, absent = [], []
        for entry in entries:
            found = _present(cat, entry)
            if found is not None:
                result.present.append(found)
                result.origins[found.ref] = entry["ref"]
                if found.hub_repo is None:
                    cat.set_hub(found.ref, repo_id, commit)
                if not cat.blobs.exists(found.blob):  # a shared catalog's row, its blob on another disk
                    absent.append((found, entry))
            else:
                todo.append(entry)
        if absent:
            local = download(sorted({e["file"] for _, e in absent}))
            for found, entry in absent:
                _verify(local / entry["file"], entry, where)
                cat.blobs.put_verified(local / entry["file"], found.sha256, f"{found.ref} from {where}")
        if todo:
            local = download(sorted({e["file"] for e in todo}))
            for entry in todo:  # every file verified before anything is registered
                _verify(local / entry["file"], entry, where)
            for entry in todo:
                for message in _base_warnings(cat, entry):
                    if message not in result.warnings:
                        result.warnings.append(message)
                        warnings.warn(message, stacklevel=2)
            crash_point("pull-register")
            for entry in todo:
                rec = _register(cat, local / entry["file"], entry)
                rec = cat.set_hub(rec.ref, repo_id, commit)
                result.registered.append(rec)
                result.origins[rec.ref] = entry["ref"]
    return result


# --- what the repo holds ------------------------------------------------------------------------------------


def _entries(files: set[str], where: str, download: Any) -> list[dict[str, Any]]:
    """The expert records of the repo: hubtool_library.json's, or hubtool.json's one."""
    if LIBRARY_FILE in files:
        doc = _read_json(download([LIBRARY_FILE]) / LIBRARY_FILE, where)
        items = doc.get("experts") if isinstance(doc, dict) else None
        if not isinstance(items, list) or not items:
            raise HubError(
                f'{where}: {LIBRARY_FILE} lists no experts (expected {{"experts": [record, ...]}})'
            )
        from hubtool.hub.record import MAX_LIBRARY

        if len(items) > MAX_LIBRARY:
            raise HubError(f"{where}: {LIBRARY_FILE} lists {len(items):,} experts; at most {MAX_LIBRARY:,}")
    elif RECORD_FILE in files:
        doc = _read_json(download([RECORD_FILE]) / RECORD_FILE, where)
        if not isinstance(doc, dict) or not ("sha256" in doc and "file" in doc):
            if isinstance(doc, dict) and ("recipe" in doc or "experts" in doc):
                raise HubError(
                    f"{where} holds a composed model (its {RECORD_FILE} is the merge's provenance), not an "
                    "expert: load it with from_pretrained"
                )
            raise HubError(f"{where}: {RECORD_FILE} is not a hubtool expert record (no sha256 and file)")
        items = [doc]
    else:
        raise HubError(f"{where} holds no hubtool expert (no {RECORD_FILE} or {LIBRARY_FILE})")
    return _dedupe([_check_entry(item, files, where) for item in items])


def _check_entry(item: Any, files: set[str], where: str) -> dict[str, Any]:
    """One record, validated by hubtool.hub.record's model (types, sizes), its file in the repo."""
    from hubtool.hub.record import read_record

    entry = read_record(item, where)
    if entry["file"] not in files:
        raise HubError(f"{where}: expert {entry['name']!r}: its file {entry['file']} is not in the repo")
    return entry


def _dedupe(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (name, sha256): a library that lists the same expert many times registers it once
    (the first record of it wins)."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in entries:
        seen.setdefault((entry["name"], entry["sha256"]), entry)
    return list(seen.values())


def _pick(
    entries: list[dict[str, Any]], wanted: tuple[str, str | None] | None, where: str
) -> list[dict[str, Any]]:
    if wanted is None:
        return sorted(entries, key=lambda e: (e["name"], _version(e)))
    name, selector = wanted
    same = [e for e in entries if e["name"] == name]
    if selector is not None and selector != "latest":
        same = [e for e in same if str(e.get("version")) == selector]  # the version it had where pushed
    if not same:
        held = ", ".join(sorted({e["ref"] for e in entries}))
        label = name if selector is None else f"{name}@{selector}"
        raise NotFoundError(f"{where}: no expert {label} (it holds {held})")
    return [max(same, key=_version)]


def _version(entry: dict[str, Any]) -> int:
    version = entry.get("version")
    return version if isinstance(version, int) else 0


def _read_json(path: Path, where: str) -> Any:
    from hubtool.format import safejson

    try:
        data = path.read_bytes()
    except OSError as err:
        raise HubError(f"{where}: cannot read {path.name}: {err.strerror}") from None
    return safejson.loads(data, f"{where}: {path.name}")


# --- checking, registering -------------------------------------------------------------------------------------


def _present(cat: Any, entry: dict[str, Any]) -> Any | None:
    """This catalog's version of the same name and content, if there is one."""
    for rec in cat.list(where=f"name={entry['name']}"):
        if rec.sha256 == entry["sha256"]:
            return rec
    return None


def _verify(path: Path, entry: dict[str, Any], where: str) -> None:
    from hubtool.fileio import sha256_file
    from hubtool.format import unpack
    from hubtool.format.header import read_header

    if not path.is_file():
        raise HubError(f"{where}: {entry['file']} was not downloaded")
    got = sha256_file(path)
    if got != entry["sha256"]:
        raise HubError(
            f"{where}: checksum mismatch: {entry['file']} has sha256 {got[:16]}..., its record says "
            f"{entry['sha256'][:16]}...; the file changed after it was pushed (nothing was registered)"
        )
    try:
        read_header(path)
        unpack(path)
    except FormatError as err:
        message = str(err).replace(str(path), entry["file"])
        raise HubError(f"{where}: {entry['file']} is not a valid hubtool expert: {message}") from None


def _register(cat: Any, path: Path, entry: dict[str, Any]) -> Any:
    from hubtool.format.safejson import finite

    tasks = [t for t in (entry.get("tasks") or []) if isinstance(t, str) and t != entry["task"]]
    parents = [
        {"ref": p["ref"], "role": p.get("role") if isinstance(p.get("role"), str) else None,
         "weight": p.get("weight") if finite(p.get("weight")) else None}
        for p in ((entry.get("lineage") or {}).get("parents") or [])
        if isinstance(p, dict) and isinstance(p.get("ref"), str)
    ]
    rec = cat.register(
        path,
        name=entry["name"],
        task=entry["task"],
        tasks=tasks,
        tags=[t for t in (entry.get("tags") or []) if isinstance(t, str)],
        metrics=entry.get("metrics") or None,
        config=entry.get("config") or None,
        parents=parents,
        description=entry.get("description"),
    )
    _add_task(cat, entry)
    return rec


def _add_task(cat: Any, entry: dict[str, Any]) -> None:
    """A task this catalog has never heard of gets its row (category, description; no data), so
    `--tasks CATEGORY` finds the pulled expert. A task it knows keeps its own row."""
    info = entry.get("task_info") if isinstance(entry.get("task_info"), dict) else {}
    category = entry.get("category") or info.get("category")
    if not category or cat.category_of(entry["task"]) is not None:
        return
    try:
        cat.get_task(entry["task"])
        return
    except NotFoundError:
        pass
    try:
        cat.add_task(
            entry["task"],
            description=info.get("description"),
            tags=[t for t in info.get("tags") or [] if isinstance(t, str)],
            sizes={k: v for k, v in (info.get("sizes") or {}).items() if isinstance(v, int)},
            category=category,
        )
    except HubError:  # a category name this catalog refuses: the expert is registered all the same
        pass


def _base_warnings(cat: Any, entry: dict[str, Any]) -> list[str]:
    """Why the expert may not fit this machine's base model: the embedded model converted here has
    another revision, a local folder it names is not here, or this catalog's experts of the same base
    were trained on another revision."""
    from hubtool.models import EMBEDDED, MANIFEST, resolve_base
    from hubtool.paths import models_dir

    base, revision = entry.get("base_model"), entry.get("base_revision")
    ref = entry["ref"]
    if not isinstance(base, str) or not base:
        return [f"{ref}: its record names no base model"]
    out = []
    local_revision = None
    if base in EMBEDDED:
        if (models_dir() / base / MANIFEST).is_file():
            try:
                local_revision = resolve_base(base)[1]
            except HubError as err:
                out.append(f"{ref}: the local base model {base} cannot be checked: {err}")
    elif base.startswith(("/", "~", ".")) and not Path(base).expanduser().is_dir():
        out.append(
            f"{ref}: its base model {base} is not a folder on this machine; pass one with the same weights"
        )
    if local_revision and revision and local_revision != revision:
        out.append(
            f"{ref}: trained on {base} revision {revision}, but this machine's is {local_revision}; "
            "applying it will fail the fingerprint check"
        )
    elif revision:
        others = {
            r.base_revision for r in cat.list(base=base) if r.base_revision and r.sha256 != entry["sha256"]
        }
        if others and revision not in others:
            out.append(
                f"{ref}: trained on {base} revision {revision}, but this catalog's experts of {base} use "
                f"{', '.join(sorted(others))}"
            )
    return out


def _catalog(catalog: Any, endpoint: str | None = None, token: str | None = None) -> Any:
    if hasattr(catalog, "get"):
        return catalog
    from hubtool.registry import Catalog

    return Catalog(catalog, download=hub_download(endpoint, token))


# --- one blob, for a catalog row that is not local (the Hub blob store, `hub pull NAME@VERSION`) --------------


def download_blob(
    repo_id: str, commit: str, sha256: str, folder: Path, *, endpoint: str | None = None,
    token: str | None = None,
) -> Path:  # fmt: skip
    """Download the file of `repo_id` at `commit` whose content is `sha256` into `folder`; its path.

    The file is found by the LFS sha256 the server lists for it (repo_info with files metadata), else by the
    expert records the repo holds (hubtool.json, hubtool_library.json). The caller checks the bytes."""
    from hubtool.hub.client import check_repo_id

    check_repo_id(repo_id, "the row's hub_repo")
    check_revision(commit, "the row's hub_commit")
    api = make_api(endpoint, token)
    what = f"fetching blob {sha256[:12]} from {repo_id}@{commit[:12]}"
    errors = {"endpoint": endpoint, "token": token, "repo": repo_id, "revision": commit}
    with quiet_client():
        with hub_errors(what, **errors):
            info = api.repo_info(repo_id, revision=commit, files_metadata=True)
        siblings = info.siblings or []
        names = [s.rfilename for s in siblings if getattr(s, "lfs", None) and s.lfs.sha256 == sha256]
        if not names:  # a server that lists no LFS metadata: ask the records
            files = {s.rfilename for s in siblings}

            def fetch(paths: list[str]) -> Path:
                for p in paths:
                    with hub_errors(what, **errors):
                        api.hf_hub_download(repo_id, p, revision=commit, local_dir=folder / "records")
                return folder / "records"

            try:
                entries = _entries(files, f"{repo_id}@{commit[:12]}", fetch)
            except HubError:
                entries = []
            names = [e["file"] for e in entries if e["sha256"] == sha256]
        if not names:
            raise NotFoundError(f"{what}: the repo holds no file with that sha256 at that commit")
        name = min(names)
        if not _SAFE_PATH.fullmatch(name) or ".." in name.split("/"):
            raise HubError(f"{what}: the repo names it {name!r}, not a plain path inside the repo")
        with hub_errors(what, **errors):
            path = api.hf_hub_download(repo_id, name, revision=commit, local_dir=folder / "files")
    return Path(path)


def hub_download(endpoint: str | None = None, token: str | None = None) -> Download:
    """What a blob store is handed to fetch a row's blob from the Hub (registry.blobs.Download): the
    endpoint and token are huggingface_hub's, `endpoint`/`token` if given, else HF_ENDPOINT / HF_TOKEN /
    the stored login. Nothing is imported or contacted until a blob is missing."""

    def download(origin: HubOrigin, sha256: str, folder: Path) -> Path:
        return download_blob(origin.repo, origin.commit, sha256, folder, endpoint=endpoint, token=token)

    return download


def fetch_row(ref: str, *, endpoint: str | None = None, token: str | None = None, catalog: Any = None) -> Any:
    """`hub pull NAME@VERSION`: make a catalog row's blob local, from the Hub repo the row names, and
    check it. Returns (record, fetched): fetched False when the blob was here already."""
    cat = _catalog(catalog, endpoint, token)
    rec = cat.get(ref)
    if cat.blobs.exists(rec.blob):
        return rec, False
    if not rec.hub_repo or not rec.hub_commit:
        raise NotFoundError(
            f"{rec.ref}: its blob is not in {cat.blobs.root} and the row names no Hub repo to fetch it "
            "from (it was never pushed); run `hub verify`"
        )
    from hubtool.paths import tmp_dir
    from hubtool.registry.blobs import HubBlobStore

    store = cat.blobs
    if endpoint is not None or token is not None or getattr(store, "download", None) is None:
        # one like the catalog's (its folder, on its catalog's list) that downloads from the endpoint asked
        store = HubBlobStore(store.root, tmp_dir(), catalog=getattr(store, "catalog", None),
                             download=hub_download(endpoint, token))  # fmt: skip
    store.fetch(rec.blob, rec.sha256, HubOrigin(rec.hub_repo, rec.hub_commit))
    return rec, True
