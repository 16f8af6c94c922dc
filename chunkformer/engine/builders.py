"""What a run is made of, built from its ``TrainConfig``: the device and
precision, the video lists and datasets, the model, the optimizer and the learning-rate schedule.

Each builder is usable on its own, e.g. to train a model of one's own with the recipe's data::

    from chunkformer.engine import build_optimizer, preset, train_dataset, video_lists
    from chunkformer.engine.distributed import DistContext

    config = preset("motion")
    train_videos, val_videos = video_lists(config, DistContext())
    dataset = train_dataset(config, train_videos)          # (clip, label) samples, augmented
    optimizer = build_optimizer(config, my_model)          # weight decay on matrices only
"""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.util
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from chunkformer.data import (
    ClipDataset,
    ClipSampler,
    MotionDatasetSpec,
    ResumableSampler,
    TrainTransform,
    VideoList,
    default_motion_root,
    ensure_motion_dataset,
    motion_flip_label_map,
    read_class_folders,
    read_flip_label_map,
    read_video_list,
    read_videos,
)
from chunkformer.engine.checkpoints import read_run_config
from chunkformer.engine.config import TrainConfig
from chunkformer.engine.distributed import DistContext, barrier
from chunkformer.engine.logs import log
from chunkformer.models import ModelSpec, create_model, list_models

__all__ = [
    "augmentation_message",
    "autocast_dtype",
    "short_videos_message",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "checkpoint_settings",
    "available_cpus",
    "clip_sampler",
    "fit_to_run",
    "flip_label_map",
    "import_model_modules",
    "select_device",
    "train_dataset",
    "video_lists",
    "warmup_cosine",
]


def select_device(config: TrainConfig) -> torch.device:
    """``run.device``: CUDA (this rank's ``LOCAL_RANK`` device) when asked or, with ``auto``, available."""
    if config.run.device == "cuda" or (config.run.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """``run.amp`` as a dtype for ``torch.autocast``; None runs in float32 (``auto``: fp16 on CUDA)."""
    amp = config.run.amp
    if amp == "auto":
        return torch.float16 if device.type == "cuda" else None
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def import_model_modules(config: TrainConfig) -> None:
    """Import ``model.import_module`` (a module name or a ``.py`` file), which registers models."""
    module = config.model.import_module
    if not module:
        return
    if module == "sct_tiny" and importlib.util.find_spec("sct_tiny") is None:
        # Configs of earlier versions named the recipes' own module; the model is now built in.
        log.info("model.import_module 'sct_tiny' is not needed: chunkformer.models registers sct_tiny")
        return
    if module.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(module).stem, module)
        if spec is None or spec.loader is None:
            raise ImportError(f"model.import_module: cannot import {module}")
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[Path(module).stem] = loaded
        spec.loader.exec_module(loaded)
    else:
        importlib.import_module(module)


def video_lists(config: TrainConfig, ctx: DistContext) -> tuple[VideoList, VideoList]:
    """The training and validation videos ``data`` describes (the motion data is generated on first use,
    by rank 0); invalid list lines are logged when ``data.drop_invalid`` drops them."""
    data = config.data
    if data.kind == "motion":
        root = Path(data.data_root) if data.data_root else default_motion_root(data.motion_variant)
        spec = MotionDatasetSpec(
            train_per_class=data.motion_train_per_class, val_per_class=data.motion_val_per_class,
            frames=data.motion_frames, size=data.motion_size, seed=config.run.seed,
            variant=data.motion_variant,
        )  # fmt: skip
        if ctx.main:
            started = time.monotonic()
            ensure_motion_dataset(root, spec)
            log.info(f"motion data ready at {root} ({time.monotonic() - started:.1f}s)")
        barrier(ctx)
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
        )  # fmt: skip
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


def clip_sampler(config: TrainConfig) -> ClipSampler:
    """Frame indices of a clip: ``data.num_frames`` frames ``data.frame_stride`` apart (at
    ``data.frame_rate`` when ``data.resample``), clamped or looped past a short video's end."""
    data = config.data
    fps = data.frame_rate if data.resample and data.frame_rate > 0 else None
    return ClipSampler(data.num_frames, data.frame_stride, fps, short_videos=data.short_videos)


