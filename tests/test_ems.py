"""C-MHSA and the EMS mixer (EMSNet, thesis chapter 3) and the EMSNet-XXTiny/XTiny/Tiny specs."""
import pytest
import torch
import torch.nn as nn

import archdsl
from archdsl import SpecError
from archdsl.cost import TensorShape
from archdsl.components.mixers.ems import ConvMultiHeadAttention, ConvMultiHeadAttentionSpec, EMSSpec
from archdsl.tools.trace import traced_cost
from conftest import ROOT, Tokens, grid

# table 3.1 (params, FLOPs at 224x224, printed to one decimal in M and G) and what the specs measure
# (analytic = fvcore trace), with pe_ratio=2 (each PE doubles its part).
PAPER = {"xxtiny": (2.5e6, 0.5e9), "xtiny": (3.0e6, 0.7e9), "tiny": (5.4e6, 1.9e9)}
MEASURED = {"xxtiny": (2_498_442, 471_057_120), "xtiny": (2_262_375, 609_607_056),
            "tiny": (5_319_807, 1_662_574_448)}
# which figures (params, FLOPs) meet the table: within 5% or the printed rounding
MEETS = {"xxtiny": (True, True), "xtiny": (False, False), "tiny": (True, False)}
# measured / paper where the table is not reached by any reading found (archdsl/components/mixers/ems.py)
SHORTFALL = {"xtiny": (0.754, 0.871), "tiny": (None, 0.875)}


def meets(measured: float, paper: float, unit: float) -> bool:
    return abs(measured / paper - 1) <= 0.05 or round(measured / unit, 1) == round(paper / unit, 1)


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------ C-MHSA


def test_cmhsa_attention_depends_on_the_input_and_is_a_softmax_over_the_window():
    attn = ConvMultiHeadAttention(16, heads=2, kernel=3, stride=2).eval()
    x1, x2 = torch.randn(1, 16, 10, 6), torch.randn(1, 16, 10, 6)
    with torch.inference_mode():
        a1, a2 = attn.attention(x1), attn.attention(x2)
    assert a1.shape == (1, 2, 5 * 3, 9, 9)  # heads, positions (ceil(10/2) x ceil(6/2)), k^2 x k^2
    assert torch.allclose(a1.sum(-1), torch.ones(1, 2, 15, 9), atol=1e-5)
    assert (a1 - a2).abs().amax() > 1e-2


def test_cmhsa_shifts_with_its_stride_and_not_with_one_pixel():
    """Windows every 2 pixels: shifting the input by 2 shifts the output by 2 (away from the borders);
    a 1-pixel shift changes which pixels are window centres, so it does not."""
    attn = ConvMultiHeadAttention(8, heads=2, kernel=3, stride=2).eval()
    x = torch.randn(1, 8, 20, 20)
    with torch.inference_mode():
        y = attn(x)
        by_two = attn(torch.roll(x, (2, 2), dims=(2, 3)))
        by_one = attn(torch.roll(x, (1, 1), dims=(2, 3)))
    inner = (slice(None), slice(None), slice(6, 16), slice(6, 16))
    assert torch.allclose(by_two[inner], torch.roll(y, (2, 2), dims=(2, 3))[inner], atol=1e-5)
    assert not torch.allclose(by_one[inner], torch.roll(y, (1, 1), dims=(2, 3))[inner], atol=1e-3)


def test_cmhsa_cost_is_linear_in_tokens():
    spec = ConvMultiHeadAttentionSpec(heads=2)
    for side in (8, 14, 28):
        small, large = grid(side, side), grid(2 * side, 2 * side)
        assert spec.cost(large, 0).flops == 4 * spec.cost(small, 0).flops
        assert spec.cost(large, 0).params == spec.cost(small, 0).params


@pytest.mark.parametrize("size", [(14, 14), (20, 12), (7, 5), (1, 1)])
def test_cmhsa_analytic_cost_equals_the_traced_count(size):
    shape = grid(*size, 24)
    spec = ConvMultiHeadAttentionSpec(heads=3, k=3, stride=2)
    report = traced_cost(Tokens(spec.build(shape, 0)), (1, shape.tokens, 24))
    cost = spec.cost(shape, 0)
    assert cost.params == report.params
    assert abs(cost.flops - report.flops) <= 0.01 * report.flops


# ----------------------------------------------------------------------------------- EMS mixer


def ems(shape: TensorShape, **options):
    spec = EMSSpec(**{"c_heads": 2, "g_heads": 2, **options})
    return spec, spec.build(shape, 0).eval()


