"""A compose recipe: what `hub compose` flags say, as data, read from and written to YAML.

Modelled on mergekit's YAML. A recipe either names its experts or a catalog query that picks them:

    merge_method: ties
    parameters: {density: 0.2, lambda: 1.0, normalize: true, seed: 0}
    dtype: bfloat16                      # of the output model folder (default: the base model's)
    select: {tasks: [qa, summarize], where: "rougeL>=10", pick: best}
    experts:                             # wins over `select` when given
      - expert: qa-sparse@3
        sha256: 9f2c...                  # checked when present
        parameters: {weight: 1.0}

Every output embeds the *resolved* recipe (experts pinned to versions and sha256, the query kept
under `select` as provenance), so composing it again reproduces the output. Stdlib + PyYAML only.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubtool import checks
from hubtool.errors import HubError, shown

PICKS = ("best", "latest")
DEFAULT_METHOD = "overlap-mean"  # the paper's merge for sparse experts; docs/compose.md "Which method" says why
MAX_RECIPE_BYTES = 1 << 20  # a recipe names experts and a few numbers; YAML aliases make more dangerous


@dataclass
class ExpertSpec:
    ref: str  # NAME@VERSION (or NAME / NAME@ALIAS before resolution)
    weight: float = 1.0
    sha256: str | None = None


@dataclass
class Recipe:
    method: str = DEFAULT_METHOD
    tasks: list[str] = field(default_factory=list)  # task names or categories (the query)
    task_weights: list[float] | None = None  # one per item of `tasks`, for every task it stands for
    where: str | None = None
    pick: str = "best"
    experts: list[ExpertSpec] = field(default_factory=list)  # explicit, or filled in by resolution
    density: float | None = None
    lam: float | None = None
    seed: int = 0
    normalize: bool | None = None  # ties / dare-* / magnitude-prune: divide by the experts' weights
    dtype: str | None = None
    base_model: str | None = None  # filled in by resolution; checked when given

    def check(self, where: str = "recipe") -> Recipe:
        """Validate every field (names in errors are the YAML keys); returns self."""
        from hubtool.merge.methods import METHODS

        if self.method not in METHODS:
            raise HubError(f"{where}: merge_method {self.method!r}: expected one of {', '.join(METHODS)}")
        if self.pick not in PICKS:
            raise HubError(f"{where}: select.pick {self.pick!r}: expected one of {', '.join(PICKS)}")
        if not self.tasks and not self.experts:
            raise HubError(f"{where}: nothing to compose: give select.tasks (--tasks) or experts (--experts)")
        if self.density is not None and not 0.0 < self.density <= 1.0:
            raise HubError(f"{where}: parameters.density {self.density}: expected a number in (0, 1]")
        if self.lam is not None and not math.isfinite(self.lam):
            raise HubError(f"{where}: parameters.lambda {self.lam}: expected a finite number")
        for e in self.experts:
            if not math.isfinite(e.weight):
                raise HubError(f"{where}: experts[{e.ref}].parameters.weight: expected a finite number")
        if self.dtype is not None:
            self.dtype = checks.dtype(self.dtype, f"{where}: dtype")
        spec = METHODS[self.method]
        if self.normalize is not None and not isinstance(self.normalize, bool):
            raise HubError(f"{where}: parameters.normalize {self.normalize!r}: expected true or false")
        given = {"density": self.density, "lam": self.lam, "normalize": self.normalize}
        for key, value in given.items():
            if value is not None and key not in spec.params:
                name = "lambda" if key == "lam" else key
                raise HubError(f"{where}: parameters.{name}: {self.method} takes no {name}")
        if "density" in spec.params and self.density is None:
            self.density = spec.defaults.get("density")
        # Methods that divide by Σ w_t (mean; magnitude-prune and dare-linear when normalising): weights
        # summing to 0 would divide by zero.
        normalizing = {"mean": True, "overlap-mean": True, "magnitude-prune": True, "dare-linear": False}
        divides = self.method in normalizing and (
            normalizing[self.method] if self.normalize is None or self.method in ("mean", "overlap-mean")
            else self.normalize)
        if divides and self.experts and sum(e.weight for e in self.experts) == 0:
            flag = "" if self.method in ("mean", "overlap-mean") else " (with --normalize)"
            raise HubError(f"{where}: the expert weights sum to 0; {self.method}{flag} divides by their sum")
        return self

    # --- YAML ---------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.density is not None:
            params["density"] = self.density
        if self.lam is not None:
            params["lambda"] = self.lam
        if self.normalize is not None:
            params["normalize"] = self.normalize
        params["seed"] = self.seed
        out: dict[str, Any] = {"merge_method": self.method}
        if self.base_model is not None:
            out["base_model"] = self.base_model
        out["parameters"] = params
        if self.dtype is not None:
            out["dtype"] = self.dtype
        if self.tasks:
            out["select"] = {"tasks": list(self.tasks), "pick": self.pick} | ({"where": self.where} if self.where else {})
            if self.task_weights is not None:
                out["select"]["weights"] = list(self.task_weights)
        if self.experts:
            out["experts"] = [
                {"expert": e.ref} | ({"sha256": e.sha256} if e.sha256 else {}) | {"parameters": {"weight": e.weight}}
                for e in self.experts
            ]
        return out

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    @classmethod
    def from_dict(cls, data: Any, where: str = "recipe") -> Recipe:
        if not isinstance(data, dict):
            raise HubError(f"{where}: expected a YAML mapping with merge_method, select and/or experts")
        _validate(data, where)  # the shape and types, by pydantic models (extra keys forbidden): one line
        params = data.get("parameters") or {}
        select = data.get("select") or {}
        tasks = select.get("tasks", [])
        if isinstance(tasks, str):
            tasks = checks.items(tasks)
        task_weights = select.get("weights")
        if task_weights is not None:
            if not isinstance(task_weights, list) or len(task_weights) != len(tasks):
                raise HubError(f"{where}: select.weights: expected one number per item of select.tasks")
            task_weights = [_number(w, f"{where}: select.weights") for w in task_weights]
        experts = []
        raw_experts = data.get("experts") or []
        for i, item in enumerate(raw_experts):
            if isinstance(item, str):
                item = {"expert": item}
            p = item.get("parameters") or {}
            experts.append(ExpertSpec(item["expert"], _number(p.get("weight", 1.0), f"{where}: experts[{i}].parameters.weight"),
                                      item.get("sha256")))
        return cls(
            method=str(data.get("merge_method", DEFAULT_METHOD)),
            tasks=tasks,
            task_weights=task_weights,
            where=select.get("where"),
            pick=str(select.get("pick", "best")),
            experts=experts,
            density=None if params.get("density") is None else _number(params["density"], f"{where}: parameters.density"),
            lam=None if params.get("lambda") is None else _number(params["lambda"], f"{where}: parameters.lambda"),
            seed=_seed(params.get("seed", 0), f"{where}: parameters.seed"),
            normalize=params.get("normalize"),
            dtype=data.get("dtype"),
            base_model=data.get("base_model"),
        ).check(where)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Recipe:
        import yaml

        from hubtool.format.safejson import check_depth

        path = Path(path)
        try:
            text = _read_recipe(path).decode("utf-8-sig")
            data = yaml.safe_load(text)
        except OSError as err:
            raise HubError(f"{path}: cannot read the recipe: {err.strerror}") from None
        except UnicodeDecodeError as err:
            raise HubError(f"{path}: not UTF-8 text (byte {err.start})") from None
        except yaml.YAMLError as err:
            raise HubError(f"{path}: not valid YAML ({' '.join(str(err).split())[:300]})") from None
        except RecursionError:
            raise HubError(f"{path}: YAML nested too deeply") from None
        except ValueError as err:  # PyYAML's int(): Python's limit on integer digits
            raise HubError(f"{path}: not a usable YAML value ({' '.join(str(err).split())[:120]})") from None
        # aliases: a DAG, walked as a tree. The checker speaks of JSON; this file is YAML.
        check_depth(data, str(path), max_depth=16, max_nodes=100_000,
                    error=lambda message: HubError(message.replace(": JSON ", ": YAML ", 1)))
        return cls.from_dict(data, str(path))


@functools.cache
def _models() -> Any:
    """The recipe's pydantic model (built on first use: pydantic stays out of `hub --help`). Strict types
    (a string is never a number, 1 never true), finite numbers, and no key the recipe does not know."""
    from typing import Annotated

    from pydantic import BaseModel, ConfigDict, Field

    strict = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    Number = float | int  # YAML writes 1 for 1.0

    class Parameters(BaseModel):
        model_config = strict
        density: Number | None = None
        lambda_: Annotated[Number | None, Field(alias="lambda")] = None
        seed: Any = 0  # checks.seed's rule, with its own message
        normalize: bool | None = None

    class Select(BaseModel):
        model_config = strict
        tasks: str | list[str] = []
        pick: str | None = None
        where: str | None = None
        weights: list[Number] | None = None

    class ExpertParameters(BaseModel):
        model_config = strict
        weight: Number = 1.0

    class ExpertEntry(BaseModel):
        model_config = strict
        expert: str
        sha256: str | None = None
        parameters: ExpertParameters | None = None

    class RecipeModel(BaseModel):
        model_config = strict
        merge_method: str | None = None
        base_model: str | None = None
        dtype: str | None = None
        parameters: Parameters | None = None
        select: Select | None = None
        experts: list[str | ExpertEntry] | None = None

    return RecipeModel


# pydantic's error types -> what the recipe's author reads
_EXPECTED = {"string_type": "expected a string", "bool_type": "expected true or false",
             "float_type": "expected a finite number", "int_type": "expected a finite number",
             "finite_number": "expected a finite number", "list_type": "expected a list",
             "model_type": "expected a mapping", "dict_type": "expected a mapping", "missing": "missing"}  # fmt: skip


def _validate(data: dict[str, Any], where: str) -> None:
    """One line for the first thing wrong in the recipe's shape: `<file>: parameters.density: expected a
    finite number, got [0.5]`."""
    from pydantic import ValidationError

    try:
        _models().model_validate(data)
    except ValidationError as err:
        # A union (an expert: a name or an entry) reports each branch; the deepest error is the branch the
        # author meant (a mapping's field, not "expected a string").
        first = max(err.errors(), key=lambda e: len(e["loc"]))
        loc = ""
        for part in first["loc"]:
            if isinstance(part, int):
                loc += f"[{part}]"
            elif part not in _UNION_TAGS:
                loc += ("." if loc else "") + ("lambda" if part == "lambda_" else str(part))
        if first["type"] == "extra_forbidden":
            raise HubError(f"{where}: {loc}: unknown key") from None
        what = _EXPECTED.get(first["type"], first["msg"])
        if loc.startswith("experts[") and loc.endswith("]") and first["type"] in ("model_type", "string_type"):
            what = "expected NAME@VERSION or {expert: NAME@VERSION, parameters: {weight: W}}"
        raise HubError(f"{where}: {loc}: {what}, got {shown(first.get('input'), 60)}") from None


_UNION_TAGS = {"str", "int", "float", "list[str]", "ExpertEntry"}  # pydantic's names of union branches in a loc


def _read_recipe(path: Path) -> bytes:
    """The bytes of a recipe file: a regular file of at most MAX_RECIPE_BYTES. Opened without blocking
    (a FIFO would wait for a writer) and read no further than the cap (/dev/zero never ends)."""
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise HubError(f"{path}: not a regular file (a pipe, device or folder); expected a recipe YAML file")
        if info.st_size > MAX_RECIPE_BYTES:
            raise HubError(f"{path}: {info.st_size} bytes; a recipe is at most {MAX_RECIPE_BYTES}")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_RECIPE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_RECIPE_BYTES:  # grew while read
        raise HubError(f"{path}: more than {MAX_RECIPE_BYTES} bytes; a recipe is at most {MAX_RECIPE_BYTES}")
    return data


def _number(value: Any, what: str) -> float:
    from hubtool.format.safejson import finite

    if not finite(value):
        raise HubError(f"{what}: expected a finite number, got {shown(value, 60)}")
    return float(value)


def _seed(value: Any, what: str) -> int:
    from hubtool import checks

    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return checks.seed(value, what)
