"""Ensembles of fine-tuned classifiers and what they get right (paper section 4).

The paper combined its Barlow Twins, BYOL and SwAV classifiers two ways, by the average of
their outputs (34%) and by a weighted average with a larger weight on Barlow Twins (39%), both
below Barlow Twins alone (43.46%); it noted that the images Barlow Twins got right were "not a
superset" of the others' (about 3,000 right under all three, about 1,000 right under BYOL and
under SwAV but not Barlow Twins).

Everything here works on the classifiers' stored softmax outputs (``outputs``: computed once
per classifier run and kept in its folder as float32, ``probs-val.npy`` and ``probs-test.npy``:
float16 flips the argmax of near-ties, and a near-uniform output over 800 classes is all
near-ties),
so combining models never runs a network. The combining functions read an (N, C) matrix per
model a chunk of rows at a time, and keep O(N) numbers: for the paper's 512,000 x 800 pool a
model's matrix is a memory-mapped file, never a second copy in memory.

- ``predict(probs, weights)``: the weighted mean of the models' probabilities, its top class
  (``top1``: ranked as a classifier's own scoring ranks it);
  equal weights are the plain average.
- ``vote(probs)``: the majority of the models' predictions; a tie goes to the tied class with the
  largest summed probability.
- ``fit_weights``: weights on a grid over the simplex (step 0.05), chosen by accuracy on the
  **validation** set only (ties: the lower validation log-loss, then the grid's order).
- ``PAPER_RULE``: the paper's own rule as a preset: Barlow Twins weighted above BYOL and SwAV,
  which share the rest equally (the paper gives no numbers; the preset takes one half).

The overlap analysis: ``intersections`` (how many images each exact subset of models gets
right), ``oracle`` (right under any model), ``agreement`` and ``error_correlation`` matrices and
``flips`` (the images an ensemble turns from wrong to right and back, against one model).
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .engine import autocast_context
from .errors import LosslessError

CHUNK = 65_536  # rows of probabilities handled at a time
PAPER_RULE = "paper"


# ------------------------------------------------------------------ stored outputs
@torch.no_grad()
def probabilities(model: torch.nn.Module, images, prepare, device: torch.device, amp_dtype=None,
                  out: np.ndarray | None = None, batch_size: int = 512) -> np.ndarray:
    """Softmax outputs (N, C) of ``model`` on (N, H, W, C) uint8 ``images`` (an array or a memory
    map, read a batch at a time), written into ``out`` (float32 unless given; may be a memory map)."""
    was = model.training
    model.eval()
    n = len(images)
    for start in range(0, n, batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
        with autocast_context(device, amp_dtype):
            p = torch.softmax(model(prepare(batch)).float(), dim=1).cpu().numpy()
        if out is None:
            out = np.empty((n, p.shape[1]), dtype=np.float32)
        out[start:start + len(p)] = p
    model.train(was)
    return out


def outputs(cfg: Mapping[str, Any], result: Mapping[str, Any], parts: Sequence[str] = ("val", "test"),
            split=None) -> dict[str, np.ndarray]:
    """The softmax outputs of a finished classifier run (``result``: its ``result.json``) on each
    of ``parts``: read from ``probs-<part>.npy`` in its folder, or computed once (from its best
    checkpoint, at the run's precision and layout) and written there atomically."""
    from .engine import resolve_device, resolve_precision
    from .finetune import load_classifier
    from .pretrain import load_data
    run = Path(result["run"])
    paths = {p: run / f"probs-{p}.npy" for p in parts}
    missing = [p for p, path in paths.items() if not path.exists()]
    if missing:
        device = resolve_device(cfg["device"])
        amp = resolve_precision(cfg["precision"], device)
        split = split if split is not None else load_data(cfg, False)
        if split.seed != result["seed"]:
            raise LosslessError(f"{run}: the classifier was trained on seed {result['seed']}'s split, not "
                                f"seed {split.seed}'s; load its outputs with the configuration of that seed")
        model = load_classifier(cfg, split, Path(result["classifier"]), device, amp)
        for p in missing:
            _write_probabilities(paths[p], model, split.images(p), model.augmenter.plain, device, amp,
                                 split.data.num_classes)
    return {p: np.load(path, mmap_mode="r") for p, path in paths.items()}


def _write_probabilities(path: Path, model, images, prepare, device, amp, n_classes: int) -> None:
    """Chunk by chunk into a memory-mapped temporary file, then renamed: atomic, O(batch) memory."""
    from numpy.lib.format import open_memmap
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    out = open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(images), n_classes))
    probabilities(model, images, prepare, device, amp, out=out)
    out.flush()
    del out
    os.replace(tmp, path)


