"""The compiled model has timm's interface: forward_features / forward_head, num_classes,
reset_classifier, features_only with out_indices; every spec is a timm model that trains."""
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.optim import create_optimizer_v2

import archdsl
from conftest import ROOT, SPECS


@pytest.mark.parametrize("spec", ["swin_t", "resnet50", "deit_t"])
def test_features_only_returns_stage_maps(spec):
    design = archdsl.load_design(ROOT / "specs" / f"{spec}.yaml")
    n = len(design.spec.stages)
    model = archdsl.build_model(design, features_only=True, out_indices=range(n)).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        maps = model(x)
    assert len(maps) == n == len(model.feature_info)
    for fmap, info, stage in zip(maps, model.feature_info, design.spec.stages):
        assert fmap.shape == (1, stage.width, 224 // info["reduction"], 224 // info["reduction"])
        assert info["num_chs"] == stage.width
    if n == 4:
        assert [i["reduction"] for i in model.feature_info] == [4, 8, 16, 32]
    last_only = archdsl.build_model(design, features_only=True, out_indices=(-1,)).eval()
    assert len(last_only.feature_info) == 1 and not hasattr(last_only, "head")
    # with the same weights, the last-stage extractor returns the full extractor's last map
    last_only.load_state_dict(model.state_dict())
    with torch.inference_mode():
        assert torch.allclose(last_only(x)[0], maps[-1])


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_spec_gives_dense_task_features(path):
    """features_only: NCHW maps of every stage that has one, as feature_info says, strides rising."""
    model = archdsl.build_model(path, features_only=True).eval()
    image = model.design.graph.nodes["input"]["out_shape"]
    with torch.inference_mode():
        maps = model(torch.randn(1, image.channels, image.height, image.width))
    assert len(maps) == len(model.feature_info) >= 1
    for fmap, info in zip(maps, model.feature_info):
        assert fmap.shape == (1, info["num_chs"], image.height // info["reduction"], image.width // info["reduction"])
    reductions = [info["reduction"] for info in model.feature_info]
    assert reductions == sorted(set(reductions)) and reductions[0] >= 2


def test_a_stage_of_tokens_is_not_a_feature():
    model = archdsl.build_model(ROOT / "specs" / "vt_r50.yaml", features_only=True)
    assert [i["reduction"] for i in model.feature_info] == [4, 8, 16] and model.out_indices == (0, 1, 2)
    with pytest.raises(ValueError, match=r"stage 4 outputs tokens, not a feature map; .*: 0, 1, 2"):
        archdsl.build_model(ROOT / "specs" / "vt_r50.yaml", features_only=True, out_indices=(2, 3))


def test_head_interface_and_reset_classifier():
    model = archdsl.build_model(ROOT / "specs" / "swin_t.yaml").eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        feats = model.forward_features(x)
        assert feats.shape == (2, 49, 768)
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features) == (2, 768)
        assert model(x).shape == (2, model.num_classes) == (2, 1000)
    model.reset_classifier(10)
    assert model.num_classes == 10 and model.get_classifier().out_features == 10
    assert model(x).shape == (2, 10)
    model.reset_classifier(0)
    assert model(x).shape == (2, 768)
    resnet = archdsl.build_model(ROOT / "specs" / "resnet18.yaml", num_classes=7)
    assert resnet(x).shape == (2, 7)
    with pytest.raises(ValueError, match="there is no class token"):
        resnet.reset_classifier(3, global_pool="token")


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_spec_is_a_timm_model_that_trains(path):
    """timm.create_model by name, timm's data config and transform, one step of timm's optimizer."""
    model = timm.create_model(f"archdsl_{path.stem}", num_classes=5)
    config = resolve_data_config({}, model=model)
    image = model.design.graph.nodes["input"]["out_shape"]
    assert config["input_size"] == (image.channels, image.height, image.width)
    pixels = np.random.default_rng(0).integers(0, 256, (image.height + 37, image.width + 21, 3), dtype=np.uint8)
    x = create_transform(**config)(Image.fromarray(pixels))
    assert x.shape == (3, image.height, image.width)
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    loss = torch.nn.functional.cross_entropy(model.train()(torch.stack([x, x.flip(-1)])), torch.tensor([0, 3]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_drop_path_schedule_follows_timm():
    design = archdsl.load_design(ROOT / "specs" / "swin_t.yaml")
    rates = [d["drop_path"] for _, d in design.nodes("block")]
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.2)
    assert rates == pytest.approx([0.2 * k / 11 for k in range(12)])
