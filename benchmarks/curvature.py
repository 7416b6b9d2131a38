"""Benchmark of the curvature engine on a tanh MLP 784-128-128-10 (118,282 parameters), batch 1000.

Measures (1) the cost of one Hessian- and one Gauss-Newton-vector product relative to one
gradient, (2) the relative error of the top-1 and top-5 Hessian eigenvalues against a converged
reference (scipy ``eigsh``, tol 1e-10, on the float64 HVP) as a function of the number of
Lanczos iterations, for ``sam_jax.curvature.eigenvalues`` and, when installed, matfree's
Lanczos with full reorthogonalisation, with the share of run time spent outside the products
("bookkeeping"), and (3) the overhead of tracking GN and Hessian sharpness every 100 steps of
SGD. Prints Markdown tables.

Usage: python -m benchmarks.curvature [--iters 10,20,30,50,80] [--steps 300]
"""

import argparse
import contextlib
import importlib.metadata
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

jax.config.update("jax_enable_x64", True)  # float64 is opt-in per array below; float32 stays default

from benchmarks.timing import median_time  # noqa: E402
from sam_jax import curvature  # noqa: E402
from sam_jax.losses import cross_entropy  # noqa: E402
from sam_jax.models import MLP  # noqa: E402
from sam_jax.training.hooks import default_curvature_config, make_curvature_tracker  # noqa: E402

MODEL = MLP(num_classes=10, widths=(128, 128), activation="tanh")


def problem(dtype, n=1000, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((n, 784)), dtype)
    y = jnp.asarray(rng.integers(0, 10, n), jnp.int32)
    params = MODEL.init(jax.random.PRNGKey(seed), x[:1])["params"]
    return jax.tree.map(lambda a: a.astype(dtype), params), {"image": x, "label": y}


def apply_fn(params, x):
    return MODEL.clone(dtype=x.dtype).apply({"params": params}, x)


def loss_fn(params, batch):
    return cross_entropy(apply_fn(params, batch["image"]), batch["label"])


def amortised(make_matvec, count):
    """jit of ``count`` normalised products in a loop, the matvec built once (as Lanczos does)."""

    def run(params, batch, v):
        matvec = make_matvec(params, batch)

        def body(_, u):
            u = matvec(u)
            return jax.tree.map(lambda a: a / optax.tree.norm(u), u)

        return jax.lax.fori_loop(0, count, body, v)

    return jax.jit(run)


def hessian_linearised(params, batch):
    return curvature.hessian_operator(lambda q: loss_fn(q, batch), params)


def product_costs(reps, count=10):
    print(
        f"\n## Cost of one product relative to one gradient (jit, batch 1000, median of {reps}; "
        f"products timed as a loop of {count}, operator built once per loop)\n\n"
        "| dtype | gradient ms | HVP (jvp of grad) | HVP, linearised | GNVP (fresh) | "
        "GNVP, linearised |\n|---|---|---|---|---|---|"
    )
    makers = [
        lambda p, b: lambda v: curvature.hvp(lambda q: loss_fn(q, b), p, v),
        hessian_linearised,
        lambda p, b: lambda v: curvature.gnvp(apply_fn, cross_entropy, p, b, v),
        lambda p, b: curvature.gauss_newton_operator(apply_fn, cross_entropy, p, b),
    ]
    for dtype in (jnp.float32, jnp.float64):
        params, batch = problem(dtype)
        v = jax.tree.map(jnp.ones_like, params)
        grad = jax.jit(jax.grad(loss_fn))
        t_grad = median_time(lambda: grad(params, batch), reps)
        loops = [amortised(make, count) for make in makers]
        ratios = [median_time(lambda: loop(params, batch, v), reps) / count / t_grad for loop in loops]
        print(f"| {jnp.dtype(dtype).name} | {t_grad * 1e3:.2f} | " + " | ".join(f"{r:.2f}x" for r in ratios) + " |")


def reference_spectrum(params, batch):
    import scipy.sparse.linalg as sla

    flat, unravel = ravel_pytree(params)
    hvp = jax.jit(lambda t, v: ravel_pytree(curvature.hvp(lambda q: loss_fn(q, batch), unravel(t), unravel(v)))[0])
    count = [0]

    def matvec(v):
        count[0] += 1
        return np.asarray(hvp(flat, jnp.asarray(v)))

    op = sla.LinearOperator((flat.size, flat.size), matvec=matvec, dtype=np.float64)
    start = time.perf_counter()
    values = sla.eigsh(op, k=5, which="LA", tol=1e-10, v0=np.ones(flat.size))[0]
    print(
        f"\nReference: scipy eigsh(k=5, which='LA', tol=1e-10) on the float64 HVP, {count[0]} HVPs, "
        f"{time.perf_counter() - start:.1f} s; top-5 = {np.sort(values)[::-1]}"
    )
    return np.sort(values)[::-1]


