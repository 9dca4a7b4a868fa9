"""The backbone study for the ``cpu`` profile's Barlow Twins recipe (the study appendix).

Each recipe is a set of parameter overrides on the profile, pretrained at the **main line's
length** (the profile's ``ssl_epochs`` unless a recipe sets its own) and judged by the frozen
features' k-NN and linear-probe accuracy. It runs in two rounds, as successive halving does:
every recipe on the first ``pilot_seeds`` seeds; then the ``finalists`` best by validation and
the profile's own recipe on ``seeds`` seeds (a recipe also keeps any further seed whose run is
already stored, from an earlier round of a study that grew), each seed a labelled set and a pretraining run, the
difference from the profile paired by seed with a 95% interval. Recipes are chosen by
**validation** accuracy (the linear probe trained on the labelled images, scored on the
validation images); test accuracy is reported beside it and never used to choose.

Every pretraining is a run folder of its own, so a stopped study resumes where it was, and
``lossless experiment screen`` writes the result as JSON (``benchmarks/results/screen-<profile>.json``
is the record the appendix shows; ``--out`` elsewhere).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .. import config as config_mod
from .. import runs
from ..comparison import Comparison
from ..tables import Verdict
from ..evaluate import mean_std
from ..pretrain import pretrain, pretrain_dir
from .claims import probe_backbone

# name -> (what it changes, overrides). The first is the profile's own recipe, the reference.
RECIPES: dict[str, tuple[str, dict]] = {
    "profile": ("the profile's own recipe", {}),
    "no-blur": ("no blur (sigma 0.1 px: the kernel is the identity)", {"blur_sigma_max": 0.1}),
    "projector-512": ("a narrower projector (3 x 512)", {"projector": "512-512-512"}),
    "resnet10-width-0.5": ("a wider, shallower network (ResNet-10 at half width, 256 features), 8 epochs: "
                           "fewer minutes than the profile's", {"backbone": "resnet10", "width": 0.5, "ssl_epochs": 8}),
    "epochs-27": ("half as many epochs again (27)", {"ssl_epochs": 27}),
    "batch-128": ("batch 128: twice the steps, the rate scaled by 128/256", {"ssl_batch_size": 128}),
    "weight-decay-3e-5": ("weight decay 3e-5 (30x): against the 1/32 loss scale, the ratio of CIFAR recipes",
                          {"ssl_weight_decay": 3e-5}),
    "crop-0.5": ("milder crops (at least half the image, not a fifth)", {"crop_scale_min": 0.5}),
    "lars-eta-0.01": ("LARS trust coefficient 0.01 (10x): each weight matrix moves ten times further a step, "
                      "lr x eta = 0.006 as in solo-learn's CIFAR Barlow Twins (0.3 x 0.02)", {"ssl_lars_eta": 0.01}),
    "lars-eta-0.02": ("LARS trust coefficient 0.02: each weight matrix moves twice as far a step as at 0.01 "
                      "(lr x eta = 0.012)", {"ssl_lars_eta": 0.02}),
    "resnet18-width-0.375": ("a wider network for the whole schedule: ResNet-18 at 3/8 width (192 features; "
                             "1.5x the channels, 2.25x the backbone's multiply-adds)", {"width": 0.375}),
}


def chosen_recipes(names: list[str]) -> dict[str, tuple[str, dict]]:
    """The profile's own recipe (the reference) and the named ones, in that order; an unknown
    name is a one-line error listing the known ones."""
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise config_mod.ConfigError(f"--recipes: unknown recipe(s) {unknown}; known: {', '.join(RECIPES)}")
    reference = next(iter(RECIPES))
    return {reference: RECIPES[reference], **{n: RECIPES[n] for n in names if n != reference}}


METRICS = ("linear_val", "knn_val", "linear_test", "knn_test")
METRIC_NAMES = {"linear_val": "validation linear probe", "knn_val": "validation k-NN",
                "linear_test": "test linear probe", "knn_test": "test k-NN"}


def recipe_config(cfg: Mapping[str, Any], overrides: Mapping[str, Any], seed: int, epochs: int):
    """The configuration of one recipe on one seed. A recipe that sets ``ssl_epochs`` keeps its
    own length."""
    c = config_mod.load_profile(cfg["profile"], {k: v for k, v in cfg.items() if k != "profile"},
                                **{"seed": seed, "ssl_epochs": epochs, **overrides})
    warm = min(c["ssl_warmup_epochs"], max(0, c["ssl_epochs"] - 1))
    return c.replace(ssl_warmup_epochs=warm)


def finished(cfg: Mapping[str, Any], overrides: Mapping[str, Any], seed: int, epochs: int) -> bool:
    """Whether that recipe's pretraining on that seed has already run to its end."""
    return runs.find_result(pretrain_dir(recipe_config(cfg, overrides, seed, epochs))) is not None


