"""Multi-view evaluation (section 4: 4 clips x 3 crops per video, scores averaged), sharded over ranks."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from chunkformer.data import (
    ClassificationMetrics,
    EvalTransform,
    MultiViewDataset,
    VideoList,
    classification_metrics,
    collate_views,
    multiview_scores,
)
from chunkformer.engine.builders import clip_sampler, short_videos_message
from chunkformer.engine.config import TrainConfig
from chunkformer.engine.distributed import DistContext, gather_objects
from chunkformer.engine.logs import log, progress_bar

__all__ = ["evaluate"]


def evaluate(
    model: nn.Module,
    config: TrainConfig,
    videos: VideoList,
    ctx: DistContext,
    device: torch.device,
    amp: torch.dtype | None,
    report_short: bool = True,
) -> ClassificationMetrics:
    """Multi-view top-1, top-5 and mean per-class accuracy over the readable videos of ``videos``.

    Every rank calls it and gets the same metrics. Each video gets ``data.temporal_views`` clips x
    ``data.spatial_crops`` crops, and its score is the mean of their softmaxes; each rank scores every
    ``world``-th video, so each video counts once. Unreadable videos are excluded, logged and counted in
    the metrics. With ``report_short``, the number of videos shorter than a clip is logged. The model's
    train/eval mode is restored afterwards; the global RNG is not used.

    Shape:
        - model input: (V, 3, T, crop, crop) for V views; output: (V, num_classes)
    """
    data = config.data
    dataset = MultiViewDataset(
        videos, clip_sampler(config), EvalTransform(data.crop_size, data.spatial_crops), data.temporal_views,
        data.decode_time_limit, short_side=data.crop_size if data.decode_short_side else None,
    )  # fmt: skip
    shard = Subset(dataset, list(range(ctx.rank, len(dataset), ctx.world)))
    loader = DataLoader(
        shard, batch_size=data.eval_batch_size, num_workers=data.num_workers, collate_fn=collate_views,
        persistent_workers=False, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    was_training = model.training
    model.eval()
    scores, labels, failures, short = [], [], [], []
    bar = progress_bar(len(loader), "eval", ctx)
    with torch.no_grad(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        for batch in loader:
            failures += batch["failures"]
            short += batch["short"]
            if batch["views"] is not None:
                views = batch["views"].to(device, non_blocking=True)
                n, v = views.shape[:2]
                logits = model(views.flatten(0, 1)).float().view(n, v, -1)
                scores.append(multiview_scores(logits).cpu())
                labels.append(batch["label"])
            if bar:
                bar.update()
    if bar:
        bar.close()
    model.train(was_training)
    local = (
        torch.cat(scores) if scores else torch.zeros(0, videos.num_classes),
        torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long),
        failures,
        short,
    )
    parts = gather_objects(local, ctx)
    all_scores = torch.cat([p[0] for p in parts])
    all_labels = torch.cat([p[1] for p in parts])
    unreadable = sorted((path, reason) for p in parts for _, path, reason in p[2])
    for path, reason in unreadable:
        log.warning(f"eval: unreadable video excluded: {path} ({reason})")
    num_short = sum(len(p[3]) for p in parts)
    if report_short and num_short:
        log.info(short_videos_message(config, "eval", num_short, len(videos)))
    return classification_metrics(all_scores, all_labels, videos.num_classes, unreadable)
