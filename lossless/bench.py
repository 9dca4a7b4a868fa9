"""``lossless bench train``: Barlow Twins training-step throughput, measured (not a test).

One run measures, on this machine and in this process:

* the dense-GEMM ceiling in bf16 and fp32 (the best of a square n=4096 matmul and the same GEMM
  as a 1x1 convolution, fastest of several runs): the denominator of MFU;
* a full Barlow Twins step (two views augmented on the device from uint8, forward, backward,
  LARS) for the paper's ResNet-34 at 96 px (layer4 stride 2, the paper's text, and stride 1, the
  authors' code), ResNet-18 at 96 px, and the ``cpu`` profile's backbone, in fp32 and in
  bf16 + channels_last;
* the ``cpu`` profile's step on the path it takes today against the path before the two CPU
  fast paths (``kernels.Conv2d``'s GEMM weight gradient, one pass for both views), in turns
  in one process, and the same step under ``torch.compile``: ``step_paths`` in the JSON;
* the same ResNet-34 driven the way the authors' scripts drive it: per-image PIL transforms in
  DataLoader worker processes, fp32, no channels_last: the baseline of ``speedup_vs_authors``.

Throughput counts source images per second (each gives two views). Model FLOPs per image are
counted by ``torch.utils.flop_counter`` on one real step (forward and backward, both views);
``mfu`` is achieved FLOP/s over the bf16 ceiling. Results go to stdout and a JSON file.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import config as config_mod
from . import kernels
from .augment import Augmenter, barlow_twins_views
from .methods.barlow import BarlowTwins
from .models import build_backbone
from .optim import build_optimizer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_ceiling(device: torch.device, dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> dict:
    """The best dense-GEMM rate this device reaches in ``dtype``: the fastest of ``repeats`` timed
    runs (after a warm-up) of a square ``n`` matmul and of the same-size GEMM as a 1x1 convolution
    in channels_last (oneDNN's path, the one the models' convolutions take; on some CPUs it beats
    ``matmul``). Returns FLOP/s of each and the best."""
    import torch.nn.functional as F
    reps = 1 if device.type == "cpu" else 20
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    side, batch = 32, max(1, n // (32 * 32))  # batch x 32 x 32 = n rows: the matmul's GEMM shape
    x = torch.randn(batch, n, side, side, device=device, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(n, n, 1, 1, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    candidates = {"matmul": (lambda: a @ b, 2 * n ** 3),
                  "conv1x1": (lambda: F.conv2d(x, w), 2 * x.shape[0] * side * side * n * n)}
    out = {}
    for name, (fn, flops) in candidates.items():
        times = []
        for i in range(repeats + 1):
            _sync(device)
            t = time.perf_counter()
            for _ in range(reps):
                fn()
            _sync(device)
            if i:
                times.append((time.perf_counter() - t) / reps)
        out[name] = flops / min(times)
    out["best"] = max(out.values())
    return out


def _task(model: dict, channels: int, size: int, device, channels_last: bool) -> BarlowTwins:
    backbone = build_backbone(model["backbone"], in_channels=channels, width=model.get("width", 1.0),
                              layer4_stride=model.get("layer4_stride", 2), image_size=size,
                              maxpool=model.get("maxpool", True))
    views = barlow_twins_views(size, blur_sigma=(0.1, model.get("blur_sigma_max", 2.0)))
    aug = Augmenter(views, [0.5] * channels, [0.25] * channels)
    task = BarlowTwins(backbone, aug, config_mod.sizes(model.get("projector", "1024-1024-1024"))).to(device)
    if channels_last:
        task = task.to(memory_format=torch.channels_last)
    return task


def step_flops(task: BarlowTwins, batch: torch.Tensor, device) -> float:
    """FLOPs of one training step per source image (both views, forward + backward)."""
    from torch.utils.flop_counter import FlopCounterMode
    g = torch.Generator(device=device).manual_seed(0)
    views = task.prepare({"images": batch}, g)
    with FlopCounterMode(display=False) as counter:
        task(views)["loss"].backward()
    task.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(batch)


def measure_engine_step(model: dict, precision: str, device: torch.device, batch_size: int, steps: int,
                        warmup: int = 1, compile: bool = False) -> dict:
    """Source images per second of the package's own step (batched augmentation on the device)."""
    size, channels = model["resolution"], model["channels"]
    torch.manual_seed(0)
    task = _task(model, channels, size, device, precision != "fp32")
    return measure_task_step(task, size, channels, precision, device, batch_size, steps, warmup, compile)


