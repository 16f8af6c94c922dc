"""Whether Triton kernels can run here, and if not, why: Triton must import, and the inputs must be on CUDA,
or on CPU under Triton's interpreter (``TRITON_INTERPRET=1``).

Nothing here imports Triton at module import time: the attention dispatch asks these questions on every
machine, most of which have no Triton.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys

import torch

__all__ = [
    "INTERPRET_VAR",
    "interpreter_ready",
    "interpreting",
    "triton_device_reasons",
    "triton_import_error",
    "triton_reasons",
]

INTERPRET_VAR = "TRITON_INTERPRET"
"""Triton's environment variable: ``1`` runs kernels on CPU tensors through its numpy interpreter. It is
read when a kernel is decorated, Triton's own library (``tl.max``, ``tl.sum``) included, so it must be set
before Triton is first imported."""

_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def interpreting() -> bool:
    """Whether Triton kernels run through the interpreter (on CPU tensors) rather than compiled for a GPU."""
    return os.environ.get(INTERPRET_VAR, "").strip() == "1"


@functools.lru_cache(maxsize=1)
def interpreter_ready() -> bool:
    """Whether Triton's own library is (or, not yet imported, will be) decorated for the interpreter: set
    ``TRITON_INTERPRET=1`` after ``import triton`` and kernels fail inside ``tl.max``."""
    language = sys.modules.get("triton.language")
    if language is None:
        return interpreting()
    standard = getattr(language, "standard", None)
    return type(getattr(standard, "max", None)).__name__ == "InterpretedFunction"


def triton_import_error() -> str | None:
    """Import Triton once, on first need; return why it cannot be used, or None."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install 'chunkformer[triton]')"
    try:
        importlib.import_module("triton.language")
    except Exception as error:  # a broken install raises anything from ImportError to RuntimeError
        return f"triton is installed but `import triton.language` failed: {type(error).__name__}: {error}"
    return None


# Constant under torch.compile (Dynamo cannot trace the import and the interpreter probes, and their answers
# cannot change while the process runs), as the attention dispatch's machine reasons are.
@torch.compiler.assume_constant_result
def triton_reasons() -> list[str]:
    """Why this machine cannot run Triton kernels at all (empty: it can, on some device)."""
    reasons = []
    error = triton_import_error()
    if error is not None:
        reasons.append(error)
    if not torch.cuda.is_available() and not interpreting():
        reasons.append(
            f"no CUDA device is available and {INTERPRET_VAR} is not 1; Triton kernels run on CUDA, or on "
            "CPU through Triton's interpreter"
        )
    return reasons


@torch.compiler.assume_constant_result
def triton_device_reasons(device: torch.device | str, dtype: torch.dtype) -> list[str]:
    """Why Triton kernels cannot take tensors of ``dtype`` on ``device`` (machine reasons not included)."""
    device_type = torch.device(device).type
    reasons = []
    if device_type == "cpu":
        if not interpreting():
            reasons.append(f"inputs are on cpu; Triton kernels run there only with {INTERPRET_VAR}=1")
        elif not interpreter_ready():
            reasons.append(
                f"inputs are on cpu and {INTERPRET_VAR}=1, but Triton was imported before it was set; set it "
                "before anything imports triton"
            )
    elif device_type != "cuda":
        reasons.append(f"inputs are on {device_type!r}; Triton kernels need CUDA (or CPU, interpreted)")
    if dtype not in _TRITON_DTYPES:
        reasons.append(f"dtype {dtype} is not supported; Triton kernels take float16, bfloat16 or float32")
    return reasons
