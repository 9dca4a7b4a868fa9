"""The paper's ensembles and its overlap analysis (section 4), over seeds.

For each seed (a labelled set), the fine-tuned classifiers of the runs ``cfg.ensemble_models``
(taken from section 4's comparison, ``table1.compare``: same budget, same labelled set) are
combined four ways from their stored softmax outputs: the average, the weighted average with
weights chosen on the validation set (a grid over the simplex, ``cfg.ensemble_step``), the
paper's rule (Barlow Twins weighted one half, the others equal), and a majority vote. Test
labels are read only to score what validation chose. Each ensemble is compared with the best
single model of its seed, chosen on validation too, paired over seeds with a 95% interval.

The overlap analysis counts, per seed and on validation (as the paper) and test, which images
each model gets right: every exact intersection, what each other model gets right that Barlow
Twins gets wrong, the oracle bound (right under any model), pairwise agreement and error
correlation, and the images the average turns from wrong to right and back.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .. import config as config_mod
from .. import runs
from .. import ensemble as ens
from .. import filters
from ..errors import LosslessError
from ..comparison import Comparison, rows
from ..evaluate import mean_std
from ..pretrain import load_data, pretrain
from ..tables import pm
from . import table1 as t1

KINDS = ("average", "weighted", "paper", "vote")
KIND_NAMES = {"average": "ensemble (average)", "weighted": "ensemble (weighted, validation-chosen)",
              "paper": "ensemble (paper's weights)", "vote": "ensemble (majority vote)"}
PAPER_FIGURES = {"average": "34%", "weighted": "39%"}


def combine(val: Mapping[str, np.ndarray], val_labels: np.ndarray, test: Mapping[str, np.ndarray],
            step: float = 0.05) -> dict:
    """Every ensemble of the models' outputs (dicts name -> (N, C)), its weights chosen on
    validation: ``{kind: {"weights", "val_predictions", "test_predictions"}}``. Test outputs are
    only predicted from, never scored here (no test label is passed in)."""
    names = list(val)
    if list(test) != names:
        raise LosslessError(f"validation models {names} and test models {list(test)} differ")
    pv, pt = [val[n] for n in names], [test[n] for n in names]
    fit = ens.fit_weights(pv, val_labels, step)
    weights = {"average": [1 / len(names)] * len(names), "weighted": fit["weights"]}
    if any(n.split(":")[0] == "barlow" for n in names):
        weights["paper"] = ens.paper_weights([n.split(":")[0] for n in names])
    out = {kind: {"weights": w, "val_predictions": ens.predict(pv, w), "test_predictions": ens.predict(pt, w)}
           for kind, w in weights.items()}
    out["vote"] = {"weights": None, "val_predictions": ens.vote(pv), "test_predictions": ens.vote(pt)}
    out["weighted"]["val_log_loss"] = fit["val_log_loss"]
    return out


def overlap(predictions: Mapping[str, np.ndarray], labels: np.ndarray, average: np.ndarray,
            reference: str) -> dict:
    """The overlap analysis of one set of images: counts, oracle, agreement, flips."""
    right = ens.correct(predictions, labels)
    avg_right = np.asarray(average) == np.asarray(labels)
    return {"n": int(len(labels)), "intersections": ens.intersections(right),
            "right_not_reference": {n: ens.only_right(right, n, reference) for n in right if n != reference},
            "all_right": int(np.all(np.stack(list(right.values())), axis=0).sum()),
            "oracle": ens.oracle(right), "accuracy": {n: float(r.mean()) for n, r in right.items()},
            "agreement": ens.agreement(predictions).tolist(),
            "error_correlation": ens.error_correlation(right).tolist(),
            "average_flips": {k: v.tolist() for k, v in ens.flips(right[reference], avg_right).items()}}


def ensembles(cfg: Mapping[str, Any], seeds: int = 5) -> dict:
    """Run (or load) the comparison's classifiers, then every ensemble and the overlap analysis
    on each of ``seeds`` labelled sets."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 2:
        raise config_mod.ConfigError(f"seeds={seeds!r} is not allowed: an integer >= 2 (a paired interval "
                                     f"needs two)")
    config_mod.validate(cfg)
    wanted = [m if b is None else f"{m}:{b}" for m, b in config_mod.table1_runs(cfg["ensemble_models"])]
    runs_cfg = config_mod.table1_runs(cfg["compare_methods"])
    known = [m if b is None else f"{m}:{b}" for m, b in runs_cfg]
    missing = [w for w in wanted if w not in known]
    if missing:
        raise config_mod.ConfigError(f"ensemble_models={cfg['ensemble_models']!r}: {', '.join(missing)} is not "
                                     f"among compare_methods ({cfg['compare_methods']}); add it there or "
                                     f"choose among those")
    if len(wanted) < 2:
        raise config_mod.ConfigError(f"ensemble_models={cfg['ensemble_models']!r}: an ensemble needs two models")
    compared = t1.compare(cfg, seeds=seeds, finetune_seeds=seeds)
    names = t1.labels(compared)
    reference = next((w for w in wanted if w.split(":")[0] == "barlow"), wanted[0])
    per_seed = []
    for s in range(seeds):
        base = config_mod.load_profile(cfg["profile"], {k: v for k, v in cfg.items() if k != "profile"}, seed=s)
        split = load_data(base, False)
        val, test = {}, {}
        for key in wanted:
            method, _, backbone = key.partition(":")
            c = t1.compare_cfg(base, method, cfg["compare_epochs"], backbone or None)
            run = Path(compared["runs"][key]["seeds"][s]["finetune_run"])
            probs = ens.outputs(c, runs.read_json(run / "result.json"), split=split)
            val[key], test[key] = probs["val"], probs["test"]
        yv, yt = split.labels("val"), split.labels("test")
        combos = combine(val, yv, test, cfg["ensemble_step"])
        single_val = {k: float(np.mean(ens.top1(v) == yv)) for k, v in val.items()}
        single_test = {k: float(np.mean(ens.top1(v) == yt)) for k, v in test.items()}
        best = max(wanted, key=lambda k: (single_val[k], k == reference))
        per_seed.append({
            "seed": s, "runs": {k: str(Path(compared["runs"][k]["seeds"][s]["finetune_run"])) for k in wanted},
            "single_val": single_val, "single_test": single_test, "best_single": best,
            "ensembles": {kind: {"weights": c["weights"],
                                 "val_accuracy": float(np.mean(c["val_predictions"] == yv)),
                                 "test_accuracy": float(np.mean(c["test_predictions"] == yt))}
                          for kind, c in combos.items()},
            "overlap": {part: overlap({k: ens.top1(p[k]) for k in wanted}, y,
                                      combos["average"][f"{part}_predictions"], reference)
                        for part, p, y in (("val", val, yv), ("test", test, yt))}})
    kinds = [k for k in KINDS if all(k in r["ensembles"] for r in per_seed)]
    summary = {k: mean_std([r["ensembles"][k]["test_accuracy"] for r in per_seed]) for k in kinds}
    summary.update({f"single:{k}": mean_std([r["single_test"][k] for r in per_seed]) for k in wanted})
    network = " + ".join(dict.fromkeys(compared["runs"][k]["network"] for k in wanted))
    result = {"models": wanted, "names": {k: names[k] for k in wanted}, "reference": reference,
            "epochs": compared["epochs"], "step": cfg["ensemble_step"], "seeds": per_seed,
            "summary": summary, "kinds": kinds}
    result["minus_best_single"] = {k: comparison(result, k).to_dict() for k in kinds}  # for the JSON's reader
    # Table 1 complete: section 4's single runs, then these ensembles in the same columns
    result["table1"] = t1.table1(compared, extra=table1_rows(result, network))
    return result


