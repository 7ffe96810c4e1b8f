"""The CUDA-graph step executor's bookkeeping, tested on the CPU with a recorder backend; the
compiled CPU step against the eager one; and the graph-safe (masked) LUCIR margin-ranking loss
against the selection-based formula."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from mnemonics_lib.backbones import build_net
from mnemonics_lib.steps import CompiledStep, EagerStep, GraphStep, compiled_backbones, make_step

from graph_recorder import Recorder


SIZES = [8, 8, 8, 5]  # three full batches and the smaller last one, as batch_indices gives


def _train(model, make, sizes, epochs=4, milestones=(1, 3)):
    """The trainer's loop shape: SGD + MultiStepLR, per-epoch batches of the given sizes."""
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 5, (n,), generator=g)) for n in sizes]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(milestones), gamma=0.1)
    step = make(opt, lambda x, y: F.cross_entropy(model(x), y))
    for _ in range(epochs):
        model.train()
        for x, y in data:
            step(x, y)
        sched.step()
    return step


def test_graph_step_replays_the_eager_training_exactly():
    torch.manual_seed(0)
    eager_model = build_net("resnet", 5, depth=8, width=4)
    graph_model = copy.deepcopy(eager_model)
    _train(eager_model, lambda opt, f: EagerStep(opt, f, False, "cpu"), SIZES)
    rec = Recorder(list(graph_model.parameters()))
    step = _train(graph_model, lambda opt, f: GraphStep(opt, f, False, "cpu", 8, warmup=3, backend=rec), SIZES)
    for (name, a), b in zip(eager_model.state_dict().items(), graph_model.state_dict().values()):
        assert torch.equal(a, b), name  # same ops on the same data: bit-identical on a CPU
    # epoch 0: 3 warm-up steps + last batch eager; lr 0.1 never replays (milestone after epoch 0)
    # epoch 1: capture at lr 0.01, 3 replays, last eager; epoch 2: same lr, 3 replays + eager;
    # epoch 3: capture at lr 0.001, 3 replays + eager
    assert step.stats == {"eager": 7, "replayed": 9, "captures": 2}
    assert rec.captured == 2


def test_graph_step_captures_again_when_the_learning_rate_changes():
    torch.manual_seed(1)
    model = build_net("resnet", 5, depth=8, width=4)
    rec = Recorder(list(model.parameters()))
    step = _train(model, lambda opt, f: GraphStep(opt, f, False, "cpu", 8, warmup=1, backend=rec),
                  [8, 8], epochs=3, milestones=(1, 2))
    # warm-up 1 eager, capture at lr 0.1 (then 1 replay); new captures at epochs 1 and 2
    assert step.stats == {"eager": 1, "replayed": 5, "captures": 3}


def test_a_failed_capture_falls_back_to_eager_training():
    torch.manual_seed(2)
    eager_model = build_net("resnet", 5, depth=8, width=4)
    model = copy.deepcopy(eager_model)
    _train(eager_model, lambda opt, f: EagerStep(opt, f, False, "cpu"), [8, 8, 8])
    step = _train(model, lambda opt, f: GraphStep(opt, f, False, "cpu", 8, warmup=1,
                                                   backend=Recorder(model.parameters(), fail=True)), [8, 8, 8])
    assert step.stats["replayed"] == 0 and step.stats["eager"] == 12
    for a, b in zip(eager_model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def _eager_trained_and_twin(seed: int):
    """A tiny net trained 2 epochs by the eager step, and an untrained copy of its start."""
    torch.manual_seed(seed)
    eager_model = build_net("resnet", 5, depth=8, width=4)
    model = copy.deepcopy(eager_model)
    _train(eager_model, lambda opt, f: EagerStep(opt, f, False, "cpu"), SIZES, epochs=2, milestones=(1,))
    return eager_model, model


def _assert_states_close(ref, model):
    for (name, a), b in zip(ref.state_dict().items(), model.state_dict().values()):
        # fused kernels round differently; 8 SGD steps at lr 0.1 keep that at float noise
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4, msg=name)


