"""Active learning (paper section 3.6): which unlabelled images to have labelled.

The paper ranks the pool by the **margin** between the two largest softmax scores (small margin:
the classifier hesitates), keeps the most ambiguous candidates (70,000 of 512,000), embeds them
with the backbone, clusters them with **k-means** into as many clusters as classes and takes 16
per cluster, so the requests are ambiguous *and* spread over the pool; the selections of several
classifiers were intersected.

This module is the selection itself, on plain arrays, so every rule is testable against a slow
version: :func:`select` for the four strategies at an equal budget (``random``, ``margin``,
``kmeans``, ``margin-kmeans``), :func:`intersect` for several models' selections, and the label
request files of the competition (one image file name per line) with an oracle that answers them
from labels the training never saw (:func:`write_requests`, :func:`read_requests`, :func:`answer`).

Orders are total: ties in margin or distance go to the lower pool position, so a selection is a
function of its inputs and the seed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from . import runs
from .errors import ConfigError, LosslessError

STRATEGIES = ("random", "margin", "kmeans", "margin-kmeans")
ORDERS = ("margin", "centroid")


def margin_order(margin: np.ndarray) -> np.ndarray:
    """Pool positions from the most ambiguous (smallest margin) on; ties: lower position first."""
    return np.argsort(np.asarray(margin), kind="stable")


def candidate_count(value: float | int, pool: int) -> int:
    """``al_candidates`` as a number of images: a fraction of the pool when <= 1, else a count."""
    if value <= 0:
        raise ConfigError(f"al_candidates={value!r} is not allowed: a fraction in (0, 1] or a count >= 1")
    n = int(round(value * pool)) if value <= 1 else int(value)
    return min(max(n, 1), pool)


KMEANS_SEEDING_SAMPLE = 10_000


def kmeans(features: np.ndarray, clusters: int, seed: int, minibatch: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Cluster labels (N,) and centres (K, D) of scikit-learn's k-means, deterministic for a seed.

    k-means++ seeding is sequential in the number of clusters: at the paper's 70,000 x 512 into 800
    it alone took 71 s of KMeans's 68-71 s here, its Lloyd iterations 4 s. So above
    :data:`KMEANS_SEEDING_SAMPLE` points the seeds are drawn by k-means++ from a random sample of
    that many points, and Lloyd's iterations then run on every point."""
    from sklearn.cluster import KMeans, MiniBatchKMeans, kmeans_plusplus
    x = np.ascontiguousarray(features, dtype=np.float32)
    if clusters > len(x):
        raise ConfigError(f"al_clusters={clusters} is more than the {len(x)} images to cluster; use fewer clusters")
    init = "k-means++"
    if len(x) > KMEANS_SEEDING_SAMPLE and clusters < KMEANS_SEEDING_SAMPLE:
        sample = np.sort(np.random.default_rng(seed).choice(len(x), KMEANS_SEEDING_SAMPLE, replace=False))
        init, _ = kmeans_plusplus(x[sample], clusters, random_state=seed)
    if minibatch:
        model = MiniBatchKMeans(n_clusters=clusters, init=init, random_state=seed, n_init=1 if len(x) > KMEANS_SEEDING_SAMPLE
                                else 3, batch_size=4096)
    else:
        model = KMeans(n_clusters=clusters, init=init, random_state=seed, n_init=1)
    labels = model.fit_predict(x)
    return labels.astype(np.int64), model.cluster_centers_


