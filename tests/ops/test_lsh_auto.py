"""Automatic selection of LSH attention's kernel (``chunkformer.ops.lsh_auto``): the Triton kernels on CUDA
after a self-check, the block path otherwise.

Where torch sees a GPU these tests run on CUDA as users' code does, the self-check compiling the kernels for
real. Without one, Triton's interpreter stands in: ``AUTO_TRITON_DEVICES`` is widened to CPU for the test,
so the same rules (check once, fall back with a warning on a wrong or failing kernel, explicit choices win)
run on CPU tensors. Sizes are the self-check's own (B 2, 2 heads, N 48, d 16): about 3 s a check
interpreted.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

if os.environ.get("CHUNKFORMER_REQUIRE_TRITON", "").strip() != "1":
    pytest.importorskip("triton", reason="triton is not installed (pip install 'chunkformer[test]')")

from chunkformer.ops import current_backend, lsh_attention, lsh_auto, lsh_triton, use_backend  # noqa: E402
from chunkformer.ops.triton_support import triton_device_reasons, triton_reasons  # noqa: E402

_REFUSED = list(dict.fromkeys(triton_reasons() + triton_device_reasons(DEVICE, torch.float32)))
pytestmark = pytest.mark.skipif(bool(_REFUSED), reason="; ".join(_REFUSED))

KWARGS = {"bucket_size": 8, "n_hashes": 2, "n_buckets": 4}


@pytest.fixture
def auto_on_device(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Automatic selection may take the Triton kernels on DEVICE; the self-check's cache starts and ends
    empty, and no backend is asked for in the environment."""
    monkeypatch.setattr(lsh_auto, "AUTO_TRITON_DEVICES", (DEVICE,))
    monkeypatch.delenv("CHUNKFORMER_ATTN_BACKEND", raising=False)
    lsh_auto.triton_self_check.cache_clear()
    with torch.random.fork_rng(devices=[]):
        yield
    lsh_auto.triton_self_check.cache_clear()


def qkv(seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn((1, 2, 32, 16), generator=generator).to(DEVICE, dtype) for _ in range(3)]


