"""Plain-text tables from stored results, for the book and the command line (no plotting here)."""
from __future__ import annotations

import json
from pathlib import Path


def bench_table(path: str | Path) -> str:
    """A Markdown table of a ``lossless bench train`` JSON file."""
    result = json.loads(Path(path).read_text())
    lines = [f"Measured {result['time']} on `{result['device']}` ({result['threads']} threads, torch "
             f"{result['torch']}); matmul ceiling bf16 {result['ceiling_bf16_flops'] / 1e9:,.0f} GFLOP/s, "
             f"fp32 {result['ceiling_fp32_flops'] / 1e9:,.0f} GFLOP/s.", "",
             "| model | px | precision | pipeline | img/s | GFLOP/img | MFU (bf16 ceiling) | vs authors |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in result["records"]:
        speed = f"{r['speedup_vs_authors']:.1f}x" if r.get("speedup_vs_authors") else ""
        pipe = "authors' (PIL, workers)" if r["pipeline"].startswith("authors") else "lossless (batched)"
        lines.append(f"| {r['model']} | {r['resolution']} | {r['precision']} | {pipe} | {r['img_per_s']:,.1f} | "
                     f"{r['gflop_per_img']:.3f} | {r['mfu']:.1%} | {speed} |")
    return "\n".join(lines)
