"""Tables as the book shows them: one formatter for every chapter.

``show(rows, ...)`` turns a list of dicts (or a DataFrame) into a pandas ``Styler`` with the
book's conventions: no index column, percentages as percentages (``percent=`` columns hold
fractions), signed percentage points (``points=``), integers without decimals (also a float
column whose values are all whole), an en dash for a missing value, the paper's own numbers
in grey italics behind a rule (``paper=``: they come from 800 classes of another dataset), and
a significance column (``significance=``, the words of ``verdict``) whose gains and losses are
coloured alike (green and red, bold). ``pm`` writes "mean ± sd"; a table that uses it says in its caption what
± is (the sample standard deviation over seeds, ``SD_NOTE``).

Chapters build their rows with the ``*_rows`` functions of ``lossless.experiments`` and pass
them here; the formatting lives in one place so that every table reads the same.
"""
from __future__ import annotations

import enum
import math
import numbers
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd


DASH = "\u2013"  # en dash: a value that does not exist (not run, not defined)
SD_NOTE = "± is the sample standard deviation over seeds (n - 1 in the denominator)."


def missing(v: Any) -> bool:
    if v is None or v is pd.NA:
        return True
    return isinstance(v, float) and math.isnan(v)


def pm(stats: Mapping[str, float], percent: bool = True, digits: int = 2) -> str:
    """``{"mean", "std"}`` as "81.23% ± 0.45" (percent: fractions shown as %, sd in points)."""
    scale, unit = (100.0, "%") if percent else (1.0, "")
    return f"{scale * stats['mean']:.{digits}f}{unit} ± {scale * stats['std']:.{digits}f}"


class Verdict(enum.Enum):
    """What a paired difference's 95% interval decides, whatever words say it: a gain or a loss
    (the interval excludes zero), no effect (it lies within ``small`` of zero), no gain (its upper
    end is below ``small`` but a loss of more is not ruled out), or undecided. Code compares these;
    :func:`verdict` words them."""
    GAIN = "gain"
    LOSS = "loss"
    NO_EFFECT = "no effect"
    NO_GAIN = "no gain"
    UNDECIDED = "undecided"


def judge(d: Mapping[str, float], small: float = 0.01) -> tuple[Verdict, str]:
    """The :class:`Verdict` of a paired difference's interval ``d`` (fractions, as ``small``)
    and why, in words. An interval of no width (every seed gave the same difference, up to
    float rounding) estimates nothing: undecided."""
    lo, hi = d["low"], d["high"]
    size = f"{100 * small:g} point" + ("" if small == 0.01 else "s")
    if math.isclose(lo, hi, rel_tol=1e-9, abs_tol=1e-12):
        return Verdict.UNDECIDED, "every seed gave the same difference, so the interval has no width"
    if lo > 0:
        return Verdict.GAIN, "the interval excludes zero"
    if hi < 0:
        return Verdict.LOSS, "the interval excludes zero"
    if hi < small and lo > -small:
        return Verdict.NO_EFFECT, f"the interval includes zero and lies within {size} of it"
    if hi < small:
        return Verdict.NO_GAIN, f"the interval includes zero and its upper end is below {size}"
    return Verdict.UNDECIDED, f"the interval includes zero and reaches past {size}"


def verdict(d: Mapping[str, float], small: float = 0.01, reason: bool = False) -> str:
    """The one wording of a paired difference's 95% interval, for every table and sentence of the
    book (:func:`judge` decides, this says it): "a gain", "a loss", "any effect is below 1
    point", "any gain is below 1 point, a loss not ruled out", "undecided at 5 seeds".
    ``reason``: with why ("the interval excludes zero: a gain"). ``d`` is in fractions, as
    ``small`` is; a comparison of two arms is worded through
    :class:`lossless.comparison.Comparison`, which calls this."""
    kind, why = judge(d, small)
    seeds = d.get("n", d.get("seeds"))
    size = f"{100 * small:g} point" + ("" if small == 0.01 else "s")
    conclusion = {Verdict.GAIN: "a gain", Verdict.LOSS: "a loss",
                  Verdict.NO_EFFECT: f"any effect is below {size}",
                  Verdict.NO_GAIN: f"any gain is below {size}, a loss not ruled out",
                  Verdict.UNDECIDED: f"undecided at {seeds} seeds"}[kind]
    return f"{why}: {conclusion}" if reason else conclusion


