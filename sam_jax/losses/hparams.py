"""Rules for loss hyper-parameters, checked by the losses themselves and by the loss registry."""

from sam_jax.models.registry import FINITE_NON_NEGATIVE, NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, Rule

# loss or mixing name -> hyper-parameter -> its rule; the registries of ``sam_jax.losses`` declare
# each entry with these, and the functions check their arguments against them when called directly.
RULES: dict[str, dict[str, Rule]] = {
    "mixup": {"alpha": POSITIVE},
    "mit": {"alpha": POSITIVE, "margin": UNIT_INTERVAL},
    "label_smoothing": {"smoothing": UNIT_INTERVAL},
    "focal": {"gamma": NON_NEGATIVE},
    "dual_focal": {"gamma": NON_NEGATIVE},
    "mmce": {"weight": NON_NEGATIVE},
    "mdca": {"weight": NON_NEGATIVE},
    "mbls": {"margin": NON_NEGATIVE, "weight": NON_NEGATIVE},
    "acls": {"pos_lambda": NON_NEGATIVE, "neg_lambda": NON_NEGATIVE, "alpha": NON_NEGATIVE, "margin": NON_NEGATIVE},
    "cpc": {"lambda_bdc": NON_NEGATIVE, "lambda_bec": NON_NEGATIVE},
    "crl": {"rank_weight": NON_NEGATIVE},
    "confidence_penalty": {"weight": NON_NEGATIVE},
    "csam": {
        "gamma": Rule(
            FINITE_NON_NEGATIVE.holds,
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
        rule = RULES[where][name]
        require(where, name, value, rule.holds(value), rule.requirement)
