"""Make the recipe modules (scripts beside each other under recipes/) importable in tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("av")
pytest.importorskip("tyro")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "recipes"))
