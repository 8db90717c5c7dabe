"""What an adapter is: one small dataclass shared by every adapter kind (no torch import here).

The same config drives sparse, block-sparse, LoRA and full fine-tuning so that `hub train` can switch
between them with one flag and the catalog can store one JSON shape for all of them.
"""

from __future__ import annotations

import math
from dataclasses import InitVar, asdict, dataclass, field, fields
from typing import Any

from hubtool.delta.kinds import KIND, get_kind
from hubtool.errors import HubError, shown

MASK_SCORES = ("sensitivity", "snip", "grad", "magnitude", "random")

# The paper re-selects every 100 micro-batches; at effective batch 16 that is ~6 optimizer steps.
DEFAULT_MASK_INTERVAL = 6
# `hub train --lr` above this diverges at once (the defaults are 1e-4 and 3e-5, hubtool.delta.kinds):
# refused as a typo before anything loads, as is 1e300, which overflows the first update.
MAX_LR = 1.0


@dataclass
class AdapterConfig:
    """How to adapt a base model.

    kind         sparse | block-sparse | lora | full (hubtool.delta.kinds); `method` is its old name,
                 still accepted as a keyword (AdapterConfig(method="lora")) and in stored configs (from_dict)
    targets      qkv | attn | mlp | all | a regex searched in module names
    keep_ratio   fraction of each target weight that is trained (sparse kinds), exact per weight
    block_size   B of the B x B tiles (block-sparse)
    mask_score   sensitivity (|delta * dL/dW|, iterative, the paper's) | snip | grad | magnitude | random
                 (the last four choose the mask once, before the first step)
    mask_interval  optimizer steps between re-selections (sensitivity)
    mask_steps   re-select only during the first mask_steps steps, then freeze; None: the first epoch
    rank, alpha  LoRA rank and scaling (delta = alpha / rank * B @ A)
    seed         seeds the random mask and the LoRA initialisation
    avoid        hub train --avoid (sparse kinds): the NAME@VERSION refs of the experts whose kept entries
                 were counted, sorted; None when not asked (then neither key is in to_dict())
    avoid_beta   beta >= 0 or inf: every selection ranks score / (1 + beta * count); stored as "inf"
                 when infinite (JSON has no infinity, and PostgreSQL's json type refuses the token)
    """

    kind: str = "sparse"
    targets: str = "qkv"
    keep_ratio: float = 0.05
    block_size: int = 16
    mask_score: str = "sensitivity"
    mask_interval: int = DEFAULT_MASK_INTERVAL
    mask_steps: int | None = None
    rank: int = 4
    alpha: float = 16.0
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # room for kind-specific knobs
    avoid: list[str] | None = None
    avoid_beta: float | None = None
    method: InitVar[str | None] = None  # the old name of `kind`, not stored

    def __post_init__(self, method: str | None) -> None:
        if method is not None:
            self.kind = method
        get_kind(self.kind, "adapter kind")
        if not isinstance(self.targets, str) or not self.targets.strip():  # "" would match every module
            raise HubError(f"targets {shown(self.targets, 40)}: expected qkv, attn, mlp, all or a regex")
        if self.mask_score not in MASK_SCORES:
            raise HubError(f"mask_score: expected one of {', '.join(MASK_SCORES)}, got {self.mask_score!r}")
        if not 0.0 < self.keep_ratio <= 1.0:
            raise HubError(f"keep_ratio: expected a number in (0, 1], got {self.keep_ratio}")
        if self.block_size < 1:
            raise HubError(f"block_size: expected a positive integer, got {self.block_size}")
        if self.mask_interval < 1:
            raise HubError(f"mask_interval: expected a positive number of steps, got {self.mask_interval}")
        if self.mask_steps is not None and self.mask_steps < 1:
            raise HubError(f"mask_steps: expected a positive number of steps, got {self.mask_steps}")
        if self.rank < 1:
            raise HubError(f"rank: expected a positive integer, got {self.rank}")
        if not math.isfinite(self.alpha):  # alpha / rank is the packed scale: NaN would poison every weight
            raise HubError(f"alpha: expected a finite number, got {self.alpha}")
        if self.avoid is not None:
            if not self.is_sparse:
                raise HubError(
                    f"--avoid: only sparse and block-sparse experts choose a mask; --kind {self.kind} has none"
                )
            self.avoid_beta = check_avoid_beta(1.0 if self.avoid_beta is None else self.avoid_beta)
        elif self.avoid_beta is not None:
            raise HubError("--avoid-beta: only with --avoid or --avoid-catalog")

    @property
    def is_sparse(self) -> bool:
        return KIND[self.kind].sparse

    @property
    def expert_kind(self) -> str:
        """The expert kind this adapter packs to: the kind's own name (one vocabulary)."""
        return self.kind

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> AdapterConfig:
        """A config as to_dict() wrote it, or as configs stored before the rename did ("method")."""
        data = cls.normalized(stored)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise HubError(f"adapter config: unknown field {shown(unknown[0], 60)}")
        if data.get("avoid_beta") == "inf":
            data["avoid_beta"] = math.inf
        return cls(**data)

    @staticmethod
    def normalized(stored: dict[str, Any]) -> dict[str, Any]:
        """A stored adapter config (to_dict()'s shape) with the old field name read as the new one."""
        data = dict(stored)
        if "method" in data:
            data.setdefault("kind", data.pop("method"))
        return data

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.avoid is None:  # configs from before --avoid (checkpoints, cache keys) stay the same
            del out["avoid"], out["avoid_beta"]
        elif math.isinf(self.avoid_beta):
            out["avoid_beta"] = "inf"
        return out


def check_avoid_beta(value: Any, field: str = "--avoid-beta") -> float:
    """beta of `hub train --avoid`: a number >= 0, or inf (also written "inf"); HubError otherwise."""
    x = value
    if isinstance(value, str):
        try:
            x = float(value.strip())
        except ValueError:
            x = math.nan
    if isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x) or x < 0:
        raise HubError(f"{field} {shown(value, 40)}: expected a number >= 0 or inf")
    return float(x)
