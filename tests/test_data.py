"""The data layer: every source, the split protocol, the cache, and every bad input's message."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lossless import config, data
from lossless.cli import main as cli_main
from lossless.data import cache as cache_mod
from lossless.data import sources
from lossless.errors import DataError

from conftest import make_fashion_tree, make_imagefolder, make_nyu_tree, write_idx, write_png


def cfg_for(dataset, root=None, **kw):
    return config.load_profile("cpu", dict(dataset=dataset, data_root=str(root) if root else None,
                                           download=False, **kw))


# ------------------------------------------------------------------------------------ the protocol
def smoke_split(**kw):
    return data.load_split(config.load_profile("smoke", kw), progress=False)


def test_split_is_stratified_and_disjoint():
    s = smoke_split(labels_per_class=7, val_per_class=11)
    d = s.data
    assert s.class_counts("labelled") == [7] * d.num_classes
    assert s.class_counts("val") == [11] * d.num_classes
    train = set(d.indices("train").tolist())
    sets = [set(s.indices(n).tolist()) for n in ("labelled", "val", "unlabelled")]
    assert sum(map(len, sets)) == len(train)            # nothing lost
    assert set().union(*sets) == train                   # nothing outside train
    for a in range(3):
        for b in range(a + 1, 3):
            assert not sets[a] & sets[b]                 # disjoint
    assert set(s.test.tolist()) == set(d.indices("test").tolist())
    assert (s.labels("unlabelled") == -1).all()          # hidden from training ...
    assert (s.true_labels("unlabelled") >= 0).all()      # ... but kept for measuring


def test_same_seed_same_split_other_seed_other_split():
    a, b, c = smoke_split(seed=1), smoke_split(seed=1), smoke_split(seed=2)
    assert np.array_equal(a.labelled, b.labelled) and np.array_equal(a.val, b.val)
    assert not np.array_equal(a.labelled, c.labelled)
    # the same seed drawn without the stored file gives the same indices (not only a cache hit)
    fresh = data.make_split(a.data, 10, 20, seed=1)
    assert np.array_equal(fresh.labelled, a.labelled) and np.array_equal(fresh.unlabelled, a.unlabelled)


def test_split_is_stored_with_the_cache():
    s = smoke_split(seed=5)
    stored = list((s.data.path / "splits").glob("*.npz"))
    assert [p.name for p in stored] == ["k10-v20-s5.npz"]
    again = smoke_split(seed=5)
    for name in data.SPLIT_NAMES:
        assert np.array_equal(s.indices(name), again.indices(name))


def test_class_with_too_few_images_names_the_class():
    with pytest.raises(DataError, match=r"class 0 \(class0\) has 200 training images.*lower labels_per_class"):
        smoke_split(labels_per_class=150, val_per_class=100)


# ------------------------------------------------------------------------------------ synthetic
def test_synthetic_is_reproducible_balanced_and_learnable():
    from sklearn.linear_model import LogisticRegression
    from lossless.data.synthetic import generate
    x1, y1 = generate(600, 6, size=24, channels=3, seed=3)
    x2, y2 = generate(600, 6, size=24, channels=3, seed=3)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert x1.shape == (600, 24, 24, 3) and x1.dtype == np.uint8
    assert np.bincount(y1).tolist() == [100] * 6
    gray, _ = generate(10, 6, size=24, channels=1, seed=3)
    assert gray.shape == (10, 24, 24, 1)
    xt, yt = generate(300, 6, size=24, channels=3, seed=4)
    clf = LogisticRegression(max_iter=300).fit(x1.reshape(600, -1) / 255.0, y1)
    acc = clf.score(xt.reshape(300, -1) / 255.0, yt)
    assert acc > 0.5, acc  # chance is 1/6: classes carry real structure


# ------------------------------------------------------------------------------------ fashion-mnist
def test_fashion_mnist_reads_idx_files(tmp_path):
    arrays = make_fashion_tree(tmp_path / "fm", n_train=300, n_test=50)
    ds = data.load_dataset(cfg_for("fashion-mnist", tmp_path / "fm"), progress=False)
    assert ds.image_shape == (28, 28, 1) and ds.num_classes == 10
    train = ds.indices("train")
    assert np.array_equal(ds.images[train][..., 0], arrays["train-images-idx3-ubyte"])
    assert np.array_equal(ds.labels[train], arrays["train-labels-idx1-ubyte"])
    assert np.array_equal(ds.images[ds.indices("test")][..., 0], arrays["t10k-images-idx3-ubyte"])


def test_fashion_mnist_plain_idx_and_lossless_data_env(tmp_path, monkeypatch):
    make_fashion_tree(tmp_path / "env" / "fashion-mnist", compress=False)
    monkeypatch.setenv("LOSSLESS_DATA", str(tmp_path / "env"))
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    ds = data.load_dataset(cfg_for("fashion-mnist"), progress=False)
    assert len(ds.indices("train")) == 300


def test_fashion_mnist_missing_everywhere_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        data.load_dataset(cfg_for("fashion-mnist"), progress=False)


def test_fashion_mnist_missing_root(tmp_path):
    with pytest.raises(DataError, match=r"data_root .*missing-dir does not exist"):
        data.load_dataset(cfg_for("fashion-mnist", tmp_path / "missing-dir"), progress=False)


def test_truncated_idx_names_the_file(tmp_path):
    make_fashion_tree(tmp_path / "fm", compress=False)
    f = tmp_path / "fm" / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte is truncated"):
        data.load_dataset(cfg_for("fashion-mnist", tmp_path / "fm"), progress=False)


def test_truncated_gzip_names_the_file(tmp_path):
    make_fashion_tree(tmp_path / "fm")
    f = tmp_path / "fm" / "t10k-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:200])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz is corrupt or truncated"):
        data.load_dataset(cfg_for("fashion-mnist", tmp_path / "fm"), progress=False)


def test_idx_label_count_mismatch_and_label_out_of_range(tmp_path):
    make_fashion_tree(tmp_path / "a")
    write_idx(tmp_path / "a" / "train-labels-idx1-ubyte", np.zeros(299, dtype=np.uint8))
    with pytest.raises(DataError, match=r"has 299 labels but .* has 300 images"):
        data.load_dataset(cfg_for("fashion-mnist", tmp_path / "a"), progress=False)
    make_fashion_tree(tmp_path / "b")
    labels = np.zeros(300, dtype=np.uint8)
    labels[17] = 10
    write_idx(tmp_path / "b" / "train-labels-idx1-ubyte", labels)
    with pytest.raises(DataError, match=r"label 10 at position 17 is outside \[0, 10\)"):
        data.load_dataset(cfg_for("fashion-mnist", tmp_path / "b"), progress=False)


def test_fashion_split_sizes_on_fixture(tmp_path):
    make_fashion_tree(tmp_path / "fm", n_train=1500, n_test=100)
    s = data.load_split(cfg_for("fashion-mnist", tmp_path / "fm", labels_per_class=32,
                                val_per_class=100), progress=False)
    assert s.summary()["sizes"] == {"labelled": 320, "val": 1000, "unlabelled": 180, "test": 100}


# ------------------------------------------------------------------------------------ imagefolder
def test_imagefolder_round_trip(tmp_path):
    made = make_imagefolder(tmp_path / "if", per_class=12)
    ds = data.load_dataset(cfg_for("imagefolder", tmp_path / "if"), progress=False)
    assert ds.classes == ("cat", "dog", "emu") and ds.image_shape == (16, 16, 3)
    dogs = ds.images[ds.labels == 1]
    assert np.array_equal(dogs, np.stack(made["dog"]))
    s = data.load_split(cfg_for("imagefolder", tmp_path / "if", labels_per_class=3, val_per_class=2),
                        progress=False)
    assert s.summary()["sizes"] == {"labelled": 9, "val": 6, "unlabelled": 21, "test": 0}


def test_imagefolder_with_train_and_test_folders(tmp_path):
    make_imagefolder(tmp_path / "if" / "train", per_class=6)
    make_imagefolder(tmp_path / "if" / "test", per_class=2, seed=1)
    ds = data.load_dataset(cfg_for("imagefolder", tmp_path / "if"), progress=False)
    assert ds.part_names == ("train", "test") and len(ds.indices("test")) == 6


def test_corrupt_image_names_the_file(tmp_path):
    make_imagefolder(tmp_path / "if", per_class=4)
    bad = tmp_path / "if" / "dog" / "img002.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated PNG
    with pytest.raises(DataError, match=r"dog/img002.png is corrupt or truncated"):
        data.load_dataset(cfg_for("imagefolder", tmp_path / "if"), progress=False)
    bad.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"dog/img002.png is corrupt"):
        data.load_dataset(cfg_for("imagefolder", tmp_path / "if"), progress=False)


def test_image_of_another_size_or_mode_names_the_file(tmp_path):
    make_imagefolder(tmp_path / "a", per_class=4)
    write_png(tmp_path / "a" / "emu" / "img001.png", np.zeros((20, 16, 3), np.uint8))
    with pytest.raises(DataError, match=r"emu/img001.png is 16x20 RGB but the dataset's images are 16x16 RGB"):
        data.load_dataset(cfg_for("imagefolder", tmp_path / "a"), progress=False)
    make_imagefolder(tmp_path / "b", per_class=4)
    write_png(tmp_path / "b" / "cat" / "img003.png", np.zeros((16, 16, 1), np.uint8))
    with pytest.raises(DataError, match=r"cat/img003.png is 16x16 L but the dataset's images are 16x16 RGB"):
        data.load_dataset(cfg_for("imagefolder", tmp_path / "b"), progress=False)
    from PIL import Image
    make_imagefolder(tmp_path / "c", per_class=4)
    Image.new("RGBA", (16, 16)).save(tmp_path / "c" / "cat" / "img000.png")
    with pytest.raises(DataError, match=r"has colour mode RGBA"):
        data.load_dataset(cfg_for("imagefolder", tmp_path / "c"), progress=False)


def test_empty_class_folder_is_named(tmp_path):
    (tmp_path / "if" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match=r"class folder .*train/cat holds no images \(.*\.png.*\); add its images or remove it"):
        data.load_dataset(cfg_for("imagefolder", tmp_path / "if"), progress=False)


def test_a_hidden_folder_is_no_class(tmp_path):
    """Jupyter's ``.ipynb_checkpoints/`` (or ``.git/``) beside the class folders is no class 0."""
    made = make_imagefolder(tmp_path / "if", per_class=12)
    (tmp_path / "if" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "if" / "dog" / ".ipynb_checkpoints").mkdir()
    ds = data.load_dataset(cfg_for("imagefolder", tmp_path / "if"), progress=False)
    assert ds.classes == ("cat", "dog", "emu")
    assert np.array_equal(ds.images[ds.labels == 1], np.stack(made["dog"]))


