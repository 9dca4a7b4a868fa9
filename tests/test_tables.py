"""The book's one table formatter (lossless.tables): what a reader sees in every chapter."""
import math

import pandas as pd
import pytest

from lossless import tables


def html(styler):
    return styler.to_html()


def cells(styler):
    """The displayed strings, row by row (what the formatter produced)."""
    df = styler.data
    return [[styler._display_funcs[(i, j)](df.iat[i, j]) for j in range(df.shape[1])] for i in range(df.shape[0])]


def test_percent_points_integers_and_missing_values():
    rows = [{"method": "a", "accuracy": 0.81234, "gain": 1.5, "seeds": 5, "count": 12.0, "note": None},
            {"method": "b", "accuracy": 0.7, "gain": -0.25, "seeds": 10, "count": 3.0, "note": math.nan}]
    s = tables.show(rows, percent=["accuracy"], points=["gain"])
    assert cells(s) == [["a", "81.23%", "+1.50", "5", "12", "\u2013"], ["b", "70.00%", "-0.25", "10", "3", "\u2013"]]


def test_no_index_column_and_a_small_rate_keeps_its_digits():
    s = tables.show([{"rate": 0.0008, "value": 0.6, "share": 0.5}])
    out = html(s)
    assert "0.0008" in out and "0.60" in out and "0.50" in out
    assert 'class="row_heading' not in out and "blank level0" not in out  # no pandas index column


def test_a_non_range_index_becomes_a_named_first_column():
    s = tables.show({"random": {"std": 0.5, "norm": 2.0}, "pretrained": {"std": 1.5, "norm": 4.0}},
                    index="statistic")
    assert list(s.data.columns) == ["statistic", "random", "pretrained"]
    assert list(s.data["statistic"]) == ["std", "norm"]


def test_significance_is_coloured_both_ways_and_paper_columns_set_apart():
    rows = [{"claim": "x", "verdict": tables.verdict({"low": 0.01, "high": 0.03, "n": 5}), "paper": "43.46%"},
            {"claim": "y", "verdict": tables.verdict({"low": -0.03, "high": -0.01, "n": 5}), "paper": None},
            {"claim": "z", "verdict": tables.verdict({"low": -0.01, "high": 0.02, "n": 5}), "paper": None}]
    assert [r["verdict"] for r in rows] == ["a gain", "a loss", "undecided at 5 seeds"]
    out = html(tables.show(rows, significance=["verdict"], paper=["paper"]))
    assert "#1a7837" in out and "#b2182b" in out      # green for the gain, red for the loss
    assert out.count("font-weight: bold") == 2        # the undecided row is not coloured
    assert "font-style: italic" in out and "border-left" in out


def test_pm_and_interval_and_the_sd_note():
    assert tables.pm({"mean": 0.81234, "std": 0.0045}) == "81.23% ± 0.45"
    assert tables.pm({"mean": 3.0, "std": 0.5}, percent=False) == "3.00 ± 0.50"
    assert tables.interval({"low": -0.0196, "high": -0.0026}) == "[-1.96, -0.26]"
    assert tables.interval({"low": math.nan, "high": 0.1}) == "\u2013"
    assert "sample standard deviation" in tables.SD_NOTE
    assert "caption" in html(tables.show([{"a": 1}], caption=tables.SD_NOTE))


def test_an_unknown_column_is_named():
    with pytest.raises(KeyError, match="accuracy"):
        tables.show(pd.DataFrame([{"acc": 0.5}]), percent=["accuracy"])


def test_an_integer_among_floats_keeps_no_decimals():
    s = tables.show({"random": {"features": 128, "std": 0.24}, "pretrained": {"features": 128, "std": 0.68}},
                    index="statistic")
    assert cells(s) == [["features", "128", "128"], ["std", "0.24", "0.68"]]
