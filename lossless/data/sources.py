"""Readers for every dataset the book runs on (paper section 3.1 and its public stand-ins).

A source describes its *parts* (``train``, ``val``, ``unlabeled``, ``test``): how many images,
their shape, their labels (-1 where unknown) and a ``fill`` function that writes the decoded
uint8 images into a preallocated (n, H, W, C) array. The cache (:mod:`lossless.data.cache`)
allocates that array as a memory-mapped file, so even the 512,000-image unlabelled folder of the
NYU layout is decoded once, in parallel, without holding it in memory.

Every malformed input raises :class:`~lossless.errors.DataError` naming the file and the fix.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import socket
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import DataError
from . import synthetic

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp"}
MODE_CHANNELS = {"L": 1, "RGB": 3}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")

Fill = Callable[[np.ndarray, Callable[[int], None]], None]


@dataclass
class Part:
    """One split a source provides: ``fill(out, advance)`` writes ``count`` images into ``out``."""
    name: str
    count: int
    shape: tuple[int, int, int]
    labels: np.ndarray
    fill: Fill


class Source:
    """Base class. ``key()`` names the cache entry; ``signature()`` detects changed files."""
    name = "source"
    classes: tuple[str, ...] = ()

    def key(self) -> dict:
        raise NotImplementedError

    def signature(self) -> str:
        return ""

    def parts(self) -> list[Part]:
        raise NotImplementedError


# --------------------------------------------------------------------------------------- synthetic
class SyntheticSource(Source):
    name = "synthetic"

    def __init__(self, num_train: int = 2000, num_test: int = 500, num_classes: int = 10,
                 size: int = 32, channels: int = 3):
        self.num_train, self.num_test = num_train, num_test
        self.num_classes, self.size, self.channels = num_classes, size, channels
        self.classes = tuple(f"class{c}" for c in range(num_classes))

    def key(self) -> dict:
        return {"source": self.name, "train": self.num_train, "test": self.num_test,
                "classes": self.num_classes, "size": self.size, "channels": self.channels,
                "version": 1}

    def parts(self) -> list[Part]:
        out = []
        for name, n, seed in (("train", self.num_train, 0), ("test", self.num_test, 1)):
            images, labels = synthetic.generate(n, self.num_classes, self.size, self.channels, seed)
            out.append(Part(name, n, images.shape[1:], labels, _copy_from(images)))
        return out


# ----------------------------------------------------------------------------------- fashion-mnist
class FashionMNISTSource(Source):
    """The IDX files of Fashion-MNIST (plain or ``.gz``).

    Looked for in ``root`` when given; else in ``$LOSSLESS_DATA`` (and its ``fashion-mnist/``),
    Debian's ``/usr/share/datasets/fashion-mnist/`` (package ``dataset-fashion-mnist``) and the
    cache's download folder; else downloaded by torchvision when ``download`` is true and there is
    internet; else a :class:`DataError` saying how to get them.
    """
    name = "fashion-mnist"
    classes = FASHION_MNIST_CLASSES
    STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

    def __init__(self, root: str | os.PathLike | None = None, download: bool = True,
                 download_dir: Path | None = None):
        self.download_dir = download_dir
        self.files = self._locate(root, download)

    def _candidates(self, root) -> list[Path]:
        if root is not None:
            return [Path(root)]
        dirs = []
        if os.environ.get("LOSSLESS_DATA"):
            env = Path(os.environ["LOSSLESS_DATA"])
            dirs += [env, env / "fashion-mnist", env / "FashionMNIST" / "raw"]
        dirs.append(DEBIAN_FASHION_MNIST)
        if self.download_dir is not None:
            dirs.append(self.download_dir / "FashionMNIST" / "raw")
        return dirs

    def _find_in(self, folder: Path) -> dict[str, Path] | None:
        files = {}
        for split, stems in self.STEMS.items():
            for kind, stem in zip(("images", "labels"), stems):
                found = [folder / f"{stem}{ext}" for ext in ("", ".gz") if (folder / f"{stem}{ext}").is_file()]
                if not found:
                    return None
                files[f"{split}-{kind}"] = found[0]
        return files

    def _locate(self, root, download: bool) -> dict[str, Path]:
        candidates = self._candidates(root)
        env = os.environ.get("LOSSLESS_DATA")
        if root is None and env:
            # a variable that is set means "use this folder": a wrong one is an error, never a
            # silent fall-back to Debian's copy
            for folder in candidates[:3]:
                files = self._find_in(folder)
                if files:
                    return files
            raise DataError(f"fashion-mnist: LOSSLESS_DATA={env} holds no Fashion-MNIST IDX files (looked in "
                            f"{', '.join(str(c) for c in candidates[:3])} for train-images-idx3-ubyte[.gz] and the "
                            f"three other files); put them there, or unset LOSSLESS_DATA to use "
                            f"{DEBIAN_FASHION_MNIST} (Debian's dataset-fashion-mnist)")
        if root is not None and not Path(root).is_dir():
            raise DataError(f"fashion-mnist: data_root {root} does not exist; give the folder that holds "
                            f"train-images-idx3-ubyte.gz and the three other IDX files")
        for folder in candidates:
            files = self._find_in(folder)
            if files:
                return files
        if root is not None:
            raise DataError(f"fashion-mnist: {root} lacks the IDX files (train-images-idx3-ubyte[.gz], "
                            f"train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
                            f"t10k-labels-idx1-ubyte[.gz]); copy them there or drop data_root")
        searched = ", ".join(str(c) for c in candidates)
        how = ("install Debian's package (`apt-get install dataset-fashion-mnist`), or set "
               "LOSSLESS_DATA to a folder holding the four IDX files")
        if download and self.download_dir is not None:
            _torchvision_download("FashionMNIST", self.download_dir, how)
            files = self._find_in(self.download_dir / "FashionMNIST" / "raw")
            if files:
                return files
        raise DataError(f"fashion-mnist: IDX files not found (searched {searched}); {how}"
                        + ("" if download else ", or allow the download with download=true"))

    def key(self) -> dict:
        return {"source": self.name, "files": {k: str(p.resolve()) for k, p in self.files.items()}}

    def signature(self) -> str:
        return _stat_signature(self.files.values())

    def parts(self) -> list[Part]:
        out = []
        for split in ("train", "test"):
            images = read_idx(self.files[f"{split}-images"], ndim=3)
            labels = read_idx(self.files[f"{split}-labels"], ndim=1).astype(np.int64)
            if len(labels) != len(images):
                raise DataError(f"fashion-mnist: {self.files[f'{split}-labels']} has {len(labels)} labels "
                                f"but {self.files[f'{split}-images']} has {len(images)} images; "
                                f"the two files come from different downloads: fetch both again")
            _check_labels(labels, len(self.classes), self.files[f"{split}-labels"])
            _check_nonempty(len(images), self.files[f"{split}-images"])
            out.append(Part(split, len(images), images.shape[1:] + (1,), labels,
                            _copy_from(images[..., None])))
        return out


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an IDX file (the MNIST format: big-endian header, then unsigned bytes)."""
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (EOFError, OSError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path} is corrupt or truncated ({exc}); download it again or reinstall "
                        f"dataset-fashion-mnist") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != ndim:
        raise DataError(f"{path} is not an IDX file of unsigned bytes with {ndim} dimension(s) "
                        f"(header {raw[:4].hex()}); check that the images and labels files are not swapped")
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(f"{path} is truncated: its header promises {dims} = {expected} bytes of data, "
                        f"the file holds {len(raw) - header}; download it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


# ------------------------------------------------------------------------------------------ stl10
class STL10Source(Source):
    """STL-10's binary layout (``stl10_binary/{train,test,unlabeled}_X.bin``, ``*_y.bin``)."""
    name = "stl10"
    classes = STL10_CLASSES
    SIDE = 96

    def __init__(self, root: str | os.PathLike | None, download: bool = False):
        if root is None:
            raise DataError("stl10: set data_root to the folder that holds stl10_binary/ "
                            "(e.g. data_root=data/stl10)")
        root = Path(root)
        self.folder = root / "stl10_binary" if (root / "stl10_binary").is_dir() else root
        names = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "unlabeled_X.bin"]
        missing = [n for n in names if not (self.folder / n).is_file()]
        if missing and download:
            _torchvision_download("STL10", root, "copy stl10_binary/ there from a machine with internet")
            self.folder = root / "stl10_binary"
            missing = [n for n in names if not (self.folder / n).is_file()]
        if missing:
            raise DataError(f"stl10: {self.folder} lacks {', '.join(missing)}; download "
                            f"stl10_binary.tar.gz from https://cs.stanford.edu/~acoates/stl10/ and "
                            f"unpack it under {root}, or allow the download with download=true")

    def key(self) -> dict:
        return {"source": self.name, "folder": str(self.folder.resolve())}

    def signature(self) -> str:
        return _stat_signature(sorted(self.folder.glob("*.bin")))

    def parts(self) -> list[Part]:
        side, per = self.SIDE, 3 * self.SIDE * self.SIDE
        out = []
        for split in ("train", "unlabeled", "test"):
            xpath = self.folder / f"{split}_X.bin"
            size = xpath.stat().st_size
            if size % per:
                raise DataError(f"{xpath} is truncated ({size} bytes is not a whole number of "
                                f"96x96x3 images); download it again")
            n = size // per
            _check_nonempty(n, xpath)
            if split == "unlabeled":
                labels = np.full(n, -1, dtype=np.int64)
            else:
                ypath = self.folder / f"{split}_y.bin"
                labels = np.fromfile(ypath, dtype=np.uint8).astype(np.int64) - 1  # file uses 1..10
                if len(labels) != n:
                    raise DataError(f"{ypath} has {len(labels)} labels for {n} images in {xpath}; "
                                    f"download both again")
                _check_labels(labels, 10, ypath, offset=1)
            raw = np.memmap(xpath, dtype=np.uint8, mode="r", shape=(n, 3, side, side))
            out.append(Part(split, n, (side, side, 3), labels, _copy_from(raw, transpose=(0, 3, 2, 1))))
        return out


