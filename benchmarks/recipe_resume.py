"""The recipe killed and resumed under torchrun: do the losses after the resume equal an uninterrupted run's?

Runs ``recipes/train_kinetics.py`` on the ``motion`` preset (small generated data, see ``--size``) under
``torchrun --standalone --nproc-per-node 1`` (the engine picks nccl on CUDA, gloo on CPU) three times per
``--amp`` value: once uninterrupted; once with a checkpoint every step (``--run.save-every-steps 1``),
killed with SIGKILL (torchrun and its worker, no cleanup) as soon as its
``steps.csv`` shows step ``--kill-at``; and then resumed with ``--run.resume`` from the newest checkpoint the
killed run left, to the end. It prints and writes, per amp mode, the largest absolute difference between
the two runs' ``steps.csv`` losses after the checkpoint it resumed from. On CPU the engine is deterministic
and the difference is 0; on CUDA, atomics in the backward kernels (and cuDNN's algorithm choice) may leave
rounding-level differences, which is what the table shows.

Usage::

    python benchmarks/recipe_resume.py OUT --device cuda --amp fp16 bf16 --markdown-out resume.md
    python benchmarks/recipe_resume.py OUT --device cpu --amp bf16 --size tiny   # the suite's --smoke
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (overrides, steps). "tiny" is tests/engine/tiny_run.py's run: 8 classes x 2 videos, batch
# 4, 2 epochs of 4 steps. "small" is still the motion preset's model (sct_tiny) with more data and a batch
# that gives the GPU some work: 8 classes x 16 videos, batch 16, 2 epochs of 8 steps.
SIZES = {
    "tiny": (
        ["--data.motion-train-per-class", "2", "--data.motion-val-per-class", "1",
         "--data.motion-frames", "10", "--data.motion-size", "16", "--data.crop-size", "16",
         "--data.num-frames", "4", "--data.num-workers", "0", "--optim.batch-size", "4"],
        8,
    ),
    "small": (
        ["--data.motion-train-per-class", "16", "--data.motion-val-per-class", "2",
         "--data.num-workers", "2", "--optim.batch-size", "16"],
        16,
    ),
}  # fmt: skip


def _command(out: Path, data: Path, args: argparse.Namespace, amp: str, extra: list[str]) -> list[str]:
    overrides, _ = SIZES[args.size]
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
        str(ROOT / "recipes" / "train_kinetics.py"), "motion", *overrides,
        "--data.data-root", str(data), "--data.temporal-views", "1", "--data.spatial-crops", "1",
        "--optim.epochs", "2", "--run.eval-every", "2", "--run.out-dir", str(out), "--run.overwrite",
        "--run.device", args.device, "--run.amp", amp, "--run.log-every", "1", *extra,
    ]  # fmt: skip


def _environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _train(out: Path, data: Path, args: argparse.Namespace, amp: str, extra: list[str]) -> float:
    command = _command(out, data, args, amp, extra)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=_environment(), timeout=args.timeout)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        # The table shows the message's last line: the worker's error, not torchrun's summary box.
        raise RuntimeError(
            f"{' '.join(command)} failed ({done.returncode}):\n{tail}\n{root_cause(done.stderr)}"
        )
    return time.perf_counter() - start


def root_cause(stderr: str) -> str:
    """The first exception line of a run's stderr (the worker's, before torchrun's ChildFailedError and
    summary), else its last line with a word in it."""
    lines = [line.strip() for line in stderr.splitlines()]
    for line in lines:
        if re.match(r"[A-Za-z_][\w.]*(Error|Exception)(: |$)", line) and "ChildFailedError" not in line:
            return line
    return next((line for line in reversed(lines) if re.search(r"[A-Za-z]", line)), "no output")


def _last_step(path: Path) -> int:
    try:
        with path.open() as file:
            return max((int(row["step"]) for row in csv.DictReader(file) if row.get("step")), default=0)
    except (OSError, ValueError):  # not there yet, or a row half written
        return 0


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc): torchrun starts its workers in sessions of their own, so
    killing torchrun's process group does not reach them."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name (2nd field) may hold spaces; the parent pid is the 2nd field after it.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def _kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL ``process`` and everything below it, no cleanup, as a preemption would; wait until gone."""
    tree = [process.pid, *_descendants(process.pid)]
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()
    deadline = time.perf_counter() + 10
    # The workers are reparented to init, which reaps them; until then their /proc entry stays.
    while any(Path(f"/proc/{pid}").exists() for pid in tree[1:]) and time.perf_counter() < deadline:
        time.sleep(0.01)


