"""Does SAM get stuck at a saddle where GD / SGD escapes, and does SSAM change that? (Tan et al. 2024)

    python -m experiments.ssam_saddle --config=experiments/configs/ssam_saddle.py:full

Tan et al. (2024, arXiv:2401.07250, abstract): SAM "is more prone to getting stuck at the saddle
points" than SGD. Every registered optimizer of ``config.methods`` (SGD base with
``config.momentum``, no weight decay) starts near the strict saddle of each problem of
``sam_jax.analysis.saddle`` for every learning rate, radius (SAM family), gradient-noise level and
seed of the config, all in one vmapped program per (problem, method, radius). Writes to
``<workdir>/``: ``runs.csv`` (one row per run: escape step, final loss, final distance from the
saddle), ``escape.csv`` and ``escape.md`` (per cell over the seeds: how many escaped and their
median, min and max escape step), ``saddle.json`` (the config, the rows, date, device and wall
time), ``trajectories_<problem>.png`` and ``escape_<problem>.png``.
"""

import datetime
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import cli
from experiments.tables import markdown_table, write_csv
from sam_jax.analysis.saddle import (
    SaddleProblem,
    Trajectory,
    escape_step,
    escape_threshold,
    linear_network,
    quartic_saddle,
    simulate,
)
from sam_jax.analysis.saddle_figures import plot_escape_maps, plot_trajectories
from sam_jax.optim import BuildContext, build_optimizer, get_optimizer_spec, hparam_blocks, validate_hparams

ROWS_FILE = "runs.csv"


def make_problem(name: str, config: ml_collections.ConfigDict) -> SaddleProblem:
    """The problem ``name`` (``quartic_saddle`` or ``linear_network``) with the config's settings."""
    if name == "quartic_saddle":
        return quartic_saddle()
    if name == "linear_network":
        return linear_network(tuple(config.linear_singular_values), config.linear_hidden)
    raise ValueError(f"Unknown saddle problem {name!r}; use quartic_saddle or linear_network.")


def optimizer_blocks(name: str, rho: float | None, momentum: float) -> dict[str, dict[str, Any]]:
    """Every optimizer block at its defaults, with ``name``'s radius and its SGD base's momentum set."""
    blocks = hparam_blocks({})
    base = blocks[name].get("base", name)
    blocks[base] = {**blocks[base], "momentum": momentum, "nesterov": False, "weight_decay": 0.0}
    if rho is not None:
        blocks[name] = {**blocks[name], "rho": rho}
    for block in {name, base}:
        validate_hparams(block, blocks[block])
    return blocks


def has_radius(name: str) -> bool:
    """Whether the registered optimizer ``name`` perturbs by a radius rho (the SAM family)."""
    return get_optimizer_spec(name).perturbation_radius(hparam_blocks({})[name]) is not None


def optimizer_factory(
    name: str, rho: float | None, momentum: float
) -> Callable[[jax.Array], optax.GradientTransformation]:
    """``learning_rate -> transformation`` of the registered optimizer ``name`` (the rate may be traced)."""
    blocks = optimizer_blocks(name, rho, momentum)

    def make(learning_rate: jax.Array) -> optax.GradientTransformation:
        context = BuildContext(optax.constant_schedule(learning_rate), 1, 0, blocks, 1)
        return build_optimizer(name, context)

    return make


def run_cell_grid(problem: SaddleProblem, make_tx: Callable, config: ml_collections.ConfigDict) -> Trajectory:
    """Every (learning rate, noise level, seed) of ``config`` for one optimizer: axes ``[lr, noise, seed, ...]``.

    Seed ``s`` draws the initial point from ``split(PRNGKey(s))[0]`` and the gradient noise from the
    other half, so every optimizer, rate and radius starts from the same points and sees the same noise.
    """
    keys = jax.vmap(lambda s: jax.random.split(jax.random.PRNGKey(s)))(jnp.asarray(config.seeds))
    starts = jax.vmap(lambda k: problem.init(k, config.init_scale))(keys[:, 0])

    def one(learning_rate, noise_std, start, noise_key):
        return simulate(problem, make_tx(learning_rate), start, config.num_steps, noise_std, noise_key)

    over_seeds = jax.vmap(one, (None, None, 0, 0))
    over_noise = jax.vmap(over_seeds, (None, 0, None, None))
    over_rates = jax.vmap(over_noise, (0, None, None, None))
    rates = jnp.asarray(config.learning_rates, jnp.float32)
    noises = jnp.asarray(config.noise_stds, jnp.float32)
    return jax.jit(over_rates)(rates, noises, starts, keys[:, 1])


