"""The details where an implementation most easily departs from its paper, each pinned: which
logits BiC's losses see, what class-balanced fine-tuning may change (BN mode, sigma, backbone),
iCaRL's loss normalisation and schedule, and the mnemonics outer step (scale, momentum, the
held-out measurement), plus the hashes of cached runs that these changes must leave alone."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mnemonics_lib import bilevel, trainer
from mnemonics_lib.backbones import build_net
from mnemonics_lib.config import ConfigError, make_config
from mnemonics_lib.exemplars import heldout_split
from mnemonics_lib.memory import ExemplarMemory
from mnemonics_lib.methods import PhaseContext, get_method
from mnemonics_lib.methods.bic import apply_bias

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(dataset="synthetic", synthetic_classes=8, phases=2, profile="smoke", seed=1)


def _ctx(method: str, n_old: int = 4, n_seen: int = 6, old: bool = True, **cfg):
    torch.manual_seed(0)
    m = get_method(method)
    net = build_net("resnet", n_old, depth=8, width=4, cosine=m.cosine_head)
    old_model = copy.deepcopy(net).eval() if old else None
    net.head.grow(n_seen - n_old)
    x = torch.randn(16, 3, 32, 32)
    y = torch.arange(16) % n_seen
    config = make_config(method=method, **SMALL, **cfg)
    ctx = PhaseContext(config, 1, n_old, n_seen, net, old_model, x, y, torch.device("cpu"),
                       torch.Generator().manual_seed(0), {"_pad": torch.full((1, 3, 1, 1), -2.0)})
    return m, ctx, x, y


# ------------------------------------------------------------------ BiC
def test_bic_stage1_trains_the_corrected_logits_it_is_evaluated_on():
    bic, ctx, x, y = _ctx("bic", old=False)
    layer = (2, 4, torch.tensor([0.5]), torch.tensor([1.5]))  # an earlier phase's correction
    ctx.state["bic_layers"] = [layer]
    ctx.model.eval()
    expected = F.cross_entropy(apply_bias(ctx.model(x), [layer]), y)
    assert torch.allclose(bic.loss(ctx, x, y), expected)
    assert not torch.allclose(expected, F.cross_entropy(ctx.model(x), y))  # the test can fail
    assert torch.equal(bic.logits(ctx.state, ctx.model, x), apply_bias(ctx.model(x), [layer]))


def test_bic_distills_corrected_new_logits_against_the_old_models_corrected_ones():
    bic, ctx, x, y = _ctx("bic")
    layer = (0, 2, torch.tensor([0.7]), torch.tensor([-0.3]))
    ctx.state["bic_layers"] = [layer]
    ctx.model.eval()
    new = apply_bias(ctx.model(x), [layer])
    old = apply_bias(ctx.old_model(x), [layer])
    lam = 4 / 6
    kd = -(F.softmax(old / 2, 1) * F.log_softmax(new[:, :4] / 2, 1)).sum(1).mean()
    assert torch.allclose(bic.loss(ctx, x, y), lam * kd + (1 - lam) * F.cross_entropy(new, y))


def test_bic_records_each_phases_alpha_and_beta():
    cfg = make_config(method="bic", epochs_override=2, **SMALL)
    m = trainer.run_incremental(cfg, "cpu", checkpoints=False)
    rows = m["per_phase"]
    assert "bic_alpha" not in rows[0]
    for r, (s, e) in zip(rows[1:], [(4, 6), (6, 8)]):
        assert r["bic_classes"] == [s, e]
        assert isinstance(r["bic_alpha"], float) and isinstance(r["bic_beta"], float)
        assert (r["bic_alpha"], r["bic_beta"]) != (1.0, 0.0)  # stage 2 moved off the identity


# ------------------------------------------------------------------ class-balanced fine-tuning
def _bn_stats(model):
    return {n: b.clone() for n, b in model.named_buffers()}


def test_cbf_freezes_bn_statistics_sigma_and_backbone_and_trains_every_embedding():
    lucir, ctx, x, y = _ctx("lucir", balanced_finetune=True)
    ctx.state["lucir_lambda"] = 5.0
    for w in list(ctx.model.head.weights)[:-1]:
        w.requires_grad_(False)  # as LUCIR leaves them after its phase training
    memory = ExemplarMemory()
    for c in range(6):
        memory.set_class(c, x[y == c])
    buffers, backbone = _bn_stats(ctx.model), copy.deepcopy(ctx.model.backbone.state_dict())
    sigma = ctx.model.head.sigma.detach().clone()
    heads = [w.detach().clone() for w in ctx.model.head.weights]
    flags = [p.requires_grad for p in ctx.model.parameters()]
    trainer.balanced_finetune(ctx, lucir, memory)
    after = _bn_stats(ctx.model)
    assert all(torch.equal(buffers[k], after[k]) for k in buffers if "num_batches" not in k)
    assert all(torch.equal(v, ctx.model.backbone.state_dict()[k]) for k, v in backbone.items())
    assert torch.equal(ctx.model.head.sigma.detach(), sigma)
    assert all(not torch.equal(a, w.detach()) for a, w in zip(heads, ctx.model.head.weights))
    assert [p.requires_grad for p in ctx.model.parameters()] == flags  # restored
    assert ctx.train_x is x  # the phase's training set is back


def test_cbf_uses_the_methods_own_loss(monkeypatch):
    lucir, ctx, x, y = _ctx("lucir", balanced_finetune=True)
    ctx.state["lucir_lambda"] = 5.0
    memory = ExemplarMemory()
    for c in range(6):
        memory.set_class(c, x[y == c])
    calls = []
    real = type(lucir).loss
    monkeypatch.setattr(type(lucir), "loss", lambda self, c, a, b: calls.append(1) or real(self, c, a, b))
    trainer.balanced_finetune(ctx, lucir, memory)
    assert calls  # LF + CE + MR, not a bare CE


def test_cbf_without_margin_ranking_is_cross_entropy_alone_when_the_features_are_fixed(monkeypatch):
    # the probe's claim: with the backbone fixed, the less-forget term has no gradient, so the
    # official ft_flag 4 (no margin ranking) trains the embeddings exactly as CE alone does
    from mnemonics_study import cbf_probe
    lucir, ctx, x, y = _ctx("lucir", balanced_finetune=True)
    memory = ExemplarMemory()
    for c in range(6):
        memory.set_class(c, x[y == c])
    start = copy.deepcopy(ctx.model.state_dict())

    def tuned(method):
        ctx.model.load_state_dict(start)
        ctx.generator.manual_seed(0)
        ctx.state["lucir_lambda"] = 5.0
        trainer.balanced_finetune(ctx, method, memory)
        return [w.detach().clone() for w in ctx.model.head.weights]

    no_mr = tuned(cbf_probe.variant_method("no_margin_ranking"))
    full = tuned(cbf_probe.variant_method("lucir_loss"))
    monkeypatch.setattr(type(lucir), "loss", lambda self, c, a, b: F.cross_entropy(
        c.model.head.sigma * c.model.head.cosine(c.model.features(a)), b))
    ce = tuned(lucir)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(no_mr, ce))
    assert not all(torch.allclose(a, b, atol=1e-4) for a, b in zip(full, ce))  # the margin term acts
    assert get_method("lucir").lambda_mr == 1.0  # the shared instance keeps its weight


def test_cbf_schedule_is_lucirs_and_enters_the_hash_only_when_used():
    paper = make_config(method="lucir", balanced_finetune=True, profile="paper")
    f = paper.finetune_schedule
    assert (f.epochs, f.lr, f.milestones, f.gamma, f.bn, f.sigma) == (20, 0.01, (0.5,), 0.1, "frozen", "fixed")
    assert "balanced_finetune_schedule" in paper.to_dict()
    assert "balanced_finetune_schedule" not in make_config(method="lucir").to_dict()
    assert "balanced_finetune_schedule" in make_config(method="lucir", exemplars="mnemonics").to_dict()


# ------------------------------------------------------------------ iCaRL
def test_icarl_bce_is_averaged_over_batch_and_classes():
    icarl, ctx, x, y = _ctx("icarl", old=False)
    ctx.model.eval()
    logits = ctx.model(x)
    target = F.one_hot(y, 6).float()
    manual = -(target * F.logsigmoid(logits) + (1 - target) * F.logsigmoid(-logits)).sum() / (16 * 6)
    assert torch.allclose(icarl.loss(ctx, x, y), manual, atol=1e-6)


def test_icarl_trains_in_its_own_units_and_other_methods_keep_theirs():
    s = make_config(method="icarl", profile="paper").schedule
    assert (s.lr, s.weight_decay, s.milestones, s.gamma, s.base_epochs, s.epochs) == (
        2.0, 1e-5, (0.7, 0.9), 0.2, 70, 70)
    q = make_config(method="icarl", profile="quick").schedule
    assert (q.lr, q.weight_decay, q.base_epochs, q.epochs) == (2.0, 1e-5, 20, 8)
    lucir = make_config(method="lucir", profile="paper").schedule
    assert (lucir.lr, lucir.weight_decay, lucir.epochs) == (0.1, 5e-4, 160)
    assert make_config(method="icarl", profile="quick", lr_override=0.1).schedule.lr == 0.1


# ------------------------------------------------------------------ LwF
def test_lwf_is_ce_plus_soft_target_ce_on_the_old_logits_at_t2_weight_1_on_a_linear_head():
    """Li & Hoiem's multi-class LwF: CE over all seen classes + lambda_o = 1 x the soft-target
    cross-entropy (T = 2, batch mean, no T^2 factor) between the new model's old-class logits
    (``logits[:, :n_old]``) and the old model's; a linear head (no cosine, no sigma)."""
    lwf, ctx, x, y = _ctx("lwf")
    assert not lwf.cosine_head and not hasattr(ctx.model.head, "sigma")
    assert (lwf.temperature, lwf.lambda_old) == (2.0, 1.0)
    ctx.model.eval()
    logits, old = ctx.model(x), ctx.old_model(x)
    assert old.shape[1] == 4 and logits.shape[1] == 6
    soft = -(F.softmax(old / 2, 1) * F.log_softmax(logits[:, :4] / 2, 1)).sum(1).mean()
    torch.testing.assert_close(lwf.loss(ctx, x, y), F.cross_entropy(logits, y) + soft)
    # the test can tell the forms apart: KD weighted by T^2 (the authors' baseline trainer's
    # form) or distilled over all six logits would not match
    assert not torch.allclose(lwf.loss(ctx, x, y), F.cross_entropy(logits, y) + 4 * soft)
    all_six = -(F.softmax(torch.cat([old, logits[:, 4:]], 1) / 2, 1) * F.log_softmax(logits / 2, 1)).sum(1).mean()
    assert not torch.allclose(lwf.loss(ctx, x, y), F.cross_entropy(logits, y) + all_six)


