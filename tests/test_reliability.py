"""What a demanding user tries (issue 14): every bad parameter refused before anything is
written, papermill reruns that accept the chapters' own parameters, one process per run folder,
a full disk, a damaged cache, and divergence on an epoch's last step."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lossless import book, config, runs
from lossless.cli import main
from lossless.engine import TrainingDiverged
from lossless.errors import ConfigError, DataError, DiskFull, LosslessError
from lossless.methods.barlow import BarlowTwins
from lossless.pretrain import pretrain

ROOT = Path(__file__).resolve().parent.parent
LOSSLESS = [sys.executable, "-m", "lossless"]


def smoke(tmp_path, **kw):
    kw.setdefault("progress", False)
    return config.load_profile("smoke", dict(runs_dir=str(tmp_path / "runs"), **kw))


# ------------------------------------------------------------------ parameters
BAD = [(key, bad) for key, (_, _, domain) in config.PARAMETERS.items() for bad in domain.bad]


def test_every_parameter_has_values_it_refuses():
    assert {k for k, _ in BAD} == set(config.PARAMETERS)


@pytest.mark.parametrize("key,bad", BAD, ids=[f"{k}={v}" for k, v in BAD])
def test_a_bad_value_is_refused_with_one_line_and_nothing_written(tmp_path, capsys, key, bad):
    runs_dir = tmp_path / "runs"
    code = main(["pretrain", "--profile", "smoke", "--quiet", f"runs_dir={runs_dir}", f"{key}={bad}"]
                if key != "runs_dir" else ["pretrain", "--profile", "smoke", "--quiet", f"{key}={bad}"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"{key}=" in err and ("is not allowed" in err or "should be of type" in err), err
    assert not runs_dir.exists()                                    # nothing created, not even config.json


@pytest.mark.parametrize("text,value", [("1e-3", 1e-3), ("1E-3", 1e-3), (".5", 0.5), ("2.", 2.0), ("5", 5.0),
                                        ("1_000.5", 1000.5), (" 3e2 ", 300.0)])
def test_every_spelling_of_a_float_is_accepted(text, value):
    assert config.load_profile("cpu", [f"ssl_lr={text}"]).ssl_lr == value
    assert config.load_profile("cpu", [f"pl_weight_decay={text}"]).pl_weight_decay == value


def test_relations_between_parameters_are_checked():
    with pytest.raises(ConfigError, match=r"ssl_warmup_epochs=3, ssl_epochs=2 .*ssl_warmup_epochs <= ssl_epochs"):
        config.load_profile("smoke", ["ssl_warmup_epochs=3"])
    cfg = config.load_profile("smoke")
    cfg["ssl_epochs"] = 0                                           # a notebook that edits cfg by hand
    with pytest.raises(ConfigError, match="ssl_epochs=0 is not allowed"):
        pretrain(cfg)


def test_book_accepts_the_chapters_own_parameters(tmp_path, capsys):
    declared = book.chapter_parameters(ROOT)
    assert declared["seeds"]["default"] == 3 and declared["seeds"]["chapters"] == ["intro", "results", "appendix-screen"]
    assert declared["al_experiment_seeds"] == {"default": 10, "chapters": ["active-learning"]}
    out = tmp_path / "nb"
    assert main(["book", "--profile", "smoke", "-p", "seeds", "3", "-p", "ssl_lr", "1e-3",
                 "--notebooks-only", str(out)]) == 0
    source = (out / "results.ipynb").read_text()
    assert "seeds = 3" in source and "ssl_lr = 0.001" in source
    capsys.readouterr()
    assert main(["book", "--profile", "smoke", "-p", "seeds", "three", "--notebooks-only", str(out)]) == 2
    assert "seeds='three' should be of type int" in capsys.readouterr().err
    assert main(["book", "--profile", "smoke", "-p", "sedes", "3", "--notebooks-only", str(out)]) == 2
    err = capsys.readouterr().err
    assert ("-p sedes: unknown parameter; chapter parameters: al_experiment_seeds, al_finetune_seeds, al_strategies, "
            "all_rules, arch_seeds, budget_seeds, compare_seeds, filter_channels, filter_image, filter_layer, "
            "filter_methods, fixmatch_seeds, rerun_arch, rerun_screen, screen_finalists, screen_pilot_seeds, "
            "screen_seeds, seeds, supervised_grid; configuration parameters: dataset") in err
    assert main(["book", "--profile", "smoke", "-p", "ssl_epochs", "0", "--notebooks-only", str(out)]) == 2
    assert "ssl_epochs=0 is not allowed" in capsys.readouterr().err


def test_every_run_folder_follows_one_rule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LOSSLESS_RUNS", raising=False)             # the default, whatever the caller's shell set
    assert book.book_dir("smoke", {}).parent == tmp_path / "runs"
    monkeypatch.setenv("LOSSLESS_RUNS", str(tmp_path / "elsewhere"))
    assert book.book_dir("smoke", {}).parent == tmp_path / "elsewhere"
    assert runs.runs_root(config.load_profile("smoke")) == tmp_path / "elsewhere"
    assert book.book_dir("smoke", {"runs_dir": str(tmp_path / "mine")}).parent == tmp_path / "mine"


def test_a_network_too_deep_for_the_images_names_the_backbone_and_image_size(tmp_path, capsys):
    """VGG-16 with five pools needs 32 px; on 24-px images it is one line naming the fix."""
    runs_dir = tmp_path / "runs"
    args = ["pretrain", "--profile", "smoke", "--quiet", f"runs_dir={runs_dir}", "backbone=vgg16-5pool"]
    assert main(args + ["synthetic_size=24"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "backbone=vgg16-5pool" in err and "32 px" in err and "image_size" in err, err
    assert not list(runs_dir.glob("pretrain-*/checkpoints/*"))     # nothing trained
    # the fix it names works: the same images resized to 32 px build the network
    from lossless.pretrain import backbone_for, load_data
    cfg = config.load_profile("smoke", [f"runs_dir={runs_dir}", "backbone=vgg16-5pool", "synthetic_size=24",
                                        "image_size=32"])
    assert backbone_for(cfg, load_data(cfg, False).data)(torch.zeros(2, 3, 32, 32)).shape == (2, 512)


def test_a_wrong_lossless_data_is_an_error_not_a_fallback(tmp_path, monkeypatch, capsys):
    from conftest import make_fashion_tree
    monkeypatch.setenv("LOSSLESS_DATA", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"LOSSLESS_DATA=.*empty holds no Fashion-MNIST IDX files .*unset LOSSLESS_DATA"):
        from lossless import data
        data.load_split(config.load_profile("cpu"), progress=False)
    make_fashion_tree(tmp_path / "good", n_train=1400, n_test=20)
    monkeypatch.setenv("LOSSLESS_DATA", str(tmp_path / "good"))
    assert main(["data", "check", "--profile", "cpu", "--quiet", "val_per_class=10", "labels_per_class=2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert all(f.startswith(str(tmp_path / "good")) for f in summary["source"]["files"].values())


def test_evaluate_names_a_result_that_is_not_json(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "result.json").write_text('{"test_accuracy": 0.7')
    assert main(["evaluate", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'run' / 'result.json'} is not valid JSON" in err and "Traceback" not in err


# ------------------------------------------------------------------ one process per run folder
HOLD_FIRST_STEP = """
import sys, time
from pathlib import Path
from lossless.cli import main
from lossless.methods.barlow import BarlowTwins
go = Path(sys.argv[1])
def hold(self, step, total):                 # the first step waits until the test says go
    while step == 0 and not go.exists():
        time.sleep(0.05)