# -------------------------------------------------------------------------------------- nyu-dl21
class NYUSource(Source):
    """The NYU Deep Learning 2021 competition layout (see ``authors-code-facts.md``).

    ``root/{train,val,unlabeled}/{0,1,...}.png`` and ``root/{train,val}_label_tensor.pt``.
    """
    name = "nyu-dl21"
    SPLITS = ("train", "val", "unlabeled")

    def __init__(self, root: str | os.PathLike | None, num_classes: int | None = None):
        if root is None:
            raise DataError("nyu-dl21: set data_root to the folder holding train/, val/ and unlabeled/")
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"nyu-dl21: data_root {self.root} does not exist; give the competition "
                            f"folder holding train/, val/ and unlabeled/")
        self.num_classes = num_classes or 800
        self.classes = tuple(str(c) for c in range(self.num_classes))
        self.files = {s: _numbered_images(self.root / s) for s in self.SPLITS}

    def key(self) -> dict:
        return {"source": self.name, "root": str(self.root.resolve()), "classes": self.num_classes}

    def signature(self) -> str:
        return _folder_signature(self.root, self.files)

    def parts(self) -> list[Part]:
        shape = _probe_shape(self.files["train"][0])
        out = []
        for split in self.SPLITS:
            files = self.files[split]
            if split == "unlabeled":
                labels = np.full(len(files), -1, dtype=np.int64)
            else:
                labels = _load_label_tensor(self.root / f"{split}_label_tensor.pt", len(files),
                                            self.root / split)
                _check_labels(labels, self.num_classes, self.root / f"{split}_label_tensor.pt")
            out.append(Part(split, len(files), shape, labels, _decode_into(files, shape)))
        return out


