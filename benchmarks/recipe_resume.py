"""The recipe killed and resumed under torchrun: do the losses after the resume equal an uninterrupted run's?

Runs ``recipes/train_kinetics.py`` on the ``motion`` preset (small generated data, see ``--size``) under
``torchrun --standalone --nproc-per-node 1`` (the engine picks nccl on CUDA, gloo on CPU) three times per
``--amp`` value: once uninterrupted, once stopped by ``--run.max-steps`` (the engine checkpoints before it
stops, as a killed job's last checkpoint) and then resumed with ``--run.resume`` to the end. It prints and
writes, per amp mode, the largest absolute difference between the two runs' ``steps.csv`` losses after the
stop. On CPU the engine is deterministic and the difference is 0; on CUDA, atomics in the backward
kernels (and cuDNN's algorithm choice) may leave rounding-level differences, which is what the table shows.

Usage::

    python benchmarks/recipe_resume.py OUT --device cuda --amp fp16 bf16 --markdown-out resume.md
    python benchmarks/recipe_resume.py OUT --device cpu --amp bf16 --size tiny   # the suite's --smoke
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (overrides, total steps, stop step). "tiny" is tests/engine/tiny_run.py's run: 8 classes x 2 videos, batch
# 4, 2 epochs of 4 steps. "small" is still the motion preset's model (sct_tiny) with more data and a batch
# that gives the GPU some work: 8 classes x 16 videos, batch 16, 2 epochs of 8 steps.
SIZES = {
    "tiny": (
        ["--data.motion-train-per-class", "2", "--data.motion-val-per-class", "1",
         "--data.motion-frames", "10", "--data.motion-size", "16", "--data.crop-size", "16",
         "--data.num-frames", "4", "--data.num-workers", "0", "--optim.batch-size", "4"],
        5,
    ),
    "small": (
        ["--data.motion-train-per-class", "16", "--data.motion-val-per-class", "2",
         "--data.num-workers", "2", "--optim.batch-size", "16"],
        5,
    ),
}  # fmt: skip


def _train(out: Path, data: Path, args: argparse.Namespace, amp: str, extra: list[str]) -> float:
    overrides, _ = SIZES[args.size]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
        str(ROOT / "recipes" / "train_kinetics.py"), "motion", *overrides,
        "--data.data-root", str(data), "--data.temporal-views", "1", "--data.spatial-crops", "1",
        "--optim.epochs", "2", "--run.eval-every", "2", "--run.out-dir", str(out), "--run.overwrite",
        "--run.device", args.device, "--run.amp", amp, "--run.log-every", "1", *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{tail}")
    return time.perf_counter() - start


def _losses(path: Path) -> dict[int, float]:
    with path.open() as file:
        return {int(row["step"]): float(row["loss"]) for row in csv.DictReader(file)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--amp", nargs="+", default=["bf16"], choices=["none", "bf16", "fp16"])
    parser.add_argument("--size", default="small", choices=list(SIZES))
    parser.add_argument("--timeout", type=int, default=300, help="seconds per training run")
    parser.add_argument("--markdown-out", default=None)
    args = parser.parse_args(argv)

    out = Path(args.out)
    data = out / "motion-data"
    _, stop = SIZES[args.size]
    lines = [
        f"Recipe kill-and-resume on {args.device}: motion preset ({args.size} size), torchrun "
        f"--nproc-per-node 1 ({'nccl' if args.device == 'cuda' else 'gloo'}), stopped after step {stop} "
        "(--run.max-steps) and resumed (--run.resume).",
        f"Command: `python benchmarks/recipe_resume.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        "",
        "| amp | steps | steps after resume | max abs loss difference after resume | uninterrupted (s) "
        "| stopped + resumed (s) |",
        "|---|---|---|---|---|---|",
    ]
    failed = False
    for amp in args.amp:
        full, part = out / f"{amp}-full", out / f"{amp}-resumed"
        try:
            full_s = _train(full, data, args, amp, [])
            part_s = _train(part, data, args, amp, ["--run.max-steps", str(stop)])
            part_s += _train(part, data, args, amp, ["--run.resume"])
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            failed = True
            print(error, file=sys.stderr)
            reason = " ".join(str(error).splitlines()[-1:]).replace("|", "/")[:160]
            lines.append(f"| {amp} | failed: {reason} | | | | |")
            continue
        want, got = _losses(full / "steps.csv"), _losses(part / "steps.csv")
        after = [step for step in want if step > stop]
        if sorted(want) != sorted(got) or not after:
            failed = True
            lines.append(f"| {amp} | steps differ: {sorted(want)} vs {sorted(got)} | | | | |")
            continue
        difference = max(abs(want[step] - got[step]) for step in after)
        print(f"{amp}: max abs loss difference after resume {difference:.3g}", flush=True)
        lines.append(
            f"| {amp} | {len(want)} | {len(after)} | {difference:.3g} | {full_s:.1f} | {part_s:.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.markdown_out:
        Path(args.markdown_out).write_text(table + "\n")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
