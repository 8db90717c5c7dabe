"""Apply an expert to a base model: W += scale * delta for every adapted weight, in place.

Everything is checked before anything is written (names, shapes, fingerprints), so a failing apply
leaves the target untouched. Sparse and block deltas are scatter-added (only the kept entries are
read and written); LoRA and full deltas are dense adds. Arithmetic is fp32, rounded once to the
weight's dtype. The fingerprint is of the *base* weight: to stack several experts, check them all
against the base first (check_base) and then apply with check_fingerprint=False.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from hubtool.delta import Delta, Expert
from hubtool.errors import FingerprintError, FormatError
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


def add_delta_(weight: torch.Tensor, delta: Delta, scale: float = 1.0) -> torch.Tensor:
    """weight [out, in] += scale * delta, in place, through hubtool.kernels."""
    return delta.add_to_(weight, scale)


def _named_weights(target: Target) -> Mapping[str, torch.Tensor]:
    if isinstance(target, torch.nn.Module):
        # remove_duplicate=False: a tied weight answers to each of its names
        return dict(target.named_parameters(remove_duplicate=False))
    return target
