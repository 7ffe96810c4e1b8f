"""The explicit method registry: name -> class."""
from .base import Method, PhaseContext
from .bic import BiC
from .cosinekd import CosineKD
from .icarl import ICaRL
from .lucir import LUCIR
from .lwf import LwF

REGISTRY: dict[str, type[Method]] = {"lwf": LwF, "icarl": ICaRL, "bic": BiC, "lucir": LUCIR,
                                 "cosinekd": CosineKD}


def get_method(name: str) -> Method:
    if name not in REGISTRY:
        raise KeyError(f"unknown method {name!r}; registered: {sorted(REGISTRY)}")
    return REGISTRY[name]()


__all__ = ["Method", "PhaseContext", "REGISTRY", "get_method"]
