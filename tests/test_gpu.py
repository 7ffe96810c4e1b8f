"""GPU path checks (``pytest -m gpu``; skipped without CUDA).

Neither speed-up of the GPU path may cost accuracy: bf16 autocast against float32, and the
replayed CUDA graphs of the training step (``mnemonics_lib.steps``) against eager steps.

bf16 autocast must not cost accuracy: a short LUCIR run on the synthetic set in bf16 reaches the
accuracy of the same run in float32 within the noise between seeds. bf16 changes the rounding of
every activation, so the two runs follow different trajectories much as two seeds do; the right
yardstick is therefore the seed-to-seed spread, not a fixed epsilon. Over ``SEEDS`` seeds per
precision the mean average incremental accuracy (AIA, CNN) may differ by at most
``max(FLOOR, 3 * standard error of the difference of the two means)``: a 3-sigma test, with a
floor because three seeds estimate the spread coarsely (the synthetic test set holds 20 images
per class, so one phase's accuracy alone moves by ~2.5 points per binomial standard error).
"""
from __future__ import annotations

import statistics

import pytest
import torch

from mnemonics_lib.config import make_config
from mnemonics_lib.steps import TOTALS as GRAPH_TOTALS
from mnemonics_lib.trainer import run_incremental
from tools import bench

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SEEDS = (0, 1, 2, 3)
EPOCHS = 10  # epochs_override for every phase of the smoke profile: seconds per run on a GPU
FLOOR = 5.0  # accuracy points
CHANCE_AIA = 100 * (1 / 10 + 1 / 12 + 1 / 14 + 1 / 16 + 1 / 18 + 1 / 20) / 6  # 20 classes, B10, 5 phases


# first: seconds, where the accuracy tests below take minutes on a shared GPU
def test_benchmark_runs_on_cuda_at_tiny_sizes():
    sizes = bench.BenchSizes(n_classes=4, per_class_train=16, per_class_test=2, depth=8, width=8,
                             batch=16, train_steps=2, warmup_steps=1, repeats=2, eval_images=32,
                             eval_batch=16, means_classes=4, means_per_class=4, mn_classes=2,
                             mn_per_class=2, mn_real_batch=8, mn_outer_iters=1, mn_steps=1,
                             mn_repeats=2, matmul_n=256, matmul_reps=2, workers=2)
    r = bench.run_benchmark("cuda", sizes=sizes)
    assert r["stages"]["train"]["ours_precision"] == "bf16 autocast"
    assert r["stages"]["train"]["ours_step"] == "cuda graph"
    assert r["stages"]["train"]["ours_step_stats"]["replayed"] >= 1
    assert r["stages"]["train"]["ours_compiled_step_stats"]["replayed"] >= 1  # the candidate lever
    assert {"ours_eager", "ours_compiled", "ours_nchw", "ours_compiled_nchw"} <= set(r["stages"]["train"]["variant_ratios"])
    assert r["stages"]["flops"]["matmul_dtype"] == "bfloat16"
    assert r["stages"]["herding"]["same_indices"] and len(r["stages"]["herding"]["ours_device_s"]) == 2
    assert r["stages"]["class_means"]["max_abs_diff"] < 1e-4
    assert r["stages"]["train"]["ours"]["images"] == r["stages"]["train"]["reference"]["images"] == [32, 32]


def test_step_profile_on_cuda_at_tiny_sizes():
    """The kernel profile reads CUDA kernels (not host operators) for all three variants."""
    from tools.step_profile import profile_training_step

    sizes = bench.BenchSizes(n_classes=4, per_class_train=16, per_class_test=2, depth=8, width=8,
                             batch=16, train_steps=2, warmup_steps=1)
    r = profile_training_step("cuda", sizes)
    assert set(r["variants"]) == {"channels_last", "nchw", "compiled_channels_last"} and r["amp"] is True
    for name, v in r["variants"].items():
        assert v["by_kind"]["convolution"]["ms_per_step"] > 0, name
        assert v["graphed_ms_per_step"] > 0 and v["kernels_per_step"] > 20, name
        # the fixed-batch replay skips the batch preparation, so it cannot cost more than the whole
        assert 0 < v["step_alone_ms_per_step"] and v["batch_prep_share"] < 1, name
        assert not any(t["name"].startswith("aten::") for t in v["top"]), name  # kernels, not operators


def test_compiled_backbones_inside_the_graphed_step_train_like_the_graphed_step(monkeypatch):
    """MNEMONICS_CUDA_COMPILE=1: the compiled kernels are captured and replayed, the smaller
    last batch runs eagerly, and the parameters follow the uncompiled graphed step.

    In true fp32: with TF32 convolutions (cuDNN's default) the two paths round differently and,
    after these 12 SGD steps, differ by up to 2.0e-3 (first conv weight); without TF32 by at
    most 5.3e-4 (both measured on an H100), inside the 1e-3 tolerance below."""
    import copy

    import torch.nn.functional as F

    from mnemonics_lib.backbones import build_net
    from mnemonics_lib.steps import GraphStep, compiled_backbones

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    ref = build_net("resnet", 10, depth=8, width=8).cuda().to(memory_format=torch.channels_last)
    model = copy.deepcopy(ref)
    g = torch.Generator(device="cuda").manual_seed(0)
    batches = [(torch.randn(n, 3, 32, 32, device="cuda", generator=g).contiguous(memory_format=torch.channels_last),
                torch.randint(0, 10, (n,), device="cuda", generator=g)) for n in (32, 32, 32, 32, 32, 7)]

    def train(net, compiled):
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        step = GraphStep(opt, lambda x, y: F.cross_entropy(net(x), y), False, "cuda", 32, compiled=compiled)
        with compiled_backbones([net], compiled):
            net.train()
            for _ in range(2):
                for x, y in batches:
                    step(x, y)
        torch.cuda.synchronize()
        return step.stats

    plain, fused = train(ref, False), train(model, True)
    print(f"graphed: {plain}; compiled inside the graph: {fused}")
    assert fused == plain and fused["replayed"] >= 5
    for (name, a), b in zip(ref.state_dict().items(), model.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3, msg=name)  # fp32, fused kernels