def _step_function(task: torch.nn.Module, images: torch.Tensor, precision: str, device: torch.device,
                   compile: bool = False):
    """One training step of ``task`` on ``images`` as the engine runs it (a closure to time)."""
    opt = build_optimizer("lars", task, 0.1, 1e-6)
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    runner = torch.compile(task) if compile else task
    g = torch.Generator(device=device).manual_seed(1)

    def step():
        batch = images.to(device, non_blocking=True)
        with torch.no_grad():
            views = task.prepare({"images": batch}, g)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = runner(views)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if hasattr(task, "after_step"):
            task.after_step(1, 1000)

    return step


def measure_task_step(task: torch.nn.Module, size: int, channels: int, precision: str, device: torch.device,
                      batch_size: int, steps: int, warmup: int = 1, compile: bool = False) -> dict:
    """Source images per second of one training step of any method's task, as the engine runs
    it: views made on the device, forward and loss under autocast, backward, LARS, and the
    task's ``after_step`` (BYOL's moving average, SwAV's renormalisation) when it has one."""
    images = torch.randint(0, 256, (batch_size, size, size, channels), dtype=torch.uint8)
    flops = step_flops(task, images[: min(8, batch_size)].to(device), device)
    step = _step_function(task, images, precision, device, compile)
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t)
    sec = statistics.median(times)
    return {"img_per_s": batch_size / sec, "step_seconds": sec, "flops_per_img": flops,
            "batch_size": batch_size, "steps_timed": steps}


@contextlib.contextmanager
def step_path(name: str, task: torch.nn.Module):
    """``"lossless"``: ``task``'s step as the engine runs it. ``"before"``: the same step with
    the two CPU fast paths off (the stock oneDNN weight gradient for every convolution, one
    pass per view), the path the cpu profile's figures came from before them. The switches are
    the task's and its convolutions' attributes, restored on the way out."""
    convs = [m for m in task.modules() if isinstance(m, kernels.Conv2d)]
    before = (task.share_pass, [c.gemm_max_pixels for c in convs])
    if name == "before":
        task.share_pass = False
        for c in convs:
            c.gemm_max_pixels = 0
    try:
        yield
    finally:
        task.share_pass = before[0]
        for c, v in zip(convs, before[1]):
            c.gemm_max_pixels = v


def compare_step_paths(model: dict, precision: str, device: torch.device, batch_size: int, rounds: int,
                       compiled: bool = True) -> dict:
    """Images per second of the ``before`` and ``lossless`` paths of one task and, with
    ``compiled``, of the ``lossless`` path under ``torch.compile`` (the engine's ``compile``
    parameter), measured in turns (a step of each per round, after one warm-up step each, which
    for the compiled step includes compiling it) so that all see the same machine: on a shared
    virtual machine a neighbour's load moves single figures by 30%. Reports the median and the
    best step of each, their ratios to the path before, and the compiled path's to the eager one."""
    size, channels = model["resolution"], model["channels"]
    torch.manual_seed(0)
    task = _task(model, channels, size, device, precision != "fp32")
    images = torch.randint(0, 256, (batch_size, size, size, channels), dtype=torch.uint8)
    eager = _step_function(task, images, precision, device)
    steps = {"before": ("before", eager), "lossless": ("lossless", eager)}
    if compiled:
        steps["compiled"] = ("lossless", _step_function(task, images, precision, device, compile=True))

    times: dict[str, list[float]] = {name: [] for name in steps}
    compile_seconds = None
    for r in range(rounds + 1):
        for name, (path, step) in steps.items():
            with step_path(path, task):
                _sync(device)
                t = time.perf_counter()
                step()
                _sync(device)
                if r:
                    times[name].append(time.perf_counter() - t)
                elif name == "compiled":
                    compile_seconds = time.perf_counter() - t
    out: dict = {"batch_size": batch_size, "rounds": rounds}
    for name, ts in times.items():
        out[name] = {"img_per_s_median": batch_size / statistics.median(ts), "img_per_s_best": batch_size / min(ts)}
    out["speedup_median"] = out["lossless"]["img_per_s_median"] / out["before"]["img_per_s_median"]
    out["speedup_best"] = out["lossless"]["img_per_s_best"] / out["before"]["img_per_s_best"]
    if compiled:
        out["compiled"]["compile_seconds"] = compile_seconds
        out["compiled_vs_lossless_median"] = (out["compiled"]["img_per_s_median"]
                                              / out["lossless"]["img_per_s_median"])
    return out


