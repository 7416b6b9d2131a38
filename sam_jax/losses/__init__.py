"""Per-batch training losses from logits, and the batch-mixing methods of the calibration baselines.

``get_loss(name, **hparams)`` returns ``fn(logits, labels, mask=None)`` (hyper-parameters checked,
paper defaults for the rest); ``LOSSES`` holds every name with its defaults. Losses with state
(``adafocal``, ``crl``, ``balcal``) are trained through ``get_stateful_loss(name, **hparams)``,
which every name supports (see ``sam_jax.losses.stateful`` for what the train loop calls when);
their ``LOSSES`` entry is the loss at the initial state. ``docs/losses.md`` lists the methods,
papers, hyper-parameters and formulas. The losses that are a batch mean of per-example terms
(``PER_EXAMPLE_LOSSES``) also give those terms (``get_per_example_loss``), which CSAM's descent
loss reweights (``csam_descent_loss(base, gamma)``: eq. 4 over any of them).

Mixup and MIT-L are batch transforms (``mixup`` / ``mixup_loss``, ``mit_mix`` / ``mit_loss``).
"""

import functools
import inspect
from typing import Callable, Mapping, Optional

import jax

from sam_jax.losses.adafocal import AdaFocalState, adafocal, adafocal_init, adafocal_loss, adafocal_update
from sam_jax.losses.balcal import (
    BalcalState,
    balcal,
    balcal_class_scale,
    balcal_init,
    balcal_logits,
    balcal_loss,
    balcal_update,
)
from sam_jax.losses.classification import cross_entropy, cross_entropy_per_example, mse, mse_per_example
from sam_jax.losses.csam import csam_loss, csam_reweighted, csam_weight
from sam_jax.losses.focal import dual_focal, dual_focal_per_example, flsd53, flsd53_per_example, focal
from sam_jax.losses.focal import focal_per_example
from sam_jax.losses.hparams import check
from sam_jax.losses.mixing import (
    MIXINGS,
    MitBatch,
    MixedObjective,
    MixupBatch,
    get_mixing,
    mit_decouple,
    mit_loss,
    mit_mix,
    mixup,
    mixup_loss,
)
from sam_jax.losses.ranking import CorrectnessHistory, crl, crl_init, crl_loss, crl_update
from sam_jax.losses.regularizers import (
    confidence_penalty,
    confidence_penalty_per_example,
    cpc,
    cpc_per_example,
    mdca,
    mmce,
)
from sam_jax.losses.smoothing import (
    acls,
    acls_per_example,
    label_smoothing,
    label_smoothing_per_example,
    mbls,
    mbls_per_example,
)
from sam_jax.losses.stateful import StatefulLoss, at_initial_state, stateless

LossFn = Callable[..., jax.Array]


def _csam(logits: jax.Array, labels: jax.Array, *, gamma: float = 1.0, mask=None) -> jax.Array:
    """``csam_loss`` with ``gamma`` as a keyword (default 1, the CSAM setting of the config)."""
    return csam_loss(logits, labels, gamma, mask=mask)


def _plain(loss_fn: LossFn) -> LossFn:
    """``cross_entropy`` / ``mse`` take ``mask`` positionally and have no hyper-parameters."""
    return lambda logits, labels, *, mask=None: loss_fn(logits, labels, mask)


# name -> loss taking keyword hyper-parameters and mask
_STATELESS: dict[str, LossFn] = {
    "cross_entropy": _plain(cross_entropy),
    "mse": _plain(mse),
    "label_smoothing": label_smoothing,
    "focal": focal,
    "flsd53": flsd53,
    "dual_focal": dual_focal,
    "mmce": mmce,
    "mdca": mdca,
    "mbls": mbls,
    "acls": acls,
    "cpc": cpc,
    "confidence_penalty": confidence_penalty,
    "csam": _csam,
}
# name -> factory(**hyper-parameters) -> StatefulLoss
_STATEFUL: dict[str, Callable[..., StatefulLoss]] = {
    "adafocal": adafocal,
    "crl": crl,
    "balcal": balcal,
}


def _hparam_names(name: str) -> tuple[str, ...]:
    fn = _STATELESS.get(name) or _STATEFUL[name]
    parameters = inspect.signature(fn).parameters.values()
    return tuple(p.name for p in parameters if p.default is not inspect.Parameter.empty and p.name != "mask")


def _check_call(name: str, hparams: dict) -> None:
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; choose one of {sorted(LOSSES)}.")
    known = _hparam_names(name)
    for hparam in hparams:
        if hparam not in known:
            raise ValueError(f"{name}: unknown hyper-parameter {hparam!r}; {name} takes {list(known) or 'none'}.")
    if name in _STATELESS:
        check(name, **hparams)


def _bind(name: str, hparams: dict) -> LossFn:
    if name in _STATEFUL:
        return at_initial_state(_STATEFUL[name](**hparams))
    loss_fn = functools.partial(_STATELESS[name], **hparams)

    def loss(logits: jax.Array, labels: jax.Array, mask=None) -> jax.Array:
        return loss_fn(logits, labels, mask=mask)

    return loss


LOSSES: dict[str, LossFn] = {name: _bind(name, {}) for name in (*_STATELESS, *_STATEFUL)}


# name -> fn(logits, labels, **hparams) -> [B], for the losses that are a batch mean of per-example
# terms, which CSAM's reweighting (eq. 4) multiplies. Not here: MMCE and MDCA (their penalties are
# functions of the whole batch), AdaFocal, CRL and BalCAL (state, pairs of examples, two heads) and
# csam itself (already reweighted).
_PER_EXAMPLE: dict[str, Callable[..., jax.Array]] = {
    "cross_entropy": cross_entropy_per_example,
    "mse": mse_per_example,
    "label_smoothing": label_smoothing_per_example,
    "focal": focal_per_example,
    "flsd53": flsd53_per_example,
    "dual_focal": dual_focal_per_example,
    "mbls": mbls_per_example,
    "acls": acls_per_example,
    "cpc": cpc_per_example,
    "confidence_penalty": confidence_penalty_per_example,
}
PER_EXAMPLE_LOSSES: tuple[str, ...] = tuple(_PER_EXAMPLE)


