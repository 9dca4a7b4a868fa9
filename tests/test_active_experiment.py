"""The active-learning experiment (section 3.6): TypiClust, the head on frozen features, the
stored features, fine-tuning with answered requests, and the experiment's own bookkeeping."""
import json
import math

import numpy as np
import pytest
import torch

from lossless import active, config
from lossless.errors import ConfigError, LosslessError
from lossless.experiments import active as ex


def smoke(tmp_path, **kw):
    return config.load_profile("smoke", dict(runs_dir=str(tmp_path / "runs"), progress=False, **kw))


def slow_typicality(x, k):
    out = []
    for i in range(len(x)):
        d = sorted(math.dist(x[i], x[j]) for j in range(len(x)) if j != i)
        out.append(1 / (np.mean(d[:k]) + 1e-5))
    return np.array(out)


def test_typicality_against_a_slow_version():
    x = np.random.default_rng(0).normal(size=(1500, 3))        # > one 1024-row chunk
    for k in (1, 5, 20):
        sub = x[:300]
        assert np.allclose(active.typicality(sub, k), slow_typicality(sub, k), rtol=1e-9)
    assert np.allclose(active.typicality(x, 7)[1400:], slow_typicality(x, 7)[1400:], rtol=1e-9)


def blobs(seed=0, per=40, centres=6, dim=8):
    rng = np.random.default_rng(seed)
    c = np.eye(dim)[:centres] * 10                                # far apart, unit-length directions
    x = np.concatenate([c[i] + rng.normal(scale=0.3, size=(per, dim)) for i in range(centres)])
    return x, np.repeat(np.arange(centres), per)


def test_typiclust_covers_the_uncovered_clusters_with_their_most_typical_image():
    x, blob = blobs()
    labelled = np.flatnonzero(blob < 2)[[0, 1, 40, 41]]           # two blobs already covered
    pool = np.setdiff1d(np.arange(len(x)), labelled)
    sel = active.typiclust(x[pool], x[labelled], budget=4, seed=0, max_clusters=6)
    assert sel.info["clusters"] == 6
    got = pool[sel.positions]
    assert sorted(blob[got].tolist()) == [2, 3, 4, 5]               # one from each uncovered blob
    xn = active.normalise(x)
    for i in got:                                                  # the most typical of its blob
        members = pool[blob[pool] == blob[i]]
        t = slow_typicality(xn[members], 20)
        assert i == members[int(np.argmax(t))]
    more = active.typiclust(x[pool], x[labelled], budget=9, seed=0, max_clusters=6)
    assert len(set(more.positions.tolist())) == 9                  # cycles through the clusters again
    with pytest.raises(ConfigError, match=r"budget=500 is more than the 236 images in the pool"):
        active.typiclust(x[pool], x[labelled], budget=500, seed=0)


def test_the_intersection_may_be_empty_only_when_asked():
    margins = [np.arange(10.0), np.arange(10.0)[::-1]]
    with pytest.raises(LosslessError, match="no image in common"):
        active.intersect([np.array([0, 1]), np.array([8, 9])], margins, 2)
    got = active.intersect([np.array([0, 1]), np.array([8, 9])], margins, 2, allow_empty=True)
    assert got.tolist() == [0, 1]            # summed ranks: 0+9, 1+8, 8+1, 9+0 tie -> lower positions


def test_the_head_is_deterministic_for_a_seed_and_learns():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)
    a = ex.train_head(x, y, 4, seed=3, epochs=20, batch_size=32, lr=0.05, weight_decay=1e-5)
    b = ex.train_head(x, y, 4, seed=3, epochs=20, batch_size=32, lr=0.05, weight_decay=1e-5)
    c = ex.train_head(x, y, 4, seed=4, epochs=20, batch_size=32, lr=0.05, weight_decay=1e-5)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))
    assert np.mean(ex.head_scores(a, x).prediction == y) > 0.9
    assert not a.training                                           # scored in eval mode: no dropout


