"""The attention zoo side by side: ``sct_tiny`` against each zoo family's tiny model on the motion data.

Every model is a registered name (``sct_tiny``, ``timesformer_tiny``, ``vivit_tiny``, ``video_swin_tiny``,
``nat_tiny`` by default), trained and evaluated with the ablation study's recipe (the ``motion`` preset at
the study's epochs, learning rate and data sizes; :func:`chunkformer.engine.ablation.motion_run_config`) for
several seeds. A seed sets the model init, the data order and augmentation, and the generated dataset, and
is shared by all models, so each seed is a paired comparison. Besides accuracy each run records its
training throughput (clips per second of training steps, from the run's ``epochs.csv``), so accuracy can
be read against measured speed as well as against MACs (the tiny presets are sized to about ``sct_tiny``'s
MACs).

With ``tune_lrs``, each model's learning rate is chosen first: one run per candidate on a tuning seed that
is not among the reported seeds (its own generated data, init and order), keeping the rate with the best
top-1 (ties: lower validation loss, then the lower rate); the reported seeds then train at that rate, so
the selection is not scored on the runs it picked. ``recipes/zoo_study.py`` is its command line;
docs/zoo.md has the measured study::

    from chunkformer.engine.zoo_study import ZooStudyConfig, run_study, summarize

    study = ZooStudyConfig(models=("sct_tiny", "nat_tiny"), seeds=2, tune_lrs=(5e-4, 1e-3, 2e-3))
    rows = run_study(study)          # skips runs already in runs/zoo_study/runs.jsonl
    summary = summarize(rows, study.models, study.data)
    print(markdown(summary), tuning_markdown(rows, study))
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

import torch

from chunkformer.data import motion_classes
from chunkformer.engine.ablation import motion_run_config, prepare_motion_data
from chunkformer.engine.loop import train
from chunkformer.models import create_model, list_models
from chunkformer.models.stats import count

__all__ = [
    "MODELS",
    "ZooStudyConfig",
    "best_lr",
    "load_runs",
    "markdown",
    "plot",
    "run_study",
    "summarize",
    "tuning_markdown",
]

# One tiny model per family, each within 20 % of sct_tiny's MACs at 8 x 32 x 32 (docs/models.md).
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
        lr: peak AdamW learning rate of every model when ``tune_lrs`` is empty (the motion preset's, as the
            ablation study).
        tune_lrs: candidate peak learning rates; when given, each model's rate is chosen among them by one
            run per candidate on ``tune_seed`` before the reported seeds run (empty: ``lr`` for all).
        tune_seed: the seed of the tuning runs; must not be one of the reported seeds 0 .. seeds - 1.
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
    tune_lrs: tuple[float, ...] = ()
    tune_seed: int = 1000
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
        bad = [lr for lr in (self.lr, *self.tune_lrs) if not lr > 0]
        if bad:
            raise ValueError(f"learning rates must be > 0, got {bad}")
        if self.tune_lrs and 0 <= self.tune_seed < self.seeds:
            raise ValueError(
                f"tune_seed must not be a reported seed (0 .. {self.seeds - 1}), got {self.tune_seed}: the "
                "rates would be scored on the runs that picked them"
            )


def _settings(study: ZooStudyConfig) -> dict[str, Any]:
    """What a finished run's result depends on besides model, seed and rate (recorded in each row)."""
    return {
        "data": study.data,
        "epochs": study.epochs,
        "train_per_class": study.train_per_class,
        "val_per_class": study.val_per_class,
    }


RunKey = tuple[str, int, float]


def _params(model: str, data: str) -> int:
    """Parameters of a registered model as the study builds it (on the meta device: no memory)."""
    with torch.device("meta"):
        built = create_model(model, num_classes=len(motion_classes(data)), num_frames=8)
    return sum(p.numel() for p in built.parameters())


def _done(path: Path, study: ZooStudyConfig) -> dict[RunKey, dict[str, Any]]:
    """Finished runs of ``runs.jsonl`` with this study's settings, by (model, seed, lr); a run of a model
    whose definition changed since (another parameter count) is not reused."""
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    wanted = _settings(study)
    params = {
        name: _params(name, study.data) for name in {row["model"] for row in rows} if name in list_models()
    }
    return {
        (row["model"], row["seed"], row["lr"]): row
        for row in rows
        if all(row.get(key) == value for key, value in wanted.items())
        and row.get("params") == params.get(row["model"])
    }


def load_runs(study: ZooStudyConfig) -> list[dict[str, Any]]:
    """Every finished run in ``<out_dir>/runs.jsonl`` with this study's settings, tuning runs included."""
    return list(_done(Path(study.out_dir) / "runs.jsonl", study).values())


def best_lr(rows: list[dict[str, Any]], model: str, lrs: tuple[float, ...], seed: int) -> float | None:
    """The rate of ``lrs`` whose run of ``model`` on ``seed`` scored best: highest top-1, then lowest
    validation loss (``nll``; NaN counts as worst), then the lowest rate; None until every candidate ran."""
    runs = {row["lr"]: row for row in rows if row["model"] == model and row["seed"] == seed}
    if any(lr not in runs for lr in lrs):
        return None

    def rank(lr: float) -> tuple[float, float, float]:
        nll = runs[lr].get("nll", math.nan)
        return (-runs[lr]["top1"], math.inf if nll is None or math.isnan(nll) else nll, lr)

    return min(lrs, key=rank)


