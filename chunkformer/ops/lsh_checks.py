"""Input validation for ``chunkformer.ops.lsh_attention``: a wrong type raises TypeError, a wrong value
or shape ValueError, each message naming what was expected and what was given."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import torch

__all__ = ["check_lsh_inputs", "renamed_keyword"]

_F = TypeVar("_F", bound=Callable[..., Any])


def renamed_keyword(old: str, new: str) -> Callable[[_F], _F]:
    """Let a function still take keyword ``old`` under its new name ``new``, with a FutureWarning; passing
    both is a TypeError. The wrapped function's signature shows only the new name."""

    def decorate(function: _F) -> _F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(
                        f"{function.__name__} got both {new}= and its old name {old}=; pass only {new}="
                    )
                warnings.warn(
                    f"{function.__name__}: {old}= is renamed {new}=; {old}= goes away in the next release",
                    FutureWarning,
                    stacklevel=2,
                )
                kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_positive_int(name: str, value: object, expected: str = "a positive int") -> None:
    if not _is_int(value):
        raise TypeError(
            f"lsh_attention expects {name} to be {expected}, got {value!r} ({type(value).__name__})"
        )
    if value < 1:  # type: ignore[operator]
        raise ValueError(f"lsh_attention expects {name} to be {expected}, got {value!r}")


def _check_tensors(q: object, k: object, v: object) -> None:
    for label, tensor in (("q", q), ("v", v)) + ((("k", k),) if k is not None else ()):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(
                f"lsh_attention expects {label} to be a torch.Tensor, got {type(tensor).__name__}"
            )
        if tensor.dim() != 4:
            raise ValueError(
                f"lsh_attention expects {label} of shape (B, H, N, d) (4 dims), got {tuple(tensor.shape)}"
            )
        if not tensor.is_floating_point():
            raise TypeError(f"lsh_attention expects floating-point {label}, got {tensor.dtype}")


def check_lsh_inputs(
    q: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor,
    bucket_size: int,
    n_hashes: int,
    n_buckets: int | None,
    is_causal: bool,
    shared_qk: bool,
    key_padding_mask: torch.Tensor | None,
    generator: torch.Generator | None,
    dropout_p: float,
    blocks_per_piece: int | None,
) -> None:
    """Raise TypeError or ValueError for an input ``chunkformer.ops.lsh_attention`` cannot take."""
    _check_tensors(q, k, v)
    batch, heads, seq_len, head_dim = q.shape
    if seq_len < 1:
        raise ValueError(f"lsh_attention expects N >= 1 tokens, got q of shape {tuple(q.shape)}")
    for name, flag in (("is_causal", is_causal), ("shared_qk", shared_qk)):
        if not isinstance(flag, bool):
            raise TypeError(
                f"lsh_attention expects {name} to be a bool, got {flag!r} ({type(flag).__name__})"
            )
    if shared_qk:
        if k is not None and k is not q:
            raise ValueError(
                "lsh_attention with shared_qk=True takes its keys from q (normalised): pass k=None or k=q"
            )
    elif k is None:
        raise ValueError("lsh_attention needs k when shared_qk=False")
    elif tuple(k.shape) != tuple(q.shape):
        raise ValueError(
            f"lsh_attention expects k of the same shape as q (B, H, N, d) = {tuple(q.shape)}, "
            f"got {tuple(k.shape)}"
        )
    if tuple(v.shape[:3]) != (batch, heads, seq_len):
        raise ValueError(
            f"lsh_attention expects v of shape (B, H, N, dv) = ({batch}, {heads}, {seq_len}, dv), "
            f"got {tuple(v.shape)}"
        )
    if v.dtype != q.dtype or (k is not None and k.dtype != q.dtype):
        given = f"q {q.dtype}, " + ("" if k is None else f"k {k.dtype}, ") + f"v {v.dtype}"
        raise TypeError(f"lsh_attention expects q, k and v of one dtype, got {given}")
    _check_positive_int("bucket_size", bucket_size)
    _check_positive_int("n_hashes", n_hashes)
    if n_hashes > 127:
        raise ValueError(f"lsh_attention supports at most 127 hash rounds, got n_hashes={n_hashes}")
    if n_buckets is not None:
        expected = "None, 1 or an even int >= 2 (angular hashing splits rotations into +/- halves)"
        _check_positive_int("n_buckets", n_buckets, expected)
        if n_buckets > 1 and n_buckets % 2:
            raise ValueError(f"lsh_attention expects n_buckets to be {expected}, got {n_buckets!r}")
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.dtype != torch.bool:
            given = (
                key_padding_mask.dtype
                if isinstance(key_padding_mask, torch.Tensor)
                else type(key_padding_mask)
            )
            raise TypeError(
                f"lsh_attention expects key_padding_mask to be a bool tensor (True = padding), got {given}"
            )
        if tuple(key_padding_mask.shape) != (batch, seq_len):
            raise ValueError(
                f"lsh_attention expects key_padding_mask of shape (B, N) = ({batch}, {seq_len}), "
                f"got {tuple(key_padding_mask.shape)}"
            )
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(
                f"lsh_attention expects generator to be a torch.Generator, got {type(generator).__name__}"
            )
        if q.device.type != "meta" and torch.device(generator.device).type != q.device.type:
            raise ValueError(
                f"lsh_attention draws rotations on the inputs' device ({q.device}); "
                f"the generator lives on {generator.device}"
            )
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)):
        raise TypeError(
            f"lsh_attention expects dropout_p to be a float, got {dropout_p!r} ({type(dropout_p).__name__})"
        )
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"lsh_attention expects 0 <= dropout_p < 1, got {dropout_p}")
    if blocks_per_piece is not None:
        _check_positive_int("blocks_per_piece", blocks_per_piece, "None or a positive int")
