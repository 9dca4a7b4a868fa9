"""Kill a pretraining run at random and check that it comes back bit-identical (issue 14).

Two measurements, each against an uninterrupted run of the same configuration:

* ``resume``: ``lossless pretrain --profile smoke`` (one process) SIGKILLed at a random moment
  after its first checkpoint, with a second identical command started beside it (it waits on
  the run folder's lock), then the same command a third time. The trial passes when both later
  commands finish and the final weights equal the reference bit for bit; ``waited`` says which
  of them waited for the other (the one that got the lock resumes the run, the other uses its
  result).
* ``torchrun``: ``torchrun --standalone --nproc_per_node=2 --max-restarts=1 -m lossless pretrain``
  with one worker SIGKILLed at a random moment after the first checkpoint; torchrun restarts the
  group, which resumes. The trial passes when torchrun exits 0 and the weights equal an
  uninterrupted 2-process run bit for bit.

    .venv/bin/python benchmarks/kill_and_restart.py --trials 10            # both
    .venv/bin/python benchmarks/kill_and_restart.py --only torchrun --trials 10

Prints one line per trial and writes ``benchmarks/results/kill-and-restart.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["pretrain", "--profile", "smoke", "--quiet", "ssl_epochs=4", "ssl_max_steps_per_epoch=8",
        "checkpoint_every_steps=2"]


def lossless(runs_dir: Path) -> list[str]:
    return [sys.executable, "-m", "lossless", *ARGS, f"runs_dir={runs_dir}"]


def torchrun(runs_dir: Path, restarts: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            f"--max-restarts={restarts}", "-m", "lossless", *ARGS, f"runs_dir={runs_dir}"]


def weights(runs_dir: Path) -> dict:
    last = next(runs_dir.glob("pretrain-*/checkpoints/last.pt"))
    return torch.load(last, weights_only=True)["model"]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def wait_for_checkpoint(runs_dir: Path, proc: subprocess.Popen, timeout: float = 180) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if list(runs_dir.glob("pretrain-*/checkpoints/last.pt")):
            return True
        time.sleep(0.02)
    return False


def trial_resume(work: Path, reference: dict, rng: random.Random, env: dict) -> dict:
    runs_dir = work / "runs"
    first = subprocess.Popen(lossless(runs_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    if not wait_for_checkpoint(runs_dir, first):
        first.kill()
        return {"ok": False, "why": "no checkpoint appeared"}
    waiter = subprocess.Popen(lossless(runs_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(rng.uniform(0.0, 1.5))
    killed = first.poll() is None
    first.send_signal(signal.SIGKILL)
    first.wait()
    again = subprocess.run(lossless(runs_dir), capture_output=True, text=True, env=env)
    w_out, w_err = waiter.communicate(timeout=600)
    ok = again.returncode == 0 and waiter.returncode == 0 and same(weights(runs_dir), reference)
    # whichever of the two later commands took the lock second waited for the other and used its result
    waited = [name for name, err in (("waiter", w_err), ("rerun", again.stderr)) if "waiting for it to finish" in err]
    return {"ok": ok, "killed_mid_run": killed, "waited": waited,
            "resumed_from": json.loads(again.stdout.splitlines()[-1])["resumed_from"] if again.returncode == 0
            else again.stderr[-300:]}


def trial_torchrun(work: Path, reference: dict, rng: random.Random, env: dict, hang: float = 240) -> dict:
    runs_dir = work / "runs"
    agent = subprocess.Popen(torchrun(runs_dir, 1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env, cwd=ROOT)
    if not wait_for_checkpoint(runs_dir, agent):
        out, err = agent.communicate()
        return {"ok": False, "why": "no checkpoint appeared", "stderr": err[-500:]}
    time.sleep(rng.uniform(0.0, 1.0))
    workers = [p for p in psutil.Process(agent.pid).children(recursive=True) if "lossless" in " ".join(p.cmdline())]
    victim = rng.choice(workers) if workers else None
    if victim is not None:
        victim.send_signal(signal.SIGKILL)
    try:
        out, err = agent.communicate(timeout=hang)
    except subprocess.TimeoutExpired:           # a restarted group that hangs counts as a failure
        for p in psutil.Process(agent.pid).children(recursive=True):
            p.kill()
        agent.kill()
        out, err = agent.communicate()
        return {"ok": False, "killed": victim is not None, "returncode": None, "why": f"hung for {hang:.0f} s"}
    ok = agent.returncode == 0 and same(weights(runs_dir), reference)
    reason = ""
    if agent.returncode != 0:
        lines = [ln for ln in err.splitlines() if "Error" in ln or "error" in ln]
        reason = " | ".join(lines[-3:])[-600:]
    return {"ok": ok, "killed": victim is not None, "returncode": agent.returncode, "why": reason}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--only", choices=["resume", "torchrun"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hang", type=float, default=240, help="seconds after which a restarted group counts as hung")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kill-and-restart.json"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    base = Path(tempfile.mkdtemp(prefix="lossless-kill-"))
    env = dict(os.environ, OMP_NUM_THREADS="1", LOSSLESS_CACHE=str(base / "cache"), PYTHONUNBUFFERED="1")
    report = {"trials": args.trials, "cpu": _cpu()}
    try:
        for kind in ("resume", "torchrun"):
            if args.only and kind != args.only:
                continue
            ref_dir = base / f"reference-{kind}" / "runs"
            cmd = lossless(ref_dir) if kind == "resume" else torchrun(ref_dir, 0)
            subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=ROOT)
            reference = weights(ref_dir)
            results = []
            for t in range(args.trials):
                work = base / f"{kind}-{t}"
                t0 = time.perf_counter()
                r = (trial_resume(work, reference, rng, env) if kind == "resume"
                     else trial_torchrun(work, reference, rng, env, args.hang))
                r["seconds"] = round(time.perf_counter() - t0, 1)
                results.append(r)
                print(f"{kind} trial {t + 1}/{args.trials}: {json.dumps(r)}", flush=True)
                shutil.rmtree(work, ignore_errors=True)
            passed = sum(r["ok"] for r in results)
            report[kind] = {"passed": passed, "of": len(results), "results": results}
            print(f"{kind}: {passed}/{len(results)} bit-identical", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"written to {args.out}")


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
