"""Active learning's selection rules (paper section 3.6) against slow, obvious versions."""
import numpy as np
import pytest

from lossless import active
from lossless.data.cache import ImageSet
from lossless.errors import ConfigError, LosslessError


def slow_per_cluster(cluster, key, budget, quota):
    first = []
    for c in sorted(set(cluster.tolist())):
        members = sorted(np.flatnonzero(cluster == c).tolist(), key=lambda i: (key[i], i))
        first += members[:quota]
    first.sort(key=lambda i: (key[i], i))
    if len(first) >= budget:
        return sorted(first[:budget])
    rest = sorted(set(range(len(key))) - set(first), key=lambda i: (key[i], i))
    return sorted(first + rest[:budget - len(first)])


def test_margin_order_against_a_brute_force_sort_with_ties():
    rng = np.random.default_rng(0)
    margin = rng.integers(0, 20, 500).astype(np.float32) / 20          # many exact ties
    brute = sorted(range(500), key=lambda i: (margin[i], i))
    assert active.margin_order(margin).tolist() == brute
    sel = active.select("margin", 37, seed=0, margin=margin)
    assert sel.positions.tolist() == sorted(brute[:37])


@pytest.mark.parametrize("quota,budget", [(5, 40), (3, 30), (8, 10), (4, 37)])
def test_per_cluster_quota_and_budget_against_the_slow_version(quota, budget):
    rng = np.random.default_rng(quota)
    cluster = rng.choice(10, 200, p=[.3, .2, .1, .1, .1, .1, .05, .03, .01, .01])   # some clusters tiny
    key = rng.integers(0, 7, 200).astype(float)                                       # ties again
    got = active.per_cluster(cluster, key, budget, quota)
    assert got.tolist() == slow_per_cluster(cluster, key, budget, quota)
    assert len(got) == budget and len(set(got)) == budget
    if budget <= sum(min(quota, (cluster == c).sum()) for c in range(10)):
        assert np.bincount(cluster[got], minlength=10).max() <= quota             # the quota holds
    with pytest.raises(ConfigError, match=r"al_per_cluster=2 x 10 clusters = 20 requests, fewer than the budget of 21"):
        active.per_cluster(cluster, key, 21, 2)


def test_margin_kmeans_picks_ambiguous_candidates_spread_over_clusters():
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 10, (6, 4))
    features = np.concatenate([c + rng.normal(0, 0.5, (100, 4)) for c in centres])
    margin = rng.random(600)
    sel = active.select("margin-kmeans", 30, seed=0, margin=margin, features=features, candidates=0.5,
                        clusters=6, quota=5)
    candidates = set(active.margin_order(margin)[:300].tolist())
    assert len(sel.positions) == 30 and set(sel.positions.tolist()) <= candidates
    labels, _ = active.kmeans(features[sorted(candidates)], 6, seed=0)
    per = np.bincount(labels[np.searchsorted(sorted(candidates), sel.positions)], minlength=6)
    assert per.tolist() == [5] * 6                                      # 5 from each of the 6 blobs
    by_centre = active.select("margin-kmeans", 30, seed=0, margin=margin, features=features, candidates=0.5,
                              clusters=6, quota=5, order="centroid")
    assert len(by_centre.positions) == 30 and not np.array_equal(by_centre.positions, sel.positions)


def test_random_and_kmeans_are_reproducible_by_seed():
    features = np.random.default_rng(2).normal(size=(300, 5))
    a = active.select("random", 20, seed=3, margin=np.zeros(300))
    assert np.array_equal(a.positions, active.select("random", 20, seed=3, margin=np.zeros(300)).positions)
    assert not np.array_equal(a.positions, active.select("random", 20, seed=4, margin=np.zeros(300)).positions)
    k1, c1 = active.kmeans(features, 7, seed=5)
    k2, c2 = active.kmeans(features, 7, seed=5)
    assert np.array_equal(k1, k2) and np.array_equal(c1, c2)
    rep = active.select("kmeans", 7, seed=5, features=features, clusters=7, quota=1)
    unit = active.normalise(features)                      # select clusters directions (unit rows)
    assert np.allclose(np.linalg.norm(unit, axis=1), 1, atol=1e-6)
    k1, c1 = active.kmeans(unit, 7, seed=5)
    dist = np.linalg.norm(unit - c1[k1], axis=1)
    assert rep.positions.tolist() == sorted(int(np.flatnonzero(k1 == c)[np.argmin(dist[k1 == c])]) for c in range(7))


