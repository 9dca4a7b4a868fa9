"""The pretraining stage (paper sections 3.3 and 4): a self-supervised method (Barlow Twins, or
one of the baselines SimCLR, BYOL, SwAV; ``lossless.methods``) on the labelled + unlabelled images.

``pretrain(cfg)`` is what ``lossless pretrain`` and the Barlow Twins chapter call. It finds or
creates the run folder for this configuration, trains through the engine (resuming whatever is
there), monitors k-NN accuracy and the collapse signals every epoch, and ends with a
``result.json``: final loss, k-NN accuracy on validation and test, a linear probe on the labelled
images, throughput, and the path of the backbone's weights for the later stages.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np
import torch

from . import data as data_mod
from . import config, distributed, runs
from . import methods
from .augment import Augmenter, channel_stats
from .engine import Batches, Engine, EngineSettings, check_batch_size, resolve_device, resolve_precision
from .models import build_backbone
from .optim import build_optimizer, scaled_lr, warmup_cosine
from .probes import chosen_probes, embed, embedding_std, knn_accuracy, linear_probe_accuracy

# The keys that define a pretraining run (its folder's hash); progress, device and the like don't.
PRETRAIN_KEYS = (
    "dataset", "data_root", "labels_per_class", "val_per_class", "seed", "num_classes",
    "synthetic_train", "synthetic_test", "synthetic_classes", "synthetic_size", "synthetic_channels",
    "backbone", "width", "layer4_stride", "maxpool", "image_size", "ssl_method", "ssl_epochs",
    "ssl_batch_size", "ssl_lr", "ssl_optimizer", "ssl_weight_decay", "ssl_warmup_epochs",
    "ssl_max_steps_per_epoch", "projector", "barlow_lambda", "barlow_scale", "crop_scale_min",
    "blur_sigma_max", "jitter_strength", "interpolation", "precision",
)


def run_keys(cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """The keys that define a pretraining run of ``cfg``'s method: the shared ones and its own."""
    return PRETRAIN_KEYS + methods.get(cfg["ssl_method"]).keys


# Keys added after runs were made: named in a run's key only where they differ from the value
# every earlier run used, so those runs keep their folders.
LATER_KEYS = {"ssl_lars_eta": 1e-3}


def pretrain_dir(cfg: Mapping[str, Any]):
    keys = {k: cfg.get(k) for k in run_keys(cfg)}
    keys.update({k: cfg[k] for k, v in LATER_KEYS.items() if cfg.get(k, v) != v})
    return runs.run_dir(cfg, f"pretrain-{cfg['ssl_method']}", keys)


def steps_per_epoch(cfg: Mapping[str, Any], split: data_mod.Split) -> int:
    """Optimiser steps in one pretraining epoch (global batches, capped by ssl_max_steps_per_epoch)."""
    steps = len(pretraining_indices(split)) // cfg["ssl_batch_size"]
    cap = cfg["ssl_max_steps_per_epoch"]
    return min(steps, cap) if cap else steps


def backbone_for(cfg: Mapping[str, Any], data: data_mod.ImageSet) -> torch.nn.Module:
    """``cfg``'s backbone for ``data``'s images (at ``image_size`` where it is set); a network
    the images are too small for is a ConfigError naming the key."""
    size = cfg.get("image_size") or data.image_shape[0]
    try:
        return build_backbone(cfg["backbone"], in_channels=data.image_shape[2], width=cfg["width"],
                              layer4_stride=cfg["layer4_stride"], image_size=size, maxpool=cfg["maxpool"])
    except ValueError as exc:
        raise config.ConfigError(f"backbone={cfg['backbone']}: {exc}") from None


def load_data(cfg: Mapping[str, Any], progress: bool) -> data_mod.Split:
    """The split, decoded by rank 0 first so that processes do not race to build the cache."""
    d = distributed.info()
    if d.enabled and not d.is_main:
        distributed.barrier()
    split = data_mod.load_split(cfg, progress=progress and d.is_main)
    if d.enabled and d.is_main:
        distributed.barrier()
    return split


class Stage(NamedTuple):
    """What every training stage starts from: the device, its autocast precision and the split."""
    device: torch.device
    amp: Any
    split: data_mod.Split


