"""The training engine: herding, growing heads, the exemplar budget through real runs, the four
methods learning on the synthetic set, exact resume from a phase checkpoint, and the results
ledger with a real RunConfig."""
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from mnemonics_lib import protocol, trainer
from mnemonics_lib.backbones import CosineHead, LinearHead, build_net, head_sizes
from mnemonics_lib.config import ConfigError, make_config
from mnemonics_lib.memory import ExemplarMemory, herding_selection
from mnemonics_lib.methods import get_method
from mnemonics_study import results
from tools.bench import herding_reference

# Sized on 2 shared CPU cores: 8 synthetic classes, B4 + 2 phases of 2 classes, ResNet-8 width 8.
# Measured (seeds 0-4, 8/10/12/16 epochs): 10 epochs is the least that leaves every method above
# twice chance on old and new classes with some margin at seed 1 (lowest: iCaRL old 31%, BiC new
# 38%, threshold 25%); ~5 s of CPU per run.
EPOCHS = 10
SMALL = dict(dataset="synthetic", synthetic_classes=8, phases=2, profile="smoke", seed=1)


# ------------------------------------------------------------------ herding
@pytest.mark.parametrize("n, d, m", [(10, 4, 10), (50, 8, 20), (200, 16, 20), (37, 3, 50), (1, 5, 3)])
def test_herding_vectorised_equals_reference(n, d, m):
    g = torch.Generator().manual_seed(n * 1000 + d)
    feats = torch.randn(n, d, generator=g)
    fast = herding_selection(feats, m)
    ref = herding_reference(feats, m)
    assert fast.dtype == torch.long and len(ref) == min(m, n)
    assert fast.tolist() == ref
    assert len(set(ref)) == len(ref)  # a sample is chosen once


def test_herding_first_pick_and_ties():
    # the first pick is the sample closest to the class mean (normalised features)
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.1]])
    assert herding_selection(feats, 1).tolist() == [2]
    # duplicated rows tie: both implementations take the lowest index first
    g = torch.Generator().manual_seed(3)
    base = torch.randn(6, 4, generator=g)
    dup = torch.cat([base, base])
    assert herding_selection(dup, 12).tolist() == herding_reference(dup, 12)


# ------------------------------------------------------------------ growing heads
@pytest.mark.parametrize("head_cls", [LinearHead, CosineHead])
def test_head_growth_keeps_old_weights_and_logits(head_cls):
    torch.manual_seed(0)
    head = head_cls(16, 5)
    f = torch.randn(33, 16)
    w_old = head.weight().detach().clone()
    logits_old = head(f).detach().clone()
    head.grow(3)
    init = torch.randn(2, 16)
    head.grow(2, init)
    assert head.n_classes == 10 and [w.shape[0] for w in head.weights] == [5, 3, 2]
    assert torch.equal(head.weight()[:5], w_old)
    assert torch.equal(head.weight()[8:], init)
    logits = head(f).detach()
    assert logits.shape == (33, 10)
    # the weights are kept bit for bit (above); the logits go through a matmul of another width,
    # whose BLAS kernel may sum in another order: equal up to float rounding, not bit for bit
    torch.testing.assert_close(logits[:, :5], logits_old, rtol=0, atol=1e-6)


def test_net_growth_keeps_old_logits():
    torch.manual_seed(0)
    net = build_net("resnet", 4, depth=8, width=8, cosine=True).eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        before = net(x)
        net.head.grow(2)
        after = net(x)
    assert head_sizes(net) == [4, 2] and after.shape == (5, 6)
    assert torch.equal(after[:, :4], before)


# ------------------------------------------------------------------ the four methods, for real
# Memory modes alternate so that both are checked against the budget table through real runs.
METHOD_RUNS = {
    "lwf": dict(memory_mode="per_class", memory_per_class=20),
    "icarl": dict(memory_mode="fixed_total", memory_total=100),
    "bic": dict(memory_mode="fixed_total", memory_total=100),
    "lucir": dict(memory_mode="fixed_total", memory_total=100),
}


