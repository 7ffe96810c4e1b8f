"""Where and with what a result was computed: git commit and dirty flag, library versions, device,
host. The trainer records it for every stretch of phases a run ran (``legs``); the results ledger
stores it in each run's ``env.json``.
"""
from __future__ import annotations

import os
import platform
import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _git(*args: str) -> str | None:
    """Run git in this package's folder; None when git or the repository is unavailable."""
    try:
        out = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), *args],
            capture_output=True, text=True, timeout=10, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def _device_name() -> str:
    import torch

    from .compile_probe import cpu_model

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else cpu_model()


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def leg_provenance() -> dict[str, Any]:
    """The device and commit of one stretch of a run's phases (an entry of its ``legs``), and when it began."""
    prov = provenance(check_dirty=False)  # the run's own env.json has the dirty flag
    keep = ("device", "git_commit", "cpu_compile", "cuda_graphs", "cuda_compile")
    return {**{k: prov[k] for k in keep if k in prov}, "started_utc": utc_now()}


def provenance(check_dirty: bool = True) -> dict[str, Any]:
    """Where and with what a result was computed: commit, versions, device, host.

    ``git_dirty`` ignores ``results/`` and ``data/``: the study writes there itself,
    which would otherwise mark every run after the first one dirty. ``check_dirty=False`` skips
    that ``git status`` (``git_dirty`` is then None).
    """
    commit = _git("rev-parse", "HEAD")
    status = (_git("status", "--porcelain", "--", ":(top,exclude)results", ":(top,exclude)data")
              if check_dirty else None)
    import torch  # local: the ledger and the report import this module without needing torch

    from .steps import compile_enabled, cpu_compile_requested

    extra = {}
    if os.environ.get("MNEMONICS_GIT_COMMIT"):
        # a copy of a checkout (e.g. a working tree shipped to a remote GPU machine): its .git may
        # be missing or stale (HEAD an older commit, so git would call the copy dirty), so the commit
        # named by the launcher wins; whether the copy had uncommitted changes is not checkable (None)
        extra["git_commit_source"] = "MNEMONICS_GIT_COMMIT (set by the launcher of a copied checkout)"
        if commit and commit.strip() != os.environ["MNEMONICS_GIT_COMMIT"]:
            extra["git_head_in_copy"] = commit.strip()
        commit, status = os.environ["MNEMONICS_GIT_COMMIT"], None
    if torch.cuda.is_available():  # how training steps ran there (same numerics either way)
        extra["cuda_graphs"] = os.environ.get("MNEMONICS_CUDA_GRAPHS", "1") != "0"
        extra["cuda_compile"] = compile_enabled(torch.device("cuda"))
    else:  # compiled CPU backbones (steps.compile_enabled): fused kernels, same arithmetic
        extra["cpu_compile"] = compile_enabled(torch.device("cpu"))
        extra["torch_threads"] = torch.get_num_threads()  # compiled code's soundness can depend on it
        if cpu_compile_requested():
            from .compile_probe import cpu_compile_verdict

            extra["cpu_compile_probe"] = cpu_compile_verdict().reason
    return {
        "git_commit": commit.strip() if commit else None,
        "git_dirty": bool(status.strip()) if status is not None else None,
        **extra,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "torchvision": _version("torchvision"),
        "cuda": torch.version.cuda,
        "device": _device_name(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
    }
