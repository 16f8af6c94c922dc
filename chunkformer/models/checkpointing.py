"""Activation checkpointing that recomputes LSH attention with the rotations of the original forward."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from chunkformer.layers import LSHAttention


def _snapshot(layers: Sequence[LSHAttention]) -> list[dict[str, torch.Tensor]]:
    """Each layer's generator states (copies, so that later draws cannot alias the snapshot)."""
    return [layer.generator_states() for layer in layers]


def _restore(layers: Sequence[LSHAttention], snapshot: Sequence[dict[str, torch.Tensor]]) -> None:
    for layer, states in zip(layers, snapshot, strict=True):
        layer.set_generator_states(states)


def lsh_state_contexts(
    layers: Sequence[LSHAttention],
) -> tuple[contextlib.AbstractContextManager[None], contextlib.AbstractContextManager[None]]:
    """``context_fn`` for ``torch.utils.checkpoint.checkpoint``: the recomputation sees the LSH rotations
    (and LSH attention-dropout masks) of the original forward.

    LSHAttention draws rotations from its own generators, which ``preserve_rng_state`` does not cover:
    without this the recomputed block would hash with new rotations and the gradients would be those of a
    different function. The forward context records the generator states before the forward; the
    recompute context puts them back for the recomputation and afterwards restores the states the layers
    had when it started (the post-forward ones), so training draws the same sequence of rotations as
    without checkpointing.
    """
    before_forward: list[dict[str, torch.Tensor]] = []

    @contextlib.contextmanager
    def forward_context() -> Iterator[None]:
        before_forward[:] = _snapshot(layers)
        yield

    @contextlib.contextmanager
    def recompute_context() -> Iterator[None]:
        after_forward = _snapshot(layers)
        _restore(layers, before_forward)
        try:
            yield
        finally:
            _restore(layers, after_forward)

    return forward_context(), recompute_context()


@torch.compiler.disable
def _checkpoint_replaying_lsh(
    block: nn.Module, x: torch.Tensor, lsh_layers: list[LSHAttention]
) -> torch.Tensor:
    # Dynamo cannot trace a custom context_fn (NotImplementedError in torch 2.13), so under torch.compile
    # these blocks run eagerly between compiled graphs; the rest of the model still compiles.
    return checkpoint(block, x, use_reentrant=False, context_fn=lambda: lsh_state_contexts(lsh_layers))


def checkpoint_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``block(x)`` under non-reentrant activation checkpointing, LSH generator states preserved."""
    lsh_layers = [module for module in block.modules() if isinstance(module, LSHAttention)]
    if not lsh_layers:
        return checkpoint(block, x, use_reentrant=False)
    return _checkpoint_replaying_lsh(block, x, lsh_layers)
