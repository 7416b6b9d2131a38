"""Cost per training step of the calibration baselines relative to SGD, through the shared loop's step.

Each method is a run config (LeNet-5 on Fashion-MNIST, batch 128; the ensembles wrap the same
LeNet-5); its jitted train step from ``sam_jax.training.build_run`` is compiled once and timed on one
real batch, the repeats interleaved across methods so that load drift hits them alike. Reported:
median milliseconds per step and the ratio to SGD, as a Markdown table. A deep ensemble of K
members costs K SGD runs (its row is that product, not a measurement).

    python -m benchmarks.baselines [--steps 10] [--repeats 7] [--methods sgd,sam,...]
"""

import argparse
import os
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from benchmarks.timing import time_steps
from sam_jax.training import build_run, default_config, load_run_data

ENSEMBLE_SIZE = 4
DEEP_ENSEMBLE_SIZE = 5


def _config(**fields: Any) -> ml_collections.ConfigDict:
    config = default_config()
    config.data.val_size = 0
    config.progress_bar = False
    config.update_from_flattened_dict(fields)
    return config


def _wrapped(name: str, **kwargs: Any) -> dict[str, Any]:
    return {
        "model.name": name,
        "model.kwargs": ml_collections.ConfigDict({"backbone": "lenet5", "ensemble_size": ENSEMBLE_SIZE, **kwargs}),
    }


METHODS: dict[str, dict[str, Any]] = {
    "sgd": {},
    "sam": {"optimizer.name": "sam"},
    "asam": {"optimizer.name": "asam"},
    "vasso": {"optimizer.name": "vasso"},
    "csam": {"optimizer.name": "csam"},
    "bsam": {"optimizer.name": "bsam"},
    "vi": {"optimizer.name": "vi", "optimizer.learning_rate": 1e-3},
    "mc_dropout": {"model.kwargs": ml_collections.ConfigDict({"dropout_rate": 0.1})},
    "batch_ensemble": _wrapped("batch_ensemble"),
    "mimo": {**_wrapped("mimo"), "model.kwargs": ml_collections.ConfigDict({"backbone": "lenet5", "ensemble_size": 3})},
    "rank1_bnn": _wrapped("rank1_bnn"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    args = parser.parse_args()
    names = [name.strip() for name in args.methods.split(",")]
    unknown = sorted(set(names) - set(METHODS))
    if unknown or "sgd" not in names:
        raise SystemExit(f"--methods must include sgd and name only {sorted(METHODS)}; unknown: {unknown}")

    run_data = load_run_data(_config())
    batch = {
        "image": jnp.asarray(run_data.train.images[:128]),
        "label": jnp.asarray(run_data.train.labels[:128]),
        "index": jnp.arange(128),
    }
    steps, states, compile_seconds = {}, {}, {}
    for name in names:
        run = build_run(_config(**METHODS[name]), run_data)
        start = time.perf_counter()
        states[name], metrics = run.train_step(run.init_state, batch)
        jax.block_until_ready(metrics)
        compile_seconds[name] = time.perf_counter() - start
        steps[name] = run.train_step
    timings: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:
            elapsed, states[name] = time_steps(steps[name], states[name], batch, args.steps)
            timings[name].append(elapsed)
    medians = {name: statistics.median(values) for name, values in timings.items()}
    sgd = medians["sgd"]
    print(
        f"LeNet-5 on Fashion-MNIST, batch 128, the loop's jitted train step, median of {args.repeats} x "
        f"{args.steps} steps; ensembles of {ENSEMBLE_SIZE} members (MIMO: 3); jax {jax.__version__}, "
        f"{jax.devices()[0].platform}, {os.cpu_count()} cores"
    )
    print()
    print("| method | ms / step | ratio to SGD | first step incl. compile (s) |")
    print("|---|---:|---:|---:|")
    for name in names:
        print(f"| {name} | {1e3 * medians[name]:.2f} | {medians[name] / sgd:.2f} | {compile_seconds[name]:.1f} |")
    print(
        f"| deep_ensemble (K={DEEP_ENSEMBLE_SIZE}, K SGD runs) | {1e3 * DEEP_ENSEMBLE_SIZE * sgd:.2f} | "
        f"{DEEP_ENSEMBLE_SIZE:.2f} | - |"
    )


if __name__ == "__main__":
    main()