def test_whitening_removes_each_channels_mean_so_the_gate_ignores_channel_offsets():
    """Eq. 3.1: ``X_w`` has zero mean per channel (whiten=spatial) or per pixel (whiten=channel);
    with spatial whitening a constant added to a static input channel cannot reach the gate."""
    _, mixer = ems(grid(16, 12))
    static = mixer.inner.static
    x = torch.randn(2, 16, 16, 12)
    offset = torch.randn(1, 16, 1, 1) * 5
    with torch.inference_mode():
        assert static.whitened(x).mean(dim=(2, 3)).abs().amax() < 1e-5
        assert torch.allclose(static.gate(x + offset), static.gate(x), atol=1e-5)
    _, by_pixel = ems(grid(16, 12), whiten="channel")
    _, plain = ems(grid(16, 12), whiten="none")
    with torch.inference_mode():
        assert by_pixel.inner.static.whitened(x).mean(dim=1).abs().amax() < 1e-5
        assert not torch.allclose(plain.inner.static.gate(x + offset), plain.inner.static.gate(x), atol=1e-3)


def test_the_gate_scales_the_projection_by_a_sigmoid():
    """Eq. 3.5: ``Y_s = Conv1x1(X_s) * sigmoid(Y_c)``: never larger than the projection, and zero
    where the projection is; without the gate (table 3.5) the fused ``Y_c`` is the output."""
    _, mixer = ems(grid(12, 12))
    static = mixer.inner.static
    x = torch.randn(2, 16, 12, 12)
    with torch.no_grad():
        y, value, gate = static(x), static.value(x), static.gate(x)
        assert ((gate > 0) & (gate < 1)).all()
        assert (y.abs() <= value.abs() + 1e-6).all() and (y.abs() < value.abs() - 1e-4).float().mean() > 0.9
        nn.init.zeros_(static.value.weight), nn.init.zeros_(static.value.bias)
        assert static(x).abs().amax() == 0
    spec, ungated = ems(grid(12, 12), gate=False)
    with torch.inference_mode():
        assert ungated.inner.static.value is None
        assert torch.allclose(torch.sigmoid(ungated.inner.static(x)), ungated.inner.static.gate(x), atol=1e-6)
    assert spec.parts(grid(12, 12))["gate_projection"].params == 0


def test_patch_embeddings_widen_their_parts_and_the_fusions_map_back():
    """Section 3.3.1: each PE's 1x1 conv maps its part "to a higher dimension" (``pe_ratio`` times
    its width); CoordDW, C-MHSA, G-MHSA and the propagations run at that width and the fusion convs
    of eq. 3.4 and 3.8 map the concatenations back to ``C_s`` and ``C_d``."""
    x = torch.randn(1, 144, 32)  # C_s = 16 (parts 4, 8, 4), C_d = 16 (halves 8, 8)
    for r in (1, 2, 3):
        spec, mixer = ems(grid(12, 12), pe_ratio=r)
        static, dynamic = mixer.inner.static, mixer.inner.dynamic
        branches = (static.mix1, static.mix2, dynamic.local, dynamic.glob)
        assert [(b.proj.in_channels, b.proj.out_channels) for b in branches] == [(4, 4 * r), (4, 4 * r),
                                                                                 (8, 8 * r), (8, 8 * r)]
        assert [b.prop.conv.in_channels for b in branches] == [4 * r, 4 * r, 8 * r, 8 * r]
        assert static.mix1.conv_h.in_channels == 4 * r and dynamic.local.mixer.value.in_features == 8 * r
        assert (static.fuse.in_channels, static.fuse.out_channels) == (8 * r + 8, 16)
        assert (dynamic.fuse.in_channels, dynamic.fuse.out_channels) == (16 * r, 16)
        with torch.inference_mode():
            assert mixer(x).shape == x.shape
        assert spec.cost(grid(12, 12), 0).params == sum(p.numel() for p in mixer.parameters())


def test_static_and_dynamic_parts_are_channel_slices():
    """The first ``C_s`` output channels depend only on the first ``C_s`` input channels."""
    _, mixer = ems(grid(12, 8))
    x = torch.randn(1, 96, 32)
    x2 = x.clone()
    x2[..., 16:] = torch.randn(1, 96, 16)
    with torch.inference_mode():
        y, y2 = mixer(x), mixer(x2)
    assert torch.allclose(y[..., :16], y2[..., :16], atol=1e-6)
    assert not torch.allclose(y[..., 16:], y2[..., 16:], atol=1e-3)


def test_ems_cost_is_linear_in_tokens_but_for_the_global_branch():
    spec = EMSSpec(c_heads=2, g_heads=2)
    small, large = grid(24, 24), grid(48, 48)
    assert spec.cost(large, 0).flops / spec.cost(small, 0).flops == pytest.approx(4, rel=0.05)
    assert spec.cost(large, 0).params == spec.cost(small, 0).params
    local = {k: v for k, v in spec.parts(small).items() if k != "gmhsa_branch"}
    assert sum(v.flops for k, v in spec.parts(large).items() if k in local) == pytest.approx(
        4 * sum(v.flops for v in local.values()), rel=0.02)
    assert spec.parts(large)["gmhsa_branch"].flops > 4.5 * spec.parts(small)["gmhsa_branch"].flops


