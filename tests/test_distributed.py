"""Data parallelism (mnemonics_lib.distributed): the shard rule, synchronised BatchNorm, and a
2-process gloo run launched with torchrun that must compute what one process computes.

The 2-process runs and their single-process references train the smoke network on the synthetic
set (every method, phases 0-1, 2 epochs; sizes chosen so that a last batch is uneven and one with
a single sample leaves rank 1 an empty slice). What may differ is float rounding only: the
gradient of a global batch is summed in two halves and all-reduced, SyncBatchNorm's statistics
are two-pass sums over two shards. Measured on this CPU: max |w_ddp - w_single| ~1e-6 after the two
phases (TOLERANCE below leaves ~50x headroom), accuracies identical.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
# float32 rounding of differently ordered sums, amplified over ~20 SGD steps; see the docstring
TOLERANCE = 5e-5

SPECS = [dict(method=m, dataset="synthetic", synthetic_classes=4, phases=2, profile="smoke", seed=3,
              epochs_override=2, memory_per_class=11, train_per_class=43, last_phase=1)
         for m in ("lwf", "icarl", "bic", "lucir")]


# ------------------------------------------------------------------ the shard rule
@pytest.mark.parametrize("n, world", [(64, 2), (65, 2), (1, 2), (37, 8), (3, 8), (128, 3), (0, 2)])
def test_shards_are_disjoint_cover_the_batch_and_concatenate_to_it(n, world):
    from mnemonics_lib.distributed import shard_bounds

    bounds = [shard_bounds(n, r, world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # contiguous, disjoint, in order
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert [list(range(lo, hi)) for lo, hi in bounds] == [list(t) for t in torch.tensor_split(torch.arange(n), world)]


@pytest.mark.parametrize("folder", [False, True])
def test_sharded_batches_concatenate_to_the_single_process_batches(folder):
    """Every rank's augmented slices, concatenated in rank order, are bit-identical to the
    single-process batches, and every rank leaves the generator in the same state."""
    from mnemonics_lib.pipeline import ResizedCropFlip, augmented_batches, make_generator

    g = torch.Generator().manual_seed(0)
    x = torch.randn(133, 3, 12, 12, generator=g)
    y = torch.arange(133) % 5
    aug = ResizedCropFlip(8) if folder else None
    pad = torch.zeros(1, 3, 1, 1)

    def epoch(shard=None, chunk=None):
        gen = make_generator(11, "cpu")
        out = list(augmented_batches(x, y, 32, gen, pad, augmenter=aug, shard=shard, chunk_images=chunk))
        return out, gen.get_state()

    for chunk in (None, 96):
        single, state = epoch(chunk=chunk)
        for world in (2, 3):
            ranks = [epoch((r, world), chunk) for r in range(world)]
            assert all(torch.equal(s, state) for _, s in ranks)
            for b, (xb, yb) in enumerate(single):
                assert torch.equal(torch.cat([r[0][b][0] for r in ranks]), xb)
                assert torch.equal(torch.cat([r[0][b][1] for r in ranks]), yb)
    assert [len(b[1]) for b in single] == [32, 32, 32, 32, 5]


# ------------------------------------------------------------------ the 2-process run
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_specs(specs: list[dict]) -> list[dict]:
    """Run each config (one process or under torchrun); the metrics and the final weights."""
    from mnemonics_lib import trainer
    from mnemonics_lib.config import make_config

    out = []
    for spec in specs:
        cfg = make_config(**spec)
        final: dict = {}
        metrics = trainer.run_incremental(
            cfg, "cpu", on_phase_end=lambda p, model, *a: final.update(
                {k: v.detach().clone() for k, v in model.state_dict().items()}))
        out.append({"metrics": metrics, "state": final})
    return out


def _accuracies(metrics: dict) -> list[tuple]:
    return [(r["acc_cnn"], r["acc_nme"], r["n_classes"]) for r in metrics["per_phase"]]


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


@pytest.mark.slow
def test_two_gloo_processes_compute_the_single_process_run(tmp_path, monkeypatch):
    spec_file, out_dir = tmp_path / "specs.json", tmp_path / "out"
    spec_file.write_text(json.dumps(SPECS))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MNEMONICS_CHECKPOINTS": str(tmp_path / "ck_ddp"),
           "MNEMONICS_CPU_COMPILE": "0", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), __file__, str(spec_file), str(out_dir)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    monkeypatch.setenv("MNEMONICS_CHECKPOINTS", str(tmp_path / "ck_single"))
    single = run_specs(SPECS)
    ranks = [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(2)]
    report = {}
    for i, spec in enumerate(SPECS):
        ref, ddp, other = single[i], ranks[0][i], ranks[1][i]
        assert _max_diff(ddp["state"], other["state"]) == 0.0  # the ranks agree exactly
        assert _accuracies(ddp["metrics"]) == _accuracies(ref["metrics"]), spec["method"]
        assert ddp["metrics"]["legs"][0]["world_size"] == 2 and "world_size" not in ref["metrics"]["legs"][0]
        report[spec["method"]] = _max_diff(ddp["state"], ref["state"])
    print("max |w_ddp - w_single|:", report)
    assert max(report.values()) < TOLERANCE, report
    assert not list((tmp_path / "ck_ddp" / "runs").glob("*/phase_*.pt"))  # finished runs clean up


def _worker(spec_file: str, out_dir: str) -> None:
    from mnemonics_lib import distributed

    distributed.init_from_env()
    torch.set_num_threads(1)
    try:
        res = run_specs(json.loads(Path(spec_file).read_text()))
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        torch.save(res, Path(out_dir) / f"rank{distributed.rank()}.pt")
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    _worker(*sys.argv[1:3])
