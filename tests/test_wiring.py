"""Wiring: the loop's first steps equal the transformation built by hand from the documented formula.

For every registered optimizer (and every learning-rate schedule) the run is built with the loop's
own machinery (``build_run`` on a tiny in-memory float64 problem), three steps are taken with
``run.train_step`` on the batches the loop would feed, and the parameters (and optimizer state)
are compared with a reference assembled by hand from optax primitives and ``sam_jax.optim``
transformations, applied to the same batches with ``grad_fn = jax.grad`` of the same loss.

Every case changes each hyper-parameter of the blocks it reads from its default, and
``test_every_changed_field_matters`` checks that reverting any one of them changes the reference
steps, so a field the loop dropped on the way to the transformation cannot go unnoticed.
"""

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import sam_jax.optim
from sam_jax import data, models
from sam_jax.losses import csam_loss
from sam_jax.optim import (
    OPTIMIZERS,
    OptimizerSpec,
    bsam,
    gsam,
    gsam_rho_schedule,
    ivon,
    looksam,
    m_sharpness_sam,
    mean_field_vi,
    project_out_top_hessian_directions,
    sam,
    split_into_sub_batches,
    swag,
    vasso,
    vogn,
)
from sam_jax.training import (
    Hook,
    RunData,
    build_run,
    check_run_data,
    default_config,
    learning_rate_schedule,
    optimizer_hparams,
    train_and_evaluate,
    validate_config,
)

pytestmark = pytest.mark.usefixtures("float64")

NUM_TRAIN, NUM_FEATURES, NUM_CLASSES = 64, 6, 3
BATCH_SIZE, NUM_STEPS, STEPS_TAKEN = 16, 6, 3
LEARNING_RATE, SEED = 0.1, 3  # a non-zero seed, so that a dropped seed shows
RTOL, ATOL = 1e-10, 1e-13


def _dataset(rng: np.random.Generator, n: int) -> data.ArrayDataset:
    images = rng.normal(size=(n, NUM_FEATURES))
    # Labels from a random linear map: learnable, so some true-class probabilities exceed 1/2
    # (where CSAM's loss differs from cross-entropy) within a few steps.
    labels = np.argmax(images @ rng.normal(size=(NUM_FEATURES, NUM_CLASSES)), axis=1).astype(np.int32)
    return data.ArrayDataset(images, labels, NUM_CLASSES)


def _run_data() -> RunData:
    rng = np.random.default_rng(0)
    return RunData(_dataset(rng, NUM_TRAIN), _dataset(rng, 16), _dataset(rng, 16), NUM_CLASSES, None)


RUN_DATA = _run_data()


def tiny_config(
    name: str = "sgd", blocks: Mapping[str, Mapping[str, Any]] | None = None, **optimizer_fields
) -> ml_collections.ConfigDict:
    """An MLP (one hidden layer of 8, float64 compute) on ``RUN_DATA``; ``blocks`` override
    ``optimizer.<block>.<field>``, ``optimizer_fields`` the top-level ``optimizer.*``."""
    config = default_config()
    config.seed = SEED
    config.data.name = "digits"  # validated only; the data are passed to build_run
    config.model.name = "mlp"
    config.model.kwargs = ml_collections.ConfigDict({"widths": (8,), "dtype": "float64"})
    config.optimizer.name = name
    config.optimizer.learning_rate = LEARNING_RATE
    for field, value in optimizer_fields.items():
        config.optimizer[field] = value
    for block, values in (blocks or {}).items():
        for field, value in values.items():
            config.optimizer[block][field] = value
    config.batch_size = BATCH_SIZE
    config.num_steps = NUM_STEPS
    config.eval_batch_size = 64
    config.progress_bar = False
    return config


