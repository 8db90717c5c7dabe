"""The Xet store of `hub serve` on disk, and what each repo may read of it (docs/hub.md, "Xet").

Layout (under --root):

    xet/xorbs/ab/<xorb>               a xorb body as uploaded (checked: every chunk decodes, the hash matches)
    xet/xorbs/ab/<xorb>.idx           its chunks: (byte offset, stored size, size, raw hash) per chunk
    xet/files/ab/<file>.json          a file's reconstruction {"size", "segments": [[xorb, start, end, size]]},
                                      checked against the stored xorbs (the file hash recomputes)
    xet/chunks/ab/<chunk>/<xorb>      dedup index: the xorbs holding a file's first chunk or a chunk the
                                      client asks the global dedup route about (hash 0 mod 1024)
    repos/<type>/<ns>/<name>/xet/
        xorbs/<xorb>                  this repo may read the xorb: it sent all its bytes, or a checked shard
                                      of it (the xorb's `.owners/` folder lists such repos)
        files/<file>                  this repo uploaded a shard with this file: it may reconstruct it
        sha256/<sha256>.json          {"xetHash", "size"}: the sha256 the client claimed for a file

Xorbs and reconstructions are content addressed and verified, so they are shared; what a repo may read is
per repo and moves or goes with the repo's folder. A claimed sha256 is never verified by the server, so it
stays per repo: nobody can make another repo's commit resolve to their bytes.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hubtool.fileio import atomic_write
from hubtool.hub.server.storage import RepoRef, Storage
from hubtool.hub.xet.errors import XetFormatError
from hubtool.hub.xet.hashing import file_hash, global_dedup_eligible, hex_of, range_hash
from hubtool.hub.xet.shard import FileEntry
from hubtool.hub.xet.xorb import HEADER, XorbInfo, decode_chunk

IDX = struct.Struct("<QII32s")
Readable = Callable[[RepoRef], bool]
HEX = frozenset("0123456789abcdef")


def is_hex64(text: str) -> bool:
    return len(text) == 64 and set(text) <= HEX


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


class XetStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.root = storage.root / "xet"
        for sub in ("xorbs", "files", "chunks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        storage.read_xet = self.read_all

    # -- paths ----------------------------------------------------------------------------------------

    def xorb_path(self, xorb: str) -> Path:
        assert is_hex64(xorb)
        return self.root / "xorbs" / xorb[:2] / xorb

    def _file_path(self, fhash: str) -> Path:
        assert is_hex64(fhash)
        return self.root / "files" / fhash[:2] / f"{fhash}.json"

    def _repo_xet(self, repo: RepoRef) -> Path:
        return self.storage.repo_dir(repo) / "xet"

    def _mark(self, repo: RepoRef, kind: str, name: str) -> None:
        repo_dir = self.storage.repo_dir(repo)
        if not repo_dir.is_dir():  # deleted meanwhile: leave no folder behind
            return
        folder = repo_dir / "xet" / kind
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).touch()

    # -- xorbs ------------------------------------------------------------------------------------------

    def has_xorb(self, xorb: str) -> bool:
        return self.xorb_path(xorb).is_file() and self.xorb_path(xorb).with_suffix(".idx").is_file()

    def store_xorb(self, temp: Path, info: XorbInfo) -> bool:
        """Move a checked xorb body into the store (its index first); False if it was there already."""
        dest = self.xorb_path(info.hex)
        if self.has_xorb(info.hex):
            temp.unlink(missing_ok=True)
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        index = b"".join(IDX.pack(c.offset, c.stored_size, c.size, c.hash) for c in info.chunks)
        with atomic_write(dest.with_suffix(".idx")) as f:
            f.write(index)
        with open(temp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temp, dest)
        for c in info.chunks:
            if c.index == 0 or global_dedup_eligible(c.hash):
                self._index_chunk(c.hash, info.hex)
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
        (owners / f"{repo.type}@{repo.id.replace('/', '@')}").touch()
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
            rtype, _, rid = owner.partition("@")
            other = RepoRef(rtype, rid.replace("@", "/"))
            if (self._repo_xet(other) / "xorbs" / xorb).is_file() and readable(other):
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
        self._mark(repo, "files", fhash)
        if sha256 is not None:
            repo_dir = self.storage.repo_dir(repo)
            if repo_dir.is_dir():
                folder = repo_dir / "xet" / "sha256"
                folder.mkdir(parents=True, exist_ok=True)
                with atomic_write(folder / f"{sha256}.json") as f:
                    f.write(json.dumps({"xetHash": fhash, "size": size}).encode())

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
