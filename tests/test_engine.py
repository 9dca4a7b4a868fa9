"""The engine: exact resume, the NaN guard, atomic checkpoints, sharding, and DDP = one process."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lossless import config, distributed, runs
from lossless.engine import Batches, TrainingDiverged
from lossless.methods.barlow import BarlowTwins
from lossless.pretrain import pretrain

HERE = Path(__file__).parent


def smoke(tmp_path, name, **kw):
    kw.setdefault("progress", False)
    return config.load_profile("smoke", dict(runs_dir=str(tmp_path / name), **kw))


def weights(result) -> dict:
    return runs.load_checkpoint(Path(result["checkpoint"]))["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class Crash(Exception):
    pass


def crash_at(monkeypatch, global_step):
    def after_step(self, step, total):
        if step == global_step:
            raise Crash(f"killed after step {step}")
    monkeypatch.setattr(BarlowTwins, "after_step", after_step, raising=False)


# The crash comes in step 5's after_step, before step 5 is checkpointed: with a checkpoint every
# epoch the run resumes at (epoch 1, step 0); with one every step, at (epoch 1, step 1).
@pytest.mark.parametrize("every,crash_step,resumed", [(0, 5, (1, 0)), (1, 5, (1, 1))])
def test_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch, every, crash_step, resumed):
    """2 epochs straight == 1 epoch (or 1.5) + crash + resume: identical weights, bit for bit."""
    straight = pretrain(smoke(tmp_path, "a", checkpoint_every_steps=every))
    crash_at(monkeypatch, crash_step)
    cfg = smoke(tmp_path, "b", checkpoint_every_steps=every)
    with pytest.raises(Crash):
        pretrain(cfg)
    monkeypatch.undo()
    resumed_run = pretrain(cfg)
    assert tuple(resumed_run["resumed_from"]) == resumed
    assert_same_weights(weights(straight), weights(resumed_run))
    assert resumed_run["final_loss"] == straight["final_loss"]
    history = runs.read_jsonl(Path(resumed_run["run"]) / "metrics.jsonl")
    assert [r["epoch"] for r in history] == [1, 2]


def test_finished_run_is_found_not_redone(tmp_path):
    cfg = smoke(tmp_path, "a")
    first = pretrain(cfg)
    mtime = Path(first["checkpoint"]).stat().st_mtime_ns
    again = pretrain(cfg)
    assert again == json.loads(json.dumps(first)) and Path(first["checkpoint"]).stat().st_mtime_ns == mtime


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = smoke(tmp_path, "a")

    def poison(self, step, total):
        if step == 5:  # in epoch 2, after epoch 1's checkpoint
            with torch.no_grad():
                self.backbone.stem[0].weight.fill_(float("nan"))
    monkeypatch.setattr(BarlowTwins, "after_step", poison, raising=False)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 2, step 3 \(global step 6\).*last.pt \(after epoch 1\) is kept. .*resumes there"):
        pretrain(cfg)
    last = next(Path(cfg["runs_dir"]).glob("pretrain-*/checkpoints/last.pt"))
    ckpt = runs.load_checkpoint(last)
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_checkpoint_is_never_half_written(tmp_path, monkeypatch):
    path = tmp_path / "ckpt" / "last.pt"
    runs.save_checkpoint(path, {"w": torch.ones(3)})
    good = path.read_bytes()

    def dying_save(obj, f):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        runs.save_checkpoint(path, {"w": torch.zeros(3)})
    assert path.read_bytes() == good
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_bad_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(Exception, match=r"last.pt could not be loaded .*delete it"):
        runs.load_checkpoint(bad)


def test_batches_shard_the_global_batch_by_rank():
    images = np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1)
    idx = np.arange(10, 90)
    one = Batches(images, None, idx, 16, seed=3)
    shards = [Batches(images, None, idx, 16, seed=3, dist_info=distributed.DistInfo(r, 4)) for r in range(4)]
    for epoch in (0, 1):
        for b in [one, *shards]:
            b.set_epoch(epoch)
        assert len(one) == 5 and all(len(s) == 5 for s in shards)
        for step in range(5):
            parts = [s.rank_indices(step) for s in shards]
            assert all(len(p) == 4 for p in parts)
            assert np.array_equal(np.sort(np.concatenate(parts)), one.rank_indices(step))
    one.set_epoch(0)
    e0 = one.rank_indices(0)
    one.set_epoch(1)
    assert not np.array_equal(e0, one.rank_indices(0))   # a new order each epoch
    got = [b["images"].flatten().tolist() for _, b in one.iterate(3)]
    assert len(got) == 2                                  # resumes at step 3 of 5


def torchrun(nproc, *args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=HERE.parent)


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process_on_the_whole_batch(tmp_path):
    """gloo on CPU: same loss, same (averaged) gradients, same BN running statistics."""
    proc = torchrun(2, str(HERE / "ddp_worker.py"), str(tmp_path / "ddp.pt"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = subprocess.run([sys.executable, str(HERE / "ddp_worker.py"), str(tmp_path / "one.pt")],
                            capture_output=True, text=True, cwd=HERE.parent)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp, one = torch.load(tmp_path / "ddp.pt"), torch.load(tmp_path / "one.pt")
    assert torch.allclose(ddp["loss"], one["loss"], rtol=1e-5)
    for name, g in one["grads"].items():
        scale = g.abs().max().clamp_min(1e-6)
        assert torch.allclose(ddp["grads"][name], g, atol=2e-5 * scale, rtol=1e-4), name
    for name, b in one["buffers"].items():
        if b.is_floating_point():
            assert torch.allclose(ddp["buffers"][name], b, atol=1e-5, rtol=1e-4), name


@pytest.mark.slow
@pytest.mark.slow
def test_pretrain_command_survives_a_kill(tmp_path):
    args = [sys.executable, "-m", "lossless", "pretrain", "--profile", "smoke", "--quiet",
            "ssl_epochs=2", "ssl_max_steps_per_epoch=6", "checkpoint_every_steps=2"]
    run = subprocess.Popen(args + [f"runs_dir={tmp_path / 'b'}"], cwd=HERE.parent,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "b").glob("*/checkpoints/last.pt")):
        time.sleep(0.05)
    time.sleep(0.3)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert run.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    second = subprocess.run(args + [f"runs_dir={tmp_path / 'b'}"], cwd=HERE.parent, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]
    resumed = json.loads(second.stdout.strip().splitlines()[-1])
    assert resumed["resumed_from"] is not None
    straight = subprocess.run(args + [f"runs_dir={tmp_path / 'a'}"], cwd=HERE.parent, capture_output=True, text=True)
    reference = json.loads(straight.stdout.strip().splitlines()[-1])
    assert_same_weights(weights(reference), weights(resumed))


def test_auto_precision_is_bf16_only_on_a_cpu_that_computes_it(monkeypatch):
    """Emulated bf16 made the cpu profile's step 7x slower than fp32 on an AVX2-only EPYC."""
    from lossless import engine
    cpu = torch.device("cpu")
    for avx512_bf16, amx, want in ((False, False, None), (True, False, torch.bfloat16), (False, True, torch.bfloat16)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert engine.resolve_precision("auto", cpu) is want, (avx512_bf16, amx)
        assert engine.resolve_precision("bf16", cpu) is torch.bfloat16      # asked for, it is given
