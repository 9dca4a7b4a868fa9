"""Plain-text tables from stored results, for the book and the command line (no plotting here)."""
from __future__ import annotations

import json
from pathlib import Path


def bench_rows(result: dict) -> list[dict]:
    """One row per record of a ``lossless bench train`` result (for ``tables.show``)."""
    rows = []
    for r in result["records"]:
        rows.append({"model": r["model"], "px": r["resolution"], "precision": r["precision"],
                     "pipeline": "authors' (PIL, workers)" if r["pipeline"].startswith("authors")
                     else "lossless (batched)",
                     "img/s": r["img_per_s"], "GFLOP/img": r["gflop_per_img"], "MFU (bf16 ceiling)": r["mfu"],
                     "vs authors": f"{r['speedup_vs_authors']:.1f}x" if r.get("speedup_vs_authors") else None})
    return rows


def bench_header(result: dict) -> str:
    """Where and when a benchmark ran, and the ceilings its MFU is measured against."""
    return (f"Measured {result['time']} on {result['device'].upper()} ({result['threads']} threads, torch "
            f"{result['torch']}); matmul ceiling bf16 {result['ceiling_bf16_flops'] / 1e9:,.0f} GFLOP/s, "
            f"fp32 {result['ceiling_fp32_flops'] / 1e9:,.0f} GFLOP/s.")


def methods_rows(result: dict) -> list[dict]:
    """One row per method of a ``lossless bench train --method all`` result."""
    return [{"method": r["method"], "backbone": r["backbone"], "px": r["resolution"], "precision": r["precision"],
             "img/s": r["img_per_s"], "GFLOP/img": r["gflop_per_img"], "MFU": r["mfu"],
             "vs Barlow Twins": f"{r['vs_barlow']:.2f}x"} for r in result["records"]]


def methods_header(result: dict) -> str:
    """Where and when the methods' benchmark ran, and its batch."""
    return (f"Measured {result['time']} on {result['device'].upper()} ({result.get('cpu', '')}, {result['threads']} "
            f"threads, torch {result['torch']}), batch {result['batch_size']}; MFU against the matmul ceiling "
            f"in {result.get('ceiling_precision', 'bf16')}, "
            f"{result.get('ceiling_flops', result.get('ceiling_bf16_flops', 0)) / 1e9:,.0f} GFLOP/s.")


def bench_table(path: str | Path) -> str:
    """A Markdown table of a ``lossless bench train`` JSON file (for the terminal and READMEs)."""
    result = json.loads(Path(path).read_text())
    lines = [bench_header(result), "",
             "| model | px | precision | pipeline | img/s | GFLOP/img | MFU (bf16 ceiling) | vs authors |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in bench_rows(result):
        lines.append(f"| {r['model']} | {r['px']} | {r['precision']} | {r['pipeline']} | {r['img/s']:,.1f} | "
                     f"{r['GFLOP/img']:.3f} | {r['MFU (bf16 ceiling)']:.1%} | {r['vs authors'] or ''} |")
    return "\n".join(lines)


STAGES = {"pretrain": "pretraining", "finetune-barlow": "fine-tuning (pretrained backbone)",
          "finetune-random": "supervised only (random start)", "pseudo-global": "pseudo-label rounds (global)",
          "pseudo-balanced": "pseudo-label rounds (balanced)", "pseudo-none": "the rounds without pseudo-labels (control)",
          "pseudo-threshold": "pseudo-label rounds (threshold)", "pseudo-gradual": "pseudo-label rounds (gradual)",
          "fixmatch": "FixMatch"}


def stage_times(root: str | Path) -> list[dict]:
    """Training minutes by stage, summed over every run folder under ``root`` (``runs/``) whose
    ``result.json`` records ``train_seconds`` (a pseudo-label run's rounds are its subfolders).
    One row per stage (pretraining by method), largest first; it counts training loops only,
    not evaluation, probes, scoring or frozen features."""
    rows: dict[str, dict] = {}
    for result in sorted(Path(root).glob("*/result.json")) + sorted(Path(root).glob("*/round*/result.json")):
        try:
            r = json.loads(result.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        seconds = r.get("train_seconds") if isinstance(r, dict) else None
        if not isinstance(seconds, (int, float)):
            continue
        top = result.parent if result.parent.parent == Path(root) else result.parent.parent
        prefix = top.name.rsplit("-", 1)[0]
        if prefix.startswith("pretrain-"):
            n = r.get("epochs")
            stage = f"pretraining ({prefix[len('pretrain-'):]}, {n} epoch{'' if n == 1 else 's'})"
        else:
            stage = STAGES.get(prefix, prefix)
        row = rows.setdefault(stage, {"stage": stage, "runs": 0, "minutes": 0.0})
        row["runs"] += 1
        row["minutes"] += seconds / 60
    return sorted(rows.values(), key=lambda r: -r["minutes"])