# ------------------------------------------------------------------------------------ imagefolder
class ImageFolderSource(Source):
    """Any ``root/class_name/*.png|jpg`` tree; or ``root/{train,val,test}/class_name/...``."""
    name = "imagefolder"

    def __init__(self, root: str | os.PathLike | None):
        if root is None:
            raise DataError("imagefolder: set data_root to a folder of class_name/ subfolders")
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"imagefolder: data_root {self.root} does not exist")
        split_dirs = {s: self.root / s for s in ("train", "val", "test") if (self.root / s).is_dir()}
        if "train" not in split_dirs:
            split_dirs = {"train": self.root}
        class_dirs = [p.name for p in _class_folders(split_dirs["train"])]
        if not class_dirs:
            raise DataError(f"imagefolder: {split_dirs['train']} has no class subfolders; "
                            f"arrange images as {split_dirs['train']}/<class_name>/<image>.png")
        self.classes = tuple(class_dirs)
        self.items: dict[str, tuple[list[Path], np.ndarray]] = {}
        for split, folder in split_dirs.items():
            paths, labels = [], []
            for entry in _class_folders(folder):
                if entry.name not in self.classes:
                    raise DataError(f"imagefolder: {entry} is a class that {split_dirs['train']} "
                                    f"does not have; add it there or remove it")
                files = sorted(p for p in entry.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
                if split == "train" and not files:
                    raise DataError(f"imagefolder: class folder {entry} holds no images "
                                    f"({', '.join(sorted(IMAGE_SUFFIXES))}); add its images or remove it")
                paths += files
                labels += [self.classes.index(entry.name)] * len(files)
            _check_nonempty(len(paths), folder)
            self.items[split] = (paths, np.array(labels, dtype=np.int64))

    def key(self) -> dict:
        return {"source": self.name, "root": str(self.root.resolve())}

    def signature(self) -> str:
        return _folder_signature(self.root, {s: p for s, (p, _) in self.items.items()})

    def parts(self) -> list[Part]:
        shape = _probe_shape(self.items["train"][0][0])
        return [Part(split, len(paths), shape, labels, _decode_into(paths, shape))
                for split, (paths, labels) in self.items.items()]


# --------------------------------------------------------------------------------------- helpers
def _class_folders(folder: Path) -> list[Path]:
    """The class subfolders of ``folder``, by name; hidden ones (``.ipynb_checkpoints``, ``.git``)
    are no class."""
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _copy_from(array: np.ndarray, transpose: tuple[int, ...] | None = None, chunk: int = 4096) -> Fill:
    def fill(out: np.ndarray, advance: Callable[[int], None]) -> None:
        for start in range(0, len(array), chunk):
            block = np.asarray(array[start:start + chunk])
            out[start:start + len(block)] = block.transpose(transpose) if transpose else block
            advance(len(block))
    return fill


def _check_labels(labels: np.ndarray, num_classes: int, path: Path, offset: int = 0) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{path}: label {int(labels[i]) + offset} at position {i} is outside "
                        f"[{offset}, {num_classes + offset}) ({len(bad)} such labels); fix the label file"
                        + (" or set num_classes" if offset == 0 else ""))


