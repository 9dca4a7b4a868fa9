"""The book's one result type for "A minus B over seeds", against independent references."""
import numpy as np
import pytest
from scipy import stats

from lossless import comparison, tables
from lossless.comparison import Comparison


def test_the_interval_is_scipys_paired_t_interval():
    """Mean and 95% interval of the per-seed differences equal scipy's paired t-test interval
    (fails if the pairs are broken, the sd uses n, or the t quantile is replaced by 1.96)."""
    rng = np.random.default_rng(3)
    a = rng.uniform(0.7, 0.8, 7)
    b = a - rng.normal(0.01, 0.01, 7)
    c = Comparison(a, b)
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert c.mean == pytest.approx(np.mean(a - b))
    assert (c.low, c.high) == pytest.approx((ci.low, ci.high))
    assert c.n == 7 and c.seeds == tuple(range(7))
    shuffled = Comparison(a, b[::-1])                         # an unpaired arm gives another interval
    assert (shuffled.low, shuffled.high) != pytest.approx((ci.low, ci.high))


def test_seeds_above_and_the_words_come_from_the_same_numbers():
    c = Comparison([0.80, 0.82, 0.79, 0.85], [0.78, 0.80, 0.80, 0.81], arms=("x", "y"), what="x minus y")
    assert c.above == 3 and c.below == 1 and c.wins() == "3 of 4"
    assert c.number() == f"{100 * np.mean([0.02, 0.02, -0.01, 0.04]):+.2f}"
    assert c.interval() == tables.interval(c.stats)
    assert c.verdict() == tables.verdict(c.stats)            # the one function that words an interval
    assert c.words() == f"{c.number()} points, 95% interval {c.interval()}: {c.verdict()}"
    assert c.kind() is tables.judge(c.stats)[0]               # code decides on what the words say
    row = c.row()
    assert row["comparison"] == "x minus y" and row[comparison.DIFFERENCE] == pytest.approx(100 * c.mean)
    assert row[comparison.VERDICT] == c.verdict() and row[comparison.SEEDS] == 4


def test_verdicts_of_clear_and_unclear_differences():
    gain = Comparison([0.81, 0.82, 0.83, 0.84, 0.85], [0.80] * 5)
    loss = Comparison([0.80] * 5, [0.81, 0.82, 0.83, 0.84, 0.85])
    open_ = Comparison([0.80, 0.85, 0.75], [0.80, 0.80, 0.80])
    same = Comparison([0.81, 0.82], [0.80, 0.81])             # every seed the same difference
    one = Comparison([0.9], [0.8])
    assert gain.verdict() == "a gain" and loss.verdict() == "a loss"
    assert open_.verdict() == "undecided at 3 seeds"
    assert same.verdict() == "undecided at 2 seeds"
    assert one.verdict() == "undecided at 1 seed" and one.interval() == tables.DASH
    # a statement's direction against the verdict: the same interval holds one and refutes the other
    assert gain.held("a gain") == "held" and gain.held("a loss") == "the opposite held"
    assert loss.held("a loss") == "held" and loss.held("a gain") == "the opposite held"
    assert open_.held("a gain") == "not shown (undecided at 3 seeds)" == open_.held("a loss")
    assert open_.held("a gain", why=False) == "not shown" and gain.held("a gain", why=False) == "held"
    with pytest.raises(ValueError, match="'a gain' or 'a loss'"):
        gain.held("gain")
    # a statement with a size: refuted where the interval ends short of it, whatever the direction
    assert gain.low < 0.03 < gain.high < 0.06
    assert gain.held("a gain", size=0.03) == "held"                    # inside the interval
    assert gain.held("a gain", size=0.06) == "not at its size (the interval ends short of +6.00 points)"
    assert loss.held("a loss", size=0.06, why=False) == "not at its size"
    assert loss.held("a loss", size=0.03) == "held"
    assert open_.held("a gain", size=open_.high + 1e-3).startswith("not at its size")
    assert open_.held("a gain", size=open_.high - 1e-3) == "not shown (undecided at 3 seeds)"
    assert one.held("a gain", size=0.5) == "not shown (undecided at 1 seed)"   # no interval at one seed
    with pytest.raises(ValueError, match="size"):
        gain.held("a gain", size=-0.04)


def test_paired_uses_only_the_records_that_ran_both_arms_and_keeps_their_seeds():
    per_seed = [{"seed": 0, "x": 0.8, "y": 0.7}, {"seed": 1, "x": 0.9}, {"seed": 2, "x": 0.6, "y": 0.65},
                {"seed": 3, "x": 0.7, "y": 0.6}]
    c = Comparison.paired(per_seed, "x", "y")
    assert c.seeds == (0, 2, 3) and list(c.differences) == pytest.approx([0.1, -0.05, 0.1])
    derived = Comparison.paired(per_seed, "x", "y", value=lambda r, k: 2 * r[k])
    assert derived.mean == pytest.approx(2 * c.mean)


def test_a_record_round_trips_and_bad_input_is_named():
    c = Comparison([0.8, 0.9, 0.85], [0.7, 0.8, 0.8], what="w", arms=("p", "q"), seeds=[4, 5, 7],
                   measure="validation k-NN")
    d = c.to_dict()
    assert d["mean"] == pytest.approx(c.mean) and d["n"] == 3
    assert Comparison.from_dict(d) == c
    with pytest.raises(ValueError, match="3 values of p against 2 of q"):
        Comparison([0.8, 0.9, 0.85], [0.7, 0.8], arms=("p", "q"))
    with pytest.raises(ValueError, match="2 seeds named for 3 pairs"):
        Comparison([0.8, 0.9, 0.85], [0.7, 0.8, 0.8], seeds=[1, 2])