# ------------------------------------------------------------------------- the authors' pipeline
class _PILBarlowView:
    """Per-image PIL transforms as the authors' scripts used them (torchvision v1 on PIL)."""

    def __init__(self, size: int, blur_p: float, solarize_p: float, mean, std):
        import random
        from PIL import ImageFilter, ImageOps
        from torchvision import transforms as T
        self.random, self.filter, self.ops = random, ImageFilter, ImageOps
        self.blur_p, self.solarize_p = blur_p, solarize_p
        self.first = T.Compose([
            T.RandomResizedCrop(size, interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(p=0.5),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2)])
        self.last = T.Compose([T.ToTensor(), T.Normalize(mean, std)])

    def __call__(self, img):
        img = self.first(img)
        if self.random.random() < self.blur_p:
            img = img.filter(self.filter.GaussianBlur(radius=self.random.random() * 1.9 + 0.1))
        if self.random.random() < self.solarize_p:
            img = self.ops.solarize(img)
        return self.last(img)


class _PILPairs(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, size: int):
        from PIL import Image
        self.images, self.Image = images, Image
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        self.v1 = _PILBarlowView(size, 1.0, 0.0, mean, std)
        self.v2 = _PILBarlowView(size, 0.1, 0.2, mean, std)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = self.Image.fromarray(self.images[i])
        return self.v1(img), self.v2(img)


def measure_authors_style(model: dict, device: torch.device, batch_size: int, steps: int, workers: int) -> dict:
    """fp32, no channels_last, per-image PIL views from DataLoader workers (the baseline)."""
    size = model["resolution"]
    torch.manual_seed(0)
    task = _task(model, 3, size, device, channels_last=False)
    opt = build_optimizer("lars", task, 0.1, 1e-6)
    images = np.random.default_rng(0).integers(0, 256, ((steps + 2) * batch_size, size, size, 3), dtype=np.uint8)
    loader = torch.utils.data.DataLoader(_PILPairs(images, size), batch_size=batch_size, shuffle=True,
                                         num_workers=workers, drop_last=True, persistent_workers=False)
    times, it = [], iter(loader)
    for i in range(steps + 1):
        t = time.perf_counter()
        y1, y2 = next(it)
        loss = task((y1.to(device), y2.to(device)))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if i:  # the first step includes the workers' start
            times.append(time.perf_counter() - t)
    sec = statistics.median(times)
    return {"img_per_s": batch_size / sec, "step_seconds": sec, "batch_size": batch_size,
            "steps_timed": steps, "loader_workers": workers}


def default_models(cpu_profile: config_mod.Config) -> list[dict]:
    cpu_backbone = {"name": f"cpu-profile {cpu_profile['backbone']} w{cpu_profile['width']}",
                    "backbone": cpu_profile["backbone"], "width": cpu_profile["width"],
                    "maxpool": cpu_profile["maxpool"], "layer4_stride": cpu_profile["layer4_stride"],
                    "projector": cpu_profile["projector"], "blur_sigma_max": cpu_profile["blur_sigma_max"],
                    "resolution": cpu_profile.get("image_size") or 28, "channels": 1}
    return [
        {"name": "resnet34 (paper text, layer4 stride 2)", "backbone": "resnet34", "layer4_stride": 2,
         "resolution": 96, "channels": 3, "paper_backbone": True},
        {"name": "resnet34 (authors' code, layer4 stride 1)", "backbone": "resnet34", "layer4_stride": 1,
         "resolution": 96, "channels": 3},
        {"name": "resnet18", "backbone": "resnet18", "layer4_stride": 2, "resolution": 96, "channels": 3},
        cpu_backbone,
    ]