def _as_float64(tree: Any) -> Any:
    # Flax's Dense keeps float32 parameters even under jax_enable_x64 (its param_dtype), so the
    # loop's initial state is promoted; the optimizer states at init are zeros, constants or
    # copies of the parameters, so promoting them is the same as initialising at float64.
    return jax.tree.map(lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def loop_batches(run, config) -> list[dict[str, jax.Array]]:
    """The first ``STEPS_TAKEN`` batches the loop feeds (``_train`` in sam_jax/training/loop.py)."""
    if run.optimizer.full_batch:
        whole = {
            "image": RUN_DATA.train.images,
            "label": RUN_DATA.train.labels,
            "index": np.arange(NUM_TRAIN, dtype=np.int32),
        }
        assert run.batch_size == NUM_TRAIN
        batches = [whole] * STEPS_TAKEN
    else:
        assert run.batch_size == BATCH_SIZE
        batches = list(
            itertools.islice(data.train_batches(run.data.train, run.batch_size, seed=config.seed, epoch=0), STEPS_TAKEN)
        )
    return [{k: jnp.asarray(v) for k, v in batch.items()} for batch in batches]


def loop_steps(config: ml_collections.ConfigDict):
    """Builds the run as the loop does and takes ``STEPS_TAKEN`` steps; (run, init state, final state)."""
    run = build_run(config, RUN_DATA)
    state = init = _as_float64(run.init_state)
    for batch in loop_batches(run, config):
        state, _ = run.train_step(state, batch)
    return run, init, state


# --------------------------------------------------------------------------- hand-built references


def _cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _objective(model, loss_of):
    def value(params, batch):
        return loss_of(model.apply({"params": params}, batch["image"]), batch["label"])

    return value


def _sgd(h, lr):
    # sgd block: L2 weight decay added to the gradient, then (Nesterov) heavy-ball momentum.
    return optax.chain(
        optax.add_decayed_weights(h["weight_decay"]),
        optax.trace(decay=h["momentum"], nesterov=h["nesterov"]),
        optax.scale_by_learning_rate(lr),
    )


def _adam(h, lr):
    return optax.chain(
        optax.add_decayed_weights(h["weight_decay"]),
        optax.scale_by_adam(b1=h["b1"], b2=h["b2"], eps=h["eps"]),
        optax.scale_by_learning_rate(lr),
    )


def _adamw(h, lr):
    # Decoupled weight decay (Loshchilov & Hutter): added to Adam's direction, scaled by lr.
    return optax.chain(
        optax.scale_by_adam(b1=h["b1"], b2=h["b2"], eps=h["eps"]),
        optax.add_decayed_weights(h["weight_decay"]),
        optax.scale_by_learning_rate(lr),
    )


BASES = {"sgd": _sgd, "adam": _adam, "adamw": _adamw}


def _sam_family(name, options=lambda h: {}):
    """SAM (Foret et al. eq. 2) around the hand-built base; m-sharpness when m > 0."""

    def build(b, lr, n, seed):
        h = b[name]
        base = BASES[h["base"]](b[h["base"]], lr)
        return (m_sharpness_sam if h["m"] else sam)(base, h["rho"], **options(h))

    return build


COSINE = optax.cosine_decay_schedule(LEARNING_RATE, NUM_STEPS)  # the default: to 0 at the last step


@dataclasses.dataclass(frozen=True)
class Case:
    """One wiring check: non-default fields of the blocks read, and the reference built by hand.

    ``reference(blocks, learning_rate, num_train, seed)`` gets every block with the overrides
    applied; ``descent_gamma(blocks)`` is CSAM's gamma (grad_fn then differentiates its loss);
    ``m(blocks)`` the m-sharpness sub-batch size; ``per_example`` True when ``grad_fn`` returns
    per-example gradients of each sub-batch (VOGN); ``clean_gradient`` False when ``grads`` is None.
    """

    id: str
    name: str
    overrides: Mapping[str, Mapping[str, Any]]
    reference: Callable[..., optax.GradientTransformation]
    m: Callable[[Mapping], int] = lambda b: 0
    per_example: bool = False
    descent_gamma: Callable[[Mapping], float | None] = lambda b: None
    clean_gradient: bool = True
    # Jit the reference step once, with the float hyper-parameters as traced arguments: cheaper
    # than eager where the step has many distinct ops (Adam) or loops that recompile at every
    # eager call (Muon's Newton-Schulz, BulkSGD's Lanczos). Not for references whose factories
    # check a hyper-parameter in Python (sam, bsam), which cannot take a traced value.
    jit_reference: bool = False
    # The run's learning-rate schedule: ``optimizer.*`` fields and the optax schedule built by hand
    # (each schedule goes through the loop once, with the optimizer of one case).
    schedule_fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    schedule: optax.Schedule = COSINE


SGD_CHANGED = {"momentum": 0.7, "nesterov": True, "weight_decay": 1e-3}
ADAM_CHANGED = {"b1": 0.8, "b2": 0.99, "eps": 1e-6, "weight_decay": 1e-3}

CASES = [
    Case(
        "sgd+warmup_cosine",
        "sgd",
        {"sgd": SGD_CHANGED},
        lambda b, lr, n, s: _sgd(b["sgd"], lr),
        schedule_fields={"warmup_steps": 2},
        schedule=optax.join_schedules(
            [optax.linear_schedule(0.0, LEARNING_RATE, 2), optax.cosine_decay_schedule(LEARNING_RATE, NUM_STEPS - 2)],
            [2],
        ),
    ),
    Case(
        "gd+constant",
        "gd",
        {"gd": {"weight_decay": 1e-2}},
        lambda b, lr, n, s: optax.chain(
            optax.add_decayed_weights(b["gd"]["weight_decay"]), optax.scale_by_learning_rate(lr)
        ),
        schedule_fields={"schedule": "constant"},
        schedule=optax.constant_schedule(LEARNING_RATE),
    ),
    Case(
        "adam+step",
        "adam",
        {"adam": ADAM_CHANGED},
        lambda b, lr, n, s: _adam(b["adam"], lr),
        # boundaries at int(0.25 * 6) = 1 and int(0.5 * 6) = 3
        schedule_fields={"schedule": "step", "step_boundaries": (0.25, 0.5), "step_factor": 0.3},
        schedule=optax.piecewise_constant_schedule(LEARNING_RATE, {1: 0.3, 3: 0.3}),
        jit_reference=True,
    ),
    Case("adamw", "adamw", {"adamw": ADAM_CHANGED}, lambda b, lr, n, s: _adamw(b["adamw"], lr)),
    Case(
        "muon",
        "muon",
        {"muon": {"beta": 0.8, "weight_decay": 1e-2, "adam_b1": 0.8, "adam_b2": 0.99}},
        lambda b, lr, n, s: optax.contrib.muon(
            lr,
            beta=b["muon"]["beta"],
            weight_decay=b["muon"]["weight_decay"],
            adam_b1=b["muon"]["adam_b1"],
            adam_b2=b["muon"]["adam_b2"],
        ),
        jit_reference=True,
    ),
    Case("sam", "sam", {"sam": {"rho": 0.2}, "sgd": SGD_CHANGED}, _sam_family("sam")),
    Case("sam-adam", "sam", {"sam": {"rho": 0.2, "base": "adam"}, "adam": ADAM_CHANGED}, _sam_family("sam")),
    Case(
        "sam-adamw-m4",
        "sam",
        {"sam": {"rho": 0.2, "base": "adamw", "m": 4}, "adamw": ADAM_CHANGED},
        _sam_family("sam"),
        m=lambda b: b["sam"]["m"],
    ),
    Case(
        "asam",
        "asam",
        {"asam": {"rho": 0.3, "eta": 0.05}, "sgd": SGD_CHANGED},
        _sam_family("asam", lambda h: {"adaptive": True, "eta": h["eta"]}),
    ),
    Case(
        "ssam", "ssam", {"ssam": {"rho": 0.2}, "sgd": SGD_CHANGED}, _sam_family("ssam", lambda h: {"renormalize": True})
    ),
    Case(
        "csam",
        "csam",
        {"csam": {"rho": 0.2, "gamma": 1.5}, "sgd": SGD_CHANGED},
        _sam_family("csam"),
        descent_gamma=lambda b: b["csam"]["gamma"],
    ),
    Case(
        "vasso",
        "vasso",
        {"vasso": {"rho": 0.2, "theta": 0.5}, "sgd": SGD_CHANGED},
        lambda b, lr, n, s: vasso(_sgd(b["sgd"], lr), b["vasso"]["rho"], theta=b["vasso"]["theta"]),
    ),
    Case(
        "bsam",
        "bsam",
        {
            "bsam": {
                "rho": 0.05,
                "beta1": 0.8,
                "beta2": 0.99,
                "prior_precision": 10.0,
                "damping": 0.3,
                "init_precision": 2.0,
            }
        },
        lambda b, lr, n, s: bsam(
            lr,
            b["bsam"]["rho"],
            n,
            beta1=b["bsam"]["beta1"],
            beta2=b["bsam"]["beta2"],
            prior_precision=b["bsam"]["prior_precision"],
            damping=b["bsam"]["damping"],
            init_precision=b["bsam"]["init_precision"],
            seed=s,
        ),
        clean_gradient=False,
    ),
    Case(
        "vogn",
        "vogn",
        {
            "vogn": {
                "beta1": 0.8,
                "beta2": 0.99,
                "prior_precision": 10.0,
                "damping": 0.2,
                "init_precision": 2.0,
                "m": 4,
            }
        },
        lambda b, lr, n, s: vogn(
            lr,
            n,
            BATCH_SIZE,
            beta1=b["vogn"]["beta1"],
            beta2=b["vogn"]["beta2"],
            prior_precision=b["vogn"]["prior_precision"],
            damping=b["vogn"]["damping"],
            init_precision=b["vogn"]["init_precision"],
            num_samples=BATCH_SIZE // b["vogn"]["m"] if b["vogn"]["m"] else 1,
            seed=s,
        ),
        m=lambda b: b["vogn"]["m"],  # vogn.m examples share a weight sample
        per_example=True,
        clean_gradient=False,
    ),
    Case(
        "swag",
        "swag",
        # Collection from step 2 (one step at the run's schedule), a snapshot every step, rank 2 < 3 steps.
        {"swag": {"start_step": 1, "collect_learning_rate": 0.03, "collect_every": 1, "rank": 2}, "sgd": SGD_CHANGED},
        lambda b, lr, n, s: swag(
            _sgd(
                b["sgd"],
                optax.join_schedules(
                    [lr, optax.constant_schedule(b["swag"]["collect_learning_rate"])], [b["swag"]["start_step"]]
                ),
            ),
            start_step=b["swag"]["start_step"],
            collect_every=b["swag"]["collect_every"],
            rank=b["swag"]["rank"],
        ),
    ),
    Case(
        "bulk_sgd",
        "bulk_sgd",
        {"bulk_sgd": {"k": 2, "num_iters": 8, "momentum": 0.5}},
        lambda b, lr, n, s: optax.chain(
            project_out_top_hessian_directions(b["bulk_sgd"]["k"], num_iters=b["bulk_sgd"]["num_iters"], seed=s),
            optax.trace(decay=b["bulk_sgd"]["momentum"]),
            optax.scale_by_learning_rate(lr),
        ),
        jit_reference=True,
    ),
    Case(
        "vi",
        "vi",
        # softplus^-1 of init_std is -4 up to rounding: the float32 rho of the loop's initial state
        # (promoted to float64) then equals the reference's float64 rho to ~1e-16.
        {"vi": {"prior_precision": 3.0, "init_std": math.log1p(math.exp(-4.0)), "b1": 0.8, "b2": 0.99}},
        lambda b, lr, n, s: mean_field_vi(
            lr,
            n,
            prior_precision=b["vi"]["prior_precision"],
            init_std=b["vi"]["init_std"],
            b1=b["vi"]["b1"],
            b2=b["vi"]["b2"],
            seed=s,
        ),
        clean_gradient=False,
    ),
]


def _gsam_reference(b, lr, n, s):
    # Algorithm 1, step 0, over the run's learning rates (steps 0 .. NUM_STEPS - 1).
    rates = [float(lr(t)) for t in range(NUM_STEPS)]
    h = b["gsam"]
    rho = gsam_rho_schedule(lr, h["rho"], h["rho_min"], lr_max=max(rates), lr_min=min(rates))
    return gsam(_sgd(b["sgd"], lr), rho, alpha=h["alpha"])


def _ivon_reference(b, lr, n, s):
    h = b["ivon"]  # ess 0 is N, clip_radius 0 is none (the block's conventions)
    return ivon(
        lr,
        h["ess"] or n,
        hess_init=h["hess_init"],
        beta1=h["beta1"],
        beta2=h["beta2"],
        weight_decay=h["weight_decay"],
        clip_radius=h["clip_radius"] or math.inf,
        seed=s,
    )


CASES += [
    Case("gsam", "gsam", {"gsam": {"rho": 0.2, "rho_min": 0.02, "alpha": 0.4}, "sgd": SGD_CHANGED}, _gsam_reference),
    Case(
        "looksam",
        "looksam",
        {"looksam": {"rho": 0.2, "k": 2, "alpha": 0.4}, "sgd": SGD_CHANGED},
        lambda b, lr, n, s: looksam(
            _sgd(b["sgd"], lr), b["looksam"]["rho"], k=b["looksam"]["k"], alpha=b["looksam"]["alpha"]
        ),
    ),
    Case(
        "ivon",
        "ivon",
        # h0 and delta are exact in float32 and ess (h0 + delta) = 64, so the loop's float32 initial
        # state (h0, sigma = 1/8, promoted to float64) equals the reference's float64 one.
        {
            "ivon": {
                "ess": 128.0,
                "hess_init": 0.484375,
                "beta1": 0.8,
                "beta2": 0.9,
                "weight_decay": 0.015625,
                "clip_radius": 0.5,
            }
        },
        _ivon_reference,
        clean_gradient=False,
    ),
]
CASES_BY_NAME = {name: [c for c in CASES if c.name == name] for name in {c.name for c in CASES}}
# Every registered optimizer (collected at import, so a new built-in one needs a case here).
REGISTERED_CASES = [case for name in sorted(OPTIMIZERS) for case in CASES_BY_NAME.get(name, [name])]


def _all_blocks(overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    blocks = {name: dict(spec.defaults) for name, spec in OPTIMIZERS.items()}
    for block, values in overrides.items():
        blocks[block].update(values)
    return blocks


def _float_fields(case: Case) -> dict[str, dict[str, float]]:
    return {
        block: {f: v for f, v in values.items() if isinstance(v, float)} for block, values in case.overrides.items()
    }


def reference_stepper(case: Case, blocks, model, learning_rate):
    """``step(params, opt_state, batch, floats)`` of the hand-built reference.

    ``floats`` ({block: {field: value}}) override ``blocks`` inside the step, so a jitted step
    compiles once for every value of them.
    """
    ascent = _objective(model, _cross_entropy)
    m = case.m(blocks)

    def step(params, opt_state, batch, floats):
        b = {name: {**values, **floats.get(name, {})} for name, values in blocks.items()}
        tx = case.reference(b, learning_rate, NUM_TRAIN, SEED)  # the seed enters through init only
        gamma = case.descent_gamma(b)
        descent = ascent if gamma is None else _objective(model, lambda z, y: csam_loss(z, y, gamma))
        batch = {"image": batch["image"], "label": batch["label"]}
        if case.per_example:  # m = 0: one sub-batch of the whole batch
            sub_batches = split_into_sub_batches(batch, m or len(batch["label"]))
            grads = None
            example_grad = lambda p, x, y: jax.grad(descent)(p, {"image": x[None], "label": y[None]})

            def moments(p, xs, ys):  # the mean of one sub-batch's per-example gradients and of their squares
                g = jax.vmap(example_grad, (None, 0, 0))(p, xs, ys)
                return jax.tree.map(lambda gi: gi.mean(0), g), jax.tree.map(lambda gi: (gi * gi).mean(0), g)

            def grad_fn(stacked_params):
                return jax.vmap(moments)(stacked_params, sub_batches["image"], sub_batches["label"])
        elif m:
            sub_batches = split_into_sub_batches(batch, m)
            grads = jax.vmap(jax.grad(ascent), (None, 0))(params, sub_batches)

            def grad_fn(stacked_params):
                return jax.vmap(jax.grad(descent))(stacked_params, sub_batches)
        else:
            grads = jax.grad(ascent)(params, batch) if case.clean_gradient else None

            def grad_fn(p):
                return jax.grad(descent)(p, batch)

        updates, opt_state = tx.update(grads, opt_state, params, grad_fn=grad_fn)
        return optax.apply_updates(params, updates), opt_state

    return jax.jit(step) if case.jit_reference else step


def reference_steps(case, blocks, model, params, batches, learning_rate, *, seed=SEED, floats=None, step=None):
    """``STEPS_TAKEN`` steps of the hand-built reference from ``params``; (params, opt_state)."""
    step = step or reference_stepper(case, blocks, model, learning_rate)
    # Off the run's mesh, so that a jitted reference step traces once.
    params = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), params)
    opt_state = case.reference(blocks, learning_rate, NUM_TRAIN, seed).init(params)
    for batch in batches:
        params, opt_state = step(params, opt_state, batch, floats or {})
    return params, opt_state


