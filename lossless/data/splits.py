"""The paper's data protocol (section 3.1): labelled train, validation, unlabelled pool, test.

From the source's ``train`` part the seed draws, per class, ``labels_per_class`` labelled images
(the paper: 25,600 / 800 = 32) and ``val_per_class`` validation images; every other training image
joins the unlabelled pool together with the source's own ``unlabeled`` part. A source that brings
its own ``val`` part (the NYU layout) keeps it as the validation set. The pool's true labels are
kept apart from the training labels: training code sees -1, while pseudo-label precision and
simulated label requests (sections 3.5, 3.6) may read :meth:`Split.true_labels`.

A split is stored next to the cached images (``splits/k{K}-v{V}-s{seed}.npz``) so every chapter
and command that asks for the same seed gets the same indices.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .cache import ImageSet

SPLIT_NAMES = ("labelled", "val", "unlabelled", "test")


@dataclass
class Split:
    """Index arrays into ``data`` for the four sets of the protocol."""
    data: ImageSet
    labelled: np.ndarray
    val: np.ndarray
    unlabelled: np.ndarray
    test: np.ndarray
    seed: int
    labels_per_class: int
    val_per_class: int

    def indices(self, name: str) -> np.ndarray:
        if name not in SPLIT_NAMES:
            raise KeyError(f"unknown split {name!r}; one of {SPLIT_NAMES}")
        return getattr(self, name)

    def images(self, name: str) -> np.ndarray:
        """(n, H, W, C) uint8 images of split ``name`` (a copy, read from the memory map)."""
        return self.data.images[self.indices(name)]  # indices are sorted: a forward read of the map

    def labels(self, name: str) -> np.ndarray:
        """Training labels: the true ones, except -1 for every image of the unlabelled pool."""
        if name == "unlabelled":
            return np.full(len(self.unlabelled), -1, dtype=np.int64)
        return self.data.labels[self.indices(name)]

    def true_labels(self, name: str) -> np.ndarray:
        """True labels (-1 where even the source has none): for measuring, never for training."""
        return self.data.labels[self.indices(name)]

    def class_counts(self, name: str) -> list[int]:
        y = self.true_labels(name)
        return np.bincount(y[y >= 0], minlength=self.data.num_classes).tolist()

    def summary(self) -> dict:
        """Sizes, class counts and image format: what ``lossless data check`` prints."""
        d = self.data
        out = {
            "dataset": d.name,
            "num_classes": d.num_classes,
            "image_shape": list(d.image_shape),
            "dtype": str(d.images.dtype),
            "seed": self.seed,
            "labels_per_class": self.labels_per_class,
            "sizes": {n: int(len(self.indices(n))) for n in SPLIT_NAMES},
            "class_counts": {n: self.class_counts(n) for n in SPLIT_NAMES},
        }
        unknown = int((self.true_labels("unlabelled") < 0).sum())
        if unknown:
            out["unlabelled_without_true_label"] = unknown
        if d.path is not None:
            out["cache"] = str(d.path)
        if d.source is not None:
            out["source"] = d.source  # which files were read (LOSSLESS_DATA, data_root or Debian's folder)
        return out


def make_split(data: ImageSet, labels_per_class: int = 32, val_per_class: int = 100,
               seed: int = 0) -> Split:
    """Draw the protocol's sets from ``data`` with ``seed`` (stratified, disjoint)."""
    if labels_per_class < 1:
        raise DataError(f"labels_per_class={labels_per_class}: at least one labelled image per class is needed")
    own_val = data.has_part("val")
    train = data.indices("train")
    if len(train) == 0:
        raise DataError(f"{data.name}: the source has no training images: an empty split")
    y = data.labels[train]
    rng = np.random.default_rng(seed)
    need = labels_per_class + (0 if own_val else val_per_class)
    labelled, val, pool = [], [], []
    for c in range(data.num_classes):
        members = train[y == c]
        if len(members) < need:
            what = f"{labels_per_class} labelled" + ("" if own_val else f" + {val_per_class} validation")
            raise DataError(
                f"{data.name}: class {c} ({data.classes[c]}) has {len(members)} training images, "
                f"fewer than the {what} requested; lower labels_per_class"
                + ("" if own_val else " or val_per_class"))
        members = rng.permutation(members)
        labelled.append(members[:labels_per_class])
        if not own_val:
            val.append(members[labels_per_class:need])
        pool.append(members[need:])
    split = Split(
        data=data,
        labelled=np.sort(np.concatenate(labelled)),
        val=np.sort(np.concatenate(val)) if not own_val else data.indices("val"),
        unlabelled=np.sort(np.concatenate(pool + [data.indices("unlabeled")])),
        test=data.indices("test"),
        seed=seed, labels_per_class=labels_per_class,
        val_per_class=0 if own_val else val_per_class,
    )
    for name in ("val",):
        if len(split.indices(name)) == 0:
            raise DataError(f"{data.name}: the {name} split is empty; raise val_per_class")
    return split


def split_path(data: ImageSet, labels_per_class: int, val_per_class: int, seed: int) -> Path | None:
    if data.path is None:
        return None
    return data.path / "splits" / f"k{labels_per_class}-v{val_per_class}-s{seed}.npz"


def load_or_make_split(data: ImageSet, labels_per_class: int = 32, val_per_class: int = 100,
                       seed: int = 0) -> Split:
    """The stored split for these settings, drawn and stored (atomically) the first time."""
    path = split_path(data, labels_per_class, val_per_class, seed)
    if path is not None and path.is_file():
        try:
            with np.load(path) as z:
                arrays = {n: z[n] for n in SPLIT_NAMES}
            return Split(data, **arrays, seed=seed, labels_per_class=labels_per_class,
                         val_per_class=int(val_per_class if not data.has_part("val") else 0))
        except (OSError, KeyError, ValueError):
            pass  # unreadable (interrupted write from an older version): draw it again below
    split = make_split(data, labels_per_class, val_per_class, seed)
    if path is not None:
        from .. import runs
        runs.write_npz(path, **{n: split.indices(n) for n in SPLIT_NAMES})
    return split
