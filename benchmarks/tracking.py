"""Cost of curvature tracking in the faithful "Too Sharp, Too Sure" preset, on its real data and model.

Morosini et al. (2026, arXiv:2604.20614) track the GN sharpness lambda_max(H_GN(theta; D)) on the whole
5k training subset along every trajectory. This benchmark takes one job of the faithful preset
(experiments/configs/curvature_calibration.py:faithful; GD by default) and measures, labelled as
what they are:

1. the cost of one gradient on the whole subset, of one GN-vector product computed from scratch
   (``gnvp``: linearise and transpose each time) and of one product of the linearised operator
   (``gauss_newton_operator``, amortised over many products), in units of that gradient;
2. on the real trajectory (the job's own steps, parameters saved at its tracking schedule): the
   Lanczos steps needed to reach the preset's tolerance from a random start (cold) and from the
   previous point's Ritz vector (warm), from that and the guard vectors' sum (guarded, as the
   tracker does), and the same with the guard vectors converged to a looser tolerance
   (``curvature.guard_tolerance``); the wall time of each, and the deviation of each from a cold
   run with 3x the maximum steps;
3. the overhead of the tracker on the job: wall time of the loop with curvature tracking against
   the same loop without it (evaluation on in both), as a fraction of the untracked time.

Usage: python -m benchmarks.tracking [--job gd/cross_entropy/lr0.06667/seed0] [--steps 600] [--guard-tolerance 1e-2]
"""

import argparse
import functools
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import median_time
from experiments.configs.curvature_calibration import get_config
from experiments.grid import expand_grid
from sam_jax.curvature import gauss_newton_operator, gnvp, ritz_pairs
from sam_jax.losses import get_loss
from sam_jax.training import Hook, build_run, train_and_evaluate
from sam_jax.training.hooks.curvature import REFERENCE_ITERS_FACTOR, WARM_START_NOISE, warm_start_vector
from sam_jax.training.loop import log_spaced_steps


def job_config(name: str, steps: int):
    config = get_config("faithful")
    (job,) = [j for j in expand_grid(config) if j.name == name]
    job.config.num_steps = steps
    job.config.early_stop.metric = ""  # a fixed length, so both timed runs do the same work
    return job.config


def product_costs(run, reps: int) -> tuple[float, float, float]:
    """Seconds of one gradient, and GN products (from scratch, amortised) in gradient units."""
    state = run.init_state
    subset = {"image": jnp.asarray(run.data.train.images), "label": jnp.asarray(run.data.train.labels)}
    loss = get_loss(run.config.loss.name)

    def apply_fn(p, x):
        return run.eval_step(p, state.model_state, x)

    params = state.params
    direction = jax.tree.map(jnp.ones_like, params)
    grad = jax.jit(jax.grad(lambda p: loss(apply_fn(p, subset["image"]), subset["label"])))
    scratch = jax.jit(lambda p, v: gnvp(apply_fn, loss, p, subset, v))
    count = 20

    @jax.jit
    def many(p, v):
        matvec = gauss_newton_operator(apply_fn, loss, p, subset)
        return jax.lax.fori_loop(0, count, lambda _, w: matvec(w), v)

    @jax.jit
    def once(p, v):
        return gauss_newton_operator(apply_fn, loss, p, subset)(v)

    gradient_s = median_time(lambda: grad(params), reps)
    scratch_s = median_time(lambda: scratch(params, direction), reps)
    # Amortised: (count products - one product) / (count - 1), both including one linearisation.
    amortised_s = (
        median_time(lambda: many(params, direction), reps) - median_time(lambda: once(params, direction), reps)
    ) / (count - 1)
    return gradient_s, scratch_s / gradient_s, amortised_s / gradient_s


