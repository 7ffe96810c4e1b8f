"""The phase loop: model-level training with the chosen method, the exemplar stage, optional
class-balanced fine-tuning, evaluation, and a checkpoint at every phase boundary.

Randomness: one seed path. The model is initialised from ``seed``; phase ``p`` draws its batches,
augmentation and selections from generators seeded by ``(seed, p)``, so a run resumed from a
phase checkpoint replays exactly what an uninterrupted run does, and phase 0 can be shared by
runs whose phase 0 is identical (same data, order, seed, schedule, head and loss).
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed, folder_data, metrics, protocol, streaming
from .backbones import IncrementalNet, build_net, head_sizes
from .checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from .config import RunConfig
from .datasets import ArrayData, cap_per_class, load_dataset
from .evaluation import evaluate_phase
from .exemplars import exemplar_stage
from .memory import ExemplarMemory
from .methods import Method, PhaseContext, get_method
from .pipeline import (DeviceImages, Normaliser, ResizedCropFlip, augmented_batches, make_generator,
                       preferred_memory_format, tune_backends)
from .provenance import leg_provenance
from .streaming import HostImages, concat
from .steps import bf16_autocast, compiled_backbones, compile_enabled, make_step

log = logging.getLogger(__name__)


def checkpoint_root() -> Path:
    """Ignored folder for phase checkpoints and the shared phase-0 cache (never in results/)."""
    env = os.environ.get("MNEMONICS_CHECKPOINTS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "checkpoints"


class Interrupted(RuntimeError):
    """Raised by ``stop_after_phase`` to simulate a crash between phases (tests)."""


@dataclass
class StudyData:
    """A dataset in remapped label space, on the device or streamed from the host (``residency``)."""

    train: DeviceImages | HostImages
    test: DeviceImages | HostImages
    norm: Normaliser
    plan: protocol.PhasePlan
    order: np.ndarray
    augmenter: ResizedCropFlip | None = None  # None: the 32x32 sets' padded crop + flip
    residency: str = "device"  # "host": the splits stay on the host (streaming.HostImages)


def data_residency(requested: str | None = None) -> str:
    """``requested``, else ``$MNEMONICS_RESIDENCY``, else ``auto``; checked against the choices."""
    value = requested or os.environ.get("MNEMONICS_RESIDENCY") or "auto"
    if value not in streaming.RESIDENCIES:
        raise ValueError(f"residency {value!r} is not one of {', '.join(streaming.RESIDENCIES)} "
                         f"(set MNEMONICS_RESIDENCY or pass residency=)")
    return value


def prepare_data(config: RunConfig, device: torch.device, residency: str | None = None) -> StudyData:
    """The run's dataset on ``device`` in remapped labels. A folder dataset comes from its uint8
    cache (:mod:`folder_data`) at ``config.image.crop`` pixels, normalised with the ImageNet
    statistics and augmented by a batched random-resized crop + flip (``augmenter``).

    ``residency`` (:func:`data_residency`): ``device`` holds the splits and each phase's training
    set on the device; ``host`` keeps the uint8 splits on the host and streams batches
    (:mod:`streaming`: the same values, so the same results, as the resident path); ``auto`` is
    ``device`` where the folder set fits the device (:func:`folder_data.fits`), else ``host``."""
    residency = data_residency(residency)
    augmenter = None
    if config.is_folder:
        data = folder_data.load_for_config(config)
        im = config.image
        augmenter = ResizedCropFlip(im.crop, tuple(im.scale), tuple(im.ratio))
    else:
        data = load_dataset(config.dataset, synthetic_classes=config.synthetic_classes)
        if not isinstance(data, ArrayData):
            raise TypeError(f"{config.dataset}: expected an in-memory dataset, got {type(data).__name__}")
    if config.train_per_class is not None:
        data = cap_per_class(data, config.train_per_class)
    order = protocol.class_order(config)
    if config.is_folder and residency != "host":  # phase 0 (half the classes): the largest phase set
        base = int(np.isin(data.y_train, order[:protocol.phase_plan(config).ends[0]]).sum())
        if residency == "device":
            folder_data.check_fits(data, base, config.image.crop, torch.device(device))
        elif not folder_data.fits(data, base, config.image.crop, torch.device(device)):
            residency = "host"
            log.info("%s does not fit %s: streaming it from host memory", config.dataset, device)
    if residency == "auto":
        residency = "device"
    split = HostImages if residency == "host" else DeviceImages
    return StudyData(
        train=split(data.x_train, protocol.remap_labels(data.y_train, order), device),
        test=split(data.x_test, protocol.remap_labels(data.y_test, order), device),
        norm=Normaliser.create(data.mean, data.std, device),
        plan=protocol.phase_plan(config),
        order=order,
        augmenter=augmenter,
        residency=residency,
    )


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _phase_seed(config: RunConfig, phase: int, salt: int = 0) -> int:
    return (config.seed * 1_000_003 + phase * 7919 + salt) % (2**63)


def phase0_key(config: RunConfig, method: Method) -> str:
    """Hash of everything phase-0 training depends on (not the method's later behaviour)."""
    fields = {k: getattr(config, k) for k in (
        "dataset", "base_classes", "class_order", "class_order_seed", "seed", "amp", "synthetic_classes")}
    fields.update(schedule=config.schedule.__dict__, cosine=method.cosine_head, loss=method.phase0_loss,
                  n_base=protocol.phase_plan(config).ends[0], version=1)
    if config.train_per_class is not None:  # absent when unused, so earlier cache keys hold
        fields["train_per_class"] = config.train_per_class
    if config.is_folder:  # the same rule: what the folder datasets' phase 0 also depends on
        fields.update(image=config.image.__dict__, corrupt=config.corrupt_images)
        if config.dataset == "imagenet_subset":
            fields["subset_list"] = config.subset_list
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=list).encode()).hexdigest()[:16]


