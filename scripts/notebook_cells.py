#!/usr/bin/env python
"""Rewrite every notebook's ``parameters`` cell from the one source of the defaults
(``params/quick.yaml``, through :func:`mnemonics_study.notebook_params.parameters_cell`).

    python scripts/notebook_cells.py          # rewrite the cells that differ
    python scripts/notebook_cells.py --check  # exit 1 and name the notebooks that differ

``tests/test_notebooks.py`` runs the check, so a default changed in quick.yaml (or a parameter
added to the study) fails the tests until this script has been run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

from mnemonics_study.notebook_params import NOTEBOOKS, parameters_cell

NB_DIR = Path(__file__).resolve().parent.parent / "notebooks"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only report the notebooks whose cell differs")
    args = ap.parse_args(argv)
    stale = []
    for name in NOTEBOOKS:
        path = NB_DIR / f"{name}.ipynb"
        nb = nbformat.read(path, as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        want = parameters_cell(name)
        if cell.source != want:
            stale.append(name)
            if not args.check:
                cell.source = want
                nbformat.write(nb, path)
    if stale:
        print(("stale parameters cells: " if args.check else "rewrote: ") + ", ".join(stale)
              + (" (run python scripts/notebook_cells.py)" if args.check else ""))
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
