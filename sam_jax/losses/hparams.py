"""Rules for loss hyper-parameters, checked by the losses themselves and by ``get_loss``."""

import math
from typing import Callable


def _non_negative(value) -> bool:
    return isinstance(value, (int, float)) and value >= 0


def _unit_interval_open(value) -> bool:
    return isinstance(value, (int, float)) and 0 <= value < 1


def _finite_non_negative(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value >= 0


_NON_NEGATIVE = (_non_negative, ">= 0")

# loss name -> hyper-parameter -> (predicate, requirement in words)
RULES: dict[str, dict[str, tuple[Callable[[object], bool], str]]] = {
    "label_smoothing": {"smoothing": (_unit_interval_open, "in [0, 1)")},
    "focal": {"gamma": _NON_NEGATIVE},
    "dual_focal": {"gamma": _NON_NEGATIVE},
    "mmce": {"weight": _NON_NEGATIVE},
    "mdca": {"weight": _NON_NEGATIVE},
    "mbls": {"margin": _NON_NEGATIVE, "weight": _NON_NEGATIVE},
    "acls": {"pos_lambda": _NON_NEGATIVE, "neg_lambda": _NON_NEGATIVE, "alpha": _NON_NEGATIVE, "margin": _NON_NEGATIVE},
    "cpc": {"lambda_bdc": _NON_NEGATIVE, "lambda_bec": _NON_NEGATIVE},
    "crl": {"rank_weight": _NON_NEGATIVE},
    "confidence_penalty": {"weight": _NON_NEGATIVE},
    "csam": {
        "gamma": (
            _finite_non_negative,
            "finite and >= 0 (eq. 4 of Tan et al. 2025; Theorem 3, the entropy-penalty bound, needs "
            "gamma <= 2, and Figure S6 sweeps gamma up to 3)",
        )
    },
}


def require(where: str, name: str, value: object, ok: bool, requirement: str) -> None:
    """Raises ``ValueError`` naming ``where``'s hyper-parameter ``name`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{where}: hyper-parameter {name}={value!r} is invalid; {name} must be {requirement}.")


def check(where: str, **values: object) -> None:
    """Checks ``values`` against ``RULES[where]``; raises ``ValueError`` naming the first bad one."""
    for name, value in values.items():
        predicate, requirement = RULES[where][name]
        require(where, name, value, predicate(value), requirement)