def short_videos_message(config: TrainConfig, where: str, short: int, total: int) -> str:
    """The log line saying how many videos were shorter than a clip and what their clips are made of."""
    data = config.data
    what = "repeat their last frame" if data.short_videos == "clamp" else "start over from their first frame"
    other = "loop" if data.short_videos == "clamp" else "clamp"
    return (
        f"{where}: {short} of {total} videos are shorter than a clip ({data.num_frames} frames, stride "
        f"{data.frame_stride}): their clips {what} (--data.short-videos {data.short_videos}; or {other})"
    )


def train_dataset(config: TrainConfig, videos: VideoList) -> ClipDataset:
    """Random training clips of ``videos`` with the random resized crop and flip; a flipped clip's label
    goes through ``flip_label_map`` (the motion data's own map, or ``data.flip_label_map``'s pairs)."""
    data = config.data
    flip_map = flip_label_map(config, videos)
    return ClipDataset(
        videos, clip_sampler(config), TrainTransform(data.crop_size, tuple(data.scale), hflip=data.hflip),
        seed=config.run.seed, flip_label_map=flip_map, decode_time_limit=data.decode_time_limit,
        short_side=data.decode_short_side,
    )  # fmt: skip


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which job schedulers set), else the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def fit_to_run(config: TrainConfig, ctx: DistContext, num_videos: int) -> tuple[TrainConfig, list[str]]:
    """``config`` adapted to a dataset or machine smaller than its preset assumes, with one line per change
    for the log: a global batch larger than the training videos shrinks to what fills one step; more
    loader workers than the CPUs a rank has (less one for the training loop) are capped; a warm-up as long
    as the run is halved to half the run, so that the peak learning rate is reached.

    Raises:
        ValueError: fewer training videos per rank than accumulation steps (not even a batch of one).
    """
    config = copy.deepcopy(config)
    notes = []
    optim, data = config.optim, config.data
    per_step = ctx.world * optim.accum_steps
    per_rank = ResumableSampler(num_videos, ctx.world, 0, shuffle=False).num_samples
    global_batch = config.global_batch()
    if global_batch // per_step * optim.accum_steps > per_rank:
        micro = per_rank // optim.accum_steps
        if micro < 1:
            raise ValueError(
                f"{num_videos} training videos give {per_rank} per rank, fewer than optim.accum_steps "
                f"({optim.accum_steps}): not one step of batch 1 per rank"
            )
        optim.batch_size = micro * per_step
        notes.append(
            f"optim.batch_size: a global batch of {global_batch} is more than the {num_videos} training "
            f"videos fill; using {optim.batch_size} (lr unchanged at {optim.lr:g})"
        )
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world))
    cpus = available_cpus()
    most = max(cpus // max(local_world, 1) - 1, 1)
    if data.num_workers > most:
        notes.append(
            f"data.num_workers: {data.num_workers} loader workers per rank on {cpus} CPUs ({local_world} "
            f"rank(s) here); using {most}"
        )
        data.num_workers = most
    if optim.warmup_epochs > 0 and optim.warmup_epochs >= optim.epochs:
        warmup = optim.epochs / 2
        notes.append(
            f"optim.warmup_epochs: {optim.warmup_epochs:g} warm-up epochs in a {optim.epochs}-epoch run "
            f"would never reach the peak lr {optim.lr:g}; warming up over {warmup:g} epochs"
        )
        optim.warmup_epochs = warmup
    return config, notes


def flip_label_map(config: TrainConfig, videos: VideoList) -> list[int] | None:
    """The label of a flipped clip per label: the motion data's right <-> left map, the pairs of
    ``data.flip_label_map``, or None (a flip keeps the label)."""
    data = config.data
    if data.flip_label_map is not None:
        if data.kind == "motion":
            raise ValueError(
                "data.flip_label_map: the motion data has its own map; give it for list or folder data"
            )
        if not data.hflip:
            raise ValueError("data.flip_label_map needs the flip on: drop --data.no-hflip, or drop the map")
        return read_flip_label_map(data.flip_label_map, videos.classes)
    return motion_flip_label_map(data.motion_variant) if data.kind == "motion" else None


def augmentation_message(config: TrainConfig, flip_map: list[int] | None, classes: list[str]) -> str:
    """One log line saying what the training augmentation does to labels."""
    data = config.data
    crop = f"random resized crop {data.crop_size} (area {data.scale[0]:g}-{data.scale[1]:g})"
    if not data.hflip:
        return f"train augmentation: {crop}; no horizontal flip (--data.no-hflip)"
    if flip_map is None:
        return (
            f"train augmentation: {crop}, horizontal flip keeping labels (if a class depends on left/right, "
            "pass --data.no-hflip or --data.flip-label-map FILE)"
        )
    swaps = [f"{classes[a]} <-> {classes[b]}" for a, b in enumerate(flip_map) if a < b]
    shown = ", ".join(swaps[:4]) + (f" and {len(swaps) - 4} more" if len(swaps) > 4 else "")
    return f"train augmentation: {crop}, horizontal flip swapping {shown or 'no classes'}"


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """``model.name`` from the registry for ``num_classes`` classes and ``data.num_frames`` frames, with
    ``model.init``'s weights when given."""
    import_model_modules(config)
    if config.model.name not in list_models():
        raise ValueError(
            f"model.name: unknown model {config.model.name!r}; available: {', '.join(list_models())} "
            "(register your own in a module named by --model.import-module)"
        )
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
    )  # fmt: skip


