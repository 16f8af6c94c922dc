"""Tests for the hashing in :mod:`chunkformer.ops.lsh`, against the definition written out directly."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunkformer.ops.lsh import hash_buckets, random_rotations


def argmax_of_concatenation(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """The definition: bucket = argmax over [x R, -x R] (first index on ties), one rotation per round."""
    rounds = []
    for round_index in range(rotations.shape[1]):
        rotated = x.float() @ rotations[:, round_index]
        rounds.append(torch.argmax(torch.cat([rotated, -rotated], dim=-1), dim=-1))
    return torch.stack(rounds, dim=1)


@pytest.fixture(params=["index-free", "indexed"])
def argmax_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both argmax searches: the CPU's index-free one and the max/min-with-indices one other devices use."""
    import chunkformer.ops.lsh as lsh

    monkeypatch.setattr(lsh, "_index_reductions_are_fast", lambda device: request.param == "indexed")
    return request.param


# (The fixture's patch holds for every example of a test, so sharing it across examples is what is meant.)
SHARED_FIXTURE = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@SHARED_FIXTURE
@given(
    seed=st.integers(0, 2**31 - 1),
    half=st.sampled_from([1, 2, 3, 40, 128, 256, 320, 512]),
    n_hashes=st.integers(1, 3),
    tokens=st.integers(1, 300),
    ties=st.sampled_from(["none", "zero rows", "integer values"]),
)
def test_hash_is_the_argmax_over_both_signs(
    argmax_path: str, seed: int, half: int, n_hashes: int, tokens: int, ties: str
) -> None:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, tokens, 8, generator=generator)
    rotations = random_rotations(8, n_hashes, 2 * half, generator, torch.device("cpu"))
    if ties == "zero rows":
        x[:, ::3] = 0.0  # every projection 0: the first bucket wins
    elif ties == "integer values":
        x = x.round()
        rotations = rotations.round()  # many exactly equal projections
    expected = argmax_of_concatenation(x, rotations)
    assert torch.equal(hash_buckets(x, rotations, 2 * half), expected)


def test_hashing_works_through_row_chunks(monkeypatch) -> None:
    """Projections are made a few rows at a time; the chunk boundaries must not change any bucket."""
    import chunkformer.ops.lsh as lsh

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 700, 8, generator=generator)
    rotations = random_rotations(8, 2, 512, generator, torch.device("cpu"))
    monkeypatch.setattr(lsh, "_HASH_CHUNK_VALUES", 1)
    monkeypatch.setattr(lsh, "_HASH_CHUNK_MIN_ROWS", 97)  # pieces that straddle the batch boundary
    assert torch.equal(hash_buckets(x, rotations, 512), argmax_of_concatenation(x, rotations))


def test_nan_inputs_still_hash_into_range(argmax_path: str) -> None:
    """A NaN token has no argmax; it must still land in some bucket, not index past the last one."""
    generator = torch.Generator().manual_seed(0)
    for half in (3, 64, 512):
        x = torch.randn(1, 5, 8, generator=generator)
        x[0, 2] = float("nan")
        buckets = hash_buckets(x, random_rotations(8, 2, 2 * half, generator, torch.device("cpu")), 2 * half)
        assert int(buckets.min()) >= 0 and int(buckets.max()) < 2 * half


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@given(seed=st.integers(0, 2**31 - 1), half=st.sampled_from([2, 40, 512]), tokens=st.integers(1, 3000))
def test_cuda_hashes_like_cpu(seed: int, half: int, tokens: int) -> None:
    """The same tokens and rotations hash alike on CUDA (one large piece, indexed argmax) and on CPU, except
    where the two best projections are closer than the two devices' float32 rounding can separate."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, tokens, 16, generator=generator)
    rotations = random_rotations(16, 2, 2 * half, generator, torch.device("cpu"))
    on_cpu = hash_buckets(x, rotations, 2 * half)
    on_cuda = hash_buckets(x.cuda(), rotations.cuda(), 2 * half).cpu()
    signed = torch.einsum("gnd,drh->grnh", x, rotations)
    best_two = torch.cat([signed, -signed], dim=-1).topk(2, dim=-1).values
    clear = (best_two[..., 0] - best_two[..., 1]) > 1e-4
    assert torch.equal(on_cuda[clear], on_cpu[clear])
