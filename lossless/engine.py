"""The one training loop (DESIGN.md "One engine"): SSL pretraining, fine-tuning and the
pseudo-label rounds all run through :meth:`Engine.fit`.

A *task* is an ``nn.Module`` with two methods:

* ``prepare(batch, generator)``: no gradients; turns a uint8 batch into model inputs
  (augmentation on the device, with the step's generator);
* ``forward(inputs) -> dict``: the loss (key ``"loss"``) and any scalars to log.

The engine owns the rest: device, bf16 / fp16 autocast (with gradient scaling for fp16),
channels_last, the per-step learning-rate schedule, a tqdm progress bar with loss and img/s,
JSON-lines metrics, a checkpoint after every epoch (and every ``checkpoint_every_steps``) written
atomically, the best checkpoint by a chosen metric, resume from the last checkpoint, a NaN/Inf
guard, and DDP under ``torchrun`` with the data sharded by rank and batch norm synchronised.

Reproducibility: every random choice of step ``g`` comes from a generator seeded with
``(seed, g, rank)`` and the data order of epoch ``e`` from ``(seed, e)``, so a run resumed from
any checkpoint takes exactly the steps an uninterrupted run takes.
"""
from __future__ import annotations

import copy
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import distributed, runs
from .errors import LosslessError


class TrainingDiverged(LosslessError):
    """The loss or the weights became NaN or infinite; the last good checkpoint is left in place
    (no checkpoint is ever written with non-finite weights)."""


# ------------------------------------------------------------------------------------ devices
def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LosslessError(f"device={name} asked for, but torch sees no GPU; use device=cpu")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX tiles). Elsewhere bf16 is
    emulated: the cpu profile's Barlow Twins step took 11.6 s in bf16 against 1.7 s in fp32 on
    a 2-core AMD EPYC with AVX2 only."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on a CPU that computes it natively (AVX-512 BF16 or AMX, where it is 2-10x
    faster than fp32), fp32 on any other CPU; bf16 on GPUs that have it, fp16 on the others."""
    if name == "auto":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        if device.type == "cpu" and not cpu_has_bf16():
            return None
        return torch.bfloat16
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
    if name not in table:
        raise LosslessError(f"precision={name!r}: choose auto, bf16, fp16 or fp32")
    if table[name] is torch.float16 and device.type != "cuda":
        raise LosslessError("precision=fp16 needs a GPU; on CPU use bf16 (or auto)")
    return table[name]


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """A well-mixed 63-bit seed for one (seed, step, rank)."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] >> np.uint64(1))


# ------------------------------------------------------------------------------------ batches
def check_batch_size(n: int, batch_size: int, key: str) -> None:
    """A full batch needs ``batch_size`` of the ``n`` images; ``key`` is the setting to lower.
    Stages call it before they make their run folder, so a wrong size leaves nothing behind."""
    if n < batch_size:
        raise LosslessError(f"{key}={batch_size} is larger than the {n} images to train on; lower {key}")


