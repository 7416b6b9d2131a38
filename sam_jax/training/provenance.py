"""What a run was made with: the code version and the library versions, recorded in its summary."""

import functools
import importlib.metadata
import os
import platform
import subprocess
from typing import Any

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "numpy", "ml-collections")


def _git(*args: str, cwd: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()


@functools.cache
def provenance() -> dict[str, Any]:
    """The commit of the sam_jax checkout (None outside a git checkout), whether its tracked files
    had uncommitted changes, and the Python and library versions (None for a package not installed).

    Cached: the values cannot change within a process.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    commit = _git("rev-parse", "HEAD", cwd=here)
    status = _git("status", "--porcelain", "--untracked-files=no", cwd=here) if commit else None
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "git_commit": commit,
        "git_dirty": bool(status) if status is not None else None,
        "python": platform.python_version(),
        "versions": versions,
    }
