"""Stochastic depth: drop a whole residual branch per sample."""

from __future__ import annotations

import torch
from torch import nn

from chunkformer.layers._checks import check_probability


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    """Zero the residual branch ``x`` for a random subset of samples and rescale the rest by 1 / keep_prob,
    so the expected value is unchanged. Identity when not training or when ``drop_prob`` is 0.

    Shape:
        - x: (B, *) -> (B, *)
    """
    # Validated here too, not only in DropPath: drop_prob = 1 would divide by a zero keep_prob (NaN).
    check_probability(drop_prob, "drop_prob", "drop_path")
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    mask_shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    keep = torch.empty(mask_shape, dtype=x.dtype, device=x.device).bernoulli_(keep_prob)
    return x * keep / keep_prob


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016) for residual branches; see ``drop_path``.

    Args:
        drop_prob: probability of dropping the branch for a sample, in [0, 1).

    Shape:
        - x: (B, *) -> (B, *)
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = check_probability(drop_prob, "drop_prob", "DropPath")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"
