"""The optimizer registry: each optimizer registered once, with its hyper-parameters and needs.

An :class:`OptimizerSpec` says everything the train loop, the evaluation and the experiments need
to know about an optimizer, so that none of them ever tests an optimizer's name:

- ``defaults``: its hyper-parameters (the config block ``optimizer.<name>``), each from the paper
  cited in :data:`OPTIMIZERS`' docstrings;
- ``build(hparams, context)``: the optax transformation (every one takes ``grad_fn``);
- what the train step must supply: the clean gradient at ``params`` (``uses_clean_gradient``), a
  separate descent loss built from the run's training loss (``descent_loss``), stacked sub-batches of size ``m``
  (``sub_batch_size``), per-example gradient moments (``per_example_moments``), the whole training set
  as one batch (``full_batch``);
- what evaluation and tracking may use: a posterior to sample for prediction
  (``posterior_sample``) and a perturbation radius (``perturbation_radius``).

Adding an optimizer is one module with its transformation plus one :func:`register` call here (or
in the user's own code before the config is validated); nothing in ``sam_jax.training`` changes.
:data:`OPTIMIZERS` is a ``sam_jax.models.registry.Registry`` (the shape models, losses and mixings
are registered in too): each spec declares the rule of every hyper-parameter (``rules``) and, for
rules that tie fields together, a ``validate`` of the whole block; bSAM, VOGN and IVON take theirs
from the tables their factories check (``sam_jax.optim.bsam.RULES``, ...).
"""

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sam_jax.losses import csam_descent_loss
from sam_jax.models.registry import NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, Registry, Rule
from sam_jax.optim.bsam import RULES as BSAM_RULES
from sam_jax.optim.bsam import bsam, bsam_sample
from sam_jax.optim.bulk_sgd import bulk_sgd
from sam_jax.optim.device_sharpness import PER_DEVICE
from sam_jax.optim.gsam import gsam, gsam_rho_schedule
from sam_jax.optim.ivon import RULES as IVON_RULES
from sam_jax.optim.ivon import ivon, ivon_sample
from sam_jax.optim.looksam import looksam
from sam_jax.optim.m_sharpness import m_sharpness_sam
from sam_jax.optim.sam import sam
from sam_jax.optim.swag import swag, swag_sample
from sam_jax.optim.variational import mean_field_vi, mean_field_vi_sample
from sam_jax.optim.vasso import vasso
from sam_jax.optim.vogn import RULES as VOGN_RULES
from sam_jax.optim.vogn import vogn, vogn_sample

Hparams = Mapping[str, Any]
LossFn = Callable[..., jax.Array]


class BuildContext(NamedTuple):
    """What a factory may need besides its own hyper-parameters.

    Attributes:
      learning_rate: the run's learning-rate schedule (a function of the step count).
      num_train: training examples N (bSAM's posterior scale).
      seed: the run's seed (optimizers that draw noise).
      blocks: every optimizer's hyper-parameter block by name, for optimizers that wrap another
        (a SAM-family ``base``).
      batch_size: examples per training step (the number of m-sharpness sub-batches is
        ``batch_size // m``).
      total_steps: optimizer steps of the run, over which ``learning_rate`` is evaluated by
        optimizers that follow its range (GSAM's radius); 0 when unknown.
    """

    learning_rate: optax.Schedule
    num_train: int
    seed: int
    blocks: Mapping[str, Hparams]
    batch_size: int
    total_steps: int = 0


def _nothing(hparams: Hparams) -> None:
    """The default of a spec's optional hooks: no check, no perturbation radius."""
    del hparams


