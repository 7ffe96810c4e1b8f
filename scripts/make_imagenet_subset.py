"""Build an ImageNet-Subset folder from a full ILSVRC-2012 tree, with symlinks (no image is copied).

    python scripts/make_imagenet_subset.py /data/ILSVRC2012 data/imagenet_subset
    python scripts/make_imagenet_subset.py /data/ILSVRC2012 data/imagenet100_podnet --list podnet

The source holds ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` (the validation images sorted
into class folders, as the usual ``valprep.sh`` does). The destination gets ``train/<wnid>`` and
``val/<wnid>`` as links to the source's class folders for the 100 wnids of the chosen list
(``data/subsets/imagenet100_<list>.txt``; ``--list`` also takes a path to a file of wnids), so a run
with ``dataset=imagenet_subset`` finds it under a data root (``data/imagenet_subset``) or through
``MNEMONICS_DATA``. ``--copy`` copies the folders instead (for file systems where links do not
survive, e.g. a copy to node-local disk).

Nothing half-made is left behind: the tree is built in a temporary sibling folder and published by
one rename. An existing destination is refused unless it already links exactly the listed classes
of the same source (then the command reports that and changes nothing).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

SUBSETS = Path(__file__).resolve().parent.parent / "data" / "subsets"


def read_wnids(spec: str) -> list[str]:
    """The wnids of list ``spec``: a shipped name (``seed1993``, ``podnet``) or a file path."""
    path = Path(spec) if Path(spec).is_file() else SUBSETS / f"imagenet100_{spec}.txt"
    if not path.is_file():
        known = sorted(p.stem.removeprefix("imagenet100_") for p in SUBSETS.glob("imagenet100_*.txt"))
        sys.exit(f"error: class list {spec!r} is neither a file nor a shipped list (known: {known})")
    rows = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
    wnids = [r for r in rows if r]
    if len(set(wnids)) != len(wnids):
        sys.exit(f"error: {path} lists a wnid twice; fix the list")
    return wnids


def check_source(src: Path, wnids: list[str]) -> None:
    """Every listed class must be a non-empty folder under both splits of ``src``."""
    if not src.is_dir():
        sys.exit(f"error: source {src} does not exist; give the folder that holds train/ and val/")
    for split in ("train", "val"):
        d = src / split
        if not d.is_dir():
            sys.exit(f"error: {src} has no {split}/ folder; the layout is {split}/<wnid>/*.JPEG")
        missing = [w for w in wnids if not (d / w).is_dir()]
        if missing and split == "val" and any(p.is_file() for p in d.iterdir()):
            sys.exit(f"error: {d} holds image files, not class folders: sort the validation images "
                     f"into val/<wnid>/ first (e.g. with the usual valprep.sh), then run this again")
        if missing:
            few = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            sys.exit(f"error: {d} lacks {len(missing)} of the {len(wnids)} listed classes: {few}; "
                     f"point at the full ILSVRC-2012 tree")
        empty = [w for w in wnids if not any((d / w).iterdir())]
        if empty:
            sys.exit(f"error: class folder(s) of {d} hold no files: {', '.join(empty[:8])}")


def matches(dest: Path, src: Path, wnids: list[str]) -> bool:
    """Whether ``dest`` already is this subset of ``src`` (links to the same class folders)."""
    for split in ("train", "val"):
        d = dest / split
        if not d.is_dir() or sorted(p.name for p in d.iterdir()) != sorted(wnids):
            return False
        if any((d / w).resolve() != (src / split / w).resolve() for w in wnids):
            return False
    return True


def build(src: Path, dest: Path, wnids: list[str], copy: bool = False) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for split in ("train", "val"):
            (tmp / split).mkdir()
            for w in wnids:
                target = (src / split / w).resolve()
                if copy:
                    shutil.copytree(target, tmp / split / w)
                else:
                    os.symlink(target, tmp / split / w, target_is_directory=True)
        os.rename(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", type=Path, help="full ILSVRC-2012 tree (train/<wnid>/, val/<wnid>/)")
    ap.add_argument("dest", type=Path, help="folder to create, e.g. data/imagenet_subset")
    ap.add_argument("--list", default="seed1993",
                    help="class list: seed1993 (default, LUCIR / Mnemonics), podnet, or a file of wnids")
    ap.add_argument("--copy", action="store_true", help="copy the class folders instead of linking them")
    a = ap.parse_args(argv)
    wnids = read_wnids(a.list)
    src = a.source.resolve()
    check_source(src, wnids)
    if a.dest.exists():
        if not a.copy and matches(a.dest, src, wnids):
            print(f"{a.dest} already links the {len(wnids)} classes of list {a.list!r}; nothing to do")
            return 0
        sys.exit(f"error: {a.dest} exists and is not this subset of {src}; remove it or choose another folder")
    build(src, a.dest, wnids, a.copy)
    n = sum(1 for w in wnids for _ in (src / "train" / w).iterdir())
    print(f"{a.dest}: {len(wnids)} classes of list {a.list!r} ({n} training files) "
          f"{'copied' if a.copy else 'linked'} from {src}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
