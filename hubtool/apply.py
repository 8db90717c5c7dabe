"""Apply an expert to a base model: W += scale * delta for every adapted weight, in place.

Everything is checked before anything is written (names, shapes, fingerprints), so a failing apply
leaves the target untouched. Sparse and block deltas are scatter-added (only the kept entries are
read and written); LoRA and full deltas are dense adds. Arithmetic is fp32, rounded once to the
weight's dtype. The fingerprint is of the *base* weight: to stack several experts, check them all
against the base first (check_base) and then apply with check_fingerprint=False.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from hubtool.delta import Delta, Expert
from hubtool.errors import FingerprintError, FormatError, HubError
from hubtool.format.fingerprint import fingerprint

Target = torch.nn.Module | Mapping[str, torch.Tensor]


def apply_expert(
    target: Target, expert: Expert, scale: float = 1.0, *, check_fingerprint: bool = True
) -> None:
    """Add scale * delta into each of the expert's weights in `target` (a module or a state dict).

    Raises FormatError for a missing weight or a shape mismatch and FingerprintError when the
    target's weight is not the base weight the expert was trained against.
    """
    weights = check_base(target, expert, check_fingerprint=check_fingerprint)
    with torch.no_grad():
        for name, delta in expert.deltas.items():
            add_delta_(weights[name], delta, scale)


def check_base(target: Target, expert: Expert, *, check_fingerprint: bool = True) -> dict[str, torch.Tensor]:
    """The target's weights the expert adapts, {name: tensor}, after checking names, shapes and
    (optionally) fingerprints. Raises FormatError / FingerprintError."""
    named = _named_weights(target)
    found: dict[str, torch.Tensor] = {}
    for name, delta in expert.deltas.items():
        weight = named.get(name)
        if weight is None:
            raise FormatError(f"expert {expert.name}: weight {name} is not in the target model")
        if tuple(weight.shape) != tuple(delta.shape):
            raise FormatError(
                f"expert {expert.name}: weight {name} has shape {list(weight.shape)}, "
                f"the expert expects {list(delta.shape)}"
            )
        if check_fingerprint and delta.fingerprint is not None:
            got = fingerprint(weight)
            if got != delta.fingerprint:
                raise FingerprintError(
                    f"expert {expert.name} was trained against a different base weight for {name}: "
                    f"expected {delta.fingerprint}, got {got}"
                )
        found[name] = weight
    return found


class BaseShapes(Mapping):
    """{weight name: shape} of a base model on this machine, read lazily in two steps: first its
    safetensors headers (models.stored_weight_shapes: no torch, no transformers), which confirm a weight
    whose name and shape they hold; the exact shapes (models.base_weight_shapes: the model built from its
    config on the meta device, a few seconds) only for a weight the headers do not confirm, or when the
    mapping itself is read."""

    def __init__(self, base_model: str, stored: Mapping[str, tuple[int, ...]] | None) -> None:
        self.base_model = base_model
        self.stored = stored or {}
        self._exact: dict[str, tuple[int, ...]] | None = None
        self._unreadable = False

    def confirms(self, name: str, shape: Sequence[int]) -> bool:
        got = self.stored.get(name)
        return got is not None and tuple(got) == tuple(int(x) for x in shape)

    @property
    def exact(self) -> dict[str, tuple[int, ...]] | None:
        """None when the config cannot be read here (e.g. it needs --trust-remote-code): whatever loads the
        base checks it then."""
        if self._exact is None and not self._unreadable:
            from hubtool.models import base_weight_shapes

            try:
                self._exact = base_weight_shapes(self.base_model)
            except HubError:
                self._unreadable = True
        return self._exact

    def __getitem__(self, name: str) -> tuple[int, ...]:
        return (self.exact or {})[name]

    def __iter__(self):
        return iter(self.exact or {})

    def __len__(self) -> int:
        return len(self.exact or {})


def local_base_shapes(base_model: str) -> BaseShapes | None:
    """The shapes of a base model that is on this machine (a model folder, or an embedded model already
    converted); None for one that is not (a Hub id: its shapes are checked when it is loaded). What bounds
    a merge or export before any tensor is built."""
    from pathlib import Path

    from hubtool.models import EMBEDDED, stored_weight_shapes
    from hubtool.paths import models_dir

    if base_model in EMBEDDED:
        folder = models_dir() / base_model
        if not folder.is_dir():
            return None
    else:
        folder = Path(base_model).expanduser()
        if not (folder / "config.json").is_file():
            return None
    return BaseShapes(base_model, stored_weight_shapes(folder))


def check_shapes(
    shapes: Mapping[str, Sequence[int]], base_shapes: Mapping[str, Sequence[int]], where: str, base: str
) -> None:
    """Every weight a file claims is one of the base's, with the base's shape: a header cannot make a
    reader allocate more than the base model justifies. FormatError naming the file (`where`) and weight.
    A BaseShapes whose config cannot be read here checks what its headers confirm and caps the rest."""
    for name, shape in shapes.items():
        if isinstance(base_shapes, BaseShapes):
            if base_shapes.confirms(name, shape):
                continue
            if base_shapes.exact is None:
                _cap_unverified(name, shape, where, base)
                continue
        got = base_shapes.get(name)
        if got is None:
            raise FormatError(f"{where}: weight {name} is not in the base model {base}")
        if tuple(got) != tuple(shape):
            raise FormatError(
                f"{where}: weight {name} has shape {list(shape)}, the base model {base} has {list(got)}"
            )


# A weight whose shape no local base can confirm may still be this big (a 16k x 16k projection); beyond,
# the base must be on this machine: a header alone must not make a merge or export allocate terabytes.
UNVERIFIED_NUMEL = 2**28


def check_against_base(shapes: Mapping[str, Sequence[int]], base: str, where: str, *,
                       base_shapes: Mapping[str, Sequence[int]] | None | bool = False) -> None:
    """check_shapes against the base when it is on this machine; otherwise each weight's entries are
    capped at UNVERIFIED_NUMEL. Call before building anything of a weight's full size. `base_shapes`:
    local_base_shapes(base) when the caller has it already."""
    if base_shapes is False:
        base_shapes = local_base_shapes(base)
    if base_shapes is not None:
        check_shapes(shapes, base_shapes, where, base)
        return
    for name, shape in shapes.items():
        _cap_unverified(name, shape, where, base)


def _cap_unverified(name: str, shape: Sequence[int], where: str, base: str) -> None:
    numel = 1
    for x in shape:
        numel *= int(x)
    if numel > UNVERIFIED_NUMEL:
        raise FormatError(
            f"{where}: weight {name} claims shape {list(shape)} ({numel:,} entries) and its base model "
            f"{base} is not on this machine to confirm it; download the base (or pass its folder) first"
        )


def add_delta_(weight: torch.Tensor, delta: Delta, scale: float = 1.0) -> torch.Tensor:
    """weight [out, in] += scale * delta, in place, through hubtool.kernels."""
    return delta.add_to_(weight, scale)


def _named_weights(target: Target) -> Mapping[str, torch.Tensor]:
    if isinstance(target, torch.nn.Module):
        # remove_duplicate=False: a tied weight answers to each of its names
        return dict(target.named_parameters(remove_duplicate=False))
    return target
