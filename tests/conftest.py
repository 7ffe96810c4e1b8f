"""Shared fixtures: checkpoints go to a temporary folder, never into the repository's checkpoints/."""
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _checkpoints_in_tmp(tmp_path_factory):
    """Every test (and the trainer's shared phase-0 cache) writes checkpoints under a tmp dir.

    Tests that need a private checkpoint root monkeypatch MNEMONICS_CHECKPOINTS again.
    """
    mp = pytest.MonkeyPatch()
    mp.setenv("MNEMONICS_CHECKPOINTS", str(tmp_path_factory.mktemp("checkpoints")))
    yield
    mp.undo()


@pytest.fixture(scope="session", autouse=True)
def _eager_cpu_steps():
    """The trainer compiles its backbones on CPU (steps.compile_enabled): worth it for a
    10-minute run, not for the suite's hundreds of seconds-long ones (each new network shape
    compiles anew). Set in the environment, so notebook and study subprocesses inherit it;
    the tests of compilation itself (tests/test_steps.py, the bench's compiled train stage)
    compile explicitly or switch it on again."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MNEMONICS_CPU_COMPILE", "0")
    yield
    mp.undo()


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """The test machines are 2 shared cores: intra-op threads spinning against another process
    make a tiny network's step ~30x slower than one thread does."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session", autouse=True)
def _in_process_runs():
    """Grids run in the test's own process (the ``debug`` executor) unless a test asks for another:
    a monkeypatched ``study.compute_task`` must be the one that runs. tests/test_dispatch.py runs
    the local executor (a process per run) and the Slurm submission explicitly."""
    import os

    mp = pytest.MonkeyPatch()
    mp.setenv("MNEMONICS_EXECUTOR", os.environ.get("MNEMONICS_EXECUTOR_TESTS", "debug"))
    yield
    mp.undo()


@pytest.fixture
def sound_cpu_compile():
    """Skip a test that trains through inductor-compiled CPU code where that code is not sound
    on this host (compile_probe: it crashes or trains differently from eager on some CPUs); the
    skip reason is the probe's finding. The probe itself is tested in tests/test_compile_probe.py."""
    from mnemonics_lib.compile_probe import cpu_compile_verdict

    verdict = cpu_compile_verdict()
    if not verdict.sound:
        pytest.skip(f"compiled CPU training is unsound on this host: {verdict.reason}")
