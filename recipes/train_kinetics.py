"""Train or evaluate a video classifier with the paper's recipe (section 4, Table 2).

Presets: ``motion`` (default: ``sct_tiny`` on built-in synthetic motion videos, no download), ``k400``,
``k600``, ``ucf101``, ``hmdb51``, ``mit``. Every field can be overridden::

    python recipes/train_kinetics.py                        # the motion preset
    python recipes/train_kinetics.py k400 --data.train lists/train.csv --data.val lists/val.csv \\
        --data.classes lists/classes.txt --model.name sct_m
    torchrun --nproc-per-node 8 recipes/train_kinetics.py k400 ...
    python recipes/train_kinetics.py k400 ... --run.resume
    python recipes/train_kinetics.py --run.eval-only --run.checkpoint runs/k400/best.pt --data.val ...

``--help`` after a preset name lists every field with its default. See docs/recipes.md. The loop, the
configs and the checkpoints are :mod:`chunkformer.engine`; this file is its command line.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from chunkformer.engine import PRESETS, TrainConfig, preset, require, train

# Decoding, the command line, logs, progress and the exported weights: checked before any work.
RECIPE_MODULES = ("av", "tyro", "tensorboard", "tqdm", "safetensors")


def parse(argv: list[str]) -> TrainConfig:
    """The config for ``argv``: a preset name (default ``motion``) followed by field overrides."""
    import tyro

    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["motion", *argv]
    presets = tyro.extras.subcommand_type_from_defaults(
        {name: config for name, (_, config) in PRESETS.items()},
        {name: description for name, (description, _) in PRESETS.items()},
    )
    # A default preset makes --help show "(default: motion)" where it said "(required)".
    return tyro.cli(presets, default=preset("motion"), args=argv)


def main(argv: list[str] | None = None) -> None:
    """Train (or evaluate) as ``argv`` (default: the process's arguments) says."""
    require(*RECIPE_MODULES, purpose="recipes/train_kinetics.py")
    argv = sys.argv[1:] if argv is None else argv
    config = parse(argv)
    out_dir_given = any(arg.startswith("--run.out-dir") for arg in argv)
    if config.run.eval_only and config.run.checkpoint and not out_dir_given:
        # Evaluating a file writes its log and predictions beside it, not into ./runs/<preset>.
        config.run.out_dir = str(Path(config.run.checkpoint).parent)
    result = train(config)
    if config.run.eval_only or result.metrics is None:
        return
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"\nfinal multi-view val {result.metrics.summary()} in {result.seconds:.0f}s; "
            f"outputs in {result.out_dir}"
        )


if __name__ == "__main__":
    main()