def assert_trees_close(actual, expected, rtol=RTOL, atol=ATOL):
    actual_leaves, expected_leaves = jax.tree.leaves(actual), jax.tree.leaves(expected)
    assert len(actual_leaves) == len(expected_leaves)
    for a, e in zip(actual_leaves, expected_leaves):
        assert a.dtype == e.dtype and a.shape == e.shape, (a.dtype, e.dtype, a.shape, e.shape)
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol, atol=atol)


def _differs(a, b) -> bool:
    """Two pytrees differ in structure, in a leaf's shape, or by more than 1e-8 in a value."""
    a_leaves, b_leaves = jax.tree.leaves(a), jax.tree.leaves(b)
    if jax.tree.structure(a) != jax.tree.structure(b) or any(x.shape != y.shape for x, y in zip(a_leaves, b_leaves)):
        return True
    return _max_difference(a, b) > 1e-8


def _max_difference(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# --------------------------------------------------------------------------- optimizers


def check_loop_against_reference(case: Case, reference_schedule: optax.Schedule, **optimizer_fields) -> None:
    config = tiny_config(case.name, case.overrides, **optimizer_fields)
    run, init, state = loop_steps(config)
    assert run.total_steps == NUM_STEPS and int(state.step) == STEPS_TAKEN
    params, opt_state = reference_steps(
        case, _all_blocks(case.overrides), run.model, init.params, loop_batches(run, config), reference_schedule
    )
    assert _max_difference(state.params, init.params) > 1e-4  # it moved
    assert_trees_close(state.params, params)
    assert_trees_close(state.opt_state, opt_state)


@pytest.mark.parametrize("case", REGISTERED_CASES, ids=lambda c: getattr(c, "id", c))
def test_loop_steps_equal_hand_built_transformation(case):
    if isinstance(case, str):
        pytest.fail(f"optimizer {case!r} has no hand-built reference Case in tests/test_wiring.py")
    check_loop_against_reference(case, case.schedule, **case.schedule_fields)


def _hand_model_and_batches(full_batch: bool):
    model = models.MLP(NUM_CLASSES, widths=(8,), dtype=jnp.float64)
    params = model.init(jax.random.PRNGKey(SEED), jnp.asarray(RUN_DATA.train.images[:1]))["params"]
    if full_batch:
        batches = [{"image": RUN_DATA.train.images, "label": RUN_DATA.train.labels}] * STEPS_TAKEN
    else:
        batches = itertools.islice(data.train_batches(RUN_DATA.train, BATCH_SIZE, seed=SEED, epoch=0), STEPS_TAKEN)
    return model, _as_float64(params), [{k: jnp.asarray(v) for k, v in b.items()} for b in batches]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_changed_field_matters(case):
    """Reverting any one changed field (or the seed of a noisy optimizer) to its default changes the
    reference steps (parameters or optimizer state), so the comparison with the loop above would see
    a field the loop dropped."""
    model, params0, batches = _hand_model_and_batches(OPTIMIZERS[case.name].full_batch)
    schedule = case.schedule
    blocks = _all_blocks(case.overrides)
    floats = _float_fields(case) if case.jit_reference else None
    step = reference_stepper(case, blocks, model, schedule)
    changed = reference_steps(case, blocks, model, params0, batches, schedule, floats=floats, step=step)
    variants = [
        (block, field)
        for block, values in case.overrides.items()
        for field in values
        if not (block == case.name and field == "base")
    ]  # base changes which blocks are read
    if case.name in ("bsam", "bulk_sgd", "vi", "ivon", "vogn"):  # the optimizers that draw noise from the run's seed
        variants.append((None, "seed"))
    for block, field in variants:
        if block is None:
            reverted = reference_steps(
                case, blocks, model, params0, batches, schedule, seed=0, floats=floats, step=step
            )
        elif case.jit_reference and field in floats.get(block, {}):
            reverted_floats = {b: dict(v) for b, v in floats.items()}
            reverted_floats[block][field] = float(OPTIMIZERS[block].defaults[field])
            reverted = reference_steps(
                case, blocks, model, params0, batches, schedule, floats=reverted_floats, step=step
            )
        elif case.jit_reference:
            continue  # bulk_sgd's k and num_iters are array shapes: a recompile each (seconds)
        else:
            overrides = {b: dict(v) for b, v in case.overrides.items()}
            overrides[block][field] = OPTIMIZERS[block].defaults[field]
            reverted = reference_steps(case, _all_blocks(overrides), model, params0, batches, schedule)
        # Parameters and optimizer state: SWAG's collection fields change only the state.
        assert _differs(changed, reverted), f"{case.id}: {block or ''}.{field} has no effect"


# --------------------------------------------------------------------------- schedules

# Each schedule also goes through the loop once, in test_loop_steps_equal_hand_built_transformation
# (sgd+warmup_cosine, gd+constant, adam+step, cosine in every other case).
HORIZON, WARMUP = 10, 3  # steps of the schedule-value checks
SCHEDULES = {
    # name: (optimizer fields, hand-built optax schedule over HORIZON steps)
    "constant": ({"schedule": "constant"}, optax.constant_schedule(LEARNING_RATE)),
    "cosine": ({"schedule": "cosine"}, optax.cosine_decay_schedule(LEARNING_RATE, HORIZON)),
    "step": (
        {"schedule": "step", "step_boundaries": (0.3, 0.6), "step_factor": 0.2},
        optax.piecewise_constant_schedule(LEARNING_RATE, {3: 0.2, 6: 0.2}),
    ),
    "warmup_cosine": (
        {"schedule": "cosine", "warmup_steps": WARMUP},
        optax.join_schedules(
            [
                optax.linear_schedule(0.0, LEARNING_RATE, WARMUP),
                optax.cosine_decay_schedule(LEARNING_RATE, HORIZON - WARMUP),
            ],
            [WARMUP],
        ),
    ),
    "cosine_decay_steps": (  # cosine to 0 at step 6 of 10, then 0 (SWAG's pre-training phase)
        {"schedule": "cosine", "decay_steps": 6},
        optax.cosine_decay_schedule(LEARNING_RATE, 6),
    ),
    "warmup_step": (
        {"schedule": "step", "warmup_steps": WARMUP, "step_boundaries": (0.5,), "step_factor": 0.1},
        optax.join_schedules(
            [
                optax.linear_schedule(0.0, LEARNING_RATE, WARMUP),
                optax.piecewise_constant_schedule(LEARNING_RATE, {3: 0.1}),
            ],
            [WARMUP],
        ),
    ),
}


@pytest.mark.parametrize("name", SCHEDULES)
def test_learning_rate_schedule_equals_optax_schedule(name):
    fields, expected = SCHEDULES[name]
    schedule = learning_rate_schedule(tiny_config(**fields), HORIZON)
    got = np.array([float(schedule(t)) for t in range(HORIZON + 1)])
    want = np.array([float(expected(t)) for t in range(HORIZON + 1)])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_cosine_and_warmup_follow_their_formulas():
    steps = np.arange(HORIZON + 1)
    cosine = learning_rate_schedule(tiny_config(schedule="cosine"), HORIZON)
    np.testing.assert_allclose(
        [float(cosine(t)) for t in steps],
        LEARNING_RATE * 0.5 * (1 + np.cos(np.pi * np.minimum(steps, HORIZON) / HORIZON)),
        rtol=1e-12,
        atol=1e-15,
    )
    warm = learning_rate_schedule(tiny_config(schedule="constant", warmup_steps=WARMUP), HORIZON)
    np.testing.assert_allclose(
        [float(warm(t)) for t in steps], LEARNING_RATE * np.minimum(steps / WARMUP, 1.0), rtol=1e-12, atol=1e-15
    )


# --------------------------------------------------------------------------- validation

BAD_VALUES = {  # field -> a value its rule rejects
    "momentum": 1.0,
    "weight_decay": -1e-3,
    "b1": 1.0,
    "b2": -0.1,
    "eps": 0.0,
    "beta": 1.5,
    "adam_b1": -0.5,
    "adam_b2": 1.0,
    "rho": -0.1,
    "m": 2.5,
    "base": "lion",
    "eta": -0.01,
    "gamma": -0.5,
    "theta": 0.0,
    "beta1": 1.0,
    "beta2": -0.1,
    "prior_precision": -1.0,
    "damping": -0.1,
    "init_precision": 0.0,
    "init_std": 0.0,
    "start_step": -1,
    "collect_learning_rate": 0.0,
    "collect_every": 0,
    "rank": 0,
    "k": 0,
    "nesterov": "yes",
    "num_iters": 0,
    "rho_min": -0.1,
    "alpha": -0.1,
    "ess": -1.0,
    "hess_init": 0.0,
    "clip_radius": -1.0,
}


def _block_replaced(config, name, **values):
    # A whole new block, since ConfigDict refuses a value of another type in a typed field.
    config.optimizer[name] = ml_collections.ConfigDict({**config.optimizer[name].to_dict(), **values})
    return config


def _validation_params():
    for name in sorted(OPTIMIZERS):
        for field in OPTIMIZERS[name].defaults:
            yield pytest.param(name, field, id=f"{name}.{field}")


@pytest.mark.parametrize("name, field", _validation_params())
def test_bad_value_names_the_field(name, field):
    config = _block_replaced(tiny_config(name), name, **{field: BAD_VALUES[field]})
    with pytest.raises(ValueError, match=rf"optimizer\.{name}\.{field}\b"):
        validate_config(config)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_non_number_and_unknown_field_name_the_field(name):
    numeric = [
        f for f, v in OPTIMIZERS[name].defaults.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    for field in numeric:
        with pytest.raises(ValueError, match=rf"optimizer\.{name}\.{field}='x' must be a number"):
            validate_config(_block_replaced(tiny_config(name), name, **{field: "x"}))
    with pytest.raises(ValueError, match=rf"optimizer\.{name}\.typo is not a hyper-parameter"):
        validate_config(_block_replaced(tiny_config(name), name, typo=1.0))


CHANGED = {block: values for case in CASES for block, values in case.overrides.items()}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_field_of_a_block_not_read_fails(name):
    read = {name, *({OPTIMIZERS[name].defaults["base"]} if "base" in OPTIMIZERS[name].defaults else ())}
    other = next(block for block in sorted(CHANGED) if block not in read)
    field, value = next(iter(CHANGED[other].items()))
    config = tiny_config(name, {other: {field: value}})
    with pytest.raises(ValueError, match=rf"optimizer\.{other}\.{field}=.* does not read optimizer\.{other}"):
        validate_config(config)


def test_sam_with_base_adam_reads_the_adam_block():
    validate_config(tiny_config("sam", {"sam": {"base": "adam"}, "adam": ADAM_CHANGED}))
    with pytest.raises(ValueError, match=r"optimizer\.adam\.b1=0.8 is set"):
        validate_config(tiny_config("sam", {"adam": ADAM_CHANGED}))  # base sgd does not read it
    with pytest.raises(ValueError, match=r"optimizer\.adam\.eps"):
        validate_config(tiny_config("sam", {"sam": {"base": "adam"}, "adam": {"eps": 0.0}}))


# --------------------------------------------------------------------------- registry extension


@pytest.fixture
def register_optimizer():
    """``register_optimizer(spec)`` adds ``spec`` to the registry until the end of the test."""
    added = []

    def register(spec: OptimizerSpec) -> OptimizerSpec:
        added.append(sam_jax.optim.register(spec).name)
        return spec

    yield register
    for name in added:
        del sam_jax.optim.OPTIMIZERS[name]


def _sign_sgd(hparams, context):
    return optax.chain(
        optax.scale_by_sign(), optax.scale(hparams["scale"]), optax.scale_by_learning_rate(context.learning_rate)
    )


def test_optimizer_registered_at_runtime_trains_in_the_loop(tmp_path, register_optimizer):
    config = tiny_config()  # built before the registration: no my_sign_sgd block
    config.num_steps = STEPS_TAKEN
    config.eval_at_start = False
    register_optimizer(OptimizerSpec("my_sign_sgd", {"scale": 1.0}, build=_sign_sgd, summary="sign SGD (test)"))
    assert default_config().optimizer.my_sign_sgd.to_dict() == {"scale": 1.0}  # rebuilt: it has one
    config.optimizer.name = "my_sign_sgd"
    config.optimizer.my_sign_sgd = ml_collections.ConfigDict({"scale": 0.5})

    final = {}
    run = build_run(config, RUN_DATA)
    run = dataclasses.replace(run, init_state=_as_float64(run.init_state))
    summary = train_and_evaluate(
        config, str(tmp_path), hooks=[Hook(STEPS_TAKEN, lambda s: final.update(params=s.params) or {})], run=run
    )
    assert summary["total_steps"] == STEPS_TAKEN and np.isfinite(summary["test/nll"])

    params = run.init_state.params
    schedule = optax.cosine_decay_schedule(LEARNING_RATE, STEPS_TAKEN)
    loss = _objective(run.model, _cross_entropy)
    for t, batch in enumerate(loop_batches(run, config)):  # w <- w - lr_t * scale * sign(g)
        grads = jax.grad(loss)(params, batch)
        params = jax.tree.map(lambda w, g: w - schedule(t) * 0.5 * jnp.sign(g), params, grads)
    assert_trees_close(final["params"], params)


def test_optimizer_without_hyper_parameters_validates(register_optimizer):
    register_optimizer(OptimizerSpec("plain_sign_sgd", {}, build=lambda h, c: _sign_sgd({"scale": 1.0}, c)))
    validate_config(tiny_config("plain_sign_sgd"))


def test_config_made_before_a_registration_uses_the_new_optimizers_defaults(register_optimizer):
    config = tiny_config()
    register_optimizer(OptimizerSpec("my_sign_sgd", {"scale": 1.0}, build=_sign_sgd))
    config.optimizer.name = "my_sign_sgd"
    validate_config(config)
    assert optimizer_hparams(config)["my_sign_sgd"] == {"scale": 1.0}


def test_empty_validation_split_passes_the_data_checks():
    empty = data.ArrayDataset(RUN_DATA.train.images[:0], RUN_DATA.train.labels[:0], NUM_CLASSES)
    check_run_data(RUN_DATA._replace(val=empty))
