"""Reading video files with PyAV: probing the frame count and decoding a set of frame indices.

Every failure (missing file, no video stream, undecodable bytes, too few frames, a decode that runs past
its time limit) is raised as ``VideoDecodeError`` with the path and a short reason, so datasets can
apply one policy to all of them.

Time limits: with ``time_limit`` set, ``probe_video`` and ``decode_frames`` run in a helper thread
and the caller waits at most ``time_limit`` seconds. This cuts off a call that hangs *inside* FFmpeg (a
stalled network or FUSE read, a demuxer that never returns): PyAV releases the GIL around its blocking
FFmpeg calls (open, read, seek, send/receive), so the caller gets control back and raises
``VideoDecodeError``. The stuck thread cannot be killed; it is abandoned (a daemon thread), and later
calls on the same file fail at once while it is still stuck, so a file that hangs for good costs one thread
per process. A decode that is slow but progressing also checks the limit after every frame and stops.

Frame indices and the work done for a clip (``decode_frames``):

* Frame ``i`` is the ``i``-th frame a full decode from the start yields (presentation order).
* The decoder starts at the keyframe at or before the clip's first frame and stops after its last. Which
  decoded frame has which index comes from its timestamp: on the constant frame rate grid when the
  container's index holds every frame at evenly spaced times (mp4, mov, avi from constant-rate encoders),
  otherwise from the sorted timestamps of the packets, read by demuxing up to the clip's end (variable
  frame rate; mkv and webm, whose index holds only some keyframes). Anything that does not fit (a frame
  off the grid, a seek that lands after the first wanted frame, frames missing at the end, a decode error)
  makes the call decode again from the start and count frames, which is the definition above; a healthy
  file never takes that path.
* Frames the clip does not use and no other frame references (most B-frames) are not decoded at all
  (``skip_frame`` NONREF, set per packet), and only the wanted frames are converted to RGB.
* RGB conversion and the optional shrinking (``short_side``) run in FFmpeg's swscale with one thread and
  converters reused across frames: PyAV's ``frame.to_ndarray(format="rgb24")`` builds a new converter per
  frame, with automatic threads, which costs more than the conversion itself on small frames.
"""

from __future__ import annotations

import bisect
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
    """What ``probe_video`` learns from the container header.

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
            raise VideoDecodeError(
                path, f"{what} took longer than the {time_limit:g}s limit (an earlier call is still stuck)"
            )
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
    # One thread per decoder: the parallelism is across DataLoader workers. FFmpeg's frame and slice
    # threads cost as much CPU time per clip or more (measured at 176x144 to 1280x720, H.264 and MPEG-4).
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


def _sws(reformatter, frame, **options):  # PyAV reformatter and frames: untyped
    """``reformatter.reformat`` on one swscale thread. PyAV versions that take ``threads`` default to
    automatic threads, whose start-up costs more than a whole small frame; older ones use one thread."""
    global _SWS_THREADS
    if _SWS_THREADS:
        try:
            return reformatter.reformat(frame, threads=1, **options)
        except TypeError as error:
            if "threads" not in str(error):
                raise
            _SWS_THREADS = False
    return reformatter.reformat(frame, **options)


_SWS_THREADS = True
# Seeks per call before decoding from the start instead (each retry lands a keyframe earlier).
_SEEK_TRIES = 3
# Subsampled YUV is scaled to 4:4:4 at the output size, then converted: faster than scaling inside the RGB
# conversion (0.77 vs 1.16 ms per 1280x720 frame to 455x256) and as sharp; a 4:2:0 intermediate would be
# faster still but halves the chroma resolution of the small frame again.
_FULL_CHROMA = {
    "yuv420p": "yuv444p",
    "yuv422p": "yuv444p",
    "yuv411p": "yuv444p",
    "yuv410p": "yuv444p",
    "nv12": "yuv444p",
    "yuvj420p": "yuvj444p",
    "yuvj422p": "yuvj444p",
    "yuvj411p": "yuvj444p",
}


def _shrunk_size(height: int, width: int, short_side: int | None) -> tuple[int, int]:
    """The frame size after shrinking the shorter side to ``short_side`` (rounded as
    ``resize_short_side`` does); frames already at or below it are kept."""
    if short_side is None or min(height, width) <= short_side:
        return height, width
    if height <= width:
        return short_side, max(short_side, round(width * short_side / height))
    return max(short_side, round(height * short_side / width)), short_side


class _Grid:
    """Indices from timestamps on a constant frame rate grid: frame ``i`` is at ``start + i / fps``."""

    def __init__(self, start_pts: int, time_base: float, fps: float) -> None:
        self.start_pts, self.time_base, self.fps = start_pts, time_base, fps

    def index(self, pts: int) -> int | None:
        """The index at ``pts``; None when ``pts`` is off the grid (more than a quarter frame away)."""
        exact = (pts - self.start_pts) * self.time_base * self.fps
        index = math.floor(exact + 0.5)
        return index if index >= 0 and abs(exact - index) <= 0.25 else None

    def pts(self, index: int) -> int:
        return self.start_pts + int(index / self.fps / self.time_base)


class _Table:
    """Indices from the sorted presentation timestamps of the first frames (any frame rate)."""

    def __init__(self, stamps: list[int]) -> None:
        self.stamps = stamps

    def index(self, pts: int) -> int | None:
        """The index at ``pts``: ``len(stamps)`` past the table's end (a frame after every frame the clip
        needs); None for a time that is no frame's."""
        if pts > self.stamps[-1]:
            return len(self.stamps)
        index = bisect.bisect_left(self.stamps, pts)
        return index if self.stamps[index] == pts else None

    def pts(self, index: int) -> int:
        return self.stamps[index]


