"""Fine-tuning the classifier (paper section 3.4), and the supervised-only baseline.

The pretrained backbone gets the two-layer head of section 3.4 (Linear 512 -> 1024, ReLU,
Dropout 0.3, Linear to the classes) and is trained on the labelled images with SGD (momentum
0.9, weight decay 1e-5) at **two learning rates**: 0.01 for the head, 0.0008 for the backbone,
with cosine annealing. The best checkpoint by validation loss is kept (and the last one).

Feature scale. Barlow Twins features come out larger than a random network's (on the ``cpu``
profile a median spread of 0.82 against 0.24, the widest 3.4, and 14 of 128 features dead), so
the head's 0.01 rate that suits unit-scale inputs overshoots.
Between backbone and head sits a fixed standardisation: each feature's mean and standard
deviation measured once, on unlabelled images, before training. The paper's learning rates then
work for pretrained and random backbones alike.

The same recipe from a random initialisation is the supervised-only baseline, except for the
backbone's rate: 0.0008 barely moves random weights (42% validation accuracy on the ``cpu``
profile), so the baseline's backbone rate ``sup_lr_backbone`` was chosen on validation
(0.01: 59%, 0.05: 73.5%, 0.1: 72.6%, 0.2: 71.7%).
"""
from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import data as data_mod
from . import distributed, runs
from .augment import Augmenter, channel_stats, finetune_view
from .engine import Batches, Engine, EngineSettings, autocast_context, resolve_device, resolve_precision
from .errors import LosslessError
from .evaluate import report, score
from .models import ClassifierHead
from .pretrain import backbone_for, begin_stage, pretrain, pretraining_indices, run_keys

FINETUNE_KEYS = ("ft_epochs", "ft_batch_size", "ft_lr_head", "ft_lr_backbone", "sup_lr_backbone", "ft_weight_decay",
                 "ft_standardize", "precision", "crop_scale_min", "blur_sigma_max")
ARCH_KEYS = ("backbone", "width", "layer4_stride", "maxpool", "image_size")


