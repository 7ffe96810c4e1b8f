"""One frozen configuration object per run, validated when it is built.

Vocabulary (shared with notebooks and result columns): ``dataset``, ``phases`` (N),
``base_classes``, ``memory_per_class``, ``memory_mode``, ``class_order_seed``, ``seed``,
``method``, ``exemplars``, ``profile``.

A *profile* only changes the schedule and sizes (epochs, widths of the smoke network),
never the method. The hash covers every field that changes results; fields such as the
device do not enter it (they are provenance, recorded in ``env.json``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from .protocol import base_classes, num_classes

DATASETS = ("cifar100", "cifar10", "caltech100", "imagenet_subset", "imagenet", "synthetic", "caltech101_jpeg")
# class-folder JPEG trees (ImageNet layout): ResNet-18, random-resized crop, mnemonics_lib.folder_data
FOLDER_DATASETS = ("imagenet_subset", "imagenet", "caltech101_jpeg")
METHODS = ("lwf", "icarl", "bic", "lucir", "cosinekd")
EXEMPLARS = ("random", "herding", "mnemonics", "authors_code")
MEMORY_MODES = ("per_class", "fixed_total")
CLASS_ORDERS = ("seed", "podnet_icarl", "identity")
PROFILES = ("smoke", "quick", "paper")


class ConfigError(ValueError):
    """A configuration that cannot describe a valid run; the message says why and how to fix it."""


@dataclass(frozen=True)
class Schedule:
    """Optimisation schedule of one profile (paper.md §2 for ``paper``)."""

    base_epochs: int  # phase 0
    epochs: int  # every later phase
    lr: float
    milestones: tuple[float, ...]  # fractions of the epochs where lr is multiplied by ``gamma``
    gamma: float
    momentum: float
    weight_decay: float
    batch_size: int
    # superseded by BalancedFinetuneSchedule (CBF_SCHEDULES); kept because every cached run's hash
    # covers them, and no code reads them
    finetune_epochs: int
    finetune_lr: float
    bic_epochs: int  # BiC stage 2 (bias layer)
    depth: int  # ResNet depth for 32x32 inputs (32 = the paper's ResNet-32)
    width: int  # channels of the first stage (16 in the paper)
    mnemonics_outer_iters: int  # M
    eval_batch: int = 512


SCHEDULES: dict[str, Schedule] = {
    # The paper's CIFAR schedule: 160 epochs, lr 0.1, x0.1 at 80 and 120, wd 5e-4, batch 128.
    "paper": Schedule(
        base_epochs=160, epochs=160, lr=0.1, milestones=(0.5, 0.75), gamma=0.1, momentum=0.9,
        weight_decay=5e-4, batch_size=128, finetune_epochs=20, finetune_lr=0.01, bic_epochs=100,
        depth=32, width=16, mnemonics_outer_iters=100,
    ),
    # Sized for 2 CPU cores (a B50 N=5 run in minutes, not hours): the same optimiser, network and
    # milestones, far fewer epochs and outer iterations (a hypergradient costs ~2.4 s on 2 cores).
    "quick": Schedule(
        base_epochs=20, epochs=8, lr=0.1, milestones=(0.5, 0.75), gamma=0.1, momentum=0.9,
        weight_decay=5e-4, batch_size=128, finetune_epochs=4, finetune_lr=0.01, bic_epochs=10,
        depth=32, width=16, mnemonics_outer_iters=10,
    ),
    # Seconds: a ResNet-8 of half width on the synthetic set; proves the plumbing, not accuracy.
    "smoke": Schedule(
        base_epochs=4, epochs=2, lr=0.05, milestones=(0.5, 0.75), gamma=0.1, momentum=0.9,
        weight_decay=5e-4, batch_size=64, finetune_epochs=1, finetune_lr=0.01, bic_epochs=2,
        depth=8, width=8, mnemonics_outer_iters=3, eval_batch=256,
    ),
}


# The folder datasets' departures from the profile's schedule (paper.md §2, ImageNet): 90 epochs,
# lr x0.1 at epochs 30 and 60, ResNet-18 (``depth`` 18; ``width`` its first stage's channels).
# What paper.md leaves open, chosen as LUCIR's ImageNet code: lr 0.1, batch 128, weight decay 1e-4.
# quick is the CPU profile of the caltech101_jpeg stand-in (64 px crops, few epochs); smoke a
# ResNet-18 of width 8 on 32 px crops, for tests.
_IMAGENET_SCHEDULE = dict(milestones=(1 / 3, 2 / 3), weight_decay=1e-4, depth=18, width=64)
DATASET_SCHEDULES: dict[str, dict[str, Any]] = {
    "paper": dict(_IMAGENET_SCHEDULE, base_epochs=90, epochs=90, eval_batch=256),
    "quick": dict(_IMAGENET_SCHEDULE, base_epochs=12, epochs=6, mnemonics_outer_iters=5, eval_batch=256),
    "smoke": dict(_IMAGENET_SCHEDULE, depth=18, width=8),
}


@dataclass(frozen=True)
class ImageSettings:
    """Input sizes of a folder dataset (mnemonics_lib.folder_data): the network sees ``crop`` x
    ``crop``; training images are stored at that size (shorter side resized to ``crop``, centre
    square) and augmented by a random-resized crop (``scale``, ``ratio``) + flip drawn from it;
    evaluation images are resized to a shorter side of ``resize``, then centre-cropped."""

    crop: int
    resize: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)


# crop / resize = 224 / 256 at every profile (the standard evaluation ratio 0.875)
IMAGE_SETTINGS: dict[str, ImageSettings] = {
    "paper": ImageSettings(crop=224, resize=256),
    "quick": ImageSettings(crop=64, resize=73),
    "smoke": ImageSettings(crop=32, resize=37),
}
# the ImageNet-Subset class lists shipped under data/subsets/ (imagenet100_<name>.txt)
SUBSET_LISTS = ("seed1993", "podnet")
CORRUPT_POLICIES = ("error", "skip")


# Per-method departures from the profile's schedule, in that method's own units.
# iCaRL (Rebuffi et al. 2017 and their released code): sigmoid BCE averaged over batch and classes,
# lr 2.0, weight decay 1e-5, 70 epochs with lr / 5 at epochs 49 and 63 (fractions 0.7 and 0.9). At
# quick and smoke the epoch counts stay the profile's (the same training budget as every method's),
# the rest is iCaRL's, except smoke's lr: averaged over the 4 classes of the synthetic set's
# phase 0, lr 2.0 makes a logit's step 25x what it is over 100 classes, and the linear head
# diverges; 0.5 trains it.
_ICARL_UNITS = dict(lr=2.0, weight_decay=1e-5, milestones=(0.7, 0.9), gamma=0.2)
METHOD_SCHEDULES: dict[str, dict[str, dict[str, Any]]] = {
    "icarl": {"paper": dict(_ICARL_UNITS, base_epochs=70, epochs=70),
              "quick": dict(_ICARL_UNITS), "smoke": dict(_ICARL_UNITS, lr=0.5)},
}

# Bumped when a method's code changes what an unchanged config computes, so that a run cached
# under the old behaviour is never loaded as the new one (the number enters the config hash).
# bic 2: stage 1 trains on the bias-corrected logits of the earlier phases' layers (as evaluated);
# icarl 2: BCE averaged over batch and classes, in iCaRL's own schedule.
METHOD_REVISIONS: dict[str, int] = {"bic": 2, "icarl": 2}


@dataclass(frozen=True)
class BalancedFinetuneSchedule:
    """Class-balanced fine-tuning (CBF) as LUCIR's official code does it (``--cb_finetune``,
    ``ft_flag 2``): on the exemplar set only (the same count for every seen class), the feature
    extractor fixed (its lr 0 and BatchNorm in eval mode, so the running statistics stay those of
    the phase's training), the old and new class embeddings trained with the method's own loss
    (LUCIR: CE + less-forget + margin ranking), the cosine scale sigma outside the optimiser; SGD
    with the profile's momentum and weight decay, ``lr`` decayed by ``gamma`` at the
    ``milestones`` fractions of ``epochs``.

    The paper profile is LUCIR's (20 epochs, lr 0.01, / 10 at epoch 10). The quick profile keeps
    the same 20 epochs: with the backbone frozen an epoch is forward passes over the exemplars
    only, a small cost beside a phase's training."""

    epochs: int
    lr: float
    milestones: tuple[float, ...] = (0.5,)
    gamma: float = 0.1
    bn: str = "frozen"  # recorded in the hash: the earlier CBF re-estimated BN statistics
    sigma: str = "fixed"
    loss: str = "method"


CBF_SCHEDULES: dict[str, BalancedFinetuneSchedule] = {
    "paper": BalancedFinetuneSchedule(epochs=20, lr=0.01),
    "quick": BalancedFinetuneSchedule(epochs=20, lr=0.01),
    "smoke": BalancedFinetuneSchedule(epochs=2, lr=0.01),
}


@dataclass(frozen=True)
class MnemonicsSettings:
    """Meta-hyperparameters of the bilevel exemplar optimiser (paper §3; the paper gives none).

    ``step``: how beta scales the hypergradient. "per_exemplar" (default) multiplies it by the
    number E of exemplars optimised together: the inner loss is a mean over E, so each exemplar's
    hypergradient carries a factor 1/E, and a fixed beta would move the 1,000 exemplars of a B50
    phase 0 five times less than the 200 of a later phase. Scaled by E, beta is the step each
    exemplar takes as if it were alone in the inner batch, the same at every phase and N. "plain"
    is the unscaled step E <- E - beta grad, the study's earlier runs (there beta never moved a
    pixel by a grey level).
    ``momentum``: heavy-ball momentum of the outer step (the authors' code optimises the
    exemplars with SGD, momentum 0.9); 0 is plain gradient descent.
    ``heldout_fraction``: share of each new class's non-exemplar images kept out of the outer
    objective, on which the temporary model is scored before and after the optimisation
    (``mnemonics_heldout_before`` / ``_after`` in the run's per-phase metrics); 0 disables it.
    The values of beta1, beta2 and K are the step probe's choice (docs/study.md, "Does the scaled
    step act?", generated from ``results/diagnostics/mnemonics_probe/``).
    ``inner_lr``: alpha, 0.001, the rate the network ends its training with (lr 0.1, x0.1 at
    half and three quarters of the epochs). At alpha = 0.1, the rate it starts with, K = 2 steps on
    the exemplars alone raise the temporary model's held-out loss far above the network's own
    (the step probe's "network's own loss" column), so lowering that loss mostly repaired the inner
    step; at 0.001 the temporary model starts at the network's loss and a falling held-out loss says
    the exemplars carry more of the data (docs/study.md, "Does the inner step damage the network?").
    ``inner_params``: "all" (the paper's Θ') or "head" (only the classifier adapts in the inner
    loop; see :class:`~mnemonics_lib.bilevel.BilevelSettings`).
    ``step``, ``momentum``, ``heldout_fraction`` and ``inner_params`` are absent from the config
    hash at their earlier values ("plain", 0, 0, "all"), so the runs cached before them keep their
    hashes."""

    init: str = "herding"  # random | herding: where the exemplar pixels start
    inner_steps: int = 2  # K
    inner_lr: float = 0.001  # alpha: the schedules' final lr (0.1 after both x0.1 decays), see above
    outer_lr: float = 10.0  # beta1 (new-class exemplars), per-exemplar step (see ``step``)
    old_lr: float = 10.0  # beta2 (old-class exemplars)
    adjust_old: bool = True  # adjust old exemplars by the half-split program
    first_order: bool = False
    augment: bool = False
    real_batch: int = 128
    bn_mode: str = "eval"
    step: str = "per_exemplar"  # per_exemplar | plain
    momentum: float = 0.9
    heldout_fraction: float = 0.2
    inner_params: str = "all"  # all | head: what the temporary model adapts (bilevel.BilevelSettings)


# MnemonicsSettings fields added after runs were cached: at these values they leave the hash alone
_MNEMONICS_LEGACY = {"step": "plain", "momentum": 0.0, "heldout_fraction": 0.0, "inner_params": "all"}


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines the numbers of one incremental run."""

    dataset: str = "caltech100"
    phases: int = 5
    base_classes: int | None = None  # None: half of the classes (the paper's protocol)
    memory_per_class: int = 20
    memory_mode: str = "per_class"
    memory_total: int = 2000  # used when memory_mode == "fixed_total"
    class_order: str = "seed"  # seed | podnet_icarl | identity
    class_order_seed: int = 1993
    seed: int = 0
    method: str = "lucir"
    exemplars: str = "herding"
    profile: str = "quick"
    balanced_finetune: bool | None = None  # None: on for mnemonics exemplars, off otherwise
    weight_transfer: bool = False
    mnemonics: MnemonicsSettings = field(default_factory=MnemonicsSettings)
    amp: bool = False  # bf16 autocast on CUDA; changes numerics, so it is part of the hash
    synthetic_classes: int = 20  # only for dataset == "synthetic"
    epochs_override: int | None = None  # optional: replace both epoch counts (sweeps, tests)
    # optional: replace the schedule's learning rate (diagnostics, e.g. iCaRL's own lr 2.0 for its
    # BCE loss; the paper trains every method at 0.1). Absent from the hash when unused
    lr_override: float | None = None
    # optional: end the run after this phase (0-based), e.g. a sensitivity sweep that compares
    # settings on the first incremental phases only; the metrics then cover phases 0..last_phase
    last_phase: int | None = None
    # optional: keep at most this many training images per class, a fixed subset drawn once with
    # seed 0 (the same for every class order and training seed); None keeps them all. The CIFAR-10
    # variant uses 500, CIFAR-100's number of training images per class (see README, Results)
    train_per_class: int | None = None
    # folder datasets only (absent from the hash of every other dataset): which ImageNet-Subset
    # class list (data/subsets/imagenet100_<subset_list>.txt), and what to do with a file that
    # cannot be decoded: stop naming it ("error") or leave it out and count it ("skip")
    subset_list: str = "seed1993"
    corrupt_images: str = "error"

    def __post_init__(self) -> None:
        _validate(self)

    # --- derived values -------------------------------------------------------------
    @property
    def schedule(self) -> Schedule:
        s = SCHEDULES[self.profile]
        if self.is_folder:
            s = dataclasses.replace(s, **DATASET_SCHEDULES[self.profile])
        own = METHOD_SCHEDULES.get(self.method, {}).get(self.profile)
        if own:
            s = dataclasses.replace(s, **own)
        if self.epochs_override is not None:
            s = dataclasses.replace(s, base_epochs=self.epochs_override, epochs=self.epochs_override)
        if self.lr_override is not None:
            s = dataclasses.replace(s, lr=float(self.lr_override))
        return s

    @property
    def is_folder(self) -> bool:
        return self.dataset in FOLDER_DATASETS

    @property
    def image(self) -> ImageSettings | None:
        """Input sizes of a folder dataset; None for the in-memory 32x32 sets."""
        return IMAGE_SETTINGS[self.profile] if self.is_folder else None

    @property
    def use_balanced_finetune(self) -> bool:
        if self.balanced_finetune is None:
            return self.exemplars == "mnemonics"
        return self.balanced_finetune

    @property
    def finetune_schedule(self) -> BalancedFinetuneSchedule:
        return CBF_SCHEDULES[self.profile]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["schedule"] = dataclasses.asdict(self.schedule)
        if self.exemplars != "mnemonics":
            # unused by the run, so it must not enter the hash: a herding run stays cached when
            # the mnemonics defaults change
            d["mnemonics"] = None
        else:
            for k, legacy in _MNEMONICS_LEGACY.items():
                if d["mnemonics"][k] == legacy:
                    del d["mnemonics"][k]
        if self.use_balanced_finetune:
            d["balanced_finetune_schedule"] = dataclasses.asdict(self.finetune_schedule)
        if self.method in METHOD_REVISIONS:
            d["method_revision"] = METHOD_REVISIONS[self.method]
        if self.last_phase is None:
            # added after the first runs were cached: absent when unused, so their hashes hold
            del d["last_phase"]
        if self.train_per_class is None:
            del d["train_per_class"]  # the same rule: added later, absent when unused
        if self.lr_override is None:
            del d["lr_override"]  # the same rule
        if self.is_folder:
            d["image"] = dataclasses.asdict(self.image)
        else:  # added with the folder datasets: absent elsewhere, so every earlier hash holds
            del d["corrupt_images"]
        if self.dataset != "imagenet_subset":
            del d["subset_list"]
        return d

    def config_hash(self) -> str:
        """Stable 12-hex hash of every field that changes results (the resolved schedule too)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)


