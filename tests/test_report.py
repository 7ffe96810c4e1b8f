"""Report tables: the exemplar ablation's Δ vs herding is paired by seed."""
from __future__ import annotations

import math

import pandas as pd

from mnemonics_lib import report


def _runs(rows):
    return pd.DataFrame(rows, columns=["spec", "phases", "seed", "aia"])


def test_delta_vs_herding_pairs_seeds_and_says_so_when_some_lack_a_pair():
    # herding has an easy seed (1995) that the variant lacks: unpaired means would give
    # (31 + 34) / 2 - (36 + 35 + 46) / 3 = -6.5; paired it is ((31 - 36) + (34 - 35)) / 2 = -3
    df = _runs([("lucir", 5, 1993, 36.0), ("lucir", 5, 1994, 35.0), ("lucir", 5, 1995, 46.0),
                ("lucir_mnemonics+weight_transfer", 5, 1993, 31.0), ("lucir_mnemonics+weight_transfer", 5, 1994, 34.0),
                ("lucir", 10, 1993, 99.0)])  # another N: not paired with N = 5
    d, k, either = report._paired_delta(df, "lucir_mnemonics+weight_transfer", "lucir", 5)
    assert (d, k, either) == (-3.0, 2, 3)
    assert report._delta_text(d, "lucir", k, either) == "-3.00 (CNN), 2 paired seeds"
    assert report._paired_delta(df, "lucir", "lucir", 5) == (0.0, 3, 3)
    assert report._delta_text(0.0, "icarl", 3, 3) == "+0.00 (NME)"
    d, k, either = report._paired_delta(df, "lucir_random", "lucir", 5)  # never ran
    assert math.isnan(d) and k == 0 and report._delta_text(d, "lucir", k, either) == "—"
    assert report._delta_text(1.5, "lucir", 1, 2) == "+1.50 (CNN), 1 paired seed"
