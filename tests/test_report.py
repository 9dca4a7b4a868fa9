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


def test_stage_times_sum_training_seconds_by_stage(tmp_path):
    from lossless import report

    def run(name, seconds, **extra):
        d = tmp_path / name
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps({"train_seconds": seconds, **extra}))
    run("pretrain-barlow-aaa", 600, epochs=18)
    run("pretrain-barlow-bbb", 120, epochs=3)
    run("pretrain-byol-ccc", 180, epochs=3)
    run("finetune-barlow-ddd", 30)
    run("finetune-barlow-eee", 30)
    run("pseudo-global-fff/round1", 60)
    run("pseudo-global-fff/round2", 90)
    (tmp_path / "pseudo-global-fff" / "result.json").write_text(json.dumps({"rounds": []}))  # no seconds
    (tmp_path / "claims-ggg").mkdir()
    (tmp_path / "claims-ggg" / "result.json").write_text("not json")                           # skipped
    rows = {r["stage"]: (r["runs"], round(r["minutes"], 6)) for r in report.stage_times(tmp_path)}
    assert rows == {"pretraining (barlow, 18 epochs)": (1, 10.0), "pretraining (barlow, 3 epochs)": (1, 2.0),
                    "pretraining (byol, 3 epochs)": (1, 3.0), "fine-tuning (pretrained backbone)": (2, 1.0),
                    "pseudo-label rounds (global)": (2, 2.5)}
    minutes = [r["minutes"] for r in report.stage_times(tmp_path)]
    assert minutes == sorted(minutes, reverse=True)             # largest first


def test_a_record_names_the_matrix_units_its_numbers_came_from(monkeypatch):
    """The processor a record names says which kernels made its numbers: bf16 on AMX or
    AVX-512 BF16, fp32 on AVX2 alone (another kernel family, and 2-3 times the minutes)."""
    from lossless import bench
    for flags, mark in (("fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile", "(AMX)"),
                        ("fpu avx2 avx512f avx512_bf16", "(AVX-512 BF16)"),
                        ("fpu avx2 fma avx512f", "(AVX2, no bf16)")):
        text = f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n"
        monkeypatch.setattr(bench, "Path", lambda p, t=text: type("P", (), {"read_text": lambda self: t})())
        assert bench.cpu_name(mark_isa=True) == f"Some CPU {mark}", flags
        assert bench.cpu_name() == "Some CPU"
