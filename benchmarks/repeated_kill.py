"""Repeated SIGKILL of a sharded grid run: after every restart, records and report equal an uninterrupted run's.

    python -m benchmarks.repeated_kill                       # 5 kills, 2 shards, a small quick grid
    python -m benchmarks.repeated_kill --kills=8 --shards=3 --seed=1

The grid is the ``quick`` preset of ``experiments/configs/curvature_calibration.py`` cut to a few
optimizers (``--optimizers``), 48 steps per job with a checkpoint every 4, so that kills land
between checkpoints.
It is trained twice, in two workdirs:

- uninterrupted: every shard (``--mode=run --shard=i/n``) to the end, one after another;
- killed: all shards started together and, once the restart has made progress (a job has written
  a checkpoint or finished), every process SIGKILLed after a random delay (uniform in
  ``[0, --max-delay]`` seconds, from ``--seed``), so that kills land anywhere in a job, between its
  checkpoints or in its evaluation; all restarted, ``--kills`` times; then run to the end.

Both are exported (``--mode=export``, the compact records) and reported (``--mode=report``), and
every file is compared byte for byte: the records (``metrics.jsonl``), the configs and summaries
(without the fields that name the workdir or measure the run's own history: ``workdir``,
``wall_time_s``, ``resumed_from_step``) and every report file (Markdown, CSV without those columns,
PNG). The script prints each kill (when, which jobs had finished, the newest checkpoint of each
job in progress) and the comparison, and exits with 0 only when everything is equal.
"""

import argparse
import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = "experiments.curvature_calibration"
# Fields that differ between two correct runs of one grid: where it ran and how it got there.
VOLATILE = ("workdir", "wall_time_s", "resumed_from_step")

CONFIG_TEMPLATE = """
from experiments.configs.curvature_calibration import get_config as preset


def get_config():
    config = preset("quick")
    for name in list(config.grid.optimizers.keys()):
        if name not in {optimizers!r}:
            del config.grid.optimizers[name]
    config.num_steps = {num_steps}
    config.checkpoint_every_steps = {checkpoint_every}
    config.progress_bar = False
    return config
"""


def _command(config_file: str, workdir: str, mode: str, shard: str = "0/1") -> list[str]:
    return [
        sys.executable,
        "-m",
        DRIVER,
        f"--config={config_file}",
        f"--config.workdir={workdir}",
        f"--mode={mode}",
        f"--shard={shard}",
    ]


def _run(command: list[str]) -> None:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {done.returncode}:\n{done.stderr[-3000:]}")


def _progress(workdir: str) -> str:
    """Finished jobs and the newest checkpoint of each unfinished one."""
    finished, partial = 0, []
    for folder, _, files in os.walk(workdir):
        if "config.json" not in files or "compact" in folder:
            continue
        if "summary.json" in files:
            finished += 1
            continue
        checkpoints = os.path.join(folder, "checkpoints")
        steps = [int(d) for d in os.listdir(checkpoints) if d.isdigit()] if os.path.isdir(checkpoints) else []
        partial.append(f"{os.path.relpath(folder, workdir)}@{max(steps, default=0)}")
    return f"{finished} jobs finished; in progress: {', '.join(partial) or 'none'}"


def _newest_progress(workdir: str) -> float:
    """Modification time of the newest checkpoint or summary of any job (0 before the first)."""
    newest = 0.0
    for folder, dirs, files in os.walk(workdir):
        if os.path.basename(folder) == "checkpoints":
            steps = [os.path.join(folder, d) for d in dirs if d.isdigit()]
            newest = max([newest, *map(os.path.getmtime, steps)])
            dirs[:] = []  # not into the checkpoints
        elif "summary.json" in files:
            newest = max(newest, os.path.getmtime(os.path.join(folder, "summary.json")))
    return newest


def _wait_for_progress(workdir: str, since: float, processes: list[subprocess.Popen], timeout: float = 1800) -> None:
    """Returns once a job has written a checkpoint or finished after ``since`` (so every restart
    resumes from further on), or once every process has ended."""
    deadline = time.time() + timeout
    while time.time() < deadline and any(p.poll() is None for p in processes):
        if _newest_progress(workdir) > since:
            return
        time.sleep(0.2)