def one(cfg: Mapping[str, Any], overrides: Mapping[str, Any], seed: int, epochs: int) -> dict:
    """One recipe on one seed: pretrain (or load), then probe (stored beside the run)."""
    c = recipe_config(cfg, overrides, seed, epochs)
    t0 = time.perf_counter()
    result = pretrain(c)
    stored = Path(result["run"]) / "screen-probes.json"
    probes = runs.read_json(stored) if stored.is_file() else {}
    if "linear_c" not in probes:  # absent, or stored before k and C were chosen on validation
        probes = probe_backbone(c, Path(result["backbone"]))
        runs.write_json(stored, probes)
    return {"seed": seed, "run": result["run"], "train_seconds": result.get("train_seconds"),
            "img_per_s": result.get("img_per_s"), "epochs": c["ssl_epochs"],
            "wall_seconds": round(time.perf_counter() - t0, 1), **probes}


def _count(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise config_mod.ConfigError(f"{name}={value!r} is not allowed: an integer >= {low}")


def screen(cfg: Mapping[str, Any], recipes: Mapping[str, tuple[str, dict]] | None = None, seeds: int = 3,
           epochs: int | None = None, pilot_seeds: int = 1, finalists: int = 1) -> dict:
    """Every recipe on seeds ``0..pilot_seeds-1``; the reference (the first recipe) and the
    ``finalists`` best others by validation linear probe on seeds ``0..seeds-1``; all at
    ``epochs`` (default: the profile's ``ssl_epochs``). Returns the runs, each recipe's summary
    (mean +- sd over its seeds), its paired difference from the reference over the seeds both
    ran, and the best recipe by validation among those with ``seeds`` seeds."""
    recipes = dict(RECIPES if recipes is None else recipes)
    epochs = cfg["ssl_epochs"] if epochs is None else epochs
    for name, value, low in (("seeds", seeds, 2), ("epochs", epochs, 1), ("pilot_seeds", pilot_seeds, 1),
                             ("finalists", finalists, 0)):
        _count(name, value, low)
    if pilot_seeds > seeds:
        raise config_mod.ConfigError(f"pilot_seeds={pilot_seeds} is not allowed: at most seeds={seeds}")
    for name, (_, overrides) in recipes.items():
        unknown = [k for k in overrides if k not in config_mod.PARAMETERS]
        if unknown:
            raise config_mod.ConfigError(f"recipe {name!r}: unknown parameter(s) {unknown}")
    config_mod.validate(cfg)
    reference = next(iter(recipes))
    rows: dict[str, list[dict]] = {name: [] for name in recipes}

    def run(name: str, seed_list) -> None:
        for s in seed_list:
            if any(r["seed"] == s for r in rows[name]):
                continue
            print(f"lossless screen: {name}, seed {s}", file=sys.stderr)
            rows[name].append(one(cfg, recipes[name][1], s, epochs))

    for name in recipes:                                   # round 1: every recipe, the pilot seeds
        run(name, range(pilot_seeds))
    pilot = {n: float(np.mean([r["linear_val"] for r in rs])) for n, rs in rows.items()}
    chosen = sorted((n for n in recipes if n != reference), key=lambda n: -pilot[n])[:finalists]
    for name in [reference] + chosen:                      # round 2: the finalists, every seed
        run(name, range(seeds))
    for name in recipes:                                   # and every seed already run (a study
        run(name, [s for s in range(seeds)                 # that grew keeps what it measured)
                   if finished(cfg, recipes[name][1], s, epochs)])

    summary = {name: {m: mean_std([r[m] for r in rs]) for m in METRICS} for name, rs in rows.items()}
    for name, rs in rows.items():
        summary[name]["seeds"] = len(rs)
        summary[name]["minutes"] = float(np.mean([r["train_seconds"] or 0 for r in rs])) / 60
        summary[name]["minus_reference"] = {  # for a reader of the JSON; chapters use comparison()
            m: comparison({"runs": rows, "reference": reference}, name, m).to_dict() for m in METRICS}
    full = [n for n in recipes if summary[n]["seeds"] >= seeds]
    best = max(full, key=lambda n: summary[n]["linear_val"]["mean"])
    return {"profile": cfg["profile"], "epochs": epochs, "seeds": seeds, "pilot_seeds": pilot_seeds,
            "finalists": chosen, "reference": reference,
            "recipes": {n: {"what": w, "overrides": o} for n, (w, o) in recipes.items()},
            "runs": rows, "summary": summary, "best_by_validation": best,
            "base": {k: cfg[k] for k in ("backbone", "width", "ssl_epochs", "ssl_batch_size", "ssl_lr", "ssl_lars_eta",
                                          "projector", "crop_scale_min", "blur_sigma_max", "jitter_strength")}}


PROBES = ("linear_val", "knn_val")  # what judges a recipe: both probes, on the validation images


def comparison(result: Mapping[str, Any], name: str, metric: str) -> Comparison:
    """Recipe ``name`` minus the reference recipe on ``metric`` (one of :data:`METRICS`), paired
    over the seeds both ran."""
    reference = result["reference"]
    ref = {r["seed"]: r for r in result["runs"][reference]}
    mine = [r for r in result["runs"][name] if r["seed"] in ref]
    return Comparison(a=[r[metric] for r in mine], b=[ref[r["seed"]][metric] for r in mine],
                      seeds=[r["seed"] for r in mine], arms=(name, reference),
                      what=f"{name} minus {reference}", measure=METRIC_NAMES.get(metric, metric))


def adoptable(result: Mapping[str, Any]) -> list[str]:
    """The recipes (run on every seed of the study) that a profile should take: a gain on at
    least one validation probe and a loss on neither (each by the verdict of its paired
    :func:`comparison`), largest summed gain first. The book's targets are on both probes, so
    both judge."""
    chosen = []
    for name, s in result["summary"].items():
        if name == result["reference"] or s["seeds"] < result["seeds"]:
            continue
        kinds = [comparison(result, name, m).kind() for m in PROBES]
        if Verdict.GAIN in kinds and Verdict.LOSS not in kinds:
            chosen.append(name)
    return sorted(chosen, key=lambda n: -sum(comparison(result, n, m).mean for m in PROBES))


def taken(result: Mapping[str, Any], cfg: Mapping[str, Any]) -> str | None:
    """The recipe whose changes the profile ``cfg`` has taken since the study (every parameter
    it changes now has the recipe's value, and the study's base had another), or None."""
    base = result.get("base", {})
    for name, r in result["recipes"].items():
        over = r["overrides"]
        if over and name != result["reference"] and all(cfg.get(k) == v for k, v in over.items()) \
                and any(base.get(k, config_mod.PARAMETERS[k][0]) != over[k] for k in over):
            return name
    return None


def rows(result: Mapping[str, Any]) -> list[dict]:
    """One row per recipe: what it changes, its seeds, its probes (mean +- sd over seeds) and its
    differences from the reference on both validation probes (an interval from 2 seeds on)."""
    from ..tables import pm

    def shown(stats):  # one seed has no spread to show
        return pm(stats) if stats["n"] >= 2 else f"{100 * stats['mean']:.2f}%"
    out = []
    for name, s in result["summary"].items():
        def diff(m):
            c = comparison(result, name, m)
            return "" if name == result["reference"] else (
                f"{c.number()} {c.interval()}" if c.n >= 2 else f"{c.number()} (1 seed)")
        out.append({"recipe": name, "what it changes": result["recipes"][name]["what"], "seeds": s.get("seeds"),
                    "linear probe, val": shown(s["linear_val"]), "k-NN, val": shown(s["knn_val"]),
                    "linear probe, test": shown(s["linear_test"]), "k-NN, test": shown(s["knn_test"]),
                    "minus the profile: val linear (points)": diff("linear_val"),
                    "minus the profile: val k-NN (points)": diff("knn_val"), "minutes": s["minutes"]})
    return out


# What each recipe changes, for reading the study as a whole: which lever moved the features.
LEVERS = {"epochs-27": "length", "batch-128": "length",
          "resnet10-width-0.5": "size", "projector-512": "size", "resnet18-width-0.375": "size",
          "no-blur": "views", "crop-0.5": "views",
          "weight-decay-3e-5": "step", "lars-eta-0.01": "step", "lars-eta-0.02": "step"}
LEVER_WORDS = {"length": "more training (more epochs, or more and smaller steps)",
               "size": "another size of network or projector",
               "views": "milder views", "step": "the optimiser's step",
               "other": "other changes"}


def lever_rows(records: list[Mapping[str, Any]]) -> list[dict]:
    """One row per recipe of every study round (each against its own round's reference), in
    the order of :data:`LEVER_WORDS`: the lever it pulls, its seeds, and the verdict of its paired
    difference on each validation probe."""
    out = []
    for i, rec in enumerate(records, 1):
        for name in rec["recipes"]:
            if name == rec["reference"]:
                continue
            cs = {m: comparison(rec, name, m) for m in PROBES}
            out.append({"lever": LEVERS.get(name, "other"), "round": i, "recipe": name,
                        "what it changes": rec["recipes"][name]["what"], "seeds": cs["knn_val"].n,
                        **{f"{METRIC_NAMES[m]}": f"{c.number()}: {c.verdict()}" for m, c in cs.items()},
                        "_gains": [m for m, c in cs.items() if c.kind() is Verdict.GAIN]})
    order = list(LEVER_WORDS)
    return sorted(out, key=lambda r: (order.index(r["lever"]), r["round"]))


def best_reached(records: list[Mapping[str, Any]]) -> dict:
    """The recipe, among those run on every seed of their round, with the highest mean test
    linear probe over all rounds (reported, never used to choose), and its test probes."""
    best = None
    for rec in records:
        for name, s in rec["summary"].items():
            if s["seeds"] < rec["seeds"]:
                continue
            if best is None or s["linear_test"]["mean"] > best["linear_test"]:
                best = {"recipe": name, "record": rec, "seeds": s["seeds"],
                        "linear_test": s["linear_test"]["mean"], "knn_test": s["knn_test"]["mean"]}
    return best


# the backbone's targets: (what, the key it is read from, the goal, the direction, the unit)
TARGETS = (("linear probe, frozen features (test)", "linear_probe", 0.82, ">=", "%"),
           ("k-NN probe, frozen features (test)", "knn_probe", 0.80, ">=", "%"),
           ("linear probe minus pixels' logistic regression", "linear_probe-pixel_linear", 0.04, ">=", "pt"),
           ("k-NN probe minus pixels' k-NN", "knn_probe-pixel_knn", 0.04, ">=", "pt"),
           ("validation k-NN: best epoch minus the last", "knn_below_best", 0.005, "<=", "pt"),
           ("pretraining minutes", "minutes", 20, "<=", "min"))


def targets(result: Mapping[str, Any], knn_course: Sequence[float], minutes: float) -> list[dict]:
    """The backbone against :data:`TARGETS`: a claims result's probes (means over its seeds; the
    differences from the pixels paired by seed), the validation k-NN's course over the
    pretraining epochs, and ``minutes``, the pretraining minutes of the run the reader's machine
    holds (a record's own minutes were another machine's). One row per target."""
    S = result["summary"]
    got = {"linear_probe": S["linear_probe"]["mean"], "knn_probe": S["knn_probe"]["mean"],
           "knn_below_best": max(knn_course) - knn_course[-1], "minutes": minutes}
    for a, b in (("linear_probe", "pixel_linear"), ("knn_probe", "pixel_knn")):
        c = Comparison.paired(result["seeds"], a, b)
        got[f"{a}-{b}"] = c.mean
        got[f"{a}-{b} interval"] = c.interval()
    out = []
    for what, key, goal, op, unit in TARGETS:
        v = got[key]
        shown, aim = {"%": (f"{100 * v:.2f}%", f"{op} {100 * goal:.0f}%"),
                      "pt": (f"{100 * v:+.2f} points", f"{op} {100 * goal:g} points"),
                      "min": (f"{v:.1f}", f"{op} {goal}")}[unit]
        if f"{key} interval" in got:
            shown += f" {got[key + ' interval']}"
        out.append({"measure": what, "measured": shown, "target": aim,
                    "met": "yes" if (v >= goal if op == ">=" else v <= goal) else "no"})
    return out


def values(first: Mapping[str, Any], second: Mapping[str, Any], cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What the study's appendix glues: the rounds' provenance, the first round's best recipe and
    its difference, the recipes worth taking, the best reached, and the levers that moved."""
    from . import table1 as t1
    from ..book import read_record
    rounds = [first, second]
    best = first["best_by_validation"]
    top = best_reached(rounds)
    moved = sorted({r["lever"] for r in lever_rows(rounds) if r["_gains"]})
    wide = second["summary"].get("resnet18-width-0.375")
    s4 = read_record("section4", cfg["profile"])
    ahead = []
    if s4:
        rc = s4["compare"]
        ahead = list(dict.fromkeys(t1.labels(rc)[k] for k in rc["runs"] if k != "barlow"
                                   for m in ("linear_probe", "knn_probe")
                                   if t1.comparison(rc, k, "barlow", m).kind() is Verdict.GAIN))
    linear_goal, knn_goal = TARGETS[0][2], TARGETS[1][2]
    return {"scr_epochs": first["epochs"], "scr_when": f"{first['time']} on {first['cpu']}",
            "scr_remake": first.get("command", "lossless experiment screen --record"),
            "scr_best": best, "scr_best_points": 100 * comparison(first, best, "linear_val").mean
            if best != first["reference"] else 0.0,
            "scr_adoptable": ", ".join(adoptable(first)) or "none",
            "scr_taken": taken(first, cfg) or "nothing",
            "scr2_when": f"{second['time']} on {second['cpu']}", "scr2_remake": second.get("command", ""),
            "scr2_adoptable": ", ".join(adoptable(second)) or "none",
            "scr_top": "the profile's own recipe" if top["recipe"] == top["record"]["reference"] else top["recipe"],
            "scr_top_seeds": top["seeds"], "scr_top_linear": top["linear_test"], "scr_top_knn": top["knn_test"],
            "scr_linear_short": 100 * (linear_goal - top["linear_test"]),
            "scr_knn_short": 100 * (knn_goal - top["knn_test"]),
            "scr_moved": ", ".join(LEVER_WORDS[m].split(" (")[0] for m in moved) or "none",
            "scr_wide_ratio": (wide["minutes"] / second["summary"][second["reference"]]["minutes"]
                               if wide else float("nan")),
            "scr_s4_ahead": ", ".join(ahead) or "none"}
