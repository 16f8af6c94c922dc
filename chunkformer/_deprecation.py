"""Renamed arguments and functions, accepted under their old names for one release with a FutureWarning.

FutureWarning rather than DeprecationWarning: Python shows it by default, so users (not only test runs) see
the new name before the old one is removed.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def renamed_kwargs(owner: str, **renames: str) -> Callable[[F], F]:
    """Accept each ``old=new`` keyword argument under its old name too, warning with a FutureWarning.

    Passing both names is a TypeError, as Python reports an argument given twice. Positional arguments are
    untouched (a renamed argument keeps its position).

    Example:
        >>> class Mlp:
        ...     @renamed_kwargs("Mlp", drop="proj_drop")
        ...     def __init__(self, proj_drop: float = 0.0) -> None:
        ...         self.proj_drop = proj_drop
    """

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(
                            f"{owner}: got both {new}= and its deprecated old name {old}=; pass only {new}="
                        )
                    warnings.warn(
                        f"{owner}: the argument {old}= is renamed {new}=; {old}= will be removed in the next "
                        "release",
                        FutureWarning,
                        stacklevel=2,
                    )
                    kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def renamed_function(func: F, old_name: str) -> F:
    """``func`` under its old name ``old_name``: the same call, with a FutureWarning naming the new name."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        warnings.warn(
            f"{old_name} is renamed {func.__name__}; {old_name} will be removed in the next release",
            FutureWarning,
            stacklevel=2,
        )
        return func(*args, **kwargs)

    wrapper.__name__ = wrapper.__qualname__ = old_name
    wrapper.__doc__ = f"Deprecated alias of ``{func.__name__}`` (removed in the next release)."
    return wrapper  # type: ignore[return-value]
