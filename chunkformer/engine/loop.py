"""The training loop: ``train`` runs a whole configured run; ``prepare_run``,
``train_one_epoch``, ``train_step``, ``end_epoch`` and ``save_state`` are its parts.

A run is one process or one rank of a ``torchrun`` job (DDP: gloo on CPU, nccl on CUDA); only rank 0
writes files. Checkpoints hold everything needed to continue bit for bit on CPU: weights, optimizer,
scheduler, scaler, the position in the epoch and every rank's RNG states.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from chunkformer.data import ClassificationMetrics, ClipDataset, ResumableSampler, VideoList, collate_clips
from chunkformer.engine.builders import (
    augmentation_message,
    autocast_dtype,
    build_model,
    build_optimizer,
    build_scheduler,
    checkpoint_settings,
    fit_to_run,
    select_device,
    short_videos_message,
    train_dataset,
    video_lists,
)
from chunkformer.engine.checkpoints import (
    TRAIN_CONFIG_KEY,
    capture_rng,
    list_checkpoints,
    load_training_state,
    restore_rng,
    save_training_checkpoint,
)
from chunkformer.engine.config import TrainConfig
from chunkformer.engine.distributed import (
    DistContext,
    all_mean,
    all_sum,
    barrier,
    gather_objects,
    init_distributed,
)
from chunkformer.engine.evaluation import evaluate
from chunkformer.engine.logs import RunLogs, log, progress_bar, setup_logging
from chunkformer.models import ModelSpec, create_model, load_checkpoint, read_model_spec, save_checkpoint

__all__ = [
    "EpochProgress",
    "EpochStats",
    "RunResult",
    "TrainState",
    "TrainingRun",
    "end_epoch",
    "prepare_run",
    "resume",
    "save_state",
    "train",
    "train_one_epoch",
    "train_step",
    "write_run_description",
]

# Files of a finished or running training run, besides its ckpt-*.pt files.
_RUN_FILES = ("best.pt", "model.safetensors", "steps.csv", "epochs.csv")


@dataclasses.dataclass
class RunResult:
    """What a run produced (rank 0; other ranks get the same metrics).

    Attributes:
        metrics: the last multi-view evaluation (None when the run evaluated nothing).
        out_dir: the run's directory.
        checkpoint: the last training checkpoint written (or, for ``eval_only``, the one evaluated).
        weights: ``model.safetensors`` when the run finished its epochs.
        step_losses: the mean training loss over all ranks at each optimizer step of this process.
        seconds: wall-clock time of the run.
    """

    metrics: ClassificationMetrics | None
    out_dir: Path
    checkpoint: Path | None
    weights: Path | None
    step_losses: list[float]
    seconds: float


@dataclasses.dataclass
class EpochProgress:
    """One rank's sums over the steps of the current epoch so far (kept in mid-epoch checkpoints, so a run
    resumed mid-epoch logs the same epoch row as an uninterrupted one)."""

    loss_sum: float = 0.0
    loss_count: int = 0
    tried: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class TrainState:
    """Where training is: what a checkpoint restores besides weights, optimizer and RNG states."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    best: float = -1.0
    progress: EpochProgress = dataclasses.field(default_factory=EpochProgress)
    stopped: bool = False


@dataclasses.dataclass
class EpochStats:
    """One epoch of this process: seconds waiting for data and in whole steps, clips trained, and the number
    of unreadable videos met (over all ranks)."""

    started: float
    wait: float = 0.0
    compute: float = 0.0
    clips: float = 0.0
    unreadable: int = 0


