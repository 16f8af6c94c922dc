"""Attention of query blocks on key views, returning the log-sum-exp, and its backward from a given output
and log-sum-exp, on each backend's kernel.

LSH attention (``chunkformer.ops.lsh_kernel``) needs two things no public attention API gives: the
log-sum-exp of every query's logits (to merge hash rounds), and a backward pass that takes the MERGED output
and log-sum-exp instead of the ones its own forward produced (each round's share of the exact gradient). The
kernels behind PyTorch's SDPA and xformers have both, one layer below their public functions:

* ``"cpu_flash"``: PyTorch's CPU flash-attention kernels (what SDPA runs on CPU).
* ``"cuda_efficient"``: PyTorch's CUDA memory-efficient kernels (what SDPA runs on CUDA for inputs with an
  additive mask; its flash kernels take no mask).
* ``"xformers"``: ``xformers.ops.fmha`` forward-with-lse and backward, dispatched by xformers among the
  kernels that accept the inputs (with a tensor bias, in xformers 0.0.35, that is cutlass, whose operator
  calls the same PyTorch CUDA kernels as ``"cuda_efficient"``).
* ``"math"``: matmul and softmax in float32 (or float64): any device, the only kernel with dropout (its masks
  come from the caller's generator, which the fused kernels cannot use).
* ``"triton"``: not a block kernel but LSH attention's fused Triton kernel
  (``chunkformer.ops.lsh_triton``), which reads unsorted rows in place through the layout and builds the
  masks itself; its record is here so that selection and refusals read one table. ``block_forward``
  and ``block_backward`` refuse it.

Each kernel is a ``BlockKernel`` record in ``BLOCK_KERNELS`` saying what it supports;
``select_block_kernel`` reads the table for the attention dispatch's backend
(``chunkformer.ops.current_backend``), so ``use_backend`` and ``CHUNKFORMER_ATTN_BACKEND`` steer LSH
attention too.

Shapes (all kernels): q (G, P, S, d), k (G, P, K, d), v (G, P, K, dv), bias broadcastable to (G, P, S, K) in
q's dtype (0 or -inf) or None; out (G, P, S, dv) in q's dtype, lse (G, P, S) float32 (or float64). Every
kernel reads its inputs through strides; the ones LSH attention passes are views of slot-major memory,
(G, S, P, d), which is the (batch, length, heads, dim) layout the fused kernels work in, so they copy nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from chunkformer.ops.triton_support import triton_device_reasons, triton_reasons

__all__ = [
    "BLOCK_KERNELS",
    "BlockKernel",
    "TritonLSHKernel",
    "block_backward",
    "block_forward",
    "block_kernel",
    "kernel_record",
    "kernel_width",
    "select_block_kernel",
    "takes_overlapping_keys",
    "zeroes_empty_rows",
]

# The fused CUDA kernels store the log-sum-exp padded to a multiple of this many queries, and their backward
# reads it so (PyTorch's kAlignLSE; xformers pads it the same way before calling them).
_CUDA_LSE_ALIGNMENT = 32

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_CUDA_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class BlockKernel:
    """What one block kernel supports, and why it refuses an input.

    Attributes:
        name: the kernel's name, as ``block_forward`` and ``block_backward`` take it.
        backends: the attention dispatch backends that choose it.
        devices: device types it runs on; None for any.
        dtypes: input dtypes it runs on.
        supports_dropout: whether it applies a dropout mask it is given. LSH attention draws its masks from
            the caller's generator; the fused kernels draw their own, so only the math kernel takes them.
        takes_overlapping_keys: whether it reads key views that share memory (overlapping windows)
            correctly. The CUDA backward kernels allocate key gradients with the keys' strides, which would
            make overlapping windows write over each other.
        zeroes_empty_rows: whether a query whose keys are all masked gets a zero output row (the CUDA
            kernels' rows are not specified: 0 / 0 may give NaN).
        reads_rows_in_place: True for a kernel that runs whole LSH rounds on the unsorted q, k, v and the
            layout (``lsh_attention`` calls it instead of gathering blocks); such a kernel takes no blocks.
    """

    name: str
    backends: tuple[str, ...]
    devices: tuple[str, ...] | None
    dtypes: tuple[torch.dtype, ...]
    supports_dropout: bool
    takes_overlapping_keys: bool
    zeroes_empty_rows: bool
    reads_rows_in_place: bool = False

    def not_supported_reasons(
        self, device: torch.device | str, dtype: torch.dtype, dropout_p: float = 0.0
    ) -> list[str]:
        """Why this kernel cannot run blocks on ``device`` in ``dtype`` with ``dropout_p`` (empty: it can)."""
        device_type = torch.device(device).type
        reasons = []
        if self.devices is not None and device_type not in self.devices:
            reasons.append(f"runs on {' or '.join(self.devices)}, not {device_type}")
        if dtype not in self.dtypes:
            reasons.append(f"takes {', '.join(str(t) for t in self.dtypes)}, not {dtype}")
        if dropout_p > 0.0 and not self.supports_dropout:
            reasons.append(
                f"draws its own dropout masks, so cannot apply dropout_p={dropout_p} from the caller's"
            )
        return reasons


@dataclass(frozen=True)
class TritonLSHKernel(BlockKernel):
    """The record of LSH attention's fused Triton kernel: besides the table's checks (dtypes, dropout), Triton
    must import, and the inputs be on CUDA, or on CPU under Triton's interpreter (``TRITON_INTERPRET=1``),
    which a static ``devices`` field cannot say."""

    def not_supported_reasons(
        self, device: torch.device | str, dtype: torch.dtype, dropout_p: float = 0.0
    ) -> list[str]:
        reasons = triton_reasons() + triton_device_reasons(device, dtype)
        # (The device and dtype were checked above, in words about Triton.)
        return reasons + [
            reason
            for reason in super().not_supported_reasons(device, dtype, dropout_p)
            if "dropout" in reason
        ]


# In order of preference: the first record that serves the backend and supports the input runs.
BLOCK_KERNELS: dict[str, BlockKernel] = {
    kernel.name: kernel
    for kernel in (
        BlockKernel("cpu_flash", ("sdpa",), ("cpu",), _FLOATS, False, True, True),
        BlockKernel("cuda_efficient", ("sdpa",), ("cuda",), _CUDA_FLOATS, False, False, False),
        BlockKernel("xformers", ("xformers",), ("cuda",), _CUDA_FLOATS, False, False, False),
        # No dropout: its masks would have to be drawn in the kernel from the caller's generator.
        TritonLSHKernel(
            "triton", ("triton",), None, _CUDA_FLOATS, False, True, True, reads_rows_in_place=True
        ),
        BlockKernel("math", ("sdpa", "xformers", "triton", "math"), None, _FLOATS, True, True, True),
    )
}


def kernel_record(kernel: str | BlockKernel) -> BlockKernel:
    """The record of a kernel given by name (or the record itself).

    Raises:
        ValueError: for a name not in ``BLOCK_KERNELS``.
    """
    if isinstance(kernel, BlockKernel):
        return kernel
    if kernel not in BLOCK_KERNELS:
        raise ValueError(f"unknown block kernel {kernel!r}; expected one of {tuple(BLOCK_KERNELS)}")
    return BLOCK_KERNELS[kernel]


def select_block_kernel(
    backend: str, device: torch.device | str, dropout_p: float = 0.0, dtype: torch.dtype = torch.float32
) -> BlockKernel:
    """The first kernel of ``BLOCK_KERNELS`` that serves the dispatch ``backend`` (``"sdpa"``,
    ``"xformers"``, ``"math"`` or ``"triton"``) and supports the input.

    Raises:
        ValueError: when no kernel serves the backend, or none of those that do supports the input; the
            message gives each one's reasons.
    """
    candidates = [kernel for kernel in BLOCK_KERNELS.values() if backend in kernel.backends]
    if not candidates:
        served = sorted({name for kernel in BLOCK_KERNELS.values() for name in kernel.backends})
        raise ValueError(f"no block kernel serves the dispatch backend {backend!r}; expected one of {served}")
    refusals = []
    for kernel in candidates:
        reasons = kernel.not_supported_reasons(device, dtype, dropout_p)
        if not reasons:
            return kernel
        refusals.append(f"{kernel.name}: {'; '.join(reasons)}")
    raise ValueError(f"no block kernel for backend {backend!r} runs these inputs: {' | '.join(refusals)}")


def block_kernel(
    backend: str, device: torch.device | str, dropout_p: float = 0.0, dtype: torch.dtype = torch.float32
) -> str:
    """The name of ``select_block_kernel``'s choice. Dropout always takes ``"math"``, the only kernel
    that applies the caller's masks; ``"xformers"`` off CUDA, and ``"triton"`` where Triton cannot run, fall
    back to it too."""
    return select_block_kernel(backend, device, dropout_p, dtype).name


def takes_overlapping_keys(kernel: str | BlockKernel) -> bool:
    """Whether the kernel reads overlapping key views correctly (see ``BlockKernel``)."""
    return kernel_record(kernel).takes_overlapping_keys


def zeroes_empty_rows(kernel: str | BlockKernel) -> bool:
    """Whether the kernel gives a query with every key masked a zero row (see ``BlockKernel``)."""
    return kernel_record(kernel).zeroes_empty_rows


def kernel_width(q: torch.Tensor, v: torch.Tensor) -> int:
    """One head size for q, k and v, rounded up to a multiple of 8: the CPU flash kernel's vector tail for
    other widths rounds a row differently depending on its batch position (odd widths in float32), which
    would break bitwise causality, and the CUDA kernels need 16-byte aligned rows. Zero
    padding changes no dot product."""
    return -(-max(q.shape[-1], v.shape[-1]) // 8) * 8


def _pad_last(x: torch.Tensor, width: int) -> torch.Tensor:
    return x if x.shape[-1] == width else F.pad(x, (0, width - x.shape[-1]))


def block_forward(
    kernel: str | BlockKernel,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    scale: float,
    dropout_keep: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of every query block on its key view: output and log-sum-exp per query.

    A query whose keys are all masked gets lse -inf only from some kernels (others give 0 or NaN rows):
    callers mask such rows themselves.

    Raises:
        ValueError: for an unknown kernel, or a kernel that cannot run the input (the reasons named).
    """
    kernel = _checked_name(kernel, q, dropout_p)
    if kernel == "math":
        return _math_forward(q, k, v, bias, scale, dropout_keep, dropout_p)
    width = kernel_width(q, v)
    if kernel == "cpu_flash":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            _pad_last(q, width), _pad_last(k, width), _pad_last(v, width), attn_mask=bias, scale=scale
        )
        return out[..., : v.shape[-1]], lse
    bias = _aligned_bias(bias, q, k)
    q_, k_, v_ = (_bmhk(x, width) for x in (q, k, v))
    if kernel == "cuda_efficient":
        out, lse, *_ = torch.ops.aten._efficient_attention_forward(
            q_, k_, v_, bias, None, None, None, None, 0.0, 0, True, scale=scale
        )
    else:
        from xformers.ops import fmha

        out, lse = fmha.memory_efficient_attention_forward_requires_grad(
            q_, k_, v_, attn_bias=bias, scale=scale
        )
    return out.transpose(1, 2)[..., : v.shape[-1]], lse[..., : q.shape[2]]