def train_epochs(ctx: PhaseContext, method: Method, epochs: int, lr: float, groups: list[dict],
                 loss_fn=None, desc: str = "", on_epoch_end: Callable[[int], None] | None = None,
                 milestones: tuple[float, ...] | None = None, gamma: float | None = None,
                 freeze_bn: bool = False) -> None:
    """SGD with momentum, step decay at the schedule's milestone fractions (or ``milestones`` /
    ``gamma`` given here), batched on-device augmentation; no host synchronisation inside the
    step loop. On CUDA each full batch replays a captured CUDA graph of the step; on CPU the
    backbones are compiled for the duration of the call (:mod:`mnemonics_lib.steps`).
    ``freeze_bn``: BatchNorm layers stay in eval mode (normalise with, and never update, their
    running statistics) while the rest of the model trains. ``on_epoch_end(epoch)`` is called
    after each epoch (the benchmark times epochs with it)."""
    s = ctx.config.schedule
    opt = torch.optim.SGD(groups, lr=lr, momentum=s.momentum, weight_decay=s.weight_decay)
    miles = sorted({max(1, int(round(m * epochs))) for m in (s.milestones if milestones is None else milestones)})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, miles, gamma=s.gamma if gamma is None else gamma)
    pad = ctx.state["_pad"]
    loss_fn = loss_fn or method.loss
    layout = preferred_memory_format(ctx.device)
    # under torchrun: DDP over a module whose forward is this loss, synchronised BatchNorm, each
    # rank training on its slice of every global batch (mnemonics_lib.distributed); else None
    with distributed.data_parallel(ctx.model, lambda x, y: loss_fn(ctx, x, y), ctx.state, ctx.device) as par, \
            compiled_backbones([ctx.model, ctx.old_model], compile_enabled(ctx.device)) as compiled:
        if par is None:
            step = make_step(opt, lambda x, y: loss_fn(ctx, x, y), ctx.config.amp, ctx.device, s.batch_size,
                             compiled)
        else:
            step = make_step(opt, par.loss, ctx.config.amp, ctx.device, par.local_batch(s.batch_size),
                             compiled, graphs=False)
        for epoch in tqdm(range(epochs), desc=desc or f"phase {ctx.phase}", leave=False, disable=None):
            ctx.model.train()
            if freeze_bn:
                set_batchnorm_eval(ctx.model)
            sizes = iter(distributed.global_batch_sizes(len(ctx.train_y), s.batch_size)) if par else None
            # batches prepared many at a time (pipeline.augmented_batches): the same values as
            # augmenting each batch on its own, in fewer and larger kernels
            for x, y in augmented_batches(ctx.train_x, ctx.train_y, s.batch_size, ctx.generator, pad, layout,
                                          augmenter=ctx.state.get("_augmenter"),
                                          shard=par.shard if par else None):
                if par is not None:
                    par.next_batch(next(sizes))
                step(x, y)
            sched.step()
            if on_epoch_end is not None:
                on_epoch_end(epoch)


