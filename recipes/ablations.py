"""The paper's ablations (Tables 4, 5 and 8) at small scale: the command line of
:mod:`chunkformer.engine.ablation`.

    python recipes/ablations.py                       # the full study: every variant x 3 seeds
    python recipes/ablations.py --quick               # one seed, tiny data, one epoch: a smoke test
    python recipes/ablations.py --variants reference standard_msa --seeds 5

Results go to ``--out-dir`` (default ``runs/ablations``): ``runs.jsonl`` (one line per finished run with
its settings; a rerun with the same settings skips runs already there, so an interrupted study continues),
``results.md``, ``results.json`` and ``results.png``. See docs/ablations.md for the measured study.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from chunkformer.engine import require
from chunkformer.engine.ablation import AblationConfig, markdown, plot, run_study, summarize


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the study ``argv`` describes (``--help`` lists the fields) and write its results."""
    # The figure is drawn after every run has finished: a missing matplotlib must stop the study first.
    require("av", "tyro", "tensorboard", "tqdm", "safetensors", "matplotlib", purpose="recipes/ablations.py")
    import tyro

    study = tyro.cli(AblationConfig, args=sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    rows = run_study(study)
    summary = summarize(rows, study.variants, study.data)
    out = Path(study.out_dir)
    table = markdown(summary)
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
