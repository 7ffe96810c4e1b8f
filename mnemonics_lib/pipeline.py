"""The fast input pipeline for 32x32 data: tensors resident on the target device, batched
augmentation there, no PIL and no per-image Python in the training loop.

The dataset itself is held once as a uint8 NCHW tensor on the device (:class:`DeviceImages`;
:mod:`mnemonics_lib.streaming` keeps it on the host instead, for sets the device cannot hold).
A phase's training set (real images of the new classes plus the exemplar memory, which may hold
float *mnemonics* pixels) is a float tensor in normalised input space; :func:`augment` applies the
paper's random crop (padding 4) and horizontal flip to a whole batch at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch


@dataclass
class Normaliser:
    """Per-channel normalisation; also gives the normalised value of a black pixel (crop padding)."""

    mean: torch.Tensor  # (1, 3, 1, 1)
    std: torch.Tensor  # (1, 3, 1, 1)

    @classmethod
    def create(cls, mean: Sequence[float], std: Sequence[float], device: torch.device | str) -> "Normaliser":
        m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        return cls(m, s)

    def __call__(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 -> float32 normalised: ``(x / 255 - mean) / std``, computed in place
        in one new tensor (the same values as the three-temporary expression; a large fresh
        tensor costs its page faults, which dominate this step on CPUs)."""
        return x_uint8.to(torch.float32, copy=True).div_(255.0).sub_(self.mean).div_(self.std)

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float -> [0, 1] float (for display and uint8 rounding)."""
        return x * self.std + self.mean

    @property
    def pixel_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised values of pixel 0 and pixel 1, (1, 3, 1, 1) each."""
        return (-self.mean / self.std, (1 - self.mean) / self.std)


