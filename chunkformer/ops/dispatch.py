"""One entry point for scaled dot-product attention with interchangeable kernels.

Every layer in chunkformer calls ``attention``; which kernel runs is decided here, once, so that a user can
switch all layers of a model with ``use_backend`` or the ``CHUNKFORMER_ATTN_BACKEND`` environment variable
without touching model code.

Backends:

* ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention``, the default on CPU and GPU.
* ``"xformers"``: ``xformers.ops.memory_efficient_attention``; chosen automatically only when xformers is
  installed, the inputs are on CUDA and xformers has a kernel for them. Imported lazily.
* ``"math"``: a plain, readable softmax(QK^T)V in float32 (or float64) that the tests compare everything
  against.
* ``"triton"``: LSH attention's fused Triton kernel (``chunkformer.ops.lsh_triton``), on CUDA or, with
  ``TRITON_INTERPRET=1``, on CPU through Triton's interpreter. Under automatic selection LSH attention takes
  it on CUDA once the kernels pass a self-check there (``chunkformer.ops.lsh_auto``). Dense attention has no
  Triton kernel of its own and runs SDPA under it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import importlib.util
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from chunkformer.ops.triton_support import triton_device_reasons, triton_reasons

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "AttentionBackendError",
    "BackendStatus",
    "attention",
    "automatic_selection",
    "available_backends",
    "current_backend",
    "use_backend",
]

BACKENDS: tuple[str, ...] = ("sdpa", "xformers", "math", "triton")
"""Names accepted by ``backend=``, ``use_backend`` and the environment variable (plus ``"auto"``)."""

ENV_VAR = "CHUNKFORMER_ATTN_BACKEND"
"""Environment variable read when neither ``backend=`` nor ``use_backend`` chose a backend."""

_XFORMERS_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

_backend_override: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "chunkformer_attention_backend", default=None
)


class AttentionBackendError(RuntimeError):
    """An explicitly requested attention backend cannot run the given inputs on this machine.

    The message lists every reason, as xformers' ``not_supported_reasons`` does.
    """


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend can run on this machine, and if not, why.

    Attributes:
        name: the backend name (``"sdpa"``, ``"xformers"``, ``"math"`` or ``"triton"``).
        available: True when the backend can run at least some inputs here.
        reasons: why it cannot, empty when ``available``.
    """

    name: str
    available: bool
    reasons: tuple[str, ...] = ()


@functools.lru_cache(maxsize=1)
def _xformers_import_error() -> str | None:
    """Import xformers once, on first need; return why it cannot be used, or None."""
    if importlib.util.find_spec("xformers") is None:
        return "xformers is not installed (pip install 'chunkformer[xformers]')"
    try:
        importlib.import_module("xformers.ops")
    except Exception as error:  # a broken install raises anything from ImportError to RuntimeError
        return f"xformers is installed but `import xformers.ops` failed: {type(error).__name__}: {error}"
    # A wheel built for another torch / CUDA imports, warns, and then has no kernel for any CUDA input: even
    # the operators that call PyTorch's kernels ("cutlassF-pt", "fa2F@...-pt") report themselves available and
    # then refuse every input with "xFormers wasn't build with CUDA support" (xformers 0.0.35 on torch 2.11,
    # H200).
    cpp_lib = importlib.import_module("xformers._cpp_lib")
    if not getattr(cpp_lib, "_built_with_cuda", True):
        return (
            "xformers is installed but its C++/CUDA extensions did not load (a build for another torch or "
            "CUDA version; `python -m xformers.info` says which)"
        )
    return None


# Constant under torch.compile: probing the xformers import (lru_cache'd) and CUDA is not traceable, and its
# answer cannot change while the process runs.
@torch.compiler.assume_constant_result
def _machine_reasons(name: str) -> list[str]:
    if name == "triton":
        return triton_reasons()
    if name != "xformers":
        return []
    reasons = []
    import_error = _xformers_import_error()
    if import_error is not None:
        reasons.append(import_error)
    if not torch.cuda.is_available():
        reasons.append("no CUDA device is available; xformers kernels run on CUDA only")
    return reasons