def test_lwf_without_an_old_model_is_plain_cross_entropy():
    lwf, ctx, x, y = _ctx("lwf", old=False)
    ctx.model.eval()
    torch.testing.assert_close(lwf.loss(ctx, x, y), F.cross_entropy(ctx.model(x), y))


# ------------------------------------------------------------------ the authors' baseline trainer
def test_cosinekd_is_the_authors_baseline_loss_on_the_scaled_cosine_logits():
    """trainer/incremental.py: CE + KLDivLoss()(log_softmax(out[:, :n_old] / T), softmax(ref / T))
    * T * T * beta * n_old, KLDivLoss's default being the mean over batch x n_old elements."""
    kd, ctx, x, y = _ctx("cosinekd")
    assert kd.cosine_head and (kd.temperature, kd.beta) == (2.0, 0.25)
    ctx.model.eval()
    logits, ref = ctx.model(x), ctx.old_model(x)
    torch.testing.assert_close(logits, ctx.model.head.sigma * ctx.model.head.cosine(ctx.model.features(x)))
    p = F.softmax(ref / 2, 1)
    element_mean_kl = (p * (p.log() - F.log_softmax(logits[:, :4] / 2, 1))).mean()  # over 16 x 4
    expected = F.cross_entropy(logits, y) + element_mean_kl * 2 * 2 * 0.25 * 4
    torch.testing.assert_close(kd.loss(ctx, x, y), expected)
    kd_none, ctx0, x0, y0 = _ctx("cosinekd", old=False)
    ctx0.model.eval()
    torch.testing.assert_close(kd_none.loss(ctx0, x0, y0), F.cross_entropy(ctx0.model(x0), y0))


