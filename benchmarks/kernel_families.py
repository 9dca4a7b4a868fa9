"""Which environment variables change the CPU kernels' numbers on this machine, and by how much.

The classifier head's margins on a pool of the cpu profile's size (58,680 rows of 128 standardised
features, a two-layer head at a trained head's confidence) are computed in a fresh process under
each setting and compared with the default's: bit for bit (a hash), and by the largest
difference. A setting that changes the numbers is a second kernel family that ``make test``
can run the numerically sensitive checks under (``tests/conftest.py``: ``OTHER_KERNELS``).

    .venv/bin/python benchmarks/kernel_families.py   # writes benchmarks/results/kernel-families.json
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {
    "default": {},
    "ATEN_CPU_CAPABILITY=default": {"ATEN_CPU_CAPABILITY": "default"},
    "MKL_CBWR=COMPATIBLE": {"MKL_CBWR": "COMPATIBLE"},
    "ONEDNN_MAX_CPU_ISA=AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "MKL_ENABLE_INSTRUCTIONS=AVX2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE": {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"},
}

CHILD = """
import sys, numpy as np, torch
from lossless.experiments.active import head_scores
from lossless.models import ClassifierHead
torch.manual_seed(0)
x = np.random.default_rng(0).standard_normal((58680, 128)).astype(np.float32)
head = ClassifierHead(128, 10)
with torch.no_grad():
    for p in head.parameters():
        p.mul_(8.0)                       # a trained head's confidence: median margin near 0.2
np.save(sys.argv[1], head_scores(head, x).margin)
print(torch.backends.cpu.get_cpu_capability())
"""


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    import numpy as np
    out = Path(__file__).parent / "results"
    tmp = out / ".kernel-families"
    tmp.mkdir(parents=True, exist_ok=True)
    margins, rows = {}, []
    for name, env in SETTINGS.items():
        f = tmp / f"{len(margins)}.npy"
        cap = subprocess.run([sys.executable, "-c", CHILD, str(f)], env={**os.environ, **env}, check=True,
                             capture_output=True, text=True).stdout.strip()
        margins[name] = np.load(f)
        f.unlink()
        d = np.abs(margins[name] - margins["default"])
        rows.append({"setting": name, "aten_capability": cap, "changes_numbers": bool(d.any()),
                     "max_abs_margin_difference": float(d.max()), "images_over_1e-6": int((d > 1e-6).sum()),
                     "images": int(len(d))})
        print(rows[-1])
    tmp.rmdir()
    flags = Path("/proc/cpuinfo").read_text()
    record = {"time": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_name(),
              "isa": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f" {f}" in flags],
              "command": "python benchmarks/kernel_families.py", "rows": rows}
    (out / "kernel-families.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
