"""The training engine: configs and presets, the loop, multi-view evaluation, checkpoints, logs, DDP.

``recipes/train_kinetics.py`` is a command line over it; a training script of one's own can use the whole
run or its parts::

    from chunkformer.engine import preset, train

    config = preset("motion")                  # or k400, k600, ucf101, hmdb51, mit (Table 2)
    config.optim.epochs = 10
    config.run.out_dir = "runs/mine"
    result = train(config)                     # alone or under torchrun
    print(result.metrics.summary(), result.weights)

or, step by step (what ``train`` does)::

    from chunkformer.engine import TrainState, end_epoch, prepare_run, train_one_epoch
    from chunkformer.engine.distributed import DistContext
    from chunkformer.engine.logs import RunLogs

    run = prepare_run(config, DistContext(), torch.device("cpu"))
    state, logs = TrainState(), RunLogs(run.out_dir, run.ctx, resume_step=None)
    while state.epoch < config.optim.epochs:
        stats, _ = train_one_epoch(run, state, logs)
        metrics, checkpoint = end_epoch(run, state, logs, stats)

Modules: ``config`` (dataclasses and presets), ``builders``
(device, data, model, optimizer, schedule), ``loop`` (the loop),
``evaluation``, ``checkpoints`` (atomic writes, RNG
states), ``distributed``, ``logs``,
``dependencies`` and ``ablation`` (the ablation study).
"""

from chunkformer.engine.builders import (
    autocast_dtype,
    build_model,
    build_optimizer,
    build_scheduler,
    checkpoint_settings,
    clip_sampler,
    select_device,
    train_dataset,
    video_lists,
    warmup_cosine,
)
from chunkformer.engine.checkpoints import (
    atomic_save,
    capture_rng,
    list_checkpoints,
    load_training_state,
    read_run_config,
    restore_rng,
    save_training_checkpoint,
)
from chunkformer.engine.config import (
    PRESETS,
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    preset,
)
from chunkformer.engine.dependencies import MissingDependencyError, require
from chunkformer.engine.distributed import DistContext, init_distributed
from chunkformer.engine.evaluation import evaluate, write_predictions
from chunkformer.engine.logs import RunLogs
from chunkformer.engine.loop import (
    EpochProgress,
    EpochStats,
    RunResult,
    TrainingRun,
    TrainState,
    end_epoch,
    prepare_run,
    resume,
    save_state,
    train,
    train_one_epoch,
    train_step,
    write_run_description,
)

__all__ = [
    "PRESETS",
    "DataConfig",
    "DistContext",
    "EpochProgress",
    "EpochStats",
    "MissingDependencyError",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "RunLogs",
    "RunResult",
    "TrainConfig",
    "TrainState",
    "TrainingRun",
    "atomic_save",
    "autocast_dtype",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "capture_rng",
    "checkpoint_settings",
    "clip_sampler",
    "end_epoch",
    "evaluate",
    "init_distributed",
    "list_checkpoints",
    "load_training_state",
    "prepare_run",
    "preset",
    "read_run_config",
    "require",
    "restore_rng",
    "resume",
    "save_state",
    "save_training_checkpoint",
    "select_device",
    "train",
    "train_dataset",
    "train_one_epoch",
    "train_step",
    "video_lists",
    "warmup_cosine",
    "write_predictions",
    "write_run_description",
]
