"""Augmentation inside the jitted train step: keyed from the step's key, seen by every pass of
SAM's step, deterministic; and a training batch that does not divide over the devices fails at start."""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax import data
from sam_jax.training import build, build_run, read_metrics, sharding, train_and_evaluate, validate_config
from sam_jax.training.steps import _AUGMENT_STREAM
from tests.test_training import digits_config

AUGMENT = {"data.augment.crop_padding": 1, "data.augment.flip": True}


def test_augmented_digits_run_trains_and_is_deterministic(tmp_path):
    config = digits_config(str(tmp_path / "first"), **AUGMENT)
    run = build_run(config)
    first = train_and_evaluate(config, run=run)
    second = train_and_evaluate(config, str(tmp_path / "second"), run=run)
    assert first["test/accuracy"] > 0.5
    assert {k: v for k, v in first.items() if k != "wall_time_s"} == {
        k: v for k, v in second.items() if k != "wall_time_s"
    }
    records = read_metrics(str(tmp_path / "first"))
    assert len(records) > 3 and records == read_metrics(str(tmp_path / "second"))


def test_step_sees_augment_batch_with_the_documented_key(tmp_path):
    """SAM's step with augmentation equals the plain step on the batch ``augment_batch`` gives for
    ``fold_in(fold_in(rng, step), _AUGMENT_STREAM)``: so the clean, ascent and descent passes all
    saw that one augmented batch."""
    overrides = {"optimizer.name": "sam", "num_steps": 2}
    augmented = build_run(digits_config(str(tmp_path), **overrides, **AUGMENT))
    plain = build_run(digits_config(str(tmp_path), **overrides), augmented.data)
    batch = next(data.train_batches(plain.data.train, plain.batch_size, seed=0, epoch=0))
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    state = plain.init_state._replace(step=jnp.asarray(3, jnp.int32))

    key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), _AUGMENT_STREAM)
    images = data.augment_batch(key, batch["image"], crop_padding=1, flip=True, cutout_size=0)
    assert not np.array_equal(images, batch["image"])
    expected, expected_metrics = plain.train_step(state, {**batch, "image": images})
    got, got_metrics = augmented.train_step(state, batch)
    unaugmented, _ = plain.train_step(state, batch)

    for a, b in zip(jax.tree_util.tree_leaves(got.params), jax.tree_util.tree_leaves(expected.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got_metrics["loss"], expected_metrics["loss"], rtol=1e-6)
    differences = [
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree_util.tree_leaves(got.params), jax.tree_util.tree_leaves(unaugmented.params))
    ]
    assert max(differences) > 1e-4


def test_no_augmentation_by_default(tmp_path):
    config = digits_config(str(tmp_path))
    assert not (config.data.augment.crop_padding or config.data.augment.flip or config.data.augment.cutout_size)
    assert build._augment(config) is None
    augment = build._augment(digits_config(str(tmp_path), **AUGMENT))
    assert isinstance(augment, functools.partial) and augment.func is data.augment_batch
    assert augment.keywords == {"crop_padding": 1, "flip": True, "cutout_size": 0}


@pytest.mark.parametrize(
    "field, value",
    [("crop_padding", -1), ("cutout_size", -2), ("cutout_size", True)],
)
def test_bad_augment_values_name_the_field(tmp_path, field, value):
    config = digits_config(str(tmp_path))
    config.data.augment[field] = value
    with pytest.raises(ValueError, match=f"data.augment.{field}"):
        validate_config(config)


def test_bad_augment_flip_names_the_field(tmp_path):
    config = digits_config(str(tmp_path))
    with config.unlocked():
        config.data.augment = {"crop_padding": 0, "flip": "yes", "cutout_size": 0}
    with pytest.raises(ValueError, match="data.augment.flip"):
        validate_config(config)


def test_training_batch_must_divide_over_the_devices(tmp_path, monkeypatch):
    # The check raises before it builds a sharding, so a stand-in mesh of 3 devices is enough.
    monkeypatch.setattr(sharding, "data_mesh", lambda: types.SimpleNamespace(size=3))
    with pytest.raises(ValueError, match=r"batch_size=64 .*3 devices"):
        build_run(digits_config(str(tmp_path)))
