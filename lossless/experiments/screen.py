"""A recipe screen for the ``cpu`` profile's Barlow Twins backbone (the recipe-screen appendix).

Each recipe is a set of parameter overrides on the profile, pretrained at one short budget
(``epochs``, the same for all, the paper's protocol: compare short, train the chosen one
longer) on each of ``seeds`` seeds (the seed picks the labelled set and the pretraining's
random draws), then judged by the frozen features' k-NN and linear-probe accuracy. Recipes
are chosen by **validation** accuracy (the linear probe trained on the labelled images, scored
on the validation images); test accuracy is reported beside it and never used to choose.

Every pretraining is a run folder of its own, so a stopped screen resumes where it was, and
``lossless experiment screen`` writes the result as JSON (``benchmarks/results/screen-<profile>.json``
is the record the appendix shows; ``--out`` elsewhere).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .. import config as config_mod
from .. import runs
from ..evaluate import mean_std, paired_difference
from ..pretrain import pretrain
from .claims import probe_backbone

# name -> (what it changes, overrides). The first is the profile's own recipe, the reference.
RECIPES: dict[str, tuple[str, dict]] = {
    "profile": ("the cpu profile's recipe", {}),
    "projector-512": ("a narrower projector (3 x 512)", {"projector": "512-512-512"}),
    "projector-2048": ("a wider projector (3 x 2048)", {"projector": "2048-2048-2048"}),
    "crop-0.5": ("milder crops (area 0.5-1)", {"crop_scale_min": 0.5}),
    "no-jitter": ("no brightness/contrast jitter", {"jitter_strength": 0.0}),
    "little-blur": ("almost no blur (sigma 0.1)", {"blur_sigma_max": 0.1}),
    "lr-0.3": ("half the learning rate", {"ssl_lr": 0.3}),
    "lr-1.2": ("twice the learning rate", {"ssl_lr": 1.2}),
    "batch-512": ("batch 512 (the rate scaled with it)", {"ssl_batch_size": 512}),
    "adamw": ("AdamW at 1e-3 instead of LARS", {"ssl_optimizer": "adamw", "ssl_lr": 0.001}),
}


def one(cfg: Mapping[str, Any], overrides: Mapping[str, Any], seed: int, epochs: int) -> dict:
    """One recipe on one seed: pretrain (or load), then probe (stored beside the run)."""
    c = config_mod.load_profile(cfg["profile"], {k: v for k, v in cfg.items() if k != "profile"},
                                **{**overrides, "seed": seed, "ssl_epochs": epochs})
    warm = min(c["ssl_warmup_epochs"], max(0, epochs - 1))
    c = c.replace(ssl_warmup_epochs=warm)
    t0 = time.perf_counter()
    result = pretrain(c)
    stored = Path(result["run"]) / "screen-probes.json"
    if stored.is_file():
        probes = runs.read_json(stored)
    else:
        probes = probe_backbone(c, Path(result["backbone"]))
        runs.write_json(stored, probes)
    return {"seed": seed, "run": result["run"], "train_seconds": result.get("train_seconds"),
            "wall_seconds": round(time.perf_counter() - t0, 1), **probes}


def screen(cfg: Mapping[str, Any], recipes: Mapping[str, tuple[str, dict]] | None = None, seeds: int = 2,
           epochs: int = 2) -> dict:
    """Every recipe on seeds 0..seeds-1 at ``epochs`` epochs; the summary (mean +- sd over seeds)
    and each recipe's paired difference from the first (the reference) on the validation linear
    probe, the test linear probe and the test k-NN."""
    recipes = dict(RECIPES if recipes is None else recipes)
    for name, value, low in (("seeds", seeds, 2), ("epochs", epochs, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise config_mod.ConfigError(f"{name}={value!r} is not allowed: an integer >= {low}")
    for name, (_, overrides) in recipes.items():
        unknown = [k for k in overrides if k not in config_mod.PARAMETERS]
        if unknown:
            raise config_mod.ConfigError(f"recipe {name!r}: unknown parameter(s) {unknown}")
    config_mod.validate(cfg)
    rows = {}
    for i, (name, (_, overrides)) in enumerate(recipes.items()):
        rows[name] = []
        for s in range(seeds):
            print(f"lossless screen: {name} ({i + 1}/{len(recipes)}), seed {s + 1}/{seeds}", file=sys.stderr)
            rows[name].append(one(cfg, overrides, s, epochs))
    reference = next(iter(recipes))
    metrics = ("linear_val", "knn_val", "linear_test", "knn_test")
    summary = {name: {m: mean_std([r[m] for r in rs]) for m in metrics} for name, rs in rows.items()}
    for name, rs in rows.items():
        summary[name]["minutes"] = float(np.mean([r["train_seconds"] or 0 for r in rs])) / 60
        summary[name]["minus_reference"] = {
            m: paired_difference([r[m] for r in rs], [r[m] for r in rows[reference]]) for m in metrics}
    best = max(recipes, key=lambda n: summary[n]["linear_val"]["mean"])
    return {"profile": cfg["profile"], "epochs": epochs, "seeds": seeds, "reference": reference,
            "recipes": {n: {"what": w, "overrides": o} for n, (w, o) in recipes.items()},
            "runs": rows, "summary": summary, "best_by_validation": best,
            "base": {k: cfg[k] for k in ("backbone", "width", "ssl_batch_size", "ssl_lr", "projector",
                                          "crop_scale_min", "blur_sigma_max", "jitter_strength")}}


def rows(result: Mapping[str, Any]) -> list[dict]:
    """One row per recipe: what it changes, its probes (mean over seeds) and its difference from
    the reference on the validation linear probe."""
    from ..tables import interval, pm
    out = []
    for name, s in result["summary"].items():
        d = s["minus_reference"]["linear_val"]
        out.append({"recipe": name, "what it changes": result["recipes"][name]["what"],
                    "linear probe, val": pm(s["linear_val"]), "k-NN, val": pm(s["knn_val"]),
                    "linear probe, test": pm(s["linear_test"]), "k-NN, test": pm(s["knn_test"]),
                    "minus the profile (val linear, points)": "" if name == result["reference"]
                    else f"{100 * d['mean']:+.2f} {interval(d)}",
                    "minutes": s["minutes"]})
    return out
