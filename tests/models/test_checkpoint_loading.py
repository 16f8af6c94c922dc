"""Saving and loading weights: safetensors and torch files, strict keys, frame-encoder-only loading, LSH
seeds and generator states (also from files written before state dicts held tensors only), and every
registered model through safetensors' own save_model / load_model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_model, save_file, save_model
from torch import nn

from chunkformer.layers import LSHAttention
from chunkformer.models import (
    ShiftedChunkTransformer,
    create_model,
    list_models,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
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
    with pytest.raises(
        ValueError,
        match=r"missing keys \['patch_embed.proj.weight'\].*unexpected keys \['patch_embed.renamed.weight'\]",
    ):
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


# ----------------------------------------------------------------------------------------------------
# LSH seeds and generator states
# ----------------------------------------------------------------------------------------------------


def lsh_layers(model: nn.Module) -> dict[str, LSHAttention]:
    return {name: module for name, module in model.named_modules() if isinstance(module, LSHAttention)}


def trained_tiny() -> tuple[nn.Module, torch.Tensor]:
    """A tiny model whose LSH generators have drawn (attention dropout on, so they drive the masks too)."""
    torch.manual_seed(0)
    model = tiny_model(attn_drop_rate=0.1).train()
    x = torch.randn(2, 3, 2, 16, 16)
    with torch.no_grad():
        model(x)
    return model, x


def next_training_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        torch.manual_seed(5)  # nothing else random in these models, but keep the global RNG out of it anyway
        return model.train()(x)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_round_trip_continues_the_lsh_generators(tmp_path: Path, suffix: str) -> None:
    source, x = trained_tiny()
    path = tmp_path / f"model{suffix}"
    save_checkpoint(source, path)
    torch.manual_seed(1)
    target = tiny_model(attn_drop_rate=0.1)
    load_checkpoint(target, path)
    for name, layer in lsh_layers(target).items():
        assert layer.seed == lsh_layers(source)[name].seed
    assert torch.equal(next_training_forward(target, x), next_training_forward(source, x))


def weights_only(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict without the LSH seeds and generator states, as a foreign file would have it."""
    prefixes = [f"{name}." for name in lsh_layers(model)]
    return {
        key: value
        for key, value in model.state_dict().items()
        if not any(key == f"{p}seed" or key.startswith(f"{p}generator_state.") for p in prefixes)
    }


def old_format(model: nn.Module) -> dict[str, object]:
    """``model``'s state dict as chunkformer wrote it before state dicts held tensors only: each LSH layer's
    seed and generator states in one dict entry ``<layer>._extra_state``."""
    layers = lsh_layers(model)
    state: dict[str, object] = dict(weights_only(model))
    for name, layer in layers.items():
        state[f"{name}._extra_state"] = {"seed": layer.seed, "generator_states": layer.generator_states()}
    return state


def test_old_torch_checkpoint_loads(tmp_path: Path) -> None:
    source, x = trained_tiny()
    path = tmp_path / "old.pt"
    torch.save({"model": old_format(source)}, path)
    # read_checkpoint hands back the current, tensor-only entries...
    state = read_checkpoint(path)
    assert all(isinstance(value, torch.Tensor) for value in state.values())
    assert state.keys() == source.state_dict().keys()
    # ...and both loaders restore the seeds and generators.
    torch.manual_seed(1)
    target = tiny_model(attn_drop_rate=0.1)
    load_checkpoint(target, path)
    torch.manual_seed(2)
    direct = tiny_model(attn_drop_rate=0.1)
    direct.load_state_dict(torch.load(path, weights_only=True)["model"])
    want = next_training_forward(source, x)
    assert torch.equal(next_training_forward(target, x), want)
    assert torch.equal(next_training_forward(direct, x), want)


def test_old_safetensors_checkpoint_loads(tmp_path: Path) -> None:
    # The old save_checkpoint's layout: seeds in the metadata, generator states as
    # "<layer>._extra_state.generator_states.<device>" tensors.
    source, x = trained_tiny()
    tensors, metadata = {}, {}
    for key, value in old_format(source).items():
        if key.endswith("._extra_state"):
            assert isinstance(value, dict)
            metadata[key] = json.dumps({"seed": value["seed"]})
            for device, generator_state in value["generator_states"].items():
                tensors[f"{key}.generator_states.{device}"] = generator_state
        else:
            assert isinstance(value, torch.Tensor)
            tensors[key] = value.contiguous()
    path = tmp_path / "old.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    torch.manual_seed(1)
    target = tiny_model(attn_drop_rate=0.1)
    load_checkpoint(target, path)
    assert torch.equal(next_training_forward(target, x), next_training_forward(source, x))


