"""The section 4 baselines (SimCLR, BYOL, SwAV) and the method registry: each loss against a slow
reference, the state each method keeps (BYOL's target, SwAV's prototypes and queue), DDP against
one process, and a killed run resumed bit-identical through the one engine."""
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lossless import config, methods, runs
from lossless.methods import BYOL, SwAV, byol_loss, nt_xent, sinkhorn, swapped_prediction
from lossless.methods.byol import ema_update, momentum
from lossless.models import build_backbone
from lossless.optim import build_optimizer
from lossless.pretrain import pretrain

HERE = Path(__file__).parent


def small_backbone():
    torch.manual_seed(0)
    return build_backbone("resnet18", in_channels=1, width=0.125, image_size=16)


# ------------------------------------------------------------------ SimCLR
def nt_xent_slow(z1, z2, t):
    z = torch.nn.functional.normalize(torch.cat([z1, z2]).double(), dim=1)
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[pos]) / t) / den)
    return total / n2


@pytest.mark.kernels
@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_nt_xent_equals_a_loop_over_all_pairs(t):
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert float(nt_xent(z1, z2, t)) == pytest.approx(nt_xent_slow(z1, z2, t), rel=1e-5)


@pytest.mark.kernels
def test_nt_xent_is_low_for_matching_views_and_log_2n_minus_1_for_a_collapse():
    z = torch.eye(8) * 10
    assert float(nt_xent(z, z, 0.1)) < 1e-3
    same = torch.ones(8, 4)
    assert float(nt_xent(same, same, 0.5)) == pytest.approx(math.log(15), rel=1e-6)


@pytest.mark.kernels
# ------------------------------------------------------------------ BYOL
def test_byol_loss_is_two_minus_two_cosine():
    g = torch.Generator().manual_seed(0)
    q, z = torch.randn(7, 4, generator=g), torch.randn(7, 4, generator=g)
    cos = [float(q[i] @ z[i] / (q[i].norm() * z[i].norm())) for i in range(7)]
    assert float(byol_loss(q, z)) == pytest.approx(np.mean([2 - 2 * c for c in cos]), rel=1e-6)


def test_momentum_schedule_start_middle_end():
    assert momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert momentum(50, 100, 0.99) == pytest.approx(0.995)
    assert momentum(100, 100, 0.99) == pytest.approx(1.0)
    assert all(momentum(s, 100) <= momentum(s + 1, 100) for s in range(100))


@pytest.mark.kernels
def test_ema_update_follows_its_formula():
    torch.manual_seed(0)
    online, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in target.parameters()]
    ema_update(target, online, 0.9)
    for b, t, o in zip(before, target.parameters(), online.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * o)


def test_no_gradient_reaches_the_byol_target_and_the_step_moves_it_by_ema():
    task = BYOL(small_backbone(), projector_sizes=(16, 8), predictor_sizes=(16, 8), base_momentum=0.9)
    opt = build_optimizer("sgd", task, 0.1, 0.0)
    assert not any(p.requires_grad for n, p in task.named_parameters() if n.startswith("target_"))
    assert all(any(p is q for g in opt.param_groups for q in g["params"]) is not n.startswith("target_")
               for n, p in task.named_parameters())
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(8, 1, 16, 16, generator=g), torch.randn(8, 1, 16, 16, generator=g)
    target_before = {n: p.detach().clone() for n, p in task.named_parameters() if n.startswith("target_")}
    task((x1, x2))["loss"].backward()
    assert all(p.grad is None for n, p in task.named_parameters() if n.startswith("target_"))
    opt.step()
    online = dict(task.named_parameters())
    for n, b in target_before.items():                                # unchanged by the optimiser
        assert torch.equal(online[n], b)
    task.after_step(0, 10)
    for n, b in target_before.items():
        o = online[n.replace("target_", "")]
        assert torch.allclose(online[n], 0.9 * b + 0.1 * o.detach(), atol=1e-7), n
    assert float(task.tau) == pytest.approx(momentum(1, 10, 0.9))


# ------------------------------------------------------------------ SwAV
def sinkhorn_slow(scores, eps, iters):
    q = np.exp(np.asarray(scores, dtype=np.float64) / eps).T
    k, b = q.shape
    q /= q.sum()
    for _ in range(iters):
        for r in range(k):
            q[r] /= q[r].sum() * k
        for c in range(b):
            q[:, c] /= q[:, c].sum() * b
    return (q * b).T


