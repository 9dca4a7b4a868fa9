"""Decode a source once into memory-mapped arrays on disk; later runs map them back.

Layout of one entry, ``{cache}/{dataset}-{hash}/``::

    images.npy   (N, H, W, C) uint8, every part concatenated
    labels.npy   (N,) int64, the true label or -1 where the source has none
    parts.npy    (N,) int8, index into meta["parts"]
    meta.json    written last: its presence, the recorded file sizes and the source's signature
                 are what make an entry complete and current
    splits/      the stored splits (see :mod:`lossless.data.splits`)

An entry is built in a temporary folder and renamed into place, so an interrupted build never
looks complete; an entry whose files do not match ``meta.json`` (truncated, half-deleted) or
whose source files changed is rebuilt, never loaded.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import DataError
from .sources import Source

FORMAT = 1
ARRAYS = ("images.npy", "labels.npy", "parts.npy")


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$LOSSLESS_CACHE``, else ``~/.cache/lossless``."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("LOSSLESS_CACHE"):
        return Path(os.environ["LOSSLESS_CACHE"])
    return Path.home() / ".cache" / "lossless"


@dataclass
class ImageSet:
    """Every image of a dataset in one uint8 array, with true labels and the part of each image.

    ``images`` is (N, H, W, C) uint8 (memory-mapped from the cache); ``labels`` is (N,) int64
    with -1 where the source has no label; ``part`` indexes ``part_names``.
    """
    name: str
    images: np.ndarray
    labels: np.ndarray
    part: np.ndarray
    part_names: tuple[str, ...]
    classes: tuple[str, ...]
    path: Path | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def has_part(self, name: str) -> bool:
        return name in self.part_names

    def indices(self, name: str) -> np.ndarray:
        """Positions of the images in part ``name`` (empty when the source has no such part)."""
        if name not in self.part_names:
            return np.empty(0, dtype=np.int64)
        return np.flatnonzero(self.part == self.part_names.index(name)).astype(np.int64)


def entry_path(source: Source, cache_dir=None) -> Path:
    digest = hashlib.sha1(json.dumps(source.key(), sort_keys=True).encode()).hexdigest()[:12]
    return cache_root(cache_dir) / f"{source.name}-{digest}"


def load_or_build(source: Source, cache_dir=None, progress: bool = True) -> ImageSet:
    """The cached arrays of ``source``; decoded (once) when missing, stale or incomplete."""
    path = entry_path(source, cache_dir)
    signature = source.signature()
    problem = check_entry(path, signature)
    if problem is None:
        return open_entry(path)
    if path.exists():
        print(f"lossless: rebuilding the cache {path}: {problem}", file=sys.stderr)
    build_entry(source, path, signature, progress)
    return open_entry(path)


def check_entry(path: Path, signature: str) -> str | None:
    """None when the entry at ``path`` is complete and current, else why not."""
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        return "no meta.json (never built, or a build was interrupted)"
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, OSError) as exc:
        return f"meta.json unreadable ({exc})"
    if meta.get("format") != FORMAT:
        return f"cache format {meta.get('format')} != {FORMAT}"
    if meta.get("signature") != signature:
        return "the source files changed since the cache was built"
    for name, size in meta.get("sizes", {}).items():
        f = path / name
        if not f.is_file() or f.stat().st_size != size:
            return f"{name} is missing or has the wrong size (truncated?)"
    return None


def open_entry(path: Path) -> ImageSet:
    meta = json.loads((path / "meta.json").read_text())
    return ImageSet(
        name=meta["dataset"],
        images=np.load(path / "images.npy", mmap_mode="r"),
        labels=np.load(path / "labels.npy"),
        part=np.load(path / "parts.npy"),
        part_names=tuple(meta["parts"]),
        classes=tuple(meta["classes"]),
        path=path,
    )


def build_entry(source: Source, path: Path, signature: str, progress: bool = True) -> None:
    parts = source.parts()
    shapes = {p.shape for p in parts}
    if len(shapes) != 1:
        detail = ", ".join(f"{p.name}: {p.shape}" for p in parts)
        raise DataError(f"{source.name}: the parts have different image shapes ({detail}); "
                        f"every image must share one size and mode")
    shape = shapes.pop()
    total = sum(p.count for p in parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                           shape=(total, *shape))
        labels = np.concatenate([p.labels for p in parts]).astype(np.int64)
        part_ids = np.concatenate([np.full(p.count, i, dtype=np.int8) for i, p in enumerate(parts)])
        with tqdm(total=total, desc=f"decoding {source.name}", unit="img", disable=not progress,
                  file=sys.stderr) as bar:
            offset = 0
            for p in parts:
                p.fill(images[offset:offset + p.count], bar.update)
                offset += p.count
        images.flush()
        del images
        np.save(tmp / "labels.npy", labels)
        np.save(tmp / "parts.npy", part_ids)
        meta = {
            "format": FORMAT, "dataset": source.name, "key": source.key(), "signature": signature,
            "parts": [p.name for p in parts], "counts": {p.name: p.count for p in parts},
            "classes": list(source.classes), "shape": list(shape),
            "sizes": {n: (tmp / n).stat().st_size for n in ARRAYS},
        }
        _write_json_atomic(tmp / "meta.json", meta)
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        if path.exists():
            path.rename(old)  # a stale entry: its stored splits index data that changed, so they go too
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
