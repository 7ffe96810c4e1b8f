"""Backbones and growing classifier heads.

* ResNet-32 for 32x32 inputs (He et al. 2016, §4.2: 3 stages x n basic blocks, 16/32/64 channels,
  64-d feature); ``depth = 6n + 2`` so the smoke profile can use ResNet-8 with the same code.
* ResNet-18 for ImageNet-size inputs (He et al. 2016, Table 1).
* ``last_relu=False`` removes the ReLU after the last block, as LUCIR does (Hou et al. 2019, §3.2):
  features may then be negative, which the cosine head needs to spread classes over the sphere.
* :class:`CosineHead` (LUCIR's cosine normalisation with learnable scale sigma) and
  :class:`LinearHead` grow by appending one weight chunk per phase, so old-class weights are kept
  bit-for-bit and can be frozen as a unit.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, relu_out: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu_out = relu_out
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            # projection shortcut (conv1x1 + BN), as in the LUCIR / Mnemonics CIFAR ResNets
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(out) if self.relu_out else out


def _stage(cin: int, cout: int, blocks: int, stride: int, last_relu: bool) -> nn.Sequential:
    layers = []
    for i in range(blocks):
        last = i == blocks - 1
        layers.append(BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1,
                                 relu_out=not last or last_relu))
    return nn.Sequential(*layers)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images. forward: (B, 3, 32, 32) -> (B, 4*width) features."""

    def __init__(self, depth: int = 32, width: int = 16, last_relu: bool = True):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (8, 20, 32, 44, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.stage1 = _stage(width, width, n, 1, True)
        self.stage2 = _stage(width, 2 * width, n, 2, True)
        self.stage3 = _stage(2 * width, 4 * width, n, 2, last_relu)
        self.out_dim = 4 * width
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.stage3(self.stage2(self.stage1(x)))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class ResNet18(nn.Module):
    """ResNet-18 for ImageNet-size images (7x7/2 stem + max-pool, 4 stages of 2 basic blocks).
    forward: (B, 3, H, W) -> (B, 8 * width) features (512 at the standard width 64); ``width``
    below 64 only for the smoke profile's tests."""

    def __init__(self, last_relu: bool = True, width: int = 64):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(3, w, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.layer1 = _stage(w, w, 2, 1, True)
        self.layer2 = _stage(w, 2 * w, 2, 2, True)
        self.layer3 = _stage(2 * w, 4 * w, 2, 2, True)
        self.layer4 = _stage(4 * w, 8 * w, 2, 2, last_relu)
        self.out_dim = 8 * w
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class CosineHead(nn.Module):
    """LUCIR's cosine classifier: logits = sigma * <w_c/|w_c|, f/|f|>; one weight chunk per phase.

    ``forward`` returns the scaled logits (B, C); ``cosine`` the unscaled cosines used by the
    margin ranking loss.
    """

    def __init__(self, in_dim: int, n_classes: int, learn_sigma: bool = True):
        super().__init__()
        self.in_dim = in_dim
        self.weights = nn.ParameterList()
        self.sigma = nn.Parameter(torch.ones(1), requires_grad=learn_sigma)
        self.grow(n_classes)

    @property
    def n_classes(self) -> int:
        return sum(w.shape[0] for w in self.weights)

    def grow(self, n_new: int, init: torch.Tensor | None = None) -> None:
        """Append ``n_new`` class weights: ``init`` (n_new, D) (imprinting) or uniform random."""
        if init is None:
            stdv = 1.0 / math.sqrt(self.in_dim)
            init = torch.empty(n_new, self.in_dim).uniform_(-stdv, stdv)
        dev = self.sigma.device
        self.weights.append(nn.Parameter(init.detach().clone().to(dev)))

    def weight(self) -> torch.Tensor:
        return torch.cat(list(self.weights), 0)

    def cosine(self, f: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(f, dim=1), F.normalize(self.weight(), dim=1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.sigma * self.cosine(f)


class LinearHead(nn.Module):
    """An ordinary fully connected classifier that grows by one chunk per phase."""

    def __init__(self, in_dim: int, n_classes: int):
        super().__init__()
        self.in_dim = in_dim
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.grow(n_classes)

    @property
    def n_classes(self) -> int:
        return sum(w.shape[0] for w in self.weights)

    def grow(self, n_new: int, init: torch.Tensor | None = None) -> None:
        layer = nn.Linear(self.in_dim, n_new)  # default PyTorch init for the new chunk
        dev = self.weights[0].device if len(self.weights) else "cpu"
        w = layer.weight if init is None else init
        self.weights.append(nn.Parameter(w.detach().clone().to(dev)))
        self.biases.append(nn.Parameter(layer.bias.detach().clone().to(dev)))

    def weight(self) -> torch.Tensor:
        return torch.cat(list(self.weights), 0)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return F.linear(f, self.weight(), torch.cat(list(self.biases), 0))


class IncrementalNet(nn.Module):
    """Backbone + growing head. forward: images -> logits over all classes seen so far."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_net(kind: str, n_classes: int, *, depth: int = 32, width: int = 16, cosine: bool = False,
              image_size: int = 32) -> IncrementalNet:
    """``kind``: ``resnet`` picks ResNet-(depth) for 32x32 inputs and ResNet-18 above that;
    ``resnet18`` is the ImageNet ResNet-18 at any input size (the folder datasets), ``width`` its
    first stage's channels. ``cosine=True`` gives LUCIR's variant (no last ReLU, cosine head)."""
    if kind not in ("resnet", "resnet18"):
        raise ValueError(f"unknown backbone kind {kind!r}")
    last_relu = not cosine
    if kind == "resnet18":
        bb = ResNet18(last_relu, width)
    else:
        bb = CifarResNet(depth, width, last_relu) if image_size <= 64 else ResNet18(last_relu)
    head = CosineHead(bb.out_dim, n_classes) if cosine else LinearHead(bb.out_dim, n_classes)
    return IncrementalNet(bb, head)


def head_sizes(net: IncrementalNet) -> list[int]:
    return [w.shape[0] for w in net.head.weights]
