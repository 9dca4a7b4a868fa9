"""The active-learning experiment (paper section 3.6): which images to have labelled, tested
against random requests at equal budgets, over many seeds.

Start from the split's labelled set (32 per class on the ``cpu`` profile), request ``al_budget``
labels per round for ``al_rounds`` rounds, retrain after each round, and score the test set.
The pool's labels stay hidden: each round's choice is written as a request file (the
competition's format) and answered by the oracle (:func:`lossless.active.answer`), as a user
would run it.

Retraining. After each round the two-layer head of section 3.4 is trained again, from the same
initialisation, on the **frozen** Barlow Twins features of the labelled images (stored once in
the pretraining run's folder, :mod:`lossless.features`): about a second per head, so many seeds
fit in a chapter. Fine-tuning the whole network instead (section 3.4) is run for the final
round of the paper's strategy and of random on a few seeds (:func:`finetune_check`), to see
whether the conclusion holds when the backbone moves too.

The design is paired: one seed fixes the starting labels, the classifier's initialisation and
every random choice (k-means seeds, random requests) for every strategy, so strategies differ
only by their requests, and differences are taken seed by seed.

Strategies (:data:`STRATEGIES`): ``random``, ``margin``, ``kmeans``, ``margin-kmeans`` (the
paper), ``intersection`` (the margin + k-means choices of :data:`INTERSECTION_HEADS` heads on the
same features that differ in their initialisation only) and ``typiclust`` (Hacohen et al.,
2022); and, asked for by name, ``methods-intersection``: the paper's own, the margin + k-means
choices of classifiers on the features of different pretraining methods (``ensemble_models``:
Barlow Twins, the main line, with BYOL and SwAV pretrained for ``compare_epochs``), intersected
and filled by summed margin rank (:func:`lossless.active.intersect`). Whatever chose the
requests, the Barlow Twins head is the one trained on them and scored.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import active, runs
from .. import config as config_mod
from ..errors import ConfigError
from ..comparison import Comparison
from ..evaluate import Scores, mean_interval, probabilities, score
from ..features import frozen_features
from ..finetune import cosine, finetune, std_floor
from ..models import ClassifierHead
from ..pretrain import load_data, pretrain

STRATEGIES = ("random", "margin", "kmeans", "margin-kmeans", "intersection", "typiclust")
ACROSS = "methods-intersection"  # asked for by name: each method's classifier on its own features
INTERSECTION_HEADS = 3
EXPERIMENT_KEYS = ("dataset", "data_root", "labels_per_class", "val_per_class", "al_candidates", "al_clusters",
                   "al_per_cluster", "al_order", "al_features", "al_budget", "al_rounds", "al_head_epochs", "al_head_lr",
                   "al_typiclust_max_clusters", "ft_batch_size", "ft_weight_decay", "precision",
                   "channels_last")


# ------------------------------------------------------------------ the head on frozen features
def standardiser(features: np.ndarray, pool: np.ndarray, seed: int, sample: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and spread measured on up to ``sample`` unlabelled images, as the
    classifier's :class:`~lossless.finetune.FeatureStandardizer` measures them (same floor)."""
    rows = np.sort(np.random.default_rng(seed).choice(pool, size=min(sample, len(pool)), replace=False))
    f = torch.from_numpy(np.asarray(features[rows], dtype=np.float32))
    std = f.std(0)
    return f.mean(0).numpy(), std.clamp_min(std_floor(std)).numpy()