def test_compiled_step_trains_like_the_eager_step_and_compiles_one_graph(sound_cpu_compile):
    from torch._dynamo.utils import counters

    eager_model, model = _eager_trained_and_twin(3)
    graphs_before = counters["stats"]["unique_graphs"]
    with compiled_backbones([model], True) as compiled:
        assert compiled and model.backbone._compiled_call_impl is not None
        step = _train(model, lambda opt, f: make_step(opt, f, False, torch.device("cpu"), 8, compiled),
                      SIZES, epochs=2, milestones=(1,))
    assert isinstance(step, CompiledStep)
    assert step.stats == {"compiled": 6, "eager": 2}  # the 5-sample batches ran eagerly ...
    assert counters["stats"]["unique_graphs"] - graphs_before == 1  # ... so no dynamic-shape graph
    assert model.backbone._compiled_call_impl is None  # eager again after the block
    _assert_states_close(eager_model, model)


def test_evaluation_through_the_compiled_backbone_matches_the_eager_one():
    """The trainer's evaluation on CPU: evaluation.batched inside compiled_backbones, full
    batches compiled, the last smaller batch eager (no second graph)."""
    from torch._dynamo.utils import counters

    from mnemonics_lib.evaluation import batched

    torch.manual_seed(5)
    net = build_net("resnet", 5, depth=8, width=4).eval()
    x = torch.randn(21, 3, 16, 16)  # batches of 8, 8 and 5
    eager = batched(net.features, x, 8)
    graphs_before = counters["stats"]["unique_graphs"]
    with compiled_backbones([net], True):
        compiled = batched(net.features, x, 8)
    assert counters["stats"]["unique_graphs"] - graphs_before == 1
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


def test_graph_step_with_compiled_backbones_keeps_the_small_batch_eager(sound_cpu_compile):
    """MNEMONICS_CUDA_COMPILE=1's executor, with the CPU recorder for the graph: warm-up and
    replays run the compiled backbone, the smaller last batch runs eagerly (one graph only),
    and training matches the eager trainer within float tolerance."""
    from torch._dynamo.utils import counters

    eager_model, model = _eager_trained_and_twin(7)
    graphs_before = counters["stats"]["unique_graphs"]
    with compiled_backbones([model], True):
        rec = Recorder(list(model.parameters()))
        step = _train(model, lambda opt, f: GraphStep(opt, f, False, "cpu", 8, warmup=2, backend=rec,
                                                      compiled=True), SIZES, epochs=2, milestones=(1,))
    assert counters["stats"]["unique_graphs"] - graphs_before == 1
    # epoch 0: 2 warm-up, capture + 1 replay, last eager; epoch 1 (lr 0.01): capture, 3 replays, last eager
    assert step.stats == {"eager": 4, "replayed": 4, "captures": 2}
    _assert_states_close(eager_model, model)


def test_later_phases_reuse_the_compiled_graphs(sound_cpu_compile):
    """A new frozen old model every phase and a growing head must not recompile the backbones:
    past torch's recompile limit (8 per code object) they would silently run eagerly."""
    import torch.nn.functional as F
    from torch._dynamo.utils import counters

    torch.manual_seed(6)
    net, old = build_net("resnet", 10, depth=8, width=4, cosine=True), None
    x = torch.randn(8, 3, 16, 16)
    graphs_before = counters["stats"]["unique_graphs"]
    for phase in range(10):
        if phase:
            net.head.grow(2)
        y = torch.randint(0, net.head.n_classes, (8,))

        def loss(a, b, old=old):
            f = net.features(a)
            out = F.cross_entropy(net.head(f), b)
            if old is not None:
                with torch.no_grad():
                    target = old.features(a)
                out = out + (1 - F.cosine_similarity(f, target, dim=1)).mean()
            return out

        opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.01)
        with compiled_backbones([net, old], True) as compiled:
            net.train()
            step = make_step(opt, loss, False, torch.device("cpu"), 8, compiled)
            step(x, y)
        assert step.stats == {"compiled": 1, "eager": 0}  # no fallback
        net.eval()
        with compiled_backbones([net], True), torch.inference_mode():
            net.features(x)
        old = copy.deepcopy(net).eval().requires_grad_(False)
    # one graph each: the model training, the old model without gradients, inference
    assert counters["stats"]["unique_graphs"] - graphs_before == 3


def _failing_backend(gm, example_inputs):
    raise RuntimeError("no C++ compiler here")


def test_a_failed_compilation_falls_back_to_eager_training():
    torch.manual_seed(4)
    eager_model = build_net("resnet", 5, depth=8, width=4)
    model = copy.deepcopy(eager_model)
    _train(eager_model, lambda opt, f: EagerStep(opt, f, False, "cpu"), [8, 8, 5], epochs=2)
    with compiled_backbones([model], True, backend=_failing_backend):
        step = _train(model, lambda opt, f: CompiledStep(opt, f, False, "cpu", 8), [8, 8, 5], epochs=2)
    assert step.stats == {"compiled": 0, "eager": 6}
    for a, b in zip(eager_model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)  # the failed attempt changed nothing: no update, no BN statistics


