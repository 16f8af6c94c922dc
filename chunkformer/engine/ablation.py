"""The paper's ablations (Tables 4, 5 and 8) at small scale, on synthetic data where the answer is known.

Every variant is ``sct_tiny`` with one architectural change (registered as ``ablation_<name>`` when this
module is imported), trained and evaluated with the same recipe (the ``motion`` preset; by default on the
built-in ``basic`` motion data, 8 classes defined by motion, or with ``data="hard"`` on 16 motion classes
with a moving distractor) for several seeds. A seed sets the model init, the data order and augmentation,
and the generated dataset, and is shared by all variants, so each seed is a paired comparison.
``recipes/ablations.py`` is its command line; docs/ablations.md has the measured study::

    from chunkformer.engine.ablation import AblationConfig, run_study, summarize

    study = AblationConfig(variants=("reference", "standard_msa"), seeds=2, out_dir="runs/abl")
    rows = run_study(study)          # skips runs already in runs/abl/runs.jsonl
    summary = summarize(rows, study.variants, study.data)
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import statistics
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from chunkformer.data import MotionDatasetSpec, ensure_motion_dataset, motion_classes
from chunkformer.engine.config import TrainConfig, preset
from chunkformer.engine.loop import train
from chunkformer.models import list_models, register_model, sct_tiny, sct_tiny_config
from chunkformer.models.stats import count

__all__ = [
    "VARIANTS",
    "AblationConfig",
    "Variant",
    "markdown",
    "plot",
    "run_study",
    "summarize",
    "train_config",
]

# The study's stage has one shifted MSA, as the paper's reference; sct_tiny itself has two.
_TINY_STAGE = dataclasses.replace(sct_tiny_config().stages[0], shifted_depth=1)


@dataclass(frozen=True)
class Variant:
    """One row of the study: ``sct_tiny`` with ``overrides`` (SCTConfig fields) applied.

    Attributes:
        name: registered as ``ablation_<name>``.
        table: the paper's table the variant belongs to.
        description: what differs from the reference.
        overrides: SCTConfig fields passed to ``sct_tiny``.
    """

    name: str
    table: str
    description: str
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def model_name(self) -> str:
        return f"ablation_{self.name}"


# The reference is the paper's choice in every table: one shifted MSA with shift 1, the chunk (tiny patch,
# local window) frame encoder and a four-layer clip encoder.
_REFERENCE = {"shift": 1, "clip_depth": 4, "stages": (_TINY_STAGE,)}
VARIANTS: dict[str, Variant] = {
    variant.name: variant
    for variant in (
        Variant(
            "reference",
            "4, 5, 8",
            "shift 1, one shifted MSA, chunk encoder (patch 4, 4 x 4 windows), clip depth 4",
            _REFERENCE,
        ),
        Variant("standard_msa", "5", "shift 0: a standard per-frame MSA", {**_REFERENCE, "shift": 0}),
        Variant("shift_5", "5", "keys from frame t - 5", {**_REFERENCE, "shift": 5}),
        Variant(
            "two_shifted",
            "5",
            "two shifted MSA layers (shift 1)",
            {**_REFERENCE, "stages": (dataclasses.replace(_TINY_STAGE, shifted_depth=2),)},
        ),
        Variant(
            "vit_patch8",
            "4",
            "ViT frame encoder: patch 8, one global-attention layer at width 64, no pooling",
            {
                **_REFERENCE,
                "patch_size": 8,
                "stages": (dataclasses.replace(_TINY_STAGE, dim=64, pool=False),),
            },
        ),
        Variant(
            "vit_patch4",
            "4",
            "ViT frame encoder with tiny patches: patch 4, global attention over the frame",
            {**_REFERENCE, "chunk_size": 8},
        ),
        Variant("clip_depth_2", "8", "two clip encoder layers", {**_REFERENCE, "clip_depth": 2}),
    )
}


def _register(variant: Variant) -> None:
    if variant.model_name in list_models():
        return

    def factory(num_classes: int = 8, num_frames: int = 8, **overrides: Any) -> Any:
        return sct_tiny(num_classes=num_classes, num_frames=num_frames, **{**variant.overrides, **overrides})

    factory.__name__ = variant.model_name
    register_model(factory)


for _variant in VARIANTS.values():
    _register(_variant)


@dataclass
class AblationConfig:
    """The study.

    Attributes:
        variants: which variants to run (all by default), from ``VARIANTS``.
        data: the motion data variant: ``basic`` (8 classes) or ``hard`` (16 classes, a moving distractor;
            harder: in a one-seed pilot of 25 epochs only ``two_shifted`` reached 100 %, see
            docs/ablations.md).
        seeds: seeds per variant (0, 1, ...).
        epochs: training epochs per run.
        lr: peak AdamW learning rate (the motion preset's; at 2e-3 the reference stayed at chance for 20
            epochs on the basic data, while 1e-3 learned).
        train_per_class: generated training videos per class.
        val_per_class: generated validation videos per class.
        out_dir: where runs, ``runs.jsonl``, ``results.md`` and ``results.png`` go.
        quick: one seed, 2 videos per class, one epoch, 1 x 1 views: checks the script end to end.
        threads: torch threads per run.
        num_workers: loader workers per run.
        jobs: runs at a time, each in its own process. On 2 cores, 1 is faster: a run and its loader worker
            already keep both busy (measured: 2 jobs took about 200 s a run, one alone about a quarter of
            that per 30 epochs).
    """

    variants: tuple[str, ...] = tuple(VARIANTS)
    data: Literal["basic", "hard"] = "basic"
    seeds: int = 3
    epochs: int = 30
    lr: float = 1e-3
    train_per_class: int = 64
    val_per_class: int = 16
    out_dir: str = "runs/ablations"
    quick: bool = False
    threads: int = 1
    num_workers: int = 1
    jobs: int = 1

    def __post_init__(self) -> None:
        unknown = [name for name in self.variants if name not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variants {unknown}; available: {', '.join(VARIANTS)}")
        if self.seeds < 1 or self.epochs < 1 or self.jobs < 1:
            raise ValueError(
                f"seeds, epochs and jobs must be >= 1, got {self.seeds}, {self.epochs}, {self.jobs}"
            )
        if self.quick:
            self.seeds, self.epochs, self.train_per_class, self.val_per_class = 1, 1, 2, 1


def train_config(study: AblationConfig, variant: Variant, seed: int) -> TrainConfig:
    """The motion preset on the study's data, with the variant's model, learning rate and sizes."""
    return motion_run_config(study, variant.model_name, variant.name, seed)


def motion_run_config(study: Any, model_name: str, run_name: str, seed: int) -> TrainConfig:
    """The motion preset for one run of a study: ``study`` has the fields of :class:`AblationConfig` except
    ``variants`` (the zoo study shares this recipe); the run goes to ``<out_dir>/<run_name>/seed<seed>``."""
    config = preset("motion")
    out = Path(study.out_dir)
    config.data.motion_variant = study.data
    config.data.data_root = str(
        out / "data" / f"{study.data}-{study.train_per_class}-{study.val_per_class}-seed{seed}"
    )
    config.data.motion_train_per_class, config.data.motion_val_per_class = (
        study.train_per_class,
        study.val_per_class,
    )
    config.data.num_workers = study.num_workers
    config.model.name, config.model.import_module = model_name, None
    config.optim.epochs, config.optim.lr = study.epochs, study.lr
    config.run.seed, config.run.threads = seed, study.threads
    config.run.out_dir = str(out / run_name / f"seed{seed}")
    config.run.eval_every = study.epochs
    config.run.keep_last = 1
    # A run missing from runs.jsonl did not finish (the study was stopped): start it again from scratch.
    config.run.overwrite = True
    if study.quick:
        config.optim.batch_size = 8
        config.data.temporal_views = config.data.spatial_crops = 1
    return config


def _settings(study: AblationConfig) -> dict[str, Any]:
    """What a finished run's result depends on besides variant and seed (recorded in each row)."""
    return {
        "data": study.data,
        "epochs": study.epochs,
        "lr": study.lr,
        "train_per_class": study.train_per_class,
        "val_per_class": study.val_per_class,
    }


