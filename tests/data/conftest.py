"""Tiny generated videos shared by the data tests (session-scoped: encoding is the slow part)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chunkformer.data import MotionDatasetSpec, ensure_motion_dataset

pytest.importorskip("av")

TINY = MotionDatasetSpec(train_per_class=2, val_per_class=1, frames=12, size=16, fps=8, seed=3)


@pytest.fixture(scope="session")
def motion_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_motion_dataset(tmp_path_factory.mktemp("motion") / "motion-v1", TINY)
