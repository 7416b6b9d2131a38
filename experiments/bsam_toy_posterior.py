"""Möllenhoff & Khan (2022, arXiv:2210.01620), Fig. 3 and Fig. 5(c), App. G.1: bSAM against an exact posterior.

    python -m experiments.bsam_toy_posterior
    python -m experiments.bsam_toy_posterior --config=experiments/configs/bsam_toy_posterior.py:quick

A 2-D Bayesian logistic regression (no bias, linearly separable data, Gaussian prior): the exact
posterior by numerical integration on a weight grid; bSAM's diagonal Gaussian (Algorithm 1 on the
full batch, ``sam_jax.optim.bsam``); the SAM point estimate (``sam_jax.optim.sam``); and the Laplace
approximation at the SAM solution, ``N(w_SAM, H^-1)`` with ``H`` the Hessian of the negative log
joint there, full and diagonal (``diag(1 / diag(H))``). For each Gaussian: the KL divergence to the
exact posterior (both directions, on the grid) and the mean and largest absolute difference of its
predictive ``p(y = 1 | x)`` from the exact one on the plotted input grid. Writes to ``workdir``:
``toy_posterior.json`` and ``.md`` (the numbers), ``toy_predictive.png`` (Fig. 3's maps) and
``toy_posterior.png`` (Fig. 5(c)'s posterior shapes).
"""

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np
import optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from experiments import cli
from sam_jax import optim


