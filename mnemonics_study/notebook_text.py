"""Text the notebooks show that is the same for all of them, or that holds numbers: written here
once and rendered by a cell, so no notebook's Markdown types a paper number or a runtime.

- :func:`intro`: the paper's numbers for the notebook's artifact (from :mod:`paper_numbers`, with
  their confidence tags), what differs here (from the dataset and profile parameters), how
  parameters and missing runs behave.
- :func:`runtime`: what the runs shown took, read from their ``metrics.json`` and ``env.json``.
"""
from __future__ import annotations

import statistics
from typing import Any, Mapping, Sequence

from . import paper_numbers

TAG_LEGEND = ("Tags: **[code]** read in the authors' code, **[3p]** quoted by a third party, "
              "**[recalled]** widely cited but not confirmed against the PDF.")

DATASET_NOTES = {
    "caltech100": ("`caltech100` (32x32 Caltech-101 without Faces_easy: 100 classes, a few dozen training "
                   "images per class, imbalanced) stands in for CIFAR-100, which is not available offline, "
                   "so a difference to the paper is context, not a reproduction verdict"),
    "cifar100": "`cifar100` is the paper's dataset: its numbers are directly comparable",
    "cifar10": "`cifar10` has no paper numbers: it is a second natural-image check of the orderings",
    "imagenet_subset": ("`imagenet_subset` is the paper's ImageNet-Subset (100 classes, the seed-1993 list; "
                        "`subset_list=podnet` is PODNet's other list, not the paper's)"),
    "caltech101_jpeg": ("`caltech101_jpeg` (Caltech-101 JPEGs in the ImageNet layout, 100 classes, ~55 training "
                        "images per class) stands in for ImageNet-Subset through the same folder pipeline and "
                        "ResNet-18, so a difference to the paper is context, not a reproduction verdict"),
    "imagenet": "`imagenet` is the paper's ImageNet (1000 classes)",
    "synthetic": "`synthetic` (20 classes of noisy colour templates) proves the plumbing only",
}

PARAMETERS_NOTE = (
    "**Parameters.** Every notebook declares every study parameter, so one params file serves all "
    "seven (`-f params/quick.yaml`); a name no notebook knows, or a value of the wrong kind "
    "(`-p phases abc`), fails at the third cell with one line naming the fix. A list goes in with "
    "`-y \"phases: [5, 10]\"`, one value with `-p phases 10`.")
MISSING_NOTE = (
    "**Missing runs.** `missing: skip` (the default, and what `make figures` uses) renders what "
    "`results/` holds: the run-or-load cell lists every missing run (spec, N, seed, config hash) with "
    "the command that computes it, and table cells read \"n/a (not run)\". `missing: compute` computes "
    "them at the profile (hours at `quick`); `missing: error` fails instead.")
OUTPUTS_NOTE = (
    "**Outputs.** Tables (`.md`, `.csv`) and figures (`.png`, `.pdf`) go to `figures_dir`, named by "
    "what they hold (artifact, dataset, profile, the phases N, the seeds when not the study's "
    "three, and `_m<k>` when the runs keep k exemplars per class instead of the paper's 20), each "
    "with a `<name>.provenance.json` beside it (config hashes, commits, devices).")


def _table1_paper(dataset: str) -> str:
    paper_ds = paper_numbers.PAPER_DATASET.get(dataset)
    if paper_ds is None:
        return f"Paper: no numbers for `{dataset}`."
    head = f"Paper, {paper_ds} (arXiv 2002.10211 v6), AIA %:\n\n| method | " + " | ".join(
        f"N = {n}" for n in paper_numbers.PHASES) + " |\n|---|" + "---|" * len(paper_numbers.PHASES)
    rows = []
    for m in paper_numbers.TABLE1_METHODS:
        cells = [paper_numbers.TABLE1[(m, paper_ds, n)] for n in paper_numbers.PHASES]
        rows.append(f"| {paper_numbers.METHOD_LABELS[m]} | " + " | ".join(f"{c.value:.2f} {c.tag}" for c in cells) + " |")
    other = [f"{o['value']:.2f} {o['tag']} for {paper_numbers.METHOD_LABELS[o['key'][0]]}, N = {o['key'][2]} "
             f"({o['source']})" for o in paper_numbers.TABLE1_OTHER if o["key"][1] == paper_ds]
    note = ("\n\nOther reported values: " + "; ".join(other) + ".") if other else ""
    return head + "\n" + "\n".join(rows) + note


def _readme_paper() -> str:
    ns = paper_numbers.PHASES
    lines = [f"The {paper_numbers.README_SOURCE}. The table shows them beside our runs of the same "
             "code: cosinekd (herding) for the plain rows, cosinekd_authors_code+weight_transfer (the "
             "code's exemplar step, no balanced fine-tuning, the weight-transferred network from phase 1) "
             "for the 'w/ mnemonics' rows:", "",
             "| README row | " + " | ".join(f"AIA N = {n}" for n in ns) + " | "
             + " | ".join(f"forgetting N = {n}" for n in ns) + " |",
             "|---|" + "---|" * (2 * len(ns))]
    for row in paper_numbers.README_ROWS:
        cells = [paper_numbers.AUTHORS_README[(row, metric, n)] for metric in ("aia", "forgetting") for n in ns]
        lines.append(f"| {row} | " + " | ".join(f"{c.value:.2f} {c.tag}" for c in cells) + " |")
    return "\n".join(lines)


PAPER = {
    "table1": _table1_paper,
    "figure4_curves": lambda ds: "Paper: a figure only (no numbers were recovered); Table 1's AIA is each curve's mean.",
    "forgetting": lambda ds: _readme_paper(),
    "ablation_exemplars": lambda ds: "Paper: the ablation's numbers were not recovered (no paper column).",
    "sweep_mnemonics": lambda ds: "Paper: no numbers (the paper does not give its meta-hyperparameters).",
    "figure1_tsne": lambda ds: "Paper: a figure only (no numbers).",
    "exemplar_images": lambda ds: "Paper: images only (no numbers).",
}


def intro_text(notebook: str, params: Mapping[str, Any]) -> str:
    """The Markdown :func:`intro` displays."""
    from .report import profile_note

    dataset, profile = params["dataset"], params["profile"]
    differs = (f"**What differs here.** {DATASET_NOTES.get(dataset, f'`{dataset}`')}. This execution: "
               f"{profile_note(profile, dataset)}; `paper` is the paper's schedule (GPU), `quick` one sized for CPUs, "
               f"`smoke` a tiny network on the synthetic set.")
    return "\n\n".join([PAPER[notebook](dataset), TAG_LEGEND, differs, PARAMETERS_NOTE, MISSING_NOTE, OUTPUTS_NOTE])


def intro(notebook: str, params: Mapping[str, Any]) -> Any:
    """:func:`intro_text` as an IPython Markdown object (shown as the cell's result)."""
    from IPython.display import Markdown

    return Markdown(intro_text(notebook, params))


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def runtime(records: Sequence[Any]) -> str:
    """What the runs shown took to compute: median and total wall time from their metrics (a run
    resumed on several devices counts every stretch), and the devices they ran on."""
    if not records:
        return "Runtime: no run of this notebook is in the ledger yet."
    walls = [float(r.metrics.get("wall_s_total") or 0.0) for r in records]
    devices = sorted({str(r.env.get("device") or "not recorded") for r in records})
    return (f"Runtime of the {len(records)} runs shown (their metrics.json): median {_minutes(statistics.median(walls))} "
            f"per run, {_minutes(sum(walls))} in all; devices: {', '.join(devices)}. Loading them from "
            f"results/ takes seconds.")
