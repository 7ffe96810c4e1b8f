"""Tests for mnemonics_lib.weight_transfer (frozen convs with learnable scale and shift)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mnemonics_lib.bilevel import BilevelSettings, hypergradient, model_state
from mnemonics_lib.weight_transfer import (
    ScaledConv2d,
    apply_weight_transfer,
    is_weight_transferred,
)

torch.set_num_threads(1)


class TinyNet(nn.Module):
    """Covers bias/no bias, stride, groups, a non-zeros padding mode, BN and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.block = nn.Sequential(
            nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2),
            nn.ReLU(),
            nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"),
        )
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block(F.relu(self.bn1(self.conv1(x))))
        return self.fc(h.mean(dim=(2, 3)))


def make(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = TinyNet()
    with torch.no_grad():
        net.bn1.running_mean.normal_()
        net.bn1.running_var.uniform_(0.5, 2.0)
    return net.eval()


X = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
CONV_WEIGHTS = ["conv1.weight", "block.0.weight", "block.0.bias", "block.2.weight", "block.2.bias"]


def test_output_bit_identical_after_wrapping():
    net = make()
    ref_eval = net(X)
    assert not is_weight_transferred(net)
    out = apply_weight_transfer(net)
    assert out is net and is_weight_transferred(net)
    assert sum(isinstance(m, ScaledConv2d) for m in net.modules()) == 3
    assert torch.equal(net(X), ref_eval)
    # Train mode (batch statistics) on fresh copies: a train-mode call updates running stats.
    ref_train = make().train()(X)
    assert torch.equal(apply_weight_transfer(make().train())(X), ref_train)


def test_only_scale_shift_bn_and_classifier_are_trainable():
    net = apply_weight_transfer(make())
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {
        "conv1.scale", "conv1.shift", "bn1.weight", "bn1.bias",
        "block.0.scale", "block.0.shift", "block.2.scale", "block.2.shift",
        "fc.weight", "fc.bias",
    }
    assert net.conv1.scale.shape == (4, 3, 1, 1) and net.conv1.shift.shape == (4,)
    assert net.block[0].scale.shape == (4, 2, 1, 1)  # per kernel: (out, in / groups)
    net.requires_grad_(True)  # buffers cannot be unfrozen by accident
    assert all(name not in dict(net.named_parameters()) for name in CONV_WEIGHTS)


def test_conv_weights_unchanged_after_optimizer_step():
    net = apply_weight_transfer(make()).train()
    frozen = {k: net.state_dict()[k].clone() for k in CONV_WEIGHTS}
    scale_before = net.conv1.scale.detach().clone()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(net(X), torch.tensor([0, 1, 2, 3])).backward()
        opt.step()
    for k, v in frozen.items():
        assert torch.equal(net.state_dict()[k], v), k
    assert not torch.equal(net.conv1.scale.detach(), scale_before)


def test_state_dict_round_trip_and_old_checkpoints():
    src = apply_weight_transfer(make(0))
    with torch.no_grad():
        src.conv1.scale.uniform_(0.5, 1.5)
        src.block[2].shift.normal_()
    dst = apply_weight_transfer(make(7))
    dst.load_state_dict(src.state_dict())  # strict
    assert torch.equal(dst(X), src(X))
    # A checkpoint from before the transfer keeps its keys; only scale/shift are missing.
    plain = make(3)
    wrapped = apply_weight_transfer(make(4))
    result = wrapped.load_state_dict(plain.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert set(result.missing_keys) == {
        f"{m}.{p}" for m in ("conv1", "block.0", "block.2") for p in ("scale", "shift")
    }
    assert torch.equal(wrapped(X), plain(X))


def test_functional_call_and_idempotence():
    net = apply_weight_transfer(make())
    scale = torch.full_like(net.conv1.scale, 2.0)
    shift = torch.ones_like(net.conv1.shift)
    out = functional_call(net.conv1, {"scale": scale, "shift": shift}, (X,))
    ref = F.conv2d(X, net.conv1.weight * 2.0, None, padding=1) + 1.0
    torch.testing.assert_close(out, ref)
    apply_weight_transfer(net)  # already wrapped: nothing changes
    assert not isinstance(net.conv1.weight, nn.Parameter)
    assert sum(isinstance(m, ScaledConv2d) for m in net.modules()) == 3


def test_bilevel_inner_loop_adapts_only_trainable_tensors():
    net = apply_weight_transfer(make())
    params, _ = model_state(net)
    assert not set(CONV_WEIGHTS) & set(params)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    s = BilevelSettings(inner_steps=2, inner_lr=0.1, outer_iters=1, outer_lr=1.0, old_lr=1.0,
                        real_batch=4)
    grad, loss = hypergradient(net, X, torch.tensor([0, 1, 2, 3]), X.flip(0),
                               torch.tensor([3, 2, 1, 0]), s)
    assert torch.isfinite(grad).all() and grad.abs().max() > 0
    for k, v in before.items():
        assert torch.equal(net.state_dict()[k], v), k
