"""Saving and loading weights: safetensors and torch files, strict keys, frame-encoder-only loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from chunkformer.models import create_model, load_checkpoint, save_checkpoint
from tests.models._tiny import tiny_model


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_round_trip_gives_identical_outputs(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(0)
    source = tiny_model().eval()
    path = tmp_path / f"model{suffix}"
    save_checkpoint(source, path)
    torch.manual_seed(1)
    target = tiny_model().eval()
    load_checkpoint(target, path)
    x = torch.randn(1, 3, 2, 16, 16)
    with torch.no_grad():
        assert torch.equal(target(x), source(x))


def test_create_model_loads_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = create_model("sct_s", num_classes=3, num_frames=2).eval()
    path = tmp_path / "sct_s.pt"
    save_checkpoint(source, path)
    loaded = create_model("sct_s", num_classes=3, num_frames=2, checkpoint_path=path).eval()
    x = torch.randn(1, 3, 2, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))


def test_wrong_keys_are_named(tmp_path: Path) -> None:
    model = tiny_model()
    state = model.state_dict()
    state["patch_embed.renamed.weight"] = state.pop("patch_embed.proj.weight")
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing keys \['patch_embed.proj.weight'\].*unexpected keys \['patch_embed.renamed.weight'\]"):
        load_checkpoint(tiny_model(), path)


def test_frame_encoder_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = tiny_model(num_classes=3, num_frames=2)
    frame_only = {k: v for k, v in source.state_dict().items() if not k.startswith("clip_encoder.")}
    path = tmp_path / "frames.pt"
    torch.save(frame_only, path)
    with pytest.raises(ValueError, match=r"missing keys \[.*'clip_encoder\.cls_token'"):
        load_checkpoint(tiny_model(), path)

    torch.manual_seed(1)
    target = tiny_model(num_classes=5, num_frames=4)  # another head and T: only the frame encoder loads
    fresh_clip = {k: v.clone() for k, v in target.clip_encoder.state_dict().items()}
    load_checkpoint(target, path, filter="frame_encoder")
    for key, value in frame_only.items():
        if not key.endswith("_extra_state"):
            assert torch.equal(target.state_dict()[key], value), key
    for key, value in target.clip_encoder.state_dict().items():
        assert torch.equal(value, fresh_clip[key]), key

    # A full checkpoint loads the same way with the filter (its clip encoder keys are ignored).
    full = tmp_path / "full.safetensors"
    save_checkpoint(source, full)
    load_checkpoint(tiny_model(num_classes=5, num_frames=4), full, filter="frame_encoder")


def test_unknown_filter_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown filter"):
        load_checkpoint(tiny_model(), tmp_path / "x.pt", filter="head")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tiny_model(), tmp_path / "missing.pt")
