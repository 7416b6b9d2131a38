"""The unrolled sub-batch map (``sam_jax.optim.unrolled_map``) gives ``jax.vmap``'s values, in the train step too."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sam_jax import optim
from sam_jax.losses import get_stateful_loss
from sam_jax.models import create_model
from sam_jax.training.build import UNROLL_MIN_STEPS, optimizer_step_options, unroll_sub_batches
from sam_jax.training.state import TrainState
from sam_jax.training.steps import make_train_step


def test_unrolled_map_equals_vmap_with_shared_and_mapped_arguments():
    fn = lambda w, x: {"out": jnp.tanh(x @ w["a"]) * w["b"], "norm": jnp.sum(x**2)}
    w = {"a": jnp.arange(6.0).reshape(3, 2) / 7, "b": jnp.array(1.5)}
    xs = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5, 3)), jnp.float32)
    expected = jax.vmap(fn, (None, 0))(w, xs)
    actual = jax.jit(optim.unrolled_map(fn, (None, 0)))(w, xs)
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-6), actual, expected)
    stacked = jax.tree.map(lambda v: jnp.stack([v, 2 * v, 3 * v, 4 * v]), w)
    expected = jax.vmap(fn)(stacked, xs)
    jax.tree.map(
        lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-6), optim.unrolled_map(fn, (0, 0))(stacked, xs), expected
    )
    with pytest.raises(ValueError, match="leading size"):
        optim.unrolled_map(fn, (0, 0))(stacked, xs[:3])


def test_long_cpu_runs_unroll_and_short_ones_do_not():
    assert unroll_sub_batches(UNROLL_MIN_STEPS) == (jax.default_backend() == "cpu")
    assert not unroll_sub_batches(UNROLL_MIN_STEPS - 1)


@pytest.mark.parametrize(
    "name, hparams",
    [("sam", {"sam": {"m": 4, "rho": 0.1}}), ("vogn", {"vogn": {"m": 2}})],
)
def test_train_step_with_unrolled_sub_batches_equals_the_vmapped_one(name, hparams):
    """LeNet-5 (convolutions at per-sub-batch weights, the case unrolling is for), 2 or 4 sub-batches."""
    model = create_model("lenet5", 10)
    rng = np.random.default_rng(1)
    batch = {
        "image": jnp.asarray(rng.normal(size=(8, 28, 28, 1)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 10, 8)),
        "index": jnp.arange(8),
    }
    params = model.init(jax.random.PRNGKey(0), batch["image"][:1])["params"]
    spec = optim.get_optimizer_spec(name)
    blocks = optim.hparam_blocks(hparams)
    context = optim.BuildContext(optax.constant_schedule(0.05), 64, 0, blocks, 8, total_steps=2)
    tx = optim.build_optimizer(name, context)
    states = []
    for unroll in (False, True):
        step = make_train_step(
            model,
            tx,
            get_stateful_loss("cross_entropy"),
            **optimizer_step_options(spec, blocks[name], "cross_entropy", {}, 8),
            unroll_sub_batches=unroll,
        )
        state = TrainState(jnp.zeros((), jnp.int32), params, {}, tx.init(params), jax.random.PRNGKey(2), ())
        for _ in range(2):
            state, _ = jax.jit(step)(state, batch)
        states.append(state)
    vmapped, unrolled = states
    assert (
        max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(unrolled.params)))
        > 1e-4
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6),
        (unrolled.params, unrolled.opt_state),
        (vmapped.params, vmapped.opt_state),
    )