def trajectory_iterations(config, steps: int, guard_tolerance: float) -> list[dict]:
    """Cold and warm Lanczos on the parameters of the job's own trajectory, at its tracking steps."""
    schedule = sorted(
        log_spaced_steps(config.eval_points_per_decade, steps) | set(range(0, steps + 1, config.eval_every_steps))
    )
    saved = {}

    def keep(state):
        if int(state.step) in schedule:
            saved[int(state.step)] = jax.tree.map(np.asarray, state.params)
        return {}

    with tempfile.TemporaryDirectory() as workdir:
        run = build_run(config)
        train_and_evaluate(config, workdir, hooks=[Hook(1, keep)], run=run)
    state = run.init_state
    subset = {"image": jnp.asarray(run.data.train.images), "label": jnp.asarray(run.data.train.labels)}
    loss = get_loss(config.loss.name)
    curvature = config.curvature

    def operator(p):
        return gauss_newton_operator(lambda q, x: run.eval_step(q, state.model_state, x), loss, p, subset)

    guard, tol = curvature.guard_vectors, curvature.tolerance

    @functools.partial(jax.jit, static_argnames="tolerances")
    def estimate(p, v0, tolerances):
        return ritz_pairs(operator(p), p, k=len(tolerances), num_iters=curvature.num_iters, v0=v0, tol=tolerances)

    @jax.jit
    def reference(p):
        return ritz_pairs(operator(p), p, num_iters=REFERENCE_ITERS_FACTOR * curvature.num_iters).values[0]

    # The tolerance of each converged pair: cold from a random vector and warm from the previous
    # top Ritz vector converge the top pair; guarded, as the tracker does, also the guard pairs
    # (to the same tolerance, or to guard_tolerance), and starts from their vectors' sum.
    starts = {
        "cold": (tol,),
        "warm": (tol,),
        "guarded": (tol,) * (1 + guard),
        "guarded_loose": (tol,) + (guard_tolerance,) * guard,
    }
    first = jax.tree.map(jnp.asarray, saved[min(saved)])
    for tolerances in set(starts.values()):  # compiles once each, so no timed call below includes it
        jax.block_until_ready(estimate(first, first, tolerances))
    rows, previous = [], {}
    for index, step in enumerate(sorted(saved)):
        params = jax.tree.map(jnp.asarray, saved[step])
        cold = jax.tree.map(jnp.zeros_like, params)  # all zero: warm_start_vector draws a random start
        row = {"step": step, "reference": float(reference(params))}
        for name, tolerances in starts.items():
            v0 = warm_start_vector(previous.get(name, cold), jax.random.PRNGKey(index))
            start = time.perf_counter()
            pairs = jax.block_until_ready(estimate(params, v0, tolerances))
            seconds = time.perf_counter() - start
            if name != "cold":
                previous[name] = jax.tree.map(lambda v: v.sum(axis=0), pairs.vectors)
            row[f"{name}_steps"] = int(pairs.num_steps)
            row[f"{name}_s"] = seconds
            row[f"{name}_deviation"] = abs(float(pairs.values[0]) - row["reference"]) / abs(row["reference"])
        rows.append(row)
    return rows


def tracking_overhead(config) -> tuple[float, float]:
    """Wall seconds of the job without and with curvature tracking (evaluation on in both)."""
    untracked = config.copy_and_resolve_references()
    untracked.curvature.every = 0
    times = []
    for cfg in (untracked, config):
        with tempfile.TemporaryDirectory() as workdir:
            run = build_run(cfg)
            train_and_evaluate(cfg, os.path.join(workdir, "warmup"), run=run)  # compiles everything
            start = time.perf_counter()
            train_and_evaluate(cfg, os.path.join(workdir, "timed"), run=run)
            times.append(time.perf_counter() - start)
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default="gd/cross_entropy/lr0.06667/seed0", help="a job name of the faithful grid")
    parser.add_argument("--steps", type=int, default=600, help="trajectory length (no early stop)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--guard-tolerance", type=float, default=1e-2, help="the looser guard's tolerance")
    args = parser.parse_args()
    print(f"# jax {jax.__version__}, devices {jax.devices()}; job {args.job}, {args.steps} steps")
    config = job_config(args.job, args.steps)
    config.progress_bar = False

    gradient_s, scratch, amortised = product_costs(build_run(config), args.reps)
    print(
        "\n## One GN-vector product on the whole 5k train subset, in units of one gradient there\n\n"
        "| one gradient (ms) | GN product from scratch (`gnvp`) | GN product, linearised operator (amortised) |\n"
        f"|---|---|---|\n| {1e3 * gradient_s:.1f} | {scratch:.2f} | {amortised:.2f} |"
    )

    rows = trajectory_iterations(config, args.steps, args.guard_tolerance)
    labels = {
        "cold": "cold (random)",
        "warm": f"warm (previous top Ritz vector + {WARM_START_NOISE} noise)",
        "guarded": f"warm with {config.curvature.guard_vectors} guard vector(s), as the tracker does",
        "guarded_loose": f"the same, guard vector(s) converged to {args.guard_tolerance:g}",
    }
    table = []
    for name, label in labels.items():
        kept = rows if name == "cold" else rows[1:]  # the first point of a warm chain is cold
        steps, seconds = np.mean([r[f"{name}_steps"] for r in kept]), np.mean([r[f"{name}_s"] for r in kept])
        worst = max(r[f"{name}_deviation"] for r in rows)
        table.append(f"| {label} | {steps:.1f} | {seconds:.3f} | {seconds / gradient_s:.1f} | {worst:.1e} |")
    cold = np.mean([r["cold_steps"] for r in rows])
    print(
        f"\n## Lanczos on the real trajectory: {len(rows)} tracking points, tolerance "
        f"{config.curvature.tolerance:g}, at most {config.curvature.num_iters} steps\n\n"
        "| start | mean Lanczos steps | mean s per estimate | mean estimate cost in gradients | "
        f"largest relative deviation from the cold {REFERENCE_ITERS_FACTOR}x-longer run |\n|---|---|---|---|---|\n"
        + "\n".join(table)
        + "\n\nWarm / cold steps: "
        + ", ".join(f"{name} {np.mean([r[name + '_steps'] for r in rows[1:]]) / cold:.2f}" for name in list(labels)[1:])
        + "."
    )
    plain, tracked = tracking_overhead(config)
    print(
        f"\n## Tracking overhead of the preset on this job ({args.steps} steps)\n\n"
        "| loop s, no curvature tracking | loop s, tracking | overhead |\n|---|---|---|\n"
        f"| {plain:.1f} | {tracked:.1f} | {100 * (tracked - plain) / plain:.0f} % |"
    )


if __name__ == "__main__":
    main()
