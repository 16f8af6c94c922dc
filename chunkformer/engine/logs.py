"""What a run writes: ``train.log`` (and stdout), ``steps.csv``, ``epochs.csv``, TensorBoard, a progress
bar. Undefined values (a top-5 with 5 classes or fewer, a loss not computed) are empty CSV cells.

Only rank 0 writes; on other ranks every call does nothing. TensorBoard and tqdm are optional: without
them the CSV files and the log are still written.
"""

from __future__ import annotations

import csv
import logging
import math
import sys
from pathlib import Path
from typing import Any

from chunkformer.engine.distributed import DistContext

__all__ = ["RunLogs", "log", "progress_bar", "setup_logging"]

log = logging.getLogger("chunkformer.train")
"""The engine's logger; ``setup_logging`` sends it to ``train.log`` and stdout."""


def setup_logging(out_dir: Path, ctx: DistContext) -> logging.Logger:
    """Send ``log`` to ``out_dir/train.log`` (appended) and stdout on rank 0; silence it elsewhere."""
    log.handlers.clear()
    log.setLevel(logging.INFO)
    log.propagate = False
    if not ctx.main:
        log.addHandler(logging.NullHandler())
        return log
    out_dir.mkdir(parents=True, exist_ok=True)
    formatter = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    for handler in (logging.FileHandler(out_dir / "train.log"), logging.StreamHandler(sys.stdout)):
        handler.setFormatter(formatter)
        log.addHandler(handler)
    return log


class RunLogs:
    """Per-step and per-epoch rows as CSV files and TensorBoard scalars.

    A resumed run (``resume_step`` given) keeps the rows up to that step and replaces the later ones; a
    fresh run (``resume_step=None``) starts the files anew.
    """

    STEP_FIELDS = ("step", "epoch", "loss", "lr", "data_wait_share", "clips_per_s")
    EPOCH_FIELDS = (
        "epoch", "step", "train_loss", "val_loss", "val_top1", "val_top5", "val_mean_class", "val_videos",
        "val_unreadable", "train_unreadable", "data_wait_share", "clips_per_s", "seconds",
    )  # fmt: skip

    def __init__(self, out_dir: Path, ctx: DistContext, resume_step: int | None) -> None:
        self.enabled = ctx.main
        self.out_dir = out_dir
        self.writer = None
        if not self.enabled:
            return
        for name, fields in (("steps.csv", self.STEP_FIELDS), ("epochs.csv", self.EPOCH_FIELDS)):
            self._truncate(out_dir / name, resume_step, fields)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out_dir / "tb"), purge_step=resume_step)
        except ImportError:
            log.warning(
                "tensorboard is not installed: no TensorBoard logs (pip install 'chunkformer[video]')"
            )

    @staticmethod
    def _truncate(path: Path, resume_step: int | None, fields: tuple[str, ...]) -> None:
        # Rows are rewritten under today's columns, so a run resumed from an older version's files gets
        # the new columns empty instead of rows that do not match the header.
        if resume_step is None:
            path.unlink(missing_ok=True)
            return
        if not path.exists():
            return
        with path.open() as file:
            rows = list(csv.DictReader(file))
        with path.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(r for r in rows if int(r["step"]) <= resume_step)

    def _append(self, name: str, fields: tuple[str, ...], row: dict[str, Any]) -> None:
        path = self.out_dir / name
        new = not path.exists() or path.stat().st_size == 0
        with path.open("a", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fields)
            if new:
                writer.writeheader()
            writer.writerow({k: _cell(row.get(k, "")) for k in fields})

    def step(self, row: dict[str, Any]) -> None:
        """Append one optimizer step's row (keys: ``STEP_FIELDS``)."""
        if not self.enabled:
            return
        self._append("steps.csv", self.STEP_FIELDS, row)
        if self.writer:
            for key in ("loss", "lr", "data_wait_share", "clips_per_s"):
                self.writer.add_scalar(f"train/{key}", row[key], row["step"])

    def epoch(self, row: dict[str, Any]) -> None:
        """Append one epoch's row (keys: ``EPOCH_FIELDS``; validation columns may be missing)."""
        if not self.enabled:
            return
        self._append("epochs.csv", self.EPOCH_FIELDS, row)
        if self.writer:
            for key in ("train_loss", "val_loss", "val_top1", "val_top5", "val_mean_class"):
                if _cell(row.get(key, "")) != "":
                    self.writer.add_scalar(f"epoch/{key}", row[key], row["step"])
            self.writer.flush()

    def close(self) -> None:
        """Flush and close TensorBoard."""
        if self.writer:
            self.writer.close()


def _cell(value: Any) -> Any:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value


def progress_bar(total: int, desc: str, ctx: DistContext) -> Any | None:
    """A tqdm bar on rank 0 when stderr is a terminal (a disabled one otherwise); None without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    quiet = not ctx.main or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=quiet, leave=False, dynamic_ncols=True)
