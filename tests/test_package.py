"""Package layout: every submodule is reachable as an attribute of its package.

A package that re-exports a function under its submodule's name (``chunkformer.ops.attention`` once did)
hides the module: ``import chunkformer.ops.attention as m`` then gives the function, and tests and
benchmarks had to reach the module through ``importlib.import_module``.

No module imports into a cycle: the model registry once imported the preset modules back, which import it.
"""

from __future__ import annotations

import ast
import importlib
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import chunkformer


def _packages() -> list[ModuleType]:
    found = [chunkformer]
    for info in pkgutil.walk_packages(chunkformer.__path__, prefix="chunkformer."):
        if info.ispkg:
            found.append(importlib.import_module(info.name))
    return found


# Modules that import an optional dependency at the top (the Triton kernels) are left out where it is missing.
_OPTIONAL = {"triton"}


def test_no_submodule_is_hidden_by_a_reexported_name() -> None:
    hidden = []
    for package in _packages():
        for info in pkgutil.iter_modules(package.__path__):
            try:
                module = importlib.import_module(f"{package.__name__}.{info.name}")
            except ModuleNotFoundError as error:
                if error.name in _OPTIONAL:
                    continue
                raise
            attribute = getattr(package, info.name)
            if attribute is not module:
                hidden.append(f"{module.__name__} (the package attribute is a {type(attribute).__name__})")
    assert not hidden, f"submodules hidden by a name their package exports: {hidden}"


# --- import cycles ------------------------------------------------------------------------------------------

_ROOT = Path(chunkformer.__file__).resolve().parent


def _module_files() -> dict[str, Path]:
    """Every chunkformer module by dotted name (a package by its own name, for its ``__init__.py``)."""
    files = {}
    for path in sorted(_ROOT.rglob("*.py")):
        parts = path.relative_to(_ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        files[name] = path
    return files


def _imported(tree: ast.AST, modules: set[str], this: str, is_package: bool) -> set[str]:
    """The chunkformer modules a module's source imports, lazily inside functions included."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = this.split(".") if is_package else this.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            for alias in node.names:
                # `from pkg import sub` imports the submodule; `from pkg import name` imports pkg.
                target = f"{base}.{alias.name}"
                found.add(target if target in modules else base)
    return {name for name in found if name in modules}


def _import_graph() -> dict[str, set[str]]:
    files = _module_files()
    modules = set(files)
    return {
        name: _imported(ast.parse(path.read_text()), modules, name, path.name == "__init__.py") - {name}
        for name, path in files.items()
    }


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_chunkformer_module_imports_into_a_cycle() -> None:
    # Static: lazy imports inside functions count too, since they only hide a cycle until first call.
    graph = _import_graph()
    assert "chunkformer.models.registry" in graph
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_registry_imports_no_model_module() -> None:
    models = {"chunkformer.models.sct", "chunkformer.models.tiny"}
    assert _import_graph()["chunkformer.models.registry"] & models == set()


def test_cycle_check_sees_a_cycle() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def _run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=_subprocess_env()
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT.parent), env.get("PYTHONPATH")]))
    return env


def test_list_models_is_complete_after_importing_the_registry_alone() -> None:
    # The built-in presets (other tests' modules, such as the ablation study's, register more here).
    sct = ["sct_l", "sct_m", "sct_s", "sct_s_local_every_stage", "sct_tiny", "vit_b16_sct"]
    zoo = ["nat_tiny", "timesformer_base", "timesformer_tiny", "video_swin_t", "video_swin_tiny"]
    expected = sorted([*sct, *zoo, "vivit_b_fe", "vivit_tiny"])
    code = "import chunkformer.models.registry as r; print(','.join(r.list_models()))"
    assert _run_python(code).strip().split(",") == expected


def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    # One interpreter (torch imported once), chunkformer's modules dropped from sys.modules before each
    # import, so each module is the first chunkformer module imported. A module whose optional dependency is
    # not installed is skipped.
    names = sorted(_module_files())
    code = f"""
import importlib, sys
failed = []
for name in {names!r}:
    for loaded in [m for m in sys.modules if m == "chunkformer" or m.startswith("chunkformer.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] == "chunkformer":
            failed.append(f"{{name}}: {{error!r}}")
    except Exception as error:
        failed.append(f"{{name}}: {{error!r}}")
print("\\n".join(failed))
"""
    assert _run_python(code).strip() == ""


# --- dependencies -------------------------------------------------------------------------------------------


def _third_party_imports() -> set[str]:
    """Top-level names of the non-standard-library packages chunkformer's modules import."""
    names = set()
    for path in _module_files().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"__future__", "chunkformer"}


def test_every_imported_package_is_declared_in_pyproject() -> None:
    # The test and bench extras do not count: a user who installs chunkformer[video] has neither.
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((_ROOT.parent / "pyproject.toml").read_text())["project"]
    extras = {
        name: deps for name, deps in project["optional-dependencies"].items() if name not in ("test", "bench")
    }
    declared = {
        re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("-", "_")
        for requirement in [*project["dependencies"], *(dep for deps in extras.values() for dep in deps)]
    }
    undeclared = sorted(_third_party_imports() - declared)
    assert not undeclared, f"imported by chunkformer but in no pyproject dependency list: {undeclared}"
