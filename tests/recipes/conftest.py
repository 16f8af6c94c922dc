"""The recipes' tests run them end to end: they need the video extra."""

from __future__ import annotations

import pytest

pytest.importorskip("av")
pytest.importorskip("tyro")
