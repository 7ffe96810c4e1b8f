"""Dataset readers, through their real on-disk formats on tiny files generated here:
torchvision's CIFAR-10/100 python pickles (written as Python 2 pickles, like the originals), the
offline npz folders with SHA256SUMS, the caltech101_32 folder, ImageFolder trees and the
ImageNet-Subset seed rule."""
import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from mnemonics_lib import datasets
from mnemonics_lib.datasets import ArrayData, DatasetError, load_dataset

SHARED_DATA = Path("/work/shared/data")


# ------------------------------------------------------------------ writers of the real formats
class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (SHORT_BINSTRING/BINSTRING), as the CIFAR files were made
    with Python 2 cPickle: loading with encoding="bytes" gives bytes keys, "latin1" gives str."""

    def save_bytes(self, obj):
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256
                   else pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch = pickle._Pickler.dispatch.copy()
    dispatch[bytes] = save_bytes


def _dump_py2(obj, path: Path) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def _rows(x_nhwc: np.ndarray) -> np.ndarray:
    """CIFAR row layout: 3072 bytes = the R plane (32x32 row-major), then G, then B."""
    return x_nhwc.transpose(0, 3, 1, 2).reshape(len(x_nhwc), 3072)


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, size=(n, 32, 32, 3)).astype(np.uint8)


def write_cifar10(root: Path, per_batch: int = 2, n_test: int = 3):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys = [], []
    for i in range(1, 6):
        x = _images(per_batch, i)
        y = [(i + k) % 10 for k in range(per_batch)]
        _dump_py2({b"batch_label": f"training batch {i} of 5".encode(), b"labels": y, b"data": _rows(x),
                   b"filenames": [f"img_{i}_{k}.png".encode() for k in range(per_batch)]},
                  folder / f"data_batch_{i}")
        xs.append(x)
        ys += y
    xt = _images(n_test, 99)
    yt = [9, 0, 5][:n_test]
    _dump_py2({b"batch_label": b"testing batch 1 of 1", b"labels": yt, b"data": _rows(xt),
               b"filenames": [b"t.png"] * n_test}, folder / "test_batch")
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship",
             b"truck"]
    _dump_py2({b"num_cases_per_batch": 10000, b"label_names": names, b"num_vis": 3072},
              folder / "batches.meta")
    return np.concatenate(xs), np.array(ys), xt, np.array(yt)


def write_cifar100(root: Path):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    x, xt = _images(7, 1), _images(3, 2)
    y, yt = [0, 99, 42, 7, 7, 63, 1], [99, 0, 50]
    for name, xx, yy in (("train", x, y), ("test", xt, yt)):
        _dump_py2({b"filenames": [b"f.png"] * len(yy), b"batch_label": name.encode(),
                   b"fine_labels": yy, b"coarse_labels": [v // 5 for v in yy], b"data": _rows(xx)},
                  folder / name)
    fine = [f"fine{i:02d}".encode() for i in range(100)]
    _dump_py2({b"fine_label_names": fine, b"coarse_label_names": [f"c{i}".encode() for i in range(20)]},
              folder / "meta")
    return x, np.array(y), xt, np.array(yt)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_npz_folder(folder: Path, parts: dict[str, tuple[np.ndarray, np.ndarray]], classes: list[str]):
    folder.mkdir(parents=True)
    for fname, (x, y) in parts.items():
        src = np.array([f"{fname}/{i}.jpg" for i in range(len(y))])
        np.savez(folder / fname, x=x, y=y.astype(np.int64), src_path=src)
    (folder / "classes.txt").write_text("\n".join(classes) + "\n")
    files = sorted(list(parts) + ["classes.txt"])
    (folder / "SHA256SUMS").write_text("".join(f"{_sha256(folder / f)}  {f}\n" for f in files))


def test_cifar10_pickles(tmp_path):
    x, y, xt, yt = write_cifar10(tmp_path)
    d = load_dataset("cifar10", roots=[tmp_path])
    assert isinstance(d, ArrayData) and d.name == "cifar10"
    assert d.x_train.shape == (10, 32, 32, 3) and d.x_train.dtype == np.uint8
    assert d.x_test.shape == (3, 32, 32, 3) and d.x_test.dtype == np.uint8
    assert d.y_train.dtype == np.int64 and d.y_train.tolist() == y.tolist()  # batches 1..5 in order
    assert d.y_test.tolist() == [9, 0, 5]
    assert np.array_equal(d.x_train, x) and np.array_equal(d.x_test, xt)
    assert d.class_names[:3] == ("airplane", "automobile", "bird") and len(d.class_names) == 10


def test_cifar_row_layout_is_channel_major(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rows = np.zeros((1, 3072), np.uint8)
    r, c = 5, 7
    rows[0, 0 * 1024 + r * 32 + c] = 11  # R plane
    rows[0, 1 * 1024 + r * 32 + c] = 22  # G plane
    rows[0, 2 * 1024 + r * 32 + c] = 33  # B plane
    rows[0, 1] = 200  # R of pixel (0, 1)
    for name in ("train", "test"):
        _dump_py2({b"fine_labels": [3], b"coarse_labels": [0], b"data": rows}, folder / name)
    _dump_py2({b"fine_label_names": [f"n{i}".encode() for i in range(100)]}, folder / "meta")
    d = load_dataset("cifar100", roots=[tmp_path])
    assert d.x_train[0, r, c].tolist() == [11, 22, 33]
    assert d.x_train[0, 0, 1].tolist() == [200, 0, 0]
    assert int(d.x_train.sum()) == 11 + 22 + 33 + 200


def test_cifar100_pickles(tmp_path):
    x, y, xt, yt = write_cifar100(tmp_path)
    d = load_dataset("cifar100", roots=[tmp_path / "nothing_here", tmp_path])
    assert d.name == "cifar100" and d.source == str(tmp_path / "cifar-100-python")
    assert d.x_train.shape == (7, 32, 32, 3) and d.x_train.dtype == np.uint8
    assert d.y_train.tolist() == [0, 99, 42, 7, 7, 63, 1] and d.y_test.tolist() == [99, 0, 50]
    assert np.array_equal(d.x_train, x) and np.array_equal(d.x_test, xt)
    assert len(d.class_names) == 100 and d.class_names[42] == "fine42"
    # mean/std are per channel, in [0, 1]
    ref = x.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(d.mean, ref.mean(0), atol=1e-4)
    np.testing.assert_allclose(d.std, ref.std(0), atol=1e-4)


def test_channel_stats_follow_the_array_not_its_address():
    """Regression: the statistics cache was keyed by the data address, so a new array allocated
    where a freed one lived got the freed array's mean."""
    for v in (10, 200, 90):
        x = np.full((300, 32, 32, 3), v, np.uint8)
        d = ArrayData("t", x, np.zeros(300, np.int64), x[:1], np.zeros(1, np.int64), ("a",), "t")
        assert d.mean == pytest.approx((v / 255,) * 3, abs=1e-4)
        del d, x


