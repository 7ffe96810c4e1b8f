"""Diagnostics: short runs that explain a result, stored and cached like every run.

**iCaRL's phase 0** (does iCaRL train in its own units?). iCaRL's loss is sigmoid BCE (Rebuffi
et al.), averaged over batch and classes and trained at lr 2.0 (``config.METHOD_SCHEDULES``). A
*variant* is ``method[:knob=value,...]`` (knobs ``lr`` and ``epochs``, mapped onto
``RunConfig.lr_override`` / ``epochs_override``); each is the phase 0 (``last_phase=0``) of the
Table 1 run of that method and seed, stored as a run under ``results/diagnostics/icarl_phase0/``
(``scripts/diagnose.py icarl`` computes them, the README block reads them), beside LwF's phase 0
(cross-entropy, the same linear head, data and seed) as the control.

**The schedule's phase 0** (how far is a shortened schedule from the paper's?). The same phase-0
runs of LUCIR (cosine head, CE) with ``epochs`` set to several values, one per seed, stored under
``results/diagnostics/schedule_phase0/``; 160 epochs is the paper schedule's phase 0 (the quick
profile with ``epochs=160`` differs from it only in what later phases do), so these runs measure on
this machine what the paper-profile runs measured on a GPU, and choose the phase-0 length of an
intermediate schedule (``scripts/diagnose.py schedule``).

The mnemonics step is measured by :mod:`mnemonics_study.step_probe` (``scripts/probe_mnemonics.py``).
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

from mnemonics_lib.config import ConfigError, RunConfig, make_config
from .report import device_of
from .study import seed_fields

STUDY = "diagnostics/icarl_phase0"
# iCaRL in its own units at quick (lr 2.0, wd 1e-5, BCE averaged over classes), the same at the
# shared lr 0.1, and LwF (CE, the same linear head and data) at quick as the control; then both at
# 70 epochs, iCaRL's own phase-0 length (its milestones 49 and 63 follow from the fractions), to
# separate the loss from the quick profile's shorter training
DEFAULT_VARIANTS = ("icarl", "icarl:lr=0.1", "lwf", "icarl:epochs=70", "lwf:epochs=70")
SCHEDULE_STUDY = "diagnostics/schedule_phase0"
# 20 epochs (quick) is not among them: the Table 1 runs' phase 0 is that run (``table1_phase0_rows``)
SCHEDULE_VARIANTS = ("lucir:epochs=40", "lucir:epochs=80", "lucir:epochs=160")
# which -> (folder under results/, default variants)
DIAGNOSTICS = {"icarl": (STUDY, DEFAULT_VARIANTS), "schedule": (SCHEDULE_STUDY, SCHEDULE_VARIANTS)}
KNOBS = {"lr": ("lr_override", float), "epochs": ("epochs_override", int)}

def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``method[:knob=value,...]`` -> (method, RunConfig overrides)."""
    method, _, rest = text.partition(":")
    fields: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        name, eq, value = item.partition("=")
        if not eq or name not in KNOBS:
            raise ConfigError(f"bad variant {text!r}: write method[:knob=value,...] with knobs {sorted(KNOBS)}, "
                              f"e.g. icarl:lr=2.0,epochs=60")
        field, cast = KNOBS[name]
        fields[field] = cast(value)
    return method, fields


def phase0_configs(variants: Iterable[str] = DEFAULT_VARIANTS, dataset: str = "caltech100",
                   profile: str = "quick", seed: int = 1993) -> list[RunConfig]:
    """Phase 0 of the N = 5 Table 1 run of each variant's method (phase 0 does not depend on N)."""
    out = []
    for text in variants:
        method, fields = parse_variant(text)
        out.append(make_config(dataset=dataset, phases=5, method=method, profile=profile, last_phase=0,
                               **seed_fields(seed), **fields))
    return out