def test_cosinekd_imprints_new_weights_and_freezes_the_old_ones():
    torch.manual_seed(0)
    kd = get_method("cosinekd")
    net = build_net("resnet", 4, depth=8, width=4, cosine=True)
    config = make_config(method="cosinekd", **SMALL)
    x, y = torch.randn(24, 3, 32, 32), torch.arange(24) % 6
    ctx = PhaseContext(config, 1, 4, 6, net, copy.deepcopy(net).eval(), x, y, torch.device("cpu"),
                       torch.Generator().manual_seed(0), {})
    kd.before_phase(ctx)
    old_w, new_w = list(net.head.weights)
    assert not old_w.requires_grad and new_w.requires_grad and new_w.shape[0] == 2
    net.eval()
    with torch.no_grad():
        f = F.normalize(net.features(x[y >= 4]), dim=1)
    mean4 = F.normalize(f[y[y >= 4] == 4].mean(0), dim=0)
    torch.testing.assert_close(F.normalize(new_w[0], dim=0), mean4, rtol=1e-4, atol=1e-5)
    # (that the loss has no less-forget or margin-ranking term is pinned by the exact value above)


# ------------------------------------------------------------------ the mnemonics outer step
def _tiny():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.BatchNorm2d(3), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(48, 3)).double().eval()
    g = torch.Generator().manual_seed(1)
    ex_x, ex_y = torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64), torch.tensor([0, 0, 1, 1, 2, 2])
    real_x, real_y = torch.randn(12, 1, 4, 4, generator=g, dtype=torch.float64), torch.arange(12) % 3
    return net, ex_x, ex_y, real_x, real_y