def test_parallel_decode_matches_serial(tmp_path):
    made = make_imagefolder(tmp_path / "if", classes=("a", "b"), per_class=600, size=8)
    ds = data.load_dataset(cfg_for("imagefolder", tmp_path / "if"), progress=False)
    assert np.array_equal(ds.images, np.stack(made["a"] + made["b"]))


# ------------------------------------------------------------------------------------ nyu-dl21
def test_nyu_layout_uses_its_own_split(tmp_path):
    made = make_nyu_tree(tmp_path / "nyu", n_train=40, n_val=20, n_unlabeled=30, classes=4)
    cfg = cfg_for("nyu-dl21", tmp_path / "nyu", num_classes=4, labels_per_class=10)
    s = data.load_split(cfg, progress=False)
    assert s.summary()["sizes"] == {"labelled": 40, "val": 20, "unlabelled": 30, "test": 0}
    ds = s.data
    tr = ds.indices("train")
    assert np.array_equal(ds.images[tr], made["train"])           # 0.png, 1.png, ... in order
    assert np.array_equal(ds.labels[tr], made["train_labels"])
    assert (ds.labels[ds.indices("unlabeled")] == -1).all()


def test_nyu_numeric_order_not_lexical(tmp_path):
    made = make_nyu_tree(tmp_path / "nyu", n_train=12, n_val=4, n_unlabeled=4, classes=4)
    ds = data.load_dataset(cfg_for("nyu-dl21", tmp_path / "nyu", num_classes=4), progress=False)
    assert np.array_equal(ds.images[ds.indices("train")][10], made["train"][10])  # 10.png after 9.png


