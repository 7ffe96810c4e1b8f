"""Does the mnemonics step act? A direct measurement of the local bilevel program on one trained
network, setting by setting, without training a run per setting.

The network and memory are those of a LUCIR herding run after phase ``probe_phase`` (phase 1 of
B50, N = 5 by default: the first phase with both programs). For each setting (beta1 or beta2, K)
the probe optimises

* the phase's new-class exemplars from their herding start, on the phase's data less a held-out
  share (:func:`~mnemonics_lib.exemplars.heldout_split`), and
* the old-class exemplars by the half-split program (their real data is gone for the algorithm;
  the probe still has it, and scores the result on it),

and records, for each, the loss of the temporary model trained on the exemplars (K inner steps,
:func:`~mnemonics_lib.bilevel.heldout_loss`) on real images the program never saw, before and
after, and how far the pixels moved (mean absolute change, grey levels). A setting acts when the
pixels move by at least a grey level on average *and* the held-out loss falls; past a good step
size the held-out loss rises again, which is where the sweep stops.

Beside them, the loss of the network itself on the same images (no inner step). A falling
held-out loss only says the exemplars got better if the temporary model is not far worse than
the network to begin with: when K steps at the inner rate alpha wreck it, the outer objective
mostly repairs that damage. A setting *teaches* when it acts and its temporary model, trained on
the optimised exemplars, ends at or below the network's own loss; grid items may therefore also
set alpha and which parameters the inner loop adapts (``inner_params``, "all" or "head").
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Iterable, Sequence

import torch

from mnemonics_lib import bilevel
from mnemonics_lib.config import RunConfig, make_config
from mnemonics_lib.exemplars import bilevel_settings, heldout_split, initial_selection, pixel_change

# beta1 (new-class exemplars) x K, and beta2 (old-class exemplars) at K = 1; the scaled step with
# momentum 0.9 (config.MnemonicsSettings). Decades around the range where pixels start to move.
NEW_GRID = tuple((b, 1) for b in (0.1, 1.0, 10.0, 100.0, 1000.0)) + tuple(
    (b, k) for k in (2, 3, 5) for b in (1.0, 10.0, 100.0))
OLD_GRID = tuple((b, 1) for b in (1.0, 10.0, 100.0, 1000.0))


def base_config(dataset: str = "caltech100", profile: str = "quick", seed: int = 1993,
                phases: int = 5, probe_phase: int = 1, **fields: Any) -> RunConfig:
    """The LUCIR herding run whose network after ``probe_phase`` the probe reads."""
    return make_config(dataset=dataset, profile=profile, phases=phases, method="lucir", exemplars="herding",
                       seed=seed, class_order_seed=seed, last_phase=probe_phase, **fields)


def probe_settings(config: RunConfig, beta: float, k: int, alpha: float | None = None,
                   inner_params: str | None = None) -> bilevel.BilevelSettings:
    """The study's bilevel settings of a mnemonics run of ``config``, at step ``beta`` and K = ``k``
    (and, where given, inner rate ``alpha`` and ``inner_params``; else the config's)."""
    mn = dataclasses.replace(config.mnemonics, inner_steps=k, outer_lr=beta, old_lr=beta)
    if alpha is not None:
        mn = dataclasses.replace(mn, inner_lr=alpha)
    if inner_params is not None:
        mn = dataclasses.replace(mn, inner_params=inner_params)
    return bilevel_settings(dataclasses.replace(config, exemplars="mnemonics", mnemonics=mn))


GridItem = tuple  # (beta, K) or (beta, K, alpha, inner_params)


def grid_item(item: GridItem, config: RunConfig) -> dict[str, Any]:
    """``{beta, K, alpha, inner_params}`` of a grid item; a (beta, K) pair takes the config's alpha
    and inner parameters."""
    if len(item) not in (2, 4):
        raise ValueError(f"a grid item is (beta, K) or (beta, K, alpha, inner_params), got {item!r}")
    beta, k = item[:2]
    alpha, inner = item[2:] if len(item) == 4 else (config.mnemonics.inner_lr, config.mnemonics.inner_params)
    return {"beta": float(beta), "K": int(k), "alpha": float(alpha), "inner_params": str(inner)}


def probe_new(model, new_x, new_y, per_class: int, settings: bilevel.BilevelSettings, norm,
              heldout_fraction: float, seed: int) -> dict[str, float]:
    """Optimise the new classes' exemplars from herding; held-out loss before/after, pixel change."""
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.zeros(len(new_y), dtype=torch.bool)
    picks = []
    for c in torch.unique(new_y).tolist():
        where = torch.nonzero(new_y == c).flatten()
        idx = where[initial_selection("herding", model, new_x[where], per_class, gen)]
        chosen[idx] = True
        picks.append(idx)
    idx = torch.cat(picks)
    ex_x, ex_y = new_x[idx], new_y[idx]
    held = heldout_split(new_y, chosen, heldout_fraction, gen)
    out = bilevel.optimise_exemplars(model, ex_x, ex_y, new_x[~held], new_y[~held], settings,
                                     generator=torch.Generator().manual_seed(seed + 1),
                                     pixel_range=norm.pixel_range)
    return _scores(model, ex_x, out, ex_y, new_x[held], new_y[held], settings, norm)


def probe_old(model, old_x, old_y, real_x, real_y, settings: bilevel.BilevelSettings, norm,
              seed: int) -> dict[str, float]:
    """Adjust the old exemplars by the half-split program; scored on the old classes' real images."""
    out = bilevel.adjust_old_exemplars(model, old_x, old_y, settings,
                                       generator=torch.Generator().manual_seed(seed),
                                       pixel_range=norm.pixel_range)
    return _scores(model, old_x, out, old_y, real_x, real_y, settings, norm)


def _scores(model, before, after, ex_y, real_x, real_y, settings, norm) -> dict[str, float]:
    change = pixel_change(before, after, norm)
    return {"heldout_model": bilevel.heldout_loss(model, before, ex_y, real_x, real_y, settings, inner=False),
            "heldout_before": bilevel.heldout_loss(model, before, ex_y, real_x, real_y, settings),
            "heldout_after": bilevel.heldout_loss(model, after, ex_y, real_x, real_y, settings),
            "pixel_delta": change["mean"], "pixel_max": change["max"], "n_heldout": int(len(real_y))}


def capture_phase(config: RunConfig, device, probe_phase: int) -> dict[str, Any]:
    """Train ``config`` through ``probe_phase`` and keep what the probe reads at its end."""
    from mnemonics_lib.trainer import run_incremental

    kept: dict[str, Any] = {}

    def keep(phase, model, memory, data):
        if phase == probe_phase:
            kept.update(model=copy.deepcopy(model).eval(), memory=copy.deepcopy(memory), data=data)

    run_incremental(config, device, checkpoints=False, on_phase_end=keep)
    return kept


def run_probe(config: RunConfig, device, new_grid: Iterable[tuple[float, int]] = NEW_GRID,
              old_grid: Iterable[tuple[float, int]] = OLD_GRID, heldout_fraction: float = 0.2,
              say=print) -> list[dict[str, Any]]:
    """Rows ``{program, beta, K, heldout_before, heldout_after, pixel_delta, pixel_max, n_heldout}``."""
    p = config.last_phase
    kept = capture_phase(config, device, p)
    model, memory, data = kept["model"], kept["memory"], kept["data"]
    plan, norm = data.plan, data.norm
    new = list(plan.new_classes(p))
    idx = data.train.select(new)
    new_x, new_y = data.train.normalised(idx, data.norm), data.train.y[idx]
    per_class = config.memory_per_class
    rows = []
    for item in map(lambda t: grid_item(t, config), new_grid):
        s = probe_settings(config, item["beta"], item["K"], item["alpha"], item["inner_params"])
        rows.append({"program": "new", **item,
                     **probe_new(model, new_x, new_y, per_class, s, norm, heldout_fraction, config.seed)})
        say(rows[-1])
    old_grid = tuple(old_grid)
    if not old_grid:  # e.g. phase 0, which has no old exemplars
        return rows
    old_x, old_y = memory.tensors()
    old_y = old_y.to(old_x.device)
    keep_old = old_y < plan.starts[p]
    old_x, old_y = old_x[keep_old], old_y[keep_old]
    ridx = data.train.select(list(range(plan.starts[p])))
    real_x, real_y = data.train.normalised(ridx, data.norm), data.train.y[ridx]
    for item in map(lambda t: grid_item(t, config), old_grid):
        s = probe_settings(config, item["beta"], item["K"], item["alpha"], item["inner_params"])
        rows.append({"program": "old", **item,
                     **probe_old(model, old_x, old_y, real_x, real_y, s, norm, config.seed)})
        say(rows[-1])
    return rows


def acts(row: dict[str, Any]) -> bool:
    """The criterion: pixels move by >= 1 grey level on average and the held-out loss falls."""
    return row["pixel_delta"] >= 1.0 and row["heldout_after"] < row["heldout_before"]


def teaches(row: dict[str, Any]) -> bool | None:
    """It acts, and the temporary model trained on the optimised exemplars is no worse on the
    held-out images than the network itself; None for records without the network's own loss."""
    if row.get("heldout_model") is None:
        return None
    return acts(row) and row["heldout_after"] <= row["heldout_model"]


def choose(rows: Sequence[dict[str, Any]], program: str) -> dict[str, Any] | None:
    """Among the settings that act (and teach, where the record can say), the one with the lowest
    held-out loss after optimisation."""
    ok = [r for r in rows if r["program"] == program and acts(r) and teaches(r) is not False]
    return min(ok, key=lambda r: r["heldout_after"]) if ok else None


def probe_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: one line per setting, the chosen ones in bold; "—" where a record predates a column."""
    lines = ["| program | beta | K | alpha | inner | network's own loss | held-out loss before | after | change "
             "| pixel change, mean / max (grey levels) | acts | teaches |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    chosen = [choose(rows, p) for p in ("new", "old")]
    yes = {True: "yes", False: "no", None: "—"}
    for r in rows:
        mark = "**" if r in chosen else ""
        alpha = "—" if r.get("alpha") is None else f"{r['alpha']:g}"
        own = "—" if r.get("heldout_model") is None else f"{r['heldout_model']:.4f}"
        lines.append(f"| {r['program']} | {mark}{r['beta']:g}{mark} | {r['K']} | {alpha} | "
                     f"{r.get('inner_params', '—')} | {own} | {r['heldout_before']:.4f} | "
                     f"{r['heldout_after']:.4f} | {r['heldout_after'] - r['heldout_before']:+.4f} | "
                     f"{r['pixel_delta']:.2f} / {r['pixel_max']:.1f} | {yes[acts(r)]} | {yes[teaches(r)]} |")
    return "\n".join(lines)