def run_train_bench(device_name: str = "auto", out: str | None = None, quick: bool = False,
                    models: list[str] | None = None) -> dict:
    device = torch.device("cuda" if device_name == "auto" and torch.cuda.is_available() else
                          ("cpu" if device_name == "auto" else device_name))
    on_cpu = device.type == "cpu"
    cpu_profile = config_mod.load_profile("cpu")
    ceilings = {"bf16": matmul_ceiling(device, torch.bfloat16), "fp32": matmul_ceiling(device, torch.float32, repeats=3)}
    ceiling_bf16, ceiling_fp32 = ceilings["bf16"]["best"], ceilings["fp32"]["best"]
    print(f"GEMM ceiling on {device}: bf16 {ceiling_bf16 / 1e9:,.0f} GFLOP/s, fp32 {ceiling_fp32 / 1e9:,.0f} GFLOP/s "
          f"({ {k: {n: round(v / 1e9) for n, v in c.items()} for k, c in ceilings.items()} })", file=sys.stderr)
    records = []
    chosen = [m for m in default_models(cpu_profile) if not models or any(s in m["name"] for s in models)]
    for model in chosen:
        small = model["resolution"] <= 32
        for precision in ("fp32", "bf16"):
            if on_cpu:
                batch = 256 if small else (32 if precision == "fp32" else 64)
                steps = (3 if small else 2) if quick else (8 if small else 3)
            else:
                batch, steps = (1024 if not small else 2048), (5 if quick else 20)
            r = measure_engine_step(model, precision, device, batch, steps)
            rec = {"model": model["name"], "backbone": model["backbone"], "resolution": model["resolution"],
                   "channels": model["channels"], "precision": precision if precision == "fp32" else "bf16+channels_last",
                   "pipeline": "lossless (batched augmentation on the device)", "device": str(device), **r}
            rec["gflop_per_img"] = r["flops_per_img"] / 1e9
            rec["achieved_tflops"] = r["img_per_s"] * r["flops_per_img"] / 1e12
            rec["mfu"] = r["img_per_s"] * r["flops_per_img"] / ceiling_bf16
            records.append(rec)
            print(f"{rec['model']:<44} {rec['precision']:<20} {rec['img_per_s']:9.1f} img/s  "
                  f"mfu {rec['mfu']:.1%}", file=sys.stderr)
        if model.get("paper_backbone"):
            workers = min(2, os.cpu_count() or 1) if on_cpu else 8
            batch = 32 if on_cpu else 256
            r = measure_authors_style(model, device, batch, 2 if quick or on_cpu else 10, workers)
            flops = next(x for x in records if x["model"] == model["name"])["flops_per_img"]
            base = {"model": model["name"], "backbone": model["backbone"], "resolution": model["resolution"],
                    "channels": 3, "precision": "fp32", "device": str(device),
                    "pipeline": "authors' style (per-image PIL transforms in DataLoader workers)", **r,
                    "flops_per_img": flops, "gflop_per_img": flops / 1e9,
                    "mfu": r["img_per_s"] * flops / ceiling_bf16}
            records.append(base)
            print(f"{base['model']:<44} {'authors fp32+PIL':<20} {base['img_per_s']:9.1f} img/s", file=sys.stderr)
            for rec in records:
                if rec["model"] == model["name"] and rec["pipeline"].startswith("lossless"):
                    rec["speedup_vs_authors"] = rec["img_per_s"] / base["img_per_s"]
    paths = []
    for model in chosen:
        if model["resolution"] <= 32:  # the cpu profile's step: today's path against the one before
            r = compare_step_paths(model, "bf16", device, 256 if on_cpu else 2048, 6 if quick else 20)
            paths.append({"model": model["name"], "precision": "bf16+channels_last", **r})
            print(f"{model['name']:<44} before {r['before']['img_per_s_median']:7.0f} img/s, now "
                  f"{r['lossless']['img_per_s_median']:7.0f} img/s (median of {r['rounds']} steps each, in turns): "
                  f"{r['speedup_median']:.2f}x (best steps: {r['speedup_best']:.2f}x); torch.compile "
                  f"{r['compiled']['img_per_s_median']:7.0f} img/s, {r['compiled_vs_lossless_median']:.2f}x the "
                  f"eager step", file=sys.stderr)
    result = {
        "benchmark": "train", "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": cpu_name(mark_isa=True), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "ceiling_bf16_flops": ceiling_bf16, "ceiling_fp32_flops": ceiling_fp32, "ceilings": ceilings,
        "records": records, "step_paths": paths,
    }
    path = Path(out or f"benchmarks/results/train-{device.type}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    result["written_to"] = str(path)
    return result


# ------------------------------------------------------------------------- scoring a pool
class _RandomLogits(torch.nn.Module):
    """Stands in for a classifier over a huge pool: fresh random logits per batch."""

    def __init__(self, classes: int):
        super().__init__()
        self.classes = classes

    def forward(self, x):
        return torch.randn(len(x), self.classes)


def run_score_bench(out: str | None = None, images: int = 20000, pool: int = 512000, classes: int = 800) -> dict:
    """(1) scoring throughput against forward-only inference of the ``cpu`` profile's classifier;
    (2) the extra memory of scoring + selecting from a ``pool`` x ``classes`` pool."""
    import tracemalloc
    from .evaluate import score
    from .finetune import Classifier
    from .pseudo import select_balanced, select_global
    device = torch.device("cpu")
    cfg = config_mod.load_profile("cpu")
    torch.manual_seed(0)
    backbone = build_backbone(cfg["backbone"], in_channels=1, width=cfg["width"], maxpool=cfg["maxpool"])
    model = Classifier(backbone, 10, Augmenter([], [0.5], [0.25])).to(memory_format=torch.channels_last).eval()
    data = np.random.default_rng(0).integers(0, 256, (images, 28, 28, 1), dtype=np.uint8)

    def forward_only():
        with torch.no_grad():
            for s in range(0, images, 512):
                batch = torch.from_numpy(data[s:s + 512])
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    model(model.augmenter.plain(batch))
    rates = {}
    for name, fn in (("forward_only", forward_only),
                     ("score", lambda: score(model, data, model.augmenter.plain, device, torch.bfloat16))):
        fn()
        times = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        rates[name] = images / statistics.median(times)
    tracemalloc.start()
    fake = np.zeros((pool, 1, 1, 1), dtype=np.uint8)
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    s = score(_RandomLogits(classes), fake, lambda b: b, device, None, batch_size=512)
    k = int(0.03 * pool)
    chosen = [select_global(s.confidence, k), select_balanced(s.confidence, s.prediction, k, classes)]
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    result = {"benchmark": "score", "images": images, "img_per_s": rates,
              "score_vs_forward": rates["score"] / rates["forward_only"],
              "pool": pool, "classes": classes, "selection_peak_mb": peak / 2**20,
              "full_probability_matrix_mb": pool * classes * 4 / 2**20, "selected": [len(c) for c in chosen],
              "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    return _write_result(result, out or "benchmarks/results/score-cpu.json")


def run_kmeans_bench(out: str | None = None, points: int = 70_000, dim: int = 512, clusters: int = 800,
                     seed: int = 0) -> dict:
    """Active learning's clustering at the paper's scale (section 3.6): ``points`` candidate
    embeddings of ``dim`` features into ``clusters`` clusters, scikit-learn's ``KMeans`` (one
    initialisation) against ``MiniBatchKMeans``, wall time and inertia; plus the paper's whole
    selection (margin ranking of a 512,000-image pool, k-means, 16 per cluster) on synthetic
    margins. The points are drawn around ``clusters`` centres, as class embeddings are."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    from .active import select
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (clusters, dim)).astype(np.float32)
    x = (centres[rng.integers(0, clusters, points)] + rng.normal(0, 0.7, (points, dim))).astype(np.float32)
    rows = []
    from .active import kmeans
    runs_ = [("KMeans (k-means++ on all points)", lambda: KMeans(n_clusters=clusters, random_state=seed, n_init=1).fit(x)),
             ("MiniBatchKMeans (k-means++ on all points)",
              lambda: MiniBatchKMeans(n_clusters=clusters, random_state=seed, n_init=3, batch_size=4096).fit(x)),
             ("lossless.active.kmeans: KMeans, seeds from a 10,000-point sample", lambda: kmeans(x, clusters, seed)),
             ("lossless.active.kmeans: MiniBatchKMeans, seeds from a sample", lambda: kmeans(x, clusters, seed, True))]
    for name, fit in runs_:
        t = time.perf_counter()
        got = fit()
        seconds = time.perf_counter() - t
        if isinstance(got, tuple):
            labels, centre = got
            inertia, iterations = float(((x - centre[labels]) ** 2).sum()), None
        else:
            inertia, iterations = float(got.inertia_), int(got.n_iter_)
        rows.append({"method": name, "seconds": round(seconds, 2), "inertia": inertia, "iterations": iterations})
        print(f"lossless bench kmeans: {name}, {points} x {dim} -> {clusters}: {rows[-1]['seconds']} s",
              file=sys.stderr)
    pool_margin = rng.random(512_000).astype(np.float32)
    t = time.perf_counter()
    budget = min(12_800, clusters * 16, points // 2)   # the paper: 16 x 800 = 12,800
    sel = select("margin-kmeans", budget, seed, margin=pool_margin, features=lambda pos: x[:len(pos)],
                 candidates=points, clusters=clusters, quota=16, minibatch=True)
    whole = time.perf_counter() - t
    result = {"benchmark": "kmeans", "points": points, "dim": dim, "clusters": clusters, "runs": rows,
              "paper_selection_seconds (minibatch)": round(whole, 2), "requested": int(len(sel.positions)),
              "threads": torch.get_num_threads(), "cpu": cpu_name(),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    return _write_result(result, out or "benchmarks/results/kmeans-cpu.json")


def cpu_name(mark_isa: bool = False) -> str:
    """The processor's model name (from /proc/cpuinfo where there is one); with ``mark_isa``,
    the matrix units its numbers depend on appended: " (AMX)", " (AVX-512 BF16)" or " (AVX2,
    no bf16)" (the cpu profile trains in bf16 on the first two, in fp32 on the last: another
    kernel family, and about 1.8 times the pretraining minutes on 2-core EPYCs)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine() or "unknown"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.processor() or "unknown")
    if not mark_isa:
        return name
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    mark = ("AMX" if "amx_bf16" in flags else "AVX-512 BF16" if "avx512_bf16" in flags
            else "AVX2, no bf16" if "avx2" in flags else None)
    return name + (f" ({mark})" if mark else "")