def per_cluster(cluster: np.ndarray, key: np.ndarray, budget: int, quota: int) -> np.ndarray:
    """Up to ``quota`` positions of each cluster, smallest ``key`` first (ties: lower position),
    ``budget`` in all.

    The first pass takes ``min(quota, size)`` from every cluster; when it holds more than the
    budget, the budget smallest keys of it are kept; when some clusters are smaller than the quota
    and the pass holds less, the shortfall is filled from the other clusters' remaining members by
    the same order (smallest key across all of them)."""
    cluster, key = np.asarray(cluster), np.asarray(key, dtype=np.float64)
    n_clusters = int(cluster.max()) + 1 if len(cluster) else 0
    if quota * n_clusters < budget:
        raise ConfigError(f"al_per_cluster={quota} x {n_clusters} clusters = {quota * n_clusters} requests, fewer "
                          f"than the budget of {budget}; raise al_per_cluster or al_clusters, or lower the budget")
    if budget > len(cluster):
        raise ConfigError(f"budget={budget} is more than the {len(cluster)} images to choose from")
    order = np.lexsort((np.arange(len(key)), key))          # by key, then position
    rank_in_cluster = np.empty(len(order), dtype=np.int64)
    seen = np.zeros(n_clusters, dtype=np.int64)
    for pos in order:                                       # rank of each image inside its cluster
        c = cluster[pos]
        rank_in_cluster[pos] = seen[c]
        seen[c] += 1
    first = order[rank_in_cluster[order] < quota]           # the first pass, in key order
    if len(first) >= budget:
        chosen = first[:budget]
    else:
        rest = order[rank_in_cluster[order] >= quota]
        chosen = np.concatenate([first, rest[:budget - len(first)]])
    return np.sort(chosen)


@dataclass
class Selection:
    """Chosen pool positions (sorted) and, per chosen image, the score the rule ranked it by."""
    strategy: str
    positions: np.ndarray
    score: np.ndarray
    info: dict = field(default_factory=dict)


