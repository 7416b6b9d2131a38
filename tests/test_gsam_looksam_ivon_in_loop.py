"""GSAM, LookSAM and IVON through the one training loop: curvature tracking and IVON's predictive.

The loop's steps equal the hand-built transformations in ``tests/test_wiring.py``; here the hooks
that read the registry spec are checked: the curvature tracker (with the SAM radius for GSAM and
LookSAM, the ``kappa_min`` metrics) and ``make_predictive``'s posterior samples for IVON.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax.optim import ivon_sample
from sam_jax.training import Hook, build_run, train_and_evaluate
from sam_jax.training.predictive import make_predictive, predictive_kind
from tests.test_wiring import RUN_DATA, _as_float64, tiny_config

pytestmark = pytest.mark.usefixtures("float64")
NUM_STEPS = 4


def _train_with_curvature(name, workdir):
    """A tiny run of ``name`` tracking curvature every 2 steps; (run, final state, metrics records)."""
    config = tiny_config(name)
    config.num_steps = NUM_STEPS
    config.eval_at_start = False
    config.curvature.every = 2
    config.curvature.quantities = "hessian,batch_sharpness"
    config.curvature.num_iters = 4
    config.curvature.subset_size = 32
    run = build_run(config, RUN_DATA)
    run = dataclasses.replace(run, init_state=_as_float64(run.init_state))
    final = {}
    # The loop donates its state: the hook keeps a copy.
    keep = Hook(NUM_STEPS, lambda state: final.update(state=jax.tree.map(jnp.copy, state)) or {})
    train_and_evaluate(config, str(workdir), hooks=[keep], run=run)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return run, final["state"], [json.loads(line) for line in f]


@pytest.mark.parametrize("name", ["gsam", "looksam", "ivon"])
def test_curvature_is_tracked_during_training(tmp_path, name):
    run, state, records = _train_with_curvature(name, tmp_path)
    tracked = [r for r in records if "curvature/hessian_top1" in r]
    assert len(tracked) >= 2
    for record in tracked:
        assert np.isfinite(record["curvature/hessian_top1"]) and np.isfinite(record["curvature/batch_sharpness"])
        # The SAM-family radius comes from the spec (perturbation_radius): the kappa_min metrics.
        assert ("curvature/kappa_min_perturbed" in record) == (name != "ivon")
    if name == "ivon":
        _check_ivon_predictive(run, state)


def _check_ivon_predictive(run, state):
    """The spec's posterior sampler is ivon_sample, and make_predictive averages over its samples."""
    key = jax.random.PRNGKey(5)
    sample = run.optimizer.posterior_sample(state.params, state.opt_state, key, len(RUN_DATA.train.labels))
    for a, b in zip(jax.tree.leaves(sample), jax.tree.leaves(ivon_sample(state.params, state.opt_state, key))):
        np.testing.assert_array_equal(a, b)
    members = [(run, state)]
    assert predictive_kind(members, posterior_samples=4) == "posterior"
    averaged = make_predictive(members, posterior_samples=4)(RUN_DATA.test)
    point = make_predictive(members)(RUN_DATA.test)
    np.testing.assert_allclose(averaged.sum(-1), 1.0, rtol=1e-10)
    assert np.max(np.abs(averaged - point)) > 1e-6  # the samples move the prediction