def test_compiled_backbones_are_eager_again_after_an_error():
    nets = [build_net("resnet", 5, depth=8, width=4) for _ in range(2)]
    with pytest.raises(KeyError):
        with compiled_backbones(nets + [None], True):  # None: no old model in phase 0
            assert all(n.backbone._compiled_call_impl is not None for n in nets)
            raise KeyError("boom")
    assert all(n.backbone._compiled_call_impl is None for n in nets)
    with compiled_backbones(nets, False) as compiled:
        assert not compiled and nets[0].backbone._compiled_call_impl is None


def test_compile_is_on_by_default_on_cpu_where_sound_and_off_on_cuda(monkeypatch):
    from mnemonics_lib import compile_probe
    from mnemonics_lib.steps import compile_enabled

    monkeypatch.delenv("MNEMONICS_CPU_COMPILE", raising=False)
    monkeypatch.delenv("MNEMONICS_CUDA_COMPILE", raising=False)
    verdict = {"v": compile_probe.Verdict(True, "matches")}
    monkeypatch.setattr(compile_probe, "cpu_compile_verdict", lambda: verdict["v"])
    assert compile_enabled(torch.device("cpu")) and not compile_enabled(torch.device("cuda"))
    verdict["v"] = compile_probe.Verdict(False, "crashed")  # a host where inductor's code is unsound
    assert not compile_enabled(torch.device("cpu"))
    monkeypatch.setenv("MNEMONICS_CPU_COMPILE", "0")
    monkeypatch.setenv("MNEMONICS_CUDA_COMPILE", "1")
    assert not compile_enabled(torch.device("cpu")) and compile_enabled(torch.device("cuda"))


def test_make_step_is_eager_on_cpu_and_graphed_on_cuda_unless_switched_off(monkeypatch):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    assert isinstance(make_step(opt, None, False, torch.device("cpu"), 8), EagerStep)
    assert isinstance(make_step(opt, None, False, torch.device("cpu"), 8, compiled=True), CompiledStep)
    assert isinstance(make_step(opt, None, False, torch.device("cuda"), 8), GraphStep)
    monkeypatch.setenv("MNEMONICS_CUDA_GRAPHS", "0")
    assert isinstance(make_step(opt, None, False, torch.device("cuda"), 8), EagerStep)


def _selection_margin_loss(cos, y, n_old, n_seen, K=2, margin=0.5):
    """The formula as LUCIR's code writes it: select the old-class rows, then rank."""
    old = y < n_old
    if not old.any():
        return torch.tensor(0.0)
    c = cos[old]
    gt = c.gather(1, y[old, None])
    hard = c[:, n_old:n_seen].topk(min(K, n_seen - n_old), dim=1).values
    return F.relu(margin - gt + hard).mean()


@pytest.mark.parametrize("old_rows", [0, 1, 5, 12])
def test_masked_margin_ranking_equals_the_selection_formula(old_rows):
    from mnemonics_lib.config import make_config
    from mnemonics_lib.methods import PhaseContext, get_method

    torch.manual_seed(old_rows)
    n_old, n_seen, b = 10, 15, 12
    net = build_net("resnet", n_old, depth=8, width=4, cosine=True)
    net.head.grow(n_seen - n_old)
    old_net = copy.deepcopy(net).eval()
    x = torch.randn(b, 3, 16, 16)
    y = torch.cat([torch.randint(0, n_old, (old_rows,)), torch.randint(n_old, n_seen, (b - old_rows,))])
    config = make_config(dataset="synthetic", profile="smoke", method="lucir")
    ctx = PhaseContext(config, 1, n_old, n_seen, net, old_net, x, y, torch.device("cpu"),
                       torch.Generator(), {"lucir_lambda": 0.0})
    lucir = get_method("lucir")
    net.eval()  # BN from running stats: the two evaluations see the same features
    got = lucir.loss(ctx, x, y)
    cos = net.head.cosine(net.features(x))
    expected = F.cross_entropy(net.head.sigma * cos, y) + _selection_margin_loss(cos, y, n_old, n_seen)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    if old_rows == 0:  # no old-class sample: the ranking term is exactly zero
        torch.testing.assert_close(got, F.cross_entropy(net.head.sigma * cos, y), rtol=0, atol=0)
