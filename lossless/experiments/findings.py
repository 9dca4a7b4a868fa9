"""What the book found, claim by claim: the one source of the introduction's verdict table and of
the results chapter's.

:func:`evidence` picks, for each question, the one answer the book shows: the committed record
where it measured more than this build does (more seeds, or section 4 at the main line's length),
otherwise this build's run (computed here, or loaded when a chapter already ran it). It never
shows both. :func:`findings` turns that evidence into one :class:`Finding` per claim: the
paper's words and figure, this book's arms, the paired comparison, and whether the claim held.
Chapters draw :func:`rows` as a table and glue :func:`values` (numbers and short verdicts, no
sentences) into their prose.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..comparison import Comparison
from . import claims as cl
from . import ensembles as en
from . import table1 as t1

# the paper's figures for its claims (800 classes of NYU DL 2021, validation accuracy)
PAPER_PRETRAINED, PAPER_PSEUDO = 0.4346, 0.4766
SHORT = {"pixel_knn": "k-NN on pixels", "pixel_linear": "logistic regression on pixels",
         "supervised": "the network from scratch", "fixmatch": "FixMatch"}


@dataclass(frozen=True)
class Finding:
    """One claim and its answer: ``comparison`` is this book's ``a`` minus ``b``; the claim says
    it is ``want`` ("a gain" or "a loss"), of at least ``size`` (a fraction) where it names one."""

    key: str
    claim: str
    paper: str
    here: str
    comparison: Comparison
    chapter: str
    source: str
    want: str = "a gain"
    size: float | None = None

    @property
    def verdict(self) -> str:
        return self.comparison.verdict()

    @property
    def held(self) -> str:
        return self.comparison.held(self.want, why=False, size=self.size)


def evidence(cfg: Mapping[str, Any], seeds: int, compare_seeds: int, budget_seeds: int = 0,
             supervised_grid: str = "record", all_rules: bool = False, fixmatch_seeds: int = 0,
             section4: bool = True) -> dict:
    """The claims' and section 4's evidence, one source each: ``{"claims", "claims_source",
    "section4", "section4_source", "record", "run"}``. The claims record is used where it has
    more seeds than this build's ``seeds`` and started from this profile's backbone; otherwise
    this build's run (:func:`lossless.experiments.claims.book_run`, loaded where the results
    chapter made it), and always where ``all_rules``, ``fixmatch_seeds`` or ``budget_seeds`` ask
    for runs here. ``run`` is this build's claims run where it was needed (else None)."""
    from ..book import read_record, record_backbone
    profile = cfg["profile"]
    rec = read_record("claims", profile)
    asks = all_rules or fixmatch_seeds or budget_seeds  # a run this build was asked to make
    from_record = bool(rec) and not record_backbone(rec, cfg) and len(rec["seeds"]) > seeds and not asks
    run = None if from_record else cl.book_run(cfg, seeds, budget_seeds, supervised_grid, all_rules,
                                                 fixmatch_seeds)[0]
    s4, s4_source = section4_evidence(cfg, compare_seeds) if section4 else (None, "not asked for")
    claims = rec if from_record else run
    return {"claims": claims, "claims_source": "the record" if from_record else "this build",
            "section4": s4, "section4_source": s4_source, "record": rec, "run": run}


def section4_evidence(cfg: Mapping[str, Any], compare_seeds: int) -> tuple[dict, str]:
    """Section 4's one answer (the methods, their ensembles, their filters): the profile's
    ``section4`` record, every run pretrained for the main line's length, where it has at least
    ``compare_seeds`` labelled sets; otherwise this build's :func:`lossless.experiments.ensembles.section4` at ``compare_epochs``
    on ``compare_seeds`` labelled sets (the same structure). Returns it and its source in words."""
    from ..book import read_record
    s4 = read_record("section4", cfg["profile"])
    if s4 and s4["seeds"] >= compare_seeds:
        return s4, "the record"
    return en.section4(cfg, seeds=compare_seeds), "this build"