def _done(path: Path, study: AblationConfig) -> dict[tuple[str, int], dict[str, Any]]:
    """Finished runs of ``runs.jsonl`` with this study's settings (rows of other settings are kept in the
    file but neither reused nor summarised)."""
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    wanted = _settings(study)
    return {
        (row["variant"], row["seed"]): row
        for row in rows
        if all(row.get(key) == value for key, value in wanted.items())
    }


def _run_one(study: AblationConfig, name: str, seed: int) -> dict[str, Any]:
    config = train_config(study, VARIANTS[name], seed)
    started = time.monotonic()
    result = train(config)
    assert result.metrics is not None
    return {
        "variant": name,
        "seed": seed,
        "top1": result.metrics.top1,
        "top5": result.metrics.top5,
        "mean_class": result.metrics.mean_class,
        "num_videos": result.metrics.num_videos,
        **_settings(study),
        "seconds": time.monotonic() - started,
    }


def _exit_with_parent(parent: int) -> None:
    """Pool initializer: end this worker when the study process is gone (killed, not interrupted), instead
    of training on as an orphan that still writes into the study's run directories."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(2.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _prepare_data(study: AblationConfig, seed: int) -> None:
    prepare_motion_data(study, seed)


def prepare_motion_data(study: Any, seed: int) -> None:
    """Generate a study's motion data for ``seed`` (``study`` as in :func:`motion_run_config`)."""
    # Generated once per seed before runs start, so parallel runs never generate the same dataset twice.
    config = motion_run_config(study, "sct_tiny", "data", seed)
    spec = MotionDatasetSpec(
        train_per_class=study.train_per_class,
        val_per_class=study.val_per_class,
        frames=config.data.motion_frames,
        size=config.data.motion_size,
        seed=seed,
        variant=study.data,
    )
    ensure_motion_dataset(config.data.data_root, spec)


