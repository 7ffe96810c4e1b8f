"""Do the optimised exemplars help the network that uses them? A direct measurement from one
trained state, exemplar set by exemplar set, without a run per set.

The mnemonics step probe (:mod:`mnemonics_study.step_probe`) scores the exemplars by the loss of a
temporary model, the outer objective's own proxy. A LUCIR w/ mnemonics run uses them in two other
ways in the phase they are made: the class-balanced fine-tuning (CBF) trains the classifier on
them, and the nearest-mean classifier (NME) takes its class means from them. This probe takes the
network, old network and memory of a LUCIR herding run at the end of a phase (where a mnemonics
run's exemplar stage would run; the herding run has no CBF, so every set starts from the same
state) and builds the phase's exemplar set in several ways:

* ``herding``: the herding run's own exemplars, the start of the optimisation;
* ``mnemonics beta=B``: the production exemplar stage (:func:`~mnemonics_lib.exemplars.exemplar_stage`)
  with the run's settings, the new classes' exemplars optimised from herding and the old ones
  adjusted, at step beta1 = beta2 = B.

For each set it records how far the pixels moved, the NME accuracy with that set's class means,
and the CNN accuracy after CBF on that set (LUCIR's loss, as the runs), each on every seen class,
the old and the new ones, with the share of test images CBF's classifier predicts as new.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Sequence

import torch

from mnemonics_lib import protocol
from mnemonics_lib.config import RunConfig
from mnemonics_lib.evaluation import class_means, nme_predict, normalised_features
from mnemonics_lib.exemplars import exemplar_stage
from mnemonics_lib.methods import get_method
from mnemonics_lib.pipeline import make_generator
from mnemonics_study import cbf_probe

# None: the herding start; otherwise beta1 = beta2 of the run's settings (config.MnemonicsSettings)
STEPS: tuple[float | None, ...] = (None, 0.1, 1.0)


def set_name(beta: float | None) -> str:
    return "herding" if beta is None else f"mnemonics beta={beta:g}"


def mnemonics_memory(config: RunConfig, phase: int, captured: dict[str, Any], beta: float, device):
    """The phase's memory as a LUCIR w/ mnemonics run at step ``beta`` would leave it, from the
    captured herding state: the old classes' exemplars as they were before the phase, the new
    classes' selected and optimised by the production exemplar stage. Returns (memory, stage row)."""
    data, plan = captured["data"], captured["data"].plan
    new = plan.new_classes(phase)
    memory = copy.deepcopy(captured["memory"])
    for c in new:
        del memory.store[c]
    mn = dataclasses.replace(config.mnemonics, outer_lr=beta, old_lr=beta)
    mn_config = dataclasses.replace(config, exemplars="mnemonics", mnemonics=mn)
    idx = data.train.select(list(new))
    new_x, new_y = data.train.normalised(idx, data.norm), data.train.y[idx]
    per_class = protocol.exemplars_per_class(config, plan.seen_classes(phase))
    row = exemplar_stage(mn_config, copy.deepcopy(captured["model"]), memory, new_x, new_y, new, per_class,
                         data.norm, make_generator(cbf_probe.probe_seed(config, phase), device),
                         torch.Generator().manual_seed(cbf_probe.probe_seed(config, phase)), phase)
    return memory, row


@torch.no_grad()
def nme_scores(model, memory, test_x: torch.Tensor, test_y: torch.Tensor, n_old: int, n_seen: int,
               batch: int = 256) -> dict[str, float]:
    """NME accuracy (%) with ``memory``'s class means: every seen class, old and new ones."""
    model.eval()
    ex_x, ex_y = memory.tensors(list(range(n_seen)))
    pred = nme_predict(normalised_features(model, test_x, batch), class_means(model, ex_x, ex_y, n_seen, batch))
    return {f"nme_{k}": v for k, v in cbf_probe.split_accuracy(pred, test_y, n_old).items()}


def run_probe(config: RunConfig, device, phases: Sequence[int], steps: Sequence[float | None] = STEPS,
              say=print) -> list[dict[str, Any]]:
    """Rows ``{phase, exemplars, beta, pixel_delta_new, pixel_delta_old, heldout_before/after,
    nme_*, cbf_*}``, one per phase and exemplar set."""
    captured = cbf_probe.capture_phases(config, device, phases)
    method = get_method("lucir")
    rows = []
    for p in phases:
        cap = captured[p]
        data, plan = cap["data"], cap["data"].plan
        n_old, n_seen = plan.starts[p], plan.ends[p]
        idx = data.test.select(list(range(n_seen)))
        test_x, test_y = data.test.normalised(idx, data.norm), data.test.y[idx]
        for beta in steps:
            memory, stage = (cap["memory"], {}) if beta is None else mnemonics_memory(config, p, cap, beta, device)
            change = stage.get("exemplar_change", {})
            row = {"phase": p, "exemplars": set_name(beta), "beta": beta,
                   "pixel_delta_new": change.get("new", {}).get("mean", 0.0),
                   "pixel_delta_old": change.get("old", {}).get("mean", 0.0),
                   "heldout_before": stage.get("mnemonics_heldout_before"),
                   "heldout_after": stage.get("mnemonics_heldout_after"),
                   **nme_scores(cap["model"], memory, test_x, test_y, n_old, n_seen)}
            tuned = cbf_probe.finetune(config, p, {**cap, "memory": memory}, "lucir_loss", device)
            cbf = cbf_probe.scores(method, {}, tuned, test_x, test_y, n_old)
            row.update({f"cbf_{k}": v for k, v in cbf.items()})
            rows.append(row)
            say(row)
    return rows


def probe_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: one line per phase and exemplar set."""
    lines = ["| phase | exemplars | held-out loss, before → after | pixels moved, new / old (grey levels) | "
             "NME: all / old / new (%) | after CBF, CNN: all / old / new (%) | "
             "after CBF, predicted as new / are new (%) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        heldout = ("—" if r.get("heldout_before") is None
                   else f"{r['heldout_before']:.3f} → {r['heldout_after']:.3f}")
        lines.append(f"| {r['phase']} | {r['exemplars']} | {heldout} | "
                     f"{r['pixel_delta_new']:.2f} / {r['pixel_delta_old']:.2f} | "
                     f"{r['nme_all']:.2f} / {r['nme_old']:.2f} / {r['nme_new']:.2f} | "
                     f"{r['cbf_acc_all']:.2f} / {r['cbf_acc_old']:.2f} / {r['cbf_acc_new']:.2f} | "
                     f"{r['cbf_predicted_new_share']:.1f} / {r['cbf_true_new_share']:.1f} |")
    return "\n".join(lines)