def members_evidence(cfg: Mapping[str, Any]) -> dict:
    """The short members the ensembles chapter's method cell combines (see
    :func:`lossless.experiments.ensembles.members`): the profile's ``ensembles`` record and its
    kept outputs where they match this configuration, otherwise this build's runs. Returns
    ``{"members": result, "members_source": "the record" | "this build"}`` for :func:`provenance`."""
    from ..book import read_record, read_record_arrays
    rec = read_record("ensembles", cfg["profile"])
    arrays = read_record_arrays("ensembles", cfg["profile"]) if rec else None
    result = en.members(cfg, (rec, arrays) if arrays is not None else None)
    return {"members": result, "members_source": "the record" if "outputs" in result else "this build"}


def _means(c: Comparison) -> str:
    """A comparison's two arms, mean over its seeds: "79.51% vs 79.34%"."""
    return f"{_pct(sum(c.a) / c.n)} vs {_pct(sum(c.b) / c.n)}"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _paper(run: str) -> str:
    """The paper's Table 1 figure for a run key ("byol", "byol:resnet34"): its own network's row,
    else the method's first row."""
    method, _, net = run.partition(":")
    rows = [(n, acc) for n, m, acc in t1.PAPER_TABLE1 if m == method]
    return next((acc for n, acc in rows if n == (net or "resnet18")), rows[0][1] if rows else "-")


def findings(ev: Mapping[str, Any]) -> list[Finding]:
    """One finding per claim the book tests, in the introduction's order."""
    src, S = ev["claims"], ev["claims"]["summary"]
    best = src["strongest_baseline"]
    where = f"{ev['claims_source']}, {len(src['seeds'])} seeds"
    vs_best, vs_none, vs_probe = (cl.comparison(src, a, b) for a, b in (
        ("barlow_finetune", best), ("pseudo_global", "pseudo_none"), ("barlow_finetune", "linear_probe")))
    out = [
        Finding("pretraining", "pretraining beats training from scratch",
                "43.46% (no baseline)", f"{_pct(S['barlow_finetune']['mean'])} vs "
                f"{_pct(S['supervised']['mean'])}", cl.comparison(src, "barlow_finetune", "supervised"),
                "results", where),
        Finding("strongest", "(implied) it beats the best baseline",
                "not measured", f"{_means(vs_best)} ({SHORT.get(best, best)})", vs_best, "results", where),
        Finding("pseudo", "pseudo-labels add about four points", "43.46% to 47.66%",
                f"{_pct(S['barlow_finetune']['mean'])} to {_pct(S['pseudo_global']['mean'])}",
                cl.comparison(src, "pseudo_global", "barlow_finetune"), "pseudo-labelling", where,
                size=PAPER_PSEUDO - PAPER_PRETRAINED),
        Finding("labels", "(implied) the labels add it, not the epochs", "not measured",
                f"{_means(vs_none)} (without them)", vs_none, "results", where),
        Finding("probe", "(new) fine-tuning beats a frozen probe", "not measured",
                f"{_means(vs_probe)} (the probe)", vs_probe, "classifier", where),
    ]
    if "fixmatch" in S:
        c = cl.comparison(src, src["best_pseudo_rule"], "fixmatch")
        out.append(Finding("fixmatch", "(new) the pipeline beats FixMatch", "not measured",
                           f"{_means(c)} (FixMatch)", c, "results", f"{where[:-8]}{c.n} seeds"))
    s4 = ev["section4"]
    if s4 is None:  # evidence(section4=False)
        return out
    for c in t1.comparisons(s4["compare"], "finetune"):
        other = c.what.split(" minus ")[-1]
        out.append(Finding("vs_" + c.arms[1].replace(":", "_"), f"Barlow Twins beats {other}", f"43.46% vs {_paper(c.arms[1])}",
                           _means(c), c, "ssl-methods", ev["section4_source"]))
    e = s4["ensembles"]
    if "average" in e["kinds"]:
        c = en.comparison(e, "average", e["reference"])
        out.append(Finding("ensemble", "an average of three is below Barlow Twins", "34% vs 43.46%",
                           _means(c), c, "ensembles", ev["section4_source"],
                           want="a loss"))
    return out