def _grid_timeline(stream, last: int) -> _Grid | None:
    """The constant frame rate grid, when the container's index has an entry per frame and the entries up
    to frame ``last`` (and a few after, for reordered frames) are evenly spaced at the stream's rate."""
    fps = _fps(stream)
    time_base = float(stream.time_base) if stream.time_base else 0.0
    entries = getattr(stream, "index_entries", None)  # older PyAV has none: the timestamp table then
    if fps <= 0 or time_base <= 0 or entries is None or not 0 < int(stream.frames or 0) <= len(entries):
        return None
    # Index timestamps are decode times; with a constant rate they are evenly spaced like presentation times.
    stamps = [entry.timestamp for entry in entries[: last + 8] if not entry.is_discard]
    if not stamps:
        return None
    for k, stamp in enumerate(stamps):
        if abs((stamp - stamps[0]) * time_base * fps - k) > 0.25:
            return None
    return _Grid(stream.start_time or 0, time_base, fps)


class _ClipDecoder:
    """One ``decode_frames`` call: the wanted frames, where they go, and the two ways to find them."""

    def __init__(
        self,
        path: str | Path,
        wanted: list[int],
        short_side: int | None,
        deadline: float | None,
        time_limit: float | None,
    ) -> None:
        from av.video.reformatter import Interpolation, VideoReformatter

        self.path, self.wanted, self.short_side = path, wanted, short_side
        self.deadline, self.time_limit = deadline, time_limit
        self.rows = {index: row for row, index in enumerate(wanted)}
        self._scaler, self._converter = VideoReformatter(), VideoReformatter()
        # Bilinear with swscale's widened filter when shrinking: antialiased like transforms.resize.
        self._interpolation = Interpolation.BILINEAR
        self.source_size: tuple[int, int] | None = None
        self.frames: np.ndarray | None = None
        self.found: set[int] = set()

    def check_deadline(self) -> None:
        # Stops a slow but progressing decode (in the abandoned thread, when the caller gave up).
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise VideoDecodeError(self.path, f"decode took longer than the {self.time_limit:g}s limit")

    def keep(self, index: int, frame) -> None:
        """Convert ``frame`` (frame ``index`` of the clip) to RGB at the output size, into its row."""
        size = (frame.height, frame.width)
        if self.source_size is None:
            self.source_size = size
            height, width = _shrunk_size(*size, self.short_side)
            self.frames = np.empty((len(self.wanted), height, width, 3), dtype=np.uint8)
        elif size != self.source_size:
            raise VideoDecodeError(self.path, f"frame size changes mid-stream ({self.source_size} -> {size})")
        assert self.frames is not None
        height, width = self.frames.shape[1:3]
        if (height, width) == size:
            rgb = _sws(self._converter, frame, format="rgb24")
        else:
            middle = _FULL_CHROMA.get(frame.format.name)
            if middle is not None:
                frame = _sws(
                    self._scaler,
                    frame,
                    width=width,
                    height=height,
                    format=middle,
                    interpolation=self._interpolation,
                )
            rgb = _sws(
                self._converter,
                frame,
                width=width,
                height=height,
                format="rgb24",
                interpolation=self._interpolation,
            )
        self.frames[self.rows[index]] = rgb.to_ndarray()
        self.found.add(index)

    def by_timestamps(self) -> bool:
        """Seek to the keyframe at or before the first wanted frame, index decoded frames by timestamp,
        skip unwanted non-reference frames, stop after the last wanted one. False when anything does
        not fit (see the module notes): the caller then decodes from the start, counting."""
        first, last = self.wanted[0], self.wanted[-1]
        container, stream = _open(self.path)
        try:
            timeline: _Grid | _Table | None = _grid_timeline(stream, last)
            seek = first > 0
            if timeline is None:
                timeline = self._table(container, stream, last)
                if timeline is None:
                    return False
                seek = True  # the table was read by demuxing: back to the start at least
            target: int | None = timeline.pts(first) if seek else None
            for _ in range(_SEEK_TRIES):
                outcome = self._pass(container, stream, timeline, target)
                if isinstance(outcome, bool):
                    return outcome
                target = outcome
            return False
        except VideoDecodeError:
            raise
        except Exception:  # noqa: BLE001 - a decode error or a refused seek: the counting pass reports it
            return False
        finally:
            container.close()

    def _pass(self, container, stream, timeline: _Grid | _Table, target: int | None) -> bool | int:
        """One seek (to ``target``, None: stay at the start) and decode. Returns whether every wanted frame
        was found, or a new, earlier target when the seek landed on a keyframe after the first wanted frame
        (demuxers that seek by decode time can, with B-frames: the keyframe is decoded before the frames
        shown just before it)."""
        first, last = self.wanted[0], self.wanted[-1]
        if target is not None:
            # backward=True lands on the keyframe at or before the target.
            container.seek(target, stream=stream, backward=True, any_frame=False)
        codec = stream.codec_context
        codec.skip_frame = "DEFAULT"
        skipping = False
        previous: int | None = None
        landed: int | None = None  # decode time of the keyframe the seek landed on
        for packet in container.demux(stream):
            if landed is None and packet.is_keyframe:
                landed = packet.dts if packet.dts is not None else packet.pts
            index = None if packet.pts is None else timeline.index(packet.pts)
            skip = index is not None and index not in self.rows
            if skip != skipping:
                # Applies to this packet: its frame is skipped only if no other frame references it.
                codec.skip_frame = "NONREF" if skip else "DEFAULT"
                skipping = skip
            for frame in codec.decode(packet):
                if previous is None and not frame.key_frame:
                    continue  # a leading frame before the seek's keyframe: may lack its references
                index = None if frame.pts is None else timeline.index(frame.pts)
                if index is None or (previous is not None and index <= previous):
                    return False
                if previous is None and index > first:
                    # Strictly before that keyframe, whether the demuxer compares decode or presentation
                    # times.
                    return landed - 1 if landed is not None and target != landed - 1 else False
                previous = index
                if index in self.rows:
                    self.keep(index, frame)
                self.check_deadline()
                if index >= last:
                    return len(self.found) == len(self.wanted)
            self.check_deadline()
        return False

    def _table(self, container, stream, last: int) -> _Table | None:
        """Presentation timestamps of frames ``0..last``, by demuxing from the start (no decoding); None
        when a packet has no timestamp or the file ends (or breaks) before frame ``last``."""
        stamps: list[int] = []
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or getattr(packet, "is_discard", False):
                    continue  # the end-of-stream packet; frames cut by an edit list are never shown
                if packet.pts is None:
                    return None
                bisect.insort(stamps, packet.pts)
                # A later packet is shown no earlier than it is decoded: past this, the first frames are
                # known.
                if len(stamps) > last and packet.dts is not None and packet.dts > stamps[last]:
                    break
                self.check_deadline()
        except VideoDecodeError:
            raise
        except Exception:  # noqa: BLE001 - a damaged tail ends the table like the end of the file
            return _Table(stamps[: last + 1]) if len(stamps) > last else None
        return _Table(stamps[: last + 1]) if len(stamps) > last else None

    def by_counting(self) -> None:
        """Decode from the start, frame ``i`` being the ``i``-th decoded frame: the definition, for files
        whose timestamps do not fit (and to name exactly what a damaged file still holds)."""
        self.found = set()
        container, stream = _open(self.path)
        position = -1
        stopped: Exception | None = None
        try:
            for frame in container.decode(stream):
                position += 1
                if position in self.rows:
                    self.keep(position, frame)
                self.check_deadline()
                if position >= self.wanted[-1]:
                    break
        except VideoDecodeError:
            raise
        except Exception as error:
            if position < 0:
                raise VideoDecodeError(
                    self.path, f"decode failed: {type(error).__name__}: {error}"
                ) from error
            stopped = error  # frames up to here decoded: a truncated or damaged tail
        finally:
            container.close()
        missing = [i for i in self.wanted if i not in self.found]
        if missing:
            reason = (
                f"only {position + 1} decodable frames; the clip needs frame {missing[0]} "
                f"(and {len(missing)} in all)"
            )
            if stopped is not None:
                reason += f"; decoding stopped at {type(stopped).__name__}: {stopped}"
            raise VideoDecodeError(self.path, reason)


