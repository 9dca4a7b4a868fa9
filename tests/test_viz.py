"""Figures drawn for the book's column: no wider than it and no text below the smallest size, so
the browser never shrinks a figure's text below legibility."""
import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from lossless import viz  # noqa: E402


def texts(fig):
    return [t for t in fig.findobj(Text) if t.get_text()]


def test_a_wide_figure_with_small_text_is_fitted_to_the_column():
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(12, 3))
    for ax in axes:
        ax.plot([0, 1], [0, 1], label="a line")
        ax.set_title("small", fontsize=5)
        ax.legend(fontsize=6)
    viz.fit_column(fig)
    width, height = fig.get_size_inches()
    assert width == pytest.approx(viz.COLUMN) and height == pytest.approx(3 * viz.COLUMN / 12)
    assert min(t.get_fontsize() for t in texts(fig)) >= viz.SMALLEST
    # 7 points at the inline backend's 100 dpi are more than 9 pixels
    assert viz.SMALLEST * 100 / 72 >= 9 and viz.COLUMN * 100 <= 708


def test_every_figure_of_the_book_goes_through_the_column_fit():
    import inspect
    drawn = {n for n, f in inspect.getmembers(viz, inspect.isfunction)
             if f.__module__ == viz.__name__ and n not in ("fit_column", "name", "missing_panel", "_show",
                                                            "_for_the_column")}
    assert drawn <= set(viz.FIGURES) | {n for n in drawn if n.startswith("_")}, drawn - set(viz.FIGURES)
    for name in viz.FIGURES:
        assert getattr(viz, name).__wrapped__, name
    histories = {m: [{"epoch": e, "seconds": 30.0, "knn_val": 0.5 + 0.01 * e, "linear_probe_val": 0.6,
                      "embedding_std": 0.9} for e in range(1, 6)] for m in ("A", "B", "C")}
    fig = viz.method_curves(histories)  # drawn 12.6 inches wide
    assert fig.get_size_inches()[0] <= viz.COLUMN + 1e-9
    assert min(t.get_fontsize() for t in texts(fig)) >= viz.SMALLEST
    rng = np.random.default_rng(0)
    fig = viz.view_pairs(rng.integers(0, 255, (10, 8, 8, 1), dtype=np.uint8),
                         rng.normal(size=(10, 1, 8, 8)), rng.normal(size=(10, 1, 8, 8)))
    assert fig.get_size_inches()[0] <= viz.COLUMN + 1e-9


def test_many_runs_get_one_legend_under_the_panels_that_covers_none():
    """Five networks' curves: a legend inside the first panel hid its curves and covered the next
    panel's label (the backbone chapter's Fig. 2.3, the methods chapter's Fig. 7.1). The legend
    goes under the panels, and stays there after the figure is fitted to the column."""
    histories = {f"network {i}": [{"epoch": e, "seconds": 30.0, "knn_val": 0.5 + 0.01 * e * i,
                                   "linear_probe_val": 0.6, "embedding_std": 0.9} for e in range(1, 9)]
                 for i in range(5)}
    fig = viz.method_curves(histories)
    assert fig.get_size_inches()[0] <= viz.COLUMN + 1e-9
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1
    legend = fig.legends[0].get_window_extent(renderer)
    for ax in fig.axes:
        assert not legend.overlaps(ax.get_tightbbox(renderer)), "the legend covers a panel"
    assert legend.y0 >= 0                                      # inside the figure
    assert len(fig.legends[0].get_texts()) == 5
