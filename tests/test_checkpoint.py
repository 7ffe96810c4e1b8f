"""Checkpoints: RNG streams continue identically after save -> load -> restore."""

import random

import numpy as np
import pytest
import torch

from mnemonics_lib.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def _draws(np_gens, torch_gen):
    """A few draws from every stream a run uses."""
    return {
        "python": [random.random() for _ in range(3)] + [random.gauss(0, 1)],
        "numpy": np.random.rand(3).tolist() + [np.random.randn()],
        "torch": torch.rand(3).tolist(),
        **{name: g.random(3).tolist() for name, g in np_gens.items()},
        "torch_gen": torch.rand(3, generator=torch_gen).tolist(),
    }


def test_rng_round_trip_through_weights_only_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np_gens = {
        "pcg": np.random.default_rng(4),  # 128-bit integer state
        "philox": np.random.Generator(np.random.Philox(5)),  # uint64 array state
        "mt": np.random.Generator(np.random.MT19937(6)),  # uint32 array state
    }
    torch_gen = torch.Generator().manual_seed(7)
    random.gauss(0, 1)  # leaves a cached gauss_next in the python state
    np.random.randn()  # leaves a cached gaussian in numpy's legacy state

    gens = {**np_gens, "torch_gen": torch_gen}
    save_checkpoint(tmp_path / "ck.pt", {"rng": capture_rng_state(gens)})
    expected = _draws(np_gens, torch_gen)

    # Disturb every stream, then restore from disk into fresh generator objects.
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    fresh_np = {
        "pcg": np.random.default_rng(0),
        "philox": np.random.Generator(np.random.Philox(0)),
        "mt": np.random.Generator(np.random.MT19937(0)),
    }
    fresh_torch = torch.Generator()
    state = load_checkpoint(tmp_path / "ck.pt")
    restore_rng_state(state["rng"], {**fresh_np, "torch_gen": fresh_torch})
    assert _draws(fresh_np, fresh_torch) == expected


def test_restore_names_missing_generator(tmp_path):
    save_checkpoint(tmp_path / "ck.pt", {"rng": capture_rng_state()})
    state = load_checkpoint(tmp_path / "ck.pt")
    with pytest.raises(KeyError, match="data_order"):
        restore_rng_state(state["rng"], {"data_order": np.random.default_rng(0)})


def test_state_round_trip_nested(tmp_path):
    state = {
        "phase": 3,
        "lr": 0.1,
        "method": "lucir",
        "model": {"w": torch.arange(6.0).reshape(2, 3)},
        "exemplars": [torch.tensor([1, 2]), {"ids": torch.tensor([5])}],
    }
    save_checkpoint(tmp_path / "ck.pt", state)
    got = load_checkpoint(tmp_path / "ck.pt")
    assert (got["phase"], got["lr"], got["method"]) == (3, 0.1, "lucir")
    assert torch.equal(got["model"]["w"], state["model"]["w"])
    assert torch.equal(got["exemplars"][1]["ids"], torch.tensor([5]))


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"phase": 1})
    save_checkpoint(path, {"phase": 2})
    assert load_checkpoint(path)["phase"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_failed_write_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"phase": 1})
    with pytest.raises(Exception):
        save_checkpoint(path, {"bad": lambda: None})  # lambdas cannot be pickled
    assert load_checkpoint(path)["phase"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_truncated_file_raises_naming_it(tmp_path):
    path = tmp_path / "phase-02.pt"
    save_checkpoint(path, {"w": torch.zeros(1000)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="phase-02.pt"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
