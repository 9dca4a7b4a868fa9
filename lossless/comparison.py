"""The book's one result type for a comparison: two arms measured on the same seeds.

Every "A minus B" of the book (a claim, a pseudo-label rule against its control, an active-
learning strategy against random, an ensemble against its best member, one pretraining method
against another, one network against another) is a :class:`Comparison`: the two arms' values
seed by seed (accuracies as fractions), the paired differences, their mean with a 95%
Student-t interval, how many seeds came out above and below, and the verdict. One renderer
turns comparisons into table rows (:func:`rows`, :func:`table`) and into the words a chapter
glues (:meth:`Comparison.words`, :meth:`Comparison.kind`); the verdict's wording is
:func:`lossless.tables.verdict`, the only function that puts an interval into words.

Chapters build comparisons from an experiment's per-seed records (``Comparison.paired``), so a
recorded run and this page's run go through the same code, and no chapter reads a stored
difference by a sentence-shaped key.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from .evaluate import paired_difference
from . import config, tables

# the renderer's column names, for tables.show(points=..., significance=...)
DIFFERENCE = "minus (points)"
INTERVAL = "95% interval (points)"
VERDICT = "verdict"
ABOVE = "seeds above"
SEEDS = "seeds"


@dataclass(frozen=True)
class Comparison:
    """Arm ``a`` minus arm ``b``, paired by seed. ``a`` and ``b`` hold one value per seed, in
    the same order (fractions: an accuracy of 0.8 is 80%); ``what`` is the reader's words for
    the comparison ("Barlow Twins + fine-tune minus supervised only"); ``arms`` the two arms'
    names in the experiment's records; ``measure`` what was measured when it is not the test
    accuracy ("round 3", "validation k-NN"); ``seeds`` which seeds the pairs are (default
    0..n-1)."""

    a: tuple[float, ...]
    b: tuple[float, ...]
    what: str = ""
    arms: tuple[str, str] = ("a", "b")
    measure: str = ""
    seeds: tuple[int, ...] = ()
    confidence: float = 0.95
    _stats: dict = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        a = tuple(float(x) for x in self.a)
        b = tuple(float(x) for x in self.b)
        if len(a) != len(b):
            raise ValueError(f"{self.what or self.arms}: {len(a)} values of {self.arms[0]} against "
                             f"{len(b)} of {self.arms[1]}; a paired comparison needs one of each per seed")
        seeds = tuple(int(s) for s in self.seeds) if self.seeds else tuple(range(len(a)))
        if len(seeds) != len(a):
            raise ValueError(f"{self.what or self.arms}: {len(seeds)} seeds named for {len(a)} pairs")
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)
        object.__setattr__(self, "seeds", seeds)
        object.__setattr__(self, "arms", tuple(self.arms))
        object.__setattr__(self, "_stats", paired_difference(a, b, self.confidence) if a else
                           {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0})

    @classmethod
    def paired(cls, per_seed: Iterable[Mapping[str, Any]], a: str, b: str, what: str = "",
               value: Callable[[Mapping[str, Any], str], float] | None = None,
               measure: str = "") -> "Comparison":
        """From an experiment's per-seed records: ``value(record, arm)`` (default
        ``record[arm]``) on the records that have both arms (FixMatch, for one, runs on the
        first seeds only). A record's ``"seed"`` names its seed, else its position."""
        get = value or (lambda r, k: r[k])
        both = [(i, r) for i, r in enumerate(per_seed) if _has(r, a, value) and _has(r, b, value)]
        return cls(a=[get(r, a) for _, r in both], b=[get(r, b) for _, r in both], what=what,
                   arms=(a, b), seeds=[r.get("seed", i) for i, r in both], measure=measure)

    # ------------------------------------------------------------------ the numbers
    @property
    def differences(self) -> np.ndarray:
        """``a - b`` per seed (fractions)."""
        return np.asarray(self.a) - np.asarray(self.b)

    @property
    def stats(self) -> dict:
        """``{"mean", "low", "high", "n"}`` of the differences (fractions)."""
        return dict(self._stats)

    @property
    def mean(self) -> float:
        return self._stats["mean"]

    @property
    def low(self) -> float:
        return self._stats["low"]

    @property
    def high(self) -> float:
        return self._stats["high"]

    @property
    def n(self) -> int:
        return len(self.a)

    @property
    def above(self) -> int:
        """Seeds on which ``a`` came out higher."""
        return int(np.sum(self.differences > 0))

    @property
    def below(self) -> int:
        return int(np.sum(self.differences < 0))

    # ------------------------------------------------------------------ the words
    def verdict(self, small: float = 0.01, reason: bool = False) -> str:
        """"a gain", "a loss", "any effect is below 1 point", "undecided at 5 seeds"
        (:func:`lossless.tables.verdict`; ``reason``: with why)."""
        if self.n < 2:
            return f"undecided at {self.n} seed" + ("s" if self.n != 1 else "")
        return tables.verdict(self._stats, small=small, reason=reason)

    def kind(self, small: float = 0.01) -> tables.Verdict:
        """The :class:`lossless.tables.Verdict` of the interval, for code that decides on it
        (undecided below two seeds)."""
        if self.n < 2:
            return tables.Verdict.UNDECIDED
        return tables.judge(self._stats, small)[0]

    def held(self, want: str, why: bool = True, size: float | None = None) -> str:
        """Whether a statement that ``a`` minus ``b`` is ``want`` ("a gain" or "a loss") held:
        "held" where the verdict is ``want``, "the opposite held" where it is the other,
        otherwise "not shown (<the verdict>)" (``why=False``: "not shown", for a table whose
        verdict stands in a column beside it). ``size``: the statement's size (a fraction, in
        its direction: 0.04 for "about four points"); where the interval ends short of it the
        statement did not hold at its size, whatever the direction."""
        if want not in ("a gain", "a loss"):
            raise ValueError(f"want={want!r}: a statement's direction is 'a gain' or 'a loss'")
        if size is not None and self.n >= 2:
            if not (config._finite(size) and size > 0):
                raise ValueError(f"size={size!r}: a statement's size is a fraction > 0 in its direction")
            short = self.high < size if want == "a gain" else self.low > -size
            if short:
                edge = f"{100 * (size if want == 'a gain' else -size):+.2f}"
                return (f"not at its size (the interval ends short of {edge} points)" if why
                        else "not at its size")
        kind, v = self.kind(), self.verdict()
        wanted = tables.Verdict.GAIN if want == "a gain" else tables.Verdict.LOSS
        if kind is wanted:
            return "held"
        if kind in (tables.Verdict.GAIN, tables.Verdict.LOSS):
            return "the opposite held"
        return f"not shown ({v})" if why else "not shown"

    def number(self, digits: int = 2) -> str:
        """The mean difference in points: "+1.22"."""
        return f"{100 * self.mean:+.{digits}f}"

    def interval(self, digits: int = 2) -> str:
        """"[+1.00, +1.43]" in points (an en dash below two seeds)."""
        return tables.interval(self._stats, digits=digits)

    def words(self, verdict: bool = True, digits: int = 2) -> str:
        """"+1.22 points, 95% interval [+1.00, +1.43]: a gain" (``verdict=False``: the numbers
        alone, for a sentence that words the interval itself)."""
        text = f"{self.number(digits)} points, 95% interval {self.interval(digits)}"
        return f"{text}: {self.verdict()}" if verdict else text

    def wins(self) -> str:
        """"4 of 5": the seeds on which ``a`` came out higher, of all."""
        return f"{self.above} of {self.n}"

    def row(self, first: Mapping[str, Any] | None = None) -> dict:
        """One table row: ``first`` (default ``{"comparison": what}``, and ``{"measure": ...}``
        where one is named), then the mean difference in points, the interval, the verdict, the
        seeds above and the seeds."""
        head = dict(first) if first is not None else {
            "comparison": self.what, **({"measure": self.measure} if self.measure else {})}
        return {**head, DIFFERENCE: 100 * self.mean, INTERVAL: self.interval(), VERDICT: self.verdict(),
                ABOVE: self.wins(), SEEDS: self.n}

    def to_dict(self) -> dict:
        """For a JSON record: the arms per seed and the statistics."""
        return {"what": self.what, "arms": list(self.arms), "measure": self.measure,
                "seeds": list(self.seeds), "a": list(self.a),
                "b": list(self.b), **self.stats}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Comparison":
        return cls(a=d["a"], b=d["b"], what=d.get("what", ""), arms=tuple(d.get("arms", ("a", "b"))),
                   seeds=d.get("seeds", ()), measure=d.get("measure", ""))


def _has(record: Mapping[str, Any], arm: str, value) -> bool:
    if value is None:
        return arm in record
    try:
        value(record, arm)
    except (KeyError, IndexError, TypeError):
        return False
    return True


def rows(comparisons: Iterable[Comparison], first: Callable[[Comparison], Mapping[str, Any]] | None = None
         ) -> list[dict]:
    """Comparisons as table rows (``first(c)``: the leading columns, default the comparison's
    words)."""
    return [c.row(first(c) if first else None) for c in comparisons]


def table(comparisons: Iterable[Comparison], caption: str = "",
          first: Callable[[Comparison], Mapping[str, Any]] | None = None):
    """Comparisons as the book shows them (:func:`lossless.tables.show`): points signed, the
    verdict coloured."""
    return tables.show(rows(comparisons, first), points=[DIFFERENCE], significance=[VERDICT], caption=caption)