OUTPUTS = ("val", "test")  # the parts whose softmax outputs a members record keeps


def members_record(result: Mapping[str, Any]) -> tuple[dict, dict[str, np.ndarray]]:
    """What a record keeps of an :func:`ensembles` result for a chapter's method cell: its first
    labelled set (the ensembles it stored, each model's single accuracies) and that set's
    softmax outputs, ``{"<model>.<part>": array}``, for an ``.npz`` beside the JSON. The
    outputs are the runs' own float32 arrays, so the cell's sums give the stored accuracies
    exactly on any processor."""
    first = result["seeds"][0]
    arrays = {f"{m}.{part}": np.asarray(probs) for part in OUTPUTS
              for m, probs in member_outputs(result, part, first["seed"]).items()}
    keep = {k: result[k] for k in ("models", "names", "reference", "epochs", "step")}
    return {**keep, "seeds": [{k: v for k, v in first.items() if k not in ("runs", "overlap")}]}, arrays


def members(cfg: Mapping[str, Any], record: tuple[dict, Mapping[str, np.ndarray]] | None = None,
            seeds: int = 2) -> dict:
    """The short members a chapter's method cell combines: ``record`` (a members record and its
    outputs, see :func:`members_record`) where it was made with this configuration's models,
    ``compare_epochs`` and ``ensemble_step``; otherwise this build's :func:`ensembles` on
    ``seeds`` labelled sets (trained, or loaded where done). Read the outputs with
    :func:`member_outputs` either way."""
    if record is not None:
        rec, arrays = record
        wanted = [m if b is None else f"{m}:{b}" for m, b in config_mod.table1_runs(cfg["ensemble_models"])]
        if rec["models"] == wanted and rec["epochs"] == cfg["compare_epochs"] and rec["step"] == cfg["ensemble_step"]:
            return {**rec, "outputs": {part: {m: np.asarray(arrays[f"{m}.{part}"]) for m in rec["models"]}
                                       for part in OUTPUTS}}
    return ensembles(cfg, seeds=seeds)


