"""Compile the Triton LSH kernels for NVIDIA GPUs on a machine without one, and describe what came out.

Run by ``tests/ops/test_lsh_triton_compiles.py`` in a subprocess, with ``TRITON_INTERPRET`` unset (the kernels
must be decorated for a GPU, not for the interpreter). The kernels' launches are captured from
``TritonLSHFunction`` forward and backward on CPU tensors (``lsh_triton._kernels`` replaced by a recorder),
so the arguments, their dtypes and the compile-time constants are the ones the library passes. Each launch
is then specialised as Triton's JIT would specialise it (its own binder: pointer alignment, integers equal
to 1 or divisible by 16) and compiled for each target with ``triton.compile``, down to a cubin with the
ptxas that Triton ships.

Prints one JSON object per (launch, target): what was compiled, whether it compiled, the shared memory it
needs, the registers per thread and bytes spilled per thread that ptxas reports (Triton's own ptxas call,
its log captured), and counts of the PTX instructions that matter here (tensor-core dots, atomics). Needs
an empty ``TRITON_CACHE_DIR``: a cached kernel runs no ptxas and has no log.

Usage: ``python tests/ops/triton_aot.py`` (exit status 3 when this Triton lacks the JIT internals used).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import sys
from collections import Counter

import torch

if os.environ.get("TRITON_INTERPRET", "").strip() == "1":
    sys.exit("run with TRITON_INTERPRET unset: the kernels must be decorated for a GPU")

import triton  # noqa: E402

try:
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    knobs.nvidia.dump_ptxas_log = True  # Triton prints ptxas -v's log to stdout
except (ImportError, AttributeError) as error:
    print(json.dumps({"unsupported": f"triton {triton.__version__}: {error}"}))
    sys.exit(3)

from chunkformer.ops import lsh_triton, lsh_triton_kernels  # noqa: E402
from chunkformer.ops.lsh_pass import hash_rounds, lay_out  # noqa: E402

# (compute capability, what runs it): the per-block shared memory of the smallest is checked by the test.
TARGETS = {80: "A100", 90: "H100 / H200"}
# PTX instructions counted in each kernel.
INSTRUCTIONS = r"\b(wgmma\.mma_async\S*|mma\.sync\S*|atom\.\S+|red\.\S+)"

_launches: list[tuple[str, tuple, dict]] = []


class _Recorder:
    def __init__(self, name: str) -> None:
        self.name = name

    def __getitem__(self, grid):
        return lambda *args, **kwargs: _launches.append((self.name, args, kwargs))


class _RecordingKernels:
    lsh_round_forward = _Recorder("lsh_round_forward")
    lsh_round_backward = _Recorder("lsh_round_backward")


def capture(
    dtype: torch.dtype,
    causal: bool,
    shared_qk: bool,
    head_dim: int = 16,
    bucket_size: int = 49,
    deterministic: bool = False,
    n_hashes: int = 1,
) -> list[tuple[str, tuple, dict]]:
    """The launches of one forward and backward pass, every round's. Rounds differ in the round index only,
    which Triton specialises on: 0 as divisible by 16, 1 as a constant, others not (three variants of each
    kernel for three rounds or more)."""
    _launches.clear()
    lsh_triton._kernels = lambda device: _RecordingKernels
    generator = torch.Generator().manual_seed(0)
    groups, seq_len = 2, 4 * bucket_size
    drawn = (torch.randn(groups, seq_len, head_dim, generator=generator) for _ in range(3))
    q, k, v = (x.to(dtype).requires_grad_() for x in drawn)
    n_buckets = 2 * math.ceil(seq_len / bucket_size / 2)
    buckets = hash_rounds(
        q.detach(), None if shared_qk else k.detach(), n_hashes, n_buckets, torch.Generator().manual_seed(0)
    )
    layout = lay_out(*buckets, None, bucket_size, n_buckets, causal, shared_qk)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        out = lsh_triton.TritonLSHFunction.apply(
            q, None if shared_qk else k, v, layout, None, head_dim**-0.5, shared_qk
        )
        out.float().sum().backward()
    finally:
        torch.use_deterministic_algorithms(previous)
    return list(_launches)


def specialise(name: str, args: tuple, kwargs: dict, capability: int) -> tuple[ASTSource, GPUTarget, dict]:
    """One captured launch as the JIT would compile it for ``sm_<capability>``: source, target, options."""
    kernel = getattr(lsh_triton_kernels, name)
    target = GPUTarget("cuda", capability, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return ASTSource(kernel, signature, constexprs, attrs), target, options.__dict__


def compile_for(name: str, args: tuple, kwargs: dict, capability: int):
    """Compile one captured launch for ``sm_<capability>`` as the JIT would at that launch."""
    source, target, options = specialise(name, args, kwargs, capability)
    return triton.compile(source, target=target, options=options)


def variants():
    """(dtype, causal, shared_qk, head_dim, deterministic, n_hashes, targets): every layout and shared-QK
    case in bf16, SCT's (sorted, bf16) with the three round-index variants; fp16 and fp32 on the sorted
    layout; head size 64; the deterministic backward."""
    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    both, hopper = (80, 90), (90,)
    yield bf16, False, False, 16, False, 3, both
    yield bf16, False, True, 16, False, 1, hopper
    yield bf16, True, False, 16, False, 1, hopper
    yield bf16, True, True, 16, False, 1, hopper
    yield fp16, False, False, 16, False, 1, both
    yield fp32, False, False, 16, False, 1, hopper
    yield bf16, False, False, 64, False, 1, hopper
    yield bf16, False, False, 16, True, 1, hopper


def main() -> None:
    internals = ("signature", "params", "_pack_args")
    missing = [name for name in internals if not hasattr(lsh_triton_kernels.lsh_round_forward, name)]
    if missing:
        print(json.dumps({"unsupported": f"triton {triton.__version__}: JITFunction has no {missing}"}))
        sys.exit(3)
    compiled_before = set()
    for dtype, causal, shared_qk, head_dim, deterministic, n_hashes, targets in variants():
        launches = capture(dtype, causal, shared_qk, head_dim, deterministic=deterministic, n_hashes=n_hashes)
        for name, args, kwargs in launches:
            for capability in targets:
                # One record per variant Triton would compile; a repeat (the deterministic case's
                # forward) would hit Triton's cache and run no ptxas.
                key = specialise(name, args, kwargs, capability)[0].hash() + str(capability)
                if key in compiled_before:
                    continue
                compiled_before.add(key)
                kernel = getattr(lsh_triton_kernels, name)
                record = {
                    "kernel": name,
                    "round_index": args[kernel.arg_names.index("round_index")],
                    "dtype": str(dtype).removeprefix("torch."),
                    "causal": causal,
                    "shared_qk": shared_qk,
                    "head_dim": head_dim,
                    "deterministic": deterministic,
                    "capability": capability,
                }
                log = io.StringIO()
                try:
                    with contextlib.redirect_stdout(log):
                        compiled = compile_for(name, args, kwargs, capability)
                except Exception as error:  # what a GPU user would meet at the first launch
                    record |= {"compiled": False, "error": f"{type(error).__name__}: {error}"[:4000]}
                else:
                    ptx = compiled.asm["ptx"]
                    # Offsets are int64 when the program's group index is widened before any arithmetic.
                    widened = re.search(
                        r"%group\w* = arith\.extsi %group\w* : i32 to i64", compiled.asm["ttir"]
                    )
                    found = Counter(m.group(0) for m in re.finditer(INSTRUCTIONS, ptx))
                    registers = re.search(r"Used (\d+) registers", log.getvalue())
                    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log.getvalue())
                    record |= {
                        "compiled": "cubin" in compiled.asm,
                        "num_warps": compiled.metadata.num_warps,
                        "shared_bytes": compiled.metadata.shared,
                        "registers": None if registers is None else int(registers.group(1)),
                        "spill_bytes": None
                        if spills is None
                        else int(spills.group(1)) + int(spills.group(2)),
                        "instructions": dict(found),
                        "int64_offsets": widened is not None,
                    }
                print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
