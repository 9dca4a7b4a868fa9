"""Pseudo-labelling rounds (paper section 3.5).

Each round scores the unlabelled pool with the current classifier (confidence = top softmax
probability, prediction = its class), takes the most confident images with their predicted
labels, removes them from the pool, and trains on labelled + all pseudo-labelled images so far:
Adam (lr 1e-4, weight decay 1e-5), ReduceLROnPlateau on validation accuracy (factor 0.1 in the
paper, 0.2 in the authors' code, patience 3), 15 epochs, the fine-tuning augmentation. The paper
runs 3 rounds of 3%; the authors' code 3%, 2%, 1%.

Selection rules (``pl_rule``):

* ``global``: the exact top p% of the whole pool by confidence (the paper). The authors' code
  kept only the 150 most confident of every batch of 512 before sorting, a memory-saving
  heuristic; scoring keeps three numbers per image here, so the exact top is affordable.
* ``balanced``: the same number of images from each predicted class (p% of the pool divided by
  the number of classes), the most confident within each class.
* ``threshold``: the most confident images at or above ``pl_threshold``, at most p% of the
  pool in all and at most ``pl_class_cap`` of those from one predicted class (FixMatch-style
  confidence, with a cap so that easy classes cannot fill the round).
* ``gradual``: the global rule in more, smaller rounds: each round of p% becomes
  ``pl_substeps`` rounds of p / pl_substeps %, each trained for pl_epochs / pl_substeps epochs
  (rounded up), so the picks and the training add up to about the same.
* ``none``: the control. The same rounds, epochs and optimiser on the labelled images alone:
  whatever the rounds gain without pseudo-labels is the extra training's, not the labels'.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from . import data as data_mod
from . import config as config_mod
from . import distributed, runs
from .engine import Batches, Engine, EngineSettings, resolve_device, resolve_precision
from .errors import LosslessError
from .evaluate import score
from .finetune import CHECKPOINT_SECONDS, FINETUNE_KEYS, finetune, finish_classifier, load_classifier, validation_metrics
from .pretrain import begin_stage, load_data, run_keys

PSEUDO_KEYS = ("pl_rounds", "pl_rule", "pl_epochs", "pl_batch_size", "pl_lr", "pl_weight_decay",
               "pl_plateau_factor", "pl_patience")
RULE_KEYS = {"threshold": ("pl_threshold", "pl_class_cap"), "gradual": ("pl_substeps",)}  # only theirs


def select_global(confidence: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` most confident images (ties: the earlier position first).

    No full sort: the k-th largest confidence is found by partition, every image above it is
    taken, and the lowest positions among those equal to it fill the rest, the same set as a
    stable sort by (-confidence, position), with one float copy of extra memory."""
    c = np.asarray(confidence)
    n = len(c)
    k = min(k, n)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    threshold = np.partition(c, n - k)[n - k]
    above = np.flatnonzero(c > threshold)
    ties = np.flatnonzero(c == threshold)[: k - len(above)]
    return np.sort(np.concatenate([above, ties]))