def make_data(config: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``[N, 2]`` and labels in {0, 1}: the side of a line through the origin, with a margin."""
    rng = np.random.default_rng(config.seed)
    angle = np.deg2rad(config.data.angle_degrees)
    normal = np.array([np.cos(angle), np.sin(angle)])
    points = []
    while len(points) < config.data.num_points:
        x = rng.normal(scale=config.data.input_scale, size=2)
        if abs(x @ normal) >= config.data.margin:
            points.append(x)
    x = np.array(points)
    return x, (x @ normal > 0).astype(np.float64)


def mean_nll(w: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean negative log-likelihood of logistic regression, ``mean_i log(1 + exp(-s_i w^T x_i))``."""
    logits = x @ w
    return jnp.mean(jax.nn.softplus(logits) - y * logits)


def log_joint(w: np.ndarray, x: np.ndarray, y: np.ndarray, prior_precision: float) -> np.ndarray:
    """``log p(D | w) + log p(w)`` up to a constant, for weights ``[..., 2]``."""
    logits = w @ x.T
    log_likelihood = np.sum(y * logits - np.logaddexp(0.0, logits), axis=-1)
    return log_likelihood - 0.5 * prior_precision * np.sum(w**2, axis=-1)


def gaussian_log_density(w: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    diff = w - mean
    solved = np.linalg.solve(cov, diff.reshape(-1, 2).T).T.reshape(diff.shape)
    return -0.5 * np.sum(diff * solved, axis=-1) - 0.5 * np.log(np.linalg.det(2 * np.pi * cov))


def grid_distribution(log_density: np.ndarray) -> np.ndarray:
    """Cell probabilities (summing to 1) from log densities on a uniform grid."""
    p = np.exp(log_density - log_density.max())
    return p / p.sum()


def kl_on_grid(p: np.ndarray, q: np.ndarray) -> float:
    """``KL(p || q)`` between cell probabilities (cells where ``p`` underflows to 0 add nothing)."""
    mask = p > 0
    return float(np.sum(p[mask] * (np.log(p[mask]) - np.log(np.maximum(q[mask], 1e-300)))))


def predictive_on_grid(cells: np.ndarray, w: np.ndarray, inputs: np.ndarray, tail: float = 1e-10) -> np.ndarray:
    """``sum_j cells_j sigmoid(w_j^T x)`` for inputs ``[M, 2]``, over the heaviest cells holding all
    but ``tail`` of the mass (the rest changes a probability by at most ``tail``)."""
    order = np.argsort(cells)[::-1]
    keep = order[: np.searchsorted(np.cumsum(cells[order]), 1.0 - tail) + 1]
    cells, w = cells[keep], w[keep]
    probs = np.zeros(len(inputs))
    for start in range(0, len(inputs), 256):
        chunk = inputs[start : start + 256]
        probs[start : start + 256] = (0.5 * (1.0 + np.tanh(0.5 * (w @ chunk.T)))).T @ cells
    return probs


def train_sam(config: ml_collections.ConfigDict, x: jax.Array, y: jax.Array) -> np.ndarray:
    """Full-batch SAM with heavy-ball GD as its base; the prior's L2 term ``delta w`` in the base."""
    num_data = len(y)
    base = optax.chain(
        optax.add_decayed_weights(config.prior_precision / num_data),
        optax.sgd(config.sam.learning_rate, momentum=config.sam.momentum),
    )
    tx = optim.sam(base, config.sam.rho)
    grad_fn = jax.grad(lambda w: mean_nll(w, x, y))

    def step(carry: tuple, _: None) -> tuple:
        w, state = carry
        updates, state = tx.update(grad_fn(w), state, w, grad_fn=grad_fn)
        return (optax.apply_updates(w, updates), state), None

    w0 = jnp.zeros(2)
    (w, _), _ = jax.lax.scan(step, (w0, tx.init(w0)), None, length=config.sam.steps)
    return np.asarray(w)


def train_bsam(
    config: ml_collections.ConfigDict, x: jax.Array, y: jax.Array, damping: float
) -> tuple[np.ndarray, np.ndarray]:
    """Full-batch bSAM (Algorithm 1) with a cosine learning rate; returns the mean and the precision ``N s``."""
    num_data = len(y)
    b = config.bsam
    tx = optim.bsam(
        optax.cosine_decay_schedule(b.learning_rate, b.steps),
        b.rho,
        num_data,
        prior_precision=config.prior_precision,
        beta1=b.beta1,
        beta2=b.beta2,
        damping=damping,
        seed=config.seed,
    )
    grad_fn = jax.grad(lambda w: mean_nll(w, x, y))

    def step(carry: tuple, _: None) -> tuple:
        w, state = carry
        updates, state = tx.update(None, state, w, grad_fn=grad_fn)
        return (optax.apply_updates(w, updates), state), None

    w0 = jnp.zeros(2)
    (w, state), _ = jax.lax.scan(step, (w0, tx.init(w0)), None, length=b.steps)
    return np.asarray(w), num_data * np.asarray(state[0].precision)


def laplace_precision(w: np.ndarray, x: jax.Array, y: jax.Array, prior_precision: float) -> np.ndarray:
    """The Hessian of the negative log joint, ``N * Hessian(mean NLL) + prior_precision I``, at ``w``."""
    hessian = jax.hessian(lambda v: mean_nll(v, x, y))(jnp.asarray(w))
    return len(y) * np.asarray(hessian) + prior_precision * np.eye(2)


def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Computes every posterior, its numbers and the figures; returns the numbers."""
    os.makedirs(config.workdir, exist_ok=True)
    x_np, y_np = make_data(config)
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)

    axis = np.linspace(config.weight_grid.low, config.weight_grid.high, config.weight_grid.points)
    w_grid = np.stack(np.meshgrid(axis, axis, indexing="xy"), axis=-1)  # [G, G, 2]
    w_flat = w_grid.reshape(-1, 2)
    exact = grid_distribution(log_joint(w_flat, x_np, y_np, config.prior_precision))
    exact_mean = exact @ w_flat
    exact_cov = (w_flat - exact_mean).T @ ((w_flat - exact_mean) * exact[:, None])
    map_w = w_flat[np.argmax(exact)]

    w_sam = train_sam(config, x, y)
    hessian = laplace_precision(w_sam, x, y, config.prior_precision)
    gaussians = {}
    for damping in config.bsam.dampings:
        bsam_mean, bsam_precision = train_bsam(config, x, y, damping)
        gaussians[bsam_name(damping)] = (bsam_mean, np.diag(1.0 / bsam_precision))
    gaussians["laplace_diag"] = (w_sam, np.diag(1.0 / np.diag(hessian)))
    gaussians["laplace_full"] = (w_sam, np.linalg.inv(hessian))

    in_axis = np.linspace(config.input_grid.low, config.input_grid.high, config.input_grid.points)
    inputs = np.stack(np.meshgrid(in_axis, in_axis, indexing="xy"), axis=-1).reshape(-1, 2)
    predictive = {"exact": predictive_on_grid(exact, w_flat, inputs)}
    predictive["sam_point"] = 1.0 / (1.0 + np.exp(-(inputs @ w_sam)))
    cells = {}
    for name, (mean, cov) in gaussians.items():
        cells[name] = grid_distribution(gaussian_log_density(w_flat, mean, cov))
        predictive[name] = predictive_on_grid(cells[name], w_flat, inputs)

    spacing = axis[1] - axis[0]
    results: dict[str, Any] = {
        "data": {"x": x_np.tolist(), "y": y_np.tolist()},
        "exact": {"mean": exact_mean.tolist(), "cov": exact_cov.tolist(), "map": map_w.tolist()},
        "sam": {"w": w_sam.tolist()},
        "weight_grid_spacing": spacing,
        # The exact posterior's mass in the grid's outermost cells: the grid must hold the posterior.
        "exact_mass_on_grid_border": float(exact.reshape(w_grid.shape[:2])[[0, -1], :].sum())
        + float(exact.reshape(w_grid.shape[:2])[:, [0, -1]].sum()),
        "methods": {},
    }
    for name in (*gaussians, "sam_point"):
        difference = np.abs(predictive[name] - predictive["exact"])
        entry = {
            "predictive_mean_abs_diff": float(difference.mean()),
            "predictive_max_abs_diff": float(difference.max()),
        }
        if name in gaussians:
            mean, cov = gaussians[name]
            entry.update(
                mean=mean.tolist(),
                cov=cov.tolist(),
                kl_to_exact=kl_on_grid(cells[name], exact),
                kl_from_exact=kl_on_grid(exact, cells[name]),
                # A Gaussian narrower than the grid spacing is not resolved by the grid integrals.
                min_std_in_grid_cells=float(np.sqrt(np.linalg.eigvalsh(cov).min()) / spacing),
            )
        results["methods"][name] = entry

    with open(os.path.join(config.workdir, "toy_posterior.json"), "w") as f:
        json.dump({"config": config.to_dict(), **results}, f, indent=2)
    with open(os.path.join(config.workdir, "toy_posterior.md"), "w") as f:
        f.write(markdown_table(results) + "\n")
    _plot_predictive(config, x_np, y_np, in_axis, predictive)
    _plot_posterior(config, axis, exact, results, gaussians)
    return results


NAMES = {
    "exact": "exact Bayes",
    "sam_point": "SAM (point estimate)",
    "laplace_diag": "SAM + Laplace (diagonal)",
    "laplace_full": "SAM + Laplace (full)",
}


def bsam_name(damping: float) -> str:
    return f"bsam_gamma{damping:g}"


def display_name(name: str) -> str:
    if name.startswith("bsam_gamma"):
        return f"bSAM (γ = {name[len('bsam_gamma') :]})"
    return NAMES[name]


def markdown_table(results: dict[str, Any]) -> str:
    """The numbers: each method's Gaussian, its KL to and from the exact posterior, its predictive error."""
    lines = [
        "| method | mean | std (w1, w2) | KL(q ‖ exact) | KL(exact ‖ q) | mean \\|Δp\\| | max \\|Δp\\| |",
        "|---|---|---|---|---|---|---|",
    ]
    exact = results["exact"]
    std = np.sqrt(np.diag(exact["cov"]))
    lines.append(
        f"| exact Bayes (grid) | ({exact['mean'][0]:.3f}, {exact['mean'][1]:.3f}) | ({std[0]:.3f}, {std[1]:.3f}) "
        "| 0 | 0 | 0 | 0 |"
    )
    for name, entry in results["methods"].items():
        if "mean" in entry:
            std = np.sqrt(np.diag(entry["cov"]))
            gaussian = (
                f"({entry['mean'][0]:.3f}, {entry['mean'][1]:.3f}) | ({std[0]:.3f}, {std[1]:.3f}) "
                f"| {entry['kl_to_exact']:.3f} | {entry['kl_from_exact']:.3f}"
            )
        else:
            w = results["sam"]["w"]
            gaussian = f"({w[0]:.3f}, {w[1]:.3f}) | 0 | — | —"
        lines.append(
            f"| {display_name(name)} | {gaussian} | {entry['predictive_mean_abs_diff']:.4f} "
            f"| {entry['predictive_max_abs_diff']:.4f} |"
        )
    return "\n".join(lines)


def _scatter_data(ax: plt.Axes, x: np.ndarray, y: np.ndarray) -> None:
    ax.scatter(*x[y == 1].T, c="tab:red", marker="o", edgecolors="k", s=25, label="y = 1")
    ax.scatter(*x[y == 0].T, c="tab:blue", marker="s", edgecolors="k", s=25, label="y = 0")


def _plot_predictive(config, x, y, in_axis, predictive) -> None:
    names = ("exact", *(bsam_name(d) for d in config.bsam.dampings), "sam_point", "laplace_diag", "laplace_full")
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 4.2))
    size = len(in_axis)
    for ax, name in zip(axes, names):
        image = ax.imshow(
            predictive[name].reshape(size, size),
            origin="lower",
            extent=(in_axis[0], in_axis[-1], in_axis[0], in_axis[-1]),
            cmap="RdBu_r",
            vmin=0,
            vmax=1,
        )
        ax.contour(in_axis, in_axis, predictive[name].reshape(size, size), [0.1, 0.5, 0.9], colors="k", linewidths=0.6)
        _scatter_data(ax, x, y)
        ax.set_title(display_name(name))
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes, fraction=0.015, label="p(y = 1 | x)")
    fig.savefig(os.path.join(config.workdir, "toy_predictive.png"), dpi=110, bbox_inches="tight")
    plt.close(fig)