def available_backends() -> dict[str, BackendStatus]:
    """Report which attention backends this machine can run and, for the others, why not.

    Returns:
        A dict from backend name to ``BackendStatus``, in ``BACKENDS`` order.

    Example:
        >>> from chunkformer.ops import available_backends
        >>> available_backends()["math"].available
        True
    """
    statuses = {}
    for name in BACKENDS:
        reasons = tuple(_machine_reasons(name))
        statuses[name] = BackendStatus(name=name, available=not reasons, reasons=reasons)
    return statuses


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Select the attention backend for every ``attention`` call inside the ``with`` block.

    An explicit ``backend=`` argument still wins. ``None`` or ``"auto"`` restores automatic selection, which
    also overrides the environment variable inside the block. Under ``torch.compile`` the choice is read
    once, when a graph is compiled; call ``torch._dynamo.reset()`` after switching.

    Args:
        name: one of ``BACKENDS``, ``"auto"`` or None.

    Raises:
        TypeError: for a name that is not a str or None.
        ValueError: for an unknown name.

    Example:
        >>> import torch
        >>> from chunkformer.ops import attention, use_backend
        >>> q = torch.randn(1, 2, 5, 8)
        >>> with use_backend("math"):
        ...     out = attention(q, q, q)
    """
    _check_backend_name(name, "use_backend()")
    token = _backend_override.set("auto" if name is None else name)
    try:
        yield
    finally:
        _backend_override.reset(token)


def _check_backend_name(name: str | None, source: str) -> None:
    if name is not None and not isinstance(name, str):
        raise TypeError(
            f"attention backend from {source} must be a str or None, got {type(name).__name__} {name!r}"
        )
    if name is not None and name != "auto" and name not in BACKENDS:
        choices = ", ".join(repr(n) for n in ("auto", *BACKENDS))
        raise ValueError(f"unknown attention backend {name!r} from {source}; expected one of {choices}")


def _requested_backend(backend: str | None) -> tuple[str, str]:
    """The backend asked for and where the request came from (argument, context, environment)."""
    if backend is not None:
        return backend, "the backend argument"
    return _ambient_request()


# torch.compile cannot trace ContextVar.get (fullgraph=True fails on it). Marked constant, the context and the
# environment are read once, when a graph is traced, and the choice is baked into the graph, as Dynamo already
# does for os.environ reads: after switching backends, torch._dynamo.reset() makes compiled code follow.
@torch.compiler.assume_constant_result
def _ambient_request() -> tuple[str, str]:
    """The backend asked for by the innermost ``use_backend`` block, else the environment, else auto."""
    override = _backend_override.get()
    if override is not None:
        return override, "use_backend()"
    from_env = os.environ.get(ENV_VAR, "").strip().lower()
    if from_env:
        return from_env, f"the environment variable {ENV_VAR}"
    return "auto", "automatic selection"


def automatic_selection() -> bool:
    """Whether nothing (``use_backend`` or the environment variable) chose a backend, so kernels are
    picked per input: LSH attention takes this to mean it may run its Triton kernels on CUDA
    (``chunkformer.ops.lsh_auto``)."""
    return _ambient_request()[0] == "auto"


def current_backend(
    q: torch.Tensor | None = None,
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    *,
    backend: str | None = None,
) -> str:
    """The backend ``attention`` would run for these inputs (CPU float32 tensors when omitted).

    Raises:
        ValueError: for an unknown backend name.
        AttentionBackendError: when the requested backend cannot run the inputs.
    """
    if q is None:
        q = torch.empty(1, 1, 1, 8)
    return _resolve_backend(backend, q, q if k is None else k, q if v is None else v)[0]


def _input_reasons(name: str, q: torch.Tensor, v: torch.Tensor) -> list[str]:
    """Why backend ``name`` cannot run these particular inputs (machine reasons included)."""
    reasons = _machine_reasons(name)
    if name == "xformers":
        if q.device.type != "cuda":
            reasons.append(f"inputs are on {q.device.type!r}; xformers kernels need CUDA tensors")
        if q.dtype not in _XFORMERS_DTYPES:
            reasons.append(f"dtype {q.dtype} is not supported; xformers needs float16, bfloat16 or float32")
    elif name == "triton":
        reasons.extend(triton_device_reasons(q.device, q.dtype))
    return reasons


def _resolve_backend(
    backend: str | None, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[str, bool]:
    """The backend to run and whether it was chosen automatically."""
    name, source = _requested_backend(backend)
    _check_backend_name(name, source)
    if name == "auto":
        return ("xformers" if not _input_reasons("xformers", q, v) else "sdpa"), True
    reasons = _input_reasons(name, q, v)
    if reasons:
        listed = "\n".join(f"  - {reason}" for reason in reasons)
        raise AttentionBackendError(
            f"attention backend {name!r} (requested by {source}) cannot run these inputs "
            f"(q {tuple(q.shape)} {q.dtype} on {q.device}):\n{listed}"
        )
    return name, False


def _check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    dropout_p: float,
) -> None:
    for label, tensor in (("q", q), ("k", k), ("v", v)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"attention expects {label} to be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 4:
            raise ValueError(
                f"attention expects {label} of shape (B, H, N, d) (4 dims), got {tuple(tensor.shape)}"
            )
        if not tensor.is_floating_point():
            raise TypeError(f"attention expects floating-point {label}, got {tensor.dtype}")
    batch, heads, n_queries, head_dim = q.shape
    n_keys = k.shape[2]
    expected_k = (batch, heads, n_keys, head_dim)
    if tuple(k.shape) != expected_k:
        raise ValueError(
            f"attention expects k of shape (B, H, Nk, d) = (B={batch}, H={heads}, Nk, d={head_dim}) "
            f"to match q {tuple(q.shape)}, got {tuple(k.shape)}"
        )
    if tuple(v.shape[:3]) != (batch, heads, n_keys):
        raise ValueError(
            f"attention expects v of shape (B, H, Nk, dv) = ({batch}, {heads}, {n_keys}, dv) "
            f"to match k {tuple(k.shape)}, got {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"attention expects q, k, v of one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"attention expects q, k, v on one device, got {q.device}, {k.device}, {v.device}")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)):
        raise TypeError(
            f"attention expects dropout_p to be a float in [0, 1), got {type(dropout_p).__name__}"
        )
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"attention expects 0 <= dropout_p < 1, got {dropout_p}")
    if attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor):
            raise TypeError(
                f"attention expects attn_mask to be a Tensor or None, got {type(attn_mask).__name__}"
            )
        if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
            raise TypeError(
                f"attention expects attn_mask of dtype torch.bool (True = may attend) or a float dtype "
                f"(added to the logits), got {attn_mask.dtype}"
            )
        full = (batch, heads, n_queries, n_keys)
        try:
            broadcast = torch.broadcast_shapes(tuple(attn_mask.shape), full)
        except RuntimeError:
            broadcast = None
        if attn_mask.dim() > 4 or broadcast != full:
            raise ValueError(
                f"attention expects attn_mask broadcastable to (B, H, Nq, Nk) = {full}, "
                f"got {tuple(attn_mask.shape)}"
            )
        if attn_mask.device != q.device:
            raise ValueError(f"attention expects attn_mask on {q.device}, got {attn_mask.device}")


def _causal_mask(n_queries: int, n_keys: int, device: torch.device) -> torch.Tensor:
    """Top-left aligned causal mask (query i sees keys 0..i), as SDPA's ``is_causal`` and xformers'
    ``LowerTriangularMask`` define it."""
    return torch.ones(n_queries, n_keys, dtype=torch.bool, device=device).tril()


def _merge_causal(attn_mask: torch.Tensor, n_queries: int, n_keys: int) -> torch.Tensor:
    causal = _causal_mask(n_queries, n_keys, attn_mask.device)
    if attn_mask.dtype == torch.bool:
        return attn_mask & causal
    return attn_mask.masked_fill(~causal, float("-inf"))


def _guard_empty_rows(attn_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Make every row of the mask attend to something, and report which rows had a key to begin with.

    A row that may attend to no key has no defined softmax: kernels return NaN (and NaN gradients) or
    zeros depending on version and device. We open such rows up so every kernel computes finite numbers,
    then zero their outputs, so the result is zeros and the gradient through them is exactly zero
    on every backend.
    """
    if attn_mask.dtype == torch.bool:
        row_has_key = attn_mask.any(dim=-1, keepdim=True)
        return attn_mask | ~row_has_key, row_has_key
    row_has_key = (attn_mask != float("-inf")).any(dim=-1, keepdim=True)
    return torch.where(
        row_has_key, attn_mask, torch.zeros((), dtype=attn_mask.dtype, device=attn_mask.device)
    ), row_has_key