def run_rows(
    problem: SaddleProblem, method: str, rho: float | None, runs: Trajectory, config: ml_collections.ConfigDict
) -> list[dict]:
    """One row per run of :func:`run_cell_grid`'s output."""
    threshold = escape_threshold(problem, config.escape_fraction)
    steps = np.asarray(escape_step(runs.losses, threshold))
    rows = []
    for i, learning_rate in enumerate(config.learning_rates):
        for j, noise_std in enumerate(config.noise_stds):
            for k, seed in enumerate(config.seeds):
                rows.append(
                    {
                        "problem": problem.name,
                        "method": method,
                        "noise_std": noise_std,
                        "learning_rate": learning_rate,
                        "rho": "" if rho is None else rho,
                        "seed": seed,
                        "escape_step": int(steps[i, j, k]) if steps[i, j, k] >= 0 else "",
                        "final_loss": float(runs.losses[i, j, k, -1]),
                        "diverged": not math.isfinite(float(runs.losses[i, j, k, -1])),
                        "final_distance": float(runs.distances[i, j, k, -1]),
                    }
                )
    return rows


def summarise(rows: Sequence[dict]) -> list[dict]:
    """Per (problem, noise, method, learning rate, rho): seeds, escaped, diverged (non-finite final
    loss), median/min/max escape step over the seeds that escaped, and the median final loss and
    distance from the saddle."""
    cells: dict[tuple, list[dict]] = {}
    for row in rows:
        key = tuple(row[k] for k in ("problem", "noise_std", "method", "learning_rate", "rho"))
        cells.setdefault(key, []).append(row)
    summary = []
    for (problem, noise_std, method, learning_rate, rho), group in cells.items():
        steps = [r["escape_step"] for r in group if r["escape_step"] != ""]
        summary.append(
            {
                "problem": problem,
                "noise_std": noise_std,
                "method": method,
                "learning_rate": learning_rate,
                "rho": rho,
                "seeds": len(group),
                "escaped": len(steps),
                "diverged": sum(r["diverged"] for r in group),
                "median_escape_step": float(np.median(steps)) if steps else math.nan,
                "min_escape_step": min(steps) if steps else math.nan,
                "max_escape_step": max(steps) if steps else math.nan,
                "median_final_loss": float(np.median([r["final_loss"] for r in group])),
                "median_final_distance": float(np.median([r["final_distance"] for r in group])),
            }
        )
    return summary


def _cell(row: dict) -> str:
    text = f"{row['median_escape_step']:.0f} ({row['escaped']}/{row['seeds']})" if row["escaped"] else "stuck"
    if not row["escaped"]:
        text += f" 0/{row['seeds']}"
    return text + (f", {row['diverged']} diverged" if row["diverged"] else "")


def markdown_report(summary: Sequence[dict], config: ml_collections.ConfigDict, threshold: dict[str, float]) -> str:
    """Per problem and noise level: a table of median escape step (escaped/seeds), rows (method, lr), columns rho."""
    rhos = list(config.rhos)
    header = ["method", "lr", "no rho"] + [f"rho {r:g}" for r in rhos]
    sections = []
    for problem in config.problems:
        for noise_std in config.noise_stds:
            body = []
            for method in config.methods:
                for learning_rate in config.learning_rates:
                    cells = {
                        r["rho"]: _cell(r)
                        for r in summary
                        if (r["problem"], r["noise_std"], r["method"], r["learning_rate"])
                        == (problem, noise_std, method, learning_rate)
                    }
                    body.append([method, f"{learning_rate:g}", cells.get("", "")] + [cells.get(r, "") for r in rhos])
            sections.append(
                f"### {problem}, gradient noise std {noise_std:g} (escape: loss < {threshold[problem]:g} "
                f"within {config.num_steps} steps)\n\n" + "\n".join(markdown_table(header, body))
            )
    return "\n\n".join(sections) + "\n"


