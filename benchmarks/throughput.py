"""Training throughput of SGD, SAM and bSAM per model and batch size, through the loop's train step.

Each (model, batch size, optimizer) is a run config on synthetic data (Gaussian images of the
model's input size, uniform labels; one batch is reused, so no input pipeline is timed). Its train
step is the one ``sam_jax.training.build_run`` jits for the loop, sharded as the loop shards it,
and, unless ``--no-donate``, wrapped by ``donating_train_step`` so that the state's buffers are
donated to the next state (docs/scaling.md). Reported per row:

- first call: seconds from the first call to its result (tracing, compilation, one step);
- ms / step and images / s: the median over ``--repeats`` of ``--steps`` steps each, once
  compiled, the repeats interleaved across the optimizers of a model and batch size so that load
  drift hits them alike;
- ratio to SGD: that median over SGD's (SAM's two gradient passes make it about 2);
- step memory: what XLA's memory analysis of the compiled step says it needs on the device, the
  arguments, outputs and temporaries with donated (aliased) bytes counted once.

Printed as a Markdown table after ``jax.devices()``; ``--out PATH`` also writes ``PATH.json`` (with
the command, date, device and versions) and ``PATH.csv``. Runs unchanged on CPU, GPU and TPU; the
batch is split over all devices, as in the loop.

    python -m benchmarks.throughput [--models mlp,lenet5,resnet20] [--batch-sizes 128,256]
        [--optimizers sgd,sam,bsam] [--steps 10] [--repeats 5] [--dtype bfloat16] [--no-donate]
        [--set '{"model.kwargs": {"widths": [500, 300]}, "optimizer.vogn.m": 8}'] [--out runs/throughput]

``--set`` applies run-config fields (a JSON object of dotted paths, ``ConfigDict`` values given as
objects) to every run (an ``optimizer.<name>.*`` field to the runs of that optimizer only), e.g.
the MNIST MLP of Möllenhoff & Khan's Table 1 and VOGN's sub-batches:

    python -m benchmarks.throughput --models mlp --optimizers sgd,bsam,vogn --set \
        '{"model.kwargs": {"widths": [500, 300], "activation": "relu"}, "optimizer.vogn.m": 8, "optimizer.bsam.m": 16}'

Larger models are named in ``--models``: ``wrn28_10``, ``wrn20_10``, ``resnet56``,
``pyramidnet110`` at 32x32; ``resnet18``, ``resnet50``, ``vit_s32``, ``vit_s16``, ``vit_b16`` at
224x224 with 1000 classes.
"""

import argparse
import csv
import datetime
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from benchmarks.timing import time_steps
from sam_jax.data import ArrayDataset
from sam_jax.training import Run, RunData, build_run, default_config
from sam_jax.training.steps import donating_train_step

CIFAR = ((32, 32, 3), 10)
IMAGENET = ((224, 224, 3), 1000)
# Model name -> (image shape, number of classes) of the data it is meant for.
INPUTS: dict[str, tuple[tuple[int, int, int], int]] = {
    "mlp": ((28, 28, 1), 10),
    "lenet5": ((28, 28, 1), 10),
    **{name: CIFAR for name in ("resnet20", "resnet32", "resnet56", "resnet20_frn", "wrn28_10", "wrn20_10")},
    "pyramidnet110": CIFAR,
    **{name: IMAGENET for name in ("resnet18", "resnet50", "vit_s32", "vit_s16", "vit_b16")},
}
OPTIMIZERS = ("sgd", "sam", "bsam")
COLUMNS = (
    "model",
    "params",
    "batch",
    "optimizer",
    "donate",
    "first_call_s",
    "ms_per_step",
    "images_per_s",
    "ratio_to_sgd",
    "step_memory_mib",
)


def synthetic_data(model: str, batch_size: int, seed: int = 0) -> RunData:
    """One batch of Gaussian images of ``model``'s input shape with uniform labels, as the train split."""
    shape, num_classes = INPUTS[model]
    rng = np.random.default_rng(seed)
    train = ArrayDataset(
        rng.standard_normal((batch_size, *shape), dtype=np.float32),
        rng.integers(0, num_classes, batch_size).astype(np.int32),
        num_classes,
    )
    empty = ArrayDataset(np.zeros((0, *shape), np.float32), np.zeros(0, np.int32), num_classes)
    return RunData(train, empty, empty, num_classes, None)


def run_config(
    model: str, optimizer: str, batch_size: int, dtype: str, overrides: dict[str, Any] | None = None
) -> ml_collections.ConfigDict:
    """The run of ``model`` trained by ``optimizer`` (its paper defaults) at ``batch_size``, with the
    dotted-path ``overrides`` (``--set``) applied last."""
    config = default_config()
    config.update_from_flattened_dict(
        {
            "model.name": model,
            "optimizer.name": optimizer,
            "batch_size": batch_size,
            "num_steps": 10_000,
            "data.val_size": 0,
            "progress_bar": False,
        }
    )
    if dtype != "float32":
        config.model.kwargs = ml_collections.ConfigDict({"dtype": dtype})
    for path, value in (overrides or {}).items():
        *parents, field = path.split(".")
        if parents[:1] == ["optimizer"] and len(parents) == 2 and parents[1] != optimizer:
            continue  # another optimizer's block: validation rejects a block the run does not read
        block = config
        for name in parents:
            block = block[name]
        if isinstance(value, dict):
            value = ml_collections.ConfigDict({**block[field].to_dict(), **value})
        elif isinstance(value, list):
            value = tuple(value)
        block[field] = value
    return config