def phase0_table(variants: Sequence[str], configs: Sequence[RunConfig], records: Iterable[Any]) -> str:
    """Markdown: per variant its lr, phase-0 epochs, CNN and NME accuracy after phase 0, hash and
    device ("not run" where its run is not in ``records``)."""

    by_hash = {r.config["config_hash"]: r for r in records}
    lines = ["| variant | loss | lr | phase-0 epochs | CNN % | NME % | config hash | device |",
             "|---|---|---|---|---|---|---|---|"]
    for text, c in zip(variants, configs):
        r = by_hash.get(c.config_hash())
        loss = "BCE" if c.method == "icarl" else "CE"
        first = f"| {text} | {loss} | {c.schedule.lr:g} | {c.schedule.base_epochs} |"
        if r is None:
            lines.append(f"{first} not run |  | {c.config_hash()} |  |")
            continue
        p0 = r.metrics["per_phase"][0]
        lines.append(f"{first} {p0['acc_cnn']:.2f} | {p0['acc_nme']:.2f} | {c.config_hash()} | {device_of(r.env)} |")
    return "\n".join(lines)


def schedule_configs(seeds: Sequence[int], variants: Iterable[str] = SCHEDULE_VARIANTS,
                     dataset: str = "caltech100", profile: str = "quick") -> dict[int, list[RunConfig]]:
    """Seed -> the phase-0 configs of ``variants`` (as :func:`phase0_configs`)."""
    return {int(s): phase0_configs(variants, dataset, profile, int(s)) for s in seeds}


def table1_phase0_rows(seeds: Sequence[int], dataset: str = "caltech100") -> list[tuple[str, dict[int, RunConfig]]]:
    """The LUCIR (herding) Table 1 runs whose phase 0 the schedule table shows beside the variants:
    the paper profile's (N = 10, the reference) and the quick profile's (N = 5), as (label, seed -> config)."""
    return [(f"{profile} profile (LUCIR N = {n} run)",
             {int(s): make_config(dataset=dataset, phases=n, method="lucir", profile=profile, **seed_fields(s))
              for s in seeds}) for profile, n in (("paper", 10), ("quick", 5))]


def schedule_table(variants: Sequence[str], configs: dict[int, Sequence[RunConfig]], records: Iterable[Any],
                   references: Sequence[tuple[str, dict[int, RunConfig]]] = ()) -> str:
    """Markdown: phase-0 CNN accuracy of each reference run (``references``: label, seed -> config)
    and variant (rows) per seed (columns), their mean (when every seed ran), and the difference
    from the first reference (the paper-profile runs' phase 0) paired by seed; "not run" where a
    run is not in ``records``. The devices are listed per row."""
    from statistics import mean

    by_hash = {r.config["config_hash"]: r for r in records}
    seeds = list(configs)

    def accs(cs):
        return [by_hash[c.config_hash()].metrics["per_phase"][0]["acc_cnn"]
                if c is not None and c.config_hash() in by_hash else None for c in cs]

    def cells(values, fmt):
        return " / ".join("not run" if v is None else format(v, fmt) for v in values)

    rows: list[tuple[str, int, list[Any]]] = [
        (label, next(iter(by_seed.values())).schedule.base_epochs, [by_seed.get(s) for s in seeds])
        for label, by_seed in references]
    rows += [(text, configs[seeds[0]][i].schedule.base_epochs, [configs[s][i] for s in seeds])
             for i, text in enumerate(variants)]
    ref = accs(rows[0][2]) if references else None
    head = " / ".join(str(s) for s in seeds)
    lines = [f"| phase 0 of | epochs | CNN %, seed {head} | mean | Δ vs paper profile, seed {head} | device |",
             "|---|---|---|---|---|---|"]
    for n, (text, epochs, cs) in enumerate(rows):
        got = accs(cs)
        m = f"{mean(got):.2f}" if None not in got else ""
        if ref is None:
            delta = ""
        elif n == 0:
            delta = "(reference)"
        else:
            delta = cells([None if a is None or r is None else a - r for a, r in zip(got, ref)], "+.2f")
        devs = sorted({device_of(by_hash[c.config_hash()].env) for c in cs
                       if c is not None and c.config_hash() in by_hash})
        lines.append(f"| {text} | {epochs} | {cells(got, '.2f')} | {m} | {delta} | {', '.join(devs)} |")
    return "\n".join(lines)
