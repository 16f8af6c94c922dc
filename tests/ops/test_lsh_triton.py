"""The fused Triton LSH kernels (backend ``"triton"``): compiled on CUDA where torch sees a GPU, else run on
CPU through Triton's interpreter.

They are compared with today's block path (``"sdpa"``: PyTorch's CPU flash kernels on gathered blocks) and
with the package's slow reference, :func:`chunkformer.ops.lsh_attention_reference`: per-round outputs and
log-sum-exps, merged outputs, gradients, strict causality bit for bit, padding, shared QK, de-duplication
across rounds, float32 and bfloat16 inputs, and the deterministic backward.

Where they run: the Triton side of every comparison runs on ``DEVICE`` (``"cuda"`` when available, else
``"cpu"``); the comparison side (today's path, the float64 reference) stays on CPU, and results are compared
there. Without CUDA, ``TRITON_INTERPRET=1`` is set here, before anything imports Triton (Triton reads it when
a kernel is decorated). The interpreter is slow: sizes are tiny (B 1-2, 2 heads, N 24-32, bucket 4-8, d
8-16, 1-3 rounds).

Where the backend refuses ``DEVICE`` the module skips, or with ``CHUNKFORMER_REQUIRE_TRITON=1`` (the GPU suite
sets it) fails at collection with the reasons.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Iterator
from unittest import mock

import pytest
import torch

# Compiled on a GPU; else interpreted, which needs TRITON_INTERPRET before anything imports Triton (importing
# torch does not; importing chunkformer does, through torch._dynamo).
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The GPU suite sets this: there a refusal means the kernels went untested, which must fail, not skip.
REQUIRE_VAR = "CHUNKFORMER_REQUIRE_TRITON"
REQUIRED = os.environ.get(REQUIRE_VAR, "").strip() == "1"

if not REQUIRED:
    pytest.importorskip("triton", reason="triton is not installed (pip install 'chunkformer[test]')")

import chunkformer.ops.lsh_pass as lsh_pass  # noqa: E402
from chunkformer.ops import (  # noqa: E402
    available_backends,
    current_backend,
    lsh_attention,
    lsh_attention_reference,
    lsh_triton,
    use_backend,
)
from chunkformer.ops.block_attention import BLOCK_KERNELS, block_forward, select_block_kernel  # noqa: E402
from chunkformer.ops.lsh import LSHLayout, random_rotations  # noqa: E402
from chunkformer.ops.lsh_merge import RoundMerge  # noqa: E402
from chunkformer.ops.lsh_pass import hash_rounds, lay_out  # noqa: E402
from chunkformer.ops.lsh_pieces import PieceRows  # noqa: E402
from chunkformer.ops.lsh_reference import reference_hash_margin  # noqa: E402
from chunkformer.ops.lsh_rounds import BlockRounds  # noqa: E402
from chunkformer.ops.lsh_shared_qk import unit_keys  # noqa: E402
from chunkformer.ops.triton_support import triton_device_reasons, triton_reasons  # noqa: E402

# On CPU: TRITON_INTERPRET set to something else, or Triton imported before this module (a test run without
# tests/conftest.py); on CUDA: Triton not installed or broken.
_REFUSED = list(dict.fromkeys(triton_reasons() + triton_device_reasons(DEVICE, torch.float32)))
if _REFUSED and REQUIRED:
    how = "compiled" if DEVICE == "cuda" else "interpreted"
    pytest.fail(
        f"{REQUIRE_VAR}=1: expected the Triton LSH kernels to run on {DEVICE} ({how}), but the backend "
        f"refuses: {'; '.join(_REFUSED)}",
        pytrace=False,
    )
pytestmark = pytest.mark.skipif(bool(_REFUSED), reason="; ".join(_REFUSED))

# Float32 results of two kernels that sum in different orders.
FP32 = {"rtol": 1e-5, "atol": 1e-5}
# Against the float64 reference.
REFERENCE = {"rtol": 1e-4, "atol": 1e-4}


@pytest.fixture(autouse=True)
def keep_global_rng() -> Iterator[None]:
    """Every test runs on a private copy of the global RNG, restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        yield


def inputs(
    seed: int,
    shape: tuple[int, int, int, int],
    shared_qk: bool,
    padding: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """q, k (None under shared QK), v and a key padding mask with the last ``padding`` tokens of batch
    element 0 marked (None when 0), drawn in float32 from a private generator."""
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(shape, generator=generator).to(dtype) for _ in range(3))
    mask = None
    if padding:
        mask = torch.zeros(shape[0], shape[2], dtype=torch.bool)
        mask[0, -padding:] = True
    return q, None if shared_qk else k, v, mask


