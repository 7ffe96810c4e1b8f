"""Dataset readers, each from its standard on-disk format, under a data root.

Roots searched: ``$MNEMONICS_DATA`` alone when it is set (an empty or missing folder is an error),
else ``<project>/data``, then the offline copies in ``<project>/../shared/data``. 32x32 sets come
back as :class:`ArrayData` (uint8 NHWC arrays held in memory, labels in *original* class ids);
class-folder JPEG trees are read by :mod:`folder_data`. Class-order remapping happens later, in
:mod:`protocol`.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPEG", ".JPG", ".PNG")


class DatasetError(RuntimeError):
    """A dataset is missing or damaged; the message names it, where we looked, and the fix."""


# ImageNet's per-channel statistics, the usual normalisation for a ResNet-18 on ImageNet-size images
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ArrayData:
    """A small-image dataset held in memory. x: (N, H, W, 3) uint8; y: (N,) int64 original ids."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    source: str  # where it was read from, for provenance
    # normalisation statistics (mean, std) fixed by convention, e.g. ImageNet's for the folder
    # datasets; None: computed from the training images
    fixed_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @functools.cached_property
    def _stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        # computed once per dataset object (cached_property writes the instance __dict__, which
        # a frozen dataclass allows); per-channel statistics of the training images in [0, 1]
        if self.fixed_stats is not None:
            return self.fixed_stats
        f = self.x_train.reshape(-1, 3).astype(np.float64) / 255.0
        return tuple(f.mean(0).round(4)), tuple(f.std(0).round(4))

    @property
    def mean(self) -> tuple[float, ...]:
        return self._stats[0]

    @property
    def std(self) -> tuple[float, ...]:
        return self._stats[1]


def data_roots() -> list[Path]:
    """Where datasets are looked for. ``$MNEMONICS_DATA``, when set, is the only root: a folder
    that does not exist or is empty is an error naming the fix, never a silent fall-back to the
    default roots (``<project>/data``, then ``<project>/../shared/data``)."""
    env = os.environ.get("MNEMONICS_DATA")
    if env:
        root = Path(env).expanduser()
        if not root.is_dir():
            raise DatasetError(f"MNEMONICS_DATA={env} is not a folder: point it at the folder that holds "
                               f"the dataset folders (e.g. cifar-100-python/), or unset it to use "
                               f"{PROJECT_ROOT / 'data'}")
        if not any(root.iterdir()):
            raise DatasetError(f"MNEMONICS_DATA={env} is empty: put the dataset folders there (e.g. "
                               f"cifar-100-python/), or unset it to use {PROJECT_ROOT / 'data'}")
        return [root]
    return [PROJECT_ROOT / "data", PROJECT_ROOT.parent / "shared" / "data"]


def _find(name: str, candidates: list[str], roots: list[Path] | None, how: str) -> Path:
    roots = data_roots() if roots is None else roots
    looked = []
    for r in roots:
        for c in candidates:
            p = r / c
            looked.append(str(p))
            if p.exists():
                return p
    raise DatasetError(
        f"dataset {name!r} not found; looked at: {', '.join(looked)}. {how} "
        f"(or set MNEMONICS_DATA to the folder that holds it)"
    )


def verify_checksums(folder: Path) -> None:
    """Check every file listed in ``folder/SHA256SUMS``; a mismatch names the file."""
    sums = folder / "SHA256SUMS"
    if not sums.exists():
        return
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        digest, fname = line.split(maxsplit=1)
        fname = fname.lstrip("*")
        path = folder / fname
        if not path.exists():
            raise DatasetError(f"{path} is listed in {sums} but missing; re-copy the dataset folder")
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        if h.hexdigest() != digest:
            raise DatasetError(
                f"checksum mismatch for {path}: expected {digest}, got {h.hexdigest()}; the file "
                f"is damaged or a different version, re-copy it"
            )