def _escape_maps(problem: str, summary: Sequence[dict], config: ml_collections.ConfigDict, path: str) -> None:
    medians, counts = {}, {}
    for noise_std in config.noise_stds:
        for method in config.methods:
            rhos = list(config.rhos) if has_radius(method) else [""]
            grid = {
                (r["learning_rate"], r["rho"]): r
                for r in summary
                if (r["problem"], r["noise_std"], r["method"]) == (problem, noise_std, method)
            }
            medians[(noise_std, method)] = np.array(
                [[grid[(lr, rho)]["median_escape_step"] for rho in rhos] for lr in config.learning_rates]
            )
            counts[(noise_std, method)] = np.array(
                [[grid[(lr, rho)]["escaped"] for rho in rhos] for lr in config.learning_rates]
            )
    plot_escape_maps(
        medians,
        counts,
        len(config.seeds),
        list(config.learning_rates),
        list(config.rhos),
        config.num_steps,
        path,
        f"{problem}: median escape step of the seeds that escaped (escaped/seeds)",
    )


def _contour(problem: SaddleProblem) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The loss on a grid of the two coordinates, for a problem whose parameters are those coordinates."""
    if problem.name != "quartic_saddle":
        return None
    x, y = np.meshgrid(np.linspace(-0.6, 0.6, 121), np.linspace(-1.4, 1.4, 181))
    loss = jax.vmap(problem.loss)(jnp.stack([x.ravel(), y.ravel()], axis=1))
    return x, y, np.asarray(loss).reshape(x.shape)


def main(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Runs every cell of the config, writes the tables and figures; returns what ``saddle.json`` holds."""
    started = time.time()
    os.makedirs(config.workdir, exist_ok=True)
    show = config.show
    if show.learning_rate not in config.learning_rates or show.rho not in config.rhos or show.seed not in config.seeds:
        raise ValueError(f"config.show={show.to_dict()} must pick a learning rate, rho and seed of the grid.")
    rows, thresholds = [], {}
    for name in config.problems:
        problem = make_problem(name, config)
        thresholds[name] = escape_threshold(problem, config.escape_fraction)
        shown = {}
        for method in config.methods:
            for rho in config.rhos if has_radius(method) else (None,):
                runs = run_cell_grid(problem, optimizer_factory(method, rho, config.momentum), config)
                rows += run_rows(problem, method, rho, runs, config)
                if rho in (None, show.rho):
                    i, k = list(config.learning_rates).index(show.learning_rate), list(config.seeds).index(show.seed)
                    for j, noise_std in enumerate(config.noise_stds):
                        label = method + (" + noise" if noise_std else "")
                        shown[label] = Trajectory(*(np.asarray(field[i, j, k]) for field in runs))
        plot_trajectories(
            problem,
            shown,
            os.path.join(config.workdir, f"trajectories_{name}.png"),
            f"{name}: lr {show.learning_rate:g}, rho {show.rho:g} (SAM family), seed {show.seed}; "
            f"dashed: gradient noise std {max(config.noise_stds):g}",
            thresholds[name],
            _contour(problem),
        )
    summary = summarise(rows)
    for name in config.problems:
        _escape_maps(name, summary, config, os.path.join(config.workdir, f"escape_{name}.png"))
    write_csv(os.path.join(config.workdir, ROWS_FILE), rows)
    write_csv(os.path.join(config.workdir, "escape.csv"), summary)
    with open(os.path.join(config.workdir, "escape.md"), "w") as f:
        f.write(markdown_report(summary, config, thresholds))
    record = {
        "config": config.to_dict(),
        "thresholds": thresholds,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": time.time() - started,
        "device": f"{jax.default_backend()}: {jax.devices()[0].device_kind}",
        "host_cpu_count": os.cpu_count(),
        "summary": summary,
    }
    with open(os.path.join(config.workdir, "saddle.json"), "w") as f:
        json.dump(record, f, indent=1, default=float)
    return record


if __name__ == "__main__":
    cli.run(
        lambda config: print(f"Saddle study written to {config.workdir} in {main(config)['wall_time_s']:.0f} s"),
        os.path.join(os.path.dirname(__file__), "configs", "ssam_saddle.py:quick"),
    )
