"""Checkpoints that say what they hold: ``create_model(checkpoint_path=...)`` rebuilds a model from the
file alone (name, build arguments, class names), and the timm habits: ``list_models`` patterns and
``pretrained=True`` refused with a way forward."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest
import torch

from chunkformer.models import ModelSpec, create_model, list_models, read_model_spec, save_checkpoint

pytest.importorskip("safetensors")


def _tiny(num_classes: int = 5) -> torch.nn.Module:
    return create_model("sct_tiny", num_classes=num_classes, num_frames=4, img_size=16, drop_path_rate=0.1)


def test_a_model_rebuilds_from_its_safetensors_file_alone(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _tiny()
    assert model.model_spec == ModelSpec("sct_tiny", 5, 4, {"img_size": 16, "drop_path_rate": 0.1})
    model.model_spec.class_names = ["a", "b", "c", "d", "e"]
    path = tmp_path / "model.safetensors"
    save_checkpoint(model, path, metadata={"note": "kept"})
    assert read_model_spec(path) == model.model_spec

    torch.manual_seed(1)  # another init: equal outputs below come from the loaded weights
    rebuilt = create_model(checkpoint_path=path).eval()
    assert rebuilt.model_spec == model.model_spec
    assert rebuilt.config == model.config and rebuilt.num_classes == 5
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key
    clip = torch.randn(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(rebuilt(clip), model.eval()(clip))

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["note"] == "kept" and handle.metadata()["format"] == "pt"


def test_arguments_given_beside_the_checkpoint_replace_the_recorded_ones(tmp_path: Path) -> None:
    model = _tiny()
    model.model_spec.class_names = list("abcde")
    path = tmp_path / "model.safetensors"
    save_checkpoint(model, path)
    # A new head for 3 classes over the trained frame encoder: the class names no longer apply.
    other = create_model(checkpoint_path=path, num_classes=3, checkpoint_filter="frame_encoder")
    assert other.num_classes == 3 and other.model_spec.class_names is None
    assert other.model_spec.overrides == {"img_size": 16, "drop_path_rate": 0.1}
    assert torch.equal(other.patch_embed.proj.weight, model.patch_embed.proj.weight)


def test_files_that_do_not_record_a_model_need_its_name(tmp_path: Path) -> None:
    model = _tiny()
    plain = tmp_path / "weights.pt"
    save_checkpoint(model, plain)  # a plain state dict, as torch.save(model.state_dict()) writes
    assert read_model_spec(plain) is None
    with pytest.raises(ValueError, match=r"does not record which model it holds.*pass the model name"):
        create_model(checkpoint_path=plain)
    loaded = create_model("sct_tiny", num_classes=5, num_frames=4, img_size=16, checkpoint_path=plain)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    with pytest.raises(TypeError, match="give a model name"):
        create_model()


def test_an_override_json_cannot_hold_saves_the_weights_without_a_spec(tmp_path: Path) -> None:
    model = _tiny()
    model.model_spec.overrides["norm"] = torch.nn.LayerNorm
    path = tmp_path / "model.safetensors"
    with pytest.warns(UserWarning, match=r"will not record how to rebuild the model.*norm"):
        save_checkpoint(model, path)
    assert read_model_spec(path) is None


def test_corrupt_spec_metadata_is_an_error_naming_the_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"chunkformer.model_spec": '{"name": 3}'})
    with pytest.raises(ValueError, match=r"model spec in .*bad.safetensors is not valid"):
        read_model_spec(path)


def test_list_models_takes_a_pattern_and_pretrained_is_refused() -> None:
    everything = list_models()
    assert list_models("sct_*") == [n for n in everything if fnmatch.fnmatchcase(n, "sct_*")]
    assert {"sct_s", "sct_m", "sct_l", "sct_tiny"} <= set(list_models("sct_*"))
    assert "vit_b16_sct" in everything and "vit_b16_sct" not in list_models("sct_*")
    assert list_models("no_such_*") == []
    with pytest.raises(ValueError, match=r"no pretrained weights.*checkpoint_path"):
        create_model("sct_tiny", pretrained=True)


def test_reset_classifier_gives_a_fresh_head_and_the_spec_follows(tmp_path: Path) -> None:
    model = _tiny(num_classes=5)
    model.model_spec.class_names = list("abcde")
    head = model.get_classifier()
    assert isinstance(head, torch.nn.Sequential) and head[-1].out_features == 5
    kept = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("clip_encoder.head")}
    model.reset_classifier(3)
    assert model.get_classifier()[-1].out_features == 3 and model.num_classes == 3
    assert model.model_spec.num_classes == 3 and model.model_spec.class_names is None
    assert all(torch.equal(model.state_dict()[k], v) for k, v in kept.items())
    clip = torch.randn(2, 3, 4, 16, 16)
    assert model(clip).shape == (2, 3)
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), torch.nn.Identity) and model(clip).shape == (2, 64)
    # The reset model saves and rebuilds with its new head.
    model.reset_classifier(7)
    path = tmp_path / "reset.safetensors"
    save_checkpoint(model, path)
    assert create_model(checkpoint_path=path)(clip).shape == (2, 7)
    with pytest.raises(ValueError, match="num_classes must be >= 0"):
        model.reset_classifier(-1)