BarlowTwins.after_step = hold
sys.exit(main(sys.argv[2:]))
"""


def test_a_second_process_waits_for_the_first_and_uses_its_result(tmp_path):
    args = ["pretrain", "--profile", "smoke", "--quiet", f"runs_dir={tmp_path / 'runs'}", "ssl_epochs=3"]
    go = tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-c", HOLD_FIRST_STEP, str(go)] + args,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    lock = None
    while time.time() < deadline and lock is None:                  # the first holds the lock, mid-training
        found = list((tmp_path / "runs").glob("pretrain-*/.lock"))
        if found and found[0].read_text().strip() == str(first.pid):
            lock = found[0]
        time.sleep(0.05)
    assert lock is not None, first.communicate()
    second = subprocess.Popen(LOSSLESS + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    waiting = second.stderr.readline()                              # blocks until the second says it waits
    assert f"in use by another lossless process (pid {first.pid})" in waiting and "waiting" in waiting
    go.touch()
    out_first, err_first = first.communicate(timeout=300)
    out_second, err_second = second.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, (err_first, err_second)
    assert json.loads(out_second) == json.loads(out_first)          # found, not trained again
    assert len(runs.read_jsonl(lock.parent / "metrics.jsonl")) == 3


def test_the_lock_dies_with_its_process_and_stale_temporaries_go(tmp_path):
    run = tmp_path / "runs" / "x"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from lossless import runs\n"
        f"with runs.claim(Path({str(run)!r})):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(LosslessError, match=rf"in use by another lossless process \(pid {holder.pid}\)"):
        with runs.claim(run, wait=False):
            pass
    holder.kill()
    holder.wait()
    stale = run / "checkpoints" / ".last.pt.424242.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x" * 1000)
    with runs.claim(run, wait=False):                               # free again, no stale lock to remove
        assert not stale.exists()


# ------------------------------------------------------------------ a full disk
def test_a_full_disk_names_the_file_and_keeps_the_previous_version(tmp_path, monkeypatch):
    import errno
    path = tmp_path / "ckpt" / "last.pt"
    runs.save_checkpoint(path, {"w": torch.ones(3)})
    good = path.read_bytes()

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(DiskFull, match=rf"no space left on the device while writing {path} \(.* free there\)"):
        runs.save_checkpoint(path, {"w": torch.zeros(3)})
    assert path.read_bytes() == good and [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_a_full_cache_disk_leaves_no_half_entry(tmp_path, monkeypatch):
    import errno

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "posix_fallocate", no_space)
    monkeypatch.setenv("LOSSLESS_CACHE", str(tmp_path / "empty"))     # not the pre-built smoke cache
    from lossless import data
    with pytest.raises(DataError, match=r"cannot build the cache of synthetic: no space left .* free there"):
        data.load_split(config.load_profile("smoke"), progress=False)
    assert not [p for p in Path(os.environ["LOSSLESS_CACHE"]).iterdir() if p.name.startswith(".")]


SMALL_DISK = """
set -e
mount -t tmpfs -o size={size} tmpfs {mnt}
set +e
{python} -m lossless pretrain --profile smoke --quiet runs_dir={mnt}/runs checkpoint_every_steps=1 ssl_epochs=1
echo "exit=$?"
{python} -c "
import glob, torch
from lossless import runs
last = glob.glob('{mnt}/runs/pretrain-*/checkpoints/last.pt')[0]
c = runs.load_checkpoint(last)
print('kept', c['epoch'], c['step_in_epoch'], sorted(glob.glob('{mnt}/runs/pretrain-*/checkpoints/.*')))
"
"""


def test_a_real_full_file_system(tmp_path):
    """A tmpfs with room for one checkpoint: the second write fails, the first stays loadable."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-Urm", "true"], capture_output=True).returncode != 0:
        if os.environ.get("CI"):
            pytest.fail("unshare -Urm is not available: cannot mount a small file system")
        pytest.skip("cannot mount a small file system here")
    probe = pretrain(smoke(tmp_path, checkpoint_every_steps=1, ssl_epochs=1))
    size = Path(probe["checkpoint"]).stat().st_size
    mnt = tmp_path / "small"
    mnt.mkdir()
    script = SMALL_DISK.format(size=int(size * 1.6) + 64 * 1024, mnt=mnt, python=sys.executable)
    out = subprocess.run(["unshare", "-Urm", "bash", "-c", script], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, LOSSLESS_CACHE=str(tmp_path / "cache")))
    lines = out.stderr.strip().splitlines()
    assert "exit=2" in out.stdout, out.stdout + out.stderr
    assert lines[-1].startswith("lossless: error: no space left on the device while writing ") and \
        "last.pt" in lines[-1] and "free there" in lines[-1], out.stderr
    assert "Traceback" not in out.stderr
    assert "kept 0 1 []" in out.stdout, out.stdout                  # step 1's checkpoint, no temporary left


