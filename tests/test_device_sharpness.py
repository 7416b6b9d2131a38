"""SAM with one perturbation per device (``sam_jax.optim.device_sharpness``) on 8 forced CPU devices.

A subprocess with ``--xla_force_host_platform_device_count=8`` and float64 compares, to 1e-10:

- ``per_device_sam_gradient`` with an explicit reference: the batch cut into 8 shards, each shard's
  SAM (or ASAM) descent gradient taken with plain ``jax.grad`` one shard at a time, then averaged;
- the train step with ``m = PER_DEVICE`` and a BatchNorm model with the same reference written
  with ``model.apply`` (each shard normalised with its own statistics, running averages averaged),
  and with the single-device ``jax.vmap`` path of m-sharpness at ``m = B / 8``;
- on a mesh of one device, both with plain SAM (``sam``; the train step with ``m = 0``).

It also checks that the compiled per-device step gathers nothing across devices: its only
collectives are all-reduces (the average of the descent gradients); and, in this process, how the
registry and the train step take ``m = PER_DEVICE``.
"""

import json
import os
import subprocess
import sys

import optax
import pytest

from sam_jax import optim
from sam_jax.losses import get_stateful_loss
from sam_jax.models import create_model
from sam_jax.training import make_train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = 8
TOLERANCE = 1e-10

_SCRIPT = """
import functools, json, re, sys
import jax
jax.config.update("jax_enable_x64", True)
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
sys.path.insert(0, {root!r})
from sam_jax import optim
from sam_jax.losses import get_stateful_loss
from sam_jax.training import TrainState, make_train_step
from tests import tanh_regression

BATCH, RHO, ETA, LR = 32, 0.3, 0.01, 0.1
mesh = Mesh(np.array(jax.devices()), ("data",))
one_device = Mesh(np.array(jax.devices()[:1]), ("data",))
replicated = NamedSharding(mesh, PartitionSpec())
split = NamedSharding(mesh, PartitionSpec("data"))
errors = {{}}


def record(name, got, expected):
    got, expected = jax.tree.leaves(got), jax.tree.leaves(expected)
    assert len(got) == len(expected), name
    scale = max(float(np.max(np.abs(e))) for e in expected)
    errors[name] = max(float(np.max(np.abs(np.asarray(g) - np.asarray(e)))) for g, e in zip(got, expected)) / scale


def shards(batch, count):
    size = BATCH // count
    return [jax.tree.map(lambda v: v[d * size : (d + 1) * size], batch) for d in range(count)]


def flat_norm(tree):
    return jnp.sqrt(sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(tree)))


# ---- per_device_sam_gradient on the tanh regression
params, x, y = tanh_regression.make_problem(0, BATCH)
params = jax.tree.map(jnp.asarray, params)
batch = {{"image": jnp.asarray(x), "label": jnp.asarray(y)}}


def loss(params, batch):
    return tanh_regression.loss(params, batch["image"], batch["label"])


def reference_descent(count, adaptive=False):
    total = jax.tree.map(jnp.zeros_like, params)
    for shard in shards(batch, count):
        g = jax.grad(loss)(params, shard)
        t = jax.tree.map(lambda w: jnp.abs(w) + ETA if adaptive else jnp.ones_like(w), params)
        norm = flat_norm(jax.tree.map(jnp.multiply, t, g))
        perturbed = jax.tree.map(lambda w, ti, gi: w + RHO * ti**2 * gi / norm, params, t, g)
        total = jax.tree.map(jnp.add, total, jax.grad(loss)(perturbed, shard))
    return jax.tree.map(lambda v: v / count, total)


for adaptive in (False, True):
    fn = jax.jit(functools.partial(
        optim.per_device_sam_gradient, loss, rho=RHO, mesh=mesh, adaptive=adaptive, eta=ETA if adaptive else 0.0
    ))
    compiled = fn.lower(jax.device_put(params, replicated), jax.device_put(batch, split)).compile()
    got = compiled(jax.device_put(params, replicated), jax.device_put(batch, split))
    record("asam_8_devices" if adaptive else "sam_8_devices", got, reference_descent({devices}, adaptive))
    if not adaptive:
        hlo = compiled.as_text()
        ops = ("all-gather", "all-to-all", "collective-permute", "all-reduce")
        collectives = {{op: len(re.findall(op + r"(-start)?\\(", hlo)) for op in ops}}

sam_tx = optim.sam(optax.identity(), RHO)
plain_sam, _ = sam_tx.update(
    jax.grad(loss)(params, batch), sam_tx.init(params), params, grad_fn=lambda p: jax.grad(loss)(p, batch)
)
record("sam_1_device", jax.jit(functools.partial(optim.per_device_sam_gradient, loss, rho=RHO, mesh=one_device))(
    params, batch), plain_sam)
record("sam_1_device_reference", plain_sam, reference_descent(1))


# ---- the train step with a BatchNorm model
class BatchNormNet(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Dense(6)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        return nn.Dense(3)(jnp.tanh(x))


model = BatchNormNet()
rng = np.random.default_rng(1)
data = {{
    "image": jnp.asarray(rng.normal(size=(BATCH, 5)) + 2.0 * (np.arange(BATCH) // 4)[:, None]),
    "label": jnp.asarray(rng.integers(0, 3, BATCH)),
    "index": jnp.arange(BATCH),
}}
# Flax keeps parameters and BatchNorm statistics in float32 unless asked; the reference is float64.
variables = jax.jit(lambda key, x: jax.tree.map(lambda v: v.astype(jnp.float64), model.init(key, x, train=False)))(
    jax.random.PRNGKey(0), data["image"]
)
net_params, model_state = variables["params"], {{"batch_stats": variables["batch_stats"]}}
cross_entropy = get_stateful_loss("cross_entropy")
tx = optim.m_sharpness_sam(optax.sgd(LR), RHO)
state = TrainState(jnp.zeros((), jnp.int32), net_params, model_state, tx.init(net_params), jax.random.PRNGKey(2), ())


def shard_loss(p, shard):
    logits, updated = model.apply(
        {{"params": p, **model_state}}, shard["image"], train=True, mutable=["batch_stats"]
    )
    return optax.softmax_cross_entropy_with_integer_labels(logits, shard["label"]).mean(), updated


@jax.jit
def reference_shard(shard):
    (value, updated), g = jax.value_and_grad(shard_loss, has_aux=True)(net_params, shard)
    perturbed = jax.tree.map(lambda w, gi: w + RHO * gi / flat_norm(g), net_params, g)
    return jax.grad(shard_loss, has_aux=True)(perturbed, shard)[0], value, updated


def reference_step(count):
    descent, losses, stats = zip(*(reference_shard(shard) for shard in shards(data, count)))
    mean = lambda trees: jax.tree.map(lambda *leaves: sum(leaves) / count, *trees)  # noqa: E731
    return jax.tree.map(lambda w, d: w - LR * d, net_params, mean(descent)), mean(stats), sum(losses) / count


per_device = jax.jit(make_train_step(model, tx, cross_entropy, m=optim.PER_DEVICE, mesh=mesh))
after, metrics = per_device(jax.device_put(state, replicated), jax.device_put(data, split))
expected_params, expected_stats, expected_loss = reference_step({devices})
record("step_params_8_devices", after.params, expected_params)
record("step_batch_stats_8_devices", after.model_state, expected_stats)
record("step_loss_8_devices", metrics["loss"], expected_loss)
vmapped, _ = jax.jit(make_train_step(model, tx, cross_entropy, m=BATCH // {devices}))(state, data)
record("step_8_devices_vs_vmap", after, vmapped)
# Two sub-batches per device, each device going through its own unrolled (sam_jax.optim.unrolled_map).
two_per_device = BATCH // (2 * {devices})
unrolled, _ = jax.jit(make_train_step(model, tx, cross_entropy, m=two_per_device, mesh=mesh, unroll_sub_batches=True))(
    jax.device_put(state, replicated), jax.device_put(data, split)
)
vmapped_two, _ = jax.jit(make_train_step(model, tx, cross_entropy, m=two_per_device))(state, data)
record("step_8_devices_unrolled_vs_vmap", unrolled, vmapped_two)

alone, _ = jax.jit(make_train_step(model, tx, cross_entropy, m=optim.PER_DEVICE, mesh=one_device))(state, data)
sam_state = state._replace(opt_state=optim.sam(optax.sgd(LR), RHO).init(net_params))
plain, _ = jax.jit(make_train_step(model, optim.sam(optax.sgd(LR), RHO), cross_entropy))(sam_state, data)
record("step_1_device_vs_sam", alone, plain)
print(json.dumps({{"devices": jax.device_count(), "errors": errors, "collectives": collectives}}))
"""