def count_calls(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[int]:
    calls: list[int] = []
    real = getattr(module, name)

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return calls


def test_auto_takes_the_triton_kernels_after_one_self_check(
    auto_on_device: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = count_calls(monkeypatch, lsh_auto, "check_errors")
    q, k, v = qkv()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert lsh_auto.lsh_kernel_for(q, k, v, 0.0).name == "triton"
    assert len(checks) == 1
    rounds = count_calls(monkeypatch, lsh_triton, "triton_rounds")
    auto = lsh_attention(q, k, v, **KWARGS)
    assert rounds, "automatic selection ran the Triton kernels"
    assert len(checks) == 1, "the self-check runs once per device and dtype"
    with use_backend("triton"):
        assert torch.equal(auto, lsh_attention(q, k, v, **KWARGS))
    # Another dtype is checked on its own.
    assert lsh_auto.lsh_kernel_for(*(x.to(torch.float16) for x in (q, k, v)), 0.0).name == "triton"
    assert len(checks) == 2


def test_the_self_check_measures_agreement(auto_on_device: None) -> None:
    """Its errors are near rounding: float32 within 1e-5 of the math kernel, bf16 within 2 % (an ulp is
    0.4 %), far inside the tolerances that reject a kernel."""
    errors32 = lsh_auto.check_errors(torch.device(DEVICE), torch.float32)
    assert len(errors32) == 7 and max(errors32.values()) < 1e-5, errors32
    errors16 = lsh_auto.check_errors(torch.device(DEVICE), torch.bfloat16)
    assert max(errors16.values()) < 2e-2, errors16


def wrong_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every round's output 10 % too large, as a kernel with a wrong mask or scale would be wrong."""
    real = lsh_triton.triton_rounds

    def wrong(*args, **kwargs):
        for lse, out in real(*args, **kwargs):
            yield lse, out * 1.1

    monkeypatch.setattr(lsh_triton, "triton_rounds", wrong)


def test_a_kernel_that_disagrees_is_not_used(auto_on_device: None, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong_rounds(monkeypatch)
    q, k, v = qkv(1)
    with pytest.warns(RuntimeWarning, match=r"self-check on .* differs from the math kernel's .*output"):
        kernel = lsh_auto.lsh_kernel_for(q, k, v, 0.0)
    assert kernel.name != "triton"
    reasons = lsh_auto.auto_triton_reasons(q.device, q.dtype)
    assert len(reasons) == 1 and "self-check" in reasons[0]
    # Warned once: later calls fall back quietly, to the block path's result.
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out = lsh_attention(q, k, v, **KWARGS)
    # The same kernel as automatic selection's dense backend (xformers where it works on CUDA, else SDPA).
    with use_backend(current_backend(q, k, v)):
        torch.testing.assert_close(out, lsh_attention(q, k, v, **KWARGS), rtol=0, atol=0)


def test_a_kernel_that_raises_is_not_used(auto_on_device: None, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*args, **kwargs):
        raise RuntimeError("no kernel image is available for execution on the device")
        yield

    monkeypatch.setattr(lsh_triton, "triton_rounds", failing)
    q, k, v = qkv(2)
    with pytest.warns(RuntimeWarning, match="RuntimeError: no kernel image"):
        out = lsh_attention(q, k, v, **KWARGS)
    assert out.shape == v.shape and torch.isfinite(out).all()


def test_explicit_choices_and_refusals_keep_the_block_path(
    auto_on_device: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = count_calls(monkeypatch, lsh_auto, "check_errors")
    q, k, v = qkv(3)
    with use_backend("sdpa"):
        assert lsh_auto.lsh_kernel_for(q, k, v, 0.0).name != "triton"
    monkeypatch.setenv("CHUNKFORMER_ATTN_BACKEND", "math")
    assert lsh_auto.lsh_kernel_for(q, k, v, 0.0).name == "math"
    monkeypatch.delenv("CHUNKFORMER_ATTN_BACKEND")
    assert any("dropout" in reason for reason in lsh_auto.auto_triton_reasons(DEVICE, torch.bfloat16, 0.1))
    assert lsh_auto.lsh_kernel_for(q, k, v, 0.1).name == "math"
    assert any("float64" in reason for reason in lsh_auto.auto_triton_reasons(DEVICE, torch.float64))
    # float32: the block path unless pinned (the kernels' exact fp32 dots have no tensor cores).
    assert "float32 inputs keep the block path" in lsh_auto.auto_triton_reasons(DEVICE, torch.float32)[0]
    assert lsh_auto.lsh_kernel_for(*(x.float() for x in (q, k, v)), 0.0).name != "triton"
    assert not checks, "no self-check where the kernels are not wanted or cannot run"
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert any("torch.compile" in reason for reason in lsh_auto.auto_triton_reasons(DEVICE, torch.bfloat16))
    monkeypatch.undo()
    # Off the listed devices (CPU by default) automatic selection never takes them.
    assert "cuda only, not cpu" in lsh_auto.auto_triton_reasons("cpu", torch.bfloat16)[0]
    assert not checks


def test_the_self_check_runs_under_inference_mode_and_autocast(auto_on_device: None) -> None:
    """The first LSH call may come from an evaluation loop under inference mode and autocast; the self-check
    needs gradients and its own dtype, and must pass there too."""
    q, k, v = qkv(4)
    with (
        warnings.catch_warnings(),
        torch.inference_mode(),
        torch.autocast(DEVICE, dtype=torch.bfloat16),
    ):
        warnings.simplefilter("error", RuntimeWarning)
        out = lsh_attention(q, k, v, **KWARGS)
    assert lsh_auto.triton_self_check.cache_info().currsize == 1
    assert lsh_auto.auto_triton_reasons(DEVICE, torch.bfloat16) == []
    assert out.shape == v.shape
