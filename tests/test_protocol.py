"""Protocol (paper.md §2): class orders, phase splits, exemplar budgets, and config validation."""
import dataclasses

import numpy as np
import pytest

from mnemonics_lib import protocol
from mnemonics_lib.config import ConfigError, RunConfig, make_config

CIFAR100_SEED1993_FIRST10 = [68, 56, 78, 8, 23, 84, 90, 65, 74, 76]
CIFAR100_SEED1993_LAST6 = [39, 67, 29, 49, 57, 33]


# ------------------------------------------------------------------ class orders
def test_cifar100_seed1993_order_is_the_golden_list():
    order = protocol.class_order(make_config(dataset="cifar100"))
    assert order.tolist()[:10] == CIFAR100_SEED1993_FIRST10
    assert order.tolist()[-6:] == CIFAR100_SEED1993_LAST6
    assert sorted(order.tolist()) == list(range(100))


def test_seeded_order_is_numpy_legacy_shuffle_and_leaves_global_rng_alone():
    np.random.seed(1993)
    expected = np.arange(100)
    np.random.shuffle(expected)
    np.random.seed(7)
    before = np.random.get_state()[1].copy()
    order = protocol.seeded_order(100, 1993)
    assert np.array_equal(np.random.get_state()[1], before)
    assert order.tolist() == expected.tolist()
    # caltech100 and imagenet_subset have 100 classes: the same seed gives the same order
    assert protocol.class_order(make_config(dataset="caltech100")).tolist() == expected.tolist()
    # another seed gives another order
    assert protocol.seeded_order(100, 1994).tolist() != expected.tolist()


def test_podnet_icarl_order_is_a_different_permutation():
    podnet = protocol.class_order(make_config(dataset="cifar100", class_order="podnet_icarl"))
    seed = protocol.class_order(make_config(dataset="cifar100"))
    assert podnet.tolist()[:5] == [87, 0, 52, 58, 44]
    assert sorted(podnet.tolist()) == list(range(100))
    assert podnet.tolist() != seed.tolist()
    assert podnet[0] != seed[0]


def test_identity_order():
    order = protocol.class_order(make_config(dataset="cifar10", class_order="identity"))
    assert order.tolist() == list(range(10))


# ------------------------------------------------------------------ phase splits
@pytest.mark.parametrize("n_phases, step", [(5, 10), (10, 5), (25, 2)])
def test_phase_plan_cifar100_b50(n_phases, step):
    plan = protocol.phase_plan(make_config(dataset="cifar100", phases=n_phases))
    assert plan.num_phases == n_phases + 1
    assert plan.starts == (0,) + tuple(50 + i * step for i in range(n_phases))
    assert plan.ends == (50,) + tuple(50 + (i + 1) * step for i in range(n_phases))
    sizes = [e - s for s, e in zip(plan.starts, plan.ends)]
    assert sizes == [50] + [step] * n_phases
    assert plan.ends[-1] == 100
    assert list(plan.new_classes(1)) == list(range(50, 50 + step))
    poc = plan.phase_of_class()
    assert poc.shape == (100,)
    assert poc[:50].tolist() == [0] * 50
    assert poc[50:50 + step].tolist() == [1] * step
    assert poc[-1] == n_phases


def test_phase_plan_other_datasets_and_explicit_base():
    plan = protocol.phase_plan(make_config(dataset="imagenet", phases=10))
    assert plan.starts[:3] == (0, 500, 550) and plan.ends[-1] == 1000
    plan = protocol.phase_plan(make_config(dataset="cifar10", phases=5))
    assert plan.starts == (0, 5, 6, 7, 8, 9) and plan.ends == (5, 6, 7, 8, 9, 10)
    plan = protocol.phase_plan(make_config(dataset="cifar100", base_classes=40, phases=6))
    assert plan.starts == (0, 40, 50, 60, 70, 80, 90) and plan.ends == (40, 50, 60, 70, 80, 90, 100)
    plan = protocol.phase_plan(make_config(dataset="synthetic", synthetic_classes=12, phases=3))
    assert plan.starts == (0, 6, 8, 10) and plan.ends == (6, 8, 10, 12)


# ------------------------------------------------------------------ memory budgets
def test_budget_table_per_class():
    table = protocol.memory_budget_table(make_config(dataset="cifar100", phases=5, memory_per_class=20))
    assert table == [
        {"phase": p, "seen_classes": 50 + 10 * p, "per_class": 20, "total": 20 * (50 + 10 * p)}
        for p in range(6)
    ]


def test_budget_table_fixed_total_n5():
    table = protocol.memory_budget_table(
        make_config(dataset="cifar100", phases=5, memory_mode="fixed_total", memory_total=2000))
    assert [r["seen_classes"] for r in table] == [50, 60, 70, 80, 90, 100]
    assert [r["per_class"] for r in table] == [40, 33, 28, 25, 22, 20]
    assert [r["total"] for r in table] == [2000, 1980, 1960, 2000, 1980, 2000]


@pytest.mark.parametrize("n_phases", [10, 25])
def test_budget_table_fixed_total_never_exceeds_budget(n_phases):
    cfg = make_config(dataset="cifar100", phases=n_phases, memory_mode="fixed_total", memory_total=2000)
    table = protocol.memory_budget_table(cfg)
    assert len(table) == n_phases + 1
    for r in table:
        assert r["per_class"] == 2000 // r["seen_classes"]
        assert r["total"] == r["per_class"] * r["seen_classes"] <= 2000
        assert protocol.exemplars_per_class(cfg, r["seen_classes"]) == r["per_class"]
    assert table[0]["per_class"] == 40 and table[-1]["per_class"] == 20
    if n_phases == 25:
        assert [r["per_class"] for r in table[:3]] == [40, 38, 37]


