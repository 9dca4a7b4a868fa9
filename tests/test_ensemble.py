"""Ensembles and the overlap analysis (paper section 4) against hand and brute-force computations."""
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from lossless import ensemble
from lossless.errors import LosslessError


def random_probs(rng, n, c, k):
    out = []
    for _ in range(k):
        x = rng.gamma(0.5, size=(n, c))
        out.append((x / x.sum(1, keepdims=True)).astype(np.float32))
    return out


def test_average_and_weighted_mean_by_hand():
    a = np.array([[0.6, 0.4], [0.2, 0.8], [0.5, 0.5]])
    b = np.array([[0.1, 0.9], [0.7, 0.3], [0.4, 0.6]])
    # average: [0.35, 0.65], [0.45, 0.55], [0.45, 0.55] -> 1, 1, 1
    assert ensemble.predict([a, b]).tolist() == [1, 1, 1]
    # 0.8 a + 0.2 b: [0.5, 0.5]->0 (first of a tie), [0.3, 0.7]->1, [0.48, 0.52]->1
    assert ensemble.predict([a, b], [0.8, 0.2]).tolist() == [0, 1, 1]
    assert ensemble.predict([a, b], [4, 1]).tolist() == [0, 1, 1]          # weights are normalised
    assert ensemble.predict([a, b], [1, 0]).tolist() == a.argmax(1).tolist()
    y = np.array([1, 0, 1])
    expected = -(math.log(0.65) + math.log(0.45) + math.log(0.55)) / 3
    assert math.isclose(ensemble.log_loss([a, b], y), expected, rel_tol=1e-6)
    with pytest.raises(LosslessError, match="non-negative"):
        ensemble.predict([a, b], [1, -1])
    with pytest.raises(LosslessError, match="one shape"):
        ensemble.predict([a, b[:2]])


def test_vote_breaks_ties_by_summed_probability():
    a = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    b = np.array([[0.2, 0.7, 0.1], [0.2, 0.1, 0.7]])
    c = np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    # row 0: one vote each for 0, 1, 2; summed probabilities 0.8, 1.2, 1.0 -> 1
    # row 1: votes 2, 2, 0 -> 2
    assert ensemble.vote([a, b, c]).tolist() == [1, 2]


def test_chunks_and_memory_maps_give_the_same_answers(tmp_path):
    rng = np.random.default_rng(0)
    probs = random_probs(rng, 1000, 7, 3)
    paths = []
    for i, p in enumerate(probs):
        np.save(tmp_path / f"p{i}.npy", p.astype(np.float16))
        paths.append(np.load(tmp_path / f"p{i}.npy", mmap_mode="r"))
    half = [p.astype(np.float16) for p in probs]
    for w in (None, [0.5, 0.3, 0.2]):
        assert np.array_equal(ensemble.predict(paths, w, chunk=37), ensemble.predict(half, w))
    assert np.array_equal(ensemble.vote(paths, chunk=37), ensemble.vote(half))


def test_simplex_grid():
    g = ensemble.simplex_grid(3, 0.05)
    assert len(g) == math.comb(20 + 2, 2) == 231
    assert np.allclose(g.sum(1), 1) and (g >= 0).all() and len({tuple(r) for r in g.round(9)}) == len(g)
    assert ensemble.simplex_grid(1).tolist() == [[1.0]]
    with pytest.raises(LosslessError):
        ensemble.simplex_grid(2, 0.3)


def test_weights_are_the_brute_force_best_on_validation():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 400)
    probs = random_probs(rng, 400, 5, 3)
    for i, p in enumerate(probs):            # models of different skill
        p[np.arange(400), y] += 0.1 * (i + 1)
        p /= p.sum(1, keepdims=True)
    fit = ensemble.fit_weights(probs, y, step=0.1)
    # brute force: every grid point's accuracy, then the log-loss among the best
    scored = []
    for w in ensemble.simplex_grid(3, 0.1):
        mix = sum(wi * p for wi, p in zip(w, probs))
        acc = np.mean(mix.argmax(1) == y)
        scored.append((acc, -np.mean(np.log(mix[np.arange(400), y])), tuple(w)))
    best_acc = max(s[0] for s in scored)
    best = min((s for s in scored if s[0] == best_acc), key=lambda s: s[1])
    assert math.isclose(fit["val_accuracy"], best_acc) and np.allclose(fit["weights"], best[2])
    assert fit["candidates"] == 66


