"""``CHUNKFORMER_REQUIRE_TRITON=1`` turns ``tests/ops/test_lsh_triton.py``'s skip into a collection failure.

The GPU suite sets it, so that Triton kernels the backend refuses on the GPU machine fail its tests step
instead of passing as skipped. Checked in a subprocess where the backend must refuse on every machine: no
CUDA device visible and ``TRITON_INTERPRET=0``. Collection only (about 5 s): the refusal happens there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "tests" / "ops" / "test_lsh_triton.py"


def test_a_refusal_fails_collection_when_triton_is_required() -> None:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    environment = {
        **os.environ,
        "PYTHONPATH": path,
        "CUDA_VISIBLE_DEVICES": "",
        "TRITON_INTERPRET": "0",
        "CHUNKFORMER_REQUIRE_TRITON": "1",
    }
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only", str(MODULE)]
    done = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=ROOT, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "CHUNKFORMER_REQUIRE_TRITON=1" in output, output
    # The backend's own reason is named.
    assert "Triton kernels run there only with TRITON_INTERPRET=1" in output, output
