"""Mixed precision, gradient accumulation, gradient clipping, logs (CSV, TensorBoard, tqdm) and the decode
time limit in a real training run, each on the tiny motion run of ``tiny_run.py`` (8 steps or fewer)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import select
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from chunkformer.data import read_video_list
from chunkformer.engine import DistContext, build_model, load_training_state, train, video_lists
from chunkformer.engine.logs import progress_bar
from tests.engine.tiny_run import tiny_config

# No momentum, no weight decay: the first step is exactly -lr x (clipped) gradient.
_PLAIN_SGD = {"optim.optimizer": "sgd", "optim.lr": 0.05, "optim.momentum": 0.0, "optim.weight_decay": 0.0}

# The columns docs/recipes.md documents.
STEP_COLUMNS = ["step", "epoch", "loss", "lr", "data_wait_share", "clips_per_s"]
EPOCH_COLUMNS = [
    "epoch",
    "step",
    "train_loss",
    "val_loss",
    "val_top1",
    "val_top5",
    "val_mean_class",
    "val_videos",
    "val_unreadable",
    "train_unreadable",
    "data_wait_share",
    "clips_per_s",
    "seconds",
]


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open() as file:
        reader = csv.DictReader(file)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _weights_after_step_1(root: Path, out: str) -> dict[str, torch.Tensor]:
    return load_training_state(root / out / "ckpt-00000001.pt")["model"]


def test_bf16_autocast_on_cpu_trains_with_finite_loss(tmp_path: Path) -> None:
    reference = train(tiny_config(tmp_path, "fp32", **{"optim.epochs": 1}))
    result = train(tiny_config(tmp_path, "bf16", **{"optim.epochs": 1, "run.amp": "bf16"}))
    assert len(result.step_losses) == 4 and all(math.isfinite(x) for x in result.step_losses)
    assert result.metrics is not None and result.metrics.num_videos == 8
    assert "amp torch.bfloat16" in (tmp_path / "bf16" / "train.log").read_text()
    # Autocast really ran in bf16 (8 mantissa bits): same data and init, but not the fp32 numbers.
    assert result.step_losses != reference.step_losses
    assert result.step_losses == pytest.approx(reference.step_losses, abs=0.05)


def test_accumulation_gives_the_same_first_step_as_one_big_batch(tmp_path: Path) -> None:
    once = train(tiny_config(tmp_path, "batch4", **_PLAIN_SGD, **{"run.max_steps": 1}))
    twice = train(
        tiny_config(tmp_path, "accum2", **_PLAIN_SGD, **{"run.max_steps": 1, "optim.accum_steps": 2})
    )
    assert twice.step_losses == pytest.approx(once.step_losses, rel=1e-6)
    a, b = _weights_after_step_1(tmp_path, "batch4"), _weights_after_step_1(tmp_path, "accum2")
    config = tiny_config(tmp_path, "x")
    torch.manual_seed(config.run.seed)
    initial = build_model(config, 8).state_dict()
    moved = max((a[k] - initial[k]).abs().max().item() for k in a)
    assert moved > 1e-4  # the step did something, far above the tolerance below
    # Float32 sums in another order (2 micro-batch gradients of 2 clips vs one of 4): ~1e-8 here.
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_gradient_clipping_bounds_the_first_step(tmp_path: Path) -> None:
    clip = 1e-3
    # The step is measured as the difference of float32 weights, whose rounding adds about 8e-7 in norm (in
    # quadrature) at this model's size: lr 1 makes the step (about 2.5e-4) large enough for that to vanish.
    # (Measured with sct_tiny's 0.13M parameters: the step read 0.107 % too long at lr 0.05, 0.0025 % at
    # lr 1.)
    sgd = {**_PLAIN_SGD, "optim.lr": 1.0}
    clipped = train(tiny_config(tmp_path, "clipped", **sgd, **{"run.max_steps": 1, "optim.grad_clip": clip}))
    free = train(tiny_config(tmp_path, "free", **sgd, **{"run.max_steps": 1, "optim.grad_clip": 0.0}))
    assert clipped.step_losses == free.step_losses  # same forward pass
    config = tiny_config(tmp_path, "x")
    torch.manual_seed(config.run.seed)
    initial = build_model(config, 8).state_dict()

    def step_norm(out: str) -> float:
        after = _weights_after_step_1(tmp_path, out)
        return math.sqrt(sum(((after[k] - initial[k]).double() ** 2).sum().item() for k in after))

    lr = float(_rows(tmp_path / "clipped" / "steps.csv")[1][0]["lr"])
    # Plain SGD moves by lr x gradient; clipped to norm `clip`, the step's norm is lr x clip.
    assert step_norm("clipped") == pytest.approx(lr * clip, rel=1e-3)
    assert step_norm("free") > 10 * lr * clip  # unclipped, the gradient norm is far above the bound


def test_csv_and_tensorboard_logs_have_the_documented_columns(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(tiny_config(tmp_path, "run", **{"run.eval_every": 1}))
    fields, steps = _rows(tmp_path / "run" / "steps.csv")
    assert fields == STEP_COLUMNS
    assert [int(r["step"]) for r in steps] == list(range(1, 9))
    assert [float(r["loss"]) for r in steps] == pytest.approx(result.step_losses)
    assert all(0 <= float(r["data_wait_share"]) <= 1 and float(r["clips_per_s"]) > 0 for r in steps)
    fields, epochs = _rows(tmp_path / "run" / "epochs.csv")
    assert fields == EPOCH_COLUMNS
    assert [
        (r["epoch"], r["step"], r["val_videos"], r["val_unreadable"], r["train_unreadable"]) for r in epochs
    ] == [
        ("1", "4", "8", "0", "0"),
        ("2", "8", "8", "0", "0"),
    ]
    events = list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1
    accumulator = EventAccumulator(str(events[0]))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {
        "train/loss",
        "train/lr",
        "train/data_wait_share",
        "train/clips_per_s",
        "epoch/train_loss",
        "epoch/val_loss",
        "epoch/val_top1",
        "epoch/val_top5",
        "epoch/val_mean_class",
    } <= tags
    losses = accumulator.Scalars("train/loss")
    assert [e.step for e in losses] == list(range(1, 9))
    assert [e.value for e in losses] == pytest.approx(result.step_losses, rel=1e-6)
    assert [e.step for e in accumulator.Scalars("epoch/val_top1")] == [4, 8]
    assert [e.value for e in accumulator.Scalars("epoch/val_loss")] == pytest.approx(
        [float(r["val_loss"]) for r in epochs], rel=1e-6
    )
    assert result.metrics is not None and float(epochs[-1]["val_loss"]) == pytest.approx(result.metrics.nll)


def test_run_folder_describes_itself_and_predictions_match_the_metrics(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "run")
    result = train(config)
    out = tmp_path / "run"
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["name"] == "sct_tiny" and saved["data"]["num_frames"] == config.data.num_frames
    _, val = video_lists(config, DistContext())
    assert val.classes[0] == "right_slow"  # the motion data's class names, not indices
    assert (out / "classes.txt").read_text().splitlines() == val.classes
    fields, rows = _rows(out / "predictions.csv")
    assert fields[:3] == ["path", "label", "correct"] and fields[3:5] == ["class_1", "score_1"]
    assert len(fields) == 3 + 2 * 5  # 8 classes: the best five
    assert [r["path"] for r in rows] == [v.path for v in val.records]  # every video, in list order
    assert [r["label"] for r in rows] == [val.classes[v.label] for v in val.records]
    assert result.metrics is not None
    assert sum(int(r["correct"]) for r in rows) / len(rows) == pytest.approx(result.metrics.top1)
    for r in rows:
        scores = [float(r[f"score_{i}"]) for i in range(1, 6)]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-5
        assert int(r["correct"]) == (r["class_1"] == r["label"])


def test_a_fatal_error_is_written_to_train_log(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-list.txt")
    config = tiny_config(tmp_path, "run", **{"data.kind": "list", "data.train": missing, "data.val": missing})
    with pytest.raises(FileNotFoundError) as raised:
        train(config)
    text = (tmp_path / "run" / "train.log").read_text()
    assert "fatal: FileNotFoundError" in text and "Traceback" in text and str(raised.value) in text


class _FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_only_on_rank_0_and_a_tty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("tqdm")
    for stream, ctx, shown in (
        (_FakeTTY(), DistContext(), True),
        (_FakeTTY(), DistContext(1, 2), False),
        (io.StringIO(), DistContext(), False),
    ):
        monkeypatch.setattr("sys.stderr", stream)
        bar = progress_bar(3, "epoch 1/1", ctx)
        bar.update()
        bar.close()
        assert ("epoch 1/1" in stream.getvalue()) is shown
    monkeypatch.undo()
    # A whole run with stderr not a terminal writes no bar at all.
    train(tiny_config(tmp_path, "run"))
    out, err = capfd.readouterr()
    assert "it/s" not in err and "\r" not in err and "epoch 1/2:" not in err
    assert "final multi-view validation" in out  # the log lines still go to stdout


@pytest.fixture
def hang_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    """Opening a path added to the returned set blocks in a syscall (as FFmpeg on a stalled network read)
    until teardown, or at most 20 s so that a broken time limit fails the test instead of hanging it."""
    av = pytest.importorskip("av")
    paths: set[str] = set()
    read_end, write_end = os.pipe()
    real_open = av.open

    def open_that_hangs(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if str(path) in paths:
            select.select([read_end], [], [], 20.0)
            raise OSError("the simulated hang ended")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(av, "open", open_that_hangs)
    try:
        yield paths
    finally:
        os.close(write_end)
        os.close(read_end)


def test_a_hung_training_video_is_skipped_and_logged(tmp_path: Path, hang_on: set[str]) -> None:
    train(tiny_config(tmp_path, "warm", **{"optim.epochs": 1, "run.max_steps": 1}))  # generates the data
    hung = read_video_list(tmp_path / "motion" / "train.txt").records[5].path
    hang_on.add(hung)
    result = train(tiny_config(tmp_path, "run", **{"data.decode_time_limit": 0.5}))
    assert len(result.step_losses) == 8 and result.seconds < 30
    # Each epoch samples every training video once: the hung one is tried, cut off and counted each time
    # (in epoch 2 at once, while the epoch-1 call is still stuck).
    assert [r["train_unreadable"] for r in _rows(tmp_path / "run" / "epochs.csv")[1]] == ["1", "1"]
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"train: unreadable video skipped: {hung} (probe took longer than the 0.5s limit" in log
    assert result.metrics is not None and result.metrics.num_videos == 8  # validation files do not hang


def test_decode_short_side_reaches_both_datasets_and_is_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import chunkformer.engine.builders as builders
    import chunkformer.engine.evaluation as evaluation

    seen: dict[str, object] = {}
    real_clip, real_views = builders.ClipDataset, evaluation.MultiViewDataset

    def clip_dataset(*args, **kwargs):
        seen["train"] = kwargs.get("short_side")
        return real_clip(*args, **kwargs)

    def views_dataset(*args, **kwargs):
        seen["eval"] = kwargs.get("short_side")
        return real_views(*args, **kwargs)

    monkeypatch.setattr(builders, "ClipDataset", clip_dataset)
    monkeypatch.setattr(evaluation, "MultiViewDataset", views_dataset)
    config = tiny_config(tmp_path, "run", **{"data.decode_short_side": 24, "optim.epochs": 1})
    train(config)
    assert seen == {"train": 24, "eval": config.data.crop_size}
    with pytest.raises(
        ValueError, match=r"decode_short_side must be at least data.crop_size \(16\) or None, got 8"
    ):
        train(tiny_config(tmp_path, "bad", **{"data.decode_short_side": 8}))


@pytest.mark.parametrize("policy", ["clamp", "loop"])
def test_videos_shorter_than_a_clip_are_sampled_and_counted_once(tmp_path: Path, policy: str) -> None:
    # 3-frame videos, 4-frame clips: before the short-video policy every video was "unreadable".
    overrides = {"data.motion_frames": 3, "data.short_videos": policy, "optim.epochs": 2}
    result = train(tiny_config(tmp_path, "run", **overrides))
    assert len(result.step_losses) == 8 and result.metrics is not None and result.metrics.num_videos == 8
    log = (tmp_path / "run" / "train.log").read_text()
    other = "loop" if policy == "clamp" else "clamp"
    setting = f"\\(4 frames, stride 1\\): their clips .* \\(--data.short-videos {policy}; or {other}\\)"
    assert len(re.findall(f"train: 16 of 16 videos are shorter than a clip {setting}", log)) == 1
    assert len(re.findall(f"eval: 8 of 8 videos are shorter than a clip {setting}", log)) == 1
    assert "unreadable" not in log


def test_a_preset_too_large_for_the_data_and_machine_adapts_and_says_so(tmp_path: Path) -> None:
    # 16 training videos, batch 64, 2 epochs with 5 warm-up epochs, 64 loader workers.
    overrides = {"optim.batch_size": 64, "optim.warmup_epochs": 5.0, "data.num_workers": 64}
    result = train(tiny_config(tmp_path, "run", **overrides))
    log = (tmp_path / "run" / "train.log").read_text()
    assert "a global batch of 64 is more than the 16 training videos fill; using 16" in log
    assert "64 loader workers per rank on" in log
    assert "warming up over 1 epochs" in log
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["optim"]["batch_size"] == 16 and saved["optim"]["warmup_epochs"] == 1.0
    assert 1 <= saved["data"]["num_workers"] < 64
    _, steps = _rows(tmp_path / "run" / "steps.csv")
    assert len(steps) == len(result.step_losses) == 2  # one step of 16 per epoch
    # The peak is reached: the first step after the warm-up runs at the configured lr.
    assert max(float(r["lr"]) for r in steps) == pytest.approx(tiny_config(tmp_path, "x").optim.lr)
    assert "peak lr 0.001 after 1 warm-up steps" in log
