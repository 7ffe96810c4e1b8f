"""Report tables: the exemplar ablation's Δ vs herding is paired by seed; provenance of resumed runs."""
from __future__ import annotations

import math

import pandas as pd

from mnemonics_study import report


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


def test_provenance_of_a_resumed_run_names_every_commit_and_device():
    from mnemonics_study.report import _commit, _device

    plain = {"git_commit": "a" * 40, "device": "NVIDIA H100 80GB HBM3", "git_dirty": False}
    assert (_commit(plain), _device(plain)) == ("aaaaaaaa", "NVIDIA H100 80GB HBM3")
    legs = [{"first_phase": 0, "git_commit": "b" * 40, "device": "Intel(R) Xeon(R) Processor"},
            {"first_phase": 11, "git_commit": "c" * 40, "device": "Intel(R) Xeon(R) Processor"},
            {"first_phase": 23, "git_commit": "a" * 40, "device": "NVIDIA H100 80GB HBM3"}]
    resumed = {**plain, "legs": legs}
    assert _commit(resumed) == "bbbbbbbb + cccccccc + aaaaaaaa"
    assert _device(resumed) == "Intel(R) Xeon(R) Processor + NVIDIA H100 80GB HBM3"
    same = {**plain, "legs": [legs[2], {**legs[2], "first_phase": 5}]}  # resumed where it started
    assert (_commit(same), _device(same)) == ("aaaaaaaa", "NVIDIA H100 80GB HBM3")
