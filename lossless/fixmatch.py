"""FixMatch (Sohn et al., 2020): the semi-supervised baseline a reader would pick instead today.

The same classifier as fine-tuning (backbone, standardisation, two-layer head), from random
weights, trained on the labelled images and the unlabelled pool at once. Each step draws a
batch of ``fm_batch_size`` labelled images and ``fm_mu`` times as many unlabelled ones; the
labelled images get the weak view (flip and shift) and a cross-entropy loss; each unlabelled
image gets a weak and a strong view (``augment.fixmatch_views``), and where the prediction on
the weak view is at least ``fm_threshold`` confident, its arg-max is the target of the strong
view, weighted by ``fm_lambda_u``. SGD with Nesterov momentum, weight decay on weights but not on
biases and batch-norm parameters, the learning rate on FixMatch's cosine (to cos(7 pi / 16) of
the start), and an exponential moving average of the weights (``fm_ema``) that is what gets
evaluated and kept.

It is a task of the one engine (:mod:`lossless.engine`): the engine's batches are the unlabelled
pool (an epoch is one pass over it), and ``prepare`` draws the step's labelled batch with the
step's generator, so a run resumed from any checkpoint takes the same steps as an uninterrupted
one, and the EMA weights are part of the checkpoint.
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import distributed, runs
from .augment import Augmenter, fixmatch_views
from .engine import Batches, Engine, EngineSettings
from .errors import LosslessError
from .finetune import ARCH_KEYS, CHECKPOINT_SECONDS, Classifier, build_classifier, finish_classifier, validation_metrics
from .pretrain import begin_stage

FIXMATCH_KEYS = ("fm_epochs", "fm_batch_size", "fm_mu", "fm_threshold", "fm_lambda_u", "fm_lr", "fm_weight_decay",
                 "fm_ema", "fm_translate", "fm_max_steps_per_epoch", "ft_standardize", "precision", "blur_sigma_max")
SPLIT_KEYS = ("dataset", "data_root", "labels_per_class", "val_per_class", "seed", "num_classes", "synthetic_train",
              "synthetic_test", "synthetic_classes", "synthetic_size", "synthetic_channels")


class FixMatch(nn.Module):
    """The engine's task: ``model`` (trained) and ``ema`` (its moving average, evaluated)."""

    def __init__(self, model: Classifier, labelled_images: np.ndarray, labelled_labels: np.ndarray,
                 batch_size: int, threshold: float, lambda_u: float, ema_decay: float, translate: float,
                 blur_sigma_max: float):
        super().__init__()
        self.model = model
        self.ema = copy.deepcopy(model)
        for p in self.ema.parameters():
            p.requires_grad_(False)
        size = model.augmenter.views[0].size if model.augmenter.views else labelled_images.shape[1]
        weak, strong = fixmatch_views(size, translate, blur_sigma=(0.1, blur_sigma_max))
        self.weak = Augmenter([weak], model.augmenter.mean, model.augmenter.std)
        self.strong = Augmenter([strong], model.augmenter.mean, model.augmenter.std)
        self.labelled_images = torch.from_numpy(np.ascontiguousarray(labelled_images))
        self.labelled_labels = torch.from_numpy(np.asarray(labelled_labels, dtype=np.int64))
        self.batch_size, self.threshold, self.lambda_u = batch_size, threshold, lambda_u
        self.ema_decay = ema_decay

    @torch.no_grad()
    def prepare(self, batch: dict, generator: torch.Generator):
        device = batch["images"].device
        pick = torch.randint(len(self.labelled_labels), (self.batch_size,), generator=generator,
                             device=generator.device).cpu()
        xl = self.weak(self.labelled_images[pick].to(device), generator)[0]
        xw = self.weak(batch["images"], generator)[0]
        xs = self.strong(batch["images"], generator)[0]
        hidden = batch.get("labels")  # the pool's true labels: only to log the pseudo-labels' precision
        return xl, self.labelled_labels[pick].to(device), xw, xs, hidden

    def forward(self, inputs):
        xl, yl, xw, xs, hidden = inputs
        n, m = len(xl), len(xw)
        logits = self.model(torch.cat([xl, xw, xs])).float()
        ll, lw, ls = logits[:n], logits[n:n + m], logits[n + m:]
        loss_l = F.cross_entropy(ll, yl)
        confidence, target = torch.softmax(lw.detach(), 1).max(1)
        mask = (confidence >= self.threshold).float()
        loss_u = (F.cross_entropy(ls, target, reduction="none") * mask).mean()
        out = {"loss": loss_l + self.lambda_u * loss_u, "loss_l": loss_l.detach(), "loss_u": loss_u.detach(),
               "mask": mask.mean(), "acc": (ll.argmax(1) == yl).float().mean()}
        if hidden is not None:  # of the pool images above the threshold, the share labelled right
            right = ((target == hidden).float() * mask).sum()
            out["pseudo_precision"] = right / mask.sum().clamp_min(1.0)
        return out

    @torch.no_grad()
    def after_step(self, step: int, total: int) -> None:
        d = self.ema_decay
        for e, p in zip(self.ema.parameters(), self.model.parameters()):
            e.mul_(d).add_(p.detach(), alpha=1 - d)
        for e, b in zip(self.ema.buffers(), self.model.buffers()):
            e.copy_(b)  # batch-norm statistics (and the fixed normalisations) as the model has them


