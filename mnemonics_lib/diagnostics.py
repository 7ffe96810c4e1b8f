"""Diagnostics: short runs that explain a result, stored and cached like every run.

**iCaRL's phase 0** (why iCaRL does not train under the quick schedule).

iCaRL's loss is sigmoid BCE (Rebuffi et al.); the study trains every method with the paper's
shared schedule (lr 0.1), and at quick (20 epochs in phase 0) iCaRL's phase-0 accuracy is a
fraction of the CE-trained heads'. A *variant* is ``method[:knob=value,...]`` (knobs ``lr`` and
``epochs``, mapped onto ``RunConfig.lr_override`` / ``epochs_override``); each is the phase 0
(``last_phase=0``) of the Table 1 run of that method and seed, and is stored as a run under
``results/diagnostics/icarl_phase0/`` (``scripts/diagnose.py icarl`` computes them, the README
block reads them).

**The mnemonics step size** (do the optimised exemplars move at all?). The sweep chose beta1 =
100, the largest value of its grid, and at quick the exemplars then stay within a few grey levels
of their herding start. :func:`step_configs` repeats the sweep's run at its choice (same config,
same hash: a reproducibility check) and extends it past the grid's edge; the runs record how far
the pixels moved (``per_phase[].exemplar_change``). At the study's beta2 (10, the library
default: the sweep did not vary it) the adjusted old exemplars move by under one grey level, so
the grid also raises beta2 at the sweep's beta1: is the old-exemplar program a no-op by its step
size alone? A run cut after phase 1 sees phase 1's adjustment only through that phase's
class-balanced fine-tuning (the head) and NME means; the network first trains on the adjusted
exemplars in phase 2, so the grid's last two runs go one phase further (beta2 10 and 1000).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

from .config import ConfigError, RunConfig, make_config
from .study import seed_fields, sweep_configs

STUDY = "diagnostics/icarl_phase0"
# iCaRL at quick (the reference), at iCaRL's own lr (2.0, from its paper; the other settings stay
# quick's), at 3x and 8x quick's phase-0 epochs (160 = the paper's), and LwF (CE, the same linear
# head and data) at quick as the control
DEFAULT_VARIANTS = ("icarl", "icarl:lr=2.0", "icarl:epochs=60", "icarl:epochs=160", "lwf")
KNOBS = {"lr": ("lr_override", float), "epochs": ("epochs_override", int)}

STEP_STUDY = "diagnostics/mnemonics_step"
STEP_OUTER_LRS = (100.0, 1000.0)  # the sweep's choice, and ten times it (past its grid)
STEP_OLD_LR = 10.0  # beta2 of every study run (MnemonicsSettings' default; never swept)
# (beta1, beta2[, last phase]): the sweep's run, beta1 x10, then beta2 x10 and x100 at the sweep's
# beta1 (phases 0-1), and beta2 10 vs 1000 through phase 2 (default last phase: 1, the sweep's)
STEP_GRID = ((100.0, STEP_OLD_LR), (1000.0, STEP_OLD_LR), (100.0, 100.0), (100.0, 1000.0),
             (100.0, STEP_OLD_LR, 2), (100.0, 1000.0, 2))


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
    from .readme import device_of  # local: readme imports the study module this one does

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


def step_configs(grid: Iterable[float | tuple[float, ...]] = STEP_GRID, inner_lr: float = 0.01,
                 dataset: str = "caltech100", profile: str = "quick", seed: int = 1993,
                 memory_per_class: int = 20) -> list[RunConfig]:
    """The sweep's run (LUCIR w/ mnemonics, N = 5, K = 1, cut after phase 1 unless a third value
    says otherwise) at each ``(beta1, beta2[, last_phase])`` of ``grid`` (a bare number is a beta1
    at the study's beta2); at the sweep's own values they are the sweep's configs (the same hashes)."""
    out = []
    for g in grid:
        beta1, beta2, last = (float(g), STEP_OLD_LR, 1) if isinstance(g, (int, float)) else (
            float(g[0]), float(g[1]), int(g[2]) if len(g) > 2 else 1)
        (c,) = sweep_configs(dataset, [inner_lr], [beta1], [1], phases=5, seed=seed, profile=profile,
                             last_phase=last, memory_per_class=memory_per_class)
        out.append(c if beta2 == c.mnemonics.old_lr else
                   dataclasses.replace(c, mnemonics=dataclasses.replace(c.mnemonics, old_lr=beta2)))
    return out


def step_table(configs: Sequence[RunConfig], records: Iterable[Any]) -> str:
    """Markdown: per (beta1, beta2, phases) the AIA and how far the pixels moved in phase 1 (new-class
    exemplars and adjusted old ones: max / mean change in grey levels)."""
    from .readme import device_of

    by_hash = {r.config["config_hash"]: r for r in records}
    lines = ["| beta1 | beta2 | alpha | phases | AIA CNN | phase-1 change, new exemplars: max / mean | "
             "old exemplars: max / mean | config hash | device |", "|---|---|---|---|---|---|---|---|---|"]
    for c in configs:
        r = by_hash.get(c.config_hash())
        first = (f"| {c.mnemonics.outer_lr:g} | {c.mnemonics.old_lr:g} | {c.mnemonics.inner_lr:g} | "
                 f"0-{c.last_phase} |")
        if r is None:
            lines.append(f"{first} not run |  |  | {c.config_hash()} |  |")
            continue
        ch = r.metrics["per_phase"][1].get("exemplar_change", {})
        cell = lambda k: f"{ch[k]['max']:.1f} / {ch[k]['mean']:.3f}" if k in ch else "not recorded"  # noqa: E731
        lines.append(f"{first} {r.metrics['aia_cnn']:.2f} | {cell('new')} | {cell('old')} | {c.config_hash()} | "
                     f"{device_of(r.env)} |")
    return "\n".join(lines)
