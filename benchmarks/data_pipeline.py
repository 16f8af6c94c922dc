"""Training clips from video files: ``decode_frames`` and the training sample against a plain PyAV loop.

Test videos are generated with PyAV into a temporary directory: H.264 (libx264, 3 B-frames, crf 23,
preset veryfast) and MPEG-4 part 2 (mpeg4, qscale 4, no B-frames) at 176x144, 340x256 and 1280x720, with a
keyframe every 12 and every 250 frames (fixed GOP, no scene-cut keyframes), 30 fps, ``--seconds`` long. The
content is a textured scene panned like a moving camera, a moving block and light noise.

Every clip is ``--frames`` frames ``--stride`` apart (24 x 4: a span of 93 frames); the starts are the ones
``ClipDataset`` draws for sample 0 in epochs 0, 1, 2, ..., so every variant decodes the same clips:

* ``(a) decode_frames``: ``decode_frames(path, indices)``, frames at the source size.
* ``(b) decode_frames, short side``: the same with ``short_side=--short-side`` (256 for a 224 crop).
* ``(c) training sample, short side``: ``ClipDataset(..., short_side=--short-side)[(0, epoch)]``: clip
  sampling, decoding (in the time-limit thread, 20 s as in the recipes), ``TrainTransform(--crop)`` (random
  resized crop, flip, normalisation) to a float clip.
* ``(c0) training sample, full size``: the same without ``short_side`` (frames at the source size).
* ``(d) plain PyAV``: open, decoder on one thread, seek to the keyframe at or before the start, ``for frame in
  container.decode(video=0)``, ``frame.to_ndarray(format="rgb24")`` for every frame of the span, stop after
  the last; the clip's frames are then picked from the span.
* ``(e) plain PyAV, frame threads`` (with ``--frame-threads``): (d) with ``stream.thread_type = "AUTO"``.

One process, ``torch.set_num_threads(1)``. Per video the variants are interleaved (every round runs each
variant once, in an order rotated per round) after ``--warmup`` rounds, and the table gives medians over the
rounds, so drifts in the load of a shared machine hit every variant alike. Clips/s is 1 / the median wall time
of a clip; the CPU columns divide by the process's CPU time instead (all its threads), which is what a core
delivers and is less sensitive to other jobs on the machine. Before timing, (a) is checked to equal (d) byte
for byte on the first clip.

Usage::

    python benchmarks/data_pipeline.py --repeats 15 --markdown-out data_pipeline.md
    python benchmarks/data_pipeline.py --smoke        # tiny videos, a few seconds
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from _common import cpu_name, write_outputs

from chunkformer.data import (
    ClipDataset,
    ClipSampler,
    TrainTransform,
    VideoList,
    VideoRecord,
    decode_frames,
    probe_video,
)
from chunkformer.data.clip_dataset import sample_seed

CODECS = {"h264": "libx264", "mpeg4": "mpeg4"}


def _scene(width: int, height: int, count: int, seed: int) -> Iterator[np.ndarray]:
    """``count`` RGB frames: a textured scene panned by (3, 1) pixels a frame, a moving block, light noise."""
    rng = np.random.default_rng(seed)
    pad_x, pad_y = 3 * count + 8, count + 8
    yy, xx = np.mgrid[0 : height + pad_y, 0 : width + pad_x].astype(np.float32)
    blocks = rng.integers(0, 256, ((height + pad_y) // 16 + 1, (width + pad_x) // 16 + 1, 3), dtype=np.uint8)
    texture = blocks.repeat(16, 0).repeat(16, 1)[: height + pad_y, : width + pad_x].astype(np.float32)
    waves = 64 * (np.sin(xx / 23)[..., None] + np.cos(yy / 17)[..., None]) + 128
    scene = np.clip(0.5 * texture + 0.5 * waves, 0, 255).astype(np.uint8)
    noise = [rng.integers(-5, 6, (height, width, 3), dtype=np.int16) for _ in range(4)]
    side = max(height // 6, 2)
    for t in range(count):
        frame = scene[t : t + height, 3 * t : 3 * t + width].astype(np.int16) + noise[t % 4]
        top = int((height - side) * (0.5 + 0.4 * np.sin(t / 9)))
        left = int((width - side) * (t / max(count - 1, 1)))
        frame[top : top + side, left : left + side] = (40 * t) % 256
        yield np.clip(frame, 0, 255).astype(np.uint8)


def write_video(path: str, codec: str, width: int, height: int, count: int, gop: int, fps: int = 30) -> None:
    """Encode ``count`` frames of :func:`_scene` with a keyframe every ``gop`` frames."""
    import av

    with av.open(path, "w") as container:
        stream = container.add_stream(CODECS[codec], rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.thread_count = 1
        if codec == "h264":
            stream.options = {
                "crf": "23",
                "preset": "veryfast",
                "bframes": "3",
                "keyint": str(gop),
                "min-keyint": str(gop),
                "scenecut": "0",
            }
        else:
            stream.options = {"qscale": "4"}
        for image in _scene(width, height, count, seed=width + gop):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def plain_pyav(path: str, indices: list[int], frame_threads: bool = False) -> np.ndarray:
    """The baseline: what one writes with PyAV alone (decoder on one thread unless ``frame_threads``)."""
    import av

    first, last = indices[0], indices[-1]
    with av.open(path) as container:
        stream = container.streams.video[0]
        if frame_threads:
            stream.thread_type = "AUTO"
        else:
            stream.codec_context.thread_count = 1
        fps, time_base, start = float(stream.average_rate), float(stream.time_base), stream.start_time or 0
        if first > 0:
            container.seek(
                start + int(first / fps / time_base), stream=stream, backward=True, any_frame=False
            )
        span: dict[int, np.ndarray] = {}
        for frame in container.decode(video=0):
            index = round((frame.pts - start) * time_base * fps)
            if index >= first:
                span[index] = frame.to_ndarray(format="rgb24")
            if index >= last:
                break
    return np.stack([span[i] for i in indices])


def _measure(run: Callable[[int], object], epoch: int) -> tuple[float, float]:
    """Wall and CPU seconds of ``run(epoch)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    run(epoch)
    return time.perf_counter() - wall, time.process_time() - cpu