def _step_memory_mib(step: Callable, state: Any, batch: dict) -> float:
    """Device memory of the compiled step, donated bytes counted once (the compilation is cached)."""
    stats = step.lower(state, batch).compile().memory_analysis()
    if stats is None:  # a backend without memory analysis
        return float("nan")
    total = stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
    return (total - stats.alias_size_in_bytes) / 2**20


def measure_case(
    model: str,
    batch_size: int,
    optimizers: list[str],
    *,
    dtype: str,
    donate: bool,
    num_steps: int,
    repeats: int,
    overrides: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The rows of one model and batch size, one per optimizer (``optimizers`` includes ``"sgd"``)."""
    run_data = synthetic_data(model, batch_size)
    runs: dict[str, Run] = {
        name: build_run(run_config(model, name, batch_size, dtype, overrides), run_data) for name in optimizers
    }
    mesh = next(iter(runs.values())).mesh
    batch = jax.device_put(
        {
            "image": run_data.train.images,
            "label": run_data.train.labels,
            "index": np.arange(batch_size, dtype=np.int32),
        },
        NamedSharding(mesh, PartitionSpec("data")),
    )
    steps, states, rows = {}, {}, {}
    for name, run in runs.items():
        if donate:
            steps[name] = donating_train_step(run.train_step)
            state = jax.tree.map(jnp.copy, run.init_state)  # the run keeps its own init_state
        else:
            steps[name], state = run.train_step, run.init_state
        start = time.perf_counter()
        states[name], metrics = steps[name](state, batch)
        jax.block_until_ready(metrics)
        rows[name] = {
            "model": model,
            "params": sum(x.size for x in jax.tree.leaves(run.init_state.params)),
            "batch": batch_size,
            "optimizer": name,
            "donate": donate,
            "first_call_s": time.perf_counter() - start,
            "step_memory_mib": _step_memory_mib(steps[name], states[name], batch),
        }
    timings: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name in runs:
            elapsed, states[name] = time_steps(steps[name], states[name], batch, num_steps)
            timings[name].append(elapsed)
    sgd = statistics.median(timings["sgd"])
    for name, values in timings.items():
        median = statistics.median(values)
        rows[name].update(ms_per_step=1e3 * median, images_per_s=batch_size / median, ratio_to_sgd=median / sgd)
    return [rows[name] for name in runs]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| model | params | batch | optimizer | first call (s) | ms / step | images / s | ratio to SGD "
        "| step memory (MiB) |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params']:,} | {r['batch']} | {r['optimizer']} | {r['first_call_s']:.1f} | "
            f"{r['ms_per_step']:.2f} | {r['images_per_s']:,.0f} | {r['ratio_to_sgd']:.2f} | "
            f"{r['step_memory_mib']:.1f} |"
        )
    return "\n".join(lines)


def _names(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,lenet5,resnet20", help="comma-separated, from " + ",".join(INPUTS))
    parser.add_argument("--batch-sizes", default="128", help="comma-separated global batch sizes")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS), help="comma-separated; must include sgd")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="the models' compute dtype")
    parser.add_argument("--no-donate", dest="donate", action="store_false", help="keep the state's buffers")
    parser.add_argument("--out", default="", help="also write OUT.json and OUT.csv")
    parser.add_argument("--set", default="{}", help="JSON object of run-config fields by dotted path, for every run")
    args = parser.parse_args()
    overrides = json.loads(args.set)
    args.models, args.optimizers = _names(args.models), _names(args.optimizers)
    batch_sizes = [int(size) for size in _names(args.batch_sizes)]
    unknown = sorted(set(args.models) - set(INPUTS))
    if unknown or "sgd" not in args.optimizers or args.steps < 1 or args.repeats < 1:
        raise SystemExit(
            f"--models must name only {sorted(INPUTS)} (unknown: {unknown}); --optimizers must include sgd; "
            "--steps and --repeats must be >= 1."
        )

    devices = jax.devices()
    print(f"jax.devices(): {devices}", flush=True)
    rows = []
    for model in args.models:
        for batch_size in batch_sizes:
            rows.extend(
                measure_case(
                    model,
                    batch_size,
                    args.optimizers,
                    dtype=args.dtype,
                    donate=args.donate,
                    num_steps=args.steps,
                    repeats=args.repeats,
                    overrides=overrides,
                )
            )
            print(f"done: {model}, batch {batch_size}", file=sys.stderr, flush=True)
    header = {
        "command": " ".join(["python -m benchmarks.throughput", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device_kind": devices[0].device_kind,
        "platform": devices[0].platform,
        "device_count": len(devices),
        "devices": [str(d) for d in devices],
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "donate": args.donate,
        "dtype": args.dtype,
        "steps": args.steps,
        "repeats": args.repeats,
        "overrides": overrides,
    }
    print()
    print(
        f"{header['device_kind']} x {header['device_count']} ({header['platform']}, {header['cpu_count']} CPU cores), "
        f"jax {header['jax']}, {args.dtype}, state {'donated' if args.donate else 'not donated'}, "
        f"median of {args.repeats} x {args.steps} steps, {header['date']}"
    )
    print()
    print(markdown_table(rows))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out + ".json", "w") as f:
            json.dump({**header, "results": rows}, f, indent=2)
        with open(args.out + ".csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