def _training_loss(hparams: Hparams, loss_name: str, loss_hparams: Hparams) -> None:
    """The default descent loss: none of its own (``grad_fn`` differentiates the training loss)."""
    del hparams, loss_name, loss_hparams


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """One registered optimizer (see the module docstring for what each field is for).

    Attributes:
      name: the config name (``optimizer.name``) and the name of its block.
      defaults: hyper-parameter name -> default value.
      build: ``build(hparams, context) -> GradientTransformationExtraArgs``.
      validate: raises ``ValueError("<field> ...")`` for what ``rules`` cannot say (fields that
        constrain each other).
      reads: ``reads(hparams) -> names`` of the other blocks it uses (a SAM wrapper's base).
      uses_clean_gradient: False when every gradient comes from ``grad_fn`` (bSAM): the step then
        skips the backward pass at ``params``.
      descent_loss: ``descent_loss(hparams, loss_name, loss_hparams) -> loss_fn`` when ``grad_fn``
        differentiates another loss than the training loss ``loss_name`` (with its hyper-parameters
        ``loss_hparams``), e.g. CSAM's eq. (4) over it; None for the training loss. Raises
        ``ValueError`` for a training loss it is not defined for (checked at config validation).
      sub_batch_size: ``sub_batch_size(hparams) -> m`` (0 = no m-sharpness, ``PER_DEVICE`` = one
        sub-batch per device).
      per_example_moments: ``grad_fn`` returns the mean per-example gradient and the mean of the
        squared per-example gradients of each of the ``S`` sub-batches of ``m`` examples (one
        sub-batch when ``m`` is 0), each at the sub-batch's own stacked parameters, stacked
        ``[S, ...]`` (VOGN's Gauss-Newton diagonal).
      full_batch: the batch is the whole training set, in a fixed order (full-batch GD).
      posterior_sample: ``posterior_sample(params, opt_state, key, num_train) -> params`` for
        optimizers that learn a posterior (bSAM); None for a point estimate.
      recompute_batch_stats: a posterior sample predicts with BatchNorm statistics recomputed for it
        on the training data (SWAG), not with those of the trained parameters.
      perturbation_radius: ``perturbation_radius(hparams) -> rho`` of a sharpness-aware
        perturbation (for tracking curvature at the perturbed point), or None.
      summary: one line for ``--help`` and the docs.
      rules: hyper-parameter name -> the ``Rule`` its value must follow (``"sgd.momentum=1.5 must be
        in [0, 1)."``); every value is also checked to be of its default's type.
    """

    name: str
    defaults: Mapping[str, Any]
    build: Callable[[Hparams, BuildContext], optax.GradientTransformationExtraArgs]
    validate: Callable[[Hparams], None] = _nothing
    reads: Callable[[Hparams], tuple[str, ...]] = lambda hparams: ()
    uses_clean_gradient: bool = True
    descent_loss: Callable[[Hparams, str, Hparams], LossFn | None] = _training_loss
    sub_batch_size: Callable[[Hparams], int] = lambda hparams: 0
    per_example_moments: bool = False
    full_batch: bool = False
    posterior_sample: Callable[..., Any] | None = None
    recompute_batch_stats: bool = False
    perturbation_radius: Callable[[Hparams], float | None] = _nothing
    summary: str = ""
    rules: Mapping[str, Rule] = dataclasses.field(default_factory=dict)


OPTIMIZERS: Registry[OptimizerSpec] = Registry(
    "optimizer",
    unknown_field="{name}.{field} is not a hyper-parameter of {name}; it has {known}.",
    broken_rule="{name}.{field}={value} must be {requirement}.",
    typed=True,
)

# The optimizer of ``sam_jax.training.default_config()``.
DEFAULT_OPTIMIZER = "sgd"


def register(spec: OptimizerSpec) -> OptimizerSpec:
    """Adds ``spec`` to :data:`OPTIMIZERS` (a name can be registered once)."""

    def validate(hparams: Hparams) -> None:
        try:
            spec.validate(hparams)
        except ValueError as err:
            raise ValueError(f"{spec.name}.{err}") from err

    return OPTIMIZERS.register(spec.name, spec, defaults=spec.defaults, rules=spec.rules, check=validate)


def get_optimizer_spec(name: str) -> OptimizerSpec:
    """The registered spec of ``name``; ``ValueError`` listing the names otherwise."""
    return OPTIMIZERS.lookup(name)


def hparam_blocks(blocks: Mapping[str, Hparams]) -> dict[str, dict[str, Any]]:
    """Every registered optimizer's block: its defaults updated by ``blocks[name]`` where given.

    An optimizer registered after a config was made (its block is missing there) gets its defaults.
    """
    return {name: {**spec.defaults, **dict(blocks.get(name) or {})} for name, spec in OPTIMIZERS.items()}


def blocks_read(name: str, blocks: Mapping[str, Hparams]) -> tuple[str, ...]:
    """The hyper-parameter blocks optimizer ``name`` reads: its own and those it wraps."""
    spec = get_optimizer_spec(name)
    return (name, *spec.reads(blocks[name]))


