"""Every registered model takes a training step at its paper resolution: forward, backward, optimizer step.

The model tests elsewhere use tiny configs; LSH attention's kernels cut rounds into pieces by memory, so
the real models' shapes reach code paths the tiny ones never do (issue 23: SCT-S crashed in its first
training step at 224 x 224 with 4, 8 or 16 frames). A few seconds per model and clip length on 2 cores.
"""

from __future__ import annotations

import pytest
import torch

from chunkformer.models import create_model, list_models


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
    unchanged = [key for key, value in model.named_parameters() if torch.equal(value, before[key])]
    # A parameter the step leaves as it was got an exactly zero gradient: tolerated for a few (e.g. a
    # position embedding row no frame uses), never for most of the model.
    assert len(unchanged) <= len(before) // 20, (
        f"{len(unchanged)} of {len(before)} parameters unchanged: {unchanged[:5]}"
    )
