"""Input-pipeline benchmark on a class-folder JPEG tree: images/s of the study's folder pipeline
against torchvision's ImageFolder + PIL transforms + DataLoader, on the same images, workers and cores.

    python scripts/bench_folder_data.py                       # caltech101_jpeg, quick and paper sizes
    python scripts/bench_folder_data.py --sizes quick --repeats 5 --workers 2

What is timed, per training epoch (every image of train/ once, batches of 128, normalised float
tensors of crop x crop out):

* reference: ``ImageFolder`` + ``RandomResizedCrop(crop)`` + ``RandomHorizontalFlip`` + ``ToTensor``
  + ``Normalize`` in a ``DataLoader`` with ``--workers`` worker processes (each decodes every JPEG,
  every epoch);
* study: the uint8 cache of :mod:`mnemonics_lib.folder_data` (decoded once) gathered, normalised and
  cropped by the batched ``ResizedCropFlip`` (:func:`mnemonics_lib.pipeline.augmented_batches`,
  as the trainer does), in this process with ``--workers`` threads.

``ratio_vs_imagefolder`` = study images/s / reference images/s per epoch, median of ``--repeats``
interleaved pairs. The cache build (a one-time decode with the same worker count) is timed too and
reported as its own rate and as the ratio over a run's first epoch (build + one epoch). Evaluation
(resize + centre crop) is timed the same way. ``--train-device cuda`` adds ResNet-18 training images/s
end to end, compute alone on a fixed batch, and the input's share of the time (does the GPU wait?). The result goes to results/bench/<utc>-<device>-folder-data.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mnemonics_lib.backbones import build_net  # noqa: E402
from mnemonics_lib.config import IMAGE_SETTINGS  # noqa: E402
from mnemonics_lib.datasets import IMAGENET_MEAN, IMAGENET_STD, data_roots  # noqa: E402
from mnemonics_lib.folder_data import load_cached, scan_tree  # noqa: E402
from mnemonics_lib.pipeline import Normaliser, ResizedCropFlip, augmented_batches, make_generator  # noqa: E402

BATCH = 128


def reference_epoch(root: Path, crop: int, resize: int, workers: int, train: bool) -> tuple[int, float]:
    """One epoch of torchvision's ImageFolder pipeline: (images, seconds)."""
    from torchvision import datasets, transforms

    tf = ([transforms.RandomResizedCrop(crop), transforms.RandomHorizontalFlip()] if train
          else [transforms.Resize(resize), transforms.CenterCrop(crop)])
    tf = transforms.Compose(tf + [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    ds = datasets.ImageFolder(str(root / ("train" if train else "val")), transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=train, num_workers=workers)
    t0, n = time.perf_counter(), 0
    for x, _ in loader:
        n += len(x)
    return n, time.perf_counter() - t0


def study_epoch(x_u8: torch.Tensor, y: torch.Tensor, crop: int, train: bool, seed: int) -> tuple[int, float]:
    """One epoch of the study's pipeline over the cached uint8 images: (images, seconds)."""
    norm = Normaliser.create(IMAGENET_MEAN, IMAGENET_STD, "cpu")
    t0, n = time.perf_counter(), 0
    if train:
        aug = ResizedCropFlip(crop)
        for xb, _ in augmented_batches(x_u8, y, BATCH, make_generator(seed, "cpu"), norm.pixel_range[0],
                                       transform=norm, augmenter=aug):
            n += len(xb)
    else:
        for s in range(0, len(y), BATCH):
            n += len(norm(x_u8[s:s + BATCH]))
    return n, time.perf_counter() - t0


def train_throughput(x_u8: torch.Tensor, y: torch.Tensor, crop: int, device: str, batches: int,
                     amp: bool) -> dict:
    """End-to-end ResNet-18 training images/s on ``device`` with the study's pipeline, and how much
    of a step the input takes: the same batches timed as input only, as steps on a fixed batch, and
    both together (synchronised per phase on CUDA)."""
    dev = torch.device(device)
    x_u8, y = x_u8.to(dev), y.to(dev)
    net = build_net("resnet18", int(y.max()) + 1).to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    norm = Normaliser.create(IMAGENET_MEAN, IMAGENET_STD, dev)
    aug = ResizedCropFlip(crop)

    def batches_of(seed: int):
        it = augmented_batches(x_u8, y, BATCH, make_generator(seed, dev), norm.pixel_range[0],
                               torch.channels_last, transform=norm, augmenter=aug)
        for k, b in enumerate(it):
            if k == batches:
                return
            yield b

    def step(xb, yb):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(net(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def timed(fn) -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    fixed = next(batches_of(0))
    for _ in range(3):  # warm-up (cuDNN autotuning, allocator)
        step(*fixed)
    n = sum(len(b) for _, b in batches_of(1))
    input_s = timed(lambda: [None for _ in batches_of(1)])
    compute_s = timed(lambda: [step(*fixed) for _ in range(batches)])
    end_s = timed(lambda: [step(xb, yb) for xb, yb in batches_of(2)])
    return {"device": str(dev), "amp_bf16": amp, "batches": batches, "images": n,
            "input_images_per_s": n / input_s, "compute_images_per_s": batches * BATCH / compute_s,
            "end_to_end_images_per_s": n / end_s, "input_share_of_step": input_s / end_s}


def _nchw(a) -> torch.Tensor:
    return torch.from_numpy(a.copy()).permute(0, 3, 1, 2).contiguous()


def bench_size(root: Path, profile: str, workers: int, repeats: int, train_device: str | None = None,
               train_batches: int = 20, amp: bool = False) -> dict:
    im = IMAGE_SETTINGS[profile]
    tree = scan_tree(root)
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        data = load_cached(tree, "bench", im.crop, im.resize, workers=workers, cache_dir=Path(cache))
        build_s = time.perf_counter() - t0
        n_files = len(tree.train) + len(tree.val)
        xs = {True: _nchw(data.x_train), False: _nchw(data.x_test)}
        ys = {True: torch.from_numpy(data.y_train.copy()), False: torch.from_numpy(data.y_test.copy())}
    out = {"crop": im.crop, "resize": im.resize, "cache_build_s": build_s,
           "cache_build_images_per_s": n_files / build_s}
    for train in (True, False):
        ref, ours = [], []
        for r in range(repeats):  # interleaved, so a change in machine load hits both sides alike
            n_ref, s_ref = reference_epoch(root, im.crop, im.resize, workers, train)
            n_our, s_our = study_epoch(xs[train], ys[train], im.crop, train, seed=r)
            assert n_ref == n_our, (n_ref, n_our)
            ref.append(n_ref / s_ref)
            ours.append(n_our / s_our)
        key = "train" if train else "eval"
        out[key] = {"images": n_ref, "imagefolder_images_per_s": statistics.median(ref),
                    "study_images_per_s": statistics.median(ours),
                    "imagefolder_runs": ref, "study_runs": ours,
                    "ratio_vs_imagefolder": statistics.median(ours) / statistics.median(ref)}
    if train_device:
        out["training"] = train_throughput(xs[True], ys[True], im.crop, train_device, train_batches, amp)
    tr = out["train"]
    first = build_s + tr["images"] / tr["study_images_per_s"]
    out["train"]["ratio_first_epoch"] = (tr["images"] / tr["imagefolder_images_per_s"]) / first
    out["ratio_vs_imagefolder"] = tr["ratio_vs_imagefolder"]
    return out


def _commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "mnemonics_lib", "scripts"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=None, help="tree with train/ and val/ (default: caltech101_jpeg)")
    ap.add_argument("--sizes", default="quick,paper", help="profiles whose image sizes to time (quick, paper, smoke)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="DataLoader workers of the reference = threads of the study pipeline")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-device", default=None,
                    help="also time ResNet-18 training end to end on this device (cpu, cuda)")
    ap.add_argument("--train-batches", type=int, default=20)
    ap.add_argument("--amp", action="store_true", help="bf16 autocast in the training measurement")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    a = ap.parse_args(argv)
    root = a.root or next((r / "caltech101_jpeg" for r in data_roots() if (r / "caltech101_jpeg").is_dir()), None)
    if root is None or not root.is_dir():
        sys.exit("error: no caltech101_jpeg folder under the data roots; pass --root <tree with train/ and val/>")
    torch.set_num_threads(a.workers)
    t0 = time.perf_counter()
    sizes = {p: bench_size(root, p, a.workers, a.repeats, a.train_device, a.train_batches, a.amp)
             for p in a.sizes.split(",")}
    rec = {
        "schema": "folder-data-bench/1", "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": root.name, "root": str(root), "batch": BATCH, "workers": a.workers, "repeats": a.repeats,
        "device": {"type": "cpu", "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                   "machine": platform.machine(), "load_avg_at_start": os.getloadavg(),
                   "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "provenance": {"commit": _commit(), "torch": torch.__version__, "python": platform.python_version()},
        "sizes": sizes, "ratio_vs_imagefolder": {p: s["ratio_vs_imagefolder"] for p, s in sizes.items()},
        "wall_s": time.perf_counter() - t0,
    }
    a.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    kind = "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name().lower().replace(" ", "-")
    path = a.out / f"{stamp}-{kind}-{a.workers}w-folder-data.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=1))
    os.replace(tmp, path)
    for p, s in sizes.items():
        print(f"{p} ({s['crop']} px): train {s['train']['study_images_per_s']:.0f} vs "
              f"{s['train']['imagefolder_images_per_s']:.0f} img/s -> {s['ratio_vs_imagefolder']:.2f}x "
              f"(first epoch incl. cache build {s['train']['ratio_first_epoch']:.2f}x); eval "
              f"{s['eval']['ratio_vs_imagefolder']:.2f}x; cache build {s['cache_build_images_per_s']:.0f} img/s")
        if "training" in s:
            t = s["training"]
            print(f"  training on {t['device']}: {t['end_to_end_images_per_s']:.0f} img/s end to end, "
                  f"{t['compute_images_per_s']:.0f} compute only, input {t['input_share_of_step']:.0%} of the time")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