def test_paper_weights():
    assert ensemble.paper_weights(["barlow", "byol", "swav"]) == [0.5, 0.25, 0.25]
    assert np.allclose(ensemble.paper_weights(["byol", "barlow"], share=0.7), [0.3, 0.7])
    with pytest.raises(LosslessError, match="needs barlow"):
        ensemble.paper_weights(["byol", "swav"])


def brute_force_sets(right):
    names = list(right)
    sets = {n: {i for i, r in enumerate(right[n]) if r} for n in names}
    n_images = len(next(iter(right.values())))
    out = {}
    for k in range(len(names) + 1):
        for combo in itertools.combinations(names, k):
            inside = set(range(n_images))
            for n in combo:
                inside &= sets[n]
            for n in names:
                if n not in combo:
                    inside -= sets[n]
            out[combo] = len(inside)
    return out, sets


def test_overlap_counts_against_python_sets():
    rng = np.random.default_rng(2)
    for k in (2, 3, 4):
        names = ["barlow", "byol", "swav", "simclr"][:k]
        right = {n: rng.random(500) < 0.3 + 0.15 * i for i, n in enumerate(names)}
        rows = ensemble.intersections(right)
        brute, sets = brute_force_sets(right)
        assert {r["models"]: r["count"] for r in rows} == brute and sum(r["count"] for r in rows) == 500
        assert [r["count"] for r in rows] == sorted((r["count"] for r in rows), reverse=True)
        for a, b in itertools.permutations(names, 2):
            assert ensemble.only_right(right, a, b) == len(sets[a] - sets[b])
        assert math.isclose(ensemble.oracle(right), len(set().union(*sets.values())) / 500)


def test_agreement_error_correlation_and_flips_against_loops():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 300)
    preds = {n: np.where(rng.random(300) < 0.6, y, rng.integers(0, 4, 300)) for n in ("a", "b", "c")}
    agree = ensemble.agreement(preds)
    for i, a in enumerate(preds):
        for j, b in enumerate(preds):
            assert math.isclose(agree[i, j], sum(int(x == z) for x, z in zip(preds[a], preds[b])) / 300)
    right = ensemble.correct(preds, y)
    corr = ensemble.error_correlation(right)
    ea, eb = (~right["a"]).astype(float), (~right["b"]).astype(float)
    naive = np.mean((ea - ea.mean()) * (eb - eb.mean())) / (ea.std() * eb.std())
    assert math.isclose(corr[0, 1], naive, rel_tol=1e-9) and math.isclose(corr[0, 0], 1.0)
    f = ensemble.flips(right["a"], right["b"])
    assert set(f["wrong_to_right"]) == {i for i in range(300) if not right["a"][i] and right["b"][i]}
    assert set(f["right_to_wrong"]) == {i for i in range(300) if right["a"][i] and not right["b"][i]}


# ------------------------------------------------------------------ Figure 2
def test_filter_mosaic_holds_exactly_the_weights_over_the_shared_scale():
    from lossless import filters
    rng = np.random.default_rng(4)
    w = rng.normal(size=(10, 1, 3, 3)).astype(np.float32)
    shown = filters.shown_filters(w)
    assert shown.shape == (10, 3, 3, 1)
    m, scale = filters.mosaic(shown, columns=4, scale=2.5)
    assert scale == 2.5 and m.shape == (3 * 4 - 1, 4 * 4 - 1, 1)
    for i in range(10):
        r, c = divmod(i, 4)
        assert np.allclose(m[r * 4:r * 4 + 3, c * 4:c * 4 + 3, 0], w[i, 0] / 2.5)
    assert np.isnan(m[3, :, 0]).all() and np.isnan(m[:, 3, 0]).all()     # the gaps
    assert np.isnan(m[8:, 8:, 0]).all()                                    # cells 10, 11 are empty
    m2, s2 = filters.mosaic(shown)
    assert math.isclose(s2, float(np.abs(w).max())) and np.nanmax(np.abs(m2)) == 1.0
    rgb = filters.shown_filters(rng.normal(size=(4, 3, 3, 3)))
    assert rgb.shape == (4, 3, 3, 3)
    many = rng.normal(size=(4, 16, 3, 3))
    assert np.allclose(filters.shown_filters(many)[..., 0], many.mean(1))
    assert np.allclose(filters.filter_norms(w), [np.linalg.norm(x) for x in w])
    assert np.allclose(filters.cosine_to(w, 3 * w), 1) and np.allclose(filters.cosine_to(w, -w), -1)
    # panels: both backbones on one scale, the largest |weight| of trained and initial alike
    p = filters.panels({"a": w, "b": 2 * w}, {"a": -w, "b": 4 * w})
    assert p["scale"] == pytest.approx(4 * np.abs(w).max())                # from an initial layer
    assert p["similarity"] == pytest.approx({"a": -1.0, "b": 1.0}) and p["norm_ratio"]["b"] == pytest.approx(0.5)
    assert np.allclose(np.nan_to_num(p["changes"]["a"]), np.nan_to_num(p["mosaics"]["b"]))  # w - (-w) = 2w
    # each filter drawn on its own scale: a filter 100 times smaller than the others still
    # spans -1..1 (on a shared scale it would be a white square), its shape unchanged
    small = w.copy()
    small[0] /= 100
    m3, largest = filters.mosaic(filters.shown_filters(small), columns=4, scale="filter")
    assert largest == pytest.approx(np.abs(small).max())
    for i in range(10):
        r, c = divmod(i, 4)
        cell = m3[r * 4:r * 4 + 3, c * 4:c * 4 + 3, 0]
        assert np.abs(cell).max() == pytest.approx(1.0)
        assert np.allclose(cell, small[i, 0] / np.abs(small[i, 0]).max())