def _check_nonempty(n: int, where: Path) -> None:
    if n == 0:
        raise DataError(f"{where} holds no images: an empty split; put the images there or remove the folder")


def _numbered_images(folder: Path) -> list[Path]:
    """``0.png, 1.png, ...`` sorted by number, checked to be contiguous."""
    if not folder.is_dir():
        raise DataError(f"nyu-dl21: split folder {folder} is missing; the layout is "
                        f"{folder.parent}/{{train,val,unlabeled}}/0.png ...")
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    _check_nonempty(len(files), folder)
    bad = [p.name for p in files if not re.fullmatch(r"\d+", p.stem)]
    if bad:
        raise DataError(f"nyu-dl21: {folder / bad[0]} is not named <number>.png; the competition "
                        f"layout numbers images 0.png, 1.png, ... in label order")
    files.sort(key=lambda p: int(p.stem))
    numbers = [int(p.stem) for p in files]
    if numbers != list(range(len(files))):
        gap = next(i for i, n in enumerate(numbers) if n != i)
        raise DataError(f"nyu-dl21: {folder} should hold 0.png ... {len(files) - 1}.png, "
                        f"but image {gap} is missing; restore it so labels line up")
    return files


def _load_label_tensor(path: Path, n: int, folder: Path) -> np.ndarray:
    import torch  # only this layout needs torch to read its labels
    if not path.is_file():
        raise DataError(f"nyu-dl21: label file {path} is missing; it should be the 1-D label tensor "
                        f"for the {n} images in {folder}")
    try:
        labels = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise DataError(f"nyu-dl21: {path} could not be read as a tensor ({type(exc).__name__}: "
                        f"{exc}); restore it from the competition files") from None
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if len(labels) != n:
        raise DataError(f"nyu-dl21: {path} holds {len(labels)} labels but {folder} holds {n} images; "
                        f"the label tensor and the folder must match one to one")
    return labels


def _probe_shape(path: Path) -> tuple[int, int, int]:
    """The (H, W, C) every image of the dataset must have: the first training image's."""
    return tuple(_decode(path).shape)