def select(strategy: str, budget: int, seed: int, margin: np.ndarray | None = None,
           features=None, candidates: float | int = 70_000 / 512_000,
           clusters: int = 10, quota: int | None = None, order: str = "margin", minibatch: bool = False) -> Selection:
    """``budget`` positions of a pool of ``len(margin)`` (or ``len(features)``) images;
    ``features`` is an (N, D) array or a function of positions that returns their rows (so only the
    images the rule clusters are embedded).

    * ``random``: uniform without replacement, from ``seed``;
    * ``margin``: the ``budget`` smallest margins;
    * ``kmeans``: k-means of every pool image's ``features``, the images nearest each centre
      (representative, no margin);
    * ``margin-kmeans`` (the paper): the ``candidates`` most ambiguous, k-means of their features,
      up to ``quota`` per cluster, most ambiguous first (``order="margin"``) or nearest the centre
      (``order="centroid"``).

    ``quota`` None is the budget over the clusters, rounded up (the paper: 12,800 / 800 = 16).
    Rows of ``features`` are L2-normalised before k-means (directions, as the SSL literature
    compares embeddings; a few wide features would otherwise decide every distance)."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy={strategy!r} is not allowed: one of {', '.join(STRATEGIES)}")
    if order not in ORDERS:
        raise ConfigError(f"al_order={order!r} is not allowed: one of {', '.join(ORDERS)}")
    n = len(margin) if margin is not None else len(features) if features is not None and not callable(features) else 0
    if not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ConfigError(f"budget={budget!r} is not allowed: an integer >= 1")
    if budget > n:
        raise ConfigError(f"budget={budget} is more than the {n} images in the pool; lower the budget")
    if strategy in ("margin", "margin-kmeans") and margin is None:
        raise LosslessError(f"strategy {strategy} needs the pool's margins")
    if strategy in ("kmeans", "margin-kmeans") and features is None:
        raise LosslessError(f"strategy {strategy} needs the pool's features")
    quota = quota if quota is not None else -(-budget // clusters)
    if strategy == "random":
        pos = np.sort(np.random.default_rng(seed).choice(n, size=budget, replace=False))
        return Selection(strategy, pos, np.zeros(budget))
    if strategy == "margin":
        pos = np.sort(margin_order(margin)[:budget])
        return Selection(strategy, pos, np.asarray(margin)[pos])
    if strategy == "kmeans":
        features = _features(features, np.arange(n))
        labels, centres = kmeans(features, clusters, seed, minibatch)
        dist = _distance_to_centre(features, labels, centres)
        pos = per_cluster(labels, dist, budget, quota)
        return Selection(strategy, pos, dist[pos], {"clusters": clusters})
    cand = np.sort(margin_order(margin)[:candidate_count(candidates, n)])
    if budget > len(cand):
        raise ConfigError(f"budget={budget} is more than the {len(cand)} candidates (al_candidates={candidates}); "
                          f"raise al_candidates or lower the budget")
    cand_features = _features(features, cand)
    labels, centres = kmeans(cand_features, clusters, seed, minibatch)
    key = np.asarray(margin)[cand] if order == "margin" else _distance_to_centre(cand_features, labels, centres)
    chosen = cand[per_cluster(labels, key, budget, quota)]
    return Selection(strategy, np.sort(chosen), np.asarray(margin)[np.sort(chosen)],
                     {"candidates": int(len(cand)), "clusters": clusters, "order": order})


def intersect(selections: Sequence[np.ndarray], margins: Sequence[np.ndarray], budget: int,
              allow_empty: bool = False) -> np.ndarray:
    """The images every model chose, ``budget`` of them, as the paper intersected its models.

    Each image's *summed margin rank* (its position in each model's margin order, added up) breaks
    every choice: an intersection larger than the budget keeps its smallest summed ranks; a smaller
    one is filled with the images of the union not in it, smallest summed rank first. An empty
    intersection is an error (the models agree on nothing) unless ``allow_empty``, when the whole
    budget comes from the union by summed margin rank (the experiment counts how often)."""
    common = selections[0]
    for s in selections[1:]:
        common = np.intersect1d(common, s)
    if len(common) == 0 and not allow_empty:
        raise LosslessError(f"the {len(selections)} models' selections have no image in common; intersect fewer "
                            f"models, or use one model's selection")
    n = len(margins[0])
    summed = np.zeros(n, dtype=np.int64)
    for m in margins:
        rank = np.empty(n, dtype=np.int64)
        rank[margin_order(m)] = np.arange(n)
        summed += rank
    by_rank = lambda pos: pos[np.lexsort((pos, summed[pos]))]  # noqa: E731
    if len(common) >= budget:
        return np.sort(by_rank(common)[:budget])
    union = np.setdiff1d(np.unique(np.concatenate(list(selections))), common)
    fill = by_rank(union)[:budget - len(common)]
    if len(common) + len(fill) < budget:
        rest = by_rank(np.setdiff1d(np.arange(n), np.concatenate([common, fill])))
        fill = np.concatenate([fill, rest[:budget - len(common) - len(fill)]])
    return np.sort(np.concatenate([common, fill]))


TYPICALITY_NEIGHBOURS = 20
TYPICLUST_MIN_CLUSTER = 5


def typicality(x: np.ndarray, k: int = TYPICALITY_NEIGHBOURS) -> np.ndarray:
    """Each row's typicality: 1 / (mean Euclidean distance to its ``k`` nearest other rows)
    (Hacohen, Dekel & Weinshall, 2022): high in the dense middle of a cluster."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    k = max(1, min(k, n - 1))
    if n == 1:
        return np.ones(1)
    sq = (x * x).sum(1)
    out = np.empty(n)
    for start in range(0, n, 1024):
        d2 = sq[start:start + 1024, None] + sq[None, :] - 2 * x[start:start + 1024] @ x.T
        d2[np.arange(len(d2)), np.arange(start, start + len(d2))] = np.inf      # not its own neighbour
        near = np.sqrt(np.maximum(np.partition(d2, k - 1, axis=1)[:, :k], 0))
        out[start:start + 1024] = 1.0 / (near.mean(1) + 1e-5)
    return out