# ------------------------------------------------------------------ combining
def top1(probs: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """Each row's predicted class, ranked as ``evaluate.score`` ranks a classifier's outputs
    (``torch.topk``): bf16 logits tie often (50 to 100 of 10,000 Fashion-MNIST test images
    have two equal top probabilities), and another tie-break (numpy's argmax) would score a
    stored model differently from its own run."""
    n = len(probs)
    out = np.empty(n, dtype=np.int64)
    for start in range(0, n, chunk):
        p = torch.from_numpy(np.array(probs[start:start + chunk], dtype=np.float32))  # a copy: memmaps are read-only
        out[start:start + len(p)] = p.topk(min(2, p.shape[1]), dim=1).indices[:, 0].numpy()
    return out


def _check(probs: Sequence[np.ndarray]) -> tuple[int, int]:
    if not probs:
        raise LosslessError("an ensemble needs at least one model's outputs")
    shapes = {tuple(p.shape) for p in probs}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise LosslessError(f"the models' outputs must be (N, C) arrays of one shape; got {sorted(shapes)}")
    return next(iter(shapes))


def _weights(weights: Sequence[float] | None, k: int) -> np.ndarray:
    w = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (k,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise LosslessError(f"weights {list(np.atleast_1d(w))} for {k} models: give {k} non-negative numbers, "
                            f"not all zero")
    return w / w.sum()


def mixture_chunks(probs: Sequence[np.ndarray], weights: Sequence[float] | None = None, chunk: int = CHUNK):
    """Yield (start, the weighted mean of the models' probabilities for rows start..start+chunk)."""
    n, _ = _check(probs)
    w = _weights(weights, len(probs))
    for start in range(0, n, chunk):
        mix = sum(wi * np.asarray(p[start:start + chunk], dtype=np.float32) for wi, p in zip(w, probs))
        yield start, mix


def predict(probs: Sequence[np.ndarray], weights: Sequence[float] | None = None, chunk: int = CHUNK) -> np.ndarray:
    """The class of the weighted mean of the models' probabilities (equal weights: the average)."""
    n, _ = _check(probs)
    out = np.empty(n, dtype=np.int64)
    for start, mix in mixture_chunks(probs, weights, chunk):
        out[start:start + len(mix)] = top1(mix)
    return out


def log_loss(probs: Sequence[np.ndarray], labels: np.ndarray, weights: Sequence[float] | None = None,
             chunk: int = CHUNK) -> float:
    """Mean negative log-probability of the true class under the weighted mean."""
    labels = np.asarray(labels)
    total = 0.0
    for start, mix in mixture_chunks(probs, weights, chunk):
        y = labels[start:start + len(mix)]
        total += float(-np.log(np.clip(mix[np.arange(len(mix)), y], 1e-12, None)).sum())
    return total / len(labels)


def vote(probs: Sequence[np.ndarray], chunk: int = CHUNK) -> np.ndarray:
    """Majority vote of the models' predictions; a tie goes to the tied class with the largest
    summed probability (then the lowest class index)."""
    n, c = _check(probs)
    out = np.empty(n, dtype=np.int64)
    for start in range(0, n, chunk):
        parts = [np.asarray(p[start:start + chunk], dtype=np.float32) for p in probs]
        rows = np.arange(len(parts[0]))
        votes = np.zeros((len(rows), c), dtype=np.int64)
        for p in parts:
            np.add.at(votes, (rows, top1(p)), 1)
        total = sum(parts)
        top = votes == votes.max(1, keepdims=True)
        out[start:start + len(rows)] = np.where(top, total, -np.inf).argmax(1)
    return out


def simplex_grid(k: int, step: float = 0.05) -> np.ndarray:
    """Every weight vector of ``k`` non-negative multiples of ``step`` that sum to one (rows)."""
    m = round(1 / step)
    if k < 1 or abs(m * step - 1) > 1e-9:
        raise LosslessError(f"simplex_grid(k={k}, step={step}): k >= 1 and a step that divides 1")
    rows = [c for c in itertools.product(range(m + 1), repeat=k - 1) if sum(c) <= m]
    return np.array([(*c, m - sum(c)) for c in rows], dtype=np.float64) / m


def fit_weights(val_probs: Sequence[np.ndarray], val_labels: np.ndarray, step: float = 0.05) -> dict:
    """The grid point with the best **validation** accuracy (ties: lower validation log-loss, then
    the grid's order). Returns ``{"weights", "val_accuracy", "val_log_loss", "candidates"}``."""
    labels = np.asarray(val_labels)
    best = None
    grid = simplex_grid(len(val_probs), step)
    for w in grid:
        acc = float(np.mean(predict(val_probs, w) == labels))
        if best is not None and acc < best[0]:
            continue
        loss = log_loss(val_probs, labels, w)
        if best is None or acc > best[0] or loss < best[1] - 1e-12:
            best = (acc, loss, w)
    return {"weights": [float(x) for x in best[2]], "val_accuracy": best[0], "val_log_loss": best[1],
            "candidates": len(grid)}


def paper_weights(names: Sequence[str], reference: str = "barlow", share: float = 0.5) -> list[float]:
    """The paper's rule: ``share`` of the weight on ``reference``, the rest equal among the others."""
    if reference not in names:
        raise LosslessError(f"the paper's weighting needs {reference} among the models; got {list(names)}")
    if len(names) == 1:
        return [1.0]
    return [share if n == reference else (1 - share) / (len(names) - 1) for n in names]


# ------------------------------------------------------------------ what each model gets right
def correct(predictions: Mapping[str, np.ndarray], labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per model, a boolean array: image i predicted right."""
    labels = np.asarray(labels)
    return {name: np.asarray(p) == labels for name, p in predictions.items()}


def intersections(right: Mapping[str, np.ndarray]) -> list[dict]:
    """For every subset S of the models (the empty one included), how many images exactly the
    models of S get right (UpSet counts; they add up to N). Largest count first."""
    names = list(right)
    stack = np.stack([np.asarray(right[n], dtype=bool) for n in names])
    code = (stack * (1 << np.arange(len(names)))[:, None]).sum(0)
    counts = np.bincount(code, minlength=1 << len(names))
    rows = [{"models": tuple(n for i, n in enumerate(names) if mask >> i & 1), "count": int(counts[mask])}
            for mask in range(1 << len(names))]
    return sorted(rows, key=lambda r: (-r["count"], len(r["models"]), r["models"]))


def only_right(right: Mapping[str, np.ndarray], model: str, against: str) -> int:
    """Images ``model`` gets right and ``against`` gets wrong."""
    return int(np.sum(right[model] & ~right[against]))


def oracle(right: Mapping[str, np.ndarray]) -> float:
    """The fraction of images right under at least one model: no way of choosing among the
    models' answers does better."""
    return float(np.mean(np.any(np.stack(list(right.values())), axis=0)))


def agreement(predictions: Mapping[str, np.ndarray]) -> np.ndarray:
    """(K, K): the fraction of images on which two models predict the same class."""
    p = [np.asarray(v) for v in predictions.values()]
    return np.array([[float(np.mean(a == b)) for b in p] for a in p])


def error_correlation(right: Mapping[str, np.ndarray]) -> np.ndarray:
    """(K, K): Pearson correlation between two models' error indicators (1: wrong); NaN where a
    model makes no error or only errors."""
    e = np.stack([~np.asarray(v, dtype=bool) for v in right.values()]).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.corrcoef(e)


def flips(reference: np.ndarray, ensemble: np.ndarray) -> dict[str, np.ndarray]:
    """Indices the ensemble gets right where ``reference`` (one model's correctness) was wrong,
    and wrong where it was right."""
    reference, ensemble = np.asarray(reference, dtype=bool), np.asarray(ensemble, dtype=bool)
    return {"wrong_to_right": np.flatnonzero(~reference & ensemble),
            "right_to_wrong": np.flatnonzero(reference & ~ensemble)}
