"""Honest evaluation (paper sections 3.4, 3.5, 5): accuracy, per class, confusion, calibration,
and confidence intervals over seeds. Functions return plain data; ``viz`` draws it.

:func:`score` runs a classifier over any number of images and keeps, per image, only the
predicted class, the confidence (top-1 probability) and the margin (top-1 minus top-2): three
numbers, never the N x C probability matrix (512,000 x 800 floats would be 1.6 GB).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .engine import autocast_context


@dataclass
class Scores:
    """Per-image prediction, confidence (max softmax) and margin (top-1 - top-2); (N,) each."""
    prediction: np.ndarray
    confidence: np.ndarray
    margin: np.ndarray


def _softmax_blocks(model: nn.Module, images: np.ndarray, prepare, device: torch.device,
                    amp_dtype: torch.dtype | None, batch_size: int):
    """(start, float32 softmax of rows ``start:start + batch_size``), block by block. Every
    reader of a classifier's probabilities goes through these blocks, so two readers of the same
    images see the same float32 numbers (a matrix product blocked otherwise rounds otherwise)."""
    was = model.training
    model.eval()
    try:
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
            with autocast_context(device, amp_dtype):
                logits = model(prepare(batch))
            yield start, torch.softmax(logits.float(), dim=1)
    finally:
        model.train(was)


@torch.no_grad()
def score(model: nn.Module, images: np.ndarray, prepare, device: torch.device,
          amp_dtype: torch.dtype | None = None, batch_size: int = 512) -> Scores:
    """Score (N, H, W, C) uint8 ``images``; ``prepare(uint8 batch) -> model input``. O(N) memory."""
    n = len(images)
    pred = np.empty(n, dtype=np.int32)  # 4 bytes an image: three numbers cost 12 bytes in all
    conf = np.empty(n, dtype=np.float32)
    margin = np.empty(n, dtype=np.float32)
    for start, p in _softmax_blocks(model, images, prepare, device, amp_dtype, batch_size):
        top = p.topk(2, dim=1)
        end = start + len(p)
        pred[start:end] = top.indices[:, 0].cpu().numpy()
        conf[start:end] = top.values[:, 0].cpu().numpy()
        margin[start:end] = (top.values[:, 0] - top.values[:, 1]).cpu().numpy()
    return Scores(pred, conf, margin)


@torch.no_grad()
def probabilities(model: nn.Module, images: np.ndarray, prepare, device: torch.device,
                  amp_dtype: torch.dtype | None = None, batch_size: int = 512) -> np.ndarray:
    """(N, C) float32 class probabilities, the very numbers :func:`score` ranks (same blocks):
    for a reader who writes the margin out and must find :func:`score`'s values exactly. O(N C)
    memory: a view of a pool, not the scoring path."""
    out = np.empty((len(images), 0), dtype=np.float32)
    for start, p in _softmax_blocks(model, images, prepare, device, amp_dtype, batch_size):
        if start == 0:
            out = np.empty((len(images), p.shape[1]), dtype=np.float32)
        out[start:start + len(p)] = p.cpu().numpy()
    return out


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(labels)))


def forgetting(before: np.ndarray, after: np.ndarray, labels: np.ndarray) -> dict:
    """What a training step did to each image (Toneva et al., 2019, between two checkpoints):
    ``forgotten``, right before and wrong after; ``learned``, wrong before and right after;
    ``net`` = learned - forgotten (the change in correct predictions)."""
    before, after, labels = (np.asarray(a) for a in (before, after, labels))
    if not before.shape == after.shape == labels.shape:
        raise ValueError(f"forgetting: predictions {before.shape} and {after.shape} for labels {labels.shape}")
    right_before, right_after = before == labels, after == labels
    forgotten = int(np.count_nonzero(right_before & ~right_after))
    learned = int(np.count_nonzero(~right_before & right_after))
    return {"forgotten": forgotten, "learned": learned, "net": learned - forgotten, "images": int(len(labels))}


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts: rows are true classes, columns predictions."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(labels), np.asarray(pred)), 1)
    return m


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    m = confusion_matrix(pred, labels, num_classes)
    return np.diag(m) / np.maximum(m.sum(1), 1)


def calibration(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> dict:
    """Expected calibration error and the reliability diagram's bins (equal-width in confidence)."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    acc = np.bincount(which, weights=correct, minlength=bins) / np.maximum(count, 1)
    conf = np.bincount(which, weights=confidence, minlength=bins) / np.maximum(count, 1)
    ece = float(np.sum(count / max(len(confidence), 1) * np.abs(acc - conf)))
    return {"ece": ece, "edges": edges.tolist(), "count": count.tolist(), "accuracy": acc.tolist(),
            "confidence": conf.tolist()}


def report(scores: Scores, labels: np.ndarray, num_classes: int) -> dict:
    """Everything the book shows about one set: accuracy, per class, confusion, calibration."""
    correct = scores.prediction == labels
    return {"accuracy": accuracy(scores.prediction, labels),
            "per_class_accuracy": per_class_accuracy(scores.prediction, labels, num_classes).tolist(),
            "confusion": confusion_matrix(scores.prediction, labels, num_classes).tolist(),
            "calibration": calibration(scores.confidence, correct)}


def mean_std(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v))}


def mean_interval(values, confidence: float = 0.95) -> dict:
    """Mean over runs (seeds) with a Student-t confidence interval."""
    from scipy import stats
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    mean = float(v.mean())
    if n < 2:
        return {"mean": mean, "low": math.nan, "high": math.nan, "n": n}
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n, "confidence": confidence}


def paired_difference(a, b, confidence: float = 0.95) -> dict:
    """Mean of ``a - b`` over paired runs (same seeds) with a Student-t confidence interval."""
    return mean_interval(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64), confidence)

