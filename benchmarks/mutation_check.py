"""Mutation check: each bug that a test is named for, planted in a copy of the repository, must fail a test.

    python -m benchmarks.mutation_check                  # every mutant, after a baseline run
    python -m benchmarks.mutation_check --only=3,7a      # some of them
    python -m benchmarks.mutation_check --list           # what each mutant changes

The tracked (and untracked, not ignored) files are copied once into a temporary directory. For each
mutant, one exact snippet of one file is replaced there (it must occur exactly once, so that a
refactor which moves the code makes this script fail loudly instead of testing nothing), the tests
meant to catch it run in the copy (``pytest -x``, one process), and the file is restored. The same
tests run first without any mutant and must pass, otherwise a "caught" would mean nothing.

A mutant is *caught* when pytest reports a failing test (exit code 1), *not caught* when every
selected test passes, and an *error* for anything else (no test collected, a crash). The script
exits with 0 only when every mutant is caught. The mutants are the silent bugs of issue 34: each
passed the whole suite before the tests that now catch it were written.
"""

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Mutant:
    """One planted bug: ``original`` (exactly once in ``path``) becomes ``mutated``; ``tests`` are
    the pytest arguments (files and ``-k`` selections) that must catch it."""

    id: str
    description: str
    path: str
    original: str
    mutated: str
    tests: tuple[str, ...]


LOSS_LINE = "    loss = get_stateful_loss(config.loss.name, **chosen_hparams(config.loss))\n"
POSTERIOR_TESTS = ("tests/test_wiring_objectives.py", "-k", "posterior_predictive")
LOSS_TESTS = ("tests/test_wiring_objectives.py", "-k", "configured_loss")

MUTANTS = (
    Mutant(
        "1",
        "build_run ignores mixing.name: mixup / MIT-L are never applied",
        "sam_jax/training/build.py",
        "        mixing=get_mixing(config.mixing.name, **chosen_hparams(config.mixing)),\n",
        '        mixing=get_mixing("none"),\n',
        ("tests/test_wiring_objectives.py", "-k", "mixup or mit"),
    ),
    Mutant(
        "2a",
        "the loop drops the loss's hyper-parameters (loss.<name>.<hp> at its default)",
        "sam_jax/training/build.py",
        LOSS_LINE,
        "    loss = get_stateful_loss(config.loss.name)\n",
        LOSS_TESTS,
    ),
    Mutant(
        "2b",
        "the loop trains every stateless loss as cross-entropy",
        "sam_jax/training/build.py",
        LOSS_LINE,
        "    loss = (get_stateful_loss(config.loss.name, **chosen_hparams(config.loss))\n"
        '        if config.loss.name in ("adafocal", "balcal", "crl") else get_stateful_loss("cross_entropy"))\n',
        LOSS_TESTS,
    ),
    Mutant(
        "3",
        "stop_gradient on CRL's confidence (CRL trains as cross-entropy)",
        "sam_jax/losses/ranking.py",
        "    confidence = jnp.exp(jnp.max(log_probs, axis=-1))\n",
        "    confidence = jax.lax.stop_gradient(jnp.exp(jnp.max(log_probs, axis=-1)))\n",
        ("tests/test_losses_baselines.py", "-k", "crl"),
    ),
    Mutant(
        "4a",
        "AdaFocal's epoch update ignores lam, gamma_max, gamma_min and switch_point",
        "sam_jax/losses/adafocal.py",
        "            val_mask=mask,\n            lam=lam,\n            gamma_max=gamma_max,\n"
        "            gamma_min=gamma_min,\n            switch_point=switch_point,\n",
        "            val_mask=mask,\n",
        ("tests/test_losses_baselines.py", "-k", "adafocal"),
    ),
    Mutant(
        "4b",
        "BalCAL's epoch update ignores delta",
        "sam_jax/losses/balcal.py",
        "        return balcal_update(state, logits, labels, mask=mask, delta=delta)\n",
        "        return balcal_update(state, logits, labels, mask=mask)\n",
        ("tests/test_losses_baselines.py", "-k", "balcal"),
    ),
    Mutant(
        "5",
        "rank-1 BNN samples its factors with std softplus(rho)^2",
        "sam_jax/models/ensembles.py",
        "_member_rows(nn.softplus(jnp.concatenate(rhos, axis=1)), rows) * noise",
        "_member_rows(nn.softplus(jnp.concatenate(rhos, axis=1)) ** 2, rows) * noise",
        ("tests/test_ensemble_models.py", "-k", "rank1"),
    ),
    Mutant(
        "6",
        "the deep ensemble evaluates member 0 twice",
        "experiments/deep_ensemble.py",
        'ensemble=",".join(workdirs[1:])',
        'ensemble=",".join(workdirs[:1])',
        ("tests/test_baselines_in_loop.py", "-k", "deep_ensemble"),
    ),
    Mutant(
        "7a",
        "posterior predictive samples from the initial optimizer state (initial precision)",
        "sam_jax/training/predictive.py",
        "posterior_sample(state.params, state.opt_state, k, num_train)",
        "posterior_sample(state.params, member_run.init_state.opt_state, k, num_train)",
        POSTERIOR_TESTS,
    ),
    Mutant(
        "7b",
        "posterior predictive uses the wrong number of training examples",
        "sam_jax/training/predictive.py",
        "    num_train = len(run.data.train.labels)\n",
        "    num_train = len(run.data.test.labels)\n",
        POSTERIOR_TESTS,
    ),
)


