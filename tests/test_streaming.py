"""Host-resident splits streamed to the device: every read of a streamed view equals the resident
path's tensor for the same rows, bit for bit, and the views stay lazy where the trainer takes
large subsets. (The whole-run equality on a folder tree is in test_folder_data.py.)"""
import numpy as np
import pytest
import torch

from mnemonics_lib import trainer
from mnemonics_lib.config import make_config
from mnemonics_lib.evaluation import class_means, normalised_features
from mnemonics_lib.pipeline import DeviceImages, Normaliser, augmented_batches, make_generator, ResizedCropFlip
from mnemonics_lib.streaming import HostImages, StreamedImages, concat, subset

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def norm():
    return Normaliser.create(MEAN, STD, "cpu")


@pytest.fixture(scope="module")
def split():
    rng = np.random.RandomState(0)
    x = rng.randint(0, 256, size=(40, 12, 10, 3)).astype(np.uint8)  # H != W: catches a transposed read
    y = rng.randint(0, 5, size=40)
    return x, y


def both(split, norm, idx):
    x, y = split
    return DeviceImages(x, y, "cpu").normalised(idx, norm), HostImages(x, y, "cpu").normalised(idx, norm)


def test_a_streamed_view_reads_the_resident_values(split, norm):
    idx = torch.tensor([7, 3, 3, 39, 0, 21])  # unsorted, with a repeat
    res, view = both(split, norm, idx)
    assert isinstance(view, StreamedImages) and len(view) == 6 and view.shape == res.shape == (6, 3, 12, 10)
    assert torch.equal(view[:], res) and view[:].is_contiguous()
    assert torch.equal(view[2:5], res[2:5])
    assert torch.equal(view[torch.tensor([5, 0, 1])], res[torch.tensor([5, 0, 1])])
    mask = torch.tensor([True, False, True, True, False, True])
    assert torch.equal(view[mask], res[mask])
    assert view[torch.tensor([], dtype=torch.long)].shape == (0, 3, 12, 10)
    # the values are the normalised uint8 pixels of those rows (NHWC -> NCHW)
    x = split[0]
    assert torch.equal(view[0:1][0, :, 4, 9], norm(torch.from_numpy(x[7, 4, 9]).view(1, 3, 1, 1)).flatten())


def test_subset_stays_lazy_and_concat_appends_the_exemplars(split, norm):
    idx = torch.arange(40)
    res, view = both(split, norm, idx)
    extra = torch.randn(4, 3, 12, 10)
    res_all, view_all = concat(res, extra), concat(view, extra)
    assert isinstance(view_all, StreamedImages) and len(view_all) == 44
    assert torch.equal(view_all[:], res_all)
    pick = torch.tensor([42, 1, 40, 17, 43])  # exemplars and host rows interleaved
    assert torch.equal(view_all[pick], res_all[pick])
    assert torch.equal(view_all[torch.tensor([41, 40])], extra[[1, 0]])  # exemplars only
    keep = torch.arange(44) % 3 != 0
    lazy = subset(view_all, keep)
    assert isinstance(lazy, StreamedImages) and torch.equal(lazy[:], res_all[keep])
    assert torch.equal(subset(res_all, keep), res_all[keep])  # a tensor passes through
    more = torch.randn(2, 3, 12, 10)
    assert torch.equal(concat(lazy, more)[:], torch.cat([res_all[keep], more]))  # a second append
    assert torch.equal(view_all.flip(3)[pick], res_all.flip(3)[pick])
    assert torch.equal(view_all.flip(3).flip(3)[:], res_all)


def test_streamed_views_refuse_what_they_cannot_express(split, norm):
    _, view = both(split, norm, torch.arange(5))
    with pytest.raises(ValueError, match="width axis"):
        view.flip(2)
    with pytest.raises(IndexError, match="mask of shape"):
        view[torch.ones(4, dtype=torch.bool)]
    with pytest.raises(IndexError, match="1-d index tensor"):
        view[torch.zeros(2, 2, dtype=torch.long)]
    with pytest.raises(ValueError, match="cannot append images of shape"):
        view.concat(torch.zeros(1, 3, 10, 12))
    with pytest.raises(ValueError, match="uint8"):
        HostImages(split[0].astype(np.float32), split[1], "cpu")


def test_augmented_batches_and_the_evaluation_read_the_same_images(split, norm):
    res, view = both(split, norm, torch.arange(40))
    extra = torch.randn(3, 3, 12, 10)
    res, view = concat(res, extra), concat(view, extra)
    y = torch.arange(43) % 5
    aug = ResizedCropFlip(8, height=12, width=10)
    got = [list(augmented_batches(x, y, 16, make_generator(3, "cpu"), norm.pixel_range[0], augmenter=aug))
           for x in (res, view)]
    assert len(got[0]) == len(got[1]) == 3
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(*got))
    for rank in (0, 1):  # a DDP rank's slices (each rank gathers only its own rows)
        got = [list(augmented_batches(x, y, 16, make_generator(3, "cpu"), norm.pixel_range[0], augmenter=aug,
                                      shard=(rank, 2))) for x in (res, view)]
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(*got))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 10 * 8, 6))
    model.features = model.forward
    assert torch.equal(normalised_features(model, view, 16), normalised_features(model, res, 16))
    assert torch.equal(class_means(model, view, y, 5, 16), class_means(model, res, y, 5, 16))


def test_residency_is_checked_and_auto_streams_what_does_not_fit(monkeypatch):
    with pytest.raises(ValueError, match=r"residency 'gpu' is not one of auto, device, host"):
        trainer.data_residency("gpu")
    monkeypatch.setenv("MNEMONICS_RESIDENCY", "host")
    assert trainer.data_residency() == "host" and trainer.data_residency("device") == "device"
    monkeypatch.delenv("MNEMONICS_RESIDENCY")
    cfg = make_config(dataset="synthetic", profile="smoke")
    assert trainer.prepare_data(cfg, torch.device("cpu")).residency == "device"
    data = trainer.prepare_data(cfg, torch.device("cpu"), residency="host")
    assert data.residency == "host" and isinstance(data.train, HostImages)
    ref = trainer.prepare_data(cfg, torch.device("cpu"), residency="device")
    idx = ref.train.select([0, 2])
    assert torch.equal(data.train.select([0, 2]), idx)
    assert torch.equal(data.train.normalised(idx, data.norm)[:], ref.train.normalised(idx, ref.norm))
