"""Every figure of the book (the only module that draws). Each function returns a Figure."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import functools
import warnings

import matplotlib.pyplot as plt
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator
import numpy as np


def _show(ax, img: np.ndarray) -> None:
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(1, 2, 0)
    if img.shape[-1] == 1:
        ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=img.max() if img.dtype != np.uint8 else 255)
    else:
        ax.imshow(img)
    ax.set_xticks([])
    ax.set_yticks([])


def sample_grid(images: np.ndarray, labels: np.ndarray, classes: Sequence[str], per_class: int = 6):
    """``per_class`` images of each class in a row (section 3.1)."""
    shown = [c for c in range(len(classes)) if (labels == c).any()][:10]
    fig, axes = plt.subplots(len(shown), per_class, figsize=(per_class * 0.9, len(shown) * 0.95), squeeze=False)
    for row, c in enumerate(shown):
        idx = np.flatnonzero(labels == c)[:per_class]
        for col in range(per_class):
            ax = axes[row, col]
            if col < len(idx):
                _show(ax, images[idx[col]])
            else:
                ax.axis("off")
        axes[row, 0].set_ylabel(classes[c], rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    return fig


def view_pairs(originals: np.ndarray, view1, view2):
    """Each image beside its two Barlow Twins views (rows: original, view 1, view 2)."""
    def to_img(t):
        x = np.asarray(t, dtype=np.float32)
        lo, hi = x.min(), x.max()
        return (x - lo) / max(hi - lo, 1e-6)
    n = len(originals)
    fig, axes = plt.subplots(3, n, figsize=(n * 1.0, 3.2), squeeze=False)
    for i in range(n):
        _show(axes[0, i], originals[i])
        _show(axes[1, i], to_img(view1[i]))
        _show(axes[2, i], to_img(view2[i]))
    for row, name in enumerate(("image", "view 1", "view 2")):
        axes[row, 0].set_ylabel(name, fontsize=9)
    fig.tight_layout()
    return fig


def stage_bars(tables: dict[str, list[dict]]):
    """GFLOPs per stage for several backbones (Figure 1's companion)."""
    fig, ax = plt.subplots(figsize=(7, 3))
    names = list(tables)
    stages = [r["stage"] for r in tables[names[0]]]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        ax.bar(np.arange(len(stages)) + i * width, [r["gflops"] for r in tables[name]], width, label=name)
    ax.set_xticks(np.arange(len(stages)) + width * (len(names) - 1) / 2, stages)
    ax.set_ylabel("forward GFLOP per image")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def correlation_heatmaps(matrices: dict[str, np.ndarray], size: int = 64):
    """The top-left ``size`` x ``size`` block of cross-correlation matrices, side by side."""
    fig, axes = plt.subplots(1, len(matrices), figsize=(3.4 * len(matrices), 3.2), squeeze=False)
    for ax, (name, c) in zip(axes[0], matrices.items()):
        im = ax.imshow(np.asarray(c)[:size, :size], cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="correlation between two features")
    return fig


# What the stored metric names mean, for axis labels and legends.
NAMES = {"loss": "training loss", "acc": "training accuracy", "val_loss": "validation loss",
         "val_acc": "validation accuracy", "knn_val": "k-NN probe (validation)",
         "linear_probe_val": "linear probe (validation)", "embedding_std": "embedding std",
         "epoch": "epoch", "minutes": "minutes"}


def name(metric: str) -> str:
    """A stored metric's human-readable name (the name itself when it has none)."""
    return NAMES.get(metric, metric.replace("_", " "))


def training_curves(rows: list[dict], metrics: Sequence[str] = ("knn_val", "linear_probe_val"), x: str = "epoch"):
    """Loss and the monitors' accuracy (%) against epochs (or ``x="minutes"``, which depends on the machine)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3))
    xs = [r[x] for r in rows]
    a.plot(xs, [r["loss"] for r in rows], marker="o")
    a.set_xlabel(name(x))
    a.set_ylabel("Barlow Twins loss")
    for m in metrics:
        b.plot(xs, [100 * r[m] for r in rows], marker="o", label=name(m))
    b.set_xlabel(name(x))
    b.set_ylabel("accuracy %")
    b.legend(fontsize=8)
    if x == "epoch":
        for ax in (a, b):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


def curve(xs, ys, xlabel: str, ylabel: str, logy: bool = False):
    """One line (e.g. the learning-rate schedule)."""
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.plot(xs, ys)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    fig.tight_layout()
    return fig


def confusion(matrix, classes: Sequence[str], normalise: bool = True):
    """Confusion matrix (rows: true class, columns: prediction), each row as fractions."""
    m = np.asarray(matrix, dtype=np.float64)
    if normalise:
        m = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1 if normalise else None)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig


ACCURACIES = {"acc", "val_acc", "knn_val", "linear_probe_val"}   # stored as fractions, shown in %


def epoch_curves(runs: dict[str, list[dict]], metrics: Sequence[str] = ("val_loss", "val_acc"),
                 width: float = 4.5, marker: str | None = None, x: str = "epoch"):
    """Per-epoch metrics of several runs (one panel per metric; accuracies in %; an epoch
    without the metric, e.g. a monitor that ran every other epoch, is skipped). ``x="minutes"``
    puts each epoch at the training minutes spent by its end (the records' ``seconds``)."""
    if x not in ("epoch", "minutes"):
        raise ValueError(f"x={x!r}: epoch or minutes")
    fig, axes = plt.subplots(1, len(metrics), figsize=(width * len(metrics), 3), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        scale = 100 if m in ACCURACIES else 1
        for label, rows in runs.items():
            at = np.cumsum([r.get("seconds", 0.0) / 60 for r in rows]) if x == "minutes" \
                else [r["epoch"] for r in rows]
            pts = [(t, scale * r[m]) for t, r in zip(at, rows) if r.get(m) is not None]
            if pts:
                ax.plot(*zip(*pts), marker=marker, ms=3, label=label)
        ax.set_xlabel("epoch" if x == "epoch" else "training minutes")
        ax.set_ylabel(name(m) + (" %" if scale == 100 else ""))
        if x == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if len(labels) <= 2:
        axes[0, 0].legend(fontsize=8)
        fig.tight_layout()
        return fig
    # more runs: one legend under the panels (inside the first it hid curves and ran into the next)
    rows, (w, h) = -(-len(labels) // 3), fig.get_size_inches()
    fig.set_size_inches(w, h + 0.3 * rows)
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=8, frameon=False)
    fig.layout_rect = (0, 0.3 * rows / (h + 0.3 * rows) + 0.03, 1, 1)  # fit_column keeps it
    fig.tight_layout(rect=fig.layout_rect)
    return fig


def pseudo_rounds(histories: dict[str, list[dict]]):
    """Accuracy (test and validation) after each round, and the precision of each round's picks."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3))
    for name, rounds in histories.items():
        xs = [r["round"] for r in rounds]
        line, = a.plot(xs, [100 * r["test_accuracy"] for r in rounds], marker="o", label=f"{name}: test")
        a.plot(xs, [100 * r["val_accuracy"] for r in rounds], marker="x", ls="--", color=line.get_color(),
               label=f"{name}: val")
        picked = [r for r in rounds if r.get("precision") is not None]
        b.plot([r["round"] for r in picked], [100 * r["precision"] for r in picked], marker="o", label=name)
    a.set_xlabel("round (0: fine-tuned)")
    a.set_ylabel("accuracy %")
    a.legend(fontsize=8)
    b.set_xlabel("round")
    b.set_ylabel("pseudo-labels correct %")
    b.legend(fontsize=8)
    for ax in (a, b):
        ax.set_xticks(sorted({r["round"] for rs in histories.values() for r in rs}))
    fig.tight_layout()
    return fig


def class_composition(histories: dict[str, list[dict]], classes: Sequence[str]):
    """Which predicted classes each round's pseudo-labels belong to (stacked bars per rule and round)."""
    fig, ax = plt.subplots(figsize=(8, 3.2))
    bars, names = [], []
    for name, rounds in histories.items():
        for r in rounds:
            if "per_class" in r:
                bars.append(np.asarray(r["per_class"]))
                names.append(f"{name}\nround {r['round']}")
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    bottom = np.zeros(len(bars))
    for c in range(len(classes)):
        heights = np.array([b[c] for b in bars], dtype=float)
        ax.bar(range(len(bars)), heights, bottom=bottom, color=colours(c % colours.N), label=classes[c])
        bottom += heights
    ax.set_xticks(range(len(bars)), names, fontsize=8)
    ax.set_ylabel("images pseudo-labelled")
    ax.legend(fontsize=8, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return fig


def reliability(calibrations: dict[str, dict]):
    """Reliability diagram: accuracy against confidence per bin (the diagonal is perfect calibration)."""
    fig, ax = plt.subplots(figsize=(4.6, 4))
    ax.plot([0, 1], [0, 1], color="gray", lw=1, ls=":")
    for name, cal in calibrations.items():
        count = np.asarray(cal["count"])
        keep = count > 0
        ax.plot(np.asarray(cal["confidence"])[keep], np.asarray(cal["accuracy"])[keep], marker="o",
                label=f"{name} (ECE {100 * cal['ece']:.1f}%)")
    ax.set_xlabel("confidence (top softmax probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def precision_curve(rows: list[dict]):
    """Precision of each selection rule against the share of the pool taken."""
    fig, ax = plt.subplots(figsize=(6, 3))
    xs = [r["% of pool"] for r in rows]
    ax.plot(xs, [100 * r["global precision"] for r in rows], marker="o", label="global top p%")
    ax.plot(xs, [100 * r["balanced precision"] for r in rows], marker="o", label="class-balanced")
    ax.set_xlabel("% of the unlabelled pool selected")
    ax.set_ylabel("pseudo-labels correct %")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def seeds(result: dict, labels: dict[str, str]):
    """Test accuracy of every method, one dot per seed (methods down the side, so their names
    stay readable; the bar is the mean); a method run on fewer seeds says how many."""
    methods = list(result["summary"])[::-1]
    fig, a = plt.subplots(figsize=(6.8, 0.8 + 0.32 * len(methods)))
    n = len(result["seeds"])
    for i, m in enumerate(methods):
        vals = [100 * r[m] for r in result["seeds"] if m in r]  # FixMatch: its first seeds only
        a.scatter(vals, np.full(len(vals), i) + np.linspace(-0.15, 0.15, len(vals)), s=12)
        a.vlines(np.mean(vals), i - 0.3, i + 0.3, color="black", lw=1.2)
    a.set_yticks(range(len(methods)), [labels.get(m, m) + ("" if result["summary"][m]["n"] == n else
                                                           f" ({result['summary'][m]['n']} seeds)")
                                       for m in methods])
    a.set_xlabel(f"test accuracy % ({n} labelled sets)")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ active learning (section 3.6)
def margin_gallery(rows: dict[str, tuple[np.ndarray, list[str]]]):
    """Pool images in rows (e.g. smallest and largest margins), each titled (top-2 classes, margin)."""
    n = max(len(imgs) for imgs, _ in rows.values())
    lines = max((t.count("\n") + 1 for _, titles in rows.values() for t in titles), default=1)
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 1.05, len(rows) * (1.25 + 0.2 * lines)), squeeze=False)
    for r, (name, (imgs, titles)) in enumerate(rows.items()):
        for c in range(n):
            ax = axes[r, c]
            if c < len(imgs):
                _show(ax, imgs[c])
                ax.set_title(titles[c], fontsize=8)
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    return fig


def cluster_map(xy: np.ndarray, cluster: np.ndarray, chosen: np.ndarray, title: str = ""):
    """Candidates in a 2-D projection, coloured by k-means cluster, the requested ones marked."""
    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    colours = plt.get_cmap("tab10" if cluster.max() < 10 else "tab20")
    ax.scatter(xy[:, 0], xy[:, 1], c=[colours(int(k) % colours.N) for k in cluster], s=3, alpha=0.35, lw=0)
    ax.scatter(xy[chosen, 0], xy[chosen, 1], facecolors="none", edgecolors="black", s=28, lw=0.9,
               label="requested")
    ax.set_xlabel("first principal component")
    ax.set_ylabel("second principal component")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def learning_curves(rows: list[dict]):
    """Accuracy against labels: each strategy's mean over seeds with its 95% band."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        rs = [r for r in rows if r["strategy"] == strategy]
        x = [r["labels"] for r in rs]
        line, = ax.plot(x, [r["mean"] for r in rs], marker="o", ms=3, label=strategy,
                        lw=2 if strategy == "random" else 1.2, color="black" if strategy == "random" else None)
        ax.fill_between(x, [r["low"] for r in rs], [r["high"] for r in rs], color=line.get_color(), alpha=0.12)
    ax.set_xlabel("labelled images")
    ax.set_ylabel("test accuracy %")
    ax.set_title(f"mean and 95% interval over {max(r['seeds'] for r in rows)} seeds", fontsize=9)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig


def differences(comparisons: Mapping[tuple[str, str], Any]):
    """Each strategy minus random, per round and for the area under the curve (``comparisons``:
    :class:`lossless.comparison.Comparison` keyed by ``(strategy, where)``): every seed a dot,
    the mean a bar with its paired 95% interval, in points."""
    panels = list(dict.fromkeys(at for _, at in comparisons))
    strategies = list(dict.fromkeys(s for s, _ in comparisons))
    cols = min(2, len(panels))                   # two panels a row: readable at the page's width
    rows_n = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.3 * rows_n), sharey=True, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    rng = np.random.default_rng(0)
    for ax, at in zip(axes.flat, panels):
        for i, strategy in enumerate(strategies):
            c = comparisons[(strategy, at)]
            ax.scatter(i + rng.uniform(-0.15, 0.15, c.n), 100 * c.differences, s=9, alpha=0.5)
            ax.errorbar(i, 100 * c.mean, yerr=[[100 * (c.mean - c.low)], [100 * (c.high - c.mean)]],
                        color="black", capsize=4, marker="_", ms=14, lw=1.2)
        ax.axhline(0, color="gray", lw=0.8, ls=":")
        ax.set_xticks(range(len(strategies)))
        ax.set_xticklabels(strategies, rotation=45, ha="right", fontsize=8)
        ax.set_title(at, fontsize=9)
    for r in range(rows_n):
        axes[r, 0].set_ylabel("minus random (points)")
    seeds = max(c.n for c in comparisons.values())
    fig.suptitle(f"{seeds} seeds: a dot each; the mean with its 95% interval", fontsize=9)
    fig.tight_layout()
    return fig


def request_classes(rows: list[dict], classes: Sequence[str]):
    """The share of each class among each strategy's requests (all rounds, mean over seeds)."""
    m = np.array([[r[c] for c in classes] for r in rows], dtype=np.float64)
    share = 100 * m / m.sum(1, keepdims=True)
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * len(classes), 0.5 + 0.42 * len(rows)))
    im = ax.imshow(share, cmap="viridis", aspect="auto")
    for i in range(share.shape[0]):
        for j in range(share.shape[1]):
            ax.text(j, i, f"{share[i, j]:.0f}", ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] < share.max() * 0.6 else "black")
    ax.set_xticks(range(len(classes)))
    ax.set_xticklabels(classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r["strategy"] for r in rows], fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.8, label="% of requests")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ the section 4 comparison