@pytest.mark.parametrize("size, pooled", [((16, 24), ((8, 12), (4, 6), (4, 6), (3, 4))),
                                          ((7, 5), ((4, 3), (2, 2), (2, 2), (2, 1)))])
def test_patches_cover_any_grid_with_ceil_and_crop(size, pooled):
    _, mixer = ems(grid(*size))
    x = torch.randn(1, size[0] * size[1], 32)
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
             for m in (mixer.inner.static.mix1.proj, mixer.inner.static.mix2.proj,
                       mixer.inner.dynamic.local.proj, mixer.inner.dynamic.glob.proj)]
    with torch.inference_mode():
        assert mixer(x).shape == x.shape
    for h in hooks:
        h.remove()
    assert tuple(seen) == pooled


@pytest.mark.parametrize("size, pe_ratio", [((56, 56), 2), ((7, 7), 2), ((40, 24), 1), ((5, 3), 3)])
def test_ems_analytic_cost_equals_the_traced_count(size, pe_ratio):
    shape = grid(*size, 48)
    spec, mixer = ems(shape, c_heads=3, g_heads=1, pe_ratio=pe_ratio)
    report = traced_cost(Tokens(mixer), (1, shape.tokens, 48))
    cost = spec.cost(shape, 0)
    assert cost.params == report.params
    assert abs(cost.flops - report.flops) <= 0.01 * report.flops


def test_the_mixer_runs_backward_to_every_parameter():
    shape = grid(10, 6)
    _, mixer = ems(shape)
    mixer.train()
    x = torch.randn(2, 60, 32, requires_grad=True)
    mixer(x).square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mixer.parameters())


# ------------------------------------------------------------------------------ spec language

PROBE = """
    name: probe
    input: {size}
    stem: patch_embed(patch=4)
    stages:
      - depth: 1
        width: {width}
        mixer: {mixer}
    head: {{classes: 10}}
    """


