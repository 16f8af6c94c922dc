"""Image LSH attention (SCT eq. 3): Reformer-style LSH attention over all tokens of a frame."""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from torch import nn

from chunkformer.layers._checks import check_heads, check_input, check_positive_int, check_probability
from chunkformer.ops import lsh_attention


class LSHAttention(nn.Module):
    """Multi-head angular-LSH attention (:func:`chunkformer.ops.lsh_attention`) with its projections.

    A (B, H, W, C) or (B, T, H, W, C) input is one sequence per image (the paper's image LSH attention over
    all tokens of a frame); a (B, N, C) input is one sequence per batch element.

    Randomness: the module owns its generators (one per device). In training every call draws fresh
    rotations from them; in evaluation every call uses the rotations of ``seed``, so inference is
    reproducible. The global RNG is never used in forward. With ``seed=None`` a seed is drawn from the global
    RNG once, at construction (like weight init). The generator state is part of the state dict, so a
    resumed run continues the same sequence of rotations.

    Args:
        dim: token width C.
        num_heads: heads; must divide ``dim``.
        bucket_size: LSH block length.
        n_hashes: hash rounds.
        causal: strictly causal attention over the sequence order (row-major for images).
        shared_qk: Reformer's shared-QK attention (keys are the normalised queries; no key projection).
        qkv_bias: bias in the input projection.
        attn_drop: dropout on the attention weights (training only; masks from the module's generator).
        proj_drop: dropout after the output projection.
        seed: seed of the rotations.

    Shape:
        - x: (B, N, C) -> (B, N, C); key_padding_mask: (B, N), True = padding
        - x: (B, H, W, C) -> (B, H, W, C); key_padding_mask: (B, H, W)
        - x: (B, T, H, W, C) -> (B, T, H, W, C); key_padding_mask: (B, T, H, W)
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        bucket_size: int = 64,
        n_hashes: int = 4,
        causal: bool = False,
        shared_qk: bool = True,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.head_dim = check_heads(dim, num_heads, "LSHAttention")
        self.dim = dim
        self.num_heads = num_heads
        self.bucket_size = check_positive_int(bucket_size, "bucket_size", "LSHAttention")
        self.n_hashes = check_positive_int(n_hashes, "n_hashes", "LSHAttention")
        self.causal = bool(causal)
        self.shared_qk = bool(shared_qk)
        self.attn_drop = check_probability(attn_drop, "attn_drop", "LSHAttention")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"LSHAttention: seed must be an int or None, got {seed!r}")
        # Drawn on the CPU explicitly so a model can be built under `with torch.device("meta")`.
        self.seed = int(torch.randint(0, 2**62, (), device="cpu").item()) if seed is None else seed
        # Shared QK has no key projection: q and v only.
        self.qkv = nn.Linear(dim, (2 if self.shared_qk else 3) * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(check_probability(proj_drop, "proj_drop", "LSHAttention"))
        self._generators: dict[str, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        """Training: this module's advancing generator for ``device``. Eval: a fresh one at ``seed``."""
        key = str(device)
        if not self.training:
            return torch.Generator(device=device).manual_seed(self.seed)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        check_input(x, "LSHAttention", {3: "(B, N, C)", 4: "(B, H, W, C)", 5: "(B, T, H, W, C)"}, self.dim)
        if key_padding_mask is not None and tuple(key_padding_mask.shape) != tuple(x.shape[:-1]):
            raise ValueError(
                f"LSHAttention expects key_padding_mask of shape {tuple(x.shape[:-1])} (the input without "
                f"its channel axis), got {tuple(key_padding_mask.shape)}"
            )
        shape = x.shape
        # One sequence per image: for image inputs every axis before (H, W, C) is batch.
        tokens = x if x.dim() == 3 else x.reshape(-1, shape[-3] * shape[-2], self.dim)
        mask = None if key_padding_mask is None else key_padding_mask.reshape(tokens.shape[:2])
        parts = 2 if self.shared_qk else 3
        projected = rearrange(self.qkv(tokens), "b n (parts h d) -> parts b h n d", parts=parts, h=self.num_heads)
        q, v = projected[0], projected[-1]
        k = None if self.shared_qk else projected[1]
        device = x.device if x.device.type != "meta" else torch.device("cpu")
        out = lsh_attention(
            q,
            k,
            v,
            bucket_size=self.bucket_size,
            n_hashes=self.n_hashes,
            causal=self.causal,
            shared_qk=self.shared_qk,
            key_padding_mask=mask,
            generator=self._generator(device),
            dropout_p=self.attn_drop if self.training else 0.0,
        )
        out = self.proj_drop(self.proj(rearrange(out, "b h n d -> b n (h d)")))
        return out.reshape(shape)

    def get_extra_state(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "generator_states": {key: gen.get_state() for key, gen in self._generators.items()},
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self._generators = {}
        for key, generator_state in state.get("generator_states", {}).items():
            generator = torch.Generator(device=key)
            generator.set_state(generator_state)
            self._generators[key] = generator

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, bucket_size={self.bucket_size}, "
            f"n_hashes={self.n_hashes}, causal={self.causal}, shared_qk={self.shared_qk}, seed={self.seed}"
        )
