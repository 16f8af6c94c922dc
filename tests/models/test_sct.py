"""ShiftedChunkTransformer: shapes, features, errors, gradients, presets."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from chunkformer.models import SCTConfig, ShiftedChunkTransformer, StageConfig, create_model, list_models
from tests.models._tiny import SIZE_MULTIPLE, tiny_config, tiny_model


@given(
    batch=st.integers(1, 2),
    frames=st.integers(1, 3),
    height=st.sampled_from([8, 16, 24]),
    width=st.sampled_from([8, 16, 24]),
    num_classes=st.integers(0, 4),
)
def test_output_shape(batch: int, frames: int, height: int, width: int, num_classes: int) -> None:
    torch.manual_seed(0)
    model = tiny_model(num_classes=num_classes, num_frames=frames).eval()
    with torch.no_grad():
        out = model(torch.randn(batch, 3, frames, height, width))
    assert out.shape == (batch, num_classes if num_classes else 16)
    assert torch.isfinite(out).all()


def test_features_mode_returns_clip_feature() -> None:
    torch.manual_seed(0)
    model = tiny_model(num_classes=0).eval()
    x = torch.randn(2, 3, 2, 16, 16)
    with torch.no_grad():
        features = model(x)
        assert torch.equal(features, model.forward_features(x))
        assert model.forward_frame_features(x).shape == (2, 2, model.config.frame_dim)
    assert features.shape == (2, model.config.clip_dim)


def test_frame_features_are_last_stage_cls() -> None:
    torch.manual_seed(0)
    model = tiny_model().eval()
    x = torch.randn(1, 3, 2, 16, 16)
    captured = {}
    model.stages[-1].shifted_blocks[-1].register_forward_hook(lambda m, a, out: captured.update(out=out))
    with torch.no_grad():
        frames = model.forward_frame_features(x)
    assert torch.equal(frames, captured["out"][:, :, 0])


@pytest.mark.parametrize("size", [(12, 16), (16, 20), (6, 8)])
def test_bad_frame_size_names_multiple(size: tuple[int, int]) -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match=rf"multiples of {SIZE_MULTIPLE}.*H={size[0]}, W={size[1]}"):
        model(torch.randn(1, 3, 2, *size))


def test_non_tensor_input_is_a_type_error_and_wrong_rank_a_value_error() -> None:
    model = tiny_model().eval()
    with pytest.raises(TypeError, match=r"expects a torch.Tensor of shape \(B, C, T, H, W\), got list"):
        model([1, 2, 3])
    with pytest.raises(ValueError, match=r"expects input of shape \(B, C, T, H, W\), got \(1, 3, 8, 8\)"):
        model(torch.zeros(1, 3, 8, 8))


def test_frame_count_mismatch_is_an_error_unless_interpolating() -> None:
    torch.manual_seed(0)
    model = tiny_model(num_frames=3).eval()
    with pytest.raises(ValueError, match=r"num_frames=3 but got T=2.*interpolate_pos=True"):
        model(torch.randn(1, 3, 2, 16, 16))
    model.interpolate_pos = True
    with torch.no_grad():
        assert model(torch.randn(1, 3, 2, 16, 16)).shape == (1, 3)
        assert model(torch.randn(1, 3, 5, 16, 16)).shape == (1, 3)
        # Interpolating to the built length is the identity.
        assert torch.allclose(model._clip_pos_embed(3), model.clip_encoder.pos_embed)


def test_interpolate_pos_through_create_model() -> None:
    model = create_model("sct_s", num_classes=2, num_frames=4, interpolate_pos=True).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 2, 32, 32)).shape == (1, 2)


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="stage 1 has dim=10 but stage 0 outputs 16"):
        SCTConfig(stages=(StageConfig(8, lsh_depth=1, pool=True), StageConfig(10, shifted_depth=1)))
    with pytest.raises(ValueError, match="last stage needs shifted_depth >= 1"):
        SCTConfig(stages=(StageConfig(8, lsh_depth=1),))
    with pytest.raises(ValueError, match="img_size H and W must be multiples of 8"):
        ShiftedChunkTransformer(tiny_config(), img_size=20)


def test_unknown_model_lists_available() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'sct_xl'.*sct_l, sct_m, sct_s"):
        create_model("sct_xl")
    with pytest.raises(TypeError, match="unknown override"):
        create_model("sct_s", not_a_field=1)


def test_registry_lists_presets_and_variant() -> None:
    assert {"sct_s", "sct_m", "sct_l", "sct_s_local_every_stage", "vit_b16_sct"} <= set(list_models())


def test_gradient_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    model = tiny_model().train()
    model(torch.randn(2, 3, 2, 16, 16)).square().sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name


def test_drop_path_increases_linearly() -> None:
    model = tiny_model(drop_path_rate=0.3)
    rates = [
        block.drop_path1.drop_prob
        for stage in model.stages
        for block in (*stage.local_blocks, *stage.lsh_blocks, *stage.shifted_blocks)
    ]
    assert rates == pytest.approx([0.0, 0.075, 0.15, 0.225, 0.3])


def test_weight_init_follows_timm() -> None:
    torch.manual_seed(0)
    model = create_model("sct_s")
    linear = model.stages[0].lsh_blocks[0].attn.qkv
    assert linear.bias.abs().max() == 0
    assert abs(linear.weight.std().item() - 0.02) < 0.002
    norm = model.stages[0].local_blocks[0].norm1
    assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and norm.bias.abs().max() == 0


@pytest.mark.parametrize("name", ["sct_s", "sct_m", "sct_l"])
def test_presets_run_at_tiny_resolution(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, num_frames=2).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 2, 64, 64))
    assert out.shape == (1, 5) and torch.isfinite(out).all()


# Exact counts of the paper reading (docs/models.md); a change here changes the architecture.
PARAMS = {"sct_s": 16_033_072, "sct_m": 27_072_720, "sct_l": 57_030_928}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts_pinned(name: str) -> None:
    with torch.device("meta"):
        model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]


def test_lsh_layers_use_separate_qk() -> None:
    with torch.device("meta"):
        model = create_model("sct_s")
    lsh = model.stages[0].lsh_blocks[0].attn
    assert not lsh.shared_qk and lsh.qkv.out_features == 3 * 96 and lsh.bucket_size == 49