def _write_result(result: dict, out: str) -> dict:
    """The benchmark's JSON at ``out``; the result, with ``written_to``."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    result["written_to"] = str(path)
    return result


# ------------------------------------------------------------------------- the four methods
def run_methods_bench(device_name: str = "auto", out: str | None = None, quick: bool = False,
                      names=None, profile: str = "cpu") -> dict:
    """One training step of each self-supervised method on the same backbone (the ``profile``'s,
    at its image size, with its method settings), bf16 + channels_last where the device has it:
    images per second, GFLOP per image, MFU, and each method's rate over Barlow Twins' measured
    in the same run (the methods add only a head and a loss, so the ratios should be near 1).
    The precision is the engine's ``auto`` (fp32 on a CPU without native bf16); ``quick`` also
    measures the ceiling on a smaller product."""
    from . import methods
    from .engine import resolve_device, resolve_precision
    device = resolve_device(device_name)
    dtype = resolve_precision("auto", device) or torch.float32
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    cfg = config_mod.load_profile(profile)
    names = list(names or methods.METHODS)
    native = {"fashion-mnist": (28, 1), "synthetic": (cfg["synthetic_size"], cfg["synthetic_channels"])}
    size, channels = native.get(cfg["dataset"], (96, 3))
    size = cfg.get("image_size") or size
    ceiling = matmul_ceiling(device, dtype, **({"n": 1024, "repeats": 2} if quick else {}))["best"]
    batch, steps = cfg["ssl_batch_size"] if device.type == "cuda" else 256, (3 if quick else 10)
    records = []
    for name in names:
        method = methods.get(name)
        torch.manual_seed(0)
        backbone = build_backbone(cfg["backbone"], in_channels=channels, width=cfg["width"],
                                  layer4_stride=cfg["layer4_stride"], image_size=size, maxpool=cfg["maxpool"])
        aug = Augmenter(method.views(cfg, size), [0.5] * channels, [0.25] * channels)
        task = method.build(cfg, backbone, aug, 100).to(device).to(memory_format=torch.channels_last)
        r = measure_task_step(task, size, channels, precision, device, batch, steps, warmup=2)
        rec = {"method": name, "backbone": f"{cfg['backbone']} w{cfg['width']:g}", "resolution": size,
               "precision": f"{precision}+channels_last", **r, "gflop_per_img": r["flops_per_img"] / 1e9,
               "mfu": r["img_per_s"] * r["flops_per_img"] / ceiling}
        records.append(rec)
        print(f"{name:<8} {rec['img_per_s']:9.1f} img/s  {rec['gflop_per_img']:.3f} GFLOP/img  "
              f"mfu {rec['mfu']:.1%}", file=sys.stderr)
    base = next((r["img_per_s"] for r in records if r["method"] == "barlow"), None)
    for r in records:
        r["vs_barlow"] = r["img_per_s"] / base if base else None
    result = {"benchmark": "methods", "profile": profile, "device": str(device), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "cpu": cpu_name() if device.type == "cpu" else str(device),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "ceiling_flops": ceiling, "ceiling_precision": precision, "batch_size": batch,
              "records": records}
    return _write_result(result, out or f"benchmarks/results/methods-{device.type}.json")
