"""Which kernel LSH attention runs when nothing chose one: the fused Triton kernels on CUDA, once they have
passed a self-check on that device and dtype; the block path everywhere else.

Automatic selection (no ``use_backend`` block, no ``CHUNKFORMER_ATTN_BACKEND``) takes the Triton kernels
(``chunkformer.ops.lsh_triton``) when all of these hold, and ``auto_triton_reasons`` says which one failed:

* the inputs are on CUDA (on CPU the kernels run only through Triton's interpreter, which is for tests);
* Triton imports, the inputs are float16 or bfloat16 (the dtypes whose dots run on tensor cores; float32
  runs on the block path unless pinned), and ``dropout_p`` is 0;
* the call is not being traced by ``torch.compile`` (there the Triton path is a graph break: it runs
  eagerly between graphs, and ``fullgraph=True`` refuses it; compiled models keep the block path) nor
  captured into a CUDA graph;
* the self-check passed: the first time, per device and dtype, the kernels run two small cases (sorted
  layout with key padding; causal with shared QK; two rounds each) forward and backward, compared with the
  block path's math kernel on the same inputs. A kernel that fails to compile or disagrees is not used
  again in this process; a ``RuntimeWarning`` says why, once.

``use_backend("triton")`` still forces the kernels, and ``use_backend("sdpa")`` (or the environment
variable) keeps LSH attention on the block path.
"""

from __future__ import annotations

import functools
import warnings

import torch

from chunkformer.ops.block_attention import BLOCK_KERNELS, BlockKernel, select_block_kernel
from chunkformer.ops.dispatch import automatic_selection, current_backend
from chunkformer.ops.lsh_pass import run_pass

__all__ = [
    "AUTO_TRITON_DEVICES",
    "auto_triton_reasons",
    "check_errors",
    "lsh_kernel_for",
    "triton_self_check",
]

AUTO_TRITON_DEVICES: tuple[str, ...] = ("cuda",)
"""Device types on which automatic selection may take the Triton kernels."""

# Per check case: (is_causal, shared_qk, padded tokens of batch element 0). The sorted layout is SCT's.
_CHECK_CASES = ((False, False, 5), (True, True, 0))
# (B, H, N, d): 4 buckets of 12 per round, so the kernels mask slots of a 16-row tile, as SCT's bucket of 49
# does in a 64-row one; head size 16, one tl.dot tile.
_CHECK_SHAPE = (2, 2, 48, 16)
_CHECK_KWARGS = {"bucket_size": 12, "n_hashes": 2, "n_buckets": 4}
# Max |triton - math| allowed, relative to max |math| of each tensor (outputs and q, k, v gradients).
_CHECK_TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 4e-2}