def test_nyu_bad_inputs(tmp_path):
    import shutil
    import torch
    root = tmp_path / "nyu"
    make_nyu_tree(root, classes=4)
    cfg = cfg_for("nyu-dl21", root, num_classes=4, labels_per_class=10)
    torch.save(torch.arange(39) % 4, root / "train_label_tensor.pt")
    with pytest.raises(DataError, match=r"train_label_tensor.pt holds 39 labels but .*train holds 40 images"):
        data.load_dataset(cfg, progress=False)
    bad = torch.arange(40) % 4
    bad[5] = 4
    torch.save(bad, root / "train_label_tensor.pt")
    with pytest.raises(DataError, match=r"label 4 at position 5 is outside \[0, 4\)"):
        data.load_dataset(cfg, progress=False)
    (root / "train_label_tensor.pt").unlink()
    with pytest.raises(DataError, match=r"label file .*train_label_tensor.pt is missing"):
        data.load_dataset(cfg, progress=False)
    shutil.rmtree(root / "unlabeled")
    with pytest.raises(DataError, match=r"split folder .*unlabeled is missing"):
        data.load_dataset(cfg, progress=False)
    with pytest.raises(DataError, match=r"data_root .*nope does not exist"):
        data.load_dataset(cfg_for("nyu-dl21", tmp_path / "nope"), progress=False)