def test_the_dropout_keeps_its_share_and_scales_to_the_same_mean():
    d = ex._Dropout(0.3, seed=0)
    z = torch.ones(400, 1000)
    out = d(z)
    kept = float((out > 0).float().mean())
    assert abs(kept - 0.7) < 0.005 and abs(float(out.mean()) - 1.0) < 0.01
    assert torch.equal(ex._Dropout(0.3, seed=0)(z), out)            # a seed gives the same masks


def test_stored_features_equal_the_backbone_and_are_computed_once(tmp_path, smoke_backbone):
    from lossless.augment import Augmenter
    from lossless.engine import resolve_precision
    from lossless.features import frozen_features
    from lossless.finetune import load_backbone
    from lossless.pretrain import backbone_for, load_data, pretrain
    from lossless.probes import embed
    cfg = smoke(tmp_path)
    path = pretrain(cfg)["backbone"]
    feats = frozen_features(cfg)
    split = load_data(cfg, False)
    assert feats.shape[0] == len(split.data.labels) and feats.dtype == np.float32
    backbone = backbone_for(cfg, split.data)
    ckpt = load_backbone(path, cfg, backbone)
    ref = embed(backbone, split.data.images[:300], Augmenter([], ckpt["mean"], ckpt["std"]), torch.device("cpu"),
                resolve_precision(cfg["precision"], torch.device("cpu"))).numpy()
    assert np.allclose(feats[:300], ref, rtol=2e-2, atol=2e-2)        # bf16 kernels, another layout
    stored = list((tmp_path / "runs").glob("pretrain-*/features/*.npy"))
    assert len(stored) == 1
    before = stored[0].stat().st_mtime_ns
    again = frozen_features(cfg)
    assert stored[0].stat().st_mtime_ns == before and np.array_equal(np.asarray(again), np.asarray(feats))
    stored[0].write_bytes(b"not an array")
    with pytest.raises(LosslessError, match=r"stored features .* could not be read .* delete the file"):
        frozen_features(cfg)


def test_finetuning_with_answered_requests(tmp_path, smoke_backbone):
    from lossless.finetune import finetune
    from lossless.pretrain import load_data
    cfg = smoke(tmp_path)
    split = load_data(cfg, False)
    idx = split.unlabelled[:12]
    lab = split.data.labels[idx]
    base = finetune(cfg)
    grown = finetune(cfg, extra=(idx, lab))
    assert grown["run"] != base["run"] and grown["extra_labels"] == 12 and base["extra_labels"] == 0
    assert finetune(cfg, extra=(idx, lab))["run"] == grown["run"]   # stored: found, not trained again
    with pytest.raises(LosslessError, match="not in the unlabelled pool"):
        finetune(cfg, extra=(split.labelled[:2], np.zeros(2, dtype=np.int64)))
    with pytest.raises(LosslessError, match="given twice"):
        finetune(cfg, extra=(np.r_[idx[:1], idx[:1]], np.zeros(2, dtype=np.int64)))
    with pytest.raises(LosslessError, match="labels must lie in 0..9"):
        finetune(cfg, extra=(idx[:1], np.array([10])))


