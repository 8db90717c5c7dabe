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


@lru_cache(maxsize=1024)
def _compile(pattern: str) -> re.Pattern[str]:
    anchored = "/" in pattern
    pattern = pattern.lstrip("/")
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == len(pattern):
            out.append("/.*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        elif c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    prefix = "" if anchored else "(?:.*/)?"
    try:
        return re.compile(prefix + "".join(out) + r"\Z", re.DOTALL)
    except re.error:
        return re.compile(r"(?!)")  # a malformed pattern matches nothing


def matches(pattern: str, path: str) -> bool:
    return _compile(pattern).match(path) is not None


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
    return rules


def is_lfs(path: str, size: int, rules: list[tuple[str, bool]]) -> bool:
    """Whether a file counts as LFS in tree listings and /resolve headers (sha256 ETag, `lfs` field)."""
    if size >= LFS_SIZE_THRESHOLD:
        return True
    verdict = False
    for pattern, lfs in rules:
        if matches(pattern, path):
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
    return rules


def is_ignored(path: str, rules: list[tuple[str, bool, bool]]) -> bool:
    """Whether `.gitignore` rules leave `path` out (an ignored folder ignores everything below it)."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for index, candidate in enumerate(candidates):
        is_dir = index < len(candidates) - 1
        verdict = False
        for pattern, negated, dir_only in rules:
            if dir_only and not is_dir:
                continue
            if matches(pattern, candidate):
                verdict = not negated
        if verdict:
            return True
    return False
