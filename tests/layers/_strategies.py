"""Shared hypothesis strategies and plain helpers for the layer tests.

Everything random here is driven by an explicit integer seed: inputs come from a local
``torch.Generator`` and modules are built under ``torch.random.fork_rng`` so that no test reads or
disturbs the global RNG state that other tests see.

The reference attention below is deliberately naive (explicit loops over heads, a hand-written softmax
over one sequence at a time) and imports nothing from ``chunkformer``: the layer tests compare the
library's vectorised kernels against it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import pytest
import torch
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

M = TypeVar("M", bound=nn.Module)

SEEDS = st.integers(min_value=0, max_value=2**31 - 1)

# fp32 tolerance for comparisons against the float64 references.
ATOL = 1e-5
RTOL = 1e-5


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Run a module's tests with one intra-op thread, then restore the count.

    The tensors here have a handful of elements: a second OpenMP thread buys nothing, and on a shared 2-core
    machine its barrier waits made a tiny LayerNorm over 1000x slower (a gradcheck went from 0.4 s to 8 s).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def keep_global_rng() -> Iterator[None]:
    """Give each test a private global RNG and restore the caller's state afterwards.

    Every value a test checks comes from an explicit seed (``build``, ``randn``); this only catches the
    incidental draws, such as the weight init of a module built just to see its constructor or forward
    raise, so that they cannot shift the random streams of the tests that run after.
    """
    with torch.random.fork_rng(devices=[]):
        yield


# ----------------------------------------------------------------------------------------------------
# Seeded construction
# ----------------------------------------------------------------------------------------------------


def build(factory: Callable[[], M], seed: int) -> M:
    """Build a module with a seeded init, leaving the global RNG exactly as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def randn(shape: Sequence[int], seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise from a private generator."""
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def randomize_(params: Sequence[nn.Parameter], seed: int, scale: float = 0.5) -> None:
    """Overwrite parameters with noise: default inits (LayerNorm = identity, zero biases, tiny position
    embeddings) would let an implementation that ignores or misindexes them pass."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in params:
            param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * scale)


def layer_norms(module: nn.Module) -> list[nn.Parameter]:
    """The affine parameters of every LayerNorm inside ``module``."""
    return [p for m in module.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()]


def shape_message(shape: Sequence[int]) -> str:
    """The regex that matches ``tuple(shape)`` printed in an error message."""
    return re.escape(str(tuple(shape)))


# ----------------------------------------------------------------------------------------------------
# Strategies
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Heads:
    dim: int
    num_heads: int


@st.composite
def heads(draw: st.DrawFn, max_heads: int = 2) -> Heads:
    """A width and a head count that divides it (tiny: head width 2 or 4)."""
    num_heads = draw(st.integers(1, max_heads))
    head_dim = draw(st.sampled_from([2, 4]))
    return Heads(dim=num_heads * head_dim, num_heads=num_heads)


@st.composite
def bad_heads(draw: st.DrawFn) -> Heads:
    """A width that the head count does not divide."""
    num_heads = draw(st.integers(2, 5))
    dim = draw(st.integers(1, 24).filter(lambda d: d % num_heads != 0))
    return Heads(dim=dim, num_heads=num_heads)


def chunk_sizes() -> st.SearchStrategy[int | tuple[int, int]]:
    """An int chunk side or an (h, w) pair, as the layers accept both."""
    return st.one_of(st.integers(1, 4), st.tuples(st.integers(1, 4), st.integers(1, 4)))


def as_pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else size


@st.composite
def grid_side(draw: st.DrawFn, chunk: int) -> int:
    """A grid side smaller than, equal to, a multiple of, or not divisible by the chunk side."""
    kind = draw(st.sampled_from(["smaller", "equal", "multiple", "ragged"]))
    if kind == "smaller" and chunk > 1:
        return draw(st.integers(1, chunk - 1))
    if kind == "multiple":
        return chunk * draw(st.integers(1, 3))
    if kind == "ragged" and chunk > 1:
        return chunk * draw(st.integers(0, 2)) + draw(st.integers(1, chunk - 1))
    return chunk


def malformed_sizes() -> st.SearchStrategy[object]:
    """Ints or sequences of ints that are neither a positive int nor a pair of positive ints (ValueError)."""
    non_positive = st.integers(-3, 0)
    return st.one_of(
        non_positive,
        st.tuples(non_positive, st.integers(1, 4)),
        st.tuples(st.integers(1, 4), non_positive),
        st.lists(st.integers(1, 4), min_size=0, max_size=4).filter(lambda v: len(v) != 2),
        st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4)),
    )


def mistyped_sizes() -> st.SearchStrategy[object]:
    """Sizes of the wrong type: not an int nor a pair of ints (TypeError)."""
    return st.one_of(
        st.floats(0.5, 8.0),
        st.booleans(),
        st.tuples(st.integers(1, 4), st.floats(0.5, 4.0)),
        st.tuples(st.booleans(), st.integers(1, 4)),
        st.text(min_size=1, max_size=1),
        st.none(),
    )


def bad_probabilities() -> st.SearchStrategy[float]:
    """Probabilities outside [0, 1)."""
    return st.one_of(
        st.floats(max_value=-1e-6, min_value=-10.0),
        st.floats(min_value=1.0, max_value=10.0),
        st.just(float("nan")),
    )


