"""Property tests for :func:`chunkformer.ops.attention` and its backend dispatch.

Every backend is checked against two references: the package's own ``math`` kernel, and an independent
float64 loop written here, so that a bug shared by the package's kernels cannot hide. Random tensors come
from drawn seeds through a private ``torch.Generator``; the global RNG is left alone.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import itertools
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from chunkformer.ops import (
    BACKENDS,
    ENV_VAR,
    AttentionBackendError,
    BackendStatus,
    attention,
    available_backends,
    current_backend,
    dispatch,
    use_backend,
)

LOCAL_BACKENDS: list[str] = [name for name, status in available_backends().items() if status.available]
FP32_TOL = {"atol": 1e-5, "rtol": 1e-5}


def fp32_grad_tol(reference: torch.Tensor) -> dict[str, float]:
    """FP32_TOL for a gradient, its absolute part scaled by the gradient's largest entry (when above 1).

    Each entry of dq and dk is a sum of terms as large as the largest entries, so float32 rounding leaves
    an absolute error proportional to them even on entries near zero: a hypothesis-found case (scale 1.6,
    |dq| up to 16) put sdpa and math 2e-5 apart on a small entry, a relative error of 1e-6 of the terms.
    """
    return {"atol": FP32_TOL["atol"] * max(1.0, float(reference.abs().max())), "rtol": FP32_TOL["rtol"]}


# Worst sdpa-vs-math differences seen over 300 random CPU cases, relative to the values' size: float16 6.5e-4
# (output) and 6.7e-3 (gradients), bfloat16 5e-3 and 3.3e-2. Gradients differ more because SDPA rounds its
# backward intermediates to the input dtype while the math kernel works in float32.
OUTPUT_TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}
GRAD_TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}

MaskKind = str  # "none", "bool" or "float"


# ----------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dims:
    batch: int
    heads: int
    n_queries: int
    n_keys: int
    head_dim: int
    value_dim: int


@dataclass
class Case:
    """One attention call: inputs plus options, all reproducible from the drawn seed."""

    dims: Dims
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    attn_mask: torch.Tensor | None = None
    is_causal: bool = False
    scale: float | None = None
    grad_out: torch.Tensor = field(default_factory=lambda: torch.empty(0))

    def kwargs(self) -> dict[str, object]:
        return {"attn_mask": self.attn_mask, "is_causal": self.is_causal, "scale": self.scale}


def randn(
    shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    # Draw in float32 and cast, so a case differs between dtypes only by rounding.
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(dtype)


def mask_shapes(dims: Dims) -> list[tuple[int, ...]]:
    """Shapes that broadcast to (B, H, Nq, Nk), from a scalar to the full tensor."""
    b, h, nq, nk = dims.batch, dims.heads, dims.n_queries, dims.n_keys
    return [
        (nq, nk),
        (nk,),
        (),
        (nq, 1),
        (b, 1, 1, nk),
        (b, h, nq, nk),
        (1, h, 1, nk),
        (h, nq, nk),
        (b, 1, nq, nk),
        (1, 1, nq, nk),
    ]


def make_mask(
    kind: MaskKind,
    shape: tuple[int, ...],
    generator: torch.Generator,
    dtype: torch.dtype,
    empty_row: bool,
) -> torch.Tensor | None:
    """A random mask; with ``empty_row`` the first query row forbids every key, in every batch and head."""
    if kind == "none":
        return None
    allowed = torch.rand(shape, generator=generator) < 0.7
    if empty_row:
        if allowed.dim() <= 1:
            # A 0-D or 1-D mask is one key row shared by every query: emptying "row 0" empties them all.
            allowed.fill_(False)
        else:
            allowed[..., 0, :] = False
    if kind == "bool":
        return allowed
    bias = randn(shape, generator, dtype)
    return bias.masked_fill(~allowed, float("-inf"))


@st.composite
def dims_strategy(draw: st.DrawFn, max_tokens: int = 17, max_dim: int = 16, max_batch: int = 3) -> Dims:
    head_dim = draw(st.integers(1, max_dim))
    return Dims(
        batch=draw(st.integers(1, max_batch)),
        heads=draw(st.integers(1, max_batch)),
        n_queries=draw(st.integers(1, max_tokens)),
        n_keys=draw(st.integers(1, max_tokens)),
        head_dim=head_dim,
        # dv == d is the common case; draw it explicitly half the time so it is not rare.
        value_dim=draw(st.one_of(st.just(head_dim), st.integers(1, max_dim))),
    )


@st.composite
def case_strategy(
    draw: st.DrawFn,
    dtype: torch.dtype = torch.float32,
    mask_kinds: tuple[MaskKind, ...] = ("none", "bool", "float"),
    force_empty_row: bool | None = None,
    max_tokens: int = 17,
    max_dim: int = 16,
    max_batch: int = 3,
) -> Case:
    dims = draw(dims_strategy(max_tokens=max_tokens, max_dim=max_dim, max_batch=max_batch))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(mask_kinds))
    shape = draw(st.sampled_from(mask_shapes(dims)))
    empty_row = draw(st.booleans()) if force_empty_row is None else force_empty_row
    b, h, nq, nk, d, dv = (dims.batch, dims.heads, dims.n_queries, dims.n_keys, dims.head_dim, dims.value_dim)
    return Case(
        dims=dims,
        q=randn((b, h, nq, d), g, dtype),
        k=randn((b, h, nk, d), g, dtype),
        v=randn((b, h, nk, dv), g, dtype),
        attn_mask=make_mask(kind, shape, g, dtype, empty_row),
        is_causal=draw(st.booleans()),
        scale=draw(st.one_of(st.none(), st.floats(0.05, 2.0))),
        grad_out=randn((b, h, nq, dv), g, dtype),
    )


# ----------------------------------------------------------------------------------------------------------
# Independent reference
# ----------------------------------------------------------------------------------------------------------


def reference_attention(case: Case) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v in float64, one query row at a time, written without the package.

    A row that may attend to no key is defined as zeros. Differentiable, so it also gives reference gradients.
    """
    q, k, v = case.q.double(), case.k.double(), case.v.double()
    b, h, nq, nk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    scale = case.scale if case.scale is not None else 1.0 / math.sqrt(q.shape[-1])
    full = (b, h, nq, nk)
    allowed = torch.ones(full, dtype=torch.bool)
    bias = torch.zeros(full, dtype=torch.float64)
    if case.attn_mask is not None:
        mask = case.attn_mask.expand(full)
        if mask.dtype == torch.bool:
            allowed = allowed & mask
        else:
            allowed = allowed & (mask != float("-inf"))
            bias = torch.where(allowed, mask.double(), torch.zeros((), dtype=torch.float64))
    rows = []
    for bi, hi, i in itertools.product(range(b), range(h), range(nq)):
        # Top-left aligned causality: query i sees keys 0..i whatever Nq and Nk are.
        keys = [j for j in range(nk) if allowed[bi, hi, i, j] and (not case.is_causal or j <= i)]
        if not keys:
            rows.append(torch.zeros(v.shape[-1], dtype=torch.float64))
            continue
        index = torch.tensor(keys)
        logits = (k[bi, hi, index] @ q[bi, hi, i]) * scale + bias[bi, hi, i, index]
        weights = torch.exp(logits - logits.max())
        rows.append((weights / weights.sum()) @ v[bi, hi, index])
    return torch.stack(rows).reshape(b, h, nq, v.shape[-1])


