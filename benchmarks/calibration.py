"""Times the calibration metrics on N predictions x K classes (default 1e6 x 100, float32).

Each row is the median wall time of ``--repeats`` calls after one warm-up call (which compiles),
with ``block_until_ready``. "all metrics" is one jitted ``calibration_metrics`` call on the logits
(softmax included); with "+ temperature" it also fits T on a validation split of N/10 rows.
Prints a Markdown table. Usage: ``python -m benchmarks.calibration [--n 1000000] [--classes 100]``.
"""

import argparse
import functools
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax import calibration as cal


def synthetic_predictions(n: int, num_classes: int, seed: int):
    """Logits ``4 * N(0, 1)``; the label is the argmax with probability ``confidence ** 1.3``
    (an overconfident model), else another class, as in shared/probes/calibration_speed.py."""
    rng = np.random.default_rng(seed)
    logits = 4.0 * rng.standard_normal((n, num_classes), dtype=np.float32)
    probs = jax.nn.softmax(jnp.asarray(logits), axis=-1)
    confidence = np.asarray(jnp.max(probs, axis=-1), dtype=np.float64)
    prediction = np.asarray(jnp.argmax(probs, axis=-1))
    correct = rng.random(n) < confidence**1.3
    other = (prediction + rng.integers(1, num_classes, n)) % num_classes
    labels = np.where(correct, prediction, other)
    return jnp.asarray(logits), probs, jnp.asarray(labels.astype(np.int32))


@functools.partial(jax.jit, static_argnums=2)
def floor_binned_ece(probs: jax.Array, labels: jax.Array, num_bins: int) -> jax.Array:
    """Baseline in the same run: the textbook jitted ECE (bin ``floor(c * M)``, max and argmax as
    two reductions), whose edge handling differs from ours (see docs/calibration.md)."""
    confidence, prediction = jnp.max(probs, axis=-1), jnp.argmax(probs, axis=-1)
    bins = jnp.clip(jnp.floor(confidence * num_bins).astype(jnp.int32), 0, num_bins - 1)
    gaps = jax.ops.segment_sum(confidence - (prediction == labels), bins, num_segments=num_bins)
    return jnp.sum(jnp.abs(gaps)) / labels.shape[0]


def median_seconds(fn, repeats: int) -> tuple[float, float]:
    """Median wall time of ``fn()`` over ``repeats`` calls after a warm-up; the warm-up value."""
    value = jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--bins", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    logits, probs, labels = synthetic_predictions(args.n, args.classes, seed=0)
    val_logits, _, val_labels = synthetic_predictions(max(args.n // 10, 1), args.classes, seed=1)
    m = args.bins
    rows = {
        "baseline: textbook jitted ECE (floor binning)": lambda: floor_binned_ece(probs, labels, m),
        "ece": lambda: cal.ece(probs, labels, m),
        "adaptive_ece": lambda: cal.adaptive_ece(probs, labels, m),
        "classwise_ece": lambda: cal.classwise_ece(probs, labels, m),
        "max_calibration_error": lambda: cal.max_calibration_error(probs, labels, m),
        "kernel_calibration_error": lambda: cal.kernel_calibration_error(probs, labels),
        "nll": lambda: cal.nll(probs, labels),
        "brier": lambda: cal.brier(probs, labels),
        "margin_moment (logits)": lambda: cal.margin_moment(logits, labels),
        "fit_temperature (N/10 val logits)": lambda: cal.fit_temperature(val_logits, val_labels),
        "all metrics, one jit call (logits)": functools.partial(
            cal.summary._metrics, logits, labels, None, None, None, None, num_bins=m, loss="cross_entropy"
        ),
        "all metrics + temperature and TCE": functools.partial(
            cal.summary._metrics, logits, labels, None, val_logits, val_labels, None, num_bins=m, loss="cross_entropy"
        ),
    }
    print(
        f"# N={args.n:,} x K={args.classes} float32, {m} bins, median of {args.repeats} after "
        f"warm-up; jax {jax.__version__} on {jax.devices()[0].platform}, "
        f"{platform.processor() or platform.machine()}"
    )
    print("\n| metric | value | time (s) |\n|---|---:|---:|")
    for name, fn in rows.items():
        seconds, value = median_seconds(fn, args.repeats)
        shown = f"ece={float(value['ece']):.6f}" if isinstance(value, dict) else f"{float(value):.6f}"
        print(f"| {name} | {shown} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