def _settings(**kw):
    base = dict(inner_steps=1, inner_lr=0.5, outer_iters=2, outer_lr=0.3, old_lr=0.3, real_batch=12)
    return bilevel.BilevelSettings(**{**base, **kw})


def test_per_exemplar_step_is_the_plain_step_times_the_exemplar_count():
    net, ex_x, ex_y, real_x, real_y = _tiny()
    scaled = bilevel.optimise_exemplars(net, ex_x, ex_y, real_x, real_y, _settings(per_exemplar_step=True),
                                        generator=torch.Generator().manual_seed(0))
    plain = bilevel.optimise_exemplars(net, ex_x, ex_y, real_x, real_y, _settings(outer_lr=0.3 * 6),
                                       generator=torch.Generator().manual_seed(0))
    assert torch.allclose(scaled, plain, atol=1e-12)


def test_momentum_is_heavy_ball_as_torch_sgd():
    net, ex_x, ex_y, real_x, real_y = _tiny()
    s = _settings(momentum=0.9)
    got = bilevel.optimise_exemplars(net, ex_x, ex_y, real_x, real_y, s, generator=torch.Generator().manual_seed(0))
    # two full-batch iterations by hand with torch.optim.SGD on the pixels
    ex = ex_x.clone().requires_grad_(True)
    opt = torch.optim.SGD([ex], lr=0.3, momentum=0.9)
    for _ in range(2):
        g, _ = bilevel.hypergradient(net, ex.detach(), ex_y, real_x, real_y, s)
        ex.grad = g
        opt.step()
    assert torch.allclose(got, ex.detach(), atol=1e-12)
    assert not torch.allclose(got, bilevel.optimise_exemplars(
        net, ex_x, ex_y, real_x, real_y, _settings(), generator=torch.Generator().manual_seed(0)))


