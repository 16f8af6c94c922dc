"""Recipes check their optional dependencies before any work and name the extra to install."""

from __future__ import annotations

import importlib.util

import pytest

from chunkformer.engine import MissingDependencyError, require
from tests.recipes.scripts import load_recipe

ablations = load_recipe("ablations")
train_kinetics = load_recipe("train_kinetics")


def _hide(monkeypatch: pytest.MonkeyPatch, *hidden: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a)
    )


def test_require_names_every_missing_module_and_the_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    require("av", "matplotlib", purpose="x")  # installed with the test extra
    _hide(monkeypatch, "av", "matplotlib")
    with pytest.raises(
        MissingDependencyError, match=r"x needs av, matplotlib .*pip install 'chunkformer\[video,viz\]'"
    ):
        require("av", "tyro", "matplotlib", purpose="x")
    with pytest.raises(ValueError, match="unknown optional modules"):
        require("numpy", purpose="x")


@pytest.mark.parametrize("hidden", ["av", "tyro", "tensorboard"])
def test_training_recipe_stops_before_any_work(monkeypatch: pytest.MonkeyPatch, hidden: str) -> None:
    _hide(monkeypatch, hidden)
    monkeypatch.setattr(train_kinetics, "train", lambda config: pytest.fail("training started"))
    with pytest.raises(MissingDependencyError, match=rf"needs {hidden} .*chunkformer\[video\]"):
        train_kinetics.main([])


def test_ablation_study_stops_before_its_first_run_without_matplotlib(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _hide(monkeypatch, "matplotlib")
    monkeypatch.setattr(ablations, "run_study", lambda study: pytest.fail("a run started"))
    with pytest.raises(MissingDependencyError, match=r"needs matplotlib .*chunkformer\[viz\]"):
        ablations.main(["--quick"])
