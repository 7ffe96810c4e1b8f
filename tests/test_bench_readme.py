"""The README's speed tables: exact cells from fake benchmark records, and which record a column uses."""
from __future__ import annotations

import json

from tools import bench_readme as br
from tools.bench import SCHEMA


def full(device: str, commit: str, train_ratio: float, *, threads: int = 1, drop: str | None = None) -> dict:
    stages = {
        "train": {"ratio": train_ratio, "ours_step": "cuda graph", "ours_precision": "bf16 autocast",
                  "ours": {"median_images_per_s": 1000.0 * train_ratio},
                  "reference": {"median_images_per_s": 1000.0},
                  "variant_ratios": {"ours_compiled": train_ratio + 1, "ours_eager": 1.0}},
        "eval": {"ratio": 2.0, "ours": {"median_images_per_s": 4000.0}, "reference": {"median_images_per_s": 2000.0}},
        "herding": {"speedup": 25.0, "ours_s": [0.002, 0.004, 0.003], "reference_s": [0.075, 0.075, 0.075]},
        "class_means": {"speedup": 2.0, "ours_s": [0.01], "reference_s": [0.02]},
        "mnemonics": {"outer_k1_over_step": 18.04, "outer_k3_over_step": 51.26},
        "flops": {"fraction_of_peak": 0.4, "achieved_gflops": 40.0, "peak_gflops": 100.0, "matmul_dtype": "float32"},
    }
    if drop:
        del stages[drop]
    return {"schema": SCHEMA, "created_utc": f"2026-11-26T00:00:00+00:00", "stages": stages,
            "device": {"name": device, "torch_threads": threads}, "provenance": {"git_commit": commit + "0" * 33}}


def projection(device: str, seconds: dict[str, float]) -> dict:
    return {"schema": br.PROJECTION_SCHEMA, "provenance": {"git_commit": "abcdef1"},
            "runs": {k: {"device": {"name": device}, "projection": {"total_s": s}} for k, s in seconds.items()}}


def test_each_column_is_the_newest_complete_record_of_its_device_kind():
    recs = [("20261101T000000Z-h100.json", full("NVIDIA H100 80GB HBM3", "1111111", 3.0)),
            ("20261102T000000Z-h100.json", full("NVIDIA H100 80GB HBM3", "2222222", 5.5)),
            ("20261103T000000Z-h100.json", full("NVIDIA H100 80GB HBM3", "3333333", 9.0, drop="mnemonics")),
            ("20261104T000000Z-cpu-1t.json", full("cpu x1 threads", "4444444", 1.2)),
            ("20261105T000000Z-h100-paper-projection.json",
             projection("NVIDIA H100 80GB HBM3", {"bf16": 540.0, "fp32": 660.0}))]
    lines = br.speed_table(recs).splitlines()
    assert lines[0] == "| measure | target | CPU | H100 |"
    assert lines[2] == ("| training images/s, ours / reference (ResNet-32, batch 128) | >= 1.3x CPU, >= 5x GPU | "
                        "**1.20x** (1,200 vs 1,000 img/s; cuda graph, bf16 autocast); variants: compiled 2.20x, "
                        "eager 1.00x; >= 1.3x not met | **5.50x** (5,500 vs 1,000 img/s; cuda graph, bf16 autocast); "
                        "variants: compiled 6.50x, eager 1.00x; >= 5x met |")
    assert lines[3] == ("| herding, vectorised / per-sample loop (same indices) | >= 20x | "
                        "**25x** (3.0 vs 75.0 ms); >= 20x met | **25x** (3.0 vs 75.0 ms); >= 20x met |")
    assert lines[6] == ("| one mnemonics outer iteration, in training steps |  | 18.0 (K = 1), 51.3 (K = 3) | "
                        "18.0 (K = 1), 51.3 (K = 3) |")
    assert lines[7].endswith("| **40.0%** (40.0 / 100.0 GFLOP/s, float32 matmul); >= 50% not met | "
                             "**40.0%** (40.0 / 100.0 GFLOP/s, float32 matmul); no GPU target |")
    assert lines[8] == ("| full CIFAR-100 B50 N = 10 paper-schedule LUCIR run | <= 10 min (H100) |  | "
                        "projected 9.0 min bf16 (540 s), 11.0 min fp32 (660 s); <= 10 min met |")
    # the incomplete newer H100 record is not used; the column names the one it is
    assert "- H100: `20261102T000000Z-h100.json` (commit 2222222" in lines[11]
    assert "3333333" not in "\n".join(lines)
    assert lines[10].startswith("- CPU: `20261104T000000Z-cpu-1t.json` (commit 4444444")


def test_step_profile_ratios_use_the_same_device_kinds_reference():
    prof = {"schema": br.STEP_PROFILE_SCHEMA, "batch": 128, "provenance": {"device": "NVIDIA H100 80GB HBM3",
                                                                         "git_commit": "f22d42b"},
            "variants": {"channels_last": {"kernels_per_step": 600.0, "kernel_ms_per_step": 2.5,
                                           "graphed_ms_per_step": 3.2, "step_alone_ms_per_step": 3.0}}}
    ref = full("NVIDIA H100 80GB HBM3", "2222222", 5.0)
    ref["stages"]["train"]["reference"]["median_images_per_s"] = 12800.0  # 10 ms per 128-image step
    lines = br.step_profile_table([("a.json", ref), ("b-step-profile.json", prof)]).splitlines()
    assert lines[2] == "| H100 | channels_last | 600 | 2.50 ms | 3.20 ms | 3.00 ms | 4.00x, 3.12x |"
    assert lines[4].endswith("reference step 10.0 ms from `a.json`")


def test_speed_blocks_read_the_bench_folder(tmp_path):
    (tmp_path / "20261101T000000Z-cpu-1t.json").write_text(json.dumps(full("cpu x1 threads", "4444444", 1.5)))
    (tmp_path / "notes.log").write_text("not a record")
    blocks = br.speed_blocks(tmp_path)
    assert set(blocks) == {"speed", "step-profile"}
    assert blocks["speed"].splitlines()[0] == "| measure | target | CPU |"
    assert "1 torch thread(s)" in blocks["speed"]