def decode_frames(
    path: str | Path, indices: Sequence[int], time_limit: float | None = None, short_side: int | None = None
) -> torch.Tensor:
    """Decode the frames at ``indices`` (0-based, in presentation order; repeats allowed).

    Frame ``i`` is the ``i``-th frame of a full decode. Only the clip's part of the file is decoded: from the
    keyframe at or before the first index to the last index, skipping the unused frames that nothing
    references; only the wanted frames are converted (see the module notes).

    Args:
        path: the video file.
        indices: frame indices; need not be sorted or unique.
        time_limit: seconds the caller waits for the whole call (open, seek, decode) before it raises
            ``VideoDecodeError``, also when FFmpeg itself hangs (see the module notes); None waits
            as long as it takes.
        short_side: shrink the frames in FFmpeg so that their shorter side is this long (aspect kept,
            bilinear, antialiased), e.g. 256 for a 224 training crop: cheaper than converting full-size
            frames and resizing them in torch. Frames whose shorter side is already at most this long
            are returned as they are (enlarging adds work and no detail: the transforms resize to the
            crop anyway). None (default) keeps the source size.

    Returns:
        uint8 RGB frames in ``indices`` order.

    Shape:
        - return: (len(indices), H, W, 3), H x W the source size or the shrunk size

    Raises:
        VideoDecodeError: unreadable file, time limit exceeded, or an index past the last decodable frame.
    """
    if len(indices) == 0:
        raise ValueError("decode_frames: indices is empty")
    wanted = sorted({int(i) for i in indices})
    if wanted[0] < 0:
        raise ValueError(f"decode_frames: negative frame index {wanted[0]}")
    if short_side is not None and short_side < 1:
        raise ValueError(
            f"decode_frames: short_side must be a positive number of pixels or None, got {short_side}"
        )
    deadline = None if time_limit is None else time.monotonic() + time_limit
    return _with_time_limit(
        path, time_limit, "decode", lambda: _decode(path, indices, wanted, short_side, deadline, time_limit)
    )


def _decode(
    path: str | Path,
    indices: Sequence[int],
    wanted: list[int],
    short_side: int | None,
    deadline: float | None,
    time_limit: float | None,
) -> torch.Tensor:
    _import_av()
    clip = _ClipDecoder(path, wanted, short_side, deadline, time_limit)
    if not clip.by_timestamps():
        clip.by_counting()
    assert clip.frames is not None
    frames = torch.from_numpy(clip.frames)
    if len(indices) == len(wanted) and all(int(i) == w for i, w in zip(indices, wanted, strict=True)):
        return frames
    return frames[[clip.rows[int(i)] for i in indices]]
