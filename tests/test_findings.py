"""The verdict table's evidence: one source per question (the record only where it measured more),
each verdict from the paired interval of the records' own per-seed numbers, and glued values
that are numbers and short words, never sentences."""
import json
import math

import numpy as np
import pytest
from scipy import stats

from lossless import book, config
from lossless.experiments import claims as cl
from lossless.experiments import findings

RECORD = book.RECORDS / "claims-cpu.json"


def test_each_finding_is_the_records_paired_interval_and_its_verdict():
    cfg = config.load_profile("cpu")
    ev = findings.evidence(cfg, seeds=3, compare_seeds=3)
    assert ev["claims_source"] == "the record" and ev["run"] is None
    found = {f.key: f for f in findings.findings(ev)}
    rec = json.loads(RECORD.read_text())
    for key, a, b in (("pretraining", "barlow_finetune", "supervised"),
                      ("pseudo", "pseudo_global", "barlow_finetune"),
                      ("labels", "pseudo_global", "pseudo_none")):
        d = np.array([r[a] - r[b] for r in rec["seeds"]])  # by hand, from the record's seeds
        half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
        c = found[key].comparison
        assert c.n == len(rec["seeds"]) and c.mean == pytest.approx(d.mean(), abs=1e-12)
        assert (c.low, c.high) == pytest.approx((d.mean() - half, d.mean() + half), abs=1e-9)
        side = "a gain" if d.mean() - half > 0 else "a loss" if d.mean() + half < 0 else None
        assert side is None or found[key].verdict == side
    # the paper's four points: an interval wholly below them did not hold at that size
    p = found["pseudo"].comparison
    assert (found["pseudo"].held == "not at its size") == (p.high < findings.PAPER_PSEUDO - findings.PAPER_PRETRAINED)


def test_each_row_shows_both_arms_of_its_difference():
    """A reader checks a row by subtracting: "this book" names both arms' means over the paired
    seeds ("79.33% vs 81.08% (FixMatch)", "79.33% to 79.42%"), and their difference is the row's
    (to rounding)."""
    import re
    ev = findings.evidence(config.load_profile("cpu"), seeds=3, compare_seeds=3)
    for f in findings.findings(ev):
        shown = [float(x) for x in re.findall(r"(\d+\.\d+)%", f.here)]
        assert len(shown) == 2, (f.key, f.here)
        change = shown[1] - shown[0] if " to " in f.here else shown[0] - shown[1]  # "a to b": b minus a
        assert change == pytest.approx(100 * f.comparison.mean, abs=0.011), (f.key, f.here)


def test_the_record_answers_only_where_it_has_more_seeds_and_nothing_was_asked_to_run(monkeypatch):
    cfg = config.load_profile("cpu")
    asked = []
    run = {"seeds": [], "all_rules": False}
    monkeypatch.setattr(cl, "book_run", lambda *a, **k: (asked.append(a) or run, None))
    assert findings.evidence(cfg, 3, 3)["run"] is None and not asked
    for kw in ({"seeds": 10}, {"seeds": 3, "fixmatch_seeds": 2}, {"seeds": 3, "all_rules": True}):
        ev = findings.evidence(cfg, compare_seeds=3, **kw)
        assert ev["claims"] is run and ev["claims_source"] == "this build"
    assert len(asked) == 3


def test_glued_values_are_numbers_and_short_words(monkeypatch):
    import myst_nb
    glued = {}
    monkeypatch.setattr(myst_nb, "glue", lambda k, v, display=True: glued.__setitem__(k, v))
    ev = findings.evidence(config.load_profile("cpu"), 3, 3)
    values = findings.values(findings.findings(ev))
    book.glue_all(values)
    assert glued == values
    assert all(book.words(v) <= book.GLUED_WORDS for v in values.values() if isinstance(v, str))
    assert book.words("lossless experiment claims --seeds 10 --out benchmarks/results/x.json ssl_epochs=3") == 3
    assert all(":" not in k for k in values), "a colon in a glue name breaks {glue:text}`name:.2f`"
    with pytest.raises(ValueError, match="'said'.*write the sentence in the markdown"):
        book.glue_all({"said": "the claim held on this labelled set, which one seed cannot decide at all"})


def test_glued_numpy_numbers_are_plain_numbers_the_prose_can_format(monkeypatch):
    import myst_nb
    glued = {}
    monkeypatch.setattr(myst_nb, "glue", lambda k, v, display=True: glued.__setitem__(k, v))
    book.glue_all({"share": np.float64(0.25), "n": np.int64(3), "word": "held"})
    assert glued == {"share": 0.25, "n": 3, "word": "held"}
    assert repr(glued["share"]) == "0.25" and type(glued["n"]) is int
