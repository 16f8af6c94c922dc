"""Reformer's shared-QK attention: keys are the unit-normalised queries, and a token that has nothing else to
attend to returns its own value.

Normalising inside LSH attention's autograd function lets its backward fold the normalisation's gradient
into q's in a few passes instead of autograd's chain through ``F.normalize``.
"""

from __future__ import annotations

import torch

from chunkformer.ops.lsh_pieces import rows_per_piece

__all__ = ["add_fallback_gradient", "fold_key_gradient", "normalize_eps", "self_fallback", "unit_keys"]

# F.normalize's default: keys are q / max(|q|, eps).
_NORMALIZE_EPS = 1e-12


def normalize_eps(dtype: torch.dtype) -> float:
    """F.normalize's eps where the dtype holds it, else its smallest normal number: in float16 1e-12 rounds
    to 0, and a zero query (its norm 0) would get key 0 / 0 = NaN, and NaN logits for every query that
    sees it."""
    return max(_NORMALIZE_EPS, torch.finfo(dtype).tiny)


def unit_keys(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys q / max(|q|, eps), as F.normalize computes them, and the norms |q| the backward pass needs.

    Shape:
        - q: (G, N, d)
        - output: keys (G, N, d), norms (G, N, 1)
    """
    query_norm = q.norm(2, dim=-1, keepdim=True)
    return q / query_norm.clamp_min(normalize_eps(q.dtype)), query_norm


def self_fallback(no_key: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """(G, N) bool: the real tokens with no key in view, which return their own value."""
    return no_key if valid is None else no_key & valid


def add_fallback_gradient(grad_v: torch.Tensor, grad_rows: torch.Tensor, fallback: torch.Tensor) -> None:
    """Add the gradient of tokens that return their own value into ``grad_v`` (G * N, dv).

    Selected, not multiplied by 0 / 1, so a non-finite gradient at another token stays there; a piece of rows
    at a time, so an expanded ``grad_rows`` is never materialised.
    """
    falls_back = fallback.reshape(-1, 1)
    step = rows_per_piece(grad_rows.shape[-1], grad_rows.element_size(), grad_rows.device.type)
    for first in range(0, grad_rows.shape[0], step):
        rows = slice(first, first + step)
        grad_v[rows] += torch.where(falls_back[rows], grad_rows[rows], 0.0)


def fold_key_gradient(
    grad_q: torch.Tensor, grad_k: torch.Tensor, k: torch.Tensor, query_norm: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """``grad_q`` plus the gradient that reaches q through k = q / max(|q|, eps): (g - k (k . g)) / |q|, or
    g / eps where |q| < eps. Overwrites ``grad_k``.

    Shape:
        - grad_q, grad_k, k: (G, N, d), the gradients in the accumulation dtype
        - query_norm: (G, N, 1)
    """
    acc = grad_q.dtype
    norm, eps = query_norm.to(acc), normalize_eps(dtype)
    # (einsum: no full-size temporary, unlike (grad_k * k).sum)
    radial = torch.einsum("gnd,gnd->gn", grad_k, k.to(acc))[..., None].masked_fill_(norm < eps, 0.0)
    grad_q += grad_k.addcmul_(k.to(acc), radial, value=-1.0).div_(norm.clamp_min(eps))
    return grad_q
