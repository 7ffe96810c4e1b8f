"""Does class-balanced fine-tuning (CBF) rebalance the classifier, or over-correct it? A direct
measurement on trained networks, loss by loss, without a run per loss.

Every LUCIR w/ mnemonics run ends each phase with CBF (LUCIR's official ``--cb_finetune``,
``ft_flag 2``: the feature extractor and BatchNorm fixed, sigma fixed, the old and new class
embeddings trained on the exemplar set with LUCIR's loss, CE + less-forget + margin ranking). The
probe takes the network, old network and memory of a LUCIR herding run at the end of each probed
phase (where CBF would run; the herding run itself has none, so every phase starts from the same
un-fine-tuned path) and applies CBF from that same state with each loss of :data:`VARIANTS`:

* ``lucir_loss``: the study's CBF (LUCIR's official default, ``ft_flag 2``);
* ``no_margin_ranking``: the same without the margin-ranking term (the official ``ft_flag 4``).
  With the features fixed the less-forget term is a constant, so this is cross-entropy alone.

For the network before CBF and after each variant it records the accuracy on every seen class,
on the old and on the new classes, and the share of test images predicted as a new class beside
the share that are one. A biased classifier gives the new classes too large a share; balancing
should bring it near the true share; a share far below it is over-correction.
"""
from __future__ import annotations

import copy
from typing import Any, Iterable, Sequence

import torch

from mnemonics_lib.config import RunConfig, make_config
from mnemonics_lib.methods import PhaseContext, get_method
from mnemonics_lib.pipeline import make_generator

VARIANTS = {
    "lucir_loss": "CE + less-forget + margin ranking (official ft_flag 2; the study's CBF)",
    "no_margin_ranking": "CE + less-forget, no margin ranking (official ft_flag 4)",
}


def base_config(dataset: str = "caltech100", profile: str = "quick", seed: int = 1993, phases: int = 5,
                last_phase: int = 2, **fields: Any) -> RunConfig:
    """The LUCIR herding run (no CBF) whose phases 1..``last_phase`` the probe starts from."""
    return make_config(dataset=dataset, profile=profile, phases=phases, method="lucir", exemplars="herding",
                       seed=seed, class_order_seed=seed, last_phase=last_phase, **fields)


def variant_method(name: str):
    """The method whose loss CBF trains with, for one of :data:`VARIANTS`."""
    if name not in VARIANTS:
        raise ValueError(f"unknown CBF variant {name!r}; known: {sorted(VARIANTS)}")
    method = copy.copy(get_method("lucir"))
    if name == "no_margin_ranking":
        method.lambda_mr = 0.0  # an instance attribute: the shared LUCIR instance keeps its weight
    return method


@torch.no_grad()
def scores(method, state: dict, model, test_x: torch.Tensor, test_y: torch.Tensor, n_old: int,
           batch: int = 256) -> dict[str, float]:
    """Accuracy (%) on every seen class, on the old and on the new ones; share (%) of the test images
    predicted as a new class, and the share that belong to one."""
    model.eval()
    pred = torch.cat([method.logits(state, model, test_x[i:i + batch]).argmax(1)
                      for i in range(0, len(test_y), batch)])
    return {**{f"acc_{k}": v for k, v in split_accuracy(pred, test_y, n_old).items()},
            "predicted_new_share": 100 * (pred >= n_old).float().mean().item(),
            "true_new_share": 100 * (test_y >= n_old).float().mean().item()}


def split_accuracy(pred: torch.Tensor, test_y: torch.Tensor, n_old: int) -> dict[str, float]:
    """Accuracy (%) of predictions ``pred`` on every test image, the old classes' (< ``n_old``) and
    the new ones'."""
    hit = (pred == test_y).float()
    old = test_y < n_old
    return {"all": 100 * hit.mean().item(), "old": 100 * hit[old].mean().item(),
            "new": 100 * hit[~old].mean().item()}


def probe_seed(config: RunConfig, phase: int) -> int:
    """The seed of a probe's generators at ``phase``: the same for every variant and exemplar set
    it compares, so their differences are not the draw's."""
    return config.seed * 7919 + phase


def capture_phases(config: RunConfig, device, phases: Iterable[int]) -> dict[int, dict[str, Any]]:
    """Train ``config`` and keep, for each phase in ``phases``, its network, the previous phase's
    network (the old model CBF's loss reads), the memory and the data."""
    from mnemonics_lib.trainer import run_incremental

    wanted = set(phases)
    kept: dict[int, dict[str, Any]] = {}
    previous: dict[str, Any] = {}

    def keep(phase, model, memory, data):
        if phase in wanted:
            kept[phase] = {"model": copy.deepcopy(model), "old_model": previous["model"],
                           "memory": copy.deepcopy(memory), "data": data}
        previous["model"] = copy.deepcopy(model).eval()

    run_incremental(config, device, checkpoints=False, on_phase_end=keep)
    return kept


def finetune(config: RunConfig, phase: int, captured: dict[str, Any], variant: str, device) -> torch.nn.Module:
    """CBF (the trainer's own :func:`~mnemonics_lib.trainer.balanced_finetune`) on a copy of the
    captured network with ``variant``'s loss; the same generator seed for every variant."""
    from mnemonics_lib import trainer

    data, memory = captured["data"], captured["memory"]
    plan = data.plan
    method = variant_method(variant)
    model = copy.deepcopy(captured["model"])
    n_old, n_seen = plan.starts[phase], plan.ends[phase]
    state = {"_pad": data.norm.pixel_range[0], "_augmenter": data.augmenter,
             "lucir_lambda": method.less_forget_weight(config.is_folder, n_old, n_seen - n_old)}
    ex_x, ex_y = memory.tensors()
    gen = make_generator(probe_seed(config, phase), device)
    ctx = PhaseContext(config, phase, n_old, n_seen, model, captured["old_model"], ex_x, ex_y.to(ex_x.device),
                       torch.device(device), gen, state)
    trainer.balanced_finetune(ctx, method, memory)
    return model


def run_probe(config: RunConfig, device, phases: Sequence[int] | None = None, say=print) -> list[dict[str, Any]]:
    """Rows ``{phase, variant, acc_all, acc_old, acc_new, predicted_new_share, true_new_share}``;
    variant "none" is the network before CBF."""
    phases = list(phases or range(1, (config.last_phase or config.phases) + 1))
    captured = capture_phases(config, device, phases)
    method = get_method("lucir")
    rows = []
    for p in phases:
        cap = captured[p]
        data, plan = cap["data"], cap["data"].plan
        idx = data.test.select(list(range(plan.ends[p])))
        test_x, test_y = data.test.normalised(idx, data.norm), data.test.y[idx]
        models = {"none": cap["model"]}
        models.update({v: finetune(config, p, cap, v, device) for v in VARIANTS})
        for name, model in models.items():
            rows.append({"phase": p, "variant": name, **scores(method, {}, model, test_x, test_y, plan.starts[p])})
            say(rows[-1])
    return rows


def probe_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: one line per phase and CBF variant."""
    lines = ["| phase | CBF loss | accuracy: all / old / new (%) | predicted as new / are new (% of test images) |",
             "|---|---|---|---|"]
    label = {"none": "none (before CBF)", **{k: f"`{k}`" for k in VARIANTS}}
    for r in rows:
        lines.append(f"| {r['phase']} | {label[r['variant']]} | {r['acc_all']:.2f} / {r['acc_old']:.2f} / "
                     f"{r['acc_new']:.2f} | {r['predicted_new_share']:.1f} / {r['true_new_share']:.1f} |")
    return "\n".join(lines)
