"""The engine's tests run training end to end on generated videos: they need the video extra."""

from __future__ import annotations

import pytest

pytest.importorskip("av")
pytest.importorskip("tyro")
