"""Configuration dataclasses of the Shifted Chunk Transformer: the architecture as data."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StageConfig:
    """One stage of the frame encoder: layers run in the order local -> LSH -> pooling -> shifted MSA.

    This order is the paper's block ("M layers image local chunk self-attention followed by an image LSH
    attention and a linear pooling layer", then a shifted MSA). Every attention layer is a pre-norm block
    with its own MLP. The shifted-MSA layers run at the pooled width (``2 * dim`` when ``pool``) and
    prepend a learnable per-frame [CLS] of their own; a stage without shifted layers has no [CLS].

    Args:
        dim: width of the stage's input tokens (and of its local and LSH layers).
        local_depth: local chunk attention layers (``ChunkAttention``).
        lsh_depth: image LSH attention layers over all tokens of a frame.
        shifted_depth: shifted MSA layers (after the pooling, if any).
        local_heads: heads of each local chunk layer.
        lsh_heads: heads of each LSH layer.
        shifted_heads: heads of each shifted MSA layer.
        mlp_ratio: MLP hidden width as a multiple of the layer's width.
        pool: end the chunk part with a linear pooling (2x2 squeeze, 4C -> 2C).
    """

    dim: int
    local_depth: int = 0
    lsh_depth: int = 0
    shifted_depth: int = 0
    local_heads: int = 4
    lsh_heads: int = 6
    shifted_heads: int = 8
    mlp_ratio: float = 4.0
    pool: bool = False

    @property
    def out_dim(self) -> int:
        """Width after the stage: doubled by the pooling, as the paper halves the squeezed 4C."""
        return 2 * self.dim if self.pool else self.dim

    @property
    def depth(self) -> int:
        """Number of pre-norm blocks in the stage (what drop-path rates are spread over)."""
        return self.local_depth + self.lsh_depth + self.shifted_depth


@dataclass(frozen=True)
class SCTConfig:
    """The whole Shifted Chunk Transformer: frame encoder stages, clip encoder and regularisation.

    Args:
        stages: the frame encoder stages, in order. Each stage's ``dim`` must equal the previous stage's
            ``out_dim``; the last stage must have a shifted MSA (its [CLS] outputs are the frame features).
        patch_size: side of the tiny patches (paper: 4).
        in_chans: input channels.
        chunk_size: side of the local chunks, in patches (paper: 7, so 49 tokens per chunk).
        lsh_bucket_size: LSH block length (49, one chunk's worth of tokens).
        lsh_n_hashes: LSH hash rounds.
        shift: how many frames back the shifted MSA takes its keys from (paper: 1).
        clip_dim: D', the clip encoder width.
        clip_depth: M', the clip encoder blocks.
        clip_heads: heads of the clip encoder.
        clip_mlp_dim: hidden width of the clip encoder MLPs.
        head_hidden_dim: hidden width of the classification MLP (eq. 8).
        qkv_bias: bias in the qkv projections of the local and shifted layers.
        lsh_qkv_bias: bias in the qkv projections of the LSH layers.
        pool_norm: LayerNorm on the squeezed 4C vector before the pooling projection (Swin-style; the
            paper's eq. 4 has none).
        drop_rate: dropout in the frame encoder's MLPs and after its attention projections.
        attn_drop_rate: dropout on the frame encoder's attention weights.
        drop_path_rate: stochastic depth of the last frame encoder block; block i of n gets
            ``drop_path_rate * i / (n - 1)`` (timm's linear rule).
        head_drop_rate: dropout before the last layer of the classification MLP (paper: 0.2 on K400).
    """

    stages: tuple[StageConfig, ...] = field(default_factory=tuple)
    patch_size: int = 4
    in_chans: int = 3
    chunk_size: int = 7
    lsh_bucket_size: int = 49
    lsh_n_hashes: int = 2
    shift: int = 1
    clip_dim: int = 192
    clip_depth: int = 4
    clip_heads: int = 8
    clip_mlp_dim: int = 768
    head_hidden_dim: int = 768
    qkv_bias: bool = True
    lsh_qkv_bias: bool = True
    pool_norm: bool = False
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    head_drop_rate: float = 0.0

    def __post_init__(self) -> None:
        # Lists from a JSON/YAML file become tuples, so configs stay hashable and comparable.
        stages = tuple(s if isinstance(s, StageConfig) else StageConfig(**s) for s in self.stages)
        object.__setattr__(self, "stages", stages)
        if not stages:
            raise ValueError("SCTConfig: stages must list at least one StageConfig")
        for index, (previous, stage) in enumerate(zip(stages, stages[1:], strict=False), start=1):
            if stage.dim != previous.out_dim:
                raise ValueError(
                    f"SCTConfig: stage {index} has dim={stage.dim} but stage {index - 1} outputs "
                    f"{previous.out_dim} channels (dim doubles at each pooling)"
                )
        if stages[-1].shifted_depth < 1:
            raise ValueError(
                "SCTConfig: the last stage needs shifted_depth >= 1: its per-frame [CLS] outputs are the "
                "frame features fed to the clip encoder"
            )

    @property
    def num_poolings(self) -> int:
        return sum(stage.pool for stage in self.stages)

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of this: every pooling halves an even token grid."""
        return self.patch_size * 2**self.num_poolings

    @property
    def frame_dim(self) -> int:
        """Width of the frame features (the last stage's [CLS])."""
        return self.stages[-1].out_dim

    @property
    def depth(self) -> int:
        """Number of pre-norm blocks in the frame encoder."""
        return sum(stage.depth for stage in self.stages)
