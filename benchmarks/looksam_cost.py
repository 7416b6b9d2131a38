"""Step cost of LookSAM beside SGD, SAM, ``optax.contrib.sam`` and GSAM, per model and batch size.

Every optimizer runs in the loop's own jitted train step (``sam_jax.training.steps.make_train_step``:
the clean loss and gradient, then ``tx.update(..., grad_fn=grad_fn)``) on a batch of random
28x28x1 images. The cost of a step is averaged over a whole number of LookSAM periods: each timed
repeat runs ``--steps`` consecutive steps (a multiple of every k), so LookSAM k pays its SAM step
once per k steps, as in training. The repeats are interleaved across optimizers so that load drift
hits them alike; the median seconds per step over the repeats is reported with its ratio to SGD.
Two more rows time LookSAM's phases apart: k = 1 (a SAM step, inside the ``lax.cond``, every step)
and a period longer than the run (after the warm-up, reuse steps only: one gradient pass).

    python -m benchmarks.looksam_cost [--models mlp,lenet5] [--batch-sizes 32,128] [--steps 10] [--repeats 5]
"""

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sam_jax import optim
from sam_jax.losses import get_stateful_loss
from sam_jax.models import create_model
from sam_jax.training.state import TrainState
from sam_jax.training.steps import make_train_step

LEARNING_RATE, MOMENTUM, RHO = 0.05, 0.9, 0.05
LOOKSAM_PERIODS = (2, 5, 10)
LOOKSAM_ALPHA, GSAM_ALPHA = 0.7, 0.2  # the registry's defaults
MODEL_KWARGS = {"mlp": {"widths": (200, 200)}, "lenet5": {}}
NEVER_AGAIN = 2**30  # a LookSAM period longer than any benchmark: only step 0 is a SAM step


def with_contrib_grad_fn(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``optax.contrib.sam`` called as the train step calls every optimizer: ``grad_fn(params)``."""

    def update(grads, state, params=None, *, grad_fn=None, **extra_args):
        del extra_args
        return tx.update(grads, state, params, grad_fn=lambda p, _: grad_fn(p))

    return optax.GradientTransformationExtraArgs(tx.init, update)


def optimizers() -> dict[str, optax.GradientTransformationExtraArgs]:
    """Name -> transformation, each around SGD with momentum."""
    sgd = optax.sgd(LEARNING_RATE, momentum=MOMENTUM)
    # Opaque mode with sync_period 2: one ascent gradient inside, as exact SAM (benchmarks/sam_step.py).
    contrib = optax.contrib.sam(
        sgd, optax.chain(optax.contrib.normalize(), optax.sgd(RHO)), sync_period=2, opaque_mode=True
    )
    return {
        "SGD (momentum 0.9)": optax.with_extra_args_support(sgd),
        "SAM (sam_jax.optim.sam)": optim.sam(sgd, RHO),
        "optax.contrib.sam (opaque)": with_contrib_grad_fn(contrib),
        **{f"LookSAM k={k}": optim.looksam(sgd, RHO, k=k, alpha=LOOKSAM_ALPHA) for k in LOOKSAM_PERIODS},
        "GSAM": optim.gsam(sgd, RHO, alpha=GSAM_ALPHA),
        # The two phases of LookSAM apart: every step a SAM step inside the lax.cond, and (after the
        # SAM step 0 of the warm-up) only reuse steps.
        "LookSAM k=1 (SAM steps in the cond)": optim.looksam(sgd, RHO, k=1, alpha=LOOKSAM_ALPHA),
        "LookSAM reuse steps only": optim.looksam(sgd, RHO, k=NEVER_AGAIN, alpha=LOOKSAM_ALPHA),
    }


def seconds_per_step(step: Callable, state: Any, batch: dict, num_steps: int) -> tuple[float, Any]:
    start = time.perf_counter()
    for _ in range(num_steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / num_steps, state


def measure(model_name: str, batch_size: int, num_steps: int, repeats: int) -> dict[str, float]:
    """Median seconds per step of every optimizer on ``model_name`` with ``batch_size`` examples."""
    model = create_model(model_name, 10, **MODEL_KWARGS[model_name])
    image_key, label_key, init_key, rng = jax.random.split(jax.random.PRNGKey(0), 4)
    batch = {
        "image": jax.random.normal(image_key, (batch_size, 28, 28, 1)),
        "label": jax.random.randint(label_key, (batch_size,), 0, 10),
        "index": jnp.arange(batch_size),
    }
    params = model.init(init_key, batch["image"][:1])["params"]
    loss = get_stateful_loss("cross_entropy")
    steps, states = {}, {}
    for name, tx in optimizers().items():
        steps[name] = jax.jit(make_train_step(model, tx, loss))
        state = TrainState(jnp.zeros((), jnp.int32), params, {}, tx.init(params), rng, ())
        # Compile outside the timed loop; num_steps warm-up steps keep every LookSAM at phase 0.
        _, states[name] = seconds_per_step(steps[name], state, batch, num_steps)
    timings = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            elapsed, states[name] = seconds_per_step(step, states[name], batch, num_steps)
            timings[name].append(elapsed)
    return {name: statistics.median(values) for name, values in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,lenet5", help=f"comma-separated, of {sorted(MODEL_KWARGS)}")
    parser.add_argument("--batch-sizes", default="32,128")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed repeat, a multiple of every k")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    period = math.lcm(*LOOKSAM_PERIODS)
    if args.steps % period:
        parser.error(
            f"--steps={args.steps} must be a multiple of {period}, so that every LookSAM k runs whole periods."
        )

    start = time.perf_counter()
    rows = []
    for model_name in args.models.split(","):
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            medians = measure(model_name, batch_size, args.steps, args.repeats)
            sgd = medians["SGD (momentum 0.9)"]
            rows += [(model_name, batch_size, name, seconds, seconds / sgd) for name, seconds in medians.items()]
    print(
        f"jit'd train step, median of {args.repeats} x {args.steps} steps; jax {jax.__version__}, "
        f"optax {optax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} cores; "
        f"wall {time.perf_counter() - start:.0f} s"
    )
    print()
    print("| model | batch | optimizer | ms / step | ratio to SGD |")
    print("|---|---:|---|---:|---:|")
    for model_name, batch_size, name, seconds, ratio in rows:
        print(f"| {model_name} | {batch_size} | {name} | {1e3 * seconds:.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