def begin_stage(cfg: Mapping[str, Any]) -> Stage:
    """The one set-up of a training stage (fine-tuning, pseudo-labelling, FixMatch): check the
    configuration, resolve the device, join the process group under torchrun, resolve the
    precision and load the split (rank 0 first)."""
    config.validate(cfg)
    device = resolve_device(cfg["device"])
    distributed.setup(device)
    return Stage(device, resolve_precision(cfg["precision"], device), load_data(cfg, bool(cfg["progress"])))


def pretraining_indices(split: data_mod.Split) -> np.ndarray:
    """The images Barlow Twins trains on: labelled + unlabelled (labels unused), never val or test."""
    return np.sort(np.concatenate([split.labelled, split.unlabelled]))


def build_task(cfg: Mapping[str, Any], split: data_mod.Split) -> tuple[torch.nn.Module, Augmenter, int]:
    """The task of ``cfg``'s method (``ssl_method``) at its (seeded) initialisation, its augmenter
    (the method's views, from the one ``augment`` module) and the views' image side."""
    method = methods.get(cfg["ssl_method"])
    data = split.data
    size = cfg.get("image_size") or data.image_shape[0]
    mean, std = channel_stats(data.images, pretraining_indices(split), seed=cfg["seed"])
    augmenter = Augmenter(method.views(cfg, size), mean, std)
    torch.manual_seed(cfg["seed"])  # the same configuration starts from the same weights
    task = method.build(cfg, backbone_for(cfg, data), augmenter, steps_per_epoch(cfg, split))
    return task, augmenter, size


def load_trained_task(cfg: Mapping[str, Any], split: data_mod.Split) -> torch.nn.Module:
    """The task of a finished (or stopped) pretraining run, with its last checkpoint's weights."""
    task, _, _ = build_task(cfg, split)
    ckpt = runs.load_checkpoint(pretrain_dir(cfg) / "checkpoints" / "last.pt")
    task.load_state_dict(ckpt["model"])
    return task.eval()


@torch.no_grad()
def correlation_matrix(task: torch.nn.Module, images: np.ndarray, seed: int = 0) -> np.ndarray:
    """C (D, D) of the two views of ``images`` (N, H, W, C) uint8, as the loss sees it."""
    from .methods.barlow import cross_correlation
    was = task.training
    task.eval()
    v1, v2 = task.augmenter(torch.from_numpy(np.ascontiguousarray(images)), torch.Generator().manual_seed(seed))
    c = cross_correlation(task.embed(v1), task.embed(v2)).numpy()
    task.train(was)
    return c


