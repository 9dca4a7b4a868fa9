"""Fixtures that write small real datasets (IDX files, PNG trees, the NYU layout) to tmp folders."""
from __future__ import annotations

import gzip
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers on two cores: one thread each (torch, and the kernels and
    # subprocesses they start), not two each fighting over the cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")


# A second family of CPU kernels: MKL's processor-independent code path, which rounds matrix
# products otherwise, as another processor would (benchmarks/kernel_families.py shows which
# variables change the numbers on a machine; PyTorch's ATEN_CPU_CAPABILITY=default does too, but
# its scalar convolutions made the marked tests run for more than 15 minutes instead of 15 s).
# `make test` runs the `kernels` tests a second time with LOSSLESS_OTHER_KERNELS=1, which sets
# these before torch loads MKL (and for the chapters' kernels, which inherit the environment).
OTHER_KERNELS = {"MKL_CBWR": "COMPATIBLE"}
if os.environ.get("LOSSLESS_OTHER_KERNELS") == "1":
    os.environ.update(OTHER_KERNELS)

# a chapter that compares two computations of floats (its cells run again under OTHER_KERNELS)
FLOAT_CHECK = re.compile(r"assert_close|assert_allclose|assert_array_equal|np\.isclose|math\.isclose")


def pytest_configure(config):
    from nbval_book import NbvalBook
    config.pluginmanager.register(NbvalBook(), "nbval-book")


def pytest_collection_modifyitems(config, items):
    """Every cell of a chapter with a float check is a `kernels` test (nbval's items carry no
    markers of their own): `pytest -m kernels` runs those chapters and the marked unit tests."""
    checked: dict[str, bool] = {}
    for item in items:
        path = Path(str(item.fspath))
        if path.suffix != ".ipynb":
            continue
        if path not in checked:
            source = Path(__file__).parent.parent / "book" / f"{path.stem}.md"
            checked[path] = source.is_file() and FLOAT_CHECK.search(source.read_text()) is not None
        if checked[path]:
            item.add_marker(pytest.mark.kernels)


@pytest.fixture(scope="session")
def _smoke_cache(tmp_path_factory) -> Path:
    """A data cache holding the smoke profile's synthetic dataset, decoded once per test session
    (per worker): most tests run the smoke profile, and building it costs each of them 0.3-1.5 s.
    Tests get hard links to its files (:func:`_isolated_cache`), so a test that damages a cache
    file in place must use a cache of its own; at the end every file must still match the
    checksum its ``meta.json`` records, or the session fails naming the rule."""
    import json

    from lossless import config
    from lossless.data import load_dataset
    from lossless.data.cache import file_digest
    root = tmp_path_factory.mktemp("smoke-cache")
    entry = load_dataset(config.load_profile("smoke", {"cache_dir": str(root)}), progress=False).path
    yield root
    recorded = json.loads((entry / "meta.json").read_text())["sha1"]
    damaged = [name for name, sha in recorded.items() if file_digest(entry / name) != sha]
    assert not damaged, (f"a test changed the shared smoke cache in place ({damaged}): a test that damages a "
                         f"cache file must set LOSSLESS_CACHE to a folder of its own")


@pytest.fixture(scope="session")
def _smoke_pretrained(tmp_path_factory, _smoke_cache) -> Path:
    """A runs folder holding the smoke profile's pretrained backbone (seed 0), trained once per
    test session (per worker)."""
    from lossless import config
    from lossless.pretrain import pretrain
    root = tmp_path_factory.mktemp("smoke-runs")
    shutil.copytree(_smoke_cache, root / "cache")            # its stored split stays out of the tests' copies
    pretrain(config.load_profile("smoke", {"runs_dir": str(root / "runs"), "cache_dir": str(root / "cache"),
                                           "progress": False}))
    return root / "runs"


@pytest.fixture
def smoke_backbone(tmp_path, _smoke_pretrained) -> Path:
    """``tmp_path / "runs"`` already holding the smoke profile's pretrained backbone (seed 0), for
    the tests that need a trained network, not a pretraining: a smoke stage with
    ``runs_dir=tmp_path / "runs"`` finds it finished instead of training its own (14 tests)."""
    runs = tmp_path / "runs"
    for run in _smoke_pretrained.glob("pretrain-*"):
        shutil.copytree(run, runs / run.name)
        result = runs / run.name / "result.json"                 # its paths name this copy
        result.write_text(result.read_text().replace(str(_smoke_pretrained), str(runs)))
    return runs


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, _smoke_cache):
    """Every test gets its own cache folder holding the session's smoke dataset as hard links (a
    copy for each of ~760 tests filled 6 GB of /tmp; the cache writes through temporary files and
    renames, so a rebuild never touches the shared files), and no LOSSLESS_DATA from the environment."""
    shutil.copytree(_smoke_cache, tmp_path / "cache", copy_function=os.link)
    # a MonkeyPatch of its own: a test's `monkeypatch.undo()` must not send its later stages to
    # ~/.cache/lossless (five tests undo their own patches mid-test)
    mp = pytest.MonkeyPatch()
    mp.setenv("LOSSLESS_CACHE", str(tmp_path / "cache"))
    mp.delenv("LOSSLESS_DATA", raising=False)
    yield
    mp.undo()


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
