"""Partial attention (PartialFormer, thesis chapter 5) and the PartialFormer-B0..B4 specs."""
import pytest
import torch

import archdsl
from archdsl import SpecError
from archdsl.cost import TensorShape
from archdsl.components.mixers.partial import PartialAttentionSpec
from archdsl.tools.trace import traced_cost
from conftest import ROOT, Tokens, grid

# table 5.1: params, GFLOPs (printed to one decimal) at 224x224
TABLE = {"b0": (5.3e6, 0.4e9), "b1": (8.2e6, 0.7e9), "b2": (21.1e6, 1.9e9), "b3": (36.1e6, 3.4e9),
         "b4": (64.5e6, 6.8e9)}
SPECS = {name: ROOT / "specs" / f"partialformer_{name}.yaml" for name in TABLE}
# PartialFormer-B0's stages at 224x224: (grid side, width, heads)
B0_STAGES = [(56, 24, 2), (28, 48, 4), (14, 96, 8), (7, 192, 16)]


pytestmark = pytest.mark.usefixtures("one_thread")


def partial(shape: TensorShape, **options):
    spec = PartialAttentionSpec(**{"heads": 4, **options})
    return spec, spec.build(shape, 0).eval()


@pytest.mark.parametrize("fg", [49, 0.25])
def test_the_foreground_count_is_respected_at_every_resolution(fg):
    """Background rows get one shared update (eq. 5.7) and foreground rows their own: exactly
    ``N - N_F`` rows, those of lowest channel mean, share it. ``N_F`` is the count or the ratio
    of the grid, leaving at least one background token."""
    for h, w in [(56, 56), (28, 28), (14, 14), (7, 7), (10, 6), (5, 3), (1, 2)]:
        n = h * w
        spec, mixer = partial(grid(h, w), fg=fg)
        expected = max(1, min(n - 1, fg if isinstance(fg, int) else int(fg * n)))
        assert spec.fg_tokens(grid(h, w)) == mixer.fg_tokens == expected
        assert spec.describe(grid(h, w), 0) == f"partial(fg={expected}/{n}, heads=4)"
        x = torch.randn(1, n, 32)
        with torch.inference_mode():
            delta = (mixer(x) - x)[0]
        order = x[0].mean(-1).argsort(descending=True)
        fg_rows, bg_rows = order[:expected], order[expected:]
        shared = delta[bg_rows[0]]
        assert torch.allclose(delta[bg_rows], shared.expand(len(bg_rows), -1), atol=1e-5)
        assert not torch.isclose(delta[fg_rows], shared, atol=1e-5).all(-1).any()


@pytest.mark.parametrize("fg", [49, 0.3])
def test_without_positional_encoding_the_mixer_is_permutation_equivariant(fg):
    _, mixer = partial(grid(12, 12), fg=fg)
    x = torch.randn(2, 144, 32)
    perm = torch.randperm(144)
    with torch.inference_mode():
        assert torch.allclose(mixer(x[:, perm]), mixer(x)[:, perm], atol=1e-5)


def test_mmsa_cost_grows_with_the_foreground_count_not_the_grid():
    """PartialFormer-B0's stages at 224x224 and 448x448: with a count the MMSA and HeadMLP costs
    stay (but where the grid caps the count: 48 of stage 4's 49 tokens at 224), the projections
    grow with the grid; with a ratio MMSA grows with the grid too."""
    for side, width, heads in B0_STAGES:
        small, large = grid(side, side, width), grid(2 * side, 2 * side, width)
        count = PartialAttentionSpec(heads=heads, fg=49)
        p224, p448 = count.parts(small), count.parts(large)
        m224 = min(49, side * side - 1) + 1
        assert p224["mmsa"].flops == 2 * m224 * m224 * width and p448["mmsa"].flops == 2 * 50 * 50 * width
        if side > 7:
            for part in ("mmsa", "head_mlp", "proj"):
                assert p224[part] == p448[part]
        assert p448["qkv"].flops == 3 * width * width * (4 * side * side + 1)
        more = PartialAttentionSpec(heads=heads, fg=98).parts(large)
        assert more["mmsa"].flops == p448["mmsa"].flops * 99 ** 2 // 50 ** 2
        assert more["head_mlp"].flops == p448["head_mlp"].flops * 99 ** 2 // 50 ** 2
        ratio = PartialAttentionSpec(heads=heads, fg=0.25)
        r224, r448 = (ratio.fg_tokens(s) + 1 for s in (small, large))
        assert ratio.parts(large)["mmsa"].flops == 2 * r448 * r448 * width and r448 > 3 * r224
        assert count.cost(large, 0).params == count.cost(small, 0).params