@pytest.fixture(scope="module")
def results() -> dict:
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count={DEVICES}",
    }
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT.format(root=ROOT, devices=DEVICES)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert results["devices"] == DEVICES
    return results


@pytest.mark.parametrize("case", ["sam_8_devices", "asam_8_devices"])
def test_per_device_gradient_matches_per_shard_reference(results, case):
    assert results["errors"][case] < TOLERANCE


@pytest.mark.parametrize("case", ["sam_1_device", "sam_1_device_reference"])
def test_one_device_is_plain_sam(results, case):
    assert results["errors"][case] < TOLERANCE


@pytest.mark.parametrize(
    "case",
    [
        "step_params_8_devices",
        "step_batch_stats_8_devices",
        "step_loss_8_devices",
        "step_8_devices_vs_vmap",
        "step_8_devices_unrolled_vs_vmap",
    ],
)
def test_train_step_per_device_with_batch_norm(results, case):
    assert results["errors"][case] < TOLERANCE


def test_train_step_on_one_device_is_plain_sam(results):
    assert results["errors"]["step_1_device_vs_sam"] < TOLERANCE


def test_per_device_step_gathers_nothing(results):
    collectives = results["collectives"]
    assert collectives["all-reduce"] > 0
    assert collectives["all-gather"] == collectives["all-to-all"] == collectives["collective-permute"] == 0


@pytest.mark.parametrize("name", ["sam", "asam", "ssam", "csam"])
def test_registry_accepts_per_device_m(name):
    hparams = {**optim.get_optimizer_spec(name).defaults, "m": optim.PER_DEVICE}
    optim.validate_hparams(name, hparams)
    with pytest.raises(ValueError, match=rf"{name}\.m=-2"):
        optim.validate_hparams(name, {**hparams, "m": -2})


def test_train_step_per_device_needs_the_mesh():
    model = create_model("mlp", 3, widths=(4,))
    with pytest.raises(ValueError, match="mesh"):
        make_train_step(model, optim.sam(optax.sgd(0.1), 0.05), get_stateful_loss("cross_entropy"), m=optim.PER_DEVICE)