@torch.no_grad()
def calibrate_batch_norm(task: torch.nn.Module, images: np.ndarray, batch_size: int = 256,
                         seed: int = 0) -> torch.nn.Module:
    """Re-estimate every batch-norm layer's running statistics of ``task.backbone`` on augmented
    views of ``images`` (the cumulative average over all of them), weights untouched: what a
    pretraining run with its learning rate at zero leaves behind."""
    bns = [m for m in task.backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts equally
    was = task.backbone.training
    task.backbone.train()
    g = torch.Generator().manual_seed(seed)
    device = next(task.backbone.parameters()).device
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
        for view in task.augmenter(batch, g):
            task.backbone(view)
    for m in bns:
        m.momentum = 0.1
    task.backbone.train(was)
    return task


def initial_knn(cfg: Mapping[str, Any], calibration_images: int = 2048) -> dict:
    """The k-NN monitor (validation, and test when the split has one; ``probes``: the chosen
    probes of :func:`split_probes`) of the network pretraining starts from: the configured seed's
    initial weights, their batch-norm statistics estimated on augmented views of
    ``calibration_images`` pretraining images. How far a pretrained backbone is above this is
    what pretraining learned; a run whose rate is zero ends here."""
    device = resolve_device(cfg["device"])
    split = load_data(cfg, False)
    task, augmenter, size = build_task(cfg, split)
    task = task.to(device)
    idx = pretraining_indices(split)
    pick = np.sort(np.random.default_rng(cfg["seed"]).permutation(idx)[:calibration_images])
    calibrate_batch_norm(task, split.data.images[pick], seed=cfg["seed"])
    amp = resolve_precision(cfg["precision"], device)
    f = split_features(split, lambda imgs: embed(task.backbone, imgs, augmenter, device, amp, size=size))
    bank_labels = torch.from_numpy(split.labels("labelled"))
    out = {f"knn_{name}": knn_accuracy(f["labelled"], bank_labels, f[name], torch.from_numpy(split.labels(name)),
                                       k=cfg["knn_k"], num_classes=split.data.num_classes)
           for name in ("val", "test") if name in f}
    out["probes"] = split_probes(split, f)
    return out


def split_features(split: data_mod.Split, feats) -> dict[str, torch.Tensor]:
    """``feats`` (images -> features) of the split's labelled, validation and, where it has one,
    test images, each computed once."""
    return {name: feats(split.images(name)) for name in ("labelled", "val", "test") if len(split.indices(name))}


def split_probes(split: data_mod.Split, features: Mapping[str, torch.Tensor]) -> dict:
    """``probes.chosen_probes`` on :func:`split_features`: the labelled images as the bank and
    training set, k and C chosen on validation (as for pixels), test scored when present."""
    return chosen_probes(features["labelled"], split.labels("labelled"), features["val"], split.labels("val"),
                         features.get("test"), split.labels("test") if "test" in features else None,
                         num_classes=split.data.num_classes)


def _final_probes(split: data_mod.Split, feats) -> dict:
    """What a finished run's result reports of :func:`split_probes`: ``linear_probe_val``,
    ``knn_test`` and ``linear_probe_test`` (with a test set), and the whole choice as ``probes``."""
    p = split_probes(split, split_features(split, feats))
    out = {"linear_probe_val": p["linear_val"], "probes": p}
    if "knn_test" in p:
        out.update(knn_test=p["knn_test"], linear_probe_test=p["linear_probe_test"])
    return out


def pretrain(cfg: Mapping[str, Any]) -> dict:
    config.validate(cfg)
    device = resolve_device(cfg["device"])
    dist = distributed.setup(device)
    progress = bool(cfg["progress"])
    split = load_data(cfg, progress)
    check_batch_size(len(pretraining_indices(split)), cfg["ssl_batch_size"], "ssl_batch_size")
    run = pretrain_dir(cfg)
    with runs.claim(run):  # one process per run folder; a second command waits, then finds the result
        done = runs.find_result(run)
        if done is None:
            return _pretrain_run(cfg, run, split, device, dist, progress)
        if "probes" not in done and dist.is_main and (run / "backbone.pt").is_file():
            done = _reprobe(cfg, run, split, device, done)
        return done


def _reprobe(cfg: Mapping[str, Any], run: Path, split: data_mod.Split, device: torch.device, done: dict) -> dict:
    """A run finished by an earlier version, whose result lacks the chosen probes: add them
    (``_final_probes``) from its stored network, so every result reports the same protocol."""
    task, augmenter, size = build_task(cfg, split)
    task.backbone.load_state_dict(runs.load_checkpoint(run / "backbone.pt")["backbone"])
    backbone, amp = task.backbone.to(device), resolve_precision(cfg["precision"], device)
    done = {**done, **_final_probes(split, lambda imgs: embed(backbone, imgs, augmenter, device, amp, size=size))}
    runs.write_json(run / "result.json", done)
    return done


def optimizer_for(cfg: Mapping[str, Any], task: torch.nn.Module) -> torch.optim.Optimizer:
    """Pretraining's optimiser of ``task``: ``ssl_optimizer`` at the rate ``ssl_lr`` scaled by
    batch / 256, ``ssl_weight_decay``, and for LARS the trust coefficient ``ssl_lars_eta``."""
    return build_optimizer(cfg["ssl_optimizer"], task, scaled_lr(cfg["ssl_lr"], cfg["ssl_batch_size"]),
                           cfg["ssl_weight_decay"], eta=cfg["ssl_lars_eta"])


def _pretrain_run(cfg: Mapping[str, Any], run: Path, split: data_mod.Split, device: torch.device,
                  dist: distributed.DistInfo, progress: bool) -> dict:
    data = split.data
    task, augmenter, size = build_task(cfg, split)
    train_idx = pretraining_indices(split)
    mean, std = augmenter.mean, augmenter.std

    batch = cfg["ssl_batch_size"]
    batches = Batches(data.images, None, train_idx, batch, seed=cfg["seed"], dist_info=dist, device=device,
                      max_steps=cfg["ssl_max_steps_per_epoch"], key="ssl_batch_size")
    optimizer = optimizer_for(cfg, task)
    steps, epochs = len(batches), cfg["ssl_epochs"]
    schedule = lambda g: warmup_cosine(g, epochs * steps, cfg["ssl_warmup_epochs"] * steps)  # noqa: E731

    amp = resolve_precision(cfg["precision"], device)
    bank_images, bank_labels = split.images("labelled"), split.labels("labelled")
    val_images, val_labels = split.images("val"), split.labels("val")

    def evaluate(epoch: int) -> dict:
        """The monitors of each epoch: k-NN and a linear probe on validation, and collapse signals."""
        if (epoch + 1) % cfg["knn_every"] and epoch + 1 != epochs:
            return {}
        feats = lambda imgs: embed(task.backbone, imgs, augmenter, device, amp, size=size)  # noqa: E731
        bank, val_feats = feats(bank_images), feats(val_images)
        if not (torch.isfinite(bank).all() and torch.isfinite(val_feats).all()):
            # finite weights can still be too large for a forward pass (bf16 overflows)
            raise engine.diverged("the backbone's features became NaN or infinite (its weights are finite but "
                                  "too large)", epoch)
        return {"knn_val": knn_accuracy(bank, torch.from_numpy(bank_labels), val_feats,
                                        torch.from_numpy(val_labels), k=cfg["knn_k"],
                                        num_classes=data.num_classes),
                "linear_probe_val": linear_probe_accuracy(bank, bank_labels, val_feats, val_labels),
                "embedding_std": embedding_std(_project(task, val_feats, device))}

    engine = Engine(run, EngineSettings(epochs=epochs, precision=cfg["precision"],
                                        channels_last=cfg["channels_last"], compile=cfg["compile"],
                                        seed=cfg["seed"], progress=progress, desc=cfg["ssl_method"],
                                        lr_hint="ssl_lr",
                                        checkpoint_every_steps=cfg["checkpoint_every_steps"],
                                        best_metric="loss", best_mode="min"), device)
    t0 = time.perf_counter()
    last = engine.fit(task, batches, optimizer, schedule, evaluate)
    wall = time.perf_counter() - t0

    result = {"run": str(run), "epochs": epochs, "final_loss": last.get("loss"),
              "knn_val": last.get("knn_val"), "embedding_std": last.get("embedding_std"),
              "img_per_s": last.get("img_per_s"), "train_seconds": round(wall, 1),
              "checkpoint": last["checkpoint"], "resumed_from": last["resumed_from"]}
    if dist.is_main:
        backbone_path = run / "backbone.pt"
        runs.save_checkpoint(backbone_path, {"backbone": task.backbone.state_dict(),
                                             "config": {k: cfg.get(k) for k in run_keys(cfg)},
                                             "mean": mean, "std": std})
        feats = lambda imgs: embed(task.backbone, imgs, augmenter, device, amp, size=size)  # noqa: E731
        result.update(_final_probes(split, feats))
        result["backbone"] = str(backbone_path)
        runs.write_json(run / "result.json", result)
    distributed.barrier()
    return result


def _project(task: torch.nn.Module, feats: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Projector outputs of precomputed backbone features (eval mode), for the collapse signal."""
    was = task.projector.training
    task.projector.eval()
    with torch.no_grad():
        z = torch.cat([task.projector(feats[i:i + 1024].to(device)).float().cpu() for i in range(0, len(feats), 1024)])
    task.projector.train(was)
    return z


def probe_curve(run) -> list[dict]:
    """Monitor accuracy against training minutes, one row per epoch of a run's metrics.jsonl."""
    rows, minutes = [], 0.0
    for r in runs.read_jsonl(Path(run) / "metrics.jsonl"):
        minutes += r["seconds"] / 60
        rows.append({"epoch": r["epoch"], "minutes": round(minutes, 2), "loss": r.get("loss"),
                     "knn_val": r.get("knn_val"), "linear_probe_val": r.get("linear_probe_val"),
                     "embedding_std": r.get("embedding_std")})
    return rows
