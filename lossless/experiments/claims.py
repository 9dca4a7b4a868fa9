"""The experiment that tests the paper's claim (sections 3.4, 3.5, 5), over seeds.

For each seed (which picks the labelled set): three baselines that use no pretraining (k-NN
and logistic regression on raw pixels, their setting chosen on validation, and the network
trained from scratch, its setting chosen on validation from :data:`SUP_GRID`), a k-NN probe
and a linear probe on frozen Barlow Twins features, Barlow Twins + fine-tuning, + pseudo-labels
with the global rule, and the control: the rounds' training without pseudo-labels; with
``all_rules`` also the balanced, threshold and gradual rules and the rounds started from the
supervised-only classifier; with ``fixmatch_seeds`` FixMatch on the first seeds. "Pretraining helps" is
tested against the strongest baseline by mean. Pretraining uses no labels, so one run (the configuration's own
seed) serves every seed; its images are the labelled + unlabelled images of that seed's split,
so for other seeds some of their validation images (never a label, never a test image) were
among the pretraining images. Reported: mean +- std per method and, for "pretraining helps"
and "pseudo-labels help", the paired difference over seeds with a 95% Student-t interval.
A label-budget curve repeats the first comparison at several labels per class.

Every piece is a run folder of its own stage, so a stopped experiment resumes where it was.
"""
from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .. import config as config_mod
from .. import runs
from ..augment import Augmenter
from ..engine import resolve_device, resolve_precision
from ..errors import LosslessError
from ..comparison import Comparison, rows
from ..evaluate import mean_std
from ..finetune import finetune, load_backbone
from ..fixmatch import fixmatch
from ..pretrain import backbone_for, load_data, pretrain, split_features, split_probes
from ..probes import C_GRID, K_GRID, embed, linear_probe_accuracy, pixel_probes
from ..pseudo import pseudo_label, round_seconds
from ..tables import pm

METHODS = ("pixel_knn", "pixel_linear", "supervised", "knn_probe", "linear_probe", "barlow_finetune",
           "pseudo_global")
# what a user could do with the same labels and no pretraining: claim A is tested against the strongest
BASELINES = ("pixel_knn", "pixel_linear", "supervised")
# the supervised-only baseline's grid, each setting trained on the configuration's own seed and
# judged by validation accuracy; the choice then trains every seed (epochs: the best checkpoint
# by validation loss within ft_epochs). On the cpu profile the grid moved three times, each time its
# choice sat at its edge: rates 0.02-0.1 and crops 0.2-0.5 chose (0.1, 0.5); 0.05-0.2 chose
# (0.2, 0.5), every crop-0.2 setting below its crop-0.5 twin; rates 0.1-0.4, decays 1e-5 and
# 5e-4 and crops 0.5 and 0.8 chose (0.1, 1e-5, 0.8), the lowest rate and decay and the largest
# crop, so each axis grew a value past it (no decay, whole-image crops); that grid chose
# (0.4, 0.0, 0.9), its top rate, so the rate grew to 0.8. The configuration's
# own setting is trained as well when the grid lacks it (a row of its own, "default").
SUP_GRID = {"sup_lr_backbone": (0.05, 0.1, 0.2, 0.4, 0.8), "ft_weight_decay": (0.0, 1e-5, 5e-4),
            "crop_scale_min": (0.5, 0.8, 0.9, 1.0)}
RULES = ("global", "balanced", "threshold", "gradual")  # pseudo.py's selection rules (and "none", the control)


# what picks the labelled set and test images (the data and the split), and how the probes run
PROBE_KEYS = ("dataset", "data_root", "labels_per_class", "val_per_class", "seed", "num_classes", "synthetic_train",
              "synthetic_test", "synthetic_classes", "synthetic_size", "synthetic_channels", "image_size", "knn_k",
              "precision", "channels_last", "device")