def rows(found: list[Finding]) -> list[dict]:
    """The verdict table: one row per claim, narrow enough for the book's column."""
    return [{"the paper's claim": f.claim, "paper": f.paper, "this book": f.here,
             "difference (points)": f"{f.comparison.number()} {f.comparison.interval()}",
             "verdict": f.verdict, "the claim": f.held, "chapter": f.chapter} for f in found]


def values(found: list[Finding]) -> dict[str, Any]:
    """What a chapter glues about its findings, per claim ``key``: ``key_points``, the mean
    difference in points (``{glue:text}`key_points:+.2f``` in the prose), ``key_interval``
    ("[-0.25, +0.43]"), ``key_n`` (seeds), ``key_verdict`` and ``key_held`` (a few words each)."""
    out: dict[str, Any] = {}
    for f in found:
        c = f.comparison
        out.update({f"{f.key}_points": 100 * c.mean, f"{f.key}_interval": c.interval(),
                    f"{f.key}_n": c.n, f"{f.key}_verdict": f.verdict, f"{f.key}_held": f.held})
    return out


def provenance(ev: Mapping[str, Any], prefix: str) -> dict[str, str]:
    """Where ``ev[prefix]`` came from, for a caption or a sentence: ``prefix_from`` ("the
    record" or "this build"), ``prefix_when`` (date and processor) and ``prefix_command`` (the
    command that remakes it)."""
    from ..bench import cpu_name
    source = ev[f"{prefix}_source"]
    result = ev[prefix]
    if source == "the record":
        made = result.get("command") or (f"lossless experiment claims --seeds {len(result['seeds'])} --all-rules "
                                         "--record" if prefix == "rules" else f"lossless experiment {prefix} --record")
        return {f"{prefix}_from": source, f"{prefix}_when": f"{result['time']} on {result['cpu']}",
                f"{prefix}_command": made}
    return {f"{prefix}_from": source, f"{prefix}_when": f"now on {cpu_name()}",
            f"{prefix}_command": "this chapter's first cell"}


def reproduced(cfg: Mapping[str, Any], ev: Mapping[str, Any]) -> dict[str, float]:
    """This build's seed 0, Barlow Twins + fine-tuning (the classifier chapter's run, loaded),
    beside the record's seed 0: ``{"here", "record"}`` test accuracies (NaN without a record)."""
    from ..finetune import finetune
    rec = ev["record"]
    mine = (ev["run"]["seeds"][0]["barlow_finetune"] if ev["run"] else
            finetune(cfg.replace(seed=0), "barlow")["test_accuracy"])
    theirs = next((r["barlow_finetune"] for r in (rec or {}).get("seeds", []) if r.get("seed", 0) == 0),
                  float("nan"))
    return {"here": float(mine), "record": float(theirs)}


def rules_evidence(cfg: Mapping[str, Any], ev: Mapping[str, Any], all_rules: bool) -> dict:
    """The four pseudo-label rules and both controls: this build's run where ``all_rules`` asked
    for them, else the profile's ``claims-rules`` record (``{"rules", "rules_source"}``)."""
    from ..book import read_record
    from .. import config as config_mod
    if all_rules:
        run = ev["run"] if ev["run"] is not None and ev["run"]["all_rules"] else None
        if run is None:
            raise config_mod.ConfigError("all_rules=True: evidence() was given all_rules=False; pass the same "
                                         "all_rules to both")
        return {"rules": run, "rules_source": "this build"}
    rec = read_record("claims-rules", cfg["profile"])
    if rec is None:
        raise config_mod.ConfigError(f"all_rules=False: no claims-rules record for the {cfg['profile']} profile; "
                                     "set all_rules=True")
    return {"rules": rec, "rules_source": "the record"}


def rule_comparisons(result: Mapping[str, Any]) -> list[Comparison]:
    """The rules against their start and their controls (claim A's and FixMatch's rows left to
    the verdict table)."""
    return [c for c in cl.comparisons(result) if c.arms[0] != "barlow_finetune" and c.arms[1] != "fixmatch"]
