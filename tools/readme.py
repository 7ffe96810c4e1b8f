"""The generated blocks of README.md (the headline, Table 1) and docs/study.md (Table 1 seed by
seed, the exemplar ablation, mnemonics vs herding, the sweep grid, Fig. 1's margins, the
diagnostics, the speed tables from ``results/bench/`` via :mod:`bench_readme`), read from the run
ledger.

The blocks show every measured seed (not only mean ± std), the config hash and the device of
each run, and the paired difference to LUCIR (herding), so no number is typed by hand:
``python scripts/study.py readme --profile quick`` (run by ``make figures``) rewrites the text
between the markers

    <!-- generated: NAME -->
    ...
    <!-- /generated: NAME -->

and nothing else, in every file that has the markers. :func:`replace_block` refuses a block a
file lacks, naming the markers to add; the CLI writes only the blocks the files have and lists
the others.
"""
from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from mnemonics_study import paper_numbers, report, study
from mnemonics_study.report import device_of, short_device
from mnemonics_lib.config import RunConfig
from mnemonics_study.study import SEEDS, as_list, spec_of

BEGIN = "<!-- generated: {} -->"
END = "<!-- /generated: {} -->"
REFERENCE = "lucir"  # the paired differences are taken against LUCIR with herding exemplars
CBF_CONTROL = "lucir+balanced_finetune"  # herding with the class-balanced fine-tuning mnemonics runs use


class ReadmeError(ValueError):
    """The README lacks a generated block's markers, or has them out of order."""


@dataclass(frozen=True)
class Row:
    label: str
    spec: str
    metric: str = "aia_cnn"  # iCaRL is scored with its NME classifier, as Table 1 reports it


TABLE1_ROWS = (
    Row("LwF", "lwf"),
    Row("iCaRL (NME)", "icarl", "aia_nme"),
    Row("BiC", "bic"),
    Row("LUCIR (herding)", "lucir"),
    Row("LUCIR w/ mnemonics", "lucir_mnemonics"),
)


def _by_seed(records: Iterable[Any], spec: str, phases: int, metric: str) -> dict[int, tuple[float, Any]]:
    out = {}
    for r in records:
        if spec_of(r.config) == spec and r.config["phases"] == phases:
            out[int(r.config["seed"])] = (float(r.metrics[metric]), r)
    return out


def _mean_std(values: Sequence[float]) -> str:
    if len(values) < 2:
        return ""
    return f" ({statistics.mean(values):.2f} ± {statistics.stdev(values):.2f})"


def _seed_cells(got: Mapping[int, tuple[float, Any]], seeds: Sequence[int]) -> tuple[str, str, str]:
    """The per-seed values ("not run" where absent) with mean ± std, the config hashes and the
    devices of one row."""
    vals = [got[s][0] for s in seeds if s in got]
    cells = " / ".join(f"{got[s][0]:.2f}" if s in got else "not run" for s in seeds) + _mean_std(vals)
    hashes = ", ".join(got[s][1].config["config_hash"] for s in seeds if s in got)
    devices = ", ".join(f"{s}: {device_of(got[s][1].env)}" for s in seeds if s in got)
    return cells, hashes, devices


def _paired_delta(got: Mapping[int, tuple[float, Any]], ref: Mapping[int, tuple[float, Any]],
                  seeds: Sequence[int]) -> str:
    """``got - ref`` seed by seed, over the seeds both have (with the mean when there are two+)."""
    d = [got[s][0] - ref[s][0] for s in seeds if s in got and s in ref]
    text = " / ".join(f"{v:+.2f}" for v in d)
    return text + (f" (mean {statistics.mean(d):+.2f})" if len(d) > 1 else "")


def seed_table(records: Iterable[Any], phases: int, dataset: str, seeds: Sequence[int] = SEEDS,
               rows: Sequence[Row] = TABLE1_ROWS) -> str:
    """A Markdown table: one row per method, the AIA of each seed ("not run" where absent) with
    mean ± std, the paired difference to LUCIR (herding), the paper's number and tag, the config
    hashes and the devices."""
    records = list(records)
    ref = _by_seed(records, REFERENCE, phases, "aia_cnn")  # the paired differences' baseline
    head = (f"| method | AIA, seed {' / '.join(map(str, seeds))} (mean ± std) | Δ vs LUCIR (herding), "
            f"paired by seed | paper (N = {phases}) | config hashes | device |")
    lines = [head, "|---|---|---|---|---|---|"]
    for row in rows:
        got = _by_seed(records, row.spec, phases, row.metric)
        cells, hashes, devices = _seed_cells(got, seeds)
        delta = "(reference)" if row.spec == REFERENCE else _paired_delta(got, ref, seeds)
        paper = paper_numbers.table1_number(row.spec, dataset, phases)
        paper_txt = f"{paper.value:.2f} {paper.tag}" if paper else "none"
        lines.append(f"| {row.label} | {cells} | {delta} | {paper_txt} | {hashes} | {devices} |")
    return "\n".join(lines)