@dataclasses.dataclass
class TrainingRun:
    """Everything ``prepare_run`` builds for a run: the model and its optimizer, the data, the logs."""

    config: TrainConfig
    ctx: DistContext
    device: torch.device
    amp: torch.dtype | None
    out_dir: Path
    model: nn.Module
    ddp: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    dataset: ClipDataset
    sampler: ResumableSampler
    val_videos: VideoList
    global_batch: int
    micro_batch: int
    steps_per_epoch: int
    loader_generator: torch.Generator
    step_losses: list[float] = dataclasses.field(default_factory=list)
    # Short videos are reported once per run (per process), for training and for evaluation.
    short_videos: set[str] = dataclasses.field(default_factory=set)
    reported: set[str] = dataclasses.field(default_factory=set)

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole schedule."""
        return self.steps_per_epoch * self.config.optim.epochs


def train(config: TrainConfig) -> RunResult:
    """Train (or, with ``run.eval_only``, evaluate) as ``config`` says; works alone or under ``torchrun``.

    Refuses an ``out_dir`` that holds another run unless ``run.resume``/``run.resume_from`` (continue it) or
    ``run.overwrite`` (replace it). Writes ``config.json`` and ``classes.txt`` at the start, ``train.log``
    (fatal errors included), ``steps.csv``, ``epochs.csv``, TensorBoard logs, ``predictions.csv`` (the last
    evaluation's per-video predictions), ``ckpt-<step>.pt`` (the last ``run.keep_last``), ``best.pt`` and,
    at the end, ``model.safetensors``; nothing outside ``run.out_dir``.

    Example::

        from chunkformer.engine import preset, train

        config = preset("motion")
        config.run.out_dir = "runs/motion-test"
        result = train(config)
        print(result.metrics.summary())
    """
    started = time.monotonic()
    short_side, crop = config.data.decode_short_side, config.data.crop_size
    if short_side is not None and short_side < crop:
        raise ValueError(
            f"data.decode_short_side must be at least data.crop_size ({crop}) or None, got {short_side}"
        )
    device = select_device(config)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    ctx = init_distributed(device, config.run.dist_timeout_s)
    try:
        if config.run.eval_only:
            return _evaluate_checkpoint(config, ctx, device, started)
        return _train(config, ctx, device, started)
    except BaseException as error:
        # The traceback goes to train.log too (once logging writes there), so a run that died on a
        # cluster says why in its own folder; the exception still propagates.
        if any(isinstance(h, logging.FileHandler) for h in log.handlers):
            trace = not isinstance(error, KeyboardInterrupt)
            log.error(f"fatal: {type(error).__name__}: {error}", exc_info=trace)
        raise
    finally:
        if ctx.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(config: TrainConfig, ctx: DistContext, device: torch.device, started: float) -> RunResult:
    run = prepare_run(config, ctx, device)
    path = _resume_path(config, run.out_dir)
    state = resume(run, path) if path is not None else TrainState()
    logs = RunLogs(run.out_dir, ctx, state.step if path is not None else None)
    optim = run.config.optim
    warmup = round(optim.warmup_epochs * run.steps_per_epoch)
    log.info(
        f"training {optim.epochs} epochs x {run.steps_per_epoch} steps, global batch {run.global_batch} "
        f"({ctx.world} ranks x {optim.accum_steps} accumulation x {run.micro_batch}), peak lr {optim.lr:g} "
        f"after {warmup} warm-up steps, then cosine decay"
    )
    metrics: ClassificationMetrics | None = None
    last_path: Path | None = None
    while state.epoch < optim.epochs and not state.stopped:
        times, saved = train_one_epoch(run, state, logs)
        last_path = saved or last_path
        if state.stopped and state.step_in_epoch < run.steps_per_epoch:
            break
        epoch_metrics, saved = end_epoch(run, state, logs, times)
        metrics = epoch_metrics or metrics
        last_path = saved or last_path
    logs.close()
    weights = None
    if ctx.main and not state.stopped:
        weights = run.out_dir / "model.safetensors"
        config_json = json.dumps(_plain(dataclasses.asdict(config)), default=str)
        save_checkpoint(run.model, weights, metadata={TRAIN_CONFIG_KEY: config_json})
    barrier(ctx)
    seconds = time.monotonic() - started
    if ctx.main:
        out_dir = run.out_dir
        log.info(f"done in {seconds:.1f}s")
        if metrics is not None:
            log.info(f"final multi-view validation: {metrics.summary()}")
        log.info(f"checkpoint: {last_path}")
        if weights:
            log.info(f"weights (safetensors, for create_model(..., checkpoint_path=...)): {weights}")
        log.info(
            f"logs: {out_dir / 'train.log'}, {out_dir / 'steps.csv'}, {out_dir / 'epochs.csv'}, "
            f"TensorBoard {out_dir / 'tb'}"
        )
    return RunResult(metrics, run.out_dir, last_path, weights, run.step_losses, seconds)


def _start(config: TrainConfig, ctx: DistContext, device: torch.device) -> tuple[Path, torch.dtype | None]:
    """Claim the output directory, set up logging and threads, seed the model init."""
    out_dir = Path(config.run.out_dir)
    if ctx.main:
        _claim_out_dir(config, out_dir)
    setup_logging(out_dir, ctx)
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    amp = autocast_dtype(config, device)
    torch.manual_seed(config.run.seed)  # same init on every rank (DDP also broadcasts it)
    return out_dir, amp


def _log_model(config: TrainConfig, ctx: DistContext, device: torch.device, amp: torch.dtype | None,
               model: nn.Module, train_videos: VideoList, val_videos: VideoList) -> None:  # fmt: skip
    log.info(
        f"model {config.model.name}: {sum(p.numel() for p in model.parameters()) / 1e6:.3f}M parameters, "
        f"{train_videos.num_classes} classes, {len(train_videos)} train / {len(val_videos)} val videos, "
        f"world {ctx.world}, device {device}, amp {amp}"
    )


def _evaluate_checkpoint(
    config: TrainConfig, ctx: DistContext, device: torch.device, started: float
) -> RunResult:
    out_dir = Path(config.run.out_dir)
    path = Path(config.run.checkpoint) if config.run.checkpoint else (list_checkpoints(out_dir) or [None])[-1]
    if path is None:
        raise FileNotFoundError(f"--run.eval-only: no --run.checkpoint and no checkpoint in {out_dir}")
    spec = read_model_spec(path)
    notes: list[str] = []
    if spec is not None:
        config, notes = checkpoint_settings(config, spec, path)
    out_dir, amp = _start(config, ctx, device)
    for note in notes:
        log.info(f"eval-only: from {path.name}: {note}")
    train_videos, val_videos = video_lists(config, ctx)
    if spec is None:
        # A file that does not say what it holds (a plain state dict): the flags must describe the model.
        log.info(f"eval-only: {path} records no model; building {config.model.name} from the flags")
        model = build_model(config, val_videos.num_classes)
        load_checkpoint(model, path)
    else:
        _check_classes(spec, val_videos, path)
        model = create_model(checkpoint_path=path)
    model = model.to(device)
    _log_model(config, ctx, device, amp, model, train_videos, val_videos)
    predictions = out_dir / f"predictions-{path.stem}.csv"
    metrics = evaluate(model, config, val_videos, ctx, device, amp, predictions=predictions)
    log.info(f"eval {path}: {metrics.summary()}")
    if ctx.main:
        log.info(f"per-video predictions: {predictions}")
    return RunResult(metrics, out_dir, path, None, [], time.monotonic() - started)


def _check_classes(spec: ModelSpec, videos: VideoList, path: Path) -> None:
    """A validation list must use the checkpoint's label space: the same class names, or integer labels
    within its classes. Otherwise every label would be scored against another class."""
    integer_names = videos.classes == [str(i) for i in range(videos.num_classes)]
    if spec.class_names is not None and not integer_names and videos.classes != spec.class_names:
        raise ValueError(
            f"--run.eval-only: {path} was trained on {spec.num_classes} classes {spec.class_names[:10]}"
            f"{' ...' if spec.num_classes > 10 else ''}; the validation list has {videos.num_classes} "
            f"classes {videos.classes[:10]}{' ...' if videos.num_classes > 10 else ''} "
            "(pass the training run's classes.txt as --data.classes)"
        )
    if videos.num_classes > spec.num_classes:
        raise ValueError(
            f"--run.eval-only: the validation list has {videos.num_classes} classes, more than the "
            f"{spec.num_classes} of the model in {path}"
        )


def prepare_run(config: TrainConfig, ctx: DistContext, device: torch.device) -> TrainingRun:
    """Build a run: output directory and logging, the video lists, the model on ``device`` (seeded with
    ``run.seed``), the training dataset and sampler, optimizer, schedule, gradient scaler and DDP wrapper.

    Raises:
        FileExistsError: ``run.out_dir`` holds another run and neither resume nor overwrite was asked.
        ValueError: the global batch does not split over ranks x accumulation steps, or the training
            videos do not fill one step.
    """
    out_dir, amp = _start(config, ctx, device)
    train_videos, val_videos = video_lists(config, ctx)
    config, notes = fit_to_run(config, ctx, len(train_videos))
    for note in notes:
        log.info(f"adapted to this run: {note}")
    model = build_model(config, train_videos.num_classes).to(device)
    spec = getattr(model, "model_spec", None)
    if isinstance(spec, ModelSpec):
        # The class names go with the weights, so a checkpoint says what its outputs mean.
        model.model_spec = dataclasses.replace(spec, class_names=list(train_videos.classes))
    _log_model(config, ctx, device, amp, model, train_videos, val_videos)
    if ctx.main:
        write_run_description(out_dir, config, train_videos.classes)
    optim = config.optim
    global_batch = config.global_batch()
    per_step = ctx.world * optim.accum_steps
    if global_batch % per_step:
        raise ValueError(f"batch {global_batch} is not divisible by world size x accum_steps = {per_step}")
    micro_batch = global_batch // per_step
    sampler = ResumableSampler(len(train_videos), ctx.world, ctx.rank, shuffle=True, seed=config.run.seed)
    steps_per_epoch = sampler.num_samples // micro_batch // optim.accum_steps
    if steps_per_epoch < 1:
        raise ValueError(f"{len(train_videos)} training videos do not fill one step of batch {global_batch}")
    dataset = train_dataset(config, train_videos)
    log.info(augmentation_message(config, dataset.flip_label_map, train_videos.classes))
    optimizer = build_optimizer(config, model)
    scheduler = build_scheduler(config, optimizer, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    ddp = model
    if ctx.world > 1:
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return TrainingRun(
        config=config, ctx=ctx, device=device, amp=amp, out_dir=out_dir, model=model, ddp=ddp,
        optimizer=optimizer, scheduler=scheduler, scaler=scaler,
        criterion=nn.CrossEntropyLoss(label_smoothing=optim.label_smoothing), dataset=dataset,
        sampler=sampler,
        val_videos=val_videos, global_batch=global_batch, micro_batch=micro_batch,
        steps_per_epoch=steps_per_epoch,
        # The loader's own generator keeps worker seeding off the global RNG (whose state checkpoints hold).
        loader_generator=torch.Generator().manual_seed(config.run.seed),
    )  # fmt: skip


def write_run_description(out_dir: Path, config: TrainConfig, classes: list[str]) -> None:
    """Write ``config.json`` (the resolved configuration, every field) and ``classes.txt`` (one class name
    per line, in label order) into ``out_dir``, so that the folder says how its run was made."""
    (out_dir / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2, default=str) + "\n")
    (out_dir / "classes.txt").write_text("".join(f"{name}\n" for name in classes))


def resume(run: TrainingRun, path: Path) -> TrainState:
    """Load the training checkpoint at ``path`` into ``run`` (weights, optimizer, scheduler, scaler, this
    rank's RNG states) and return where it stopped.

    Raises:
        ValueError: the checkpoint was written by a job with another number of ranks.
    """
    saved = load_training_state(path)
    run.model.load_state_dict(saved["model"])
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scheduler.load_state_dict(saved["scheduler"])
    run.scaler.load_state_dict(saved["scaler"])
    ctx = run.ctx
    if len(saved["rng"]) != ctx.world:
        raise ValueError(f"{path} was written by {len(saved['rng'])} ranks; this run has {ctx.world}")
    restore_rng(saved["rng"][ctx.rank])
    state = TrainState(saved["step"], saved["epoch"], saved["step_in_epoch"], saved["best"])
    if state.step_in_epoch > 0:
        # Checkpoints written before epoch_progress existed restart the epoch's sums.
        state.progress = EpochProgress(**saved.get("epoch_progress", [{}] * ctx.world)[ctx.rank])
    log.info(
        f"resumed from {path}: epoch {state.epoch}, step {state.step} ({state.step_in_epoch} into the epoch)"
    )
    return state


def save_state(run: TrainingRun, state: TrainState, is_best: bool) -> Path | None:
    """Write ``ckpt-<step>.pt`` (and ``best.pt`` when ``is_best``) on rank 0; every rank must call it, as
    it gathers the ranks' RNG states. Returns the path on rank 0, None elsewhere."""
    ctx = run.ctx
    rngs = gather_objects(capture_rng(), ctx)
    partial = gather_objects(dataclasses.asdict(state.progress) if state.step_in_epoch > 0 else {}, ctx)
    if not ctx.main:
        return None
    saved = {
        "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(), "step": state.step,
        "epoch": state.epoch, "step_in_epoch": state.step_in_epoch, "best": state.best, "rng": rngs,
        "epoch_progress": partial, "config": _plain(dataclasses.asdict(run.config)),
    }  # fmt: skip
    spec = getattr(run.model, "model_spec", None)
    if isinstance(spec, ModelSpec):
        saved["model_spec"] = spec.to_json()
    return save_training_checkpoint(saved, run.out_dir, state.step, run.config.run.keep_last, is_best)


def train_step(
    run: TrainingRun, state: TrainState, batches: Iterator[dict[str, Any]]
) -> tuple[float, float, float]:
    """One optimizer step over ``optim.accum_steps`` micro-batches from ``batches``: forward and backward
    under autocast (gradients synchronised on the last micro-batch only), gradient clipping, the optimizer
    and the schedule. Counts the micro-batches' videos and unreadable ones in ``state.progress``.

    Returns:
        (this rank's loss, seconds waiting for data, learning rate used).
    """
    optim, ctx, device, amp = run.config.optim, run.ctx, run.device, run.amp
    run.optimizer.zero_grad(set_to_none=True)
    step_loss = step_wait = 0.0
    for micro in range(optim.accum_steps):
        fetch = time.monotonic()
        batch = next(batches)
        step_wait += time.monotonic() - fetch
        progress = state.progress
        progress.failures += [(f.path, f.reason) for f in batch["failures"]]
        progress.tried += len(batch["label"]) + len(batch["failures"])
        progress.failed += len(batch["failures"])
        run.short_videos.update(batch["short"])
        video = batch["video"].to(device, non_blocking=True)
        label = batch["label"].to(device, non_blocking=True)
        sync = micro == optim.accum_steps - 1 or ctx.world == 1
        with run.ddp.no_sync() if not sync else contextlib.nullcontext():  # type: ignore[operator]
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = run.criterion(run.ddp(video), label) / optim.accum_steps
            run.scaler.scale(loss).backward()
        step_loss += loss.item()
    if optim.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), optim.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    lr = run.optimizer.param_groups[0]["lr"]
    run.scheduler.step()
    return step_loss, step_wait, lr


def train_one_epoch(run: TrainingRun, state: TrainState, logs: RunLogs) -> tuple[EpochStats, Path | None]:
    """Train from ``state`` to the end of its epoch (or to ``run.max_steps``, setting ``state.stopped``).

    Logs every step, checkpoints every ``run.save_every_steps`` steps and before stopping mid-epoch, and
    stops with an error on a non-finite loss or when more than ``data.max_unreadable_fraction`` of the
    videos tried this epoch were unreadable.

    Returns:
        The epoch's statistics, and the last checkpoint written (None if none).
    """
    config, ctx, device = run.config, run.ctx, run.device
    data, optim = config.data, config.optim
    run.sampler.set_epoch(state.epoch)
    run.sampler.set_start(state.step_in_epoch * optim.accum_steps * run.micro_batch)
    loader = DataLoader(
        run.dataset, batch_size=run.micro_batch, sampler=run.sampler, num_workers=data.num_workers,
        collate_fn=collate_clips, drop_last=True, generator=run.loader_generator, persistent_workers=False,
        pin_memory=device.type == "cuda",
    )  # fmt: skip
    run.ddp.train()
    times = EpochStats(started=time.monotonic())
    if state.step_in_epoch == 0:
        state.progress = EpochProgress()
    saved: Path | None = None
    bar = progress_bar(
        run.steps_per_epoch - state.step_in_epoch, f"epoch {state.epoch + 1}/{optim.epochs}", ctx
    )
    batches = iter(loader)
    while state.step_in_epoch < run.steps_per_epoch:
        step_start = time.monotonic()
        step_loss, step_wait, lr = train_step(run, state, batches)
        state.step += 1
        state.step_in_epoch += 1
        progress = state.progress
        counts = all_sum([step_loss, float(progress.tried), float(progress.failed)], ctx, device)
        loss = counts[0] / ctx.world
        run.step_losses.append(loss)
        elapsed = time.monotonic() - step_start
        times.wait += step_wait
        times.compute += elapsed
        times.clips += run.global_batch
        progress.loss_sum += loss
        progress.loss_count += 1
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at step {state.step}")
        if counts[1] >= 32 and counts[2] > data.max_unreadable_fraction * counts[1]:
            names = "; ".join(f"{p} ({r})" for p, r in progress.failures[:10])
            raise RuntimeError(
                f"{int(counts[2])} of {int(counts[1])} videos tried this epoch were unreadable (more than "
                f"{data.max_unreadable_fraction:.0%}): the data is broken. First ones on rank {ctx.rank}: "
                f"{names}"
            )
        row = {
            "step": state.step, "epoch": state.epoch + 1, "loss": loss, "lr": lr,
            "data_wait_share": all_mean(step_wait / max(elapsed, 1e-9), ctx, device),
            "clips_per_s": run.global_batch / max(elapsed, 1e-9),
        }  # fmt: skip
        logs.step(row)
        if bar:
            bar.update()
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.3g}", wait=f"{row['data_wait_share']:.0%}")
        if state.step % config.run.log_every == 0:
            log.info(
                f"epoch {state.epoch + 1} step {state.step}/{run.total_steps} loss {loss:.4f} lr {lr:.4g} "
                f"data wait {row['data_wait_share']:.0%} {row['clips_per_s']:.1f} clips/s"
            )
        at_limit = config.run.max_steps is not None and state.step >= config.run.max_steps
        every = config.run.save_every_steps
        if (every and state.step % every == 0) or at_limit:
            if state.step_in_epoch < run.steps_per_epoch:
                saved = save_state(run, state, False) or saved
        if at_limit:
            state.stopped = True
            break
    if bar:
        bar.close()
    del batches, loader
    # One entry per video: a video can fail more than once in an epoch, for other reasons.
    failures: dict[str, list[str]] = {}
    for path, reason in sorted(
        {tuple(f) for part in gather_objects(state.progress.failures, ctx) for f in part}
    ):
        failures.setdefault(path, []).append(reason)
    for path, reasons in failures.items():
        log.warning(f"train: unreadable video skipped: {path} ({'; '.join(reasons)})")
    times.unreadable = len(failures)
    if "train_short" not in run.reported:
        run.reported.add("train_short")
        short = set().union(*gather_objects(run.short_videos, ctx))
        if short:
            log.info(short_videos_message(config, "train", len(short), len(run.dataset)))
    return times, saved


