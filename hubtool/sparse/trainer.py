"""The training loop: AdamW, warm-up then linear decay, clipping, accumulation, evaluation, checkpoints.

Input is already-tokenized examples, ``(input_ids, labels)`` with labels -100 on prompt tokens
(hubtool.data.prompts builds them); nothing here knows about tasks or tokenizers.

Determinism: the data order of epoch e is ``randperm(n, seed, e)``, so the micro-batch at any global
position is known without replaying the run; that, the optimizer/scheduler state and the RNG states
are all a resumed run needs to continue exactly where it stopped.

Data-parallel: under ``accelerate launch`` / ``torchrun`` (WORLD_SIZE > 1) every rank takes every
world-th micro-batch and the gradients of ``adapter.parameters()`` are averaged with all_reduce
before each update. Once a sparse mask is frozen those are only the kept values [nnz], so that is
all that crosses the wire. (A DDP wrapper is not used: it cannot follow the parameter swap at freeze.)
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hubtool.errors import HubError
from hubtool.sparse import checkpoint
from hubtool.sparse.adapters import Adapter, Moved
from hubtool.sparse.config import AdapterConfig
from hubtool.sparse.loss import causal_lm_loss

TokenizedExample = tuple[Sequence[int], Sequence[int]]  # (input_ids, labels), labels -100 = not scored


@dataclass
class TrainConfig:
    max_steps: int | None = None  # optimizer steps; wins over epochs
    epochs: float | None = None  # default 1 when neither is given
    batch_size: int = 8  # micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    max_grad_norm: float | None = 0.1
    eval_every: int | None = None  # steps; default total // 5 (and always at the last step)
    save_every: int | None = None  # steps; default eval_every
    seed: int = 0
    pad_id: int = 0
    quiet: bool = False


@dataclass
class FitResult:
    steps: int  # optimizer steps completed
    total_steps: int
    train_loss: float | None  # mean loss of the last step
    best_val_loss: float | None
    best_step: int | None
    interrupted: bool
    tokens: int  # input tokens trained on (all ranks)
    seconds: float  # time in forward/backward/update of this process, evaluation excluded
    history: list[dict[str, float]] = field(default_factory=list)


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        adapter: Adapter,
        train: Sequence[TokenizedExample],
        validation: Sequence[TokenizedExample] | None = None,
        config: TrainConfig | None = None,
        out_dir: str | Path | None = None,
        on_step: Callable[[int, Adapter], None] | None = None,
    ):
        if not train:
            raise HubError("training data: expected at least one tokenized example, got none")
        self.model, self.adapter, self.train, self.validation = model, adapter, train, validation or []
        self.cfg = config or TrainConfig()
        self.ckpt_dir = Path(out_dir) / "checkpoint" if out_dir is not None else None
        self.on_step = on_step
        self.device = next(model.parameters()).device
        self.rank, self.world = _distributed()
        self.micro_per_epoch = math.ceil(len(train) / self.cfg.batch_size)
        self.steps_per_epoch = max(1, math.ceil(self.micro_per_epoch / (self.cfg.grad_accum * self.world)))
        if self.cfg.max_steps is not None:
            self.total_steps = self.cfg.max_steps
        else:
            self.total_steps = max(1, math.ceil((self.cfg.epochs or 1.0) * self.steps_per_epoch))
        self.eval_every = self.cfg.eval_every or max(1, self.total_steps // 5)
        self.save_every = self.cfg.save_every or self.eval_every
        self._perm: tuple[int, torch.Tensor] | None = None  # (epoch, its data order)
        self._stop = False  # set by Ctrl-C: finish the step, save, return
        self._abort = False  # set by a second Ctrl-C: raise at once
        self._best_in_memory: dict[str, Any] | None = None

    # --- the loop -----------------------------------------------------------------------------------

    def fit(self, resume: bool = False) -> FitResult:
        cfg, adapter = self.cfg, self.adapter
        self._stop = self._abort = False
        torch.manual_seed(cfg.seed)
        adapter.plan(self.total_steps, self.steps_per_epoch)
        state = self._load_checkpoint() if resume else None
        if state is None and adapter.needs_probe:
            self._probe()
        optimizer, scheduler = self._make_optimizer()
        step, best, best_step, tokens, history = 0, math.inf, None, 0, []
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            _load_schedule(scheduler, optimizer, state["scheduler"])
            checkpoint.set_rng_state(state["rng"])
            step, best, best_step, tokens = state["step"], state["best"], state["best_step"], state["tokens"]
            history = list(state["history"])
        last_loss, interrupted, train_seconds = None, False, 0.0
        self.model.train()
        # adapter.folded(): frozen sparse layers keep W + D in W during the loop (restored on leaving).
        with _deterministic(self.device), adapter.folded(), self._sigint_deferred(), self._progress(step) as bar:
            try:
                while step < self.total_steps and not self._stop:
                    started = time.perf_counter()
                    last_loss, n_tok = self._accumulate(step)
                    step += 1
                    optimizer, scheduler = self._update(step, optimizer, scheduler)
                    step_seconds = time.perf_counter() - started
                    train_seconds += step_seconds  # evaluation and saving excluded
                    tokens += n_tok
                    record = {"step": step, "loss": last_loss, "lr": scheduler.get_last_lr()[0]}
                    if self.validation and (step % self.eval_every == 0 or step == self.total_steps):
                        record["val_loss"] = self.evaluate()
                        # Only a frozen mask is a finished expert; earlier states are not candidates.
                        if adapter.frozen and record["val_loss"] < best:
                            best, best_step = record["val_loss"], step
                            self._save("best.pt", adapter.state_dict())
                    history.append(record)
                    bar(step, record, n_tok / max(step_seconds, 1e-9))
                    if step % self.save_every == 0 or step == self.total_steps:
                        self._save_state(step, optimizer, scheduler, best, best_step, tokens, history)
                    if self.on_step is not None:
                        self.on_step(step, adapter)
            except KeyboardInterrupt:
                if self._abort:
                    raise
                self._stop = True
            interrupted = self._stop and step < self.total_steps
            if interrupted:  # state as of the last completed step; a half-accumulated gradient is dropped
                optimizer.zero_grad(set_to_none=True)
                self._save_state(step, optimizer, scheduler, best, best_step, tokens, history)
        if not interrupted and best_step is not None and best_step != step:
            adapter.load_state_dict(self._best_state())
        self.model.eval()
        return FitResult(
            steps=step,
            total_steps=self.total_steps,
            train_loss=last_loss,
            best_val_loss=None if best_step is None else best,
            best_step=best_step,
            interrupted=interrupted,
            tokens=tokens,
            seconds=train_seconds,
            history=history,
        )

    def _accumulate(self, step: int) -> tuple[float, int]:
        """Forward/backward grad_accum micro-batches of optimizer step `step` (0-based); mean loss, tokens."""
        total_loss, n_tok = 0.0, 0
        for micro in range(self.cfg.grad_accum):
            cursor = (step * self.cfg.grad_accum + micro) * self.world + self.rank
            batch = self._batch(cursor)
            with _autocast(self.device):
                loss = causal_lm_loss(self.model, batch)
            (loss / self.cfg.grad_accum).backward()
            total_loss += float(loss.detach()) / self.cfg.grad_accum
            n_tok += int(batch["attention_mask"].sum())
        return total_loss, n_tok * self.world

    def _update(self, step: int, optimizer, scheduler):
        params = self.adapter.parameters()
        if self.world > 1:
            _all_reduce_mean(params)
        self.adapter.before_step(step, optimizer)
        if self.cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        moved = self.adapter.after_step(step)
        optimizer.zero_grad(set_to_none=True)
        if moved:
            optimizer, scheduler = self._rebuild(optimizer, scheduler, moved)
        return optimizer, scheduler

    @torch.no_grad()
    def evaluate(self) -> float:
        """Token-weighted mean loss over the validation examples (in order)."""
        was_training = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        for start in range(0, len(self.validation), self.cfg.batch_size):
            batch = self._collate(self.validation[start : start + self.cfg.batch_size])
            with _autocast(self.device):
                loss = causal_lm_loss(self.model, batch)
            n = int((batch["labels"][:, 1:] != -100).sum())  # the model scores tokens 1..T
            total, count = total + float(loss) * n, count + n
        self.model.train(was_training)
        return total / max(count, 1)

    def _probe(self) -> None:
        """snip / grad: one forward/backward on the first micro-batch picks every mask."""
        with _autocast(self.device):
            loss = causal_lm_loss(self.model, self._batch(0))  # the same batch on every rank: same masks
        loss.backward()
        if self.adapter.needs_probe:
            raise HubError("mask probe: some target layers got no gradient; are they used by the model?")
        self.model.zero_grad(set_to_none=True)

    # --- data ---------------------------------------------------------------------------------------

    def _batch(self, cursor: int) -> dict[str, torch.Tensor]:
        """Micro-batch number `cursor` of the endless stream epoch 0, epoch 1, ... (each reshuffled)."""
        epoch, pos = divmod(cursor, self.micro_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(len(self.train), generator=gen))
        rows = self._perm[1][pos * self.cfg.batch_size : (pos + 1) * self.cfg.batch_size].tolist()
        return self._collate([self.train[i] for i in rows])

    def _collate(self, examples: Sequence[TokenizedExample]) -> dict[str, torch.Tensor]:
        """Right-pad to the longest example: input_ids with pad_id, labels with -100, mask with 0."""
        width = max(len(ids) for ids, _ in examples)
        ids = torch.full((len(examples), width), self.cfg.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), width), -100, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, (x, y) in enumerate(examples):
            ids[row, : len(x)] = torch.as_tensor(x, dtype=torch.long)
            labels[row, : len(y)] = torch.as_tensor(y, dtype=torch.long)
            mask[row, : len(x)] = 1
        return {
            "input_ids": ids.to(self.device),
            "labels": labels.to(self.device),
            "attention_mask": mask.to(self.device),
        }

    # --- optimizer, schedule ------------------------------------------------------------------------

    def _make_optimizer(self):
        optimizer = torch.optim.AdamW(
            self.adapter.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay
        )
        warmup = max(1, round(self.cfg.warmup_ratio * self.total_steps))
        total = self.total_steps

        def factor(s: int) -> float:  # s = updates done so far; linear warm-up, then linear decay to 0
            return (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup))

        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def _rebuild(self, optimizer, scheduler, moved: list[Moved]):
        """New optimizer over the current parameters after a freeze; kept entries keep their Adam moments."""
        new_opt, new_sched = self._make_optimizer()
        replaced = {id(new): (old, gather) for old, new, gather in moved}
        for p in self.adapter.parameters():
            old, gather = replaced.get(id(p), (p, None))
            st = optimizer.state.get(old)
            if not st:
                continue
            new_opt.state[p] = {
                k: gather(v).clone()
                if gather is not None and torch.is_tensor(v) and v.shape == old.shape
                else v
                for k, v in st.items()
            }
        _load_schedule(new_sched, new_opt, scheduler.state_dict())
        return new_opt, new_sched

    # --- checkpoints --------------------------------------------------------------------------------

    def _save_state(self, step, optimizer, scheduler, best, best_step, tokens, history) -> None:
        state = {
            "step": step,
            "adapter": self.adapter.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": checkpoint.rng_state(),
            "best": best,
            "best_step": best_step,
            "tokens": tokens,
            "history": history,
            "data": {"seed": self.cfg.seed, "micro_batches_done": step * self.cfg.grad_accum * self.world},
        }
        self._save("state.pt", state)

    def _save(self, name: str, obj: dict[str, Any]) -> None:
        if name == "best.pt":
            self._best_in_memory = obj  # the run may have no out_dir
        if self.ckpt_dir is not None and self.rank == 0:
            checkpoint.save(obj, self.ckpt_dir / name)

    def _best_state(self) -> dict[str, Any]:
        if self._best_in_memory is not None:
            return self._best_in_memory
        return checkpoint.load(self.ckpt_dir / "best.pt")  # resumed run: best was found before the restart

    def _load_checkpoint(self) -> dict[str, Any] | None:
        if self.ckpt_dir is None or not (self.ckpt_dir / "state.pt").exists():
            return None  # resume with nothing to resume from: start fresh
        state = checkpoint.load(self.ckpt_dir / "state.pt")
        # A checkpoint from before the rename stores the kind as "method": the same config.
        if AdapterConfig.normalized(state["adapter"]["config"]) != self.adapter.config.to_dict():
            raise HubError(
                f"{self.ckpt_dir / 'state.pt'}: saved with a different adapter config; cannot resume"
            )
        self.adapter.load_state_dict(state["adapter"])
        return state

    # --- plumbing -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _sigint_deferred(self):
        """Ctrl-C finishes the current step, saves a checkpoint and returns; a second Ctrl-C aborts."""

        def handler(signum, frame):
            if self._stop:  # second Ctrl-C: leave now, without saving a possibly half-updated state
                self._abort = True
                raise KeyboardInterrupt
            self._stop = True

        try:
            previous = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: KeyboardInterrupt is still caught by fit()
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    @contextlib.contextmanager
    def _progress(self, start: int):
        """A Rich bar (step, loss, lr, tokens/s, ETA); a no-op when quiet or not rank 0."""
        if self.cfg.quiet or self.rank != 0:
            yield lambda *a: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (
            TextColumn("train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[tps]:.0f} tok/s"
            ),
            TimeRemainingColumn(),
        )
        with Progress(*columns, transient=False) as progress:
            task = progress.add_task(
                "train", total=self.total_steps, completed=start, loss=math.nan, lr=0.0, tps=0.0
            )
            yield lambda step, rec, tps: progress.update(
                task, completed=step, loss=rec["loss"], lr=rec["lr"], tps=tps
            )


def _load_schedule(scheduler, optimizer, state: dict[str, Any]) -> None:
    scheduler.load_state_dict(state)
    for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
        group["lr"] = lr


def _autocast(device: torch.device):
    # bf16 autocast on GPU; plain fp32 on CPU (CPU bf16 matmuls are slow and change the numbers)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _deterministic(device: torch.device):
    """Same seed, same mask and values on CPU: forbid nondeterministic kernels for the run."""
    if device.type != "cpu":
        yield
        return
    before, warn_before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_before)


def _distributed() -> tuple[int, int]:
    """(rank, world size); joins the process group that accelerate/torchrun describe in the environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _all_reduce_mean(params: list[nn.Parameter]) -> None:
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])  # one collective for all kept values
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
