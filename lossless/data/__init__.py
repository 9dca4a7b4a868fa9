"""The data layer (paper section 3.1): every source becomes one uint8 image array and a split.

>>> from lossless import config, data
>>> split = data.load_split(config.load_profile("cpu"))
>>> split.summary()["sizes"]
{'labelled': 320, 'val': 1000, 'unlabelled': 58680, 'test': 10000}
"""
from __future__ import annotations

from typing import Any, Mapping

from .cache import ImageSet, cache_root, load_or_build
from .sources import make_source
from .splits import SPLIT_NAMES, Split, load_or_make_split, make_split

__all__ = ["ImageSet", "Split", "SPLIT_NAMES", "load_dataset", "load_split", "make_split",
           "make_source", "cache_root"]


def load_dataset(cfg: Mapping[str, Any], progress: bool = True, verify: bool = False) -> ImageSet:
    """Decode (once) and map the dataset named by ``cfg["dataset"]`` (``verify``: hash the cache
    entry's arrays against their recorded checksums whatever its size)."""
    root = cache_root(cfg.get("cache_dir"))
    source = make_source(
        cfg["dataset"], cfg.get("data_root"), download=bool(cfg.get("download", True)),
        cache_dir=root, num_classes=cfg.get("num_classes"),
        synthetic_options={
            "num_train": cfg.get("synthetic_train", 2000), "num_test": cfg.get("synthetic_test", 500),
            "num_classes": cfg.get("synthetic_classes", 10), "size": cfg.get("synthetic_size", 32),
            "channels": cfg.get("synthetic_channels", 3),
        },
    )
    return load_or_build(source, root, progress=progress, verify=verify)


def load_split(cfg: Mapping[str, Any], progress: bool = True, verify: bool = False) -> Split:
    """The protocol's split of the configured dataset for ``cfg["seed"]`` (stored on first use)."""
    data = load_dataset(cfg, progress=progress, verify=verify)
    return load_or_make_split(data, cfg.get("labels_per_class", 32), cfg.get("val_per_class", 100),
                              cfg.get("seed", 0))
