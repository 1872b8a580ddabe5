"""timm's create_model arguments and users' own specs (every shipped spec is created and trained
through timm in test_model_interface.py)."""
import pytest
import timm
import torch
from timm.data import resolve_data_config

import archdsl


def test_create_model_arguments_reach_the_spec():
    model = timm.create_model("archdsl_deit_t", num_classes=0, in_chans=1, drop_rate=0.25, drop_path_rate=0.3)
    assert model.pretrained_cfg["input_size"] == (1, 224, 224)
    assert model(torch.randn(2, 1, 224, 224)).shape == (2, 192)  # num_classes=0: pooled features
    assert model.design.spec.head.dropout == 0.25 and model.design.spec.drop_path == 0.3
    features = timm.create_model("archdsl_swin_t", features_only=True, out_indices=(1, 3))
    assert [f.shape[1] for f in features(torch.randn(1, 3, 224, 224))] == [192, 768]
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("archdsl_deit_t", pretrained=True)
    with pytest.raises(TypeError, match="does not take img_size"):
        timm.create_model("archdsl_deit_t", img_size=96)


def test_register_a_users_spec(write_spec):
    path = write_spec("""
        name: tiny
        input: 3x64x48
        stem: patch_embed(patch=8)
        stages: [{depth: 1, width: 32, mixer: "attention(heads=2)"}]
        head: {classes: 5}
        """, name="my_tiny.yaml")
    name = archdsl.register_spec(path)
    assert name == "archdsl_my_tiny"
    model = timm.create_model(name)
    assert resolve_data_config({}, model=model)["input_size"] == (3, 64, 48)
    assert model(torch.randn(2, 3, 64, 48)).shape == (2, 5)
    assert archdsl.register_spec(path, name="mine") == "mine" and timm.is_model("mine")