def _decode(path: Path, shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """One image as (H, W, C) uint8; checks it decodes fully and matches ``shape``."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            im.load()
            mode, size = im.mode, im.size
            if mode not in MODE_CHANNELS:
                raise DataError(f"{path} has colour mode {mode}; the dataset uses {'/'.join(MODE_CHANNELS)}: "
                                f"convert it (e.g. `convert {path} -type TrueColor {path}`) or remove it")
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path} is corrupt or truncated ({exc}); replace or remove the file") from None
    if arr.ndim == 2:
        arr = arr[..., None]
    if shape is not None and arr.shape != tuple(shape):
        h, w, c = shape
        raise DataError(f"{path} is {size[0]}x{size[1]} {mode} but the dataset's images are "
                        f"{w}x{h} {'RGB' if c == 3 else 'L'}; resize/convert it to match or remove it")
    return arr


def _decode_chunk(paths: Sequence[Path], shape: tuple[int, int, int]) -> np.ndarray:
    return np.stack([_decode(p, shape) for p in paths])


def _decode_into(paths: Sequence[Path], shape: tuple[int, int, int], chunk: int = 256) -> Fill:
    """Decode image files into ``out``; in worker processes when there are many."""
    def fill(out: np.ndarray, advance: Callable[[int], None]) -> None:
        starts = range(0, len(paths), chunk)
        workers = min(os.cpu_count() or 1, 8)
        if len(paths) < 4 * chunk or workers == 1:
            for s in starts:
                out[s:s + chunk] = _decode_chunk(paths[s:s + chunk], shape)
                advance(len(paths[s:s + chunk]))
            return
        with ProcessPoolExecutor(workers) as pool:
            futures = [(s, pool.submit(_decode_chunk, paths[s:s + chunk], shape)) for s in starts]
            for s, fut in futures:
                block = fut.result()
                out[s:s + len(block)] = block
                advance(len(block))
    return fill


def _stat_signature(paths) -> str:
    h = hashlib.sha1()
    for p in paths:
        st = Path(p).stat()
        h.update(f"{Path(p).name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def _folder_signature(root: Path, files: dict[str, list[Path]]) -> str:
    """Count, total size and newest mtime per split: catches added, removed and edited files."""
    summary = {}
    for split, paths in files.items():
        stats = [p.stat() for p in paths]
        summary[split] = [len(stats), sum(s.st_size for s in stats), max(s.st_mtime_ns for s in stats)]
    for extra in sorted(root.glob("*_label_tensor.pt")):
        st = extra.stat()
        summary[extra.name] = [st.st_size, st.st_mtime_ns]
    return hashlib.sha1(json.dumps(summary, sort_keys=True).encode()).hexdigest()


def _torchvision_download(dataset: str, root: Path, how: str) -> None:
    """torchvision's downloader, with a short network timeout and a clear error offline."""
    import torchvision
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
        if dataset == "STL10":
            torchvision.datasets.STL10(str(root), split="train", download=True)
        else:
            getattr(torchvision.datasets, dataset)(str(root), train=True, download=True)
            getattr(torchvision.datasets, dataset)(str(root), train=False, download=True)
    except Exception as exc:  # URLError, timeout, HTTP errors, checksum errors ...
        raise DataError(f"{dataset}: files are missing and the download into {root} failed "
                        f"({type(exc).__name__}: {' '.join(str(exc).split())}); {how}") from None
    finally:
        socket.setdefaulttimeout(previous)


def make_source(name: str, root=None, *, download: bool = True, cache_dir: Path | None = None,
                num_classes: int | None = None, synthetic_options: dict | None = None) -> Source:
    """The source for a dataset name (``synthetic``, ``fashion-mnist``, ``stl10``, ...)."""
    if name == "synthetic":
        return SyntheticSource(**(synthetic_options or {}))
    if name == "fashion-mnist":
        return FashionMNISTSource(root, download, cache_dir / "downloads" if cache_dir else None)
    if name == "stl10":
        return STL10Source(root, download)
    if name == "nyu-dl21":
        return NYUSource(root, num_classes)
    if name == "imagefolder":
        return ImageFolderSource(root)
    raise DataError(f"unknown dataset {name!r}; choose synthetic, fashion-mnist, stl10, nyu-dl21 or imagefolder")