def test_malformed_old_checkpoint_says_why(tmp_path: Path) -> None:
    source, _ = trained_tiny()
    state = old_format(source)
    key = next(key for key in state if key.endswith("._extra_state"))
    state[key] = {"seed": "seven"}
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    message = rf"checkpoint .*bad.pt: {key}: expected an old-format LSHAttention extra state"
    with pytest.raises(ValueError, match=message):
        load_checkpoint(tiny_model(), path)


def test_checkpoint_without_lsh_state_still_loads(tmp_path: Path) -> None:
    # A foreign file (weights only): the model keeps its seeds and generators.
    source, _ = trained_tiny()
    path = tmp_path / "weights.pt"
    torch.save(weights_only(source), path)
    target = tiny_model()
    seeds = {name: layer.seed for name, layer in lsh_layers(target).items()}
    load_checkpoint(target, path)
    assert {name: layer.seed for name, layer in lsh_layers(target).items()} == seeds


def test_safetensors_checkpoint_refuses_non_tensors(tmp_path: Path) -> None:
    class WithExtraState(nn.Linear):
        def get_extra_state(self) -> dict[str, int]:
            return {"step": 3}

        def set_extra_state(self, state: dict[str, int]) -> None:
            pass

    message = r"safetensors holds tensors only; .* would get \['_extra_state \(dict\)'\]"
    with pytest.raises(TypeError, match=message):
        save_checkpoint(WithExtraState(2, 2), tmp_path / "x.safetensors")


# ----------------------------------------------------------------------------------------------------
# Every registered model through safetensors' save_model / load_model
# ----------------------------------------------------------------------------------------------------


def small_registered(name: str) -> nn.Module:
    """``create_model(name)`` with the preset's layers and state-dict keys, narrowed to 8 channels: the full
    widths take seconds each to build on a busy CPU and nothing here depends on them."""
    with torch.device("meta"):
        config = create_model(name, num_classes=3, num_frames=2).config
    stages, dim = [], 8
    for stage in config.stages:
        stages.append(dataclasses.replace(stage, dim=dim, local_heads=2, lsh_heads=2, shifted_heads=2))
        dim = stages[-1].out_dim
    small = {"clip_dim": 16, "clip_heads": 2, "clip_mlp_dim": 32, "head_hidden_dim": 16}
    return create_model(name, num_classes=3, num_frames=2, stages=tuple(stages), **small)


def sct_models() -> list[str]:
    """The registered SCT presets, which ``small_registered`` narrows through their ``SCTConfig`` (the
    attention zoo's models round-trip in test_zoo_models.py). Built on meta: a quarter of a second."""
    with torch.device("meta"):
        return [
            name
            for name in list_models()
            if isinstance(create_model(name, num_classes=3, num_frames=2), ShiftedChunkTransformer)
        ]


@pytest.mark.parametrize("name", sct_models())
def test_every_registered_model_round_trips_through_safetensors(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    source = small_registered(name).train()
    x = torch.randn(1, 3, 2, 32, 32)  # a multiple of every preset's size_multiple (32 or 16)
    with torch.no_grad():
        source(x)  # the LSH generators exist and have drawn
    state = source.state_dict()
    assert all(isinstance(value, torch.Tensor) for value in state.values())
    for layer_name in lsh_layers(source):
        assert state[f"{layer_name}.seed"].dtype == torch.int64
        assert state[f"{layer_name}.generator_state.cpu"].dtype == torch.uint8

    path = tmp_path / f"{name}.safetensors"
    save_model(source, str(path))
    torch.manual_seed(1)
    target = small_registered(name)
    missing, unexpected = load_model(target, str(path))
    assert not missing and not unexpected
    loaded = target.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key
    assert torch.equal(next_training_forward(target, x), next_training_forward(source, x))