@pytest.mark.kernels
@pytest.mark.parametrize("iters", [1, 3])
def test_sinkhorn_equals_a_slow_numpy_version(iters):
    g = torch.Generator().manual_seed(0)
    s = torch.nn.functional.normalize(torch.randn(20, 6, generator=g), dim=1)
    got = sinkhorn(s, 0.05, iters).double().numpy()
    assert np.allclose(got, sinkhorn_slow(s.numpy(), 0.05, iters), rtol=1e-5, atol=1e-9)


@pytest.mark.kernels
def test_sinkhorn_codes_are_distributions_and_use_prototypes_equally():
    g = torch.Generator().manual_seed(1)
    s = torch.nn.functional.normalize(torch.randn(60, 6, generator=g), dim=1)
    q = sinkhorn(s, 0.3, 50).double()
    assert torch.allclose(q.sum(1), torch.ones(60, dtype=torch.float64), atol=1e-6)   # each image: sums to 1
    assert torch.allclose(q.sum(0), torch.full((6,), 10.0, dtype=torch.float64), rtol=1e-3)  # B / K each


@pytest.mark.kernels
def test_swapped_prediction_equals_its_definition():
    g = torch.Generator().manual_seed(2)
    s = [torch.randn(5, 4, generator=g) for _ in range(3)]
    q = [torch.softmax(torch.randn(5, 4, generator=g), 1) for _ in range(2)]
    ce = lambda qq, ss: float(-(qq * torch.log_softmax(ss / 0.1, 1)).sum(1).mean())  # noqa: E731
    want = ((ce(q[0], s[1]) + ce(q[0], s[2])) / 2 + (ce(q[1], s[0]) + ce(q[1], s[2])) / 2) / 2
    assert float(swapped_prediction(s, q, 0.1)) == pytest.approx(want, rel=1e-5)


def swav_steps(task, n, lr=0.5):
    opt = build_optimizer("lars", task, lr, 1e-6)
    g = torch.Generator().manual_seed(5)
    for step in range(n):
        x1, x2 = torch.randn(16, 1, 16, 16, generator=g), torch.randn(16, 1, 16, 16, generator=g)
        opt.zero_grad()
        task((x1, x2))["loss"].backward()
        opt.step()
        task.after_step(step, 100)


def test_swav_prototypes_are_unit_vectors_after_a_step_and_frozen_during_the_first_epoch():
    task = SwAV(small_backbone(), projector_sizes=(16, 8), prototypes=10, freeze_steps=3)
    start = task.prototypes.weight.detach().clone()
    assert torch.allclose(start.norm(dim=1), torch.ones(10), atol=1e-6)
    swav_steps(task, 3)                                   # the frozen steps
    assert torch.allclose(task.prototypes.weight, start, atol=1e-6)
    swav_steps(task, 2)
    w = task.prototypes.weight.detach()
    assert torch.allclose(w.norm(dim=1), torch.ones(10), atol=1e-6)
    assert not torch.allclose(w, start, atol=1e-4)         # learning once the freeze is over


def test_swav_queue_keeps_the_newest_embeddings_first():
    task = SwAV(small_backbone(), projector_sizes=(16, 8), prototypes=10, queue_length=40)
    a, b = torch.randn(16, 8), torch.randn(16, 8)
    task._enqueue([a, a + 1])
    task._enqueue([b, b + 1])
    assert int(task.queue_filled) == 32
    assert torch.equal(task.queue[0, :16], b) and torch.equal(task.queue[0, 16:32], a)
    assert torch.equal(task.queue[1, :16], b + 1)
    task._enqueue([a, a])
    assert int(task.queue_filled) == 40 and torch.equal(task.queue[0, 32:40], a[:8])


# ------------------------------------------------------------------ registry and the engine
def smoke(tmp_path, name, **kw):
    kw.setdefault("progress", False)
    return config.load_profile("smoke", dict(runs_dir=str(tmp_path / name), **kw))


SMALL = dict(simclr_projector="64-32", byol_projector="64-32", byol_predictor="64-32", swav_projector="64-32",
             swav_prototypes=20, ssl_max_steps_per_epoch=4)


def test_the_registry_lists_every_method_and_names_the_choices():
    assert list(methods.METHODS) == ["barlow", "simclr", "byol", "swav"]
    with pytest.raises(config.ConfigError, match="barlow, simclr, byol, swav"):
        methods.get("moco")
    with pytest.raises(config.ConfigError, match="barlow, simclr, byol, swav"):
        config.load_profile("smoke", {"ssl_method": "moco"})