@pytest.mark.parametrize("fg", [49, 0.25])
@pytest.mark.parametrize("size", [(56, 56), (7, 7), (40, 24)])
def test_analytic_cost_equals_the_traced_count(fg, size):
    """The mixer alone: a PartialFormer-B0 stage-1-like grid, a grid with one background token
    (fg=49 on 7x7) and a non-square grid (stage 1 at 160x96)."""
    shape = grid(*size, 48)
    spec, mixer = partial(shape, fg=fg)
    report = traced_cost(Tokens(mixer), (1, shape.tokens, 48))
    cost = spec.cost(shape, 0)
    assert cost.params == report.params
    assert abs(cost.flops - report.flops) <= 0.01 * report.flops


@pytest.mark.parametrize("size", [(10, 6), (7, 7), (1, 2)])
def test_the_mixer_runs_backward_to_every_parameter(size):
    shape = grid(*size)
    _, mixer = partial(shape, fg=49)
    mixer.train()
    x = torch.randn(2, shape.tokens, 32, requires_grad=True)
    mixer(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mixer.parameters())


PROBE = """
    name: probe
    input: 3x64x64
    stem: patch_embed(patch=4)
    stages:
      - depth: 1
        width: 24
        mixer: {mixer}
    head: {{classes: 10}}
    """


@pytest.mark.parametrize("mixer, field, message", [
    ("partial(heads=5)", "mixer.heads", "5 heads do not divide the width 24"),
    ("partial(heads=2, r=5)", "mixer.r", "ChannelMLP reduction 5 does not divide the width 24"),
    ("partial(heads=2, fg=1.5)", "mixer.fg", "a foreground ratio is between 0 and 1"),
    ("partial(heads=2, fg=0)", "mixer.fg", "a foreground count is at least 1"),
    ("partial(heads=2, fg=true)", "mixer.fg", "fg is a foreground token count"),
    ("partial(heads=2, e=0)", "mixer.e", "should be greater than 0"),
    ("partial(heads=2, e=0.1)", "mixer.e", "leaves no hidden heads"),
    ("partial(heads=2, fgg=3)", "mixer.fgg", "did you mean 'fg'?"),
    ("partial(fg=3)", "mixer.heads", "required option 'heads' is missing"),
])
def test_bad_options_name_their_field(write_spec, mixer, field, message):
    with pytest.raises(SpecError) as err:
        archdsl.load_design(write_spec(PROBE.format(mixer=mixer)))
    assert f"stages[0].{field}: " in str(err.value) and message in str(err.value)


def test_a_class_token_or_a_single_token_is_refused(write_spec):
    text = PROBE.format(mixer="partial(heads=2)")
    with pytest.raises(SpecError, match=r"stages\[0\]\.mixer: partial attention needs a plain token grid"):
        archdsl.load_design(write_spec(text.replace("patch_embed(patch=4)", "patch_embed(patch=4, cls_token=true)")))
    with pytest.raises(SpecError, match=r"stages\[0\]\.mixer: partial attention needs at least 2 tokens .* 1x1 grid"):
        archdsl.load_design(write_spec(text.replace("3x64x64", "3x4x4")))


@pytest.mark.parametrize("name", list(TABLE))
def test_specs_match_table_5_1_and_train(name):
    design = archdsl.load_design(SPECS[name])
    params, flops = TABLE[name]
    assert abs(design.cost.params - params) <= 0.03 * params
    assert abs(design.cost.flops - flops) <= max(0.05 * flops, 0.05e9)  # 5%, or the printed rounding
    labels = [d["label"] for _, d in design.nodes("block")]
    assert labels[0].startswith("partial(fg=49/3136,") and labels[-1].startswith("partial(fg=48/49,")
    model = archdsl.build_model(design).train()
    assert sum(p.numel() for p in model.parameters()) == design.cost.params
    out = model(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 1000)
    out.logsumexp(-1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("size", ["224x224", "320x192"])
def test_b0_analytic_cost_equals_the_traced_count(write_spec, size):
    text = SPECS["b0"].read_text().replace("input: 3x224x224", f"input: 3x{size}")
    model = archdsl.build_model(write_spec(text))
    report = traced_cost(model, (3, *map(int, size.split("x"))))
    assert model.design.cost.params == report.params
    assert abs(model.design.cost.flops - report.flops) <= 0.01 * report.flops
    if size == "320x192":  # stage 4 is a 10x6 grid: 49 foreground and 11 background tokens
        assert [d["label"] for _, d in model.design.nodes("block")][-1] == "partial(fg=49/60, heads=16)"
