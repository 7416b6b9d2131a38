"""The package layering of docs/architecture.md, checked on the source: lower layers never import higher ones.

``LAYERS`` is the single source of truth; docs/architecture.md draws exactly this table. Every
module of ``sam_jax`` and ``experiments`` is found with ``pkgutil`` (without importing it) and its
imports are read with ``ast``, including those inside functions, so that a lazy import of a higher
layer fails too.
"""

import ast
import os
import pkgutil
import re
import subprocess
import sys
from collections.abc import Iterator

import sam_jax
from sam_jax.optim import OPTIMIZERS

# Lowest layer first. A module may import its own package and the packages of lower layers only;
# packages that share a layer are independent of each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("sam_jax.data",),
    ("sam_jax.models",),
    ("sam_jax.losses",),
    ("sam_jax.curvature", "sam_jax.calibration"),
    ("sam_jax.optim",),
    ("sam_jax.training",),
    ("sam_jax.analysis",),
    ("experiments",),
    ("benchmarks",),
)
# The layers below ``sam_jax.training`` are numerics: importing them loads none of these.
NUMERICS = tuple(package for layer in LAYERS[: LAYERS.index(("sam_jax.training",))] for package in layer)
HEAVY = ("matplotlib", "ml_collections", "sklearn", "tqdm", "tensorflow", "tensorflow_datasets")
# Only the registry may name an optimizer (see sam_jax/optim/registry.py).
# Every registered optimizer name (the registry is the only place allowed to spell them).
OPTIMIZER_NAMES = frozenset(OPTIMIZERS)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYER_OF = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}


def _modules(path: str, prefix: str) -> Iterator[tuple[str, str]]:
    """``(module name, file)`` of every module under ``path``, recursively, without importing any."""
    for info in pkgutil.iter_modules([path], prefix):
        location = os.path.join(path, info.name.rpartition(".")[2])
        if info.ispkg:
            yield info.name, os.path.join(location, "__init__.py")
            yield from _modules(location, info.name + ".")
        else:
            yield info.name, location + ".py"


MODULES = {
    **dict(_modules(os.path.dirname(sam_jax.__file__), "sam_jax.")),
    "experiments": os.path.join(ROOT, "experiments", "__init__.py"),
    **dict(_modules(os.path.join(ROOT, "experiments"), "experiments.")),
}


def _package(module: str) -> str | None:
    """The package of ``LAYERS`` that holds ``module``, or None for a module outside them."""
    for package in LAYER_OF:
        if module == package or module.startswith(package + "."):
            return package
    return None


