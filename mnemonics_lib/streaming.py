"""Datasets held in host memory and streamed to the training device a batch at a time.

The device-resident design (:class:`~mnemonics_lib.pipeline.DeviceImages`, each phase's training
set as one normalised float32 tensor) cannot hold full ImageNet at 224 px: its phase 0 alone is
~359 GiB as float32 (docs/imagenet.md, memory). Here the uint8 splits stay on the host (the folder
cache is memory-mapped, so the operating system's page cache holds what fits) and a phase's
training set is a :class:`StreamedImages`: a lazy view made of row numbers into the host array
and, after them, the exemplar memory (float, on the device, where mnemonics optimise pixels).

Indexing a view (a slice, an index tensor or a mask) gathers exactly those images, copies them to
the device and normalises them there, so every consumer that reads batches (``x[idx]``,
``x[i:i + b]``) sees the values the resident path computes for the same rows, bit for bit. Only
the places that take a large subset keep it lazy, through :func:`subset`; :func:`concat` appends
the exemplars. Plain tensors pass through both helpers unchanged, so the resident path runs the
same code as before.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .pipeline import select_classes

RESIDENCIES = ("auto", "device", "host")


class HostImages:
    """A split kept as the host's (N, H, W, 3) uint8 array (a memory map of the cache is not read
    here), with int64 labels on ``device``; its images reach the device through
    :meth:`normalised` views."""

    def __init__(self, x_nhwc: np.ndarray, y: np.ndarray, device: torch.device | str):
        if x_nhwc.ndim != 4 or x_nhwc.shape[3] != 3 or x_nhwc.dtype != np.uint8:
            raise ValueError(f"expected (N, H, W, 3) uint8 images, got {x_nhwc.shape} {x_nhwc.dtype}")
        self.x = x_nhwc
        self.y = torch.as_tensor(np.asarray(y), dtype=torch.int64, device=device)
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.y)

    def select(self, classes: torch.Tensor | Sequence[int]) -> torch.Tensor:
        return select_classes(self.y, classes)

    def normalised(self, idx: torch.Tensor, norm) -> "StreamedImages":
        """The images at ``idx``, normalised by ``norm`` when read (a lazy view)."""
        return StreamedImages(self.x, torch.as_tensor(idx).cpu().long(), norm, self.device)


class StreamedImages:
    """A lazy (N, 3, H, W) float32 tensor of normalised images.

    ``rows`` (CPU int64) says where each image comes from: ``r >= 0`` is row ``r`` of the host
    array ``source``, ``r < 0`` is row ``-1 - r`` of ``extra`` (a float tensor on the device, e.g.
    the exemplars). ``flipped``: every image mirrored left-right (``x.flip(3)``)."""

    dtype = torch.float32

    def __init__(self, source: np.ndarray, rows: torch.Tensor, norm, device: torch.device | str,
                 extra: torch.Tensor | None = None, flipped: bool = False):
        self.source, self.rows, self.norm = source, rows, norm
        self.device = torch.device(device)
        self.extra = extra
        self.flipped = flipped

    def _like(self, rows: torch.Tensor, extra: torch.Tensor | None = None, flipped: bool | None = None):
        return StreamedImages(self.source, rows, self.norm, self.device,
                              self.extra if extra is None else extra,
                              self.flipped if flipped is None else flipped)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> torch.Size:
        _, h, w, c = self.source.shape
        return torch.Size((len(self.rows), c, h, w))

    def _positions(self, key) -> torch.Tensor:
        if isinstance(key, slice):
            return torch.arange(len(self.rows))[key]
        key = torch.as_tensor(key).cpu()
        if key.dtype == torch.bool:
            if key.shape != (len(self.rows),):
                raise IndexError(f"mask of shape {tuple(key.shape)} for {len(self.rows)} images")
            return torch.nonzero(key).flatten()
        if key.dtype not in (torch.int64, torch.int32) or key.ndim != 1:
            raise IndexError(f"index a StreamedImages with a slice, a mask or a 1-d index tensor, not {key!r}")
        return key.long()

    def subset(self, key) -> "StreamedImages":
        """The images at ``key`` (slice, mask or index tensor), still lazy."""
        return self._like(self.rows[self._positions(key)])

    def concat(self, more: torch.Tensor) -> "StreamedImages":
        """This view followed by ``more`` ((M, 3, H, W) float, normalised, on the device)."""
        if tuple(more.shape[1:]) != tuple(self.shape[1:]):
            raise ValueError(f"cannot append images of shape {tuple(more.shape[1:])} to {tuple(self.shape[1:])}")
        if self.flipped:
            raise ValueError("cannot append to a flipped view")
        have = 0 if self.extra is None else len(self.extra)
        extra = more if self.extra is None else torch.cat([self.extra, more])
        rows = torch.cat([self.rows, -1 - (have + torch.arange(len(more)))])
        return self._like(rows, extra=extra.to(self.device))

    def flip(self, dims) -> "StreamedImages":
        """``x.flip(3)``: the images mirrored left-right (the only flip the study takes)."""
        if tuple(np.atleast_1d(dims)) not in ((3,), (-1,)):
            raise ValueError(f"StreamedImages flips the width axis (3) only, not {dims}")
        return self._like(self.rows, flipped=not self.flipped)

    def __getitem__(self, key) -> torch.Tensor:
        """The images at ``key`` as a contiguous float32 tensor on the device."""
        rows = self.rows[self._positions(key)]
        host = rows >= 0
        if bool(host.all()):  # also an empty selection: _read gives its shape
            out = self._read(rows.numpy())
        elif not bool(host.any()):
            out = self._extra(rows)
        else:
            out = torch.empty((len(rows), *self.shape[1:]), dtype=self.dtype, device=self.device)
            out[host.to(self.device)] = self._read(rows[host].numpy())
            out[(~host).to(self.device)] = self._extra(rows[~host])
        return out.flip(3) if self.flipped else out

    def _extra(self, rows: torch.Tensor) -> torch.Tensor:
        return self.extra[(-1 - rows).to(self.extra.device)].to(self.device, self.dtype)

    def _read(self, rows: np.ndarray) -> torch.Tensor:
        # rows read in ascending order (sequential within a memory-mapped file), then put back
        order = np.argsort(rows, kind="stable")
        batch = np.empty((len(rows), *self.source.shape[1:]), dtype=np.uint8)
        batch[order] = self.source[rows[order]]
        t = torch.from_numpy(batch)
        if self.device.type == "cuda":
            t = t.pin_memory()
        t = t.to(self.device, non_blocking=True).permute(0, 3, 1, 2).contiguous()
        return self.norm(t)


def subset(x: torch.Tensor | StreamedImages, key) -> torch.Tensor | StreamedImages:
    """``x[key]`` that stays lazy for a streamed set (a large selection is not materialised)."""
    return x.subset(key) if isinstance(x, StreamedImages) else x[key]


def concat(x: torch.Tensor | StreamedImages, more: torch.Tensor) -> torch.Tensor | StreamedImages:
    """``torch.cat([x, more])`` for a resident or a streamed ``x``."""
    return x.concat(more) if isinstance(x, StreamedImages) else torch.cat([x, more])
