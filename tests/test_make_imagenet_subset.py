"""scripts/make_imagenet_subset.py: the linked subset is what a run reads, and bad sources are named."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mnemonics_lib import folder_data
from mnemonics_lib.config import make_config
from mnemonics_lib.folder_data import read_class_list

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "make_imagenet_subset.py"


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def full_tree(tmp_path_factory) -> Path:
    """An ILSVRC-2012-shaped tree of empty files: 1000 wnids, 20 training files per listed class."""
    root = tmp_path_factory.mktemp("ilsvrc") / "ILSVRC2012"
    listed = set(read_class_list("imagenet100_seed1993")) | set(read_class_list("imagenet100_podnet"))
    for w in read_class_list("imagenet1k_wnids"):
        for split, n in (("train", 20 if w in listed else 1), ("val", 1)):
            d = root / split / w
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"{w}_{i}.JPEG").touch()
    return root


@pytest.mark.parametrize("name", ["seed1993", "podnet"])
def test_linked_subset_is_the_run_dataset(full_tree, tmp_path, monkeypatch, name):
    dest = tmp_path / "data" / "imagenet_subset"
    r = _run(full_tree, dest, "--list", name)
    assert r.returncode == 0, r.stderr
    wnids = read_class_list(f"imagenet100_{name}")
    assert sorted(p.name for p in (dest / "train").iterdir()) == sorted(wnids)
    assert all((dest / "val" / w).is_symlink() for w in wnids)
    assert (dest / "train" / wnids[0]).resolve() == (full_tree / "train" / wnids[0]).resolve()
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]  # no temporary left
    tree = folder_data.tree_for_config(make_config(dataset="imagenet_subset", subset_list=name,
                                                   method="lucir"), [tmp_path / "data"])
    assert tree.classes == tuple(sorted(wnids)) and len(tree.train) == 100 * 20 and len(tree.val) == 100
    again = _run(full_tree, dest, "--list", name)  # the same subset again: reported, unchanged
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_other_existing_destination_is_refused(full_tree, tmp_path):
    dest = tmp_path / "sub"
    assert _run(full_tree, dest).returncode == 0
    r = _run(full_tree, dest, "--list", "podnet")
    assert r.returncode != 0 and "exists and is not this subset" in r.stderr
    assert sorted(p.name for p in (dest / "train").iterdir()) == sorted(read_class_list("imagenet100_seed1993"))


def test_missing_classes_and_flat_val_are_named(tmp_path):
    src = tmp_path / "partial"
    wnids = read_class_list("imagenet100_seed1993")
    for w in wnids[:97]:
        for split in ("train", "val"):
            (src / split / w).mkdir(parents=True)
            (src / split / w / "a.JPEG").touch()
    r = _run(src, tmp_path / "out")
    assert r.returncode != 0 and "lacks 3 of the 100 listed classes" in r.stderr
    assert all(w in r.stderr for w in wnids[97:]) and not (tmp_path / "out").exists()
    flat = tmp_path / "flat"
    for w in wnids:
        (flat / "train" / w).mkdir(parents=True)
        (flat / "train" / w / "a.JPEG").touch()
    (flat / "val").mkdir()
    (flat / "val" / "ILSVRC2012_val_00000001.JPEG").touch()
    r = _run(flat, tmp_path / "out")
    assert r.returncode != 0 and "sort the validation images" in r.stderr


def test_unknown_list_names_the_known_ones(tmp_path):
    r = _run(tmp_path, tmp_path / "out", "--list", "imagenet_r")
    assert r.returncode != 0 and "podnet" in r.stderr and "seed1993" in r.stderr