def _ellipse(mean: np.ndarray, cov: np.ndarray, scale: float = 2.0) -> np.ndarray:
    values, vectors = np.linalg.eigh(cov)
    angles = np.linspace(0, 2 * np.pi, 200)
    circle = np.stack([np.cos(angles), np.sin(angles)])
    return (mean[:, None] + vectors @ (scale * np.sqrt(values)[:, None] * circle)).T


def _plot_posterior(config, axis, exact, results, gaussians) -> None:
    fig, ax = plt.subplots(figsize=(6, 5.5))
    size = len(axis)
    density = exact.reshape(size, size)
    ax.contourf(axis, axis, density, levels=12, cmap="Greys")
    styles = {"laplace_diag": ("tab:green", ":"), "laplace_full": ("tab:green", "--")}
    bsam_colors = iter(("tab:orange", "tab:red", "tab:brown"))
    for name, (mean, cov) in gaussians.items():
        color, style = styles.get(name) or (next(bsam_colors), "-")
        ax.plot(*_ellipse(mean, cov).T, color=color, linestyle=style, label=f"{display_name(name)} (2 std)")
        if name not in styles:
            ax.plot(*mean, "^", color=color)
    ax.plot(*results["exact"]["map"], "kx", markersize=9, label="MAP (exact mode)")
    ax.plot(*results["exact"]["mean"], "k+", markersize=11, label="exact mean")
    ax.plot(*results["sam"]["w"], "o", color="tab:purple", label="SAM")
    ax.set_xlabel("w1")
    ax.set_ylabel("w2")
    ax.set_title("Posterior over the two weights (grey: exact)")
    ax.legend(fontsize=8, loc="upper left")
    fig.savefig(os.path.join(config.workdir, "toy_posterior.png"), dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(config: ml_collections.ConfigDict) -> None:
    jax.config.update("jax_enable_x64", True)  # the grid integrals and the 2-D optimisers in float64
    results = run(config)
    print(markdown_table(results))
    print(f"Written to {config.workdir}")


if __name__ == "__main__":
    cli.run(main, os.path.join(os.path.dirname(__file__), "configs", "bsam_toy_posterior.py:default"))