def test_replayed_hypergradients_match_eager_ones_on_cuda(monkeypatch):
    """The mnemonics outer loop with its hypergradients replayed from a CUDA graph moves the
    exemplars as the eager loop does (up to cuDNN's floating-point nondeterminism)."""
    from mnemonics_lib.backbones import build_net
    from mnemonics_lib.bilevel import BilevelSettings, optimise_exemplars

    torch.manual_seed(0)
    net = build_net("resnet", 5, depth=8, width=8, cosine=True).cuda().eval()
    g = torch.Generator().manual_seed(1)
    ex_x = torch.randn(20, 3, 32, 32, generator=g).cuda()
    ex_y = (torch.arange(20) % 5).cuda()
    real_x = torch.randn(64, 3, 32, 32, generator=g).cuda()
    real_y = (torch.arange(64) % 5).cuda()
    s = BilevelSettings(inner_steps=2, inner_lr=0.01, outer_iters=8, outer_lr=10.0, old_lr=10.0, real_batch=32)
    run = lambda: optimise_exemplars(net, ex_x, ex_y, real_x, real_y, s,  # noqa: E731
                                     generator=torch.Generator().manual_seed(0))
    before = dict(GRAPH_TOTALS)
    graphed = run()
    used = {k: GRAPH_TOTALS[k] - before.get(k, 0) for k in GRAPH_TOTALS}
    monkeypatch.setenv("MNEMONICS_CUDA_GRAPHS", "0")
    eager = run()
    moved = (eager - ex_x).norm()
    print(f"hypergradient graph use: {used}; |graphed - eager| / |eager - start| = "
          f"{float((graphed - eager).norm() / moved):.2e}")
    assert used.get("hypergradient_failed", 0) == 0 and used.get("hypergradient_replayed", 0) == 7
    assert float(moved) > 0 and float((graphed - eager).norm()) <= 1e-3 * float(moved)


# (amp, seed, MNEMONICS_CUDA_GRAPHS, MNEMONICS_CUDA_COMPILE) -> (AIA, graph counters it moved):
# the float32 graphed runs are the reference of three tests, so each is computed once per pytest run
_RUNS: dict[tuple, tuple[float, dict[str, int]]] = {}


def _aia(amp: bool, seed: int, graphs: bool = True, compiled: bool = False) -> float:
    return _run(amp, seed, graphs, compiled)[0]


def _run(amp: bool, seed: int, graphs: bool = True, compiled: bool = False) -> tuple[float, dict[str, int]]:
    key = (amp, seed, graphs, compiled)
    if key not in _RUNS:
        cfg = make_config(dataset="synthetic", profile="smoke", method="lucir", amp=amp, seed=seed,
                          epochs_override=EPOCHS)
        env = {"MNEMONICS_CUDA_GRAPHS": "1" if graphs else "0", "MNEMONICS_CUDA_COMPILE": "1" if compiled else "0"}
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            before = dict(GRAPH_TOTALS)
            aia = run_incremental(cfg, "cuda", checkpoints=False, share_phase0=False)["aia_cnn"]
            used = {k: GRAPH_TOTALS[k] - before.get(k, 0) for k in ("replayed", "captures", "failed")}
        _RUNS[key] = (aia, used)
    return _RUNS[key]


def _same_within_seed_noise(a: list[float], b: list[float], what: str) -> None:
    se = (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5
    tol = max(FLOOR, 3 * se)
    diff = statistics.mean(a) - statistics.mean(b)
    print(f"AIA {what}: {a} vs {b}: difference {diff:+.2f}, tolerance {tol:.2f}")
    # both must actually learn, or equal accuracies would mean nothing
    assert min(statistics.mean(a), statistics.mean(b)) > 2 * CHANCE_AIA
    assert abs(diff) <= tol


def test_bf16_matches_float32_within_seed_noise():
    _same_within_seed_noise([_aia(True, s) for s in SEEDS], [_aia(False, s) for s in SEEDS], "bf16 vs fp32")


def test_cuda_graph_steps_match_eager_steps_within_seed_noise():
    graphed = [_aia(False, s) for s in SEEDS]
    used = {k: sum(_run(False, s)[1][k] for s in SEEDS) for k in ("replayed", "captures", "failed")}
    eager = [_aia(False, s, graphs=False) for s in SEEDS]
    print(f"graph steps: {used}")
    # every LUCIR phase (old model, distillation, masked margin ranking) captured without a fallback
    assert used["failed"] == 0 and used["replayed"] > used["captures"] > 0
    _same_within_seed_noise(graphed, eager, "cuda graphs vs eager")


def test_compiled_backbones_match_uncompiled_within_seed_noise():
    """MNEMONICS_CUDA_COMPILE=1 (inductor kernels captured in the graphs) may only change speed."""
    # the earlier tests compiled other networks through the same forward; without a reset their
    # variants count toward torch's recompile limit (8), which a run of this whole file reaches
    torch._dynamo.reset()
    compiled = [_aia(False, s, compiled=True) for s in SEEDS]
    used = {k: sum(_run(False, s, compiled=True)[1][k] for s in SEEDS) for k in ("replayed", "failed")}
    print(f"compiled graph steps: {used}")
    assert used["failed"] == 0 and used["replayed"] > 0
    _same_within_seed_noise(compiled, [_aia(False, s) for s in SEEDS], "compiled vs uncompiled")
