"""The probe that decides whether compiled CPU training may be used on a host: a crash, an error,
a result outside tolerance and a missing result are each unsound; the verdict is cached per host key."""
from __future__ import annotations

import json

import pytest

from mnemonics_lib import compile_probe
from mnemonics_lib.compile_probe import TOLERANCE, Verdict, cpu_compile_verdict, judge, run_probe


def _prints(diff) -> str:
    return f"import json; print(json.dumps({{'max_abs_diff': {diff!r}}}))"


def test_a_child_killed_by_a_signal_is_unsound_and_named():
    v = run_probe(1, "import os, sys; print('double free or corruption (!prev)', file=sys.stderr); sys.stderr.flush(); os.abort()")
    assert not v.sound and "SIGABRT" in v.reason and "double free" in v.reason


def test_an_error_in_the_child_is_unsound():
    v = run_probe(1, "raise RuntimeError('no C++ compiler')")
    assert not v.sound and "exit 1" in v.reason and "no C++ compiler" in v.reason


@pytest.mark.parametrize("diff, sound", [(0.0, True), (TOLERANCE, True), (TOLERANCE * 1.01, False),
                                         (0.0113, False), (float("nan"), False)])
def test_the_result_is_judged_against_the_eager_tolerance(diff, sound):
    assert judge(0, json.dumps({"max_abs_diff": diff}) + "\n", "").sound is sound


def test_no_result_is_unsound():
    assert not judge(0, "", "").sound and not judge(0, "warming up\n", "").sound


def test_the_child_receives_the_thread_count():
    v = run_probe(3, "import sys, json; print(json.dumps({'max_abs_diff': 0.0 if sys.argv[1] == '3' else 1.0}))")
    assert v.sound


def test_the_verdict_is_probed_once_per_host_key_and_kept_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("MNEMONICS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(compile_probe, "_VERDICTS", {})
    calls = []
    real = compile_probe.run_probe
    monkeypatch.setattr(compile_probe, "run_probe", lambda t, p: calls.append(t) or real(t, p))
    program = _prints(0.5)
    first = cpu_compile_verdict(2, program)
    assert not first.sound and calls == [2]
    (cached,) = (tmp_path / "compile_probe").glob("*.json")
    assert Verdict(**json.loads(cached.read_text())) == first
    monkeypatch.setattr(compile_probe, "_VERDICTS", {})  # a new process: read from disk, no probe
    assert cpu_compile_verdict(2, program) == first and calls == [2]
    cpu_compile_verdict(1, program)  # another thread count is another key
    assert calls == [2, 1] and len(list((tmp_path / "compile_probe").glob("*.json"))) == 2