# ------------------------------------------------------------------ a damaged cache
@pytest.mark.parametrize("name,where", [("images.npy", "middle"), ("labels.npy", "middle"), ("labels.npy", "header"),
                                        ("parts.npy", "header")])
def test_a_same_size_corruption_of_the_cache_is_detected_and_rebuilt(tmp_path, monkeypatch, capsys, name, where):
    monkeypatch.setenv("LOSSLESS_CACHE", str(tmp_path / "own"))   # it damages the files in place: not the shared ones
    from lossless import data
    cfg = config.load_profile("smoke")
    first = data.load_dataset(cfg, progress=False)
    images, labels = np.array(first.images), first.labels.copy()
    f = first.path / name
    raw = bytearray(f.read_bytes())
    at = len(raw) // 2 if where == "middle" else 10
    raw[at:at + 8] = bytes(b ^ 0xFF for b in raw[at:at + 8])
    stat = f.stat()
    f.write_bytes(bytes(raw))
    os.utime(f, ns=(stat.st_atime_ns, stat.st_mtime_ns))          # even with the old modification time
    capsys.readouterr()
    again = data.load_dataset(cfg, progress=False)
    assert f"rebuilding the cache {first.path}: {name} does not match the checksum" in capsys.readouterr().err
    assert np.array_equal(again.images, images) and np.array_equal(again.labels, labels)


