"""The train step with its sub-batches vmapped or unrolled, per model and optimizer.

m-sharpness (SAM-m, bSAM) and VOGN's per-example moments evaluate a batch's sub-batches each at its
own weights. ``jax.vmap`` turns a convolution at per-sub-batch weights into a grouped convolution;
``sam_jax.optim.unrolled_map`` writes the sub-batches out one after another in the compiled step.
This times both through the loop's train step (``make_train_step(..., unroll_sub_batches=...)``) on
a fixed synthetic batch, the optimizers at their registry defaults with the sub-batch sizes of
Möllenhoff & Khan's Table 1 runs (SAM and bSAM: 8 sub-batches of 16; VOGN: 16 of 8). Each cell is
the median over ``--repeats`` of ``--steps`` steps, the two variants interleaved; the first call
(compilation included) is given too. The loop unrolls on CPU for runs of at least
``sam_jax.training.build.UNROLL_MIN_STEPS`` steps.

    python -m benchmarks.sub_batch_map [--models lenet5,mlp] [--optimizers sam,bsam,vogn]
        [--steps 10] [--repeats 3]
"""

import argparse
import datetime
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sam_jax import optim
from sam_jax.losses import get_stateful_loss
from sam_jax.models import create_model
from sam_jax.training.build import optimizer_step_options
from sam_jax.training.state import TrainState
from sam_jax.training.steps import make_train_step

BATCH_SIZE, NUM_TRAIN = 128, 60_000
MODELS = {"lenet5": ((28, 28, 1), {}), "mlp": ((28, 28, 1), {"widths": (500, 300), "activation": "relu"})}
SUB_BATCHES = {"sam": {"sam": {"m": 16}}, "bsam": {"bsam": {"m": 16}}, "vogn": {"vogn": {"m": 8}}}


def _steps(model_name: str, name: str) -> tuple[dict, dict]:
    """The jitted train steps (vmapped, unrolled) of ``name`` on ``model_name``, with their initial states."""
    shape, kwargs = MODELS[model_name]
    model = create_model(model_name, 10, **kwargs)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)))["params"]
    spec = optim.get_optimizer_spec(name)
    blocks = optim.hparam_blocks(SUB_BATCHES.get(name, {}))
    context = optim.BuildContext(optax.constant_schedule(0.01), NUM_TRAIN, 0, blocks, BATCH_SIZE, total_steps=10_000)
    tx = optim.build_optimizer(name, context)
    steps, states = {}, {}
    for unroll in (False, True):
        step = make_train_step(
            model,
            tx,
            get_stateful_loss("cross_entropy"),
            **optimizer_step_options(spec, blocks[name], "cross_entropy", {}, BATCH_SIZE),
            unroll_sub_batches=unroll,
            num_train=NUM_TRAIN,
        )
        steps[unroll] = jax.jit(step)
        states[unroll] = TrainState(jnp.zeros((), jnp.int32), params, {}, tx.init(params), jax.random.PRNGKey(1), ())
    return steps, states


def measure(model_name: str, name: str, num_steps: int, repeats: int) -> dict:
    """First-call seconds and median ms per step of the vmapped and the unrolled step."""
    shape, _ = MODELS[model_name]
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.standard_normal((BATCH_SIZE, *shape)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 10, BATCH_SIZE)),
        "index": jnp.arange(BATCH_SIZE),
    }
    steps, states = _steps(model_name, name)
    row = {"model": model_name, "optimizer": name}
    for unroll, step in steps.items():
        start = time.perf_counter()
        states[unroll], metrics = step(states[unroll], batch)
        jax.block_until_ready(metrics)
        row[f"first_call_s_{'unrolled' if unroll else 'vmap'}"] = time.perf_counter() - start
    times = {False: [], True: []}
    for _ in range(repeats):
        for unroll, step in steps.items():
            start = time.perf_counter()
            for _ in range(num_steps):
                states[unroll], metrics = step(states[unroll], batch)
            jax.block_until_ready(metrics)
            times[unroll].append((time.perf_counter() - start) / num_steps)
    row["ms_vmap"] = 1e3 * statistics.median(times[False])
    row["ms_unrolled"] = 1e3 * statistics.median(times[True])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet5,mlp", help="comma-separated, from " + ",".join(MODELS))
    parser.add_argument("--optimizers", default="sam,bsam,vogn", help="comma-separated registered optimizers")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(
        f"jax.devices(): {jax.devices()}, {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}"
    )
    print(
        "| model | optimizer | vmap ms / step | unrolled ms / step | unrolled / vmap | first call vmap / unrolled (s) |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for model_name in args.models.split(","):
        for name in args.optimizers.split(","):
            r = measure(model_name, name, args.steps, args.repeats)
            print(
                f"| {model_name} | {name} | {r['ms_vmap']:.1f} | {r['ms_unrolled']:.1f} | "
                f"{r['ms_unrolled'] / r['ms_vmap']:.2f} | "
                f"{r['first_call_s_vmap']:.1f} / {r['first_call_s_unrolled']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
