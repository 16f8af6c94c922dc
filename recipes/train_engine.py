"""The training engine: distributed set-up, data, the training loop, multi-view evaluation, checkpoints, logs.

Runs as one process or under ``torchrun`` (DDP: gloo on CPU, nccl on CUDA). Only rank 0 writes files.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import importlib
import importlib.util
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from chunkformer.data import (
    ClassificationMetrics,
    ClipDataset,
    ClipSampler,
    EvalTransform,
    MotionDatasetSpec,
    MultiViewDataset,
    ResumableSampler,
    TrainTransform,
    VideoList,
    classification_metrics,
    collate_clips,
    collate_views,
    default_motion_root,
    ensure_motion_dataset,
    motion_flip_label_map,
    multiview_scores,
    read_class_folders,
    read_video_list,
    read_videos,
)
from chunkformer.models import create_model, read_checkpoint, save_checkpoint
from train_checkpoint import capture_rng, list_checkpoints, load_training_state, restore_rng, save_training_checkpoint
from train_config import TrainConfig

__all__ = ["RunResult", "train"]

log = logging.getLogger("chunkformer.train")


@dataclasses.dataclass
class RunResult:
    """What a run produced (rank 0; other ranks get the same metrics)."""

    metrics: ClassificationMetrics | None
    out_dir: Path
    checkpoint: Path | None
    weights: Path | None
    step_losses: list[float]
    seconds: float


# --- distributed ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(config: TrainConfig, device: torch.device) -> Dist:
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Dist()
    backend = "nccl" if device.type == "cuda" else "gloo"
    # The timeout turns a dead or hung rank into an error on the others instead of a silent hang.
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=config.run.dist_timeout_s))
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _all_mean(value: float, ctx: Dist, device: torch.device) -> float:
    if ctx.world == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.item() / ctx.world


def _all_sum(values: list[float], ctx: Dist, device: torch.device) -> list[float]:
    if ctx.world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def _gather(obj: Any, ctx: Dist) -> list[Any]:
    if ctx.world == 1:
        return [obj]
    out: list[Any] = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def _barrier(ctx: Dist) -> None:
    if ctx.world > 1:
        dist.barrier()


# --- set-up ----------------------------------------------------------------------------------------------------


def _device(config: TrainConfig) -> torch.device:
    if config.run.device == "cuda" or (config.run.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _amp(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    amp = config.run.amp
    if amp == "auto":
        return torch.float16 if device.type == "cuda" else None
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def _setup_logging(out_dir: Path, ctx: Dist) -> None:
    log.handlers.clear()
    log.setLevel(logging.INFO)
    log.propagate = False
    if not ctx.main:
        log.addHandler(logging.NullHandler())
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    formatter = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    for handler in (logging.FileHandler(out_dir / "train.log"), logging.StreamHandler(sys.stdout)):
        handler.setFormatter(formatter)
        log.addHandler(handler)


def _import_models(config: TrainConfig) -> None:
    module = config.model.import_module
    if not module:
        return
    if module.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(module).stem, module)
        assert spec is not None and spec.loader is not None
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[Path(module).stem] = loaded
        spec.loader.exec_module(loaded)
    else:
        importlib.import_module(module)


def _video_lists(config: TrainConfig, ctx: Dist) -> tuple[VideoList, VideoList]:
    data = config.data
    if data.kind == "motion":
        root = Path(data.data_root) if data.data_root else default_motion_root(data.motion_variant)
        spec = MotionDatasetSpec(
            train_per_class=data.motion_train_per_class, val_per_class=data.motion_val_per_class,
            frames=data.motion_frames, size=data.motion_size, seed=config.run.seed, variant=data.motion_variant,
        )
        if ctx.main:
            started = time.monotonic()
            ensure_motion_dataset(root, spec)
            log.info(f"motion data ready at {root} ({time.monotonic() - started:.1f}s)")
        _barrier(ctx)
        classes = str(root / "classes.txt")
        return (
            read_video_list(root / "train.txt", classes=classes),
            read_video_list(root / "val.txt", classes=classes),
        )
    if not data.train and not config.run.eval_only or not data.val:
        raise ValueError(f"data.kind={data.kind!r} needs --data.train and --data.val")
    if data.kind == "folders":
        train = read_class_folders(data.train) if data.train else None
        val = read_class_folders(data.val, classes=train.classes if train else None)
        return train or val, val
    lists = []
    for path in (data.train or data.val, data.val):
        videos = read_videos(
            path, data.format, split=data.split, subset="test" if lists or not data.train else "train",
            root=data.root, classes=data.classes, same_classes_as=lists[0] if lists else None,
            drop_invalid=data.drop_invalid,
        )
        for dropped in videos.dropped:
            log.warning(f"dropped {path} line {dropped.line}: {dropped.reason}: {dropped.text!r}")
        if videos.dropped:
            log.warning(f"{path}: {len(videos.dropped)} invalid lines dropped")
        lists.append(videos)
    if data.classes is None and lists[0].num_classes != lists[1].num_classes:
        # Integer labels without a classes file: each list alone implies 1 + its largest label, and a split
        # that lacks the top classes would give the model and the metrics a smaller label space.
        shared = [str(i) for i in range(max(videos.num_classes for videos in lists))]
        for videos in lists:
            videos.classes = shared
    return lists[0], lists[1]


def _clip_sampler(config: TrainConfig) -> ClipSampler:
    data = config.data
    fps = data.frame_rate if data.resample and data.frame_rate > 0 else None
    return ClipSampler(data.num_frames, data.frame_stride, fps)


def _build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    kwargs: dict[str, Any] = {}
    if config.model.pass_img_size:
        kwargs["img_size"] = config.data.crop_size
    if config.model.dropout is not None:
        kwargs["head_drop_rate"] = config.model.dropout
    if config.model.drop_path_rate is not None:
        kwargs["drop_path_rate"] = config.model.drop_path_rate
    return create_model(
        config.model.name, num_classes=num_classes, num_frames=config.data.num_frames,
        checkpoint_path=config.model.init, checkpoint_filter=config.model.init_filter, **kwargs,
    )


def _lr_lambda(total_steps: int, warmup_steps: int):  # noqa: ANN202 - a closure for LambdaLR
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": config.optim.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    if config.optim.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.optim.lr)
    return torch.optim.SGD(groups, lr=config.optim.lr, momentum=config.optim.momentum)


# --- logs ------------------------------------------------------------------------------------------------------


class _Logs:
    """CSV files and TensorBoard on rank 0; nothing elsewhere."""

    STEP_FIELDS = ("step", "epoch", "loss", "lr", "data_wait_share", "clips_per_s")
    EPOCH_FIELDS = ("epoch", "step", "train_loss", "val_top1", "val_top5", "val_mean_class", "val_videos",
                    "val_unreadable", "train_unreadable", "data_wait_share", "clips_per_s", "seconds")

    def __init__(self, out_dir: Path, ctx: Dist, resume_step: int | None) -> None:
        self.enabled = ctx.main
        self.out_dir = out_dir
        self.writer = None
        if not self.enabled:
            return
        for name in ("steps.csv", "epochs.csv"):
            self._truncate(out_dir / name, resume_step)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out_dir / "tb"), purge_step=resume_step)
        except ImportError:
            log.warning("tensorboard is not installed: no TensorBoard logs (pip install 'chunkformer[video]')")

    @staticmethod
    def _truncate(path: Path, resume_step: int | None) -> None:
        # Rows logged after the checkpoint we resume from are replaced by the resumed run's rows.
        if resume_step is None:
            path.unlink(missing_ok=True)
            return
        if not path.exists():
            return
        with path.open() as file:
            rows = list(csv.DictReader(file))
        fields = rows[0].keys() if rows else None
        with path.open("w", newline="") as file:
            if fields:
                writer = csv.DictWriter(file, fieldnames=list(fields))
                writer.writeheader()
                writer.writerows(r for r in rows if int(r["step"]) <= resume_step)

    def _append(self, name: str, fields: tuple[str, ...], row: dict[str, Any]) -> None:
        path = self.out_dir / name
        new = not path.exists() or path.stat().st_size == 0
        with path.open("a", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fields)
            if new:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in fields})

    def step(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._append("steps.csv", self.STEP_FIELDS, row)
        if self.writer:
            for key in ("loss", "lr", "data_wait_share", "clips_per_s"):
                self.writer.add_scalar(f"train/{key}", row[key], row["step"])

    def epoch(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._append("epochs.csv", self.EPOCH_FIELDS, row)
        if self.writer:
            for key in ("train_loss", "val_top1", "val_top5", "val_mean_class"):
                if row.get(key) not in (None, ""):
                    self.writer.add_scalar(f"epoch/{key}", row[key], row["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def _progress(total: int, desc: str, ctx: Dist):  # noqa: ANN202 - a tqdm bar or a stand-in
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    quiet = not ctx.main or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=quiet, leave=False, dynamic_ncols=True)


# --- evaluation ------------------------------------------------------------------------------------------------


def evaluate(
    model: nn.Module, config: TrainConfig, videos: VideoList, ctx: Dist, device: torch.device, amp: torch.dtype | None
) -> ClassificationMetrics:
    """Multi-view top-1/top-5/per-class accuracy over the readable videos of ``videos`` (all ranks)."""
    data = config.data
    dataset = MultiViewDataset(
        videos, _clip_sampler(config), EvalTransform(data.crop_size, data.spatial_crops), data.temporal_views,
        data.decode_time_limit, short_side=data.crop_size if data.decode_short_side else None,
    )
    # Each rank takes every world-th video, no padding: each video is scored exactly once.
    shard = Subset(dataset, list(range(ctx.rank, len(dataset), ctx.world)))
    loader = DataLoader(
        shard, batch_size=data.eval_batch_size, num_workers=data.num_workers, collate_fn=collate_views,
        persistent_workers=False, generator=torch.Generator().manual_seed(0),  # keeps the global RNG untouched
    )
    was_training = model.training
    model.eval()
    scores, labels, indices, failures = [], [], [], []
    bar = _progress(len(loader), "eval", ctx)
    with torch.no_grad(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        for batch in loader:
            failures += batch["failures"]
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
        failures,
    )
    parts = _gather(local, ctx)
    all_scores = torch.cat([p[0] for p in parts])
    all_labels = torch.cat([p[1] for p in parts])
    unreadable = sorted((path, reason) for p in parts for _, path, reason in p[2])
    for path, reason in unreadable:
        log.warning(f"eval: unreadable video excluded: {path} ({reason})")
    return classification_metrics(all_scores, all_labels, videos.num_classes, unreadable)


# --- training --------------------------------------------------------------------------------------------------


def _resume_path(config: TrainConfig, out_dir: Path) -> Path | None:
    if config.run.resume_from:
        return Path(config.run.resume_from)
    if config.run.resume:
        found = list_checkpoints(out_dir)
        if not found:
            raise FileNotFoundError(f"--run.resume: no checkpoint in {out_dir}")
        return found[-1]
    return None


def train(config: TrainConfig) -> RunResult:
    """Train (or, with ``run.eval_only``, evaluate) as configured. Works under torchrun."""
    started = time.monotonic()
    short_side, crop = config.data.decode_short_side, config.data.crop_size
    if short_side is not None and short_side < crop:
        raise ValueError(f"data.decode_short_side must be at least data.crop_size ({crop}) or None, got {short_side}")
    device = _device(config)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    ctx = _init_distributed(config, device)
    try:
        return _train(config, ctx, device, started)
    finally:
        if ctx.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


_RUN_FILES = ("best.pt", "model.safetensors", "steps.csv", "epochs.csv")


def _claim_out_dir(config: TrainConfig, out_dir: Path) -> None:
    """A fresh run must not mix with, prune or overwrite an earlier run's checkpoints and logs: refuse an
    ``out_dir`` that holds one, unless asked to resume it or to replace it (``run.overwrite``)."""
    if config.run.eval_only or config.run.resume or config.run.resume_from:
        return
    found = list_checkpoints(out_dir) + [out_dir / name for name in _RUN_FILES if (out_dir / name).exists()]
    if not found:
        return
    if not config.run.overwrite:
        names = ", ".join(sorted(path.name for path in found))
        raise FileExistsError(
            f"{out_dir} already holds a training run ({names}); pass --run.resume to continue it, "
            "--run.overwrite to replace it, or choose another --run.out-dir"
        )
    for path in found:
        if path.suffix in (".pt", ".safetensors"):
            path.unlink(missing_ok=True)


def _train(config: TrainConfig, ctx: Dist, device: torch.device, started: float) -> RunResult:
    out_dir = Path(config.run.out_dir)
    if ctx.main:
        _claim_out_dir(config, out_dir)
    _setup_logging(out_dir, ctx)
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    _import_models(config)
    amp = _amp(config, device)
    torch.manual_seed(config.run.seed)  # same init on every rank (DDP also broadcasts it)
    train_videos, val_videos = _video_lists(config, ctx)
    model = _build_model(config, train_videos.num_classes).to(device)
    log.info(
        f"model {config.model.name}: {sum(p.numel() for p in model.parameters()) / 1e6:.3f}M parameters, "
        f"{train_videos.num_classes} classes, {len(train_videos)} train / {len(val_videos)} val videos, "
        f"world {ctx.world}, device {device}, amp {amp}"
    )

    if config.run.eval_only:
        path = Path(config.run.checkpoint) if config.run.checkpoint else (list_checkpoints(out_dir) or [None])[-1]
        if path is None:
            raise FileNotFoundError(f"--run.eval-only: no --run.checkpoint and no checkpoint in {out_dir}")
        state = read_checkpoint(path)
        model.load_state_dict(state, strict=True)
        metrics = evaluate(model, config, val_videos, ctx, device, amp)
        log.info(f"eval {path}: {metrics.summary()}")
        return RunResult(metrics, out_dir, path, None, [], time.monotonic() - started)

    data, optim = config.data, config.optim
    global_batch = config.global_batch()
    per_step = ctx.world * optim.accum_steps
    if global_batch % per_step:
        raise ValueError(f"batch {global_batch} is not divisible by world size x accum_steps = {per_step}")
    micro_batch = global_batch // per_step
    sampler = ResumableSampler(len(train_videos), ctx.world, ctx.rank, shuffle=True, seed=config.run.seed)
    micro_per_epoch = sampler.num_samples // micro_batch
    steps_per_epoch = micro_per_epoch // optim.accum_steps
    if steps_per_epoch < 1:
        raise ValueError(f"{len(train_videos)} training videos do not fill one step of batch {global_batch}")
    total_steps = steps_per_epoch * optim.epochs
    flip_map = motion_flip_label_map(data.motion_variant) if data.kind == "motion" else None
    dataset = ClipDataset(
        train_videos, _clip_sampler(config), TrainTransform(data.crop_size, tuple(data.scale), hflip=data.hflip),
        seed=config.run.seed, flip_label_map=flip_map, decode_time_limit=data.decode_time_limit,
        short_side=data.decode_short_side,
    )

    optimizer = _optimizer(config, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total_steps, round(optim.warmup_epochs * steps_per_epoch))
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if ctx.world > 1 else model

    step, epoch, step_in_epoch, best = 0, 0, 0, -1.0
    resume = _resume_path(config, out_dir)
    if resume is not None:
        state = load_training_state(resume)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step, epoch, step_in_epoch, best = state["step"], state["epoch"], state["step_in_epoch"], state["best"]
        if len(state["rng"]) != ctx.world:
            raise ValueError(f"{resume} was written by {len(state['rng'])} ranks; this run has {ctx.world}")
        restore_rng(state["rng"][ctx.rank])
        log.info(f"resumed from {resume}: epoch {epoch}, step {step} ({step_in_epoch} into the epoch)")
    logs = _Logs(out_dir, ctx, step if resume is not None else None)

    # What the epoch's log row sums over its steps, per rank: a run resumed mid-epoch continues the sums, so
    # its epochs.csv row equals an uninterrupted run's (wall-clock columns aside).
    progress = _EpochProgress()
    if resume is not None and step_in_epoch > 0:
        progress = _EpochProgress(**state.get("epoch_progress", [{}] * ctx.world)[ctx.rank])

    def checkpoint(is_best: bool) -> Path | None:
        rngs = _gather(capture_rng(), ctx)
        partial = _gather(dataclasses.asdict(progress) if step_in_epoch > 0 else {}, ctx)
        if not ctx.main:
            return None
        state = {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "step": step, "epoch": epoch, "step_in_epoch": step_in_epoch,
            "best": best, "rng": rngs, "epoch_progress": partial, "config": _plain(dataclasses.asdict(config)),
        }
        return save_training_checkpoint(state, out_dir, step, config.run.keep_last, is_best)

    # The loader's own generator keeps worker seeding off the global RNG (whose state the checkpoint holds).
    loader_generator = torch.Generator().manual_seed(config.run.seed)
    metrics: ClassificationMetrics | None = None
    last_path: Path | None = None
    step_losses: list[float] = []
    criterion = nn.CrossEntropyLoss(label_smoothing=optim.label_smoothing)
    log.info(
        f"training {optim.epochs} epochs x {steps_per_epoch} steps, global batch {global_batch} "
        f"({ctx.world} ranks x {optim.accum_steps} accumulation x {micro_batch}), lr {optim.lr}"
    )
    stop = False
    while epoch < optim.epochs and not stop:
        sampler.set_epoch(epoch)
        sampler.set_start(step_in_epoch * optim.accum_steps * micro_batch)
        loader = DataLoader(
            dataset, batch_size=micro_batch, sampler=sampler, num_workers=data.num_workers, collate_fn=collate_clips,
            drop_last=True, generator=loader_generator, persistent_workers=False,
            pin_memory=device.type == "cuda",
        )
        ddp.train()
        epoch_start = time.monotonic()
        wait = compute = 0.0
        clips = 0.0
        if step_in_epoch == 0:
            progress = _EpochProgress()
        bar = _progress(steps_per_epoch - step_in_epoch, f"epoch {epoch + 1}/{optim.epochs}", ctx)
        iterator = iter(loader)
        while step_in_epoch < steps_per_epoch:
            step_start = time.monotonic()
            step_wait = 0.0
            step_loss = 0.0
            optimizer.zero_grad(set_to_none=True)
            for micro in range(optim.accum_steps):
                fetch = time.monotonic()
                batch = next(iterator)
                step_wait += time.monotonic() - fetch
                progress.failures += [(f.path, f.reason) for f in batch["failures"]]
                progress.tried += len(batch["label"]) + len(batch["failures"])
                progress.failed += len(batch["failures"])
                video = batch["video"].to(device, non_blocking=True)
                label = batch["label"].to(device, non_blocking=True)
                sync = micro == optim.accum_steps - 1 or ctx.world == 1
                context = ddp.no_sync() if not sync else _nullcontext()
                with context:
                    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                        loss = criterion(ddp(video), label) / optim.accum_steps
                    scaler.scale(loss).backward()
                step_loss += loss.item()
            if optim.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            step += 1
            step_in_epoch += 1
            counts = _all_sum([step_loss, float(progress.tried), float(progress.failed)], ctx, device)
            global_loss = counts[0] / ctx.world
            step_losses.append(global_loss)
            elapsed = time.monotonic() - step_start
            wait += step_wait
            compute += elapsed
            clips += global_batch
            progress.loss_sum += global_loss
            progress.loss_count += 1
            if not math.isfinite(global_loss):
                raise FloatingPointError(f"loss is {global_loss} at step {step}")
            if counts[1] >= 32 and counts[2] > data.max_unreadable_fraction * counts[1]:
                names = "; ".join(f"{p} ({r})" for p, r in progress.failures[:10])
                raise RuntimeError(
                    f"{int(counts[2])} of {int(counts[1])} videos tried this epoch were unreadable (more than "
                    f"{data.max_unreadable_fraction:.0%}): the data is broken. First ones on rank {ctx.rank}: {names}"
                )
            row = {
                "step": step, "epoch": epoch + 1, "loss": global_loss, "lr": lr,
                "data_wait_share": _all_mean(step_wait / max(elapsed, 1e-9), ctx, device),
                "clips_per_s": global_batch / max(elapsed, 1e-9),
            }
            logs.step(row)
            if bar:
                bar.update()
                bar.set_postfix(loss=f"{global_loss:.3f}", lr=f"{lr:.3g}", wait=f"{row['data_wait_share']:.0%}")
            if step % config.run.log_every == 0:
                log.info(
                    f"epoch {epoch + 1} step {step}/{total_steps} loss {global_loss:.4f} lr {lr:.4g} "
                    f"data wait {row['data_wait_share']:.0%} {row['clips_per_s']:.1f} clips/s"
                )
            at_limit = config.run.max_steps is not None and step >= config.run.max_steps
            if (config.run.save_every_steps and step % config.run.save_every_steps == 0) or at_limit:
                if step_in_epoch < steps_per_epoch:
                    last_path = checkpoint(False) or last_path
            if at_limit:
                stop = True
                break
        if bar:
            bar.close()
        del iterator, loader
        # One entry per video: a video can fail more than once in an epoch (drawn again as a replacement),
        # with other reasons (e.g. the time limit, then "still stuck").
        all_failures: dict[str, list[str]] = {}
        for path, reason in sorted({tuple(f) for part in _gather(progress.failures, ctx) for f in part}):
            all_failures.setdefault(path, []).append(reason)
        for path, reasons in all_failures.items():
            log.warning(f"train: unreadable video skipped: {path} ({'; '.join(reasons)})")
        if stop and step_in_epoch < steps_per_epoch:
            break
        epoch += 1
        step_in_epoch = 0
        final = epoch == optim.epochs
        row = {
            "epoch": epoch, "step": step, "train_loss": progress.loss_sum / max(progress.loss_count, 1),
            "train_unreadable": len(all_failures), "data_wait_share": wait / max(compute, 1e-9),
            "clips_per_s": clips / max(compute, 1e-9), "seconds": time.monotonic() - epoch_start,
        }
        is_best = False
        if final or epoch % config.run.eval_every == 0:
            metrics = evaluate(model, config, val_videos, ctx, device, amp)
            row.update(val_top1=metrics.top1, val_top5=metrics.top5, val_mean_class=metrics.mean_class,
                       val_videos=metrics.num_videos, val_unreadable=metrics.num_unreadable)
            is_best = metrics.top1 > best
            best = max(best, metrics.top1)
            log.info(f"epoch {epoch}: train loss {row['train_loss']:.4f}; val {metrics.summary()}")
        logs.epoch(row)
        last_path = checkpoint(is_best) or last_path
        if config.run.max_steps is not None and step >= config.run.max_steps:
            stop = True
    logs.close()
    weights = None
    if ctx.main and not stop:
        weights = out_dir / "model.safetensors"
        save_checkpoint(model, weights)
    _barrier(ctx)
    seconds = time.monotonic() - started
    if ctx.main:
        log.info(f"done in {seconds:.1f}s")
        if metrics is not None:
            log.info(f"final multi-view validation: {metrics.summary()}")
        log.info(f"checkpoint: {last_path}")
        if weights:
            log.info(f"weights (safetensors, for create_model(..., checkpoint_path=...)): {weights}")
        log.info(f"logs: {out_dir / 'train.log'}, {out_dir / 'steps.csv'}, {out_dir / 'epochs.csv'}, TensorBoard {out_dir / 'tb'}")
    return RunResult(metrics, out_dir, last_path, weights, step_losses, seconds)


@dataclasses.dataclass
class _EpochProgress:
    """One rank's sums over the steps of the current epoch so far (kept in mid-epoch checkpoints)."""

    loss_sum: float = 0.0
    loss_count: int = 0
    tried: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


def _plain(value: Any) -> Any:
    # The config goes into a weights_only checkpoint: tuples and None are fine, but keep it to plain types.
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