# ------------------------------------------------------------------ npz folders and checksums
def _npz_cifar10(folder: Path):
    x0, x1, xt = _images(4, 1), _images(3, 2), _images(2, 3)
    y0, y1, yt = np.array([0, 1, 2, 3]), np.array([9, 8, 7]), np.array([5, 4])
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    parts = {"train_part0.npz": (x0, y0), "train_part1.npz": (x1, y1), "test.npz": (xt, yt)}
    write_npz_folder(folder, parts, names)
    return np.concatenate([x0, x1]), np.concatenate([y0, y1]), xt, yt


def test_cifar10_npz_folder(tmp_path):
    x, y, xt, yt = _npz_cifar10(tmp_path / "cifar10")
    d = load_dataset("cifar10", roots=[tmp_path])
    assert d.source == str(tmp_path / "cifar10")
    assert d.x_train.shape == (7, 32, 32, 3) and d.x_train.dtype == np.uint8
    assert np.array_equal(d.x_train, x) and np.array_equal(d.x_test, xt)  # parts in name order
    assert d.y_train.dtype == np.int64 and d.y_train.tolist() == [0, 1, 2, 3, 9, 8, 7]
    assert d.y_test.tolist() == [5, 4] and d.class_names[-1] == "truck"


def test_checksum_mismatch_names_the_file(tmp_path):
    folder = tmp_path / "cifar10"
    _npz_cifar10(folder)
    damaged = folder / "train_part1.npz"
    blob = bytearray(damaged.read_bytes())
    blob[-10] ^= 0xFF
    damaged.write_bytes(bytes(blob))
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", roots=[tmp_path])
    assert "checksum mismatch" in str(err.value) and str(damaged) in str(err.value)
    assert "train_part0.npz" not in str(err.value)