def _math_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    dropout_p: float,
    is_causal: bool,
    scale: float,
) -> torch.Tensor:
    # Reference: logits and softmax in at least float32, whatever the input dtype.
    compute_dtype = torch.promote_types(q.dtype, torch.float32)
    logits = torch.matmul(q.to(compute_dtype), k.to(compute_dtype).transpose(-2, -1)) * scale
    if is_causal:
        causal = _causal_mask(q.shape[-2], k.shape[-2], q.device)
        logits = logits.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            logits = logits.masked_fill(~attn_mask, float("-inf"))
        else:
            logits = logits + attn_mask.to(compute_dtype)
    weights = torch.softmax(logits, dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return torch.matmul(weights, v.to(compute_dtype)).to(q.dtype)


def _sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    dropout_p: float,
    is_causal: bool,
    scale: float,
) -> torch.Tensor:
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        attn_mask = attn_mask.to(q.dtype)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
    )


def _xformers_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    dropout_p: float,
    is_causal: bool,
    scale: float,
) -> torch.Tensor:
    import xformers.ops as xops

    bias: object = None
    if attn_mask is not None:
        batch, heads, n_queries, _ = q.shape
        n_keys = k.shape[-2]
        if attn_mask.dtype == torch.bool:
            dense = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device)
            dense = dense.masked_fill(~attn_mask, float("-inf"))
        else:
            dense = attn_mask.to(q.dtype)
        # xformers wants a full-size bias whose rows start at 16-byte aligned addresses.
        padded_keys = -(-n_keys // 8) * 8
        storage = q.new_zeros(batch, heads, n_queries, padded_keys)
        storage[..., :n_keys] = dense
        bias = storage[..., :n_keys]
    elif is_causal:
        bias = xops.LowerTriangularMask()
    # xformers lays tensors out as (B, N, H, d).
    out = xops.memory_efficient_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_bias=bias,
        p=dropout_p,
        scale=scale,
    )
    return out.transpose(1, 2)