def test_exemplars_per_class_per_class_mode_ignores_seen():
    cfg = make_config(dataset="cifar100", memory_per_class=7)
    assert [protocol.exemplars_per_class(cfg, s) for s in (50, 77, 100)] == [7, 7, 7]


# ------------------------------------------------------------------ label remapping
def test_remap_labels():
    order = np.array([2, 0, 1])
    assert protocol.remap_labels(np.array([0, 1, 2, 2]), order).tolist() == [1, 2, 0, 0]
    cifar = protocol.class_order(make_config(dataset="cifar100"))
    assert protocol.remap_labels(cifar, cifar).tolist() == list(range(100))
    assert protocol.remap_labels(np.array([68, 56, 33]), cifar).tolist() == [0, 1, 99]
    out = protocol.remap_labels(np.array([3, 4]), np.array([4, 3]))
    assert out.dtype == np.int64 and out.tolist() == [1, 0]


# ------------------------------------------------------------------ validation at build time
BAD_CONFIGS = [
    (dict(dataset="caltech100", phases=7), ["50 incremental classes", "7 equal phases", "caltech100"]),
    (dict(dataset="cifar10", phases=3), ["cannot be split into 3 equal phases"]),
    (dict(dataset="cifar10", base_classes=10, phases=1), ["base_classes must be in [1, 9]", "got 10"]),
    (dict(dataset="cifar100", base_classes=120), ["base_classes must be in [1, 99]"]),
    (dict(dataset="cifar100", base_classes=0), ["base_classes must be in [1, 99]", "got 0"]),
    (dict(memory_per_class=-1), ["memory cannot be negative", "memory_per_class=-1"]),
    (dict(memory_total=-5), ["memory cannot be negative", "memory_total=-5"]),
    (dict(dataset="cifar1000"), ["unknown dataset 'cifar1000'", "cifar100"]),
    (dict(method="ewc"), ["unknown method 'ewc'", "lucir"]),
    (dict(class_order="random"), ["unknown class_order 'random'", "podnet_icarl"]),
    (dict(exemplars="kmeans"), ["unknown exemplars 'kmeans'", "herding"]),
    (dict(profile="full"), ["unknown profile 'full'", "smoke"]),
    (dict(memory_mode="grow"), ["unknown memory_mode 'grow'", "fixed_total"]),
    (dict(dataset="cifar10", class_order="podnet_icarl"),
     ["podnet_icarl", "10 classes", "class_order='seed'"]),
    (dict(dataset="cifar100", memory_mode="fixed_total", memory_total=50),
     ["memory_total=50", "all 100 classes"]),
    (dict(phases=0), ["phases must be a positive integer"]),
    (dict(epochs_override=0), ["epochs_override must be >= 1"]),
    (dict(lr_override=0.0), ["lr_override must be a positive number", "0.0"]),
    (dict(lr_override="2"), ["lr_override must be a positive number", "'2'"]),
    (dict(dataset="synthetic", synthetic_classes=1), ["synthetic_classes must be >= 2"]),
    (dict(mnemonics={"inner_steps": 0}), ["mnemonics.inner_steps must be >= 1"]),
]


@pytest.mark.parametrize("kwargs, fragments", BAD_CONFIGS, ids=[str(k) for k, _ in BAD_CONFIGS])
def test_bad_config_fails_at_build_with_reason(kwargs, fragments):
    with pytest.raises(ConfigError) as err:
        make_config(**kwargs)
    for f in fragments:
        assert f in str(err.value)


def test_unknown_field_lists_known_fields():
    with pytest.raises(ConfigError) as err:
        make_config(phase=5)
    msg = str(err.value)
    assert "['phase']" in msg and "known fields" in msg
    for name in ("phases", "memory_per_class", "class_order_seed", "epochs_override"):
        assert f"'{name}'" in msg
    with pytest.raises(ConfigError, match="unknown mnemonics setting"):
        make_config(mnemonics={"inner_step": 2})


def test_direct_construction_and_replace_are_validated_too():
    with pytest.raises(ConfigError, match="7 equal phases"):
        RunConfig(dataset="caltech100", phases=7)
    good = make_config(dataset="caltech100", phases=10)
    with pytest.raises(ConfigError, match="7 equal phases"):
        good.replace(phases=7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        good.phases = 7  # type: ignore[misc]


def test_defaults_are_the_paper_protocol_and_hash_tracks_results_fields():
    c = make_config()
    assert (c.dataset, c.phases, c.memory_per_class, c.memory_mode, c.class_order_seed) == (
        "caltech100", 5, 20, "per_class", 1993)
    assert protocol.base_classes(c) == 50
    assert c.config_hash() == make_config().config_hash()
    assert len(c.config_hash()) == 12
    assert c.replace(seed=1).config_hash() != c.config_hash()
    assert c.replace(epochs_override=3).config_hash() != c.config_hash()
    assert c.replace(memory_mode="fixed_total").config_hash() != c.config_hash()
    # lr_override: the schedule's lr replaced, nothing else; unused, it leaves every cached hash alone
    fast = c.replace(lr_override=2.0)
    assert fast.schedule == dataclasses.replace(c.schedule, lr=2.0)
    assert fast.config_hash() != c.config_hash() and fast.to_dict()["schedule"]["lr"] == 2.0
    assert "lr_override" not in c.to_dict()


def test_mnemonics_settings_hash_only_mnemonics_runs():
    from mnemonics_lib.config import make_config

    for exemplars, should_differ in (("herding", False), ("random", False), ("mnemonics", True)):
        a = make_config(exemplars=exemplars)
        b = make_config(exemplars=exemplars, mnemonics={"outer_lr": 123.0})
        assert (a.config_hash() != b.config_hash()) is should_differ, exemplars
