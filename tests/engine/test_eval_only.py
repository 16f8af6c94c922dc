"""``--run.eval-only``: the model and its clip settings come from the checkpoint, not from flags that
must repeat the training run's; a validation list in another label space is refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from chunkformer.engine import TrainConfig, preset, train
from chunkformer.models import create_model, save_checkpoint
from tests.engine.tiny_run import tiny_config


def _eval_config(tmp_path: Path, checkpoint: Path, out: str) -> TrainConfig:
    # The motion preset's own clip settings (8 frames, 32 x 32), not the tiny run's (4 frames, 16 x 16):
    # only the data location and the view counts are given.
    trained = tiny_config(tmp_path, "unused")
    config = preset("motion")
    config.data = dataclasses.replace(
        config.data, data_root=trained.data.data_root, motion_train_per_class=2, motion_val_per_class=1,
        motion_frames=10, motion_size=16, num_workers=0, temporal_views=2, spatial_crops=1,
    )  # fmt: skip
    config.run.eval_only, config.run.checkpoint = True, str(checkpoint)
    config.run.out_dir, config.run.threads = str(tmp_path / out), 1
    return config


def test_eval_only_rebuilds_the_model_from_the_checkpoint(tmp_path: Path) -> None:
    result = train(tiny_config(tmp_path, "run"))
    assert result.metrics is not None and result.weights is not None
    for checkpoint in (result.weights, result.checkpoint):  # model.safetensors, ckpt-<step>.pt
        assert checkpoint is not None
        evaluated = train(_eval_config(tmp_path, checkpoint, f"eval-{checkpoint.suffix[1:]}"))
        assert evaluated.metrics is not None
        assert (evaluated.metrics.top1, evaluated.metrics.nll) == pytest.approx(
            (result.metrics.top1, result.metrics.nll), rel=1e-5
        )
        out = Path(evaluated.out_dir)
        log = (out / "train.log").read_text()
        assert (
            "data.num_frames 4 (the config had 8)" in log and "data.crop_size 16 (the config had 32)" in log
        )
        assert (out / f"predictions-{checkpoint.stem}.csv").is_file()


def test_eval_only_refuses_a_list_in_another_label_space(tmp_path: Path) -> None:
    result = train(tiny_config(tmp_path, "run"))
    model = create_model(checkpoint_path=result.weights)
    names = model.model_spec.class_names
    assert names is not None and len(names) == 8
    model.model_spec.class_names = names[::-1]  # as if trained with the classes in another order
    other = tmp_path / "other.safetensors"
    save_checkpoint(model, other)
    with pytest.raises(ValueError, match=r"was trained on 8 classes .*classes\.txt"):
        train(_eval_config(tmp_path, other, "eval"))