class Batches:
    """Batches of uint8 images (and labels) drawn from ``images[indices]``.

    Each epoch is a permutation seeded by ``(seed, epoch)``; ``batch_size`` is the global batch,
    of which rank ``r`` of ``w`` takes the ``r``-th slice of ``batch_size / w``. The next batch is
    gathered in a background thread (a memory-mapped array reads while the model computes).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray | None, indices: np.ndarray,
                 batch_size: int, seed: int = 0, drop_last: bool = True, shuffle: bool = True,
                 dist_info: distributed.DistInfo | None = None, device: torch.device | str = "cpu",
                 max_steps: int | None = None, key: str = "batch_size"):
        self.images, self.labels = images, labels
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size, self.seed, self.drop_last, self.shuffle = batch_size, seed, drop_last, shuffle
        self.dist = dist_info or distributed.info()
        if batch_size % self.dist.world_size:
            raise LosslessError(f"{key}={batch_size} is not divisible by the {self.dist.world_size} "
                                f"processes; choose a multiple of {self.dist.world_size}")
        if drop_last:
            check_batch_size(len(self.indices), batch_size, key)
        self.device = torch.device(device)
        self.max_steps = max_steps
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.indices)
        steps = n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        return min(steps, self.max_steps) if self.max_steps else steps

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> np.ndarray:
        if not self.shuffle:
            return self.indices
        return self.indices[np.random.default_rng([self.seed, self.epoch]).permutation(len(self.indices))]

    def rank_indices(self, step: int) -> np.ndarray:
        """The indices rank ``r`` trains on at ``step`` of the current epoch (sorted: a forward read)."""
        batch = self.order()[step * self.batch_size:(step + 1) * self.batch_size]
        per = len(batch) // self.dist.world_size if self.drop_last else math.ceil(len(batch) / self.dist.world_size)
        return np.sort(batch[self.dist.rank * per:(self.dist.rank + 1) * per])

    def _gather(self, idx: np.ndarray) -> dict:
        out = {"images": torch.from_numpy(np.ascontiguousarray(self.images[idx])), "index": torch.from_numpy(idx)}
        if self.labels is not None:
            out["labels"] = torch.from_numpy(np.asarray(self.labels[idx], dtype=np.int64))
        if self.device.type == "cuda":
            out = {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in out.items()}
        return out

    def iterate(self, start_step: int = 0) -> Iterator[tuple[int, dict]]:
        steps = len(self)
        if start_step >= steps:
            return
        with ThreadPoolExecutor(1) as pool:
            nxt = pool.submit(self._gather, self.rank_indices(start_step))
            for step in range(start_step, steps):
                batch = nxt.result()
                if step + 1 < steps:
                    nxt = pool.submit(self._gather, self.rank_indices(step + 1))
                yield step, batch


# ------------------------------------------------------------------------------------ the engine
@dataclass
class EngineSettings:
    epochs: int
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    progress: bool = True
    checkpoint_every_steps: int = 0
    # An epoch's end writes last.pt only when this many seconds have passed since the last write
    # (always after the final epoch); the best weights wait in memory and are written just before
    # it, so best.pt on disk always belongs to the best value last.pt records. 0: every epoch.
    # A fine-tuning epoch of 320 images takes 0.2 s, and writing both files after each one cost
    # 15% of its time.
    epoch_checkpoint_seconds: float = 0.0
    best_metric: str = "loss"
    best_mode: str = "min"
    desc: str = "train"
    sync_batchnorm: bool = True
    lr_hint: str = "the learning rate"  # what to lower when training diverges (named in the message)


@dataclass
class TrainState:
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best: float | None = None
    history: list = field(default_factory=list)
    partial: dict = field(default_factory=dict)  # the running sums of an epoch checkpointed mid-way


class Engine:
    """Runs a task for ``settings.epochs`` epochs in ``run_dir``, resuming what is there."""

    def __init__(self, run_dir: Path, settings: EngineSettings, device: torch.device | None = None):
        self.run_dir = Path(run_dir)
        self.settings = settings
        self.device = device or resolve_device()
        self.dist = distributed.setup(self.device)
        self.amp_dtype = resolve_precision(settings.precision, self.device)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self._scheduler = None
        self._saved_at: tuple[int, int] | None = None  # (epoch, step in epoch) of the last.pt on disk
        self._saved_time = time.perf_counter()
        self._best_pending: dict | None = None  # the best state not yet on disk

    @property
    def last_path(self) -> Path:
        return self.ckpt_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.ckpt_dir / "best.pt"

    # -- checkpoints
    def _state_dict(self, task, optimizer, scaler, state: TrainState) -> dict:
        return {"model": task.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": self._scheduler.state_dict() if self._scheduler is not None else {},
                "scaler": scaler.state_dict() if scaler is not None else {},
                "epoch": state.epoch, "step_in_epoch": state.step_in_epoch,
                "global_step": state.global_step, "best": state.best, "history": state.history,
                "partial": state.partial}

    def _save(self, path: Path, task, optimizer, scaler, state: TrainState) -> None:
        if path == self.last_path and self._best_pending is not None:
            if self.dist.is_main:
                runs.save_checkpoint(self.best_path, self._best_pending)
            self._best_pending = None
        if self.dist.is_main:
            runs.save_checkpoint(path, self._state_dict(task, optimizer, scaler, state))
        if path == self.last_path:
            self._saved_at = (state.epoch, state.step_in_epoch)
            self._saved_time = time.perf_counter()
        distributed.barrier()

    def _keep_best(self, task, optimizer, scaler, state: TrainState) -> None:
        """A copy of the best state, written with the next last.pt."""
        if self.dist.is_main:
            self._best_pending = _cpu_copy(self._state_dict(task, optimizer, scaler, state))
        else:
            self._best_pending = {}

    # -- the divergence guard
    def _diverged(self, what: str, epoch: int, step: int | None = None, global_step: int | None = None) -> TrainingDiverged:
        """The message says what is really on disk and what running again would do. ``step``
        None: found at the end of the epoch (by its evaluation)."""
        if self._saved_at is not None and self.last_path.exists():
            e, k = self._saved_at
            where = f"after epoch {e}" if k == 0 else f"in epoch {e + 1} after step {k}"
            kept = (f"the last good checkpoint {self.last_path} ({where}) is kept. Training is deterministic, so "
                    f"running the same command again resumes there and diverges at the same point")
        else:
            kept = (f"no checkpoint had been written yet ({self.last_path} does not exist). Training is "
                    f"deterministic, so running the same command again starts afresh and diverges at the same point")
        when = (f"at the end of epoch {epoch + 1}" if step is None
                else f"at epoch {epoch + 1}, step {step + 1} (global step {global_step})")
        return TrainingDiverged(
            f"{what} {when}; {kept}. "
            f"Lower {self.settings.lr_hint} (or train in bf16/fp32 instead of fp16): a changed parameter is a "
            f"new run, in a new folder, trained from the start")

    def diverged(self, what: str, epoch: int) -> TrainingDiverged:
        """The divergence error for what an epoch's evaluation found (non-finite features of
        finite weights, say), worded like the loop's own."""
        return self._diverged(what, epoch)

    def _check_weights(self, task: nn.Module, epoch: int, step: int, global_step: int) -> None:
        """No evaluation and no checkpoint ever sees non-finite weights (a step whose loss was
        finite can still produce them, e.g. on an epoch's last step)."""
        bad = any(not bool(torch.isfinite(t).all()) for t in task.state_dict().values() if t.is_floating_point())
        if distributed.any_true(bad):
            raise self._diverged("the weights became NaN or infinite", epoch, step, global_step)

    def _resume(self, task, optimizer, scaler) -> TrainState:
        if not self.last_path.exists():
            return TrainState()
        ckpt = runs.load_checkpoint(self.last_path)
        try:
            task.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise LosslessError(f"checkpoint {self.last_path} does not fit this model ({str(exc).splitlines()[0]}); "
                                f"it belongs to another configuration: delete {self.run_dir} to start again") from None
        optimizer.load_state_dict(ckpt["optimizer"])
        if self._scheduler is not None and ckpt.get("scheduler"):
            self._scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        return TrainState(ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"], ckpt["best"],
                          list(ckpt["history"]), dict(ckpt.get("partial") or {}))

    def _improved(self, value: float | None, best: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if best is None:
            return True
        return value < best if self.settings.best_mode == "min" else value > best

    # -- the loop
    def fit(self, task: nn.Module, batches: Batches, optimizer: torch.optim.Optimizer,
            lr_factor: Callable[[int], float] | None = None,
            evaluate: Callable[[int], dict] | None = None, epoch_scheduler=None,
            scheduler_metric: str | None = None) -> dict:
        """Train; returns the last epoch's record (with ``best``, ``checkpoint`` and ``resumed_from``).

        ``lr_factor(global_step)`` sets every group's rate each step (relative to its initial rate);
        ``epoch_scheduler`` (e.g. ReduceLROnPlateau) is stepped after each epoch's evaluation with
        ``record[scheduler_metric]`` and saved in the checkpoints."""
        s = self.settings
        self._scheduler = epoch_scheduler
        task.to(self.device)
        if s.channels_last and self.device.type in ("cpu", "cuda"):
            task.to(memory_format=torch.channels_last)
        if self.dist.enabled and s.sync_batchnorm:
            task = _convert_bn_in_place(task, self.device)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        scaler = torch.amp.GradScaler("cuda") if self.amp_dtype is torch.float16 else None
        state = self._resume(task, optimizer, scaler)
        if state.global_step:
            self._saved_at = (state.epoch, state.step_in_epoch)
        resumed_from = (state.epoch, state.step_in_epoch) if state.global_step else None
        model: nn.Module = task
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(task, device_ids=ids)
        if s.compile:
            model = torch.compile(model)
        generator = torch.Generator(device=self.device)
        record: dict = state.history[-1] if state.history else {}

        for epoch in range(state.epoch, s.epochs):
            batches.set_epoch(epoch)
            steps = len(batches)
            task.train()
            # a run resumed mid-epoch continues the epoch's sums, so its record equals an uninterrupted one
            sums: dict[str, float] = dict(state.partial.get("sums", {}))
            count, images_seen = state.partial.get("count", 0), 0
            t0 = time.perf_counter()
            bar = tqdm(total=steps, initial=state.step_in_epoch, disable=not (s.progress and self.dist.is_main),
                       desc=f"{s.desc} {epoch + 1}/{s.epochs}", unit="step", file=sys.stderr, leave=False)
            for step, batch in batches.iterate(state.step_in_epoch):
                seed = step_seed(s.seed, state.global_step, self.dist.rank)
                generator.manual_seed(seed)
                torch.manual_seed(seed)  # dropout and any other global-RNG use
                if lr_factor is not None:
                    f = lr_factor(state.global_step)
                    for group in optimizer.param_groups:
                        group["lr"] = group["initial_lr"] * f
                with torch.no_grad():
                    inputs = task.prepare(batch, generator)
                with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                    enabled=self.amp_dtype is not None):
                    out = model(inputs)
                loss = out["loss"]
                value = float(loss.detach())
                if distributed.any_true(not math.isfinite(value)):
                    bar.close()
                    raise self._diverged(f"the loss became {value}", epoch, step, state.global_step)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                if hasattr(task, "after_step"):
                    task.after_step(state.global_step, s.epochs * steps)
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                count += 1
                images_seen += len(batch["images"]) * self.dist.world_size
                state.global_step += 1
                state.step_in_epoch = step + 1
                rate = images_seen / max(1e-9, time.perf_counter() - t0)
                bar.set_postfix(loss=f"{value:.4g}", img_s=f"{rate:.0f}", refresh=False)
                bar.update(1)
                if s.checkpoint_every_steps and state.global_step % s.checkpoint_every_steps == 0 \
                        and state.step_in_epoch < steps:
                    self._check_weights(task, epoch, step, state.global_step - 1)
                    state.partial = {"sums": dict(sums), "count": count}
                    self._save(self.last_path, task, optimizer, scaler, state)
            bar.close()
            self._check_weights(task, epoch, steps - 1, state.global_step - 1)  # before any evaluation
            seconds = time.perf_counter() - t0
            record = {"epoch": epoch + 1, "step": state.global_step,
                      "lr": optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3),
                      "img_per_s": round(images_seen / max(seconds, 1e-9), 2)}
            record.update({k: v / max(count, 1) for k, v in sums.items()})
            if evaluate is not None:
                task.eval()
                record.update(evaluate(epoch))
                task.train()
            if epoch_scheduler is not None:
                epoch_scheduler.step(record[scheduler_metric]) if scheduler_metric else epoch_scheduler.step()
            state.epoch, state.step_in_epoch, state.partial = epoch + 1, 0, {}
            improved = self._improved(record.get(s.best_metric), state.best)
            if improved:
                state.best = record[s.best_metric]
            record["best"] = state.best
            state.history.append(record)
            if improved:
                self._keep_best(task, optimizer, scaler, state)
            due = time.perf_counter() - self._saved_time >= s.epoch_checkpoint_seconds
            if distributed.any_true(due) or epoch + 1 == s.epochs:  # every rank writes or none does
                self._save(self.last_path, task, optimizer, scaler, state)
            if self.dist.is_main:
                runs.write_jsonl(self.run_dir / "metrics.jsonl", state.history)
                if s.progress:
                    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()}
                    print(f"[{s.desc}] {shown}", file=sys.stderr)
        record = dict(record)
        record.update(checkpoint=str(self.last_path), best_checkpoint=str(self.best_path),
                      resumed_from=resumed_from)
        return record


def _cpu_copy(obj):
    """A deep copy of a state dict's tensors (they change in place as training goes on)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return copy.deepcopy(obj)


def _convert_bn_in_place(task: nn.Module, device: torch.device) -> nn.Module:
    converted = distributed.convert_sync_batchnorm(task, device)
    return converted.to(device)


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """Inference under the same precision the engine trains in."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
