"""Seek-exact clips: ``decode_frames`` from anywhere in a video gives exactly the frames of a full decode.

Frame ``i`` is the ``i``-th frame a plain PyAV decode from the start yields, converted with
``frame.to_ndarray(format="rgb24")``; a clip must match it byte for byte whatever its start, on videos with
keyframes every 4, 12 and 250 frames, B-frames (H.264 and MPEG-4), mp4 and mkv, and variable frame rates.
Each test runs the seek path (constant-rate grid or timestamp table) and checks that a healthy video never
needs the decode-from-the-start fallback, and runs the fallback alone to check it agrees.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from chunkformer.data import (
    ClipDataset,
    ClipSampler,
    TrainTransform,
    VideoDecodeError,
    VideoList,
    VideoRecord,
    decode_frames,
    probe_video,
    video_io,
)

av = pytest.importorskip("av")

WIDTH, HEIGHT, FRAMES = 64, 48, 60
# name: (container, encoder, keyframe interval, B-frames, variable frame rate)
VIDEOS = {
    "h264_gop4_b2.mp4": ("libx264", 4, 2, False),
    "h264_gop12_b3.mp4": ("libx264", 12, 3, False),
    "h264_gop250_b3.mp4": ("libx264", 250, 3, False),
    "h264_gop12_b3.mkv": ("libx264", 12, 3, False),
    "mpeg4_gop12_b1.mp4": ("mpeg4", 12, 1, False),  # its mp4 seeks land after the wanted frame: re-seek
    "h264_vfr_gop12_b2.mp4": ("libx264", 12, 2, True),
    "h264_vfr_gop12_b2.mkv": ("libx264", 12, 2, True),
}


def _image(index: int) -> np.ndarray:
    """A frame unlike its neighbours: random 8x8 blocks and a moving gradient."""
    blocks = (
        np.random.default_rng(index).integers(0, 128, (HEIGHT // 8, WIDTH // 8, 3)).repeat(8, 0).repeat(8, 1)
    )
    gradient = (np.arange(WIDTH)[None, :, None] + 3 * index) % 64 * 2
    return (blocks + gradient).astype(np.uint8)


def _write(
    path: Path, encoder: str, gop: int, bframes: int, vfr: bool, container_options: dict | None = None
) -> None:
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(encoder, rate=25)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.thread_count = 1  # libx264's output differs with its thread count
        if encoder == "libx264":
            stream.options = {
                "crf": "18",
                "preset": "veryfast",
                "bframes": str(bframes),
                "keyint": str(gop),
                "scenecut": "0",
            }
        else:
            stream.codec_context.max_b_frames = bframes
            stream.options = {"qscale": "3"}
        if vfr:
            stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        durations = np.random.default_rng(7).choice([20, 33, 40, 80], FRAMES)  # ms, for vfr
        pts = 0
        for index in range(FRAMES):
            frame = av.VideoFrame.from_ndarray(_image(index), format="rgb24")
            if vfr:
                frame.pts, frame.time_base = pts, Fraction(1, 1000)
                pts += int(durations[index])
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _full_decode(path: Path) -> np.ndarray:
    """The reference: every frame of a plain PyAV decode from the start, in output order."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, np.ndarray]]:
    root = tmp_path_factory.mktemp("seek")
    out = {}
    for name, (encoder, gop, bframes, vfr) in VIDEOS.items():
        _write(root / name, encoder, gop, bframes, vfr)
        frames = _full_decode(root / name)
        assert len(frames) == FRAMES, name
        out[name] = (root / name, frames)
    return out


