"""A stand-in for CUDA graphs on a CPU, shared by the tests of the graphed executors
(``steps.GraphStep``, ``bilevel.HypergradientReplay``): ``capture`` records the function without
running it, ``replay`` re-runs it. As in a real whole-step graph, a replayed backward writes fresh
gradients into ``params`` (it does not accumulate)."""
from __future__ import annotations


class RecordedGraph:
    def __init__(self, fn, params):
        self.fn, self.params = fn, params

    def replay(self):
        for p in self.params:
            p.grad = None
        self.fn()


class Recorder:
    """``fail=True``: every capture raises, as an op a graph cannot hold makes a real one do."""

    def __init__(self, params=(), fail: bool = False):
        self.params, self.fail, self.captured = list(params), fail, 0

    def warm(self, fn):
        fn()

    def capture(self, fn):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.captured += 1
        return RecordedGraph(fn, self.params)  # capture records; it does not execute
