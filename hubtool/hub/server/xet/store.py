"""The Xet store of `hub serve` on disk, and what each repo may read of it (docs/hub.md, "Xet").

Layout (under --root):

    xet/xorbs/ab/<xorb>               a xorb body as uploaded (checked: every chunk decodes, the hash matches)
    xet/xorbs/ab/<xorb>.idx           its chunks: (byte offset, stored size, size, raw hash) per chunk
    xet/files/ab/<file>.json          a file's reconstruction {"size", "segments": [[xorb, start, end, size]]},
                                      checked against the stored xorbs (the file hash recomputes)
    xet/xorbs/ab/<xorb>.owners/<r>    reference counts: the repos (type@ns@name) granted the xorb
    xet/files/ab/<file>.owners/<r>    ... and those holding the file
    xet/chunks/ab/<chunk>/<xorb>      dedup index: the xorbs holding a file's first chunk or a chunk the
                                      client asks the global dedup route about (hash 0 mod 1024)
    xet/store-id                      16 random hex digits, made with the store: part of the casUrl, so a
                                      client's cache of what this CAS holds never applies to another one
    repos/<type>/<ns>/<name>/xet/
        xorbs/<xorb>                  this repo may read the xorb: it sent all its bytes, or a checked shard
                                      of it (the xorb's `.owners/` folder lists such repos)
        files/<file>                  this repo uploaded a shard with this file: it may reconstruct it
        sha256/<sha256>.json          {"xetHash", "size"}: the sha256 the client claimed for a file

Xorbs and reconstructions are content addressed and verified, so they are shared; what a repo may read is
per repo and moves or goes with the repo's folder. A claimed sha256 is never verified by the server, so it
stays per repo: nobody can make another repo's commit resolve to their bytes.

Lifecycle: deleting a repo (Storage.delete_repo calls `release`) drops its entries from the `.owners/`
folders of the xorbs and files it held, and frees those no living repo holds any more (an owner entry of a
moved repo is followed through the redirects): work bounded by what the repo used. `check` (`hub serve
--check-root`) is the full mark-and-sweep: it re-hashes every xorb, resolves every recorded file and every
Xet file the repos' branches and tags name, and lists orphans and temp files; with repair it removes them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hubtool.fileio import atomic_write
from hubtool.hub.server.errors import ApiError
from hubtool.hub.server.storage import RepoRef, Storage
from hubtool.hub.xet.errors import XetFormatError
from hubtool.hub.xet.hashing import file_hash, from_hex, global_dedup_eligible, hex_of, range_hash
from hubtool.hub.xet.shard import FileEntry
from hubtool.hub.xet.xorb import HEADER, XorbInfo, decode_chunk, read_xorb

IDX = struct.Struct("<QII32s")
Readable = Callable[[RepoRef], bool]
HEX = frozenset("0123456789abcdef")


def is_hex64(text: str) -> bool:
    return len(text) == 64 and set(text) <= HEX


def owner_name(repo: RepoRef) -> str:
    return f"{repo.type}@{repo.id.replace('/', '@')}"


def owner_repo(name: str) -> RepoRef | None:
    rtype, _, rid = name.partition("@")
    rid = rid.replace("@", "/")
    return RepoRef(rtype, rid) if rtype and rid.count("/") == 1 and ".." not in rid else None


@dataclass(frozen=True)
class Chunk:
    offset: int  # byte offset of the chunk's header in the xorb body
    stored: int  # bytes after the header
    size: int  # uncompressed bytes
    hash: bytes

    @property
    def end(self) -> int:
        """Byte offset just past the chunk's record."""
        return self.offset + HEADER.size + self.stored


@dataclass(frozen=True)
class Term:
    """Chunks [start, end) of one xorb, `size` uncompressed bytes."""

    xorb: str
    start: int
    end: int
    size: int


class ShardRejected(Exception):
    """A shard that refers to what the repo may not read, or does not add up: one line, for a 400."""


