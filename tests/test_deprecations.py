"""Renamed arguments and functions: the old name still works for one release, with a FutureWarning that names
the new one; passing both names is a TypeError."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

from chunkformer.layers import ClipEncoder, LSHAttention, Mlp, PreNormBlock
from chunkformer.ops import window_padding_mask, window_valid_mask

# (builder, positional arguments, old name, new name, how to read the value back from the module)
RENAMED_ARGUMENTS: list[tuple[Callable[..., nn.Module], tuple, str, str, Callable[[nn.Module], object]]] = [
    (Mlp, (4,), "drop", "proj_drop", lambda m: m.drop1.p),
    (PreNormBlock, (4, nn.Identity()), "drop", "proj_drop", lambda m: m.mlp.drop2.p),
    (
        lambda *a, **k: ClipEncoder(*a, dim=4, depth=1, num_heads=2, mlp_dim=4, num_classes=2, **k),
        (4, 2),
        "dropout",
        "head_drop",
        lambda m: m.head[2].p,
    ),
    (lambda *a, **k: LSHAttention(*a, seed=0, **k), (8, 2), "causal", "is_causal", lambda m: m.is_causal),
]
IDS = ["Mlp.drop", "PreNormBlock.drop", "ClipEncoder.dropout", "LSHAttention.causal"]
VALUES = {"drop": 0.25, "dropout": 0.25, "causal": True}


@pytest.mark.parametrize(("build", "args", "old", "new", "read"), RENAMED_ARGUMENTS, ids=IDS)
def test_old_argument_name_warns_and_still_works(
    build: Callable[..., nn.Module], args: tuple, old: str, new: str, read: Callable[[nn.Module], object]
) -> None:
    value = VALUES[old]
    with pytest.warns(FutureWarning, match=rf"{old}= is renamed {new}=") as record:
        old_module = build(*args, **{old: value})
    # Attributed to the caller, so the warning points at the line to change.
    assert record[0].filename == __file__
    assert read(old_module) == value
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read(build(*args, **{new: value})) == value


@pytest.mark.parametrize(("build", "args", "old", "new", "read"), RENAMED_ARGUMENTS, ids=IDS)
def test_old_and_new_argument_names_together_are_a_type_error(
    build: Callable[..., nn.Module], args: tuple, old: str, new: str, read: Callable[[nn.Module], object]
) -> None:
    with pytest.raises(TypeError, match=rf"got both {new}= and its deprecated old name {old}="):
        build(*args, **{old: VALUES[old], new: VALUES[old]})


def test_renamed_arguments_keep_the_new_signature() -> None:
    assert "proj_drop" in inspect.signature(Mlp).parameters
    assert "proj_drop" in inspect.signature(PreNormBlock).parameters
    assert "head_drop" in inspect.signature(ClipEncoder).parameters
    assert "is_causal" in inspect.signature(LSHAttention).parameters


def test_lsh_attention_causal_attribute_reads_is_causal_with_a_warning() -> None:
    module = LSHAttention(8, 2, is_causal=True, seed=0)
    with pytest.warns(FutureWarning, match="LSHAttention.causal is now LSHAttention.is_causal"):
        assert module.causal
    assert module.is_causal and "is_causal=True" in repr(module)


def test_window_padding_mask_is_a_deprecated_alias_of_window_valid_mask() -> None:
    with pytest.warns(FutureWarning, match="window_padding_mask is renamed window_valid_mask"):
        old = window_padding_mask(5, 7, (2, 3))
    assert torch.equal(old, window_valid_mask(5, 7, (2, 3)))
    assert window_padding_mask.__name__ == "window_padding_mask"
