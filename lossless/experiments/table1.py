"""The paper's Table 1 (section 4): Barlow Twins against SimCLR, BYOL and SwAV at an equal budget.

Every method pretrains the same backbone for the same epochs on the same images with the same
batch and optimiser (``compare_cfg``: the configuration with ``ssl_method`` and ``ssl_epochs``
set); each finished backbone is then measured the same way on the same labelled sets, one per
seed: a k-NN probe and a linear probe on its frozen features and the section-3.4 fine-tuning.
As in the claim experiment, pretraining uses no labels, so one run per method (the
configuration's own seed) serves every seed. Every piece is a run folder of its own stage, so a
stopped comparison resumes where it was; ``table1`` collects the stored results into the
table's shape, with the paper's figure beside ours (800 classes of another dataset, its own
budget per method: the columns are not comparable number for number, only in order).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import config as config_mod
from .. import methods as methods_mod
from ..evaluate import mean_std, paired_difference
from ..finetune import finetune
from ..pretrain import pretrain
from ..tables import interval, pm, significance
from .claims import frozen_probes

# Table 1 of the paper: (network, method) -> accuracy on its 800-class validation set.
PAPER_TABLE1 = [("ResNet-18", "simclr", "17.45%"), ("ResNet-34", "byol", "19%"), ("ResNet-18", "byol", "22.5%"),
                ("ResNet-18", "swav", "25%"), ("ResNet-34", "ensemble (average)", "34%"),
                ("ResNet-34", "ensemble (weighted average)", "39%"), ("ResNet-34", "barlow", "43.46%")]
NAMES = {"barlow": "Barlow Twins", "simclr": "SimCLR", "byol": "BYOL", "swav": "SwAV"}


def compare_cfg(cfg: Mapping[str, Any], method: str, epochs: int | None = None) -> config_mod.Config:
    """``cfg`` with ``ssl_method = method`` (and ``ssl_epochs = epochs`` when given)."""
    methods_mod.get(method)
    over = {k: v for k, v in cfg.items() if k != "profile"}
    over["ssl_method"] = method
    if epochs is not None:
        over["ssl_epochs"] = epochs
        over["ssl_warmup_epochs"] = min(cfg["ssl_warmup_epochs"], epochs)
    return config_mod.load_profile(cfg["profile"], over)


def compare(cfg: Mapping[str, Any], methods: Sequence[str] = ("barlow", "simclr", "byol", "swav"),
            epochs: int | None = None, seeds: int = 5, finetune_seeds: int | None = None) -> dict:
    """Pretrain (or load) every method at the same budget and measure it on ``seeds`` labelled
    sets (fine-tuning on the first ``finetune_seeds`` of them, default all)."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise config_mod.ConfigError(f"seeds={seeds!r} is not allowed: an integer >= 1")
    finetune_seeds = seeds if finetune_seeds is None else finetune_seeds
    out: dict[str, Any] = {"epochs": epochs or cfg["ssl_epochs"], "methods": {}}
    for name in methods:
        c = compare_cfg(cfg, name, epochs)
        print(f"lossless table1: {name} ({c['ssl_epochs']} epochs)", file=sys.stderr)
        pre = pretrain(c)
        backbone = Path(pre["backbone"])
        per_seed = []
        for s in range(seeds):
            cs = config_mod.load_profile(c["profile"], {k: v for k, v in c.items() if k != "profile"}, seed=s)
            row = {"seed": s, **frozen_probes(cs, backbone)}
            if s < finetune_seeds:
                row["finetune"] = finetune(cs, "barlow", backbone)["test_accuracy"]
            per_seed.append(row)
        out["methods"][name] = {"pretraining": {k: pre.get(k) for k in ("run", "train_seconds", "img_per_s",
                                                                          "final_loss", "knn_val")},
                                "seeds": per_seed}
    return out


def _metric(result: Mapping[str, Any], method: str, key: str) -> list[float]:
    return [r[key] for r in result["methods"][method]["seeds"] if key in r]


def table1(result: Mapping[str, Any], network: str) -> list[dict]:
    """Table 1's rows from ``compare``'s result: network, method, k-NN / linear / fine-tuned test
    accuracy (mean ± sd over seeds), pretraining minutes, and the paper's figure beside ours.
    The ensembles' rows come from the ensembles chapter (paper section 4's second half)."""
    rows = []
    for name, m in result["methods"].items():
        paper = [f"{acc} ({net})" for net, meth, acc in PAPER_TABLE1 if meth == name]
        row = {"network": network, "method": NAMES.get(name, name),
               "k-NN probe": pm(mean_std(_metric(result, name, "knn_probe"))),
               "linear probe": pm(mean_std(_metric(result, name, "linear_probe"))),
               "fine-tuned": pm(mean_std(_metric(result, name, "finetune"))) if _metric(result, name, "finetune")
               else None,
               "seeds": len(m["seeds"]), "pretraining minutes": m["pretraining"]["train_seconds"] / 60,
               "paper (800 classes, another dataset)": ", ".join(paper) or None}
        rows.append(row)
    return rows


def best_rows(result: Mapping[str, Any], key: str = "finetune", reference: str = "barlow") -> list[dict]:
    """The paper's claim "Barlow Twins performed the best", tested: Barlow Twins minus each other
    method on ``key`` (finetune, linear_probe or knn_probe), paired over seeds, 95% interval."""
    rows = []
    ref = _metric(result, reference, key)
    for name in result["methods"]:
        if name == reference:
            continue
        other = _metric(result, name, key)
        n = min(len(ref), len(other))
        if n < 2:
            continue
        d = paired_difference(ref[:n], other[:n])
        rows.append({"comparison": f"{NAMES.get(reference, reference)} minus {NAMES.get(name, name)}",
                     "measure": key.replace("_", " "), "mean difference (points)": 100 * d["mean"],
                     "95% interval (points)": interval(d), "verdict": significance(d), "seeds": n})
    return rows