def method_curves(histories: dict[str, list[dict]] | None, metrics: Sequence[str] = ("knn_val", "linear_probe_val",
                                                                                     "embedding_std"),
                  missing: str = "no record"):
    """Each method's monitors after every pretraining epoch (one run each, the same budget),
    against its training minutes: the two probes' validation accuracy and the collapse signal
    (the embeddings' spread). ``histories=None``: the empty panels with ``missing`` across them."""
    if histories is None:
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3), squeeze=False)
        for ax, m in zip(axes[0], metrics):
            ax.text(0.5, 0.5, missing, ha="center", va="center", transform=ax.transAxes, fontsize=9)
            ax.set_ylabel(name(m))
            ax.set_xticks([])
            ax.set_yticks([])
        fig.tight_layout()
        return fig
    return epoch_curves(histories, metrics, width=3.4, marker="o", x="minutes")


def missing_panel(text: str, size: tuple[float, float]):
    """An empty figure with ``text`` across it: where a figure's record is missing."""
    fig, ax = plt.subplots(figsize=size)
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9)
    ax.set_axis_off()
    return fig


def upset(rows: list[dict] | None, names: Sequence[str], title: str = "", missing: str = "no record"):
    """Intersection counts as an UpSet plot: one bar per exact subset of models (the models it
    gets right, the others wrong), over a dot matrix that says which subset. Drawn here rather
    than with ``upsetplot`` (0.9.0 fails with pandas 3.1 and matplotlib 3.11; its maintained fork
    warns): ``rows`` as from ``ensemble.intersections`` (``models``, ``count``, optional ``sd``).
    ``rows=None``: an empty panel with ``missing`` across it."""
    if rows is None:
        return missing_panel(missing, (4.0, 2.4))
    names = list(names)
    fig, (top, dots) = plt.subplots(2, 1, figsize=(max(4.0, 0.55 * len(rows) + 1.5), 1.6 + 0.35 * len(names) + 2),
                                    sharex=True, gridspec_kw={"height_ratios": [3, 0.35 * len(names) + 0.2]})
    xs = np.arange(len(rows))
    counts = [r["count"] for r in rows]
    top.bar(xs, counts, yerr=[r.get("sd", 0) for r in rows] if any("sd" in r for r in rows) else None,
            color="0.3", capsize=2)
    for x, r in zip(xs, rows):
        top.text(x, r["count"] + r.get("sd", 0), f"{r['count']:,.0f}", ha="center", va="bottom", fontsize=8)
    top.set_ylabel("images")
    top.set_title(title, fontsize=9)
    top.spines[["top", "right"]].set_visible(False)
    for x, r in zip(xs, rows):
        on = [i for i, n in enumerate(names) if n in r["models"]]
        dots.scatter([x] * len(names), range(len(names)), s=30, color="0.85")
        if on:
            dots.scatter([x] * len(on), on, s=30, color="0.1")
            dots.plot([x, x], [min(on), max(on)], color="0.1", lw=1.5)
    dots.set_yticks(range(len(names)), names, fontsize=8)
    dots.set_ylim(-0.6, len(names) - 0.4)
    dots.invert_yaxis()
    dots.set_xticks([])
    for side in ("top", "right", "bottom", "left"):
        dots.spines[side].set_visible(False)
    fig.tight_layout()
    return fig