@pytest.fixture(params=["seek", "table", "count"])
def path_taken(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``seek``: as shipped, and the counting fallback must not run; ``table``: no constant-rate grid
    (timestamps from the demuxed packets, as for mkv or variable frame rates), no fallback either;
    ``count``: only the fallback (decode from the start, counting frames)."""
    if request.param in ("seek", "table"):

        def no_fallback(self: video_io._ClipDecoder) -> None:
            raise AssertionError(
                f"{self.path}: frames {self.wanted} needed the decode-from-the-start fallback"
            )

        monkeypatch.setattr(video_io._ClipDecoder, "by_counting", no_fallback)
    if request.param in ("table", "count"):
        monkeypatch.setattr(video_io, "_grid_timeline", lambda stream, last: None)
    if request.param == "count":
        monkeypatch.setattr(video_io._ClipDecoder, "_table", lambda self, container, stream, last: None)
    yield request.param


@pytest.mark.parametrize("name", VIDEOS)
def test_a_clip_from_every_start_equals_the_full_decode(videos: dict, name: str, path_taken: str) -> None:
    path, full = videos[name]
    for start in range(FRAMES):
        # A strided clip clamped at the end like ClipSampler's: the last frame may repeat.
        indices = [min(start + 3 * k, FRAMES - 1) for k in range(5)]
        clip = decode_frames(path, indices).numpy()
        assert np.array_equal(clip, full[indices]), f"{name}: clip from frame {start} differs ({path_taken})"


@given(
    name=st.sampled_from(sorted(VIDEOS)),
    start=st.integers(0, FRAMES - 1),
    stride=st.integers(1, 9),
    count=st.integers(1, 12),
    shuffle=st.randoms(use_true_random=False),
)
def test_any_strided_clip_in_any_order_equals_the_full_decode(
    videos: dict, name: str, start: int, stride: int, count: int, shuffle
) -> None:
    path, full = videos[name]
    indices = [min(start + stride * k, FRAMES - 1) for k in range(count)]
    shuffle.shuffle(indices)  # any order, repeats allowed: rows come back in the order asked
    assert np.array_equal(decode_frames(path, indices).numpy(), full[indices])


def test_shrunk_clips_are_seek_exact_and_match_a_resize_of_the_frames(videos: dict) -> None:
    path, full = videos["h264_gop12_b3.mp4"]
    shrunk_all = decode_frames(path, list(range(FRAMES)), short_side=24).numpy()
    assert shrunk_all.shape == (FRAMES, 24, 32, 3)  # 48 -> 24, 64 -> 32: the aspect ratio is kept
    for start in (0, 5, 11, 12, 13, 40, 59):
        indices = [min(start + 2 * k, FRAMES - 1) for k in range(4)]
        assert np.array_equal(decode_frames(path, indices, short_side=24).numpy(), shrunk_all[indices])
    # Close to an antialiased bilinear resize of the full-size frames (a wrong frame or channel is far off).
    reference = torch.nn.functional.interpolate(
        torch.from_numpy(full).permute(0, 3, 1, 2).float(), size=(24, 32), mode="bilinear", antialias=True
    ).permute(0, 2, 3, 1)
    assert (torch.from_numpy(shrunk_all).float() - reference).abs().mean() < 6
    # Frames already at or below the short side are returned as they are.
    assert np.array_equal(decode_frames(path, [3, 9], short_side=48).numpy(), full[[3, 9]])
    assert np.array_equal(decode_frames(path, [3, 9], short_side=500).numpy(), full[[3, 9]])
    with pytest.raises(ValueError, match="short_side must be a positive"):
        decode_frames(path, [0], short_side=0)


def _decodable(path: Path) -> int:
    """Frames a plain PyAV decode yields before the damaged tail stops it."""
    count = 0
    with av.open(str(path)) as container:
        try:
            for _ in container.decode(video=0):
                count += 1
        except av.error.FFmpegError:
            pass
    return count


@pytest.mark.parametrize("name", ["truncated.mp4", "truncated.mkv"])
def test_a_truncated_file_names_how_many_frames_it_still_has(tmp_path: Path, name: str) -> None:
    whole = tmp_path / f"whole{Path(name).suffix}"
    # faststart puts the mp4 index first, so the cut file still opens and claims all its frames.
    _write(whole, "libx264", 12, 2, False, {"movflags": "faststart"} if name.endswith(".mp4") else None)
    data = whole.read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: int(len(data) * 0.55)])
    decodable = _decodable(path)
    assert 0 < decodable < FRAMES
    full = _full_decode(whole)
    kept = list(range(0, decodable, 5))
    assert np.array_equal(decode_frames(path, kept).numpy(), full[kept])  # what is left reads normally
    for wanted in ([decodable], [decodable - 2, decodable + 3], [FRAMES - 1]):
        first_missing = min(i for i in wanted if i >= decodable)
        with pytest.raises(
            VideoDecodeError,
            match=rf"only {decodable} decodable frames; the clip needs frame {first_missing} ",
        ):
            decode_frames(path, wanted)
    num_frames = probe_video(path).num_frames
    if name.endswith(".mkv"):
        assert num_frames >= decodable  # counted by demuxing: clips fit what is left
        return
    # The mp4 index still claims every frame: in training the video is skipped with the reason above.
    assert num_frames == FRAMES
    good = tmp_path / "good.mp4"
    _write(good, "mpeg4", 12, 0, False)
    dataset = ClipDataset(
        VideoList([VideoRecord(str(path), 0), VideoRecord(str(good), 0)], ["a"]),
        ClipSampler(FRAMES, 1),
        TrainTransform(16),
        max_attempts=20,
    )
    sample = dataset[(0, 0)]
    assert sample["index"] == 1 and sample["failures"][0].index == 0
    assert f"only {decodable} decodable frames" in sample["failures"][0].reason
