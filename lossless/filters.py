"""What a backbone's filters and channels look like (paper Figure 2, and beyond it).

Figure 2 of the paper shows the first convolution's filters of its Barlow Twins ResNet-34. Here
any pretrained backbone's (or its seeded initialisation's) convolution weights are laid out as
one mosaic of filters (``mosaic``), the feature maps of one image are taken after each stage
(``stage_maps``), and the pool images that most activate a channel of the last stage are found
from the stored frozen features (``top_activating``). ``viz`` draws them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .errors import LosslessError


def backbone(cfg: Mapping[str, Any], path: Path | None, split) -> tuple[nn.Module, dict]:
    """The backbone of ``cfg`` in eval mode: with the weights of the pretraining checkpoint
    ``path``, or (``path=None``) at the initialisation a pretraining run of ``cfg`` starts from
    (the same seed). Returns it and the checkpoint (``{}`` for the initialisation)."""
    from .finetune import load_backbone
    from .pretrain import backbone_for
    torch.manual_seed(cfg["seed"])  # as pretrain.build_task: the backbone is built first
    net = backbone_for(cfg, split.data)
    ckpt = load_backbone(path, cfg, net) if path is not None else {}
    return net.eval(), ckpt


def conv_layers(net: nn.Module) -> list[str]:
    """The names of the network's convolutions, input first."""
    return [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]


def layer_weights(net: nn.Module, layer: str) -> np.ndarray:
    """(out, in, kh, kw) float32 weights of convolution ``layer`` (e.g. ``stem.0``)."""
    module = dict(net.named_modules()).get(layer)
    if not isinstance(module, nn.Conv2d):
        names = conv_layers(net)
        raise LosslessError(f"filter_layer={layer!r} is not a convolution of this backbone; its convolutions: "
                            f"{', '.join(names[:6])}, ... ({len(names)} in all; the first is the paper's)")
    return module.weight.detach().float().cpu().numpy().copy()


def shown_filters(weights: np.ndarray) -> np.ndarray:
    """What a filter looks like as an image: (out, kh, kw, 1) for one input channel, (out, kh, kw,
    3) for three (RGB), and for more inputs the mean over them, (out, kh, kw, 1)."""
    w = np.asarray(weights, dtype=np.float32)
    if w.shape[1] == 3:
        return w.transpose(0, 2, 3, 1)
    return (w if w.shape[1] == 1 else w.mean(1, keepdims=True)).transpose(0, 2, 3, 1)


