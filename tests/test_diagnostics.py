"""scripts/diagnose_icarl.py: phase-0-only runs under schedule variants, stored and cached as runs."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("diagnose_icarl", ROOT / "scripts" / "diagnose_icarl.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_variants_parse_and_bad_ones_name_the_syntax():
    mod = _script()
    assert mod.parse_variant("icarl") == ("icarl", {})
    assert mod.parse_variant("icarl:lr=2.0,epochs=60") == ("icarl", {"lr_override": 2.0, "epochs_override": 60})
    with pytest.raises(SystemExit, match="method\\[:knob=value"):
        mod.parse_variant("icarl:momentum=0.5")


def test_phase0_runs_are_stored_with_their_overrides_and_then_loaded(tmp_path, capsys, monkeypatch):
    mod = _script()
    argv = ["--dataset", "synthetic", "--profile", "smoke", "--device", "cpu", "--results-dir", str(tmp_path),
            "--variant", "icarl:lr=0.5,epochs=1", "--variant", "lwf:epochs=1"]
    assert mod.main(argv) == 0
    dirs = sorted((tmp_path / "diagnostics" / "icarl_phase0").iterdir())
    assert [d.name.split("-")[1] for d in dirs] == ["icarl", "lwf"]
    cfg = json.loads((dirs[0] / "config.json").read_text())
    assert (cfg["lr_override"], cfg["schedule"]["lr"], cfg["schedule"]["base_epochs"], cfg["last_phase"]) == (
        0.5, 0.5, 1, 0)
    assert len(json.loads((dirs[0] / "metrics.json").read_text())["per_phase"]) == 1  # phase 0 only
    first = capsys.readouterr().out.splitlines()
    assert first[2].startswith("| icarl:lr=0.5,epochs=1 | 0.5 | 1 | ") and first[3].startswith("| lwf:epochs=1 | 0.05 | 1 | ")

    import mnemonics_lib.trainer as trainer

    monkeypatch.setattr(trainer, "run_incremental", lambda *a, **k: pytest.fail("a cached variant was recomputed"))
    assert mod.main(argv) == 0
    assert capsys.readouterr().out.splitlines() == first
