"""Mixed precision: bfloat16 compute, float32 parameters, and SAM's norms accumulated in float32.

The gradients of float32 parameters come back float32 even from a bfloat16 model, but SAM must not
depend on it: bfloat16 gradient leaves (crafted below) get a perturbation whose norm is ``rho`` to
float32 precision, in the parameters' dtype. A bfloat16 global norm misses the float64 one by 0.7 %
on these leaves (a sum of squares with an 8-bit significand), so these tests fail for it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax import optim
from sam_jax.training import Hook, build_run, train_and_evaluate
from tests.test_training import digits_config

RHO = 0.05
ETA = 0.01


def bfloat16_gradients(num_leaves: int = 128, size: int = 16) -> tuple[dict, dict]:
    """Many bfloat16 gradient leaves of scale 3 and float32 parameters of the same shapes."""
    rng = np.random.default_rng(0)
    grads = {f"layer{i:03d}": jnp.asarray(3 * rng.normal(size=(size,)), jnp.bfloat16) for i in range(num_leaves)}
    params = {name: jnp.asarray(rng.normal(size=(size,)), jnp.float32) for name in grads}
    return grads, params


def as_float64(tree: dict) -> dict:
    return {name: np.asarray(value, np.float64) for name, value in tree.items()}


def norm64(tree: dict) -> float:
    return float(np.sqrt(sum(np.sum(value**2) for value in tree.values())))


def test_global_norm_of_bfloat16_leaves_is_accumulated_in_float32():
    grads, _ = bfloat16_gradients()
    norm = optim.global_norm(grads)
    assert norm.dtype == jnp.float32
    np.testing.assert_allclose(float(norm), norm64(as_float64(grads)), rtol=1e-6)


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
def test_perturbation_of_bfloat16_gradients_is_float32(adaptive):
    grads, params = bfloat16_gradients()
    perturbation = optim.ascent_perturbation(grads, params, RHO, adaptive=adaptive, eta=ETA)
    assert {leaf.dtype for leaf in jax.tree.leaves(perturbation)} == {jnp.dtype(jnp.float32)}

    g, w = as_float64(grads), as_float64(params)
    t = {name: np.abs(w[name]) + ETA if adaptive else np.ones_like(w[name]) for name in w}
    scale = RHO / norm64({name: t[name] * g[name] for name in g})
    expected = {name: scale * t[name] ** 2 * g[name] for name in g}
    for name in expected:
        np.testing.assert_allclose(np.asarray(perturbation[name]), expected[name], rtol=1e-5, atol=1e-9)
    if not adaptive:
        np.testing.assert_allclose(norm64(as_float64(perturbation)), RHO, rtol=1e-6)


def test_loop_with_bfloat16_model_keeps_float32_state(tmp_path):
    # The dtype comes from the config as a string, as it would from a JSON config.
    config = digits_config(
        str(tmp_path),
        **{
            "optimizer.name": "sam",
            "model.kwargs.dtype": "bfloat16",
            "num_steps": 2,
            "eval_every_steps": 2,
            "log_every_steps": 1,
            "checkpoint_every_steps": 2,
        },
    )
    run = build_run(config)
    images = jnp.asarray(run.data.train.images[:4])
    logits, state = run.model.apply({"params": run.init_state.params}, images, capture_intermediates=True, mutable=True)
    hidden = state["intermediates"]["Dense_0"]["__call__"][0]
    assert (hidden.dtype, logits.dtype) == (jnp.bfloat16, jnp.float32)

    dtypes = {}

    def record(train_state) -> dict:
        floats = [leaf for leaf in jax.tree.leaves(train_state) if jnp.issubdtype(leaf.dtype, jnp.floating)]
        dtypes[int(train_state.step)] = {leaf.dtype for leaf in floats}
        return {}

    summary = train_and_evaluate(config, hooks=[Hook(1, record)], run=run)
    assert np.isfinite(summary["train_step/loss"])
    assert {1, 2} <= set(dtypes) and all(seen == {jnp.dtype(jnp.float32)} for seen in dtypes.values())
