"""A throw-away PostgreSQL server for the tests and benchmarks, from the binaries on this machine.

    server = start()                      # initdb in a temp dir + pg_ctl start on a free loopback port
    url = server.create_database()        # postgresql+psycopg://postgres@127.0.0.1:PORT/hub_1, empty
    server.stop()                         # stops the server and deletes its directory

Trust auth, TCP on 127.0.0.1 only, the unix socket inside the temp dir (never /var/run/postgresql), and
fsync off: a test server, fast and private, that leaves nothing behind. initdb and postgres refuse to
run as root, so as root both run as the `postgres` user (Debian's package creates it) or else `nobody`,
on a directory under /tmp that user owns.

Run as a script, `python tests/postgres.py schema` prints the PostgreSQL DDL the migrations produce
(the content of schema/registry.postgres.sql) from a server started for the occasion.
"""

from __future__ import annotations

import itertools
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

BINARIES = ("initdb", "pg_ctl", "postgres")


class Unavailable(Exception):
    """PostgreSQL can't run here (no binaries, no psycopg): the reason, to skip (or fail under CI) with."""


def find_bindir() -> Path:
    """The folder holding initdb, pg_ctl and postgres: $HUB_PG_BINDIR when set (only there), else beside
    pg_ctl on PATH (through symlinks), else the newest /usr/lib/postgresql/N/bin (Debian's package puts
    them only there)."""
    candidates = []
    if os.environ.get("HUB_PG_BINDIR"):
        candidates.append(Path(os.environ["HUB_PG_BINDIR"]))
    elif on_path := shutil.which("pg_ctl"):
        candidates.append(Path(on_path).resolve().parent)
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir() and not os.environ.get("HUB_PG_BINDIR"):
        versions = [p for p in debian.iterdir() if re.fullmatch(r"\d+(\.\d+)?", p.name)]
        for version in sorted(versions, key=lambda p: float(p.name), reverse=True):
            candidates.append(version / "bin")
    for folder in candidates:
        if all(os.access(folder / b, os.X_OK) for b in BINARIES):
            return folder
    raise Unavailable(
        f"PostgreSQL binaries (initdb, pg_ctl, postgres) not found in {', '.join(map(str, candidates)) or 'PATH'} "
        "(searched $HUB_PG_BINDIR, else PATH and /usr/lib/postgresql/*/bin); install Debian's postgresql package"
    )


def _run_as() -> pwd.struct_passwd | None:
    """Who runs initdb and postgres: None (ourselves) unless we are root, who may not."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise Unavailable("running as root and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, root: Path, bindir: Path, user: pwd.struct_passwd | None) -> None:
        self.root, self.bindir, self.user = root, bindir, user
        self.data, self.log = root / "data", root / "server.log"
        self.port = 0
        self._names = itertools.count(1)
        self._template: str | None = None

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        extra = {}
        if self.user is not None:
            extra = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **extra,
        )

    def _check(self, proc: subprocess.CompletedProcess[str], what: str) -> None:
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"PostgreSQL {what} failed ({proc.returncode}): {proc.stderr.strip()}\n{log}")

    def init(self) -> None:
        # -N: no fsync of the new cluster; trust auth on every connection (loopback only, test data).
        proc = self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "-N"
        )
        self._check(proc, "initdb")

    def start(self) -> None:
        for attempt in range(3):  # a free port can be taken between probing and binding it
            self.port = _free_port()
            options = (
                f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            proc = self._run(
                "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"
            )
            if proc.returncode == 0:
                return
            if attempt == 2 or "could not bind" not in self.log.read_text(errors="replace"):
                self._check(proc, "start")

    def stop(self) -> None:
        try:
            if self.data.exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres", *, user: str = "postgres") -> str:
        return f"postgresql+psycopg://{user}@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE, roles) as the superuser."""
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(sql)

    def create_database(self, *, migrated: bool = False) -> str:
        """A new database, its URL: empty, or (migrated) a copy of one the migrations brought to the
        newest schema, which saves each test the 0.2-0.6 s of running them (40-300 ms either way)."""
        name = f"hub_{os.getpid()}_{next(self._names)}"
        template = ""
        if migrated:
            if self._template is None:
                self._template = self._migrated_template()
            template = f' TEMPLATE "{self._template}"'
        self.admin(f'CREATE DATABASE "{name}"{template}')
        return self.url(name)

    def _migrated_template(self) -> str:
        from hubtool.registry import db, migrate

        self.admin('CREATE DATABASE "hub_template"')
        engine = db.make_engine(self.url("hub_template"))
        try:
            migrate.ensure_schema(engine, blobs=self.root / "no-blobs")
        finally:
            engine.dispose()  # CREATE DATABASE ... TEMPLATE needs the template to have no sessions
        return "hub_template"


def start() -> PostgresServer:
    """A running server in a new temp dir; Unavailable when this machine can't run one."""
    bindir = find_bindir()
    try:
        import psycopg  # noqa: F401
    except ImportError as err:
        raise Unavailable(f"the psycopg driver is not installed ({err})") from None
    user = _run_as()
    root = Path(tempfile.mkdtemp(prefix="hubtool-pg-"))  # /tmp: every user can reach it (pytest's is 0700)
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    server = PostgresServer(root, bindir, user)
    try:
        server.init()
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


def _main(argv: list[str]) -> int:
    if argv != ["schema"]:
        print("usage: python tests/postgres.py schema > schema/registry.postgres.sql", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from hubtool.registry.schema_dump import dump_schema

    server = start()
    try:
        sys.stdout.write(dump_schema(server.create_database()))
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