def _method_label(method: str) -> str:
    """The paper's name of a method, with "(NME)" where its own classifier is NME (iCaRL)."""
    nme = report.headline_head(method) == "nme"
    return paper_numbers.METHOD_LABELS.get(method, method) + (" (NME)" if nme else "")


def _exemplar_label(spec: str, method: str) -> str:
    rest = spec[len(method):].lstrip("_")
    return "herding" + rest if not rest or rest.startswith("+") else rest


def ablation_table(records: Iterable[Any], phases: int, specs: Sequence[str],
                   seeds: Sequence[int] = SEEDS) -> str:
    """The exemplar ablation seed by seed: one row per run spec (``specs``: method + exemplar
    type + flags, as :func:`study.spec_of` spells them), grouped by method with its herding row
    first. AIA of the method's own classifier (NME for iCaRL), and the difference to the same
    method with herding exemplars, paired by seed."""
    records = list(records)
    method_of = {s: study.parse_spec(s)["method"] for s in specs}
    methods = list(dict.fromkeys(method_of.values()))
    ordered = [s for m in methods for s in sorted((s for s in specs if method_of[s] == m),
                                                  key=lambda s: (s != m, "+" in s))]
    head = (f"| method | exemplars | AIA, seed {' / '.join(map(str, seeds))} (mean ± std) | "
            f"Δ vs the method with herding, paired by seed | config hashes | device |")
    lines = [head, "|---|---|---|---|---|---|"]
    for spec in ordered:
        m = method_of[spec]
        metric = f"aia_{report.headline_head(m)}"
        got = _by_seed(records, spec, phases, metric)
        cells, hashes, devices = _seed_cells(got, seeds)
        delta = "(reference)" if spec == m else _paired_delta(got, _by_seed(records, m, phases, metric), seeds)
        lines.append(f"| {_method_label(m)} | {_exemplar_label(spec, m)} | {cells} | {delta} | "
                     f"{hashes} | {devices} |")
    return "\n".join(lines)


def ordering_line(records: Iterable[Any], phases: int, seeds: Sequence[int] = SEEDS,
                  rows: Sequence[Row] = TABLE1_ROWS) -> str:
    """For each adjacent pair of ``rows`` (given in the paper's order, worst first): on how many
    of the seeds both have does the paper's ``a < b`` hold."""
    records = list(records)
    got = [_by_seed(records, r.spec, phases, r.metric) for r in rows]
    parts = []
    for (ra, a), (rb, b) in zip(zip(rows, got), zip(rows[1:], got[1:])):
        both = [s for s in seeds if s in a and s in b]
        parts.append(f"{ra.label} < {rb.label}: {sum(a[s][0] < b[s][0] for s in both)} of {len(both)}")
    return "The paper's ordering, pair by pair (seeds where it holds, of the seeds both have): " + \
        "; ".join(parts) + "."