def select_classes(y: torch.Tensor, classes: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Indices of the labels in ``y`` that are in ``classes``; (M,) int64 on y's device."""
    classes = torch.as_tensor(classes, device=y.device)
    return torch.nonzero(torch.isin(y, classes)).flatten()


class DeviceImages:
    """A split of a 32x32 dataset as one uint8 (N, 3, H, W) tensor plus int64 labels, on ``device``."""

    def __init__(self, x_nhwc: np.ndarray, y: np.ndarray, device: torch.device | str):
        self.x = torch.from_numpy(np.ascontiguousarray(x_nhwc)).to(device).permute(0, 3, 1, 2).contiguous()
        self.y = torch.as_tensor(y, dtype=torch.int64, device=device)

    def __len__(self) -> int:
        return len(self.y)

    def select(self, classes: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Indices of the images whose label is in ``classes``; (M,) int64."""
        return select_classes(self.y, classes)

    def normalised(self, idx: torch.Tensor, norm: Normaliser) -> torch.Tensor:
        """The images at ``idx`` as one normalised float32 tensor (the streamed counterpart,
        :meth:`mnemonics_lib.streaming.HostImages.normalised`, reads them lazily)."""
        return norm(self.x[idx])


def draw_augment(n: int, generator: torch.Generator, device: torch.device | str, padding: int = 4,
                 flip: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The random part of :func:`augment` for ``n`` images: crop offsets (n, 2) and flip flags (n,)
    (None without ``flip``), drawn from ``generator`` in that order."""
    offs = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator, device=device)
    do_flip = torch.rand(n, generator=generator, device=device) < 0.5 if flip else None
    return offs, do_flip


def apply_augment(x: torch.Tensor, offs: torch.Tensor, do_flip: torch.Tensor | None, pad_value: torch.Tensor,
                  padding: int = 4) -> torch.Tensor:
    """The arithmetic part of :func:`augment`: pure data movement (pad, crop, flip), so applying it
    to many batches at once gives each image exactly the values a per-batch call gives."""
    b, c, h, w = x.shape
    padded = pad_value.to(x.dtype).expand(b, c, h + 2 * padding, w + 2 * padding).clone()
    padded[:, :, padding:padding + h, padding:padding + w] = x
    rows = offs[:, 0:1] + torch.arange(h, device=x.device)  # (B, H)
    cols = offs[:, 1:2] + torch.arange(w, device=x.device)  # (B, W)
    if do_flip is not None:
        cols = torch.where(do_flip[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def augment(x: torch.Tensor, generator: torch.Generator, pad_value: torch.Tensor,
            padding: int = 4, flip: bool = True) -> torch.Tensor:
    """Random crop with zero-pixel padding and random horizontal flip for a whole batch.

    x: (B, C, H, W) float, normalised. pad_value: (1, C, 1, 1), the normalised black pixel, so the
    result equals torchvision's RandomCrop(H, padding) + RandomHorizontalFlip on the raw image.
    All randomness comes from ``generator`` (on x's device), so a seed reproduces a batch.
    """
    return apply_augment(x, *draw_augment(x.shape[0], generator, x.device, padding, flip), pad_value, padding)


# images one preparation call handles in :func:`augmented_batches` on CUDA (32 batches of 128:
# ~200 MB of float32 intermediates at 32x32). Per batch, gather + crop/flip + layout copy are ~12
# small kernels that the GPU runs in series with the training step (a visible share of a graphed
# step in the step profile, docs/study.md); prepared for 32 batches at once they are 12 larger
# kernels. On a CPU the same chunk is slower (it leaves the cache), so there a chunk is one batch.
PREP_CHUNK_IMAGES = 4096


def default_prep_chunk(device: torch.device | str, batch_size: int) -> int:
    return PREP_CHUNK_IMAGES if torch.device(device).type == "cuda" else batch_size


def augmented_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator,
                      pad_value: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format,
                      transform=None, chunk_images: int | None = None, augmenter: "ResizedCropFlip | None" = None,
                      shard: tuple[int, int] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One shuffled epoch of augmented ``(x, y)`` batches, prepared ``chunk_images`` at a time
    (default: :func:`default_prep_chunk`).

    Bit-identical to ``batch_indices`` + ``transform`` + :func:`augment` per batch + a copy into
    ``memory_format``: the generator is drawn in the same order (the permutation, then each batch's
    offsets and flips in batch order; nothing else draws from it while an epoch trains) and the
    rest is data movement. ``transform`` (e.g. a :class:`Normaliser`) maps gathered images to the
    network's input; the batches are views into the chunk (contiguous in ``memory_format``).
    ``augmenter``: another batched augmentation with the same ``draw`` / ``apply`` split (the
    folder datasets' :class:`ResizedCropFlip`); None is the 32x32 sets' padded crop + flip.
    ``shard``: ``(rank, world)`` under data parallelism: the same draws from ``generator`` (the
    whole global batch's), then only this rank's slice of each batch
    (:func:`mnemonics_lib.distributed.shard_bounds`) is gathered and augmented; the slices of
    all ranks, concatenated in rank order, are the single-process batch."""
    chunk_images = default_prep_chunk(x.device, batch_size) if chunk_images is None else chunk_images
    per_chunk = max(1, chunk_images // batch_size) * batch_size  # whole batches, so batches match
    draw, apply = (draw_augment, apply_augment) if augmenter is None else (augmenter.draw, augmenter.apply)
    # the chunks are batch_indices' batches of per_chunk: one permutation, drawn before any crop
    for idx in batch_indices(len(y), per_chunk, generator, x.device):
        starts = range(0, len(idx), batch_size)
        draws = [draw(min(batch_size, len(idx) - s), generator, x.device) for s in starts]
        if shard is not None:
            yield from _sharded_chunk(x, y, idx, starts, batch_size, draws, shard, transform, apply,
                                      pad_value, memory_format)
            continue
        xs = x[idx] if transform is None else transform(x[idx])
        xs = apply(xs, *(torch.cat(list(d)) for d in zip(*draws)), pad_value)
        xs = xs.contiguous(memory_format=memory_format)
        ys = y[idx]
        for s in starts:
            yield xs[s:s + batch_size], ys[s:s + batch_size]


def _sharded_chunk(x, y, idx, starts, batch_size, draws, shard, transform, apply, pad_value, memory_format):
    """:func:`augmented_batches`' chunk, this rank's slice of each batch only."""
    from .distributed import shard_bounds

    bounds = [shard_bounds(min(batch_size, len(idx) - s), *shard) for s in starts]
    sel = torch.cat([idx[s + lo:s + hi] for s, (lo, hi) in zip(starts, bounds)])
    params = [torch.cat([d[j][lo:hi] for d, (lo, hi) in zip(draws, bounds)]) for j in range(len(draws[0]))]
    if not len(sel):  # only an empty slice (a last batch smaller than the world): its shape only
        sel, params = idx[:1], [d[:1] for d in draws[0]]
    xs = x[sel] if transform is None else transform(x[sel])
    xs = apply(xs, *params, pad_value).contiguous(memory_format=memory_format)
    if not sum(hi - lo for lo, hi in bounds):
        xs, sel = xs[:0], sel[:0]
    ys = y[sel]
    at = 0
    for lo, hi in bounds:
        yield xs[at:at + hi - lo], ys[at:at + hi - lo]
        at += hi - lo


@dataclass(frozen=True)
class ResizedCropFlip:
    """torchvision's RandomResizedCrop(size, scale, ratio) + RandomHorizontalFlip for a whole batch,
    per-sample parameters, one ``grid_sample`` for the batch (the images of a folder set).

    ``draw`` follows torchvision's rule vectorised: 10 candidate (area, log-aspect) pairs per image,
    the first that fits is used, else the whole image clamped to the ratio range, centred; then the
    crop's position and the flip. ``apply`` resamples each box to ``size`` x ``size`` bilinearly
    with half-pixel centres (``align_corners=False``), the mapping of torchvision's resize of the
    cropped box; at the box's edge it interpolates with the image pixel just outside the box
    where torchvision (which crops first) repeats the edge. Boxes never exceed the image; at the
    image's border the edge pixel is repeated, as torchvision does."""

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    height: int | None = None  # the stored images' size; None: ``size``
    width: int | None = None

    def draw(self, n: int, generator: torch.Generator, device: torch.device | str
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes (n, 4) float (top, left, height, width in pixels) and flip flags (n,) bool."""
        H, W = self.height or self.size, self.width or self.size
        u = torch.rand(n, 10, 2, generator=generator, device=device)
        pos = torch.rand(n, 2, generator=generator, device=device)
        flip = torch.rand(n, generator=generator, device=device) < 0.5
        area = H * W * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[..., 0])
        lo, hi = np.log(self.ratio[0]), np.log(self.ratio[1])
        aspect = torch.exp(lo + (hi - lo) * u[..., 1])
        w, h = torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()
        ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)
        first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1, device=device))
        # fallback (no candidate fits): the whole image, its aspect clamped into the ratio range
        in_ratio = W / H
        fw = W if in_ratio <= self.ratio[1] else round(H * self.ratio[1])
        fh = H if in_ratio >= self.ratio[0] else round(W / self.ratio[0])
        pick = first.clamp_min(0)[:, None]
        h = torch.where(first >= 0, h.gather(1, pick)[:, 0], torch.full((n,), float(fh), device=device))
        w = torch.where(first >= 0, w.gather(1, pick)[:, 0], torch.full((n,), float(fw), device=device))
        top = torch.floor(pos[:, 0] * (H - h + 1)).clamp_max(H - h)
        left = torch.floor(pos[:, 1] * (W - w + 1)).clamp_max(W - w)
        return torch.stack([top, left, h, w], 1), flip

    def apply(self, x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor,
              pad_value: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W) float -> (B, C, size, size); ``pad_value`` is unused (no box leaves the
        image) and accepted for :func:`augmented_batches`' call."""
        b, _, H, W = x.shape
        top, left, h, w = boxes.to(x.dtype).unbind(1)
        sx = (w / W) * torch.where(flip, -1.0, 1.0).to(x.dtype)
        theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
        theta[:, 0, 0], theta[:, 0, 2] = sx, (2 * left + w) / W - 1
        theta[:, 1, 1], theta[:, 1, 2] = h / H, (2 * top + h) / H - 1
        grid = torch.nn.functional.affine_grid(theta, [b, x.shape[1], self.size, self.size], align_corners=False)
        return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                               align_corners=False)


def batch_indices(n: int, batch_size: int, generator: torch.Generator | None, device: torch.device | str,
                  shuffle: bool = True) -> Iterator[torch.Tensor]:
    """Index batches over ``n`` items; the last batch may be smaller (no data is dropped)."""
    order = (torch.randperm(n, generator=generator, device=device) if shuffle
             else torch.arange(n, device=device))
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def preferred_memory_format(device: torch.device | str) -> torch.memory_format:
    """channels_last on CUDA (faster cuDNN convolutions, bench.py measures it); the default NCHW
    layout on CPU, where channels_last is no faster (bench.py) and where torch 2.14's weight gradient of a strided 1x1 convolution in channels_last corrupts
    the heap with 2+ threads and an odd batch size (an exemplar set's last batch; reproduced in
    tests/test_engine.py::test_two_threads_and_an_odd_last_batch_train_on_cpu)."""
    return torch.channels_last if torch.device(device).type == "cuda" else torch.contiguous_format


def tune_backends(device: torch.device | str) -> None:
    """cuDNN autotuning on CUDA: the shapes are fixed (32x32, one batch size), so benchmarking
    the convolution algorithms once pays back at once. The trainer and the benchmark (both of
    its sides, as the field's codes set it too) call this."""
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g
