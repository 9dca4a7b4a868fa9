"""Every figure of the book (the only module that draws). Each function returns a Figure."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np


def _show(ax, img: np.ndarray) -> None:
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(1, 2, 0)
    if img.shape[-1] == 1:
        ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=img.max() if img.dtype != np.uint8 else 255)
    else:
        ax.imshow(img)
    ax.set_xticks([])
    ax.set_yticks([])


def sample_grid(images: np.ndarray, labels: np.ndarray, classes: Sequence[str], per_class: int = 6):
    """``per_class`` images of each class in a row (section 3.1)."""
    shown = [c for c in range(len(classes)) if (labels == c).any()][:10]
    fig, axes = plt.subplots(len(shown), per_class, figsize=(per_class * 0.9, len(shown) * 0.95), squeeze=False)
    for row, c in enumerate(shown):
        idx = np.flatnonzero(labels == c)[:per_class]
        for col in range(per_class):
            ax = axes[row, col]
            if col < len(idx):
                _show(ax, images[idx[col]])
            else:
                ax.axis("off")
        axes[row, 0].set_ylabel(classes[c], rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    return fig


def view_pairs(originals: np.ndarray, view1, view2):
    """Each image beside its two Barlow Twins views (rows: original, view 1, view 2)."""
    def to_img(t):
        x = np.asarray(t, dtype=np.float32)
        lo, hi = x.min(), x.max()
        return (x - lo) / max(hi - lo, 1e-6)
    n = len(originals)
    fig, axes = plt.subplots(3, n, figsize=(n * 1.0, 3.2), squeeze=False)
    for i in range(n):
        _show(axes[0, i], originals[i])
        _show(axes[1, i], to_img(view1[i]))
        _show(axes[2, i], to_img(view2[i]))
    for row, name in enumerate(("image", "view 1", "view 2")):
        axes[row, 0].set_ylabel(name, fontsize=9)
    fig.tight_layout()
    return fig


def stage_bars(tables: dict[str, list[dict]]):
    """GFLOPs per stage for several backbones (Figure 1's companion)."""
    fig, ax = plt.subplots(figsize=(7, 3))
    names = list(tables)
    stages = [r["stage"] for r in tables[names[0]]]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        ax.bar(np.arange(len(stages)) + i * width, [r["gflops"] for r in tables[name]], width, label=name)
    ax.set_xticks(np.arange(len(stages)) + width * (len(names) - 1) / 2, stages)
    ax.set_ylabel("forward GFLOP per image")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def correlation_heatmaps(matrices: dict[str, np.ndarray], size: int = 64):
    """The top-left ``size`` x ``size`` block of cross-correlation matrices, side by side."""
    fig, axes = plt.subplots(1, len(matrices), figsize=(3.4 * len(matrices), 3.2), squeeze=False)
    for ax, (name, c) in zip(axes[0], matrices.items()):
        im = ax.imshow(np.asarray(c)[:size, :size], cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    return fig


def training_curves(rows: list[dict], metrics: Sequence[str] = ("knn_val", "linear_probe_val"), x: str = "minutes"):
    """Loss and monitor accuracies against training minutes (or epochs)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3))
    xs = [r[x] for r in rows]
    a.plot(xs, [r["loss"] for r in rows], marker="o")
    a.set_xlabel(x)
    a.set_ylabel("Barlow Twins loss")
    for m in metrics:
        b.plot(xs, [r[m] for r in rows], marker="o", label=m)
    b.set_xlabel(x)
    b.set_ylabel("accuracy")
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig


def curve(xs, ys, xlabel: str, ylabel: str, logy: bool = False):
    """One line (e.g. the learning-rate schedule)."""
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.plot(xs, ys)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    fig.tight_layout()
    return fig