def reference_empty_rows(case: Case) -> torch.Tensor:
    """(B, H, Nq) bool: which query rows may attend to no key at all."""
    b, h, nq, nk = case.dims.batch, case.dims.heads, case.dims.n_queries, case.dims.n_keys
    allowed = torch.ones(b, h, nq, nk, dtype=torch.bool)
    if case.attn_mask is not None:
        mask = case.attn_mask.cpu().expand(b, h, nq, nk)
        allowed = mask if mask.dtype == torch.bool else mask != float("-inf")
    if case.is_causal:
        allowed = allowed & (torch.arange(nk)[None, :] <= torch.arange(nq)[:, None])
    return ~allowed.any(dim=-1)


def run_with_grads(
    fn: Callable[..., torch.Tensor], case: Case, **kwargs: object
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Output and d(<out, grad_out>)/d(q, k, v) of ``fn`` on fresh leaves, so calls do not share graphs."""
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (case.q, case.k, case.v))
    leaf_case = Case(case.dims, q, k, v, case.attn_mask, case.is_causal, case.scale, case.grad_out)
    out = fn(leaf_case, **kwargs)
    if not out.requires_grad:
        # Only the reference can be cut off the graph (every row empty); its gradient is then zero.
        assert fn is reference_attention, "attention() returned a tensor that autograd cannot reach"
        return out, (torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v))
    loss = (out * case.grad_out.to(out.dtype)).sum()
    # The reference never touches q for a row without keys; an unused input has a zero gradient.
    grads = torch.autograd.grad(loss, (q, k, v), allow_unused=True, materialize_grads=True)
    return out.detach(), grads  # type: ignore[return-value]


def assert_close_in_dtype(
    out: torch.Tensor,
    grads: tuple[torch.Tensor, ...],
    want_out: torch.Tensor,
    want_grads: tuple[torch.Tensor, ...],
    dtype: torch.dtype,
) -> None:
    """Outputs and gradients agree within what rounding to ``dtype`` explains, and nothing is NaN or inf."""
    for tensor in (out, want_out, *grads, *want_grads):
        assert torch.isfinite(tensor).all()
    tol = OUTPUT_TOL[dtype]
    torch.testing.assert_close(out.float(), want_out.float(), atol=tol, rtol=tol)
    for name, got, want in zip("qkv", grads, want_grads, strict=True):
        # A gradient sums many rounded products; measure its error against its own size.
        size = max(1.0, want.float().abs().max().item())
        tol = GRAD_TOL[dtype]
        torch.testing.assert_close(
            got.float() / size,
            want.float() / size,
            atol=tol,
            rtol=tol,
            msg=lambda m, name=name: f"d{name}: {m}",
        )


def package_attention(case: Case, backend: str | None = None, **extra: object) -> torch.Tensor:
    return attention(case.q, case.k, case.v, backend=backend, **case.kwargs(), **extra)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------
# Numerical equivalence
# ----------------------------------------------------------------------------------------------------------


def test_cpu_machine_has_sdpa_and_math() -> None:
    # The equivalence tests below iterate LOCAL_BACKENDS; make sure that list is not silently short.
    assert {"sdpa", "math"} <= set(LOCAL_BACKENDS)


@given(case=case_strategy())
def test_every_backend_matches_math_and_reference(case: Case) -> None:
    ref_out, ref_grads = run_with_grads(reference_attention, case)
    math_out, math_grads = run_with_grads(package_attention, case, backend="math")
    torch.testing.assert_close(math_out, ref_out.float(), **FP32_TOL)
    for got, want in zip(math_grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want.float(), **fp32_grad_tol(want))
    for backend in LOCAL_BACKENDS:
        out, grads = run_with_grads(package_attention, case, backend=backend)
        assert out.shape == (case.dims.batch, case.dims.heads, case.dims.n_queries, case.dims.value_dim)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, math_out, **FP32_TOL, msg=lambda m, b=backend: f"backend {b}: {m}")
        torch.testing.assert_close(
            out, ref_out.float(), **FP32_TOL, msg=lambda m, b=backend: f"backend {b}: {m}"
        )
        for name, got, want, ref in zip("qkv", grads, math_grads, ref_grads, strict=True):
            torch.testing.assert_close(
                got, want, **fp32_grad_tol(ref), msg=lambda m, b=backend, n=name: f"{b} d{n}: {m}"
            )
            torch.testing.assert_close(
                got, ref.float(), **fp32_grad_tol(ref), msg=lambda m, b=backend, n=name: f"{b} d{n}: {m}"
            )


@given(case=case_strategy(mask_kinds=("bool", "float"), force_empty_row=True), data=st.data())
def test_fully_masked_rows_are_exact_zeros_with_zero_finite_gradients(
    case: Case, data: st.DataObject
) -> None:
    # Sometimes forbid everything, which makes k and v receive no gradient at all.
    if data.draw(st.booleans(), label="mask everything"):
        assert case.attn_mask is not None
        if case.attn_mask.dtype == torch.bool:
            case.attn_mask = torch.zeros_like(case.attn_mask)
        else:
            case.attn_mask = torch.full_like(case.attn_mask, float("-inf"))
    empty = reference_empty_rows(case)
    assert empty.any(), "the strategy should have produced at least one fully masked row"
    for backend in LOCAL_BACKENDS:
        out, (dq, dk, dv) = run_with_grads(package_attention, case, backend=backend)
        assert torch.isfinite(out).all(), backend
        assert (out[empty] == 0).all(), backend
        for grad in (dq, dk, dv):
            assert torch.isfinite(grad).all(), backend
        # A query that attends to nothing cannot influence the output.
        assert (dq[empty] == 0).all(), backend
        if empty.all():
            assert (dk == 0).all() and (dv == 0).all(), backend


@pytest.mark.parametrize("backend", ["sdpa", "math"])
# Finite differences cost two forward passes per input element: keep every axis tiny.
@given(case=case_strategy(dtype=torch.float64, max_tokens=4, max_dim=3, max_batch=2))
def test_gradcheck_float64(backend: str, case: Case) -> None:
    q, k, v = (t.requires_grad_(True) for t in (case.q, case.k, case.v))

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return attention(q, k, v, backend=backend, **case.kwargs())  # type: ignore[arg-type]

    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@given(data=st.data())
def test_low_precision_sdpa_matches_math(dtype: torch.dtype, data: st.DataObject) -> None:
    case = data.draw(case_strategy(dtype=dtype))
    sdpa_out, sdpa_grads = run_with_grads(package_attention, case, backend="sdpa")
    math_out, math_grads = run_with_grads(package_attention, case, backend="math")
    assert sdpa_out.dtype == math_out.dtype == dtype
    assert_close_in_dtype(sdpa_out, sdpa_grads, math_out, math_grads, dtype)
    empty = reference_empty_rows(case)
    assert (sdpa_out[empty] == 0).all() and (math_out[empty] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@given(data=st.data(), offset=st.floats(7e4, 1e6))
def test_float32_mask_on_half_inputs_is_read_alike_by_every_backend(
    dtype: torch.dtype, data: st.DataObject, offset: float
) -> None:
    # Half-precision models often build masks in float32. A row shifted by a large negative offset is finite
    # there, but -inf in float16 and coarsely rounded in bfloat16; every backend must read it the same way.
    case = data.draw(case_strategy(dtype=dtype, mask_kinds=("float",)))
    assert case.attn_mask is not None
    shift = torch.zeros(case.attn_mask.shape)
    if shift.dim() > 1:
        shift[..., 0, :] = -offset
    else:
        shift.fill_(-offset)  # a 0-D or 1-D mask is one row shared by every query
    case.attn_mask = case.attn_mask.float() + shift
    sdpa_out, sdpa_grads = run_with_grads(package_attention, case, backend="sdpa")
    math_out, math_grads = run_with_grads(package_attention, case, backend="math")
    assert_close_in_dtype(sdpa_out, sdpa_grads, math_out, math_grads, dtype)


@given(case=case_strategy())
def test_default_scale_is_inverse_sqrt_head_dim(case: Case) -> None:
    case.scale = None
    for backend in LOCAL_BACKENDS:
        default = package_attention(case, backend=backend)
        explicit = attention(
            case.q, case.k, case.v,
            attn_mask=case.attn_mask, is_causal=case.is_causal, scale=1.0 / math.sqrt(case.dims.head_dim),
            backend=backend,
        )  # fmt: skip
        torch.testing.assert_close(default, explicit, atol=0, rtol=0)


@given(case=case_strategy(mask_kinds=("none",)))
def test_is_causal_equals_an_explicit_top_left_mask(case: Case) -> None:
    causal = torch.ones(case.dims.n_queries, case.dims.n_keys, dtype=torch.bool).tril()
    for backend in LOCAL_BACKENDS:
        flagged = attention(case.q, case.k, case.v, is_causal=True, scale=case.scale, backend=backend)
        masked = attention(case.q, case.k, case.v, attn_mask=causal, scale=case.scale, backend=backend)
        torch.testing.assert_close(flagged, masked, **FP32_TOL)


# ----------------------------------------------------------------------------------------------------------
# Dropout
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sdpa", "math"])
@given(seed=st.integers(0, 2**32 - 1), dropout_p=st.floats(0.1, 0.9))
def test_dropout_is_finite_seeded_and_active(backend: str, seed: int, dropout_p: float) -> None:
    g = torch.Generator().manual_seed(seed)
    q, k, v = randn((2, 2, 8, 8), g), randn((2, 2, 8, 8), g), randn((2, 2, 8, 8), g)
    mask = torch.rand((8, 8), generator=g) < 0.7
    mask[0] = False  # a fully masked row must stay zero under dropout too
    plain = attention(q, k, v, attn_mask=mask, backend=backend)
    outs = []
    for _ in range(2):
        # fork_rng keeps the global RNG of the rest of the session untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            outs.append(attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, backend=backend))
    dropped, again = outs
    assert torch.isfinite(dropped).all()
    assert (dropped[:, :, 0] == 0).all()
    assert not torch.allclose(dropped, plain)
    torch.testing.assert_close(dropped, again, atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# Backend selection
# ----------------------------------------------------------------------------------------------------------


@dataclass
class KernelSpy:
    """Records which kernels ran; each spy delegates to the real kernel unless told to raise."""

    calls: list[str] = field(default_factory=list)
    masks: list[torch.Tensor | None] = field(default_factory=list)

    def wrap(
        self, name: str, real: Callable[..., torch.Tensor], error: Exception | None
    ) -> Callable[..., torch.Tensor]:
        def kernel(
            q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None, *rest: object
        ) -> torch.Tensor:
            self.calls.append(name)
            self.masks.append(attn_mask)
            if error is not None:
                raise error
            return real(q, k, v, attn_mask, *rest)

        return kernel


def install_spies(monkeypatch: pytest.MonkeyPatch, xformers_error: Exception | None = None) -> KernelSpy:
    """Replace every kernel by a spy, both in ``_KERNELS`` and as the module function of the same name, so the
    spies see the call whichever of the two the dispatcher uses. The xformers spy computes with the math
    kernel (or raises ``xformers_error``): testing the routing does not need real xformers."""
    spy = KernelSpy()
    real = {
        "sdpa": dispatch._sdpa_attention,
        "math": dispatch._math_attention,
        "xformers": dispatch._math_attention,
        "triton": dispatch._sdpa_attention,
    }
    for name in BACKENDS:
        kernel = spy.wrap(name, real[name], xformers_error if name == "xformers" else None)
        monkeypatch.setitem(dispatch._KERNELS, name, kernel)
        monkeypatch.setattr(dispatch, f"_{name}_attention", kernel)
    return spy


def small_qkv(
    seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return randn((1, 2, 5, 4), g, dtype), randn((1, 2, 6, 4), g, dtype), randn((1, 2, 6, 3), g, dtype)


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's shell may export the variable; every test here starts from automatic selection.
    monkeypatch.delenv(ENV_VAR, raising=False)


_UNSET = "<unset>"
_NO_CONTEXT = "<no use_backend>"


def expected_choice(argument: str | None, context: str | None, env: str, auto: str) -> str:
    """The documented precedence: argument, innermost use_backend, env var, then automatic selection."""
    if argument is not None:
        chosen = argument
    elif context != _NO_CONTEXT:
        chosen = "auto" if context is None else context
    elif env not in (_UNSET, ""):
        chosen = env
    else:
        chosen = "auto"
    return auto if chosen == "auto" else chosen


# On CPU "auto" means sdpa, which cannot tell an "auto" from an "sdpa" request; with xformers faked available,
# "auto" means xformers and every level of the precedence becomes observable.
@pytest.mark.parametrize("auto", ["sdpa", "xformers"])
@pytest.mark.parametrize("env", [_UNSET, "", "sdpa", "math", "auto"])
@pytest.mark.parametrize("context", [_NO_CONTEXT, None, "auto", "sdpa", "math"])
@pytest.mark.parametrize("argument", [None, "auto", "sdpa", "math"])
def test_selection_precedence(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    argument: str | None,
    context: str | None,
    env: str,
    auto: str,
) -> None:
    if auto == "xformers":
        request.getfixturevalue("xformers_everywhere")
    if env != _UNSET:
        monkeypatch.setenv(ENV_VAR, env)
    spy = install_spies(monkeypatch)
    q, k, v = small_qkv()
    want = expected_choice(argument, context, env, auto)
    with use_backend(context) if context != _NO_CONTEXT else contextlib.nullcontext():
        attention(q, k, v, backend=argument)
        reported = current_backend(q, k, v, backend=argument)
    assert spy.calls == [want]
    assert reported == want


@pytest.mark.parametrize("value", ["math", " MATH ", "Math\n"])
def test_env_var_is_trimmed_and_case_insensitive(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(ENV_VAR, value)
    spy = install_spies(monkeypatch)
    q, k, v = small_qkv()
    attention(q, k, v)
    assert spy.calls == ["math"]
    assert current_backend() == "math"


def test_nested_use_backend_restores_on_exit_and_on_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "math")
    assert current_backend() == "math"
    with use_backend("sdpa"):
        assert current_backend() == "sdpa"
        with use_backend("math"):
            assert current_backend() == "math"
            with use_backend(None):
                assert current_backend() == "sdpa"  # auto, despite the env var
            assert current_backend() == "math"
        assert current_backend() == "sdpa"
        with pytest.raises(KeyError), use_backend("math"):
            assert current_backend() == "math"
            raise KeyError("boom")
        assert current_backend() == "sdpa"
        # A rejected name must not leave anything behind either.
        with pytest.raises(ValueError), use_backend("nope"):
            pass
        assert current_backend() == "sdpa"
    assert current_backend() == "math"


def test_auto_on_cpu_picks_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = install_spies(monkeypatch)
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        q, k, v = small_qkv(dtype=dtype)
        assert current_backend(q, k, v) == "sdpa"
        attention(q, k, v)
    assert current_backend() == "sdpa"
    assert spy.calls == ["sdpa"] * 4


VALID_NAMES = ("auto", *BACKENDS)


def assert_lists_valid_names(message: str) -> None:
    for name in VALID_NAMES:
        assert repr(name) in message, f"{name!r} missing from: {message}"


unknown_names = st.text(
    alphabet=st.characters(codec="ascii", categories=("L", "N", "P")), min_size=1, max_size=12
).filter(lambda s: s.strip().lower() not in (*VALID_NAMES, ""))


@given(name=unknown_names)
def test_unknown_backend_names_are_rejected_with_the_valid_names(name: str) -> None:
    q, k, v = small_qkv()
    with pytest.raises(ValueError, match=re.escape(repr(name))) as from_argument:
        attention(q, k, v, backend=name)
    assert_lists_valid_names(str(from_argument.value))
    with pytest.raises(ValueError, match=re.escape(repr(name))) as from_current:
        current_backend(backend=name)
    assert_lists_valid_names(str(from_current.value))
    with pytest.raises(ValueError, match=re.escape("use_backend()")) as from_context, use_backend(name):
        pass
    assert_lists_valid_names(str(from_context.value))


@given(name=unknown_names)
def test_unknown_env_var_backend_is_rejected(name: str) -> None:
    q, k, v = small_qkv()
    # hypothesis forbids function-scoped fixtures per example, so patch the environment per example.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENV_VAR, name)
        with pytest.raises(ValueError, match=re.escape(ENV_VAR)) as error:
            attention(q, k, v)
    assert_lists_valid_names(str(error.value))


def test_available_backends_structure() -> None:
    statuses = available_backends()
    assert tuple(statuses) == BACKENDS
    for name, status in statuses.items():
        assert isinstance(status, BackendStatus)
        assert status.name == name
        assert status.available == (not status.reasons)
        assert all(isinstance(reason, str) and reason for reason in status.reasons)
    assert statuses["math"] == BackendStatus("math", True, ())
    assert statuses["sdpa"] == BackendStatus("sdpa", True, ())
    xformers_importable = dispatch._xformers_import_error() is None
    if not xformers_importable or not torch.cuda.is_available():
        assert not statuses["xformers"].available
        assert statuses["xformers"].reasons
    reasons = " ".join(statuses["xformers"].reasons)
    if not xformers_importable:
        assert "xformers" in reasons
    if not torch.cuda.is_available():
        assert "CUDA" in reasons


@pytest.mark.parametrize("built_with_cuda", [True, False])
def test_xformers_built_for_another_torch_is_reported_unavailable(
    monkeypatch: pytest.MonkeyPatch, built_with_cuda: bool
) -> None:
    """A wheel built for another torch / CUDA imports (with a warning) and then has no kernel at all: the
    dispatch must say so instead of listing xformers as usable (seen on an H200 with xformers 0.0.35: its
    operators that call PyTorch's kernels report themselves available and still refuse CUDA inputs)."""
    import types

    fake_ops, fake_cpp_lib = types.ModuleType("xformers.ops"), types.ModuleType("xformers._cpp_lib")
    fake_cpp_lib._built_with_cuda = built_with_cuda  # type: ignore[attr-defined]
    modules = {"xformers.ops": fake_ops, "xformers._cpp_lib": fake_cpp_lib}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: object() if name == "xformers" else None
    )
    monkeypatch.setattr(importlib, "import_module", lambda name, *args: modules[name])
    dispatch._xformers_import_error.cache_clear()
    try:
        error = dispatch._xformers_import_error()
    finally:
        monkeypatch.undo()
        dispatch._xformers_import_error.cache_clear()
    if built_with_cuda:
        assert error is None
    else:
        assert error is not None and "C++/CUDA extensions did not load" in error


@contextlib.contextmanager
def request_xformers(source: str) -> Iterator[str | None]:
    """Ask for xformers through ``source`` (the env var is set by the caller); yields the backend argument."""
    if source == "context":
        with use_backend("xformers"):
            yield None
    else:
        yield "xformers" if source == "argument" else None


@pytest.mark.parametrize("source", ["argument", "context", "env"])
def test_explicit_xformers_on_cpu_raises_with_every_reason(
    monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    q, k, v = small_qkv()
    if source == "env":
        monkeypatch.setenv(ENV_VAR, "xformers")
    with pytest.raises(AttentionBackendError) as error, request_xformers(source) as backend:
        attention(q, k, v, backend=backend)
    message = str(error.value)
    assert "'xformers'" in message
    assert "inputs are on 'cpu'" in message
    assert {"argument": "backend argument", "context": "use_backend()", "env": ENV_VAR}[source] in message
    if importlib.util.find_spec("xformers") is None:
        assert "not installed" in message
    if not torch.cuda.is_available():
        assert "no CUDA device" in message
    with pytest.raises(AttentionBackendError):
        current_backend(q, k, v, backend="xformers")


# ----------------------------------------------------------------------------------------------------------
# xformers routing with xformers faked as available
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def xformers_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend this machine has xformers and CUDA; the per-input checks (device, dtype) stay real."""
    real = dispatch._machine_reasons
    monkeypatch.setattr(dispatch, "_machine_reasons", lambda name: [] if name == "xformers" else real(name))


@pytest.fixture
def xformers_everywhere(monkeypatch: pytest.MonkeyPatch, xformers_machine: None) -> None:
    """Pretend xformers can also run these CPU inputs, so the routing can be observed with spies."""
    monkeypatch.setattr(dispatch, "_input_reasons", lambda name, q, v: [])


@pytest.mark.usefixtures("xformers_machine")
def test_xformers_machine_still_needs_cuda_inputs_and_a_supported_dtype(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert available_backends()["xformers"] == BackendStatus("xformers", True, ())
    spy = install_spies(monkeypatch)
    q, k, v = small_qkv(dtype=torch.float64)
    attention(q, k, v)
    assert spy.calls == ["sdpa"]
    with pytest.raises(AttentionBackendError) as error:
        attention(q, k, v, backend="xformers")
    message = str(error.value)
    assert "inputs are on 'cpu'" in message and "dtype torch.float64 is not supported" in message
    assert "not installed" not in message and "no CUDA device" not in message
    assert spy.calls == ["sdpa"]


@pytest.mark.usefixtures("xformers_everywhere")
@given(case=case_strategy(max_tokens=6, max_dim=4))
def test_auto_prefers_xformers_when_it_can_run(case: Case) -> None:
    with pytest.MonkeyPatch.context() as patch:
        spy = install_spies(patch)
        assert current_backend(case.q, case.k, case.v) == "xformers"
        out = package_attention(case)
        assert spy.calls == ["xformers"]
        # Whatever the mask, the kernel never sees a row without a key (that is what keeps NaN out).
        received = spy.masks[0]
        if received is not None:
            allowed = received if received.dtype == torch.bool else received != float("-inf")
            assert allowed.any(dim=-1).all()
        # The spy computes with the math kernel; the wrapper must still zero the empty rows.
        torch.testing.assert_close(out, reference_attention(case).float(), **FP32_TOL)


@pytest.mark.usefixtures("xformers_everywhere")
@given(case=case_strategy(max_tokens=6, max_dim=4))
def test_auto_falls_back_to_sdpa_when_xformers_has_no_kernel(case: Case) -> None:
    with pytest.MonkeyPatch.context() as patch:
        spy = install_spies(patch, xformers_error=NotImplementedError("no operator supports this input"))
        out = package_attention(case)
        assert spy.calls == ["xformers", "sdpa"]
    torch.testing.assert_close(out, package_attention(case, backend="sdpa"), atol=0, rtol=0)


@pytest.mark.usefixtures("xformers_everywhere")
@pytest.mark.parametrize("source", ["argument", "context", "env"])
def test_explicit_xformers_reraises_no_kernel_as_backend_error(
    monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    cause = NotImplementedError("no operator supports head_dim=4 here")
    spy = install_spies(monkeypatch, xformers_error=cause)
    if source == "env":
        monkeypatch.setenv(ENV_VAR, "xformers")
    q, k, v = small_qkv()
    with (
        pytest.raises(AttentionBackendError, match="no operator supports head_dim=4 here") as error,
        request_xformers(source) as backend,
    ):
        attention(q, k, v, backend=backend)
    assert error.value.__cause__ is cause
    assert spy.calls == ["xformers"]  # no silent fallback when xformers was asked for


@pytest.mark.usefixtures("xformers_everywhere")
def test_explicit_choice_beats_available_xformers(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = install_spies(monkeypatch)
    q, k, v = small_qkv()
    attention(q, k, v, backend="sdpa")
    with use_backend("math"):
        attention(q, k, v)
    monkeypatch.setenv(ENV_VAR, "sdpa")
    attention(q, k, v)
    assert spy.calls == ["sdpa", "math", "sdpa"]


def xformers_cuda_skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "xformers kernels need CUDA; this machine has none"
    if dispatch._xformers_import_error() is not None:
        return f"xformers cannot be used here: {dispatch._xformers_import_error()}"
    return None


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@given(data=st.data())
def test_xformers_matches_math_on_cuda(dtype: torch.dtype, data: st.DataObject) -> None:
    reason = xformers_cuda_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    case = data.draw(case_strategy(dtype=dtype))
    cuda = torch.device("cuda")
    case.q, case.k, case.v, case.grad_out = (t.to(cuda) for t in (case.q, case.k, case.v, case.grad_out))
    if case.attn_mask is not None:
        case.attn_mask = case.attn_mask.to(cuda)
    assert current_backend(case.q, case.k, case.v) == "xformers"
    out, grads = run_with_grads(package_attention, case, backend="xformers")
    math_out, math_grads = run_with_grads(package_attention, case, backend="math")
    assert_close_in_dtype(out, grads, math_out, math_grads, dtype)
    empty = reference_empty_rows(case).to(cuda)
    assert (out[empty] == 0).all()


# ----------------------------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------------------------


@given(
    dims=dims_strategy(),
    which=st.sampled_from("qkv"),
    rank=st.integers(0, 6).filter(lambda r: r != 4),
)
def test_wrong_rank_names_expected_and_received_shape(dims: Dims, which: str, rank: int) -> None:
    b, h, nq, nk, d, dv = (dims.batch, dims.heads, dims.n_queries, dims.n_keys, dims.head_dim, dims.value_dim)
    tensors = {"q": torch.zeros(b, h, nq, d), "k": torch.zeros(b, h, nk, d), "v": torch.zeros(b, h, nk, dv)}
    bad_shape = (
        tuple(tensors[which].shape[4 - rank :])
        if rank < 4
        else (1,) * (rank - 4) + tuple(tensors[which].shape)
    )
    tensors[which] = torch.zeros(bad_shape)
    expected = re.escape(f"{which} of shape (B, H, N, d) (4 dims), got {bad_shape}")
    with pytest.raises(ValueError, match=expected):
        attention(tensors["q"], tensors["k"], tensors["v"])


@given(dims=dims_strategy(), axis=st.sampled_from([0, 1, 3]), delta=st.integers(1, 3))
def test_key_shape_mismatch_names_expected_and_received_shape(dims: Dims, axis: int, delta: int) -> None:
    b, h, nq, nk, d = dims.batch, dims.heads, dims.n_queries, dims.n_keys, dims.head_dim
    q = torch.zeros(b, h, nq, d)
    k_shape = [b, h, nk, d]
    k_shape[axis] += delta
    k = torch.zeros(k_shape)
    v = torch.zeros(k_shape[0], k_shape[1], nk, dims.value_dim)
    expected = re.escape(f"(B={b}, H={h}, Nk, d={d}) to match q {(b, h, nq, d)}, got {tuple(k_shape)}")
    with pytest.raises(ValueError, match=expected):
        attention(q, k, v)


@given(dims=dims_strategy(), axis=st.sampled_from([0, 1, 2]), delta=st.integers(1, 3))
def test_value_shape_mismatch_names_expected_and_received_shape(dims: Dims, axis: int, delta: int) -> None:
    b, h, nq, nk, d, dv = (dims.batch, dims.heads, dims.n_queries, dims.n_keys, dims.head_dim, dims.value_dim)
    v_shape = [b, h, nk, dv]
    v_shape[axis] += delta
    expected = re.escape(f"({b}, {h}, {nk}, dv) to match k {(b, h, nk, d)}, got {tuple(v_shape)}")
    with pytest.raises(ValueError, match=expected):
        attention(torch.zeros(b, h, nq, d), torch.zeros(b, h, nk, d), torch.zeros(v_shape))


@pytest.mark.parametrize("which", ["k", "v"])
@pytest.mark.parametrize("other", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_dtype_mismatch_names_all_dtypes(which: str, other: torch.dtype) -> None:
    tensors = dict(zip("qkv", small_qkv(), strict=True))
    tensors[which] = tensors[which].to(other)
    dtypes = ", ".join(str(tensors[name].dtype) for name in "qkv")
    with pytest.raises(TypeError, match=re.escape(f"one dtype, got {dtypes}")):
        attention(tensors["q"], tensors["k"], tensors["v"])


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.int8], ids=str)
def test_integer_inputs_and_masks_are_rejected(dtype: torch.dtype) -> None:
    q, k, v = small_qkv()
    with pytest.raises(
        TypeError, match=re.escape("attn_mask of dtype torch.bool") + ".*" + re.escape(f"got {dtype}")
    ):
        attention(q, k, v, attn_mask=torch.ones(5, 6, dtype=dtype))
    with pytest.raises(TypeError, match=re.escape(f"floating-point q, got {dtype}")):
        attention(q.to(dtype), k, v)
    with pytest.raises(TypeError, match="attn_mask to be a Tensor or None, got list"):
        attention(q, k, v, attn_mask=[[True] * 6] * 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=re.escape("q to be a torch.Tensor, got ndarray")):
        attention(q.numpy(), k, v)  # type: ignore[arg-type]


@st.composite
def bad_mask_shapes(draw: st.DrawFn, dims: Dims) -> tuple[int, ...]:
    """Mask shapes that do not broadcast to (B, H, Nq, Nk): a wrong axis, or more than four axes."""
    full = [dims.batch, dims.heads, dims.n_queries, dims.n_keys]
    if draw(st.booleans(), label="too many axes"):
        return (*[1] * draw(st.integers(1, 2)), *full)
    rank = draw(st.integers(1, 4))
    shape = full[4 - rank :]
    axis = draw(st.integers(0, rank - 1))
    # Any size other than the true size or 1 breaks broadcasting along that axis.
    shape[axis] = draw(st.integers(2, 20).filter(lambda n: n != shape[axis]))
    return tuple(shape)


@given(data=st.data(), kind=st.sampled_from([torch.bool, torch.float32]))
def test_non_broadcastable_mask_names_expected_and_received_shape(
    data: st.DataObject, kind: torch.dtype
) -> None:
    dims = data.draw(dims_strategy())
    shape = data.draw(bad_mask_shapes(dims))
    full = (dims.batch, dims.heads, dims.n_queries, dims.n_keys)
    q = torch.zeros(dims.batch, dims.heads, dims.n_queries, dims.head_dim)
    k = torch.zeros(dims.batch, dims.heads, dims.n_keys, dims.head_dim)
    v = torch.zeros(dims.batch, dims.heads, dims.n_keys, dims.value_dim)
    expected = re.escape(f"broadcastable to (B, H, Nq, Nk) = {full}, got {shape}")
    with pytest.raises(ValueError, match=expected):
        attention(q, k, v, attn_mask=torch.zeros(shape, dtype=kind))


@given(
    dropout_p=st.one_of(
        st.floats(max_value=0.0, exclude_max=True),
        st.floats(min_value=1.0),
        st.just(float("nan")),
    )
)
def test_dropout_out_of_range_is_rejected(dropout_p: float) -> None:
    q, k, v = small_qkv()
    with pytest.raises(ValueError, match=re.escape(f"0 <= dropout_p < 1, got {dropout_p}")):
        attention(q, k, v, dropout_p=dropout_p)


@pytest.mark.parametrize("dropout_p", [True, "0.1", None])
def test_non_number_dropout_is_a_type_error(dropout_p: object) -> None:
    q, k, v = small_qkv()
    with pytest.raises(
        TypeError, match=f"dropout_p to be a float in \\[0, 1\\), got {type(dropout_p).__name__}"
    ):
        attention(q, k, v, dropout_p=dropout_p)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", [1, b"sdpa", ["math"]])
def test_non_str_backend_name_is_a_type_error(name: object) -> None:
    q, k, v = small_qkv()
    with pytest.raises(TypeError, match=f"must be a str or None, got {type(name).__name__}"):
        attention(q, k, v, backend=name)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="use_backend"), use_backend(name):  # type: ignore[arg-type]
        pass


def test_mask_on_another_device_is_rejected() -> None:
    q, k, v = small_qkv()
    with pytest.raises(ValueError, match=re.escape("attn_mask on cpu, got meta")):
        attention(q, k, v, attn_mask=torch.ones(5, 6, dtype=torch.bool, device="meta"))


# ----------------------------------------------------------------------------------------------------------
# Meta device and torch.compile
# ----------------------------------------------------------------------------------------------------------


@given(case=case_strategy(), backend=st.sampled_from([None, "sdpa", "math"]))
def test_meta_device_gives_the_right_shape(case: Case, backend: str | None) -> None:
    meta = torch.device("meta")
    mask = None if case.attn_mask is None else case.attn_mask.to(meta)
    out = attention(
        case.q.to(meta), case.k.to(meta), case.v.to(meta),
        attn_mask=mask, is_causal=case.is_causal, scale=case.scale, backend=backend,
    )  # fmt: skip
    assert out.device == meta
    assert out.dtype == case.q.dtype
    assert out.shape == (case.dims.batch, case.dims.heads, case.dims.n_queries, case.dims.value_dim)


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    # Compiled graphs bake in the backend choice; start and end each test with an empty cache.
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def compile_case(seed: int) -> Case:
    """Cross attention, dv != d, a float mask with a fully masked row, and causality: every branch at once."""
    g = torch.Generator().manual_seed(seed)
    dims = Dims(batch=2, heads=2, n_queries=5, n_keys=7, head_dim=4, value_dim=3)
    mask = make_mask("float", (2, 1, 5, 7), g, torch.float32, empty_row=True)
    return Case(
        dims,
        randn((2, 2, 5, 4), g),
        randn((2, 2, 7, 4), g),
        randn((2, 2, 7, 3), g),
        attn_mask=mask,
        is_causal=True,
        scale=0.7,
        grad_out=randn((2, 2, 5, 3), g),
    )


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("compile_backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("backend", [None, "sdpa", "math"])
def test_compiles_fullgraph_and_matches_eager(compile_backend: str, backend: str | None) -> None:
    case = compile_case(seed=3)

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return attention(q, k, v, attn_mask=mask, is_causal=True, scale=0.7, backend=backend)

    compiled = torch.compile(fn, fullgraph=True, backend=compile_backend)
    eager_out, eager_grads = run_with_grads(lambda c: fn(c.q, c.k, c.v, c.attn_mask), case)
    out, grads = run_with_grads(lambda c: compiled(c.q, c.k, c.v, c.attn_mask), case)
    torch.testing.assert_close(out, eager_out, **FP32_TOL)
    for got, want in zip(grads, eager_grads, strict=True):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, **FP32_TOL)


@pytest.mark.usefixtures("fresh_dynamo")
def test_compiles_fullgraph_inside_use_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    case = compile_case(seed=4)
    spy = install_spies(monkeypatch)

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return attention(q, k, v, attn_mask=mask, is_causal=True, scale=0.7)

    with use_backend("math"):
        out = torch.compile(fn, fullgraph=True, backend="eager")(case.q, case.k, case.v, case.attn_mask)
    # Dynamo traces through the spy, so the trace records which kernel the context selected.
    assert spy.calls == ["math"]
    torch.testing.assert_close(out, package_attention(case, backend="math"), **FP32_TOL)