def select_balanced(confidence: np.ndarray, prediction: np.ndarray, k: int, num_classes: int) -> np.ndarray:
    """Up to ``k // num_classes`` most confident positions of each predicted class."""
    quota = max(1, k // num_classes)
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(prediction == c)
        if len(members):
            chosen.append(members[select_global(confidence[members], quota)])
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def select_threshold(confidence: np.ndarray, prediction: np.ndarray, k: int, threshold: float,
                     class_cap: float) -> np.ndarray:
    """The most confident positions with ``confidence >= threshold``, at most ``k`` in all and at
    most ``max(1, floor(class_cap * k))`` of one predicted class (ties: the earlier position)."""
    c, pred = np.asarray(confidence), np.asarray(prediction)
    quota = max(1, int(class_cap * k))
    order = np.lexsort((np.arange(len(c)), -c))  # most confident first, then by position
    order = order[c[order] >= threshold]
    taken = np.zeros(int(pred.max()) + 1 if len(pred) else 0, dtype=np.int64)
    chosen = []
    for i in order:
        if len(chosen) == k:
            break
        if taken[pred[i]] < quota:
            taken[pred[i]] += 1
            chosen.append(i)
    return np.sort(np.asarray(chosen, dtype=np.int64))


def schedule(cfg: Mapping[str, Any]) -> list[tuple[float, int]]:
    """The rounds as (percent of the initial pool, epochs): ``pl_rounds`` x ``pl_epochs``, or for
    the gradual rule each round split into ``pl_substeps`` smaller ones."""
    rounds = config_mod.percentages(cfg["pl_rounds"])  # checked by config.validate
    if cfg["pl_rule"] != "gradual":
        return [(p, cfg["pl_epochs"]) for p in rounds]
    n = cfg["pl_substeps"]
    return [(p / n, -(-cfg["pl_epochs"] // n)) for p in rounds for _ in range(n)]


def select(cfg: Mapping[str, Any], scores, k: int, num_classes: int) -> np.ndarray:
    """Positions in the scored pool that round's rule picks (``none`` never scores the pool)."""
    rule = cfg["pl_rule"]
    if rule in ("global", "gradual"):
        return select_global(scores.confidence, k)
    if rule == "balanced":
        return select_balanced(scores.confidence, scores.prediction, k, num_classes)
    if rule == "threshold":
        return select_threshold(scores.confidence, scores.prediction, k, cfg["pl_threshold"], cfg["pl_class_cap"])
    raise LosslessError(f"pl_rule={rule!r}: choose global, balanced, threshold, gradual or none")


def pseudo_dir(cfg: Mapping[str, Any], start: str) -> Path:
    keys = {k: cfg.get(k) for k in set(run_keys(cfg)) | set(FINETUNE_KEYS) | set(PSEUDO_KEYS)
            | set(RULE_KEYS.get(cfg["pl_rule"], ()))}
    keys["start"] = start
    return runs.run_dir(cfg, f"pseudo-{cfg['pl_rule']}", keys)


def selection_stats(chosen_pred: np.ndarray, true: np.ndarray, confidence: np.ndarray, num_classes: int) -> dict:
    known = true >= 0
    return {"selected": int(len(chosen_pred)),
            "precision": float(np.mean(chosen_pred[known] == true[known])) if known.any() else None,
            "per_class": np.bincount(chosen_pred, minlength=num_classes).tolist(),
            "min_confidence": float(confidence.min()) if len(confidence) else None}


def pseudo_label(cfg: Mapping[str, Any], start: dict | None = None, pretrained: Path | None = None) -> dict:
    """All rounds; ``start`` is a finished fine-tuning result (computed when not given).
    Each round is a run of its own under the stage's folder, so a stopped stage resumes."""
    device, amp, split = begin_stage(cfg)
    start = start or finetune(cfg, "barlow", pretrained)
    stage = pseudo_dir(cfg, start["run"])
    with runs.claim(stage):  # one process per run folder; a second command waits, then finds the result
        done = runs.find_result(stage)
        return done if done is not None else _pseudo_rounds(cfg, start, stage, split, device, amp)


def round_seconds(result: Mapping[str, Any]) -> float:
    """The training seconds of a finished stage's rounds (each round's own result.json holds them)."""
    stage = Path(result["run"])
    return sum(runs.read_json(stage / f"round{r['round']}" / "result.json")["train_seconds"]
               for r in result["rounds"] if r["round"] > 0)


def _pseudo_rounds(cfg: Mapping[str, Any], start: dict, stage: Path, split: data_mod.Split, device, amp) -> dict:
    data = split.data
    pool = split.unlabelled.copy()
    initial_pool = len(pool)
    pseudo_idx = np.empty(0, dtype=np.int64)
    pseudo_lab = np.empty(0, dtype=np.int64)
    checkpoint = Path(start["classifier"])
    history = [{"round": 0, "val_accuracy": start["val_accuracy"], "test_accuracy": start.get("test_accuracy")}]
    for r, (percent, epochs) in enumerate(schedule(cfg), 1):
        rdir = stage / f"round{r}"
        rdir.mkdir(parents=True, exist_ok=True)
        sel_file = rdir / "selection.npz"
        if sel_file.is_file():
            with np.load(sel_file) as z:
                new_idx, new_lab = z["index"], z["label"]
            stats = runs.read_json(rdir / "selection.json")
        else:
            if len(pool) == 0:
                raise LosslessError(f"round {r}: the unlabelled pool is empty (all {initial_pool} images were "
                                    f"pseudo-labelled); use fewer rounds or smaller percentages (pl_rounds)")
            if cfg["pl_rule"] == "none":  # the control picks nothing: no pass over the pool
                new_idx = new_lab = conf = np.empty(0, dtype=np.int64)
            else:
                model = load_classifier(cfg, split, checkpoint, device, amp)
                s = score(model, data.images[pool], model.augmenter.plain, device, amp)
                pos = select(cfg, s, int(round(percent / 100 * initial_pool)), data.num_classes)
                new_idx, new_lab, conf = pool[pos], s.prediction[pos], s.confidence[pos]
            stats = selection_stats(new_lab, data.labels[new_idx], conf, data.num_classes)
            stats.update(percent=percent, pool_before=int(len(pool)))
            runs.write_json(rdir / "selection.json", stats)
            runs.write_npz(sel_file, index=new_idx, label=new_lab)
        pool = np.setdiff1d(pool, new_idx, assume_unique=True)
        pseudo_idx = np.concatenate([pseudo_idx, new_idx])
        pseudo_lab = np.concatenate([pseudo_lab, new_lab])
        result = runs.find_result(rdir) or _train_round(cfg, split, checkpoint, rdir, pseudo_idx, pseudo_lab,
                                                        device, amp, stats, epochs)
        checkpoint = Path(result["classifier"])
        history.append({"round": r, "val_accuracy": result["val_accuracy"],
                        "test_accuracy": result.get("test_accuracy"), **stats, "pool_after": int(len(pool))})
    out = {"run": str(stage), "rule": cfg["pl_rule"], "rounds": history, "classifier": str(checkpoint),
           "val_accuracy": history[-1]["val_accuracy"], "test_accuracy": history[-1]["test_accuracy"],
           "start_val_accuracy": history[0]["val_accuracy"], "start_test_accuracy": history[0]["test_accuracy"]}
    if distributed.info().is_main:
        runs.write_json(stage / "result.json", out)
    return out


def _train_round(cfg, split: data_mod.Split, checkpoint: Path, rdir: Path, pseudo_idx: np.ndarray,
                 pseudo_lab: np.ndarray, device, amp, stats: dict, epochs: int) -> dict:
    data = split.data
    model = load_classifier(cfg, split, checkpoint, device, amp)
    labels = np.full(len(data.labels), -1, dtype=np.int64)
    labels[split.labelled] = data.labels[split.labelled]
    labels[pseudo_idx] = pseudo_lab  # the predicted label, never the hidden true one
    train = np.sort(np.concatenate([split.labelled, pseudo_idx]))
    batches = Batches(data.images, labels, train, cfg["pl_batch_size"], seed=cfg["seed"], drop_last=False,
                      device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["pl_lr"], weight_decay=cfg["pl_weight_decay"])
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=cfg["pl_plateau_factor"],
                                                         patience=cfg["pl_patience"])
    engine = Engine(rdir, EngineSettings(epochs=epochs, precision=cfg["precision"],
                                         channels_last=cfg["channels_last"], seed=cfg["seed"],
                                         progress=bool(cfg["progress"]), desc=f"pseudo {rdir.name}", lr_hint="pl_lr",
                                         best_metric="val_loss", best_mode="min",
                                         epoch_checkpoint_seconds=CHECKPOINT_SECONDS), device)
    t0 = time.perf_counter()
    engine.fit(model, batches, optimizer, None, lambda e: validation_metrics(model, split, device, amp),
               epoch_scheduler=plateau, scheduler_metric="val_acc")
    return finish_classifier(rdir, engine.best_path, model, split, device, amp,
                             {"train_images": int(len(train)), "train_seconds": round(time.perf_counter() - t0, 1)})


# ------------------------------------------------------------------ what the chapter measures
def select_capped(confidence: np.ndarray, k: int, batch: int = 512, cap: int = 150) -> np.ndarray:
    """The authors' selection: keep the ``cap`` most confident of every consecutive ``batch`` of
    the pool (in the order it was scored), then the ``k`` most confident of those."""
    c = np.asarray(confidence)
    kept = np.concatenate([s + select_global(c[s:s + batch], cap) for s in range(0, len(c), batch)] or
                          [np.empty(0, dtype=np.int64)])
    return np.sort(kept[select_global(c[kept], k)])


def score_pool(cfg: Mapping[str, Any], checkpoint: Path) -> tuple[np.ndarray, Any]:
    """The unlabelled pool of ``cfg``'s split scored by a classifier checkpoint: (pool, scores)."""
    device = resolve_device(cfg["device"])
    amp = resolve_precision(cfg["precision"], device)
    split = load_data(cfg, False)
    model = load_classifier(cfg, split, Path(checkpoint), device, amp)
    pool = split.unlabelled
    return pool, score(model, split.data.images[pool], model.augmenter.plain, device, amp)


def selection_curve(scores, true: np.ndarray, percents, num_classes: int) -> list[dict]:
    """For each percentage of the pool: how precise each rule's selection is, and how many
    classes the global rule's selection covers (the hidden true labels only score the choice)."""
    rows = []
    n = len(true)
    for p in percents:
        k = int(round(p / 100 * n))
        g = select_global(scores.confidence, k)
        b = select_balanced(scores.confidence, scores.prediction, k, num_classes)
        share = np.bincount(scores.prediction[g], minlength=num_classes) / max(len(g), 1)
        rows.append({"% of pool": p, "selected": len(g),
                     "global precision": float(np.mean(scores.prediction[g] == true[g])),
                     "balanced precision": float(np.mean(scores.prediction[b] == true[b])),
                     "classes in global": int((share > 0).sum()),
                     "largest class share (global)": float(share.max()),
                     "lowest confidence taken (global)": float(scores.confidence[g].min())})
    return rows


def cap_effect(scores, true: np.ndarray, percents, batch: int = 512, cap: int = 150) -> list[dict]:
    """How much the authors' per-batch cap changes the global selection: with the pool scored in
    its stored (shuffled) order, and in an order sorted by predicted class (a class-ordered image
    folder scored without shuffling)."""
    rows = []
    orders = {"stored order": np.arange(len(true)),
              "sorted by predicted class": np.argsort(scores.prediction, kind="stable")}
    for name, order in orders.items():
        conf = scores.confidence[order]
        for p in percents:
            k = int(round(p / 100 * len(true)))
            exact, capped = order[select_global(conf, k)], order[select_capped(conf, k, batch, cap)]
            rows.append({"pool order": name, "% of pool": p, "k": k,
                         "capped selects": len(capped),
                         "shared with exact top-k": len(np.intersect1d(exact, capped)) / max(k, 1),
                         "precision exact": float(np.mean(scores.prediction[exact] == true[exact])),
                         "precision capped": float(np.mean(scores.prediction[capped] == true[capped]))})
    return rows


def round_rows(results: dict[str, dict]) -> list[dict]:
    """One row per (rule, round) of ``pseudo_label`` results: picks, their precision against the
    hidden labels, how many classes they came from, the lowest confidence taken and the accuracy
    after the round (fractions; round 0 is the fine-tuned start and picks nothing)."""
    return [{"rule": rule, "round": r["round"], "picked": r.get("selected"), "correct": r.get("precision"),
             "classes picked": None if "per_class" not in r else int(np.count_nonzero(r["per_class"])),
             "lowest confidence": r.get("min_confidence"), "val accuracy": r["val_accuracy"],
             "test accuracy": r["test_accuracy"]}
            for rule, res in results.items() for r in res["rounds"]]