@st.composite
def wrong_rank_shapes(
    draw: st.DrawFn, ranks: Sequence[int], channels: int, channel_axis: int = -1
) -> tuple[int, ...]:
    """A shape whose rank the layer does not accept, with the right channel size where it fits."""
    rank = draw(st.integers(1, 6).filter(lambda r: r not in ranks))
    shape = [draw(st.integers(1, 3)) for _ in range(rank)]
    if rank > max(channel_axis, -channel_axis - 1):
        shape[channel_axis] = channels
    return tuple(shape)


@st.composite
def wrong_channel_shapes(
    draw: st.DrawFn, rank: int, channels: int, channel_axis: int = -1, side: int = 2
) -> tuple[int, ...]:
    """A shape of an accepted rank whose channel axis has the wrong size."""
    shape = [draw(st.integers(1, 2)) for _ in range(rank)]
    # Keep spatial sides valid for layers that also check them (e.g. multiples of a patch size).
    for axis in range(rank):
        shape[axis] = shape[axis] * side
    shape[channel_axis] = draw(st.integers(1, 3 * channels).filter(lambda c: c != channels))
    return tuple(shape)


# ----------------------------------------------------------------------------------------------------
# Plain references and gradient helpers
# ----------------------------------------------------------------------------------------------------


def plain_attention(
    query_tokens: torch.Tensor,
    key_tokens: torch.Tensor,
    value_tokens: torch.Tensor,
    module: nn.Module,
    num_heads: int,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-head attention over ONE sequence, in float64, from the weights of ``module.qkv``/``module.proj``.

    Queries come from ``query_tokens``, keys from ``key_tokens`` and values from ``value_tokens`` (all
    (N, C)), each through its own third of the stacked qkv projection. ``mask`` is (num_heads, N, N):
    bool (True = may attend) or float (added to the logits).
    """
    dim = query_tokens.shape[-1]
    head_dim = dim // num_heads
    weight = module.qkv.weight.detach().double()
    bias = (
        module.qkv.bias.detach().double()
        if module.qkv.bias is not None
        else torch.zeros(3 * dim, dtype=torch.float64)
    )
    q = query_tokens.double() @ weight[:dim].T + bias[:dim]
    k = key_tokens.double() @ weight[dim : 2 * dim].T + bias[dim : 2 * dim]
    v = value_tokens.double() @ weight[2 * dim :].T + bias[2 * dim :]
    heads_out = []
    for h in range(num_heads):
        cols = slice(h * head_dim, (h + 1) * head_dim)
        logits = q[:, cols] @ k[:, cols].T / math.sqrt(head_dim)
        if mask is not None:
            if mask.dtype == torch.bool:
                logits = logits.masked_fill(~mask[h], float("-inf"))
            else:
                logits = logits + mask[h].double()
        logits = logits - logits.max(dim=-1, keepdim=True).values
        weights = logits.exp()
        weights = weights / weights.sum(dim=-1, keepdim=True)
        heads_out.append(weights @ v[:, cols])
    merged = torch.cat(heads_out, dim=-1)
    return merged @ module.proj.weight.detach().double().T + module.proj.bias.detach().double()


def plain_layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """LayerNorm over the last axis written out, in float64."""
    x = x.double()
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(
        var + norm.eps
    ) * norm.weight.detach().double() + norm.bias.detach().double()


def gradcheck_module(module: nn.Module, inputs: Sequence[torch.Tensor], **gradcheck_kwargs: object) -> None:
    """gradcheck a module in float64 with respect to its inputs AND every parameter.

    The parameters are passed as explicit gradcheck inputs through ``functional_call``, so a wrong
    backward for a weight (not only for the input) is caught.
    """
    module = module.double()
    names = [name for name, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for _, p in module.named_parameters()]
    xs = [x.detach().double().requires_grad_(True) for x in inputs]

    def fn(*args: torch.Tensor) -> torch.Tensor:
        values = dict(zip(names, args[len(xs) :], strict=True))
        return functional_call(module, values, tuple(args[: len(xs)]))

    assert torch.autograd.gradcheck(fn, (*xs, *params), **gradcheck_kwargs)


def assert_gradients_reach_all_parameters(module: nn.Module, output: torch.Tensor, seed: int) -> None:
    """Backpropagate a random projection of ``output``; every parameter must get a finite, non-zero grad."""
    weights = randn(output.shape, seed, dtype=output.dtype)
    (output * weights).sum().backward()
    for name, param in module.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"
        assert param.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


# ----------------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------------


def backends_for(x: torch.Tensor) -> list[str]:
    """The attention backends that can run inputs like ``x`` here (math and sdpa always; xformers on CUDA
    when it is installed)."""
    from chunkformer.ops import BACKENDS, AttentionBackendError, current_backend

    probe = torch.empty(1, 1, 1, 8, dtype=x.dtype, device=x.device)
    usable = []
    for name in BACKENDS:
        try:
            current_backend(probe, backend=name)
        except AttentionBackendError:
            continue
        usable.append(name)
    return usable


def assert_backends_agree_with_math(
    module: nn.Module, inputs: Sequence[torch.Tensor], atol: float = ATOL, rtol: float = RTOL
) -> list[str]:
    """Run ``module(*inputs)`` under every backend that can; each must match the math backend's output.

    Returns the backends compared, math included.
    """
    from chunkformer.ops import use_backend

    def as_tuple(out: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return out if isinstance(out, tuple) else (out,)

    with use_backend("math"):
        expected = as_tuple(module(*inputs))
    names = backends_for(inputs[0])
    for name in names:
        with use_backend(name):
            got = as_tuple(module(*inputs))
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e, atol=atol, rtol=rtol, msg=lambda m, n=name: f"backend {n}: {m}")
    return names
