"""Shared test configuration: hypothesis profiles and deterministic torch settings."""

from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, settings

# `dev` explores; `ci` is derandomized, has no deadline and few examples so the suite stays fast on 2 cores.
settings.register_profile(
    "dev",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "ci",
    max_examples=10,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

# Triton reads TRITON_INTERPRET when it is first imported (its own tl.max and tl.sum are decorated then), and
# without CUDA its kernels run only through the interpreter: set it before any test module imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Test tensors are tiny: a second thread only adds synchronisation (milliseconds per op on a busy machine).
torch.set_num_threads(1)