@pytest.mark.parametrize("method", ["simclr", "byol", "swav"])
def test_each_method_pretrains_through_the_engine(tmp_path, method):
    r = pretrain(smoke(tmp_path, "a", ssl_method=method, **SMALL))
    assert Path(r["run"]).name.startswith(f"pretrain-{method}-")
    assert np.isfinite(r["final_loss"]) and r["knn_val"] > 0 and Path(r["backbone"]).is_file()
    history = runs.read_jsonl(Path(r["run"]) / "metrics.jsonl")
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)


def test_a_method_key_changes_only_that_method_s_run():
    from lossless.pretrain import pretrain_dir
    base = config.load_profile("smoke", {"runs_dir": "/tmp/x"})
    assert pretrain_dir(base) == pretrain_dir(base.replace(simclr_temperature=0.2))   # barlow ignores it
    s = base.replace(ssl_method="simclr")
    assert pretrain_dir(s) != pretrain_dir(s.replace(simclr_temperature=0.2))


class Crash(Exception):
    pass


@pytest.mark.parametrize("method,extra", [("byol", {}), ("swav", {"swav_queue": 64, "swav_freeze_epochs": 1})])
def test_a_crashed_run_resumes_bit_identical(tmp_path, monkeypatch, method, extra):
    """BYOL's target and momentum, SwAV's queue, prototypes and step count are in the checkpoint."""
    kw = dict(SMALL, ssl_method=method, checkpoint_every_steps=1, **extra)
    straight = pretrain(smoke(tmp_path, "a", **kw))
    cls = {"byol": BYOL, "swav": SwAV}[method]
    original = cls.after_step

    def crash(self, step, total):
        original(self, step, total)
        if step == 5:
            raise Crash
    monkeypatch.setattr(cls, "after_step", crash)
    cfg = smoke(tmp_path, "b", **kw)
    with pytest.raises(Crash):
        pretrain(cfg)
    monkeypatch.undo()
    resumed = pretrain(cfg)
    assert resumed["resumed_from"] is not None
    a = runs.load_checkpoint(Path(straight["checkpoint"]))["model"]
    b = runs.load_checkpoint(Path(resumed["checkpoint"]))["model"]
    assert a.keys() == b.keys()
    assert any(k.startswith("target_") or k in ("queue", "steps_done") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------ DDP
def torchrun(nproc, *args, timeout=300):
    import os
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=HERE.parent)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["simclr", "swav"])
def test_ddp_two_processes_equal_one_process(tmp_path, method):
    """SimCLR's negatives come from both processes (differentiable all-gather); SwAV's Sinkhorn
    sums run over the global batch: 2 gloo processes give one process's loss and gradients."""
    proc = torchrun(2, str(HERE / "ddp_worker.py"), str(tmp_path / "ddp.pt"), method)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = subprocess.run([sys.executable, str(HERE / "ddp_worker.py"), str(tmp_path / "one.pt"), method],
                            capture_output=True, text=True, cwd=HERE.parent)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp, one = torch.load(tmp_path / "ddp.pt"), torch.load(tmp_path / "one.pt")
    assert torch.allclose(ddp["loss"], one["loss"], rtol=1e-5)
    assert ddp["grads"].keys() == one["grads"].keys()
    # tolerance from the largest gradient: a bias before batch norm has an exact zero gradient,
    # which float sums in another order leave as noise of 1e-8
    scale = max(float(g.abs().max()) for g in one["grads"].values())
    for name, g in one["grads"].items():
        assert torch.allclose(ddp["grads"][name], g, atol=1e-5 * scale, rtol=1e-4), name