def _triton_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    dropout_p: float,
    is_causal: bool,
    scale: float,
) -> torch.Tensor:
    """Dense attention under the ``"triton"`` backend: SDPA. The Triton kernel serves LSH attention; a model
    switched to ``"triton"`` keeps its dense layers running."""
    return _sdpa_attention(q, k, v, attn_mask, dropout_p, is_causal, scale)


_KERNELS = {
    "sdpa": _sdpa_attention,
    "xformers": _xformers_attention,
    "math": _math_attention,
    "triton": _triton_attention,
}


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention ``softmax(q k^T * scale + mask) v`` on the selected backend.

    The backend is chosen, in order, by the ``backend`` argument, the innermost ``use_backend``
    block, the ``CHUNKFORMER_ATTN_BACKEND`` environment variable, then automatically (xformers when it
    is installed and the inputs are on CUDA in a dtype it supports, else SDPA). In automatic mode a
    shape xformers has no kernel for falls back to SDPA; when xformers was asked for explicitly, its
    reasons are raised.

    A query row that may attend to no key (its mask row all False or all ``-inf``) returns zeros and
    passes zero gradient, on every backend.

    Args:
        q: queries.
        k: keys.
        v: values.
        attn_mask: optional mask broadcastable to (B, H, Nq, Nk): bool, True where the query may attend
            to the key; or float, added to the logits (``-inf`` forbids).
        dropout_p: dropout on the attention weights. Pass 0 in evaluation; this function does not know
            whether the caller is training.
        is_causal: query i attends to keys 0..i (top-left aligned when Nq != Nk, as in SDPA). May be
            combined with ``attn_mask``: both must allow a pair.
        scale: logit scale, ``1 / sqrt(d)`` when None.
        backend: ``"sdpa"``, ``"xformers"``, ``"math"``, ``"triton"`` (SDPA here; see the module docstring)
            or ``"auto"``; None defers to the context and environment.

    Returns:
        The attention output.

    Raises:
        ValueError: on inconsistent shapes, a mask that does not broadcast, tensors on different devices,
            ``dropout_p`` outside [0, 1), or an unknown backend.
        TypeError: on a non-tensor or non-float input, inputs of different dtypes, an integer mask, or a
            non-number ``dropout_p``.
        AttentionBackendError: when the requested backend cannot run these inputs here.

    Shape:
        - q: (B, H, Nq, d)
        - k: (B, H, Nk, d)
        - v: (B, H, Nk, dv)
        - attn_mask: broadcastable to (B, H, Nq, Nk)
        - output: (B, H, Nq, dv)
    """
    _check_inputs(q, k, v, attn_mask, dropout_p)
    name, automatic = _resolve_backend(backend, q, k, v)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    batch, heads, n_queries, _ = q.shape
    n_keys = k.shape[-2]
    if n_keys == 0:
        # No key at all: every row is empty. Multiply so the result stays attached to the graph.
        return q.new_zeros(batch, heads, n_queries, v.shape[-1]) + v.sum() * 0

    row_has_key = None
    if attn_mask is not None:
        # SDPA rejects 0-D and 1-D masks although they broadcast; give every kernel the four axes it expects.
        attn_mask = attn_mask[(None,) * (4 - attn_mask.dim())]
        if attn_mask.is_floating_point():
            # SDPA and xformers add the mask in the input dtype. Round it once, here, so that every backend
            # and the empty-row guard see the same values (a float32 -1e5 is -inf in float16).
            attn_mask = attn_mask.to(q.dtype)
        if is_causal:
            attn_mask = _merge_causal(attn_mask, n_queries, n_keys)
            is_causal = False
        attn_mask, row_has_key = _guard_empty_rows(attn_mask)

    if name == "xformers" and automatic:
        out = _auto_xformers(q, k, v, attn_mask, dropout_p, is_causal, scale)
    else:
        try:
            out = _KERNELS[name](q, k, v, attn_mask, dropout_p, is_causal, scale)
        except NotImplementedError as error:  # xformers lists why no kernel fits
            raise AttentionBackendError(
                f"attention backend {name!r} cannot run these inputs:\n{error}"
            ) from error
    if row_has_key is not None:
        out = out.masked_fill(~row_has_key, 0.0)
    return out


def _auto_xformers(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    dropout_p: float,
    is_causal: bool,
    scale: float,
) -> torch.Tensor:
    """xformers when it has a kernel for these inputs, else SDPA (automatic selection only)."""
    try:
        return _xformers_attention(q, k, v, attn_mask, dropout_p, is_causal, scale)
    except NotImplementedError:
        return _sdpa_attention(q, k, v, attn_mask, dropout_p, is_causal, scale)
