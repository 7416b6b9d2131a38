"""Checks of an optimizer factory's hyper-parameters against the rules declared with it.

Each factory with several hyper-parameters declares them once as a table of
``sam_jax.models.registry.Rule`` s (``sam_jax.optim.bsam.RULES``, ...). Its factory checks its
arguments against that table, and the optimizer registry checks a config's block against the same
rules before anything is built, so a rule is written in one place.
"""

from collections.abc import Mapping
from typing import Any

import optax

from sam_jax.models.registry import POSITIVE, Rule, broken_rules


def check_hyper_parameters(algorithm: str, rules: Mapping[str, Rule], **values: Any) -> None:
    """One ``ValueError`` naming every value that breaks its rule in ``rules``.

    Raises:
      ValueError: ``"Bad <algorithm> hyper-parameters: rho must be >= 0; ... (got rho=-1, ...)"``.
    """
    failed = broken_rules(rules, values)
    if failed:
        got = ", ".join(f"{name}={value}" for name, value in values.items())
        raise ValueError(f"Bad {algorithm} hyper-parameters: {'; '.join(failed)} (got {got}).")


def with_learning_rate(
    algorithm: str, direction: optax.GradientTransformationExtraArgs, learning_rate: optax.ScalarOrSchedule
) -> optax.GradientTransformationExtraArgs:
    """``optax.chain(direction, optax.scale_by_learning_rate(learning_rate))``; a constant rate must be > 0.

    The shape of ``bsam``, ``vogn`` and ``ivon``: a ``scale_by_*`` direction (which checks its own
    hyper-parameters) followed by the step size, a constant or an ``optax.Schedule``.
    """
    if not callable(learning_rate):
        check_hyper_parameters(algorithm, {"learning_rate": POSITIVE}, learning_rate=learning_rate)
    return optax.chain(direction, optax.scale_by_learning_rate(learning_rate))