@pytest.mark.parametrize("mixer", ["cmhsa(heads=2)", "ems(c_heads=2, g_heads=2)"])
@pytest.mark.parametrize("size", ["3x224x224", "3x320x192"])
def test_mixers_in_a_spec_at_square_and_non_square_inputs(write_spec, mixer, size):
    model = archdsl.build_model(write_spec(PROBE.format(size=size, width=32, mixer=mixer)))
    _, h, w = map(int, size.split("x"))
    report = traced_cost(model, (3, h, w))
    assert model.design.cost.params == report.params
    assert abs(model.design.cost.flops - report.flops) <= 0.01 * report.flops
    assert model.forward_features(torch.randn(1, 3, h, w)).shape == (1, h // 4 * (w // 4), 32)


@pytest.mark.parametrize("mixer, width, field, message", [
    ("ems()", 20, "mixer.split", "the static split 0.25:0.5:0.25 of 10 static channels (width 20 of stage 1"),
    ("ems()", 20, "mixer.split", "widths that work: 8, 16, 24, 32, 40, 48"),
    ("ems(static_ratio=0.32)", 25, "mixer.static_ratio", "gives 8 static channels and 17 dynamic ones"),
    ("ems(static_ratio=0.3)", 24, "mixer.static_ratio", "gives 7.2 static channels"),
    ("ems(split=[0.5, 0.25, 0.5])", 32, "mixer.split", "the static split 0.5:0.25:0.5 sums to 1.25"),
    ("ems(c_heads=3)", 32, "mixer.c_heads", "3 heads do not divide the 16 channels of its C-MHSA part after the "
                                            "patch embedding (stage 1"),
    ("ems(c_heads=3, pe_ratio=1)", 32, "mixer.c_heads", "3 heads do not divide the 8 channels"),
    ("ems(g_heads=32)", 32, "mixer.g_heads", "valid g_heads: 1, 2, 4, 8, 16"),
    ("ems(pe_ratio=1.1)", 32, "mixer.pe_ratio", "pe_ratio 1.1 widens the parts of 4, 4 and 8 channels (width 32 of "
                                                "stage 1"),
    ("ems(pe_ratio=1.1)", 32, "mixer.pe_ratio", "to 4.4, 4.4, 8.8 channels, not whole ones"),
    ("ems(pe_ratio=0.5)", 32, "mixer.pe_ratio", "greater than or equal to 1"),
    ("ems(coord_kernel=4)", 32, "mixer.coord_kernel", "coordinate DWConv kernel 4 is even"),
    ("ems(patches=[2, 4, 4])", 32, "mixer.patches", "at least 4 items"),
    ("ems(patches=[2, 4, 0, 6])", 32, "mixer.patches[2]", "greater than or equal to 1"),
    ("ems(whiten=mean)", 32, "mixer.whiten", "'spatial', 'channel' or 'none'"),
    ("cmhsa(k=4)", 32, "mixer.k", "window 4 is even"),
    ("cmhsa(stride=4)", 32, "mixer.stride", "stride 4 is larger than the 3x3 window"),
    ("cmhsa(heads=5)", 32, "mixer.heads", "5 heads do not divide the 32 channels"),
])
def test_bad_options_and_widths_name_their_field(write_spec, mixer, width, field, message):
    with pytest.raises(SpecError) as err:
        archdsl.load_design(write_spec(PROBE.format(size="3x64x64", width=width, mixer=mixer)))
    assert f"stages[0].{field}: " in str(err.value) and message in str(err.value)


def test_a_class_token_is_refused(write_spec):
    text = PROBE.format(size="3x64x64", width=32, mixer="ems()")
    with pytest.raises(SpecError, match=r"stages\[0\]\.mixer: the EMS mixer works on a token map, but stage 1"):
        archdsl.load_design(write_spec(text.replace("patch_embed(patch=4)", "patch_embed(patch=4, cls_token=true)")))


# ---------------------------------------------------------------------------------- the specs


@pytest.mark.parametrize("name", list(PAPER))
def test_specs_against_table_3_1(name):
    """Exact measured figures; XXTiny's params and FLOPs and Tiny's params meet table 3.1 (within 5%
    or the printed rounding); the rest keeps its documented distance (no reading found reaches it;
    see archdsl/components/mixers/ems.py)."""
    design = archdsl.load_design(ROOT / "specs" / f"emsnet_{name}.yaml")
    assert (design.cost.params, design.cost.flops) == MEASURED[name]
    params, flops = PAPER[name]
    assert (meets(design.cost.params, params, 1e6), meets(design.cost.flops, flops, 1e9)) == MEETS[name]
    for measured, paper, shortfall in zip((design.cost.params, design.cost.flops), PAPER[name],
                                          SHORTFALL.get(name, (None, None))):
        if shortfall is not None:
            assert measured / paper == pytest.approx(shortfall, abs=5e-4)
    assert [s.mlp_ratio for s in design.spec.stages] == [8, 8, 4, 4]
    model = archdsl.build_model(design).train()
    assert sum(p.numel() for p in model.parameters()) == design.cost.params
    out = model(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 1000)
    out.logsumexp(-1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_xxtiny_at_a_non_square_input(write_spec):
    text = (ROOT / "specs" / "emsnet_xxtiny.yaml").read_text().replace("input: 3x224x224", "input: 3x320x192")
    model = archdsl.build_model(write_spec(text))
    report = traced_cost(model, (3, 320, 192))
    assert model.design.cost.params == report.params == MEASURED["xxtiny"][0]
    assert abs(model.design.cost.flops - report.flops) <= 0.01 * report.flops
    assert model.forward_features(torch.randn(1, 3, 320, 192)).shape == (1, 10 * 6, 192)
    labels = [d["label"] for _, d in model.design.nodes("block")]
    assert labels[-1] == "ems(static 96 p2/p4, C-MHSA 96x6h p4, G-MHSA 96x6h on 2x1)"


@pytest.mark.parametrize("pe_ratio, deltas", [(2, (29_344, 32_608)), (1, (10_000, 11_632)), (3, (48_688, 53_584))])
def test_table_3_7_split_ablation_prices_the_pe_width(write_spec, pe_ratio, deltas):
    """Table 3.7: XXTiny's static split 1/2:1/4:1/4 or 1/4:1/4:1/2 instead of 1/4:1/2:1/4 costs
    +0.03M (2.56M -> 2.59M, each rounded: between 0.02M and 0.04M). Only PEs doubling their part
    give that; keeping the part's width gives +0.01M, tripling it +0.05M."""
    text = (ROOT / "specs" / "emsnet_xxtiny.yaml").read_text().replace("pe_ratio=2", f"pe_ratio={pe_ratio}")

    def params(split: str) -> int:
        return archdsl.load_design(write_spec(text.replace("ems(", f"ems(split={split}, "))).cost.params

    base = params("[0.25, 0.5, 0.25]")
    found = (params("[0.5, 0.25, 0.25]") - base, params("[0.25, 0.25, 0.5]") - base)
    assert found == deltas
    assert all(0.02e6 < d < 0.04e6 for d in found) == (pe_ratio == 2)
