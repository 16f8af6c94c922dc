"""The Triton LSH kernels compile for NVIDIA GPUs (sm_80: A100; sm_90: H100 / H200), checked on a machine
without one, and the compiled code is what the docs promise.

The interpreter tests (``test_lsh_triton.py``) check what the kernels compute; they never run Triton's
compiler, which is where a GPU user would first fail (a type error in a ``tl.dot``, a layout the target
cannot hold, too much shared memory). ``triton_aot.py`` captures the kernels' real launches from the
autograd function and compiles them with ``triton.compile`` for each target, down to a cubin with the ptxas
Triton ships, in a subprocess without ``TRITON_INTERPRET`` (about 30 s on 2 cores). Asserted of the PTX:

* every captured launch (both layouts, shared QK, fp16 / bf16 / fp32, head size 16 and 64, the
  deterministic backward; SCT's case in the three variants Triton specialises the round index into)
  compiles for every target it is compiled for;
* fp16 and bf16 dots run on tensor cores (``mma.sync`` on sm_80, ``wgmma`` on sm_90), fp32 dots do not
  (``input_precision="ieee"``: no TF32, as documented);
* the backward's key and value gradients are added with relaxed reductions (``red...relaxed``), not
  Triton's default acq_rel atomics, which fence every add; the deterministic backward has no float atomics;
* shared memory per program fits 99 KiB, the smallest per-block limit from sm_80 to sm_90 (sm_86 / sm_89);
* on sm_90 the fp16 / bf16 kernels spill no registers (ptxas's report): the backward runs 8 warps, with
  Triton's default 4 it spills 72-808 bytes per thread (stored and loaded);
* offsets are computed in int64 (the program's group index is widened first, in the TTIR): a call whose
  tensors pass 2**31 elements would otherwise index wrapped rows, silently, which no test here could
  allocate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton is not installed (pip install 'chunkformer[test]')")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "ops" / "triton_aot.py"
# sm_86 / sm_89: 99 KiB of shared memory per block (opt-in maximum); sm_80 164 KiB, sm_90 227 KiB.
SHARED_LIMIT = 99 * 1024


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    environment = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    # A private cache: every kernel is compiled here, none read from an earlier run.
    cache = tmp_path_factory.mktemp("triton-cache")
    environment |= {"PYTHONPATH": path, "TRITON_CACHE_DIR": str(cache), "TRITON_DEFAULT_FP_FUSION": "1"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, env=environment, cwd=ROOT, timeout=600
    )
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode == 3:
        pytest.skip(records[0]["unsupported"] if records else done.stderr[-2000:])
    assert done.returncode == 0, done.stderr[-4000:]
    return records


def test_every_launch_compiles_for_every_target(compiled: list[dict]) -> None:
    failed = [record for record in compiled if not record["compiled"]]
    assert not failed, "\n".join(json.dumps(record) for record in failed)
    assert {record["capability"] for record in compiled} == {80, 90}
    assert {record["kernel"] for record in compiled} == {"lsh_round_forward", "lsh_round_backward"}
    cases = {(r["dtype"], r["causal"], r["shared_qk"], r["head_dim"], r["deterministic"]) for r in compiled}
    assert len(cases) == 8, cases
    # Triton specialises the round index (0: divisible by 16, 1: a constant, 2: neither): each compiles.
    sct = [r for r in compiled if (r["dtype"], r["causal"], r["shared_qk"]) == ("bfloat16", False, False)]
    assert {r["round_index"] for r in sct if r["head_dim"] == 16 and not r["deterministic"]} == {0, 1, 2}


def test_half_precision_dots_use_tensor_cores_and_fp32_dots_do_not(compiled: list[dict]) -> None:
    for record in compiled:
        instructions = record["instructions"]
        tensor_core = [name for name in instructions if name.startswith(("mma.sync", "wgmma"))]
        if record["dtype"] == "float32":
            assert not tensor_core, record
            continue
        expected = "mma.sync" if record["capability"] == 80 else "wgmma"
        operand = "bf16" if record["dtype"] == "bfloat16" else "f16"
        assert any(name.startswith(expected) and operand in name for name in tensor_core), record


def test_gradient_atomics_are_relaxed_reductions(compiled: list[dict]) -> None:
    for record in compiled:
        atomics = [name for name in record["instructions"] if name.startswith(("atom.", "red."))]
        if record["kernel"] == "lsh_round_forward" or record["deterministic"]:
            assert not atomics, record
            continue
        assert atomics, record
        assert all(name.startswith("red.") and ".relaxed." in name for name in atomics), record


def test_shared_memory_fits_every_target(compiled: list[dict]) -> None:
    for record in compiled:
        assert 0 < record["shared_bytes"] <= SHARED_LIMIT, record


def test_half_precision_kernels_do_not_spill_on_hopper(compiled: list[dict]) -> None:
    for record in compiled:
        assert record["registers"] is not None and record["spill_bytes"] is not None, record
        if record["capability"] == 90 and record["dtype"] != "float32":
            assert record["spill_bytes"] == 0, record
    backward = [r for r in compiled if r["kernel"] == "lsh_round_backward"]
    assert all(record["num_warps"] == 8 for record in backward)


def test_offsets_are_int64(compiled: list[dict]) -> None:
    assert all(record["int64_offsets"] for record in compiled), [
        r for r in compiled if not r["int64_offsets"]
    ]