def test_heldout_loss_is_the_outer_loss_on_the_heldout_images():
    net, ex_x, ex_y, real_x, real_y = _tiny()
    s = _settings(inner_steps=2)
    params, buffers = bilevel.model_state(net)
    expected = float(bilevel.unrolled_outer_loss(net, params, buffers, ex_x, ex_y, real_x, real_y, s).detach())
    assert bilevel.heldout_loss(net, ex_x, ex_y, real_x, real_y, s, batch=5) == pytest.approx(expected, rel=1e-10)


def test_heldout_loss_without_the_inner_step_is_the_models_own_loss():
    net, ex_x, ex_y, real_x, real_y = _tiny()
    s = _settings(inner_steps=2)
    with torch.no_grad():
        own = float(F.cross_entropy(net(real_x), real_y))
    assert bilevel.heldout_loss(net, ex_x, ex_y, real_x, real_y, s, batch=5, inner=False) == pytest.approx(own, rel=1e-12)
    # the inner steps change the model, so the temporary model scores differently
    assert bilevel.heldout_loss(net, ex_x, ex_y, real_x, real_y, s) != pytest.approx(own, rel=1e-6)


class _HeadNet(torch.nn.Module):
    """backbone + head, named as mnemonics_lib.backbones.IncrementalNet."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.BatchNorm2d(3),
                                            torch.nn.ReLU(), torch.nn.Flatten())
        self.head = torch.nn.Linear(48, 3)

    def forward(self, x):
        return self.head(self.backbone(x))


def test_a_head_only_inner_loop_adapts_only_the_classifier():
    net = _HeadNet().double().eval()
    _, ex_x, ex_y, real_x, real_y = _tiny()
    s = _settings(inner_steps=2, inner_params="head")
    params, consts = bilevel.model_state(net, "head")
    assert set(params) == {"head.weight", "head.bias"}
    assert {"backbone.0.weight", "backbone.0.bias", "backbone.1.running_mean"} <= set(consts)
    # the hand-written program: two SGD steps of the head on the exemplars' fixed features
    ex = ex_x.clone().requires_grad_(True)
    w, b = net.head.weight.detach().requires_grad_(True), net.head.bias.detach().requires_grad_(True)
    for _ in range(2):
        inner = F.cross_entropy(F.linear(net.backbone(ex), w, b), ex_y)
        gw, gb = torch.autograd.grad(inner, (w, b), create_graph=True)
        w, b = w - 0.5 * gw, b - 0.5 * gb
    outer = F.cross_entropy(F.linear(net.backbone(real_x), w, b), real_y)
    (expected,) = torch.autograd.grad(outer, ex)
    got, loss = bilevel.hypergradient(net, ex_x, ex_y, real_x, real_y, s)
    assert loss == pytest.approx(float(outer.detach()), rel=1e-12)
    assert torch.allclose(got, expected, atol=1e-12)
    assert expected.abs().sum() > 0  # the gradient reaches the pixels through the features
    full, _ = bilevel.hypergradient(net, ex_x, ex_y, real_x, real_y, _settings(inner_steps=2))
    assert not torch.allclose(full, expected, atol=1e-6)
    with pytest.raises(ValueError, match="model.head"):
        bilevel.model_state(torch.nn.Sequential(torch.nn.Linear(2, 2)), "head")
    with pytest.raises(ValueError, match="inner_params"):
        _settings(inner_params="backbone")


def test_heldout_split_takes_a_share_of_each_classes_non_exemplars():
    y = torch.tensor([0] * 10 + [1] * 5 + [2] * 3)
    chosen = torch.zeros(18, dtype=torch.bool)
    chosen[[0, 1, 2, 10, 11, 15, 16, 17]] = True  # class 2: every image is an exemplar
    held = heldout_split(y, chosen, 0.2, torch.Generator().manual_seed(0))
    assert not (held & chosen).any()
    assert [int(held[y == c].sum()) for c in range(3)] == [2, 1, 0]
    assert not heldout_split(y, chosen, 0.0, torch.Generator()).any()


def test_a_mnemonics_run_records_that_its_step_acts_in_every_phase():
    cfg = make_config(method="lucir", exemplars="mnemonics", epochs_override=2, **SMALL)
    rows = trainer.run_incremental(cfg, "cpu", checkpoints=False)["per_phase"]
    for r in rows:
        assert r["mnemonics_heldout_before"] > 0 and r["mnemonics_heldout_after"] > 0
        assert r["mnemonics_heldout_model"] > 0 and r["mnemonics_heldout_model"] != r["mnemonics_heldout_before"]
        assert r["mnemonics_pixel_delta"] == r["exemplar_change"]["new"]["mean"] > 0
        assert r["mnemonics_heldout_n"] > 0


def test_the_mnemonics_step_defaults_are_the_scaled_step_with_momentum():
    m = make_config(exemplars="mnemonics").mnemonics
    assert (m.step, m.momentum, m.heldout_fraction) == ("per_exemplar", 0.9, 0.2)
    assert m.inner_params == "all"
    legacy = make_config(exemplars="mnemonics", mnemonics={"step": "plain", "momentum": 0.0,
                                                         "heldout_fraction": 0.0}).to_dict()["mnemonics"]
    assert not {"step", "momentum", "heldout_fraction", "inner_params"} & set(legacy)  # earlier hashes hold
    head = make_config(exemplars="mnemonics", mnemonics={"inner_params": "head"})
    assert head.to_dict()["mnemonics"]["inner_params"] == "head"
    assert head.config_hash() != make_config(exemplars="mnemonics").config_hash()
    with pytest.raises(ConfigError, match="inner_params"):
        make_config(exemplars="mnemonics", mnemonics={"inner_params": "backbone"})


# ------------------------------------------------------------------ cached runs keep their hashes
def _rebuild(cfg: dict):
    from mnemonics_lib.config import _FIELD_NAMES

    fields = {k: v for k, v in cfg.items() if k in _FIELD_NAMES and k != "schedule"}
    if fields.get("mnemonics") is None:
        fields.pop("mnemonics", None)
    return make_config(**fields)


@pytest.mark.parametrize("path", sorted((ROOT / "results" / "runs").glob("*/config.json"))[:200],
                         ids=lambda p: p.parent.name)
def test_cached_runs_of_unchanged_methods_keep_their_hashes(path):
    cfg = json.loads(path.read_text())
    # each fix left its mark in the configs computed after it: a method revision, the mnemonics
    # step, or (LUCIR's CBF) the fine-tuning schedule
    computed_before_the_fixes = ("method_revision" not in cfg and "balanced_finetune_schedule" not in cfg
                                 and (cfg.get("mnemonics") or {}).get("step") is None)
    affected = computed_before_the_fixes and (cfg["method"] in ("bic", "icarl") or cfg["exemplars"] == "mnemonics"
                                              or cfg.get("balanced_finetune") is True)
    rebuilt = _rebuild(cfg).config_hash()
    assert (rebuilt == cfg["config_hash"]) != affected, (
        f"{path.parent.name}: {'affected by a method change but kept' if affected else 'changed'} its hash")