def validate_hparams(name: str, hparams: Hparams) -> None:
    """Checks the block of ``name``: no unknown field, numbers where numbers are due, then its rules.

    Raises:
      ValueError: naming the field, e.g. ``"sam.rho=-1 must be >= 0."``.
    """
    OPTIMIZERS.validate(name, hparams)


def build_optimizer(name: str, context: BuildContext) -> optax.GradientTransformationExtraArgs:
    """The transformation of optimizer ``name`` with its block from ``context.blocks``.

    Every returned transformation accepts the ``grad_fn`` extra argument of the train step.
    """
    spec = get_optimizer_spec(name)
    return optax.with_extra_args_support(spec.build(context.blocks[name], context))


# --------------------------------------------------------------------------- rules

SAM_BASES = ("sgd", "adam", "adamw")

BASE = Rule(lambda value: value in SAM_BASES, f"one of {list(SAM_BASES)}")
# A whole number >= 1 (a config may give 5.0 for 5).
WHOLE_POSITIVE = Rule(lambda value: value >= 1 and int(value) == value, "a positive integer")
WHOLE_NON_NEGATIVE = Rule(lambda value: value >= 0 and int(value) == value, "an integer >= 0")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _num_sub_batches(m: int, batch_size: int) -> int:
    """Sub-batches of ``m`` examples per step; 0 (no split) when ``m`` is 0 or the whole batch."""
    return batch_size // m if 0 < m < batch_size else 0


def _rules_of(table: Mapping[str, Rule], *fields: str) -> dict[str, Rule]:
    """The rules of ``fields`` from a factory's table (the fields a config block shares with it)."""
    return {field: table[field] for field in fields}


def _without(hparams: Hparams, *fields: str) -> dict[str, Any]:
    """``hparams`` less ``fields`` (those the registry reads itself), as keyword arguments of a factory."""
    return {field: value for field, value in hparams.items() if field not in fields}


# --------------------------------------------------------------------------- plain optimizers


def _sgd(hparams: Hparams, context: BuildContext) -> optax.GradientTransformation:
    momentum = hparams["momentum"]
    return optax.chain(
        optax.add_decayed_weights(hparams["weight_decay"]),
        optax.sgd(context.learning_rate, momentum=momentum or None, nesterov=hparams["nesterov"] and momentum > 0),
    )


register(
    OptimizerSpec(
        "sgd",
        {"momentum": 0.9, "nesterov": False, "weight_decay": 0.0},
        _sgd,
        rules={"momentum": UNIT_INTERVAL, "weight_decay": NON_NEGATIVE},
        summary="SGD with (Nesterov) momentum; L2 weight decay added to the gradient.",
    )
)

register(
    OptimizerSpec(
        "gd",
        {"weight_decay": 0.0},
        lambda hparams, context: _sgd({**hparams, "momentum": 0.0, "nesterov": False}, context),
        rules={"weight_decay": NON_NEGATIVE},
        full_batch=True,
        summary="Full-batch gradient descent (the whole training set every step).",
    )
)

ADAM_RULES = {"b1": UNIT_INTERVAL, "b2": UNIT_INTERVAL, "eps": POSITIVE, "weight_decay": NON_NEGATIVE}