@pytest.fixture(scope="module", params=sorted(METHOD_RUNS))
def method_run(request):
    """One full 3-phase run per method, with what ``on_phase_end`` saw after every phase."""
    method = request.param
    cfg = make_config(method=method, epochs_override=EPOCHS, **SMALL, **METHOD_RUNS[method])
    seen = []

    def on_phase_end(phase, model, memory, data):
        seen.append({"phase": phase, "counts": memory.counts(), "len": len(memory),
                     "head": head_sizes(model), "w0": model.head.weights[0].detach().clone(),
                     "shapes": {c: tuple(v.shape) for c, v in memory.store.items()}})

    metrics = trainer.run_incremental(cfg, "cpu", checkpoints=False, on_phase_end=on_phase_end)
    return cfg, metrics, seen


def test_method_beats_chance_on_old_and_new(method_run):
    cfg, metrics, _ = method_run
    last = metrics["per_phase"][-1]
    assert last["n_classes"] == 8
    chance = 100 / last["n_classes"]
    assert last["acc_old"] > 2 * chance, f"{cfg.method}: old-class accuracy {last['acc_old']:.1f}%"
    assert last["acc_new"] > 2 * chance, f"{cfg.method}: new-class accuracy {last['acc_new']:.1f}%"
    assert metrics["per_phase"][0]["acc_cnn"] > 2 * 100 / 4  # phase 0 learned its 4 classes
    # herding moves no pixels, so its phases carry no exemplar_change record
    assert not any("exemplar_change" in p for p in metrics["per_phase"])


def test_memory_follows_the_budget_table(method_run):
    cfg, metrics, seen = method_run
    table = protocol.memory_budget_table(cfg)
    assert [s["phase"] for s in seen] == [0, 1, 2]
    for row, s, pp in zip(table, seen, metrics["per_phase"]):
        assert s["counts"] == {c: row["per_class"] for c in range(row["seen_classes"])}
        assert s["len"] == row["total"] == pp["memory_total"]
        assert all(shape == (row["per_class"], 3, 32, 32) for shape in s["shapes"].values())
    if cfg.memory_mode == "fixed_total":
        assert [r["per_class"] for r in table] == [25, 16, 12]  # 100 // 4, 100 // 6, 100 // 8
    else:
        assert [r["total"] for r in table] == [80, 120, 160]


def test_run_metrics_structure(method_run):
    cfg, metrics, seen = method_run
    assert [s["head"] for s in seen] == [[4], [4, 2], [4, 2, 2]]
    A = metrics["acc_matrix_cnn"]
    assert len(A) == 3 and all(len(r) == 3 for r in A)
    assert A[0][0] == metrics["per_phase"][0]["acc_cnn"]
    accs = [p["acc_cnn"] for p in metrics["per_phase"]]
    assert metrics["aia_cnn"] == pytest.approx(sum(accs) / 3)
    assert metrics["last_cnn"] == accs[-1]
    assert metrics["forgetting_cnn"] == pytest.approx(A[0][0] - A[2][0])
    if cfg.method == "lucir":  # LUCIR freezes the old class embeddings bit for bit
        assert torch.equal(seen[0]["w0"], seen[2]["w0"])


# ------------------------------------------------------------------ exact resume
def _comparable(metrics):
    """Everything but wall times, as canonical JSON (so that NaN equals NaN)."""
    out = {k: v for k, v in metrics.items() if k not in ("wall_s_total", "legs")}
    out["per_phase"] = [{k: v for k, v in r.items() if k != "wall_s"} for r in metrics["per_phase"]]
    return json.dumps(out, sort_keys=True)


