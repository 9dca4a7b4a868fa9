"""Fine-tuning, pseudo-labelling and evaluation (paper sections 3.4, 3.5)."""
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lossless import config, runs
from lossless.errors import LosslessError
from lossless.evaluate import calibration, paired_difference, score
from lossless.finetune import finetune
from lossless.pretrain import pretrain
from lossless.pseudo import pseudo_label, schedule, select_balanced, select_global, select_threshold


def smoke(tmp_path, **kw):
    return config.load_profile("smoke", dict(runs_dir=str(tmp_path / "runs"), progress=False, **kw))


class FixedLogits(torch.nn.Module):
    """A 'model' whose logits for image i are row i of a table (the image holds i)."""
    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, x):
        return self.table[x.long().view(len(x), -1)[:, 0] * 256 + x.long().view(len(x), -1)[:, 1]]


def test_selection_equals_brute_force_sort_with_ties():
    g = torch.Generator().manual_seed(0)
    n, c = 3000, 7
    logits = torch.randn(n, c, generator=g) * 3
    logits[100:140] = logits[7]          # many exact ties in confidence
    logits[500:520] = logits[2999]
    images = np.stack([np.arange(n) // 256, np.arange(n) % 256], 1).astype(np.uint8).reshape(n, 1, 2, 1)
    s = score(FixedLogits(logits), images, lambda b: b.float(), torch.device("cpu"), batch_size=97)
    probs = torch.softmax(logits, 1).numpy()                      # the full N x C matrix, here only
    assert np.array_equal(s.prediction, probs.argmax(1))
    assert np.allclose(s.confidence, probs.max(1), atol=1e-6)
    top2 = np.sort(probs, 1)[:, -2:]
    assert np.allclose(s.margin, top2[:, 1] - top2[:, 0], atol=1e-6)
    for k in (1, 30, 120, 999, n):
        brute = sorted(range(n), key=lambda i: (-float(probs[i].max()), i))[:k]   # ties: lower index first
        assert np.array_equal(select_global(probs.max(1), k), np.sort(brute)), k
        assert np.array_equal(select_global(s.confidence, k), select_global(probs.max(1), k))


def test_balanced_quota_respects_per_class_limits():
    rng = np.random.default_rng(1)
    conf = rng.random(1000)
    pred = rng.choice(4, size=1000, p=[0.7, 0.2, 0.09, 0.01])     # class 3 has ~10 members
    chosen = select_balanced(conf, pred, 200, 4)
    counts = np.bincount(pred[chosen], minlength=4)
    assert (counts <= 50).all() and counts[:3].tolist() == [50, 50, 50]
    assert counts[3] == (pred == 3).sum()                          # all it has, when fewer than the quota
    for c in range(4):                                              # the most confident within the class
        members = np.flatnonzero(pred == c)
        assert set(chosen[pred[chosen] == c]) == set(members[np.argsort(-conf[members])[:50]])


def test_threshold_rule_against_a_brute_force_pick():
    rng = np.random.default_rng(2)
    conf = np.round(rng.random(600), 2)                             # many ties
    pred = rng.choice(3, size=600, p=[0.8, 0.15, 0.05])
    for k, thr, cap in ((100, 0.5, 0.5), (50, 0.9, 0.2), (400, 0.3, 1.0), (10, 0.99, 0.34)):
        quota, taken, brute = max(1, int(cap * k)), {0: 0, 1: 0, 2: 0}, []
        for i in sorted(range(600), key=lambda i: (-conf[i], i)):  # most confident first, then position
            if conf[i] >= thr and len(brute) < k and taken[pred[i]] < quota:
                taken[pred[i]] += 1
                brute.append(i)
        got = select_threshold(conf, pred, k, thr, cap)
        assert np.array_equal(got, np.sort(brute)), (k, thr, cap)
        assert (conf[got] >= thr).all() and len(got) <= k
        assert np.bincount(pred[got], minlength=3).max() <= quota


def test_gradual_rule_splits_rounds_and_epochs(tmp_path):
    cfg = smoke(tmp_path, pl_rule="gradual", pl_rounds="3,6", pl_epochs=5, pl_substeps=3)
    assert schedule(cfg) == [(1.0, 2)] * 3 + [(2.0, 2)] * 3
    assert schedule(smoke(tmp_path, pl_rounds="3,6", pl_epochs=5)) == [(3.0, 5), (6.0, 5)]
    with pytest.raises(LosslessError, match="pl_rule='greedy' is not allowed"):
        smoke(tmp_path, pl_rule="greedy")


def test_control_rule_trains_the_same_rounds_without_pseudo_labels(tmp_path, smoke_backbone):
    cfg = smoke(tmp_path, pl_rounds="5,5", pl_rule="none")
    pretrain(cfg)
    result = pseudo_label(cfg)
    stage = Path(result["run"])
    for r in (1, 2):
        assert len(np.load(stage / f"round{r}" / "selection.npz")["index"]) == 0
        assert runs.read_json(stage / f"round{r}" / "result.json")["train_images"] == 100   # labelled only
    assert len(result["rounds"]) == 3 and result["rounds"][2]["pool_after"] == 1700
    # the other rules' run folders are not this one's (the rule is part of the key)
    assert Path(pseudo_label(smoke(tmp_path, pl_rounds="5,5"))["run"]) != stage


SCRIPT = """
import resource, sys, numpy as np, torch
from lossless.evaluate import score
n, c = 200_000, 1000
images = np.zeros((n, 1, 1, 1), dtype=np.uint8)
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1, c))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
s = score(model, images, lambda b: b.float() + torch.randn(len(b), 1, 1, 1), torch.device("cpu"), batch_size=512)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) / 1024, s.prediction.shape, s.confidence.dtype)
"""


def test_scoring_memory_is_o_of_n():
    """200,000 x 1,000 probabilities would be 800 MB; scoring may keep only three numbers per image."""
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout.split()
    extra_mb = float(out[0])
    assert extra_mb < 100, f"scoring grew the process by {extra_mb:.0f} MB"


def test_paired_interval_against_hand_computation():
    d = paired_difference([0.81, 0.82, 0.83, 0.84, 0.85], [0.80, 0.80, 0.80, 0.80, 0.80])
    # differences 1..5 points: mean 3, sd sqrt(2.5) = 1.5811, t(0.975, 4) = 2.776445
    half = 2.776445 * math.sqrt(2.5) / math.sqrt(5) / 100
    assert math.isclose(d["mean"], 0.03, abs_tol=1e-12)
    assert math.isclose(d["low"], 0.03 - half, abs_tol=1e-6) and math.isclose(d["high"], 0.03 + half, abs_tol=1e-6)


def test_one_function_words_an_interval_against_zero_and_one_point():
    from lossless.comparison import Comparison
    from lossless.tables import verdict
    d = lambda lo, hi: {"mean": (lo + hi) / 2, "low": lo, "high": hi, "n": 10}  # noqa: E731
    decide = lambda x, **kw: verdict(x, reason=True, **kw)  # noqa: E731
    assert decide(d(0.001, 0.02)).endswith("a gain")
    assert decide(d(-0.02, -0.001)).endswith("a loss")
    assert "within 1 point" in decide(d(-0.0047, 0.0051))          # the control: both ends inside a point
    assert "upper end is below 1 point" in decide(d(-0.03, 0.009))
    # code decides on the enum, the words follow it: one judgement for both
    from lossless.tables import Verdict, judge
    cases = {(0.001, 0.02): Verdict.GAIN, (-0.02, -0.001): Verdict.LOSS, (-0.0047, 0.0051): Verdict.NO_EFFECT,
             (-0.03, 0.009): Verdict.NO_GAIN, (-0.0483, 0.0329): Verdict.UNDECIDED}
    for (lo, hi), kind in cases.items():
        assert judge(d(lo, hi))[0] is kind
        assert Comparison([0.5 + lo, 0.5 + hi], [0.5, 0.5]).kind() in Verdict
    assert Comparison([0.81, 0.83, 0.82, 0.84], [0.80, 0.805, 0.81, 0.815]).kind() is Verdict.GAIN
    assert Comparison([0.8], [0.7]).kind() is Verdict.UNDECIDED        # one seed: no interval
    # both ends said: a gain is bounded, a loss of more than a point is still possible
    assert verdict(d(-0.03, 0.009)) == "any gain is below 1 point, a loss not ruled out"
    assert decide(d(-0.0483, 0.0329)).endswith("undecided at 10 seeds")
    assert decide(d(-0.0483, 0.0329), small=0.05).startswith("the interval includes zero and lies within 5 points")
    assert decide(d(-0.005, 0.01)).endswith("undecided at 10 seeds")   # an end exactly at the bound is not below it
    assert verdict(d(0.001, 0.02)) == "a gain"
    assert verdict(d(-0.0047, 0.0051)) == "any effect is below 1 point"
    # two seeds with the same difference: the interval has no width, which decides nothing
    assert verdict({"mean": -0.02, "low": -0.02, "high": -0.02, "n": 2}) == "undecided at 2 seeds"
    assert verdict({"mean": 0.0, "low": 0.0, "high": 0.0, "n": 2}) == "undecided at 2 seeds"
    # the prose form of a comparison carries the same words
    c = Comparison([0.81, 0.83, 0.82, 0.84], [0.80, 0.805, 0.81, 0.815])
    assert c.words() == f"{c.number()} points, 95% interval {c.interval()}: {verdict(c.stats)}"
    assert c.words(verdict=False) == f"{c.number()} points, 95% interval {c.interval()}"


def test_records_round_trip_and_a_damaged_one_names_its_file(tmp_path, monkeypatch):
    from lossless import book
    from lossless.errors import LosslessError
    monkeypatch.setattr(book, "RECORDS", tmp_path)
    assert book.read_record("claims", "smoke") is None
    path = book.write_record({"seeds": [1, 2]}, "claims", "smoke")
    assert path == tmp_path / "claims-smoke.json"
    rec = book.read_record("claims", "smoke")
    assert rec["seeds"] == [1, 2] and rec["cpu"] and rec["time"]
    path.write_text('{"seeds": [1,')
    with pytest.raises(LosslessError, match="claims-smoke.json.*git checkout"):
        book.read_record("claims", "smoke")
    book.write_record({}, "claims", "smoke", tmp_path / "claims-rules-smoke.json").write_text("{")
    with pytest.raises(LosslessError, match="claims-rules-smoke.json.*with `lossless x --all`"):
        book.read_record("claims-rules", "smoke", "lossless x --all")
    # the records of one family, by name, and only the profile's
    for name, profile, n in (("claims-fm30", "smoke", 30), ("claims-fm15", "smoke", 15),
                             ("claims-fm15", "cpu", 99)):
        book.write_record({"n": n}, name, profile)
    assert [r["n"] for r in book.read_records("claims-fm", "smoke")] == [15, 30]
    assert book.read_records("claims-fm", "paper") == []
    # run folders are kept relative to the runs root, wherever the maker's disk put them; a
    # path that is not into a run folder, and a string that is not a path, stay as they are
    made = {"run": "/home/me/x/runs/pretrain-barlow-e2ecdf4d47",
            "seeds": [{"finetune_run": "/tmp/r/finetune-barlow-00e09dfab6/best.pt"}],
            "runs": {"byol": "/w/runs/finetune-byol-0123456789"},
            "data": "/usr/share/datasets/fashion-mnist", "command": "lossless x runs_dir=/tmp/y"}
    book.write_record(made, "section4", "smoke")
    kept = book.read_record("section4", "smoke")
    assert kept["run"] == "runs/pretrain-barlow-e2ecdf4d47"
    assert kept["seeds"][0]["finetune_run"] == "runs/finetune-barlow-00e09dfab6/best.pt"
    assert kept["runs"] == {"byol": "runs/finetune-byol-0123456789"}
    assert kept["data"] == made["data"] and kept["command"] == made["command"]


def test_committed_records_name_their_runs_not_the_makers_disk():
    """Every committed record keeps its run folders relative (``runs/<stage>-<hash>``): an
    absolute path is only the maker's disk, and differs for every reader."""
    from lossless import book, runs
    records = sorted(book.RECORDS.glob("*.json"))
    assert len(records) >= 20
    for path in records:
        rec = json.loads(path.read_text())
        assert runs.portable(rec) == rec, f"{path.name}: an absolute run path; write it with write_record"


def test_calibration_error_against_hand_computation():
    conf = np.array([0.95, 0.95, 0.55, 0.55, 0.55, 0.55])
    correct = np.array([1, 0, 1, 1, 1, 1])
    cal = calibration(conf, correct, bins=10)
    # bin (0.9, 1]: acc 0.5, conf 0.95 -> 2/6 * 0.45; bin (0.5, 0.6]: acc 1, conf 0.55 -> 4/6 * 0.45
    assert math.isclose(cal["ece"], 0.45, abs_tol=1e-9)
    assert cal["count"][9] == 2 and cal["count"][5] == 4


def test_finetuning_trains_with_two_learning_rates(tmp_path, smoke_backbone):
    cfg = smoke(tmp_path, ft_epochs=4)
    pre = pretrain(cfg)
    before = runs.load_checkpoint(Path(pre["backbone"]))["backbone"]
    result = finetune(cfg, "barlow")
    ckpt = runs.load_checkpoint(Path(result["run"]) / "checkpoints" / "last.pt")
    groups = ckpt["optimizer"]["param_groups"]
    assert [g["name"] for g in groups] == ["backbone", "head"]
    assert [g["initial_lr"] for g in groups] == [cfg.ft_lr_backbone, cfg.ft_lr_head]
    after = {k[len("backbone."):]: v for k, v in ckpt["model"].items() if k.startswith("backbone.")}
    moved = max(float((after[k].float() - before[k].float()).abs().max()) for k in before if before[k].is_floating_point())
    assert moved > 0                                            # the backbone is fine-tuned, not frozen
    assert 0 <= result["test_accuracy"] <= 1 and "calibration" in result["test_report"]


def test_missing_or_foreign_pretraining_checkpoint(tmp_path):
    cfg = smoke(tmp_path)
    with pytest.raises(LosslessError, match=r"pretrained backbone .*nothing.pt does not exist; run `lossless pretrain"):
        finetune(cfg, "barlow", tmp_path / "nothing.pt")
    assert not any((tmp_path / "runs").glob("pretrain-*/backbone.pt"))
    finetune(cfg, "barlow")                                     # by default: the configuration's run, trained first
    pre = pretrain(cfg)                                         # ... and now found, not redone
    assert Path(pre["backbone"]).is_file() and len(list((tmp_path / "runs").glob("pretrain-*"))) == 1
    with pytest.raises(LosslessError, match=r"backbone.pt holds another architecture .*width"):
        finetune(smoke(tmp_path, width=0.5), "barlow", Path(pre["backbone"]))


def test_pseudo_labelled_images_leave_the_pool(tmp_path, smoke_backbone):
    cfg = smoke(tmp_path, pl_rounds="5,5")
    pretrain(cfg)
    result = pseudo_label(cfg)
    stage = Path(result["run"])
    chosen = [np.load(stage / f"round{r}" / "selection.npz")["index"] for r in (1, 2)]
    assert len(chosen[0]) == len(chosen[1]) == 85                  # 5% of the 1,700-image pool
    assert not set(chosen[0]) & set(chosen[1])                      # round 2 never re-selects
    assert result["rounds"][2]["pool_after"] == 1700 - 170
    from lossless import data
    split = data.load_split(cfg, progress=False)
    assert set(np.concatenate(chosen)) <= set(split.unlabelled) and not set(np.concatenate(chosen)) & set(split.labelled)
    r2 = runs.read_json(stage / "round2" / "result.json")
    assert r2["train_images"] == 100 + 170                          # labelled + both rounds' pseudo-labels


def test_rounds_asking_for_more_than_the_pool_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(LosslessError, match=r"pl_rounds='60,60,10' is not allowed: .*adding up to at most 100"):
        smoke(tmp_path, pl_rounds="60,60,10", pl_epochs=1)
    assert not (tmp_path / "runs").exists()


def test_interrupted_round_resumes_to_the_same_result(tmp_path, monkeypatch):
    from lossless.finetune import Classifier
    reference = smoke(tmp_path / "a", pl_rounds="5,5")
    pretrain(reference)
    straight = pseudo_label(reference)
    cfg = smoke(tmp_path / "b", pl_rounds="5,5")
    pretrain(cfg)
    calls = {"n": 0}

    def crash(self, step, total):
        calls["n"] += 1
        if calls["n"] == 10:                                        # inside round 1 or 2's training
            raise KeyboardInterrupt
    monkeypatch.setattr(Classifier, "after_step", crash, raising=False)
    with pytest.raises(KeyboardInterrupt):
        pseudo_label(cfg)
    monkeypatch.undo()
    resumed = pseudo_label(cfg)
    assert resumed["rounds"] == straight["rounds"]  # same selections, precisions and accuracies


def test_classifier_keeps_the_pretraining_normalisation_and_reloads_exactly(tmp_path, smoke_backbone):
    from lossless import data
    from lossless.engine import resolve_device, resolve_precision
    from lossless.evaluate import report
    from lossless.finetune import load_classifier
    cfg = smoke(tmp_path, ft_epochs=2, seed=3)       # seed 3: the split (and its statistics) differ from seed 0's
    pre = pretrain(smoke(tmp_path, ft_epochs=2))     # the backbone of seed 0, shared across seeds
    stored = runs.load_checkpoint(Path(pre["backbone"]))
    result = finetune(cfg, "barlow", Path(pre["backbone"]))
    split = data.load_split(cfg, progress=False)
    device = resolve_device("cpu")
    amp = resolve_precision(cfg.precision, device)   # score it as the run did: same precision (bf16 here)
    model = load_classifier(cfg, split, Path(result["classifier"]), device, amp)
    assert model.augmenter.mean == tuple(stored["mean"]) and model.augmenter.std == tuple(stored["std"])
    again = report(score(model, split.images("test"), model.augmenter.plain, device, amp),
                   split.labels("test"), split.data.num_classes)
    # the same predictions and confidences as the run's own scoring: every count and the calibration
    assert again["confusion"] == result["test_report"]["confusion"]
    assert again["calibration"] == result["test_report"]["calibration"]
    assert again["accuracy"] == result["test_accuracy"]


def test_capped_selection_against_the_authors_loop():
    rng = np.random.default_rng(4)
    conf = rng.random(3000).astype(np.float32)
    conf[1024:1536] += 1.0                                          # one batch holds all the most confident
    k = 400
    kept = []                                                       # their loop: per batch of 512, top 150, then sort
    for s in range(0, len(conf), 512):
        chunk = sorted(range(s, min(s + 512, len(conf))), key=lambda i: (-conf[i], i))[:150]
        kept.extend(chunk)
    reference = np.sort(sorted(kept, key=lambda i: (-conf[i], i))[:k])
    from lossless.pseudo import select_capped
    capped = select_capped(conf, k)
    assert np.array_equal(capped, reference)
    assert len(np.intersect1d(capped, select_global(conf, k))) < k  # the cap binds here
    assert ((capped >= 1024) & (capped < 1536)).sum() == 150       # that batch gives only its 150


def test_backbone_drift_against_a_hand_computed_perturbation(tmp_path):
    from lossless.finetune import backbone_drift
    from lossless.models import build_backbone
    torch.manual_seed(0)
    b = build_backbone("resnet18", in_channels=1, width=0.25)
    before = {k: v.clone() for k, v in b.state_dict().items()}
    after = {f"backbone.{k}": v.clone() for k, v in before.items()}
    w = after["backbone.layer2.0.conv1.weight"]
    w += 0.5 * w                                                    # one tensor of layer 2 grows by half
    after["backbone.layer3.0.bn1.running_mean"] += 100.0            # statistics are not weights
    runs.save_checkpoint(tmp_path / "pre.pt", {"backbone": before})
    runs.save_checkpoint(tmp_path / "ft.pt", {"model": after})
    drift = {r["stage"]: r["relative change"] for r in backbone_drift(tmp_path / "pre.pt", tmp_path / "ft.pt")}
    layer2 = [v for k, v in before.items() if k.startswith("layer2.") and v.is_floating_point() and "running_" not in k]
    expected = 0.5 * float(before["layer2.0.conv1.weight"].double().norm()) / math.sqrt(
        sum(float(v.double().pow(2).sum()) for v in layer2))
    assert drift["layer2"] == pytest.approx(expected, rel=1e-6)          # 1.5 x w rounds to float32
    assert drift["stem"] == drift["layer1"] == drift["layer3"] == drift["layer4"] == 0.0


class _Clock:
    """A stand-in for ``time`` inside the engine: each reading is one 'second' later."""
    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        self.now += 1.0
        return self.now


def test_throttled_classifier_checkpoints_resume_exactly(tmp_path, smoke_backbone, monkeypatch):
    """Fine-tuning writes last.pt only every CHECKPOINT_SECONDS (the best weights wait in memory);
    a run killed between two writes resumes from the older one and ends bit-identical to a run
    that wrote every epoch, best.pt included."""
    from lossless import engine as engine_mod, finetune as finetune_mod
    saved = []
    real_save = runs.save_checkpoint

    def save(path, obj):
        saved.append((Path(path).name, obj.get("epoch")))
        real_save(path, obj)
    monkeypatch.setattr(runs, "save_checkpoint", save)
    pre = Path(pretrain(smoke(tmp_path / "p"))["backbone"])
    real = finetune_mod.validation_metrics

    def run(name, seconds, crash_epoch=None):
        saved.clear()
        monkeypatch.setattr(finetune_mod, "CHECKPOINT_SECONDS", seconds)

        def evaluate(model, split, device, amp, name="val"):
            if len(evaluated) == crash_epoch:
                raise RuntimeError("killed")
            evaluated.append(1)
            # the best epoch is the second, not the last, so best.pt and last.pt differ
            return {**real(model, split, device, amp, name), "val_loss": abs(len(evaluated) - 2.0)}
        evaluated = []
        monkeypatch.setattr(finetune_mod, "validation_metrics", evaluate)
        return finetune(smoke(tmp_path / name, ft_epochs=8), "barlow", pre)

    every = run("every", 0.0)
    assert [n for n, _ in saved].count("last.pt") == 8
    monkeypatch.setattr(engine_mod, "time", _Clock())
    with pytest.raises(RuntimeError, match="killed"):
        run("throttled", 10.0, crash_epoch=6)
    # the best weights waited in memory: best.pt (epoch 2) was written with a later last.pt
    assert ("best.pt", 2) in saved and saved[saved.index(("best.pt", 2)) + 1][1] > 2
    assert 1 <= [n for n, _ in saved].count("last.pt") < 6      # some epochs ended without a write
    resumed_ckpt = runs.load_checkpoint(next((tmp_path / "throttled").rglob("last.pt")))
    assert 0 < resumed_ckpt["epoch"] <= 6                 # the crash came in epoch 7's evaluation
    throttled = run("throttled", 10.0)
    assert throttled["test_accuracy"] == every["test_accuracy"]
    for name in ("last.pt", "best.pt"):
        a = runs.load_checkpoint(Path(every["run"]) / "checkpoints" / name)
        b = runs.load_checkpoint(Path(throttled["run"]) / "checkpoints" / name)
        assert a["epoch"] == b["epoch"] == (2 if name == "best.pt" else 8) and a["best"] == b["best"], name
        for k in a["model"]:
            assert torch.equal(a["model"][k], b["model"][k]), (name, k)


def test_frozen_probes_are_stored_once_per_backbone_and_labelled_set(tmp_path, smoke_backbone, monkeypatch):
    from lossless.experiments import claims as cl
    import lossless.experiments
    assert cl is lossless.experiments.claims and callable(cl.claims)   # the module, not a function of its name
    cfg = smoke(tmp_path)
    path = Path(pretrain(cfg)["backbone"])
    first = cl.frozen_probes(cfg, path)
    assert 0 <= first["knn_probe"] <= 1 and 0 <= first["linear_probe"] <= 1
    assert len(list((path.parent / "probes").glob("*.json"))) == 1

    def recompute(*a):
        raise AssertionError("computed again")
    monkeypatch.setattr(cl, "_frozen_probes", recompute)
    assert cl.frozen_probes(cfg, path) == first                  # read back, not recomputed
    with pytest.raises(AssertionError, match="computed again"):  # another labelled set is another entry
        cl.frozen_probes(smoke(tmp_path, seed=1), path)


def naive_weighted_knn(bank, bank_y, queries, k, temperature=0.07):
    """Cosine similarity to every bank row, the k most similar vote with exp(sim / T)."""
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    out = []
    for row in q @ b.T:
        top = np.argsort(-row, kind="stable")[:k]
        votes = {}
        for i in top:
            votes[bank_y[i]] = votes.get(bank_y[i], 0.0) + np.exp(row[i] / temperature)
        out.append(max(votes, key=votes.get))
    return np.array(out)


def test_a_backbone_is_probed_by_the_pixels_rule(tmp_path, smoke_backbone):
    """The features' probes choose k and C on validation from the pixels' grids, as the pixels'
    do (they had kept k = 20 and C = 1 while the pixels' were tuned): the reference recomputes
    every setting's validation accuracy from the frozen features with the plain functions."""
    from lossless.pretrain import pretrain
    from lossless.probes import C_GRID, K_GRID, knn_accuracy, linear_probe_accuracy
    from lossless.experiments import claims as cl
    cfg = smoke(tmp_path)
    path = pretrain(cfg)["backbone"]
    split, features = cl.frozen_features(cfg, path)
    f = {n: features(split.images(n)) for n in ("labelled", "val", "test")}
    y = {n: split.labels(n) for n in f}
    knn = {k: knn_accuracy(f["labelled"], torch.from_numpy(y["labelled"]), f["val"], torch.from_numpy(y["val"]),
                           k=k, num_classes=split.data.num_classes) for k in K_GRID}
    lin = {c: linear_probe_accuracy(f["labelled"], y["labelled"], f["val"], y["val"], c=c) for c in C_GRID}
    k, c = max(knn, key=knn.get), max(lin, key=lin.get)
    got = cl.probe_backbone(cfg, path)
    assert (got["knn_k"], got["linear_c"]) == (k, c)
    assert got["knn_val"] == knn[k] and got["linear_val"] == lin[c]
    assert got["linear_test"] == linear_probe_accuracy(f["labelled"], y["labelled"], f["test"], y["test"], c=c)
    assert cl.frozen_probes(cfg, path)["probe_settings"] == {"k": k, "C": c}
    assert pretrain(cfg)["probes"]["knn_k"] == k                       # the run's own result: the same rule


def test_pixel_baselines_choose_their_settings_on_validation(tmp_path, monkeypatch):
    from lossless import data
    from lossless.probes import K_GRID
    from lossless.experiments import claims as cl
    cfg = smoke(tmp_path)
    split = data.load_split(cfg)
    got = cl.pixel_baselines(cfg)

    def flat(name):
        return split.images(name).reshape(len(split.indices(name)), -1).astype(np.float64) / 255

    lab, val, test = flat("labelled"), flat("val"), flat("test")
    mean, std = lab.mean(0), lab.std(0)
    std[std < 1e-6] = 1
    z = [(a - mean) / std for a in (lab, val, test)]
    yl, yv, yt = split.labels("labelled"), split.labels("val"), split.labels("test")
    val_acc = {k: float((naive_weighted_knn(z[0], yl, z[1], k) == yv).mean()) for k in K_GRID}
    assert got["grid"]["knn_val"] == pytest.approx({str(k): v for k, v in val_acc.items()})
    best = max(val_acc, key=val_acc.get)
    assert got["knn_k"] == best
    assert got["knn_test"] == pytest.approx(float((naive_weighted_knn(z[0], yl, z[2], best) == yt).mean()))
    lin = got["grid"]["linear_val"]
    assert got["linear_c"] == float(max(lin, key=lin.get)) and got["linear_val"] == max(lin.values())
    assert 0 <= got["linear_probe_test"] <= 1

    def recompute(*a):
        raise AssertionError("computed again")
    monkeypatch.setattr(cl, "pixel_probes", recompute)
    assert cl.pixel_baselines(cfg) == got                        # read back from its run folder
    with pytest.raises(AssertionError, match="computed again"):  # another labelled set, another entry
        cl.pixel_baselines(smoke(tmp_path, seed=1))


def test_claims_with_all_rules_and_controls(tmp_path, smoke_backbone):
    from lossless.experiments import claims as cl
    cfg = smoke(tmp_path, pl_rounds="5,5")
    # the label-budget curve is the next test's (budget_seeds=0: none here)
    r = cl.claims(cfg, seeds=2, budgets=(10,), budget_seeds=0, all_rules=True, tune_supervised=False)
    assert list(r["summary"]) == list(cl.methods(True))
    for s in r["seeds"]:
        assert all(x.get("selected") in (None, 0) for x in s["pseudo_none_rounds"])       # no pseudo-label
        start = s["supervised_pseudo_global_rounds"][0]
        assert start["test_accuracy"] == s["supervised"]          # the control starts from the scratch model
        assert len(s["pseudo_gradual_rounds"]) == 1 + 2 * 3       # each round in pl_substeps smaller ones
        assert s["pseudo_global_rounds"][0]["test_accuracy"] == s["barlow_finetune"]
    gains = [(s["pseudo_global"] - s["barlow_finetune"]) - (s["supervised_pseudo_global"] - s["supervised"])
             for s in r["seeds"]]
    interact = cl.comparison(r, "gain on pretrained", "gain on scratch")
    assert interact.mean == pytest.approx(np.mean(gains)) and interact.n == 2
    assert r["strongest_baseline"] == max(cl.BASELINES, key=lambda m: r["summary"][m]["mean"])
    strongest = cl.comparison(r, "barlow_finetune", r["strongest_baseline"])
    assert strongest.mean == pytest.approx(np.mean([s["barlow_finetune"] - s[r["strongest_baseline"]]
                                                    for s in r["seeds"]]))
    arms = [c.arms for c in cl.comparisons(r)]  # every claim, each once, in table order
    assert arms[:2] == [("barlow_finetune", r["strongest_baseline"]), ("barlow_finetune", "supervised")] \
        or (r["strongest_baseline"] == "supervised" and arms[0] == ("barlow_finetune", "supervised"))
    assert ("gain on pretrained", "gain on scratch") in arms and len(set(arms)) == len(arms)
    assert [rr["arms"] for rr in r["comparisons"]] == [list(a) for a in arms]   # stored for the JSON's reader
    rows = cl.difference_rows(r)
    assert all(not row["claim"].startswith(("pretraining_helps", "pseudo_labels", "extra_", "parts_")) for row in rows)
    assert {row["seeds"] for row in rows} == {2}


def test_grid_edge_is_where_the_allowed_values_go_on():
    """A choice at a grid's end is an edge only where its parameter may go further: no weight
    decay and crops of the whole image are the ends of what is allowed, a rate of 0.05 is not."""
    from lossless.experiments import claims as cl
    grid = {"sup_lr_backbone": [0.05, 0.1], "ft_weight_decay": [0.0, 1e-5], "crop_scale_min": [0.8, 1.0]}
    at_ends = {"sup_lr_backbone": 0.05, "ft_weight_decay": 0.0, "crop_scale_min": 1.0}
    assert cl.grid_edge({"grid": grid, "choice": at_ends}) == ["sup_lr_backbone"]
    other_ends = {"sup_lr_backbone": 0.1, "ft_weight_decay": 1e-5, "crop_scale_min": 0.8}
    assert cl.grid_edge({"grid": grid, "choice": other_ends}) == list(grid)
    # the grid the experiment runs leaves room on every side it can
    assert all(len(v) >= 3 for v in cl.SUP_GRID.values())
    # how flat the top is: within one binomial standard error of the best (0.8 on 400 images:
    # 2.0 points), by hand
    rows = [{"sup_lr_backbone": lr, "ft_weight_decay": 0.0, "crop_scale_min": 1.0, "val_accuracy": a}
            for lr, a in ((0.05, 0.800), (0.1, 0.781), (0.2, 0.779), (0.4, 0.700))]
    g = {"grid": {**grid, "sup_lr_backbone": [0.05, 0.1, 0.2, 0.4]}, "rows": rows, "val_images": 400,
         "choice": at_ends}
    assert [r["sup_lr_backbone"] for r in cl.grid_top(g)] == [0.05, 0.1]
    assert cl.grid_edge(g) == ["sup_lr_backbone"]
    assert "sup_lr_backbone" not in cl.grid_edge({**g, "choice": {**at_ends, "sup_lr_backbone": 0.1}})


@pytest.mark.parametrize("name,profile", [("claims", "cpu"), ("claims-rules", "cpu"), ("claims", "smoke")])
def test_committed_claims_records_ran_the_grid_the_code_defines(name, profile):
    """A record whose supervised baseline was tuned on another grid than ``SUP_GRID`` is stale:
    the chapters would word its choice ("inside the grid") against a grid nobody ran."""
    from lossless import book
    from lossless.experiments import claims as cl
    rec = book.read_record(name, profile)
    assert rec is not None, f"{name}-{profile}: the record the chapters read is missing"
    assert not rec["supervised_grid_recorded"]                 # it ran its own grid
    assert rec["supervised_grid"]["grid"] == {k: list(v) for k, v in cl.SUP_GRID.items()}
    settings = {tuple(r[k] for k in cl.SUP_GRID) for r in rec["supervised_grid"]["rows"] if not r["default"]}
    assert settings == set(itertools.product(*cl.SUP_GRID.values()))


def test_fixmatch_budget_sets_fixmatch_beside_the_whole_pipeline():
    """FixMatch's minutes a labelled set against the pipeline's: pretraining once plus the median
    of fine-tuning + the best rule's rounds, over FixMatch's seeds only (by hand: 600 s + median
    of 60 and 120 s = 690 s = 11.5 min; FixMatch's median of 660 and 720 s = 11.5 min)."""
    from lossless.experiments import claims as cl
    seeds = [{"fixmatch_seconds": 660, "fixmatch_epochs": 30, "barlow_finetune_seconds": 20,
              "pseudo_global_seconds": 40},
             {"fixmatch_seconds": 720, "fixmatch_epochs": 30, "barlow_finetune_seconds": 30,
              "pseudo_global_seconds": 90},
             {"barlow_finetune_seconds": 900, "pseudo_global_seconds": 900}]   # no FixMatch: not counted
    rec = {"seeds": seeds, "pretraining": {"train_seconds": 600}, "best_pseudo_rule": "pseudo_global"}
    b = cl.fixmatch_budget(rec)
    assert (b["passes"], b["seeds"]) == (30, 2)
    assert b["fixmatch_minutes"] == pytest.approx(11.5) and b["pipeline_minutes"] == pytest.approx(11.5)
    assert b["pretraining_minutes"] == pytest.approx(10.0) and b["after_minutes"] == pytest.approx(1.5)
    assert b["ratio"] == pytest.approx(1.0)
    # records made before the pipeline's seconds were kept have no pipeline minutes
    old = cl.fixmatch_budget({**rec, "seeds": [{"fixmatch_seconds": 330}]})
    assert old["fixmatch_minutes"] == pytest.approx(5.5) and old["ratio"] is None
    assert cl.fixmatch_budget({**rec, "seeds": seeds[2:]}) is None


def _fm_record(passes, fixmatch, seconds, finetune=(0.80, 0.80, 0.80)):
    seeds = [{"seed": i, "barlow_finetune": f, "pseudo_global": f, "fixmatch": m,
              "fixmatch_seconds": seconds, "fixmatch_epochs": passes,
              "barlow_finetune_seconds": 20, "pseudo_global_seconds": 40}
             for i, (f, m) in enumerate(zip(finetune, fixmatch))]
    return {"seeds": seeds, "pretraining": {"train_seconds": 540}, "best_pseudo_rule": "pseudo_global",
            "command": f"claims fm_epochs={passes}"}


def test_fixmatch_length_rows_order_by_minutes_and_pair_each_record():
    """One row per FixMatch length, fewest minutes first, each paired over its own seeds (by
    hand: differences 1, 2, 0 points -> +1.00, sd 1, t(2) 4.303 -> [-1.48, +3.48]; -3, -4, -2
    -> -3.00 [-5.48, -0.52]); the pipeline is 540 + 60 s = 10 min, so 300 s is 0.5 times it."""
    from lossless.experiments import claims as cl
    short = _fm_record(15, (0.79, 0.78, 0.80), 300)
    long = _fm_record(30, (0.83, 0.84, 0.82), 720)
    assert cl.fixmatch_budget(short) == {"passes": 15, "seeds": 3, "fixmatch_minutes": 5.0,
                                         "pretraining_minutes": 9.0, "after_minutes": 1.0,
                                         "pipeline_minutes": 10.0, "ratio": 0.5}
    one_seed = {**_fm_record(24, (0.9,), 600), "seeds": _fm_record(24, (0.9,), 600)["seeds"][:1]}
    rows = cl.fixmatch_length_rows([long, one_seed, short])   # one FixMatch seed: no row
    assert [(r["passes"], r["FixMatch minutes"], r["x the pipeline's"]) for r in rows] == [
        (15, 5.0, 0.5), (30, 12.0, 1.2)]
    assert rows[0]["FixMatch"] == "79.00% ± 1.00" and rows[1]["FixMatch"] == "83.00% ± 1.00"
    assert rows[0]["Barlow Twins + fine-tuning minus FixMatch"].startswith(
        "+1.00 points, 95% interval [-1.48, +3.48]: "), rows[0]
    assert rows[1]["the pipeline minus FixMatch"] == "-3.00 points, 95% interval [-5.48, -0.52]: a loss"
    other = _fm_record(24, (0.8, 0.8, 0.8), 600, finetune=(0.81, 0.80, 0.80))
    with pytest.raises(LosslessError, match="claims fm_epochs=24.*differ only in fm_epochs"):
        cl.fixmatch_length_rows([short, other])
    # the pairs the chapter words, in the table's order; equal minutes stay two entries
    same_minutes = _fm_record(20, (0.79, 0.78, 0.80), 300)
    assert [b["passes"] for b, _ in cl.fixmatch_lengths([long, None, short, same_minutes])] == [15, 20, 30]


def test_claims_tune_the_supervised_baseline_and_run_fixmatch(tmp_path, smoke_backbone):
    """The grid's choice is its best validation accuracy, and it is what every seed's supervised
    baseline (and the budget curve's) trains with; FixMatch runs on the first seeds only and is
    compared, paired, on those."""
    from lossless.experiments import claims as cl
    cfg = smoke(tmp_path, pl_rounds="5", fm_epochs=1, fm_max_steps_per_epoch=2, fm_batch_size=8, fm_mu=2)
    grid = {"sup_lr_backbone": (0.01, 0.05), "ft_weight_decay": (1e-5, 5e-4)}
    g = cl.supervised_grid(cfg, grid)
    assert len(g["rows"]) == 4 and sum(r["default"] for r in g["rows"]) == 1
    best = max(g["rows"], key=lambda r: r["val_accuracy"])
    assert g["rows"][[r["val_accuracy"] for r in g["rows"]].index(best["val_accuracy"])] is best
    assert g["choice"] == {k: best[k] for k in grid}
    assert cl.grid_edge(g) == list(grid)                      # two values each: every choice is an edge
    assert cl.grid_edge({"grid": {"a": [1, 2, 3], "b": [1, 2, 3], "c": [5]},
                         "choice": {"a": 2, "b": 3, "c": 5}}) == ["b"]
    for row in g["rows"]:
        assert 1 <= row["best_epoch"] <= cfg["ft_epochs"]
    with pytest.raises(config.ConfigError, match="grid"):
        cl.supervised_grid(cfg, {"not_a_key": (1,)})
    away = cl.supervised_grid(cfg, {"sup_lr_backbone": (0.01,), "ft_weight_decay": (5e-4,)})
    own = {"sup_lr_backbone": cfg["sup_lr_backbone"], "ft_weight_decay": cfg["ft_weight_decay"]}
    assert [r["default"] for r in away["rows"]] == [False, True]          # the own setting is added
    assert {k: away["rows"][1][k] for k in own} == own
    assert away["rows"][1]["val_accuracy"] == next(r for r in g["rows"] if r["default"])["val_accuracy"]

    cl.SUP_GRID, saved = grid, cl.SUP_GRID
    try:
        r = cl.claims(cfg, seeds=3, budgets=(10,), budget_seeds=1, fixmatch_seeds=2)
    finally:
        cl.SUP_GRID = saved
    assert r["supervised_grid"]["choice"] == g["choice"]
    chosen = cl._with(cfg, **g["choice"])
    for s in r["seeds"]:
        assert s["supervised"] == finetune(cl._with(chosen, seed=s["seed"]), "random")["test_accuracy"]
        assert ("fixmatch" in s) == (s["seed"] < 2)
        # the pipeline's minutes: the fine-tuning run's and each round's own, read from their files
        backbone = Path(r["pretraining"]["run"]) / "backbone.pt"
        start = finetune(cl._with(cfg, seed=s["seed"]), "barlow", backbone)
        assert s["barlow_finetune_seconds"] == start["train_seconds"]
        stage = Path(pseudo_label(cl._with(cfg, seed=s["seed"], pl_rule="global"), start, backbone)["run"])
        rounds = sorted(stage.glob("round*/result.json"))
        assert len(rounds) == 1
        assert s["pseudo_global_seconds"] == pytest.approx(sum(json.loads(f.read_text())["train_seconds"]
                                                               for f in rounds))
    assert r["summary"]["fixmatch"]["n"] == 2 and "pseudo_balanced" not in r["summary"]
    assert r["strongest_baseline"] == max(cl.BASELINES + ("fixmatch",), key=lambda m: r["summary"][m]["mean"])
    d = cl.comparison(r, "barlow_finetune", "fixmatch")   # paired on FixMatch's seeds only
    assert d.n == 2 and d.seeds == (0, 1)
    assert d.mean == pytest.approx(np.mean([s["barlow_finetune"] - s["fixmatch"] for s in r["seeds"][:2]]))
    with pytest.raises(config.ConfigError, match="fixmatch_seeds"):
        cl.claims(cfg, seeds=2, fixmatch_seeds=3)


def test_forgetting_counts_against_a_loop():
    from lossless.evaluate import forgetting
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 500)
    before, after = rng.integers(0, 4, 500), rng.integers(0, 4, 500)
    forgotten = learned = 0
    for b, a, y in zip(before, after, labels):
        if b == y and a != y:
            forgotten += 1
        if b != y and a == y:
            learned += 1
    got = forgetting(before, after, labels)
    assert got == {"forgotten": forgotten, "learned": learned, "net": learned - forgotten, "images": 500}
    assert got["net"] == int((after == labels).sum() - (before == labels).sum())
    with pytest.raises(ValueError, match="forgetting"):
        forgetting(before[:3], after, labels)