def set_batchnorm_eval(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def balanced_finetune(ctx: PhaseContext, method: Method, memory: ExemplarMemory) -> None:
    """Class-balanced fine-tuning (LUCIR §3.4, Mnemonics §3) as LUCIR's official code runs it
    (:class:`~mnemonics_lib.config.BalancedFinetuneSchedule`): on the exemplar set, which holds
    the same number of samples for every seen class, the class embeddings (old and new) are
    trained with the method's own loss against the phase's old model; the feature extractor is
    fixed, BatchNorm included (its running statistics, which the next phase's old model inherits,
    stay those of the phase's training), and so is the cosine scale sigma."""
    f = ctx.config.finetune_schedule
    ex_x, ex_y = memory.tensors()
    saved = ctx.train_x, ctx.train_y
    ctx.train_x, ctx.train_y = ex_x, ex_y
    trainable = {id(p): p.requires_grad for p in ctx.model.parameters()}
    for p in ctx.model.parameters():
        p.requires_grad_(False)
    embeddings = [p for name, p in ctx.model.head.named_parameters() if name != "sigma"]
    for p in embeddings:
        p.requires_grad_(True)
    train_epochs(ctx, method, f.epochs, f.lr, [{"params": embeddings}], None, "balanced ft",
                 milestones=f.milestones, gamma=f.gamma, freeze_bn=True)
    for p in ctx.model.parameters():
        p.requires_grad_(trainable[id(p)])
    ctx.train_x, ctx.train_y = saved


def _build_model(config: RunConfig, method: Method, n_base: int, device: torch.device) -> IncrementalNet:
    torch.manual_seed(config.seed)
    s = config.schedule
    kind = "resnet18" if config.is_folder else "resnet"
    net = build_net(kind, n_base, depth=s.depth, width=s.width, cosine=method.cosine_head)
    return net.to(device).to(memory_format=preferred_memory_format(device))


def _frozen_copy(model: IncrementalNet) -> IncrementalNet:
    old = copy.deepcopy(model).eval()
    for p in old.parameters():
        p.requires_grad_(False)
    return old


def _restore_model(config: RunConfig, method: Method, sizes: list[int], state: dict,
                   device: torch.device, transferred: bool) -> IncrementalNet:
    from .weight_transfer import apply_weight_transfer

    net = _build_model(config, method, sizes[0], device)
    for n in sizes[1:]:
        net.head.grow(n)
    if transferred:
        apply_weight_transfer(net)
    net.load_state_dict(state)
    return net


def _ckpt_dir(config: RunConfig) -> Path:
    return checkpoint_root() / "runs" / config.config_hash()


def run_incremental(config: RunConfig, device: torch.device | str | None = None, *,
                    checkpoints: bool = True, stop_after_phase: int | None = None,
                    share_phase0: bool = True,
                    on_phase_end: Callable[[int, IncrementalNet, ExemplarMemory, StudyData], None] | None = None,
                    checkpoint_dir: Path | None = None, residency: str | None = None,
                    ) -> dict[str, Any]:
    """Run every phase of ``config`` and return the metrics dict (results ledger schema).

    ``on_phase_end(phase, model, memory, data)`` is called after each phase's evaluation (figures
    that need the model or the exemplars, e.g. the t-SNE notebook, read them there). It runs
    before the phase's checkpoint is written, and not again for the phases a resumed run skips.
    ``checkpoint_dir``: where the phase checkpoints go (default: ``<checkpoint root>/runs/<hash>``).
    ``residency``: where the images live (:func:`prepare_data`); it does not change the results.
    """
    device = torch.device(device) if device is not None else default_device()
    tune_backends(device)
    method = get_method(config.method)
    data = prepare_data(config, device, residency)
    plan = data.plan
    memory = ExemplarMemory()
    per_phase: list[dict[str, Any]] = []
    method_state: dict[str, Any] = {"_pad": data.norm.pixel_range[0], "_augmenter": data.augmenter}
    model = old_model = None
    start = 0
    legs: list[dict[str, Any]] = []
    ck_dir = Path(checkpoint_dir) if checkpoint_dir is not None else _ckpt_dir(config)
    # rank 0 decides whether and where to resume, so every rank restores the same phase
    latest = distributed.broadcast_object(sorted(ck_dir.glob("phase_*.pt")) if checkpoints else [])
    if latest:
        ck = load_checkpoint(latest[-1], map_location=device)
        if ck.get("config_hash") != config.config_hash():
            raise RuntimeError(f"{latest[-1]} belongs to config {ck.get('config_hash')}, not "
                               f"{config.config_hash()}; delete {ck_dir} to start this run afresh")
        start = int(ck["phase"]) + 1
        transferred = bool(ck["transferred"])
        model = _restore_model(config, method, list(ck["head_sizes"]), ck["model"], device, transferred)
        old_model = _frozen_copy(model)
        memory = ExemplarMemory.from_state_dict(ck["memory"], device)
        method_state.update(_to_device(ck["method_state"], device))
        per_phase = json.loads(ck["per_phase"])
        legs = json.loads(ck["legs"]) if "legs" in ck else [
            {"first_phase": 0, "device": None, "git_commit": None,
             "note": "not recorded: the checkpoint predates per-leg provenance"}]
        if "rng" in ck:  # after _restore_model, whose seeding and head growth would move them
            restore_rng_state(ck["rng"])
        log.info("resumed %s from %s (next phase %d)", config.config_hash(), latest[-1].name, start)

    legs.append({"first_phase": start, **leg_provenance()})
    if distributed.active():  # absent in one process, so its provenance reads as before
        legs[-1]["world_size"] = distributed.world()
    if data.residency == "host":  # the same rule: recorded only where it departs from the default
        legs[-1]["residency"] = "host"
    end = plan.num_phases if config.last_phase is None else config.last_phase + 1
    bar = tqdm(range(start, end), desc=f"{config.method}/{config.exemplars}", disable=None)
    for p in bar:
        t0 = time.perf_counter()
        new = plan.new_classes(p)
        idx = data.train.select(list(new))
        new_x, new_y = data.train.normalised(idx, data.norm), data.train.y[idx]
        mem_x, mem_y = memory.tensors()
        train_x = concat(new_x, mem_x.to(device)) if len(mem_y) else new_x
        train_y = torch.cat([new_y, mem_y.to(device)]) if len(mem_y) else new_y
        if model is None:
            model = _build_model(config, method, plan.ends[0], device)
        gen = make_generator(_phase_seed(config, p), device)
        ctx = PhaseContext(config, p, plan.starts[p], plan.ends[p], model, old_model if p else None,
                           train_x, train_y, device, gen, method_state)
        _train_phase(config, method, ctx, p, share_phase0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        per_class = protocol.exemplars_per_class(config, plan.seen_classes(p))
        stage_row = exemplar_stage(config, model, memory, new_x, new_y, new, per_class, data.norm, gen,
                                   make_generator(_phase_seed(config, p, 1), "cpu"), p)
        # computed identically on every rank; rank 0's copy made everyone's (a no-op in one process)
        distributed.sync_from_main(model, memory, method_state, gen, device)
        if config.use_balanced_finetune and p > 0:
            ctx.train_x, ctx.train_y = train_x, train_y
            balanced_finetune(ctx, method, memory)
        t2 = time.perf_counter()
        row = _evaluate(config, method, ctx, data, memory, p)
        t3 = time.perf_counter()
        row["wall_s"] = {"train": t1 - t0, "exemplars": t2 - t1, "eval": t3 - t2}
        row["memory_total"] = len(memory)
        row.update(stage_row)  # mnemonics / authors_code: how far the pixels moved, held-out losses
        row.update(method.phase_metrics(ctx))  # e.g. BiC's bias-correction parameters
        per_phase.append(row)
        log.info("phase %d: %d classes, CNN %.2f%%, NME %.2f%% (%.1fs)", p, row["n_classes"],
                 row["acc_cnn"], row["acc_nme"], t3 - t0)
        bar.set_postfix(cnn=f"{row['acc_cnn']:.1f}", nme=f"{row['acc_nme']:.1f}")
        if on_phase_end is not None:
            on_phase_end(p, model, memory, data)
        old_model = _frozen_copy(model)
        if checkpoints and p < end - 1:
            if distributed.is_main():
                _save_phase(ck_dir, p, model, memory, method_state, per_phase, config, legs)
            distributed.barrier()
        if stop_after_phase is not None and p == stop_after_phase:
            raise Interrupted(f"stopped after phase {p} (simulated interruption)")
    if checkpoints and distributed.is_main():  # the run is complete: its phase checkpoints go
        for f in ck_dir.glob("phase_*.pt"):
            f.unlink()
        if ck_dir.is_dir() and not any(ck_dir.iterdir()):
            ck_dir.rmdir()
    return {**summarise(per_phase), "legs": legs}


def _train_phase(config: RunConfig, method: Method, ctx: PhaseContext, p: int, share_phase0: bool) -> None:
    s = config.schedule
    cache = checkpoint_root() / "phase0" / f"{phase0_key(config, method)}.pt"
    if p == 0 and share_phase0 and distributed.broadcast_object(cache.exists()):
        ctx.model.load_state_dict(load_checkpoint(cache, map_location=ctx.device)["model"])
        log.info("phase 0 loaded from the shared cache %s", cache.name)
        return
    method.before_phase(ctx)
    if p > 0 and config.weight_transfer:
        from .weight_transfer import apply_weight_transfer, is_weight_transferred

        if not is_weight_transferred(ctx.model):
            apply_weight_transfer(ctx.model)
    epochs = s.base_epochs if p == 0 else s.epochs
    train_epochs(ctx, method, epochs, s.lr, method.param_groups(ctx))
    method.after_phase(ctx)
    if p == 0 and share_phase0 and distributed.is_main():
        save_checkpoint(cache, {"model": ctx.model.state_dict()})


def _evaluate(config, method, ctx, data, memory, p) -> dict[str, Any]:
    n_seen = data.plan.seen_classes(p)
    te = data.test.select(list(range(n_seen)))
    tr = data.train.select(list(range(n_seen)))
    state = ctx.state
    # config.amp is hashed: it changes numerics; the compiled backbone (CPU) does not
    with bf16_autocast(ctx.device.type, config.amp), \
            compiled_backbones([ctx.model], compile_enabled(ctx.device)):
        return evaluate_phase(
            model=ctx.model, logits_fn=lambda b: method.logits(state, ctx.model, b),
            test_x=data.test.normalised(te, data.norm), test_y=data.test.y[te], memory=memory,
            all_train=(data.train.normalised(tr, data.norm), data.train.y[tr]), plan=data.plan, phase=p,
            batch=config.schedule.eval_batch,
        )


def _save_phase(ck_dir: Path, p: int, model, memory, method_state, per_phase, config: RunConfig,
                legs: list[dict[str, Any]]) -> None:
    """The state a resumed run needs: the model (which is also the next phase's old model), the
    memory, the method's state (BiC's bias layers), the rows so far, the config and RNG states,
    and where the phases so far were computed (``legs``: provenance for the finished run).
    Class means are not stored: they are recomputed from the model and the memory."""
    from .weight_transfer import is_weight_transferred

    state = {
        "config": json.dumps(config.to_dict(), sort_keys=True), "config_hash": config.config_hash(),
        "phase": p, "model": model.state_dict(), "head_sizes": head_sizes(model),
        "transferred": is_weight_transferred(model), "memory": memory.state_dict(),
        "method_state": _to_device({k: v for k, v in method_state.items() if not k.startswith("_")}, "cpu"),
        "per_phase": json.dumps(per_phase), "legs": json.dumps(legs), "rng": capture_rng_state(),
    }
    save_checkpoint(ck_dir / f"phase_{p:03d}.pt", state)
    for f in ck_dir.glob("phase_*.pt"):
        if f.name != f"phase_{p:03d}.pt":
            f.unlink()


def _to_device(obj: Any, device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def summarise(per_phase: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-phase rows -> the ledger's metrics dict (AIA, last, forgetting, accuracy matrices)."""
    cnn = [r["acc_cnn"] for r in per_phase]
    nme = [r["acc_nme"] for r in per_phase]
    # a run cut by ``last_phase`` has fewer rows than phase groups: keep the groups it has seen,
    # so forgetting is measured over the phases that ran
    seen = len(per_phase)
    A_cnn = metrics.stack_accuracy_rows([r["row_cnn"] for r in per_phase])[:, :seen]
    A_nme = metrics.stack_accuracy_rows([r["row_nme"] for r in per_phase])[:, :seen]
    return {
        "per_phase": [{k: v for k, v in r.items() if not k.startswith("row_")} for r in per_phase],
        "acc_matrix_cnn": A_cnn.tolist(),
        "acc_matrix_nme": A_nme.tolist(),
        "aia_cnn": metrics.average_incremental_accuracy(cnn),
        "aia_nme": metrics.average_incremental_accuracy(nme),
        "aia_cnn_no_first": metrics.average_incremental_accuracy(cnn, include_first=False) if len(cnn) > 1 else float("nan"),
        "last_cnn": metrics.last_accuracy(cnn),
        "last_nme": metrics.last_accuracy(nme),
        "forgetting_cnn": metrics.forgetting_rate(A_cnn),
        "forgetting_nme": metrics.forgetting_rate(A_nme),
        "chaudhry_forgetting_cnn": metrics.chaudhry_forgetting(A_cnn),
        "wall_s_total": float(sum(sum(r["wall_s"].values()) for r in per_phase)),
    }
