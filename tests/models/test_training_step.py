"""Every registered model takes a training step at its paper resolution: forward, backward, optimizer step.

The model tests elsewhere use tiny configs; LSH attention's kernels cut rounds into pieces by memory, so
the real models' shapes reach code paths the tiny ones never do (issue 23: SCT-S crashed in its first
training step at 224 x 224 with 4, 8 or 16 frames). A few seconds per model and clip length on 2 cores.
The attention zoo's models take theirs too (their tiny variants at their own 32 x 32).
"""

from __future__ import annotations

import fnmatch
import re

import pytest
import torch

from chunkformer.models import create_model, list_models

# Parameters a model's init cuts off from the loss on purpose, so the first step leaves them as they are:
# TimeSformer zeroes temporal_fc in every block but the first (each block starts as its image block), so the
# temporal attention and norm behind it get an exactly zero gradient until temporal_fc has moved.
ZERO_GRADIENT_AT_INIT = {"timesformer_*": r"blocks\.[1-9]\d*\.(temporal_norm1|temporal_attn)\."}


def _zero_at_init(name: str) -> re.Pattern[str] | None:
    patterns = [p for model, p in ZERO_GRADIENT_AT_INIT.items() if fnmatch.fnmatchcase(name, model)]
    return re.compile("|".join(patterns)) if patterns else None


@pytest.mark.parametrize("frames", [1, 4, 8])
@pytest.mark.parametrize("name", list_models())
def test_one_training_step_at_paper_resolution(name: str, frames: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, num_frames=frames).train()
    size = model.img_size
    clip = torch.randn(1, 3, frames, size, size, generator=torch.Generator().manual_seed(frames))
    before = {key: value.detach().clone() for key, value in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    loss = torch.nn.functional.cross_entropy(model(clip), torch.tensor([2]))
    loss.backward()
    optimizer.step()

    assert torch.isfinite(loss)
    missing = [key for key, value in model.named_parameters() if value.grad is None]
    assert not missing, f"parameters without a gradient: {missing[:5]}"
    broken = [key for key, value in model.named_parameters() if not torch.isfinite(value.grad).all()]
    assert not broken, f"non-finite gradients: {broken[:5]}"
    parameters = dict(model.named_parameters())
    gated = _zero_at_init(name)
    if gated is not None:
        cut_off = [key for key in before if gated.match(key)]
        assert cut_off, f"{name}: no parameter matches {gated.pattern}"
        nonzero = [key for key in cut_off if parameters[key].grad.any()]
        assert not nonzero, f"{name}: a gradient behind a zero-initialised temporal_fc: {nonzero[:5]}"
        before = {key: value for key, value in before.items() if key not in cut_off}
    unchanged = [key for key in before if torch.equal(parameters[key], before[key])]
    # A parameter the step leaves as it was got an exactly zero gradient: tolerated for a few (e.g. a
    # position embedding row no frame uses), never for most of the model.
    assert len(unchanged) <= len(before) // 20, (
        f"{len(unchanged)} of {len(before)} parameters unchanged: {unchanged[:5]}"
    )
