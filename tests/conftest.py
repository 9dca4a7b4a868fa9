"""Fixtures that write small real datasets (IDX files, PNG trees, the NYU layout) to tmp folders."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache folder and no LOSSLESS_DATA from the environment."""
    monkeypatch.setenv("LOSSLESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LOSSLESS_DATA", raising=False)


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def make_fashion_tree(root: Path, n_train: int = 300, n_test: int = 50, classes: int = 10,
                      seed: int = 0, compress: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % classes,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8) % classes,
    }
    for name, arr in arrays.items():
        write_idx(root / name, arr, compress)
    return arrays


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(path)


def make_imagefolder(root: Path, classes=("cat", "dog", "emu"), per_class: int = 12,
                     size: int = 16, seed: int = 0) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    made = {}
    for c in classes:
        made[c] = []
        for i in range(per_class):
            arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            write_png(root / c / f"img{i:03d}.png", arr)
            made[c].append(arr)
    return made


def make_nyu_tree(root: Path, n_train: int = 40, n_val: int = 20, n_unlabeled: int = 30,
                  classes: int = 4, size: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    import torch
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("val", n_val), ("unlabeled", n_unlabeled)):
        imgs = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        for i in range(n):
            write_png(root / split / f"{i}.png", imgs[i])
        out[split] = imgs
        if split != "unlabeled":
            labels = torch.arange(n) % classes
            torch.save(labels, root / f"{split}_label_tensor.pt")
            out[f"{split}_labels"] = labels.numpy()
    return out
