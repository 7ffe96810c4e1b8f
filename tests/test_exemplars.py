"""The authors'-code exemplar variant (paper.md §4): frozen model, prototype-cosine loss, pixels
rounded back to uint8."""
import torch

from mnemonics_lib.backbones import build_net
from mnemonics_lib.exemplars import authors_code_adjust, pixel_change
from mnemonics_lib.pipeline import Normaliser


def _setup():
    torch.manual_seed(0)
    net = build_net("resnet", 4, depth=8, width=8, cosine=True)
    net.head.grow(2)
    list(net.head.weights)[0].requires_grad_(False)  # LUCIR freezes old class weights
    norm = Normaliser.create((0.5,) * 3, (0.25,) * 3, "cpu")
    ex = norm(torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8))
    rx = norm(torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8))
    return net, norm, ex, torch.tensor([4, 4, 4, 5, 5, 5]), rx, torch.randint(4, 6, (20,))


def test_authors_code_keeps_the_model_and_its_flags_and_stays_on_the_uint8_grid():
    net, norm, ex, ey, rx, ry = _setup()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = authors_code_adjust(net, ex, ey, rx, ry, norm, torch.Generator().manual_seed(0), lr=1e4)
    assert [w.requires_grad for w in net.head.weights] == [False, True]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    pixels = norm.denormalise(out) * 255
    assert torch.allclose(pixels, pixels.round(), atol=1e-3)
    assert ((out - ex).abs() > 1e-6).any()  # a large step does move pixels: the gradient is live


def test_authors_learning_rate_is_lost_in_the_uint8_rounding():
    # What the released code does in effect: at lr 1e-5 the per-pixel change (~1e-5 x a gradient
    # of ~1e-4) is far below half a grey level, so rounding restores the herding images exactly.
    net, norm, ex, ey, rx, ry = _setup()
    out = authors_code_adjust(net, ex, ey, rx, ry, norm, torch.Generator().manual_seed(0), lr=1e-5)
    assert torch.allclose(out, ex, atol=1e-5)


def test_pixel_change_is_measured_in_grey_levels():
    norm = Normaliser.create((0.5,) * 3, (0.25,) * 3, "cpu")
    before = norm(torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8))
    moved = norm.denormalise(before).clone()
    moved[0, 1, 2, 3] += 3 / 255  # one pixel value up by 3 grey levels
    moved[1, 0, 0, 0] -= 1 / 255  # another down by 1
    after = (moved - norm.mean) / norm.std
    got = pixel_change(before, after, norm)
    assert abs(got["max"] - 3.0) < 1e-4 and abs(got["mean"] - 4.0 / before.numel()) < 1e-6
    assert pixel_change(before, before, norm) == {"max": 0.0, "mean": 0.0}
    assert pixel_change(before[:0], after[:0], norm) == {"max": 0.0, "mean": 0.0}