def matfree_solver(num_iters):
    from matfree import decomp

    tridiag = decomp.tridiag_sym(num_iters, reortho="full", materialize=True)

    def top5(params, batch, v0):
        matvec = curvature.hessian_operator(lambda q: loss_fn(q, batch), params)
        flat, unravel = ravel_pytree(params)

        def flat_matvec(v):
            return ravel_pytree(matvec(unravel(v)))[0]

        t = tridiag(flat_matvec, ravel_pytree(v0)[0]).J_small
        return jnp.linalg.eigvalsh(t)[::-1][:5]

    return jax.jit(top5)


def eigenvalue_accuracy(iters, reps):
    params, batch = problem(jnp.float64)
    reference = reference_spectrum(params, batch)
    v0 = jax.tree.map(lambda a: jax.random.normal(jax.random.PRNGKey(1), a.shape, a.dtype), params)
    solvers = {"sam_jax": None}
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):  # matfree is optional
        solvers[f"matfree {importlib.metadata.version('matfree')}"] = matfree_solver
    print(
        "\n## Top Hessian eigenvalues vs Lanczos iterations (float64; bookkeeping = run time "
        "minus that of a loop of as many linearised HVPs, relative to the latter)\n\n"
        "| solver | iterations | rel. err top-1 | max rel. err top-5 | run s | bookkeeping |\n"
        "|---|---|---|---|---|---|"
    )
    for name, factory in solvers.items():
        for m in iters:
            if factory is None:
                solve = jax.jit(
                    lambda p, b, v, m=m: curvature.eigenvalues(
                        curvature.hessian_operator(lambda q: loss_fn(q, b), p),
                        p,
                        k=5,
                        num_iters=m,
                        key=jax.random.PRNGKey(1),
                    )[0]
                )
            else:
                solve = factory(m)
            t_run = median_time(lambda: solve(params, batch, v0), reps)
            products = amortised(hessian_linearised, m)
            t_products = median_time(lambda: products(params, batch, v0), reps)
            values = np.asarray(solve(params, batch, v0))
            errors = np.abs(values - reference) / np.abs(reference)
            overhead = (t_run - t_products) / t_products
            print(f"| {name} | {m} | {errors[0]:.1e} | {errors.max():.1e} | {t_run:.2f} | {100 * overhead:.0f} % |")


def tracking_overhead(steps, every):
    params, _ = problem(jnp.float32)
    rng = np.random.default_rng(1)
    train_x = jnp.asarray(rng.standard_normal((12800, 784)), jnp.float32)
    train_y = jnp.asarray(rng.integers(0, 10, train_x.shape[0]), jnp.int32)
    subset = {"image": train_x[:1000], "label": train_y[:1000]}
    opt = optax.sgd(0.05)

    @jax.jit
    def train_step(params, opt_state, batch):
        grads = jax.grad(loss_fn)(params, batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    config = default_curvature_config()
    config.every = every
    config.quantities = "hessian,gauss_newton"
    tracker = make_curvature_tracker(config, lambda p, s, x: apply_fn(p, x), cross_entropy, batch_size=128)

    def run(track):
        p, state = params, opt.init(params)
        start, tracked = time.perf_counter(), 0.0
        for step in range(steps):
            i = (step * 128) % (train_x.shape[0] - 128)
            p, state = train_step(p, state, {"image": train_x[i : i + 128], "label": train_y[i : i + 128]})
            if track and step % every == 0:
                jax.block_until_ready(p)
                t0 = time.perf_counter()
                tracker(p, {}, subset["image"], subset["label"], jax.random.PRNGKey(step))
                tracked += time.perf_counter() - t0
        jax.block_until_ready(p)
        return time.perf_counter() - start, tracked

    jax.block_until_ready(train_step(params, opt.init(params), {"image": train_x[:128], "label": train_y[:128]}))
    start = time.perf_counter()
    tracker(params, {}, subset["image"], subset["label"], jax.random.PRNGKey(0))
    compile_s = time.perf_counter() - start
    plain, _ = run(track=False)
    total, tracked = run(track=True)
    print(
        f"\n## Tracking overhead: SGD (batch 128, float32) for {steps} steps, tracker every {every} "
        "steps on a 1000-example subset (Hessian and GN top-1, 30 Lanczos steps each)\n\n"
        "| training s (no tracking) | training s (tracking) | tracker s | overhead | "
        "tracker compile s (once) |\n|---|---|---|---|---|\n"
        f"| {plain:.2f} | {total:.2f} | {tracked:.2f} | {100 * (total - plain) / plain:.0f} % | "
        f"{compile_s:.1f} |"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", default="10,20,30,50,80")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=100)
    args = parser.parse_args()
    print(f"# jax {jax.__version__}, devices {jax.devices()}")
    product_costs(max(args.reps, 5))
    eigenvalue_accuracy([int(m) for m in args.iters.split(",")], args.reps)
    tracking_overhead(args.steps, args.every)


if __name__ == "__main__":
    main()