def _throughput(out_dir: Path) -> float:
    """Median over epochs of training clips per second (steps only: data waits and evaluation excluded
    by the engine's epoch row); the median, so one epoch slowed by other work on the machine counts less."""
    with (out_dir / "epochs.csv").open() as file:
        values = [float(row["clips_per_s"]) for row in csv.DictReader(file) if row["clips_per_s"]]
    return statistics.median(values)


def _run_one(study: ZooStudyConfig, model: str, seed: int, lr: float, phase: str) -> dict[str, Any]:
    # Tuning runs get folders of their own, one per rate; reported runs keep <model>/seed<seed>.
    run_name = model if phase == "eval" else f"tune/{model}/lr{lr:g}"
    config = motion_run_config(study, model, run_name, seed)
    config.optim.lr = lr
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
        "nll": result.metrics.nll,
        "params": _params(model, study.data),
        "lr": lr,
        "phase": phase,
        **_settings(study),
        "clips_per_s": _throughput(Path(config.run.out_dir)),
        "seconds": time.monotonic() - started,
    }


def _lr_of(study: ZooStudyConfig, rows: list[dict[str, Any]], model: str) -> float:
    """The rate the reported seeds of ``model`` train at (tuning must have finished)."""
    if not study.tune_lrs:
        return study.lr
    chosen = best_lr(rows, model, study.tune_lrs, study.tune_seed)
    assert chosen is not None, f"tuning of {model} has not finished"
    return chosen


def run_study(study: ZooStudyConfig) -> list[dict[str, Any]]:
    """Train and evaluate every run not yet in ``runs.jsonl``: the tuning runs (``tune_lrs``), then each
    (model, seed) at its rate; one run at a time (on 2 cores a run and its loader worker already keep both
    busy, and parallel runs would distort each other's throughput). Returns the reported runs (seeds
    0 .. seeds - 1 at each model's rate); ``runs.jsonl`` also holds the tuning runs (``phase`` "tune")."""
    out = Path(study.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "runs.jsonl"
    done = _done(results, study)

    def run(name: str, seed: int, lr: float, phase: str) -> None:
        if (name, seed, lr) in done:
            return
        prepare_motion_data(study, seed)
        row = _run_one(study, name, seed, lr, phase)
        print(
            f"{name} seed {seed} lr {lr:g}: top-1 {100 * row['top1']:.2f}% {row['clips_per_s']:.1f} clips/s "
            f"({row['seconds']:.0f}s)",
            flush=True,
        )
        with results.open("a") as file:
            file.write(json.dumps(row) + "\n")
        done[(name, seed, lr)] = row

    for lr in study.tune_lrs:
        for name in study.models:
            run(name, study.tune_seed, lr, "tune")
    rates = {name: _lr_of(study, list(done.values()), name) for name in study.models}
    # Seed-major: a study stopped early has every model at the same number of seeds.
    for seed in range(study.seeds):
        for name in study.models:
            run(name, seed, rates[name], "eval")
    return [done[(name, seed, rates[name])] for seed in range(study.seeds) for name in study.models]


def tuning_markdown(rows: list[dict[str, Any]], study: ZooStudyConfig) -> str:
    """The tuning runs as a markdown table: top-1 (validation loss) per model and candidate rate, the
    chosen rate in bold; empty without ``tune_lrs``."""
    if not study.tune_lrs:
        return ""
    lines = [
        "| model | " + " | ".join(f"lr {lr:g}" for lr in study.tune_lrs) + " | chosen |",
        "|---|" + "---|" * (len(study.tune_lrs) + 1),
    ]
    for name in study.models:
        runs = {r["lr"]: r for r in rows if r["model"] == name and r["seed"] == study.tune_seed}
        chosen = best_lr(rows, name, study.tune_lrs, study.tune_seed)
        cells = []
        for lr in study.tune_lrs:
            if lr not in runs:
                cells.append("-")
                continue
            cell = f"{_pct(runs[lr]['top1'])} ({runs[lr].get('nll', math.nan):.2f})"
            cells.append(f"**{cell}**" if lr == chosen else cell)
        lines.append(
            f"| `{name}` | " + " | ".join(cells) + f" | {'-' if chosen is None else f'{chosen:g}'} |"
        )
    return "\n".join(lines) + "\n"


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
                "lr": runs[0].get("lr", math.nan),
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
        "| model | attention | params | MMACs (x sct_tiny) | train clips/s (x sct_tiny) | lr | seeds "
        "| top-1 % (mean ± std) | per seed | s / run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        macs_ratio = f" ({row['macs'] / base['macs']:.2f}x)" if base else ""
        speed_ratio = f" ({row['clips_per_s'] / base['clips_per_s']:.2f}x)" if base else ""
        lines.append(
            f"| `{row['model']}` | {row['description']} | {row['params'] / 1e3:.1f}K | "
            f"{row['macs'] / 1e6:.1f}{macs_ratio} | {row['clips_per_s']:.1f}{speed_ratio} | {row['lr']:g} | "
            f"{row['seeds']} | "
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
