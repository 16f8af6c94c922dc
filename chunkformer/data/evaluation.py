"""Multi-view scoring and classification metrics (top-1, top-5, per-class accuracy, log-likelihood)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

__all__ = ["ClassificationMetrics", "classification_metrics", "multiview_scores"]


def multiview_scores(logits: torch.Tensor) -> torch.Tensor:
    """Average of the per-view softmax probabilities (the paper's multi-view ensemble).

    Shape:
        - logits: (N, V, K) -> (N, K)
    """
    if logits.dim() != 3:
        raise ValueError(f"multiview_scores expects (N, V, K) logits, got {tuple(logits.shape)}")
    return logits.float().softmax(dim=-1).mean(dim=1)


@dataclass
class ClassificationMetrics:
    """Accuracy of video-level predictions.

    Attributes:
        top1: fraction of videos whose best class is right.
        top5: fraction whose right class is among the best five; NaN with 5 classes or fewer, where every
            video would count.
        per_class: accuracy per class index; NaN for classes without videos.
        mean_class: mean of the per-class accuracies over classes with videos.
        num_videos: videos the metric was computed over.
        num_unreadable: videos left out because they could not be read.
        unreadable: ``(path, reason)`` of each.
        nll: mean negative log-likelihood of the right class under the video scores (the validation loss
            of the predictions the accuracies score); NaN when not computed.
    """

    top1: float
    top5: float
    per_class: list[float]
    mean_class: float
    num_videos: int
    num_unreadable: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    nll: float = math.nan

    def summary(self) -> str:
        """One line: the accuracies (top-5 only when defined), the loss and the number of videos."""
        text = f"top-1 {100 * self.top1:.2f}%"
        if not math.isnan(self.top5):
            text += f"  top-5 {100 * self.top5:.2f}%"
        text += f"  mean class {100 * self.mean_class:.2f}%"
        if not math.isnan(self.nll):
            text += f"  loss {self.nll:.4f}"
        text += f" over {self.num_videos} videos"
        if self.num_unreadable:
            text += f" ({self.num_unreadable} unreadable videos excluded)"
        return text


def classification_metrics(
    scores: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    unreadable: list[tuple[str, str]] | None = None,
) -> ClassificationMetrics:
    """Top-1, top-5 and per-class accuracy of ``scores`` against ``labels``, and, when the scores are
    probabilities (rows summing to 1, as ``multiview_scores`` gives), their negative log-likelihood.

    Shape:
        - scores: (N, K); labels: (N,)
    """
    unreadable = unreadable or []
    if scores.shape[0] == 0:
        nan = float("nan")
        return ClassificationMetrics(nan, nan, [nan] * num_classes, nan, 0, len(unreadable), unreadable)
    k = min(5, scores.shape[1])
    top = scores.topk(k, dim=1).indices
    correct1 = top[:, 0] == labels
    top1 = correct1.float().mean().item()
    top5 = (top == labels[:, None]).any(dim=1).float().mean().item() if num_classes > 5 else math.nan
    nll = math.nan
    if scores.min() >= 0 and torch.allclose(scores.sum(dim=1), torch.ones(()), atol=1e-3):
        picked = scores.gather(1, labels[:, None]).squeeze(1).double()
        nll = (-picked.clamp_min(1e-12).log()).mean().item()
    per_class = []
    for c in range(num_classes):
        mask = labels == c
        per_class.append(correct1[mask].float().mean().item() if mask.any() else float("nan"))
    present = [a for a in per_class if a == a]
    mean_class = sum(present) / len(present)
    return ClassificationMetrics(
        top1, top5, per_class, mean_class, int(scores.shape[0]), len(unreadable), unreadable, nll
    )