def member_outputs(result: Mapping[str, Any], part: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Each model's softmax outputs on ``part`` ("val" or "test") for labelled set ``seed``: from
    a record's kept arrays (its first set only) or from the runs' stored files."""
    if "outputs" in result:
        if seed != result["seeds"][0]["seed"]:
            raise LosslessError(f"seed={seed}: a members record keeps the outputs of labelled set "
                                f"{result['seeds'][0]['seed']} only")
        return dict(result["outputs"][part])
    r = next(x for x in result["seeds"] if x["seed"] == seed)
    return {k: np.load(Path(run) / f"probs-{part}.npy", mmap_mode="r") for k, run in r["runs"].items()}


def section4(cfg: Mapping[str, Any], seeds: int = 5) -> dict:
    """Section 4 whole, as one result a record keeps: the methods comparison (``table1.compare``:
    every run of ``cfg.compare_methods`` pretrained for ``cfg.compare_epochs``, probed and
    fine-tuned on ``seeds`` labelled sets), each pretraining run's monitors by epoch (the length
    rule reads them: ``table1.course``), the ensembles of its classifiers with the overlap
    analysis, and each run's first convolution trained and at its initialisation
    (``filters.first_layer``: the filters chapter draws a record's runs from them, since the
    record keeps no checkpoint). Runs already made are loaded."""
    result = ensembles(cfg, seeds=seeds)
    compared = t1.compare(cfg, seeds=seeds, finetune_seeds=seeds)  # made by ensembles(): loaded
    histories = {k: runs.read_jsonl(Path(r["pretraining"]["run"]) / "metrics.jsonl")
                 for k, r in compared["runs"].items()}
    split = load_data(cfg, False)
    first_layers = {}  # each run's Figure 2 layer, trained and initial: the filters chapter draws them
    for key, r in compared["runs"].items():
        method, _, backbone = key.partition(":")
        c = t1.compare_cfg(cfg, method, cfg["compare_epochs"], backbone or None)
        first_layers[key] = filters.first_layer(c, Path(pretrain(c)["backbone"]), split)  # loaded
    return {"epochs": compared["epochs"], "seeds": seeds, "compare": compared, "histories": histories,
            "ensembles": result, "first_layers": first_layers}


# ------------------------------------------------------------------ rows for the chapter
def accuracy_rows(result: Mapping[str, Any]) -> list[dict]:
    """Test accuracy (mean ± sd over seeds) of each single model and each ensemble."""
    rows = [{"model": result["names"][k], "test accuracy": pm(result["summary"][f"single:{k}"]),
             "weights": None, "seeds": result["summary"][f"single:{k}"]["n"], t1.PAPER_COLUMN: None}
            for k in result["models"]]
    for kind in result["kinds"]:
        w = [r["ensembles"][kind]["weights"] for r in result["seeds"]]
        rows.append({"model": KIND_NAMES[kind], "test accuracy": pm(result["summary"][kind]),
                     "weights": _weights_text(w, result["models"], result["names"]),
                     "seeds": result["summary"][kind]["n"], t1.PAPER_COLUMN: PAPER_FIGURES.get(kind)})
    return rows


def _weights_text(per_seed: list, models: list, names: Mapping[str, str]) -> str | None:
    if per_seed[0] is None:
        return None
    mean = np.mean(np.array(per_seed, dtype=np.float64), axis=0)
    spread = "" if all(w == per_seed[0] for w in per_seed) else " (mean over seeds)"
    return ", ".join(f"{names[m]} {x:.2f}" for m, x in zip(models, mean)) + spread


BEST = "best single"  # the arm: each seed's best single model, chosen on validation


def _test(result: Mapping[str, Any], r: Mapping[str, Any], arm: str) -> float:
    if arm in r["ensembles"]:
        return r["ensembles"][arm]["test_accuracy"]
    return r["single_test"][r["best_single"] if arm == BEST else arm]


def _name(result: Mapping[str, Any], arm: str) -> str:
    if arm == BEST:
        return "the best single model (chosen on validation)"
    return KIND_NAMES.get(arm) or result["names"][arm]


def comparison(result: Mapping[str, Any], a: str, b: str = BEST) -> Comparison:
    """Test accuracy of ``a`` minus ``b``, paired over the labelled sets: each an ensemble kind
    (``"average"``...), a model key (``"barlow"``) or :data:`BEST`, each seed's best single
    model chosen on validation (the fair opponent: the ensemble's weights are chosen the same
    way)."""
    return Comparison(a=[_test(result, r, a) for r in result["seeds"]],
                      b=[_test(result, r, b) for r in result["seeds"]],
                      seeds=[r["seed"] for r in result["seeds"]], arms=(a, b),
                      what=f"{_name(result, a)} minus {_name(result, b)}")


def comparisons(result: Mapping[str, Any]) -> list[Comparison]:
    """Each ensemble against the best single model of its seed; then the paper's statements:
    the average and the weighted average against the Barlow Twins model (the reference), and the
    weighted against the average."""
    out = [comparison(result, k) for k in result["kinds"]]
    ref = result["reference"]
    out += [comparison(result, k, ref) for k in ("average", "weighted") if k in result["kinds"]]
    if {"average", "weighted"} <= set(result["kinds"]):
        out.append(comparison(result, "weighted", "average"))
    return out


def difference_rows(result: Mapping[str, Any]) -> list[dict]:
    """:func:`comparisons` as table rows."""
    return rows(comparisons(result))


def table1_rows(result: Mapping[str, Any], network: str) -> list[dict]:
    """The ensembles' rows in Table 1's columns (``table1.table1(..., extra=...)``)."""
    return [{"network": network, "method": KIND_NAMES[k], "k-NN probe": None, "linear probe": None,
             "fine-tuned": pm(result["summary"][k]), "seeds": result["summary"][k]["n"],
             "pretraining minutes": None, t1.PAPER_COLUMN: PAPER_FIGURES.get(k)} for k in result["kinds"]]


def mean_intersections(result: Mapping[str, Any], part: str = "val") -> list[dict]:
    """Each exact intersection (the models right, the others wrong) by the models' names, its
    count averaged over seeds and the sample sd; largest first (for ``viz.upset`` and ``viz.venn``)."""
    counts: dict[tuple, list[int]] = {}
    for r in result["seeds"]:
        for row in r["overlap"][part]["intersections"]:
            counts.setdefault(tuple(row["models"]), []).append(row["count"])  # a record: lists
    rows = [{"models": tuple(result["names"][m] for m in models), "count": float(np.mean(c)),
             "sd": float(np.std(c, ddof=1)) if len(c) > 1 else 0.0} for models, c in counts.items()]
    return sorted(rows, key=lambda r: (-r["count"], len(r["models"])))


def nested(result: Mapping[str, Any], part: str = "val") -> bool:
    """Whether the models' right answers nest: on every seed, no other model gets an image of
    ``part`` right that the reference gets wrong (the paper's reason to combine them is that
    they do not)."""
    return all(v == 0 for r in result["seeds"] for v in r["overlap"][part]["right_not_reference"].values())


def overlap_rows(result: Mapping[str, Any], part: str = "val") -> list[dict]:
    """The intersections as table rows."""
    return [{"right under exactly": " + ".join(r["models"]) or "none of them",
             "images (mean over seeds)": pm({"mean": r["count"], "std": r["sd"]}, percent=False, digits=1)}
            for r in mean_intersections(result, part)]


def bound_rows(result: Mapping[str, Any]) -> list[dict]:
    """Per set (validation, test): the models' union (the oracle bound), everything all of them
    get right, what each other model gets right that the reference gets wrong, and how much of
    the gap between the best single model and the bound each ensemble closes (means over seeds)."""
    rows = []
    ref = result["names"][result["reference"]]
    for part, label in (("val", "validation"), ("test", "test")):
        ov = [r["overlap"][part] for r in result["seeds"]]
        n = ov[0]["n"]
        row = {"set": f"{label} ({n:,} images)",
               "all right": pm(mean_std([o["all_right"] for o in ov]), percent=False, digits=1)}
        for m, name in result["names"].items():
            if m != result["reference"]:
                row[f"{name} right, {ref} wrong"] = pm(mean_std([o["right_not_reference"][m] for o in ov]),
                                                      percent=False, digits=1)
        row["any right (oracle)"] = pm(mean_std([o["oracle"] for o in ov]))
        rows.append(row)
    return rows


def gap_closed(result: Mapping[str, Any]) -> dict[str, dict]:
    """Per ensemble, test accuracy minus the best single model's, over the oracle bound minus
    the best single model's: the share of the reachable gain taken (mean ± sd over seeds)."""
    out = {}
    for k in result["kinds"]:
        vals = []
        for r in result["seeds"]:
            best = r["single_test"][r["best_single"]]
            room = r["overlap"]["test"]["oracle"] - best
            vals.append((r["ensembles"][k]["test_accuracy"] - best) / room if room > 0 else float("nan"))
        out[k] = mean_std(vals)
    return out