def test_file_listed_in_checksums_but_missing(tmp_path):
    folder = tmp_path / "cifar10"
    _npz_cifar10(folder)
    (folder / "test.npz").unlink()
    with pytest.raises(DatasetError, match="test.npz is listed in .*SHA256SUMS but missing"):
        datasets.read_npz_folder(folder, "cifar10")


@pytest.mark.parametrize("name, hint", [
    ("cifar100", "download=True"),
    ("cifar10", "download=True"),
    ("caltech100", "caltech101_32"),
])
def test_missing_dataset_error(tmp_path, name, hint):
    roots = [tmp_path / "a", tmp_path / "b"]
    with pytest.raises(DatasetError) as err:
        load_dataset(name, roots=roots)
    msg = str(err.value)
    assert f"dataset {name!r} not found" in msg
    assert str(roots[0]) in msg and str(roots[1]) in msg
    assert hint in msg and "MNEMONICS_DATA" in msg


def test_unknown_dataset_name():
    with pytest.raises(DatasetError, match="unknown dataset 'mnist'"):
        load_dataset("mnist", roots=[])


# ------------------------------------------------------------------ caltech100
def test_caltech100_drops_faces_easy_and_renumbers(tmp_path):
    classes = ["Faces", "Faces_easy", "Leopards", "Motorbikes", "accordion"]  # Python sorted()
    y = np.array([0, 1, 2, 3, 4, 1, 4, 2])
    yt = np.array([1, 3, 0, 4])
    # pixel (0, 0, 0) of each image = its index: lets us follow which images were kept
    x = np.zeros((len(y), 32, 32, 3), np.uint8)
    x[:, 0, 0, 0] = np.arange(len(y))
    xt = np.zeros((len(yt), 32, 32, 3), np.uint8)
    xt[:, 0, 0, 0] = np.arange(len(yt))
    write_npz_folder(tmp_path / "caltech101_32", {"train.npz": (x, y), "test.npz": (xt, yt)}, classes)
    d = load_dataset("caltech100", roots=[tmp_path])
    assert d.name == "caltech100"
    assert d.class_names == ("Faces", "Leopards", "Motorbikes", "accordion")
    assert d.x_train[:, 0, 0, 0].tolist() == [0, 2, 3, 4, 6, 7]
    assert d.y_train.tolist() == [0, 1, 2, 3, 3, 1]
    assert d.x_test[:, 0, 0, 0].tolist() == [1, 2, 3]
    assert d.y_test.tolist() == [2, 0, 3]
    assert "Faces_easy" in d.source  # provenance says what was removed


# ------------------------------------------------------------------ ImageFolder trees
def _fake_wnids(n: int = 1000) -> list[str]:
    return [f"n{1000000 + 37 * i:08d}" for i in range(n)]