def _bench_video(path: str, variants: list[str], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds per clip of every variant on one video, interleaved."""
    info = probe_video(path)
    sampler = ClipSampler(args.frames, args.stride)
    transform = TrainTransform(args.crop)
    videos = VideoList([VideoRecord(path, 0)], ["video"])
    shrunk = ClipDataset(videos, sampler, transform, decode_time_limit=20.0, short_side=args.short_side)
    full = ClipDataset(videos, sampler, transform, decode_time_limit=20.0)

    def clip(epoch: int) -> list[int]:
        # The clip ClipDataset draws for sample 0 in this epoch (its first attempt).
        generator = torch.Generator().manual_seed(sample_seed(0, epoch, 0))
        return sampler.train_indices(info.num_frames, generator, info.fps)

    runs: dict[str, Callable[[int], object]] = {
        variants[0]: lambda e: decode_frames(path, clip(e)),
        variants[1]: lambda e: decode_frames(path, clip(e), short_side=args.short_side),
        variants[2]: lambda e: shrunk[(0, e)],
        variants[3]: lambda e: full[(0, e)],
        variants[4]: lambda e: plain_pyav(path, clip(e)),
    }
    if args.frame_threads:
        runs[variants[5]] = lambda e: plain_pyav(path, clip(e), frame_threads=True)
    if not np.array_equal(decode_frames(path, clip(0)).numpy(), plain_pyav(path, clip(0))):
        raise AssertionError(f"{path}: decode_frames and the plain PyAV loop disagree on clip 0")
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    names = list(runs)
    for round_index in range(args.warmup + args.repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:  # rotated: no variant always runs first
            measured = _measure(runs[name], round_index)
            if round_index >= args.warmup:
                times[name].append(measured)
    return {
        name: {
            "wall_s": statistics.median(w for w, _ in samples),
            "cpu_s": statistics.median(c for _, c in samples),
        }
        for name, samples in times.items()
    }


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", nargs="+", default=["176x144", "340x256", "1280x720"], help="WxH of the videos"
    )
    parser.add_argument("--codecs", nargs="+", default=list(CODECS), choices=list(CODECS))
    parser.add_argument("--gops", nargs="+", type=int, default=[12, 250], help="keyframe intervals")
    parser.add_argument("--seconds", type=float, default=5.0, help="video length at 30 fps")
    parser.add_argument("--frames", type=int, default=24, help="frames per clip")
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--short-side", type=int, default=256, help="short_side of (b) and (c)")
    parser.add_argument("--crop", type=int, default=224, help="TrainTransform crop of (c)")
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds per video")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--frame-threads", action="store_true", help="add (e): (d) with FFmpeg's frame threads"
    )
    parser.add_argument(
        "--video-dir", default=None, help="write (and reuse) the test videos here, not in a temp dir"
    )
    parser.add_argument(
        "--note", default="", help="appended to the machine line (e.g. 'shared with another job')"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny videos and few rounds: checks the script runs"
    )
    parser.add_argument("--markdown-out", default=None)
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.gops, args.seconds, args.repeats, args.warmup = ["64x48"], [12], 1.5, 2, 1
        args.frames, args.stride, args.short_side, args.crop = 8, 2, 32, 24
    torch.set_num_threads(1)
    import av

    temporary = None if args.video_dir else tempfile.TemporaryDirectory(prefix="chunkformer-data-bench-")
    video_dir = args.video_dir or temporary.name  # type: ignore[union-attr]
    os.makedirs(video_dir, exist_ok=True)
    count = round(args.seconds * 30)
    variants = [
        "(a) decode_frames",
        "(b) decode_frames, short side",
        "(c) training sample, short side",
        "(c0) training sample, full size",
        "(d) plain PyAV",
    ]
    if args.frame_threads:
        variants.append("(e) plain PyAV, frame threads")

    rows = []
    for codec in args.codecs:
        for size in args.sizes:
            width, height = (int(v) for v in size.split("x"))
            for gop in args.gops:
                path = os.path.join(video_dir, f"{codec}_{width}x{height}_gop{gop}_{count}.mp4")
                if not os.path.exists(path):
                    write_video(path, codec, width, height, count, gop)
                row = {
                    "codec": codec,
                    "size": f"{width}x{height}",
                    "gop": gop,
                    **_bench_video(path, variants, args),
                }
                rows.append(row)
                print(
                    f"{codec} {width}x{height} gop {gop}: "
                    + ", ".join(f"{name.split()[0]} {row[name]['wall_s'] * 1e3:.1f} ms" for name in variants),
                    flush=True,
                )
    if temporary is not None:
        temporary.cleanup()

    plain = variants[4]
    command = shlex.join(
        ["python", "benchmarks/data_pipeline.py", *(argv if argv is not None else sys.argv[1:])]
    )
    note = f"; {args.note}" if args.note else ""
    machine = (
        f"Machine: {cpu_name()}, 1 thread (torch.set_num_threads(1), one process){note}; "
        f"torch {torch.__version__}, PyAV {av.__version__}, "
        f"FFmpeg {getattr(av, 'ffmpeg_version_info', '?')}; {count} frames at 30 fps per video; "
        f"clips of {args.frames} frames, stride {args.stride}; short side {args.short_side}, "
        f"crop {args.crop}; median of {args.repeats} interleaved rounds after {args.warmup} warm-up rounds"
    )

    def ratio_table(title: str, key: str) -> list[str]:
        """Clips per second of ``key`` (wall_s or cpu_s) per variant, with the speed-up over (d)."""
        table = [
            title,
            "",
            "| codec | size | gop | " + " | ".join(variants) + " |",
            "|---|---|---|" + "---|" * len(variants),
        ]
        for row in rows:
            base = row[plain][key]
            cells = [f"{1 / row[v][key]:.1f} ({base / row[v][key]:.2f}x)" for v in variants]
            table.append(f"| {row['codec']} | {row['size']} | {row['gop']} | " + " | ".join(cells) + " |")
        return table

    lines = [machine, f"Command: `{command.strip()}`", ""]
    lines += ratio_table(
        "Clips/s (wall clock), and in parentheses the speed-up over (d) plain PyAV on the same clips:",
        "wall_s",
    )
    lines += [
        "",
        *ratio_table(
            "Clips per CPU-second (the process's CPU time, all threads), and the speed-up over (d):", "cpu_s"
        ),
    ]
    table = "\n".join(lines)
    write_outputs(table, args.markdown_out, args.json_out, rows)
    return table


if __name__ == "__main__":
    main()