def interval(d: Mapping[str, float], scale: float = 100.0, digits: int = 2) -> str:
    """"[-1.96, -0.26]": a difference's interval in points (``scale`` 100 for fractions)."""
    if missing(d.get("low")) or missing(d.get("high")):
        return DASH
    return f"[{scale * d['low']:+.{digits}f}, {scale * d['high']:+.{digits}f}]"


def _whole(values: Iterable[Any]) -> bool:
    vals = [v for v in values if not missing(v)]
    return bool(vals) and all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                              and float(v).is_integer() for v in vals)


def _formatter(kind: str, digits: int):
    def fmt(v: Any) -> str:
        if missing(v):
            return DASH
        if isinstance(v, str) or isinstance(v, bool):
            return str(v)
        if kind == "percent":
            return f"{100 * v:.{digits}f}%"
        if kind == "points":
            return f"{v:+.{digits}f}"
        if kind == "int" or isinstance(v, numbers.Integral):
            return f"{int(round(v)):,}"
        if isinstance(v, numbers.Real):  # a small rate keeps its significant digits: 0.0008, not 0.00
            return f"{v:.{digits}g}" if 0 < abs(v) < 0.1 else f"{v:,.{digits}f}"
        return str(v)
    return fmt


def _colour(v: Any) -> str:
    text = str(v)
    if text.endswith("a loss"):                 # the words of :func:`verdict`
        return "color: #b2182b; font-weight: bold"
    if text.endswith("a gain"):
        return "color: #1a7837; font-weight: bold"
    return ""


def frame(rows: Sequence[Mapping[str, Any]] | Mapping[str, Mapping] | pd.DataFrame,
          index: str | None = None) -> pd.DataFrame:
    """A DataFrame from rows (or from columns: a dict of dicts, as pandas reads it); a meaningful
    index becomes a first column named ``index``."""
    if isinstance(rows, Mapping):   # columns of object Series: an int among floats stays an int
        keys = list(dict.fromkeys(k for column in rows.values() for k in column))
        rows = pd.DataFrame({c: pd.Series([col.get(k) for k in keys], index=keys, dtype=object)
                             for c, col in rows.items()})
    if isinstance(rows, pd.DataFrame):
        df = rows
        if not isinstance(df.index, pd.RangeIndex):
            df = df.reset_index(names=index or (df.index.name or ""))
        return df
    return pd.DataFrame(list(rows), dtype=object)


def show(rows: Sequence[Mapping[str, Any]] | Mapping[str, Mapping] | pd.DataFrame, *, percent: Sequence[str] = (),
         points: Sequence[str] = (), paper: Sequence[str] = (), significance: Sequence[str] = (),
         digits: int = 2, caption: str | None = None, index: str | None = None):
    """The book's table (a ``Styler``; ``.data`` is the DataFrame). See the module docstring."""
    df = frame(rows, index)
    unknown = [c for c in (*percent, *points, *paper, *significance) if c not in df.columns]
    if unknown:
        raise KeyError(f"tables.show: no column {unknown} (columns: {list(df.columns)})")
    formats = {}
    for c in df.columns:
        kind = ("percent" if c in percent else "points" if c in points
                else "int" if _whole(df[c]) else "plain")
        formats[c] = _formatter(kind, digits)
    styler = df.style.format(formats).hide(axis="index")
    styler = styler.set_table_styles([{"selector": "th", "props": "text-align: left"},
                                      {"selector": "td", "props": "padding: 2px 8px"}], overwrite=False)
    if paper:
        styler = styler.set_properties(subset=list(paper), **{"color": "#777", "font-style": "italic",
                                                               "border-left": "2px solid #bbb"})
    if significance:
        styler = styler.map(_colour, subset=list(significance))
    if caption:
        styler = styler.set_caption(caption).set_table_styles(
            [{"selector": "caption", "props": "caption-side: bottom; font-size: 0.85em; color: #555"}],
            overwrite=False)
    return styler
