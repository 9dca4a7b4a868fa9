"""Frozen features: a pretrained backbone's embedding of every image of the dataset, computed once
and stored beside the backbone, in its pretraining run's folder (``features/{key}.npy``).

The experiments that retrain only a head (active learning's many seeds and rounds, the frozen
probes) read them instead of running the backbone again. The file is keyed by what changes the
numbers: the backbone file (its size and modification time), the dataset (name, number and
shape of the images), the precision and the memory layout (oneDNN picks kernels by both). It is
written atomically under the run folder's lock, so two processes compute it once and a killed
one leaves no half file.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from . import config, runs
from .augment import Augmenter
from .engine import autocast_context, resolve_device, resolve_precision
from .errors import LosslessError

BATCH = 1024


def features_key(cfg: Mapping[str, Any], backbone_path: Path, data) -> dict:
    stat = Path(backbone_path).stat()
    return {"backbone": str(Path(backbone_path).resolve()), "backbone_bytes": stat.st_size,
            "backbone_mtime_ns": stat.st_mtime_ns, "dataset": data.name, "images": int(len(data.labels)),
            "shape": list(data.image_shape), "precision": cfg["precision"],
            "channels_last": bool(cfg["channels_last"]), "image_size": cfg.get("image_size"), "version": 1}


def frozen_features(cfg: Mapping[str, Any], backbone_path: Path | None = None) -> np.ndarray:
    """(N, D) float32 features of every image of ``cfg``'s dataset (dataset order; memory-mapped),
    from the backbone at ``backbone_path`` (default: ``cfg``'s pretraining run, trained first
    when missing), in eval mode on the plain (un-augmented) view."""
    from .finetune import load_backbone
    from .pretrain import backbone_for, load_data, pretrain
    config.validate(cfg)
    backbone_path = Path(backbone_path or pretrain(cfg)["backbone"])
    if not backbone_path.is_file():
        raise LosslessError(f"pretrained backbone {backbone_path} does not exist; run `lossless pretrain --profile "
                            f"{cfg['profile']}` (with the same parameters) first")
    split = load_data(cfg, False)
    data = split.data
    key = features_key(cfg, backbone_path, data)
    folder = backbone_path.parent / "features"
    out = folder / f"{runs.config_hash(key)}.npy"
    found = _load(out, len(data.labels))
    if found is not None:
        return found
    with runs.claim(folder):
        found = _load(out, len(data.labels))
        if found is not None:
            return found
        device = resolve_device(cfg["device"])
        amp = resolve_precision(cfg["precision"], device)
        backbone = backbone_for(cfg, data)
        ckpt = load_backbone(backbone_path, cfg, backbone)
        backbone = backbone.to(device).eval()
        channels_last = bool(cfg["channels_last"]) and device.type in ("cpu", "cuda")
        if channels_last:
            backbone = backbone.to(memory_format=torch.channels_last)
        augmenter = Augmenter([], ckpt["mean"], ckpt["std"])
        size = cfg.get("image_size") or data.image_shape[0]
        feats = _embed_all(backbone, data.images, augmenter, device, amp, size, channels_last,
                           bool(cfg["progress"]))
        runs.write_bytes(out, lambda f: np.save(f, feats))
        runs.write_json(out.with_suffix(".json"), key)
    return _load(out, len(data.labels))


def _load(path: Path, n: int) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise LosslessError(f"stored features {path} could not be read ({exc}); delete the file to compute "
                            f"them again") from None
    if arr.ndim != 2 or len(arr) != n or arr.dtype != np.float32:
        raise LosslessError(f"stored features {path} hold {arr.shape} {arr.dtype}, not ({n}, D) float32; delete "
                            f"the file to compute them again")
    return arr


@torch.no_grad()
def _embed_all(backbone, images: np.ndarray, augmenter: Augmenter, device, amp, size: int, channels_last: bool,
               progress: bool) -> np.ndarray:
    from tqdm.auto import tqdm
    chunks = []
    bar = tqdm(total=len(images), desc="features", unit="img", disable=not progress, file=sys.stderr)
    for start in range(0, len(images), BATCH):
        batch = torch.from_numpy(np.array(images[start:start + BATCH])).to(device)
        x = augmenter.plain(batch, size)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, amp):
            chunks.append(backbone(x).float().cpu().numpy())
        bar.update(len(batch))
    bar.close()
    return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)