def train_head(x: np.ndarray, y: np.ndarray, num_classes: int, seed: int, epochs: int, batch_size: int,
               lr: float, weight_decay: float) -> torch.nn.Module:
    """The two-layer head of section 3.4 trained on fixed (standardised) features: SGD, momentum
    0.9, cosine-annealed ``lr``, batches in a seeded order; initialisation from ``seed``.

    A few hundred steps on in-memory rows, under a second, called hundreds of times per
    experiment: like the linear probe (scikit-learn), it does not go through the engine, whose
    run folders, checkpoints and resume are for training that takes minutes (the experiment
    stores each finished seed instead)."""
    torch.manual_seed(seed)
    x_t, y_t = torch.as_tensor(np.asarray(x, dtype=np.float32)), torch.as_tensor(np.asarray(y, dtype=np.int64))
    head = ClassifierHead(x_t.shape[1], num_classes)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, foreach=False)
    g = torch.Generator().manual_seed(seed)
    dropout = _Dropout(head[2].p, seed)
    head_train = lambda xb: head[3](dropout(head[1](head[0](xb))))  # noqa: E731  (the head, its dropout replaced)
    per_epoch = math.ceil(len(x_t) / batch_size)
    total, step = epochs * per_epoch, 0
    head.train()
    for _ in range(epochs):
        order = torch.randperm(len(x_t), generator=g)
        for start in range(0, len(x_t), batch_size):
            b = order[start:start + batch_size]
            for group in opt.param_groups:
                group["lr"] = lr * cosine(step, total)
            loss = F.cross_entropy(head_train(x_t[b]), y_t[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return head.eval()


class _Dropout:
    """Inverted dropout with masks drawn from NumPy's generator (16 random bits per unit):
    torch's CPU ``bernoulli_`` took 23 ns a unit here, 60% of a head's training step."""

    def __init__(self, p: float, seed: int):
        self.keep = round((1 - p) * 65536)
        self.scale = 65536 / self.keep
        self.rng = np.random.default_rng(seed)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        bits = np.frombuffer(self.rng.bytes(2 * z.numel()), dtype=np.uint16).reshape(tuple(z.shape))
        return z * torch.from_numpy(bits < self.keep) * self.scale


def head_scores(head: torch.nn.Module, x: np.ndarray) -> Scores:
    """Prediction, confidence and margin of ``head`` on feature rows (the O(N) scoring path)."""
    return score(head, np.asarray(x, dtype=np.float32), lambda b: b, torch.device("cpu"))


def head_probabilities(head: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """(N, C) class probabilities of ``head`` on feature rows: the very numbers :func:`head_scores`
    ranks (the same blocks), so a margin written out from them equals its margin exactly."""
    return probabilities(head, np.asarray(x, dtype=np.float32), lambda b: b, torch.device("cpu"))


# ------------------------------------------------------------------ one seed, every strategy
def seed_state(cfg: Mapping[str, Any], seed: int, feats: np.ndarray):
    """What one seed fixes: its split, the standardised features of every image (the head's
    input) and ``train(indices, labels, init_seed)`` that fits a head on them."""
    c = config_mod.load_profile(cfg["profile"], {k: v for k, v in cfg.items() if k != "profile"}, seed=seed)
    split = load_data(c, False)
    mean, std = standardiser(feats, split.unlabelled, seed)
    xs = (np.asarray(feats, dtype=np.float32) - mean) / std

    def train(idx: np.ndarray, y: np.ndarray, init_seed: int) -> torch.nn.Module:
        return train_head(xs[idx], y, split.data.num_classes, init_seed, cfg["al_head_epochs"], cfg["ft_batch_size"],
                          cfg["al_head_lr"], cfg["ft_weight_decay"])
    return split, xs, train


def run_seed(cfg: Mapping[str, Any], seed: int, feats: np.ndarray, strategies: Sequence[str], out: Path,
             spaces: Mapping[str, np.ndarray] | None = None) -> dict:
    """Every strategy's rounds for one seed; requests and answers are written under ``out``.
    ``spaces``: the other methods' frozen features, for :data:`ACROSS` (the main line's are
    ``feats``)."""
    split, xs, train = seed_state(cfg, seed, feats)
    others = {m: seed_state(cfg, seed, f)[1:] for m, f in (spaces or {}).items()}  # (xs, train) each
    data = split.data
    test_y = split.labels("test")
    C, B, R = data.num_classes, cfg["al_budget"], cfg["al_rounds"]
    accuracy = lambda head: float(np.mean(head_scores(head, xs[split.test]).prediction == test_y))  # noqa: E731
    L0, y0 = split.labelled, data.labels[split.labelled]
    head_seeds = [seed] + [seed + 1000 * j for j in range(1, INTERSECTION_HEADS)]
    start_heads = {s: train(L0, y0, s) for s in (head_seeds if "intersection" in strategies else [seed])}
    start_acc = accuracy(start_heads[seed])
    result = {"seed": seed, "start_labels": int(len(L0)), "start_accuracy": start_acc, "strategies": {}}
    for strategy in strategies:
        L, yL = L0.copy(), y0.copy()
        seeds_here = head_seeds if strategy == "intersection" else [seed]
        heads = {s: start_heads[s] for s in seeds_here}
        rounds = [{"round": 0, "labels": int(len(L)), "test_accuracy": start_acc}]
        for r in range(1, R + 1):
            pool = np.setdiff1d(split.unlabelled, L)
            scored = {s: head_scores(h, xs[pool]) for s, h in heads.items()}
            if strategy == ACROSS:  # each method's head, trained on the same labels, in its own space
                models = {"main": (feats, xs, heads[seed], scored[seed].margin)}
                for m, (ox, otrain) in others.items():
                    head = otrain(L, yL, seed)
                    models[m] = (spaces[m], ox, head, head_scores(head, ox[pool]).margin)
                sel = _intersection(cfg, ACROSS, B, seed * 1000 + r, pool, models, C)
            else:
                sel = _choose(cfg, strategy, B, seed * 1000 + r, pool, feats, L, scored, heads, xs, C)
            chosen = pool[sel.positions]
            path = out / f"seed{seed}" / f"{strategy}-round{r}.txt"
            active.write_requests(path, data, active.Selection(strategy, chosen, sel.score, sel.info),
                                  {"seed": seed, "round": r, "strategy": strategy, "budget": B, **sel.info})
            idx, lab = active.answer(path, data, labelled=L, pool=split.unlabelled)  # the oracle, through the request file
            predicted = dict(zip(pool[sel.positions].tolist(), scored[seed].prediction[sel.positions].tolist()))
            right = int(sum(predicted[i] == y for i, y in zip(idx.tolist(), lab.tolist())))
            L, yL = np.concatenate([L, idx]), np.concatenate([yL, lab])
            heads = {s: train(L, yL, s) for s in seeds_here}
            rounds.append({"round": r, "labels": int(len(L)), "test_accuracy": accuracy(heads[seed]),
                           "already_right": right, "requested_per_class": np.bincount(lab, minlength=C).tolist(),
                           "mean_margin": float(np.mean(scored[seed].margin[sel.positions])),
                           "selection": sel.info})
        result["strategies"][strategy] = {"rounds": rounds, "acquired": L[len(L0):].tolist(),
                                          "acquired_labels": yL[len(L0):].tolist()}
    return result


def _choose(cfg, strategy: str, budget: int, rseed: int, pool: np.ndarray, feats: np.ndarray, labelled: np.ndarray,
            scored: dict, heads: dict, xs: np.ndarray, num_classes: int) -> active.Selection:
    """One round's requests, as positions into ``pool``."""
    if strategy == "typiclust":
        return active.typiclust(np.asarray(feats[pool]), np.asarray(feats[labelled]), budget, rseed,
                                cfg["al_typiclust_max_clusters"])
    if strategy == "intersection":
        return _intersection(cfg, strategy, budget, rseed, pool,
                             {s: (feats, xs, heads[s], scored[s].margin) for s in heads}, num_classes)
    main = next(iter(heads))

    def space(positions):  # the clustering space: the backbone's features or the head's softmax
        if cfg["al_features"] == "softmax":
            return head_probabilities(heads[main], xs[pool])[positions]  # the pool's blocks, as scored
        return feats[pool[positions]]
    return active.select(strategy, budget, rseed, margin=scored[main].margin, features=space,
                         **_common(cfg, num_classes))


def _common(cfg, num_classes: int) -> dict:
    """The margin + k-means settings every selection shares."""
    return dict(candidates=cfg["al_candidates"], clusters=cfg["al_clusters"] or num_classes,
                quota=cfg["al_per_cluster"], order=cfg["al_order"])


def _intersection(cfg, name: str, budget: int, rseed: int, pool: np.ndarray, models: Mapping[str, tuple],
                  num_classes: int) -> active.Selection:
    """The paper's intersection: each model (its frozen features, standardised features, head,
    and the head's margins on the pool) chooses by margin + k-means in its own space; the choices
    are intersected and filled to ``budget`` by summed margin rank (:func:`lossless.active.intersect`)."""
    picks, margins = [], [m[3] for m in models.values()]
    for feats, xs, head, margin in models.values():
        def space(positions, feats=feats, xs=xs, head=head):
            return head_probabilities(head, xs[pool])[positions] if cfg["al_features"] == "softmax" else feats[pool[positions]]
        picks.append(active.select("margin-kmeans", budget, rseed, margin=margin, features=space,
                                   **_common(cfg, num_classes)))
    pos = active.intersect([p.positions for p in picks], margins, budget, allow_empty=True)
    overlap = picks[0].positions
    for p in picks[1:]:
        overlap = np.intersect1d(overlap, p.positions)
    return active.Selection(name, pos, margins[0][pos], {"models": list(models), "in_every_selection": int(len(overlap))})


def across_features(cfg: Mapping[str, Any]) -> dict[str, tuple[Path, np.ndarray]]:
    """The frozen features of each ``ensemble_models`` run other than Barlow Twins (pretrained, or
    loaded, for ``compare_epochs`` as the methods comparison does), keyed by run name."""
    from .table1 import compare_cfg
    out = {}
    for method, backbone in config_mod.table1_runs(cfg["ensemble_models"]):
        if method == "barlow" and backbone is None:
            continue  # the main line is the experiment's own backbone
        c = compare_cfg(cfg, method, cfg["compare_epochs"], backbone)
        path = Path(pretrain(c)["backbone"])
        out[method if backbone is None else f"{method}:{backbone}"] = (path, frozen_features(c, path))
    return out


# ------------------------------------------------------------------ the experiment
def experiment_dir(cfg: Mapping[str, Any], backbone: Path, strategies: Sequence[str],
                   others: Mapping[str, Path] | None = None) -> Path:
    keys = {k: cfg.get(k) for k in EXPERIMENT_KEYS}
    keys.update(backbone=str(backbone), strategies=list(strategies), heads=INTERSECTION_HEADS, version=2)
    if others:
        keys["across"] = {m: str(p) for m, p in others.items()}
    return runs.run_dir(cfg, "active-experiment", keys)


def check_strategies(strategies: Sequence[str]) -> list[str]:
    strategies = list(strategies)
    bad = [s for s in strategies if s not in STRATEGIES + (ACROSS,)]
    if bad or not strategies:
        raise ConfigError(f"strategies={strategies!r} is not allowed: a list drawn from "
                          f"{', '.join(STRATEGIES + (ACROSS,))}")
    if "random" not in strategies:
        raise ConfigError("strategies must include random: every strategy is compared with it")
    return strategies


def experiment(cfg: Mapping[str, Any], seeds: int = 10, strategies: Sequence[str] = STRATEGIES) -> dict:
    """Run (or load) every seed; returns ``{"seeds": [per-seed results], "run": folder}``.
    Each seed is stored as it finishes (``seed-{s}.json``), so a stopped experiment resumes."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 2:
        raise ConfigError(f"seeds={seeds!r} is not allowed: an integer >= 2 (a paired interval needs two)")
    strategies = check_strategies(strategies)
    config_mod.validate(cfg)
    backbone = Path(pretrain(cfg)["backbone"])
    feats = frozen_features(cfg, backbone)
    across = across_features(cfg) if ACROSS in strategies else {}
    if ACROSS in strategies and not across:
        raise ConfigError(f"strategies include {ACROSS} but ensemble_models={cfg['ensemble_models']!r} names no "
                          f"method besides the main line's Barlow Twins; name two or more, e.g. barlow,byol,swav")
    spaces = {m: f for m, (_, f) in across.items()}
    out = experiment_dir(cfg, backbone, strategies, {m: p for m, (p, _) in across.items()})
    from tqdm.auto import tqdm
    per_seed = []
    with runs.claim(out):
        for s in tqdm(range(seeds), desc="active learning", unit="seed", disable=not cfg["progress"], file=sys.stderr):
            f = out / f"seed-{s}.json"
            if not f.is_file():
                runs.write_json(f, run_seed(cfg, s, feats, strategies, out, spaces))
            per_seed.append(runs.read_json(f))
    return {"run": str(out), "backbone": str(backbone), "seeds": per_seed, "strategies": strategies,
            "budget": cfg["al_budget"], "rounds": cfg["al_rounds"]}


# ------------------------------------------------------------------ what the chapter reports
def accuracies(result: Mapping[str, Any], strategy: str) -> np.ndarray:
    """(seeds, rounds + 1) test accuracies of ``strategy``."""
    return np.array([[r["test_accuracy"] for r in s["strategies"][strategy]["rounds"]] for s in result["seeds"]])


def labels_axis(result: Mapping[str, Any]) -> list[int]:
    return [r["labels"] for r in result["seeds"][0]["strategies"]["random"]["rounds"]]


def curve_rows(result: Mapping[str, Any]) -> list[dict]:
    """Accuracy (%) against labels: mean and 95% interval over seeds, per strategy and round."""
    rows = []
    for strategy in result["strategies"]:
        acc = accuracies(result, strategy)
        for r, n in enumerate(labels_axis(result)):
            i = mean_interval(acc[:, r])
            rows.append({"strategy": strategy, "round": r, "labels": n, "mean": 100 * i["mean"],
                         "low": 100 * i["low"], "high": 100 * i["high"], "seeds": i["n"]})
    return rows


def area(acc: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """Normalised area under each seed's learning curve: the trapezoid mean of accuracy over labels."""
    x = np.asarray(labels, dtype=np.float64)
    return np.trapezoid(acc, x, axis=1) / (x[-1] - x[0])


AREA = "area under the curve"


def comparison(result: Mapping[str, Any], strategy: str, at: int | str = AREA, against: str = "random"
               ) -> Comparison:
    """``strategy`` minus ``against`` (default random) on the same seeds: test accuracy after
    round ``at`` (an integer) or the normalised area under the learning curve (:data:`AREA`)."""
    a, b = accuracies(result, strategy), accuracies(result, against)
    if at == AREA:
        a, b, where = area(a, labels_axis(result)), area(b, labels_axis(result)), AREA
    else:
        a, b, where = a[:, at], b[:, at], f"round {at}"
    return Comparison(a=a, b=b, seeds=[s["seed"] for s in result["seeds"]], arms=(strategy, against),
                      what=f"{strategy} minus {against}", measure=where)


def comparisons(result: Mapping[str, Any]) -> dict[tuple[str, str], Comparison]:
    """Each strategy minus random, per round and for the area under the curve, keyed by
    ``(strategy, "round r" or AREA)``."""
    rounds = len(labels_axis(result)) - 1
    return {(strategy, f"round {r}" if r != AREA else AREA): comparison(result, strategy, r)
            for strategy in result["strategies"] if strategy != "random"
            for r in [*range(1, rounds + 1), AREA]}


def difference_rows(result: Mapping[str, Any]) -> list[dict]:
    """:func:`comparisons` as table rows: the strategy, where, then the renderer's columns."""
    return [c.row({"strategy": strategy, "at": at}) for (strategy, at), c in comparisons(result).items()]


def balance_rows(result: Mapping[str, Any], classes: Sequence[str]) -> list[dict]:
    """The classes of each strategy's requests (all rounds, mean over seeds), and how even they
    are: the smallest and largest class share and the entropy over log(classes)."""
    rows = []
    for strategy in result["strategies"]:
        counts = np.mean([np.sum([r["requested_per_class"] for r in s["strategies"][strategy]["rounds"][1:]], axis=0)
                          for s in result["seeds"]], axis=0)
        share = counts / counts.sum()
        entropy = float(-(share[share > 0] * np.log(share[share > 0])).sum() / np.log(len(share)))
        rows.append({"strategy": strategy, **{c: float(v) for c, v in zip(classes, counts)},
                     "smallest share": float(share.min()), "largest share": float(share.max()),
                     "evenness": entropy})
    return rows


def already_right_rows(result: Mapping[str, Any]) -> list[dict]:
    """How many requests the classifier of the time already predicted right (mean over seeds)."""
    rows = []
    for strategy in result["strategies"]:
        per_round = np.array([[r["already_right"] for r in s["strategies"][strategy]["rounds"][1:]]
                              for s in result["seeds"]], dtype=np.float64)
        rows.append({"strategy": strategy, **{f"round {r + 1}": float(v) for r, v in enumerate(per_round.mean(0))},
                     "share": float(per_round.mean() / result["budget"])})
    return rows


def settings_rows(cfg: Mapping[str, Any], result: Mapping[str, Any], n_classes: int) -> list[dict]:
    """The experiment's settings as one table row (what a reader needs to read the curves)."""
    clusters = cfg["al_clusters"] or n_classes
    candidates = cfg["al_candidates"]
    return [{"seeds": len(result["seeds"]), "labels at the start": labels_axis(result)[0],
             "requests per round": cfg["al_budget"], "rounds": cfg["al_rounds"],
             "candidates kept": f"{100 * candidates:.1f}% of the pool" if candidates <= 1 else int(candidates),
             "clusters": clusters, "per cluster": cfg["al_per_cluster"] or -(-cfg["al_budget"] // clusters),
             "head epochs / rate": f"{cfg['al_head_epochs']} / {cfg['al_head_lr']}"}]


def verdict_values(result: Mapping[str, Any]) -> dict[str, str]:
    """The words and numbers the chapter's prose quotes about :func:`comparisons`, keyed by glue
    name: for every strategy (``not run`` where it was left out) the last round's and the area's
    mean difference, interval and verdict, and which strategy has the best area."""
    values: dict[str, str] = {}
    for name in STRATEGIES:
        key = name.replace("-", "_")
        values.update({f"al_final_{key}{end}": "not run" for end in ("", "_ci", "_above", "_verdict")})
        values.update({f"al_auc_{key}{end}": "not run" for end in ("", "_ci", "_verdict")})
    comps = comparisons(result)
    rounds = len(labels_axis(result)) - 1
    for (strategy, at), c in comps.items():
        key = strategy.replace("-", "_")
        for where, prefix in ((f"round {rounds}", "al_final"), (AREA, "al_auc")):
            if at == where:
                values.update({f"{prefix}_{key}": c.number(), f"{prefix}_{key}_ci": c.interval(),
                               f"{prefix}_{key}_verdict": c.verdict()})
                if prefix == "al_final":
                    values[f"al_final_{key}_above"] = c.wins()
    areas = {s: c for (s, at), c in comps.items() if at == AREA}
    if areas:
        best = max(areas, key=lambda s: areas[s].mean)
        values.update(al_best_auc=best, al_best_auc_verdict=areas[best].verdict())
    widths = [100 * (c.high - c.low) for c in comps.values()]
    values["al_ci_width"] = f"{np.median(widths):.2f}" if widths else "not run"
    return values


def intersection_agreement(result: Mapping[str, Any]) -> list[int]:
    """Per seed and round, how many requests were in every model's own selection."""
    if "intersection" not in result["strategies"]:
        return []
    return [r["selection"]["in_every_selection"] for s in result["seeds"]
            for r in s["strategies"]["intersection"]["rounds"][1:]]


def finetune_check(cfg: Mapping[str, Any], result: Mapping[str, Any], seeds: int,
                   strategies: Sequence[str] = ("margin-kmeans", "random")) -> list[dict]:
    """Section 3.4's fine-tuning (the whole network) on the final round's labelled set of
    ``strategies``, for the first ``seeds`` seeds, beside the start (no requests). Each is a
    fine-tuning run of its own (stored; a rerun loads it)."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 0 or seeds > len(result["seeds"]):
        raise ConfigError(f"finetune_check_seeds={seeds!r} is not allowed: an integer from 0 to the "
                          f"{len(result['seeds'])} seeds of the experiment")
    backbone = Path(result["backbone"])
    rows = []
    for s in result["seeds"][:seeds]:
        c = config_mod.load_profile(cfg["profile"], {k: v for k, v in cfg.items() if k != "profile"}, seed=s["seed"])
        row = {"seed": s["seed"], "start": finetune(c, "barlow", backbone)["test_accuracy"]}
        for strategy in strategies:
            got = s["strategies"][strategy]
            row[strategy] = finetune(c, "barlow", backbone, extra=(np.array(got["acquired"]),
                                                                   np.array(got["acquired_labels"])))["test_accuracy"]
            row[f"{strategy} (frozen head)"] = got["rounds"][-1]["test_accuracy"]
        rows.append(row)
    return rows


def first_round_view(cfg: Mapping[str, Any], result: Mapping[str, Any], seed: int = 0, show: int = 10) -> dict:
    """Round 1 of the paper's strategy for ``seed``, recomputed from its inputs (the starting head
    and the stored features) so a chapter can draw it: the pool's margins, the candidates, their
    k-means clusters in a 2-D principal-component projection, which of them were requested (the
    stored request file), whether the recomputed choice equals the stored one, and the pool images
    at the smallest and largest margins with their top two classes. For a chapter that writes
    the rule out: every pool image's class probabilities and what k-means clusters
    (``embedding``), the k-means seed, and the requested images' pool positions (``stored``)."""
    from sklearn.decomposition import PCA
    feats = frozen_features(cfg, Path(result["backbone"]))
    split, xs, train = seed_state(cfg, seed, feats)
    data = split.data
    head = train(split.labelled, data.labels[split.labelled], seed)
    pool = np.setdiff1d(split.unlabelled, split.labelled)
    sc = head_scores(head, xs[pool])
    cand = np.sort(active.margin_order(sc.margin)[:active.candidate_count(cfg["al_candidates"], len(pool))])
    probabilities = head_probabilities(head, xs[pool])                 # the numbers sc.margin ranks
    raw = probabilities[cand] if cfg["al_features"] == "softmax" else np.asarray(feats[pool[cand]])
    space = active.normalise(raw)                                     # what k-means sees
    clusters, _ = active.kmeans(space, cfg["al_clusters"] or data.num_classes, seed * 1000 + 1)
    stored = np.load(Path(result["run"]) / f"seed{seed}" / "margin-kmeans-round1.npz")["index"]
    again = active.select("margin-kmeans", cfg["al_budget"], seed * 1000 + 1, margin=sc.margin,
                          features=lambda p: raw[np.searchsorted(cand, p)], candidates=cfg["al_candidates"],
                          clusters=cfg["al_clusters"] or data.num_classes, quota=cfg["al_per_cluster"],
                          order=cfg["al_order"])
    order = active.margin_order(sc.margin)

    def gallery(positions):
        p = probabilities[positions]
        top = np.argsort(-p, 1)[:, :2]
        return (data.images[pool[positions]],
                # one name a line: "Sneaker/Ankle boot" ran into the neighbouring titles
                [f"{data.classes[a][:11]}\n{data.classes[b][:11]}\n{sc.margin[q]:.2g}"
                 for q, (a, b) in zip(positions, top)])
    every = probabilities if cfg["al_features"] == "softmax" else np.asarray(feats[pool])
    return {"margin": sc.margin, "candidates": len(cand), "pool": len(pool),
            "probabilities": probabilities, "embedding": every,
            "kmeans_seed": seed * 1000 + 1, "stored": np.searchsorted(pool, stored),
            "xy": PCA(2, random_state=0).fit_transform(space), "cluster": clusters,
            "requested": np.isin(pool[cand], stored), "matches_stored": bool(np.array_equal(np.sort(pool[again.positions]),
                                                                                          np.sort(stored))),
            "smallest": gallery(order[:show]), "largest": gallery(order[::-1][:show]),
            "requested_truth": data.labels[stored]}