def test_record_figures_without_a_record_say_so():
    import matplotlib
    matplotlib.use("Agg")
    from lossless import viz
    for fig in (viz.upset(None, [], missing="no record here"), viz.filter_mosaics(None, missing="no record here")):
        assert [t.get_text() for ax in fig.axes for t in ax.texts] == ["no record here"]


def test_layer_weights_and_top_activating():
    from lossless import filters
    from lossless.models import build_backbone
    net = build_backbone("resnet18", in_channels=1, width=0.25, image_size=28)
    names = filters.conv_layers(net)
    assert names[0] == "stem.0"
    w = filters.layer_weights(net, "stem.0")
    assert np.array_equal(w, net.stem[0].weight.detach().numpy())
    with pytest.raises(LosslessError, match=r"filter_layer='stem.1' is not a convolution .*stem.0"):
        filters.layer_weights(net, "stem.1")
    maps = filters.stage_maps(net.eval(), np.zeros((28, 28, 1), np.uint8), [0.5], [0.25])
    assert list(maps) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert maps["layer4"].shape[0] == net.feature_dim
    f = np.array([[1.0, 5.0], [3.0, 5.0], [2.0, 5.1], [9.0, 4.9]])
    assert filters.selective_channels(f, 1) == [0]                       # channel 1 hardly varies
    assert filters.top_activating(f, [0, 1], k=2) == {0: pytest.approx([3, 1]), 1: pytest.approx([2, 0])}


