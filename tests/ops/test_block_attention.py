"""Block kernels with log-sum-exp (chunkformer.ops.block_attention) against an independent float64
formulation, and the kernel records the selection reads.

Every kernel this machine can run (the CPU flash kernels always; the CUDA ones when a GPU, and xformers, are
there) must give the math of softmax attention with an additive 0 / -inf mask: the output and the
log-sum-exp in the forward pass, and in the backward pass the gradients for a GIVEN output and log-sum-exp
(LSH attention passes the merged ones of all rounds, not the kernel's own).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from chunkformer.ops import available_backends, block_attention
from chunkformer.ops.block_attention import (
    BLOCK_KERNELS,
    BlockKernel,
    block_backward,
    block_forward,
    block_kernel,
    select_block_kernel,
)

CUDA = torch.cuda.is_available()
# (Installed is not enough: a wheel built for another torch imports and then has no kernel at all.)
XFORMERS = available_backends()["xformers"].available


def kernels_here() -> list[object]:
    params: list[object] = ["cpu_flash", "math"]
    params.append(pytest.param("cuda_efficient", marks=pytest.mark.skipif(not CUDA, reason="needs CUDA")))
    params.append(
        pytest.param(
            "xformers", marks=pytest.mark.skipif(not XFORMERS, reason="needs CUDA and a working xformers")
        )
    )
    return params


def device_of(kernel: str) -> str:
    return "cuda" if kernel in ("cuda_efficient", "xformers") else "cpu"


def reference(q, k, v, keep, scale, out=None, lse=None, grad_out=None):
    """float64 softmax attention over (G, P, S, K) logits: (out, lse), or the gradients for the given out
    and lse (the identity every kernel's backward implements: dS = P * (dO.V^T - rowsum(dO * O)))."""
    q, k, v = (t.double().cpu() for t in (q, k, v))
    logits = torch.einsum("gpsd,gpkd->gpsk", q, k) * scale
    if keep is not None:
        logits = logits.masked_fill(~keep.cpu(), float("-inf"))
    if grad_out is None:
        ref_lse = torch.logsumexp(logits, dim=-1)
        weights = torch.exp(logits - torch.where(torch.isfinite(ref_lse), ref_lse, 0.0)[..., None])
        return torch.einsum("gpsk,gpkd->gpsd", weights, v), ref_lse
    grad_out, out, lse = grad_out.double().cpu(), out.double().cpu(), lse.double().cpu()
    weights = torch.exp(logits - lse[..., None])
    delta = (grad_out * out).sum(-1, keepdim=True)
    grad_logits = weights * (torch.einsum("gpsd,gpkd->gpsk", grad_out, v) - delta)
    return (
        torch.einsum("gpsk,gpkd->gpsd", grad_logits, k) * scale,
        torch.einsum("gpsk,gpsd->gpkd", grad_logits, q) * scale,
        torch.einsum("gpsk,gpsd->gpkd", weights, grad_out),
    )


@st.composite
def block_cases(draw: st.DrawFn, device: str, dtype: torch.dtype):
    """Blocks of odd sizes and widths (so the kernels' padding and alignment paths run), with no mask, a
    full mask, or a mask broadcast over groups and blocks, and some rows with no key at all."""
    groups, blocks = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    slots, n_keys = draw(st.integers(1, 40)), draw(st.integers(1, 80))
    head_dim = draw(st.sampled_from([3, 8, 16, 33, 64]))
    value_dim = draw(st.sampled_from([head_dim, 5, 64]))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator).to(device=device, dtype=dtype)

    q, k = randn(groups, blocks, slots, head_dim), randn(groups, blocks, n_keys, head_dim)
    v = randn(groups, blocks, n_keys, value_dim)
    kind = draw(st.sampled_from(["none", "full", "broadcast"]))
    keep = None
    if kind == "full":
        keep = torch.rand(groups, blocks, slots, n_keys, generator=generator) < 0.7
        keep[..., draw(st.integers(0, slots - 1)), :] = False  # a row with nothing in view
    elif kind == "broadcast":
        keep = (torch.rand(slots, n_keys, generator=generator) < 0.7).expand(groups, blocks, slots, n_keys)
    return q, k, v, keep


def bias_of(keep: torch.Tensor | None, dtype: torch.dtype, device: str) -> torch.Tensor | None:
    if keep is None:
        return None
    zero, minus_inf = torch.zeros((), dtype=dtype), torch.full((), float("-inf"), dtype=dtype)
    return torch.where(keep, zero, minus_inf).to(device)


TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