def venn(right_counts: dict[tuple, float], names: Sequence[str], title: str = ""):
    """An area-proportional Venn diagram of which images two or three models get right
    (``right_counts``: exact subset -> count, as ``upset`` takes; the empty subset is left out)."""
    from matplotlib_venn import venn2, venn3
    names = list(names)
    if len(names) not in (2, 3):
        raise ValueError(f"a Venn diagram of {len(names)} models: draw 2 or 3 (the UpSet plot takes any number)")
    order = [(0,), (1,), (0, 1)] if len(names) == 2 else [(0,), (1,), (0, 1), (2,), (0, 2), (1, 2), (0, 1, 2)]
    sizes = [right_counts.get(tuple(names[i] for i in o), 0) for o in order]
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    diagram = (venn2 if len(names) == 2 else venn3)(subsets=sizes, set_labels=names, ax=ax)
    for label in diagram.subset_labels:
        if label is not None:
            label.set_text(f"{float(label.get_text()):,.0f}")
            label.set_fontsize(8)
    ax.set_title(title, fontsize=9)
    return fig


def pair_matrices(agreement: np.ndarray, error_correlation: np.ndarray, names: Sequence[str]):
    """Two K x K matrices side by side: how often two models predict the same class, and how
    their errors correlate."""
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.4))
    for ax, m, title, lo in ((axes[0], agreement, "same prediction (share of images)", 0.0),
                             (axes[1], error_correlation, "correlation of errors", -1.0)):
        m = np.asarray(m, dtype=np.float64)
        im = ax.imshow(m, cmap="viridis", vmin=lo, vmax=1)
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="black" if v > (lo + 1) / 2 else "white")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig


def filter_mosaics(fig2: dict | None, missing: str = "no record"):
    """Figure 2: one row per backbone (from ``experiments.filters.figure2`` or ``filters.panels``): its
    filters at initialisation, after training and the change, each weight a square (no smoothing),
    each filter on its own scale so its shape shows; the row says the filters' mean cosine to
    their initial weights and the norms' ratio. ``fig2=None``: an empty panel with ``missing``."""
    if fig2 is None:
        return missing_panel(missing, (6.0, 1.6))
    names = list(fig2["mosaics"])
    parts = (("at initialisation", fig2["initial_mosaics"]), ("trained", fig2["mosaics"]),
             ("change", fig2["changes"]))
    first = np.asarray(fig2["mosaics"][names[0]])
    aspect = first.shape[0] / first.shape[1]
    height = 0.5 + len(names) * (max(1.15 * aspect, 0.6) + 0.25)  # a panel is ~1.15 in wide
    fig, axes = plt.subplots(len(names), 3, figsize=(6.9, height), squeeze=False)
    fig.subplots_adjust(left=0.27, right=0.88, top=1 - 0.35 / height, bottom=0.02, wspace=0.06, hspace=0.12)
    fig.manual_layout = True
    cmap = plt.get_cmap("RdBu_r").copy()
    cmap.set_bad("0.35")  # the gaps between filters: gray lines, not white (white is 0)
    im = None
    for r, name in enumerate(names):
        for c, (title, panels) in enumerate(parts):
            ax = axes[r, c]
            m = np.asarray(panels[name], dtype=np.float64)
            if m.shape[-1] == 3:  # colour filters: -1..1 -> 0..1, gaps gray
                ax.imshow(np.clip(np.nan_to_num((m + 1) / 2, nan=0.35), 0, 1), interpolation="nearest")
            else:
                im = ax.imshow(np.ma.masked_invalid(m[..., 0]), cmap=cmap, vmin=-1, vmax=1,
                               interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=10)
        label = name.replace(", ", "\n", 1) if len(name) > 24 else name
        axes[r, 0].set_ylabel(f"{label}\ncosine {fig2['similarity'][name]:.2f}\n"
                              f"norm {fig2['norm_ratio'][name]:.2f}x", fontsize=10, rotation=0,
                              ha="right", va="center", labelpad=8)
    if im is not None:
        bar = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.5, pad=0.02)
        bar.set_label("weight / the filter's largest |weight|", fontsize=9)
    return fig