def test_imagenet_subset_rule_is_seed1993_choice_on_sorted_wnids():
    wnids = _fake_wnids()
    np.random.seed(1993)
    idx = np.random.choice(1000, 100, replace=False)
    expected = [sorted(wnids)[i] for i in idx]
    shuffled = list(reversed(wnids))
    got = datasets.imagenet_subset_wnids(shuffled)
    assert got == expected  # in the chosen order, independent of the input order
    assert got == datasets.imagenet_subset_wnids(wnids)
    assert len(set(got)) == 100
    assert datasets.imagenet_subset_wnids(wnids, seed=0) != got


@pytest.mark.parametrize("name", ["imagenet", "imagenet_subset", "caltech101_jpeg"])
def test_folder_datasets_are_read_through_a_run_config(name):
    with pytest.raises(DatasetError, match="folder_data.load_for_config"):
        load_dataset(name, roots=[])


def test_synthetic_is_deterministic_and_class_structured():
    a, b = datasets.make_synthetic(5, 6, 2, seed=0), datasets.make_synthetic(5, 6, 2, seed=0)
    assert np.array_equal(a.x_train, b.x_train) and a.x_train.shape == (30, 32, 32, 3)
    assert a.x_train.dtype == np.uint8 and a.y_train.tolist() == sorted(list(range(5)) * 6)
    assert a.y_test.tolist() == sorted(list(range(5)) * 2) and len(a.class_names) == 5
    assert not np.array_equal(datasets.make_synthetic(5, 6, 2, seed=1).x_train, a.x_train)
    assert load_dataset("synthetic", synthetic_classes=7).y_train.max() == 6


def test_cap_per_class_keeps_a_fixed_subset_of_every_class():
    """At most n training images per class, drawn once with a seed; smaller classes keep all;
    the survivors are rows of the original arrays, in file order; the test split is untouched."""
    y = np.array([0] * 10 + [1] * 3 + [2] * 7)
    x = np.arange(len(y), dtype=np.uint8)[:, None, None, None].repeat(2, 1).repeat(2, 2).repeat(3, 3)
    full = ArrayData("toy", x, y, x[:4], y[:4], ("a", "b", "c"), "toy")
    cut = datasets.cap_per_class(full, 5)
    assert np.bincount(cut.y_train).tolist() == [5, 3, 5]
    rows = cut.x_train[:, 0, 0, 0].astype(int)
    assert rows.tolist() == sorted(rows.tolist()) and np.array_equal(y[rows], cut.y_train)
    assert cut.x_test is full.x_test and cut.y_test is full.y_test
    assert "at most 5 training images per class" in cut.source
    again, other = datasets.cap_per_class(full, 5), datasets.cap_per_class(full, 5, seed=1)
    assert np.array_equal(again.x_train, cut.x_train)
    assert not np.array_equal(other.x_train, cut.x_train)
    assert np.array_equal(datasets.cap_per_class(full, 10).x_train, x)  # a cap above every class


# ------------------------------------------------------------------ the real offline copies
@pytest.mark.skipif(not (SHARED_DATA / "caltech101_32" / "SHA256SUMS").exists(), reason="no offline data")
def test_real_caltech100_and_cifar10_checksums():
    raw = np.load(SHARED_DATA / "caltech101_32" / "train.npz")["y"]
    names = (SHARED_DATA / "caltech101_32" / "classes.txt").read_text().split()
    faces_easy = names.index("Faces_easy")
    d = load_dataset("caltech100", roots=[SHARED_DATA])
    assert len(d.class_names) == 100 and "Faces_easy" not in d.class_names and "Faces" in d.class_names
    assert d.x_train.shape == (len(raw) - int((raw == faces_easy).sum()), 32, 32, 3)
    assert d.x_train.dtype == np.uint8
    assert set(d.y_train.tolist()) == set(range(100)) and set(d.y_test.tolist()) == set(range(100))
    datasets.verify_checksums(SHARED_DATA / "cifar10")  # raises DatasetError on a mismatch