# ------------------------------------------------------------------ the experiment (smoke profile)
def test_ensembles_experiment_stores_outputs_and_never_reads_test_labels_to_choose(tmp_path, monkeypatch):
    import dataclasses
    from lossless import config, runs
    from lossless.experiments import ensembles as ex
    cfg = config.load_profile("smoke", dict(runs_dir=str(tmp_path / "runs"), progress=False,
                                            compare_methods="barlow,byol,swav"))
    result = ex.ensembles(cfg, seeds=2)
    assert result["models"] == ["barlow", "byol", "swav"] and result["kinds"] == list(ex.KINDS)
    for r in result["seeds"]:
        for key, run in r["runs"].items():
            stored = runs.read_json(Path(run) / "result.json")
            probs = np.load(Path(run) / "probs-test.npy")
            assert probs.dtype == np.float32 and probs.shape[1] == 10
            assert np.allclose(probs.sum(1), 1, atol=1e-5)
            # the stored outputs score exactly as the run itself did, ties of bf16 logits included
            # (Intel AMX's bf16 kernels tie on some smoke images; AMD's AVX-512 BF16 ones on none,
            # so ties are not required here: the equality must hold either way)
            assert r["single_test"][key] == stored["test_accuracy"]
        assert r["ensembles"]["average"]["weights"] == pytest.approx([1 / 3] * 3)
        assert r["ensembles"]["paper"]["weights"] == [0.5, 0.25, 0.25]
        assert sum(r["ensembles"]["weighted"]["weights"]) == pytest.approx(1)
        for part in ("val", "test"):
            ov = r["overlap"][part]
            assert sum(x["count"] for x in ov["intersections"]) == ov["n"]
    assert [row["method"] for row in result["table1"]] == ["Barlow Twins", "BYOL", "SwAV"] + [
        ex.KIND_NAMES[k] for k in ex.KINDS]
    arms = [c.arms for c in ex.comparisons(result)]  # each against the best single, then the paper's
    assert arms == [(k, ex.BEST) for k in ex.KINDS] + [("average", "barlow"), ("weighted", "barlow"),
                                                        ("weighted", "average")]
    avg = ex.comparison(result, "average", "barlow")
    assert list(avg.a) == [r["ensembles"]["average"]["test_accuracy"] for r in result["seeds"]]
    assert list(avg.b) == [r["single_test"]["barlow"] for r in result["seeds"]]
    best = ex.comparison(result, "vote")
    assert list(best.b) == [r["single_test"][r["best_single"]] for r in result["seeds"]]
    assert len(ex.difference_rows(result)) == 7 and len(ex.bound_rows(result)) == 2
    kept = json.loads(json.dumps(result))     # as a committed record reads it back: lists, not tuples
    for part in ("val", "test"):
        rows = ex.mean_intersections(kept, part)
        assert rows == ex.mean_intersections(result, part)
        assert sum(r["count"] for r in rows) == result["seeds"][0]["overlap"][part]["n"]
    for f in (ex.accuracy_rows, ex.difference_rows, ex.bound_rows, ex.gap_closed):
        assert f(kept) == f(result)
    s4 = ex.section4(cfg, seeds=2)            # the record's content: loads the same runs
    assert s4["ensembles"]["seeds"] == result["seeds"] and list(s4["histories"]) == ["barlow", "byol", "swav"]
    for key, h in s4["histories"].items():    # each run's monitors, one row an epoch
        assert [r["epoch"] for r in h] == list(range(1, cfg["compare_epochs"] + 1))
        assert h == runs.read_jsonl(Path(s4["compare"]["runs"][key]["pretraining"]["run"]) / "metrics.jsonl")
    # each run's first convolution, as the record keeps it: the checkpoint's weights, and the
    # weights the pretraining task itself starts from (its seeded build), not filters' own path
    from lossless import filters, pretrain
    split = ex.load_data(cfg, False)
    for key, kept in s4["first_layers"].items():
        method, _, net = key.partition(":")
        c = ex.t1.compare_cfg(cfg, method, cfg["compare_epochs"], net or None)
        ckpt = runs.load_checkpoint(Path(pretrain.pretrain(c)["backbone"]))
        assert kept["layer"] == "stem.0"
        assert np.array_equal(np.float32(kept["trained"]), ckpt["backbone"]["stem.0.weight"].numpy())
        start = pretrain.build_task(c, split)[0].backbone.stem[0].weight.detach().numpy()
        assert np.array_equal(np.float32(kept["initial"]), start)
        assert not np.array_equal(start, np.float32(kept["trained"]))
    drawn = filters.panels({k: v["trained"] for k, v in s4["first_layers"].items()},
                           {k: v["initial"] for k, v in s4["first_layers"].items()})
    assert drawn["scale"] == max(np.abs(np.float32(v[part])).max() for v in s4["first_layers"].values()
                                 for part in ("trained", "initial"))
    flips = ex.flip_examples(cfg, result, seed=0, n=3)
    assert len(flips) == 2 and all(len(imgs) == len(titles) <= 3 for imgs, titles in flips.values())

    # a members record: the first labelled set's stored ensembles and its runs' own outputs, as
    # `lossless experiment ensembles --record` writes them and the chapter's method cell reads them
    from lossless import book
    from lossless.experiments import findings
    kept_members, arrays = ex.members_record(result)
    monkeypatch.setattr(book, "RECORDS", tmp_path / "records")
    book.write_record(kept_members, "ensembles", "smoke", arrays=arrays)
    ev = findings.members_evidence(cfg)
    assert ev["members_source"] == "the record"
    rec = ev["members"]
    assert rec["seeds"][0]["ensembles"] == result["seeds"][0]["ensembles"] and rec["models"] == result["models"]
    for part in ("val", "test"):
        mine = ex.member_outputs(rec, part)
        assert list(mine) == result["models"]
        for m, run in result["seeds"][0]["runs"].items():
            assert np.array_equal(mine[m], np.load(Path(run) / f"probs-{part}.npy"))
    record_flips = ex.flip_examples(cfg, rec, seed=0, n=3)
    assert {k: v[1] for k, v in record_flips.items()} == {k: v[1] for k, v in flips.items()}
    with pytest.raises(LosslessError, match="labelled set 0 only"):
        ex.member_outputs(rec, "test", seed=1)
    other = cfg.replace(ensemble_step=0.1)   # made with another grid: this build's runs instead
    assert findings.members_evidence(other)["members_source"] == "this build"
    monkeypatch.undo()

    # permuted test labels: the same weights (chosen on validation), other test scores
    real_load = ex.load_data

    def permuted(c, progress):
        split = real_load(c, progress)
        labels = split.data.labels.copy()
        labels[split.test] = np.random.default_rng(0).permutation(labels[split.test])
        return dataclasses.replace(split, data=dataclasses.replace(split.data, labels=labels))
    monkeypatch.setattr(ex, "load_data", permuted)
    again = ex.ensembles(cfg, seeds=2)
    for a, b in zip(result["seeds"], again["seeds"]):
        assert a["best_single"] == b["best_single"]
        for kind in ex.KINDS:
            assert a["ensembles"][kind]["weights"] == b["ensembles"][kind]["weights"]
            assert a["ensembles"][kind]["val_accuracy"] == b["ensembles"][kind]["val_accuracy"]
    assert any(a["ensembles"][k]["test_accuracy"] != b["ensembles"][k]["test_accuracy"]
               for a, b in zip(result["seeds"], again["seeds"]) for k in ex.KINDS)

    bad = config.load_profile("smoke", {**{k: v for k, v in cfg.items() if k != "profile"},
                                        "ensemble_models": "barlow,simclr"})
    with pytest.raises(config.ConfigError, match=r"simclr is not among compare_methods"):
        ex.ensembles(bad, seeds=2)


