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

DATASETS = ("cifar100", "cifar10", "caltech100", "imagenet_subset", "imagenet", "synthetic")
METHODS = ("lwf", "icarl", "bic", "lucir")
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
    finetune_epochs: int  # class-balanced fine-tuning (LUCIR option, mnemonics global program)
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


@dataclass(frozen=True)
class MnemonicsSettings:
    """Meta-hyperparameters of the bilevel exemplar optimiser (paper §3; the paper gives none).

    These defaults predate the sensitivity sweep (a smoke measurement: one outer step at these
    values lowers the outer loss from 2.17 to 1.42). The study's runs use the sweep's choice,
    ``results/sweeps/mnemonics/choice.json`` (quick, caltech100: alpha 0.01, beta1 100, K = 1; its
    whole spread, 0.37 AIA points over alpha x beta1, is of the size of the 0.24-point difference
    between two computations of one setting, see README), so the library defaults are kept rather
    than moved on that evidence."""

    init: str = "herding"  # random | herding: where the exemplar pixels start
    inner_steps: int = 1  # K
    inner_lr: float = 0.1  # alpha (the model's own lr 0.1)
    outer_lr: float = 10.0  # beta1 (new-class exemplars); plain gradient steps in normalised
    #   pixel space, where hypergradients are ~1e-4 per pixel (measured), hence the large value
    old_lr: float = 10.0  # beta2 (old-class exemplars)
    adjust_old: bool = True  # adjust old exemplars by the half-split program
    first_order: bool = False
    augment: bool = False
    real_batch: int = 128
    bn_mode: str = "eval"


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

    def __post_init__(self) -> None:
        _validate(self)

    # --- derived values -------------------------------------------------------------
    @property
    def schedule(self) -> Schedule:
        s = SCHEDULES[self.profile]
        if self.epochs_override is not None:
            s = dataclasses.replace(s, base_epochs=self.epochs_override, epochs=self.epochs_override)
        if self.lr_override is not None:
            s = dataclasses.replace(s, lr=float(self.lr_override))
        return s

    @property
    def use_balanced_finetune(self) -> bool:
        if self.balanced_finetune is None:
            return self.exemplars == "mnemonics"
        return self.balanced_finetune

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["schedule"] = dataclasses.asdict(self.schedule)
        if self.exemplars != "mnemonics":
            # unused by the run, so it must not enter the hash: a herding run stays cached when
            # the mnemonics defaults change
            d["mnemonics"] = None
        if self.last_phase is None:
            # added after the first runs were cached: absent when unused, so their hashes hold
            del d["last_phase"]
        if self.train_per_class is None:
            del d["train_per_class"]  # the same rule: added later, absent when unused
        if self.lr_override is None:
            del d["lr_override"]  # the same rule
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
    _choice("mnemonics.init", c.mnemonics.init, ("random", "herding"))
    _choice("mnemonics.bn_mode", c.mnemonics.bn_mode, ("eval", "train"))
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
    from .protocol import validate_protocol  # local import: protocol imports this module

    validate_protocol(c)