def end_epoch(
    run: TrainingRun, state: TrainState, logs: RunLogs, times: EpochStats
) -> tuple[ClassificationMetrics | None, Path | None]:
    """Close a finished epoch: evaluate when ``run.eval_every`` (and after the
    last epoch) says so, write the epoch's row and a checkpoint (``best.pt`` too on a new best top-1).

    Returns:
        The evaluation's metrics (None if not evaluated) and the checkpoint written (None off rank 0).
    """
    config, ctx = run.config, run.ctx
    state.epoch += 1
    state.step_in_epoch = 0
    progress = state.progress
    row: dict[str, Any] = {
        "epoch": state.epoch, "step": state.step,
        "train_loss": progress.loss_sum / max(progress.loss_count, 1),
        "train_unreadable": times.unreadable, "data_wait_share": times.wait / max(times.compute, 1e-9),
        "clips_per_s": times.clips / max(times.compute, 1e-9), "seconds": time.monotonic() - times.started,
    }  # fmt: skip
    metrics = None
    is_best = False
    if state.epoch == config.optim.epochs or state.epoch % config.run.eval_every == 0:
        report_short = "eval_short" not in run.reported
        run.reported.add("eval_short")
        metrics = evaluate(
            run.model, config, run.val_videos, ctx, run.device, run.amp, report_short,
            predictions=run.out_dir / "predictions.csv",
        )  # fmt: skip
        row.update(
            val_loss=metrics.nll, val_top1=metrics.top1, val_top5=metrics.top5,
            val_mean_class=metrics.mean_class, val_videos=metrics.num_videos,
            val_unreadable=metrics.num_unreadable,
        )  # fmt: skip
        is_best = metrics.top1 > state.best
        state.best = max(state.best, metrics.top1)
        log.info(f"epoch {state.epoch}: train loss {row['train_loss']:.4f}; val {metrics.summary()}")
    logs.epoch(row)
    saved = save_state(run, state, is_best)
    if config.run.max_steps is not None and state.step >= config.run.max_steps:
        state.stopped = True
    return metrics, saved


def _resume_path(config: TrainConfig, out_dir: Path) -> Path | None:
    if config.run.resume_from:
        return Path(config.run.resume_from)
    if config.run.resume:
        found = list_checkpoints(out_dir)
        if not found:
            raise FileNotFoundError(f"--run.resume: no checkpoint in {out_dir}")
        return found[-1]
    return None


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


def _plain(value: Any) -> Any:
    # The config goes into a weights_only checkpoint: keep it to plain types.
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
