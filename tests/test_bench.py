"""Tests for tools.bench at tiny sizes: the record's structure, the fairness of the
comparison (same data on both sides) and that the fast paths agree with their references.
Timings are never asserted: they depend on the machine and on whatever else runs on it."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from mnemonics_lib import protocol
from mnemonics_lib.config import make_config
from mnemonics_lib.datasets import make_synthetic
from mnemonics_lib.evaluation import class_means
from mnemonics_lib.memory import herding_selection
from mnemonics_lib.pipeline import DeviceImages, Normaliser
from tools import bench

CPU = torch.device("cpu")
TINY = bench.BenchSizes(
    n_classes=4, per_class_train=8, per_class_test=2, depth=8, width=4, batch=8, train_steps=2,
    warmup_steps=1, repeats=2, eval_images=16, eval_batch=8, herding_n=40, herding_d=8, herding_m=5,
    means_classes=3, means_per_class=4, mn_classes=2, mn_per_class=2, mn_real_batch=4,
    mn_inner_steps=(1, 2), mn_outer_iters=1, mn_steps=1, mn_repeats=2, matmul_n=32, matmul_reps=1,
    workers=0,  # in-process loading: the DataLoader path without paying for worker start-up
)


@pytest.fixture(scope="module")
def record() -> dict:
    return bench.run_benchmark(CPU, sizes=TINY)


def test_record_structure(record):
    assert record["schema"] == bench.SCHEMA
    assert set(record["stages"]) == {"train", "eval", "herding", "class_means", "mnemonics", "flops"}
    assert record["sizes"]["batch"] == TINY.batch and record["device"]["type"] == "cpu"
    for stage in ("train", "eval"):
        for side in ("ours", "reference"):
            r = record["stages"][stage][side]
            assert len(r["seconds"]) == len(r["images"]) == TINY.repeats
            assert all(s > 0 for s in r["seconds"])
    # 32 training images, batch 8: every timed call of 2 steps sees 16 images on both sides
    assert record["stages"]["train"]["ours"]["images"] == [16, 16]
    assert record["stages"]["train"]["reference"]["images"] == [16, 16]
    assert record["stages"]["eval"]["ours"]["images"] == [TINY.eval_images] * TINY.repeats
    assert record["stages"]["eval"]["reference"]["images"] == [TINY.eval_images] * TINY.repeats
    mn = record["stages"]["mnemonics"]
    assert {"outer_k1_s", "outer_k2_s", "outer_k1_over_step", "outer_k2_over_step"} <= set(mn)
    assert mn["exemplars"] == TINY.mn_classes * TINY.mn_per_class
    expected = {"train_images_per_s_ratio", "eval_images_per_s_ratio", "herding_speedup",
                "class_means_speedup", "train_step_fraction_of_peak", "mnemonics_outer_k1_over_step",
                "mnemonics_outer_k2_over_step",
                "train_images_per_s_ratio_ours_bf16"}  # the CPU bf16 variant; eager CPU steps here (conftest)
    assert set(record["ratios"]) == expected
    assert all(math.isfinite(v) and v > 0 for v in record["ratios"].values())
    json.dumps(record)  # plain JSON types only


def test_fast_paths_agree_with_references_in_record(record):
    assert record["stages"]["herding"]["same_indices"] is True
    assert record["stages"]["class_means"]["max_abs_diff"] < 1e-5
    assert record["stages"]["class_means"]["images"] == TINY.means_classes * TINY.means_per_class


def test_flops_ratio_is_consistent(record):
    f = record["stages"]["flops"]
    assert f["flops_per_step"] > 0 and f["matmul_dtype"] == "float32"
    step = float(np.median(f["step_s"]))
    assert f["achieved_gflops"] == pytest.approx(f["flops_per_step"] / step / 1e9)
    assert f["fraction_of_peak"] == pytest.approx(f["achieved_gflops"] / f["peak_gflops"])


@pytest.mark.parametrize("n,d,m", [(60, 16, 10), (7, 4, 20), (200, 64, 20)])
def test_herding_selection_matches_reference(n, d, m):
    feats = torch.randn(n, d, generator=torch.Generator().manual_seed(n))
    assert herding_selection(feats, m).tolist() == bench.herding_reference(feats, m)


def test_class_means_match_per_class_loop():
    torch.manual_seed(0)
    model = bench.bench_model(TINY, 5, CPU, False).eval()
    x = torch.randn(13, 3, 32, 32)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 4, 4, 4, 4])  # class 3 has no image
    ours, ref = class_means(model, x, y, 5), bench.class_means_reference(model, x, y, 5)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.count_nonzero(ours[3]) == 0 and torch.count_nonzero(ref[3]) == 0


def test_both_input_paths_see_the_same_pixels():
    """Without augmentation the reference (PIL -> ToTensor -> Normalize) and ours (resident
    uint8 -> Normaliser) must give the same tensor, or the comparison is not like for like."""
    data = make_synthetic(3, 4, 1)
    loader = bench.reference_loader(data.x_train, data.y_train, data.mean, data.std, False, 12, 0, CPU)
    ref_x, ref_y = next(iter(loader))
    norm = Normaliser.create(data.mean, data.std, CPU)
    ours = norm(DeviceImages(data.x_train, data.y_train, CPU).x)
    assert torch.allclose(ref_x, ours, atol=1e-5)
    assert ref_y.tolist() == data.y_train.tolist()


def test_interleave_rotates_the_order():
    calls: list[str] = []
    runners = {n: (lambda n=n: calls.append(n) or len(calls)) for n in ("a", "b", "c")}
    out = bench.interleave(runners, 3, CPU)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert [r for _, r in out["a"]] == [1, 6, 8]


def test_count_train_flops_of_a_linear_layer():
    # forward 2*B*I*O; backward only the weight gradient (the input needs none): 2*B*I*O again
    model = nn.Linear(10, 5, bias=False)
    x, y = torch.randn(4, 10), torch.tensor([0, 1, 2, 3])
    assert bench.count_train_flops(model, x, y, amp=False) == 2 * (2 * 4 * 10 * 5)


def test_write_record_names_and_provenance(tmp_path, record):
    path = bench.write_record(record, tmp_path, CPU)
    assert re.fullmatch(r"\d{8}T\d{6}Z-cpu-\d+t\.json", path.name)
    saved = json.loads(path.read_text())
    assert {"git_commit", "torch", "device"} <= set(saved["provenance"])
    assert saved["ratios"] == pytest.approx(record["ratios"])
    explicit = bench.write_record(record, tmp_path / "x.json", CPU)
    assert explicit == tmp_path / "x.json" and explicit.exists()


def test_format_table_lists_every_stage(record):
    table = bench.format_table(record)
    for word in ("train", "eval", "herding", "class_means", "outer_k1", "outer_k2", "GFLOP/s"):
        assert word in table


def test_project_full_run_arithmetic():
    sizes = bench.ProjectionSizes(n_classes=10, per_class_train=30, phases=5, memory_per_class=4,
                                  paper_epochs=10)
    plan = protocol.phase_plan(make_config(dataset="synthetic", synthetic_classes=10, phases=5))
    # phase 1 holds 1 new class x 30 + 4 x 5 old exemplars = 50 images: 5 steps of batch 10
    p = bench.project_full_run(plan, sizes, batch=10, epoch0_s=2.0, inc_epoch_s=1.0, inc_images=50,
                               eval_s=0.6, eval_seen=6, exemplar_s_per_class=0.01)
    assert p["t_step_incremental_s"] == pytest.approx(0.2)
    assert p["incremental_images"] == [50, 54, 58, 62, 66]
    steps = [5, 6, 6, 7, 7]
    assert p["train_s"] == pytest.approx(10 * (2.0 + sum(0.2 * s for s in steps)))
    evals = 0.1 * sum(plan.seen_classes(q) for q in range(plan.num_phases))
    assert p["total_s"] == pytest.approx(p["train_s"] + evals + 0.01 * 10)


def test_paper_projection_dry_run():
    sizes = bench.ProjectionSizes(n_classes=4, per_class_train=10, per_class_test=2, phases=2,
                                  memory_per_class=2, epochs_measured=2, profile="smoke")
    r = bench.paper_projection(CPU, sizes, amp=False)
    assert r["phase0_images"] == 20 and r["phase1_images"] == 10 + 2 * 2
    assert len(r["phase0_epoch_s"]) == len(r["phase1_epoch_s"]) == 2
    assert r["projection"]["total_s"] > r["projection"]["train_s"] > 0
    assert 0 <= r["phase1_acc_cnn"] <= 100


def test_format_table_accepts_a_subset_of_stages(record):
    # --stages train,herding,flops once crashed here on the GPU (KeyError 'eval')
    sub = {**record, "stages": {k: v for k, v in record["stages"].items() if k in ("train", "herding", "flops")}}
    table = bench.format_table(sub)
    assert "herding" in table and "eval" not in table


def test_train_stage_times_the_compiled_cpu_step_beside_the_eager_one(monkeypatch, sound_cpu_compile):
    """With compilation on (the trainer's CPU default), ``ours`` is the compiled path: its full
    batches ran compiled, the eager step is timed beside it and compilation is reported apart."""
    monkeypatch.setenv("MNEMONICS_CPU_COMPILE", "1")
    data = bench.bench_data(TINY)
    res = bench.bench_train(data, TINY, CPU, amp=False, cpu_variants=False)
    assert res["ours_step"] == "compiled backbone"
    assert res["ours_step_stats"]["compiled"] > 0
    assert set(res["variant_ratios"]) == {"ours_eager"}
    assert res["ours"]["images"] == res["ours_eager"]["images"] == res["reference"]["images"]
    assert res["compile_s"] == pytest.approx(res["warmup_s"]["ours"] - res["warmup_s"]["ours_eager"])


# ------------------------------------------------------------------ the step profile
def test_kernel_kinds_of_typical_cuda_and_cpu_names():
    from tools.step_profile import kernel_kind

    assert kernel_kind("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc") == "convolution"
    assert kernel_kind("void cudnn::bn_fw_tr_1C11_kernel_NCHW<float>") == "batch norm"
    assert kernel_kind("aten::native_batch_norm_backward") == "batch norm"
    assert kernel_kind("void at::native::(anonymous)::multi_tensor_apply_kernel<...>") == "optimiser"
    assert kernel_kind("triton_poi_fused_add_relu_3") == "fused (triton)"
    assert kernel_kind("void at::native::vectorized_elementwise_kernel<4, ...>") == "elementwise"
    assert kernel_kind("something_unheard_of") == "other"


def test_kernel_summary_is_exact():
    from tools.step_profile import summarise_kernels

    events = [("conv_fprop", 300.0, 1), ("conv_fprop", 300.0, 1), ("bn_fw_tr", 200.0, 2), ("odd", 200.0, 1)]
    s = summarise_kernels(events, steps=2, top=2)
    assert s["kernels_per_step"] == 2.5 and s["kernel_ms_per_step"] == 0.5
    assert s["by_kind"] == {"convolution": {"ms_per_step": 0.3, "share": 0.6},
                            "batch norm": {"ms_per_step": 0.1, "share": 0.2},
                            "other": {"ms_per_step": 0.1, "share": 0.2}}
    assert [(t["name"], t["calls_per_step"]) for t in s["top"]] == [("conv_fprop", 1.0), ("bn_fw_tr", 1.0)]


def test_step_profile_runs_the_trainers_step_on_cpu():
    from tools.step_profile import format_profile, profile_training_step

    r = profile_training_step("cpu", bench.QUICK_SIZES)
    v = r["variants"]["nchw"]
    assert r["amp"] is False and v["steps"] == bench.QUICK_SIZES.train_steps
    assert abs(sum(d["share"] for d in v["by_kind"].values()) - 1) < 1e-9
    assert v["by_kind"]["convolution"]["ms_per_step"] > 0 and v["kernels_per_step"] > 10
    assert "nchw:" in format_profile(r)
