"""What an adapter is: one small dataclass shared by every adapter kind (no torch import here).

The same config drives sparse, block-sparse, LoRA and full fine-tuning so that `hub train` can switch
between them with one flag and the catalog can store one JSON shape for all of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import MISSING, InitVar, asdict, dataclass, field, fields, replace
from typing import Any

from hubtool import checks
from hubtool.delta.kinds import DEFAULT_LR, DELTA_KINDS, KIND, get_kind
from hubtool.errors import HubError, shown

MASK_SCORES = ("sensitivity", "snip", "grad", "magnitude", "random")

# The paper re-selects every 100 micro-batches; at effective batch 16 that is ~6 optimizer steps.
DEFAULT_MASK_INTERVAL = 6
# `hub train --lr` above this diverges at once (the defaults are 1e-4 and 3e-5, hubtool.delta.kinds):
# refused as a typo before anything loads, as is 1e300, which overflows the first update.
MAX_LR = 1.0


# --- settings declared once: default, one-line help, `hub train` flag and rule, per dataclass field ------
#
# A field made by setting() carries metadata {"help", "flag", "check"}: `hub train`'s options are
# generated from it (hubtool.cli._common.setting_options), and train() checks a config by the same rules
# (check_fields), so `--batch-size 0` and TrainConfig(batch_size=0) fail with one message naming
# --batch-size. A field without a flag is a setting of the library alone (no option).


def setting(default: Any = MISSING, *, help: str, flag: str | None = None,
            check: Callable[[Any, str], Any] | None = None, default_factory: Any = MISSING) -> Any:
    """A dataclass field with its help, its `hub train` flag and its rule: check(value, name) raises a
    HubError naming `name` (the flag) unless the value is good. None passes when the default is None."""
    meta = {"help": help, "flag": flag, "check": check}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def check_fields(config: Any, names: Any = None) -> None:
    """Each setting of `config` (the fields in `names`, default all) by its declared rule; the message
    names the field's flag ("--keep-ratio 0: expected a number in (0, 1]"), else its name."""
    for f in fields(config):
        if names is None or f.name in names:
            check_value(f, getattr(config, f.name))


def check_value(f: Any, value: Any) -> Any:
    """One field's value by its rule (None passes where the field's type allows it: "not set", or off)."""
    check = f.metadata.get("check")
    if check is None or (value is None and (f.default is None or "None" in str(f.type))):
        return value
    return check(value, f.metadata.get("flag") or f.name)


def checked(cls: type, values: dict[str, Any], base: Any = None) -> Any:
    """cls(**values) (or `base` with `values` replaced), each value (and each of `base`'s) checked by its
    field's rule first, so the error names the flag. Unknown names: a TypeError, as for any keyword."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise TypeError(f"{cls.__name__} has no setting {unknown[0]!r}")
    merged = values if base is None else {name: getattr(base, name) for name in known} | values
    for key, value in merged.items():
        check_value(known[key], value)
    if base is None:
        return cls(**values)
    return replace(base, **values) if values else base


def _kind(value: Any, flag: str) -> str:
    get_kind(value, flag)
    return value


def _targets(value: Any, flag: str) -> str:
    if not isinstance(value, str) or not value.strip():  # "" is a regex that matches every module
        raise HubError(f"{flag} {shown(value, 40)}: expected qkv, attn, mlp, all or a regex over module names")
    return value


def _mask_score(value: Any, flag: str) -> str:
    if value not in MASK_SCORES:
        raise HubError(f"{flag} {shown(value, 40)}: expected one of {', '.join(MASK_SCORES)}")
    return value


def _at_least(low: int) -> Callable[[Any, str], int]:
    rule = lambda value, flag: checks.count(value, flag, low=low)
    return rule


def _lr(value: Any, flag: str) -> float:
    return checks.number(value, flag, low=0.0, low_open=True, high=MAX_LR)


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

    kind: str = setting("sparse", flag="--kind", check=_kind, help=" | ".join(DELTA_KINDS) + ".")
    targets: str = setting("qkv", flag="--targets", check=_targets, help="qkv | attn | mlp | all | REGEX over module names.")
    keep_ratio: float = setting(0.05, flag="--keep-ratio", check=checks.ratio,
                                help="Fraction of each target weight that is trained, in (0, 1].")
    block_size: int = setting(16, flag="--block-size", check=checks.count, help="Tile size B for block-sparse.")
    mask_score: str = setting("sensitivity", flag="--mask-score", check=_mask_score, help=" | ".join(MASK_SCORES))
    mask_interval: int = setting(DEFAULT_MASK_INTERVAL, flag="--mask-interval", check=checks.count,
                                 help="Optimizer steps between mask re-selections.")
    # 0 would freeze the mask before any selection
    mask_steps: int | None = setting(None, flag="--mask-steps", check=checks.count,
                                     help="Re-select during the first N steps, then freeze.")
    rank: int = setting(4, flag="--rank", check=checks.count, help="LoRA rank.")
    alpha: float = setting(16.0, flag="--alpha", check=checks.positive, help="LoRA alpha.")
    # No flag: train() sets it from TrainConfig.seed (--seed), the one seed of a run.
    seed: int = setting(0, check=checks.seed, help="Seeds the random mask and the LoRA initialisation.")
    extra: dict[str, Any] = field(default_factory=dict)  # room for kind-specific knobs
    # Filled in by train() from its avoid / avoid_catalog / avoid_beta (--avoid..., declared by hand).
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


@dataclass
class TrainConfig:
    """How to train, evaluate and record an adapter (train(training=TrainConfig(...)), `hub train`'s
    options). Checked at construction by each field's rule, so TrainConfig(batch_size=0) fails with the
    message `hub train --batch-size 0` gives. (hubtool.sparse.trainer.TrainConfig is the training loop's
    own, internal, settings; train() builds it from this one.)"""

    max_steps: int | None = setting(None, flag="--max-steps", check=checks.count,
                                    help="Optimizer steps (overrides --epochs).")
    epochs: float | None = setting(None, flag="--epochs", check=checks.positive, help="Passes over the training split.")
    batch_size: int = setting(8, flag="--batch-size", check=checks.count, help="Examples per forward pass.")
    grad_accum: int = setting(1, flag="--grad-accum", check=checks.count, help="Micro-batches per optimizer step.")
    lr: float | None = setting(None, flag="--lr", check=_lr, help=f"Peak learning rate in (0, {MAX_LR:g}] (default per "
                               "kind: " + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + ").")
    seed: int = setting(0, flag="--seed", check=checks.seed,
                        help="Seeds the data order, the random mask and the LoRA initialisation.")
    max_length: int = setting(256, flag="--max-length", check=_at_least(2),
                              help="Tokens per example (prompt + answer), at least 2.")
    max_grad_norm: float | None = setting(0.1, check=checks.positive, help="Gradient clipping norm (None: no clipping).")
    max_train: int | None = setting(None, flag="--max-train", check=checks.count, help="Use at most N training examples.")
    max_val: int | None = setting(200, flag="--max-val", check=_at_least(0),
                                  help="Use at most N validation examples (0: none).")
    eval_limit: int | None = setting(200, flag="--eval-limit", check=_at_least(0),
                                     help="Evaluate on at most N test examples (0: skip).")
    max_new_tokens: int = setting(64, flag="--max-new-tokens", check=checks.count, help="Longest generated answer.")

    def __post_init__(self) -> None:
        check_fields(self)