def fixmatch_lr(step: int, total: int) -> float:
    """FixMatch's schedule: cos(7 pi k / (16 K)), from 1 down to 0.2 at the last step."""
    return math.cos(7 * math.pi * min(step, total) / (16 * max(total, 1)))


def fixmatch_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Nesterov SGD (momentum 0.9); no weight decay on biases and normalisation parameters."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                           lr=lr, momentum=0.9, nesterov=True)


def fixmatch_dir(cfg: Mapping[str, Any]) -> Path:
    keys = {k: cfg.get(k) for k in SPLIT_KEYS + ARCH_KEYS + FIXMATCH_KEYS}
    keys["version"] = 1
    return runs.run_dir(cfg, "fixmatch", keys)


def fixmatch(cfg: Mapping[str, Any]) -> dict:
    """Train (or load) FixMatch on ``cfg``'s split; returns the result (``test_accuracy`` etc.,
    ``classifier``: a checkpoint of the EMA weights that ``finetune.load_classifier`` reads)."""
    device, amp, split = begin_stage(cfg)
    run = fixmatch_dir(cfg)
    with runs.claim(run):
        done = runs.find_result(run)
        return done if done is not None else _fixmatch_run(cfg, run, split, device, amp)


def _fixmatch_run(cfg, run: Path, split, device, amp) -> dict:
    unlabelled = cfg["fm_mu"] * cfg["fm_batch_size"]
    if len(split.unlabelled) < unlabelled:
        raise LosslessError(f"fm_mu x fm_batch_size = {unlabelled} unlabelled images a step, but the pool holds "
                            f"{len(split.unlabelled)}; lower fm_mu or fm_batch_size")
    model = build_classifier(cfg, split, None, device, amp)
    task = FixMatch(model, split.images("labelled"), split.labels("labelled"), cfg["fm_batch_size"],
                    cfg["fm_threshold"], cfg["fm_lambda_u"], cfg["fm_ema"], cfg["fm_translate"],
                    cfg["blur_sigma_max"])
    batches = Batches(split.data.images, split.data.labels, split.unlabelled, unlabelled, seed=cfg["seed"],
                      device=device, max_steps=cfg["fm_max_steps_per_epoch"] or None)
    optimizer = fixmatch_optimizer(task.model, cfg["fm_lr"], cfg["fm_weight_decay"])
    total = cfg["fm_epochs"] * len(batches)
    engine = Engine(run, EngineSettings(epochs=cfg["fm_epochs"], precision=cfg["precision"],
                                        channels_last=cfg["channels_last"], seed=cfg["seed"],
                                        progress=bool(cfg["progress"]), desc="fixmatch", lr_hint="fm_lr",
                                        best_metric="val_acc", best_mode="max",
                                        checkpoint_every_steps=cfg["checkpoint_every_steps"],
                                        epoch_checkpoint_seconds=CHECKPOINT_SECONDS), device)
    t0 = time.perf_counter()
    engine.fit(task, batches, optimizer, lambda g: fixmatch_lr(g, total),
               evaluate=lambda epoch: validation_metrics(task.ema, split, device, amp))
    seconds = round(time.perf_counter() - t0, 1)
    # the EMA weights of the best epoch, as a classifier checkpoint of their own
    best = runs.load_checkpoint(engine.best_path)["model"]
    ema = {k[len("ema."):]: v for k, v in best.items() if k.startswith("ema.")}
    path = run / "checkpoints" / "ema-best.pt"
    if distributed.info().is_main:
        runs.save_checkpoint(path, {"model": ema})
    distributed.barrier()
    history = runs.read_jsonl(run / "metrics.jsonl")
    return finish_classifier(run, path, task.ema, split, device, amp,
                             {"init": "random", "method": "fixmatch", "train_seconds": seconds,
                              "steps": total, "epochs": cfg["fm_epochs"],
                              "last_mask": history[-1].get("mask") if history else None,
                              "last_pseudo_precision": history[-1].get("pseudo_precision") if history else None})