def typiclust(pool_features: np.ndarray, labelled_features: np.ndarray, budget: int, seed: int,
              max_clusters: int = 500) -> Selection:
    """TypiClust (Hacohen et al., 2022), the strongest published rule at tiny budgets: k-means of
    labelled + pool into ``min(labelled + budget, max_clusters)`` clusters; clusters with fewer
    than :data:`TYPICLUST_MIN_CLUSTER` images are left out, the rest are visited from the fewest
    labelled images (uncovered first), then the largest, one request each, cycling when the
    budget is larger; each request is the most *typical* pool image left in its cluster
    (:func:`typicality` with min(20, half the cluster) neighbours). Positions are into the pool."""
    pool_n = len(pool_features)
    if not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ConfigError(f"budget={budget!r} is not allowed: an integer >= 1")
    if budget > pool_n:
        raise ConfigError(f"budget={budget} is more than the {pool_n} images in the pool; lower the budget")
    x = normalise(np.concatenate([np.asarray(labelled_features), np.asarray(pool_features)]))
    n_lab = len(labelled_features)
    k = min(n_lab + budget, max_clusters, len(x))
    cluster, _ = kmeans(x, k, seed, minibatch=True)   # as the authors of TypiClust did above 50 clusters
    sizes = np.bincount(cluster, minlength=k)
    covered = np.bincount(cluster[:n_lab], minlength=k)
    ids = np.flatnonzero(sizes >= TYPICLUST_MIN_CLUSTER)
    visit = ids[np.lexsort((ids, -sizes[ids], covered[ids]))]   # fewest labelled, then largest, then id
    pool_cluster = cluster[n_lab:]
    free = np.ones(pool_n, dtype=bool)
    chosen, score = [], []
    i = 0
    while len(chosen) < budget:
        if not free.any() or i >= len(visit) * (budget + 1):
            raise LosslessError(f"TypiClust found only {len(chosen)} of {budget} requests in clusters of "
                                f">= {TYPICLUST_MIN_CLUSTER} images; lower the budget")
        c = visit[i % len(visit)]
        i += 1
        members = np.flatnonzero((pool_cluster == c) & free)
        if len(members) == 0:
            continue
        t = typicality(x[n_lab + members], min(TYPICALITY_NEIGHBOURS, max(len(members) // 2, 1)))
        best = int(np.argmax(t))                                    # ties: the lowest position
        chosen.append(members[best])
        score.append(t[best])
        free[members[best]] = False
    order = np.argsort(chosen)
    return Selection("typiclust", np.asarray(chosen, dtype=np.int64)[order], np.asarray(score)[order],
                     {"clusters": int(k), "clusters_used": int(len(visit))})


def _features(features, positions: np.ndarray) -> np.ndarray:
    """Rows ``positions`` of an array, or ``features(positions)`` of a callable that embeds them,
    L2-normalised (float32)."""
    x = np.asarray(features(positions) if callable(features) else np.asarray(features)[positions], dtype=np.float32)
    return normalise(x)


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _distance_to_centre(features: np.ndarray, labels: np.ndarray, centres: np.ndarray) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    return np.linalg.norm(x - np.asarray(centres, dtype=np.float64)[labels], axis=1)


# ------------------------------------------------------------------ label requests and the oracle
def image_names(data, indices: np.ndarray) -> list[str]:
    """The file name a request uses for each dataset index: ``{i}.png`` for the NYU layout's
    ``unlabeled/`` folder (the competition's format), ``{part}/{position}`` elsewhere."""
    starts = {k: int(np.argmax(data.part == k)) for k in range(len(data.part_names))}  # parts are contiguous
    names = []
    for i in np.asarray(indices):
        k = int(data.part[i])
        part, position = data.part_names[k], int(i) - starts[k]
        names.append(f"{position}.png" if data.name == "nyu-dl21" and part == "unlabeled" else f"{part}/{position}")
    return names


def name_index(data) -> dict[str, int]:
    """Every image's request name -> its dataset index."""
    all_idx = np.arange(len(data.labels))
    return dict(zip(image_names(data, all_idx), all_idx.tolist()))


def write_requests(path: Path, data, selection: Selection, header: dict) -> Path:
    """The request file (one name per line, in pool order) and, beside it, ``{stem}.npz`` with
    the indices, their scores and ``header`` (seed, round, strategy, ...). Both atomic."""
    path = Path(path)
    idx = np.asarray(selection.positions)
    runs.write_text(path, "".join(n + "\n" for n in image_names(data, idx)))
    runs.write_npz(path.with_suffix(".npz"), index=idx, score=np.asarray(selection.score), header=json.dumps(header))
    return path


def read_requests(path: Path, data, already: np.ndarray | None = None) -> np.ndarray:
    """Dataset indices named by a request file, checked: every name exists, none twice, none
    requested (or labelled) before (``already``)."""
    path = Path(path)
    if not path.is_file():
        raise LosslessError(f"request file {path} does not exist")
    names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    lookup = name_index(data)
    seen: dict[str, int] = {}
    for n, name in enumerate(names, 1):
        if name not in lookup:
            raise LosslessError(f"{path}, line {n}: no image named {name!r} in {data.name}; a request names "
                                f"images as {next(iter(lookup))!r} does")
        if name in seen:
            raise LosslessError(f"{path}, line {n}: {name!r} is requested twice (first on line {seen[name]}); "
                                f"each image once")
        seen[name] = n
    idx = np.array([lookup[name] for name in names], dtype=np.int64)
    if already is not None:
        again = np.intersect1d(idx, already)
        if len(again):
            first = image_names(data, again[:3])
            raise LosslessError(f"{path}: {len(again)} image(s) were requested or labelled before ({', '.join(first)}"
                                f"{', ...' if len(again) > 3 else ''}); a request asks only for new images")
    return idx


def request_header(path: Path) -> dict:
    """What ``write_requests`` stored beside a request file (seed, round, strategy, ...); ``{}``
    for a request file written by hand. A header that cannot be read is a one-line error."""
    beside = Path(path).with_suffix(".npz")
    if not beside.is_file():
        return {}
    try:
        with np.load(beside, allow_pickle=False) as z:
            return json.loads(str(z["header"]))
    except (OSError, ValueError, KeyError) as e:
        raise LosslessError(f"{beside}: not a request header written by `lossless select` ({e}); "
                            f"delete it to answer {Path(path).name} as a hand-written request") from None


def answer(path: Path, data, labelled: np.ndarray, hidden_labels: np.ndarray | None = None,
           pool: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The oracle: the true labels of a request file's images, from labels the training never saw
    (the pool's hidden labels, or ``hidden_labels`` for a layout whose pool has none on disk).
    ``pool``: the images the asking run may request (its unlabelled pool); any other image (its
    validation or test images, another split's) is refused. Returns (the new labelled indices,
    their labels)."""
    idx = read_requests(path, data, already=labelled)
    if pool is not None:
        outside = idx[~np.isin(idx, pool)]
        if len(outside):
            first = image_names(data, outside[:3])
            raise LosslessError(f"{path}: {len(outside)} image(s) are not in this run's unlabelled pool "
                                f"({', '.join(first)}{', ...' if len(outside) > 3 else ''}: validation, test or "
                                f"another split's images); the oracle answers only pool images of the run that asked")
    labels = np.asarray(hidden_labels if hidden_labels is not None else data.labels)[idx]
    if (labels < 0).any():
        missing = image_names(data, idx[labels < 0][:3])
        raise LosslessError(f"the oracle has no label for {', '.join(missing)}: give the pool's labels "
                            f"(a labels tensor for the NYU layout)")
    return idx, labels


# ------------------------------------------------------------------ one round, from a configuration
def select_round(cfg, strategy: str, budget: int, out: Path | None = None,
                 previous: Sequence[Path] = ()) -> dict:
    """Score the pool of ``cfg``'s split with its fine-tuned classifier (section 3.4; trained
    first when missing), choose ``budget`` images by ``strategy`` and write the request file
    (default: ``runs/active-{hash}/requests-{strategy}.txt``). Images named by ``previous``
    request files are no longer in the pool. Returns where the file is and what was asked for."""
    import torch

    from . import config as config_mod
    from .engine import resolve_device, resolve_precision
    from .evaluate import score
    from .finetune import finetune, load_classifier
    from .pretrain import load_data
    from .probes import embed
    config_mod.validate(cfg)
    device = resolve_device(cfg["device"])
    amp = resolve_precision(cfg["precision"], device)
    split = load_data(cfg, bool(cfg["progress"]))
    data = split.data
    asked = np.concatenate([read_requests(p, data) for p in previous] or [np.empty(0, dtype=np.int64)])
    pool = np.setdiff1d(split.unlabelled, asked)
    start = finetune(cfg, "barlow")
    model = load_classifier(cfg, split, Path(start["classifier"]), device, amp)
    scores = score(model, data.images[pool], model.augmenter.plain, device, amp)

    def features(positions: np.ndarray) -> np.ndarray:
        """What k-means clusters: the backbone's embedding (the paper) or the softmax (the authors' code)."""
        with torch.no_grad():
            if cfg["al_features"] == "softmax":
                return embed(model, data.images[pool[positions]], model.augmenter, device, amp).softmax(1).numpy()
            return embed(model.backbone, data.images[pool[positions]], model.augmenter, device, amp).numpy()
    sel = select(strategy, budget, cfg["seed"], margin=scores.margin, features=features,
                 candidates=cfg["al_candidates"], clusters=cfg["al_clusters"] or data.num_classes,
                 quota=cfg["al_per_cluster"], order=cfg["al_order"])
    chosen = Selection(strategy, pool[sel.positions], sel.score, sel.info)
    header = {"seed": cfg["seed"], "round": len(previous) + 1, "strategy": strategy, "budget": budget,
              "classifier": start["classifier"], **sel.info}
    if out is None:
        keys = {k: cfg.get(k) for k in ("dataset", "data_root", "labels_per_class", "val_per_class", "seed")}
        out = runs.run_dir(cfg, "active", dict(keys, classifier=start["classifier"])) / \
            f"requests-{strategy}-round{len(previous) + 1}.txt"
    path = write_requests(Path(out), data, chosen, header)
    truth = data.labels[chosen.positions]
    known = truth >= 0
    right = scores.prediction[sel.positions] == truth
    return {"requests": str(path), "indices": str(Path(path).with_suffix(".npz")), "strategy": strategy,
            "requested": int(len(chosen.positions)), "pool": int(len(pool)),
            "already_right": int(right[known].sum()) if known.any() else None,
            "requested_per_predicted_class": np.bincount(scores.prediction[sel.positions],
                                                         minlength=data.num_classes).tolist()}


def answer_round(cfg, requests: Path, previous: Sequence[Path] = (), labels_file: Path | None = None) -> dict:
    """The oracle for ``requests``: the true label of every image it names, from labels the training
    never saw (the pool's hidden labels; for the NYU layout, whose pool has none on disk, a
    ``labels_file`` (a torch tensor over the ``unlabeled/`` folder's numbered images)). Writes
    ``{requests}.answers.txt`` (name and label per line) and returns the counts per class."""
    import torch

    from .pretrain import load_data
    stored = request_header(Path(requests))
    if "seed" in stored and int(stored["seed"]) != int(cfg["seed"]):
        raise LosslessError(f"{requests} was written by the run with seed={stored['seed']}, whose pool differs "
                            f"from seed={cfg['seed']}'s: answer it with seed={stored['seed']}")
    split = load_data(cfg, bool(cfg["progress"]))
    data = split.data
    asked = np.concatenate([read_requests(p, data) for p in previous] or [np.empty(0, dtype=np.int64)])
    hidden = None
    if labels_file is not None:
        if not Path(labels_file).is_file():
            raise LosslessError(f"labels file {labels_file} does not exist")
        pool_part = data.indices("unlabeled")
        values = torch.load(labels_file, weights_only=True)
        values = np.asarray(values.numpy() if hasattr(values, "numpy") else values, dtype=np.int64)
        if len(values) != len(pool_part):
            raise LosslessError(f"{labels_file} holds {len(values)} labels for the {len(pool_part)} images of "
                                f"unlabeled/; give the tensor of that folder")
        hidden = data.labels.copy()
        hidden[pool_part] = values
    idx, labels = answer(Path(requests), data, np.concatenate([split.labelled, asked]), hidden, pool=split.unlabelled)
    names = image_names(data, idx)
    out = Path(str(requests) + ".answers.txt")
    runs.write_text(out, "".join(f"{n} {int(y)}\n" for n, y in zip(names, labels)))
    return {"answers": str(out), "answered": int(len(idx)),
            "per_class": np.bincount(labels, minlength=data.num_classes).tolist()}
