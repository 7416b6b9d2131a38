"""A real full disk: the train CLI on a small tmpfs stops with ``DiskFullError``, and resumes once there is room.

    sudo python -m benchmarks.full_disk          # needs root (it mounts a tmpfs)
    python -m benchmarks.full_disk --size=300k --num-steps=600

Mounts a tmpfs of ``--size`` and trains ``tests/configs/resume.py`` there (a checkpoint every 100
steps) until a write fails for lack of space, then checks what the user sees and what stays on disk:
exit code 1, one ``DiskFullError`` line naming the kept checkpoint, no traceback of ours. It then
grows the file system (``mount -o remount``: the space freed) and runs the same command again,
which must resume from that checkpoint, finish, and leave every metrics step once. The tests
simulate the same failure inside the process (``tests/test_reliability.py``); this is the check on a
real file system, Orbax's and TensorStore's own writes included.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(workdir: str, num_steps: int) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "experiments.train",
        f"--config={ROOT}/tests/configs/resume.py",
        f"--config.workdir={workdir}",
        f"--config.num_steps={num_steps}",
    ]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="300k", help="tmpfs size for the run (fills before the end)")
    parser.add_argument("--num-steps", type=int, default=600)
    args = parser.parse_args()
    mount_point = tempfile.mkdtemp(prefix="sam_jax_full_disk_")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.size}", "tmpfs", mount_point], text=True)
    if mounted.returncode != 0:
        print("Cannot mount a tmpfs here (needs root, and a container allowed to mount); nothing checked.")
        return 2
    try:
        workdir = os.path.join(mount_point, "run")
        full = _train(workdir, args.num_steps)
        message = [line for line in full.stderr.splitlines() if line.startswith("DiskFullError:")]
        kept = re.search(r"step (\d+) in", message[0]) if message else None
        print(f"full disk: exit code {full.returncode}; {message[0] if message else 'no DiskFullError line'}")
        subprocess.run(["mount", "-o", "remount,size=16m", mount_point], check=True)
        resumed = _train(workdir, args.num_steps)
        with open(os.path.join(workdir, "summary.json")) as f:
            summary = json.load(f)
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            steps = [json.loads(line)["step"] for line in f if line.strip()]
        print(
            f"after remount: exit code {resumed.returncode}, resumed from step {summary['resumed_from_step']}, "
            f"{summary['total_steps']} steps; metrics steps {steps}"
        )
        ok = (
            full.returncode == 1
            and kept is not None
            and resumed.returncode == 0
            and summary["resumed_from_step"] == int(kept.group(1))
            and summary["total_steps"] == args.num_steps
            and len(steps) == len(set(steps))
        )
        print("OK" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        subprocess.run(["umount", mount_point], check=False)
        os.rmdir(mount_point)


if __name__ == "__main__":
    sys.exit(main())
