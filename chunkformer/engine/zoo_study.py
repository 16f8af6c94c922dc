"""The attention zoo side by side: ``sct_tiny`` against each zoo family's tiny model on the motion data.

Every model is a registered name (``sct_tiny``, ``timesformer_tiny``, ``vivit_tiny``, ``video_swin_tiny``,
``nat_tiny`` by default), trained and evaluated with the ablation study's recipe (the ``motion`` preset at
the study's epochs, learning rate and data sizes; :func:`chunkformer.engine.ablation.motion_run_config`) for
several seeds. A seed sets the model init, the data order and augmentation, and the generated dataset, and
is shared by all models, so each seed is a paired comparison. Besides accuracy each run records its
training throughput (clips per second of training steps, from the run's ``epochs.csv``), so accuracy can
be read against measured speed as well as against MACs, which are not matched between the models.
``recipes/zoo_study.py`` is its command line; docs/zoo.md has the measured study::

    from chunkformer.engine.zoo_study import ZooStudyConfig, run_study, summarize

    study = ZooStudyConfig(models=("sct_tiny", "nat_tiny"), seeds=2, out_dir="runs/zoo")
    rows = run_study(study)          # skips runs already in runs/zoo/runs.jsonl
    summary = summarize(rows, study.models, study.data)
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from chunkformer.data import motion_classes
from chunkformer.engine.ablation import motion_run_config, prepare_motion_data
from chunkformer.engine.loop import train
from chunkformer.models import list_models
from chunkformer.models.stats import count

__all__ = ["MODELS", "ZooStudyConfig", "markdown", "plot", "run_study", "summarize"]

# One tiny model per family, each about 0.1M parameters at 8 x 32 x 32 (docs/models.md).
MODELS: dict[str, str] = {
    "sct_tiny": "SCT: chunk (local window) frame encoder + shifted MSA + clip encoder",
    "timesformer_tiny": "TimeSformer: divided space-time attention",
    "vivit_tiny": "ViViT model 2: factorised encoder (spatial, then temporal over class tokens)",
    "video_swin_tiny": "Video Swin: shifted 3-D windows",
    "nat_tiny": "3-D neighbourhood attention",
}


@dataclass
class ZooStudyConfig:
    """The study.

    Attributes:
        models: registered model names (the zoo's tiny models by default, ``MODELS``).
        data: the motion data variant: ``basic`` (8 classes) or ``hard`` (16 classes, a moving distractor).
        seeds: seeds per model (0, 1, ...).
        epochs: training epochs per run.
        lr: peak AdamW learning rate (the motion preset's, as the ablation study).
        train_per_class: generated training videos per class.
        val_per_class: generated validation videos per class.
        out_dir: where runs, ``runs.jsonl``, ``results.md``, ``results.json`` and ``results.png`` go.
        quick: one seed, 2 videos per class, one epoch, 1 x 1 views: checks the script end to end.
        threads: torch threads per run.
        num_workers: loader workers per run.
    """

    models: tuple[str, ...] = tuple(MODELS)
    data: Literal["basic", "hard"] = "hard"
    seeds: int = 3
    epochs: int = 30
    lr: float = 1e-3
    train_per_class: int = 64
    val_per_class: int = 16
    out_dir: str = "runs/zoo_study"
    quick: bool = False
    threads: int = 1
    num_workers: int = 1

    def __post_init__(self) -> None:
        unknown = [name for name in self.models if name not in list_models()]
        if unknown:
            raise ValueError(f"unknown models {unknown}; registered: {', '.join(list_models())}")
        if self.seeds < 1 or self.epochs < 1:
            raise ValueError(f"seeds and epochs must be >= 1, got {self.seeds}, {self.epochs}")
        if self.quick:
            self.seeds, self.epochs, self.train_per_class, self.val_per_class = 1, 1, 2, 1


def _settings(study: ZooStudyConfig) -> dict[str, Any]:
    """What a finished run's result depends on besides model and seed (recorded in each row)."""
    return {
        "data": study.data,
        "epochs": study.epochs,
        "lr": study.lr,
        "train_per_class": study.train_per_class,
        "val_per_class": study.val_per_class,
    }


def _done(path: Path, study: ZooStudyConfig) -> dict[tuple[str, int], dict[str, Any]]:
    """Finished runs of ``runs.jsonl`` with this study's settings."""
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    wanted = _settings(study)
    return {
        (row["model"], row["seed"]): row
        for row in rows
        if all(row.get(key) == value for key, value in wanted.items())
    }


def _throughput(out_dir: Path) -> float:
    """Median over epochs of training clips per second (steps only: data waits and evaluation excluded
    by the engine's epoch row); the median, so one epoch slowed by other work on the machine counts less."""
    with (out_dir / "epochs.csv").open() as file:
        values = [float(row["clips_per_s"]) for row in csv.DictReader(file) if row["clips_per_s"]]
    return statistics.median(values)


def _run_one(study: ZooStudyConfig, model: str, seed: int) -> dict[str, Any]:
    config = motion_run_config(study, model, model, seed)
    if study.quick:
        config.optim.batch_size = 8
        config.data.temporal_views = config.data.spatial_crops = 1
    started = time.monotonic()
    result = train(config)
    assert result.metrics is not None
    return {
        "model": model,
        "seed": seed,
        "top1": result.metrics.top1,
        "top5": result.metrics.top5,
        "mean_class": result.metrics.mean_class,
        "num_videos": result.metrics.num_videos,
        **_settings(study),
        "clips_per_s": _throughput(Path(config.run.out_dir)),
        "seconds": time.monotonic() - started,
    }


def run_study(study: ZooStudyConfig) -> list[dict[str, Any]]:
    """Train and evaluate every (model, seed) not yet in ``runs.jsonl``, one run at a time (on 2 cores a
    run and its loader worker already keep both busy, and parallel runs would distort each other's
    throughput); returns all rows of the study."""
    out = Path(study.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "runs.jsonl"
    done = _done(results, study)
    # Seed-major: a study stopped early has every model at the same number of seeds.
    todo = [(name, seed) for seed in range(study.seeds) for name in study.models if (name, seed) not in done]
    for seed in sorted({seed for _, seed in todo}):
        prepare_motion_data(study, seed)
    for name, seed in todo:
        row = _run_one(study, name, seed)
        print(
            f"{name} seed {seed}: top-1 {100 * row['top1']:.2f}% {row['clips_per_s']:.1f} clips/s "
            f"({row['seconds']:.0f}s)",
            flush=True,
        )
        with results.open("a") as file:
            file.write(json.dumps(row) + "\n")
        done[(name, seed)] = row
    return [row for key, row in done.items() if key[0] in study.models and key[1] < study.seeds]


def summarize(
    rows: list[dict[str, Any]], models: tuple[str, ...], data: str = "hard"
) -> list[dict[str, Any]]:
    """Per model: top-1 mean and standard deviation over seeds, parameters, MACs (all ops, one
    8 x 32 x 32 clip), training throughput (mean over seeds of each run's median clips/s) and run time."""
    summary = []
    for name in models:
        runs = sorted((r for r in rows if r["model"] == name), key=lambda r: r["seed"])
        if not runs:
            continue
        top1 = [r["top1"] for r in runs]
        stats = count(name, frames=8, img_size=32, num_classes=len(motion_classes(data)))
        summary.append(
            {
                "model": name,
                "description": MODELS.get(name, ""),
                "seeds": len(runs),
                "top1_mean": statistics.fmean(top1),
                "top1_std": statistics.stdev(top1) if len(top1) > 1 else math.nan,
                "params": stats.params,
                "macs": stats.all_macs,
                "clips_per_s": statistics.fmean(r["clips_per_s"] for r in runs),
                "seconds": statistics.fmean(r["seconds"] for r in runs),
                "per_seed": top1,
            }
        )
    return summary


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f}"


def markdown(summary: list[dict[str, Any]]) -> str:
    """The summary as a markdown table; MACs and throughput also as ratios to ``sct_tiny`` when present."""
    base = next((row for row in summary if row["model"] == "sct_tiny"), None)
    lines = [
        "| model | attention | params | MMACs (x sct_tiny) | train clips/s (x sct_tiny) | seeds "
        "| top-1 % (mean ± std) | per seed | s / run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        macs_ratio = f" ({row['macs'] / base['macs']:.2f}x)" if base else ""
        speed_ratio = f" ({row['clips_per_s'] / base['clips_per_s']:.2f}x)" if base else ""
        lines.append(
            f"| `{row['model']}` | {row['description']} | {row['params'] / 1e3:.1f}K | "
            f"{row['macs'] / 1e6:.1f}{macs_ratio} | {row['clips_per_s']:.1f}{speed_ratio} | {row['seeds']} | "
            f"{_pct(row['top1_mean'])} ± {_pct(row['top1_std'])} | "
            f"{', '.join(_pct(v) for v in row['per_seed'])} | {row['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(summary: list[dict[str, Any]], path: Path, data: str = "hard") -> None:
    """Two panels: top-1 (mean ± std over seeds) against MACs and against measured training throughput."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("results.png needs matplotlib: pip install 'chunkformer[viz]'") from error

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(1, 2, figsize=(11, 4.6), sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axes, key, scale, label in (
        (panels[0], "macs", 1e-6, "MMACs per 8 x 32 x 32 clip (all ops)"),
        (panels[1], "clips_per_s", 1.0, "training throughput (clips/s, 1 CPU thread)"),
    ):
        for index, row in enumerate(summary):
            std = 0.0 if math.isnan(row["top1_std"]) else 100 * row["top1_std"]
            x = row[key] * scale
            axes.errorbar(
                x, 100 * row["top1_mean"], yerr=std, fmt="o", capsize=4, color=colours[index % len(colours)]
            )
            axes.annotate(
                row["model"],
                (x, 100 * row["top1_mean"]),
                textcoords="offset points",
                # Alternate above and below: models of about equal speed sit side by side.
                xytext=(6, 4 if index % 2 else -12),
                fontsize=8,
            )
        axes.set_xscale("log")
        axes.set_xlabel(label)
        axes.grid(alpha=0.3, which="both")
    panels[0].set_ylabel("multi-view top-1 (%), mean ± std over seeds")
    classes = len(motion_classes(data))
    seeds = max(row["seeds"] for row in summary)
    figure.suptitle(
        f"The attention zoo on the {data} motion data ({classes} classes, chance {100 / classes:.1f}%; "
        f"{seeds} seed{'s' if seeds > 1 else ''})"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
