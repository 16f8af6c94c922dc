"""The two-layer feed-forward network of a transformer block."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from chunkformer._deprecation import renamed_kwargs
from chunkformer.layers._checks import check_positive_int, check_probability


class Mlp(nn.Module):
    """Linear -> activation -> dropout -> Linear -> dropout, applied to the last axis.

    Args:
        in_features: input width.
        hidden_features: hidden width (defaults to ``in_features``).
        out_features: output width (defaults to ``in_features``).
        act_layer: activation module class.
        proj_drop: dropout probability after the activation and after the output layer. Its old name
            ``drop`` still works, with a FutureWarning, for one release.

    Shape:
        - x: (*, in_features) -> (*, out_features)
    """

    @renamed_kwargs("Mlp", drop="proj_drop")
    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        check_positive_int(in_features, "in_features", "Mlp")
        # `is None`, not `or`: an explicit 0 is an error, not a request for the default.
        hidden_features = check_positive_int(
            in_features if hidden_features is None else hidden_features, "hidden_features", "Mlp"
        )
        out_features = check_positive_int(
            in_features if out_features is None else out_features, "out_features", "Mlp"
        )
        check_probability(proj_drop, "proj_drop", "Mlp")
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(proj_drop)
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop2 = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.fc1.in_features:
            raise ValueError(f"Mlp expects input of shape (*, {self.fc1.in_features}), got {tuple(x.shape)}")
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