def lsh_kernel_for(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> BlockKernel:
    """The kernel record LSH attention runs for these inputs: the Triton kernels when automatic selection
    takes them (see the module docstring), else the block kernel of the dispatch's backend.

    Raises:
        chunkformer.ops.AttentionBackendError: when an explicitly requested backend cannot run the inputs.
    """
    backend = current_backend(q, k, v)
    if automatic_selection() and not auto_triton_reasons(q.device, q.dtype, dropout_p):
        return BLOCK_KERNELS["triton"]
    return select_block_kernel(backend, q.device, dropout_p, q.dtype)


def auto_triton_reasons(device: torch.device | str, dtype: torch.dtype, dropout_p: float = 0.0) -> list[str]:
    """Why automatic selection does not run LSH attention's Triton kernels for inputs of ``dtype`` on
    ``device`` (empty: it does). May run the self-check (``triton_self_check``), once per device and dtype.

    Example:
        >>> import torch
        >>> from chunkformer.ops.lsh_auto import auto_triton_reasons
        >>> auto_triton_reasons("cpu", torch.float32)[0]
        'automatic selection takes the Triton kernels on cuda only, not cpu'
    """
    if torch.compiler.is_compiling():
        return [
            "under torch.compile LSH attention keeps the block path: the Triton path would be a graph break "
            "(pin use_backend('triton') to run it between graphs)"
        ]
    device = torch.device(device)
    if device.type not in AUTO_TRITON_DEVICES:
        return [
            f"automatic selection takes the Triton kernels on {' or '.join(AUTO_TRITON_DEVICES)} only, "
            f"not {device.type}"
        ]
    reasons = BLOCK_KERNELS["triton"].not_supported_reasons(device, dtype, dropout_p)
    if reasons:
        return reasons
    if dtype == torch.float32:
        # Compiled for sm_90 their fp32 dots ("ieee", no TF32) run on CUDA cores and ptxas spills 4-18 KB
        # per thread (tests/ops/test_lsh_triton_compiles.py): not a default before a GPU has timed it.
        return [
            "float32 inputs keep the block path: the Triton kernels' exact float32 dots run without tensor "
            "cores (use bf16 / fp16, e.g. autocast, or pin use_backend('triton'))"
        ]
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return ["a CUDA graph is being captured; the self-check cannot run inside it"]
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    failure = triton_self_check(str(device), dtype)
    return [] if failure is None else [failure]


@functools.cache
def triton_self_check(device: str, dtype: torch.dtype) -> str | None:
    """Run the Triton kernels on small cases on ``device`` in ``dtype``, forward and backward, against the
    block path's math kernel on the same inputs. Cached: runs once per device and dtype in a process.

    Returns:
        None when they agree, else why not (which also goes out once as a ``RuntimeWarning``).
    """
    tolerance = _CHECK_TOLERANCE[dtype]
    try:
        errors = check_errors(torch.device(device), dtype)
        failing = [f"{name} by {error:.3g}" for name, error in errors.items() if not error <= tolerance]
        failure = None
        if failing:  # NaN fails too
            failure = f"differs from the math kernel's (relative, at most {tolerance}): {', '.join(failing)}"
    except Exception as error:  # a compile error, an unsupported GPU: anything Triton or CUDA raise
        failure = f"{type(error).__name__}: {error}"
    if failure is not None:
        failure = f"the Triton LSH kernels failed their self-check on {device} in {dtype}: {failure}"
        warnings.warn(
            f"{failure}. LSH attention stays on the block path there; use_backend('triton') still forces the "
            "kernels.",
            RuntimeWarning,
            stacklevel=2,
        )
    return failure


def check_errors(device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """The self-check's measurements: for each case and tensor (output, dq, dk, dv), max |triton - math|
    relative to max |math|, from inputs of ``dtype`` on ``device``.

    Raises:
        Exception: whatever the kernels raise (a compile error on an unsupported GPU, for one).
    """
    kernels = {"triton": BLOCK_KERNELS["triton"], "math": BLOCK_KERNELS["math"]}
    errors = {}
    # The caller may be in autocast, no_grad or inference mode (an evaluation loop's first batch).
    with (
        torch.inference_mode(False),
        torch.enable_grad(),
        torch.autocast(device.type, enabled=False),
    ):
        for case, (is_causal, shared_qk, padding) in enumerate(_CHECK_CASES):
            draw = torch.Generator().manual_seed(case)
            q, k, v, grad_out = (
                torch.randn(_CHECK_SHAPE, generator=draw).to(device, dtype) for _ in range(4)
            )
            mask = torch.zeros(_CHECK_SHAPE[0], _CHECK_SHAPE[2], dtype=torch.bool, device=device)
            mask[0, _CHECK_SHAPE[2] - padding :] = True
            results = {}
            for name, kernel in kernels.items():
                leaves = [x.clone().requires_grad_() for x in ((q, v) if shared_qk else (q, k, v))]
                out = run_pass(
                    leaves[0],
                    None if shared_qk else leaves[1],
                    leaves[-1],
                    kernel,
                    is_causal=is_causal,
                    shared_qk=shared_qk,
                    key_padding_mask=mask if padding else None,
                    generator=torch.Generator(device=device).manual_seed(case),
                    dropout_p=0.0,
                    blocks_per_piece=None,
                    **_CHECK_KWARGS,
                )
                grads = torch.autograd.grad(out, leaves, grad_out)
                results[name] = (out, *grads)
            layout = "causal, shared QK" if is_causal else "sorted, key padding"
            names = ("output", "dq", "dv") if shared_qk else ("output", "dq", "dk", "dv")
            for name, got, expected in zip(names, results["triton"], results["math"], strict=True):
                scale = expected.float().abs().max().clamp_min(1e-6)
                errors[f"{name} ({layout})"] = ((got.float() - expected.float()).abs().max() / scale).item()
    return errors
