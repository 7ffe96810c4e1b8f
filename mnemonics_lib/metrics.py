"""Class-incremental metrics as pure functions on numpy arrays.

Definitions (the field mixes them up, so each one is spelled out here):

* Accuracy matrix ``A[p, g]``: top-1 accuracy (%) after phase ``p`` on the test
  samples of the classes introduced in phase ``g`` (``g <= p``); ``nan`` above the
  diagonal because those classes have not been seen yet.
* AIA (average incremental accuracy): mean of the per-phase accuracies on all
  classes seen so far.  Mnemonics (Liu et al., CVPR 2020) and LUCIR average the
  ``N + 1`` values *including* phase 0; some papers drop phase 0
  (``include_first=False``).
* Forgetting rate (Mnemonics, Sec. 5): ``A[0, 0] - A[N, 0]``, the accuracy lost on
  the phase-0 classes between the end of phase 0 and the end of the last phase.
* Chaudhry et al. (ECCV 2018) average forgetting at the last phase ``N``:
  ``mean_{g < N} (max_{p in [g, N-1]} A[p, g] - A[N, g])``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "accuracy_matrix",
    "stack_accuracy_rows",
    "average_incremental_accuracy",
    "last_accuracy",
    "forgetting_rate",
    "chaudhry_forgetting",
    "old_new_accuracy",
]


def _labels_pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (labels, predictions) pair: 1-D, same length, non-empty, integer."""
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    if t.ndim != 1 or p.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D, got shapes {t.shape} and {p.shape}")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape[0]} vs {p.shape[0]}")
    if t.size == 0:
        raise ValueError("y_true and y_pred are empty")
    for name, a in (("y_true", t), ("y_pred", p)):
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} must hold integer class labels, got dtype {a.dtype}")
    return t, p


def accuracy_matrix(
    y_true: ArrayLike, y_pred: ArrayLike, phase_of_class: ArrayLike, phase: int
) -> np.ndarray:
    """One row ``A[phase, :]`` of the accuracy matrix.

    Args:
        y_true, y_pred: (n,) integer labels, already remapped to class-order positions.
        phase_of_class: (C,) int array, ``phase_of_class[c]`` = phase that introduced class c.
        phase: the phase just finished (0-based).

    Returns:
        (P,) float array with P = ``phase_of_class.max() + 1``: accuracy (%) on the
        test samples of each phase group ``g <= phase``; ``nan`` for ``g > phase``.

    Raises:
        ValueError: on shape/dtype mismatch, a label outside ``phase_of_class``, a
        test label of a class not yet seen, or a seen phase group with no test sample
        (which would silently turn into ``nan`` and bias every average downstream).
    """
    t, p = _labels_pair(y_true, y_pred)
    poc = np.asarray(phase_of_class)
    if poc.ndim != 1 or poc.size == 0 or not np.issubdtype(poc.dtype, np.integer):
        raise ValueError("phase_of_class must be a non-empty 1-D integer array")
    if poc.min() < 0:
        raise ValueError("phase_of_class holds a negative phase")
    n_phases = int(poc.max()) + 1
    if not 0 <= phase < n_phases:
        raise ValueError(f"phase={phase} outside [0, {n_phases - 1}]")
    if t.min() < 0 or t.max() >= poc.size:
        raise ValueError(f"y_true holds labels outside [0, {poc.size - 1}]")
    group = poc[t]
    if group.max() > phase:
        raise ValueError(f"y_true holds classes introduced after phase {phase}")
    row = np.full(n_phases, np.nan)
    for g in range(phase + 1):
        mask = group == g
        if not mask.any():
            raise ValueError(f"no test sample for the classes of phase {g}")
        row[g] = 100.0 * float(np.mean(t[mask] == p[mask]))
    return row


