"""Phase-boundary checkpoints, so a crashed multi-hour run resumes at the last phase.

Checkpoints are read with ``torch.load(..., weights_only=True)``: a checkpoint is
then data, never code, so loading one cannot execute anything.  That unpickler only
accepts tensors, primitive types and containers, so RNG states (python tuples,
numpy arrays, numpy bit-generator dicts) are converted to such a form by
:func:`capture_rng_state` and back by :func:`restore_rng_state`.

Checkpoints belong in an ignored folder, never in ``results/``.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from .atomic import fsync_dir
__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
Generators = Mapping[str, Union[np.random.Generator, torch.Generator]]

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read (truncated, corrupted, not weights-only)."""


def save_checkpoint(path: PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, fsync, replace).

    A crash mid-write leaves the previous checkpoint intact instead of a truncated
    file.  ``state`` must hold only what ``weights_only=True`` loading accepts:
    tensors, ints, floats, strings, bools, None and dicts/lists/tuples of them
    (use :func:`capture_rng_state` for RNG states).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    logger.debug("saved checkpoint %s", path)


def load_checkpoint(
    path: PathLike, map_location: Union[str, torch.device, None] = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    ``map_location`` defaults to CPU so a checkpoint written on a GPU machine loads
    anywhere; the trainer moves tensors to its device.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is truncated, corrupted or holds non-weights-only
            objects; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError/UnpicklingError/EOFError by case
        raise CheckpointError(
            f"cannot read checkpoint {path} (truncated or corrupted? delete it to restart "
            f"the run from scratch): {type(e).__name__}: {e}"
        ) from e
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict")
    return state


# --- RNG states -------------------------------------------------------------------


def _encode(obj: Any) -> Any:
    """Turn numpy arrays/scalars and ints beyond int64 into weights-only-loadable values."""
    if isinstance(obj, np.ndarray):
        # torch's unsigned dtypes are partial: widen uint32 (MT19937) to int64, and
        # reinterpret uint64 (Philox, SFC64) bits as int64, which loses nothing.
        if obj.dtype == np.uint64:
            raw = obj.view(np.int64)
        elif np.issubdtype(obj.dtype, np.unsignedinteger):
            raw = obj.astype(np.int64)
        else:
            raw = obj
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(raw).copy()),
                "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return _encode(obj.item())
    if isinstance(obj, bool) or obj is None or isinstance(obj, (float, str)):
        return obj
    if isinstance(obj, int):
        # PCG64 states are 128-bit; older weights-only unpicklers reject big ints.
        return obj if _I64_MIN <= obj <= _I64_MAX else {"__bigint__": str(obj)}
    if isinstance(obj, Mapping):
        return {k: _encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return {"__tuple__": [_encode(v) for v in obj]} if isinstance(obj, tuple) else [
            _encode(v) for v in obj
        ]
    raise TypeError(f"cannot encode RNG state element of type {type(obj).__name__}")


def _decode(obj: Any) -> Any:
    """Inverse of :func:`_encode`."""
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            arr = obj["__ndarray__"].numpy()
            dtype = np.dtype(obj["dtype"])
            return arr.view(dtype) if dtype == np.uint64 else arr.astype(dtype)
        if "__bigint__" in obj:
            return int(obj["__bigint__"])
        if "__tuple__" in obj:
            return tuple(_decode(v) for v in obj["__tuple__"])
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def capture_rng_state(generators: Generators | None = None) -> dict[str, Any]:
    """Snapshot every RNG the run draws from, in a ``weights_only``-loadable form.

    Covers python ``random``, numpy's legacy global state, torch CPU, all CUDA
    devices (when available) and the named ``generators`` (numpy ``Generator`` or
    ``torch.Generator`` objects the caller owns, e.g. a data-order generator).
    """
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        # The 625-word Mersenne Twister state as one int64 tensor: compact and loadable.
        "python": {
            "version": version,
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "numpy": _encode(np.random.get_state()),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "generators": {},
    }
    for name, gen in (generators or {}).items():
        if isinstance(gen, np.random.Generator):
            state["generators"][name] = {"kind": "numpy", "state": _encode(gen.bit_generator.state)}
        elif isinstance(gen, torch.Generator):
            state["generators"][name] = {"kind": "torch", "state": gen.get_state()}
        else:
            raise TypeError(f"generator {name!r} has unsupported type {type(gen).__name__}")
    return state


def restore_rng_state(state: Mapping[str, Any], generators: Generators | None = None) -> None:
    """Restore a snapshot from :func:`capture_rng_state` (after a save/load round trip).

    ``generators`` are updated in place and must carry the names used at capture.
    """
    py = state["python"]
    random.setstate((int(py["version"]), tuple(py["internal"].tolist()), py["gauss_next"]))
    np.random.set_state(_decode(state["numpy"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        else:
            # Resuming on another machine: CPU streams still match; GPU ones cannot.
            logger.warning(
                "checkpoint holds %d CUDA RNG states but %d CUDA devices are visible; "
                "CUDA RNG not restored, GPU-side randomness will differ",
                len(cuda),
                torch.cuda.device_count() if torch.cuda.is_available() else 0,
            )
    saved = state.get("generators", {})
    for name, gen in (generators or {}).items():
        if name not in saved:
            raise KeyError(f"no saved state for generator {name!r}; saved: {sorted(saved)}")
        entry = saved[name]
        if isinstance(gen, np.random.Generator) and entry["kind"] == "numpy":
            gen.bit_generator.state = _decode(entry["state"])
        elif isinstance(gen, torch.Generator) and entry["kind"] == "torch":
            gen.set_state(entry["state"].cpu())
        else:
            raise TypeError(
                f"generator {name!r} is a {type(gen).__name__} but was saved as {entry['kind']}"
            )
