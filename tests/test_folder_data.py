"""Class-folder JPEG trees: scanning, decoding (greyscale, CMYK, PNG-in-.jpg, corrupt files), the
uint8 cache, the batched random-resized crop, the presets, and a tiny incremental run end to end.
Trees are generated here; a few checks read the real caltech101_jpeg stand-in."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnemonics_lib import folder_data
from mnemonics_lib.config import ConfigError, make_config
from mnemonics_lib.datasets import PROJECT_ROOT, DatasetError
from mnemonics_lib.folder_data import check_budget, decode_resized, load_cached, read_class_list, scan_tree
from mnemonics_lib.pipeline import ResizedCropFlip, make_generator

REAL = PROJECT_ROOT.parent / "shared" / "data" / "caltech101_jpeg"


def _save(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (40, 30), mode: str = "RGB",
          fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).convert(mode).save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def make_tree(root: Path, counts: dict[str, tuple[int, int]], size=(40, 30)) -> Path:
    """``root/{train,val}/<class>/i.jpg``: constant-colour JPEGs, one colour per class."""
    for k, (c, (n_tr, n_va)) in enumerate(sorted(counts.items())):
        rgb = ((37 * k) % 256, (91 * k + 60) % 256, (53 * k + 120) % 256)
        for split, n in (("train", n_tr), ("val", n_va)):
            for i in range(n):
                _save(root / split / c / f"{i:03d}.jpg", rgb, size)
    return root


# ------------------------------------------------------------------ scanning and errors
def test_scan_lists_sorted_classes_and_files(tmp_path):
    root = make_tree(tmp_path / "t", {"b": (3, 1), "a": (2, 2)})
    (root / "train" / "a" / "notes.txt").write_text("not an image")
    tree = scan_tree(root)
    assert tree.classes == ("a", "b")
    assert [(Path(p).name, y) for p, y in tree.train] == [("000.jpg", 0), ("001.jpg", 0), ("000.jpg", 1),
                                                          ("001.jpg", 1), ("002.jpg", 1)]
    assert [y for _, y in tree.val] == [0, 0, 1]
    assert tree.train_counts().tolist() == [2, 3]


def test_missing_root_and_split(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        scan_tree(tmp_path / "nowhere")
    (tmp_path / "t" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match="has no val/ folder"):
        scan_tree(tmp_path / "t")


def test_split_without_class_folders(tmp_path):
    (tmp_path / "t" / "train").mkdir(parents=True)
    (tmp_path / "t" / "val").mkdir()
    with pytest.raises(DatasetError, match="holds no class folders"):
        scan_tree(tmp_path / "t")


def test_empty_class_folder_is_named(tmp_path):
    root = make_tree(tmp_path / "t", {"a": (2, 1), "b": (2, 1)})
    for f in (root / "val" / "b").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match=r"val/b holds no images"):
        scan_tree(root)


def test_train_val_class_mismatch_names_both_sides(tmp_path):
    root = make_tree(tmp_path / "t", {"a": (2, 1), "b": (2, 1)})
    _save(root / "val" / "zebra" / "0.jpg", (1, 2, 3))
    (root / "train" / "only_train").mkdir()
    _save(root / "train" / "only_train" / "0.jpg", (1, 2, 3))
    with pytest.raises(DatasetError, match=r"only in train: only_train; only in val: zebra"):
        scan_tree(root)


def test_listed_classes_missing_from_the_tree_are_named(tmp_path):
    root = make_tree(tmp_path / "t", {"a": (2, 1), "b": (2, 1)})
    assert scan_tree(root, ["b"]).classes == ("b",)
    with pytest.raises(DatasetError, match=r"lacks 2 of the 3 listed classes: n0001, n0002"):
        scan_tree(root, ["b", "n0002", "n0001"])


def test_class_below_the_exemplar_budget_is_named(tmp_path):
    tree = scan_tree(make_tree(tmp_path / "t", {"a": (5, 1), "b": (3, 1), "c": (4, 1)}))
    check_budget(tree, 3)
    with pytest.raises(DatasetError, match=r"2 class\(es\).*fewer.*than the 5 exemplars.*b \(3\), c \(4\)"):
        check_budget(tree, 5)


# ------------------------------------------------------------------ decoding
@pytest.mark.parametrize("mode,fmt", [("L", "JPEG"), ("CMYK", "JPEG"), ("RGB", "PNG"), ("RGB", "JPEG")])
def test_greyscale_cmyk_and_png_in_jpg_decode_to_rgb(tmp_path, mode, fmt):
    rgb = (200, 40, 90) if mode != "L" else (120, 120, 120)
    path = tmp_path / "x.jpg"  # the extension says JPEG whatever the content
    _save(path, rgb, (50, 20), mode, fmt)
    x = decode_resized(str(path), 24, 16)
    assert x.shape == (3, 16, 16) and x.dtype == torch.uint8
    want = torch.tensor(rgb if mode != "L" else (Image.new("RGB", (1, 1), rgb).convert("L").getpixel((0, 0)),) * 3)
    tol = 0 if fmt == "PNG" else 3  # PNG is lossless; JPEG (and CMYK's round trip) rounds a little
    assert (x.reshape(3, -1).float().mean(1) - want.float()).abs().max() <= tol


def test_resize_short_side_then_centre_crop(tmp_path):
    # left half black, right half white, 60 x 20: after resizing the short side to 10 (30 x 10) and
    # a centre 10 x 10 crop, the columns left of the middle are dark and right of it bright
    a = np.zeros((20, 60, 3), np.uint8)
    a[:, 30:] = 255
    Image.fromarray(a).save(tmp_path / "h.png")
    x = decode_resized(str(tmp_path / "h.png"), 10, 10)
    assert x.shape == (3, 10, 10)
    assert (x[:, :, :4] == 0).all() and (x[:, :, 6:] == 255).all()


def test_corrupt_file_is_named_and_truncated_too(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DatasetError, match=r"cannot decode .*bad\.jpg"):
        decode_resized(str(bad), 16, 16)
    txt = tmp_path / "text.jpg"
    txt.write_text("hello")
    with pytest.raises(DatasetError, match=r"text\.jpg"):
        decode_resized(str(txt), 16, 16)


# ------------------------------------------------------------------ the cache
def test_cache_round_trip_exact_values_and_reuse(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "t", {"a": (3, 2), "b": (2, 1)})
    _save(root / "train" / "a" / "png.jpg", (10, 200, 30), (30, 45), fmt="PNG")  # lossless: exact
    tree = scan_tree(root)
    d = load_cached(tree, "toy", 16, 18, workers=0, cache_dir=tmp_path / "cache")
    assert d.x_train.shape == (6, 16, 16, 3) and d.x_test.shape == (3, 16, 16, 3)
    assert d.y_train.tolist() == [0, 0, 0, 0, 1, 1] and d.y_test.tolist() == [0, 0, 1]
    assert (np.asarray(d.x_train[3]) == np.array([10, 200, 30], np.uint8)).all()  # png.jpg sorts last in a
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".")  # no temporary folder left
    monkeypatch.setattr(folder_data, "decode_split", lambda *a, **k: pytest.fail("decoded again"))
    again = load_cached(tree, "toy", 16, 18, workers=0, cache_dir=tmp_path / "cache")
    assert np.array_equal(np.asarray(again.x_train), np.asarray(d.x_train))


def test_cache_key_follows_the_files(tmp_path):
    root = make_tree(tmp_path / "t", {"a": (2, 1), "b": (2, 1)})
    load_cached(scan_tree(root), "toy", 16, 18, workers=0, cache_dir=tmp_path / "cache")
    _save(root / "train" / "a" / "new.jpg", (0, 0, 0))
    d = load_cached(scan_tree(root), "toy", 16, 18, workers=0, cache_dir=tmp_path / "cache")
    assert len(d.y_train) == 5 and len(list((tmp_path / "cache").iterdir())) == 2


def test_corrupt_file_stops_the_build_and_leaves_nothing(tmp_path):
    root = make_tree(tmp_path / "t", {"a": (2, 1), "b": (2, 1)})
    (root / "train" / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DatasetError, match=r"train/b/broken\.jpg"):
        load_cached(scan_tree(root), "toy", 16, 18, workers=1, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_corrupt_file_skipped_and_counted(tmp_path):
    root = make_tree(tmp_path / "t", {"a": (2, 1), "b": (2, 1)})
    (root / "train" / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    d = load_cached(scan_tree(root), "toy", 16, 18, workers=0, corrupt="skip", cache_dir=tmp_path / "cache")
    assert d.y_train.tolist() == [0, 0, 1, 1] and "1 undecodable file(s) skipped" in d.source
    (entry,) = (tmp_path / "cache").iterdir()
    man = json.loads((entry / "manifest.json").read_text())
    assert man["counts"] == {"train": 4, "val": 2} and "broken.jpg" in man["skipped"][0]


# ------------------------------------------------------------------ batched random-resized crop
def test_resized_crop_full_box_is_identity_and_flip_mirrors():
    x = torch.rand(2, 3, 8, 8)
    aug = ResizedCropFlip(8)
    boxes = torch.tensor([[0.0, 0, 8, 8]] * 2)
    out = aug.apply(x, boxes, torch.tensor([False, True]))
    assert torch.allclose(out[0], x[0], atol=1e-6)
    assert torch.allclose(out[1], x[1].flip(2), atol=1e-6)


def test_resized_crop_equals_torchvision_resized_crop():
    from torchvision.transforms.v2 import functional as TF

    x = torch.rand(3, 3, 16, 16)
    aug = ResizedCropFlip(12)
    boxes = torch.tensor([[2.0, 3, 6, 6], [0, 0, 16, 10], [5, 1, 11, 9]])
    out = aug.apply(x, boxes, torch.zeros(3, dtype=torch.bool))
    for k, (t, l, h, w) in enumerate(boxes.int().tolist()):
        ref = TF.resized_crop(x[k], t, l, h, w, [12, 12], antialias=False)
        # the same half-pixel mapping as torchvision's bilinear resize of the cropped box; only the
        # outermost output pixels differ: torchvision clamps at the box's edge, grid_sample reads
        # the image pixel just outside it (the same where the box meets the image's border)
        assert torch.allclose(out[k, :, 1:-1, 1:-1], ref[:, 1:-1, 1:-1], atol=1e-5), k
        assert not torch.allclose(out[k], ref, atol=1e-5) or (t, l) == (0, 0)


def test_resized_crop_draws_within_bounds_and_ranges_and_is_seeded():
    aug = ResizedCropFlip(32, height=40, width=50)
    boxes, flip = aug.draw(4000, make_generator(0, "cpu"), "cpu")
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 40).all() and (left + w <= 50).all()
    area = h * w / (40 * 50)
    assert area.min() >= 0.07 and area.max() <= 1.0 and (w / h).min() >= 0.7 and (w / h).max() <= 1.4
    assert 0.45 < flip.float().mean() < 0.55 and area.mean() > 0.4
    again = aug.draw(4000, make_generator(0, "cpu"), "cpu")
    assert torch.equal(again[0], boxes) and torch.equal(again[1], flip)


# ------------------------------------------------------------------ presets and lists
def test_presets_and_hash_rules():
    c = make_config(dataset="caltech101_jpeg", profile="quick")
    assert c.is_folder and c.image.crop == 64 and c.schedule.depth == 18 and c.schedule.width == 64
    p = make_config(dataset="imagenet_subset", profile="paper", phases=10)
    s = p.schedule
    assert (s.base_epochs, s.epochs, s.lr, s.weight_decay, s.batch_size) == (90, 90, 0.1, 1e-4, 128)
    assert p.image.crop == 224 and p.image.resize == 256 and "subset_list" in p.to_dict()
    assert "subset_list" not in c.to_dict() and "image" in c.to_dict()
    full = make_config(dataset="imagenet", profile="paper", phases=25)  # B500 + 25 x 20
    from mnemonics_lib.protocol import phase_plan
    assert phase_plan(full).ends[:2] == (500, 520) and phase_plan(full).ends[-1] == 1000
    cifar = make_config(dataset="cifar100")
    assert "image" not in cifar.to_dict() and "corrupt_images" not in cifar.to_dict()
    assert make_config(dataset="caltech101_jpeg", corrupt_images="skip").config_hash() != c.config_hash()
    with pytest.raises(ConfigError, match="subset_list"):
        make_config(dataset="imagenet_subset", subset_list="nope")


def test_shipped_class_lists():
    all_wnids = read_class_list("imagenet1k_wnids")
    assert len(all_wnids) == len(set(all_wnids)) == 1000 and all_wnids == sorted(all_wnids)
    sub = read_class_list("imagenet100_seed1993")
    from mnemonics_lib.datasets import imagenet_subset_wnids
    assert sub == imagenet_subset_wnids(all_wnids)  # the seed-1993 rule, in the chosen order
    assert sub[:3] == ["n01729322", "n01514668", "n04550184"]
    podnet = read_class_list("imagenet100_podnet")
    assert podnet == all_wnids[:100]  # PODNet's split files hold the first 100 sorted wnids
    assert len(set(podnet) & set(sub)) == 9
    for name in ("seed1993", "podnet"):
        assert make_config(dataset="imagenet_subset", subset_list=name).subset_list == name
    with pytest.raises(DatasetError, match="known lists"):
        read_class_list("imagenet100_other")


# ------------------------------------------------------------------ the real stand-in
@pytest.mark.skipif(not REAL.is_dir(), reason="caltech101_jpeg not available")
def test_real_stand_in_tree_and_files():
    tree = scan_tree(REAL)
    assert len(tree.classes) == 100 and len(tree.train) == 5494 and len(tree.val) == 2748
    assert tree.classes == tuple((REAL / "classes.txt").read_text().split())
    counts = tree.train_counts()
    assert counts.min() == 21 and counts.max() == 534
    check_budget(tree, 20)
    for path, _ in tree.train[::1500]:
        x = decode_resized(path, 64, 64)
        ref = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"))).permute(2, 0, 1)
        full = decode_resized(path, min(ref.shape[1:]), min(ref.shape[1:]))
        assert x.shape == (3, 64, 64)
        # torchvision's and PIL's libjpeg agree to within rounding on the same file
        from torchvision.transforms.v2 import functional as TF
        ref_c = TF.center_crop(ref, list(full.shape[1:]))
        assert (full.float() - ref_c.float()).abs().mean() < 1.0


# ------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def tiny_caltech(tmp_path_factory):
    """A 100-class tree named caltech101_jpeg (the preset's class count): 4 train + 1 val images
    per class, coloured by class, mixed sizes."""
    root = tmp_path_factory.mktemp("data")
    make_tree(root / "caltech101_jpeg", {f"c{k:03d}": (4, 1) for k in range(100)}, size=(44, 36))
    return root


@pytest.mark.parametrize("method,exemplars", [("lucir", "mnemonics"), ("icarl", "herding"), ("bic", "random")])
def test_tiny_incremental_run_on_a_folder_tree(tiny_caltech, tmp_path, monkeypatch, method, exemplars):
    from mnemonics_lib.trainer import run_incremental

    monkeypatch.setenv("MNEMONICS_DATA", str(tiny_caltech))
    monkeypatch.setenv("MNEMONICS_CACHE", str(tiny_caltech / "cache"))
    cfg = make_config(dataset="caltech101_jpeg", profile="smoke", method=method, exemplars=exemplars,
                      memory_per_class=2, last_phase=1, epochs_override=1,
                      mnemonics={"real_batch": 32})
    out = run_incremental(cfg, "cpu", checkpoints=False, share_phase0=False)
    rows = out["per_phase"]
    assert [r["n_classes"] for r in rows] == [50, 60]
    assert [r["memory_total"] for r in rows] == [100, 120]
    assert all(0 <= r["acc_cnn"] <= 100 for r in rows)
    if exemplars == "mnemonics":
        assert rows[0]["exemplar_change"]["new"]["max"] > 0  # the pixels moved


@pytest.mark.parametrize("method,exemplars", [("lucir", "mnemonics"), ("bic", "herding")])
def test_a_run_streamed_from_host_memory_equals_the_resident_run(tiny_caltech, monkeypatch, method, exemplars):
    """Streaming changes where the images live, not one number: LUCIR's head growth, BiC's
    validation split, the mnemonics program and the evaluation all read the same values."""
    from mnemonics_lib import trainer

    monkeypatch.setenv("MNEMONICS_DATA", str(tiny_caltech))
    monkeypatch.setenv("MNEMONICS_CACHE", str(tiny_caltech / "cache"))
    cfg = make_config(dataset="caltech101_jpeg", profile="smoke", method=method, exemplars=exemplars,
                      memory_per_class=2, last_phase=1, epochs_override=1, mnemonics={"real_batch": 32})
    resident = trainer.run_incremental(cfg, "cpu", checkpoints=False, share_phase0=False, residency="device")
    # auto chooses the host when the set does not fit the device (forced here: a CPU always fits)
    monkeypatch.setattr(folder_data, "fits", lambda *a: False)
    streamed = trainer.run_incremental(cfg, "cpu", checkpoints=False, share_phase0=False)
    # compared as JSON: NaN (a phase group not yet seen) equals itself there
    same = lambda out: json.dumps({k: v for k, v in out.items() if k not in ("legs", "wall_s_total")}  # noqa: E731
                                  | {"per_phase": [{k: v for k, v in r.items() if k != "wall_s"}
                                                   for r in out["per_phase"]]}, sort_keys=True)
    assert same(streamed) == same(resident)
    assert streamed["legs"][0]["residency"] == "host" and "residency" not in resident["legs"][0]


def test_folder_run_refuses_a_short_class(tiny_caltech, tmp_path, monkeypatch):
    from mnemonics_lib.trainer import run_incremental

    monkeypatch.setenv("MNEMONICS_DATA", str(tiny_caltech))
    monkeypatch.setenv("MNEMONICS_CACHE", str(tmp_path / "cache"))
    cfg = make_config(dataset="caltech101_jpeg", profile="smoke", memory_per_class=5)
    with pytest.raises(DatasetError, match=r"100 class\(es\).*fewer.*than the 5 exemplars"):
        run_incremental(cfg, "cpu", checkpoints=False)
    assert not (tmp_path / "cache").exists()  # refused before anything was decoded


@pytest.mark.parametrize("name", ["imagenet", "imagenet_subset", "caltech101_jpeg"])
def test_missing_folder_dataset_names_the_roots_and_the_fix(tmp_path, name):
    roots = [tmp_path / "a", tmp_path / "b"]
    cfg = make_config(dataset=name, profile="smoke", method="lucir")
    with pytest.raises(DatasetError) as err:
        folder_data.tree_for_config(cfg, roots)
    msg = str(err.value)
    assert f"dataset {name!r} not found" in msg and str(roots[0]) in msg and str(roots[1]) in msg
    assert "train/<class>/" in msg and "make_imagenet_subset.py" in msg


def test_resident_bytes_and_the_device_memory_check(monkeypatch):
    # ImageNet-Subset at 224 px: 100 x 1300 train + 5000 val uint8, phase 0's 65000 images float32
    need = folder_data.resident_bytes(130_000, 5_000, 65_000, 224)
    assert need == 135_000 * 150_528 + 65_000 * 602_112
    fake = type("Props", (), {"total_memory": 80 * 2**30})()
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: fake)
    small = type("D", (), {"name": "imagenet_subset", "y_train": np.zeros(130_000), "y_test": np.zeros(5_000)})()
    folder_data.check_fits(small, 65_000, 224, torch.device("cuda"))  # 55.4 GiB of 80: fits
    big = type("D", (), {"name": "imagenet", "y_train": np.zeros(1_281_167), "y_test": np.zeros(50_000)})()
    assert folder_data.fits(small, 65_000, 224, torch.device("cuda"))
    assert not folder_data.fits(big, 640_000, 224, torch.device("cuda"))
    with pytest.raises(DatasetError, match=r"needs 5\d\d\.\d GiB .* has 80\.0 GiB; stream it from host memory"):
        folder_data.check_fits(big, 640_000, 224, torch.device("cuda"))
    folder_data.check_fits(big, 640_000, 224, torch.device("cpu"))  # host memory is not checked
