"""The catalog: which experts exist, where their blobs are, how they score, where they came from.

    cat = Catalog()                                   # $HUB_HOME/registry.db, or HUB_CATALOG
    rec = cat.register("qa.safetensors", tags=["demo"])
    cat.alias("qa", "best", rec.version)
    cat.list(task="qa", where="rougeL>=30", sort="-rougeL", limit=20)
    expert = cat.load("qa@best")
    cat.set_base_metrics("smollm2-135m", "qa", {"rougeL": 22.0})   # what `hub eval --base` stores
    cat.gains("qa@best")                     # {"qa": {"rougeL": expert's rougeL - base model's}}
    cat.set_examples("qa@best", "qa", rows)  # per-example results (evaluate.example_rows), for paired tests

Refs: "qa" is the latest version, "qa@3" a version, "qa@best" an alias (lookup.py). Writes take the
database's write lock up front and retry when busy (db.py), so many processes can share a catalog.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from sqlalchemy import Row, delete, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from hubtool import paths
from hubtool.errors import HubError, NotFoundError
from hubtool.fileio import crash_point, sha256_file
from hubtool.registry import baselines, db, lookup, migrate
from hubtool.registry import tables as t
from hubtool.registry import tasks as task_rows
from hubtool.registry import verify as verify_store
from hubtool.registry import where as where_lang
from hubtool.registry.blobs import (
    BlobStorage,
    Download,
    HubOrigin,
    Staged,
    blob_location,
    catalog_key,
    check_location,
    forget,
    is_location,
    open_store,
)
from hubtool.registry.lookup import LATEST, NAME, parse_ref
from hubtool.registry.records import ExpertRecord, TaskRecord, VerifyReport

if TYPE_CHECKING:
    from hubtool.data.tasks import TaskData
    from hubtool.delta import Expert

__all__ = ["Catalog", "parse_ref"]

_ALIAS = re.compile(r"[A-Za-z_][A-Za-z0-9._-]{0,63}")


def _check_name(name: str, what: str = "expert name") -> str:
    if not NAME.fullmatch(name):
        raise HubError(f"{what} {name!r}: expected letters, digits, '.', '_' or '-' (at most 128)")
    return name


def _float(value: Any, what: str) -> float:
    try:
        out = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer too large for a float
        out = math.nan
    if not math.isfinite(out):
        raise HubError(f"{what}: expected a finite number, got {value!r}")
    return out


def _metric_rows(values: Mapping[str, Any], task: str) -> dict[str, dict[str, float]]:
    """Accept {task: {metric: v}} or, for the primary task, a flat {metric: v}."""
    out: dict[str, dict[str, float]] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            for metric, v in value.items():
                out.setdefault(key, {})[metric] = _float(v, f"metrics[{key!r}][{metric!r}]")
        else:
            out.setdefault(task, {})[key] = _float(value, f"metrics[{key!r}]")
    return out


def _now() -> datetime:
    return datetime.now(UTC)


class Catalog:
    """Expert versions, their blobs, metrics, tags, aliases, lineage and tasks."""

    def __init__(self, url: str | None = None, *, blobs: Path | None = None,
                 download: Download | None = None) -> None:  # fmt: skip
        """Open (creating or upgrading) the catalog at `url`: any SQLAlchemy URL, default
        HUB_CATALOG or $HUB_HOME/registry.db. Blobs go to `blobs`, default $HUB_HOME/blobs. `download`
        fetches a row's blob that is not here from the Hub repo it was pushed to (the catalog knows no
        network: whoever opens it with a Hub hands one in, hubtool.hub.pull.hub_download())."""
        self.url = url or paths.default_catalog_url()
        # the local directory, fetching a row's blob from its Hub repo on first use (blobs.HubBlobStore)
        # (it lists this catalog among those sharing the store before its first blob: `hub verify` on another
        # catalog then asks this one which blobs it uses)
        self.blobs: BlobStorage = open_store(Path(blobs or paths.blobs_dir()), paths.hub_home() / "tmp",
                                             catalog=self.url, download=download)  # fmt: skip
        self.engine = db.make_engine(self.url)
        migrate.ensure_schema(self.engine, blobs=self.blobs.root)

    @classmethod
    def open(cls, catalog: Catalog | str | None = None, *, download: Download | None = None) -> Catalog:
        """The catalog handed in, or the one at that URL (None: the default). Library calls take either, so a
        script opens one catalog once and passes it to many calls."""
        return catalog if isinstance(catalog, Catalog) else cls(catalog, download=download)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- registering ------------------------------------------------------------------------

    def register(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        task: str | None = None,
        tasks: Sequence[str] = (),
        tags: Iterable[str] = (),
        metrics: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        parents: Iterable[str | Mapping[str, Any]] = (),
        description: str | None = None,
    ) -> ExpertRecord:
        """Validate a packed expert file, store its blob and add it as the next version of `name`.

        name/task/metrics/config/parents default to the file's metadata; explicit metrics and config
        keys win over the file's. `tasks` adds secondary tasks (a merged expert's). Parents are refs
        ("qa@2") or {"ref": ..., "weight": ..., "role": ...}.
        """
        from hubtool.format import unpack
        from hubtool.format.header import read_header

        path = Path(path)
        if catalog_key(self.url) is None:  # before anything lands in the store
            raise HubError(
                f"catalog {db.mask(self.url)}: an in-memory catalog ends with this process, and the blob stored "
                f"in {self.blobs.root} would stay behind with no row; expected a catalog that lasts (--catalog "
                f"or HUB_CATALOG: a file, {db.URL_EXAMPLES})"
            )
        if not path.is_file():
            raise NotFoundError(f"{path}: no such file")
        unpack(path)  # full validation; raises FormatError naming the file
        header = read_header(path)
        name = _check_name(name or header["name"])
        task = task or header["task"]
        all_tasks = list(dict.fromkeys([task, *tasks, *header.get("tasks", ())]))
        scores = _metric_rows({**(header.get("metrics") or {}), **(metrics or {})}, task)
        edges = list(parents) or list(header.get("parents") or ())
        targets = header.get("targets")
        row = {
            "name": name,
            "kind": header["kind"],
            "value_dtype": header["value_dtype"],
            "task": task,
            "base_model": header["base_model"],
            "base_revision": header.get("base_revision"),
            "targets": ",".join(targets) if isinstance(targets, list) else targets,
            "keep_ratio": header.get("keep_ratio"),
            "nnz": sum(int(w["nnz"]) for w in header["weights"].values()),
            "config": {**(header.get("config") or {}), **(config or {})},
            "description": description,
        }
        with self.blobs.stage(path) as staged:
            expert_id = db.retry(
                lambda: self._insert(staged, row, all_tasks, set(tags), scores, edges),
                f"registering {path}",
                self.engine.url,
            )
        return self._record(expert_id)

    def _insert(
        self,
        staged: Staged,
        row: dict[str, Any],
        all_tasks: list[str],
        tags: set[str],
        scores: dict[str, dict[str, float]],
        parents: list[str | Mapping[str, Any]],
    ) -> int:
        with db.write_transaction(self.engine) as conn:
            version = self._next_version(conn, row["name"])
            # one edge per parent version, even if "qa" and "qa@best" both name qa@3
            edges = list({e["parent"]: e for e in (self._edge(conn, p) for p in parents)}.values())
            # Placed under the write lock, so remove() can't delete this blob between here and commit.
            final = self.blobs.path(blob_location(staged.sha256))
            existed = final.exists()
            location = self.blobs.place(staged)
            placed = None if existed else final.stat().st_mtime_ns
            crash_point("register-placed")
            try:  # inside the transaction: the write lock is still held
                return self._insert_rows(conn, location, staged, version, edges, row, all_tasks, tags, scores)
            except BaseException:
                # The rows roll back: a blob this registration placed goes too (unless another catalog sharing
                # the store reused it meanwhile: place() touches what it reuses), so no orphan stays behind.
                try:
                    if placed is not None and final.stat().st_mtime_ns == placed:
                        final.unlink()
                except OSError:
                    pass
                raise

    def _insert_rows(self, conn: Connection, location: str, staged: Staged, version: int, edges: list[dict[str, Any]],
                     row: dict[str, Any], all_tasks: list[str], tags: set[str],
                     scores: dict[str, dict[str, float]]) -> int:  # fmt: skip
        """The rows of one registration whose blob is at `location`."""
        expert_id = conn.execute(
            insert(t.experts).values(
                **row,
                version=version,
                bytes=staged.size,
                sha256=staged.sha256,
                blob=location,
                created_at=_now(),
            )
        ).inserted_primary_key[0]
        conn.execute(
            insert(t.expert_tasks), [{"expert_id": expert_id, "task": task} for task in all_tasks]
        )
        if tags:
            conn.execute(
                insert(t.expert_tags), [{"expert_id": expert_id, "tag": tag} for tag in sorted(tags)]
            )
        self._put_metrics(conn, expert_id, scores)
        if edges:
            conn.execute(insert(t.lineage), [{"child_id": expert_id, **e} for e in edges])
        crash_point("register-commit")
        return expert_id

    def _next_version(self, conn: Connection, name: str) -> int:
        """Versions count up per name and are never reused, even after remove()."""
        last = conn.execute(
            select(t.expert_names.c.last_version).where(t.expert_names.c.name == name)
        ).scalar()
        if last is None:
            conn.execute(insert(t.expert_names).values(name=name, last_version=1))
            return 1
        conn.execute(
            update(t.expert_names).where(t.expert_names.c.name == name).values(last_version=last + 1)
        )
        return last + 1

    def _edge(self, conn: Connection, parent: str | Mapping[str, Any]) -> dict[str, Any]:
        spec = {"ref": parent} if isinstance(parent, str) else dict(parent)
        ref = str(spec["ref"])
        try:  # pin "qa" / "qa@best" to the version they mean today; keep refs from elsewhere as given
            ref = lookup.resolve(conn, ref).ref
        except NotFoundError:
            pass
        weight = spec.get("weight")
        return {
            "parent": ref,
            "role": spec.get("role"),
            "weight": None if weight is None else _float(weight, f"parent {ref!r} weight"),
        }

    def _put_metrics(self, conn: Connection, expert_id: int, scores: dict[str, dict[str, float]]) -> None:
        rows = [
            {"expert_id": expert_id, "task": task, "metric": metric, "value": value}
            for task, by_metric in scores.items()
            for metric, value in by_metric.items()
        ]
        for r in rows:  # portable upsert: metrics may be measured again later
            conn.execute(
                delete(t.metrics).where(
                    t.metrics.c.expert_id == expert_id,
                    t.metrics.c.task == r["task"],
                    t.metrics.c.metric == r["metric"],
                )
            )
        if rows:
            conn.execute(insert(t.metrics), rows)

    # ---- looking up -------------------------------------------------------------------------

    def get(self, ref: str) -> ExpertRecord:
        with self.engine.connect() as conn:
            return lookup.fetch(conn, lookup.resolve(conn, ref).id)

    def _record(self, expert_id: int) -> ExpertRecord:
        with self.engine.connect() as conn:
            return lookup.fetch(conn, expert_id)

    def list(
        self,
        *,
        task: str | None = None,
        base: str | None = None,
        kind: str | None = None,
        tag: str | None = None,
        where: str | None = None,
        sort: str | None = None,
        limit: int | None = None,
        tasks: Sequence[str] | None = None,
        offset: int = 0,
    ) -> list[ExpertRecord]:
        """Expert versions matching every given filter, sorted by `sort` (default name, version).
        `tasks`: experts for any of these tasks (tasks_for() turns a category into its tasks); `offset`:
        skip that many first (the catalog pages page with it)."""
        q = select(t.experts).where(*lookup.filters(task, base, kind, tag, where, tasks=tasks))
        if sort:
            q = q.order_by(*where_lang.order_by(sort))
        q = q.order_by(t.experts.c.name, t.experts.c.version)  # ties, and the default order
        if limit is not None:
            q = q.limit(limit)
        if offset:
            q = q.offset(offset)
        with self.engine.connect() as conn:
            return lookup.records(conn, conn.execute(q).all())

    def count(
        self,
        *,
        task: str | None = None,
        base: str | None = None,
        kind: str | None = None,
        tag: str | None = None,
        where: str | None = None,
        tasks: Sequence[str] | None = None,
    ) -> int:
        """How many expert versions list() would return without a limit."""
        clauses = lookup.filters(task, base, kind, tag, where, tasks=tasks)
        q = select(func.count()).select_from(t.experts).where(*clauses)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar() or 0)

    # ---- changing ---------------------------------------------------------------------------

    def remove(self, ref: str) -> ExpertRecord:
        """Drop one expert version (its metrics, tags, aliases go with it); delete its blob when no
        other version shares it. Lineage edges naming it as a parent stay (they are history)."""
        record = self.get(ref)
        check_location(record.blob, record.sha256)  # before anything changes: never delete another file

        def tx() -> None:
            trashed = None
            try:
                with db.write_transaction(self.engine) as conn:
                    conn.execute(delete(t.experts).where(t.experts.c.id == record.id))
                    shared = conn.execute(
                        select(func.count()).select_from(t.experts).where(t.experts.c.sha256 == record.sha256)
                    ).scalar()
                    if not shared and not self._used_elsewhere(record.blob):
                        trashed = self.blobs.trash(record.blob)
            except BaseException:
                if trashed is not None:
                    self.blobs.restore(trashed, record.blob)
                raise
            if trashed is not None:
                crash_point("remove-committed")
                trashed.unlink()

        db.retry(tx, f"removing {record.ref}", self.engine.url)
        return record

    def _used_elsewhere(self, location: str) -> bool:
        """Whether another catalog sharing the blob store may use the blob at `location`: one of them
        references it, one could not be asked, or the blob was touched within the grace period (a
        registration of theirs reusing it may not have committed yet). remove() keeps such a blob;
        `hub verify --repair` removes it once no catalog uses it."""
        others = verify_store.others(self.blobs.root, self.url)
        if not others.shared:
            return False
        if location in others.referenced or others.unchecked:
            return True
        try:
            age = time.time() - self.blobs.path(location).stat().st_mtime
        except OSError:
            return False
        return age < verify_store.GRACE_SECONDS

    def alias(self, name: str, alias: str, version: int | str) -> ExpertRecord:
        """Point name@alias at a version (moving it if it exists). `version` may be a number or
        another alias of the same name."""
        if alias.isdigit() or not _ALIAS.fullmatch(alias) or alias == LATEST:
            raise HubError(
                f"alias {alias!r} for {name!r}: expected a word starting with a letter or '_' "
                f"(not a number, which would read as a version, and not {LATEST!r})"
            )

        def tx() -> int:
            with db.write_transaction(self.engine) as conn:
                target = lookup.resolve(conn, f"{name}@{version}")
                conn.execute(delete(t.aliases).where(t.aliases.c.name == name, t.aliases.c.alias == alias))
                conn.execute(insert(t.aliases).values(name=name, alias=alias, expert_id=target.id))
                return target.id

        return self._record(db.retry(tx, f"setting alias {name}@{alias}", self.engine.url))

    def unalias(self, name: str, alias: str) -> None:
        def tx() -> int:
            with db.write_transaction(self.engine) as conn:
                return conn.execute(
                    delete(t.aliases).where(t.aliases.c.name == name, t.aliases.c.alias == alias)
                ).rowcount

        if not db.retry(tx, f"removing alias {name}@{alias}", self.engine.url):
            raise NotFoundError(f"{name}@{alias}: no such alias")

    def set_metrics(self, ref: str, task: str, values: Mapping[str, float]) -> ExpertRecord:
        """Add or overwrite metrics of one expert version on one task."""
        scores = _metric_rows({task: values}, task)

        def tx() -> int:
            with db.write_transaction(self.engine) as conn:
                expert_id = lookup.resolve(conn, ref).id
                self._put_metrics(conn, expert_id, scores)
                return expert_id

        return self._record(db.retry(tx, f"setting metrics of {ref}", self.engine.url))

    def set_hub(self, ref: str, repo: str, commit: str) -> ExpertRecord:
        """Record where a version was pushed (the only fields of a version that ever change)."""

        def tx() -> int:
            with db.write_transaction(self.engine) as conn:
                expert_id = lookup.resolve(conn, ref).id
                conn.execute(
                    update(t.experts)
                    .where(t.experts.c.id == expert_id)
                    .values(hub_repo=repo, hub_commit=commit)
                )
                return expert_id

        return self._record(db.retry(tx, f"setting the hub location of {ref}", self.engine.url))

    def lineage(self, ref: str) -> dict[str, list[dict[str, Any]]]:
        """{"parents": [{ref, role, weight, present}], "children": [{ref, role, weight}]}."""
        with self.engine.connect() as conn:
            me = lookup.resolve(conn, ref)
            parents = conn.execute(
                select(t.lineage.c.parent, t.lineage.c.role, t.lineage.c.weight)
                .where(t.lineage.c.child_id == me.id)
                .order_by(t.lineage.c.parent)
            ).all()
            present = {
                f"{n}@{v}"
                for n, v in conn.execute(
                    select(t.experts.c.name, t.experts.c.version).where(
                        t.experts.c.name.in_({p.parent.partition("@")[0] for p in parents})
                    )
                )
            }
            children = conn.execute(
                select(t.experts.c.name, t.experts.c.version, t.lineage.c.role, t.lineage.c.weight)
                .join(t.lineage, t.lineage.c.child_id == t.experts.c.id)
                .where(t.lineage.c.parent == me.ref)
                .order_by(t.experts.c.name, t.experts.c.version)
            ).all()
        return {
            "parents": [
                {"ref": p.parent, "role": p.role, "weight": p.weight, "present": p.parent in present}
                for p in parents
            ],
            "children": [
                {"ref": f"{c.name}@{c.version}", "role": c.role, "weight": c.weight} for c in children
            ],
        }

    # ---- base-model baselines ---------------------------------------------------------------

    def set_base_metrics(
        self, base_model: str, task: str, values: Mapping[str, float], *, revision: str | None = None
    ) -> None:
        """Record how the base model itself scores on a task; a metric measured again is replaced."""
        if not base_model or not task:
            raise HubError(f"base metrics: expected a base model and a task, got {base_model!r}, {task!r}")
        if not values:
            raise HubError(f"base metrics of {base_model} on {task}: expected at least one metric")
        scores = {m: _float(v, f"base metrics of {base_model} on {task}[{m!r}]") for m, v in values.items()}
        at = _now()

        def tx() -> None:
            with db.write_transaction(self.engine) as conn:
                baselines.put(conn, base_model, task, scores, revision, at)

        db.retry(tx, f"setting base metrics of {base_model} on {task}", self.engine.url)

    def base_metrics(self, base_model: str, task: str) -> dict[str, float]:
        """{metric: value} of the base model on one task; {} if it was never evaluated there."""
        with self.engine.connect() as conn:
            return baselines.fetch(conn, base_model, [task]).get(task, {})

    def gains(self, ref: str) -> dict[str, dict[str, float]]:
        """{task: {metric: expert value - base model value}} for the metrics both have."""
        with self.engine.connect() as conn:  # one read transaction: the record and its baselines agree
            record = lookup.fetch(conn, lookup.resolve(conn, ref).id)
            base = baselines.fetch(conn, record.base_model, record.metrics)
        return baselines.gains(record.metrics, base)

    def describe(self, ref: str) -> dict[str, Any]:
        """Everything `hub show` shows (and prints with --json): the record, its value dtype and per-weight
        header entries (from the blob's header: no tensor is read), lineage, the base model's scores on the
        expert's tasks and the gain over them."""
        from hubtool.format.header import read_header

        rec = self.get(ref)
        header = read_header(self.blob_path(rec))
        found = {task: self.base_metrics(rec.base_model, task) for task in rec.metrics}
        return rec.to_dict() | {
            "value_dtype": rec.value_dtype or header["value_dtype"],  # null in rows older than migration 0003
            "weights": header["weights"],
            "lineage": self.lineage(rec.ref),
            "base_metrics": {task: values for task, values in found.items() if values},
            "gain": self.gains(rec.ref),
        }

    # ---- per-example results ----------------------------------------------------------------

    def set_examples(
        self,
        ref: str | None,
        task: str,
        rows: Sequence[Mapping[str, Any]],
        *,
        base_model: str | None = None,
        base_revision: str | None = None,
        split: str = "test",
        settings: Mapping[str, Any] | None = None,
        metric: str | None = None,
    ) -> int:
        """Store one evaluation's per-example rows (hubtool.evaluate.example_rows) for an expert version
        (`ref`) or, with ref=None, a base model (`base_model`, scored at `base_revision`), replacing that
        subject's previous evaluation on (task, split), all in one transaction. `metric` names the rows'
        values (default: accuracy when every row has it, else rougeL); `settings` are the evaluation's
        options (limit, max_new_tokens, ...). Returns the number of rows stored."""
        subject = self._example_subject(ref, base_model)
        if not task or not split:
            raise HubError(f"examples of {subject}: expected a task and a split, got {task!r}, {split!r}")
        where = f"examples of {subject} on {task} ({split})"
        checked = [_example_row(row, f"{where}: rows[{i}]") for i, row in enumerate(rows)]
        if not checked:
            raise HubError(f"{where}: expected at least one example row")
        seen: set[int] = set()
        for i, row in enumerate(checked):
            if row["idx"] in seen:
                raise HubError(f"{where}: rows[{i}].idx {row['idx']} appears twice; expected one row per example")
            seen.add(row["idx"])
        if metric is None:
            metric = "accuracy" if all("accuracy" in r["metrics"] for r in checked) else "rougeL"
        evaluation = {
            "expert_id": None,
            "base_model": base_model if ref is None else None,
            "base_revision": base_revision if ref is None else None,
            "task": task,
            "split": split,
            "metric": metric,
            "n": len(checked),
            "settings": _json_settings(settings, where),
            "created_at": _now(),
        }
        ev = t.evaluations.c

        def tx() -> None:
            with db.write_transaction(self.engine) as conn:
                if ref is not None:
                    evaluation["expert_id"] = lookup.resolve(conn, ref).id
                    mine = ev.expert_id == evaluation["expert_id"]
                else:
                    mine = ev.base_model == base_model
                # The old evaluation's examples go with it (ON DELETE CASCADE).
                conn.execute(delete(t.evaluations).where(mine, ev.task == task, ev.split == split))
                evaluation_id = conn.execute(insert(t.evaluations).values(**evaluation)).inserted_primary_key[0]
                conn.execute(insert(t.eval_examples), [{**row, "evaluation_id": evaluation_id} for row in checked])

        db.retry(tx, f"storing the {where}", self.engine.url)
        return len(checked)

    def examples(
        self, ref: str | None, task: str, *, base_model: str | None = None, split: str = "test"
    ) -> list[dict[str, Any]]:
        """The per-example rows of an expert version (`ref`) or base model (ref=None, `base_model`) on
        (task, split), ordered by idx: {idx, key, value, metrics, gold_logprob, text}; [] when none."""
        self._example_subject(ref, base_model)
        ev, ex = t.evaluations.c, t.eval_examples.c
        with self.engine.connect() as conn:
            mine = ev.expert_id == lookup.resolve(conn, ref).id if ref is not None else ev.base_model == base_model
            rows = conn.execute(
                select(ex.idx, ex.key, ex.value, ex.metrics, ex.gold_logprob, ex.text)
                .join(t.evaluations, ev.id == ex.evaluation_id)
                .where(mine, ev.task == task, ev.split == split)
                .order_by(ex.idx)
            ).all()
        return [{**row._asdict(), "metrics": dict(row.metrics or {})} for row in rows]

    def evaluations(
        self, ref: str | None, *, base_model: str | None = None, split: str | None = None
    ) -> list[dict[str, Any]]:
        """What per-example results an expert version (`ref`) or base model (ref=None, `base_model`) has:
        [{task, split, metric, n, settings, base_revision, created_at}] by task and split (one split only
        when given)."""
        self._example_subject(ref, base_model)
        ev = t.evaluations.c
        with self.engine.connect() as conn:
            mine = ev.expert_id == lookup.resolve(conn, ref).id if ref is not None else ev.base_model == base_model
            query = select(ev.task, ev.split, ev.metric, ev.n, ev.settings, ev.base_revision, ev.created_at).where(mine)
            if split is not None:
                query = query.where(ev.split == split)
            rows = conn.execute(query.order_by(ev.task, ev.split)).all()
        return [row._asdict() for row in rows]

    @staticmethod
    def _example_subject(ref: str | None, base_model: str | None) -> str:
        """How messages name an evaluation's subject; a HubError unless exactly one of the two is given."""
        if (ref is None) == (base_model is None) or (ref is None and not base_model):
            raise HubError(
                f"per-example results: expected an expert ref or (with ref=None) a base model, "
                f"got ref={ref!r}, base_model={base_model!r}"
            )
        return ref if ref is not None else f"base model {base_model}"

    # ---- blobs ------------------------------------------------------------------------------

    def blob_path(self, record: ExpertRecord, *, fetch: bool = True) -> Path:
        """The local file of a row's blob. Not here but the row names a Hub repo (it was pushed or pulled):
        downloaded from there first (HF_ENDPOINT), checked against the row's sha256 and placed in the
        store (fetch=False: never). A blob that is nowhere is the caller's NotFoundError to raise."""
        path = self.blobs.path(record.blob)
        if not fetch or path.is_file() or not (record.hub_repo and record.hub_commit):
            return path
        return self.blobs.fetch(record.blob, record.sha256, HubOrigin(record.hub_repo, record.hub_commit))

    def load(self, ref: str) -> Expert:
        """Unpack an expert version from its blob (fetched from its Hub repo if it is not local), after
        checking the blob is still intact."""
        from hubtool.format import unpack

        record = self.get(ref)
        path = self.blob_path(record)
        if not path.is_file():
            raise NotFoundError(f"{record.ref}: blob {path} is missing; run `hub verify`")
        if sha256_file(path) != record.sha256:
            raise HubError(f"{record.ref}: blob {path} does not match its sha256; run `hub verify`")
        return unpack(path)

    def verify(self, *, repair: bool = False, grace: float = verify_store.GRACE_SECONDS) -> VerifyReport:
        """Re-hash every local blob; report versions whose blob changed or vanished (rows whose blob is on
        a Hub instead are `remote`, fetched on first use) and what a crash can leave: unreferenced blobs,
        the store's temp and trash files, $HUB_HOME/tmp leftovers. repair=True removes those leftovers (a
        trashed blob a row still needs is put back) and lists what it removed.

        Nothing in use is touched: temp files and scratch folders are removed only when no live process
        holds their lock, and unreferenced blobs only under the catalog's write lock (SQLite: no
        registration can be between placing its blob and committing its row) or, on databases without one
        global write lock or when other catalogs share the store, once older than `grace` seconds.

        Unreferenced means by no catalog that shares the blob store: every catalog on the store's list (and
        the default ones beside it) is asked which blobs it uses (`others`, `shared`). If one cannot be
        asked (`unchecked`), no unreferenced blob is removed (`unclaimed`); neither is one older than the
        list itself. A listed SQLite catalog whose file is gone references nothing (`gone`; repair=True
        takes it off the list).

        First the catalog file itself: scrambled pages (SQLite) are one HubError saying how to get the rows
        back; values in its JSON columns that are not JSON are listed in `damaged`."""
        damaged = verify_store.check_file(self.engine)
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    t.experts.c.name, t.experts.c.version, t.experts.c.sha256, t.experts.c.blob,
                    t.experts.c.hub_repo, t.experts.c.hub_commit,
                ).order_by(t.experts.c.name, t.experts.c.version)
            ).all()  # fmt: skip
        report = VerifyReport(damaged=damaged)
        actual: dict[str, str | None] = {}  # location -> sha256 of the file, None if missing
        for name, version, sha, location, hub_repo, hub_commit in rows:
            if location not in actual:
                path = self.blobs.path(location)
                actual[location] = sha256_file(path) if path.is_file() else None
                report.checked += actual[location] is not None
            if actual[location] is None:
                (report.remote if hub_repo and hub_commit else report.missing).append(f"{name}@{version}")
            elif actual[location] != sha:
                report.mismatched.append(f"{name}@{version}")
        sqlite = self.engine.dialect.name == "sqlite"
        others = verify_store.Others()

        def shared_sweep(own: set[str], *, repair: bool, locked: bool) -> None:
            nonlocal others
            others = verify_store.others(self.blobs.root, self.url)
            # Our write lock rules out only our own registrations in flight; another catalog's may be
            # between placing a blob and committing its row (place() touches a blob it reuses): the grace.
            # (A catalog that has never written here could enroll and reuse an orphan during the sweep
            # itself: a window of milliseconds, once per catalog and store.)
            verify_store.sweep(self.blobs, own | others.referenced, report, repair=repair,
                               grace=0.0 if locked and not others.shared else grace,
                               unclaimed_before=others.unclaimed_before())  # fmt: skip
            theirs = {loc for loc in others.referenced - own if is_location(loc)}
            report.shared = sum(self.blobs.path(loc).is_file() for loc in theirs)

        def sweep() -> None:
            # Under the write lock (SQLite: the whole database's) nobody places a blob meanwhile, so an
            # unreferenced blob is a leftover, not a registration in flight.
            with db.write_transaction(self.engine) as conn:
                referenced = set(conn.execute(select(t.experts.c.blob)).scalars())
                shared_sweep(referenced, repair=repair, locked=sqlite)

        if repair:
            db.retry(sweep, "repairing the blob store")
            for entry in others.gone:  # its file is gone: it holds no rows, it needs no blob
                forget(entry)
            for location in report.restored:  # a trashed blob put back: its rows are whole again
                actual[location] = sha256_file(self.blobs.path(location))
                report.checked += 1
            for name, version, sha, location, *_ in rows:
                ref = f"{name}@{version}"
                if location in report.restored and ref in report.missing:
                    report.missing.remove(ref)
                    if actual[location] != sha:
                        report.mismatched.append(ref)
        elif sqlite:
            try:
                db.retry(sweep, "checking the blob store")
            except (HubError, DBAPIError):  # a read-only catalog file: the same check without the lock
                shared_sweep(set(actual), repair=False, locked=False)
        else:
            shared_sweep(set(actual), repair=False, locked=False)
        report.others = list(others.checked)
        report.unchecked = list(others.unchecked)
        report.gone = [db.describe(entry.url) for entry in others.gone if entry.url]
        return report

    # ---- tasks ------------------------------------------------------------------------------

    def add_task(
        self,
        name: str,
        *,
        description: str | None = None,
        tags: Iterable[str] = (),
        data_source: str | None = None,
        sizes: Mapping[str, int] | None = None,
        category: str | None = None,
    ) -> TaskRecord:
        """Describe a task (created, or replaced if it exists). `data_source` is the file or folder
        load_task reads for it; `category` e.g. qa, summarize, classify, multiple-choice, math."""
        from hubtool.data.tasks import check_category

        _check_name(name, "task name")
        row = {
            "name": name,
            "description": description,
            "tags": sorted(set(tags)),
            "data_source": data_source,
            "sizes": {k: int(v) for k, v in (sizes or {}).items()},
            "created_at": _now(),
            "category": check_category(category),
        }

        def tx() -> None:
            with db.write_transaction(self.engine) as conn:
                conn.execute(delete(t.tasks).where(t.tasks.c.name == name))
                conn.execute(insert(t.tasks).values(**row))

        db.retry(tx, f"adding task {name}", self.engine.url)
        return self.get_task(name)

    def get_task(self, name: str) -> TaskRecord:
        with self.engine.connect() as conn:
            row = conn.execute(select(t.tasks).where(t.tasks.c.name == name)).first()
        if row is None:
            raise NotFoundError(f"no task named {name!r} in the catalog")
        return _task_record(row)

    def list_tasks(self) -> list[TaskRecord]:
        with self.engine.connect() as conn:
            return [_task_record(r) for r in conn.execute(select(t.tasks).order_by(t.tasks.c.name))]

    def record_task(self, task: TaskData, *, category: str | None = None) -> TaskRecord:
        """What training leaves behind: the task (a hubtool.data TaskData) with its data source as an
        absolute path, sizes, description and category (`category`, else the data's own, else the one
        recorded before), so `hub eval --task NAME` finds it again without the file."""
        try:
            previous: TaskRecord | None = self.get_task(task.name)
        except NotFoundError:
            previous = None
        return self.add_task(task.name, **task_rows.task_row(task, category, previous))

    def category_of(self, task: str) -> str | None:
        """The task's category: the tasks table's, else the built-in map's; None when neither has one."""
        with self.engine.connect() as conn:
            return task_rows.category_of(conn, task)

    def tasks_for(self, spec: str, *, with_experts: bool = True) -> list[str]:
        """What one item of `--tasks` means. A task name (in the tasks table, a built-in or shared-data
        task, or any expert's task) -> [spec]; a category -> its tasks, sorted (with_experts: only those
        with at least one expert in the catalog, possibly none); else NotFoundError listing the known
        tasks and categories."""
        with self.engine.connect() as conn:
            return task_rows.tasks_for(conn, spec, with_experts=with_experts)