def test_intersection_rule_against_brute_force():
    rng = np.random.default_rng(6)
    margins = [rng.random(100) for _ in range(3)]
    ranks = [np.argsort(np.argsort(m, kind="stable"), kind="stable") for m in margins]
    summed = sum(ranks)
    a, b, c = (np.arange(0, 60), np.arange(20, 80), np.arange(30, 90))   # common: 30..59 (30 images)
    for budget in (10, 30, 45):
        got = active.intersect([a, b, c], margins, budget)
        common = list(range(30, 60))
        if budget <= 30:
            want = sorted(sorted(common, key=lambda i: (summed[i], i))[:budget])
        else:
            union = sorted(set(range(0, 90)) - set(common), key=lambda i: (summed[i], i))
            want = sorted(common + union[:budget - 30])
        assert got.tolist() == want, budget
    with pytest.raises(LosslessError, match="no image in common"):
        active.intersect([np.arange(0, 10), np.arange(10, 20)], margins[:2], 5)


def pool_set(name="fashion-mnist"):
    parts = ("train", "test") if name != "nyu-dl21" else ("train", "val", "unlabeled")
    sizes = (50, 20) if name != "nyu-dl21" else (30, 10, 40)
    part = np.concatenate([np.full(n, k, dtype=np.int8) for k, n in enumerate(sizes)])
    labels = np.arange(len(part)) % 4
    if name == "nyu-dl21":
        labels[part == 2] = -1                                          # the pool has no labels on disk
    return ImageSet(name, np.zeros((len(part), 4, 4, 1), np.uint8), labels, part, parts, ("a", "b", "c", "d"))


def test_a_request_file_round_trips_through_the_oracle(tmp_path):
    data = pool_set()
    sel = active.Selection("margin", np.array([3, 7, 55]), np.array([0.1, 0.2, 0.3]))
    path = active.write_requests(tmp_path / "round1.txt", data, sel, {"seed": 0, "round": 1, "strategy": "margin"})
    assert path.read_text() == "train/3\ntrain/7\ntest/5\n"
    side = np.load(tmp_path / "round1.npz")
    assert side["index"].tolist() == [3, 7, 55] and '"round": 1' in str(side["header"])
    idx, labels = active.answer(path, data, labelled=np.array([0, 1]))
    assert idx.tolist() == [3, 7, 55] and labels.tolist() == [3, 3, 3]
    with pytest.raises(LosslessError, match=r"were requested or labelled before \(train/3"):
        active.answer(path, data, labelled=np.array([3]))


def test_bad_request_files_name_the_line(tmp_path):
    data = pool_set()
    (tmp_path / "dup.txt").write_text("train/1\ntrain/2\ntrain/1\n")
    with pytest.raises(LosslessError, match=r"dup.txt, line 3: 'train/1' is requested twice \(first on line 1\)"):
        active.read_requests(tmp_path / "dup.txt", data)
    (tmp_path / "ghost.txt").write_text("train/1\ntrain/999\n")
    with pytest.raises(LosslessError, match=r"ghost.txt, line 2: no image named 'train/999'"):
        active.read_requests(tmp_path / "ghost.txt", data)
    with pytest.raises(ConfigError, match=r"budget=71 is more than the 70 images in the pool"):
        active.select("random", 71, seed=0, margin=np.zeros(70))


def test_the_nyu_layout_uses_the_competitions_names(tmp_path):
    data = pool_set("nyu-dl21")
    sel = active.Selection("random", np.array([40, 41, 79]), np.zeros(3))
    path = active.write_requests(tmp_path / "r.txt", data, sel, {})
    assert path.read_text() == "0.png\n1.png\n39.png\n"
    with pytest.raises(LosslessError, match=r"the oracle has no label for 0.png, 1.png, 39.png"):
        active.answer(path, data, labelled=np.array([], dtype=np.int64))
    hidden = np.arange(80) % 4
    idx, labels = active.answer(path, data, labelled=np.array([], dtype=np.int64), hidden_labels=hidden)
    assert labels.tolist() == [0, 1, 3]