def _without_volatile(path: str, text: str) -> str:
    """The text of a compared file, without the fields that may differ between correct runs."""
    if path.endswith(".json"):
        tree = json.loads(text)
        return json.dumps({k: v for k, v in tree.items() if k not in VOLATILE}, sort_keys=True)
    if path.endswith(".csv"):
        rows = list(csv.DictReader(io.StringIO(text)))
        return json.dumps([{k: v for k, v in row.items() if k not in VOLATILE} for row in rows])
    return text


def compare_trees(reference: str, other: str) -> list[str]:
    """Relative paths of files that differ (or exist on one side only) between two trees."""

    def files(root: str) -> set[str]:
        walked = os.walk(root)
        return {os.path.relpath(os.path.join(folder, name), root) for folder, _, names in walked for name in names}

    left, right = files(reference), files(other)
    differing = sorted(left ^ right)
    for name in sorted(left & right):
        with open(os.path.join(reference, name), "rb") as a, open(os.path.join(other, name), "rb") as b:
            first, second = a.read(), b.read()
        if first == second:
            continue
        if name.endswith((".json", ".csv")) and _without_volatile(name, first.decode()) == _without_volatile(
            name, second.decode()
        ):
            continue
        differing.append(name)
    return differing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-delay", type=float, default=10.0, help="kill within this many seconds of a restart's first checkpoint"
    )
    parser.add_argument("--optimizers", default="gd,sgd,sam", help="grid optimizers kept from the quick preset")
    parser.add_argument("--num-steps", type=int, default=48)
    parser.add_argument("--checkpoint-every", type=int, default=4)
    parser.add_argument("--workdir", default="", help="where both runs go (default: a temporary directory)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = args.workdir or tempfile.mkdtemp(prefix="sam_jax_repeated_kill_")
    os.makedirs(root, exist_ok=True)
    config_file = os.path.join(root, "grid_config.py")
    with open(config_file, "w") as f:
        f.write(
            CONFIG_TEMPLATE.format(
                optimizers=tuple(args.optimizers.split(",")),
                num_steps=args.num_steps,
                checkpoint_every=args.checkpoint_every,
            )
        )
    shards = [f"{i}/{args.shards}" for i in range(args.shards)]
    reference, killed = os.path.join(root, "uninterrupted"), os.path.join(root, "killed")

    started = time.time()
    for shard in shards:  # a finished grid (from an earlier call with this --workdir) is not retrained
        _run(_command(config_file, reference, "run", shard))
    print(f"uninterrupted run: {time.time() - started:.0f} s ({_progress(reference)})", flush=True)

    started = time.time()
    kills = 0
    while kills < args.kills:
        processes = [
            subprocess.Popen(
                _command(config_file, killed, "run", shard),
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for shard in shards
        ]
        restarted = time.time()
        _wait_for_progress(killed, restarted, processes)
        delay = rng.uniform(0.0, args.max_delay)
        time.sleep(delay)
        running = [p for p in processes if p.poll() is None]
        for process in running:
            process.send_signal(signal.SIGKILL)
        for process in processes:
            process.wait()
        if not running:  # the grid ended before this kill: lengthen it (--num-steps) for more kills
            print(f"the grid finished after {kills} kills", flush=True)
            break
        kills += 1
        print(
            f"kill {kills}: SIGKILL {delay:.1f} s after the restart's first checkpoint, "
            f"{time.time() - restarted:.0f} s after the restart ({len(running)} of {len(processes)} shards "
            f"running); {_progress(killed)}",
            flush=True,
        )
    for shard in shards:  # to the end
        _run(_command(config_file, killed, "run", shard))
    print(f"killed run, restarts included: {time.time() - started:.0f} s", flush=True)

    for workdir in (reference, killed):
        _run(_command(config_file, workdir, "export"))
        _run(_command(config_file, workdir, "report"))
    differing = {
        name: compare_trees(os.path.join(reference, name), os.path.join(killed, name)) for name in ("compact", "report")
    }
    for name, files in differing.items():
        count = sum(len(f) for _, _, f in os.walk(os.path.join(reference, name)))
        print(f"{name}/: {count} files, {len(files)} differ" + (f": {files}" if files else ""))
    same = not any(differing.values())
    print("EQUAL to the uninterrupted run" if same else "DIFFERENT from the uninterrupted run")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
