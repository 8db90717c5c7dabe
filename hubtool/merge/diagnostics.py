"""Merge diagnostics: where a merge loses what each expert learned (issue 14 §3, "Diagnostics first").

Two measures split a merged expert's loss on task t into its two sources:

    hist = coverage_histogram(experts)        # {ref: [share_0, ..., share_{N-1}]}
    oracle = oracle_mask(merged, expert_t)    # the merge, only on t's own kept positions

- `coverage_histogram`: for each expert, the share of its entries, weighted by |value|, that k OTHER
  experts also cover (k = 0 .. N-1), pooled over every weight. share_0 is what a merge keeps untouched
  under overlap-mean; the rest is averaged with other tasks.
- `oracle_mask`: the merged delta restricted to one expert's own kept positions. Scored on t, it is the
  merge with the foreign experts' entries off t's positions removed: its gap to the single expert is the
  loss from shared entries, and the gap from it to the full merge is the loss from foreign experts acting
  on t's inputs.

Both take loaded experts (`Catalog.load(ref)`, hubtool.delta.Expert) and work one weight at a time: a
count buffer of one weight ([out, in] int32) and one expert's entries; no [N, numel] stack.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from hubtool.delta import BlockSparseDelta, Expert, SparseDelta
from hubtool.errors import FingerprintError, HubError


def _named(experts: Sequence[Expert] | Mapping[str, Expert]) -> tuple[list[str], list[Expert]]:
    """(refs, experts): a mapping's keys (NAME@VERSION, as the caller knows them), or each expert's name."""
    if isinstance(experts, Mapping):
        refs, items = [str(k) for k in experts], list(experts.values())
    else:
        items = list(experts)
        refs = [e.name for e in items]
        if len(set(refs)) != len(refs):
            dup = next(r for r in refs if refs.count(r) > 1)
            raise HubError(f"experts: {dup!r} appears twice; pass a mapping {{'NAME@VERSION': expert}} to tell them apart")
    if not items:
        raise HubError("experts: expected at least one loaded expert")
    for ref, e in zip(refs, items):
        if not isinstance(e, Expert):
            raise HubError(f"experts[{ref}]: expected a loaded expert (Catalog.load), got {type(e).__name__}")
    bases = {(e.base_model, e.base_revision) for e in items}
    if len(bases) > 1:
        raise HubError(f"experts: expected one base model, got {', '.join(sorted(b for b, _ in bases))}")
    return refs, items


def coverage_histogram(experts: Sequence[Expert] | Mapping[str, Expert], *, weighted: bool = True) -> dict[str, list[float]]:
    """{ref: [share_0, ..., share_{N-1}]}: for each expert, the share of its entries that exactly k other
    experts also cover, weighted by |value| (weighted=False: by count), over all weights.

    A LoRA or full delta covers every entry of its weight (as in merging). An expert whose entries are
    all 0 gets shares of 0. Keys: the mapping's keys, or each expert's name for a list."""
    refs, items = _named(experts)
    n = len(items)
    mass = torch.zeros(n, n, dtype=torch.float64)  # [expert, k]
    names = list(dict.fromkeys(w for e in items for w in e.deltas))
    for weight in names:
        present = [(i, e.deltas[weight]) for i, e in enumerate(items) if weight in e.deltas]
        shapes = {tuple(d.shape) for _, d in present}
        if len(shapes) > 1:
            raise HubError(f"experts: weight {weight} has different shapes across experts: {sorted(shapes)}")
        (rows, cols), = shapes
        count = torch.zeros(rows * cols, dtype=torch.int32)  # experts covering each entry, [numel]
        for _, d in present:
            if d.is_sparse:
                count[d.entries()[0]] += 1  # positions are unique within one expert
            else:
                count += 1
        for i, d in present:
            if d.is_sparse:
                pos, val = d.entries()
                k = count[pos] - 1  # [nnz_i]: the OTHER experts on each of i's entries
            else:
                val = d.to_dense(torch.float32).reshape(-1)
                k = count - 1
            mag = val.abs().double() if weighted else torch.ones(val.numel(), dtype=torch.float64)
            mass[i] += torch.bincount(k.long(), weights=mag, minlength=n)[:n]
    out: dict[str, list[float]] = {}
    for ref, row in zip(refs, mass):
        total = float(row.sum())
        out[ref] = [float(v) / total if total > 0 else 0.0 for v in row]
    return out


def _dense(delta: Any) -> torch.Tensor:
    """A merged weight's delta as fp32 [out, in]: a Delta (to_dense) or a methods.Merged (values)."""
    if hasattr(delta, "to_dense"):
        return delta.to_dense(torch.float32)
    return delta.values.float() + 0.0  # -0.0 off the union -> 0.0


