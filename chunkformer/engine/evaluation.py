"""Multi-view evaluation (section 4: 4 clips x 3 crops per video, scores averaged), sharded over ranks."""

from __future__ import annotations

import csv
from pathlib import Path

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

__all__ = ["evaluate", "write_predictions"]


def evaluate(
    model: nn.Module,
    config: TrainConfig,
    videos: VideoList,
    ctx: DistContext,
    device: torch.device,
    amp: torch.dtype | None,
    report_short: bool = True,
    predictions: Path | None = None,
) -> ClassificationMetrics:
    """Multi-view top-1, top-5, mean per-class accuracy and loss over the readable videos of ``videos``.

    Every rank calls it and gets the same metrics. Each video gets ``data.temporal_views`` clips x
    ``data.spatial_crops`` crops, and its score is the mean of their softmaxes; each rank scores every
    ``world``-th video, so each video counts once. Unreadable videos are excluded, logged and counted in
    the metrics. With ``report_short``, the number of videos shorter than a clip is logged. With
    ``predictions``, rank 0 writes each video's best classes there (``write_predictions``). The model's
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
    scores, labels, indices, failures, short = [], [], [], [], []
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
                indices.append(batch["index"])
            if bar:
                bar.update()
    if bar:
        bar.close()
    model.train(was_training)
    local = (
        torch.cat(scores) if scores else torch.zeros(0, videos.num_classes),
        torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long),
        torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long),
        failures,
        short,
    )
    parts = gather_objects(local, ctx)
    all_scores = torch.cat([p[0] for p in parts])
    all_labels = torch.cat([p[1] for p in parts])
    all_indices = torch.cat([p[2] for p in parts])
    unreadable = sorted((path, reason) for p in parts for _, path, reason in p[3])
    for path, reason in unreadable:
        log.warning(f"eval: unreadable video excluded: {path} ({reason})")
    num_short = sum(len(p[4]) for p in parts)
    if report_short and num_short:
        log.info(short_videos_message(config, "eval", num_short, len(videos)))
    if predictions is not None and ctx.main:
        write_predictions(predictions, videos, all_indices, all_scores)
    return classification_metrics(all_scores, all_labels, videos.num_classes, unreadable)


def write_predictions(
    path: Path, videos: VideoList, indices: torch.Tensor, scores: torch.Tensor, top_k: int = 5
) -> None:
    """Write one row per scored video, in list order, to the CSV file ``path``: ``path``, ``label`` (the
    class name), ``correct`` (1 when the best class is the label) and the ``min(top_k, num_classes)`` best
    classes with their scores (``class_1``, ``score_1``, ...). The file is replaced atomically.

    Shape:
        - indices: (N,) positions in ``videos``; scores: (N, num_classes) video scores
    """
    k = min(top_k, videos.num_classes)
    ranks = [f"{name}_{i}" for i in range(1, k + 1) for name in ("class", "score")]
    fields = ["path", "label", "correct", *ranks]
    best_scores, best = scores.topk(k, dim=1)
    order = indices.argsort()
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(fields)
        for row in order.tolist():
            record = videos.records[int(indices[row])]
            ranked = best[row].tolist()
            cells: list[object] = [record.path, videos.classes[record.label], int(ranked[0] == record.label)]
            for c, p in zip(ranked, best_scores[row].tolist(), strict=True):
                cells += [videos.classes[c], f"{p:.6f}"]
            writer.writerow(cells)
    tmp.replace(path)
