import json

from lossless.report import bench_table


def test_bench_table_lists_every_record(tmp_path):
    path = tmp_path / "b.json"
    rec = {"model": "m", "resolution": 28, "precision": "fp32", "pipeline": "lossless (batched)",
           "img_per_s": 1234.5, "gflop_per_img": 0.125, "mfu": 0.25}
    path.write_text(json.dumps({"time": "t", "device": "cpu", "threads": 2, "torch": "x",
                                "ceiling_bf16_flops": 4e11, "ceiling_fp32_flops": 2e11,
                                "records": [rec, dict(rec, precision="bf16", speedup_vs_authors=2.0)]}))
    table = bench_table(path)
    assert "bf16 400 GFLOP/s" in table
    rows = [line for line in table.splitlines() if line.startswith("| m |")]
    assert len(rows) == 2 and "1,234.5" in rows[0] and "25.0%" in rows[0] and rows[1].endswith("2.0x |")