def _checked_id(text: str) -> str:
    text = text.strip()
    if len(text) != 16 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(f"store-id {text[:40]!r}: expected 16 hex digits")
    return text


class XetStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.root = storage.root / "xet"
        for sub in ("xorbs", "files", "chunks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        storage.read_xet = self.read_all
        storage.on_delete = self.release
        self.id = self._store_id()
        # Held while a xorb or file is linked to a repo (stored + granted, a shard checked + recorded) and
        # while a deleted repo's references are released: a release never frees what is being granted.
        self.lock = threading.RLock()

    def _store_id(self) -> str:
        """This store's id (xet/store-id), made once. hf_xet keeps a cache per casUrl of the shards it has
        uploaded and trusts it: a client that pushed to an earlier server at the same address (a wiped
        root, the demo run twice on one port) skips xorbs it believes stored, and the shard that names them
        is refused. With the id in the casUrl, each store gets its own client cache."""
        path = self.root / "store-id"
        try:
            return _checked_id(path.read_text())
        except FileNotFoundError:
            damaged = False
        except (ValueError, UnicodeDecodeError):
            damaged = True  # a new id only makes clients start a new cache: harmless
        temp = self.root / f".store-id-{secrets.token_hex(4)}"
        temp.write_text(secrets.token_hex(8))
        try:
            if damaged:
                os.replace(temp, path)
            else:
                os.link(temp, path)  # the first writer wins; a concurrent one reads the winner's id
        except FileExistsError:
            pass
        finally:
            temp.unlink(missing_ok=True)
        return _checked_id(path.read_text())

    # -- paths ----------------------------------------------------------------------------------------

    def xorb_path(self, xorb: str) -> Path:
        assert is_hex64(xorb)
        return self.root / "xorbs" / xorb[:2] / xorb

    def _file_path(self, fhash: str) -> Path:
        assert is_hex64(fhash)
        return self.root / "files" / fhash[:2] / f"{fhash}.json"

    def _repo_xet(self, repo: RepoRef) -> Path:
        return self.storage.repo_dir(repo) / "xet"

    def _repo_folder(self, repo: RepoRef, kind: str) -> Path | None:
        """The repo's xet/<kind> folder, or None if the repo is gone, even if it goes while this runs: the
        folders are made one level at a time (never the repo's own), so a deleted repo is not re-created,
        and a folder that vanishes between mkdir and the check (FileExistsError, then no folder: the churn
        test hit it) means the same."""
        repo_dir = self.storage.repo_dir(repo)
        for level in (repo_dir / "xet", repo_dir / "xet" / kind):
            try:
                level.mkdir()
            except FileExistsError:
                if not level.is_dir():
                    return None
            except FileNotFoundError:
                return None
        return repo_dir / "xet" / kind

    def _mark(self, repo: RepoRef, kind: str, name: str) -> None:
        folder = self._repo_folder(repo, kind)
        if folder is None:  # deleted meanwhile: leave no folder behind
            return
        try:
            (folder / name).touch()
        except FileNotFoundError:
            return

    # -- xorbs ------------------------------------------------------------------------------------------

    def has_xorb(self, xorb: str) -> bool:
        return self.xorb_path(xorb).is_file() and self.xorb_path(xorb).with_suffix(".idx").is_file()

    def store_xorb(self, temp: Path, info: XorbInfo, repo: RepoRef | None = None) -> bool:
        """Move a checked xorb body into the store (its index first) and grant it to `repo`; False if it
        was there already."""
        dest = self.xorb_path(info.hex)
        if self.has_xorb(info.hex):
            with self.lock:
                if self.has_xorb(info.hex):
                    temp.unlink(missing_ok=True)
                    if repo is not None:
                        self.grant_xorb(repo, info.hex)
                    return False
        with open(temp, "rb+") as f:
            os.fsync(f.fileno())
        index = b"".join(IDX.pack(c.offset, c.stored_size, c.size, c.hash) for c in info.chunks)
        with self.lock:
            if self.has_xorb(info.hex):  # the same xorb from another upload meanwhile
                temp.unlink(missing_ok=True)
                if repo is not None:
                    self.grant_xorb(repo, info.hex)
                return False
            dest.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(dest.with_suffix(".idx")) as f:
                f.write(index)
            os.replace(temp, dest)
            for c in info.chunks:
                if c.index == 0 or global_dedup_eligible(c.hash):
                    self._index_chunk(c.hash, info.hex)
            if repo is not None:
                self.grant_xorb(repo, info.hex)
        return True

    def _index_chunk(self, raw: bytes, xorb: str) -> None:
        chunk = hex_of(raw)
        folder = self.root / "chunks" / chunk[:2] / chunk
        folder.mkdir(parents=True, exist_ok=True)
        (folder / xorb).touch()

    def chunks(self, xorb: str) -> list[Chunk]:
        data = self.xorb_path(xorb).with_suffix(".idx").read_bytes()
        return [Chunk(*t) for t in IDX.iter_unpack(data)]

    def grant_xorb(self, repo: RepoRef, xorb: str) -> None:
        """The repo may read the xorb (it sent all its bytes, or a shard of it that the server checked)."""
        owners = self.xorb_path(xorb).with_suffix(".owners")
        owners.mkdir(parents=True, exist_ok=True)
        (owners / owner_name(repo)).touch()
        self._mark(repo, "xorbs", xorb)

    def may_read_xorb(self, repo: RepoRef, xorb: str, readable: Readable | None = None) -> bool:
        """Whether the repo may read (and refer to) a stored xorb: it was granted to this repo, or to another
        repo for which `readable(repo)` is true (the token's user may read it)."""
        if not is_hex64(xorb) or not self.has_xorb(xorb):
            return False
        if (self._repo_xet(repo) / "xorbs" / xorb).is_file():
            return True
        if readable is None:
            return False
        try:
            owners = os.listdir(self.xorb_path(xorb).with_suffix(".owners"))
        except OSError:
            return False
        for owner in owners:
            other = owner_repo(owner)
            if other is not None and (self._repo_xet(other) / "xorbs" / xorb).is_file() and readable(other):
                return True
        return False

    def xorbs_with_chunk(self, repo: RepoRef, chunk: str, readable: Readable | None = None) -> list[str]:
        """Up to 4 xorbs the repo may read that hold the chunk (from the dedup index)."""
        folder = self.root / "chunks" / chunk[:2] / chunk
        try:
            candidates = sorted(os.listdir(folder))
        except OSError:
            return []
        return [x for x in candidates if self.may_read_xorb(repo, x, readable)][:4]

    # -- files --------------------------------------------------------------------------------------

    def check_file(self, repo: RepoRef, entry: FileEntry, readable: Readable | None = None) -> list[Term]:
        """The terms of a file a client uploaded in a shard, checked against the stored xorbs the repo may
        read: ranges in bounds, byte counts, verification hashes, the file hash. ShardRejected otherwise."""
        name = hex_of(entry.hash)
        terms: list[Term] = []
        leaves: list[tuple[bytes, int]] = []
        cache: dict[str, list[Chunk]] = {}
        for i, seg in enumerate(entry.segments):
            xorb = hex_of(seg.xorb)
            if xorb not in cache and not self.may_read_xorb(repo, xorb, readable):
                raise ShardRejected(
                    f"file {name}: xorb {xorb} is not stored for {repo.label}; upload it first"
                )
            chunks = cache.get(xorb)
            if chunks is None:
                chunks = cache[xorb] = self.chunks(xorb)
            if not 0 <= seg.chunk_start < seg.chunk_end <= len(chunks):
                raise ShardRejected(
                    f"file {name}: chunks [{seg.chunk_start}, {seg.chunk_end}) out of xorb {xorb}'s {len(chunks)}"
                )
            part = chunks[seg.chunk_start : seg.chunk_end]
            size = sum(c.size for c in part)
            if size != seg.size:
                raise ShardRejected(f"file {name}: segment {i} says {seg.size} bytes, its chunks hold {size}")
            if entry.verification is not None and range_hash(c.hash for c in part) != entry.verification[i]:
                raise ShardRejected(f"file {name}: segment {i}'s verification hash does not match its chunks")
            leaves.extend((c.hash, c.size) for c in part)
            terms.append(Term(xorb, seg.chunk_start, seg.chunk_end, size))
        if file_hash(leaves) != entry.hash:
            raise ShardRejected(f"file {name}: its chunks hash to {hex_of(file_hash(leaves))}")
        return terms

    def add_file(self, repo: RepoRef, fhash: str, terms: list[Term], sha256: str | None) -> None:
        path = self._file_path(fhash)
        size = sum(t.size for t in terms)
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            record = {"size": size, "segments": [[t.xorb, t.start, t.end, t.size] for t in terms]}
            with atomic_write(path) as f:
                f.write(json.dumps(record).encode())
        if terms:
            first = self.chunks(terms[0].xorb)[terms[0].start]
            self._index_chunk(first.hash, terms[0].xorb)
        for xorb in {t.xorb for t in terms}:
            self.grant_xorb(repo, xorb)
        owners = path.with_suffix(".owners")
        owners.mkdir(parents=True, exist_ok=True)
        (owners / owner_name(repo)).touch()
        self._mark(repo, "files", fhash)
        if sha256 is not None and (folder := self._repo_folder(repo, "sha256")) is not None:
            with atomic_write(folder / f"{sha256}.json") as f:
                f.write(json.dumps({"xetHash": fhash, "size": size}).encode())

    def has_file(self, fhash: str) -> bool:
        return is_hex64(fhash) and self._file_path(fhash).is_file()

    def may_read_file(self, repo: RepoRef, fhash: str) -> bool:
        return is_hex64(fhash) and (self._repo_xet(repo) / "files" / fhash).is_file()

    def file_for_sha256(self, repo: RepoRef, sha256: str) -> tuple[str, int] | None:
        """(xet hash, size) of the file this repo's uploads claimed `sha256` for, if it can be read."""
        try:
            data = json.loads((self._repo_xet(repo) / "sha256" / f"{sha256}.json").read_text())
            fhash, size = str(data["xetHash"]), int(data["size"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return (fhash, size) if self.may_read_file(repo, fhash) and self._file_path(fhash).is_file() else None

    def terms(self, fhash: str) -> tuple[int, list[Term]]:
        data = json.loads(self._file_path(fhash).read_text())
        return int(data["size"]), [Term(x, int(s), int(e), int(n)) for x, s, e, n in data["segments"]]

    def plan(self, fhash: str, start: int, end: int) -> tuple[int, list[Term]]:
        """The terms covering bytes [start, end] (inclusive) of a file, trimmed to whole chunks, and the
        offset of `start` in the first of them."""
        _, terms = self.terms(fhash)
        out: list[Term] = []
        pos = skip = 0
        for term in terms:
            tstart, pos = pos, pos + term.size
            if pos <= start:
                continue
            if tstart > end:
                break
            first = last = size = 0
            cpos = tstart
            for k, c in enumerate(self.chunks(term.xorb)[term.start : term.end]):
                if cpos + c.size > start and cpos <= end:
                    if not size:
                        first = k
                        if not out:
                            skip = start - cpos
                    last, size = k + 1, size + c.size
                cpos += c.size
            out.append(Term(term.xorb, term.start + first, term.start + last, size))
        return skip, out

    def stream(self, fhash: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes [start, end] (inclusive) of a file, decoded chunk by chunk."""
        skip, terms = self.plan(fhash, start, end)
        left = end - start + 1
        for term in terms:
            chunks = self.chunks(term.xorb)[term.start : term.end]
            with open(self.xorb_path(term.xorb), "rb") as f:
                f.seek(chunks[0].offset)
                for c in chunks:
                    head = f.read(HEADER.size)
                    stored = f.read(c.stored)
                    if len(head) != HEADER.size or len(stored) != c.stored:
                        raise XetFormatError(f"stored xorb {term.xorb} is truncated")
                    data = decode_chunk(head[4], stored, c.size, f"stored xorb {term.xorb}")
                    if skip:
                        data, skip = data[skip:], 0
                    if len(data) >= left:
                        yield data[:left]
                        return
                    left -= len(data)
                    yield data

    def read_all(self, fhash: str, size: int) -> bytes | None:
        if size == 0:
            return b""
        try:
            return b"".join(self.stream(fhash, 0, size - 1))
        except (OSError, ValueError, KeyError, XetFormatError):
            return None

    # -- lifecycle --------------------------------------------------------------------------------------

    def _holder_alive(self, owner: str, kind: str, name: str) -> bool:
        """Whether the repo an `.owners/` entry names (or where it moved to) still holds the xorb/file."""
        repo = owner_repo(owner)
        if repo is None:
            return False
        if (self._repo_xet(repo) / kind / name).is_file():
            return True
        moved = self.storage.moved_to(repo)
        return moved is not None and (self._repo_xet(RepoRef(repo.type, moved)) / kind / name).is_file()

    def _unowned(self, owners: Path, kind: str, name: str, drop: str | None) -> bool:
        """Drop `drop` and stale entries from an `.owners/` folder; True when no living repo is left."""
        try:
            entries = os.listdir(owners)
        except OSError:
            return False  # no reference counts (stored before they existed): only the sweep frees it
        alive = False
        for entry in entries:
            if entry == drop or not self._holder_alive(entry, kind, name):
                (owners / entry).unlink(missing_ok=True)
            else:
                alive = True
        return not alive

    def _free_xorb(self, xorb: str) -> int:
        path = self.xorb_path(xorb)
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        try:
            chunks = self.chunks(xorb)
        except OSError:
            chunks = []
        for c in chunks:
            entry = self.root / "chunks" / hex_of(c.hash)[:2] / hex_of(c.hash) / xorb
            if entry.exists():
                entry.unlink(missing_ok=True)
                try:
                    entry.parent.rmdir()
                except OSError:
                    pass
        path.unlink(missing_ok=True)
        path.with_suffix(".idx").unlink(missing_ok=True)
        shutil.rmtree(path.with_suffix(".owners"), ignore_errors=True)
        return size

    def _free_file(self, fhash: str) -> None:
        path = self._file_path(fhash)
        path.unlink(missing_ok=True)
        shutil.rmtree(path.with_suffix(".owners"), ignore_errors=True)

    def release(self, repo: RepoRef, old_dir: Path) -> tuple[int, int]:
        """A deleted repo (its folder, already moved away to `old_dir`) gives up its references: the xorbs
        and files no living repo holds any more are freed. (xorbs freed, their bytes)."""
        name = owner_name(repo)
        freed = freed_bytes = 0
        with self.lock:
            for fhash in _names(old_dir / "xet" / "files"):
                owners = self._file_path(fhash).with_suffix(".owners")
                if self._unowned(owners, "files", fhash, name):
                    self._free_file(fhash)
            for xorb in _names(old_dir / "xet" / "xorbs"):
                owners = self.xorb_path(xorb).with_suffix(".owners")
                if self._unowned(owners, "xorbs", xorb, name):
                    freed += 1
                    freed_bytes += self._free_xorb(xorb)
        return freed, freed_bytes

    def stats(self) -> dict[str, int]:
        """Stored xorbs, their bytes on disk and the data bytes (uncompressed) they hold."""
        count = size = data = 0
        for folder in _dirs(self.root / "xorbs"):
            for entry in os.scandir(folder):
                if entry.name.endswith(".idx") and is_hex64(entry.name[:-4]):
                    try:
                        size += os.stat(entry.path[:-4]).st_size
                        index = Path(entry.path).read_bytes()
                    except OSError:
                        continue  # freed meanwhile
                    count += 1
                    data += sum(t[2] for t in IDX.iter_unpack(index))
        return {"xorbs": count, "stored_bytes": size, "data_bytes": data}

    def check(self, *, repair: bool = False, grace: float = 600.0) -> CheckReport:
        """The full check of the Xet store (`hub serve --check-root`): every xorb re-hashes to its name and
        matches its index; every recorded file's segments resolve and its hash recomputes; every Xet file a
        repo's branch or tag names resolves for that repo; xorbs and files no repo holds (orphans, older
        than `grace` seconds) and temp files are listed, and removed with `repair`."""
        report = CheckReport()
        now = time.time()
        held: dict[str, set[str]] = {"xorbs": set(), "files": set()}
        for rtype in ("model", "dataset", "space"):
            for repo in self.storage.list_repos(rtype):
                for kind in ("xorbs", "files"):
                    for name in _names(self._repo_xet(repo) / kind):
                        held[kind].add(name)
                        exists = self.has_xorb(name) if kind == "xorbs" else self._file_path(name).is_file()
                        if not exists:
                            report.dangling.append(f"{repo.label}: {kind[:-1]} {name} is not stored")
                self._check_commits(repo, report)
        xorbs: set[str] = set()
        for folder in _dirs(self.root / "xorbs"):
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                path = Path(entry.path)
                if is_hex64(entry.name):
                    xorbs.add(entry.name)
                    report.xorbs += 1
                    problem = self._check_xorb(entry.name)
                    if problem:
                        report.bad.append(problem)
                    elif entry.name not in held["xorbs"]:
                        self._orphan(report, path, now, grace)
                elif entry.name.endswith(".idx") and not path.with_suffix("").is_file():
                    report.temp.append(str(path))  # an index whose body never arrived
                elif entry.name.endswith(".tmp"):
                    self._temp(report, path, now, grace)
        for folder in _dirs(self.root / "files"):
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                path = Path(entry.path)
                if entry.name.endswith(".json") and is_hex64(entry.name[:-5]):
                    report.files += 1
                    problem = self._check_record(entry.name[:-5])
                    if problem:
                        report.bad.append(problem)
                    elif entry.name[:-5] not in held["files"]:
                        self._orphan(report, path, now, grace)
                elif entry.name.endswith(".tmp"):
                    self._temp(report, path, now, grace)
        for folder in _dirs(self.root / "chunks"):
            for chunk in os.scandir(folder):
                for entry in os.scandir(chunk.path):
                    if entry.name not in xorbs:
                        report.stale_index.append(entry.path)
        tmp = self.storage.tmp
        for entry in sorted(os.listdir(tmp)) if tmp.is_dir() else []:
            self._temp(report, tmp / entry, now, grace)
        if repair:
            with self.lock:
                for path in report.orphans:
                    if path.endswith(".json"):
                        self._free_file(Path(path).name[:-5])
                    else:
                        report.freed_bytes += self._free_xorb(Path(path).name)
                    report.removed.append(path)
                for path in report.temp:
                    p = Path(path)
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
                    report.removed.append(path)
                for path in report.stale_index:  # chunks/ab/<chunk>/<xorb>
                    Path(path).unlink(missing_ok=True)
                    try:
                        Path(path).parent.rmdir()
                    except OSError:
                        pass
                    report.removed.append(path)
        return report

    def _orphan(self, report: CheckReport, path: Path, now: float, grace: float) -> None:
        try:
            young = now - path.stat().st_mtime < grace
        except OSError:
            return
        (report.recent if young else report.orphans).append(str(path))

    def _temp(self, report: CheckReport, path: Path, now: float, grace: float) -> None:
        try:
            young = now - path.stat().st_mtime < grace
        except OSError:
            return
        (report.recent if young else report.temp).append(str(path))

    def _check_xorb(self, xorb: str) -> str | None:
        try:
            with open(self.xorb_path(xorb), "rb") as f:
                info = read_xorb(f, from_hex(xorb))
            index = self.chunks(xorb)
        except (OSError, XetFormatError) as err:
            return f"xorb {xorb}: {err}"
        if [(c.offset, c.stored, c.size, c.hash) for c in index] != [
            (c.offset, c.stored_size, c.size, c.hash) for c in info.chunks
        ]:
            return f"xorb {xorb}: its index does not match its chunks"
        return None

    def _check_record(self, fhash: str) -> str | None:
        try:
            size, terms = self.terms(fhash)
            leaves: list[tuple[bytes, int]] = []
            for t in terms:
                if not self.has_xorb(t.xorb):
                    return f"file {fhash}: xorb {t.xorb} is not stored"
                chunks = self.chunks(t.xorb)
                if not 0 <= t.start < t.end <= len(chunks):
                    return f"file {fhash}: chunks [{t.start}, {t.end}) out of xorb {t.xorb}'s {len(chunks)}"
                part = chunks[t.start : t.end]
                if sum(c.size for c in part) != t.size:
                    return f"file {fhash}: a segment's size does not match its chunks"
                leaves.extend((c.hash, c.size) for c in part)
        except (OSError, ValueError, KeyError, TypeError, AssertionError) as err:
            return f"file {fhash}: unreadable record ({err})"
        if sum(n for _, n in leaves) != size or hex_of(file_hash(leaves)) != fhash:
            return f"file {fhash}: its chunks do not hash to its name"
        return None

    def _check_commits(self, repo: RepoRef, report: CheckReport) -> None:
        try:
            refs = self.storage.refs(repo)
        except ApiError:  # an unreadable refs.json: the repo is gone or damaged (not the Xet store's part)
            return
        seen: set[str] = set()
        for cid in set(refs["heads"].values()) | set(refs["tags"].values()):
            try:
                tree = self.storage.commit(repo, cid).tree
            except ApiError:
                report.dangling.append(f"{repo.label}: commit {cid[:12]} is unreadable")
                continue
            for path, entry in tree.items():
                if entry.xet and entry.xet not in seen:
                    seen.add(entry.xet)
                    if not (self.may_read_file(repo, entry.xet) and self._file_path(entry.xet).is_file()):
                        report.dangling.append(
                            f"{repo.label}@{cid[:12]}: {path} (Xet file {entry.xet}) is not stored"
                        )


@dataclass
class CheckReport:
    xorbs: int = 0
    files: int = 0
    # a xorb that no longer hashes, a record that does not resolve
    bad: list[str] = field(default_factory=list)
    dangling: list[str] = field(default_factory=list)  # a repo's reference to what is not stored
    orphans: list[str] = field(default_factory=list)
    recent: list[str] = field(default_factory=list)  # unreferenced or temp, but younger than the grace
    temp: list[str] = field(default_factory=list)
    stale_index: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    freed_bytes: int = 0

    @property
    def ok(self) -> bool:
        leftovers = self.orphans or self.temp or self.stale_index
        return not (self.bad or self.dangling) and (not leftovers or bool(self.removed))

    def to_dict(self) -> dict:
        return {**{k: getattr(self, k) for k in self.__dataclass_fields__}, "ok": self.ok}


def _names(folder: Path) -> list[str]:
    try:
        return sorted(n for n in os.listdir(folder) if is_hex64(n))
    except OSError:
        return []


def _dirs(folder: Path) -> list[str]:
    try:
        return sorted(e.path for e in os.scandir(folder) if e.is_dir(follow_symlinks=False))
    except OSError:
        return []
