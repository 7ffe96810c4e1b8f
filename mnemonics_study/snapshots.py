"""What Fig. 1 (t-SNE) and the exemplar-image figure need from a run, recorded while it trains.

:func:`record_snapshots` trains a config with an ``on_phase_end`` callback that keeps, at chosen
phases, L2-normalised features of sampled real images and of the exemplars, the real-data class
means, every exemplar's margin to the nearest other class mean, and exemplar pixels. The callback
draws its samples from its own ``RandomState(0)``, so a snapshot run's accuracies equal those of
the plain run of the same config (which is why the ledger may copy one for the other). The
ledger side (caching, the notebooks' entry point) is :func:`mnemonics_study.study.snapshot_records`.
"""
from __future__ import annotations

from typing import Any, Mapping

from mnemonics_lib.config import RunConfig

SNAPSHOT_CLASSES = 5  # classes shown in colour (the first five of the class order)
SNAPSHOT_REAL_PER_CLASS = 60  # real images per class kept for the t-SNE and the margins


def margins(feats, labels, means):
    """(cosine to own class mean) - (max cosine to another class mean); feats, means normalised."""
    import torch

    cos = feats @ means.T  # (n, C)
    own = cos.gather(1, labels.view(-1, 1)).squeeze(1)
    other = cos.scatter(1, labels.view(-1, 1), float("-inf")).max(1).values
    return own - other


def _rounded(t, digits: int = 4) -> list:
    return [[round(float(v), digits) for v in row] for row in t.tolist()] if t.dim() == 2 else \
        [round(float(v), digits) for v in t.tolist()]


def _snapshot_phase(phase: int, model, memory, data) -> dict[str, Any]:
    """What one recorded phase keeps (JSON-able): see :func:`record_snapshots`."""
    import base64

    import numpy as np
    import torch

    from mnemonics_lib.evaluation import class_means, normalised_features

    model.eval()
    n_seen = data.plan.seen_classes(phase)
    shown = list(range(min(SNAPSHOT_CLASSES, n_seen)))
    y_all = data.train.y
    rng = np.random.RandomState(0)
    keep = []
    for c in range(n_seen):
        idx = torch.nonzero(y_all == c).flatten().cpu().numpy()
        keep.append(np.sort(rng.permutation(idx)[:SNAPSHOT_REAL_PER_CLASS]))
    keep_t = torch.as_tensor(np.concatenate(keep), device=y_all.device)
    seen_idx = data.train.select(list(range(n_seen)))
    # true class centres: every real training image of the seen classes (flip-averaged, as NME)
    means = class_means(model, data.train.normalised(seen_idx, data.norm), y_all[seen_idx], n_seen)
    real_f = normalised_features(model, data.train.normalised(keep_t, data.norm))
    real_y = y_all[keep_t]
    ex_x, ex_y = memory.tensors(list(range(n_seen)))
    ex_f = normalised_features(model, ex_x.to(means.device))
    ex_y = ex_y.to(means.device)
    show_real = torch.isin(real_y, torch.as_tensor(shown, device=real_y.device))
    show_ex = torch.isin(ex_y, torch.as_tensor(shown, device=ex_y.device))
    px_x, px_y = memory.tensors(shown)
    pixels = data.norm.denormalise(px_x.to(means.device)).clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    return {
        "phase": phase, "n_classes": n_seen, "classes": shown,
        "real_features": _rounded(real_f[show_real]), "real_labels": real_y[show_real].tolist(),
        "exemplar_features": _rounded(ex_f[show_ex]), "exemplar_labels": ex_y[show_ex].tolist(),
        "class_means": _rounded(means), "mean_labels": list(range(n_seen)),
        "exemplar_margin": _rounded(margins(ex_f, ex_y, means)), "exemplar_margin_labels": ex_y.tolist(),
        "real_margin": _rounded(margins(real_f, real_y, means)), "real_margin_labels": real_y.tolist(),
        # base64 of the raw uint8 bytes: 4x smaller than a JSON list of ints, still JSON text
        "exemplar_pixels": {"shape": list(pixels.shape), "labels": px_y.tolist(),
                            "uint8_base64": base64.b64encode(pixels.numpy().tobytes()).decode("ascii")},
    }


def record_snapshots(config: RunConfig, phases: tuple[int, ...], device: str | None = None) -> dict[str, Any]:
    """Train ``config`` and record at each of ``phases``: normalised features of <= 60 real
    training images per class of the first five classes and of their exemplars, the real-data
    class means of all seen classes, the margin of every exemplar and of the sampled real images
    of all seen classes (cosine to the own class mean minus the largest cosine to another class
    mean; small = near a class boundary), and the first five classes' exemplar pixels (uint8,
    denormalised).

    Resumable like a plain run (a mnemonics snapshot run takes hours on a CPU, and a process can
    be killed, e.g. by the out-of-memory killer): phase checkpoints go to ``<checkpoint root>/snapshots/
    <hash>`` (apart from the plain run of the same config, which may run at the same time), and
    each recorded phase is written beside them (``snapshots.json``) before its checkpoint, so a
    resumed run has the phases it skips."""
    import json

    from mnemonics_lib.atomic import write_text_atomic
    from mnemonics_lib.trainer import checkpoint_root, run_incremental

    ck_dir = checkpoint_root() / "snapshots" / config.config_hash()
    kept = ck_dir / "snapshots.json"
    recorded: dict[int, dict[str, Any]] = {}
    if kept.exists():
        recorded = {int(p): snap for p, snap in json.loads(kept.read_text()).items() if int(p) in phases}

    def on_phase_end(phase, model, memory, data):
        if phase in phases:
            recorded[phase] = _snapshot_phase(phase, model, memory, data)
            ck_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(kept, json.dumps(recorded))

    metrics = run_incremental(config, device, checkpoint_dir=ck_dir, on_phase_end=on_phase_end)
    kept.unlink(missing_ok=True)
    if ck_dir.is_dir() and not any(ck_dir.iterdir()):
        ck_dir.rmdir()
    metrics["snapshots"] = [recorded[p] for p in sorted(recorded)]
    metrics["snapshot_settings"] = {"phases": list(phases), "classes": SNAPSHOT_CLASSES,
                                    "real_per_class": SNAPSHOT_REAL_PER_CLASS, "features": "L2-normalised",
                                    "class_means": "all real training images, flip-averaged (iCaRL)"}
    return metrics


def decode_pixels(entry: Mapping[str, Any]):
    """``exemplar_pixels`` of a snapshot -> (uint8 array (M, 3, H, W), labels (M,))."""
    import base64

    import numpy as np

    x = np.frombuffer(base64.b64decode(entry["uint8_base64"]), dtype=np.uint8).reshape(entry["shape"])
    return x, np.asarray(entry["labels"])