@pytest.mark.slow
def test_the_experiment_on_smoke_resumes_and_keeps_its_books(tmp_path, smoke_backbone):
    cfg = smoke(tmp_path)
    res = ex.experiment(cfg, seeds=2)
    from lossless.pretrain import load_data
    B, R = cfg["al_budget"], cfg["al_rounds"]
    for s in res["seeds"]:
        split = load_data(cfg.replace(seed=s["seed"]), False)
        for strategy, got in s["strategies"].items():
            acquired = np.array(got["acquired"])
            assert len(acquired) == B * R and len(np.unique(acquired)) == len(acquired)   # nothing asked twice
            assert np.isin(acquired, split.unlabelled).all()
            assert np.array_equal(np.array(got["acquired_labels"]), split.data.labels[acquired])  # the oracle
            assert [r["labels"] for r in got["rounds"]] == [len(split.labelled) + B * r for r in range(R + 1)]
            assert got["rounds"][0]["test_accuracy"] == s["start_accuracy"]          # one start for all
            for r in range(1, R + 1):
                side = np.load(tmp_path / "runs" / res["run"].split("/")[-1] / f"seed{s['seed']}" /
                               f"{strategy}-round{r}.npz")
                assert json.loads(str(side["header"]))["round"] == r
                assert np.array_equal(np.sort(side["index"]), np.sort(acquired[(r - 1) * B:r * B]))
    # the paired differences are the per-seed differences of the stored accuracies
    m = ex.comparisons(res)[("margin", f"round {R}")]
    naive = [100 * (s["strategies"]["margin"]["rounds"][R]["test_accuracy"]
                    - s["strategies"]["random"]["rounds"][R]["test_accuracy"]) for s in res["seeds"]]
    assert np.allclose(100 * m.differences, naive) and math.isclose(100 * m.mean, np.mean(naive))
    assert m.arms == ("margin", "random") and m.seeds == tuple(s["seed"] for s in res["seeds"])
    row = [r for r in ex.difference_rows(res) if r["strategy"] == "margin" and r["at"] == f"round {R}"][0]
    assert math.isclose(row["minus (points)"], np.mean(naive))
    # a stopped experiment resumes: a seed removed is computed again, identically
    run = tmp_path / "runs" / res["run"].split("/")[-1]
    first = json.loads((run / "seed-1.json").read_text())
    (run / "seed-1.json").unlink()
    import shutil
    shutil.rmtree(run / "seed1")
    again = ex.experiment(cfg, seeds=2)
    assert again["seeds"][1] == first
    with pytest.raises(ConfigError, match="strategies must include random"):
        ex.experiment(cfg, seeds=2, strategies=["margin"])
    with pytest.raises(ConfigError, match="seeds=1 is not allowed"):
        ex.experiment(cfg, seeds=1)


def test_the_papers_intersection_takes_each_methods_own_choice(tmp_path, smoke_backbone):
    """``methods-intersection``: the Barlow Twins head and the BYOL head (on BYOL's own frozen
    features) each choose by margin + k-means; the first round's requests are exactly the
    intersection of those two choices filled by summed margin rank, rebuilt here from the two
    heads. Fails if every model chooses on the main line's features, or the fill is skipped."""
    from lossless.features import frozen_features
    cfg = smoke(tmp_path, ensemble_models="barlow,byol", compare_epochs=1)
    res = ex.experiment(cfg, seeds=2, strategies=["random", "margin-kmeans", ex.ACROSS])
    B = cfg["al_budget"]
    other = ex.across_features(cfg)
    assert list(other) == ["byol"] and "pretrain-byol" in str(other["byol"][0])
    main = frozen_features(cfg)
    for s in res["seeds"]:
        got = s["strategies"][ex.ACROSS]
        first = got["rounds"][1]
        assert first["selection"]["models"] == ["main", "byol"]
        split, xs, train = ex.seed_state(cfg, s["seed"], main)
        _, xb, train_b = ex.seed_state(cfg, s["seed"], other["byol"][1])
        L0, y0 = split.labelled, split.data.labels[split.labelled]
        pool = np.setdiff1d(split.unlabelled, L0)
        picks, margins = [], []
        for f, x, head in ((main, xs, train(L0, y0, s["seed"])), (other["byol"][1], xb, train_b(L0, y0, s["seed"]))):
            m = ex.head_scores(head, x[pool]).margin
            picks.append(active.select("margin-kmeans", B, s["seed"] * 1000 + 1, margin=m,
                                       features=lambda p, f=f: f[pool[p]], candidates=cfg["al_candidates"],
                                       clusters=cfg["al_clusters"] or 10, quota=cfg["al_per_cluster"],
                                       order=cfg["al_order"]))
            margins.append(m)
        both = np.intersect1d(picks[0].positions, picks[1].positions)
        assert first["selection"]["in_every_selection"] == len(both)
        expected = pool[active.intersect([p.positions for p in picks], margins, B, allow_empty=True)]
        assert sorted(got["acquired"][:B]) == sorted(expected.tolist()) and len(expected) == B
        assert np.isin(pool[both], got["acquired"][:B]).all()            # the whole intersection is asked for
    assert ex.comparisons(res)[(ex.ACROSS, "area under the curve")].n == 2
    with pytest.raises(ConfigError, match="names no method besides"):
        ex.experiment(smoke(tmp_path, ensemble_models="barlow"), seeds=2, strategies=["random", ex.ACROSS])
