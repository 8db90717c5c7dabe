"""`.gitattributes` and `.gitignore` patterns, the subset the Hub's repos use (stdlib only).

A pattern without a `/` matches a name at any depth (`*.bin`), one with a `/` is anchored at the repo root
(`saved_model/**/*`); `*` and `?` stay inside one path part, `**` crosses parts, `[...]` is a class.
"""

from __future__ import annotations

import re
from functools import lru_cache

LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # the Hub stores files of 10 MiB and more in LFS whatever the patterns

# The `.gitattributes` of a new repo: the Hub's usual LFS patterns for model and data files.
_DEFAULT_LFS = (
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gguf *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack "
    "*.npy *.npz *.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors saved_model/**/* "
    "*.tar.* *.tar *.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents*"
)
DEFAULT_GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in _DEFAULT_LFS.split(" "))


MAX_PATTERN = 255  # a longer pattern matches nothing (git paths parts are <= 255 bytes anyway)
MAX_RULES = 1000  # rules past this many in one .gitattributes / .gitignore are ignored
# Part matches one request may spend on patterns (each is one small regex call): normal uploads use a few
# thousand; past this the patterns are refused as too costly instead of holding a worker (or the repo lock).
WORK_BUDGET = 2_000_000


class PatternsTooCostly(ValueError):
    """The patterns of one request took more than its work budget to evaluate."""


class Budget:
    def __init__(self, steps: int = WORK_BUDGET) -> None:
        self.left = steps

    def spend(self, steps: int) -> None:
        self.left -= steps
        if self.left < 0:
            raise PatternsTooCostly("the .gitignore/.gitattributes patterns are too costly to evaluate")


_DSTAR = None  # a `**` path part: any number of parts


class _PartGlob:
    """A glob of one path part (`*`, `?`, `[...]`, literals) matched without backtracking: the text between
    stars is fixed-length, so each piece is found leftmost in turn (linear, where a translated regex like
    `[^/]*a[^/]*a[^/]*b` backtracks exponentially on `aaaa...`)."""

    def __init__(self, text: str) -> None:
        pieces, lengths, out, n, i = [], [], [], 0, 0
        text = re.sub(r"\*\*+", "*", text)  # inside a part, `**` is an ordinary star (gitignore(5))
        while i < len(text):
            c = text[i]
            if c == "*":
                pieces.append("".join(out))
                lengths.append(n)
                out, n = [], 0
                i += 1
                continue
            if c == "?":
                out.append(".")
                i += 1
            elif c == "[" and text.find("]", i + 2) >= 0:
                end = text.find("]", i + 2)
                body = text[i + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end + 1
            elif c == "\\" and i + 1 < len(text):
                out.append(re.escape(text[i + 1]))
                i += 2
            else:
                out.append(re.escape(c))
                i += 1
            n += 1
        pieces.append("".join(out))
        lengths.append(n)
        try:
            self.pieces = [re.compile(p, re.DOTALL) for p in pieces]
        except re.error:
            self.pieces = None  # a malformed class: matches nothing
        self.lengths = lengths

    def match(self, name: str) -> bool:
        pieces, lengths = self.pieces, self.lengths
        if pieces is None:
            return False
        if len(pieces) == 1:
            return pieces[0].fullmatch(name) is not None
        tail_at = len(name) - lengths[-1]
        if tail_at < lengths[0] or pieces[0].match(name) is None:
            return False
        pos = lengths[0]
        for piece, length in zip(pieces[1:-1], lengths[1:-1]):
            found = piece.search(name, pos, tail_at)
            if found is None:
                return False
            pos = found.start() + length
        return pieces[-1].fullmatch(name, tail_at) is not None


class _Glob:
    """A whole pattern: without a `/` it matches the last part at any depth; with one it is anchored at the
    root and `**` parts match any number of parts (a trailing `/**` at least one)."""

    def __init__(self, pattern: str) -> None:
        self.anchored = "/" in pattern
        text = pattern.lstrip("/")
        if len(pattern) > MAX_PATTERN:
            self.parts = None
        elif self.anchored:
            self.parts = [_DSTAR if p == "**" else _PartGlob(p) for p in text.split("/")]
        else:
            self.parts = [_PartGlob(text)]

    def prefixes(self, parts: list[str], budget: Budget | None) -> set[int]:
        """The k (1..len(parts)) such that the pattern matches the path parts[:k]."""
        if self.parts is None or not parts:
            return set()
        if not self.anchored:
            if budget is not None:
                budget.spend(len(parts))
            glob = self.parts[0]
            return {k + 1 for k, name in enumerate(parts) if glob.match(name)}
        reach = {0}  # numbers of path parts consumed so far
        last = len(self.parts) - 1
        for index, glob in enumerate(self.parts):
            if budget is not None:
                budget.spend(len(reach))
            if glob is _DSTAR:
                low = min(reach)
                if index == last:
                    return set(range(low + 1, len(parts) + 1))
                reach = set(range(low, len(parts) + 1))
            else:
                reach = {j + 1 for j in reach if j < len(parts) and glob.match(parts[j])}
            if not reach:
                return set()
        return reach - {0}


@lru_cache(maxsize=4096)
def _compile(pattern: str) -> _Glob:
    return _Glob(pattern)


def matches(pattern: str, path: str, budget: Budget | None = None) -> bool:
    parts = path.split("/")
    return len(parts) in _compile(pattern).prefixes(parts, budget)


def lfs_patterns(gitattributes: str) -> list[tuple[str, bool]]:
    """[(pattern, is_lfs)] from `.gitattributes` text, in file order (a later line wins)."""
    rules = []
    for line in gitattributes.splitlines():
        fields = line.strip().split()
        if not fields or fields[0].startswith("#"):
            continue
        pattern, attrs = fields[0], fields[1:]
        for attr in attrs:
            if attr == "filter=lfs":
                rules.append((pattern, True))
            elif attr in ("-filter", "!filter") or (attr.startswith("filter=") and attr != "filter=lfs"):
                rules.append((pattern, False))
        if len(rules) >= MAX_RULES:
            break
    return rules


def is_lfs(path: str, size: int, rules: list[tuple[str, bool]], budget: Budget | None = None) -> bool:
    """Whether a file counts as LFS in tree listings and /resolve headers (sha256 ETag, `lfs` field)."""
    if size >= LFS_SIZE_THRESHOLD:
        return True
    verdict = False
    for pattern, lfs in rules:
        if matches(pattern, path, budget):
            verdict = lfs
    return verdict


def gitignore_rules(text: str) -> list[tuple[str, bool, bool]]:
    """[(pattern, negated, dir_only)] from `.gitignore` text."""
    rules = []
    for line in text.splitlines():
        line = line.rstrip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        if negated:
            line = line[1:]
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        if line:
            rules.append((line, negated, dir_only))
        if len(rules) >= MAX_RULES:
            break
    return rules


def is_ignored(path: str, rules: list[tuple[str, bool, bool]], budget: Budget | None = None) -> bool:
    """Whether `.gitignore` rules leave `path` out (an ignored folder ignores everything below it).

    Each of the path's prefixes (a/, a/b/, ..., the file) gets a verdict from the rules in order (the last
    matching rule wins); one pass per rule finds every prefix it matches."""
    parts = path.split("/")
    verdict = [False] * (len(parts) + 1)  # verdict[k]: the prefix of k parts is ignored
    for pattern, negated, dir_only in rules:
        for k in _compile(pattern).prefixes(parts, budget):
            if not (dir_only and k == len(parts)):
                verdict[k] = not negated
    return any(verdict)