def test_a_killed_cache_build_leaves_nothing_behind_once_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSLESS_CACHE", str(tmp_path / "empty"))     # not the pre-built smoke cache
    from lossless import data
    from lossless.data.cache import entry_path
    from lossless.data.sources import make_source
    cfg = config.load_profile("smoke")
    root = Path(os.environ["LOSSLESS_CACHE"])
    source = make_source("synthetic", None, cache_dir=root, synthetic_options=dict(
        num_train=cfg.synthetic_train, num_test=cfg.synthetic_test, num_classes=cfg.synthetic_classes,
        size=cfg.synthetic_size, channels=cfg.synthetic_channels))
    entry = entry_path(source, root)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()                 # a pid that no longer runs
    abandoned = entry.parent / f".{entry.name}.tmp-{dead}"
    (abandoned).mkdir(parents=True)
    (abandoned / "images.npy").write_bytes(b"\0" * 4096)
    mine = entry.parent / f".{entry.name}.tmp-{os.getpid()}-keep"  # not a pid name: left alone
    mine.mkdir()
    data.load_dataset(cfg, progress=False)
    assert not abandoned.exists() and mine.exists()


# ------------------------------------------------------------------ divergence
def test_divergence_on_an_epochs_last_step_stops_before_any_evaluation(tmp_path, monkeypatch):
    cfg = smoke(tmp_path)                               # 4 steps an epoch, checkpoints at epoch ends only

    def poison(self, step, total):
        if step == 3:                                   # the last step of epoch 1: its loss was finite
            with torch.no_grad():
                self.backbone.stem[0].weight.fill_(float("nan"))
    monkeypatch.setattr(BarlowTwins, "after_step", poison, raising=False)
    with pytest.raises(TrainingDiverged) as info:
        pretrain(cfg)
    message = str(info.value)
    assert "the weights became NaN or infinite at epoch 1, step 4 (global step 3)" in message
    assert "no checkpoint had been written yet" in message and "last.pt does not exist" in message
    assert "running the same command again starts afresh and diverges at the same point" in message
    assert "resumes" not in message and "Lower ssl_lr" in message and "new folder" in message
    assert not list(Path(cfg["runs_dir"]).glob("pretrain-*/checkpoints/*.pt"))