@pytest.mark.parametrize("method", ["bic", "lucir"])  # BiC carries method state; LUCIR a cosine head
def test_resume_equals_uninterrupted(method, tmp_path, monkeypatch):
    cfg = make_config(method=method, dataset="synthetic", synthetic_classes=4, phases=2, profile="smoke",
                      epochs_override=1, memory_per_class=10)
    monkeypatch.setenv("MNEMONICS_CHECKPOINTS", str(tmp_path / "a"))
    with pytest.raises(trainer.Interrupted):
        trainer.run_incremental(cfg, "cpu", stop_after_phase=1)
    ck_dir = tmp_path / "a" / "runs" / cfg.config_hash()
    assert [p.name for p in ck_dir.glob("phase_*.pt")] == ["phase_001.pt"]
    # a resumed run starts in a fresh process: the global RNGs hold nothing of the interrupted run
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    phases_run, rng_resumed, rng_straight = [], {}, {}

    def record(into):
        return lambda p, *a: (phases_run.append(p), into.update({p: torch.get_rng_state()}))

    resumed = trainer.run_incremental(cfg, "cpu", on_phase_end=record(rng_resumed))
    assert phases_run == [2]  # really resumed, not recomputed
    assert list(ck_dir.glob("phase_*.pt")) == []  # cleaned up after the last phase

    monkeypatch.setenv("MNEMONICS_CHECKPOINTS", str(tmp_path / "b"))
    straight = trainer.run_incremental(cfg, "cpu", on_phase_end=record(rng_straight))
    assert _comparable(resumed) == _comparable(straight)
    # the global RNG (new head rows, augmentation) continues from the checkpoint, not from the
    # resuming process: after the resumed phase it stands where the uninterrupted run's does
    assert torch.equal(rng_resumed[2], rng_straight[2])
    assert len(resumed["per_phase"]) == 3
    # where each stretch of phases ran is kept through the checkpoint (provenance of mixed runs)
    assert [leg["first_phase"] for leg in resumed["legs"]] == [0, 2]
    assert [leg["first_phase"] for leg in straight["legs"]] == [0]
    assert {"device", "git_commit", "started_utc"} <= set(resumed["legs"][0])


def test_a_resumed_runs_legs_go_to_env_json_and_a_single_leg_is_not_repeated(tmp_path):
    cfg = make_config(method="icarl", epochs_override=2, **SMALL)
    legs = [{"first_phase": 0, "device": "cpu A", "git_commit": "a" * 40, "started_utc": "t0"},
            {"first_phase": 3, "device": "gpu B", "git_commit": "b" * 40, "started_utc": "t1"}]
    rec = results.run_or_load(cfg, lambda c: {"per_phase": [{"acc_cnn": 1.0}], "legs": legs}, tmp_path / "two")
    assert rec.env["legs"] == legs and "legs" not in rec.metrics
    assert "legs" not in json.loads((rec.path / "metrics.json").read_text())
    one = results.run_or_load(cfg, lambda c: {"per_phase": [{"acc_cnn": 1.0}], "legs": legs[:1]}, tmp_path / "one")
    assert "legs" not in one.env and "legs" not in one.metrics


# ------------------------------------------------------------------ the ledger with a real config
def test_run_or_load_never_loads_a_damaged_run(tmp_path):
    cfg = make_config(method="icarl", epochs_override=2, **SMALL)
    calls = []

    def compute(c):
        calls.append(c.config_hash())
        return {"per_phase": [{"phase": 0, "n_classes": 4, "acc_cnn": 50.0 + len(calls), "acc_nme": 40.0}],
                "aia_cnn": 50.0 + len(calls)}

    rec = results.run_or_load(cfg, compute, tmp_path)
    assert rec.path.name == results.run_dir_name(cfg) and rec.path.name.endswith(cfg.config_hash())
    stored = json.loads((rec.path / "config.json").read_text())
    assert stored["config_hash"] == cfg.config_hash() and stored["epochs_override"] == 2
    # a herding run stores no mnemonics settings: they do not change it, so they stay out of its hash
    assert stored["schedule"]["depth"] == 8 and stored["mnemonics"] is None
    assert results.run_or_load(cfg, compute, tmp_path).metrics["aia_cnn"] == 51.0 and len(calls) == 1

    # truncated metrics (a half-written file) -> moved aside, recomputed
    (rec.path / "metrics.json").write_text('{"per_phase": [')
    rec2 = results.run_or_load(cfg, compute, tmp_path)
    assert len(calls) == 2 and rec2.metrics["aia_cnn"] == 52.0
    # a missing file -> moved aside, recomputed
    os.remove(rec2.path / "env.json")
    assert results.run_or_load(cfg, compute, tmp_path).metrics["aia_cnn"] == 53.0
    # another config's run copied under this name -> not loaded
    other = cfg.replace(seed=cfg.seed + 1)
    other_rec = results.run_or_load(other, compute, tmp_path)
    assert len(calls) == 4
    final = tmp_path / "runs" / results.run_dir_name(cfg)
    for f in ("config.json", "metrics.json", "env.json"):
        (final / f).write_bytes((other_rec.path / f).read_bytes())
    assert results.run_or_load(cfg, compute, tmp_path).metrics["aia_cnn"] == 55.0
    aside = [p.name for p in (tmp_path / "runs").iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 3
    assert results.require_cached(cfg, tmp_path).metrics["aia_cnn"] == 55.0


def test_last_phase_truncates_a_run_to_its_first_phases(tmp_path, monkeypatch):
    """A sweep run cut after phase 1 is exactly the first two phases of the whole run."""
    full = make_config(method="lucir", dataset="synthetic", synthetic_classes=4, phases=2, profile="smoke",
                       epochs_override=1, memory_per_class=10)
    cut = full.replace(last_phase=1)
    assert "last_phase" not in full.to_dict()  # absent when unused: hashes of earlier runs hold
    assert cut.to_dict()["last_phase"] == 1 and cut.config_hash() != full.config_hash()
    monkeypatch.setenv("MNEMONICS_CHECKPOINTS", str(tmp_path))
    a = trainer.run_incremental(full, "cpu")
    b = trainer.run_incremental(cut, "cpu")
    assert [r["phase"] for r in b["per_phase"]] == [0, 1]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]  # noqa: E731
    assert strip(b["per_phase"]) == strip(a["per_phase"][:2])
    assert b["aia_cnn"] == pytest.approx((a["per_phase"][0]["acc_cnn"] + a["per_phase"][1]["acc_cnn"]) / 2)
    assert not list((tmp_path / "runs" / cut.config_hash()).glob("phase_*.pt"))  # complete: cleaned up


