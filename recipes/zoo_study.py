"""The attention zoo side by side (``sct_tiny`` against each zoo family's tiny model): the command line of
:mod:`chunkformer.engine.zoo_study`.

    python recipes/zoo_study.py                          # every tiny model x 3 seeds on the hard data
    python recipes/zoo_study.py --quick                  # one seed, tiny data, one epoch: a smoke test
    python recipes/zoo_study.py --models sct_tiny nat_tiny --seeds 2 --epochs 10
    python recipes/zoo_study.py --tune-lrs 5e-4 1e-3 2e-3   # each model's rate chosen on another seed first

Results go to ``--out-dir`` (default ``runs/zoo_study``): ``runs.jsonl`` (one line per finished run with
its settings; a rerun with the same settings skips runs already there, so an interrupted study continues),
``results.md`` (with the tuning table when rates were tuned), ``results.json`` and ``results.png``. See
docs/zoo.md for the measured study.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from chunkformer.engine import require
from chunkformer.engine.zoo_study import (
    ZooStudyConfig,
    load_runs,
    markdown,
    plot,
    run_study,
    summarize,
    tuning_markdown,
)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the study ``argv`` describes (``--help`` lists the fields) and write its results."""
    # The figure is drawn after every run has finished: a missing matplotlib must stop the study first.
    require("av", "tyro", "tensorboard", "tqdm", "safetensors", "matplotlib", purpose="recipes/zoo_study.py")
    import tyro

    study = tyro.cli(ZooStudyConfig, args=sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    rows = run_study(study)
    summary = summarize(rows, study.models, study.data)
    out = Path(study.out_dir)
    table = markdown(summary)
    tuning = tuning_markdown(load_runs(study), study)
    if tuning:
        table += (
            f"\nLearning rates, one run each on seed {study.tune_seed}: top-1 % (validation loss)\n\n{tuning}"
        )
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    plot(summary, out / "results.png", study.data)
    print(
        f"\n{table}\nstudy took {time.monotonic() - started:.0f}s (runs already in runs.jsonl were not "
        f"rerun); results in {out / 'results.md'} and {out / 'results.png'}"
    )
    return summary


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