def mosaic(filters: np.ndarray, columns: int = 8, scale: float | str | None = None,
           gap: int = 1) -> tuple[np.ndarray, float]:
    """``filters`` (n, kh, kw, c) side by side, ``columns`` a row, ``gap`` pixels of NaN between
    them (drawn blank), every weight divided by ``scale`` (default: the largest absolute weight),
    so that values lie in [-1, 1] on a scale shared with any mosaic given the same ``scale``;
    ``scale="filter"``: each filter over its own largest absolute weight, so every filter shows
    its shape however small its norm (the returned scale is then the largest of them).
    Returns (rows * (kh + gap) - gap, columns * (kw + gap) - gap, c) and the scale."""
    f = np.asarray(filters, dtype=np.float64)
    n, kh, kw, c = f.shape
    if scale == "filter":
        own = np.abs(f).reshape(n, -1).max(1)
        if not own.max() > 0:
            raise LosslessError("the filters are all zero: nothing to draw")
        f = f / np.where(own > 0, own, 1.0)[:, None, None, None]
        scale = 1.0
        largest = float(own.max())
    else:
        scale = float(np.abs(f).max()) if scale is None else float(scale)
        largest = scale
        if not scale > 0:
            raise LosslessError("the filters are all zero: nothing to draw")
    rows = -(-n // columns)
    out = np.full((rows * (kh + gap) - gap, columns * (kw + gap) - gap, c), np.nan)
    for i in range(n):
        r, q = divmod(i, columns)
        out[r * (kh + gap):r * (kh + gap) + kh, q * (kw + gap):q * (kw + gap) + kw] = f[i] / scale
    return out, largest


def filter_norms(weights: np.ndarray) -> np.ndarray:
    """The L2 norm of each output filter (out,)."""
    w = np.asarray(weights, dtype=np.float64)
    return np.sqrt((w.reshape(len(w), -1) ** 2).sum(1))


@torch.no_grad()
def stage_maps(net: nn.Module, image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> dict[str, np.ndarray]:
    """The activations (C, h, w) after each stage of a ResNet (stem, layer1..layer4) for one
    (H, W, C) uint8 image, normalised as the pretraining run normalised its inputs."""
    if not hasattr(net, "layer4"):
        raise LosslessError("stage_maps draws a ResNet's stages; this backbone has none (VGG-16)")
    # a copy: the image may be a view of the read-only memory-mapped dataset
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    out = {}
    for name in ("stem", "layer1", "layer2", "layer3", "layer4"):
        x = getattr(net, name)(x)
        out[name] = x[0].numpy().copy()
    return out


def selective_channels(features: np.ndarray, n: int = 4) -> list[int]:
    """The ``n`` channels whose activation varies most across images (the sample standard
    deviation over the mean, largest first): those that pick out some images, not all."""
    f = np.asarray(features, dtype=np.float64)
    spread = f.std(0, ddof=1) / np.maximum(np.abs(f.mean(0)), 1e-12)
    return [int(i) for i in np.argsort(-spread, kind="stable")[:n]]


def top_activating(features: np.ndarray, channels: Sequence[int], k: int = 8) -> dict[int, np.ndarray]:
    """For each channel, the rows of ``features`` (N, D) with the largest activation, largest first."""
    f = np.asarray(features)
    return {int(c): np.argsort(-f[:, c], kind="stable")[:k] for c in channels}


def panels(weights: Mapping[str, np.ndarray], initial: Mapping[str, np.ndarray]) -> dict:
    """For backbones by name, a layer's ``weights`` beside its ``initial`` weights, as
    ``viz.filter_mosaics`` draws them: the trained, initial and change mosaics, each filter on
    its own scale (a shared scale leaves small filters near white; the norms say the sizes),
    square mosaics; the largest absolute weight of any of them; each filter's norm,
    the ratio of the mean norms and the mean cosine of each filter to its initial weights."""
    weights = {k: np.asarray(w, dtype=np.float32) for k, w in weights.items()}
    initial = {k: np.asarray(initial[k], dtype=np.float32) for k in weights}
    shown = {k: shown_filters(w) for k, w in weights.items()}
    shown_init = {k: shown_filters(w) for k, w in initial.items()}
    scale = max(float(np.abs(v).max()) for v in [*shown.values(), *shown_init.values()])
    columns = int(np.ceil(np.sqrt(len(next(iter(weights.values()))))))  # square: the largest squares
    norms = {k: filter_norms(w) for k, w in weights.items()}
    return {"scale": scale, "weights": weights, "initial": initial,
            "mosaics": {k: mosaic(v, columns, scale="filter", gap=1)[0] for k, v in shown.items()},
            "initial_mosaics": {k: mosaic(v, columns, scale="filter", gap=1)[0] for k, v in shown_init.items()},
            "changes": {k: mosaic(shown[k] - shown_init[k], columns, scale="filter", gap=1)[0] for k in shown},
            "norms": norms,
            "norm_ratio": {k: float(np.mean(norms[k]) / np.mean(filter_norms(initial[k]))) for k in weights},
            "similarity": {k: float(np.mean(cosine_to(w, initial[k]))) for k, w in weights.items()}}


def first_layer(cfg: Mapping[str, Any], path: Path, split) -> dict:
    """The first convolution of the backbone of ``cfg`` (the paper's Figure 2 layer): its name,
    its weights in the pretraining checkpoint ``path`` and at the initialisation the run started
    from, as nested lists (what a record keeps: a few hundred numbers where the checkpoint is
    megabytes)."""
    net, _ = backbone(cfg, path, split)
    layer = conv_layers(net)[0]
    return {"layer": layer, "trained": layer_weights(net, layer).tolist(),
            "initial": layer_weights(backbone(cfg, None, split)[0], layer).tolist()}


def cosine_to(weights: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per output filter, the cosine similarity of ``weights`` to ``reference`` (same shape):
    1 for a filter that only changed its scale, near 0 for one unrelated to where it started."""
    a = np.asarray(weights, dtype=np.float64).reshape(len(weights), -1)
    b = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    if a.shape != b.shape:
        raise LosslessError(f"filters of shape {a.shape} and {b.shape} cannot be compared")
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