def test_table1_compares_methods_at_one_budget_on_the_same_labelled_sets(tmp_path):
    from lossless.experiments.table1 import PAPER_COLUMN, best_rows, compare, labels, table1
    cfg = smoke(tmp_path, "t", **SMALL, compare_methods="barlow,simclr:resnet34,simclr", compare_epochs=1)
    result = compare(cfg, seeds=2, finetune_seeds=1)
    assert result["epochs"] == 1 and list(result["runs"]) == ["barlow", "simclr:resnet34", "simclr"]
    for key, r in result["runs"].items():
        stored = runs.read_json(Path(r["pretraining"]["run"]) / "config.json")
        assert stored["ssl_method"] == key.split(":")[0] and stored["ssl_epochs"] == 1
        assert stored["backbone"] == r["backbone"] == ("resnet34" if key.endswith("34") else "resnet18")
        assert [x["seed"] for x in r["seeds"]] == [0, 1]
        assert ["finetune" in x for x in r["seeds"]] == [True, False]   # the first finetune_seeds only
        assert all(0 <= x[k] <= 1 for x in r["seeds"] for k in ("knn_probe", "linear_probe"))
    assert labels(result) == {"barlow": "Barlow Twins", "simclr:resnet34": "SimCLR (ResNet-34)",
                              "simclr": "SimCLR (ResNet-18)"}
    rows = table1(result, extra=[{"method": "ensemble (average)"}])
    assert [r["method"] for r in rows] == ["Barlow Twins", "SimCLR", "SimCLR", "ensemble (average)"]
    assert rows[1]["network"] == "ResNet-34, width 0.25" and rows[2]["network"] == "ResNet-18, width 0.25"
    assert rows[1][PAPER_COLUMN] == "17.45% (ResNet-18)" and rows[2][PAPER_COLUMN] == "17.45%"
    assert rows[0][PAPER_COLUMN] == "43.46% (ResNet-34)"
    assert "±" in rows[0]["linear probe"] and rows[0]["seeds"] == 2 and rows[0]["fine-tuned"].startswith(
        f"{100 * result['runs']['barlow']['seeds'][0]['finetune']:.2f}")
    best = best_rows(result, "linear_probe")
    assert [b["comparison"] for b in best] == ["Barlow Twins minus SimCLR (ResNet-34)",
                                               "Barlow Twins minus SimCLR (ResNet-18)"]
    assert best[0]["verdict"] in ("a gain", "a loss", "any effect is below 1 point", "undecided at 2 seeds",
                                  "any gain is below 1 point, a loss not ruled out")           # the words of tables.verdict, 2 seeds
    assert best_rows(result, "finetune") == []                  # one fine-tuned seed: no interval
    again = compare(cfg, seeds=2, finetune_seeds=1)             # loads, same numbers
    assert again["runs"] == result["runs"]
    with pytest.raises(config.ConfigError, match=r"compare_methods='barlow,mocov3' is not allowed: methods"):
        smoke(tmp_path, "t", compare_methods="barlow,mocov3")
    with pytest.raises(config.ConfigError, match=r"finetune_seeds=-1 is not allowed"):
        compare(cfg, seeds=2, finetune_seeds=-1)


