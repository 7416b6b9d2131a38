"""Every ```python snippet of README.md and docs/*.md runs as written.

Each snippet runs by itself, in a namespace of its own and a temporary working directory for the
files it writes, so it must import what it uses and build its own tiny data. All of them run one
after another in one fresh interpreter (this file run as a script; the repository on ``PYTHONPATH``,
JAX on the CPU), which pays for importing JAX once instead of once per snippet.

A snippet that cannot run here is opted out by this HTML comment on the line right before its
fence, with the reason in the parentheses:

    <!-- snippet: skip (reads the Fashion-MNIST files) -->

Keep opt-outs for snippets that need a dataset file, a cluster or a long run, or that are not code
(a list of signatures).
"""

import glob
import os
import re
import runpy
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
FENCE = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)
OPT_OUT = re.compile(r"<!-- snippet: skip \((?P<reason>[^()]+)\) -->")
MARKER_LINE = re.compile(r"\s*<!--\s*snippet")
# For all snippets together; they take about a minute of CPU.
TIMEOUT_S = 300


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _snippets() -> Iterator[pytest.param]:
    for path in PAGES:
        text = _read(path)
        for fence in FENCE.finditer(text):
            line = text.count("\n", 0, fence.start()) + 1
            previous_line = text[: fence.start()].rstrip("\n").rpartition("\n")[2]
            opt_out = OPT_OUT.fullmatch(previous_line.strip())
            marks = [pytest.mark.skip(reason=f"opted out: {opt_out['reason']}")] if opt_out else []
            yield pytest.param(fence.group(1), id=f"{os.path.relpath(path, ROOT)}:{line}", marks=marks)


def test_opt_outs_are_well_formed_and_precede_a_python_fence():
    misplaced = []
    for path in PAGES:
        lines = _read(path).splitlines()
        for number, line in enumerate(lines):
            if not MARKER_LINE.match(line):  # a marker in prose (inside backticks) is no opt-out
                continue
            follows = lines[number + 1] if number + 1 < len(lines) else ""
            if not OPT_OUT.fullmatch(line.strip()) or follows != "```python":
                misplaced.append(f"{os.path.relpath(path, ROOT)}:{number + 1}: {line.strip()}")
    assert not misplaced, (
        "write an opt-out as '<!-- snippet: skip (reason) -->' on the line right before a ```python fence:\n"
        + "\n".join(misplaced)
    )


def _run_snippets(folder: str) -> None:
    """Runs ``folder/<n>/snippet.py`` for each ``n`` in ``folder/<n>`` and writes the traceback of a
    failure to ``folder/<n>/error.txt``."""
    for case in sorted(os.listdir(folder)):
        os.chdir(os.path.join(folder, case))
        try:
            runpy.run_path("snippet.py", run_name="__main__")
        except Exception:
            Path("error.txt").write_text(traceback.format_exc(), encoding="utf-8")


@pytest.fixture(scope="module")
def snippet_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Runs every snippet that is not opted out; maps each one's id to its traceback ("" when it ran)."""
    folder = tmp_path_factory.mktemp("snippets")
    cases = {}
    for number, snippet in enumerate(p for p in _snippets() if not p.marks):
        case = folder / f"{number:03d}"
        case.mkdir()
        (case / "snippet.py").write_text(snippet.values[0], encoding="utf-8")
        cases[snippet.id] = case
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
        "JAX_PLATFORMS": "cpu",
        "MPLBACKEND": "Agg",
    }
    result = subprocess.run(
        [sys.executable, __file__, str(folder)], capture_output=True, text=True, env=env, timeout=TIMEOUT_S
    )
    assert result.returncode == 0, f"the snippet runner failed:\n{result.stderr[-3000:]}"
    return {
        name: (case / "error.txt").read_text(encoding="utf-8") if (case / "error.txt").exists() else ""
        for name, case in cases.items()
    }


@pytest.mark.parametrize("snippet", list(_snippets()))
def test_snippet_runs_as_written(snippet: str, snippet_errors: dict[str, str], request: pytest.FixtureRequest):
    error = snippet_errors[request.node.callspec.id]
    assert not error, f"the snippet failed:\n{snippet}\n--- traceback ---\n{error[-3000:]}"


if __name__ == "__main__":
    _run_snippets(sys.argv[1])