def run_study(study: AblationConfig) -> list[dict[str, Any]]:
    """Train and evaluate every (variant, seed) not yet in ``runs.jsonl``; returns all rows of the study."""
    out = Path(study.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "runs.jsonl"
    done = _done(results, study)
    todo = [
        (name, seed) for seed in range(study.seeds) for name in study.variants if (name, seed) not in done
    ]
    for seed in sorted({seed for _, seed in todo}):
        _prepare_data(study, seed)

    def record(row: dict[str, Any]) -> None:
        print(
            f"{row['variant']} seed {row['seed']}: top-1 {100 * row['top1']:.2f}% ({row['seconds']:.0f}s)",
            flush=True,
        )
        with results.open("a") as file:
            file.write(json.dumps(row) + "\n")
        done[(row["variant"], row["seed"])] = row

    if study.jobs == 1:
        for name, seed in todo:
            record(_run_one(study, name, seed))
    else:
        # Spawned, not forked: each run starts from a clean interpreter (threads, RNG, registry).
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            study.jobs, mp_context=context, initializer=_exit_with_parent, initargs=(os.getpid(),)
        ) as pool:
            futures = [pool.submit(_run_one, study, name, seed) for name, seed in todo]
            for future in as_completed(futures):
                record(future.result())
    return [row for key, row in done.items() if key[0] in study.variants and key[1] < study.seeds]


def _stats(name: str, data: str) -> tuple[int, float]:
    """Parameters and MACs (all ops, one 8 x 32 x 32 clip) of a variant."""
    stats = count(VARIANTS[name].model_name, frames=8, img_size=32, num_classes=len(motion_classes(data)))
    return stats.params, stats.all_macs


