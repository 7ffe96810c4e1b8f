"""The paper's target numbers as data, each with its confidence tag and source (paper.md §1).

Tags: ``[code]`` read in the authors' public code; ``[3p]`` quoted by a third party (another paper,
an aggregator, an issue thread); ``[recalled]`` widely cited but not confirmed against the PDF.
Every table that prints one of these numbers prints its tag beside it. No I/O here.
"""
from __future__ import annotations

from dataclasses import dataclass

TAGS = ("[recalled]", "[3p]", "[code]")

TABLE1_METHODS = ("lwf", "icarl", "bic", "lucir", "lucir_mnemonics")
TABLE1_DATASETS = ("cifar100", "imagenet_subset", "imagenet")
PHASES = (5, 10, 25)

#: Display names of run specs (study.parse_spec vocabulary) as the paper writes them.
METHOD_LABELS = {
    "lwf": "LwF",
    "icarl": "iCaRL",
    "bic": "BiC",
    "lucir": "LUCIR",
    "lucir_mnemonics": "LUCIR w/ mnemonics",
    "cosinekd": "CE + KD, cosine head (authors' baseline)",
    "cosinekd_mnemonics": "CE + KD, cosine head (authors' baseline) w/ mnemonics",
}

#: Which paper dataset a study dataset is compared against. caltech100 (32x32 Caltech-101 without
#: Faces_easy, 100 classes) stands in for CIFAR-100, which is not available offline; the synthetic
#: smoke set only exercises the plumbing; caltech101_jpeg (the same images as JPEG files in the
#: ImageNet layout) stands in for ImageNet-Subset. None: the paper has no number for that dataset.
PAPER_DATASET = {
    "cifar100": "cifar100",
    "caltech100": "cifar100",
    "synthetic": "cifar100",
    "imagenet_subset": "imagenet_subset",
    "caltech101_jpeg": "imagenet_subset",
    "imagenet": "imagenet",
    "cifar10": None,
}


@dataclass(frozen=True)
class PaperNumber:
    """One number of the paper (a percentage) with its provenance."""

    value: float
    tag: str
    source: str


_T1_SOURCE = "arXiv 2002.10211 v6 Table 1 (the v6 / later re-reported row)"
_T1_VALUES = {  # method -> dataset -> (N=5, N=10, N=25)
    "lwf": {"cifar100": (49.59, 46.98, 45.51), "imagenet_subset": (53.62, 47.64, 44.32),
            "imagenet": (44.35, 38.90, 36.87)},
    "icarl": {"cifar100": (57.12, 52.66, 48.22), "imagenet_subset": (65.44, 59.88, 52.97),
              "imagenet": (51.50, 46.89, 43.14)},
    "bic": {"cifar100": (59.36, 54.20, 50.00), "imagenet_subset": (70.07, 64.96, 57.73),
            "imagenet": (62.65, 58.72, 53.47)},
    "lucir": {"cifar100": (63.17, 60.14, 57.54), "imagenet_subset": (70.84, 68.32, 61.44),
              "imagenet": (64.45, 61.57, 56.56)},
    "lucir_mnemonics": {"cifar100": (63.34, 62.28, 60.96), "imagenet_subset": (72.58, 71.37, 69.74),
                        "imagenet": (64.54, 63.01, 61.00)},
}
# Cells corroborated by a third party (paper.md §1); every other cell stays [recalled].
_T1_CORROBORATED = {
    ("lucir_mnemonics", "cifar100", 5): "quoted by later papers",
    ("lucir_mnemonics", "imagenet_subset", 5): "quoted as ~72.6 by later papers",
    ("lucir_mnemonics", "imagenet", 5): "quoted by later papers",
    ("lucir_mnemonics", "imagenet", 10): "quoted by later papers",
    ("icarl", "cifar100", 5): "quoted from the official codes by a later paper",
    ("icarl", "cifar100", 10): "quoted from the official codes by a later paper",
    ("lucir", "cifar100", 5): "quoted from the official codes by a later paper",
    ("lucir", "cifar100", 10): "quoted from the official codes by a later paper",
}


