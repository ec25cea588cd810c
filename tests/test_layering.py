"""The layers of pcam_core: no module imports one above it, and the services and the run folder stay free
of model code. Read from the source with `ast` (imports inside functions count too)."""

from __future__ import annotations

import ast
import functools
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pcam_core"

# Lowest first. A module may import its own layer and those below; the longest prefix names the layer.
LAYERS: list[tuple[str, ...]] = [
    ("pcam_core", "pcam_core.config", "pcam_core.fileio", "pcam_core.devices", "pcam_core.data", "pcam_core.models", "pcam_core.p4m",
     "pcam_core.transforms", "pcam_core.metrics", "pcam_core.stats", "pcam_core.triage", "pcam_core.checkpoint",
     "pcam_core.uploads", "pcam_core.shifts", "pcam_core.decision", "pcam_core.staging", "pcam_core.bundled", "pcam_core.sharding",
     "pcam_core.scoring_options"),
    ("pcam_core.runs", "pcam_core.explain", "pcam_core.inference", "pcam_core.optim",
     "pcam_core.distributed", "pcam_core.calibration", "pcam_core.tracking", "pcam_core.loading", "pcam_core.scope", "pcam_core.posthoc",
     "pcam_core.ensemble"),
    ("pcam_core.train", "pcam_core.train_session", "pcam_core.distil", "pcam_core.crossval", "pcam_core.predict", "pcam_core.slides", "pcam_core.evaluation", "pcam_core.export",
     "pcam_core.robustness"),
    ("pcam_core.workspace",),
    ("pcam_core.api", "pcam_core.cli", "pcam_core.serve", "pcam_core.__main__"),
]
MODEL_CODE = ("torch", "pcam_core.models", "pcam_core.p4m", "pcam_core.inference", "pcam_core.predict", "pcam_core.train", "pcam_core.train_session",
              "pcam_core.explain", "pcam_core.checkpoint")
# gpu_count asks torch how many GPUs there are, importing it inside the function only.
ALLOWED = {("pcam_core.runs.launch", "torch")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache  # every module is parsed once per session, not once per test that reads it
def _imports(path: Path) -> frozenset[str]:
    return frozenset(_imports_of(_module_name(path), path.read_text(encoding="utf-8"), is_package=path.name == "__init__.py"))


def _imports_of(name: str, source: str, *, is_package: bool = False) -> set[str]:
    """Every module the source of module `name` imports, made absolute."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            # `from pcam_core import scoring` imports a module, not a name
            found.update(f"{module}.{alias.name}" for alias in node.names
                         if (PACKAGE.parent.joinpath(*module.split("."), alias.name)).with_suffix(".py").exists()
                         or PACKAGE.parent.joinpath(*module.split("."), alias.name, "__init__.py").exists())
    return found


def _layer(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for layer, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), layer)
    return None if best is None else best[1]


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_no_module_imports_a_layer_above_it(path: Path) -> None:
    name = _module_name(path)
    own = _layer(name)
    assert own is not None, f"{name} has no layer in tests/test_layering.py; add it to LAYERS"
    upward = sorted(m for m in _imports(path) if m.startswith("pcam_core") and (_layer(m) or 0) > own)
    assert not upward, f"{name} (layer {own}) imports {upward}, which lie above it"


@pytest.mark.parametrize("path", [p for p in MODULES if _module_name(p).startswith(("pcam_core.workspace", "pcam_core.runs"))],
                         ids=lambda p: _module_name(p))
def test_services_and_runs_import_no_model_code(path: Path) -> None:
    name = _module_name(path)
    bad = sorted(m for m in _imports(path)
                 if any(m == f or m.startswith(f + ".") for f in MODEL_CODE) and (name, m) not in ALLOWED)
    assert not bad, f"{name} imports model code: {bad}"


def _graph() -> dict[str, set[str]]:
    """Module -> the pcam_core modules it imports (inside functions too). Importing one's own enclosing
    package (`from . import x`, `from ..runs import y` within runs) is not an edge: Python runs a package's
    `__init__` first, so it cannot close a circle."""
    names = {_module_name(p) for p in MODULES}
    graph: dict[str, set[str]] = {}
    for path in MODULES:
        name = _module_name(path)
        graph[name] = {m for m in _imports(path) if m in names and m != name and not name.startswith(m + ".")}
    return graph


def test_no_import_cycle() -> None:
    try:
        tuple(graphlib.TopologicalSorter(_graph()).static_order())
    except graphlib.CycleError as err:
        pytest.fail(f"import cycle (inside functions counts): {' -> '.join(err.args[1])}")


def test_the_cycle_check_sees_a_cycle_through_a_function_level_import() -> None:
    graph = {"a": {"b"}, "b": set()}
    graph["b"].add("a")  # as `def f(): from . import a` in b would add
    with pytest.raises(graphlib.CycleError):
        tuple(graphlib.TopologicalSorter(graph).static_order())
    assert "pcam_core.runs.folder" in _graph()["pcam_core.runs.resolve"]


def test_the_checker_sees_an_upward_import_inside_a_function() -> None:
    found = _imports_of("pcam_core.workspace.scoring", "def f():\n    from ..predict import checkpoint_path\n    from .. import train\n")
    assert {"pcam_core.predict", "pcam_core.train"} <= found
    assert _layer("pcam_core.predict") > _layer("pcam_core.runs.folder") and _layer("pcam_core.workspace.scoring") == 3


@pytest.mark.slow  # a fresh interpreter importing the services: outside the fast lane
def test_importing_the_services_and_runs_loads_no_torch() -> None:
    code = ("import sys, pcam_core.workspace, pcam_core.workspace.monitor, pcam_core.workspace.scoring, "
            "pcam_core.workspace.gallery, pcam_core.workspace.slides, pcam_core.slides.report, pcam_core.workspace.robustness, "
            "pcam_core.workspace.reviews, pcam_core.shifts, pcam_core.runs, pcam_core.runs.jobs, pcam_core.uploads; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