def test_select_and_answer_commands_on_a_nyu_layout_folder(tmp_path, capsys):
    """One command writes the competition's request file for a nyu-dl21 folder; the oracle answers
    it from a labels tensor; asking again for an answered image is refused."""
    import json

    import torch
    from conftest import make_nyu_tree
    from lossless.cli import main
    made = make_nyu_tree(tmp_path / "nyu", n_train=40, n_val=20, n_unlabeled=30, classes=4, size=16)
    common = ["--profile", "smoke", "--quiet", "dataset=nyu-dl21", f"data_root={tmp_path / 'nyu'}", "num_classes=4",
              f"runs_dir={tmp_path / 'runs'}", "ssl_batch_size=32", "ft_batch_size=16", "al_candidates=20",
              "al_clusters=4", "al_per_cluster=2"]
    assert main(["select", "--strategy", "margin-kmeans", "--budget", "8", *common]) == 0
    out = json.loads(capsys.readouterr().out)
    names = open(out["requests"]).read().split()
    assert len(names) == 8 == out["requested"] and all(n.endswith(".png") and (tmp_path / "nyu" / "unlabeled" / n).is_file()
                                                       for n in names)
    assert out["already_right"] is None                                # the pool has no labels on disk
    hidden = torch.arange(30) % 4
    torch.save(hidden, tmp_path / "pool_labels.pt")
    assert main(["answer", out["requests"], "--labels", str(tmp_path / "pool_labels.pt"), *common]) == 0
    answered = json.loads(capsys.readouterr().out)
    lines = open(answered["answers"]).read().splitlines()
    assert [ln.split()[0] for ln in lines] == names
    assert all(int(ln.split()[1]) == int(ln.split()[0][:-4]) % 4 for ln in lines)
    # round 2 leaves round 1's images out of the pool; answering round 1 again as new is refused
    assert main(["select", "--strategy", "margin", "--budget", "5", "--previous", out["requests"], *common]) == 0
    second = json.loads(capsys.readouterr().out)
    assert not set(open(second["requests"]).read().split()) & set(names) and second["pool"] == 22
    assert main(["answer", out["requests"], "--previous", out["requests"], "--labels",
                 str(tmp_path / "pool_labels.pt"), *common]) == 2
    assert "were requested or labelled before" in capsys.readouterr().err
    assert main(["select", "--budget", "23", "--previous", out["requests"], *common]) == 2
    assert "budget=23 is more than the 22 images in the pool" in capsys.readouterr().err


def test_select_on_fashion_like_data_reports_what_was_already_right(tmp_path, smoke_backbone, capsys):
    import json

    from lossless.cli import main
    common = ["--profile", "smoke", "--quiet", f"runs_dir={tmp_path / 'runs'}", "al_clusters=10", "al_per_cluster=3"]
    assert main(["select", "--strategy", "margin-kmeans", "--budget", "30", *common]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["requested"] == 30 and 0 <= out["already_right"] <= 30 and sum(out["requested_per_predicted_class"]) == 30
    side = np.load(out["indices"])
    assert len(side["index"]) == 30 and '"strategy": "margin-kmeans"' in str(side["header"])
    assert main(["select", "--strategy", "margin-kmeans", "--budget", "31", *common]) == 2
    assert "al_per_cluster=3 x 10 clusters = 30 requests, fewer than the budget of 31" in capsys.readouterr().err


def test_select_clusters_the_softmax_when_asked_and_defaults_to_al_budget(tmp_path, smoke_backbone, capsys):
    import json

    from lossless.cli import main
    common = ["--profile", "smoke", "--quiet", f"runs_dir={tmp_path / 'runs'}"]
    assert main(["select", "--strategy", "margin-kmeans", *common, "al_features=softmax", "al_budget=12"]) == 0
    soft = json.loads(capsys.readouterr().out)
    assert soft["requested"] == 12                                   # al_budget; ceil(12 / 10) = 2 per cluster
    assert main(["select", "--strategy", "margin-kmeans", "--out", str(tmp_path / "emb.txt"), *common,
                 "al_budget=12"]) == 0
    emb = json.loads(capsys.readouterr().out)
    a, b = np.load(soft["indices"])["index"], np.load(emb["indices"])["index"]
    assert len(b) == 12 and not np.array_equal(a, b)                 # another space, other clusters
    assert main(["select", *common, "al_features=logits"]) == 2
    assert "al_features='logits' is not allowed" in capsys.readouterr().err


def test_the_oracle_answers_only_the_asking_runs_pool(tmp_path, smoke_backbone, capsys):
    """A request is answered only for the seed that wrote it, and only for images of that run's
    unlabelled pool: another seed's run (whose pool holds this seed's validation images) is
    refused, and so is a hand-written request naming validation or test images."""
    import json

    from lossless import config as config_mod
    from lossless.cli import main
    from lossless.pretrain import load_data
    common = ["--profile", "smoke", "--quiet", f"runs_dir={tmp_path / 'runs'}", "al_clusters=10", "al_per_cluster=3"]
    assert main(["select", "--strategy", "margin-kmeans", "--budget", "10", *common]) == 0
    req = json.loads(capsys.readouterr().out)["requests"]
    assert main(["answer", req, *common, "seed=3"]) == 2
    assert "was written by the run with seed=0" in capsys.readouterr().err
    assert main(["answer", req, *common]) == 0
    assert json.loads(capsys.readouterr().out)["answered"] == 10
    split = load_data(config_mod.load_profile("smoke", {}), False)
    names = active.image_names(split.data, np.array([split.unlabelled[-1], split.val[0], split.test[0]]))
    (tmp_path / "hand.txt").write_text("\n".join(names) + "\n")
    assert main(["answer", str(tmp_path / "hand.txt"), *common]) == 2
    err = capsys.readouterr().err
    assert "2 image(s) are not in this run's unlabelled pool" in err and names[1] in err and names[2] in err
    assert not (tmp_path / "hand.txt.answers.txt").exists()