@contextlib.contextmanager
def rotations_as_on_cpu(device: str) -> Iterator[None]:
    """lsh_attention draws its rotations from a generator on the inputs' device (seed 0 when none is given),
    and a CUDA generator draws other numbers than a CPU one with the same seed. Off CPU, draw them on CPU from
    the generator's seed and move them, so the Triton side hashes as today's path and the reference do."""
    if device == "cpu":
        yield
        return

    def drawn_on_cpu(head_dim, n_hashes, n_buckets, generator, device):
        on_cpu = torch.Generator().manual_seed(generator.initial_seed())
        return random_rotations(head_dim, n_hashes, n_buckets, on_cpu, torch.device("cpu")).to(device)

    with mock.patch.object(lsh_pass, "random_rotations", drawn_on_cpu):
        yield


def run(
    backend: str,
    q: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor,
    grad_out: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Output and (when ``grad_out`` is given) the gradients of q, k (if given) and v on ``backend``, from CPU
    inputs: ``"triton"`` runs on DEVICE, every other backend on CPU; the results come back on CPU."""
    device = DEVICE if backend == "triton" else "cpu"
    if kwargs.get("key_padding_mask") is not None:
        kwargs = {**kwargs, "key_padding_mask": kwargs["key_padding_mask"].to(device)}
    grad = grad_out is not None
    leaves = [x.detach().to(device, copy=True).requires_grad_(grad) for x in (q, k, v) if x is not None]
    q_, k_, v_ = leaves if k is not None else (leaves[0], None, leaves[1])
    with use_backend(backend), rotations_as_on_cpu(device):
        out = lsh_attention(q_, k_, v_, **kwargs)
    if grad_out is None:
        return out.detach().cpu(), []
    grads = torch.autograd.grad(out, leaves, grad_out.to(device))
    return out.detach().cpu(), [grad.cpu() for grad in grads]


# ----------------------------------------------------------------------------------------------------------
# Per round: output and log-sum-exp against the block path, masks and de-duplication included
# ----------------------------------------------------------------------------------------------------------


def block_path_rounds(q, k, v, layout, scale):
    """Today's rounds in token order: (lse (G, N), out (G, N, dv)) per used round."""
    groups, seq_len, _ = q.shape
    n_blocks = layout.query_ids.shape[2]
    rounds = BlockRounds(layout, PieceRows(layout, seq_len), BLOCK_KERNELS["cpu_flash"], scale, 0.0, n_blocks)
    where = RoundMerge(layout, seq_len, v.shape[-1], torch.float32, 1 << 20)
    for r in range(layout.rounds_used):
        out_rows, lse_blocks, _ = rounds.attend(q, k, v, r, None, {}, {}, False)
        lse = lse_blocks.reshape(-1)[where.lse_index[:, r]].masked_fill(~where.placed[:, r], -math.inf)
        out = out_rows[where.out_index[:, r].reshape(-1)].view(groups, seq_len, -1)
        yield lse, out.masked_fill(torch.isneginf(lse)[..., None], 0.0)


def on_device(layout: LSHLayout) -> LSHLayout:
    """``layout`` with its tensors on DEVICE: a layout is a dataclass of index tensors, flags and counts."""
    tensors = {
        field.name: value.to(DEVICE)
        for field in dataclasses.fields(layout)
        if isinstance(value := getattr(layout, field.name), torch.Tensor)
    }
    return dataclasses.replace(layout, **tensors)


def triton_path_rounds(q, k, v, layout, scale, shared_qk):
    """The Triton kernels' rounds on DEVICE, from CPU inputs and a CPU layout; each round copied to CPU (the
    kernels reuse their buffers)."""
    layout = on_device(layout)
    tables = lsh_triton.kernel_tables(layout)
    q, k, v = (x.to(DEVICE) for x in (q, k, v))
    for lse, out in lsh_triton.triton_rounds(q, k, v, layout, tables, scale, shared_qk):
        yield lse.to("cpu", copy=True), out.to("cpu", copy=True)


def layout_of(q, k, bucket_size, n_hashes, n_buckets, causal, shared_qk, mask):
    groups = q.shape[0] * q.shape[1]
    q_flat = q.reshape(groups, q.shape[2], -1)
    k_flat = None if shared_qk else k.reshape(groups, k.shape[2], -1)
    valid = None if mask is None else (~mask).repeat_interleave(q.shape[1], dim=0)
    generator = torch.Generator().manual_seed(0)
    query_buckets, key_buckets = hash_rounds(q_flat, k_flat, n_hashes, n_buckets, generator)
    layout = lay_out(query_buckets, key_buckets, valid, bucket_size, n_buckets, causal, shared_qk)
    keys = unit_keys(q_flat)[0] if shared_qk else k_flat
    return layout, q_flat.contiguous(), keys.contiguous()


@pytest.mark.parametrize(
    "causal,shared_qk,padding", [(False, False, 3), (False, True, 0), (True, False, 0), (True, True, 5)]
)
def test_every_round_matches_the_block_path(causal: bool, shared_qk: bool, padding: int) -> None:
    """Each round's log-sum-exp and output equal today's: same masks (causality, padding, self exclusion)
    and the same pairs dropped as seen in an earlier round."""
    q, k, v, mask = inputs(1, (1, 2, 32, 8), shared_qk, padding)
    layout, q_flat, keys = layout_of(q, k, 8, 3, 4, causal, shared_qk, mask)
    v_flat = v.reshape(2, 32, 8)
    scale = 8**-0.5
    pairs = zip(
        block_path_rounds(q_flat, keys, v_flat, layout, scale),
        triton_path_rounds(q_flat, keys, v_flat, layout, scale, shared_qk),
        strict=True,
    )
    for r, ((want_lse, want_out), (lse, out)) in enumerate(pairs):
        assert torch.equal(torch.isneginf(lse), torch.isneginf(want_lse)), (
            f"round {r}: rows with no key differ"
        )
        torch.testing.assert_close(lse, want_lse, **FP32, msg=lambda m, r=r: f"round {r} lse: {m}")
        torch.testing.assert_close(out, want_out, **FP32, msg=lambda m, r=r: f"round {r} out: {m}")


@pytest.mark.parametrize("causal", [False, True])
def test_a_pair_seen_in_an_earlier_round_is_dropped(causal: bool) -> None:
    """With one bucket every round puts the same pairs in view: the second round must attend nothing, and the
    result equal one round's bit for bit."""
    q, k, v, _ = inputs(2, (1, 2, 16, 8), False)
    layout, q_flat, keys = layout_of(q, k, 4, 2, 1, causal, False, None)
    rounds = list(triton_path_rounds(q_flat, keys, v.reshape(2, 16, 8), layout, 8**-0.5, False))
    assert len(rounds) == 2
    assert torch.isneginf(rounds[1][0]).all()
    assert not torch.isneginf(rounds[0][0]).all()
    kwargs = {"bucket_size": 4, "n_buckets": 1, "is_causal": causal}
    two, _ = run("triton", q, k, v, n_hashes=2, **kwargs)
    one, _ = run("triton", q, k, v, n_hashes=1, **kwargs)
    assert torch.equal(two, one)


# ----------------------------------------------------------------------------------------------------------
# lsh_attention on "triton": outputs and gradients against today's path and the reference
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "batch,bucket_size,n_hashes,causal,shared_qk,padding",
    [
        (2, 8, 3, False, False, 4),
        (1, 4, 2, False, True, 0),
        (1, 8, 2, True, False, 0),
        (2, 4, 2, True, True, 3),
    ],
)
def test_outputs_and_gradients_match_today_and_the_reference(
    batch: int, bucket_size: int, n_hashes: int, causal: bool, shared_qk: bool, padding: int
) -> None:
    q, k, v, mask = inputs(3, (batch, 2, 32, 16), shared_qk, padding)
    kwargs = {
        "bucket_size": bucket_size,
        "n_hashes": n_hashes,
        "n_buckets": 4,
        "is_causal": causal,
        "shared_qk": shared_qk,
        "key_padding_mask": mask,
    }
    grad_out = torch.randn(v.shape, generator=torch.Generator().manual_seed(4))
    if mask is not None:
        grad_out = grad_out.masked_fill(mask[:, None, :, None], math.nan)  # padding rows pass no gradient
    out, grads = run("triton", q, k, v, grad_out, **kwargs)
    want, want_grads = run("sdpa", q, k, v, grad_out, **kwargs)
    torch.testing.assert_close(out, want, **FP32)
    for name, got, expected in zip("qkv" if k is not None else "qv", grads, want_grads, strict=True):
        assert torch.isfinite(got).all(), name
        torch.testing.assert_close(got, expected, **FP32, msg=lambda m, n=name: f"d{n}: {m}")

    assert (
        reference_hash_margin(
            q,
            k,
            **{key: kwargs[key] for key in ("bucket_size", "n_hashes", "n_buckets")},
            shared_qk=shared_qk,
            key_padding_mask=mask,
        )
        > 1e-4
    )
    leaves = [x.double().requires_grad_() for x in (q, k, v) if x is not None]
    q64, k64, v64 = leaves if k is not None else (leaves[0], None, leaves[1])
    reference = lsh_attention_reference(q64, k64, v64, **kwargs)
    torch.testing.assert_close(out, reference.float(), **REFERENCE)
    reference_grads = torch.autograd.grad(reference, leaves, torch.nan_to_num(grad_out).double())
    for name, got, expected in zip("qkv" if k is not None else "qv", grads, reference_grads, strict=True):
        torch.testing.assert_close(got, expected.float(), **REFERENCE, msg=lambda m, n=name: f"d{n}: {m}")