# ---------------------------------------------------------------- CIFAR (torchvision layout)
def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _cifar_rows_to_nhwc(rows: np.ndarray) -> np.ndarray:
    return np.asarray(rows, dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def read_cifar_pickles(folder: Path, n_classes: int) -> ArrayData:
    """torchvision's on-disk CIFAR layout: ``cifar-10-batches-py`` or ``cifar-100-python``."""
    if n_classes == 100:
        tr, te = _unpickle(folder / "train"), _unpickle(folder / "test")
        meta = _unpickle(folder / "meta")
        names = tuple(n.decode() for n in meta[b"fine_label_names"])
        xtr, ytr = tr[b"data"], tr[b"fine_labels"]
        xte, yte = te[b"data"], te[b"fine_labels"]
    else:
        batches = [_unpickle(folder / f"data_batch_{i}") for i in range(1, 6)]
        te = _unpickle(folder / "test_batch")
        names = tuple(n.decode() for n in _unpickle(folder / "batches.meta")[b"label_names"])
        xtr = np.concatenate([b[b"data"] for b in batches])
        ytr = sum((list(b[b"labels"]) for b in batches), [])
        xte, yte = te[b"data"], te[b"labels"]
    return ArrayData(
        name=f"cifar{n_classes}",
        x_train=_cifar_rows_to_nhwc(xtr), y_train=np.asarray(ytr, dtype=np.int64),
        x_test=_cifar_rows_to_nhwc(xte), y_test=np.asarray(yte, dtype=np.int64),
        class_names=names, source=str(folder),
    )


def _download_cifar(n_classes: int, root: Path) -> None:
    import torchvision  # only when a download is asked for

    cls = torchvision.datasets.CIFAR100 if n_classes == 100 else torchvision.datasets.CIFAR10
    cls(str(root), train=True, download=True)
    cls(str(root), train=False, download=True)


# ---------------------------------------------------------------- npz copies (offline)
def read_npz_folder(folder: Path, name: str) -> ArrayData:
    """The offline ``.npz`` form: ``train*.npz`` (concatenated in name order), ``test.npz``,
    ``classes.txt``; ``SHA256SUMS`` verified first."""
    verify_checksums(folder)
    parts = sorted(folder.glob("train*.npz"))
    if not parts or not (folder / "test.npz").exists():
        raise DatasetError(f"{folder} lacks train*.npz or test.npz; re-copy the dataset folder")
    tr = [np.load(p) for p in parts]
    te = np.load(folder / "test.npz")
    names = tuple((folder / "classes.txt").read_text().split())
    return ArrayData(
        name=name,
        x_train=np.concatenate([t["x"] for t in tr]), y_train=np.concatenate([t["y"] for t in tr]).astype(np.int64),
        x_test=te["x"], y_test=te["y"].astype(np.int64),
        class_names=names, source=str(folder),
    )


def drop_class(data: ArrayData, class_name: str, name: str) -> ArrayData:
    """Remove one class and renumber the rest densely, keeping their sorted-name order."""
    drop = data.class_names.index(class_name)
    keep_tr, keep_te = data.y_train != drop, data.y_test != drop

    def renumber(y: np.ndarray) -> np.ndarray:
        return y - (y > drop)

    return ArrayData(
        name=name,
        x_train=data.x_train[keep_tr], y_train=renumber(data.y_train[keep_tr]),
        x_test=data.x_test[keep_te], y_test=renumber(data.y_test[keep_te]),
        class_names=tuple(n for n in data.class_names if n != class_name),
        source=data.source + f" (without {class_name})",
    )


def cap_per_class(data: ArrayData, per_class: int, seed: int = 0) -> ArrayData:
    """Keep at most ``per_class`` training images of every class, a subset drawn once with a
    seeded permutation (file order kept among the survivors); the test split is untouched, so
    accuracies stay comparable with the full set's. A class with fewer images keeps them all."""
    rng = np.random.RandomState(seed)
    order = rng.permutation(len(data.y_train))
    y_in_order = data.y_train[order]
    keep = np.zeros(len(data.y_train), dtype=bool)
    for c in np.unique(data.y_train):
        keep[order[y_in_order == c][:per_class]] = True
    return ArrayData(
        name=data.name, x_train=data.x_train[keep], y_train=data.y_train[keep],
        x_test=data.x_test, y_test=data.y_test, class_names=data.class_names,
        source=data.source + f" (at most {per_class} training images per class, subset seed {seed})",
        fixed_stats=data.fixed_stats,
    )


# ---------------------------------------------------------------- ImageFolder trees
def imagenet_subset_wnids(all_wnids: list[str], seed: int = 1993, k: int = 100) -> list[str]:
    """The seed-1993 ImageNet-Subset rule (paper.md §2): ``np.random.seed(1993)`` then choose
    ``k`` of the *sorted* wnids without replacement. Returned in the chosen (not sorted) order."""
    wnids = sorted(all_wnids)
    idx = np.random.RandomState(seed).choice(len(wnids), k, replace=False)
    return [wnids[i] for i in idx]


# ---------------------------------------------------------------- synthetic
def make_synthetic(n_classes: int = 20, per_class_train: int = 60, per_class_test: int = 20,
                   seed: int = 0, size: int = 32) -> ArrayData:
    """Class-structured 32x32 images a small CNN can learn: each class has two smooth colour
    templates (modes); a sample is a randomly shifted template plus pixel noise."""
    rng = np.random.RandomState(seed)
    coarse = rng.rand(n_classes, 2, 4, 4, 3)
    templates = coarse.repeat(size // 4, axis=2).repeat(size // 4, axis=3)  # (C, 2, H, W, 3)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(n_classes), n)
        mode = rng.randint(0, 2, size=len(y))
        img = templates[y, mode]
        shift = rng.randint(-3, 4, size=(len(y), 2))
        img = np.stack([np.roll(im, tuple(s), axis=(0, 1)) for im, s in zip(img, shift)])
        img = img + 0.12 * rng.randn(*img.shape)
        return (np.clip(img, 0, 1) * 255).astype(np.uint8), y.astype(np.int64)

    xtr, ytr = sample(per_class_train)
    xte, yte = sample(per_class_test)
    return ArrayData("synthetic", xtr, ytr, xte, yte,
                     tuple(f"class{i:03d}" for i in range(n_classes)), f"synthetic(seed={seed})")


# ---------------------------------------------------------------- entry point
def load_dataset(name: str, *, roots: list[Path] | None = None, download: bool = False,
                 synthetic_classes: int = 20) -> ArrayData:
    """Load a dataset by name (see :data:`mnemonics_lib.config.DATASETS`)."""
    key_roots = None if roots is None else tuple(str(r) for r in roots)
    return _load_cached(name, key_roots, download, synthetic_classes)


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, roots_key: tuple[str, ...] | None, download: bool,
                 synthetic_classes: int) -> ArrayData:
    roots = None if roots_key is None else [Path(r) for r in roots_key]
    if name == "synthetic":
        return make_synthetic(synthetic_classes)
    if name in ("cifar10", "cifar100"):
        n = int(name[5:])
        sub = "cifar-100-python" if n == 100 else "cifar-10-batches-py"
        cands = [sub] + (["cifar10"] if n == 10 else [])
        if download:
            _download_cifar(n, (roots or data_roots())[0])
        p = _find(name, cands, roots,
                  f"Get it with mnemonics_lib.datasets.load_dataset({name!r}, download=True) when "
                  f"online, or place torchvision's {sub}/ folder under a data root")
        return read_npz_folder(p, name) if p.name == "cifar10" else read_cifar_pickles(p, n)
    if name == "caltech100":
        p = _find(name, ["caltech101_32"], roots,
                  "It is the 32x32 Caltech-101 copy (train.npz, test.npz, classes.txt, SHA256SUMS) "
                  "shipped in ../shared/data/caltech101_32")
        return drop_class(read_npz_folder(p, "caltech101_32"), "Faces_easy", "caltech100")
    if name in ("imagenet", "imagenet_subset", "caltech101_jpeg"):
        # a folder tree is decoded at a run's image sizes, so it is read from a RunConfig
        raise DatasetError(f"{name} is a folder dataset: read it with "
                           f"mnemonics_lib.folder_data.load_for_config(config)")
    raise DatasetError(f"unknown dataset {name!r}")
