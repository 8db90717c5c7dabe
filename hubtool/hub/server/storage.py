"""The server's disk: content-addressed blobs shared by all repos, and per repo its commits and refs.

Layout under the root (see docs/hub.md):

    blobs/ab/<sha256>                 file contents, immutable, shared across repos
    blobs/ab/<sha256>.json            {"size", "gitOid"} of that blob (written before the blob)
    repos/<type>/<ns>/<name>/
        repo.json                     {"id", "type", "private", "createdAt", "createdBy"}
        refs.json                     {"heads": {branch: commit}, "tags": {tag: commit}}
        commits/<id>.json             one commit: parents, the full tree, title, message, author, date
        lock                          flock target for writers
        xet/                          what this repo may read of the Xet store (server/xet/store.py)
    .tmp/                             uploads in flight; emptied at start
    .secret                           key of the signed LFS upload URLs and the Xet tokens
    xet/                              Xet storage (xorbs, file reconstructions): server/xet/store.py

A commit becomes visible when refs.json is swapped (atomic rename, under the repo lock) after its blobs
and its commit object are on disk; a crash before that leaves at most unreferenced files, never a half
commit. A repo appears by renaming a complete temp folder into place, and disappears by renaming it away.

Commit ids are git-style: sha1 over b"commit <len>\\0" + the canonical JSON of the commit. A tree entry is
[sha256, size, git blob oid, lfs] where the git oid is sha1(b"blob <size>\\0" + content).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hubtool.fileio import atomic_write, fsync_path
from hubtool.hub.server import names, patterns
from hubtool.hub.server.errors import ApiError, entry_not_found, repo_not_found, revision_not_found

CHUNK = 1 << 20
MAX_SMALL_READ = 1 << 20  # .gitattributes / .gitignore / README front matter larger than this are ignored


def git_blob_prefix(size: int) -> bytes:
    return b"blob %d\0" % size


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def now_iso() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


@dataclass
class Entry:
    """One file of a commit's tree."""

    sha256: str
    size: int
    oid: str  # git blob sha1 of the content (a Xet-stored file: the git oid of its LFS pointer)
    lfs: bool
    xet: str | None = None  # the Xet file hash of a file stored as Xet (server/xet), not in blobs/

    def to_json(self) -> list:
        base = [self.sha256, self.size, self.oid, self.lfs]
        return base if self.xet is None else [*base, self.xet]

    @classmethod
    def from_json(cls, value: list) -> Entry:
        return cls(value[0], int(value[1]), value[2], bool(value[3]), value[4] if len(value) > 4 else None)

    @property
    def tree_oid(self) -> str:
        """What /tree reports as `oid`: the git oid of the blob git would store (the pointer for LFS)."""
        if not self.lfs:
            return self.oid
        pointer = lfs_pointer(self.sha256, self.size)
        return hashlib.sha1(git_blob_prefix(len(pointer)) + pointer).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.oid


@dataclass
class Commit:
    id: str
    parents: list[str]
    tree: dict[str, Entry]
    title: str
    message: str
    author: str
    date: str


@dataclass
class Upload:
    """A blob received into a temp file, hashed, not yet in the store."""

    temp: Path | None  # None: the blob is already stored (LFS upload or dedupe)
    sha256: str
    size: int
    oid: str
    synced: bool = False  # the temp file's data has been fsynced (done before taking the repo lock)
    syncing: Any = None  # a Future of that fsync, when it was started early (Storage.start_sync)
    xet: str | None = None  # a Xet-stored file (temp is None): its Xet file hash


@dataclass
class AddOp:
    path: str
    upload: Upload
    via_lfs: bool = False


@dataclass
class DeleteOp:
    path: str
    folder: bool = False


@dataclass
class CopyOp:
    path: str
    src_path: str
    src_revision: str | None = None


@dataclass
class RepoRef:
    type: str  # model | dataset | space
    id: str  # ns/name

    @property
    def label(self) -> str:
        return self.id if self.type == "model" else f"{self.type}s/{self.id}"


