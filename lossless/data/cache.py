"""Decode a source once into memory-mapped arrays on disk; later runs map them back.

Layout of one entry, ``{cache}/{dataset}-{hash}/``::

    images.npy   (N, H, W, C) uint8, every part concatenated
    labels.npy   (N,) int64, the true label or -1 where the source has none
    parts.npy    (N,) int8, index into meta["parts"]
    meta.json    written last: its presence, the recorded file sizes, modification times and
                 SHA-1 checksums, and the source's signature are what make an entry complete,
                 intact and current
    splits/      the stored splits (see :mod:`lossless.data.splits`)

An entry is built in a temporary folder and renamed into place, so an interrupted build never
looks complete; an entry whose files do not match ``meta.json`` (truncated, half-deleted,
overwritten in place, a damaged ``.npy`` header) or whose source files changed is rebuilt, with a
message, never loaded.

What is verified, and when. Sizes and modification times on every open. The checksums of all
three arrays on every open of an entry up to :data:`VERIFY_ALWAYS_BYTES` (Fashion-MNIST's 55 MB
hash in about 0.1 s here), and of larger entries whenever a file's size or modification time
differs from the recorded one, or when asked (``lossless data check --verify``): hashing the
14 GB of a 512,000 x 96 x 96 x 3 cache at the ~1 GB/s measured here would add ~15 s to every
stage. A same-size change that also restores the modification time goes unseen in a large
entry until ``--verify``.
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

from ..errors import DISK_FULL, DataError, disk_full_message
from .sources import Source

FORMAT = 2  # 2: checksums and modification times in meta.json
ARRAYS = ("images.npy", "labels.npy", "parts.npy")
VERIFY_ALWAYS_BYTES = 2 * 1024 ** 3  # entries up to this size are hashed on every open


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
    source: dict | None = None  # what was decoded: the source's name and the files or folder read

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


def load_or_build(source: Source, cache_dir=None, progress: bool = True, verify: bool = False) -> ImageSet:
    """The cached arrays of ``source``; decoded (once) when missing, stale, incomplete or damaged."""
    path = entry_path(source, cache_dir)
    signature = source.signature()
    problem = check_entry(path, signature, verify)
    if problem is None:
        try:
            return open_entry(path)
        except (ValueError, OSError, EOFError, KeyError) as exc:
            problem = f"it could not be read ({type(exc).__name__}: {exc})"
    if path.exists():
        print(f"lossless: rebuilding the cache {path}: {problem}", file=sys.stderr)
    build_entry(source, path, signature, progress)
    return open_entry(path)


def file_digest(path: Path, chunk: int = 16 * 1024 ** 2) -> str:
    """SHA-1 of a file, read in chunks (constant memory)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_entry(path: Path, signature: str, verify: bool = False) -> str | None:
    """None when the entry at ``path`` is complete, intact and current, else why not."""
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
    sizes, times, digests = meta.get("sizes", {}), meta.get("mtime_ns", {}), meta.get("sha1", {})
    if set(sizes) != set(ARRAYS) or set(digests) != set(ARRAYS):
        return "meta.json does not list every array with its size and checksum"
    changed = False
    for name, size in sizes.items():
        f = path / name
        if not f.is_file() or f.stat().st_size != size:
            return f"{name} is missing or has the wrong size (truncated?)"
        changed |= f.stat().st_mtime_ns != times.get(name)
    if verify or changed or sum(sizes.values()) <= VERIFY_ALWAYS_BYTES:
        for name, digest in digests.items():
            if file_digest(path / name) != digest:
                return f"{name} does not match the checksum recorded when it was built (changed or damaged on disk)"
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
        source=meta.get("key"),
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
    remove_abandoned_builds(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                           shape=(total, *shape))
        # reserve the blocks now: a full disk is then an ENOSPC here, not a SIGBUS mid-decoding
        with open(tmp / "images.npy", "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
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
            "mtime_ns": {n: (tmp / n).stat().st_mtime_ns for n in ARRAYS},
            "sha1": {n: file_digest(tmp / n) for n in ARRAYS},
        }
        _write_json_atomic(tmp / "meta.json", meta)
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        if path.exists():
            path.rename(old)  # a stale entry: its stored splits index data that changed, so they go too
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            raise DataError(f"cannot build the cache of {source.name}: " + disk_full_message(tmp, exc)) from None
        raise


def remove_abandoned_builds(path: Path) -> list[Path]:
    """Delete the temporary folders (``.{entry}.tmp-{pid}``, ``.{entry}.old-{pid}``) that builds
    killed mid-way left beside ``path``; a folder whose process still runs is left alone."""
    removed = []
    for folder in path.parent.glob(f".{path.name}.*-*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if folder.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