def test_finite_weights_too_large_for_a_forward_pass_end_in_one_line(tmp_path, monkeypatch, capsys):
    """Weights finite (1e38) after an epoch's last step, but the evaluation's forward pass
    overflows: one line naming the epoch and what is on disk, not scikit-learn's NaN traceback."""
    cfg = smoke(tmp_path)

    def blow_up(self, step, total):
        if step == 3:
            with torch.no_grad():
                self.backbone.stem[0].weight.mul_(0).add_(1e38)
    monkeypatch.setattr(BarlowTwins, "after_step", blow_up, raising=False)
    code = main(["pretrain", "--profile", "smoke", "--quiet", f"runs_dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "the backbone's features became NaN or infinite (its weights are finite but too large) at the end of " \
           "epoch 1; no checkpoint had been written yet" in err
    assert "starts afresh" in err and "resumes" not in err and "Traceback" not in err


def test_non_finite_weights_are_never_checkpointed_mid_epoch(tmp_path, monkeypatch):
    cfg = smoke(tmp_path, checkpoint_every_steps=1)

    def poison(self, step, total):
        if step == 5:
            with torch.no_grad():
                next(self.projector.parameters()).fill_(float("inf"))
    monkeypatch.setattr(BarlowTwins, "after_step", poison, raising=False)
    with pytest.raises(TrainingDiverged, match=r"weights became NaN or infinite at epoch 2, step 2 \(global step 5\); "
                                               r"the last good checkpoint .*last.pt \(in epoch 2 after step 1\) is kept"):
        pretrain(cfg)
    last = runs.load_checkpoint(next(Path(cfg["runs_dir"]).glob("pretrain-*/checkpoints/last.pt")))
    assert (last["epoch"], last["step_in_epoch"]) == (1, 1)
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


# ------------------------------------------------------------------ torchrun restarts
@pytest.mark.slow
def test_a_torchrun_group_restarted_after_a_worker_dies_finishes_bit_identical(tmp_path):
    """One worker SIGKILLed after the first checkpoint; torchrun restarts the group, which must
    join a fresh process group (not the dead worker's old address) and resume. The run it is
    compared with is the pretrain command under torchrun, uninterrupted: rank 0 alone prints."""
    import psutil
    args = ["-m", "lossless", "pretrain", "--profile", "smoke", "--quiet", "ssl_epochs=2",
            "ssl_max_steps_per_epoch=6", "checkpoint_every_steps=2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    straight = subprocess.run(launch + args + [f"runs_dir={tmp_path / 'a'}"], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=300)
    assert straight.returncode == 0, straight.stderr[-2000:]
    printed = [json.loads(x) for x in straight.stdout.splitlines() if x.startswith("{")]
    assert len(printed) == 1                                        # rank 0 alone prints the result
    assert np.isfinite(printed[0]["final_loss"]) and printed[0]["knn_val"] > 0
    agent = subprocess.Popen(launch + ["--max-restarts=1"] + args + [f"runs_dir={tmp_path / 'b'}"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    deadline = time.time() + 180
    while time.time() < deadline and not list((tmp_path / "b").glob("*/checkpoints/last.pt")):
        time.sleep(0.02)
    workers = [p for p in psutil.Process(agent.pid).children(recursive=True) if "lossless" in " ".join(p.cmdline())]
    assert len(workers) == 2
    workers[1].kill()
    try:
        out, err = agent.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        for p in psutil.Process(agent.pid).children(recursive=True):
            p.kill()
        agent.kill()
        pytest.fail("the restarted group hung (init_process_group on the dead worker's address?)")
    assert agent.returncode == 0, err[-3000:]
    assert "failed (exitcode: -9)" in err                           # the kill happened and was restarted
    resumed = json.loads([x for x in out.splitlines() if x.startswith("{")][-1])
    assert resumed["resumed_from"] is not None
    a = runs.load_checkpoint(next((tmp_path / "a").glob("*/checkpoints/last.pt")))["model"]
    b = runs.load_checkpoint(next((tmp_path / "b").glob("*/checkpoints/last.pt")))["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ folders that cannot be written
READ_ONLY = """
set -e
mount -t tmpfs -o ro tmpfs {mnt}
set +e
LOSSLESS_RUNS={mnt}/runs {python} -m lossless pretrain --profile smoke --quiet
echo "runs=$?"
LOSSLESS_CACHE={mnt}/cache {python} -m lossless data check --profile smoke
echo "cache=$?"
"""


def _can_unshare() -> bool:
    ok = shutil.which("unshare") is not None and subprocess.run(["unshare", "-Urm", "true"],
                                                                capture_output=True).returncode == 0
    if not ok and os.environ.get("CI"):
        pytest.fail("unshare -Urm is not available: cannot mount a file system")
    return ok


def test_a_read_only_runs_folder_or_cache_is_one_line_naming_the_variable(tmp_path):
    """LOSSLESS_RUNS or LOSSLESS_CACHE on a read-only mount: one line that names the folder and
    the variable that moves it, no traceback, exit 2."""
    if not _can_unshare():
        pytest.skip("cannot mount a file system here")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    out = subprocess.run(["unshare", "-Urm", "bash", "-c", READ_ONLY.format(mnt=mnt, python=sys.executable)],
                         capture_output=True, text=True, timeout=300)
    assert "runs=2" in out.stdout and "cache=2" in out.stdout, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("lossless: error:")]
    assert len(lines) == 2 == len(out.stderr.strip().splitlines()), out.stderr
    assert f"{mnt}/runs" in lines[0] and "read-only file system" in lines[0] and "LOSSLESS_RUNS" in lines[0]
    assert f"{mnt}/cache" in lines[1] and "read-only file system" in lines[1] and "LOSSLESS_CACHE" in lines[1]


def test_lossless_runs_naming_a_file_is_one_line(tmp_path, monkeypatch, capsys):
    a_file = tmp_path / "runs.txt"
    a_file.write_text("not a folder\n")
    monkeypatch.setenv("LOSSLESS_RUNS", str(a_file))
    assert main(["pretrain", "--profile", "smoke", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(a_file) in err and "LOSSLESS_RUNS" in err, err
    assert a_file.read_text() == "not a folder\n"                     # nothing lost


def test_a_seed_too_large_is_refused_before_anything_is_written(tmp_path, capsys):
    for command in (["data", "check"], ["pretrain"]):
        assert main([*command, "--profile", "smoke", "--quiet", f"runs_dir={tmp_path / 'runs'}",
                     "seed=99999999999999999999"]) == 2, command
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "seed=" in err and "1000000" in err, err
    assert not (tmp_path / "runs").exists()
    assert main(["data", "check", "--profile", "smoke", "seed=1000000"]) == 0  # the largest allowed


def test_a_batch_larger_than_the_images_names_its_own_key_and_leaves_no_run_folder(tmp_path, capsys):
    assert main(["pretrain", "--profile", "smoke", "--quiet", f"runs_dir={tmp_path / 'runs'}",
                 "ssl_batch_size=5000"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("lossless: error: ssl_batch_size=5000 is larger than the ")
    assert err.endswith("lower ssl_batch_size"), err
    assert not list((tmp_path / "runs").glob("pretrain-*")), list((tmp_path / "runs").rglob("*"))


def test_a_checkpoint_that_runs_code_is_refused_without_advice_to_load_it_unsafely(tmp_path):

    class Hostile:
        def __reduce__(self):
            return (os.system, ("echo owned > " + str(tmp_path / "owned"),))
    path = tmp_path / "last.pt"
    torch.save({"w": torch.ones(2), "x": Hostile()}, path)
    with pytest.raises(LosslessError) as caught:
        runs.load_checkpoint(path)
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and str(path) in message, message
    assert "do not load it with weights_only=False" in message and "will likely succeed" not in message, message
    assert "system" in message                                       # what the safe loader refused
    assert not (tmp_path / "owned").exists()
    (tmp_path / "garbage.pt").write_bytes(b"garbage")                # damaged, not hostile: the other message
    with pytest.raises(LosslessError) as caught:
        runs.load_checkpoint(tmp_path / "garbage.pt")
    assert "could not be loaded" in str(caught.value) and "likely succeed" not in str(caught.value)