def frozen_probes(cfg: Mapping[str, Any], backbone_path: Path) -> dict:
    """k-NN and linear probe test accuracy of the frozen pretrained backbone on ``cfg``'s split.

    Stored once beside the backbone (``probes/<hash>.json``, keyed by the backbone file and
    what picks the labelled set), so the chapters that show the same probes read them."""
    backbone_path = Path(backbone_path)
    stat = backbone_path.stat()
    key = {"backbone": str(backbone_path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
           **{k: cfg.get(k) for k in PROBE_KEYS}, "version": 2}  # 2: k and C chosen on validation
    stored = backbone_path.parent / "probes" / f"{runs.config_hash(key)}.json"
    if stored.is_file():
        return runs.read_json(stored)
    out = _frozen_probes(cfg, backbone_path)
    runs.write_json(stored, out)
    return out


def _frozen_probes(cfg: Mapping[str, Any], backbone_path: Path) -> dict:
    out = probe_backbone(cfg, backbone_path)
    return {"knn_probe": out["knn_test"], "linear_probe": out["linear_test"],
            "probe_settings": {"k": out["knn_k"], "C": out["linear_c"]}}


def frozen_features(cfg: Mapping[str, Any], backbone_path: Path):
    """``cfg``'s split and a function from (N, H, W, C) uint8 images to the frozen backbone's
    features (its pretraining normalisation, the configured device and precision)."""
    device = resolve_device(cfg["device"])
    amp = resolve_precision(cfg["precision"], device)
    split = load_data(cfg, False)
    backbone = backbone_for(cfg, split.data)
    ckpt = load_backbone(backbone_path, cfg, backbone)
    backbone = backbone.to(device)
    aug = Augmenter([], ckpt["mean"], ckpt["std"])
    return split, lambda images: embed(backbone, images, aug, device, amp)


def probe_backbone(cfg: Mapping[str, Any], backbone_path: Path) -> dict:
    """``pretrain.split_probes`` of a frozen backbone: the labelled images' features as the bank
    and training set, k and C chosen on validation (the pixels' protocol). Returns ``knn_val``,
    ``linear_val``, ``knn_test``, ``linear_test``, ``knn_k`` and ``linear_c``."""
    split, features = frozen_features(cfg, backbone_path)
    p = split_probes(split, split_features(split, features))
    return {"knn_val": p["knn_val"], "linear_val": p["linear_val"], "knn_test": p["knn_test"],
            "linear_test": p["linear_probe_test"], "knn_k": p["knn_k"], "linear_c": p["linear_c"]}


def pixel_baselines(cfg: Mapping[str, Any]) -> dict:
    """``probes.pixel_probes`` on ``cfg``'s split, stored in a run folder of its own (stage
    ``pixels``) keyed by what picks the split and the two grids."""
    keys = {**{k: cfg.get(k) for k in PROBE_KEYS if k not in ("precision", "channels_last", "device", "knn_k")},
            "c_grid": list(C_GRID), "k_grid": list(K_GRID), "version": 1}
    stored = runs.run_dir(cfg, "pixels", keys) / "result.json"
    if stored.is_file():
        return runs.read_json(stored)
    out = pixel_probes(load_data(cfg, False))
    runs.write_json(stored, out)
    return out


def _with(c: Mapping[str, Any], **kw) -> config_mod.Config:
    return config_mod.load_profile(c["profile"], {k: v for k, v in c.items() if k != "profile"}, **kw)


def _best_epoch(run: Path) -> int | None:
    """The epoch whose checkpoint a classifier run kept (the lowest validation loss)."""
    history = runs.read_jsonl(Path(run) / "metrics.jsonl") if (Path(run) / "metrics.jsonl").is_file() else []
    losses = [(r["val_loss"], r["epoch"]) for r in history if "val_loss" in r]
    return min(losses)[1] if losses else None


def supervised_grid(cfg: Mapping[str, Any], grid: Mapping[str, tuple] | None = None) -> dict:
    """The supervised-only baseline tuned: every setting of ``grid`` (default :data:`SUP_GRID`),
    and ``cfg``'s own where the grid lacks it, trained from random weights on ``cfg``'s seed; the
    choice is the highest validation accuracy (the first of equals, in grid order). Test accuracy
    is never looked at."""
    grid = dict(SUP_GRID if grid is None else grid)
    unknown = [k for k in grid if k not in config_mod.PARAMETERS]
    if unknown or not grid or any(not v for v in grid.values()):
        raise config_mod.ConfigError(f"supervised grid {grid!r}: give parameter names, each with one or more values")
    rows = []
    settings = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    own = {k: cfg[k] for k in grid}
    for setting in settings + ([own] if own not in settings else []):
        r = finetune(_with(cfg, **setting), "random")
        rows.append({**setting, "val_accuracy": r["val_accuracy"], "best_epoch": _best_epoch(r["run"]),
                     "default": setting == own})
    best = max(range(len(rows)), key=lambda i: (rows[i]["val_accuracy"], -i))
    return {"grid": {k: list(v) for k, v in grid.items()}, "rows": rows, "seed": cfg["seed"],
            "choice": {k: rows[best][k] for k in grid}, "epochs": cfg["ft_epochs"],
            "val_images": len(load_data(cfg, False).labels("val"))}


def grid_edge(grid: Mapping[str, Any]) -> list[str]:
    """The parameters in which ``supervised_grid``'s choice is the grid's smallest or largest
    value (of two or more) and the parameter's allowed values go on past it (its domain in
    :data:`config.PARAMETERS`): where a wider grid might choose otherwise. A choice at the end
    of what is allowed (no weight decay; crops of the whole image) is not an edge."""
    def beyond(key: str, value: float, direction: float) -> bool:
        if key not in config_mod.PARAMETERS:
            return True
        return bool(config_mod.PARAMETERS[key][2].check(math.nextafter(value, direction)))

    edge = []
    for k, v in grid["grid"].items():
        c = grid["choice"][k]
        if len(v) > 1 and ((c == min(v) and beyond(k, c, -math.inf)) or (c == max(v) and beyond(k, c, math.inf))):
            edge.append(k)
    return edge


def _grid_error(grid: Mapping[str, Any]) -> tuple[float, float]:
    """The grid's best validation accuracy and its binomial standard error on ``val_images``."""
    best = max(r["val_accuracy"] for r in grid["rows"])
    return best, math.sqrt(best * (1 - best) / grid["val_images"])


def grid_top(grid: Mapping[str, Any]) -> list[dict]:
    """The rows of ``supervised_grid`` within one standard error of the best validation
    accuracy (the binomial error of the best on the grid's ``val_images``): the settings its
    validation images cannot tell apart from the choice."""
    best, se = _grid_error(grid)
    return [r for r in grid["rows"] if r["val_accuracy"] >= best - se - 1e-12]


def fixmatch_budget(result: Mapping[str, Any]) -> dict | None:
    """FixMatch's training minutes per labelled set in a claims run or record, and the
    pipeline's: pretraining once, then fine-tuning and the best rule's pseudo-label rounds
    (medians over the seeds FixMatch ran on). None without FixMatch; ``pipeline_minutes`` and
    ``ratio`` are None in records made before they kept the fine-tuning and rounds' seconds."""
    rows = [r for r in result["seeds"] if "fixmatch_seconds" in r]
    if not rows:
        return None
    fm = float(np.median([r["fixmatch_seconds"] for r in rows])) / 60
    pre = result["pretraining"]["train_seconds"] / 60
    epochs = {r.get("fixmatch_epochs") for r in rows}
    keys = ("barlow_finetune_seconds", f"{result['best_pseudo_rule']}_seconds")
    kept = all(k in r for r in rows for k in keys)
    after = float(np.median([sum(r[k] for k in keys) for r in rows])) / 60 if kept else None
    return {"passes": epochs.pop() if len(epochs) == 1 else None, "seeds": len(rows),
            "fixmatch_minutes": fm, "pretraining_minutes": pre, "after_minutes": after,
            "pipeline_minutes": pre + after if kept else None,
            "ratio": fm / (pre + after) if kept else None}


def fixmatch_lengths(records: Sequence[Mapping[str, Any] | None]) -> list[tuple[dict, Mapping[str, Any]]]:
    """The claims records (None skipped) with FixMatch on two seeds or more, as
    ``(fixmatch_budget(record), record)``, fewest FixMatch minutes first. The records must be
    one configuration but ``fm_epochs`` (each seed's Barlow Twins + fine-tuning the same run):
    lengths from other labelled sets or backbones would not be comparable."""
    out, start = [], None
    for rec in filter(None, records):
        b = fixmatch_budget(rec)
        if b is None or b["seeds"] < 2:
            continue
        own = [(r["seed"], r["barlow_finetune"]) for r in rec["seeds"]]
        if start is not None and own != start:
            raise LosslessError(f"fixmatch_lengths: the record made by `{rec.get('command')}` has "
                                "other labelled sets or another backbone than the first; give records "
                                "that differ only in fm_epochs")
        start = own
        out.append((b, rec))
    return sorted(out, key=lambda pair: pair[0]["fixmatch_minutes"])


def fixmatch_length_rows(records: Sequence[Mapping[str, Any] | None]) -> list[dict]:
    """One table row per :func:`fixmatch_lengths` entry: FixMatch's passes, minutes and their
    ratio to the pipeline's, its test accuracy, and Barlow Twins + fine-tuning and the whole
    pipeline (the best rule) minus it, paired over its seeds, each with its verdict."""
    out = []
    for b, rec in fixmatch_lengths(records):
        row = {"passes": b["passes"], "FixMatch minutes": b["fixmatch_minutes"],
               "x the pipeline's": b["ratio"], "seeds": b["seeds"],
               "FixMatch": pm(mean_std([r["fixmatch"] for r in rec["seeds"] if "fixmatch" in r]))}
        for name, arm in (("Barlow Twins + fine-tuning", "barlow_finetune"),
                          ("the pipeline", rec["best_pseudo_rule"])):
            row[f"{name} minus FixMatch"] = comparison(rec, arm, "fixmatch").words()
        out.append(row)
    return out


def one_seed(cfg: Mapping[str, Any], seed: int, backbone_path: Path, pseudo: bool = True,
             all_rules: bool = False, supervised_setting: Mapping[str, Any] | None = None,
             with_fixmatch: bool = False) -> dict:
    """Every method on seed ``seed``'s labelled set, with the control ``pseudo_none`` (the rounds'
    training without pseudo-labels). ``supervised_setting``: the tuned supervised-only
    baseline's parameters (``supervised_grid``'s choice). ``with_fixmatch``: FixMatch too.
    ``all_rules``: besides the global rule, the balanced, threshold and gradual rules and a second
    control (``supervised_pseudo_global``: the global rule's rounds started from the
    supervised-only classifier)."""
    c = _with(cfg, seed=seed)
    out = {"seed": seed}
    pixels = pixel_baselines(c)
    out["pixel_knn"], out["pixel_linear"] = pixels["knn_test"], pixels["linear_probe_test"]
    out["pixel_settings"] = {"k": pixels["knn_k"], "C": pixels["linear_c"]}
    supervised = finetune(_with(c, **(supervised_setting or {})), "random")
    out["supervised"] = supervised["test_accuracy"]
    if with_fixmatch:
        fm = fixmatch(c)
        out["fixmatch"], out["fixmatch_seconds"] = fm["test_accuracy"], fm["train_seconds"]
        out["fixmatch_epochs"] = fm["epochs"]
    start = finetune(c, "barlow", backbone_path)
    out["barlow_finetune"] = start["test_accuracy"]
    out["barlow_finetune_seconds"] = start["train_seconds"]
    out.update(frozen_probes(c, backbone_path))
    if pseudo:
        for rule in (RULES if all_rules else RULES[:1]) + ("none",):
            p = pseudo_label(_with(c, pl_rule=rule), start, backbone_path)
            out[f"pseudo_{rule}"] = p["test_accuracy"]
            out[f"pseudo_{rule}_rounds"] = p["rounds"]
            out[f"pseudo_{rule}_seconds"] = round_seconds(p)
        if all_rules:
            p = pseudo_label(_with(c, pl_rule="global"), supervised, backbone_path)
            out["supervised_pseudo_global"] = p["test_accuracy"]
            out["supervised_pseudo_global_rounds"] = p["rounds"]
    return out


def methods(all_rules: bool, fixmatch: bool = False) -> tuple[str, ...]:
    """The methods a claims run reports, in table order."""
    extra = ("pseudo_balanced", "pseudo_threshold", "pseudo_gradual", "supervised_pseudo_global") if all_rules else ()
    return METHODS + ("pseudo_none",) + extra + (("fixmatch",) if fixmatch else ())


def claims(cfg: Mapping[str, Any], seeds: int = 5, budgets: tuple[int, ...] = (10, 32, 100),
           budget_seeds: int = 3, all_rules: bool = False, fixmatch_seeds: int = 0,
           tune_supervised: bool | Mapping[str, Any] = True) -> dict:
    """Run (or load) everything; write and return the summary. ``all_rules``: see ``one_seed``;
    ``fixmatch_seeds``: FixMatch on the first that many seeds (0: not run; about as many CPU
    minutes a seed as pretraining); ``budget_seeds``: the label-budget curve's seeds (0: no
    curve); ``tune_supervised``: the supervised-only baseline with ``supervised_grid``'s choice
    (False: the configuration's own setting; a mapping: a grid already run, such as a record's
    ``supervised_grid``, whose choice is used without running the grid again)."""
    for name, value, low in (("seeds", seeds, 2), ("budget_seeds", budget_seeds, 0),
                             ("fixmatch_seeds", fixmatch_seeds, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise config_mod.ConfigError(f"{name}={value!r} is not allowed: an integer >= {low} "
                                         f"(seeds of the claim experiment; a paired interval needs two)")
    if fixmatch_seeds > seeds:
        raise config_mod.ConfigError(f"fixmatch_seeds={fixmatch_seeds} is not allowed: at most seeds={seeds} "
                                     f"(FixMatch runs on the first seeds of the experiment)")
    if isinstance(tune_supervised, Mapping):
        if not isinstance(tune_supervised.get("choice"), Mapping) or any(
                k not in config_mod.PARAMETERS for k in tune_supervised["choice"]):
            raise config_mod.ConfigError("tune_supervised: a grid already run needs its 'choice', a mapping of "
                                         "parameter names to values (a record's supervised_grid)")
    elif not isinstance(tune_supervised, bool):
        raise config_mod.ConfigError(f"tune_supervised={tune_supervised!r} is not allowed: true, false or a grid "
                                     f"already run")
    if not budgets or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in budgets):
        raise config_mod.ConfigError(f"budgets={budgets!r} is not allowed: labels per class as integers >= 1")
    if not isinstance(all_rules, bool):
        raise config_mod.ConfigError(f"all_rules={all_rules!r} is not allowed: true or false")
    config_mod.validate(cfg)
    base = pretrain(cfg)
    backbone_path = Path(base["backbone"])
    recorded = isinstance(tune_supervised, Mapping)
    grid = dict(tune_supervised) if recorded else supervised_grid(cfg) if tune_supervised else None
    setting = dict(grid["choice"]) if grid else {}
    per_seed = []
    for s in range(seeds):
        print(f"lossless experiment: seed {s + 1}/{seeds}", file=sys.stderr)
        per_seed.append(one_seed(cfg, s, backbone_path, all_rules=all_rules, supervised_setting=setting,
                                 with_fixmatch=s < fixmatch_seeds))
    summary = {m: mean_std([r[m] for r in per_seed if m in r]) for m in methods(all_rules, fixmatch_seeds > 0)}
    rules = [m for m in summary if m.startswith("pseudo_") and m != "pseudo_none"]
    best_rule = max(rules, key=lambda m: summary[m]["mean"])
    # the strongest baseline by mean, FixMatch included where it ran (then paired on its seeds)
    strongest = max([m for m in BASELINES + ("fixmatch",) if m in summary], key=lambda m: summary[m]["mean"])
    curve = []
    for k in budgets:
        for s in range(budget_seeds):
            c = config_mod.load_profile(cfg["profile"], {kk: v for kk, v in cfg.items() if kk != "profile"},
                                        seed=s, labels_per_class=k)
            curve.append({"labels_per_class": k, "seed": s,
                          "supervised": finetune(_with(c, **setting), "random")["test_accuracy"],
                          "barlow_finetune": finetune(c, "barlow", backbone_path)["test_accuracy"]})
    result = {"pretraining": {k: base.get(k) for k in ("run", "knn_test", "linear_probe_test", "train_seconds")},
              "seeds": per_seed, "summary": summary, "best_pseudo_rule": best_rule,
              "strongest_baseline": strongest, "all_rules": all_rules,
              "label_budget": curve, "supervised_grid": grid, "supervised_grid_recorded": recorded,
              "fixmatch_seeds": fixmatch_seeds}
    result["comparisons"] = [c.to_dict() for c in comparisons(result)]  # for a reader of the JSON
    out = runs.run_dir(cfg, "claims", {"cfg": {k: v for k, v in cfg.items() if k not in ("progress",)},
                                       "seeds": seeds, "budgets": list(budgets), "budget_seeds": budget_seeds,
                                       **({"all_rules": True} if all_rules else {}),
                                       **({"fixmatch_seeds": fixmatch_seeds} if fixmatch_seeds else {}),
                                       **({"sup_grid_choice": setting} if recorded else
                                          {"sup_grid": {k: list(v) for k, v in SUP_GRID.items()}}
                                          if tune_supervised else {})})
    runs.write_json(out / "result.json", result)
    result["written_to"] = str(out / "result.json")
    return result


def comparison(result: Mapping[str, Any], a: str, b: str) -> Comparison:
    """Method ``a`` minus method ``b`` on test accuracy, paired over the seeds of ``result``
    (a run or a record) that ran both (FixMatch runs on the first few). ``a`` may be
    ``"gain on pretrained"`` and ``b`` ``"gain on scratch"``: the global rule's rounds' gain on
    the fine-tuned classifier against their gain on the supervised-only one."""
    return Comparison.paired(result["seeds"], a, b, what=CLAIMS.get((a, b), f"{_label(a)} minus {_label(b)}"),
                             value=_value)


def _value(r: Mapping[str, Any], arm: str) -> float:
    if arm in DERIVED:
        x, y = DERIVED[arm]
        return r[x] - r[y]
    return r[arm]


def _label(arm: str) -> str:
    return LABELS.get(arm, arm)


def comparisons(result: Mapping[str, Any]) -> list[Comparison]:
    """The claims a run tests, in table order: pretraining against the strongest baseline and
    against supervised only; each pseudo-label rule against its fine-tuned start; the pipeline
    against FixMatch (where it ran); the control and the labels' own share; with all rules, the
    rounds on the supervised-only classifier and whether the parts interact."""
    S, per_seed = result["summary"], result["seeds"]
    rules = [m for m in S if m.startswith("pseudo_") and m != "pseudo_none"]
    pairs = [("barlow_finetune", result["strongest_baseline"]), ("barlow_finetune", "supervised")]
    pairs += [(m, "barlow_finetune") for m in rules]
    if any("fixmatch" in r for r in per_seed):
        pairs += [("barlow_finetune", "fixmatch"), (result["best_pseudo_rule"], "fixmatch")]
    pairs += [("pseudo_none", "barlow_finetune"), ("pseudo_global", "pseudo_none")]
    if all("supervised_pseudo_global" in r for r in per_seed):
        pairs += [("supervised_pseudo_global", "supervised"), ("gain on pretrained", "gain on scratch")]
    return [comparison(result, a, b) for a, b in dict.fromkeys(pairs)]


def book_run(cfg: Mapping[str, Any], seeds: int, budget_seeds: int, supervised_grid: str, all_rules: bool = False,
             fixmatch_seeds: int = 0) -> tuple[dict, dict | None]:
    """The results chapter's run (and the appendices' that load it): :func:`claims` with the
    supervised-only baseline's grid either run (``supervised_grid="run"``) or taken from the
    profile's claims record (``"record"``: only its choice trains), and the label-budget curve
    run on ``budget_seeds`` seeds (0: none here; the record's is shown). Returns the result and
    the record (None where the profile has none)."""
    from ..book import read_record
    profile = cfg["profile"]
    rec = read_record("claims", profile)
    if supervised_grid not in ("run", "record"):
        raise config_mod.ConfigError(f"supervised_grid={supervised_grid!r}: choose 'run' or 'record'")
    if supervised_grid == "record" and not (rec and rec.get("supervised_grid")):
        raise config_mod.ConfigError(f"supervised_grid='record': no claims record with a grid for the {profile} "
                                     f"profile; set supervised_grid='run'")
    if budget_seeds == 0 and not (rec and rec.get("label_budget")):
        raise config_mod.ConfigError(f"budget_seeds=0: no claims record with a label-budget curve for the {profile} "
                                     f"profile; set budget_seeds to 1 or more")
    tune = rec["supervised_grid"] if supervised_grid == "record" else True
    return claims(cfg, seeds=seeds, all_rules=all_rules, fixmatch_seeds=fixmatch_seeds, budget_seeds=budget_seeds,
                  tune_supervised=tune), rec


# The paper's figures (800 classes of NYU DL 2021, 32 labels per class, ResNet-34 pretrained for 1,000 epochs).
PAPER = {"barlow_finetune": "43.46% val / 43.34% test", "pseudo_global": "47.66% val / 47.63% test"}
PAPER_COLUMN = "paper (800 classes, another dataset)"
LABELS = {"pixel_knn": "raw pixels, k-NN (k chosen on validation)",
          "pixel_linear": "raw pixels, logistic regression (C chosen on validation)",
          "supervised": "supervised only (random init, tuned on validation)", "knn_probe": "k-NN probe (frozen features)",
          "linear_probe": "linear probe (frozen features)", "barlow_finetune": "Barlow Twins + fine-tune",
          "pseudo_global": "+ pseudo-labels, global top p%", "pseudo_balanced": "+ pseudo-labels, class-balanced",
          "pseudo_threshold": "+ pseudo-labels, confidence threshold with a per-class cap",
          "pseudo_gradual": "+ pseudo-labels, global in smaller rounds",
          "pseudo_none": "control: the rounds' training without pseudo-labels",
          "supervised_pseudo_global": "control: supervised only + pseudo-labels (global)",
          "fixmatch": "FixMatch (random init, labelled + unlabelled images)"}
# the readers' words for a comparison of two methods (arms); others read "<label a> minus <label b>"
CLAIMS = {("barlow_finetune", "supervised"): "pretraining: Barlow Twins + fine-tune minus supervised only",
          ("barlow_finetune", "pixel_linear"):
              "pretraining: Barlow Twins + fine-tune minus logistic regression on pixels",
          ("barlow_finetune", "pixel_knn"): "pretraining: Barlow Twins + fine-tune minus k-NN on pixels",
          ("barlow_finetune", "fixmatch"): "Barlow Twins + fine-tune minus FixMatch (on its seeds)",
          ("barlow_finetune", "linear_probe"): "Barlow Twins + fine-tune minus a linear probe on frozen features",
          ("pseudo_global", "barlow_finetune"): "pseudo-labels, global rule, minus fine-tuned start",
          ("pseudo_balanced", "barlow_finetune"): "pseudo-labels, class-balanced rule, minus fine-tuned start",
          ("pseudo_threshold", "barlow_finetune"):
              "pseudo-labels, threshold rule with a per-class cap, minus fine-tuned start",
          ("pseudo_gradual", "barlow_finetune"): "pseudo-labels, global rule in smaller rounds, minus fine-tuned start",
          ("pseudo_gradual", "pseudo_none"): "pseudo-labels, global rule in smaller rounds, minus the control",
          ("pseudo_none", "barlow_finetune"): "control: the rounds' training without pseudo-labels, minus fine-tuned start",
          ("pseudo_global", "pseudo_none"): "pseudo-labels (global) minus the same training without them",
          ("supervised_pseudo_global", "supervised"):
              "pseudo-labels (global) on the supervised-only classifier, minus that classifier",
          **{(f"pseudo_{rule}", "fixmatch"): f"Barlow Twins + fine-tune + pseudo-labels ({rule}) minus FixMatch"
             for rule in RULES},
          ("gain on pretrained", "gain on scratch"):
              "the rounds' gain on the pretrained classifier minus their gain on the supervised-only one"}
# arms computed from two others, per seed: the global rule's rounds' gain on either start
DERIVED = {"gain on pretrained": ("pseudo_global", "barlow_finetune"),
           "gain on scratch": ("supervised_pseudo_global", "supervised")}


def summary_rows(result: Mapping[str, Any]) -> list[dict]:
    """One row per method: test accuracy mean ± sd over seeds, beside the paper's number."""
    rows = []
    for m in result["summary"]:
        s = result["summary"][m]
        rows.append({"method": LABELS[m], "test accuracy": pm(s), "seeds": s["n"], PAPER_COLUMN: PAPER.get(m)})
    return rows


def difference_rows(result: Mapping[str, Any]) -> list[dict]:
    """:func:`comparisons` as table rows (points, the interval, the verdict, seeds above)."""
    return rows(comparisons(result), lambda c: {"claim": c.what})


def _by_budget(result: Mapping[str, Any]) -> list[tuple[int, dict]]:
    """Per labels-per-class budget: ``{start: mean_std over seeds}`` for both starts."""
    out = []
    for k in sorted({r["labels_per_class"] for r in result["label_budget"]}):
        rs = [r for r in result["label_budget"] if r["labels_per_class"] == k]
        out.append((k, {m: mean_std([r[m] for r in rs]) for m in ("supervised", "barlow_finetune")}))
    return out


def budget_rows(result: Mapping[str, Any]) -> list[dict]:
    """Test accuracy (mean ± sd over seeds) per labels-per-class budget for both starts."""
    return [{"labels per class": k, "seeds": s["supervised"]["n"], **{LABELS[m]: pm(v) for m, v in s.items()}}
            for k, s in _by_budget(result)]


def probe_label_curve(cfg: Mapping[str, Any], backbone_path: Path, per_class=(32, 100, 500)) -> list[dict]:
    """What limits the linear probe: the labels or the features? The frozen backbone's linear
    probe and logistic regression on pixels (each with its C chosen on validation at the
    configuration's own labels, :func:`probe_backbone` and :func:`pixel_baselines`) trained on
    ``per_class`` images a class drawn from the unlabelled pool with their hidden labels (a
    measurement, never a training input of the pipeline), each scored on the test set. Stored
    beside the backbone like the probes."""
    backbone_path = Path(backbone_path)
    stat = backbone_path.stat()
    key = {"backbone": str(backbone_path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
           **{k: cfg.get(k) for k in PROBE_KEYS}, "per_class": list(per_class), "version": 2}
    stored = backbone_path.parent / "probes" / f"labels-{runs.config_hash(key)}.json"
    if stored.is_file():
        return runs.read_json(stored)["rows"]
    split, features = frozen_features(cfg, backbone_path)
    c_pixels = pixel_baselines(cfg)["linear_c"]
    c_features = frozen_probes(cfg, backbone_path)["probe_settings"]["C"]
    pool, truth = split.unlabelled, split.true_labels("unlabelled")
    rng = np.random.default_rng(cfg["seed"])
    order = rng.permutation(len(pool))
    test_images, test_y = split.images("test"), split.labels("test")
    test_feats = features(test_images)
    flat = lambda a: a.reshape(len(a), -1).astype(np.float32) / 255.0  # noqa: E731
    rows = []
    for k in per_class:
        picked = np.sort(np.concatenate([order[truth[order] == c][:k] for c in range(split.data.num_classes)]))
        images, y = split.data.images[pool[picked]], truth[picked]
        rows.append({"labels per class": int(k), "images": int(len(y)),
                     "linear probe": linear_probe_accuracy(features(images), y, test_feats, test_y,
                                                           c=c_features),
                     "pixels, logistic regression": linear_probe_accuracy(flat(images), y, flat(test_images), test_y,
                                                                           c=c_pixels)})
    runs.write_json(stored, {"rows": rows})
    return rows
