"""Request fuzzing for `hub serve`, shared by tests/test_fuzz_server.py (a few hundred cases) and
benchmarks/fuzz_server.py (10,000).

    from fuzz_server import Fuzzer
    fuzz = Fuzzer(srv, seed=0)        # srv: a running hubserver.Server with ALICE's token
    fuzz.setup()                      # the repo the valid requests aim at (alice/fuzz, a few files)
    report = fuzz.run(300)            # -> Report: counts by status and kind, failures, RSS before/after
    fuzz.check_root()                 # nothing outside --root, no symlinks, every listed path valid

Each case starts from a valid request of one kind and mutates it:
- commit: the NDJSON body of POST /api/models/R/commit/main (header, file, lfsFile, deletedFile,
  deletedFolder, copyFile lines);
- preupload: the JSON of POST .../preupload/main (files with path, size, sample; gitIgnore);
- lfs: the LFS batch JSON of POST /R.git/info/lfs/objects/batch (and forged signed upload URLs);
- path: repo ids, revisions and file paths in /resolve, /tree, /revision and paths-info URLs and bodies
  (.., absolute, NUL, %2e%2e, backslashes, very long, unicode, invalid UTF-8);
- header: oversized or odd headers and Authorization values;
- card: model card front matter (deep nesting, alias bombs, python tags, huge values) through
  validate-yaml, or committed as README.md and then read back through repo_info (its cardData);
- xet: the Xet token endpoints and the CAS under /_xet: mutated xorb bodies and hashes, shards, token
  strings, dedup chunk hashes, reconstruction ranges, signed xorb and file URLs (their exp and sig).
Mutations work on JSON values (evil paths, deep nesting, 5000-digit numbers, wrong types, huge strings)
and on bytes (truncation, flipped and inserted bytes, dropped or repeated lines).

A case passes when the server answers in time with a status below 500 and, for an error, a JSON body
with an `error` message (the huggingface_hub client turns that into a clean exception); malformed HTTP
(the header cases) may get uvicorn's plain 4xx instead. Only the real server is involved: no mocks.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = "alice/fuzz"
FILES = {
    "config.json": b'{"model_type": "bert"}\n',
    "dir/a.txt": b"alpha\n",
    "dir/sub/b.bin": b"\x00\x01\x02" * 50,
}

EVIL_PATHS = [
    "..",
    "../x",
    "../../x",
    "a/../../b",
    "/etc/passwd",
    "/abs",
    "a\x00b",
    "\x00",
    "a\\b",
    "..\\..\\x",
    "%2e%2e/x",
    "%2e%2e%2fx",
    "a/%2e%2e/b",
    ".git/config",
    "a/.git/x",
    "a/./b",
    "./a",
    "a//b",
    "a/",
    "",
    " ",
    "\t",
    "a\nb",
    "\u202e.txt",
    "é/ü.txt",
    "日本語/ファイル.bin",
    "\ud800",
    "x" * 300,
    "y/" * 600,
    "z" * 5000,
    "CON",
    "nul",
    "a" * 255 + "/b",
    "~/x",
    "$HOME/x",
    "a?b",
    "a#b",
    "a%00b",
    "\x7f",
]
EVIL_VALUES = [
    None,
    True,
    False,
    0,
    -1,
    1.5,
    "__BIGINT__",
    "__NAN__",
    -(10**40),
    "",
    "x" * 70_000,
    [],
    {},
    [1, 2],
    {"a": 1},
    "\x00",
    "\u0000x",
    "é",
    "\ud83d\ude00",
    [[[[[[[[[[[]]]]]]]]]]],
    2**63,
    2**64 + 1,
]


def dumps(obj) -> bytes:
    """json.dumps, with the placeholders for what Python's json will not write (a 5000-digit integer, NaN,
    an unpaired surrogate) swapped in as raw JSON text."""
    text = json.dumps(obj)
    return (text.replace('"__BIGINT__"', "9" * 5000).replace('"__NAN__"', "NaN")).encode(
        "utf-8", "surrogatepass"
    )


def deep(n: int) -> str:
    return "[" * n + "]" * n


@dataclass
class Case:
    kind: str
    method: str
    path: str  # raw request target (already percent-encoded where intended)
    body: bytes | None = None
    headers: dict = field(default_factory=dict)
    protocol: bool = False  # malformed HTTP: a plain (non-JSON) 4xx from uvicorn is fine
    note: str = ""
    then: tuple | None = None  # a follow-up (method, path) judged the same way (repo_info after a commit)


@dataclass
class Report:
    cases: int = 0
    by_status: Counter = field(default_factory=Counter)
    by_kind: Counter = field(default_factory=Counter)
    accepted: Counter = field(default_factory=Counter)
    failures: list = field(default_factory=list)
    rss_start_kib: int = 0
    rss_end_kib: int = 0
    seconds: float = 0.0
    slowest: float = 0.0


class Fuzzer:
    def __init__(self, srv, seed: int = 0, token: str | None = None, timeout: float = 30.0) -> None:
        from hubserver import ALICE

        self.srv, self.rng, self.token, self.timeout = srv, random.Random(seed), token or ALICE, timeout
        self.oids: list[str] = []
        self.xet: dict = {}

    # -- the target repo ----------------------------------------------------------------------------

    def setup(self) -> None:
        api = self.srv.api(self.token)
        api.create_repo(REPO, exist_ok=True)
        from huggingface_hub import CommitOperationAdd

        ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=c) for p, c in FILES.items()]
        api.create_commit(REPO, operations=ops, commit_message="fuzz target")
        self.oids = [hashlib.sha256(c).hexdigest() for c in FILES.values()]
        self.setup_xet()

    def setup_xet(self) -> None:
        """A xorb and a shard of one file over it, stored through the CAS: what the xet cases mutate."""
        from hubtool.hub.xet.hashing import file_hash, hex_of, range_hash
        from hubtool.hub.xet.shard import FileEntry, Segment, Shard, write_shard
        from hubtool.hub.xet.xorb import write_xorb

        status, _, body = self.srv.raw("GET", f"/api/models/{REPO}/xet-write-token/main", token=self.token)
        assert status == 200, body
        token = json.loads(body)["accessToken"]
        rnd = random.Random(7)
        chunks = [rnd.randbytes(3000) + bytes(5000), bytes(range(256)) * 40, rnd.randbytes(9000)]
        xorb, info = write_xorb(chunks)
        hashes = [c.hash for c in info.chunks]
        fhash = file_hash((c.hash, c.size) for c in info.chunks)
        entry = FileEntry(fhash, [Segment(info.hash, 0, 3, sum(map(len, chunks)))], [range_hash(hashes)])
        shard = write_shard(Shard([entry], [], footer=False))
        auth = {"authorization": f"Bearer {token}"}
        for path, data in ((f"/_xet/v1/xorbs/default/{info.hex}", xorb), ("/_xet/v1/shards", shard)):
            status, _, body = self.srv.raw("POST", path, token=None, body=data, headers=auth)
            assert status == 200, body
        status, _, body = self.srv.raw("GET", f"/_xet/v1/reconstructions/{hex_of(fhash)}", token=None, headers=auth)
        assert status == 200, body
        fetch = next(iter(json.loads(body)["fetch_info"].values()))[0]["url"]
        self.xet = {"token": token, "xorb": xorb, "xorb_hash": info.hex, "shard": shard,
                    "file": hex_of(fhash), "chunk": hex_of(hashes[0]), "fetch": fetch}  # fmt: skip

    # -- valid requests -----------------------------------------------------------------------------

    def _line(self, key: str, value: dict) -> dict:
        return {"key": key, "value": value}

    def valid_commit_lines(self) -> list[dict]:
        rng = self.rng
        lines = [self._line("header", {"summary": f"fuzz {rng.random()}", "description": ""})]
        for _ in range(rng.randint(1, 4)):
            data = rng.randbytes(rng.randint(0, 300))
            choice = rng.random()
            if choice < 0.55:
                lines.append(
                    self._line(
                        "file",
                        {
                            "content": base64.b64encode(data).decode(),
                            "path": f"f/{rng.randint(0, 50)}.bin",
                            "encoding": "base64",
                        },
                    )
                )
            elif choice < 0.7:
                lines.append(
                    self._line(
                        "lfsFile",
                        {
                            "path": f"l/{rng.randint(0, 9)}.bin",
                            "algo": "sha256",
                            "oid": rng.choice(self.oids),
                            "size": None,
                        },
                    )
                )
            elif choice < 0.8:
                lines.append(self._line("deletedFile", {"path": rng.choice(list(FILES))}))
            elif choice < 0.9:
                lines.append(self._line("deletedFolder", {"path": "f"}))
            else:
                lines.append(
                    self._line(
                        "copyFile",
                        {
                            "srcPath": "config.json",
                            "path": f"c/{rng.randint(0, 9)}.json",
                            "srcRevision": "main",
                        },
                    )
                )
        for line in lines:  # lfsFile sizes must match the stored object when given
            if line["key"] == "lfsFile":
                line["value"].pop("size")
        return lines

    def valid_preupload(self) -> dict:
        rng = self.rng
        files = [
            {
                "path": rng.choice([*FILES, "new.bin", "x/y.safetensors"]),
                "size": rng.randint(0, 10**6),
                "sample": base64.b64encode(rng.randbytes(16)).decode(),
            }
            for _ in range(rng.randint(1, 5))
        ]
        body: dict = {"files": files}
        if rng.random() < 0.3:
            body["gitIgnore"] = rng.choice(["*.log\n", "dir/\n!dir/a.txt\n", "**/sub/**\n"])
        return body

    def valid_lfs(self) -> dict:
        rng = self.rng
        objects = [
            {
                "oid": rng.choice(self.oids + [hashlib.sha256(rng.randbytes(8)).hexdigest()]),
                "size": rng.randint(0, 10**6),
            }
            for _ in range(rng.randint(1, 4))
        ]
        return {
            "operation": rng.choice(["upload", "download"]),
            "transfers": ["basic", "multipart"],
            "objects": objects,
            "hash_algo": "sha256",
            "ref": {"name": "refs/heads/main"},
        }

    # -- mutations ----------------------------------------------------------------------------------

    def evil_value(self):
        rng = self.rng
        r = rng.random()
        if r < 0.35:
            return rng.choice(EVIL_PATHS)
        if r < 0.45:
            return json.loads(deep(rng.choice([10, 63, 65, 200])))
        return rng.choice(EVIL_VALUES)

    def mutate_json(self, obj):
        """Replace, drop or add one value somewhere in `obj` (a copy)."""
        rng = self.rng
        obj = json.loads(json.dumps(obj))
        containers = []

        def walk(node):
            if isinstance(node, dict):
                containers.append(node)
                for v in node.values():
                    walk(v)
            elif isinstance(node, list):
                containers.append(node)
                for v in node:
                    walk(v)

        walk(obj)
        for _ in range(rng.randint(1, 3)):
            target = rng.choice(containers)
            if isinstance(target, dict):
                keys = list(target)
                action = rng.random()
                if keys and action < 0.6:
                    target[rng.choice(keys)] = self.evil_value()
                elif keys and action < 0.8:
                    del target[rng.choice(keys)]
                else:
                    target[
                        rng.choice(["path", "size", "oid", "key", "value", "files", "objects", "x" * 50])
                    ] = self.evil_value()
            elif target:
                i = rng.randrange(len(target))
                target[i] = self.evil_value() if rng.random() < 0.7 else target[i]
                if rng.random() < 0.2:
                    target.extend([target[i]] * rng.randint(1, 5))
            else:
                target.append(self.evil_value())
        return obj

    def mutate_bytes(self, data: bytes) -> bytes:
        rng = self.rng
        data = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            r = rng.random()
            if not data:
                data += rng.randbytes(rng.randint(1, 20))
            elif r < 0.3:
                del data[rng.randrange(len(data)) :]  # truncate
            elif r < 0.55:
                i = rng.randrange(len(data))
                data[i] = rng.randrange(256)
            elif r < 0.75:
                i = rng.randrange(len(data) + 1)
                data[i:i] = rng.choice(
                    [
                        b"\x00",
                        b"\xff\xfe",
                        b'"',
                        b"\\",
                        b"{",
                        b"]",
                        b"\n",
                        b"\\u00",
                        b"\\ud800",
                        rng.randbytes(rng.randint(1, 8)),
                    ]
                )
            else:
                lines = bytes(data).split(b"\n")
                if rng.random() < 0.5 and len(lines) > 1:
                    del lines[rng.randrange(len(lines))]
                else:
                    j = rng.randrange(len(lines))
                    lines[j:j] = [lines[j]] * rng.randint(1, 3)
                data = bytearray(b"\n".join(lines))
        return bytes(data)

    def quote_evil(self, text: str) -> str:
        """A path as a hostile client would put it in a URL: raw, percent-encoded, or double-encoded."""
        from urllib.parse import quote

        r = self.rng.random()
        raw = text.encode("utf-8", "surrogatepass")
        if r < 0.3:
            return quote(raw, safe="/%")
        if r < 0.6:
            return quote(raw, safe="")
        if r < 0.8:
            return quote(quote(raw, safe=""), safe="")
        return "".join(c if 32 < ord(c) < 127 else f"%{ord(c) & 0xFF:02x}" for c in text)

    # -- cases of each kind ---------------------------------------------------------------------------

    def case_commit(self) -> Case:
        rng = self.rng
        lines = self.valid_commit_lines()
        r = rng.random()
        if r < 0.45:
            i = rng.randrange(len(lines))
            lines[i] = self.mutate_json(lines[i])
            body = b"\n".join(dumps(line) for line in lines)
        elif r < 0.8:
            body = self.mutate_bytes(b"\n".join(dumps(line) for line in lines))
        elif r < 0.85:
            body = b"\n".join(
                [dumps(lines[0])] + [b'{"key":"deletedFile","value":{"path":"x"}}'] * rng.choice([10, 5000])
            )
        elif r < 0.9:
            body = (
                dumps(lines[0])
                + b"\n"
                + b'{"key":"file","value":{"path":"deep","content":'
                + deep(rng.choice([30, 40, 5000])).encode()
                + b"}}"
            )
        elif r < 0.95:  # a body over the server's --max-commit-gib (the fuzz server caps it at 1 MiB)
            big = base64.b64encode(b"\x00" * (1 << 20)).decode()
            body = (
                dumps(lines[0])
                + b"\n"
                + json.dumps(
                    {"key": "file", "value": {"path": "big.bin", "content": big, "encoding": "base64"}}
                ).encode()
            )
        else:
            body = b"\n" * rng.randint(0, 3) + dumps(lines[0]) + b"\n\n\n"
        rev = rng.choice(["main"] * 8 + ["refs%2Fheads%2Fmain", "nope", "..", "%2e%2e", "a" * 300])
        return Case(
            "commit",
            "POST",
            f"/api/models/{REPO}/commit/{rev}",
            body,
            {"Content-Type": "application/x-ndjson"},
        )

    def case_preupload(self) -> Case:
        rng = self.rng
        body = self.mutate_json(self.valid_preupload())
        raw = dumps(body)
        r = rng.random()
        if r < 0.25:
            raw = self.mutate_bytes(raw)
        elif r < 0.3:  # costly patterns: must be refused or answered quickly, never a stuck worker
            raw = json.dumps(
                {
                    "files": [{"path": "a" * 200 + "/" + "a" * 200, "size": 1, "sample": ""}] * 50,
                    "gitIgnore": "*a*a*a*a*a*a*a*a*b\n" * 20 + "**/a/**/a/**/a/**/b\n",
                }
            ).encode()
        return Case(
            "preupload",
            "POST",
            f"/api/models/{REPO}/preupload/main",
            raw,
            {"Content-Type": "application/json"},
        )

    def case_lfs(self) -> Case:
        rng = self.rng
        if rng.random() < 0.15:  # a forged or tampered signed upload URL
            oid = rng.choice(self.oids)
            query = rng.choice(
                [
                    f"size=3&exp={int(time.time()) + 99}&sig={'0' * 64}",
                    "size=-1",
                    "",
                    f"size={10**30}&exp=1&sig=x",
                    "size=3&exp=99999999999999999999&sig=%00",
                ]
            )
            target = rng.choice([oid, "../../etc/passwd", "%2e%2e", "0" * 64, "x" * 500])
            return Case("lfs", "PUT", f"/_lfs/upload/{target}?{query}", rng.randbytes(3))
        raw = dumps(self.mutate_json(self.valid_lfs()))
        if rng.random() < 0.3:
            raw = self.mutate_bytes(raw)
        repo = rng.choice([REPO] * 6 + ["alice/..", "..%2F..", "alice/fuzz%00", "x" * 200 + "/y"])
        return Case(
            "lfs",
            "POST",
            f"/{repo}.git/info/lfs/objects/batch",
            raw,
            {"Content-Type": "application/vnd.git-lfs+json", "Accept": "application/vnd.git-lfs+json"},
        )

    def case_path(self) -> Case:
        rng = self.rng
        evil = self.quote_evil(rng.choice(EVIL_PATHS + list(FILES)))
        rev = rng.choice(
            ["main", "main", self.quote_evil(rng.choice(EVIL_PATHS)), "refs%2Fheads%2Fmain", "%ff"]
        )
        ns, name = REPO.split("/")
        if rng.random() < 0.25:
            ns, name = self.quote_evil(rng.choice(EVIL_PATHS)), rng.choice([name, self.quote_evil("..")])
        r = rng.random()
        if r < 0.3:
            return Case("path", rng.choice(["GET", "HEAD"]), f"/{ns}/{name}/resolve/{rev}/{evil}")
        if r < 0.5:
            return Case("path", "GET", f"/api/models/{ns}/{name}/tree/{rev}/{evil}?recursive=true")
        if r < 0.6:
            return Case("path", "GET", f"/api/models/{ns}/{name}/revision/{rev}")
        if r < 0.7:
            return Case("path", "GET", f"/{rng.choice(['datasets', 'spaces', 'api/datasets'])}/{evil}/{evil}")
        if r < 0.85:
            paths = [rng.choice(EVIL_PATHS) for _ in range(rng.randint(1, 4))]
            if rng.random() < 0.5:
                from urllib.parse import urlencode

                body = urlencode(
                    [("paths", p) for p in paths], encoding="utf-8", errors="surrogatepass"
                ).encode()
                ctype = "application/x-www-form-urlencoded"
            else:
                body = json.dumps({"paths": paths if rng.random() < 0.8 else self.evil_value()}).encode()
                ctype = "application/json"
            return Case("path", "POST", f"/api/models/{REPO}/paths-info/{rev}", body, {"Content-Type": ctype})
        junk = rng.choice(
            [
                "/" + "a/" * 2000,
                "/%ff%fe/x",
                "/api/" + "%2e%2e/" * 10 + "etc/passwd",
                "/api/models/" + "x" * 10_000,
                "//etc/passwd",
                "/api/models/alice/fuzz/tree/main/%00",
                "/api/repos/create",
                "/api/models/alice/fuzz/xet-read-token/main",
            ]
        )
        return Case("path", "GET", junk)

    def case_header(self) -> Case:
        rng = self.rng
        r = rng.random()
        target = f"/api/models/{REPO}"
        if r < 0.3:
            return Case(
                "header", "GET", target, headers={"X-Big": "a" * rng.choice([70_000, 200_000])}, protocol=True
            )
        if r < 0.5:
            return Case(
                "header",
                "GET",
                target,
                headers={f"X-H{i}": "v" * 100 for i in range(rng.choice([50, 2000]))},
                protocol=True,
            )
        if r < 0.8:
            auth = rng.choice(
                [
                    "Bearer",
                    "Bearer ",
                    "Basic YWxpY2U6eA==",
                    "Bearer " + "x" * 5000,
                    "bearer  \t",
                    "Bearer tok\x7f",
                    "Token abc",
                    "Bearer " + self.token + "x",
                ]
            )
            return Case("header", "GET", target, headers={"Authorization": auth}, note="auth")
        return Case(
            "header",
            "POST",
            f"/api/models/{REPO}/preupload/main",
            b"{}",
            {
                "Content-Type": "application/json",
                "Content-Length-Extra": "1",
                "Transfer-Encoding": "identity",
            },
            protocol=True,
        )

    def evil_yaml(self) -> str:
        rng = self.rng
        laughs = ["a0: &a0 [x,x,x,x,x,x,x,x,x]"] + [
            f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)
        ]
        body = rng.choice(
            [
                "\n".join(laughs),
                "a: " + "[" * rng.choice([10, 70, 3000]),
                "a: " + "{b: " * 80 + "1" + "}" * 80,
                ": : :",
                "- [",
                "license: mit\ntags: [a, b]",
                "a: !!python/object:os.system ls",
                "\t\x00",
                "x: " + "y" * 100_000,
                "tags: " + dumps(self.evil_value()).decode("utf-8", "replace"),
                "date: 2024-01-01",
                "n: .nan",
                'tags: "\\ud83d\\ude00"',
                "? [a, b]\n: c",
            ]
        )
        return rng.choice(["---\n", "---\r\n", ""]) + body + rng.choice(["\n---\n# card", "", "\n---"])

    def case_card(self) -> Case:
        """Model card front matter: validate-yaml, or a README.md committed without it (then repo_info)."""
        rng = self.rng
        text = self.evil_yaml()
        if rng.random() < 0.5:
            return Case(
                "card",
                "POST",
                "/api/validate-yaml",
                dumps({"content": text, "repoType": "model"}),
                {"Content-Type": "application/json"},
            )
        path, data = "README.md", text.encode("utf-8", "replace")
        if rng.random() < 0.25:  # config.json feeds repo_info's `config`
            path = "config.json"
            data = rng.choice(
                [
                    b'{"model_type": NaN}',
                    b'{"architectures": ' + deep(3000).encode() + b"}",
                    b'{"model_type": "\\ud800"}',
                    b'{"model_type": ' + b"9" * 5000 + b"}",
                    b"[1]",
                ]
            )
        line = {
            "key": "file",
            "value": {"path": path, "encoding": "base64", "content": base64.b64encode(data).decode()},
        }
        body = dumps({"key": "header", "value": {"summary": "card"}}) + b"\n" + dumps(line)
        return Case(
            "card",
            "POST",
            f"/api/models/{REPO}/commit/main",
            body,
            {"Content-Type": "application/x-ndjson"},
            then=("GET", f"/api/models/{REPO}"),
        )

    def evil_hash(self) -> str:
        rng, good = self.rng, self.xet["xorb_hash"]
        return rng.choice([
            good.upper(), good[:-1], good + "0", "0" * 64, "g" * 64, self.quote_evil(str(self.evil_value())),
            good[:10] + "%2f" + good[13:], "../" + good, hashlib.sha256(rng.randbytes(8)).hexdigest(),
        ])  # fmt: skip

    @staticmethod
    def header_safe(text: str) -> str:
        """A valid header value (no control characters; the header cases send those)."""
        return "".join(c for c in text if (" " <= c != "\x7f") or c == "\t")[:8000]

    def evil_token(self) -> str:
        rng, token = self.rng, self.xet["token"]
        head, body, sig = token.split(".")
        forged = base64.urlsafe_b64encode(str(self.evil_value()).encode("utf-8", "surrogatepass")).decode()
        return rng.choice([
            token[:-3] + "AAA", token[: rng.randrange(len(token))], f"{head}.{forged}.{sig}",
            f"{head}.{body}", f"{head}.{'A' * 5000}.{sig}", token + "." + token, "xet1..", f"xet2.{body}.{sig}",
            self.mutate_bytes(token.encode()).decode("latin-1"),
        ])  # fmt: skip

    def case_xet(self) -> Case:
        rng, x = self.rng, self.xet
        auth = {"Authorization": f"Bearer {x['token']}"}
        octet = {**auth, "Content-Type": "application/octet-stream"}
        r = rng.random()
        if r < 0.25:  # a xorb: mutated body under its own hash, or the valid body under a wrong hash
            if rng.random() < 0.7:
                return Case("xet", "POST", f"/_xet/v1/xorbs/default/{x['xorb_hash']}",
                            self.mutate_bytes(x["xorb"]), octet)  # fmt: skip
            return Case("xet", "POST", f"/_xet/v1/xorbs/{rng.choice(['default', '..', ''])}/{self.evil_hash()}",
                        x["xorb"], octet)  # fmt: skip
        if r < 0.45:
            return Case("xet", "POST", "/_xet/v1/shards", self.mutate_bytes(x["shard"]), octet)
        if r < 0.55:  # token strings on every CAS route and the Hub's token endpoints
            path = rng.choice([f"/_xet/v1/reconstructions/{x['file']}", f"/_xet/v1/chunks/default/{x['chunk']}",
                               "/_xet/v1/shards", f"/api/models/{REPO}/xet-read-token/main"])  # fmt: skip
            method = "POST" if path.endswith("shards") else "GET"
            body = x["shard"] if method == "POST" else None
            return Case("xet", method, path, body, {"Authorization": self.header_safe(f"Bearer {self.evil_token()}")},
                        note="token")  # fmt: skip
        if r < 0.75:  # reconstruction ranges
            first, last = rng.choice([0, 1, 8000, 16999, 17000, 19239, 19240, -1, 10**30]), rng.choice(
                [0, 7999, 19239, 19240, 10**30, -5, ""]
            )
            header = rng.choice([f"bytes={first}-{last}", f"bytes=-{last}", f"bytes={first}-", "bytes=0-1,5-9",
                                 "bytes=" + "9" * 5000, "items=0-5", str(self.evil_value())])  # fmt: skip
            return Case("xet", "GET", f"/_xet/v1/reconstructions/{x['file']}", None,
                        {**auth, "Range": self.header_safe(header)})  # fmt: skip
        if r < 0.85:  # signed xorb URLs: exp, sig, name
            base, _, query = x["fetch"].partition("?")
            path = "/" + base.split("/", 3)[3]
            params = dict(p.split("=", 1) for p in query.split("&"))
            key = rng.choice(list(params))
            params[key] = rng.choice(["", "0", "9" * 40, params[key][:-1], self.quote_evil(str(self.evil_value()))])
            if rng.random() < 0.3:
                path = path.replace(x["xorb_hash"], self.evil_hash())
            if rng.random() < 0.2:
                path = path.replace("/fetch/", "/file/")
            query = "&".join(f"{k}={v}" for k, v in params.items())
            return Case("xet", rng.choice(["GET", "HEAD"]), f"{path}?{query}", None,
                        {"Range": rng.choice(["bytes=0-10", "bytes=999999-", "bytes=5-2"])})  # fmt: skip
        if r < 0.92:  # dedup queries
            return Case("xet", "GET", f"/_xet/v1/chunks/{rng.choice(['default', 'default-merkledb', 'x'])}/"
                        f"{rng.choice([x['chunk'], self.evil_hash()])}", None, auth)  # fmt: skip
        # the Hub side: token endpoints with odd revisions and methods; unknown CAS routes
        path = rng.choice([f"/api/models/{REPO}/xet-write-token/{self.quote_evil(str(self.evil_value()))}",
                           f"/api/models/{REPO}/xet-read-token/main/extra", "/_xet/v2/shards",
                           f"/_xet/v1/xorb-grants/default/{x['xorb_hash']}", "/_xet/", "/_xet/v1/telemetry",
                           # the casUrl's store id (this store's, another's, a bare one) in front of a route
                           f"/_xet/s-{self.store_id()}/v1/reconstructions/{x['file']}",
                           f"/_xet/s-{self.store_id()}", f"/_xet/s-{'0' * 16}/v1/shards", "/_xet/s-/v1/shards"])  # fmt: skip
        return Case("xet", rng.choice(["GET", "POST", "PUT", "DELETE"]), path, self.mutate_bytes(b"{}"), auth)

    def store_id(self) -> str:
        path = self.srv.root / "xet" / "store-id"
        return path.read_text() if path.is_file() else "0" * 16

    def case(self) -> Case:
        kind = self.rng.choices(
            ["commit", "preupload", "lfs", "path", "header", "card", "xet"], [30, 20, 15, 25, 10, 8, 20]
        )[0]
        return getattr(self, f"case_{kind}")()

    # -- sending ------------------------------------------------------------------------------------

    def send(self, case: Case) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.srv.port, timeout=self.timeout)
        try:
            conn.putrequest(case.method, case.path, skip_accept_encoding=True)
            headers = {"Authorization": f"Bearer {self.token}", **case.headers}
            body = case.body
            if body is not None:
                headers["Content-Length"] = str(len(body))
            for k, v in headers.items():
                conn.putheader(k, v.encode("latin-1", "replace"))
            conn.endheaders()
            if body:
                try:
                    conn.send(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the server answered early (413) and closed; read what it said
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def judge(self, case: Case, status: int, headers: dict, body: bytes) -> str | None:
        """None if the answer is clean, else what is wrong."""
        if status >= 500 and not (status == 501 and "xet" in case.path):
            return f"status {status}"
        if 200 <= status < 300:
            return None
        if case.method == "HEAD" or status in (304,) or 300 <= status < 400:
            return None
        try:
            data = json.loads(body)
            message = data.get("error") if isinstance(data, dict) else None
            if isinstance(data, dict) and isinstance(data.get("errors"), list) and data["errors"]:
                message = data["errors"][0].get("message")  # validate-yaml's shape (the client reads it too)
            if not isinstance(message, str) or not message:
                return f"status {status} without an error message"
        except ValueError:
            if not case.protocol:
                return f"status {status} with a non-JSON body {body[:80]!r}"
        return None

    def run(self, n: int, *, on_case=None) -> Report:
        report = Report()
        started = time.perf_counter()
        report.rss_start_kib = self.srv.status("VmRSS")
        warm = max(1, n // 5)
        for index in range(n):
            if index == warm:
                report.rss_start_kib = self.srv.status("VmRSS")  # after the first allocations settle
            case = self.case()
            t0 = time.perf_counter()
            try:
                status, headers, body = self.send(case)
                problem = self.judge(case, status, headers, body)
                if case.then is not None and problem is None:
                    follow = Case(case.kind, *case.then)
                    follow_status, headers, body = self.send(follow)
                    problem = self.judge(follow, follow_status, headers, body)
            except TimeoutError:
                status, problem = -1, f"no answer within {self.timeout} s (a hang)"
            except (ConnectionError, http.client.HTTPException) as err:
                if case.protocol:  # a malformed request may just be cut off
                    status, problem = -2, None
                else:
                    status, problem = -2, f"connection error {type(err).__name__}: {err}"
            seconds = time.perf_counter() - t0
            report.slowest = max(report.slowest, seconds)
            report.cases += 1
            report.by_status[status] += 1
            report.by_kind[case.kind] += 1
            if 200 <= status < 300:
                report.accepted[case.kind] += 1
            if problem:
                report.failures.append(
                    (case.kind, case.method, case.path[:200], (case.body or b"")[:200], problem)
                )
            if self.srv.proc.poll() is not None:
                report.failures.append((case.kind, case.method, case.path[:200], b"", "the server exited"))
                break
            if on_case is not None:
                on_case(index, case, status)
        report.rss_end_kib = self.srv.status("VmRSS")
        report.seconds = time.perf_counter() - started
        return report

    # -- afterwards ---------------------------------------------------------------------------------

    def log_problems(self) -> list[str]:
        text = self.srv.log.read_text(errors="replace")
        return [
            line
            for line in text.splitlines()
            if "Traceback" in line
            or "internal error" in line
            or "Exception in ASGI" in line
            or " 500 " in line
        ]

    def check_root(self, allowed_outside: set[str]) -> list[str]:
        """Problems: files next to --root that are not expected, symlinks inside it, listed paths that are
        not valid repo paths, files whose download differs from their listed size."""
        from hubtool.hub.server import names

        problems = []
        root = self.srv.root
        for item in root.parent.iterdir():
            if (
                item.name != root.name
                and item.name not in allowed_outside
                and not item.name.startswith("serve-")
            ):
                problems.append(f"unexpected file next to the root: {item.name}")
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                path = Path(folder, name)
                if path.is_symlink():
                    problems.append(f"symlink in the root: {path}")
                if not path.resolve().is_relative_to(root.resolve()):
                    problems.append(f"outside the root: {path}")
        api = self.srv.api(self.token)
        for entry in api.list_repo_tree(REPO, recursive=True):
            try:
                names.check_path(entry.path)
            except Exception:  # noqa: BLE001
                problems.append(f"invalid path committed: {entry.path!r}")
        for path in api.list_repo_files(REPO):
            from urllib.parse import quote

            status, headers, body = self.srv.raw("GET", f"/{REPO}/resolve/main/{quote(path)}")
            if status != 200 or int(headers.get("content-length", -1)) != len(body):
                problems.append(f"{path}: status {status}, {len(body)} bytes")
        return problems