@pytest.mark.parametrize("shared_qk", [False, True])
def test_strictly_causal_bit_for_bit(shared_qk: bool) -> None:
    """Changing tokens after position t changes no output at positions <= t, not even in the last bit."""
    q, k, v, _ = inputs(5, (1, 2, 24, 8), shared_qk)
    kwargs = {"bucket_size": 4, "n_hashes": 2, "n_buckets": 4, "is_causal": True, "shared_qk": shared_qk}
    out, _ = run("triton", q, k, v, **kwargs)
    generator = torch.Generator().manual_seed(6)
    for cut in (7, 16):
        changed = [x.clone() if x is not None else None for x in (q, k, v)]
        for x in changed:
            if x is not None:
                x[:, :, cut + 1 :] = torch.randn(x[:, :, cut + 1 :].shape, generator=generator)
        perturbed, _ = run("triton", *changed, **kwargs)
        assert torch.equal(perturbed[:, :, : cut + 1], out[:, :, : cut + 1]), f"cut {cut}"
        assert not torch.equal(perturbed, out)


# ----------------------------------------------------------------------------------------------------------
# bfloat16, deterministic backward
# ----------------------------------------------------------------------------------------------------------


def test_bfloat16_inputs_against_float32_and_today() -> None:
    """bf16 inputs give bf16 outputs and gradients close to the float32 result of the same (bf16-valued)
    inputs and to today's bf16 path. In the interpreter, whose bf16 tl.dot is wrong, operands are cast to
    float32 before tl.dot: there the bf16 result is the float32 one rounded once, exactly."""
    q, k, v, _ = inputs(7, (1, 2, 32, 16), False, dtype=torch.bfloat16)
    kwargs = {"bucket_size": 8, "n_hashes": 2, "n_buckets": 4}
    # The Triton side hashes on DEVICE and today's path on CPU: the same buckets while no token is near a tie.
    assert reference_hash_margin(q, k, **kwargs) > 1e-4
    grad_out = torch.randn(v.shape, generator=torch.Generator().manual_seed(8)).to(torch.bfloat16)
    out, grads = run("triton", q, k, v, grad_out, **kwargs)
    assert out.dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in grads)
    out32, grads32 = run("triton", q.float(), k.float(), v.float(), grad_out.float(), **kwargs)
    bf16 = {"rtol": 1.6e-2, "atol": 1e-2}
    if DEVICE == "cpu":
        torch.testing.assert_close(out, out32.to(torch.bfloat16), rtol=0, atol=0)
    else:
        # Compiled, tl.dot takes bf16 operands (the weights rounded to bf16) and accumulates in float32: the
        # result is close to float32's, as today's bf16 path is, not equal to it rounded.
        torch.testing.assert_close(out.float(), out32, **bf16)
    for got, expected in zip(grads, grads32, strict=True):
        torch.testing.assert_close(got.float(), expected, **bf16)
    today, today_grads = run("sdpa", q, k, v, grad_out, **kwargs)
    torch.testing.assert_close(out.float(), today.float(), **bf16)
    for got, expected in zip(grads, today_grads, strict=True):
        torch.testing.assert_close(got.float(), expected.float(), rtol=3e-2, atol=3e-2)