def loss_hparam_defaults(name: str) -> dict[str, float]:
    """The hyper-parameters of loss ``name`` with their defaults (the config block ``loss.<name>``)."""
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; choose one of {sorted(LOSSES)}.")
    fn = _STATELESS.get(name) or _STATEFUL[name]
    parameters = inspect.signature(fn).parameters
    return {field: parameters[field].default for field in _hparam_names(name)}


def get_loss(name: str, **hparams: float) -> LossFn:
    """Returns the loss ``fn(logits, labels, mask=None)`` registered under ``name``.

    Args:
      name: a key of ``LOSSES``.
      **hparams: hyper-parameters of that loss by name (e.g. ``gamma`` for ``focal``); the others
        keep the defaults of the original papers. Stateful losses are returned at their initial
        state; train them through :func:`get_stateful_loss`.

    Raises:
      ValueError: for an unknown loss, an unknown hyper-parameter or an invalid value (named).
    """
    _check_call(name, hparams)
    return _bind(name, hparams) if hparams else LOSSES[name]


def get_per_example_loss(name: str, **hparams: float) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``fn(logits, labels) -> [B]``: the per-example values whose batch mean is ``get_loss(name)``.

    Args:
      name: one of :data:`PER_EXAMPLE_LOSSES`.
      **hparams: as for :func:`get_loss`; the others keep their defaults.

    Raises:
      ValueError: for a loss without a per-example form, or as :func:`get_loss`.
    """
    _check_call(name, hparams)
    if name not in _PER_EXAMPLE:
        raise ValueError(
            f"loss {name!r} is not a mean of per-example terms (a batch-level penalty, a loss with "
            f"state or pairs, or csam itself); the losses with a per-example form are {list(PER_EXAMPLE_LOSSES)}."
        )
    return functools.partial(_PER_EXAMPLE[name], **{**loss_hparam_defaults(name), **hparams})


def csam_descent_loss(base: str, gamma: float, base_hparams: Optional[Mapping[str, float]] = None) -> LossFn:
    """CSAM's descent loss over the training loss ``base``: eq. (4)'s factor times its per-example value.

    Tan et al. (2025, arXiv:2505.23866), eq. (4) for ``base = "cross_entropy"``, where it equals
    :func:`csam_loss`; for focal loss and ACLS the descent loss of FL+CSAM and ACLS+CSAM (Table S15),
    ``(1 + p_y)^(-gamma)`` times the base loss of each example with ``p_y > 1/2`` (the paper gives
    no formula for these; ``sam_jax.losses.csam`` says what is inferred).

    Args:
      base: the training loss, one of :data:`PER_EXAMPLE_LOSSES`.
      gamma: eq. (4)'s ``gamma >= 0``, finite.
      base_hparams: the base loss's hyper-parameters by name (its defaults for the others; a dict,
        since focal loss has a ``gamma`` of its own).

    Returns:
      ``fn(logits, labels, mask=None) -> scalar``.

    Raises:
      ValueError: for a base loss without a per-example form (the combination is not defined), a
        bad hyper-parameter or a bad ``gamma``.
    """
    if base not in _PER_EXAMPLE:
        raise ValueError(
            f"CSAM reweights the training loss per example (eq. 4 of Tan et al. 2025), and {base!r} is not "
            f"a mean of per-example terms, so CSAM over it is not defined; use a loss among "
            f"{list(PER_EXAMPLE_LOSSES)} (FL+CSAM: focal, ACLS+CSAM: acls), or SAM with {base!r}."
        )
    return csam_reweighted(get_per_example_loss(base, **dict(base_hparams or {})), gamma)


def get_stateful_loss(name: str, **hparams: float) -> StatefulLoss:
    """The ``StatefulLoss`` of any registered loss (state ``()`` for the stateless ones).

    Raises:
      ValueError: as :func:`get_loss`.
    """
    _check_call(name, hparams)
    if name in _STATEFUL:
        return _STATEFUL[name](**hparams)
    return stateless(_bind(name, hparams))


__all__ = [
    "MIXINGS",
    "MixedObjective",
    "get_mixing",
    "AdaFocalState",
    "BalcalState",
    "CorrectnessHistory",
    "LOSSES",
    "MitBatch",
    "PER_EXAMPLE_LOSSES",
    "MixupBatch",
    "StatefulLoss",
    "acls",
    "adafocal",
    "adafocal_init",
    "adafocal_loss",
    "adafocal_update",
    "balcal",
    "balcal_class_scale",
    "balcal_init",
    "balcal_logits",
    "balcal_loss",
    "balcal_update",
    "confidence_penalty",
    "cpc",
    "crl",
    "crl_init",
    "crl_loss",
    "crl_update",
    "cross_entropy",
    "cross_entropy_per_example",
    "csam_descent_loss",
    "csam_loss",
    "csam_reweighted",
    "csam_weight",
    "dual_focal",
    "flsd53",
    "focal",
    "get_loss",
    "get_per_example_loss",
    "get_stateful_loss",
    "label_smoothing",
    "loss_hparam_defaults",
    "mbls",
    "mdca",
    "mit_decouple",
    "mit_loss",
    "mit_mix",
    "mixup",
    "mixup_loss",
    "mmce",
    "mse",
]
