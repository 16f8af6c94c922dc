"""Activation checkpointing: exact gradients in training mode, also under autocast; torch.compile."""

from __future__ import annotations

import torch

from chunkformer.models import ShiftedChunkTransformer
from tests.models._tiny import tiny_model

REGULARISED = {"drop_rate": 0.1, "attn_drop_rate": 0.1, "drop_path_rate": 0.2}


def _twins() -> tuple[ShiftedChunkTransformer, ShiftedChunkTransformer]:
    torch.manual_seed(0)
    plain = tiny_model(**REGULARISED).train()
    twin = tiny_model(**REGULARISED).train()
    twin.load_state_dict(plain.state_dict())  # weights and LSH seeds / generator states
    return plain, twin


def _grads(model: ShiftedChunkTransformer, x: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1234)  # the global RNG drives dropout and drop path
    model(x).square().sum().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def test_checkpointing_gives_the_same_gradients_in_training() -> None:
    plain, checkpointed = _twins()
    checkpointed.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 2, 16, 16)
    # Two steps: the second checks that the LSH generators continue from the post-forward state.
    for _ in range(2):
        expected, got = _grads(plain, x), _grads(checkpointed, x)
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=0, msg=name)


def test_checkpointing_recomputes_with_the_forward_rotations() -> None:
    # Sanity check of the test above: training-mode LSH really draws new rotations per call, so a
    # recomputation without the saved generator states would see other ones.
    plain, _ = _twins()
    lsh = plain.stages[0].lsh_blocks[0].attn
    x = torch.randn(2, 2, 8, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(lsh(x), lsh(x))


def test_checkpointing_under_bf16_autocast() -> None:
    plain, checkpointed = _twins()
    checkpointed.set_grad_checkpointing(True)
    x = torch.randn(1, 3, 2, 16, 16)
    grads = []
    for model in (plain, checkpointed):
        torch.manual_seed(7)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        assert out.dtype == torch.bfloat16
        out.float().square().sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        assert torch.isfinite(grads[1][name]).all(), name
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=0, msg=name)


def test_compiled_equals_eager() -> None:
    torch.manual_seed(0)
    model = tiny_model().eval()
    x = torch.randn(2, 3, 2, 16, 16)
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)


def test_checkpointing_under_compile_gives_the_same_gradients() -> None:
    # Training mode: LSH draws fresh rotations every call, so this also checks the generator replay
    # survives torch.compile (the LSH blocks' checkpoint runs eagerly between compiled graphs).
    torch.manual_seed(0)
    plain = tiny_model().train()
    checkpointed = tiny_model().train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.set_grad_checkpointing(True)
    compiled = torch.compile(checkpointed, backend="aot_eager")
    x = torch.randn(2, 3, 2, 16, 16)
    for _ in range(2):
        plain.zero_grad(set_to_none=True)
        checkpointed.zero_grad(set_to_none=True)
        plain(x).square().sum().backward()
        compiled(x).square().sum().backward()
        for (name, expected), got in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
            torch.testing.assert_close(got.grad, expected.grad, atol=1e-6, rtol=0, msg=name)