def _train_killed(out: Path, data: Path, args: argparse.Namespace, amp: str) -> tuple[float, int]:
    """Train with a checkpoint every step, SIGKILL torchrun and its worker once ``steps.csv`` reaches
    ``args.kill_at``; return the seconds it ran and the step of the newest checkpoint it left."""
    command = _command(out, data, args, amp, ["--run.save-every-steps", "1"])
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with (out.parent / f"{out.name}-killed.log").open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=log, env=_environment())
        while process.poll() is None and _last_step(out / "steps.csv") < args.kill_at:
            if time.perf_counter() - start > args.timeout:
                _kill_tree(process)
                raise subprocess.TimeoutExpired(command, args.timeout)
            time.sleep(0.005)
        finished = process.poll()
        if finished is None:
            _kill_tree(process)
    if finished is not None:
        raise RuntimeError(
            f"the run to be killed ended by itself (exit {finished}) before step {args.kill_at} was seen: "
            f"see {out.name}-killed.log\n"
            + root_cause((out.parent / f"{out.name}-killed.log").read_text(errors="replace"))
        )
    checkpoints = sorted(out.glob("ckpt-*.pt"))
    if not checkpoints:
        raise RuntimeError(f"killed at step >= {args.kill_at} with no checkpoint in {out}")
    return time.perf_counter() - start, int(checkpoints[-1].stem.split("-")[1])


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
    parser.add_argument(
        "--kill-at", type=int, default=2, help="SIGKILL the run once its steps.csv shows this step"
    )
    parser.add_argument("--markdown-out", default=None)
    args = parser.parse_args(argv)

    out = Path(args.out)
    data = out / "motion-data"
    _, steps = SIZES[args.size]
    if not 1 <= args.kill_at < steps:
        parser.error(
            f"--kill-at must be in [1, {steps - 1}] for --size {args.size} ({steps} steps), "
            f"got {args.kill_at}"
        )
    lines = [
        f"Recipe kill-and-resume on {args.device}: motion preset ({args.size} size), torchrun "
        f"--nproc-per-node 1 ({'nccl' if args.device == 'cuda' else 'gloo'}), a checkpoint every step, "
        f"SIGKILL once step {args.kill_at} was logged, resumed (--run.resume) from the newest checkpoint.",
        f"Command: `python benchmarks/recipe_resume.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        "",
        "| amp | steps | resumed from step | steps after resume | max abs loss difference after resume "
        "| uninterrupted (s) | killed + resumed (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    failed = False
    for amp in args.amp:
        full, part = out / f"{amp}-full", out / f"{amp}-resumed"
        try:
            full_s = _train(full, data, args, amp, [])
            part_s, resumed_from = _train_killed(part, data, args, amp)
            part_s += _train(part, data, args, amp, ["--run.resume"])
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            failed = True
            print(error, file=sys.stderr)
            reason = " ".join(str(error).splitlines()[-1:]).replace("|", "/")[:160]
            lines.append(f"| {amp} | failed: {reason} | | | | | |")
            continue
        want, got = _losses(full / "steps.csv"), _losses(part / "steps.csv")
        after = [step for step in want if step > resumed_from]
        if sorted(want) != sorted(got) or not after:
            failed = True
            lines.append(f"| {amp} | steps differ: {sorted(want)} vs {sorted(got)} | | | | | |")
            continue
        difference = max(abs(want[step] - got[step]) for step in after)
        print(f"{amp}: max abs loss difference after resume {difference:.3g}", flush=True)
        lines.append(
            f"| {amp} | {len(want)} | {resumed_from} | {len(after)} | {difference:.3g} | {full_s:.1f} "
            f"| {part_s:.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.markdown_out:
        Path(args.markdown_out).write_text(table + "\n")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
