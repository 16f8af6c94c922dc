"""The clip encoder (SCT eq. 8): a small transformer over per-frame features."""

from __future__ import annotations

import torch
from torch import nn

from chunkformer._deprecation import renamed_kwargs
from chunkformer.layers._checks import check_input, check_int, check_positive_int, check_probability
from chunkformer.layers.attention import Attention
from chunkformer.layers.block import PreNormBlock


class ClipEncoder(nn.Module):
    """Frame-level transformer: embed T frame features, prepend a clip [CLS], add a learnable (T + 1)
    position embedding, run ``depth`` pre-norm blocks, normalise, and classify the [CLS] output.

    The head is eq. 8's MLP: Linear(dim -> head_hidden_dim), GELU, Dropout(``head_drop``), Linear(-> classes);
    the paper puts dropout on that second-last layer only.

    Args:
        in_dim: width of the frame features (the frame encoder's output).
        num_frames: T, the number of frames the position embedding covers.
        dim: D', the clip encoder width.
        depth: M', the number of blocks.
        num_heads: heads per block; must divide ``dim``.
        mlp_dim: hidden width of each block's MLP.
        num_classes: classes of the head; 0 returns the clip feature instead.
        head_hidden_dim: hidden width of the head MLP.
        head_drop: dropout before the head's last layer. Its old name ``dropout`` still works, with a
            FutureWarning, for one release.

    Shape:
        - frame_features: (B, T, in_dim) -> (B, num_classes), or (B, dim) when ``num_classes=0``
    """

    @renamed_kwargs("ClipEncoder", dropout="head_drop")
    def __init__(
        self,
        in_dim: int,
        num_frames: int,
        dim: int = 192,
        depth: int = 4,
        num_heads: int = 8,
        mlp_dim: int = 768,
        num_classes: int = 0,
        head_hidden_dim: int = 768,
        head_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_dim = check_positive_int(in_dim, "in_dim", "ClipEncoder")
        self.num_frames = check_positive_int(num_frames, "num_frames", "ClipEncoder")
        self.dim = check_positive_int(dim, "dim", "ClipEncoder")
        check_positive_int(depth, "depth", "ClipEncoder")
        check_positive_int(mlp_dim, "mlp_dim", "ClipEncoder")
        check_positive_int(head_hidden_dim, "head_hidden_dim", "ClipEncoder")
        check_probability(head_drop, "head_drop", "ClipEncoder")
        if check_int(num_classes, "num_classes", "ClipEncoder") < 0:
            raise ValueError(f"ClipEncoder: num_classes must be an int >= 0, got {num_classes!r}")
        if dim % check_positive_int(num_heads, "num_heads", "ClipEncoder"):
            raise ValueError(f"ClipEncoder: dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_classes = num_classes

        self.frame_embed = nn.Linear(in_dim, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_frames + 1, dim))
        self.blocks = nn.ModuleList(
            PreNormBlock(dim, Attention(dim, num_heads), mlp_hidden_dim=mlp_dim) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head_hidden_dim = head_hidden_dim
        self.head_drop = head_drop
        self.head: nn.Module = self._make_head(num_classes)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def _make_head(self, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        return nn.Sequential(
            nn.Linear(self.dim, self.head_hidden_dim),
            nn.GELU(),
            nn.Dropout(self.head_drop),
            nn.Linear(self.head_hidden_dim, num_classes),
        )

    def get_classifier(self) -> nn.Module:
        """The head (eq. 8's MLP), or ``nn.Identity`` without classes, as timm's ``get_classifier``."""
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a fresh one for ``num_classes`` classes (0: no head, the clip feature is
        the output), on the device and dtype of the encoder, as timm's ``reset_classifier``."""
        if check_int(num_classes, "num_classes", "ClipEncoder.reset_classifier") < 0:
            raise ValueError(f"ClipEncoder.reset_classifier: num_classes must be >= 0, got {num_classes}")
        reference = self.norm.weight
        self.head = self._make_head(num_classes).to(device=reference.device, dtype=reference.dtype)
        self.num_classes = num_classes

    def forward_features(self, frame_features: torch.Tensor) -> torch.Tensor:
        """The normalised clip [CLS] feature, before the head.

        Shape:
            - frame_features: (B, T, in_dim) -> (B, dim)
        """
        check_input(frame_features, "ClipEncoder", {3: "(B, T, in_dim)"}, self.in_dim)
        frames = frame_features.shape[1]
        if frames != self.num_frames:
            raise ValueError(
                f"ClipEncoder was built for num_frames={self.num_frames} (its position embedding has "
                f"{self.num_frames + 1} rows) but got T={frames} frames in input "
                f"{tuple(frame_features.shape)}"
            )
        tokens = self.frame_embed(frame_features)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens[:, 0])

    def forward(self, frame_features: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(frame_features))
