"""Reading video files with PyAV: probing the frame count and decoding a set of frame indices.

Every failure (missing file, no video stream, undecodable bytes, too few frames, a decode that runs past
its time limit) is raised as :class:`VideoDecodeError` with the path and a short reason, so datasets can
apply one policy to all of them.

Time limits: with ``time_limit`` set, :func:`probe_video` and :func:`decode_frames` run in a helper thread
and the caller waits at most ``time_limit`` seconds. This cuts off a call that hangs *inside* FFmpeg (a
stalled network or FUSE read, a demuxer that never returns): PyAV releases the GIL around its blocking
FFmpeg calls (open, read, seek, send/receive), so the caller gets control back and raises
:class:`VideoDecodeError`. The stuck thread cannot be killed; it is abandoned (a daemon thread), and later
calls on the same file fail at once while it is still stuck, so a file that hangs for good costs one thread
per process. A decode that is slow but progressing also checks the limit after every frame and stops.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

__all__ = ["VideoDecodeError", "VideoInfo", "decode_frames", "probe_video"]


class VideoDecodeError(RuntimeError):
    """A video could not be read. ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` learns from the container header.

    Attributes:
        num_frames: frames of the first video stream (counted by decoding when the header has no count).
        fps: the stream's average frame rate.
        height: frame height in pixels.
        width: frame width in pixels.
    """

    num_frames: int
    fps: float
    height: int
    width: int


_T = TypeVar("_T")
# Files whose time-limited call was abandoned, with the thread still running it (per process).
_STUCK: dict[str, threading.Thread] = {}


def _with_time_limit(path: str | Path, time_limit: float | None, what: str, function: Callable[[], _T]) -> _T:
    """``function()`` in a helper thread, waiting at most ``time_limit`` seconds (None: call it directly)."""
    if time_limit is None:
        return function()
    key = str(path)
    stuck = _STUCK.get(key)
    if stuck is not None:
        if stuck.is_alive():
            raise VideoDecodeError(path, f"{what} took longer than the {time_limit:g}s limit (an earlier call is still stuck)")
        del _STUCK[key]
    outcome: dict[str, object] = {}
    finished = threading.Event()

    def run() -> None:
        try:
            outcome["value"] = function()
        except BaseException as error:  # handed to the caller below
            outcome["error"] = error
        finally:
            finished.set()

    thread = threading.Thread(target=run, name=f"chunkformer {what}: {key}", daemon=True)
    thread.start()
    if not finished.wait(time_limit):
        _STUCK[key] = thread
        raise VideoDecodeError(path, f"{what} took longer than the {time_limit:g}s limit")
    if "error" in outcome:
        error = outcome.pop("error")
        assert isinstance(error, BaseException)
        raise error
    return outcome["value"]  # type: ignore[return-value]


def _import_av():  # noqa: ANN202 - av's module type
    try:
        import av
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("decoding videos needs PyAV: pip install 'chunkformer[video]'") from error
    return av


def _open(path: str | Path):  # noqa: ANN202 - av container
    av = _import_av()
    if not os.path.isfile(path):
        raise VideoDecodeError(path, "file not found")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except Exception as error:  # PyAV raises many FFmpeg error types; all mean "unreadable" here
        raise VideoDecodeError(path, f"cannot open: {type(error).__name__}: {error}") from error
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(path, "no video stream (audio only?)")
    stream = container.streams.video[0]
    # One thread per decoder: the parallelism is across DataLoader workers, and tiny frames decode
    # slower with FFmpeg's frame threads than without.
    stream.codec_context.thread_count = 1
    return container, stream


def _fps(stream) -> float:  # noqa: ANN001 - av stream
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def probe_video(path: str | Path, time_limit: float | None = None) -> VideoInfo:
    """Frame count, frame rate and frame size of ``path``'s first video stream.

    Args:
        path: the video file.
        time_limit: seconds the caller waits (see the module notes); None waits as long as it takes.

    Raises:
        VideoDecodeError: when the file is missing, empty, not a video, has no frames, or the probe runs
            past ``time_limit``.
    """
    return _with_time_limit(path, time_limit, "probe", lambda: _probe(path))


def _probe(path: str | Path) -> VideoInfo:
    container, stream = _open(path)
    try:
        num_frames = int(stream.frames or 0)
        fps = _fps(stream)
        height, width = int(stream.codec_context.height), int(stream.codec_context.width)
        if num_frames <= 0:
            # Some containers (e.g. webm, raw streams) have no frame count in the header: count by demuxing.
            num_frames = sum(1 for packet in container.demux(stream) if packet.size)
    except VideoDecodeError:
        raise
    except Exception as error:
        raise VideoDecodeError(path, f"cannot probe: {type(error).__name__}: {error}") from error
    finally:
        container.close()
    if num_frames <= 0 or height <= 0 or width <= 0:
        raise VideoDecodeError(path, f"no frames (frames={num_frames}, size={height}x{width})")
    return VideoInfo(num_frames=num_frames, fps=fps, height=height, width=width)


# BT.601 limited range, FFmpeg's default for untagged YUV: what swscale would do, without its per-frame
# set-up cost (which dominates for small frames).
def _yuv420p_to_rgb(planes: np.ndarray, height: int, width: int) -> np.ndarray:
    y = planes[:height].astype(np.float32)
    chroma = planes[height:].reshape(2, height // 2, width // 2).astype(np.float32)
    u = np.repeat(np.repeat(chroma[0], 2, axis=0), 2, axis=1) - 128.0
    v = np.repeat(np.repeat(chroma[1], 2, axis=0), 2, axis=1) - 128.0
    y = (y - 16.0) * 1.164
    rgb = np.stack([y + 1.596 * v, y - 0.392 * u - 0.813 * v, y + 2.017 * u], axis=-1)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def _to_rgb(frame) -> np.ndarray:  # noqa: ANN001 - av frame
    if frame.format.name == "yuv420p" and frame.height % 2 == 0 and frame.width % 2 == 0:
        return _yuv420p_to_rgb(frame.to_ndarray(), frame.height, frame.width)
    return frame.to_ndarray(format="rgb24")


def decode_frames(path: str | Path, indices: Sequence[int], time_limit: float | None = None) -> torch.Tensor:
    """Decode the frames at ``indices`` (0-based, in presentation order; repeats allowed).

    Seeks to the keyframe before the first index and decodes forward until the last, so a clip from the
    middle of a long video does not decode the whole file.

    Args:
        path: the video file.
        indices: frame indices; need not be sorted or unique.
        time_limit: seconds the caller waits for the whole call (open, seek, decode) before it raises
            :class:`VideoDecodeError`, also when FFmpeg itself hangs (see the module notes); None waits
            as long as it takes.

    Returns:
        uint8 frames in ``indices`` order.

    Shape:
        - return: (len(indices), H, W, 3)

    Raises:
        VideoDecodeError: unreadable file, time limit exceeded, or an index past the last decodable frame.
    """
    if len(indices) == 0:
        raise ValueError("decode_frames: indices is empty")
    wanted = sorted(set(int(i) for i in indices))
    if wanted[0] < 0:
        raise ValueError(f"decode_frames: negative frame index {wanted[0]}")
    deadline = None if time_limit is None else time.monotonic() + time_limit
    return _with_time_limit(path, time_limit, "decode", lambda: _decode(path, indices, wanted, deadline, time_limit))


def _decode(
    path: str | Path, indices: Sequence[int], wanted: list[int], deadline: float | None, time_limit: float | None
) -> torch.Tensor:
    container, stream = _open(path)
    fps = _fps(stream)
    time_base = float(stream.time_base) if stream.time_base else 0.0
    start_pts = stream.start_time or 0
    found: dict[int, np.ndarray] = {}
    try:
        seek_index = wanted[0]
        if seek_index > 0 and fps > 0 and time_base > 0:
            # backward=True lands on the keyframe at or before the target; the pts below re-derive indices.
            target = start_pts + int(seek_index / fps / time_base)
            container.seek(target, stream=stream, backward=True, any_frame=False)
        else:
            seek_index = 0
        position = -1
        size: tuple[int, int] | None = None
        for frame in container.decode(stream):
            if frame.pts is not None and fps > 0 and time_base > 0 and seek_index > 0:
                position = int(math.floor((frame.pts - start_pts) * time_base * fps + 0.5))
            else:
                # Decoding from the start: presentation order is decode output order.
                position += 1
            if position in found or position < wanted[0]:
                pass
            elif position in wanted:
                rgb = _to_rgb(frame)
                if size is None:
                    size = rgb.shape[:2]
                elif rgb.shape[:2] != size:
                    raise VideoDecodeError(path, f"frame size changes mid-stream ({size} -> {rgb.shape[:2]})")
                found[position] = rgb
            # Stops a slow but progressing decode (in the abandoned thread, when the caller gave up).
            if deadline is not None and time.monotonic() > deadline:
                raise VideoDecodeError(path, f"decode took longer than the {time_limit:g}s limit")
            if position >= wanted[-1]:
                break
    except VideoDecodeError:
        raise
    except Exception as error:
        raise VideoDecodeError(path, f"decode failed: {type(error).__name__}: {error}") from error
    finally:
        container.close()
    missing = [i for i in wanted if i not in found]
    if missing:
        raise VideoDecodeError(
            path, f"only {position + 1} decodable frames; the clip needs frame {missing[0]} (and {len(missing)} in all)"
        )
    return torch.from_numpy(np.stack([found[int(i)] for i in indices]))