def flip_examples(cfg: Mapping[str, Any], result: Mapping[str, Any], seed: int = 0, kind: str = "average",
                  n: int = 8) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Test images the ``kind`` ensemble turns from wrong to right, and from right to wrong,
    against the reference model, with every model's prediction (for ``viz.margin_gallery``)."""
    r = next(x for x in result["seeds"] if x["seed"] == seed)
    base = config_mod.load_profile(cfg["profile"], {k: v for k, v in cfg.items() if k != "profile"}, seed=seed)
    split = load_data(base, False)
    probs = member_outputs(result, "test", seed)
    models = list(probs)
    pred = {k: ens.top1(p) for k, p in probs.items()}
    weights = r["ensembles"][kind]["weights"]
    mixed = ens.vote([probs[k] for k in models]) if kind == "vote" else ens.predict([probs[k] for k in models],
                                                                                  weights)
    y = split.labels("test")
    flips = ens.flips(pred[result["reference"]] == y, mixed == y)
    classes = split.data.classes
    short = {k: result["names"][k].split(" ")[0][:6] for k in models}
    out = {}
    for key, title in (("wrong_to_right", "fixed by\nthe ensemble"), ("right_to_wrong", "broken by\nthe ensemble")):
        idx = flips[key][:n]
        titles = [f"true {classes[y[i]][:9]}\n" + "\n".join(f"{short[k]}: {classes[pred[k][i]][:9]}" for k in models)
                  + f"\nens: {classes[mixed[i]][:9]}" for i in idx]
        out[f"{title} ({len(flips[key])})"] = (split.images("test")[idx], titles)
    return out