def test_filters_chapter_reruns_under_papermill_with_other_parameters(tmp_path):
    """The Figure 2 chapter regenerates its figures for another method list, layer and image."""
    import json
    import os
    import subprocess
    import sys
    root = Path(__file__).parent.parent
    out = tmp_path / "filters.ipynb"
    env = dict(os.environ, LOSSLESS_RUNS=str(tmp_path / "runs"))
    proc = subprocess.run([sys.executable, "-m", "papermill", str(root / "notebooks" / "filters.ipynb"), str(out),
                           "-p", "profile", "smoke", "-p", "filter_methods", "byol,swav",
                           "-p", "filter_layer", "layer1.0.conv1", "-p", "filter_image", "3", "--cwd", str(root)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    nb = json.loads(out.read_text())
    images = [o for c in nb["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 3                 # filters, stage maps, top images
    text = json.dumps(nb)
    # the rows: the main line, then exactly the runs asked for (the default list has SimCLR too);
    # a record keeps only the first layer, so another layer is drawn from this build's runs
    assert "main line" in text and "BYOL, " in text and "SwAV, " in text and "SimCLR, " not in text
    assert "this build" in text


def test_figure2_from_a_record_trains_nothing_of_section_4(tmp_path, smoke_backbone, monkeypatch):
    """Where the section 4 record keeps the asked layer, the filters chapter draws its filters
    from the record and Figure 2's maps and top images from the main line alone: no run of the
    comparison is trained (on a 2-core AVX2 machine those were 20 minutes of the cpu book)."""
    from lossless import book, config
    from lossless.experiments import filters as fx
    s4 = book.read_record("section4", "smoke")
    kept = fx.recorded_layers(s4, "barlow,byol", "stem.0")
    assert sorted(k.split(":")[0] for k in kept) == ["barlow", "byol"]
    assert fx.recorded_layers(s4, "barlow,byol", "layer1.0.conv1") == {}      # not kept: checkpoints
    cfg = config.load_profile("smoke", {"runs_dir": str(smoke_backbone), "progress": False})
    trained = []
    real = fx.pretrain
    monkeypatch.setattr(fx, "pretrain", lambda c: trained.append(c["ssl_epochs"]) or real(c))
    drawn = fx.figure2(cfg, "barlow,byol", "stem.0", 0, 2, top=3, runs=False)
    assert trained == [cfg["ssl_epochs"]]                                      # the main line only
    assert len(drawn["weights"]) == 1 and drawn["maps"] and len(drawn["top_images"]) == 2
