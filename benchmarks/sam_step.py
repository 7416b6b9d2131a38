"""Time one jitted training step of SGD, ``sam_jax.optim.sam(sgd)`` and ``optax.contrib.sam``.

A bare step of two dependent gradient passes is timed too: it is the floor for any exact SAM.

LeNet-5 on a batch of 128 random 28x28x1 images. Each optimizer's step is compiled once; the
repeats are interleaved across optimizers so that load drift hits them alike, and the median time
per step over the repeats is reported with its ratio to SGD, as a Markdown table.

    python -m benchmarks.sam_step [--batch-size 128] [--steps 10] [--repeats 9]
"""

import argparse
import os
import statistics
import time
from collections.abc import Callable

import jax
import optax

from sam_jax import optim
from sam_jax.losses import cross_entropy
from sam_jax.models import create_model

LEARNING_RATE = 0.05
MOMENTUM = 0.9
RHO = 0.05


def make_steps(loss_fn: Callable) -> dict[str, tuple[optax.GradientTransformation, Callable]]:
    """Name -> (transformation, jitted ``step(params, state) -> (params, state)``)."""
    grad_fn = jax.grad(loss_fn)
    sgd = optax.sgd(LEARNING_RATE, momentum=MOMENTUM)
    ours = optim.sam(sgd, RHO)
    contrib = optax.contrib.sam(
        sgd, optax.chain(optax.contrib.normalize(), optax.sgd(RHO)), sync_period=2, opaque_mode=True
    )

    def build(tx, extra_args):
        def step(params, state):
            updates, state = tx.update(grad_fn(params), state, params, **extra_args)
            return optax.apply_updates(params, updates), state

        return tx, jax.jit(step)

    def two_gradients(params, state):
        # The floor for exact SAM: two dependent gradient passes and nothing else.
        perturbed = jax.tree.map(lambda w, g: w + RHO * g, params, grad_fn(params))
        return jax.tree.map(lambda w, g: w - LEARNING_RATE * g, params, grad_fn(perturbed)), state

    return {
        "SGD (momentum 0.9)": build(sgd, {}),
        "two gradient passes (floor)": (sgd, jax.jit(two_gradients)),
        "sam_jax.optim.sam(sgd)": build(ours, {"grad_fn": grad_fn}),
        "optax.contrib.sam (opaque)": build(contrib, {"grad_fn": lambda p, _: grad_fn(p)}),
    }


def seconds_per_step(step: Callable, params, state, num_steps: int) -> tuple[float, tuple]:
    start = time.perf_counter()
    for _ in range(num_steps):
        params, state = step(params, state)
    jax.block_until_ready(params)
    return (time.perf_counter() - start) / num_steps, (params, state)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()

    model = create_model("lenet5", 10)
    images_key, labels_key, init_key = jax.random.split(jax.random.PRNGKey(0), 3)
    images = jax.random.normal(images_key, (args.batch_size, 28, 28, 1))
    labels = jax.random.randint(labels_key, (args.batch_size,), 0, 10)
    params = model.init(init_key, images[:1])["params"]

    def loss_fn(p):
        return cross_entropy(model.apply({"params": p}, images), labels)

    steps = make_steps(loss_fn)
    carries = {}
    for name, (tx, step) in steps.items():
        carries[name] = step(params, tx.init(params))  # compile outside the timed loop
        jax.block_until_ready(carries[name])
    timings = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, (_, step) in steps.items():
            elapsed, carries[name] = seconds_per_step(step, *carries[name], args.steps)
            timings[name].append(elapsed)

    medians = {name: statistics.median(values) for name, values in timings.items()}
    sgd = medians["SGD (momentum 0.9)"]
    print(
        f"LeNet-5, batch {args.batch_size}, jit, median of {args.repeats} x {args.steps} steps; "
        f"jax {jax.__version__}, optax {optax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} cores"
    )
    print()
    print("| optimizer | ms / step | ratio to SGD |")
    print("|---|---:|---:|")
    for name, median in medians.items():
        print(f"| {name} | {1e3 * median:.2f} | {median / sgd:.2f} |")


if __name__ == "__main__":
    main()