register(
    OptimizerSpec(
        "adam",
        {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
        lambda hparams, context: optax.chain(
            optax.add_decayed_weights(hparams["weight_decay"]),
            optax.adam(context.learning_rate, **_without(hparams, "weight_decay")),
        ),
        rules=ADAM_RULES,
        summary="Adam (Kingma & Ba 2015, arXiv:1412.6980); L2 weight decay added to the gradient.",
    )
)

register(
    OptimizerSpec(
        "adamw",
        {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 1e-4},
        lambda hparams, context: optax.adamw(context.learning_rate, **hparams),
        rules=ADAM_RULES,
        summary="AdamW (Loshchilov & Hutter 2019, arXiv:1711.05101): decoupled weight decay.",
    )
)

register(
    OptimizerSpec(
        "muon",
        {"beta": 0.95, "weight_decay": 0.0, "adam_b1": 0.9, "adam_b2": 0.999},
        lambda hparams, context: optax.contrib.muon(context.learning_rate, **hparams),
        rules={"beta": UNIT_INTERVAL, "adam_b1": UNIT_INTERVAL, "adam_b2": UNIT_INTERVAL, "weight_decay": NON_NEGATIVE},
        summary="Muon (Jordan et al. 2024) via optax.contrib.muon; Adam for non-matrix parameters.",
    )
)


# --------------------------------------------------------------------------- SAM family


def _around_base(
    name: str,
    defaults: Hparams,
    build: Callable[[Hparams, BuildContext], optax.GradientTransformationExtraArgs],
    *,
    summary: str,
    rules: Mapping[str, Rule] | None = None,
    **fields: Any,
) -> OptimizerSpec:
    """The spec of a sharpness-aware optimizer: radius ``rho`` >= 0 around the base optimizer ``base``.

    It reads the base's block and reports ``rho`` as its perturbation radius; ``fields`` are the
    other :class:`OptimizerSpec` fields (``sub_batch_size`` for m-sharpness, ``descent_loss``, ...).
    """
    return OptimizerSpec(
        name,
        defaults,
        build,
        reads=lambda hparams: (hparams["base"],),
        perturbation_radius=lambda hparams: hparams["rho"],
        summary=summary,
        rules={"rho": NON_NEGATIVE, "base": BASE, **(rules or {})},
        **fields,
    )


def _sharpness_aware(*, adaptive: bool = False, renormalize: bool = False):
    def build(hparams: Hparams, context: BuildContext) -> optax.GradientTransformationExtraArgs:
        base = build_optimizer(hparams["base"], context)
        m = int(hparams["m"])
        factory = m_sharpness_sam if m == PER_DEVICE or _num_sub_batches(m, context.batch_size) else sam
        return factory(
            base,
            hparams["rho"],
            adaptive=adaptive,
            eta=hparams.get("eta", 0.0) if adaptive else 0.0,
            renormalize=renormalize,
        )

    return build


# m-sharpness: examples per sub-batch, each with its own perturbation.
M_SHARPNESS = Rule(
    lambda m: int(m) == m and m >= PER_DEVICE,
    f"an integer: examples per sub-batch, 0 for none, or {PER_DEVICE} for one sub-batch per device",
)
SAM_DEFAULTS = {"rho": 0.05, "m": 0, "base": "sgd"}


def _csam_descent_loss(hparams: Hparams, loss_name: str, loss_hparams: Hparams) -> LossFn:
    """Eq. (4)'s reweighting of the training loss (FL+CSAM, ACLS+CSAM of Table S15 for focal, acls)."""
    return csam_descent_loss(loss_name, hparams["gamma"], loss_hparams)


def _m_sharpness_spec(name: str, defaults: Hparams, build, *, summary: str, rules=None, **fields) -> OptimizerSpec:
    """:func:`_around_base` with m-sharpness: the step splits the batch into sub-batches of ``m``."""
    return _around_base(
        name,
        defaults,
        build,
        summary=summary,
        rules={"m": M_SHARPNESS, **(rules or {})},
        sub_batch_size=lambda hparams: int(hparams["m"]),
        **fields,
    )


register(
    _m_sharpness_spec(
        "sam",
        SAM_DEFAULTS,
        _sharpness_aware(),
        summary="SAM (Foret et al. 2020, arXiv:2010.01412, eq. 2) around any base; m-sharpness with m > 0, "
        "one perturbation per device shard with m = -1.",
    )
)

register(
    _m_sharpness_spec(
        "asam",
        {"rho": 0.5, "eta": 0.01, "m": 0, "base": "sgd"},
        _sharpness_aware(adaptive=True),
        rules={"eta": NON_NEGATIVE},
        summary="Adaptive SAM (Kwon et al. 2021, arXiv:2102.11600): rho 0.5 and eta 0.01 as for CIFAR.",
    )
)

register(
    _m_sharpness_spec(
        "ssam",
        SAM_DEFAULTS,
        _sharpness_aware(renormalize=True),
        summary="Stable SAM (arXiv:2401.07250): descent gradient rescaled to the ascent gradient's norm.",
    )
)

register(
    _m_sharpness_spec(
        "csam",
        {"rho": 0.05, "gamma": 1.0, "m": 0, "base": "sgd"},
        _sharpness_aware(),
        rules={
            "gamma": Rule(
                lambda gamma: math.isfinite(gamma) and gamma >= 0,
                "finite and >= 0 (eq. 4); Theorem 3 (the entropy-penalty bound) needs gamma <= 2, and "
                "Figure S6 of Tan et al. 2025 sweeps gamma up to 3",
            )
        },
        descent_loss=_csam_descent_loss,
        summary="Calibrated SAM (Tan et al. 2025, arXiv:2505.23866, eq. 4, Algorithm 1): SAM whose "
        "descent step uses the CSAM loss, eq. 4's reweighting of the training loss per example "
        "(cross-entropy: eq. 4; focal, acls: FL+CSAM, ACLS+CSAM of Table S15); gamma 1 gave the lowest "
        "ECE in its Figure S6.",
    )
)

# No m-sharpness: VaSSO's moving average is of the whole batch's gradient, and one average per
# sub-batch would be another algorithm.
register(
    _around_base(
        "vasso",
        {"rho": 0.05, "theta": 0.9, "base": "sgd"},
        lambda hparams, context: vasso(
            build_optimizer(hparams["base"], context), hparams["rho"], theta=hparams["theta"]
        ),
        rules={"theta": Rule(lambda theta: 0 < theta <= 1, "in (0, 1]; 1 is SAM")},
        summary="VaSSO (Li & Giannakis 2023, arXiv:2309.15639, Sec. 3): SAM whose ascent direction is "
        "a moving average of the gradients, d = (1 - theta) d + theta g; theta 0.9 as in the authors' code.",
    )
)


def _learning_rate_range(context: BuildContext) -> tuple[float, float]:
    """The largest and smallest learning rate of the run's steps ``0 .. total_steps - 1``."""
    if context.total_steps < 1:
        raise ValueError(
            "GSAM's radius schedule (rho_min < rho) needs the run's total_steps in the BuildContext, "
            "to find the learning rate's range; set gsam.rho_min = gsam.rho for a constant radius."
        )
    values = np.asarray(jax.vmap(context.learning_rate)(jnp.arange(context.total_steps)))
    return float(values.max()), float(values.min())


def _gsam(hparams: Hparams, context: BuildContext) -> optax.GradientTransformationExtraArgs:
    rho = hparams["rho"]
    if hparams["rho_min"] != rho:
        lr_max, lr_min = _learning_rate_range(context)
        rho = gsam_rho_schedule(context.learning_rate, rho, hparams["rho_min"], lr_max=lr_max, lr_min=lr_min)
    return gsam(build_optimizer(hparams["base"], context), rho, alpha=hparams["alpha"])


def _check_gsam(hparams: Hparams) -> None:
    _require(
        0 <= hparams["rho_min"] <= hparams["rho"],
        f"rho_min={hparams['rho_min']} must be in [0, rho={hparams['rho']}]; rho_min = rho is a constant radius.",
    )


# rho is GSAM's rho_max; the radius falls to rho_min with the learning rate over the run (Algorithm 1,
# step 0), lr_max and lr_min being the largest and smallest learning rate of the run's steps. No
# m-sharpness (the decomposition is of the whole batch's gradients).
register(
    _around_base(
        "gsam",
        {"rho": 0.05, "rho_min": 0.05, "alpha": 0.2, "base": "sgd"},
        _gsam,
        rules={"alpha": NON_NEGATIVE},
        validate=_check_gsam,
        summary="GSAM (Zhuang et al. 2022, arXiv:2203.08065, Algorithm 1): SAM's perturbed gradient minus "
        "alpha times the clean gradient's part orthogonal to it; rho_min < rho ties the radius to the "
        "learning rate; alpha 0.2 as in the authors' CIFAR example (juntang-zhuang/GSAM).",
    )
)

# No m-sharpness: the stored orthogonal component is of the whole batch's gradients.
register(
    _around_base(
        "looksam",
        {"rho": 0.05, "k": 5, "alpha": 0.7, "base": "sgd"},
        lambda hparams, context: looksam(
            build_optimizer(hparams["base"], context), hparams["rho"], k=int(hparams["k"]), alpha=hparams["alpha"]
        ),
        rules={
            "alpha": NON_NEGATIVE,
            "k": Rule(WHOLE_POSITIVE.holds, "a positive integer (the SAM gradient every k steps)"),
        },
        summary="LookSAM (Liu et al. 2022, arXiv:2203.02714, Algorithm 1): the SAM gradient every k steps, "
        "the clean gradient plus alpha ||g|| / ||g_v|| times the stored orthogonal part g_v in between; "
        "k 5 as its LookSAM-5, alpha 0.7 as the public LookSAM implementation (rollovd/LookSAM).",
    )
)


# --------------------------------------------------------------------------- bSAM, BulkSGD

# The rules bSAM's and VOGN's blocks share with their factories; m (examples per sub-batch) is the
# registry's own.
POSTERIOR_FIELDS = ("beta1", "beta2", "prior_precision", "damping", "init_precision")

register(
    OptimizerSpec(
        "bsam",
        {
            "rho": 0.01,
            "beta1": 0.9,
            "beta2": 0.999,
            "prior_precision": 25.0,
            "damping": 0.1,
            "init_precision": 1.0,
            "m": 0,
        },
        lambda hparams, context: bsam(
            context.learning_rate,
            num_data=context.num_train,
            seed=context.seed,
            num_sub_batches=_num_sub_batches(int(hparams["m"]), context.batch_size),
            **_without(hparams, "m"),
        ),
        rules={**_rules_of(BSAM_RULES, "rho", *POSTERIOR_FIELDS), "m": WHOLE_NON_NEGATIVE},
        uses_clean_gradient=False,
        sub_batch_size=lambda hparams: int(hparams["m"]),
        posterior_sample=bsam_sample,
        summary="Bayesian SAM (Möllenhoff & Khan 2022, arXiv:2210.01620, Algorithm 1); "
        "prior_precision is N*delta (25 in its CIFAR-10 Table 7 setting); m > 0 gives every sub-batch "
        "of m examples its own noise and perturbation (the paper's m-sharpness).",
    )
)


def _check_bulk(hparams: Hparams) -> None:
    _require(hparams["k"] < hparams["num_iters"], f"k={hparams['k']} must be < num_iters={hparams['num_iters']}.")


register(
    OptimizerSpec(
        "bulk_sgd",
        {"k": 1, "num_iters": 20, "momentum": 0.0},
        lambda hparams, context: bulk_sgd(
            context.learning_rate,
            int(hparams["k"]),
            num_iters=int(hparams["num_iters"]),
            momentum=hparams["momentum"],
            seed=context.seed,
        ),
        _check_bulk,
        rules={"num_iters": WHOLE_POSITIVE, "k": WHOLE_POSITIVE, "momentum": UNIT_INTERVAL},
        summary="BulkSGD (Song, Ahn & Yun 2024, arXiv:2405.16002): SGD with the top-k Hessian "
        "eigendirections projected out of the gradient.",
    )
)


# --------------------------------------------------------------------------- VOGN


def _vogn(hparams: Hparams, context: BuildContext) -> optax.GradientTransformationExtraArgs:
    m = int(hparams["m"])
    if m and context.batch_size % m:
        raise ValueError(f"vogn.m={m} must divide the batch size {context.batch_size}.")
    return vogn(
        context.learning_rate,
        context.num_train,
        context.batch_size,
        num_samples=_num_sub_batches(m, context.batch_size) or 1,
        seed=context.seed,
        **_without(hparams, "m"),
    )


# Per-example gradient moments of the sub-batches of vogn.m examples, each at its own weight sample
# (vogn.m = 0: one sample for the whole batch). Each example's forward pass is a batch of one, which
# leaves BatchNorm no batch to normalise over: use VOGN with models without BatchNorm.
register(
    OptimizerSpec(
        "vogn",
        {
            "beta1": 0.9,
            "beta2": 0.999,
            "prior_precision": 25.0,
            "damping": 0.01,
            "init_precision": 1.0,
            "m": 0,
        },
        _vogn,
        rules={**_rules_of(VOGN_RULES, *POSTERIOR_FIELDS), "m": WHOLE_NON_NEGATIVE},
        uses_clean_gradient=False,
        sub_batch_size=lambda hparams: int(hparams["m"]),
        per_example_moments=True,
        posterior_sample=vogn_sample,
        summary="VOGN (Osawa et al. 2019, arXiv:1906.02506, Algorithm 1): natural-gradient VI with the "
        "per-example squared-gradient (Gauss-Newton) precision; m > 0 gives every m examples their own "
        "weight sample (Möllenhoff & Khan 2022, App. H: 16 sub-batches of 128 is m = 8); defaults from "
        "their Table 6 CIFAR row.",
    )
)


# --------------------------------------------------------------------------- SWAG


def _swag(hparams: Hparams, context: BuildContext) -> optax.GradientTransformationExtraArgs:
    """The base optimizer on the run's schedule until ``start_step``, then at the constant collection rate."""
    start = int(hparams["start_step"])
    schedule = optax.join_schedules(
        [context.learning_rate, optax.constant_schedule(hparams["collect_learning_rate"])], [start]
    )
    base = build_optimizer(hparams["base"], context._replace(learning_rate=schedule))
    return swag(base, start_step=start, collect_every=int(hparams["collect_every"]), rank=int(hparams["rank"]))


register(
    OptimizerSpec(
        "swag",
        {"base": "sgd", "start_step": 0, "collect_learning_rate": 0.01, "collect_every": 100, "rank": 20},
        _swag,
        rules={
            "base": BASE,
            "start_step": WHOLE_NON_NEGATIVE,
            "collect_every": WHOLE_POSITIVE,
            "rank": WHOLE_POSITIVE,
            "collect_learning_rate": POSITIVE,
        },
        reads=lambda hparams: (hparams["base"],),
        posterior_sample=swag_sample,
        recompute_batch_stats=True,
        summary="SWAG (Maddox et al. 2019, arXiv:1902.02476): the base optimizer on the run's schedule for "
        "start_step steps, then at collect_learning_rate, collecting the moments and a rank-`rank` deviation "
        "matrix every collect_every steps; rank 20 and every 100 steps as Möllenhoff & Khan 2022, App. H.",
    )
)


# --------------------------------------------------------------------------- mean-field VI

# prior_precision is that of N(0, I / prior_precision) over the whole training set; the
# per-example objective divides the KL by N (as bSAM's prior_precision). init_std 1e-3 is well
# below the scale of standard initialisations, so the first steps are those of Adam on the means.
register(
    OptimizerSpec(
        "vi",
        {"prior_precision": 1.0, "init_std": 1e-3, "b1": 0.9, "b2": 0.999},
        lambda hparams, context: mean_field_vi(context.learning_rate, context.num_train, seed=context.seed, **hparams),
        rules={"prior_precision": POSITIVE, "init_std": POSITIVE, "b1": UNIT_INTERVAL, "b2": UNIT_INTERVAL},
        uses_clean_gradient=False,
        posterior_sample=mean_field_vi_sample,
        summary="Mean-field Gaussian VI, Bayes by Backprop (Blundell et al. 2015, arXiv:1505.05424), "
        "with Adam on the means and softplus-scales; the 'SVI' baseline of Ovadia et al. 2019 (arXiv:1906.02530).",
    )
)


# --------------------------------------------------------------------------- IVON


def _ivon_posterior_sample(params: Any, opt_state: Any, key: jax.Array, num_train: int) -> Any:
    del num_train  # sigma is in the state
    return ivon_sample(params, opt_state, key)


# ess 0 stands for N, the training-set size (Algorithm 1's lam = N); clip_radius 0 for no clipping.
# The other defaults are those of the authors' ivon package.
register(
    OptimizerSpec(
        "ivon",
        {"ess": 0.0, "hess_init": 1.0, "beta1": 0.9, "beta2": 0.99999, "weight_decay": 1e-4, "clip_radius": 0.0},
        lambda hparams, context: ivon(
            context.learning_rate,
            hparams["ess"] or context.num_train,
            clip_radius=hparams["clip_radius"] or math.inf,
            seed=context.seed,
            **_without(hparams, "ess", "clip_radius"),
        ),
        rules={
            **_rules_of(IVON_RULES, "hess_init", "beta1", "beta2", "weight_decay"),
            "ess": NON_NEGATIVE,
            "clip_radius": NON_NEGATIVE,
        },
        uses_clean_gradient=False,
        posterior_sample=_ivon_posterior_sample,
        summary="IVON (Shen et al. 2024, arXiv:2402.17641, Algorithm 1): variational online Newton with a "
        "reparameterised Hessian estimate; ess 0 is N; predicts with posterior samples.",
    )
)