def summarize(
    rows: list[dict[str, Any]], variants: tuple[str, ...], data: str = "basic"
) -> list[dict[str, Any]]:
    """Per variant: mean and standard deviation of top-1 over seeds, the paired difference to the
    reference (mean and std over seeds), parameters, MACs and mean run time."""
    by_variant = {
        name: sorted((r for r in rows if r["variant"] == name), key=lambda r: r["seed"]) for name in variants
    }
    reference = {r["seed"]: r["top1"] for r in by_variant.get("reference", [])}
    summary = []
    for name in variants:
        runs = by_variant[name]
        if not runs:
            continue
        top1 = [r["top1"] for r in runs]
        paired = [r["top1"] - reference[r["seed"]] for r in runs if r["seed"] in reference]
        params, macs = _stats(name, data)
        summary.append(
            {
                "variant": name,
                "table": VARIANTS[name].table,
                "description": VARIANTS[name].description,
                "seeds": len(runs),
                "top1_mean": statistics.fmean(top1),
                "top1_std": statistics.stdev(top1) if len(top1) > 1 else math.nan,
                "delta_mean": statistics.fmean(paired) if paired and name != "reference" else math.nan,
                "delta_std": statistics.stdev(paired)
                if len(paired) > 1 and name != "reference"
                else math.nan,
                "params": params,
                "macs": macs,
                "seconds": statistics.fmean(r["seconds"] for r in runs),
                "per_seed": top1,
            }
        )
    return summary


def _pct(value: float, signed: bool = False) -> str:
    if math.isnan(value):
        return "-"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def markdown(summary: list[dict[str, Any]]) -> str:
    """The summary as a markdown table."""
    lines = [
        "| variant | paper table | what differs | seeds | top-1 % (mean ± std) | vs reference (paired, pts) "
        "| per seed | params | MMACs | s / run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        delta = (
            "-"
            if math.isnan(row["delta_mean"])
            else f"{_pct(row['delta_mean'], True)} ± {_pct(row['delta_std'])}"
        )
        lines.append(
            f"| `{row['variant']}` | {row['table']} | {row['description']} | {row['seeds']} | "
            f"{_pct(row['top1_mean'])} ± {_pct(row['top1_std'])} | {delta} | "
            f"{', '.join(_pct(v) for v in row['per_seed'])} | {row['params'] / 1e3:.1f}K | "
            f"{row['macs'] / 1e6:.1f} | "
            f"{row['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(summary: list[dict[str, Any]], path: Path, data: str = "basic") -> None:
    """Top-1 (mean ± std over seeds) against MACs, one point per variant."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("results.png needs matplotlib: pip install 'chunkformer[viz]'") from error

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"4, 5, 8": "black", "4": "tab:blue", "5": "tab:orange", "8": "tab:green"}
    figure, axes = plt.subplots(figsize=(8, 4.8))
    span = max(row["macs"] for row in summary) / 1e6 - min(row["macs"] for row in summary) / 1e6 or 1.0
    placed: list[float] = []
    for row in summary:
        std = 0.0 if math.isnan(row["top1_std"]) else 100 * row["top1_std"]
        # Variants with (nearly) equal MACs are spread sideways so their error bars stay apart.
        macs = row["macs"] / 1e6
        neighbours = sum(abs(macs - other) < 0.02 * span for other in placed)
        placed.append(macs)
        x = macs + 0.025 * span * neighbours
        axes.errorbar(
            x,
            100 * row["top1_mean"],
            yerr=std,
            fmt="o",
            capsize=4,
            color=colours.get(row["table"], "tab:gray"),
            label=f"Table {row['table']}",
        )
        axes.annotate(
            row["variant"],
            (x, 100 * row["top1_mean"]),
            textcoords="offset points",
            xytext=(6, -3 - 10 * neighbours),
            fontsize=8,
        )
    handles, labels = axes.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    axes.legend(unique.values(), unique.keys(), fontsize=8)
    axes.set_xlabel("MMACs per 8 x 32 x 32 clip (equal-MAC variants spread sideways)")
    axes.set_ylabel("multi-view top-1 (%), mean ± std over seeds")
    classes = len(motion_classes(data))
    axes.set_title(
        f"sct_tiny ablations on the {data} motion data ({classes} classes, chance {100 / classes:.1f}%)"
    )
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