def _imports(module: str, source: str) -> Iterator[tuple[str, int, bool]]:
    """``(imported module, line, inside a function)`` for each import statement of ``source``."""
    is_package = MODULES.get(module, "").endswith("__init__.py")

    def visit(node: ast.AST, lazy: bool) -> Iterator[tuple[str, int, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                yield from ((alias.name, child.lineno, lazy) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = module.split(".")[: len(module.split(".")) - child.level + is_package]
                    base = ".".join(parts + ([base] if base else []))
                for alias in child.names:
                    # ``from sam_jax import optim`` imports the module sam_jax.optim.
                    name = f"{base}.{alias.name}"
                    yield (name if name in MODULES else base), child.lineno, lazy
            yield from visit(child, lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    yield from visit(ast.parse(source), False)


def _source(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _fresh_interpreter(code: str) -> subprocess.CompletedProcess:
    """Runs ``code`` in a new Python process (CPU only) from the repository root."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        check=True,
    )


def test_layers_cover_every_package():
    assert set(MODULES) >= set(LAYER_OF) - {"benchmarks"}, "a package of LAYERS is gone"
    unplaced = sorted(m for m in MODULES if _package(m) is None)
    assert not unplaced, f"modules in no package of LAYERS (add their package to LAYERS): {unplaced}"


def test_architecture_doc_draws_layers():
    doc = _source(os.path.join(ROOT, "docs", "architecture.md"))
    rows = re.findall(r"^ +(\d+) +(.+?) {2,}(?:layers? [\d-]+|no sam_jax package)", doc, re.MULTILINE)
    drawn = {int(rank): tuple(name.rstrip("/") for name in packages.split()) for rank, packages in rows}
    assert drawn == dict(enumerate(LAYERS)), "docs/architecture.md's diagram differs from LAYERS"


def test_no_module_imports_a_higher_layer():
    violations = []
    for module, path in sorted(MODULES.items()):
        own = _package(module)
        for target, line, _ in _imports(module, _source(path)):
            other = _package(target)
            if other is not None and other != own and LAYER_OF[other] >= LAYER_OF[own]:
                violations.append(
                    f"{os.path.relpath(path, ROOT)}:{line}: {own} (layer "
                    f"{LAYER_OF[own]}) imports {target} (layer {LAYER_OF[other]})"
                )
    assert not violations, "lower layers import higher ones:\n" + "\n".join(violations)


def test_root_package_imports_nothing():
    # ``import sam_jax.optim`` runs sam_jax/__init__.py first; it must not pull in any layer.
    assert not [t for t, _, _ in _imports("sam_jax", _source(sam_jax.__file__)) if _package(t)]


def test_bare_import_is_light_and_reaches_every_layer():
    # sam_jax/__init__.py imports its layers on first attribute access (PEP 562): ``import sam_jax``
    # alone loads no layer and not even JAX, and ``sam_jax.optim.sam`` works after it.
    assert sorted(f"sam_jax.{name}" for name in sam_jax.__all__) == sorted(
        p for p in LAYER_OF if p.startswith("sam_jax.")
    )
    code = (
        "import sys; import sam_jax; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {{'jax', 'flax', 'optax', *{HEAVY!r}}}), "
        "sorted(m for m in sys.modules if m.startswith('sam_jax.'))); "
        "import optax; sam_jax.optim.sam(optax.sgd(0.1), rho=0.05); "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))"
    )
    result = _fresh_interpreter(code)
    assert result.stdout.splitlines() == ["[] []", "[]"], (
        f"import sam_jax; sam_jax.optim.sam(...) loaded {result.stdout}"
    )


def test_numerics_import_no_heavy_dependency_at_module_level():
    violations = [
        f"{os.path.relpath(path, ROOT)}:{line}: imports {target}"
        for module, path in sorted(MODULES.items())
        if _package(module) in NUMERICS
        for target, line, lazy in _imports(module, _source(path))
        if not lazy and target.split(".")[0] in HEAVY
    ]
    assert not violations, (
        "numerics layers import a heavy dependency at import time; import it "
        "inside the function that needs it:\n" + "\n".join(violations)
    )


def test_importing_numerics_loads_no_heavy_dependency():
    code = (
        f"import sys; import {', '.join(NUMERICS)}; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))"
    )
    result = _fresh_interpreter(code)
    assert result.stdout.strip() == "[]", f"import {', '.join(NUMERICS)} loaded {result.stdout}"


def test_training_and_evaluation_name_no_optimizer():
    paths = [path for module, path in MODULES.items() if _package(module) == "sam_jax.training"]
    paths.append(os.path.join(ROOT, "experiments", "evaluate.py"))
    found = [
        f"{os.path.relpath(path, ROOT)}:{node.lineno}: {node.value!r}"
        for path in sorted(paths)
        for node in ast.walk(ast.parse(_source(path)))
        if isinstance(node, ast.Constant) and node.value in OPTIMIZER_NAMES
    ]
    assert not found, (
        "optimizer names outside sam_jax/optim/registry.py; ask the registry "
        "(e.g. a spec's flag) instead:\n" + "\n".join(found)
    )


# The experiment code every driver shares: it reads config paths and never names an optimizer.
SHARED_EXPERIMENT_MODULES = ("cli.py", "grid.py", "runner.py", "store.py", "tables.py")


def test_shared_experiment_code_names_no_optimizer():
    """No optimizer name in the shared experiment code, as a string (``"bulk_sgd"``) or as an
    attribute (``job.optimizer.bulk_sgd.k``): a sweep is over config paths, a group label is built
    from them and never parsed back."""
    found = []
    for name in SHARED_EXPERIMENT_MODULES:
        path = os.path.join(ROOT, "experiments", name)
        for node in ast.walk(ast.parse(_source(path))):
            if isinstance(node, ast.Constant) and node.value in OPTIMIZER_NAMES:
                found.append(f"experiments/{name}:{node.lineno}: {node.value!r}")
            if isinstance(node, ast.Attribute) and node.attr in OPTIMIZER_NAMES:
                found.append(f"experiments/{name}:{node.lineno}: .{node.attr}")
    assert not found, "optimizer names in the shared experiment code; use a config path instead:\n" + "\n".join(found)


# Issue acceptance: no module over this many lines in experiments/ or sam_jax/training/ unless its
# docstring states why (the phrase below).
MAX_MODULE_LINES = 400
REASON = "over 400 lines because"


def test_long_modules_state_why():
    unexplained = []
    for folder in ("experiments", os.path.join("sam_jax", "training")):
        for directory, _, names in os.walk(os.path.join(ROOT, folder)):
            for name in (n for n in names if n.endswith(".py")):
                path = os.path.join(directory, name)
                with open(path, encoding="utf-8") as f:
                    source = f.read()
                docstring = ast.get_docstring(ast.parse(source)) or ""
                if source.count("\n") > MAX_MODULE_LINES and REASON not in " ".join(docstring.split()):
                    unexplained.append(os.path.relpath(path, ROOT))
    assert not unexplained, f"over {MAX_MODULE_LINES} lines without '{REASON} ...' in the docstring: {unexplained}"
