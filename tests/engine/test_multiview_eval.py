"""Multi-view evaluation against a plain reference written with loops: softmax per view, averaged over
temporal views x spatial crops per video, then top-1, top-5 and per-class accuracy over the readable
videos only; unreadable videos are excluded, listed and counted."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from chunkformer.data import (
    ClipSampler,
    EvalTransform,
    MultiViewDataset,
    VideoList,
    VideoRecord,
    classification_metrics,
    multiview_scores,
    read_video_list,
)
from chunkformer.engine import DistContext, evaluate, train, video_lists
from tests.engine.tiny_run import tiny_config


def _softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(x - top) for x in row]
    return [e / sum(exps) for e in exps]


def _reference_scores(logits: list[list[list[float]]]) -> list[list[float]]:
    """Per video: the mean over its views of the softmax of each view's logits."""
    out = []
    for views in logits:
        probs = [_softmax(view) for view in views]
        out.append([sum(p[k] for p in probs) / len(probs) for k in range(len(probs[0]))])
    return out


def _reference_metrics(scores: list[list[float]], labels: list[int], num_classes: int) -> dict[str, object]:
    ranked = [sorted(range(len(s)), key=lambda k: -s[k]) for s in scores]
    hit1 = [r[0] == y for r, y in zip(ranked, labels, strict=True)]
    hit5 = [y in r[:5] for r, y in zip(ranked, labels, strict=True)]
    per_class = []
    for c in range(num_classes):
        mine = [h for h, y in zip(hit1, labels, strict=True) if y == c]
        per_class.append(sum(mine) / len(mine) if mine else float("nan"))
    present = [a for a in per_class if not math.isnan(a)]
    return {
        "top1": sum(hit1) / len(hit1),
        "top5": sum(hit5) / len(hit5) if num_classes > 5 else math.nan,
        "nll": sum(-math.log(s[y]) for s, y in zip(scores, labels, strict=True)) / len(labels),
        "per_class": per_class,
        "mean_class": sum(present) / len(present),
        "num_videos": len(labels),
    }


