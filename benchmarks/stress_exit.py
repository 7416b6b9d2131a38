"""Exit codes under load: starts the train CLI many times beside busy processes; all must exit 0.

A daemon thread still inside XLA when Python finalises aborts the process after the run finished
(``FATAL: exception not rethrown``, exit 134). It shows up only now and then, more often on a
loaded machine, so this script repeats the whole CLI run with ``--busy`` CPU-bound processes
beside it and counts non-zero exits.

    python -m benchmarks.stress_exit --runs=50 --busy=2 --parallel=2 --out=/tmp/stress.json
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(ROOT, "tests", "configs", "stress.py")


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[None]:
    """Keeps ``count`` CPU-bound processes running for the duration of the block.

    They are separate interpreters (not ``fork``: forking a process that runs JAX's threads can
    deadlock).
    """
    workers = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()


def _one_run(index: int, config: str, root: str, timeout: float) -> dict:
    workdir = os.path.join(root, f"run{index}")
    command = [sys.executable, "-m", "experiments.train", f"--config={config}", f"--config.workdir={workdir}"]
    started = time.time()
    try:
        done = subprocess.run(
            command,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )
        code, tail = done.returncode, done.stderr[-2000:]
    except subprocess.TimeoutExpired:
        code, tail = None, f"timed out after {timeout} s"
    return {
        "run": index,
        "exit_code": code,
        "seconds": round(time.time() - started, 2),
        "stderr_tail": tail if code != 0 else "",
    }


def stress(
    runs: int,
    busy: int = 2,
    parallel: int = 1,
    config: str = DEFAULT_CONFIG,
    timeout: float = 600.0,
    out: str | None = None,
) -> dict:
    """Runs the train CLI ``runs`` times (``parallel`` at once) beside ``busy`` spinning processes.

    Returns:
      ``{"runs", "failures", "busy", "parallel", "wall_s", "results": [...]}``; a failure is any
      exit code other than 0 (or a time-out), with the tail of its stderr.
    """
    started = time.time()
    with tempfile.TemporaryDirectory() as root, busy_processes(busy), ThreadPoolExecutor(parallel) as pool:
        results = list(pool.map(lambda i: _one_run(i, config, root, timeout), range(runs)))
    report = {
        "runs": runs,
        "failures": sum(r["exit_code"] != 0 for r in results),
        "busy": busy,
        "parallel": parallel,
        "wall_s": round(time.time() - started, 1),
        "results": results,
    }
    if out:
        with open(out, "w") as f:
            json.dump(report, f, indent=2)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--busy", type=int, default=2, help="CPU-bound processes beside the runs")
    parser.add_argument("--parallel", type=int, default=2, help="CLI runs at the same time")
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--out", default=None, help="JSON report path")
    args = parser.parse_args()
    report = stress(args.runs, args.busy, args.parallel, args.config, out=args.out)
    for result in report["results"]:
        if result["exit_code"] != 0:
            print(f"run {result['run']}: exit {result['exit_code']}\n{result['stderr_tail']}")
    print(
        f"{report['runs']} runs, {report['failures']} non-zero exits, {report['busy']} busy "
        f"processes, {report['parallel']} at a time, {report['wall_s']} s"
    )
    sys.exit(1 if report["failures"] else 0)


if __name__ == "__main__":
    main()