def test_nyu_gap_in_numbering(tmp_path):
    root = tmp_path / "nyu"
    make_nyu_tree(root, classes=4)
    (root / "val" / "7.png").unlink()
    with pytest.raises(DataError, match=r"image 7 is missing"):
        data.load_dataset(cfg_for("nyu-dl21", root, num_classes=4), progress=False)


# ------------------------------------------------------------------------------------ stl10
def test_stl10_binary_layout(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "stl" / "stl10_binary"
    folder.mkdir(parents=True)
    imgs = {}
    for split, n in (("train", 20), ("test", 10), ("unlabeled", 5)):
        hwc = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        hwc.transpose(0, 3, 2, 1).tofile(folder / f"{split}_X.bin")  # STL-10 stores column-major
        imgs[split] = hwc
        if split != "unlabeled":
            (np.arange(n, dtype=np.uint8) % 10 + 1).tofile(folder / f"{split}_y.bin")
    ds = data.load_dataset(cfg_for("stl10", tmp_path / "stl"), progress=False)
    assert ds.image_shape == (96, 96, 3) and ds.classes[0] == "airplane"
    assert np.array_equal(ds.images[ds.indices("train")], imgs["train"])
    assert np.array_equal(ds.labels[ds.indices("test")], np.arange(10) % 10)
    assert (ds.labels[ds.indices("unlabeled")] == -1).all()


def test_stl10_missing_files_offline(tmp_path):
    (tmp_path / "stl").mkdir()
    with pytest.raises(DataError, match=r"lacks train_X.bin.*download=true"):
        data.load_dataset(cfg_for("stl10", tmp_path / "stl"), progress=False)


# ------------------------------------------------------------------------------------ the cache
def test_cache_round_trip_returns_identical_arrays(tmp_path):
    make_imagefolder(tmp_path / "if", per_class=5)
    cfg = cfg_for("imagefolder", tmp_path / "if")
    first = data.load_dataset(cfg, progress=False)
    second = data.load_dataset(cfg, progress=False)
    assert isinstance(second.images, np.memmap)          # mapped back, not decoded again
    for a in ("images", "labels", "part"):
        assert np.array_equal(getattr(first, a), getattr(second, a))
    assert first.classes == second.classes and first.path == second.path


def test_partial_cache_is_rebuilt_never_loaded(tmp_path, capsys):
    make_imagefolder(tmp_path / "if", per_class=5)
    cfg = cfg_for("imagefolder", tmp_path / "if")
    good = np.array(data.load_dataset(cfg, progress=False).images)
    path = cache_mod.entry_path(sources.ImageFolderSource(tmp_path / "if"))
    images = path / "images.npy"
    images.write_bytes(images.read_bytes()[:-500])       # truncated by a crash or a full disk
    again = data.load_dataset(cfg, progress=False)
    assert "rebuilding the cache" in capsys.readouterr().err
    assert np.array_equal(again.images, good)
    (path / "meta.json").unlink()                         # interrupted before the marker
    assert np.array_equal(data.load_dataset(cfg, progress=False).images, good)


def test_interrupted_build_leaves_no_complete_entry(tmp_path, monkeypatch):
    make_imagefolder(tmp_path / "if", per_class=5)
    cfg = cfg_for("imagefolder", tmp_path / "if")

    def crash(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(np, "save", crash)                     # dies after decoding, before the marker
        data.load_dataset(cfg, progress=False)
    # (monkeypatch.undo() here once undid the test's own LOSSLESS_CACHE too, and the test looked
    # for, and built, its entry in ~/.cache/lossless)
    path = cache_mod.entry_path(sources.ImageFolderSource(tmp_path / "if"))
    assert path.parent == tmp_path / "cache"
    assert not path.exists() and not list(path.parent.glob(".*tmp*"))
    assert data.load_dataset(cfg, progress=False).images.shape == (15, 16, 16, 3)


def test_changed_source_files_rebuild_the_cache(tmp_path):
    make_imagefolder(tmp_path / "if", per_class=5)
    cfg = cfg_for("imagefolder", tmp_path / "if")
    data.load_dataset(cfg, progress=False)
    write_png(tmp_path / "if" / "cat" / "img999.png", np.full((16, 16, 3), 7, np.uint8))
    ds = data.load_dataset(cfg, progress=False)
    assert len(ds.images) == 16 and (ds.images == 7).all(axis=(1, 2, 3)).any()


# ------------------------------------------------------------------------------------ the command
def test_cli_data_check_prints_one_json_line(capsys):
    assert cli_main(["data", "check", "--profile", "smoke", "--quiet", "seed=3"]) == 0
    out = json.loads(capsys.readouterr().out.strip())
    assert out["sizes"] == {"labelled": 100, "val": 200, "unlabelled": 1700, "test": 500}
    side = config.load_profile("smoke")["synthetic_size"]
    assert out["image_shape"] == [side, side, 3] and out["dtype"] == "uint8" and out["seed"] == 3
    assert out["class_counts"]["labelled"] == [10] * 10


def test_cli_bad_input_exits_2_with_a_message_not_a_traceback(tmp_path):
    make_imagefolder(tmp_path / "if", per_class=4)
    bad = tmp_path / "if" / "dog" / "img001.png"
    bad.write_bytes(b"garbage")
    proc = subprocess.run([sys.executable, "-m", "lossless", "data", "check", "--dataset", "imagefolder",
                           "--root", str(tmp_path / "if"), "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "img001.png is corrupt" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "lossless", "data", "check", "--profile", "smoke",
                           "labels_per_class=500"], capture_output=True, text=True)
    assert proc.returncode == 2 and "lower labels_per_class" in proc.stderr


# ------------------------------------------------------------------------------------ real data
REAL = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.realdata
@pytest.mark.skipif(not (REAL / "train-images-idx3-ubyte.gz").exists(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_sizes():
    s = data.load_split(config.load_profile("cpu"), progress=False)
    d = s.data
    assert (len(d.indices("train")), len(d.indices("test")), d.num_classes) == (60000, 10000, 10)
    assert s.summary()["sizes"] == {"labelled": 320, "val": 1000, "unlabelled": 58680, "test": 10000}
    assert np.bincount(d.labels[d.indices("train")]).tolist() == [6000] * 10
