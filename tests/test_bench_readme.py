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
    assert set(blocks) == {"speed", "step-profile", "folder-bench"}
    assert blocks["folder-bench"].startswith("No record yet")
    assert blocks["speed"].splitlines()[0] == "| measure | target | CPU |"
    assert "1 torch thread(s)" in blocks["speed"]


def test_folder_bench_table_shows_the_newest_record_per_device():
    def rec(ratio: float, commit: str, training=None) -> dict:
        size = {"crop": 64, "cache_build_images_per_s": 1300.0,
                "train": {"imagefolder_images_per_s": 1000.0, "study_images_per_s": 1000.0 * ratio,
                          "ratio_vs_imagefolder": ratio, "ratio_first_epoch": 0.5},
                "eval": {"ratio_vs_imagefolder": 4.0}}
        if training:
            size["training"] = training
        return {"schema": br.FOLDER_SCHEMA, "dataset": "caltech101_jpeg", "workers": 2, "repeats": 3,
                "device": {"cpu_count": 2, "load_avg_at_start": [0.5, 0.4, 0.3], "gpu": None},
                "provenance": {"commit": commit}, "sizes": {"quick": size}}
    old, new = rec(1.5, "aaaaaaaaaaaa"), rec(3.25, "bbbbbbbbbbbb")
    gpu = rec(9.0, "cccccccccccc", {"end_to_end_images_per_s": 5000.0, "input_share_of_step": 0.1,
                                    "device": "cuda"})
    gpu["device"]["gpu"] = "NVIDIA H100 80GB HBM3"
    lines = br.folder_bench_table([("1.json", old), ("2.json", new), ("3.json", gpu)]).splitlines()
    assert lines[2] == "| CPU | 64 px | 1000 | 3250 | **3.25x** | 0.50x | 4.00x | 1300 | not measured |"
    assert lines[3] == "| H100 | 64 px | 1000 | 9000 | **9.00x** | 0.50x | 4.00x | 1300 | 5000 on cuda (10%) |"
    assert "`2.json`" in lines[5] and "bbbbbbbb" in lines[5] and "load average 0.50" in lines[5]