class FeatureStandardizer(nn.Module):
    """``(f - mean) / std`` with fixed statistics (buffers, saved in checkpoints)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return (f - self.mean) / self.std


def std_floor(std: torch.Tensor) -> float:
    """The smallest spread a feature is divided by: a dead feature (constant on the sample) must
    not be amplified a millionfold when fine-tuning wakes it up, so no feature is scaled by more
    than 10x a typical one."""
    return 0.1 * float(std.median()) + 1e-6


class Classifier(nn.Module):
    """Backbone -> standardisation -> head. ``forward(x)`` gives logits; ``forward((x, y))`` the
    loss and accuracy of a training batch (the engine's task interface).

    The per-channel input normalisation the backbone was trained with is part of the model
    (buffers ``input_mean``/``input_std``, saved in every checkpoint): a pretrained backbone keeps
    the statistics of its pretraining run, and a reloaded classifier sees its inputs exactly as it
    did in training."""

    def __init__(self, backbone: nn.Module, num_classes: int, augmenter: Augmenter):
        super().__init__()
        self.backbone = backbone
        self.standardize = FeatureStandardizer(backbone.feature_dim)
        self.head = ClassifierHead(backbone.feature_dim, num_classes)
        self.augmenter = augmenter
        self.register_buffer("input_mean", torch.tensor(augmenter.mean, dtype=torch.float64))
        self.register_buffer("input_std", torch.tensor(augmenter.std, dtype=torch.float64))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # the augmenter normalises with the loaded statistics
        self.augmenter.mean = tuple(self.input_mean.tolist())
        self.augmenter.std = tuple(self.input_std.tolist())

    def prepare(self, batch: dict, generator: torch.Generator):
        return self.augmenter(batch["images"], generator)[0], batch["labels"]

    def forward(self, inputs):
        if isinstance(inputs, torch.Tensor):
            return self.head(self.standardize(self.backbone(inputs)))
        x, y = inputs
        logits = self.head(self.standardize(self.backbone(x)))
        return {"loss": F.cross_entropy(logits.float(), y), "acc": (logits.argmax(1) == y).float().mean()}

    @torch.no_grad()
    def fit_standardizer(self, images: np.ndarray, device: torch.device, amp, batch_size: int = 512) -> None:
        """Measure the feature statistics on ``images`` (unlabelled), after recalibrating batch
        norm's running statistics on the same images: a fresh network's running statistics are
        still the defaults (mean 0, variance 1), so its eval-mode features would have nothing to
        do with the batch-normalised ones it trains on."""
        was = self.training
        batches = [torch.from_numpy(np.ascontiguousarray(images[s:s + batch_size])).to(device)
                   for s in range(0, len(images), batch_size)]
        norms = [m for m in self.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the calibration batches
        self.backbone.train()
        for batch in batches:
            with autocast_context(device, amp):
                self.backbone(self.augmenter.plain(batch))
        for m, mom in zip(norms, saved):
            m.momentum = mom
        self.eval()
        feats = []
        for batch in batches:
            with autocast_context(device, amp):
                feats.append(self.backbone(self.augmenter.plain(batch)).float())
        f = torch.cat(feats)
        self.standardize.mean.copy_(f.mean(0))
        std = f.std(0)
        self.standardize.std.copy_(std.clamp_min(std_floor(std)))
        self.train(was)


def load_backbone(path: Path, cfg: Mapping[str, Any], backbone: nn.Module) -> dict:
    """Weights of a pretraining run into ``backbone``; a clear error when missing or mismatched.
    Returns the checkpoint (its ``mean``/``std`` are the input normalisation of the run)."""
    if not Path(path).is_file():
        raise LosslessError(f"pretrained backbone {path} does not exist; run `lossless pretrain --profile "
                            f"{cfg['profile']}` (with the same parameters) first")
    ckpt = runs.load_checkpoint(path)
    if "mean" not in ckpt or "std" not in ckpt:
        raise LosslessError(f"{path} has no input normalisation (mean/std); it was not written by "
                            f"`lossless pretrain`: pretrain again with this version")
    theirs = {k: ckpt.get("config", {}).get(k) for k in ARCH_KEYS}
    ours = {k: cfg.get(k) for k in ARCH_KEYS}
    if theirs != ours:
        diff = {k: (theirs[k], ours[k]) for k in ARCH_KEYS if theirs[k] != ours[k]}
        raise LosslessError(f"{path} holds another architecture than this configuration asks for "
                            f"(stored, asked): {diff}; pretrain with these settings or change them")
    try:
        backbone.load_state_dict(ckpt["backbone"])
    except RuntimeError as exc:
        raise LosslessError(f"{path} does not fit the backbone ({str(exc).splitlines()[0]})") from None
    return ckpt


def build_classifier(cfg: Mapping[str, Any], split: data_mod.Split, pretrained: Path | None,
                     device: torch.device, amp, normalisation: tuple | None = None) -> Classifier:
    """The classifier of ``cfg``: a pretrained backbone (and the input normalisation of its
    pretraining run) when ``pretrained`` is given, else a seeded random one normalised with
    ``normalisation`` (mean, std) or, by default, the statistics of this split's training images
    (measured the way pretraining measures them)."""
    data = split.data
    size = cfg.get("image_size") or data.image_shape[0]
    torch.manual_seed(cfg["seed"])
    backbone = backbone_for(cfg, data)
    if pretrained is not None:
        ckpt = load_backbone(pretrained, cfg, backbone)
        mean, std = ckpt["mean"], ckpt["std"]
    elif normalisation is not None:
        mean, std = normalisation
    else:
        mean, std = channel_stats(data.images, pretraining_indices(split), seed=cfg["seed"])
    augmenter = Augmenter([finetune_view(size, (cfg["crop_scale_min"], 1.0), (0.1, cfg["blur_sigma_max"]))], mean, std)
    model = Classifier(backbone, data.num_classes, augmenter).to(device)
    if cfg["ft_standardize"]:
        rng = np.random.default_rng(cfg["seed"])
        sample = np.sort(rng.choice(split.unlabelled, size=min(5000, len(split.unlabelled)), replace=False))
        model.fit_standardizer(data.images[sample], device, amp)  # unlabelled images only
    return model


def two_rate_optimizer(model: Classifier, lr_head: float, lr_backbone: float, weight_decay: float):
    """SGD with momentum 0.9: the head at ``lr_head``, the backbone at ``lr_backbone``."""
    return torch.optim.SGD([{"params": model.backbone.parameters(), "lr": lr_backbone, "name": "backbone"},
                            {"params": model.head.parameters(), "lr": lr_head, "name": "head"}],
                           lr=lr_head, momentum=0.9, weight_decay=weight_decay)


# a classifier's epochs are short (0.2 s for 320 images): checkpoint at most every 30 s of training
CHECKPOINT_SECONDS = 30.0


def cosine(step: int, total: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


def validation_metrics(model: Classifier, split: data_mod.Split, device, amp, name: str = "val") -> dict:
    """Loss and accuracy on a split, plain images (no augmentation)."""
    images, labels = split.images(name), split.labels(name)
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(images), 512):
            x = model.augmenter.plain(torch.from_numpy(np.ascontiguousarray(images[s:s + 512])).to(device))
            y = torch.from_numpy(labels[s:s + 512]).to(device)
            with autocast_context(device, amp):
                logits = model(x).float()
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
    return {f"{name}_loss": loss / len(images), f"{name}_acc": correct / len(images)}


def finetune_dir(cfg: Mapping[str, Any], init: str, pretrained: Path | None,
                 extra: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    keys = {k: cfg.get(k) for k in set(run_keys(cfg)) | set(FINETUNE_KEYS)}
    # version 2: the input normalisation comes from the pretraining run (version 1 re-measured it)
    keys.update(init=init, pretrained=str(pretrained) if pretrained else None, version=2)
    if extra is not None:  # a labelled set grown by requests: the folder is keyed by what was added
        keys["extra_labels"] = hashlib.sha1(np.asarray(extra[0], dtype=np.int64).tobytes()
                                            + np.asarray(extra[1], dtype=np.int64).tobytes()).hexdigest()
    return runs.run_dir(cfg, f"finetune-{init}", keys)


def check_extra(extra, split: data_mod.Split) -> tuple[np.ndarray, np.ndarray] | None:
    """``extra`` as (dataset indices, labels), checked: pool images only, each once, a known class."""
    if extra is None:
        return None
    idx, lab = (np.asarray(a, dtype=np.int64) for a in extra)
    if idx.shape != lab.shape or idx.ndim != 1:
        raise LosslessError(f"extra labels: {idx.shape} indices for {lab.shape} labels; give two 1-D arrays of one length")
    if len(np.unique(idx)) != len(idx):
        raise LosslessError("extra labels: an image is given twice; each once")
    outside = np.setdiff1d(idx, split.unlabelled)
    if len(outside):
        raise LosslessError(f"extra labels: {len(outside)} image(s) are not in the unlabelled pool (e.g. index "
                            f"{int(outside[0])}); only pool images can be added")
    if len(lab) and (lab.min() < 0 or lab.max() >= split.data.num_classes):
        raise LosslessError(f"extra labels: labels must lie in 0..{split.data.num_classes - 1}")
    return idx, lab


def finetune(cfg: Mapping[str, Any], init: str = "barlow", pretrained: Path | None = None,
             extra: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Fine-tune (``init="barlow"``: from a pretraining run) or train from scratch (``"random"``).

    ``pretrained`` defaults to the backbone of the pretraining run of ``cfg`` (run first if missing).
    ``extra`` = (pool indices, labels) adds labelled images to the split's own (the answers of
    label requests, section 3.6)."""
    if init not in ("barlow", "random"):
        raise LosslessError(f"init={init!r}: choose barlow or random")
    device, amp, split = begin_stage(cfg)
    if init == "barlow":
        # an explicit checkpoint must exist; by default the configuration's own pretraining run
        # is loaded, or trained first when it has not been (a chapter opened on its own works)
        pretrained = Path(pretrained) if pretrained else Path(pretrain(cfg)["backbone"])
    else:
        pretrained = None
    extra = check_extra(extra, split)
    run = finetune_dir(cfg, init, pretrained, extra)
    with runs.claim(run):  # one process per run folder; a second command waits, then finds the result
        done = runs.find_result(run)
        return done if done is not None else _finetune_run(cfg, init, pretrained, run, split, device, amp, extra)


def _finetune_run(cfg: Mapping[str, Any], init: str, pretrained: Path | None, run: Path, split: data_mod.Split,
                  device: torch.device, amp, extra: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    model = build_classifier(cfg, split, pretrained, device, amp)
    labels, train_idx = split.data.labels, split.labelled
    if extra is not None:
        labels = labels.copy()
        labels[extra[0]] = extra[1]
        train_idx = np.concatenate([split.labelled, extra[0]])
    batches = Batches(split.data.images, labels, train_idx, cfg["ft_batch_size"], seed=cfg["seed"],
                      drop_last=False, device=device)
    # The paper's 0.0008 suits a pretrained backbone; a random one barely moves at that rate
    # (42% validation accuracy on the cpu profile), so the baseline gets its own, chosen on validation.
    lr_backbone = cfg["ft_lr_backbone"] if init == "barlow" else cfg["sup_lr_backbone"]
    optimizer = two_rate_optimizer(model, cfg["ft_lr_head"], lr_backbone, cfg["ft_weight_decay"])
    total = cfg["ft_epochs"] * len(batches)
    engine = Engine(run, EngineSettings(epochs=cfg["ft_epochs"], precision=cfg["precision"],
                                        channels_last=cfg["channels_last"], seed=cfg["seed"],
                                        progress=bool(cfg["progress"]), desc=f"finetune-{init}",
                                        lr_hint=f"ft_lr_head / {'ft' if init == 'barlow' else 'sup'}_lr_backbone",
                                        best_metric="val_loss", best_mode="min",
                                        epoch_checkpoint_seconds=CHECKPOINT_SECONDS), device)
    t0 = time.perf_counter()
    engine.fit(model, batches, optimizer, lambda g: cosine(g, total),
               evaluate=lambda epoch: validation_metrics(model, split, device, amp))
    return finish_classifier(run, engine.best_path, model, split, device, amp,
                             {"init": init, "pretrained": str(pretrained) if pretrained else None,
                              "extra_labels": 0 if extra is None else int(len(extra[0])),
                              "train_seconds": round(time.perf_counter() - t0, 1)})


def finish_classifier(run: Path, checkpoint: Path, model: Classifier, split: data_mod.Split, device, amp,
                      extra: dict) -> dict:
    """Load the classifier ``checkpoint`` (the best one), evaluate it on validation and test,
    write result.json."""
    model.load_state_dict(runs.load_checkpoint(checkpoint)["model"])
    result = {"run": str(run), "seed": split.seed, "labels_per_class": split.labels_per_class,
              "classifier": str(checkpoint), **extra}
    for name in ("val", "test"):
        if len(split.indices(name)):
            s = score(model, split.images(name), model.augmenter.plain, device, amp)
            rep = report(s, split.labels(name), split.data.num_classes)
            result[f"{name}_accuracy"] = rep["accuracy"]
            result[f"{name}_report"] = rep
    if distributed.info().is_main:
        runs.write_json(run / "result.json", result)
    return result


def load_classifier(cfg: Mapping[str, Any], split: data_mod.Split, checkpoint: Path, device, amp) -> Classifier:
    """A classifier with the weights of a fine-tuning (or pseudo-label) checkpoint, in the memory
    layout the engine trained and scored it in (``channels_last``), so that scoring it at the run's
    precision (``amp``) reproduces the run's own scores: oneDNN picks its convolution kernels by
    layout and precision, and on some processors (Intel AMX) another choice changes predictions."""
    state = runs.load_checkpoint(checkpoint)["model"]
    model = build_classifier(dict(cfg, ft_standardize=False), split, None, device, amp,
                             normalisation=(state["input_mean"].tolist(), state["input_std"].tolist()))
    model.load_state_dict(state)
    if cfg["channels_last"] and device.type in ("cpu", "cuda"):
        model = model.to(memory_format=torch.channels_last)
    return model


# ------------------------------------------------------------------ what the chapter measures
@torch.no_grad()
def feature_scale(cfg: Mapping[str, Any], split: data_mod.Split, pretrained: Path | None) -> dict:
    """How large the backbone's features are before the head sees them: the statistics the
    standardisation measures (on 5,000 unlabelled images, batch norm recalibrated first)."""
    device = resolve_device(cfg["device"])
    amp = resolve_precision(cfg["precision"], device)
    model = build_classifier(dict(cfg, ft_standardize=True), split, pretrained, device, amp)
    mean, std = model.standardize.mean.float(), model.standardize.std.float()
    floor = std_floor(std)  # the measured spreads are already clamped to it
    return {"features": int(len(std)), "norm of the mean feature vector": round(float(mean.norm()), 2),
            "median feature std": round(float(std.median()), 3), "largest feature std": round(float(std.max()), 3),
            "features at the std floor (dead)": int((std <= floor * (1 + 1e-6)).sum())}


def backbone_drift(pretrained: Path, classifier_checkpoint: Path) -> list[dict]:
    """How far fine-tuning moved each stage of a pretrained backbone: ||w_after - w_before|| /
    ||w_before|| over the stage's weights (batch-norm statistics excluded)."""
    before = runs.load_checkpoint(pretrained)["backbone"]
    after = {k[len("backbone."):]: v for k, v in runs.load_checkpoint(classifier_checkpoint)["model"].items()
             if k.startswith("backbone.")}
    rows: dict[str, list[float]] = {}
    for k, w in before.items():
        if not w.is_floating_point() or "running_" in k:
            continue
        stage = k.split(".")[0]
        d = rows.setdefault(stage, [0.0, 0.0])
        d[0] += float((after[k].double() - w.double()).pow(2).sum())
        d[1] += float(w.double().pow(2).sum())
    return [{"stage": s, "relative change": (d / max(n, 1e-30)) ** 0.5} for s, (d, n) in rows.items()]