def copy_repository(destination: str) -> None:
    """Copies the files git tracks or would track (not the ignored ones) into ``destination``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = os.path.join(ROOT, name)
        if os.path.isfile(source):  # a tracked file deleted in the work tree is skipped
            os.makedirs(os.path.dirname(os.path.join(destination, name)), exist_ok=True)
            shutil.copy2(source, os.path.join(destination, name))


def _environment(copy: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": copy, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}


def check_imports_from(copy: str) -> None:
    """Fails unless ``sam_jax`` and ``experiments`` import from the copy (not an installed checkout)."""
    where = subprocess.run(
        [sys.executable, "-c", "import sam_jax, experiments; print(sam_jax.__file__); print(experiments.__file__)"],
        cwd=copy,
        env=_environment(copy),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    outside = [path for path in where if not os.path.realpath(path).startswith(os.path.realpath(copy))]
    if outside:
        raise RuntimeError(f"The copy in {copy} imports {outside} from elsewhere; the mutants would not be tested.")


def run_tests(copy: str, tests: tuple[str, ...], timeout: float) -> tuple[int, list[str], float]:
    """Runs pytest on ``tests`` in ``copy``; (exit code, failing test ids, seconds)."""
    started = time.time()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:xdist", "-p", "no:cacheprovider", "-rf", *tests],
            cwd=copy,
            env=_environment(copy),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return -1, [], time.time() - started
    failed = re.findall(r"^FAILED (\S+)", done.stdout, flags=re.MULTILINE)
    if done.returncode not in (0, 1):
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
    return done.returncode, failed, time.time() - started


def apply(copy: str, mutant: Mutant) -> str:
    """Plants ``mutant`` in the copy; returns the file's original text."""
    path = os.path.join(copy, mutant.path)
    with open(path) as f:
        text = f.read()
    count = text.count(mutant.original)
    if count != 1:
        raise RuntimeError(
            f"mutant {mutant.id}: the snippet occurs {count} times in {mutant.path} (must be once); update MUTANTS."
        )
    with open(path, "w") as f:
        f.write(text.replace(mutant.original, mutant.mutated))
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated mutant ids (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run without mutants")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per pytest run")
    args = parser.parse_args()
    wanted = set(filter(None, args.only.split(",")))
    mutants = [m for m in MUTANTS if not wanted or m.id in wanted]
    if wanted - {m.id for m in MUTANTS}:
        parser.error(f"unknown mutant ids {sorted(wanted - {m.id for m in MUTANTS})}")
    if args.list:
        for m in mutants:
            print(f"{m.id:3s} {m.description}\n    {m.path}: {m.original.strip()!r} -> {m.mutated.strip()!r}")
            print(f"    pytest {' '.join(m.tests)}")
        return 0

    rows, all_caught = [], True
    with tempfile.TemporaryDirectory(prefix="sam_jax_mutants_") as copy:
        copy_repository(copy)
        check_imports_from(copy)
        if not args.no_baseline:
            for tests in dict.fromkeys(m.tests for m in mutants):
                code, failed, seconds = run_tests(copy, tests, args.timeout)
                print(f"baseline  pytest {' '.join(tests)}: exit {code} ({seconds:.0f} s)", flush=True)
                if code != 0:
                    print(f"The tests fail without any mutant ({failed}); fix them first.", file=sys.stderr)
                    return 2
        for mutant in mutants:
            original = apply(copy, mutant)
            try:
                code, failed, seconds = run_tests(copy, mutant.tests, args.timeout)
            finally:
                with open(os.path.join(copy, mutant.path), "w") as f:
                    f.write(original)
            verdict = {0: "NOT CAUGHT", 1: "caught"}.get(code, f"error (exit {code})")
            all_caught &= code == 1
            rows.append((mutant, verdict, failed, seconds))
            print(f"mutant {mutant.id:3s} {verdict:12s} {seconds:5.0f} s  {mutant.description}", flush=True)
            for test in failed:
                print(f"           failed: {test}", flush=True)
    caught = sum(verdict == "caught" for _, verdict, _, _ in rows)
    print(f"{caught} of {len(rows)} mutants caught.")
    return 0 if all_caught else 1


if __name__ == "__main__":
    sys.exit(main())
