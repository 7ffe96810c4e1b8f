"""The device pipeline: batched crop+flip equals torchvision's RandomCrop(32, padding=4) +
RandomHorizontalFlip on the raw image, the normaliser, device-resident splits and batching."""
import numpy as np
import pytest
import torch

from mnemonics_lib.pipeline import (
    DeviceImages, Normaliser, augment, augmented_batches, batch_indices, make_generator)

MEAN, STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


@pytest.fixture(scope="module")
def norm():
    return Normaliser.create(MEAN, STD, "cpu")


@pytest.fixture(scope="module")
def raw():
    """(B, 3, 32, 32) uint8 random images: every crop of one image differs from every other."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (64, 3, 32, 32), generator=g, dtype=torch.uint8)


def all_crops(img_u8: torch.Tensor, norm: Normaliser, padding: int = 4) -> torch.Tensor:
    """Reference by brute force: normalise(torchvision-style zero pad + crop (+ hflip)) for all
    (2p+1)^2 offsets x 2 flips; (81*2, 3, 32, 32), index = (flip * 9 + row) * 9 + col."""
    c, h, w = img_u8.shape
    padded = torch.zeros(c, h + 2 * padding, w + 2 * padding, dtype=torch.uint8)
    padded[:, padding:padding + h, padding:padding + w] = img_u8
    crops = [padded[:, i:i + h, j:j + w].flip(-1) if f else padded[:, i:i + h, j:j + w]
             for f in (0, 1) for i in range(2 * padding + 1) for j in range(2 * padding + 1)]
    return norm(torch.stack(crops))


def test_augment_shape_dtype_range(norm, raw):
    x = norm(raw)
    out = augment(x, make_generator(1, "cpu"), norm.pixel_range[0])
    assert out.shape == x.shape and out.dtype == torch.float32 and out.is_contiguous()
    lo, hi = norm.pixel_range
    assert bool((out >= lo - 1e-6).all()) and bool((out <= hi + 1e-6).all())
    # black padding shows up (some offset != 4 in a 64-image batch) as the exact black value
    assert bool((out == lo).any())


def test_augment_determinism(norm, raw):
    x, pad = norm(raw), norm.pixel_range[0]
    a = augment(x, make_generator(5, "cpu"), pad)
    b = augment(x, make_generator(5, "cpu"), pad)
    c = augment(x, make_generator(6, "cpu"), pad)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_augment_equals_some_torchvision_crop_and_covers_all_offsets(norm, raw):
    """Each output is exactly one of the 162 RandomCrop(32, padding=4) + flip outcomes of its own
    image, and over many draws every outcome occurs, flips about half the time."""
    x, pad = norm(raw), norm.pixel_range[0]
    refs = torch.stack([all_crops(img, norm) for img in raw])  # (64, 162, 3, 32, 32)
    centre = refs[:, :, :, 12:20, 12:20].flatten(2)  # always inside the image: a unique key
    seen = []
    for seed in range(12):
        out = augment(x, make_generator(seed, "cpu"), pad)
        hits = (centre == out[:, None, :, 12:20, 12:20].flatten(2)).all(2)  # (64, 162)
        assert hits.sum(1).tolist() == [1] * len(raw), f"seed {seed}: not one candidate per image"
        match = hits.float().argmax(1)
        assert torch.equal(refs[torch.arange(len(raw)), match], out), f"seed {seed}: not an exact crop"
        seen += match.tolist()
    seen = np.array(seen)  # 768 draws over 162 outcomes
    flips = seen // 81
    offsets = seen % 81
    assert set(offsets.tolist()) == set(range(81))
    assert 0.4 < flips.mean() < 0.6
    assert set((offsets // 9).tolist()) == set(range(9)) and set((offsets % 9).tolist()) == set(range(9))


def test_augment_without_padding_and_flip_is_identity(norm, raw):
    x = norm(raw)
    assert torch.equal(augment(x, make_generator(0, "cpu"), norm.pixel_range[0], padding=0, flip=False), x)
    # flip only: each image is itself or its mirror
    out = augment(x, make_generator(0, "cpu"), norm.pixel_range[0], padding=0, flip=True)
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(3)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and bool(same.any()) and bool(mirrored.any())


def test_normaliser_values_and_round_trip(norm, raw):
    x = norm(raw)
    mean, std = np.array(MEAN)[:, None, None], np.array(STD)[:, None, None]
    ref = (raw.numpy().astype(np.float64) / 255 - mean) / std
    np.testing.assert_allclose(x.numpy(), ref, rtol=0, atol=1e-5)
    back = norm.denormalise(x).mul(255).round().to(torch.uint8)
    assert torch.equal(back, raw)
    lo, hi = norm.pixel_range
    np.testing.assert_allclose(lo.flatten().numpy(), -np.array(MEAN) / np.array(STD), rtol=1e-6)
    np.testing.assert_allclose(hi.flatten().numpy(), (1 - np.array(MEAN)) / np.array(STD), rtol=1e-6)
    assert torch.equal(norm(torch.zeros(1, 3, 1, 1, dtype=torch.uint8)), lo)
    # bit for bit the expression cached runs were computed with; a float input is not modified
    assert torch.equal(x, (raw.float() / 255.0 - norm.mean) / norm.std)
    xf = raw.float()
    assert torch.equal(norm(xf), x) and torch.equal(xf, raw.float())


def test_device_images_layout_and_select():
    rng = np.random.RandomState(0)
    x = rng.randint(0, 256, size=(6, 32, 32, 3)).astype(np.uint8)
    y = np.array([3, 1, 3, 0, 2, 1])
    d = DeviceImages(x, y, "cpu")
    assert d.x.shape == (6, 3, 32, 32) and d.x.dtype == torch.uint8 and len(d) == 6
    assert d.x[4, :, 7, 9].tolist() == x[4, 7, 9].tolist()
    assert d.y.dtype == torch.int64
    assert d.select([1, 3]).tolist() == [0, 1, 2, 5]
    assert d.select([4]).tolist() == []


def test_batch_indices():
    g = make_generator(0, "cpu")
    batches = list(batch_indices(10, 4, g, "cpu"))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    again = list(batch_indices(10, 4, make_generator(0, "cpu"), "cpu"))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    assert torch.cat(list(batch_indices(5, 2, None, "cpu", shuffle=False))).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("chunk_images", [100, 300, 4096])  # under one batch, 2 batches, the epoch
def test_batches_prepared_in_chunks_equal_batches_augmented_one_at_a_time(layout, chunk_images):
    """The trainer's chunked preparation changes speed only: every batch, the generator's state
    after each epoch, and so every run computed before it, stay bit-identical."""
    x = torch.randint(0, 256, (1000, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    y = torch.arange(1000) % 10
    norm = Normaliser.create([0.5, 0.4, 0.3], [0.2, 0.25, 0.3], "cpu")
    g_one, g_chunk = make_generator(7, "cpu"), make_generator(7, "cpu")
    for _ in range(2):  # two epochs: the second starts from the state the first left
        one = [(augment(norm(x[i]), g_one, norm.pixel_range[0]).contiguous(memory_format=layout), y[i])
               for i in batch_indices(1000, 128, g_one, "cpu")]
        chunked = list(augmented_batches(x, y, 128, g_chunk, norm.pixel_range[0], layout, transform=norm,
                                         chunk_images=chunk_images))
        assert [len(b) for _, b in chunked] == [128] * 7 + [104]
        for (xa, ya), (xb, yb) in zip(one, chunked, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
            assert xb.is_contiguous(memory_format=layout)
        assert torch.equal(g_one.get_state(), g_chunk.get_state())
