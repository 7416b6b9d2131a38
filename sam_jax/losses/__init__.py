"""Per-batch training losses from logits, and the batch-mixing methods of the calibration baselines.

``get_loss(name, **hparams)`` returns ``fn(logits, labels, mask=None)`` (hyper-parameters checked,
paper defaults for the rest); ``LOSSES`` is the registry (``sam_jax.models.registry.Registry``) of
every name with its :class:`LossSpec`, defaults and rules. Losses with state
(``adafocal``, ``crl``, ``balcal``) are trained through ``get_stateful_loss(name, **hparams)``,
which every name supports (see ``sam_jax.losses.stateful`` for what the train loop calls when);
their ``LOSSES`` entry is the loss at the initial state. ``docs/losses.md`` lists the methods,
papers, hyper-parameters and formulas. The losses that are a batch mean of per-example terms
(``PER_EXAMPLE_LOSSES``) also give those terms (``get_per_example_loss``), which CSAM's descent
loss reweights (``csam_descent_loss(base, gamma)``: eq. 4 over any of them).

Mixup and MIT-L are batch transforms (``mixup`` / ``mixup_loss``, ``mit_mix`` / ``mit_loss``).
"""

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping

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
from sam_jax.losses.focal import (
    dual_focal,
    dual_focal_per_example,
    flsd53,
    flsd53_per_example,
    focal,
    focal_per_example,
)
from sam_jax.losses.hparams import RULES
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
from sam_jax.models.registry import Registry

LossFn = Callable[..., jax.Array]


def _csam(logits: jax.Array, labels: jax.Array, *, gamma: float = 1.0, mask=None) -> jax.Array:
    """``csam_loss`` with ``gamma`` as a keyword (default 1, the CSAM setting of the config)."""
    return csam_loss(logits, labels, gamma, mask=mask)


def _plain(loss_fn: LossFn) -> LossFn:
    """``cross_entropy`` / ``mse`` take ``mask`` positionally and have no hyper-parameters."""
    return lambda logits, labels, *, mask=None: loss_fn(logits, labels, mask)


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """A registered loss: exactly one of ``loss`` and ``stateful``, and its per-example form if any.

    Attributes:
      loss: ``loss(logits, labels, *, mask=None, **hparams) -> scalar`` of a loss without state.
      stateful: ``stateful(**hparams) -> StatefulLoss`` of a loss with state (it checks its own
        hyper-parameters when it is built).
      per_example: ``per_example(logits, labels, **hparams) -> [B]`` whose batch mean is the loss,
        for the losses that are one (what CSAM's eq. 4 reweights); None for the others.
    """

    loss: LossFn | None = None
    stateful: Callable[..., StatefulLoss] | None = None
    per_example: Callable[..., jax.Array] | None = None


LOSSES: Registry[LossSpec] = Registry("loss")


def _register(name: str, spec: LossSpec) -> None:
    """Registers ``spec``: its hyper-parameters and defaults are the keyword defaults of its signature.

    Its rules are its ``sam_jax.losses.hparams.RULES``, which the loss function checks as well when
    called directly (a loss with state that has none there checks its own when built).
    """
    parameters = inspect.signature(spec.loss or spec.stateful).parameters.values()
    defaults = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty and p.name != "mask"}
    LOSSES.register(name, spec, defaults=defaults, rules=RULES.get(name))


# Without ``per_example``, since they are not a mean of per-example terms: MMCE and MDCA (their
# penalties are functions of the whole batch), AdaFocal, CRL and BalCAL (state, pairs of examples,
# two heads) and csam itself (already reweighted).
_register("cross_entropy", LossSpec(loss=_plain(cross_entropy), per_example=cross_entropy_per_example))
_register("mse", LossSpec(loss=_plain(mse), per_example=mse_per_example))
_register("label_smoothing", LossSpec(loss=label_smoothing, per_example=label_smoothing_per_example))
_register("focal", LossSpec(loss=focal, per_example=focal_per_example))
_register("flsd53", LossSpec(loss=flsd53, per_example=flsd53_per_example))
_register("dual_focal", LossSpec(loss=dual_focal, per_example=dual_focal_per_example))
_register("mmce", LossSpec(loss=mmce))
_register("mdca", LossSpec(loss=mdca))
_register("mbls", LossSpec(loss=mbls, per_example=mbls_per_example))
_register("acls", LossSpec(loss=acls, per_example=acls_per_example))
_register("cpc", LossSpec(loss=cpc, per_example=cpc_per_example))
_register("confidence_penalty", LossSpec(loss=confidence_penalty, per_example=confidence_penalty_per_example))
_register("csam", LossSpec(loss=_csam))
_register("adafocal", LossSpec(stateful=adafocal))
_register("crl", LossSpec(stateful=crl))
_register("balcal", LossSpec(stateful=balcal))

PER_EXAMPLE_LOSSES: tuple[str, ...] = tuple(name for name, spec in LOSSES.items() if spec.per_example is not None)


def _bind(name: str, hparams: Mapping[str, float]) -> LossFn:
    """``fn(logits, labels, mask=None)``: loss ``name`` with ``hparams`` (a loss with state at its initial state)."""
    spec = LOSSES[name]
    if spec.stateful is not None:
        return at_initial_state(spec.stateful(**hparams))
    loss_fn = functools.partial(spec.loss, **hparams)

    def loss(logits: jax.Array, labels: jax.Array, mask=None) -> jax.Array:
        return loss_fn(logits, labels, mask=mask)

    return loss


@functools.cache
def _at_defaults(name: str) -> LossFn:
    """Loss ``name`` at its defaults, built once (a jitted step that closes over it traces once)."""
    return _bind(name, {})


def loss_hparam_defaults(name: str) -> dict[str, float]:
    """The hyper-parameters of loss ``name`` with their defaults (the config block ``loss.<name>``)."""
    return LOSSES.defaults(name)


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
    LOSSES.validate(name, hparams)
    return _bind(name, hparams) if hparams else _at_defaults(name)


def get_per_example_loss(name: str, **hparams: float) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``fn(logits, labels) -> [B]``: the per-example values whose batch mean is ``get_loss(name)``.

    Args:
      name: one of :data:`PER_EXAMPLE_LOSSES`.
      **hparams: as for :func:`get_loss`; the others keep their defaults.

    Raises:
      ValueError: for a loss without a per-example form, or as :func:`get_loss`.
    """
    LOSSES.validate(name, hparams)
    per_example = LOSSES[name].per_example
    if per_example is None:
        raise ValueError(
            f"loss {name!r} is not a mean of per-example terms (a batch-level penalty, a loss with "
            f"state or pairs, or csam itself); the losses with a per-example form are {list(PER_EXAMPLE_LOSSES)}."
        )
    return functools.partial(per_example, **{**LOSSES.defaults(name), **hparams})


def csam_descent_loss(base: str, gamma: float, base_hparams: Mapping[str, float] | None = None) -> LossFn:
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
    if base not in PER_EXAMPLE_LOSSES:
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
    LOSSES.validate(name, hparams)
    spec = LOSSES[name]
    if spec.stateful is not None:
        return spec.stateful(**hparams)
    return stateless(_bind(name, hparams))


__all__ = [
    "MIXINGS",
    "MixedObjective",
    "get_mixing",
    "AdaFocalState",
    "BalcalState",
    "CorrectnessHistory",
    "LOSSES",
    "LossSpec",
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
