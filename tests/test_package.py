"""Package layout: every submodule is reachable as an attribute of its package.

A package that re-exports a function under its submodule's name (``chunkformer.ops.attention`` once did)
hides the module: ``import chunkformer.ops.attention as m`` then gives the function, and tests and
benchmarks had to reach the module through ``importlib.import_module``.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

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