def assert_rows_close(got: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(
        got.double().cpu(), expected, atol=TOLERANCE[dtype] * max(1.0, scale), rtol=TOLERANCE[dtype], msg=what
    )


@pytest.mark.parametrize("kernel", kernels_here())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@given(data=st.data())
def test_forward_matches_float64(kernel: str, dtype: torch.dtype, data: st.DataObject) -> None:
    device = device_of(kernel)
    q, k, v, keep = data.draw(block_cases(device, dtype))
    scale = q.shape[-1] ** -0.5
    out, lse = block_forward(kernel, q, k, v, bias_of(keep, dtype, device), scale)
    expected_out, expected_lse = reference(q, k, v, keep, scale)
    assert out.shape == expected_out.shape and out.dtype == dtype
    assert lse.shape == expected_lse.shape
    attends = torch.isfinite(expected_lse)
    # Rows with no key in view: kernels differ (0, NaN, lse 0 or -inf) and LSH attention overrides them.
    assert_rows_close(out[attends.to(out.device)], expected_out[attends], dtype, "output")
    torch.testing.assert_close(lse.double().cpu()[attends], expected_lse[attends], atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("kernel", kernels_here())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@given(data=st.data(), lse_shift=st.sampled_from([0.0, math.log(2.0), 3.0]))
def test_backward_uses_the_given_output_and_lse(
    kernel: str, dtype: torch.dtype, data: st.DataObject, lse_shift: float
) -> None:
    """As LSH attention calls it: the merged lse is at least this block's own (other rounds add weight), and
    the merged output is not this block's output."""
    device = device_of(kernel)
    q, k, v, keep = data.draw(block_cases(device, dtype))
    scale = q.shape[-1] ** -0.5
    own_out, own_lse = reference(q, k, v, keep, scale)
    # Rows with no key in view would have lse -inf; LSH attention hands those the merged lse of other rounds.
    lse = torch.where(torch.isfinite(own_lse), own_lse, 0.0) + lse_shift
    generator = torch.Generator().manual_seed(q.numel())
    out = (own_out + 0.1 * torch.randn(own_out.shape, generator=generator, dtype=torch.float64)).to(dtype)
    grad_out = torch.randn(own_out.shape, generator=generator).to(dtype)
    grads = block_backward(
        kernel,
        grad_out.to(device),
        q,
        k,
        v,
        out.to(device),
        lse.float().to(device),
        bias_of(keep, dtype, device),
        scale,
    )
    expected = reference(q, k, v, keep, scale, out=out, lse=lse.float(), grad_out=grad_out)
    for name, got, want, like in zip(["grad q", "grad k", "grad v"], grads, expected, (q, k, v), strict=True):
        assert got.shape == like.shape, name
        assert_rows_close(got, want, dtype, name)


@pytest.mark.parametrize(
    "backend,device,dropout_p,expected",
    [
        ("sdpa", "cpu", 0.0, "cpu_flash"),
        ("sdpa", "cuda", 0.0, "cuda_efficient"),
        ("xformers", "cuda", 0.0, "xformers"),
        ("math", "cuda", 0.0, "math"),
        ("sdpa", "cpu", 0.1, "math"),
        ("xformers", "cuda", 0.1, "math"),
        ("sdpa", "meta", 0.0, "math"),
    ],
)
def test_block_kernel_follows_the_dispatch_backend(
    backend: str, device: str, dropout_p: float, expected: str
) -> None:
    kernel = block_kernel(backend, torch.device(device), dropout_p)
    assert kernel == expected and kernel in BLOCK_KERNELS


def test_unknown_kernel_is_named_in_the_error() -> None:
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match="unknown block kernel 'flash3'.*cpu_flash"):
        block_forward("flash3", q, q, q, None, 1.0)


def test_every_kernel_is_a_record_named_by_its_key() -> None:
    for name, record in BLOCK_KERNELS.items():
        assert isinstance(record, BlockKernel) and record.name == name
    # The math kernel serves every backend and refuses nothing: selection always finds a kernel.
    assert BLOCK_KERNELS["math"].not_supported_reasons("meta", torch.float64, 0.5) == []


@pytest.mark.parametrize(
    "name,device,dtype,dropout_p,reasons",
    [
        ("cpu_flash", "cpu", torch.float32, 0.0, []),
        ("cpu_flash", "cuda", torch.float32, 0.0, ["runs on cpu, not cuda"]),
        ("cpu_flash", "cpu", torch.float32, 0.1, ["draws its own dropout masks"]),
        (
            "cuda_efficient",
            "cuda",
            torch.float64,
            0.0,
            ["takes torch.float16, torch.bfloat16, torch.float32, not torch.float64"],
        ),
        (
            "xformers",
            "cpu",
            torch.float64,
            0.1,
            ["runs on cuda, not cpu", "not torch.float64", "dropout_p=0.1"],
        ),
    ],
)
def test_not_supported_reasons_name_each_refusal(
    name: str, device: str, dtype: torch.dtype, dropout_p: float, reasons: list[str]
) -> None:
    got = BLOCK_KERNELS[name].not_supported_reasons(device, dtype, dropout_p)
    assert len(got) == len(reasons)
    for reason, expected in zip(got, reasons, strict=True):
        assert expected in reason


def test_selection_reads_the_table() -> None:
    """A kernel that refuses an input gives way to the next one for the backend (float64 on CUDA: math)."""
    assert select_block_kernel("sdpa", "cuda", 0.0, torch.float64).name == "math"
    assert select_block_kernel("sdpa", "cpu", 0.0, torch.float64) is BLOCK_KERNELS["cpu_flash"]


def test_selection_errors_name_the_reasons() -> None:
    with pytest.raises(ValueError, match=r"no block kernel serves the dispatch backend 'flash3'"):
        select_block_kernel("flash3", "cpu")
    refusing = {"cpu_flash": BLOCK_KERNELS["cpu_flash"]}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(block_attention, "BLOCK_KERNELS", refusing)
        with pytest.raises(ValueError, match=r"cpu_flash: runs on cpu, not cuda"):
            select_block_kernel("sdpa", "cuda")


def test_a_kernel_given_an_input_it_refuses_names_why() -> None:
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(
        ValueError, match=r"block kernel 'cpu_flash' cannot run these inputs: .*dropout_p=0.5"
    ):
        block_forward("cpu_flash", q, q, q, None, 1.0, torch.ones(1, 1, 4, 4), 0.5)