_FIELD_NAMES = {f.name for f in dataclasses.fields(RunConfig)}
_MNEMONICS_NAMES = {f.name for f in dataclasses.fields(MnemonicsSettings)}


def make_config(**kwargs: Any) -> RunConfig:
    """Build a config from keyword arguments; unknown names fail with the list of known ones.

    ``mnemonics`` may be a mapping of :class:`MnemonicsSettings` fields.
    """
    unknown = set(kwargs) - _FIELD_NAMES
    if unknown:
        raise ConfigError(
            f"unknown config field(s) {sorted(unknown)}; known fields: {sorted(_FIELD_NAMES)}"
        )
    mn = kwargs.get("mnemonics")
    if isinstance(mn, Mapping):
        bad = set(mn) - _MNEMONICS_NAMES
        if bad:
            raise ConfigError(
                f"unknown mnemonics setting(s) {sorted(bad)}; known: {sorted(_MNEMONICS_NAMES)}"
            )
        kwargs["mnemonics"] = MnemonicsSettings(**mn)
    return RunConfig(**kwargs)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {list(allowed)}")


def _validate(c: RunConfig) -> None:
    _choice("dataset", c.dataset, DATASETS)
    _choice("method", c.method, METHODS)
    _choice("exemplars", c.exemplars, EXEMPLARS)
    _choice("memory_mode", c.memory_mode, MEMORY_MODES)
    _choice("class_order", c.class_order, CLASS_ORDERS)
    _choice("profile", c.profile, PROFILES)
    _choice("subset_list", c.subset_list, SUBSET_LISTS)
    _choice("corrupt_images", c.corrupt_images, CORRUPT_POLICIES)
    _choice("mnemonics.init", c.mnemonics.init, ("random", "herding"))
    _choice("mnemonics.bn_mode", c.mnemonics.bn_mode, ("eval", "train"))
    _choice("mnemonics.step", c.mnemonics.step, ("per_exemplar", "plain"))
    _choice("mnemonics.inner_params", c.mnemonics.inner_params, ("all", "head"))
    if not 0 <= c.mnemonics.momentum < 1:
        raise ConfigError(f"mnemonics.momentum must be in [0, 1), got {c.mnemonics.momentum!r}")
    if not 0 <= c.mnemonics.heldout_fraction < 1:
        raise ConfigError(f"mnemonics.heldout_fraction must be in [0, 1) (0: no held-out check), "
                          f"got {c.mnemonics.heldout_fraction!r}")
    if not isinstance(c.phases, int) or c.phases < 1:
        raise ConfigError(f"phases must be a positive integer, got {c.phases!r}")
    if c.memory_per_class < 0 or c.memory_total < 0:
        raise ConfigError(
            f"memory cannot be negative (memory_per_class={c.memory_per_class}, "
            f"memory_total={c.memory_total})"
        )
    if c.epochs_override is not None and c.epochs_override < 1:
        raise ConfigError(f"epochs_override must be >= 1, got {c.epochs_override}")
    if c.lr_override is not None and not (isinstance(c.lr_override, (int, float)) and c.lr_override > 0):
        raise ConfigError(f"lr_override must be a positive number or None (the profile's lr), got {c.lr_override!r}")
    if c.last_phase is not None and not (isinstance(c.last_phase, int) and 0 <= c.last_phase <= c.phases):
        raise ConfigError(f"last_phase must be an integer in 0..phases ({c.phases}) or None, "
                          f"got {c.last_phase!r}")
    if c.train_per_class is not None:
        if not isinstance(c.train_per_class, int) or c.train_per_class < 1:
            raise ConfigError(f"train_per_class must be a positive integer or None (all images), "
                              f"got {c.train_per_class!r}")
        if c.memory_mode == "per_class" and c.train_per_class < c.memory_per_class:
            raise ConfigError(
                f"train_per_class={c.train_per_class} is below memory_per_class="
                f"{c.memory_per_class}: a class could not fill its exemplar memory; keep at least "
                f"{c.memory_per_class} training images per class")
    if c.dataset == "synthetic" and c.synthetic_classes < 2:
        raise ConfigError("synthetic_classes must be >= 2")
    m = c.mnemonics
    for name in ("inner_steps", "real_batch"):
        if getattr(m, name) < 1:
            raise ConfigError(f"mnemonics.{name} must be >= 1, got {getattr(m, name)}")
    # The protocol (class counts, divisibility) is checked against the dataset's class count.
    _validate_protocol(c)


def _validate_protocol(config: RunConfig) -> None:
    """Reject impossible protocols when the config is built, saying why and what to change."""
    n = num_classes(config)
    b = base_classes(config)
    if config.class_order == "podnet_icarl" and n != 100:
        raise ConfigError(
            f"class_order 'podnet_icarl' is a fixed 100-class list; dataset {config.dataset!r} has "
            f"{n} classes. Use class_order='seed'."
        )
    if not 1 <= b < n:
        raise ConfigError(
            f"base_classes must be in [1, {n - 1}] for {config.dataset!r} ({n} classes), got {b}"
        )
    if (n - b) % config.phases:
        raise ConfigError(
            f"{n - b} incremental classes ({config.dataset!r}: {n} classes, base {b}) cannot be "
            f"split into {config.phases} equal phases; choose phases dividing {n - b}"
        )
    if config.memory_mode == "fixed_total" and config.memory_total < n:
        raise ConfigError(
            f"memory_total={config.memory_total} leaves no exemplar per class once all {n} "
            f"classes are seen; raise memory_total or use memory_mode='per_class'"
        )
