"""Class-folder JPEG trees (the ImageNet layout) decoded once into a fixed-size uint8 cache.

``root/train/<class>/*`` and ``root/val/<class>/*``. Every file is decoded with torchvision.io
(``decode_image`` in RGB mode: greyscale, CMYK and PNG-in-``.jpg`` files come out as RGB) in
DataLoader worker processes, resized and centre-cropped to the network's input size, and stored as
one (N, H, W, 3) uint8 array per split on disk. Training then reads tensors only (the batched
random-resized crop of :mod:`pipeline`): no per-image Python, no PIL, in any epoch after the first
run's decode.

What is stored (the transforms of paper.md §2, adapted to a fixed-size cache):

* train: shorter side resized to ``crop``, centre ``crop`` x ``crop``; the random-resized crop and
  flip are drawn from that square on the fly (so its scale is relative to the central square, and
  a small crop is upsampled from the stored pixels rather than taken from the full-size file);
* val: shorter side resized to ``resize``, centre ``crop`` x ``crop`` -- exactly the standard
  evaluation transform (resize 256, centre crop 224 at the paper profile).

A file that cannot be decoded stops the build with a :class:`DatasetError` naming it
(``corrupt="error"``, the default), or is left out and counted in the cache's manifest
(``corrupt="skip"``). A cache is written into a temporary folder and published by one rename, so an
interrupted build leaves nothing that a later run could mistake for a cache.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .datasets import IMAGENET_MEAN, IMAGENET_STD, IMG_EXTENSIONS, PROJECT_ROOT, ArrayData, DatasetError

log = logging.getLogger(__name__)

CACHE_VERSION = 1
# ImageNet statistics: the usual normalisation for ResNet-18 on ImageNet, used for every folder set
SUBSETS_DIR = PROJECT_ROOT / "data" / "subsets"


@dataclass(frozen=True)
class FolderTree:
    """A scanned tree: class names (sorted; ids are positions) and (path, class id) per split."""

    root: Path
    classes: tuple[str, ...]
    train: tuple[tuple[str, int], ...]
    val: tuple[tuple[str, int], ...]

    def train_counts(self) -> np.ndarray:
        return np.bincount([y for _, y in self.train], minlength=len(self.classes))


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(d.name for d in split_dir.iterdir() if d.is_dir())


def _images(d: Path) -> list[str]:
    return [str(p) for p in sorted(d.iterdir()) if p.is_file() and p.suffix in IMG_EXTENSIONS]


def scan_tree(root: Path | str, classes: Sequence[str] | None = None) -> FolderTree:
    """List ``root/{train,val}/<class>/*``; ``classes`` restricts (and must be present in) the tree.

    Raises :class:`DatasetError` for a missing root or split folder, no class folders, train/val
    class sets that differ, listed classes that are missing, and a class folder without images."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist; set MNEMONICS_DATA or pass the "
                           f"folder that holds train/ and val/")
    dirs = {}
    for split in ("train", "val"):
        d = root / split
        if not d.is_dir():
            raise DatasetError(f"{root} has no {split}/ folder; the layout is {split}/<class>/*.jpg "
                               f"(ImageNet layout)")
        dirs[split] = _class_dirs(d)
        if not dirs[split]:
            raise DatasetError(f"{d} holds no class folders; the layout is {split}/<class>/*.jpg")
    if classes is None:
        only_t, only_v = sorted(set(dirs["train"]) - set(dirs["val"])), sorted(set(dirs["val"]) - set(dirs["train"]))
        if only_t or only_v:
            raise DatasetError(f"{root}: train/ and val/ hold different classes (only in train: "
                               f"{_few(only_t)}; only in val: {_few(only_v)}); give both splits the same "
                               f"class folders")
        classes = dirs["train"]
    else:
        for split in ("train", "val"):
            missing = sorted(set(classes) - set(dirs[split]))
            if missing:
                raise DatasetError(f"{root / split} lacks {len(missing)} of the {len(classes)} listed "
                                   f"classes: {_few(missing)}; point at a tree that holds them (for "
                                   f"ImageNet-Subset: the full ImageNet tree or one built by "
                                   f"scripts/make_imagenet_subset.py)")
    classes = tuple(sorted(classes))
    out = {}
    for split in ("train", "val"):
        rows = []
        for i, c in enumerate(classes):
            files = _images(root / split / c)
            if not files:
                raise DatasetError(f"class folder {root / split / c} holds no images "
                                   f"({', '.join(IMG_EXTENSIONS)}); remove the folder or fill it")
            rows += [(f, i) for f in files]
        out[split] = tuple(rows)
    return FolderTree(root, classes, out["train"], out["val"])


def _few(names: Sequence[str], k: int = 8) -> str:
    if not names:
        return "none"
    more = f" and {len(names) - k} more" if len(names) > k else ""
    return ", ".join(names[:k]) + more


def check_budget(tree: FolderTree, per_class: int) -> None:
    """Every class must hold at least ``per_class`` training images to fill its exemplar memory."""
    counts = tree.train_counts()
    short = [f"{tree.classes[i]} ({n})" for i, n in enumerate(counts) if n < per_class]
    if short:
        raise DatasetError(f"{len(short)} class(es) of {tree.root / 'train'} hold fewer training images "
                           f"than the {per_class} exemplars per class: {_few(short)}; lower "
                           f"memory_per_class or leave those classes out")


def read_class_list(name: str, folder: Path = SUBSETS_DIR) -> list[str]:
    """A versioned class list ``data/subsets/<name>.txt`` (one wnid per line, '#' comments)."""
    path = folder / f"{name}.txt"
    if not path.exists():
        known = sorted(p.stem for p in folder.glob("*.txt"))
        raise DatasetError(f"class list {path} not found; known lists: {known}")
    rows = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
    return [r for r in rows if r]


# ---------------------------------------------------------------- decoding
def decode_resized(path: str, short_side: int, crop: int) -> torch.Tensor:
    """One file -> (3, crop, crop) uint8: decoded as RGB, shorter side resized to ``short_side``
    (bilinear, antialiased), centre crop. A file that is not a decodable image raises
    :class:`DatasetError` naming it."""
    from torchvision.io import ImageReadMode, decode_image, read_file
    from torchvision.transforms.v2 import functional as TF

    try:
        img = decode_image(read_file(path), mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError) as e:
        why = str(e).splitlines()[0].split(", ")[-1] if str(e) else type(e).__name__  # drop the C++ location
        raise DatasetError(f"cannot decode {path} ({why}); replace or delete the file, or build with "
                           f"corrupt='skip'") from None
    img = TF.resize(img, [short_side], antialias=True)
    return TF.center_crop(img, [crop, crop])


class _Decode(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[str], short_side: int, crop: int):
        self.paths, self.short_side, self.crop = paths, short_side, crop

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return decode_resized(self.paths[i], self.short_side, self.crop), ""
        except DatasetError as e:  # reported by the parent, which knows the policy
            return torch.zeros(3, self.crop, self.crop, dtype=torch.uint8), str(e)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # one decode per process: the processes are the parallelism


def decode_split(paths: Sequence[str], short_side: int, crop: int, workers: int,
                 corrupt: str = "error", batch: int = 64) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode ``paths`` in ``workers`` processes (0: in this process) into (N, crop, crop, 3) uint8.
    Returns the images, a keep mask (N,) and the messages of the files left out (``skip``)."""
    loader = torch.utils.data.DataLoader(_Decode(paths, short_side, crop), batch_size=batch,
                                         num_workers=workers, worker_init_fn=_worker_init)
    out = np.empty((len(paths), crop, crop, 3), dtype=np.uint8)
    keep = np.ones(len(paths), dtype=bool)
    errors: list[str] = []
    i = 0
    for x, msgs in loader:
        out[i:i + len(x)] = x.permute(0, 2, 3, 1).numpy()
        for k, m in enumerate(msgs):
            if m:
                if corrupt == "error":
                    raise DatasetError(m)
                keep[i + k] = False
                errors.append(m)
        i += len(x)
    return out, keep, errors


# ---------------------------------------------------------------- the on-disk cache
def cache_root() -> Path:
    env = os.environ.get("MNEMONICS_CACHE")
    return Path(env) if env else PROJECT_ROOT / "data" / "cache"


def _tree_key(tree: FolderTree, crop: int, resize: int, corrupt: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, str(tree.root.resolve()), tree.classes, crop, resize, corrupt]).encode())
    for split in (tree.train, tree.val):
        for p, y in split:
            st = os.stat(p)
            h.update(f"{p}\0{y}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def load_cached(tree: FolderTree, name: str, crop: int, resize: int, *, workers: int | None = None,
                corrupt: str = "error", cache_dir: Path | None = None) -> ArrayData:
    """The tree as an :class:`ArrayData` (train (N, crop, crop, 3), val likewise; labels = class
    positions in ``tree.classes``), from the cache or decoded into it. The key covers every file's
    path, size and modification time, the sizes and the corrupt-file policy."""
    if corrupt not in ("error", "skip"):
        raise DatasetError(f"corrupt must be 'error' or 'skip', got {corrupt!r}")
    cache_dir = Path(cache_dir) if cache_dir is not None else cache_root()
    final = cache_dir / f"{name}-{crop}-{resize}-{_tree_key(tree, crop, resize, corrupt)}"
    if not (final / "manifest.json").exists():
        _build(tree, final, crop, resize, workers, corrupt)
    man = json.loads((final / "manifest.json").read_text())
    arr = {k: np.load(final / f"{k}.npy", mmap_mode="r") for k in ("train_x", "train_y", "val_x", "val_y")}
    skipped = man["skipped"]
    note = f" ({len(skipped)} undecodable file(s) skipped, listed in {final / 'manifest.json'})" if skipped else ""
    return ArrayData(name=name, x_train=arr["train_x"], y_train=np.asarray(arr["train_y"]),
                     x_test=arr["val_x"], y_test=np.asarray(arr["val_y"]), class_names=tree.classes,
                     source=f"{tree.root} (cache {final.name}){note}",
                     fixed_stats=(IMAGENET_MEAN, IMAGENET_STD))


def _build(tree: FolderTree, final: Path, crop: int, resize: int, workers: int | None, corrupt: str) -> None:
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        skipped: list[str] = []
        counts = {}
        for split, samples, short in (("train", tree.train, crop), ("val", tree.val, resize)):
            log.info("decoding %d %s images of %s (%d workers)", len(samples), split, tree.root, workers)
            x, keep, errors = decode_split([p for p, _ in samples], short, crop, workers, corrupt)
            y = np.asarray([c for _, c in samples], dtype=np.int64)
            np.save(tmp / f"{split}_x.npy", x[keep])
            np.save(tmp / f"{split}_y.npy", y[keep])
            skipped += errors
            counts[split] = int(keep.sum())
        manifest = {"version": CACHE_VERSION, "root": str(tree.root), "classes": list(tree.classes),
                    "crop": crop, "resize": resize, "corrupt": corrupt, "counts": counts, "skipped": skipped}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        try:
            os.rename(tmp, final)  # atomic publish; fails if another process published first
        except OSError:
            if not (final / "manifest.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- a run's dataset
FOLDER_NAMES = {  # folders looked for under the data roots, in order
    "caltech101_jpeg": ["caltech101_jpeg"],
    "imagenet_subset": ["imagenet_subset", "imagenet100", "imagenet", "ILSVRC2012"],
    "imagenet": ["imagenet", "ILSVRC2012"],
}


def tree_for_config(config, roots: list[Path] | None = None) -> FolderTree:
    """Find and scan the tree of ``config.dataset`` (ImageNet-Subset: the listed classes only,
    from a full ImageNet tree or a built subset) and check its class count and exemplar budget."""
    from .datasets import _find
    from .protocol import NUM_CLASSES, base_classes

    name = config.dataset
    root = _find(name, FOLDER_NAMES[name], roots,
                 "Place the train/<class>/ and val/<class>/ folders (ImageNet layout) there; for "
                 "ImageNet-Subset, scripts/make_imagenet_subset.py builds one from a full ImageNet tree")
    classes = read_class_list(f"imagenet100_{config.subset_list}") if name == "imagenet_subset" else None
    tree = scan_tree(root, classes)
    if len(tree.classes) != NUM_CLASSES[name]:
        raise DatasetError(f"{root} holds {len(tree.classes)} classes; {name} has {NUM_CLASSES[name]} "
                           f"(point at the complete tree)")
    need = (config.memory_per_class if config.memory_mode == "per_class"
            else config.memory_total // base_classes(config))
    check_budget(tree, need)
    return tree


def load_for_config(config, roots: list[Path] | None = None, workers: int | None = None) -> ArrayData:
    """The run's dataset as uint8 arrays at ``config.image`` sizes (decoded once, then cached)."""
    tree = tree_for_config(config, roots)
    im = config.image
    return load_cached(tree, config.dataset, im.crop, im.resize, workers=workers, corrupt=config.corrupt_images)


def resident_bytes(n_train: int, n_val: int, largest_phase: int, crop: int) -> int:
    """Device bytes a run holds for its data: the uint8 train and val images (the whole split stays
    on the device) and the normalised float32 copy of the largest phase's training set."""
    px = 3 * crop * crop
    return (n_train + n_val) * px + largest_phase * px * 4


def _need_and_have(data: ArrayData, largest_phase: int, crop: int, device: torch.device) -> tuple[int, int]:
    need = resident_bytes(len(data.y_train), len(data.y_test), largest_phase, crop)
    return need, torch.cuda.get_device_properties(device).total_memory


def fits(data: ArrayData, largest_phase: int, crop: int, device: torch.device) -> bool:
    """Whether a folder dataset's device-resident images take at most 90 % of the GPU's memory
    (always true off CUDA: host memory is the operating system's to page)."""
    if device.type != "cuda":
        return True
    need, have = _need_and_have(data, largest_phase, crop, device)
    return need <= 0.9 * have


def check_fits(data: ArrayData, largest_phase: int, crop: int, device: torch.device) -> None:
    """Refuse, before any training, a device-resident folder dataset whose images exceed the GPU."""
    if fits(data, largest_phase, crop, device):
        return
    need, have = _need_and_have(data, largest_phase, crop, device)
    raise DatasetError(f"{data.name} at {crop} px needs {need / 2**30:.1f} GiB of device memory for its "
                       f"images (uint8 splits + the float32 phase set) and {device} has "
                       f"{have / 2**30:.1f} GiB; stream it from host memory (MNEMONICS_RESIDENCY=host, "
                       f"or auto, the default), use a smaller crop (profile) or a GPU with more memory "
                       f"(docs/imagenet.md, memory)")