@pytest.mark.parametrize("bad", [-1, 3, 1.5])
def test_last_phase_outside_the_run_is_refused(bad):
    with pytest.raises(ConfigError, match="last_phase"):
        make_config(dataset="synthetic", synthetic_classes=4, phases=2, profile="smoke", last_phase=bad)


def test_train_per_class_caps_the_training_set_and_enters_hash_and_phase0_key():
    full = make_config(method="lucir", dataset="synthetic", synthetic_classes=4, phases=2, profile="smoke",
                       memory_per_class=5)
    cut = full.replace(train_per_class=7)
    assert "train_per_class" not in full.to_dict()  # absent when unused: hashes of earlier runs hold
    assert cut.to_dict()["train_per_class"] == 7 and cut.config_hash() != full.config_hash()
    lucir = get_method("lucir")
    assert trainer.phase0_key(full, lucir) != trainer.phase0_key(cut, lucir)
    a, b = trainer.prepare_data(full, torch.device("cpu")), trainer.prepare_data(cut, torch.device("cpu"))
    assert torch.bincount(b.train.y).tolist() == [7] * 4
    assert len(a.train) == 4 * 60 and torch.equal(a.test.y, b.test.y)


@pytest.mark.parametrize("bad, match", [(0, "positive integer"), (2.5, "positive integer"),
                                        (4, "below memory_per_class=5")])
def test_train_per_class_that_cannot_work_is_refused(bad, match):
    with pytest.raises(ConfigError, match=match):
        make_config(dataset="synthetic", synthetic_classes=4, phases=2, profile="smoke",
                    memory_per_class=5, train_per_class=bad)


def test_two_threads_and_an_odd_last_batch_train_on_cpu(tmp_path):
    """Regression: with the model in channels_last, torch 2.14's CPU weight gradient of the
    strided 1x1 shortcut convolution corrupted the heap (segfault / 'double free') when 2 threads
    met an odd batch size, which a phase's last batch often is. The smoke LwF run below crashed
    in phase 2 every time; the trainer keeps CPU models in NCHW since. In a subprocess, so that a
    regression fails this test instead of killing the test session."""
    import subprocess
    import sys
    import textwrap

    from mnemonics_lib.pipeline import preferred_memory_format

    assert preferred_memory_format("cpu") == torch.contiguous_format
    assert preferred_memory_format("cuda") == torch.channels_last
    code = textwrap.dedent("""
        import torch
        torch.set_num_threads(2)
        from mnemonics_lib.config import make_config
        from mnemonics_lib.trainer import run_incremental
        cfg = make_config(dataset="synthetic", profile="smoke", method="lwf", phases=2, seed=1993,
                          memory_per_class=5)
        print("AIA", run_incremental(cfg, "cpu", checkpoints=False, share_phase0=False)["aia_cnn"])
    """)
    env = {**os.environ, "MNEMONICS_CHECKPOINTS": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env,
                       cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, f"rc {r.returncode}: {r.stderr[-2000:]}"
    assert "AIA" in r.stdout
