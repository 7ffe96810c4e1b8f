"""Whether torch.compile's CPU code trains correctly on this host, checked before it trains anything.

Why: the compiled CPU step is only a faster way to run the same arithmetic, so it may be used
only where it gives the eager step's result. On some hosts it does not: with torch 2.14 on an
AMD EPYC (AVX2, no AVX-512) and one intra-op thread, the inductor-compiled backward of a small
ResNet corrupts the heap (``double free or corruption``, ``free(): invalid size``, segfaults)
within a few steps, with vectorisation off too (``cpp.simdlen=1``), while the forward alone,
and the ``aot_eager`` backend (same graphs, no generated C++) are fine; with two threads it does
not crash, but its vectorised kernels train to parameters far outside float noise of eager
training (scalar kernels, ``cpp.simdlen=1``, agree). So a compiled run on such a host cannot be
trusted, whether or not it finished, and the numbers can be wrong without any crash.

How: :func:`cpu_compile_verdict` trains a tiny ResNet a few SGD steps eagerly and compiled in a
child process (a crash must not take the caller with it), with the caller's thread count, and
compares the two results. The verdict is kept per process and on disk, keyed by everything it
depends on (torch version, CPU model, ISA, threads), so a host pays the probe (~30 s) once.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from .atomic import write_text_atomic

log = logging.getLogger(__name__)

#: The child's program: eager and compiled training of the same tiny net on the same batches; it
#: prints one JSON line with the largest parameter difference. Tolerance as tests/test_steps.py.
PROBE_PROGRAM = r"""
import copy, json, sys
import torch, torch.nn.functional as F
from mnemonics_lib.backbones import build_net
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
nets = [build_net("resnet", 5, depth=8, width=4)]
nets.append(copy.deepcopy(nets[0]))
nets[1].backbone.compile()
g = torch.Generator().manual_seed(0)
data = [(torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 5, (8,), generator=g)) for _ in range(6)]
for net in nets:
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for x, y in data:
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
diff = max((a - b).abs().max().item() for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values()))
print(json.dumps({"max_abs_diff": diff}))
"""

TOLERANCE = 1e-4


@dataclass(frozen=True)
class Verdict:
    sound: bool
    reason: str


_VERDICTS: dict[str, Verdict] = {}


def _cache_dir() -> Path:
    return Path(os.environ.get("MNEMONICS_CACHE_DIR", Path.home() / ".cache" / "mnemonics_study"))


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def host_key(threads: int) -> str:
    """What the verdict depends on: torch build, CPU model and ISA, intra-op threads."""
    import torch

    parts = [torch.__version__, cpu_model(), torch.backends.cpu.get_cpu_capability(), str(threads)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def judge(returncode: int, stdout: str, stderr: str) -> Verdict:
    """The verdict from the child's exit: a signal or an error is unsound, as is a result
    outside the eager one's float tolerance."""
    if returncode < 0:
        name = signal.Signals(-returncode).name
        tail = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith(" ")][-1:]
        return Verdict(False, f"the compiled step killed its process ({name}{': ' + tail[0] if tail else ''})")
    if returncode != 0:
        last = (stderr.strip().splitlines() or ["no output"])[-1]
        return Verdict(False, f"the compiled step failed (exit {returncode}: {last})")
    try:
        diff = json.loads(stdout.strip().splitlines()[-1])["max_abs_diff"]
    except (IndexError, ValueError, KeyError, TypeError):
        return Verdict(False, f"the probe printed no result ({stdout.strip()[-200:]!r})")
    if not diff <= TOLERANCE:  # also catches NaN
        return Verdict(False, f"compiled training differs from eager by {diff:.3g} (> {TOLERANCE:g})")
    return Verdict(True, f"compiled training matches eager (max |diff| {diff:.2g})")


def run_probe(threads: int, program: str = PROBE_PROGRAM, timeout: float = 600) -> Verdict:
    """Run ``program`` in a child Python with ``threads`` as its argument, and judge its exit."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    try:
        p = subprocess.run([sys.executable, "-c", program, str(threads)], capture_output=True, text=True,
                           timeout=timeout, env=env, cwd=root)
    except subprocess.TimeoutExpired:
        return Verdict(False, f"the probe did not finish in {timeout:.0f} s")
    return judge(p.returncode, p.stdout, p.stderr)


def cpu_compile_verdict(threads: int | None = None, program: str = PROBE_PROGRAM) -> Verdict:
    """The verdict for this host at ``threads`` (default: torch's current count), probed once
    per host key and remembered in the process and in ``<cache dir>/compile_probe/<key>.json``
    (``MNEMONICS_CACHE_DIR``, default ``~/.cache/mnemonics_study``; delete it to probe again)."""
    import torch

    threads = threads or torch.get_num_threads()
    key = host_key(threads) + ("" if program == PROBE_PROGRAM else "-" + hashlib.sha256(program.encode()).hexdigest()[:8])
    if key in _VERDICTS:
        return _VERDICTS[key]
    path = _cache_dir() / "compile_probe" / f"{key}.json"
    try:
        verdict = Verdict(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        log.info("probing whether compiled CPU training is sound here (%d thread(s)) ...", threads)
        verdict = run_probe(threads, program)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(asdict(verdict)))
    if not verdict.sound:
        log.warning("compiled CPU training is off on this host: %s; training runs eagerly", verdict.reason)
    _VERDICTS[key] = verdict
    return verdict