def test_experiment_table1_command(tmp_path, capsys):
    """`lossless experiment table1` prints Table 1 and the paired claims as JSON; a method it
    does not know stops it with exit 2 and one line naming the parameter and the choices."""
    import json
    from lossless.cli import main
    args = ["experiment", "table1", "--profile", "smoke", "--quiet", "--seeds", "2",
            f"runs_dir={tmp_path / 'runs'}", "compare_epochs=1"]
    assert main(args + ["compare_methods=barlow,swav"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["epochs"] == 1 and [r["method"] for r in out["table1"]] == ["Barlow Twins", "SwAV"]
    assert [(r["comparison"], r["measure"]) for r in out["barlow_minus_others"]] == [
        ("Barlow Twins minus SwAV", m) for m in ("fine-tuned", "linear probe", "k-NN probe")]
    assert main(args + ["compare_methods=barlow,moco"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "compare_methods='barlow,moco' is not allowed: methods (barlow | simclr | byol | swav)" in err


def test_bench_compares_every_method_step_against_barlow_twins(tmp_path):
    from lossless.bench import run_methods_bench
    r = run_methods_bench("cpu", str(tmp_path / "m.json"), quick=True, profile="smoke")
    assert [x["method"] for x in r["records"]] == ["barlow", "simclr", "byol", "swav"]
    barlow = r["records"][0]["img_per_s"]
    for x in r["records"]:  # each method's speed over Barlow Twins', from the record's own figures
        assert x["vs_barlow"] == pytest.approx(x["img_per_s"] / barlow)
    assert len({x["img_per_s"] for x in r["records"]}) == 4  # distinct timings: a ratio of one to itself would show
    assert all(x["img_per_s"] > 0 and x["gflop_per_img"] > 0 for x in r["records"])
    assert runs.read_json(tmp_path / "m.json")["benchmark"] == "methods"


def test_the_backbone_study_pilots_every_recipe_then_pairs_the_finalist(tmp_path, monkeypatch):
    """Every recipe runs on the pilot seed, the best other recipe by validation and the reference
    on every seed; summaries are the means of a recipe's runs, differences from the reference
    are paired seed by seed; the choice is by validation; a second call pretrains nothing."""
    from lossless.experiments import screen as sc
    cfg = smoke(tmp_path, "s")
    recipes = {"base": ("the profile", {}), "lr": ("another rate", {"ssl_lr": 0.05}),
               "crop": ("milder crops", {"crop_scale_min": 0.6})}
    r = sc.screen(cfg, recipes, seeds=2, epochs=1, pilot_seeds=1, finalists=1)
    pilot = {n: r["runs"][n][0]["linear_val"] for n in ("lr", "crop")}
    winner, loser = sorted(pilot, key=lambda n: -pilot[n])
    assert r["finalists"] == [winner]
    assert [x["seed"] for x in r["runs"]["base"]] == [x["seed"] for x in r["runs"][winner]] == [0, 1]
    assert [x["seed"] for x in r["runs"][loser]] == [0]
    for name, rs in r["runs"].items():
        for m in ("linear_val", "knn_test"):
            assert r["summary"][name][m]["mean"] == pytest.approx(np.mean([x[m] for x in rs]))
            d = sc.comparison(r, name, m)
            assert d.mean == pytest.approx(np.mean([a[m] - b[m] for a, b in zip(rs, r["runs"]["base"])]))
            assert d.n == len(rs) and d.seeds == tuple(x["seed"] for x in rs)
            assert r["summary"][name]["minus_reference"][m]["mean"] == pytest.approx(d.mean)  # the JSON's copy
    assert r["runs"]["base"][0]["run"] != r["runs"][winner][0]["run"] != r["runs"][winner][1]["run"]
    assert r["best_by_validation"] == max(("base", winner), key=lambda n: r["summary"][n]["linear_val"]["mean"])
    shown = {row["recipe"]: row for row in sc.rows(r)}
    assert list(shown) == ["base", "lr", "crop"] and shown[loser]["minus the profile: val linear (points)"].endswith("(1 seed)")
    import lossless.experiments.screen as mod
    monkeypatch.setattr(mod, "probe_backbone", lambda *a: (_ for _ in ()).throw(AssertionError("probed again")))
    assert sc.screen(cfg, recipes, seeds=2, epochs=1, pilot_seeds=1, finalists=1)["summary"] == r["summary"]
    with pytest.raises(config.ConfigError, match="unknown"):
        sc.screen(cfg, {"x": ("", {"no_such_key": 1})}, seeds=2, epochs=1)
    with pytest.raises(config.ConfigError, match="pilot_seeds"):
        sc.screen(cfg, recipes, seeds=2, epochs=1, pilot_seeds=3)
    monkeypatch.undo()
    grown = sc.screen(cfg, recipes, seeds=2, epochs=1, pilot_seeds=1, finalists=2)  # the loser runs seed 1
    assert [x["seed"] for x in grown["runs"][loser]] == [0, 1]
    again = sc.screen(cfg, recipes, seeds=2, epochs=1, pilot_seeds=1, finalists=1)
    assert [x["seed"] for x in again["runs"][loser]] == [0, 1]  # a seed already run is kept, not dropped
    assert again["summary"][loser]["minus_reference"]["linear_val"]["n"] == 2


def test_a_recipe_is_adopted_for_a_gain_on_one_validation_probe_and_a_loss_on_neither():
    """The study's rule on paired intervals: a gain on the linear or the k-NN validation probe,
    a loss on neither, every seed run; the recipe a profile has since taken is named. Fails if
    one probe alone judges (``knn-loss`` would pass) or a pilot-only recipe counts."""
    from lossless.experiments import screen as sc

    base = [0.70, 0.72, 0.74]        # the reference's probes on seeds 0-2; recipes add these per seed
    diffs = {"profile": ([0, 0, 0], [0, 0, 0]),
             "both": ([0.02, 0.025, 0.015], [0.03, 0.035, 0.025]),                 # gains on both
             "knn-only": ([-0.01, 0.01, -0.015], [0.03, 0.04, 0.02]),              # linear undecided
             "knn-loss": ([0.03, 0.035, 0.025], [-0.02, -0.025, -0.015]),          # a loss on k-NN
             "pilot": ([0.05], [0.05]),                                            # one seed only
             "nothing": ([0.01, -0.01, 0.03], [0.0, 0.02, -0.02])}
    result = {"reference": "profile", "seeds": 3, "base": {"crop_scale_min": 0.2},
              "recipes": {n: {"what": n, "overrides": {}} for n in diffs},
              "runs": {n: [{"seed": s, "linear_val": base[s] + dl, "knn_val": base[s] + dk}
                           for s, (dl, dk) in enumerate(zip(lin, knn))] for n, (lin, knn) in diffs.items()},
              "summary": {n: {"seeds": len(lin)} for n, (lin, knn) in diffs.items()}}
    assert sc.adoptable(result) == ["both", "knn-only"]
    result["recipes"]["knn-only"]["overrides"] = {"crop_scale_min": 0.5}
    assert sc.taken(result, config.load_profile("smoke", crop_scale_min=0.5)) == "knn-only"
    assert sc.taken(result, config.load_profile("smoke", crop_scale_min=0.2)) is None


def test_the_study_read_across_rounds_names_the_levers_by_their_verdicts():
    """Two hand-made rounds, each against its own reference: a lever "moved" the features only
    where a recipe's paired interval on a validation probe is a gain (not a positive mean at one
    seed); the best reached is by test linear probe among recipes run on every seed; --recipes
    keeps the profile's recipe first and refuses an unknown name. Fails if a one-seed recipe's
    positive mean counts as a gain, or if the rounds' references are mixed."""
    from lossless.experiments import screen as sc

    def round_(diffs, seeds=3, test=None):
        base = [0.70, 0.72, 0.74]
        test = test or {}
        return {"reference": "profile", "seeds": seeds, "time": "t",
                "recipes": {n: {"what": n, "overrides": {}} for n in diffs},
                "runs": {n: [{"seed": s, "linear_val": base[s] + d, "knn_val": base[s] + d}
                             for s, d in enumerate(ds)] for n, ds in diffs.items()},
                "summary": {n: {"seeds": len(ds), "linear_test": {"mean": test.get(n, 0.7)},
                                "knn_test": {"mean": test.get(n, 0.7) - 0.01}}
                            for n, ds in diffs.items()}}
    one = round_({"profile": [0, 0, 0], "lars-eta-0.01": [0.02, 0.025, 0.015],
                  "epochs-27": [0.01, -0.01, 0.005], "no-blur": [0.05]},
                 test={"lars-eta-0.01": 0.79, "no-blur": 0.99})
    two = round_({"profile": [0, 0, 0], "lars-eta-0.02": [-0.02, -0.03, -0.025]}, test={"profile": 0.80})
    rows = {r["recipe"]: r for r in sc.lever_rows([one, two])}
    assert rows["lars-eta-0.01"]["_gains"] == ["linear_val", "knn_val"] and rows["lars-eta-0.01"]["round"] == 1
    assert rows["no-blur"]["_gains"] == [] and rows["no-blur"]["seeds"] == 1       # one seed: no verdict
    assert rows["lars-eta-0.02"]["_gains"] == [] and rows["lars-eta-0.02"]["round"] == 2
    assert "a loss" in rows["lars-eta-0.02"]["validation k-NN"]                      # against round 2's profile
    assert rows["epochs-27"]["_gains"] == [] and rows["epochs-27"]["lever"] == "length"
    top = sc.best_reached([one, two])                      # no-blur's 0.99 is one seed: not counted
    assert (top["recipe"], top["record"]) == ("profile", two) and top["linear_test"] == 0.80
    assert list(sc.chosen_recipes(["lars-eta-0.02", "profile"])) == ["profile", "lars-eta-0.02"]
    with pytest.raises(config.ConfigError, match="unknown recipe.*nope"):
        sc.chosen_recipes(["nope"])


def test_table1_marks_the_papers_rows_no_measured_row_stands_for():
    """The paper reports BYOL on ResNet-18 and ResNet-34: measured on one network only, the other
    gets a "not run" row with the paper's figure; Barlow Twins (one paper row, on ResNet-34)
    measured on the profile's network stands for it and gets none; twice adds nothing; with
    both BYOL networks measured, nothing is added. Fails if a row is matched by method alone."""
    from lossless.experiments import table1 as t1

    def row(net, method):
        return {"network": net, "method": method, "fine-tuned": "70%"}
    rows = [row("ResNet-18, width 0.25", m) for m in ("Barlow Twins", "SimCLR", "BYOL", "SwAV")]
    out = t1.with_unrun(rows)
    added = out[len(rows):]
    assert [(r["network"], r["method"], r[t1.PAPER_COLUMN]) for r in added] == [("ResNet-34", "BYOL", "19%")]
    assert added[0]["fine-tuned"].startswith("not run") and "byol:resnet34" in added[0]["fine-tuned"]
    assert t1.with_unrun(out) == out
    both = rows + [row("ResNet-34, width 0.25", "BYOL")]
    assert t1.with_unrun(both) == both


def test_architecture_comparisons_pair_seeds_against_the_reference():
    """Hand-made record: differences against the first network are paired by seed (a network
    missing a seed is paired on the shared ones), the rounds' total change is last minus start."""
    from lossless.experiments import architectures as ar

    def seed(s, ft, pl, vals):
        return {"seed": s, "finetune": ft, "pseudo": pl, "rounds": [{"val": v} for v in vals]}
    rec = {"networks": {
        "resnet18": {"network": "R18", "seeds": [seed(0, .80, .81, [.70, .71, .72]),
                                                 seed(1, .82, .82, [.72, .72, .73]),
                                                 seed(2, .78, .80, [.69, .70, .70])]},
        "resnet10": {"network": "R10", "seeds": [seed(0, .75, .74, [.68, .66, .65]),
                                                 seed(2, .74, .72, [.66, .65, .64])]}}}
    c = ar.comparisons(rec)
    assert "finetune" not in c["resnet18"]                   # the reference has no difference from itself
    d = c["resnet10"]["finetune"]
    assert d.n == 2 and d.seeds == (0, 2) and d.mean == pytest.approx(((.75 - .80) + (.74 - .78)) / 2)
    assert c["resnet10"]["pseudo"].mean == pytest.approx(((.74 - .81) + (.72 - .80)) / 2)
    t = c["resnet18"]["rounds_total"]
    assert t.n == 3 and t.mean == pytest.approx(((.72 - .70) + (.73 - .72) + (.70 - .69)) / 3)
    assert c["resnet10"]["rounds_total"].mean == pytest.approx(((.65 - .68) + (.64 - .66)) / 2)
    assert ar.comparisons(rec, "resnet10")["resnet18"]["finetune"].mean == pytest.approx(-d.mean)
    step = ar.round_change(rec["networks"]["resnet10"], 2)      # round 2 minus round 1, by seed
    assert list(step.differences) == pytest.approx([.65 - .66, .64 - .65])
    rows = ar.comparison_rows(rec)
    assert [r["network"] for r in rows] == ["R18", "R10"] and rows[1]["fine-tuned minus the first network (points)"].startswith("-4.50")
    with pytest.raises(KeyError, match="vgg16"):
        ar.comparisons(rec, "vgg16")


def test_the_architecture_experiment_counts_what_each_round_forgot(tmp_path):
    """Per network: its parameters and FLOPs; per round: forgetting counts whose net change is
    exactly the change of the round's validation accuracy (the stored predictions are the ones
    the rounds were scored with), and the summary's paired change is their mean."""
    from lossless.experiments import architectures as ar
    from lossless.experiments import table1 as t1
    from lossless.models import build_backbone
    cfg = smoke(tmp_path, "arch", pl_rounds="5,5")
    r = ar.architectures(cfg, "resnet18,resnet10", seeds=2)
    assert list(r["networks"]) == ["resnet18", "resnet10"]
    a, b = r["networks"]["resnet18"], r["networks"]["resnet10"]
    assert a["parameters"] == sum(p.numel() for p in build_backbone("resnet18", 3, 0.25, image_size=32).parameters())
    assert 0 < b["flops"] < a["flops"] and b["parameters"] < a["parameters"]
    for net in (a, b):
        for row in net["seeds"]:
            assert len(row["rounds"]) == 3 and len(row["forgetting"]) == 2
            for k, f in enumerate(row["forgetting"], start=1):
                change = row["rounds"][k]["val"] - row["rounds"][k - 1]["val"]
                assert f["net"] / f["images"] == pytest.approx(change, abs=1e-12)
        s = net["summary"]["rounds"][0]
        assert s["val_change"]["mean"] == pytest.approx(
            np.mean([x["rounds"][1]["val"] - x["rounds"][0]["val"] for x in net["seeds"]]))
        assert s["forgotten"]["mean"] == pytest.approx(np.mean([x["forgetting"][0]["forgotten"] for x in net["seeds"]]))
        # the record keeps each network's own pretraining curve, for the length rule
        assert [h["epoch"] for h in net["history"]] == list(range(1, cfg["compare_epochs"] + 1))
        assert t1.course(net["history"])["epochs"] == cfg["compare_epochs"]
    assert a["history"] != b["history"]
    with pytest.raises(config.ConfigError, match="networks"):
        ar.architectures(cfg, "resnet50", seeds=1)


def test_the_length_rule_reads_whether_a_curve_has_flattened():
    """A run has flattened when the mean validation k-NN of its last quarter of epochs is under
    half a point above the quarter's before. Fails if the rule compares the last epoch with the
    best (a curve still rising has its best at the end), or reads the first epochs instead."""
    from lossless.experiments import table1 as t1

    def run(knn):
        return [{"epoch": e + 1, "knn_val": k, "seconds": 30.0} for e, k in enumerate(knn)]
    rising = run([0.60, 0.65, 0.68, 0.70, 0.72, 0.74, 0.75, 0.76])      # epochs 7-8 +2.5 over 5-6
    flat = run([0.60, 0.70, 0.74, 0.76, 0.770, 0.772, 0.771, 0.773])    # epochs 7-8 +0.1 over 5-6
    peaked = run([0.60, 0.70, 0.74, 0.78, 0.76, 0.75, 0.75, 0.751])     # fell, then flat
    c = t1.course(rising)
    assert not c["flat"] and c["quarter"] == 2 and c["last_quarter_rise"] == pytest.approx(0.025)
    assert c["best"] == c["last"] == 0.76 and c["best_epoch"] == 8 and c["minutes"] == pytest.approx(4.0)
    assert t1.course(flat)["flat"] and t1.course(flat)["last_quarter_rise"] == pytest.approx(0.001)
    p = t1.course(peaked)
    assert p["flat"] and p["best_epoch"] == 4 and p["last"] == 0.751
    # peaked mid-run, then its last quarter recovered part of the fall: not "still rising"
    dipped = run([0.60, 0.70, 0.74, 0.80, 0.72, 0.72, 0.75, 0.76])  # epochs 7-8 +3.5 over 5-6
    d = t1.course(dipped)
    assert d["last_quarter_rise"] == pytest.approx(0.035) and d["best_epoch"] == 4 and d["flat"]
    rows = t1.course_rows({"a": rising, "b": flat}, {"a": "A"})
    assert [r["the curve"] for r in rows] == ["still rising", "flattened"] and rows[1]["run"] == "b"
    assert [r["the curve"] for r in t1.course_rows({"b": flat, "c": peaked}, {})] == ["flattened"] * 2
    with pytest.raises(ValueError, match="no validation k-NN"):
        t1.course([{"epoch": 1, "knn_val": None}])


def test_screen_cli_refuses_an_unknown_recipe_in_one_line_before_training(tmp_path, capsys):
    from lossless.cli import main
    assert main(["experiment", "screen", "--profile", "smoke", "--quiet", "--recipes", "lars-eta-0.02,nope",
                 f"runs_dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown recipe(s) ['nope']" in err and "lars-eta-0.02" in err
    assert not (tmp_path / "runs").exists()                    # nothing trained, nothing written


def test_backbone_targets_time_this_machines_run_not_the_records():
    """The appendix's targets: the probes from the evidence (the differences from the pixels
    paired by seed), the course from the k-NN curve, and the minutes the caller measured. A
    record's own pretraining minutes were another machine's (8.9 on an AVX-512 EPYC against 28.3
    for the same run in fp32 on an AVX2 one): taken from it, the page said the budget was met."""
    from lossless.experiments import screen
    seeds = [{"seed": s, "linear_probe": 0.80 + 0.01 * s, "pixel_linear": 0.76,
              "knn_probe": 0.79, "pixel_knn": 0.76 + 0.01 * s} for s in range(3)]
    result = {"summary": {"linear_probe": {"mean": 0.81}, "knn_probe": {"mean": 0.79}},
              "seeds": seeds, "pretraining": {"train_seconds": 8.9 * 60}}
    rows = {r["measure"]: r for r in screen.targets(result, [0.70, 0.79, 0.786], minutes=28.3)}
    assert (rows["pretraining minutes"]["measured"], rows["pretraining minutes"]["met"]) == ("28.3", "no")
    assert screen.targets(result, [0.70, 0.79, 0.786], minutes=8.9)[-1]["met"] == "yes"
    assert rows["validation k-NN: best epoch minus the last"]["measured"] == "+0.40 points"
    assert rows["linear probe minus pixels' logistic regression"]["measured"].startswith("+5.00 points [")
    assert rows["k-NN probe minus pixels' k-NN"]["measured"].startswith("+2.00 points [")
    assert [r["met"] for r in rows.values()] == ["no", "no", "yes", "no", "yes", "no"]