def stack_accuracy_rows(rows: list[ArrayLike]) -> np.ndarray:
    """Stack per-phase rows into the (P, P) matrix ``A[p, g]`` (lower triangular, nan above).

    ``rows[p]`` is the output of :func:`accuracy_matrix` after phase ``p``.  A run
    that stopped early (fewer rows than groups) yields a (len(rows), P) matrix.
    """
    if len(rows) == 0:
        raise ValueError("no accuracy rows to stack")
    arrs = [np.asarray(r, dtype=float) for r in rows]
    width = arrs[0].shape
    if any(a.ndim != 1 or a.shape != width for a in arrs):
        raise ValueError(f"rows differ in shape: {[a.shape for a in arrs]}")
    mat = np.stack(arrs)
    if mat.shape[0] > mat.shape[1]:
        raise ValueError(f"{mat.shape[0]} rows but only {mat.shape[1]} phase groups")
    _check_triangular(mat)
    return mat


def _check_triangular(mat: np.ndarray) -> None:
    """Lower triangle (diagonal included) finite, strictly upper triangle nan."""
    rows, cols = np.indices(mat.shape)
    if not np.all(np.isfinite(mat[rows >= cols])):
        raise ValueError("accuracy matrix has non-finite entries on or below the diagonal")
    if not np.all(np.isnan(mat[rows < cols])):
        raise ValueError("accuracy matrix has values above the diagonal (unseen classes)")


def _square_matrix(acc_matrix: ArrayLike) -> np.ndarray:
    mat = np.asarray(acc_matrix, dtype=float)
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
        raise ValueError(f"accuracy matrix must be square (P, P), got shape {mat.shape}")
    if mat.size == 0:
        raise ValueError("accuracy matrix is empty")
    _check_triangular(mat)
    return mat


def _per_phase(per_phase_acc: ArrayLike) -> np.ndarray:
    acc = np.asarray(per_phase_acc, dtype=float)
    if acc.ndim != 1:
        raise ValueError(f"per-phase accuracies must be 1-D, got shape {acc.shape}")
    if acc.size == 0:
        raise ValueError("per-phase accuracies are empty")
    if not np.all(np.isfinite(acc)):
        raise ValueError(f"per-phase accuracies hold non-finite values: {acc.tolist()}")
    return acc


def average_incremental_accuracy(per_phase_acc: ArrayLike, include_first: bool = True) -> float:
    """AIA (%) from the (N+1,) accuracies on all seen classes after each phase.

    ``include_first=True`` is the Mnemonics/LUCIR definition (mean of all N+1 values);
    ``False`` drops phase 0 (mean of the N incremental phases).
    """
    acc = _per_phase(per_phase_acc)
    if not include_first:
        if acc.size < 2:
            raise ValueError("include_first=False needs at least one incremental phase")
        acc = acc[1:]
    return float(acc.mean())


def last_accuracy(per_phase_acc: ArrayLike) -> float:
    """Accuracy (%) on all classes after the last phase."""
    return float(_per_phase(per_phase_acc)[-1])


def forgetting_rate(acc_matrix: ArrayLike) -> float:
    """Mnemonics forgetting rate (%): ``A[0, 0] - A[-1, 0]`` on the phase-0 classes."""
    mat = _square_matrix(acc_matrix)
    return float(mat[0, 0] - mat[-1, 0])


def chaudhry_forgetting(acc_matrix: ArrayLike) -> float:
    """Chaudhry et al. (2018) average forgetting (%) at the last phase.

    ``mean_{g < L} (max_{p in [g, L-1]} A[p, g] - A[L, g])`` with ``L = P - 1``;
    ``nan`` when P == 1 (nothing can have been forgotten yet).
    """
    mat = _square_matrix(acc_matrix)
    last = mat.shape[0] - 1
    if last == 0:
        return float("nan")
    drops = [mat[g:last, g].max() - mat[last, g] for g in range(last)]
    return float(np.mean(drops))


def old_new_accuracy(y_true: ArrayLike, y_pred: ArrayLike, n_old: int) -> tuple[float, float]:
    """Accuracy (%) on old classes (label < n_old) and on new classes (label >= n_old).

    Either value is ``nan`` when the test set holds no sample of that kind (e.g.
    no old class in phase 0).
    """
    t, p = _labels_pair(y_true, y_pred)
    if n_old < 0:
        raise ValueError(f"n_old must be >= 0, got {n_old}")
    old = t < n_old
    acc_old = 100.0 * float(np.mean(t[old] == p[old])) if old.any() else float("nan")
    acc_new = 100.0 * float(np.mean(t[~old] == p[~old])) if (~old).any() else float("nan")
    return acc_old, acc_new