def _example_row(row: Any, where: str) -> dict[str, Any]:
    """One checked eval_examples row (without its evaluation id) from an example_rows() dict."""
    if not isinstance(row, Mapping):
        raise HubError(f"{where}: expected a mapping with idx, key, value, metrics, gold_logprob, text")
    idx = row.get("idx")
    if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
        raise HubError(f"{where}.idx: expected the example's index in the split (a whole number >= 0), got {idx!r}")
    key, text = row.get("key"), row.get("text")
    if not isinstance(key, str) or not key:
        raise HubError(f"{where}.key: expected the example's key (a non-empty string), got {key!r}")
    if not isinstance(text, str):
        raise HubError(f"{where}.text: expected the prediction's text (a string), got {type(text).__name__}")
    metrics = row.get("metrics") or {}
    if not isinstance(metrics, Mapping):
        raise HubError(f"{where}.metrics: expected {{metric: value}}, got {type(metrics).__name__}")
    gold = row.get("gold_logprob")
    return {
        "idx": idx,
        "key": key,
        "value": _float(row.get("value"), f"{where}.value"),
        "metrics": {str(m): _float(v, f"{where}.metrics[{m!r}]") for m, v in metrics.items()},
        "gold_logprob": None if gold is None else _float(gold, f"{where}.gold_logprob"),
        "text": text,
    }


def _json_settings(settings: Mapping[str, Any] | None, where: str) -> dict[str, Any] | None:
    """The evaluation's settings as stored (a JSON object), or a HubError naming what JSON cannot hold."""
    import json

    if settings is None:
        return None
    try:
        return json.loads(json.dumps(dict(settings), allow_nan=False))
    except (TypeError, ValueError) as why:
        raise HubError(f"{where}: settings: expected JSON values (numbers, strings, lists, objects): {why}") from None


def _task_record(row: Row[Any]) -> TaskRecord:
    return TaskRecord(
        name=row.name,
        description=row.description,
        tags=list(row.tags or []),
        data_source=row.data_source,
        sizes=dict(row.sizes or {}),
        created_at=row.created_at,
        category=row.category,
    )
