"""The paper's Table 1 (section 4): Barlow Twins against SimCLR, BYOL and SwAV at an equal budget.

Every method pretrains for the same epochs on the same images with the same batch and
optimiser (the runs and epochs are the configuration's ``compare_methods`` and
``compare_epochs``: on the ``cpu`` profile all four on its one backbone; on the ``paper``
profile Table 1's rows, each on its own network); each finished backbone is then measured the
same way on the same labelled sets, one per seed: a k-NN probe and a linear probe on its frozen features and the section-3.4 fine-tuning.
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

import numpy as np

from .. import config as config_mod
from .. import methods as methods_mod
from ..comparison import Comparison, rows
from ..evaluate import mean_std
from ..finetune import finetune
from ..pretrain import pretrain
from ..tables import pm
from .claims import frozen_probes

# Table 1 of the paper: (network, method) -> accuracy on its 800-class validation set.
PAPER_TABLE1 = [("resnet18", "simclr", "17.45%"), ("resnet34", "byol", "19%"), ("resnet18", "byol", "22.5%"),
                ("resnet18", "swav", "25%"), ("resnet34", "ensemble (average)", "34%"),
                ("resnet34", "ensemble (weighted average)", "39%"), ("resnet34", "barlow", "43.46%")]
PAPER_COLUMN = "paper (800 classes, another dataset)"
NAMES = {"barlow": "Barlow Twins", "simclr": "SimCLR", "byol": "BYOL", "swav": "SwAV"}
MEASURES = {"finetune": "fine-tuned", "linear_probe": "linear probe", "knn_probe": "k-NN probe"}
NETWORKS = {"resnet18": "ResNet-18", "resnet34": "ResNet-34", "resnet10": "ResNet-10", "vgg16": "VGG-16",
            "vgg16-5pool": "VGG-16 with five pools"}


def compare_cfg(cfg: Mapping[str, Any], method: str, epochs: int | None = None,
                backbone: str | None = None) -> config_mod.Config:
    """``cfg`` with ``ssl_method = method`` (and ``ssl_epochs = epochs``, ``backbone`` when given)."""
    methods_mod.get(method)
    over = {k: v for k, v in cfg.items() if k != "profile"}
    over["ssl_method"] = method
    if epochs is not None:
        over["ssl_epochs"] = epochs
        over["ssl_warmup_epochs"] = min(cfg["ssl_warmup_epochs"], epochs)
    if backbone is not None:
        over["backbone"] = backbone
    return config_mod.load_profile(cfg["profile"], over)


def network(cfg: Mapping[str, Any]) -> str:
    """The backbone in words: "ResNet-18, width 0.25"."""
    text = NETWORKS.get(cfg["backbone"], cfg["backbone"])
    return text if cfg["width"] == 1 else f"{text}, width {cfg['width']:g}"


def compare(cfg: Mapping[str, Any], seeds: int = 5, finetune_seeds: int | None = None) -> dict:
    """Pretrain (or load) every run of ``cfg.compare_methods`` for ``cfg.compare_epochs`` epochs
    and measure it on ``seeds`` labelled sets (fine-tuning on the first ``finetune_seeds`` of
    them, default all). Returns ``{"epochs", "runs": {key: {method, backbone, network,
    pretraining, seeds}}}``, a key being ``method`` or ``method:backbone`` as configured."""
    for name, value, low in (("seeds", seeds, 1), ("finetune_seeds", finetune_seeds, 0)):
        if value is None and name == "finetune_seeds":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise config_mod.ConfigError(f"{name}={value!r} is not allowed: an integer >= {low} "
                                         f"(labelled sets of section 4's comparison)")
    config_mod.validate(cfg)
    finetune_seeds = seeds if finetune_seeds is None else min(finetune_seeds, seeds)
    epochs = cfg["compare_epochs"]
    out: dict[str, Any] = {"epochs": epochs, "runs": {}}
    for method, backbone in config_mod.table1_runs(cfg["compare_methods"]):
        key = method if backbone is None else f"{method}:{backbone}"
        c = compare_cfg(cfg, method, epochs, backbone)
        print(f"lossless table1: {key} ({epochs} epochs)", file=sys.stderr)
        pre = pretrain(c)
        path = Path(pre["backbone"])
        per_seed = []
        for s in range(seeds):
            cs = config_mod.load_profile(c["profile"], {k: v for k, v in c.items() if k != "profile"}, seed=s)
            row = {"seed": s, **frozen_probes(cs, path)}
            if s < finetune_seeds:
                ft = finetune(cs, "barlow", path)
                row.update(finetune=ft["test_accuracy"], finetune_run=ft["run"])
            per_seed.append(row)
        out["runs"][key] = {"method": method, "backbone": c["backbone"], "network": network(c),
                            "pretraining": {k: pre.get(k) for k in ("run", "train_seconds", "img_per_s",
                                                                      "final_loss", "knn_val")},
                            "seeds": per_seed}
    return out


def _metric(result: Mapping[str, Any], key: str, measure: str) -> list[float]:
    return [r[measure] for r in result["runs"][key]["seeds"] if measure in r]


def _paper(method: str, backbone: str) -> str | None:
    """The paper's figure for this method, its own network's first (the others' in brackets)."""
    same = [acc for net, m, acc in PAPER_TABLE1 if m == method and net == backbone]
    other = [f"{acc} ({NETWORKS[net]})" for net, m, acc in PAPER_TABLE1 if m == method and net != backbone]
    return ", ".join(same + other) or None


def table1(result: Mapping[str, Any], extra: Sequence[Mapping[str, Any]] = ()) -> list[dict]:
    """Table 1's rows from ``compare``'s result: network, method, k-NN / linear / fine-tuned test
    accuracy (mean ± sd over seeds), pretraining minutes, and the paper's figure beside ours.
    ``extra`` rows (the ensembles of section 4's second half, from their own chapter) are added
    in the same columns."""
    rows = []
    for key, r in result["runs"].items():
        ft = _metric(result, key, "finetune")
        rows.append({"network": r["network"], "method": NAMES.get(r["method"], r["method"]),
                     "k-NN probe": pm(mean_std(_metric(result, key, "knn_probe"))),
                     "linear probe": pm(mean_std(_metric(result, key, "linear_probe"))),
                     "fine-tuned": pm(mean_std(ft)) if ft else None,
                     "seeds": len(r["seeds"]), "pretraining minutes": r["pretraining"]["train_seconds"] / 60,
                     PAPER_COLUMN: _paper(r["method"], r["backbone"])})
    return rows + [dict(e) for e in extra]


def with_unrun(rows: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Table 1's rows and one row for each of the paper's rows that no measured row stands for:
    where the paper reports a method on more networks than the rows measure it on, each of its
    networks that no measured row's network names is marked "not run", with the setting that
    runs it. (A method measured on one network stands for the paper's row of that method, as
    Barlow Twins on the profile's network stands for the paper's ResNet-34 row.) Applying it
    twice adds nothing."""
    out = [dict(r) for r in rows]
    for key, name in NAMES.items():
        paper = [(net, acc) for net, m, acc in PAPER_TABLE1 if m == key]
        mine = [r for r in out if r["method"] == name]
        if not mine or len(paper) <= len(mine):
            continue
        for net, acc in paper:
            if not any(str(r["network"]).startswith(NETWORKS[net]) for r in mine):
                out.append({"network": NETWORKS[net], "method": name, "k-NN probe": "not run",
                            "linear probe": "not run", "fine-tuned": f"not run; add {key}:{net} to compare_methods",
                            "seeds": 0, "pretraining minutes": None, PAPER_COLUMN: acc})
    return out


def comparison(result: Mapping[str, Any], a: str, b: str, measure: str = "finetune") -> Comparison:
    """Run ``a`` minus run ``b`` (keys of ``result["runs"]``) on ``measure`` (finetune,
    linear_probe or knn_probe, test accuracy), paired over the labelled sets both measured."""
    runs = result["runs"]
    mine = {r["seed"]: r[measure] for r in runs[a]["seeds"] if measure in r}
    theirs = {r["seed"]: r[measure] for r in runs[b]["seeds"] if measure in r}
    seeds = sorted(set(mine) & set(theirs))
    return Comparison(a=[mine[s] for s in seeds], b=[theirs[s] for s in seeds], seeds=seeds, arms=(a, b),
                      what=f"{_label(runs, a)} minus {_label(runs, b)}", measure=MEASURES.get(measure, measure))


def comparisons(result: Mapping[str, Any], measure: str = "finetune", reference: str = "barlow") -> list[Comparison]:
    """The paper's claim "Barlow Twins performed the best", tested: the (first) run of method
    ``reference`` minus each other run on ``measure``, paired over seeds (those with at least
    two labelled sets measured on both; none where the method did not run)."""
    runs = result["runs"]
    ref = next((k for k, r in runs.items() if r["method"] == reference), None)
    if ref is None:
        return []
    out = [comparison(result, ref, key, measure) for key in runs if key != ref]
    return [c for c in out if c.n >= 2]


def best_rows(result: Mapping[str, Any], measure: str = "finetune", reference: str = "barlow") -> list[dict]:
    """:func:`comparisons` as table rows."""
    return rows(comparisons(result, measure, reference))


FLAT = 0.005  # a run has flattened when its last quarter of epochs is under half a point above the one before


def course(history: Sequence[Mapping[str, Any]]) -> dict:
    """The length rule of section 4, read from one pretraining run's monitors (``metrics.jsonl``
    rows): validation k-NN after the first epoch, at its best and at the last; the rise of the
    last quarter of the epochs, the mean k-NN of that quarter minus the mean of the quarter
    before it (means, because one epoch's k-NN on the validation images moves by a few tenths
    of a point from noise alone); the training minutes; and whether the run has flattened (a
    rise under :data:`FLAT`, or its best epoch before the last quarter: a curve that peaked
    earlier is not rising, whatever its last quarter's mean) or is still rising."""
    pts = [(r["epoch"], r["knn_val"]) for r in history if r.get("knn_val") is not None]
    if not pts:
        raise ValueError("no validation k-NN in the run's monitors (ssl_knn_every=0?): the length rule needs it")
    q = max(1, round(len(pts) / 4))
    last, before = [k for _, k in pts[-q:]], [k for _, k in pts[-2 * q:-q]] or [pts[0][1]]
    rise = round(float(np.mean(last) - np.mean(before)), 6)  # no verdict from float rounding
    best = max(pts, key=lambda p: p[1])
    return {"epochs": pts[-1][0], "first": pts[0][1], "best": best[1], "best_epoch": best[0], "last": pts[-1][1],
            "quarter": q, "last_quarter_rise": rise, "flat": rise < FLAT or best[0] < pts[-q][0],
            "minutes": sum(r.get("seconds", 0.0) for r in history) / 60}


def course_rows(histories: Mapping[str, Sequence[Mapping[str, Any]]], names: Mapping[str, str]) -> list[dict]:
    """:func:`course` of each run as table rows (accuracies as fractions for ``tables.show``)."""
    rows_ = []
    for key, h in histories.items():
        c = course(h)
        rows_.append({"run": names.get(key, key), "epochs": c["epochs"], "minutes": c["minutes"],
                      "k-NN after epoch 1": c["first"], "best k-NN": c["best"], "best at epoch": c["best_epoch"],
                      "k-NN at the end": c["last"], "since epoch 1 (points)": 100 * (c["last"] - c["first"]),
                      "rise over the last quarter (points)": 100 * c["last_quarter_rise"],
                      "the curve": "flattened" if c["flat"] else "still rising"})
    return rows_


def _label(runs: Mapping[str, Any], key: str) -> str:
    """A run's name: the method's, with its network when two runs share the method."""
    r = runs[key]
    name = NAMES.get(r["method"], r["method"])
    if sum(o["method"] == r["method"] for o in runs.values()) > 1:
        name += f" ({NETWORKS.get(r['backbone'], r['backbone'])})"
    return name


def labels(result: Mapping[str, Any]) -> dict[str, str]:
    """Every run's name, as the table and the figures show it."""
    return {k: _label(result["runs"], k) for k in result["runs"]}
