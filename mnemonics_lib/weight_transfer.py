"""Weight transfer: frozen convolutions with learnable per-kernel scales and per-channel shifts.

Used by Mnemonics Training (Liu et al., CVPR 2020, Sec. 4) in the later incremental phases and
taken from Meta-Transfer Learning (Sun, Liu, Chua, Schiele, CVPR 2019, "scaling and shifting"):
each convolution weight W (out, in, kh, kw) is frozen and replaced by W ⊙ Φ_S1 with a learnable
scale Φ_S1 of shape (out, in, 1, 1) (initialised to 1), and its output gets a learnable shift
Φ_S2 of shape (out,) (initialised to 0). BatchNorm and the classifier are untouched and stay
trainable. The paper treats this as a design choice separate from the exemplars; keep it a
separate switch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ScaledConv2d", "apply_weight_transfer", "is_weight_transferred"]


class ScaledConv2d(nn.Module):
    """A frozen nn.Conv2d with learnable ``scale`` (out, in/groups, 1, 1) and ``shift`` (out,).

    The frozen ``weight`` (and ``bias`` if any) are *buffers*: no optimiser built from
    ``parameters()`` can touch them and ``requires_grad_()`` on the model cannot unfreeze them,
    yet they stay in ``state_dict`` under the same keys as in the wrapped nn.Conv2d (so a
    checkpoint saved before the transfer loads with ``strict=False``, missing only scale/shift)
    and :func:`torch.func.functional_call` can substitute them like any other tensor.
    forward: x (B, in, H, W) -> (B, out, H', W').
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.in_channels = conv.in_channels
        self.out_channels = conv.out_channels
        self.kernel_size = conv.kernel_size
        self.stride = conv.stride
        self.padding = conv.padding
        self.dilation = conv.dilation
        self.groups = conv.groups
        self.padding_mode = conv.padding_mode
        # nn.Conv2d pads explicitly (F.pad) for non-"zeros" modes; keep its precomputed amounts.
        self._pad = tuple(conv._reversed_padding_repeated_twice)
        weight = conv.weight.detach().clone()
        self.register_buffer("weight", weight)
        bias = None if conv.bias is None else conv.bias.detach().clone()
        self.register_buffer("bias", bias)
        self.scale = nn.Parameter(torch.ones(weight.shape[:2] + (1, 1), dtype=weight.dtype,
                                             device=weight.device))
        self.shift = nn.Parameter(torch.zeros(weight.shape[0], dtype=weight.dtype,
                                              device=weight.device))

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight * self.scale
        if self.padding_mode != "zeros":
            x = F.pad(x, self._pad, mode=self.padding_mode)
            padding: tuple[int, ...] | str = (0, 0)
        else:
            padding = self.padding
        out = F.conv2d(x, weight, self.bias, self.stride, padding, self.dilation, self.groups)
        return out + self.shift.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}"
        )


def apply_weight_transfer(model: nn.Module) -> nn.Module:
    """Replace every nn.Conv2d of ``model`` by a :class:`ScaledConv2d`, in place; return ``model``.

    Idempotent: already wrapped convolutions are left alone. Outputs are bit-identical right
    after wrapping (scale 1 and shift 0 are exact in floating point).
    """
    if isinstance(model, nn.Conv2d):
        raise TypeError("pass a model containing convolutions, not a bare nn.Conv2d")
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Conv2d)
    ]
    for parent, name, child in targets:
        setattr(parent, name, ScaledConv2d(child))
    return model


def is_weight_transferred(model: nn.Module) -> bool:
    """True iff the model has at least one ScaledConv2d and no remaining plain nn.Conv2d."""
    modules = list(model.modules())
    return any(isinstance(m, ScaledConv2d) for m in modules) and not any(
        isinstance(m, nn.Conv2d) for m in modules
    )