@dataclass
class _RepoLocks:
    locks: dict[str, threading.Lock] = field(default_factory=dict)
    guard: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: str) -> threading.Lock:
        with self.guard:
            return self.locks.setdefault(key, threading.Lock())


class Storage:
    def __init__(self, root: str | os.PathLike, *, clean_tmp: bool = True) -> None:
        self.root = Path(root).expanduser().absolute()
        self.blobs = self.root / "blobs"
        self.repos = self.root / "repos"
        self.tmp = self.root / ".tmp"
        for folder in (self.blobs, self.repos):
            folder.mkdir(parents=True, exist_ok=True)
        # Whatever an earlier run left in flight (a killed upload, a half-deleted repo) goes now (not for
        # `hub serve --check-root`, which reports it).
        if clean_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._locks = _RepoLocks()
        self._commits: OrderedDict[str, Commit] = OrderedDict()
        self._commits_lock = threading.Lock()
        self.read_xet: Any = None  # (xet hash, size) -> bytes: set by the Xet store (server/xet)
        self.on_delete: Any = None  # (repo, its moved-away folder) -> None: the Xet store's release

    # -- temp files and blobs ------------------------------------------------------------------------

    def temp_path(self, kind: str = "upload") -> Path:
        return self.tmp / f"{kind}-{uuid.uuid4().hex}"

    def blob_path(self, sha256: str) -> Path:
        names.check_sha256(sha256)
        return self.blobs / sha256[:2] / sha256

    def blob_info(self, sha256: str) -> tuple[int, str] | None:
        """(size, git oid) of a stored blob, or None."""
        path = self.blob_path(sha256)
        if not path.is_file():
            return None
        meta = path.with_name(sha256 + ".json")
        try:
            data = json.loads(meta.read_text())
            return int(data["size"]), str(data["gitOid"])
        except (OSError, ValueError, KeyError):
            size = path.stat().st_size
            oid = git_oid_of_file(path, size)
            self._write_meta(sha256, size, oid)
            return size, oid

    def _write_meta(self, sha256: str, size: int, oid: str) -> None:
        # Not fsynced: a lost or torn meta file is rebuilt from its blob by blob_info().
        meta = self.blob_path(sha256).with_name(sha256 + ".json")
        tmp = meta.with_name(f".{meta.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(json.dumps({"size": size, "gitOid": oid}).encode())
        os.replace(tmp, meta)

    @staticmethod
    def start_sync(path: Path):
        """Start the fsync of a complete temp file in the background (a Future): the disk works while the
        request goes on (hashing the file's git oid, parsing the next files)."""
        return _pool().submit(sync_file, path)

    @staticmethod
    def sync_uploads(uploads: list[Upload]) -> None:
        """fsync the data of temp files (in parallel: one journal commit serves many files)."""
        todo = [u for u in uploads if u.temp is not None and not u.synced]
        _parallel(sync_file, [u.temp for u in todo if u.syncing is None])
        for u in todo:
            if u.syncing is not None:
                u.syncing.result()  # raises what the fsync raised
            u.synced = True

    def store_uploads(self, uploads: list[Upload]) -> None:
        """Move hashed temp files into the blob store (dropping those whose blob is already there); on
        return the renames are durable."""
        self.sync_uploads(uploads)
        folders = set()
        for upload in uploads:
            if upload.temp is None:
                continue
            dest = self.blob_path(upload.sha256)
            if dest.is_file():
                upload.temp.unlink(missing_ok=True)
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                self._write_meta(upload.sha256, upload.size, upload.oid)
                os.replace(upload.temp, dest)
                folders.add(dest.parent)
            upload.temp = None
        _parallel(fsync_path, sorted(folders))

    def store_upload(self, upload: Upload) -> None:
        self.store_uploads([upload])

    # -- repos --------------------------------------------------------------------------------------

    def repo_dir(self, repo: RepoRef) -> Path:
        ns, name = repo.id.split("/")
        return self.repos / repo.type / ns / name

    def repo_meta(self, repo: RepoRef) -> dict | None:
        try:
            return json.loads((self.repo_dir(repo) / "repo.json").read_text())
        except (OSError, ValueError):
            return None

    def require_repo(self, repo: RepoRef) -> dict:
        meta = self.repo_meta(repo)
        if meta is None:
            raise repo_not_found(repo.label)
        return meta

    @contextmanager
    def locked(self, repo: RepoRef) -> Iterator[None]:
        """The repo's writer lock: a thread lock for this process plus flock for other processes."""
        with self._locks.get(f"{repo.type}/{repo.id}"):
            lock_path = self.repo_dir(repo) / "lock"
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:
                raise repo_not_found(repo.label) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def create_repo(self, repo: RepoRef, *, user: str, private: bool) -> None:
        """Create a repo with its initial commit (`.gitattributes`); ApiError 409 if it exists."""
        dest = self.repo_dir(repo)
        if dest.exists():
            raise ApiError(409, "RepoExists", f"You already created this {repo.type} repo: {repo.label}")
        staging = self.temp_path("repo")
        (staging / "commits").mkdir(parents=True)
        content = patterns.DEFAULT_GITATTRIBUTES.encode()
        sha = hashlib.sha256(content).hexdigest()
        oid = hashlib.sha1(git_blob_prefix(len(content)) + content).hexdigest()
        temp = self.temp_path()
        temp.write_bytes(content)
        self.store_upload(Upload(temp, sha, len(content), oid))
        date = now_iso()
        commit = self._make_commit(
            [], {".gitattributes": Entry(sha, len(content), oid, False)}, "initial commit", "", user, date
        )
        self._write_commit(staging, commit)
        meta = {"id": repo.id, "type": repo.type, "private": private, "createdAt": date, "createdBy": user}
        with atomic_write(staging / "repo.json") as f:
            f.write(json.dumps(meta).encode())
        with atomic_write(staging / "refs.json") as f:
            f.write(json.dumps({"heads": {"main": commit.id}, "tags": {}}).encode())
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(staging, dest)  # fails if another request created it meanwhile
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            raise ApiError(
                409, "RepoExists", f"You already created this {repo.type} repo: {repo.label}"
            ) from None
        fsync_path(dest.parent)

    def delete_repo(self, repo: RepoRef) -> None:
        self.require_repo(repo)
        with self.locked(repo):
            self.require_repo(repo)
            trash = self.temp_path("deleted")
            os.rename(self.repo_dir(repo), trash)
            fsync_path(self.repo_dir(repo).parent)
        if self.on_delete is not None:  # a crash before this leaves unreferenced Xet data: --check-root
            self.on_delete(repo, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def move_repo(self, src: RepoRef, dst: RepoRef) -> None:
        self.require_repo(src)
        dest = self.repo_dir(dst)
        with self.locked(src):
            meta = self.require_repo(src)
            if dest.exists():
                raise ApiError(409, "RepoExists", f"{dst.label} already exists")
            meta["id"] = dst.id
            with atomic_write(self.repo_dir(src) / "repo.json") as f:
                f.write(json.dumps(meta).encode())
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.rename(self.repo_dir(src), dest)
            fsync_path(dest.parent)
            fsync_path(self.repo_dir(src).parent)
        with self._locks.get(f"redirects/{src.type}"):
            redirects = self.redirects(src.type)
            redirects[src.id] = dst.id
            redirects.pop(dst.id, None)
            with atomic_write(self.repos / f"{src.type}-redirects.json") as f:
                f.write(json.dumps(redirects, sort_keys=True).encode())

    def redirects(self, repo_type: str) -> dict[str, str]:
        """Old id -> new id of moved repos (the Hub answers 307 for a renamed repo's old URLs)."""
        try:
            return dict(json.loads((self.repos / f"{repo_type}-redirects.json").read_text()))
        except (OSError, ValueError):
            return {}

    def moved_to(self, repo: RepoRef) -> str | None:
        """Where a repo that no longer exists under this id went (following up to 10 moves)."""
        redirects = self.redirects(repo.type)
        current, seen = repo.id, set()
        while current in redirects and current not in seen and len(seen) < 10:
            seen.add(current)
            current = redirects[current]
        if current == repo.id or self.repo_meta(RepoRef(repo.type, current)) is None:
            return None
        return current

    def empty_commit(self, repo: RepoRef, user: str) -> str:
        """A parentless commit with an empty tree (for `create_branch(..., empty=True)`)."""
        with self.locked(repo):
            self.require_repo(repo)
            commit = self._make_commit([], {}, "empty branch", "", user, now_iso())
            self._write_commit(self.repo_dir(repo), commit)
        return commit.id

    def update_repo(self, repo: RepoRef, **changes) -> dict:
        with self.locked(repo):
            meta = self.require_repo(repo)
            meta.update(changes)
            with atomic_write(self.repo_dir(repo) / "repo.json") as f:
                f.write(json.dumps(meta).encode())
        return meta

    def list_repos(self, repo_type: str) -> list[RepoRef]:
        found = []
        base = self.repos / repo_type
        if not base.is_dir():
            return found
        for ns in sorted(base.iterdir()):
            if ns.is_dir():
                for name in sorted(ns.iterdir()):
                    if (name / "repo.json").is_file():
                        found.append(RepoRef(repo_type, f"{ns.name}/{name.name}"))
        return found

    # -- refs and commits ---------------------------------------------------------------------------

    def refs(self, repo: RepoRef) -> dict[str, dict[str, str]]:
        try:
            data = json.loads((self.repo_dir(repo) / "refs.json").read_text())
        except (OSError, ValueError):
            raise repo_not_found(repo.label) from None
        return {"heads": dict(data.get("heads", {})), "tags": dict(data.get("tags", {}))}

    def _write_refs(self, repo: RepoRef, refs: dict) -> None:
        with atomic_write(self.repo_dir(repo) / "refs.json") as f:
            f.write(json.dumps(refs, sort_keys=True).encode())

    def resolve(self, repo: RepoRef, revision: str) -> str:
        """A branch, tag, refs/heads/x, refs/tags/x or full commit id -> commit id."""
        names.check_revision(revision)
        refs = self.refs(repo)
        if revision in refs["heads"]:
            return refs["heads"][revision]
        if revision in refs["tags"]:
            return refs["tags"][revision]
        if revision.startswith("refs/heads/") and revision[11:] in refs["heads"]:
            return refs["heads"][revision[11:]]
        if revision.startswith("refs/tags/") and revision[10:] in refs["tags"]:
            return refs["tags"][revision[10:]]
        if (
            names.COMMIT_ID.fullmatch(revision)
            and (self.repo_dir(repo) / "commits" / f"{revision}.json").is_file()
        ):
            return revision
        raise revision_not_found(repo.label, revision)

    def branch_name(self, revision: str) -> str:
        return revision.removeprefix("refs/heads/")

    def commit(self, repo: RepoRef, cid: str) -> Commit:
        key = f"{repo.type}/{repo.id}/{cid}"
        with self._commits_lock:
            cached = self._commits.get(key)
            if cached is not None:
                self._commits.move_to_end(key)
                return cached
        try:
            data = json.loads((self.repo_dir(repo) / "commits" / f"{cid}.json").read_text())
        except (OSError, ValueError):
            raise revision_not_found(repo.label, cid) from None
        commit = Commit(
            id=cid,
            parents=list(data["parents"]),
            tree={path: Entry.from_json(value) for path, value in data["tree"].items()},
            title=data["title"],
            message=data["message"],
            author=data["author"],
            date=data["date"],
        )
        with self._commits_lock:
            self._commits[key] = commit
            while len(self._commits) > 64:
                self._commits.popitem(last=False)
        return commit

    def history(self, repo: RepoRef, cid: str) -> Iterator[Commit]:
        """The commit and its first-parent ancestors, newest first."""
        seen = set()
        current: str | None = cid
        while current is not None and current not in seen:
            seen.add(current)
            commit = self.commit(repo, current)
            yield commit
            current = commit.parents[0] if commit.parents else None

    @staticmethod
    def _make_commit(parents, tree, title, message, author, date) -> Commit:
        body = {
            "parents": parents,
            "tree": {path: tree[path].to_json() for path in sorted(tree)},
            "title": title,
            "message": message,
            "author": author,
            "date": date,
        }
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        cid = hashlib.sha1(b"commit %d\0" % len(canonical) + canonical).hexdigest()
        return Commit(cid, parents, dict(tree), title, message, author, date)

    def _write_commit(self, repo_dir: Path, commit: Commit) -> None:
        body = {
            "parents": commit.parents,
            "tree": {path: commit.tree[path].to_json() for path in sorted(commit.tree)},
            "title": commit.title,
            "message": commit.message,
            "author": commit.author,
            "date": commit.date,
        }
        path = repo_dir / "commits" / f"{commit.id}.json"
        if not path.exists():
            with atomic_write(path) as f:
                f.write(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())

    def read_small(self, entry: Entry) -> bytes | None:
        if entry.size > MAX_SMALL_READ:
            return None
        if entry.xet is not None:
            return self.read_xet(entry.xet, entry.size) if self.read_xet is not None else None
        try:
            return self.blob_path(entry.sha256).read_bytes()
        except OSError:
            return None

    def lfs_rules(self, tree: dict[str, Entry]) -> list[tuple[str, bool]]:
        entry = tree.get(".gitattributes")
        content = self.read_small(entry) if entry is not None else None
        return patterns.lfs_patterns(content.decode("utf-8", "replace")) if content else []

    def apply_commit(
        self,
        repo: RepoRef,
        branch: str,
        ops: list[AddOp | DeleteOp | CopyOp],
        *,
        author: str,
        title: str,
        message: str,
        parent_commit: str | None = None,
    ) -> Commit:
        """Apply `ops` on top of `branch` and advance it; all or nothing."""
        branch = self.branch_name(branch)
        self.sync_uploads(
            [op.upload for op in ops if isinstance(op, AddOp)]
        )  # the slow part, before the lock
        with self.locked(repo):
            self.require_repo(repo)
            refs = self.refs(repo)
            if branch not in refs["heads"]:
                raise revision_not_found(repo.label, branch)
            head = refs["heads"][branch]
            if parent_commit is not None and parent_commit != head:
                raise ApiError(
                    412,
                    "PreconditionFailed",
                    f"A commit has happened on {branch} since {parent_commit}; its head is now {head}",
                )
            base = self.commit(repo, head)
            tree = dict(base.tree)
            lfs_via_upload: set[str] = set()
            touched: set[str] = set()
            for op in ops:
                touched.add(op.path)
                if isinstance(op, AddOp):
                    _check_no_conflict(tree, op.path)
                    up = op.upload
                    tree[op.path] = Entry(up.sha256, up.size, up.oid, False, up.xet)
                    if op.via_lfs:
                        lfs_via_upload.add(op.path)
                    else:
                        lfs_via_upload.discard(op.path)
                elif isinstance(op, DeleteOp):
                    prefix = op.path.rstrip("/") + "/"
                    if op.folder:
                        doomed = [p for p in tree if p.startswith(prefix)]
                        if not doomed and op.path.rstrip("/") in tree:
                            doomed = [op.path.rstrip("/")]
                    else:
                        doomed = [op.path] if op.path in tree else []
                    if not doomed:
                        what = "folder" if op.folder else "file"
                        raise entry_not_found(
                            op.path, message=f"A {what} with this name doesn't exist: {op.path}"
                        )
                    for path in doomed:
                        del tree[path]
                        lfs_via_upload.discard(path)
                elif isinstance(op, CopyOp):
                    source_tree = tree
                    if op.src_revision is not None:
                        source_tree = self.commit(repo, self.resolve(repo, op.src_revision)).tree
                    if op.src_path not in source_tree:
                        raise entry_not_found(op.src_path, message=f"Cannot copy {op.src_path}: no such file")
                    _check_no_conflict(tree, op.path)
                    src = source_tree[op.src_path]
                    tree[op.path] = Entry(src.sha256, src.size, src.oid, src.lfs, src.xet)
            # Blobs go into the store first (a crash now leaves unreferenced blobs, never a half commit).
            self.store_uploads([op.upload for op in ops if isinstance(op, AddOp)])
            # Files this commit wrote get their LFS flag now (from the new .gitattributes); the others keep
            # theirs, as git keeps existing blobs when .gitattributes changes. Entries are new objects here.
            rules = self.lfs_rules(tree)
            budget = patterns.Budget(patterns.WORK_BUDGET + 1000 * len(touched))
            try:
                for path in touched & tree.keys():
                    entry = tree[path]
                    entry.lfs = (
                        path in lfs_via_upload
                        or entry.lfs
                        or patterns.is_lfs(path, entry.size, rules, budget)
                    )
            except patterns.PatternsTooCostly as err:
                raise ApiError(400, "InvalidGitattributes", f".gitattributes: {err}") from None
            commit = self._make_commit([head], tree, title, message, author, now_iso())
            self._write_commit(self.repo_dir(repo), commit)
            refs["heads"][branch] = commit.id
            self._write_refs(repo, refs)
        return commit

    def create_ref(self, repo: RepoRef, kind: str, name: str, target: str, *, exist_ok: bool = False) -> None:
        """kind: "heads" (branch) or "tags"; 409 if it exists."""
        with self.locked(repo):
            refs = self.refs(repo)
            if name in refs[kind]:
                if exist_ok:
                    return
                what = "Branch" if kind == "heads" else "Tag"
                raise ApiError(409, "RefExists", f"{what} {name} already exists")
            refs[kind][name] = target
            self._write_refs(repo, refs)

    def delete_ref(self, repo: RepoRef, kind: str, name: str) -> None:
        with self.locked(repo):
            refs = self.refs(repo)
            if name not in refs[kind]:
                raise revision_not_found(repo.label, name)
            del refs[kind][name]
            self._write_refs(repo, refs)


def _check_no_conflict(tree: dict[str, Entry], path: str) -> None:
    parts = path.split("/")
    for i in range(1, len(parts)):
        parent = "/".join(parts[:i])
        if parent in tree:
            raise ApiError(409, "PathConflict", f"cannot add {path}: {parent} is a file")
    prefix = path + "/"
    if any(p.startswith(prefix) for p in tree):
        raise ApiError(409, "PathConflict", f"cannot add {path}: it is a folder")


_POOL = None


def _parallel(fn, items) -> None:
    items = list(items)
    if len(items) <= 1:
        for item in items:
            fn(item)
        return
    for _ in _pool().map(fn, items):
        pass


def _pool():
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="hub-fsync")
    return _POOL


def sync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def git_oid_of_file(path: Path, size: int) -> str:
    digest = hashlib.sha1(git_blob_prefix(size))
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def folder_oid(tree: dict[str, Entry], folder: str) -> str:
    """A stable id for a folder of a tree: sha1 over its files' paths and oids."""
    prefix = folder + "/" if folder else ""
    digest = hashlib.sha1(b"tree\0")
    for path in sorted(p for p in tree if p.startswith(prefix)):
        digest.update(path[len(prefix) :].encode() + b"\0" + tree[path].tree_oid.encode() + b"\n")
    return digest.hexdigest()