def _table1() -> dict[tuple[str, str, int], PaperNumber]:
    out = {}
    for method, per_ds in _T1_VALUES.items():
        for ds, values in per_ds.items():
            for n, v in zip(PHASES, values):
                note = _T1_CORROBORATED.get((method, ds, n))
                out[(method, ds, n)] = (PaperNumber(v, "[3p]", f"{_T1_SOURCE}; {note}") if note
                                        else PaperNumber(v, "[recalled]", _T1_SOURCE))
    return out


#: Table 1, average incremental accuracy (%), keyed by (method spec, paper dataset, N).
TABLE1: dict[tuple[str, str, int], PaperNumber] = _table1()

#: Other reported values for Table-1 cells that readers meet; shown in notes, never compared.
TABLE1_OTHER = (
    {"key": ("lucir_mnemonics", "cifar100", 5), "value": 64.95, "tag": "[3p]",
     "source": "CVPR 2020 conference version (issue threads); withdrawn by the authors in arXiv v6"},
    {"key": ("lucir", "cifar100", 10), "value": 60.18, "tag": "[3p]",
     "source": "the LUCIR paper itself (CVPR 2019), 50 base + 10 phases"},
)

#: What the authors' README table measured, as read in their code (mnemonics-training/1_train:
#: trainer/baseline.py and trainer/incremental.py, main.py defaults): not Li & Hoiem's LwF nor
#: the original iCaRL, but one "baseline" trainer whose two heads give the two rows.
README_SOURCE = ("authors' code README (CIFAR-100, B50): their baseline trainer, i.e. a cosine head with "
                  "imprinted new-class weights and old-class weights frozen, CE + KD on the old-class logits "
                  "(KL x T^2 x 0.25 per sample, T = 2), no LUCIR losses; memory a fixed total of 2000 "
                  "exemplars (ceil(2000 / classes seen) per class); 'LwF' = CNN and 'iCaRL' = NME accuracy "
                  "of the same run")
_README_VALUES = {  # row -> ((AIA N=5, 10, 25), (forgetting N=5, 10, 25))
    "LwF": ((52.44, 48.47, 45.75), (45.02, 42.50, 39.86)),
    "LwF w/ mnemonics": ((54.21, 52.72, 51.59), (40.00, 36.50, 34.25)),
    "iCaRL": ((58.03, 53.01, 48.47), (32.87, 32.98, 36.32)),
    "iCaRL w/ mnemonics": ((60.01, 57.37, 54.13), (25.93, 26.92, 28.92)),
}
#: README row -> (head it reports, whether mnemonics were used): how a study run is matched to it.
README_ROWS = {
    "LwF": ("cnn", False),
    "LwF w/ mnemonics": ("cnn", True),
    "iCaRL": ("nme", False),
    "iCaRL w/ mnemonics": ("nme", True),
}


def _readme() -> dict[tuple[str, str, int], PaperNumber]:
    out = {}
    for row, (aia, forg) in _README_VALUES.items():
        for n, a, f in zip(PHASES, aia, forg):
            out[(row, "aia", n)] = PaperNumber(a, "[code]", README_SOURCE)
            out[(row, "forgetting", n)] = PaperNumber(f, "[code]", README_SOURCE)
    return out


#: The authors' README table keyed by (row, "aia" | "forgetting", N).
AUTHORS_README: dict[tuple[str, str, int], PaperNumber] = _readme()


def table1_number(method: str, dataset: str, phases: int) -> PaperNumber | None:
    """The Table-1 number a study run of ``method`` on ``dataset`` is compared with, or None
    (no such cell, or no paper counterpart of the dataset)."""
    paper_ds = PAPER_DATASET.get(dataset)
    return TABLE1.get((method, paper_ds, phases)) if paper_ds else None


def readme_row(head: str, mnemonics: bool) -> str:
    """The README row a study run's ``head`` ("cnn" | "nme") is compared with."""
    return next(row for row, (h, m) in README_ROWS.items() if h == head and m == mnemonics)


def readme_number(head: str, mnemonics: bool, metric: str, phases: int) -> tuple[str, PaperNumber] | None:
    """(row name, number) of the README table for a head, metric ("aia" | "forgetting") and N,
    or None where the README has no such N."""
    row = readme_row(head, mnemonics)
    num = AUTHORS_README.get((row, metric, phases))
    return (row, num) if num else None
