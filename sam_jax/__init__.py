"""sam_jax: sharpness-aware optimizers, loss curvature and calibration in JAX/Flax/Optax.

``import sam_jax`` loads nothing else: each subpackage (``sam_jax.optim``, ``sam_jax.data``, ...)
is imported on first attribute access (PEP 562), so ``sam_jax.optim.sam(...)`` works after a bare
``import sam_jax`` while scripts that need one layer pay for that layer only.
"""

import importlib
from types import ModuleType

# The packages of the layers in docs/architecture.md (tests/test_architecture.py checks the match).
__all__ = ["data", "models", "losses", "curvature", "calibration", "optim", "training", "analysis"]


def __getattr__(name: str) -> ModuleType:
    if name in __all__:
        # import_module binds the subpackage on this module, so later accesses skip this hook.
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
