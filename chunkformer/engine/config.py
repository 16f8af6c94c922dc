"""Training configuration as dataclasses, and the presets.

The presets are Table 2 of the paper per dataset with section 4's optimisation (SGD momentum 0.9, cosine
schedule with warmup, 50 epochs, batch 32/16/8 for SCT-S/M/L, crop 224), and ``motion``, the small default
run (``sct_tiny`` on the built-in synthetic motion videos). Every field is a command-line flag of
``recipes/train_kinetics.py`` (``--optim.lr 0.1``); in Python, change the fields of ``preset``'s copy::

    from chunkformer.engine import preset, train

    config = preset("motion")
    config.optim.epochs = 5
    config.run.out_dir = "runs/short"
    result = train(config)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["DataConfig", "ModelConfig", "OptimConfig", "PRESETS", "RunConfig", "TrainConfig", "preset"]

# Section 4: "batch size of 32, 16 and 8 for SCT-S, SCT-M and SCT-L".
PAPER_BATCH = {"sct_s": 32, "sct_m": 16, "sct_l": 8}


@dataclass
class DataConfig:
    """Where the videos are and how clips are made.

    Attributes:
        kind: ``motion`` (built-in synthetic data, generated on first use), ``list`` (``path label``
            files) or ``folders`` (``<root>/<class>/<video>``: ``.mp4``, ``.avi``, ``.mkv``, ``.webm``,
            ``.mov``, ``.m4v``, ``.mpg``, ``.mpeg``).
        train: training list file (``list``) or folder tree (``folders``).
        val: validation list file or folder tree.
        root: directory relative list paths are resolved against (default: the list's directory).
        classes: classes file (one name per line), needed when list labels are names.
        format: the ``list`` files' format: ``list`` (``path label`` lines, whitespace or comma),
            ``kinetics_csv`` (official Kinetics annotations, clips found under ``root``), ``ucf101``
            (``trainlist0N.txt`` / ``testlist0N.txt`` with ``classInd.txt`` beside, or their folder),
            ``hmdb51`` (the folder of ``<class>_test_split<N>.txt``), or ``auto`` (detected from the files).
            A folder given as both train and val gives the split's train videos to train, its test videos
            to val.
        split: UCF101/HMDB51 split number 1-3 (default 1; a UCF101 split file names its own).
        data_root: where the motion data is generated (default ``~/.cache/chunkformer/motion-v1``).
        num_frames: T, frames per clip (paper: 24).
        frame_stride: distance between clip frames (Table 2's stride).
        short_videos: clip frames past the end of a video shorter than a clip's span: ``clamp`` repeats
            its last frame (PySlowFast), ``loop`` starts over from its first (mmaction2); in training and
            evaluation alike. How many videos were short is logged once per run.
        frame_rate: Table 2's frame rate; the stride is counted at this rate when ``resample`` is set.
        resample: count the stride at ``frame_rate`` (converted with each video's own fps) instead of in
            source frames.
        crop_size: training crop and evaluation crop side.
        scale: area fraction range of the random resized crop.
        hflip: horizontal flip in training, on in every preset. A flip keeps the label, which is wrong for
            classes defined by left and right: turn it off, or give ``flip_label_map`` (the motion data
            uses its own map).
        flip_label_map: a file of class pairs that a flip swaps (``swipe_left swipe_right`` per line), for
            ``list`` and ``folders`` data whose classes mirror each other.
        temporal_views: evaluation clips per video (paper: 4).
        spatial_crops: evaluation crops per clip (paper: 3).
        drop_invalid: drop invalid list lines (counted and listed in the log) instead of stopping.
        decode_time_limit: seconds per decode before a video counts as unreadable.
        decode_short_side: shrink decoded frames in FFmpeg so their shorter side is this long (at least
            ``crop_size``; e.g. 256 for crop 224), before the training crop; evaluation frames are then
            decoded at ``crop_size``, the size its transform resizes to. Videos already smaller are kept.
            None decodes at the source size. 2-3x less CPU per clip on 720p videos (docs/benchmarks.md).
        max_unreadable_fraction: stop when more than this share of the videos tried in an epoch were
            unreadable (checked once 32 have been tried).
        num_workers: DataLoader workers per rank (decoding happens there).
        eval_batch_size: videos per evaluation batch (each with temporal_views x spatial_crops clips).
        motion_train_per_class: motion data: training videos per class.
        motion_val_per_class: motion data: validation videos per class.
        motion_frames: motion data: frames per video.
        motion_size: motion data: frame side.
        motion_variant: motion data: ``basic`` (8 classes) or ``hard`` (16 classes, moving distractors).
    """

    kind: Literal["motion", "list", "folders"] = "motion"
    train: str | None = None
    val: str | None = None
    root: str | None = None
    classes: str | None = None
    format: Literal["auto", "list", "kinetics_csv", "ucf101", "hmdb51"] = "auto"
    split: int | None = None
    data_root: str | None = None
    num_frames: int = 24
    frame_stride: int = 1
    short_videos: Literal["clamp", "loop"] = "clamp"
    frame_rate: float = 0.0
    resample: bool = False
    crop_size: int = 224
    scale: tuple[float, float] = (0.25, 1.0)
    hflip: bool = True
    flip_label_map: str | None = None
    temporal_views: int = 4
    spatial_crops: int = 3
    drop_invalid: bool = False
    decode_time_limit: float = 20.0
    decode_short_side: int | None = None
    max_unreadable_fraction: float = 0.5
    num_workers: int = 4
    eval_batch_size: int = 4
    motion_train_per_class: int = 64
    motion_val_per_class: int = 16
    motion_frames: int = 16
    motion_size: int = 32
    motion_variant: Literal["basic", "hard"] = "basic"


@dataclass
class ModelConfig:
    """Which registered model to train.

    Attributes:
        name: a name from ``chunkformer.models.list_models()``; register your own with
            ``chunkformer.models.register_model`` in a module passed as ``--model.import-module``.
        import_module: a module (or ``.py`` file) imported before the model is built, to register models
            (the built-in models, ``sct_tiny`` included, need none).
        dropout: head dropout (passed as ``head_drop_rate``; None passes nothing, for models without it).
        drop_path_rate: stochastic depth (None passes nothing).
        pass_img_size: pass ``img_size=crop_size`` to the model factory.
        init: weights to start from (``create_model(checkpoint_path=...)``), e.g. a pretrained file.
        init_filter: ``frame_encoder`` loads only the frame encoder from ``init``.
    """

    name: str = "sct_s"
    import_module: str | None = None
    dropout: float | None = None
    drop_path_rate: float | None = None
    pass_img_size: bool = True
    init: str | None = None
    init_filter: str | None = None


@dataclass
class OptimConfig:
    """SGD with momentum (or AdamW), linear warmup then cosine decay, per optimizer step.

    Attributes:
        optimizer: ``sgd`` (the paper) or ``adamw`` (the motion preset: the tiny model trained from scratch
            for a few minutes learns with AdamW, not with SGD at these step counts).
        lr: peak learning rate (Table 2).
        momentum: SGD momentum (section 4: 0.9).
        weight_decay: L2 on weight matrices (not on biases and norms).
        epochs: training epochs (section 4: 50).
        warmup_epochs: linear warmup from 0 (Table 2).
        batch_size: global batch per optimizer step (all ranks and accumulation steps together); None
            picks section 4's batch for SCT-S/M/L (32/16/8), else 32.
        accum_steps: micro-batches accumulated per optimizer step.
        label_smoothing: cross-entropy label smoothing (Table 2).
        grad_clip: max global gradient norm (0 disables).
    """

    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    epochs: int = 50
    warmup_epochs: float = 2.0
    batch_size: int | None = None
    accum_steps: int = 1
    label_smoothing: float = 0.1
    grad_clip: float = 1.0


@dataclass
class RunConfig:
    """Output, precision, checkpoints and control.

    Attributes:
        out_dir: checkpoints, logs (``train.log``, ``steps.csv``, ``epochs.csv``) and TensorBoard (``tb/``).
        seed: seed of everything (model init, sampling, augmentation).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        amp: ``auto`` (fp16 with GradScaler on CUDA, none on CPU), ``none``, ``bf16`` or ``fp16``.
        threads: torch intra-op threads per rank (0: leave torch's default). 1 is fastest for small
            models on a shared CPU.
        resume: continue from the newest checkpoint in ``out_dir``.
        resume_from: continue from this checkpoint file.
        overwrite: start a fresh run in an ``out_dir`` that holds an earlier run, deleting its checkpoints
            and weights and restarting its logs (without it, such an ``out_dir`` is an error).
        eval_only: evaluate ``checkpoint`` (or the newest one in ``out_dir``) and exit.
        checkpoint: the checkpoint ``eval_only`` evaluates (a training checkpoint or model weights).
        keep_last: newest training checkpoints kept (``best.pt`` is kept besides).
        save_every_steps: also checkpoint every this many optimizer steps (0: at epoch ends only).
        max_steps: stop after this many optimizer steps (a checkpoint is written first); the schedule still
            follows ``epochs``, so a resumed run continues the same curve.
        eval_every: evaluate every this many epochs (and after the last).
        dist_timeout_s: collective timeout: a rank that stops answering ends the run with an error.
        log_every: steps between progress lines in ``train.log``.
    """

    out_dir: str = "runs/default"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    threads: int = 0
    resume: bool = False
    resume_from: str | None = None
    overwrite: bool = False
    eval_only: bool = False
    checkpoint: str | None = None
    keep_last: int = 2
    save_every_steps: int = 0
    max_steps: int | None = None
    eval_every: int = 1
    dist_timeout_s: float = 600.0
    log_every: int = 20


@dataclass
class TrainConfig:
    """Everything a run needs; every field can be overridden on the command line."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def global_batch(self) -> int:
        """The batch per optimizer step: ``optim.batch_size``, or section 4's for the model."""
        return self.optim.batch_size or PAPER_BATCH.get(self.model.name, 32)


def _paper(
    name: str, frame_rate: float, stride: int, warmup: float, lr: float, smoothing: float, dropout: float
) -> TrainConfig:
    """A Table 2 column with section 4's settings, SCT-S by default."""
    return TrainConfig(
        data=DataConfig(
            kind="list", num_frames=24, frame_stride=stride, frame_rate=frame_rate, crop_size=224
        ),
        model=ModelConfig(name="sct_s", dropout=dropout),
        optim=OptimConfig(lr=lr, warmup_epochs=warmup, epochs=50, label_smoothing=smoothing),
        run=RunConfig(out_dir=f"runs/{name}"),
    )


def _motion() -> TrainConfig:
    """The default run: ``sct_tiny`` on the built-in motion data, sized for 2 CPU cores."""
    return TrainConfig(
        data=DataConfig(
            kind="motion",
            num_frames=8,
            frame_stride=1,
            crop_size=32,
            scale=(0.6, 1.0),
            temporal_views=4,
            spatial_crops=3,
            num_workers=1,
            eval_batch_size=8,
        ),
        model=ModelConfig(name="sct_tiny"),
        optim=OptimConfig(
            optimizer="adamw",
            lr=1e-3,
            warmup_epochs=1,
            epochs=60,
            batch_size=16,
            label_smoothing=0.0,
            weight_decay=0.05,
        ),
        run=RunConfig(out_dir="runs/motion", threads=1, amp="none", log_every=50, eval_every=5),
    )


PRESETS: dict[str, tuple[str, TrainConfig]] = {
    "motion": ("sct_tiny on the built-in synthetic motion data (default; no download)", _motion()),
    "k400": ("Kinetics-400, Table 2 column K400", _paper("k400", 5, 10, 2, 0.3, 0.1, 0.2)),
    "k600": ("Kinetics-600, Table 2 column K600", _paper("k600", 5, 10, 2, 0.3, 0.1, 0.2)),
    "ucf101": ("UCF101, Table 2 column U101", _paper("ucf101", 10, 8, 3, 0.25, 0.0, 0.0)),
    "hmdb51": ("HMDB51, Table 2 column H51", _paper("hmdb51", 10, 8, 4, 0.25, 0.0, 0.0)),
    "mit": ("Moments in Time, Table 2 column MMT", _paper("mit", 8, 10, 2, 0.3, 0.3, 0.2)),
}


def preset(name: str) -> TrainConfig:
    """A fresh copy of a preset."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name][1])
