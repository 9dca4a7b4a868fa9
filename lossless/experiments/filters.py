"""Figure 2 of the paper: what the filters chapter draws, from the runs it loads (or trains).

The numbers of a figure (filters, their change, maps, top images) come from :mod:`lossless.filters`;
this module finds the runs: the main line and section 4's comparison (:mod:`.table1`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .. import config as config_mod
from ..features import frozen_features
from ..filters import backbone, layer_weights, panels, selective_channels, stage_maps, top_activating
from ..pretrain import load_data, pretrain, pretrain_dir
from .table1 import compare_cfg, labels


def recorded_layers(s4: Mapping[str, Any], methods: str, layer: str) -> dict:
    """The first convolutions a section 4 record keeps (trained and initial) of the runs
    ``methods``, where ``layer`` is the layer it kept; otherwise ``{}`` (the runs must be drawn
    from checkpoints: :func:`figure2` with ``runs=True``)."""
    wanted = {m.strip().split(":")[0] for m in methods.split(",")}
    kept = {k: v for k, v in (s4.get("first_layers") or {}).items() if k.split(":")[0] in wanted}
    return kept if kept and all(v["layer"] == layer for v in kept.values()) else {}


def figure2(cfg: Mapping[str, Any], methods: str = "barlow,simclr,byol,swav", layer: str = "stem.0",
            image: int = 0, channels: int = 4, top: int = 8, runs: bool = True) -> dict:
    """Everything the filters chapter draws: the main-line backbone of ``cfg`` (pretrained for
    ``ssl_epochs``) and the runs ``methods`` of section 4's comparison (``compare_methods``
    entries, pretrained for ``compare_epochs``), each loaded when finished. For each, the
    ``layer`` filters, the same layer at its initialisation and the change, all on one scale;
    the maps of test image number ``image`` after each stage of the main line; and for the first
    two backbones the pool images that most activate their ``channels`` most selective
    last-stage channels. ``runs=False``: the main line alone, nothing of section 4 trained or
    loaded (its filters come from a record: :func:`recorded_layers`)."""
    try:
        runs_wanted = config_mod.table1_runs(methods)
    except ValueError as exc:
        raise config_mod.ConfigError(f"filter_methods={methods!r} is not allowed: {config_mod.TABLE1.allowed} "
                                     f"({exc} is not)") from None
    for name, value, low in (("filter_image", image, 0), ("filter_channels", channels, 1), ("top", top, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise config_mod.ConfigError(f"{name}={value!r} is not allowed: an integer >= {low}")
    split = load_data(cfg, False)
    test = split.indices("test")
    if image >= len(test):
        raise config_mod.ConfigError(f"filter_image={image} is not allowed: a test image number from 0 to "
                                     f"{len(test) - 1}")
    keys = [m if b is None else f"{m}:{b}" for m, b in runs_wanted]
    named = labels({"runs": {"main": {"method": cfg["ssl_method"], "backbone": cfg["backbone"]},
                             **{k: {"method": m, "backbone": b or cfg["backbone"]}
                                for k, (m, b) in zip(keys, runs_wanted)}}})
    # the main line first (the book's longest run), then section 4's runs; each beside its own
    # initialisation (the same seed: every run of one network starts from the same weights)
    wanted = [(f"{named['main']}, main line, {cfg['ssl_epochs']} epochs", cfg)]
    for key, (method, net_name) in zip(keys, runs_wanted if runs else []):
        c = compare_cfg(cfg, method, cfg["compare_epochs"], net_name)
        if pretrain_dir(c) != pretrain_dir(cfg):
            wanted.append((f"{named[key]}, {c['ssl_epochs']} epochs", c))
    weights, initial, nets, cfgs = {}, {}, {}, {}
    for name, c in wanted:
        path = Path(pretrain(c)["backbone"])
        nets[name], ckpt = backbone(c, path, split)
        cfgs[name] = (c, path, ckpt)
        weights[name] = layer_weights(nets[name], layer)
        initial[name] = layer_weights(backbone(c, None, split)[0], layer)
    first = wanted[0][0]
    c, path, ckpt = cfgs[first]
    maps = stage_maps(nets[first], split.data.images[test[image]], ckpt["mean"], ckpt["std"]) \
        if hasattr(nets[first], "layer4") else {}
    pool = split.indices("unlabelled")
    classes, labels_all = split.data.classes, split.data.labels
    tops = {}
    for name, _ in wanted[:2]:
        c, path, _ = cfgs[name]
        feats = np.asarray(frozen_features(c, path)[pool])
        for ch, idx in top_activating(feats, selective_channels(feats, channels), top).items():
            chosen = np.sort(pool[idx])  # sorted: a forward read of the memory map
            order = np.argsort(np.argsort(pool[idx]))
            imgs = split.data.images[chosen][order]
            tops[f"{name.split(',')[0]} ({name.split(', ')[-1]})\nchannel {ch}"] = (
                imgs, [classes[labels_all[i]][:10] for i in pool[idx]])
    return {**panels(weights, initial), "layer": layer,
            "image": split.data.images[test[image]], "image_label": classes[labels_all[test[image]]],
            "maps": maps, "maps_of": first, "top_images": tops}