def block_backward(
    kernel: str | BlockKernel,
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    bias: torch.Tensor | None,
    scale: float,
    dropout_keep: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of q, k and v for the given (merged) output and log-sum-exp, which need not be what
    ``block_forward`` returned: the weights are exp(logit - lse), the softmax Jacobian uses out.

    Raises:
        ValueError: for an unknown kernel, or a kernel that cannot run the input (the reasons named).
    """
    kernel = _checked_name(kernel, q, dropout_p)
    if kernel == "math":
        return _math_backward(grad_out, q, k, v, out, lse, bias, scale, dropout_keep, dropout_p)
    width = kernel_width(q, v)
    if kernel == "cpu_flash":
        grad_q, grad_k, grad_v = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            *(_pad_last(x, width) for x in (grad_out, q, k, v, out)),
            lse,
            0.0,
            False,
            attn_mask=bias,
            scale=scale,
        )
    else:
        bias = _aligned_bias(bias, q, k)
        grad_, q_, k_, v_, out_ = (_bmhk(x, width) for x in (grad_out, q, k, v, out))
        if kernel == "cuda_efficient":
            # Rows past S are never read as queries; +inf there gives them weight 0 all the same.
            lse_rows = -(-lse.shape[-1] // _CUDA_LSE_ALIGNMENT) * _CUDA_LSE_ALIGNMENT
            padded_lse = F.pad(lse.float(), (0, lse_rows - lse.shape[-1]), value=math.inf).contiguous()
            # (No dropout: the RNG state is not read. Sequence lengths -1: only read with cu_seqlens.)
            no_rng = torch.empty(0)
            grad_q, grad_k, grad_v, _ = torch.ops.aten._efficient_attention_backward(
                grad_,
                q_,
                k_,
                v_,
                bias,
                out_,
                None,
                None,
                -1,
                -1,
                padded_lse,
                0.0,
                no_rng,
                no_rng,
                0,
                False,
                scale=scale,
            )
        else:
            from xformers.ops import fmha

            grad_q, grad_k, grad_v = fmha.memory_efficient_attention_backward(
                grad_, out_, lse.float().contiguous(), q_, k_, v_, attn_bias=bias, scale=scale
            )
        grad_q, grad_k, grad_v = (x.transpose(1, 2) for x in (grad_q, grad_k, grad_v))
    return grad_q[..., : q.shape[-1]], grad_k[..., : k.shape[-1]], grad_v[..., : v.shape[-1]]


def _checked_name(kernel: str | BlockKernel, q: torch.Tensor, dropout_p: float) -> str:
    record = kernel_record(kernel)
    if record.reads_rows_in_place:
        raise ValueError(
            f"block kernel {record.name!r} runs whole LSH rounds on unsorted rows (lsh_attention calls it), "
            "not gathered blocks"
        )
    reasons = record.not_supported_reasons(q.device, q.dtype, dropout_p)
    if reasons:
        raise ValueError(f"block kernel {record.name!r} cannot run these inputs: {'; '.join(reasons)}")
    return record.name


def _bmhk(x: torch.Tensor, width: int) -> torch.Tensor:
    """(G, P, S, d) -> (G, S, P, width), contiguous: the CUDA kernels' (batch, length, heads, dim) layout.
    The backward kernel gives NaN and wrong bf16 gradients for strided views of this layout (block-major
    inputs), right ones for contiguous inputs. LSH attention's gathered blocks are
    contiguous in it already, so this copies only when the head size needs padding."""
    return _pad_last(x.transpose(1, 2), width).contiguous()


def _aligned_bias(bias: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor | None:
    """The bias as the CUDA kernels take it: (G, P, S, K) with every stride but the last a multiple of 16
    bytes (broadcast strides 0 included). A misaligned one (K not a multiple of 8 in 16-bit dtypes) is copied
    into rows padded to that multiple."""
    if bias is None:
        return None
    bias = bias.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    alignment = 16 // bias.element_size()
    if bias.stride(-1) == 1 and all(stride % alignment == 0 for stride in bias.stride()[:-1]):
        return bias
    n_keys = bias.shape[-1]
    storage = bias.new_full((*bias.shape[:-1], -(-n_keys // alignment) * alignment), float("-inf"))
    storage[..., :n_keys] = bias
    return storage[..., :n_keys]


def _math_logits(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None, scale: float) -> torch.Tensor:
    logits = torch.matmul(q, k.transpose(-1, -2)) * scale
    return logits if bias is None else logits + bias.to(logits.dtype)


def _math_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    scale: float,
    dropout_keep: torch.Tensor | None,
    dropout_p: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    acc = torch.promote_types(q.dtype, torch.float32)
    logits = _math_logits(q.to(acc), k.to(acc), bias, scale)
    lse = torch.logsumexp(logits, dim=-1)
    weights = torch.exp(logits - torch.where(torch.isfinite(lse), lse, 0.0)[..., None])
    if dropout_keep is not None:
        weights = weights * dropout_keep / (1.0 - dropout_p)
    return torch.matmul(weights, v.to(acc)).to(v.dtype), lse


def _math_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    bias: torch.Tensor | None,
    scale: float,
    dropout_keep: torch.Tensor | None,
    dropout_p: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    acc = torch.promote_types(q.dtype, torch.float32)
    qf, kf, vf, gf = q.to(acc), k.to(acc), v.to(acc), grad_out.to(acc)
    weights = torch.exp(_math_logits(qf, kf, bias, scale) - lse.to(acc)[..., None])
    delta = (gf * out.to(acc)).sum(dim=-1, keepdim=True)
    kept = weights if dropout_keep is None else weights * dropout_keep / (1.0 - dropout_p)
    grad_v = torch.matmul(kept.transpose(-1, -2), gf)
    grad_kept = torch.matmul(gf, vf.transpose(-1, -2))
    if dropout_keep is not None:
        grad_kept = grad_kept * dropout_keep / (1.0 - dropout_p)
    grad_logits = weights * (grad_kept - delta)
    grad_q = torch.matmul(grad_logits, kf) * scale
    grad_k = torch.matmul(grad_logits.transpose(-1, -2), qf) * scale
    return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype)