@pytest.fixture
def deterministic() -> Iterator[None]:
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def test_deterministic_mode_repeats_bit_for_bit(deterministic: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torch.use_deterministic_algorithms the key and value gradients go through per-slot buffers and
    index_add_ (no atomics): two runs agree bit for bit, and with the atomic path up to rounding."""
    q, k, v, mask = inputs(9, (1, 2, 32, 8), False, padding=3)
    kwargs = {"bucket_size": 8, "n_hashes": 2, "n_buckets": 4, "key_padding_mask": mask}
    grad_out = torch.randn(v.shape, generator=torch.Generator().manual_seed(10))
    calls = []
    real_add = torch.Tensor.index_add_
    monkeypatch.setattr(torch.Tensor, "index_add_", lambda *a, **kw: calls.append(1) or real_add(*a, **kw))
    first = run("triton", q, k, v, grad_out, **kwargs)
    second = run("triton", q, k, v, grad_out, **kwargs)
    assert calls, "the deterministic backward adds key gradients with index_add_"
    assert torch.equal(first[0], second[0])
    for a, b in zip(first[1], second[1], strict=True):
        assert torch.equal(a, b)
    torch.use_deterministic_algorithms(False)
    atomic = run("triton", q, k, v, grad_out, **kwargs)
    for a, b in zip(first[1], atomic[1], strict=True):
        torch.testing.assert_close(a, b, **FP32)


# ----------------------------------------------------------------------------------------------------------
# Selection: the record, the dispatch, fallbacks and reasons
# ----------------------------------------------------------------------------------------------------------


def spy_on_triton(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = lsh_triton.triton_rounds

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(lsh_triton, "triton_rounds", counting)
    return calls


def test_triton_is_selected_when_asked_and_not_automatically_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Asked for, the kernels run on DEVICE; automatic selection never takes them on CPU (the interpreter is
    for tests). On CUDA it does, after a self-check: tests/ops/test_lsh_auto.py."""
    assert available_backends()["triton"].available
    calls = spy_on_triton(monkeypatch)
    q, k, v, _ = inputs(11, (1, 1, 8, 8), False)
    # Automatic selection on CPU is unchanged: SDPA's flash kernels on blocks.
    assert current_backend(q, k, v) == "sdpa"
    lsh_attention(q, k, v, bucket_size=4, n_hashes=1)
    assert not calls
    run("triton", q, k, v, bucket_size=4, n_hashes=1)
    assert len(calls) == 1
    monkeypatch.setenv("CHUNKFORMER_ATTN_BACKEND", "triton")
    lsh_attention(*(x.to(DEVICE) for x in (q, k, v)), bucket_size=4, n_hashes=1)
    assert len(calls) == 2


def test_under_torch_compile_the_kernels_run_between_graphs() -> None:
    """Pinned under torch.compile, the Triton path is a graph break (Dynamo cannot trace the launches; it
    failed inside Triton before): the same output and gradients as eager, bit for bit."""
    q, k, v, _ = inputs(13, (1, 2, 32, 16), False, dtype=torch.bfloat16)
    leaves = [x.to(DEVICE).requires_grad_() for x in (q, k, v)]
    generator = torch.Generator(device=DEVICE)

    def attend(q, k, v):
        return lsh_attention(q, k, v, bucket_size=8, n_hashes=2, generator=generator)

    results = []
    with use_backend("triton"), rotations_as_on_cpu(DEVICE):
        for function in (attend, torch.compile(attend, backend="eager")):
            generator.manual_seed(0)
            out = function(*leaves)
            results.append((out, *torch.autograd.grad(out.float().sum(), leaves)))
    torch._dynamo.reset()
    for eager, compiled in zip(*results, strict=True):
        assert torch.equal(eager, compiled)


def test_dropout_and_float64_fall_back_to_the_math_path(monkeypatch: pytest.MonkeyPatch) -> None:
    assert select_block_kernel("triton", DEVICE, 0.0, torch.float32).name == "triton"
    assert select_block_kernel("triton", DEVICE, 0.1, torch.float32).name == "math"
    assert select_block_kernel("triton", DEVICE, 0.0, torch.float64).name == "math"
    reasons = BLOCK_KERNELS["triton"].not_supported_reasons(DEVICE, torch.float64, 0.1)
    assert any("float64" in reason for reason in reasons)
    assert any("dropout" in reason for reason in reasons)
    calls = spy_on_triton(monkeypatch)
    q, k, v = (x.to(DEVICE) for x in inputs(12, (1, 1, 8, 8), False)[:3])
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    with use_backend("triton"):
        out = lsh_attention(q, k, v, bucket_size=4, n_hashes=1, dropout_p=0.1, generator=generator)
    assert not calls and out.shape == v.shape


def test_reasons_without_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert any("TRITON_INTERPRET=1" in reason for reason in triton_device_reasons("cpu", torch.float32))
    if not torch.cuda.is_available():
        assert any("no CUDA device" in reason for reason in triton_reasons())
    assert any("float64" in reason for reason in triton_device_reasons("cuda", torch.float64))


def test_block_kernel_calls_refuse_the_row_reading_kernel() -> None:
    q = torch.randn(1, 1, 4, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="runs whole LSH rounds"):
        block_forward("triton", q, q, q, None, 1.0)
