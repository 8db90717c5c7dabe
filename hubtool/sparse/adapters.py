"""Apply an adapter to a model, drive its mask through training, and turn it into an expert.

    adapter = Adapter.apply(model, AdapterConfig(kind="sparse", targets="qkv"))
    ... train adapter.parameters() (hubtool.sparse.trainer does, calling the hooks below) ...
    expert = adapter.to_expert("qa-sparse", task="qa", base_model="smollm2-135m")
    model = adapter.merge()          # or keep training / evaluating the wrapped model

The sparse kinds' life cycle (mask_score decides where it starts):
    sensitivity          dense delta for the first mask_interval steps; before the update of every
                         scheduled step the mask is re-selected by |delta ⊙ dL/dW_eff| (the delta
                         outside the mask keeps its last value, like the authors' code, so a dropped
                         entry can come back); after the last scheduled step the mask freezes
    snip, grad           one probe backward on the first micro-batch picks the mask, then frozen
    magnitude, random    picked at apply time, frozen from the start
Frozen means: only the kept values exist (see hubtool.sparse.layers), so the trainer rebuilds its
optimizer with the kept entries' Adam state gathered from the dense one. Inside `with adapter.folded():`
(the trainer's loop) a frozen layer keeps W + D in W itself between optimizer steps, so a step costs
the base layer's matmuls plus the kept entries' gradient; W is restored bit for bit on leaving.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from hubtool.delta import Expert
from hubtool.delta.kinds import check_table
from hubtool.sparse import masks
from hubtool.sparse.config import AdapterConfig
from hubtool.sparse.layers import DeltaLayer, FullLayer, LoraLayer, SparseLayer
from hubtool.sparse.targets import find_targets

# (dropped dense parameter, its replacement, how to gather a dense [out, in] tensor into it)
Moved = tuple[nn.Parameter, nn.Parameter, Callable[[torch.Tensor], torch.Tensor]]


class Adapter:
    """An adapter applied to a model: its config, its layers keyed by module name, its mask schedule."""

    def __init__(
        self,
        model: nn.Module,
        config: AdapterConfig,
        layers: dict[str, DeltaLayer],
        coverage: masks.Coverage | None = None,
    ):
        self.model = model
        self.config = config
        self.layers = layers
        self.coverage = coverage  # hub train --avoid: other experts' counts divide every mask's scores
        self.selection_steps: list[int] = []  # planned (sensitivity only), see plan()
        self.selections: list[int] = []  # steps at which a mask was actually (re-)selected

    # --- construction -------------------------------------------------------------------------------

    @classmethod
    def apply(cls, model: nn.Module, config: AdapterConfig, coverage: masks.Coverage | None = None) -> Adapter:
        """Freeze every base parameter and wrap each target module in its adapter layer (in place).
        With `coverage` (sparse kinds), its counts are built for these layers before any mask is chosen."""
        model.requires_grad_(False)
        gen = torch.Generator().manual_seed(config.seed)
        layers: dict[str, DeltaLayer] = {}
        for name in find_targets(model, config.targets):
            layer = _make_layer(model.get_submodule(name), config, gen)
            _replace(model, name, layer)
            layers[name] = layer
        adapter = cls(model, config, layers, coverage)
        if coverage is not None and config.is_sparse:
            coverage.build(dict(adapter._sparse_layers()), adapter._block_size)
        adapter._start()
        return adapter

    def _start(self) -> None:
        cfg = self.config
        if not cfg.is_sparse:
            return
        for name, layer in self._sparse_layers():
            if cfg.mask_score == "sensitivity":
                layer.begin_dense()
            elif cfg.mask_score in ("snip", "grad"):
                layer.begin_probe(lambda grad, name=name: self._probed(name, grad))
            else:
                s = masks.score(cfg.mask_score, weight=layer.weight, seed=cfg.seed, key=name)
                layer.freeze(self._select(s, name))

    # --- what the trainer asks ----------------------------------------------------------------------

    def parameters(self) -> list[nn.Parameter]:
        """Trainable tensors in a fixed order (optimizer state and checkpoints rely on it)."""
        return [p for layer in self.layers.values() for p in layer.trainable()]

    @property
    def needs_probe(self) -> bool:
        return any(layer.phase == "probe" for _, layer in self._sparse_layers())

    @property
    def frozen(self) -> bool:
        """True once no mask can change any more (always for lora / full)."""
        return all(layer.phase == "frozen" for _, layer in self._sparse_layers())

    def plan(self, total_steps: int, steps_per_epoch: int) -> None:
        """Fix the re-selection schedule: every mask_interval steps within the first epoch (or the
        first mask_steps), never past the last step, so training always ends with a frozen mask."""
        if self.config.is_sparse and self.config.mask_score == "sensitivity" and not self.frozen:
            window = self.config.mask_steps or steps_per_epoch
            self.selection_steps = masks.selection_steps(self.config.mask_interval, window, total_steps)

    def before_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        """Gradients of optimizer step `step` (1-based) are in, the update is next."""
        if self.frozen:
            return
        if step in self.selection_steps:
            self._reselect(optimizer)
            self.selections.append(step)
        for _, layer in self._sparse_layers():
            layer.mask_grad_()

    def after_step(self, step: int) -> list[Moved]:
        """After the update of `step`: freezes the mask after the last scheduled selection."""
        if not self.frozen and self.selection_steps and step >= self.selection_steps[-1]:
            return self.freeze()
        return []

    @torch.no_grad()
    def freeze(self) -> list[Moved]:
        """Drop every dense delta, keeping the values at the current mask (a mask by |delta| if none)."""
        moved: list[Moved] = []
        for name, layer in self._sparse_layers():
            if layer.phase == "frozen":
                continue
            if layer.kept is None:
                layer.set_mask(self._select(layer.delta_dense().abs(), name))
            old = layer.freeze()
            if old is not None:
                moved.append((old, layer.values, layer.gather))
        return moved

    @contextlib.contextmanager
    def folded(self) -> Iterator[Adapter]:
        """While inside, frozen sparse layers train with W + D folded into W in place (a layer that
        freezes inside folds at its next forward); on leaving, every W is restored bit for bit."""
        layers = [layer for _, layer in self._sparse_layers()]
        before = [layer._fold_enabled for layer in layers]
        for layer in layers:
            layer.fold_weights(True)
        try:
            yield self
        finally:
            for layer, enabled in zip(layers, before):
                layer.fold_weights(enabled)

    # --- mask selection -----------------------------------------------------------------------------

    @property
    def _block_size(self) -> int | None:
        return self.config.block_size if self.config.kind == "block-sparse" else None

    def _select(self, scores: torch.Tensor, name: str) -> torch.Tensor:
        cov = self.coverage
        if cov is None:
            return masks.select(scores, self.config.keep_ratio, self._block_size)
        return masks.select(scores, self.config.keep_ratio, self._block_size, cov.get(name), cov.beta)

    @torch.no_grad()
    def _reselect(self, optimizer: torch.optim.Optimizer) -> None:
        for name, layer in self._sparse_layers():
            delta, grad = layer.delta, layer.delta.grad
            if grad is None:
                continue
            # A delta that is still all zero (selection at step 1) carries no signal: fall back to |grad|.
            kind = "sensitivity" if bool(delta.any()) else "grad"
            layer.set_mask(self._select(masks.score(kind, weight=layer.weight, grad=grad, delta=delta), name))
            # Entries outside the new mask restart from zero Adam moments if they are picked again.
            for value in optimizer.state.get(delta, {}).values():
                if torch.is_tensor(value) and value.shape == delta.shape:
                    value.masked_fill_(~layer.mask, 0.0)

    def _probed(self, name: str, grad: torch.Tensor) -> None:
        layer = self.layers[name]
        s = masks.score(self.config.mask_score, weight=layer.weight, grad=grad)
        layer.freeze(self._select(s, name))
        if not self.selections:
            self.selections.append(0)  # step 0: chosen before the first update

    def _sparse_layers(self) -> list[tuple[str, SparseLayer]]:
        return [(n, lay) for n, lay in self.layers.items() if isinstance(lay, SparseLayer)]

    # --- checkpoints --------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Only the adapter's own tensors (never the base weights), on CPU."""
        return {
            "config": self.config.to_dict(),
            "selections": list(self.selections),
            "layers": {name: _layer_state(layer) for name, layer in self.layers.items()},
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.selections = list(state["selections"])
        for name, layer in self.layers.items():
            _load_layer_state(layer, state["layers"][name])

    # --- results ------------------------------------------------------------------------------------

    def to_expert(
        self,
        name: str,
        task: str,
        base_model: str,
        base_revision: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> Expert:
        """The trained deltas keyed by base parameter name, each with its base weight's fingerprint."""
        from hubtool.format.fingerprint import fingerprint

        if not self.frozen:
            raise RuntimeError("to_expert() needs frozen masks; training freezes them (or call freeze())")
        deltas = {}
        for module_name, layer in self.layers.items():
            delta = layer.to_delta()
            delta.fingerprint = fingerprint(layer.stored_weight.detach().cpu())
            deltas[f"{module_name}.weight"] = delta
        return Expert(
            name=name,
            task=task,
            kind=self.config.expert_kind,
            base_model=base_model,
            base_revision=base_revision,
            deltas=deltas,
            keep_ratio=self.config.keep_ratio if self.config.is_sparse else None,
            targets=self.config.targets,
            config={"adapter": self.config.to_dict(), **(config or {})},
        )

    def merge(self) -> nn.Module:
        """Fold every delta into its base weight and put plain Linear/Conv1D modules back."""
        for name, layer in self.layers.items():
            _replace(self.model, name, layer.merged())
        self.layers = {}
        return self.model


# kind -> the layer that stands in for a target module; one entry per kind of hubtool.delta.kinds.
LAYER_FACTORIES: dict[str, Callable[[nn.Module, AdapterConfig, torch.Generator], DeltaLayer]] = {
    "sparse": lambda base, config, gen: SparseLayer(base),
    "block-sparse": lambda base, config, gen: SparseLayer(base, block_size=config.block_size),
    "lora": lambda base, config, gen: LoraLayer(base, config.rank, config.alpha, gen),
    "full": lambda base, config, gen: FullLayer(base),
}
check_table(LAYER_FACTORIES, "hubtool.sparse.adapters")


def _make_layer(base: nn.Module, config: AdapterConfig, gen: torch.Generator) -> DeltaLayer:
    return LAYER_FACTORIES[config.kind](base, config, gen)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


_STATE_TENSORS = ("delta", "values", "kept", "A", "B")


def _layer_state(layer: DeltaLayer) -> dict[str, torch.Tensor]:
    return {
        k: getattr(layer, k).detach().cpu().clone()
        for k in _STATE_TENSORS
        if getattr(layer, k, None) is not None
    }


def _load_layer_state(layer: DeltaLayer, state: dict[str, torch.Tensor]) -> None:
    device = layer.weight.device
    if isinstance(layer, SparseLayer):
        # Phases rebuild their parameters, so the optimizer is created after this.
        layer.reset()
        if "values" in state:
            layer.freeze(state["kept"])
            layer.values.copy_(state["values"].to(device))
        else:
            layer.delta = nn.Parameter(state["delta"].to(device))
            if "kept" in state:
                layer.set_mask(state["kept"])
        return
    for k, v in state.items():  # lora / full: same parameters, new contents
        getattr(layer, k).copy_(v.to(device))