# The data settings that define what a clip is: evaluating with others than the training run's would
# score the model on inputs it never saw (or, for num_frames and crop_size, not fit its embeddings).
_CLIP_FIELDS = ("num_frames", "frame_stride", "frame_rate", "crop_size")


def checkpoint_settings(config: TrainConfig, spec: ModelSpec, path: Path) -> tuple[TrainConfig, list[str]]:
    """``config`` with the model and the clip settings of the run that wrote ``path``: ``model.name``,
    ``data.num_frames`` and ``data.crop_size`` from ``spec``, ``data.frame_stride`` and ``data.frame_rate``
    from the run's recorded configuration when the file has one. Returns the new config and one line per
    setting changed, for the log."""
    config = copy.deepcopy(config)
    recorded = (read_run_config(path) or {}).get("data", {})
    wanted: dict[str, Any] = {key: recorded[key] for key in _CLIP_FIELDS if key in recorded}
    wanted["num_frames"] = spec.num_frames
    if "img_size" in spec.overrides:
        wanted["crop_size"] = spec.overrides["img_size"]
    notes = []
    if config.model.name != spec.name:
        notes.append(f"model.name {spec.name} (the config had {config.model.name})")
        config.model.name = spec.name
    for key, value in wanted.items():
        if getattr(config.data, key) != value:
            notes.append(f"data.{key} {value} (the config had {getattr(config.data, key)})")
            setattr(config.data, key, value)
    return config, notes


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW at ``optim.lr``; weight decay on parameters of 2+ dimensions only."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    groups = [
        {"params": decay, "weight_decay": config.optim.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    if config.optim.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.optim.lr)
    return torch.optim.SGD(groups, lr=config.optim.lr, momentum=config.optim.momentum)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    """The learning-rate factor at optimizer step ``step``: linear warmup from 1 / warmup_steps to 1, then
    cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def build_scheduler(
    config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """``warmup_cosine`` over ``optim.epochs``, with ``optim.warmup_epochs`` of warmup, stepped per
    optimizer step. The schedule is not part of the scheduler's state dict: a resumed run follows the
    config it is given (e.g. more epochs)."""
    total = steps_per_epoch * config.optim.epochs
    warmup = round(config.optim.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(warmup_cosine, total_steps=total, warmup_steps=warmup)
    )
