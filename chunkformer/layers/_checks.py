"""Argument and input checks shared by the layers, so every error reads the same way.

A value of the wrong type raises TypeError, a value of the right type out of range (or a tensor of the
wrong shape) raises ValueError, as Python's built-ins do; every message names what was expected and what
was given.
"""

from __future__ import annotations

import torch


def check_int(value: object, name: str, owner: str) -> int:
    """TypeError unless ``value`` is an int (a bool is not: ``True`` as a size is a bug, not 1)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__} {value!r}")
    return value


def check_positive_int(value: object, name: str, owner: str) -> int:
    if check_int(value, name, owner) < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return value


def check_probability(value: float, name: str, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: {name} must be a float in [0, 1), got {type(value).__name__} {value!r}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{owner}: {name} must be a float in [0, 1), got {value!r}")
    return float(value)


def check_heads(dim: int, num_heads: int, owner: str) -> int:
    """Validate dim and num_heads and return the per-head width."""
    check_positive_int(dim, "dim", owner)
    check_positive_int(num_heads, "num_heads", owner)
    if dim % num_heads:
        raise ValueError(f"{owner}: dim ({dim}) must be divisible by num_heads ({num_heads})")
    return dim // num_heads


def check_input(
    x: object, owner: str, layouts: dict[int, str], channels: int | None = None, channel_axis: int = -1
) -> None:
    """Raise a ValueError naming the expected layouts when x has the wrong rank or channel size.

    Args:
        x: the input to check.
        owner: the layer name used in the message.
        layouts: accepted ranks mapped to their layout, e.g. ``{4: "(B, H, W, C)"}``.
        channels: the size the channel axis must have, when fixed.
        channel_axis: where the channel axis is.
    """
    expected = " or ".join(layouts.values())
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner} expects a torch.Tensor of shape {expected}, got {type(x).__name__}")
    if x.dim() not in layouts:
        raise ValueError(f"{owner} expects input of shape {expected}, got {tuple(x.shape)}")
    if channels is not None and x.shape[channel_axis] != channels:
        layout = layouts[x.dim()]
        raise ValueError(f"{owner} expects input of shape {layout} with C={channels}, got {tuple(x.shape)}")


def check_int_tuple(
    value: object, rank: int, name: str, owner: str, minimum: int = 1, axes: str | None = None
) -> tuple[int, ...]:
    """An int (used for every axis) or a sequence of ``rank`` ints, each >= ``minimum``, as a tuple.

    TypeError for anything that is not an int or a sequence of ints (a bool is not an int here), ValueError
    for a sequence of another length or a value below ``minimum``. ``axes`` names the axes in the message,
    e.g. ``"(t, h, w)"``.
    """
    layout = axes or f"{rank}-tuple"
    bound = "positive" if minimum == 1 else f">= {minimum}"
    expected = f"{owner}: {name} must be a {bound} int or a {layout} of them"

    def is_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if is_int(value):
        values: tuple[int, ...] = (value,) * rank  # type: ignore[assignment]
    elif isinstance(value, (tuple, list)) and all(is_int(v) for v in value):
        if len(value) != rank:
            raise ValueError(f"{expected}, got a {type(value).__name__} of length {len(value)}: {value!r}")
        values = tuple(value)
    else:
        raise TypeError(f"{expected}, got {type(value).__name__} {value!r}")
    if min(values) < minimum:
        raise ValueError(f"{expected}, got {value!r}")
    return values
