"""A tiny training run on generated motion videos, in-process or as a ``torchrun`` script.

``python -m torch.distributed.run --standalone --nproc-per-node 2 tests/engine/tiny_run.py SPEC`` where
``SPEC`` is JSON: ``{"root": ..., "out": ..., "overrides": {"optim.lr": 0.05, ...}, "fault": ...}``.
Rank 0 writes ``result.json`` (loss sequence and final metrics) to the run's ``out_dir``. ``fault``
``{"rank": 1, "after": 4, "kind": "stall" | "die"}`` makes that rank stall (sleep) or die (``os._exit``)
when it builds its ``after + 1``-th training sample, to check that the other ranks end with an error.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from chunkformer.engine import TrainConfig, preset


def tiny_config(root: str | Path, out: str, **overrides: Any) -> TrainConfig:
    """16 training / 8 validation videos of 10 frames at 16 x 16, 4-frame clips, batch 4, 2 epochs
    (8 steps), 2 x 1 test views, ``sct_tiny``, one thread. ``overrides``: ``{"section.field": value}``."""
    config = preset("motion")
    config.data.data_root = str(Path(root) / "motion")
    config.data.motion_train_per_class, config.data.motion_val_per_class = 2, 1
    config.data.motion_frames, config.data.motion_size = 10, 16
    config.data.crop_size, config.data.num_frames = 16, 4
    config.data.num_workers, config.data.temporal_views, config.data.spatial_crops = 0, 2, 1
    config.optim.epochs, config.optim.batch_size = 2, 4
    config.run.out_dir = str(Path(root) / out)
    config.run.threads = 1
    for dotted, value in overrides.items():
        section, name = dotted.split(".")
        if not hasattr(getattr(config, section), name):
            raise AttributeError(f"no config field {dotted}")
        setattr(getattr(config, section), name, value)
    return config


def _inject_fault(fault: dict[str, Any]) -> None:
    if int(os.environ.get("RANK", "0")) != fault["rank"]:
        return
    from chunkformer.data import ClipDataset

    real = ClipDataset.__getitem__
    calls = [0]

    def faulty(self: ClipDataset, key: Any) -> Any:
        calls[0] += 1
        if calls[0] > fault["after"]:
            if fault["kind"] == "die":
                os._exit(3)
            time.sleep(600)
        return real(self, key)

    ClipDataset.__getitem__ = faulty  # type: ignore[method-assign]


def main(spec: dict[str, Any]) -> None:
    import torch

    from chunkformer.engine import train

    torch.set_num_threads(1)
    if spec.get("fault"):
        _inject_fault(spec["fault"])
    result = train(tiny_config(spec["root"], spec["out"], **spec.get("overrides", {})))
    if int(os.environ.get("RANK", "0")) == 0:
        metrics = result.metrics
        summary = {
            "step_losses": result.step_losses,
            "metrics": None
            if metrics is None
            else {
                "top1": metrics.top1,
                "top5": metrics.top5,
                "per_class": metrics.per_class,
                "mean_class": metrics.mean_class,
                "num_videos": metrics.num_videos,
                "num_unreadable": metrics.num_unreadable,
            },
        }
        (result.out_dir / "result.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