def oracle_mask(merged: Expert | Mapping[str, Any], expert: Expert, *, name: str | None = None) -> Expert:
    """The merged delta restricted to `expert`'s own kept positions: an expert of kind `merged` whose
    deltas have exactly `expert`'s positions (sparse) or tiles (block-sparse) and the merge's values there.

    `merged`: a merged expert (`hub compose --as-expert`, `merged_expert`, `Catalog.load`) or a mapping
    weight -> delta (or methods.Merged, as `merged_deltas` yields). Weights the merge does not touch are
    left out (the merge adds nothing there). A LoRA or full `expert` has no kept positions: HubError."""
    if isinstance(merged, Expert):
        if (merged.base_model, merged.base_revision) != (expert.base_model, expert.base_revision):
            raise HubError(f"oracle_mask: merged {merged.name} is on base {merged.base_model}, "
                           f"expert {expert.name} on {expert.base_model}")
        deltas, parents, value_dtype, source = merged.deltas, list(merged.parents), merged.value_dtype, merged.name
    elif isinstance(merged, Mapping):
        deltas, parents, value_dtype, source = merged, [], "float32", "merge"
    else:
        raise HubError(f"oracle_mask: merged: expected a merged expert or a mapping weight -> delta, "
                       f"got {type(merged).__name__}")
    out: dict[str, Any] = {}
    for weight, d in expert.deltas.items():
        if not d.is_sparse:
            raise HubError(f"oracle_mask: expert {expert.name} holds a {d.kind} delta for {weight}; expected "
                           "a sparse or block-sparse expert (a dense delta has no kept positions)")
        if weight not in deltas:
            continue
        m = deltas[weight]
        dense = _dense(m)  # [out, in] fp32
        if tuple(dense.shape) != tuple(d.shape):
            raise HubError(f"oracle_mask: {weight}: the merge has shape {list(dense.shape)}, "
                           f"expert {expert.name} {list(d.shape)}")
        fp_m = getattr(m, "fingerprint", None)
        if fp_m is not None and d.fingerprint is not None and fp_m != d.fingerprint:
            raise FingerprintError(f"oracle_mask: {weight}: the merge and expert {expert.name} were made "
                                   "against different base weights")
        fp = d.fingerprint or fp_m
        if isinstance(d, BlockSparseDelta):
            values = d.grid.to_tiles(dense)[d.tiles]  # [n_tiles, B, B]; edge tiles: 0 outside W
            out[weight] = BlockSparseDelta(tuple(d.shape), d.block_size, d.tiles.clone(), values.contiguous(), fp)
        else:
            idx = d.indices.to(torch.int64)
            out[weight] = SparseDelta(tuple(d.shape), idx.clone(), dense.reshape(-1)[idx].clone(), fp)
        del dense
    return Expert(
        name=name or f"{source}-oracle-{expert.name}",
        task=expert.task,
        kind="merged",
        base_model=expert.base_model,
        deltas=out,
        base_revision=expert.base_revision,
        keep_ratio=expert.keep_ratio,
        value_dtype=value_dtype,
        targets=expert.targets,
        config={"oracle_mask": {"merge": source, "positions_of": expert.name}},
        metrics={},
        parents=parents,
    )