def stage_activations(maps: dict[str, np.ndarray], image: np.ndarray, channels: int = 6):
    """One image and, for each stage, its first ``channels`` feature maps (each on its own
    scale, nearest-neighbour so each activation is a square)."""
    fig, axes = plt.subplots(len(maps), channels + 1, figsize=(1.35 * (channels + 1), 1.35 * len(maps)),
                             squeeze=False)
    for r, (stage, m) in enumerate(maps.items()):
        for c in range(channels + 1):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                if r == 0:
                    _show(ax, image)
                else:
                    ax.axis("off")
                ax.text(-0.1, 0.5, f"{stage}\n{m.shape[1]}x{m.shape[2]}", transform=ax.transAxes,
                        ha="right", va="center", fontsize=8)
                continue
            if c - 1 < len(m):
                ax.imshow(m[c - 1], cmap="magma", interpolation="nearest")
            else:
                ax.axis("off")
    fig.tight_layout()
    return fig


def architectures(result: dict | None, missing: str = "no record"):
    """Left: test accuracy against forward FLOPs per image, one point per network (fine-tuned
    and after the rounds, mean over seeds; log x). Right: validation accuracy after each
    pseudo-label round, mean over seeds, a line per network (round 0: fine-tuned).
    ``result=None``: the empty axes with ``missing`` written across them."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(6.9, 3.6))
    if result is None:
        for ax in (a, b):
            ax.text(0.5, 0.5, missing, ha="center", va="center", transform=ax.transAxes, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        return fig
    from matplotlib.lines import Line2D
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter
    for key, n in result["networks"].items():
        s, x = n["summary"], n["flops"] / 1e6
        line, = a.plot([x], [100 * s["finetune"]["mean"]], marker="o", ls="", label=n["network"])
        a.plot([x], [100 * s["pseudo"]["mean"]], marker="^", ls="", color=line.get_color())
        a.plot([x, x], [100 * s["finetune"]["mean"], 100 * s["pseudo"]["mean"]], color=line.get_color(), lw=0.8)
        val = s["val_by_round"]
        b.plot(range(len(val)), [100 * v for v in val], marker="o", ms=4, color=line.get_color(),
               label=n["network"])
    a.set_xscale("log")
    a.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    a.xaxis.set_major_formatter(ScalarFormatter())
    a.xaxis.set_minor_formatter(NullFormatter())
    a.set_xlabel("MFLOP per image (forward)")
    a.set_ylabel("test accuracy %")
    a.legend([Line2D([], [], marker="o", ls="", color="gray"), Line2D([], [], marker="^", ls="", color="gray")],
             ["fine-tuned", "after the rounds"], fontsize=7, loc="best")
    b.set_xlabel("pseudo-label round (0: fine-tuned)")
    b.set_ylabel("validation accuracy %")
    b.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.legend(*b.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.layout_rect = (0, 0.16, 1, 1)
    fig.tight_layout(rect=fig.layout_rect)
    return fig


# ------------------------------------------------------------------ the book's column
COLUMN = 6.9     # inches: at the inline backend's 100 dpi, the rendered book's 708-pixel column
SMALLEST = 7.0   # points: 9.7 pixels at 100 dpi, the smallest text a figure of the book may show


def fit_column(fig):
    """Make ``fig`` fit the book's column unscaled: no wider than :data:`COLUMN` (its height
    scaled alike) and no text smaller than :data:`SMALLEST`, then laid out again where either
    changed. A figure drawn wider is otherwise shrunk by the browser, and its text with it."""
    width, height = fig.get_size_inches()
    changed = width > COLUMN
    if changed:
        fig.set_size_inches(COLUMN, height * COLUMN / width)
    for text in fig.findobj(Text):
        if text.get_text() and text.get_fontsize() < SMALLEST:
            text.set_fontsize(SMALLEST)
            changed = True
    if changed and not getattr(fig, "manual_layout", False):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a layout that cannot shrink further stays as it is
            # a figure with a legend under its panels keeps the room it left for it
            fig.tight_layout(rect=getattr(fig, "layout_rect", (0, 0, 1, 1)))
    return fig


def _for_the_column(draw):
    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        fig = draw(*args, **kwargs)
        return fit_column(fig) if fig is not None else fig
    return wrapper


FIGURES = ("sample_grid", "view_pairs", "stage_bars", "correlation_heatmaps", "training_curves", "curve",
           "confusion", "epoch_curves", "pseudo_rounds", "class_composition", "reliability", "precision_curve",
           "seeds", "margin_gallery", "cluster_map", "learning_curves", "differences",
           "request_classes", "method_curves", "upset", "venn", "pair_matrices", "filter_mosaics",
           "stage_activations", "architectures")
for _name in FIGURES:  # every figure the book draws goes through fit_column
    globals()[_name] = _for_the_column(globals()[_name])