def _same(a: list[float], b: list[float]) -> bool:
    return all(
        x == pytest.approx(y, abs=1e-6) or (math.isnan(x) and math.isnan(y))
        for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("num_classes", [3, 10])
def test_scores_and_metrics_match_the_loop_reference(num_classes: int) -> None:
    generator = torch.Generator().manual_seed(num_classes)
    logits = torch.randn(13, 6, num_classes, generator=generator) * 3
    labels = torch.randint(num_classes - 1, (13,), generator=generator)  # the last class has no videos
    scores = multiview_scores(logits)
    reference = _reference_scores(logits.tolist())
    assert scores.shape == (13, num_classes)
    assert scores.tolist() == [pytest.approx(r, abs=1e-6) for r in reference]
    metrics = classification_metrics(scores, labels, num_classes, [("gone.mp4", "file not found")])
    expected = _reference_metrics(reference, labels.tolist(), num_classes)
    assert (metrics.top1, metrics.top5, metrics.num_videos) == pytest.approx(
        (expected["top1"], expected["top5"], 13), nan_ok=True
    )
    assert metrics.nll == pytest.approx(expected["nll"], rel=1e-5)
    assert f"loss {expected['nll']:.4f}" in metrics.summary()
    assert math.isnan(metrics.per_class[-1]) and _same(metrics.per_class, expected["per_class"])
    assert metrics.mean_class == pytest.approx(expected["mean_class"])
    assert (
        metrics.num_unreadable == 1 and "over 13 videos (1 unreadable videos excluded)" in metrics.summary()
    )
    # Top-5 of 3 classes would count every video: undefined, and left out of the summary.
    assert math.isnan(metrics.top5) == (num_classes <= 5)
    assert ("top-5" in metrics.summary()) == (num_classes > 5)
    # Scores that are not probabilities (raw logits) have no likelihood.
    assert math.isnan(classification_metrics(logits.mean(dim=1), labels, num_classes).nll)


class _PixelLinear(nn.Module):
    """Logits that depend on every pixel of each view (a fixed random linear map), so that a view given to
    the wrong video or averaged in the wrong order changes the scores."""

    def __init__(self, clip_numel: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(
            torch.randn(clip_numel, num_classes, generator=torch.Generator().manual_seed(0)) * 0.05
        )

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return clips.flatten(1) @ self.weight


def test_engine_evaluation_matches_the_reference_and_excludes_unreadable_videos(tmp_path: Path) -> None:
    config = tiny_config(
        tmp_path,
        "run",
        **{
            "optim.epochs": 1,
            "run.max_steps": 1,
            "data.temporal_views": 2,
            "data.spatial_crops": 3,
            "data.eval_batch_size": 2,
            "data.num_workers": 0,
        },
    )
    train(config)  # generates the tiny motion data
    good = read_video_list(Path(config.data.data_root) / "val.txt").records[:5]
    (tmp_path / "empty.mp4").write_bytes(b"")
    shutil.copy(good[0].path, tmp_path / "copy_of_0.mp4")
    # With eval batches of 2, batch 2 is [empty, missing]: a batch with no readable video at all.
    paths = [
        good[0].path,
        good[1].path,
        str(tmp_path / "empty.mp4"),
        str(tmp_path / "missing.mp4"),
        good[2].path,
        str(tmp_path / "copy_of_0.mp4"),
        good[3].path,
        good[4].path,
    ]
    readable = [0, 1, 4, 5, 6, 7]
    num_classes = 8
    dataset = MultiViewDataset(
        VideoList([VideoRecord(p, 0) for p in paths], [str(c) for c in range(num_classes)]),
        ClipSampler(config.data.num_frames, config.data.frame_stride),
        EvalTransform(config.data.crop_size, 3),
        2,
    )
    model = _PixelLinear(3 * config.data.num_frames * config.data.crop_size**2, num_classes)
    # Reference scores, one video and one view at a time.
    logits = []
    for i in readable:
        views = dataset[i]["views"]
        assert views.shape[0] == 6  # 2 temporal views x 3 spatial crops
        with torch.no_grad():
            logits.append([model(view[None])[0].tolist() for view in views])
    scores = _reference_scores(logits)
    ranked = [sorted(range(num_classes), key=lambda k: -s[k]) for s in scores]
    # Labels chosen so each metric is non-trivial: right at top-1, right only within top-5, wrong.
    where = [0, 0, 2, 0, 7, 3]  # rank of the label among each readable video's scores
    labels = [r[w] for r, w in zip(ranked, where, strict=True)]
    label_of = dict(zip(readable, labels, strict=True))
    videos = VideoList(
        [VideoRecord(p, label_of.get(i, 0)) for i, p in enumerate(paths)],
        [str(c) for c in range(num_classes)],
    )
    metrics = evaluate(model, config, videos, DistContext(), torch.device("cpu"), None)

    expected = _reference_metrics(scores, labels, num_classes)
    assert metrics.num_videos == 6 and metrics.num_unreadable == 2
    assert sorted(Path(p).name for p, _ in metrics.unreadable) == ["empty.mp4", "missing.mp4"]
    assert (metrics.top1, metrics.top5) == pytest.approx((expected["top1"], expected["top5"]))
    assert (metrics.top1, metrics.top5) == pytest.approx((3 / 6, 5 / 6))  # by construction of the labels
    assert _same(metrics.per_class, expected["per_class"])
    assert metrics.mean_class == pytest.approx(expected["mean_class"])
    assert metrics.nll == pytest.approx(expected["nll"], rel=1e-5)
    assert "over 6 videos (2 unreadable videos excluded)" in metrics.summary()


def test_integer_label_lists_share_one_label_space(tmp_path: Path) -> None:
    from chunkformer.engine import preset

    for name in ("a.mp4", "b.mp4", "c.mp4"):
        (tmp_path / name).touch()
    (tmp_path / "train.txt").write_text("a.mp4 0\nb.mp4 2\n")
    (tmp_path / "val.txt").write_text("c.mp4 4\n")
    config = preset("k400")
    config.data.train, config.data.val = str(tmp_path / "train.txt"), str(tmp_path / "val.txt")
    train_videos, val_videos = video_lists(config, DistContext())
    assert train_videos.num_classes == val_videos.num_classes == 5
    # With a classes file, its length is the label space (no widening).
    (tmp_path / "classes.txt").write_text("\n".join("abcdef") + "\n")
    config.data.classes = str(tmp_path / "classes.txt")
    assert [videos.num_classes for videos in video_lists(config, DistContext())] == [6, 6]