def margin_table(snapshot_records: Sequence[Any], long: Any) -> str:
    """Fig. 1's claim as numbers: per exemplar strategy and recorded phase, the median class margin
    of the exemplars against that of real images under the same model (``long``: the rows of
    :func:`report.margin_table`), the share of each below zero, and the run's hash and device."""
    by_strategy = {r.config["exemplars"]: r for r in snapshot_records}
    head = ("| exemplars | recorded | median margin: exemplars / real | exemplars − real | "
            "share below zero: exemplars / real | config hash | device |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    rows = {(r["exemplars"], r["stage"], r["kind"]): r for r in long.to_dict("records")}
    for (strategy, stage, kind), r in rows.items():
        if kind == "real":
            continue
        run = by_strategy.get(strategy)
        if kind != "exemplar" or run is None:
            lines.append(f"| {strategy} | not run |  |  |  |  |  |")
            continue
        real = rows[strategy, stage, "real"]
        lines.append(f"| {strategy} | {stage} | {r['median']:+.4f} / {real['median']:+.4f} | "
                     f"{r['median'] - real['median']:+.4f} | {r['frac_below_zero']:.3f} / "
                     f"{real['frac_below_zero']:.3f} | {run.config['config_hash']} | {device_of(run.env)} |")
    return "\n".join(lines)


def sweep_table(configs: Sequence[Any], records: Iterable[Any]) -> str:
    """The sensitivity sweep as a grid: alpha (inner_lr) down, beta1 (outer_lr) across, each cell the
    AIA (CNN) of the cut runs with its config hash, the highest in bold (a report: the library's
    settings come from the step probe); one grid per K."""
    by_hash = {r.config["config_hash"]: r for r in records}
    cells = {(c.mnemonics.inner_steps, c.mnemonics.inner_lr, c.mnemonics.outer_lr): c for c in configs}
    got = {k: by_hash[c.config_hash()].metrics["aia_cnn"] for k, c in cells.items() if c.config_hash() in by_hash}
    best = max(got.values(), default=None)
    out = []
    for k in sorted({key[0] for key in cells}):
        alphas = sorted({a for kk, a, _ in cells if kk == k})
        betas = sorted({b for kk, _, b in cells if kk == k})
        out += [f"| K = {k}: alpha \\ beta1 | " + " | ".join(f"{b:g}" for b in betas) + " |",
                "|---" * (len(betas) + 1) + "|"]
        for a in alphas:
            row = []
            for b in betas:
                c = cells.get((k, a, b))
                if c is None:
                    row.append("")
                elif (k, a, b) not in got:
                    row.append(f"not run ({c.config_hash()})")
                else:
                    v = f"{got[k, a, b]:.2f}"
                    row.append(f"{'**' + v + '**' if got[k, a, b] == best else v} ({c.config_hash()})")
            out.append(f"| {a:g} | " + " | ".join(row) + " |")
    return "\n".join(out)


# Two-sided 95 % quantiles of Student's t by degrees of freedom (paired differences over n seeds
# have n - 1); a table rather than scipy, which the environment does not pin.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


@dataclass(frozen=True)
class Comparison:
    """``spec`` against ``reference`` on one dataset and N, paired by seed."""

    dataset: str
    phases: int
    spec: str
    reference: str
    records: Sequence[Any]
    metric: str = "aia_cnn"


def paired_stats(deltas: Sequence[float]) -> tuple[float, float, float, float] | None:
    """(mean, sd, low, high) of paired differences with a 95 % t-interval; None under 2 pairs."""
    if len(deltas) < 2:
        return None
    mean, sd = statistics.mean(deltas), statistics.stdev(deltas)
    half = T975[len(deltas) - 1] * sd / len(deltas) ** 0.5
    return mean, sd, mean - half, mean + half


def comparison_table(comparisons: Sequence[Comparison], seeds: Sequence[int] = SEEDS) -> str:
    """Does ``spec`` beat ``reference`` beyond the seed noise? The paired differences seed by seed,
    their mean ± sd, a 95 % t-interval over the seeds, and a verdict that calls a difference only
    when the interval excludes zero."""
    head = (f"| dataset | N | compared | Δ AIA, seed {' / '.join(map(str, seeds))} | mean ± sd of Δ | "
            f"95 % t-interval | verdict |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for c in comparisons:
        got = _by_seed(c.records, c.spec, c.phases, c.metric)
        ref = _by_seed(c.records, c.reference, c.phases, c.metric)
        both = [s for s in seeds if s in got and s in ref]
        deltas = [got[s][0] - ref[s][0] for s in both]
        cells = " / ".join(f"{got[s][0] - ref[s][0]:+.2f}" if s in both else "not run" for s in seeds)
        st = paired_stats(deltas)
        if st is None:
            spread = interval = ""
            verdict = "not resolved (one seed)" if deltas else "not run"
        else:
            mean, sd, lo, hi = st
            spread, interval = f"{mean:+.2f} ± {sd:.2f}", f"[{lo:+.2f}, {hi:+.2f}]"
            verdict = ("higher" if lo > 0 else "lower" if hi < 0 else "not resolved") + f" ({len(deltas)} seeds)"
        lines.append(f"| {c.dataset} | {c.phases} | {c.spec} vs {c.reference} | {cells} | {spread} | "
                     f"{interval} | {verdict} |")
    return "\n".join(lines)


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with the lines between the markers of block ``name`` replaced by ``body``."""
    begin, end = BEGIN.format(name), END.format(name)
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < 0 or j < i:
        raise ReadmeError(f"README block {name!r} not found: put the two lines {begin!r} and {end!r} "
                          f"where its table belongs")
    return text[: i + len(begin)] + "\n" + body.rstrip("\n") + "\n" + text[j:]


def table1_blocks(records: Iterable[Any], dataset: str, profile: str, phases: Any,
                  seeds: Sequence[int] = SEEDS) -> dict[str, str]:
    """One block per N, named ``table1-<dataset>-<profile>-N<N>``."""
    records = list(records)
    return {f"table1-{dataset}-{profile}-N{n}": seed_table(records, int(n), dataset, as_list(seeds)) + "\n\n"
            + ordering_line(records, int(n), as_list(seeds)) for n in as_list(phases)}


def ablation_blocks(records: Iterable[Any], dataset: str, profile: str, phases: Any, specs: Sequence[str],
                    seeds: Sequence[int] = SEEDS) -> dict[str, str]:
    """One block per N, named ``ablation-<dataset>-<profile>-N<N>``."""
    records = list(records)
    return {f"ablation-{dataset}-{profile}-N{n}": ablation_table(records, int(n), specs, as_list(seeds))
            for n in as_list(phases)}


def update(text: str, blocks: Mapping[str, str]) -> str:
    for name, body in blocks.items():
        text = replace_block(text, name, body)
    return text


def update_files(texts: Mapping[str, str], blocks: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """Every block into each text (path -> content) that has its markers: (the new texts, the
    names of blocks no text has). The README holds the headline blocks, docs/study.md the rest."""
    new = {path: update(text, {k: v for k, v in blocks.items() if BEGIN.format(k) in text})
           for path, text in texts.items()}
    absent = sorted(k for k in blocks if not any(BEGIN.format(k) in t for t in texts.values()))
    return new, absent


def headline_table(records: Iterable[Any], dataset: str, phases: Any, seeds: Sequence[int] = SEEDS,
                   rows: Sequence[Row] = TABLE1_ROWS) -> str:
    """The README's headline: Table 1 compressed to one cell per method and N (our mean AIA over the
    seeds that ran, how many, and the paper's number with its tag, on the paper's dataset)."""
    records = list(records)
    ns = [int(n) for n in as_list(phases)]
    paper_ds = paper_numbers.PAPER_DATASET.get(dataset)
    head = "| method | " + " | ".join(f"N = {n}: ours ({dataset}) / paper ({paper_ds or 'none'})" for n in ns) + " |"
    lines = [head, "|---|" + "---|" * len(ns)]
    for row in rows:
        cells = []
        for n in ns:
            got = _by_seed(records, row.spec, n, row.metric)
            vals = [got[s][0] for s in seeds if s in got]
            ours = (f"{statistics.mean(vals):.2f} ({len(vals)} of {len(seeds)} seeds)" if vals else "not run")
            paper = paper_numbers.table1_number(row.spec, dataset, n)
            cells.append(f"{ours} / {f'{paper.value:.2f} {paper.tag}' if paper else 'none'}")
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------ every block of one profile
# issue criterion for a mnemonics setting that acts: the held-out loss falls in at least this share
# of phases, and the new exemplars' pixels move by at least this many grey levels on average
ACTS_PHASE_SHARE = 0.9
ACTS_GREY_LEVELS = 1.0


def acts_table(records: Iterable[Any], dataset: str) -> str:
    """Markdown: per LUCIR w/ mnemonics run of ``dataset``, in how many phases the held-out loss of
    the temporary model fell, in how many it ended at or below the network's own loss (the
    exemplars teach, rather than repair the inner step; runs that predate
    ``mnemonics_heldout_model`` read "not measured"), and how far the exemplars moved
    (``mnemonics_heldout_*``, ``exemplar_change`` of each phase's metrics), with the verdict over
    all its runs' phases."""
    lines = ["| N | seed | held-out loss fell (phases) | ended at or below the network's own loss (phases) | "
             "new exemplars moved, mean per phase (grey levels) | old exemplars moved, mean | config hash | device |",
             "|---|---|---|---|---|---|---|---|"]
    fell = total = 0
    moved: list[float] = []
    runs = sorted((r for r in records if spec_of(r.config) == "lucir_mnemonics"),
                  key=lambda r: (r.config["phases"], r.config["seed"]))
    for r in runs:
        phases = r.metrics["per_phase"]
        rows = [p for p in phases if "mnemonics_heldout_after" in p]
        down = sum(p["mnemonics_heldout_after"] < p["mnemonics_heldout_before"] for p in rows)
        # the phases where it did not fall (phase 0 is the base classes)
        rose = [str(p.get("phase", i)) for i, p in enumerate(phases) if "mnemonics_heldout_after" in p
                and not p["mnemonics_heldout_after"] < p["mnemonics_heldout_before"]]
        own = [p for p in rows if "mnemonics_heldout_model" in p]
        teach = (f"{sum(p['mnemonics_heldout_after'] <= p['mnemonics_heldout_model'] for p in own)} of {len(own)}"
                 if own else "not measured")
        new = [p["mnemonics_pixel_delta"] for p in rows]
        old = [p["exemplar_change"]["old"]["mean"] for p in rows if "old" in p.get("exemplar_change", {})]
        fell, total, moved = fell + down, total + len(rows), moved + new
        not_at = f" (not at phase {', '.join(rose)})" if rose else ""
        lines.append(f"| {r.config['phases']} | {r.config['seed']} | {down} of {len(rows)}{not_at} | {teach} | "
                     f"{statistics.fmean(new):.3f} (min {min(new):.3f}, max {max(new):.3f}) | "
                     f"{f'{statistics.fmean(old):.3f}' if old else 'not adjusted'} | {r.config['config_hash']} | "
                     f"{device_of(r.env)} |"
                     if rows else f"| {r.config['phases']} | {r.config['seed']} | not measured (run predates the "
                                  f"held-out split) |  |  |  | {r.config['config_hash']} | {device_of(r.env)} |")
    if not total:
        return f"No LUCIR w/ mnemonics run of {dataset} with the held-out measurement in results/ yet."
    share, mean = fell / total, statistics.fmean(moved)
    ok = share >= ACTS_PHASE_SHARE and mean >= ACTS_GREY_LEVELS
    lines.append(f"\nOver {total} phases: held-out loss fell in {100 * share:.0f} % (criterion >= "
                 f"{100 * ACTS_PHASE_SHARE:.0f} %), new exemplars moved {mean:.3f} grey levels on average "
                 f"(criterion >= {ACTS_GREY_LEVELS:g}): {'acts' if ok else 'does not act by the criterion'}.")
    return "\n".join(lines)


# The step of the study's earlier LUCIR w/ mnemonics runs: alpha 0.1 (where the inner step damages
# the temporary model), beta1 = beta2 = 1. Their cached runs stay comparable against the controls.
EARLIER_STEP = {"inner_lr": 0.1, "outer_lr": 1.0, "old_lr": 1.0}


def at_earlier_step(configs: Iterable[RunConfig]) -> list[RunConfig]:
    """The LUCIR w/ mnemonics configs among ``configs`` at :data:`EARLIER_STEP`, the rest as they are."""
    return [dataclasses.replace(c, mnemonics=dataclasses.replace(c.mnemonics, **EARLIER_STEP))
            if spec_of(c) == "lucir_mnemonics" else c for c in configs]


def _variants_with(params: Mapping[str, Any], notebook: str) -> list[Mapping[str, Any]]:
    """The profile's parameters and those of each variant that renders ``notebook``."""
    return [params] + [vp for _, nbs, vp in study.variant_params(params) if notebook in nbs]


def _variant_records(params: Mapping[str, Any], root: Any, notebook: str, adjust=lambda cs: list(cs)
                     ) -> list[tuple[dict[str, Any], list[RunConfig], list[Any]]]:
    """(notebook parameters, configs, records in results/) of ``notebook`` for the profile and each
    variant that renders it; ``adjust`` maps the configs first (e.g. :func:`at_earlier_step`)."""
    out = []
    for vp in _variants_with(params, notebook):
        configs = adjust(study.notebook_configs(notebook, vp))
        out.append((study.notebook_parameters(notebook, vp), configs,
                    study.run_configs(configs, root, missing="skip")))
    return out


NO_ADJUST_OLD = "lucir_mnemonics+no_adjust_old"  # mnemonics with the old-class exemplars left as they were
# the order of the comparisons within one dataset and N
COMPARED = [("lucir_mnemonics", REFERENCE), ("lucir_mnemonics", CBF_CONTROL), (CBF_CONTROL, REFERENCE),
            (NO_ADJUST_OLD, CBF_CONTROL), (NO_ADJUST_OLD, "lucir_mnemonics")]


def dataset_label(p: Mapping[str, Any]) -> tuple[str, str]:
    """(block-name part, table text) of the runs of notebook parameters ``p``: the dataset, with the
    exemplars per class where they are not the paper's 20 (the low-data control), so that two
    variants of one dataset never share a block or a table row. (``memory_mode`` is not a notebook
    parameter: notebooks always keep a number per class.)"""
    ds, memory = p["dataset"], int(p["memory_per_class"])
    tag = study.memory_tag(memory)
    return (f"{ds}-{tag}", f"{ds}, {memory} exemplars per class") if tag else (ds, ds)


def _mnemonics_comparisons(table1, ablation, extras: bool = True) -> list[Comparison]:
    """LUCIR w/ mnemonics against herding at every Table-1 N, and against herding + CBF (and CBF
    against herding) at the ablation's and control's N; where the ablation has mnemonics without
    the old-exemplar adjustment and ``extras``, that run against herding + CBF and against full
    mnemonics. ``table1``/``ablation`` from :func:`_variant_records`; an ablation variant with no
    LUCIR w/ mnemonics record is left out when not ``extras`` (the earlier step's variants)."""
    out: list[Comparison] = []
    for p, _, recs in table1:
        out += [Comparison(dataset_label(p)[1], int(n), "lucir_mnemonics", REFERENCE, recs)
                for n in as_list(p["phases"])]
    for p, configs, recs in ablation:
        specs = {spec_of(c) for c in configs}
        if not extras and not any(spec_of(r.config) == "lucir_mnemonics" for r in recs):
            continue
        if {"lucir_mnemonics", CBF_CONTROL} <= specs:
            label = dataset_label(p)[1]
            for n in dict.fromkeys(as_list(p["ablation_phases"]) + as_list(p["cbf_control_phases"])):
                # mnemonics against herding (for a variant without Table 1), against the control,
                # and the control's own cost (CBF alone)
                out += [Comparison(label, int(n), spec, ref, recs) for spec, ref in COMPARED[:3]]
            if extras and NO_ADJUST_OLD in specs:  # at the ablation's N, where that run exists
                out += [Comparison(label, int(n), spec, ref, recs)
                        for n in as_list(p["ablation_phases"]) for spec, ref in COMPARED[3:]]
    # one row per dataset, N and pair, the first listed: Table 1's mnemonics-vs-herding row is the
    # ablation's too
    unique: dict[tuple, Comparison] = {}
    for c in out:
        unique.setdefault((c.dataset, c.phases, c.spec, c.reference), c)
    return list(unique.values())


def _ordered(comparisons: list[Comparison]) -> list[Comparison]:
    """By dataset (first seen), N, then in the order of :data:`COMPARED`."""
    datasets = list(dict.fromkeys(c.dataset for c in comparisons))
    return sorted(comparisons, key=lambda c: (datasets.index(c.dataset), c.phases,
                                              COMPARED.index((c.spec, c.reference))))


def study_blocks(params: Mapping[str, Any], root: Any) -> dict[str, str]:
    """Every generated block of one profile (``params``: its params file), from the runs in
    ``root``; a run not there reads "not run". Table 1 per dataset and N, the exemplar ablation,
    LUCIR w/ mnemonics against herding (and herding + CBF), Fig. 1's margins, iCaRL's phase 0, the
    mnemonics step size."""
    from . import bench_readme
    from mnemonics_study import diagnostics

    blocks: dict[str, str] = {}
    table1 = _variant_records(params, root, "table1")
    ablation = _variant_records(params, root, "ablation_exemplars")
    earlier_table1 = _variant_records(params, root, "table1", at_earlier_step)
    earlier_ablation = _variant_records(params, root, "ablation_exemplars", at_earlier_step)
    for (p, _, recs), (_, _, earlier) in zip(table1, earlier_table1):
        slug, label = dataset_label(p)
        blocks.update(table1_blocks(recs, slug, p["profile"], p["phases"], p["seeds"]))
        blocks[f"headline-{slug}-{p['profile']}"] = headline_table(recs, p["dataset"], p["phases"],
                                                                  as_list(p["seeds"]))
        blocks[f"mnemonics-acts-{slug}-{p['profile']}"] = acts_table(recs, label)
        blocks[f"mnemonics-acts-earlier-step-{slug}-{p['profile']}"] = acts_table(earlier, label)
    with_table1 = {dataset_label(p) for p, _, _ in table1}
    for p, configs, recs in ablation:
        specs = list(dict.fromkeys(spec_of(c) for c in configs))
        slug, label = dataset_label(p)
        blocks.update(ablation_blocks(recs, slug, p["profile"], p["ablation_phases"], specs, p["seeds"]))
        if (slug, label) not in with_table1:  # a variant without Table 1 (the low-data control)
            blocks[f"mnemonics-acts-{slug}-{p['profile']}"] = acts_table(recs, label)
    blocks[f"mnemonics-vs-herding-{params['profile']}"] = comparison_table(
        _ordered(_mnemonics_comparisons(table1, ablation)), params["seeds"])
    blocks[f"mnemonics-vs-herding-earlier-step-{params['profile']}"] = comparison_table(
        _ordered(_mnemonics_comparisons(earlier_table1, earlier_ablation, extras=False)), params["seeds"])

    configs = study.notebook_configs("sweep_mnemonics", params)
    recs = study.run_configs(configs, root, missing="skip", study=study.STUDY_SWEEPS)
    blocks[f"sweep-{params['dataset']}-{params['profile']}"] = sweep_table(configs, recs)

    p = study.notebook_parameters("figure1_tsne", params)
    snaps = study.snapshot_records(study.notebook_configs("figure1_tsne", params), root, missing="skip")
    long = report.margin_table(snaps, dataset=p["dataset"], profile=p["profile"]).long
    blocks[f"margins-{p['dataset']}-{p['profile']}"] = margin_table(snaps, long)

    variants = list(diagnostics.DEFAULT_VARIANTS)
    configs = diagnostics.phase0_configs(variants, params["dataset"], params["profile"])
    recs = study.run_configs(configs, root, missing="skip", study=diagnostics.STUDY)
    blocks[f"icarl-phase0-{params['dataset']}-{params['profile']}"] = diagnostics.phase0_table(variants, configs, recs)
    sched = diagnostics.schedule_configs(params["seeds"], dataset=params["dataset"], profile=params["profile"])
    refs = diagnostics.table1_phase0_rows(params["seeds"], params["dataset"])
    recs = list(study.run_configs([c for cs in sched.values() for c in cs], root, missing="skip",
                                  study=diagnostics.SCHEDULE_STUDY))
    recs += list(study.run_configs([c for _, by_seed in refs for c in by_seed.values()], root, missing="skip"))
    blocks[f"schedule-phase0-{params['dataset']}-{params['profile']}"] = diagnostics.schedule_table(
        list(diagnostics.SCHEDULE_VARIANTS), sched, recs, refs)

    for ds in dict.fromkeys(vp["dataset"] for vp in _variants_with(params, "table1")):
        blocks[f"mnemonics-probe-{ds}-{params['profile']}"] = probe_block(Path(root), ds, params["profile"])
        for phase in (0, 1):
            blocks[f"mnemonics-probe-{ds}-{params['profile']}-phase{phase}"] = probe_block(
                Path(root), ds, params["profile"], phase)
        blocks[f"cbf-probe-{ds}-{params['profile']}"] = cbf_probe_block(Path(root), ds, params["profile"])
        blocks[f"exemplar-effect-{ds}-{params['profile']}"] = exemplar_effect_block(Path(root), ds, params["profile"])
    blocks[f"runtimes-{params['profile']}"] = runtime_table(params, root)
    blocks.update(bench_readme.speed_blocks(Path(root) / "bench"))  # the same for every profile
    return blocks


def _hours(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def runtime_table(params: Mapping[str, Any], root: Any) -> str:
    """Per notebook of one profile: how many of its runs ``root`` holds and what computing them
    took (``wall_s_total`` of each run's metrics; a resumed run counts every stretch), with the
    devices. Rendering a notebook from cached runs takes seconds."""
    lines = ["| notebook | runs in results/ | compute time of those runs: total (median per run) | devices |",
             "|---|---|---|---|"]
    for nb in study.NOTEBOOKS:
        tasks = study.notebook_tasks(nb, params)  # which ledger holds the notebook's runs
        if any(t.kind == "snapshot" for t in tasks):
            recs = study.snapshot_records([t.config for t in tasks], root, missing="skip")
        else:
            recs = study.run_configs(tasks, root, missing="skip",
                                     study=tasks[0].study if tasks else study.STUDY_RUNS)
        walls = [float(r.metrics.get("wall_s_total") or 0.0) for r in recs]
        took = f"{_hours(sum(walls))} ({_hours(statistics.median(walls))})" if walls else ""
        devices = ", ".join(sorted({short_device(r.env.get("device")) for r in recs}))
        lines.append(f"| `{nb}` | {len(recs)} of {recs.wanted} | {took} | {devices} |")
    return "\n".join(lines)


def _records(folder: Path, dataset: str, profile: str,
             where: Callable[[Mapping[str, Any]], bool] = lambda r: True) -> list[dict[str, Any]]:
    """The JSON records ``<dataset>-<profile>-*.json`` in ``folder`` that ``where`` accepts, oldest
    first (by the time each was written, then by file name), each with its file name under ``_file``."""
    import json

    recs = [json.loads(f.read_text()) | {"_file": f.name} for f in sorted(folder.glob(f"{dataset}-{profile}-*.json"))]
    return sorted((r for r in recs if where(r)), key=lambda r: (r.get("written_utc", ""), r["_file"]))


def _newest_record(folder: Path, dataset: str, profile: str,
                   where: Callable[[Mapping[str, Any]], bool] = lambda r: True) -> dict[str, Any] | None:
    """The newest of :func:`_records`; None if there is none."""
    recs = _records(folder, dataset, profile, where)
    return recs[-1] if recs else None


def _record_source(rec: Mapping[str, Any]) -> str:
    env = rec["env"]
    dirty = " with uncommitted changes" + (" (the record's `code_note` says which)" if rec.get("code_note") else "") \
        if env.get("git_dirty") else ""
    return f"`{rec['_file']}`, commit {str(env.get('git_commit'))[:7]}{dirty}, {device_of(env)}"


# probe settings each row sets for itself (or the record's value fills in for): the rest must agree
# for two records' rows to stand in one table
_PER_ROW = frozenset({"K", "beta", "inner_lr", "inner_params", "inner_steps", "outer_lr", "old_lr"})


def _fixed(rec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rec["probe_settings"].items() if k not in _PER_ROW}


def probe_block(root: Path, dataset: str, profile: str, phase: int | None = None) -> str:
    """The mnemonics step probe (scripts/probe_mnemonics.py) of ``dataset``/``profile`` as its table:
    the newest record (of probe phase ``phase`` where given) with the settings of every record that
    probed the same network at the same phase with the same outer loop (a setting probed twice: the
    newest), with the base run and each record's commit and device under it."""
    from mnemonics_study import step_probe

    folder = root / "diagnostics" / "mnemonics_probe"
    rec = _newest_record(folder, dataset, profile, lambda r: phase is None or r["probe_phase"] == phase)
    if rec is None:
        at = "" if phase is None else f" --probe-phase {phase}"
        return f"n/a (not run): `python scripts/probe_mnemonics.py --dataset {dataset} --profile {profile}{at}`"
    same = _records(folder, dataset, profile, lambda r: (r["base_config_hash"], r["probe_phase"], _fixed(r))
                    == (rec["base_config_hash"], rec["probe_phase"], _fixed(rec)))
    rows: dict[tuple, dict[str, Any]] = {}
    for r in same:
        # rows of records that predate per-row alpha ran at the record's own settings
        ps = r["probe_settings"]
        for row in r["rows"]:
            row = {"alpha": ps["inner_lr"], "inner_params": ps.get("inner_params", "all"), **row}
            rows[(row["program"], row["beta"], row["K"], row["alpha"], row["inner_params"])] = row
    return (step_probe.probe_table(list(rows.values())) + f"\n\nBase network: LUCIR herding after phase "
            f"{rec['probe_phase']} ({rec['base_config_hash']}); " + "; ".join(map(_record_source, same)) + ".")


def _diagnostic_block(root: Path, kind: str, script: str, dataset: str, profile: str, table, what: str) -> str:
    """The newest ``results/diagnostics/<kind>`` record of ``dataset``/``profile`` as ``table(rows)``,
    with its base run (``what`` describes it), CBF schedule, commit and device under it."""
    rec = _newest_record(root / "diagnostics" / kind, dataset, profile)
    if rec is None:
        return f"n/a (not run): `python scripts/{script} --dataset {dataset} --profile {profile}`"
    f = rec["cbf_schedule"]
    ms = rec.get("mnemonics_settings")
    step = "" if ms is None else f"mnemonics alpha {ms['inner_lr']:g}, K {ms['inner_steps']}; "
    return (table(rec["rows"]) + f"\n\nBase network: {what} ({rec['base_config_hash']}), "
            f"{dataset}, {profile}, seed {rec['base_config']['seed']}; {step}CBF {f['epochs']} epochs at lr {f['lr']:g}; "
            f"{_record_source(rec)}.")


def cbf_probe_block(root: Path, dataset: str, profile: str) -> str:
    """The newest class-balanced fine-tuning probe record (scripts/probe_cbf.py) as its table."""
    from mnemonics_study import cbf_probe

    return _diagnostic_block(root, "cbf_probe", "probe_cbf.py", dataset, profile, cbf_probe.probe_table,
                             "LUCIR herding")


def exemplar_effect_block(root: Path, dataset: str, profile: str) -> str:
    """The newest exemplar-effect probe record (scripts/probe_exemplar_effect.py) as its table."""
    from mnemonics_study import exemplar_effect

    return _diagnostic_block(root, "exemplar_effect", "probe_exemplar_effect.py", dataset, profile,
                             exemplar_effect.probe_table, "LUCIR herding, exemplars rebuilt at each probed phase")
