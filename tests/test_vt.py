"""Visual Transformer modules (Wu et al. 2020, sections 3-4, appendix C) and the VT-ResNet specs."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import archdsl
from archdsl import SpecError
from archdsl.components.blocks.visual_transformer import VisualTransformerStageSpec, seed_grid
from archdsl.cost import TensorShape
from archdsl.source import read_text
from archdsl.tools.trace import traced_cost
from conftest import ROOT

# tables 2 and 8 at 224x224 (VT-R34: table 2's row; table 8 prints 19.2M, 3.236G), and the
# analytic counts of the specs (equal to the traced counts: tests/test_cost.py)
PAPER = {"vt_r18": (11.7e6, 1.569e9), "vt_r34": (21.9e6, 3.28e9), "vt_r50": (21.4e6, 3.412e9),
         "vt_r101": (41.5e6, 7.129e9)}
MEASURED = {"vt_r18": (11_320_360, 1_568_512_000), "vt_r34": (21_197_096, 3_274_070_016),
            "vt_r50": (21_119_016, 3_565_332_480), "vt_r101": (40_111_144, 7_287_789_568)}
MODULES = {"vt_r18": 2, "vt_r34": 3, "vt_r50": 3, "vt_r101": 3}


pytestmark = pytest.mark.usefixtures("one_thread")


def stage(**options) -> VisualTransformerStageSpec:
    """A VT stage of 2 modules over 32 channels, 4 tokens of 48 channels, 4 heads, unless told."""
    return VisualTransformerStageSpec(**{"block": "visual_transformer", "depth": 2, "width": 32, "tokens": 4,
                                         "token_width": 48, "heads": 4, **options})


def fmap(height: int, width: int, channels: int = 32) -> TensorShape:
    return TensorShape("NCHW", channels, height, width)


def modules(spec: VisualTransformerStageSpec, shape: TensorShape) -> list[nn.Module]:
    return [spec.build_block(j, shape, 0.0).eval() for j in range(spec.depth)]


PROBE = """
    name: probe
    input: 3x64x64
    stem: patch_embed(patch=4)
    stages:
      - depth: 2
        width: 32
        block: visual_transformer
{options}
    head: {{classes: 10}}
    """


def probe(write_spec, options: str = "", size: str = "64x64"):
    """The probe spec at input ``size``, its VT stage with 4 tokens of 48 channels and 4 heads
    unless ``options`` (``key: value`` lines) say otherwise."""
    fields = dict(tokens="4", token_width="48", heads="4")
    fields.update(line.split(": ", 1) for line in options.splitlines() if line)
    lines = "\n".join(f"        {key}: {value}" for key, value in fields.items())
    return write_spec(PROBE.format(options=lines).replace("3x64x64", f"3x{size}"))


@pytest.mark.parametrize("name", list(PAPER))
def test_specs_match_tables_2_and_8(name):
    design = archdsl.load_design(ROOT / "specs" / f"{name}.yaml")
    params, flops = PAPER[name]
    assert (design.cost.params, design.cost.flops) == MEASURED[name]
    assert abs(design.cost.params - params) <= 0.05 * params
    assert abs(design.cost.flops - flops) <= 0.05 * flops
    labels = [d["label"] for n, d in design.nodes("block") if n.startswith("stages.3.")]
    assert labels == (["vt(filter, 16x1024, heads=8, projector)"]
                      + ["vt(recurrent, 16x1024, heads=8, projector)"] * (MODULES[name] - 2)
                      + ["vt(recurrent, 16x1024, heads=8) -> tokens"])
    # the head averages the 16 tokens of 1024 channels, and classifies them
    assert design.graph.nodes["head"]["in_shape"] == TensorShape("NLC", 1024, 1, 16)
    assert design.part_cost("head").params == 1024 * 1000 + 1000


@pytest.mark.parametrize("size", [(224, 224), (320, 192)])
def test_vt_r18_cost_equals_the_traced_count_and_it_trains(write_spec, size):
    text = (ROOT / "specs" / "vt_r18.yaml").read_text().replace("input: 3x224x224", f"input: 3x{size[0]}x{size[1]}")
    model = archdsl.build_model(write_spec(text))
    report = traced_cost(model, (3, *size))
    design = model.design
    assert design.cost.params == report.params
    assert abs(design.cost.flops - report.flops) <= 0.01 * report.flops
    assert abs(design.part_cost("stage 4").flops - report.by_module["stages.3"]) <= 0.01 * report.by_module["stages.3"]
    # the VT modules run on stage 4's map: 14x14 at 224, 20x12 at 320x192
    assert design.graph.nodes["stages.3.blocks.0"]["in_shape"] == fmap(size[0] // 16, size[1] // 16, 512)
    model.train()
    out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 1000)
    out.logsumexp(-1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


CONFIGS = [
    "",                                                       # filter, then recurrent; tokens out
    "tokenizer: [clustering, recurrent]",
    "tokenizer: filter\noutput: map",                         # filter in every module (table 4, w/o RT)
    "tokenizer: clustering\ntoken_width: 32\noutput: map",    # C = CT: no lift, no value projection
    "projector: false",                                       # table 7, w/o projector
]


@pytest.mark.parametrize("options", CONFIGS)
@pytest.mark.parametrize("size", ["64x64", "64x40"])
def test_analytic_cost_equals_the_traced_count(write_spec, options, size):
    model = archdsl.build_model(probe(write_spec, options, size))
    report = traced_cost(model, (3, *map(int, size.split("x"))))
    assert model.design.cost.params == report.params
    assert abs(model.design.cost.flops - report.flops) <= 0.01 * report.flops
    assert report.by_module["stages.0"] == model.design.part_cost("stage 1").flops


@pytest.mark.parametrize("options", CONFIGS)
def test_every_parameter_trains(write_spec, options):
    model = archdsl.build_model(probe(write_spec, options + "\ndrop_path: 0.1")).train()
    model(torch.randn(2, 3, 64, 64)).logsumexp(-1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_tokens_and_transformer_cost_do_not_change_with_the_resolution():
    """16 tokens whatever the map (section 4: VTs "operate on a small number of visual tokens
    regardless of the image resolution"); the tokenizer and projector grow with the pixels."""
    spec = stage(tokens=16, token_width=64, width=32, heads=8)
    shapes = [fmap(14, 14), fmap(28, 28), fmap(20, 12), fmap(3, 5)]
    parts = [spec.parts(0, s) for s in shapes]
    assert all(p["transformer"] == parts[0]["transformer"] for p in parts)
    assert parts[0]["transformer"].flops == 16 * (2 * 64 * 64 // 8 + 2 * 64 * 64) + 2 * 16 * 16 * 64
    assert parts[1]["tokenizer"].flops == 4 * parts[0]["tokenizer"].flops
    assert parts[1]["projector"].flops > 3 * parts[0]["projector"].flops
    for shape in shapes:
        assert spec.block_shapes(shape)[-1] == TensorShape("NLC", 64, 1, 16)
        first, last = modules(spec, shape)
        with torch.inference_mode():
            out = last(first(torch.randn(2, 32, shape.height, shape.width)))
        assert out.shape == (2, 16, 64)


@pytest.mark.parametrize("size", ["224x224", "320x192"])
def test_the_head_reads_the_same_16_tokens_at_every_input_size(size):
    text = (ROOT / "specs" / "vt_r50.yaml").read_text().replace("3x224x224", f"3x{size}")
    design = archdsl.design_from_source(read_text(text))
    assert design.graph.nodes["head"]["in_shape"] == TensorShape("NLC", 1024, 1, 16)
    transformer = [design.spec.stages[3].parts(j, design.graph.nodes[f"stages.3.blocks.{j}"]["in_shape"])["transformer"]
                   for j in range(3)]
    assert transformer == [transformer[0]] * 3
    assert transformer[0].flops == 16 * (2 * 1024 * 1024 // 8 + 2 * 1024 * 1024) + 2 * 16 * 16 * 1024


def test_recurrent_tokenizer_follows_the_previous_tokens_and_filter_does_not():
    """Eq. 2: a recurrent module's tokens (and its map) change with the tokens it is given; a
    filter-based module (eq. 1) ignores them."""
    shape = fmap(6, 6)
    x = torch.randn(1, 32, 6, 6)
    before, after = torch.randn(1, 4, 48), torch.randn(1, 4, 48)
    recurrent = modules(stage(tokenizer=["filter", "recurrent"], output="map"), shape)[1]
    filter_based = modules(stage(tokenizer="filter", output="map"), shape)[1]
    with torch.inference_mode():
        assert not torch.allclose(recurrent.tokenizer(x, before), recurrent.tokenizer(x, after), atol=1e-4)
        assert not torch.allclose(recurrent((x, before)), recurrent((x, after)), atol=1e-4)
        assert torch.equal(filter_based((x, before)), filter_based((x, after)))
    assert isinstance(recurrent.tokenizer.token_to_filters, nn.Linear)  # W_{T->R}: CT -> C
    assert recurrent.tokenizer.token_to_filters.weight.shape == (32, 48)


def test_tokens_are_weighted_averages_of_the_pixels():
    """Eq. 1: ``T = SOFTMAX_HW(X W_A)^T X``: with C = CT (no lift) every token lies in the convex
    hull of the pixels, and the attention sums to one over the pixels."""
    spec = stage(token_width=32, tokenizer="filter")
    tokenizer = modules(spec, fmap(5, 7))[0].tokenizer
    x = torch.randn(2, 32, 5, 7)
    with torch.inference_mode():
        tokens = tokenizer(x, None)
        pixels = x.flatten(2).transpose(1, 2)
        weights = torch.softmax(pixels @ tokenizer.filters.T, dim=1)  # B, HW, L
    assert tokens.shape == (2, 4, 32)
    assert torch.allclose(tokens, weights.transpose(1, 2) @ pixels, atol=1e-5)


def test_clustering_tokenizer_separates_two_regions():
    """Appendix C: on a map of two regions, 3 columns of one direction and 5 of another, the
    k-means centroids become the two directions, though the 2x2 seed cells mix them (a cell of
    3 columns of one and 1 of the other), and the tokens pool each region apart."""
    a, b = torch.eye(8)[0], torch.eye(8)[1]
    x = torch.empty(1, 8, 8, 8)
    x[..., :3] = 4 * a[:, None, None]
    x[..., 3:] = 4 * b[:, None, None]
    x = x + 0.05 * torch.randn_like(x)
    spec = stage(width=8, token_width=8, heads=1, tokenizer="clustering", output="map")
    tokenizer = modules(spec, fmap(8, 8, 8))[0].tokenizer
    assert tokenizer.grid == (2, 2) == seed_grid(4, 8, 8)
    with torch.inference_mode():
        seeds = F.normalize(F.adaptive_avg_pool2d(x, (2, 2)).flatten(2).transpose(1, 2), dim=-1)[0]
        centroids = tokenizer.centroids(x)[0]
        tokens = tokenizer(x, None)[0]
    assert (seeds @ a).max() < 0.96  # no seed is region a's direction
    assert (centroids @ a).max() > 0.999 and (centroids @ b).max() > 0.999
    tokens = F.normalize(tokens, dim=-1)
    assert (tokens @ a).max() > 0.99 and (tokens @ b).max() > 0.99


def test_projector_output_has_the_feature_map_shape():
    """Eq. 5 over a non-square map, C != CT (values through W_V) and C = CT (the tokens)."""
    for token_width in (48, 32):
        spec = stage(token_width=token_width, output="map")
        first = modules(spec, fmap(5, 9))[0]
        x = torch.randn(2, 32, 5, 9)
        tokens = torch.randn(2, 4, token_width)
        with torch.inference_mode():
            out = first.projector(x, tokens)
            passed_on = first(x)
        assert out.shape == x.shape and not torch.allclose(out, x)
        assert passed_on[0].shape == x.shape and passed_on[1].shape == (2, 4, token_width)
        assert isinstance(first.projector.value, nn.Linear if token_width != 32 else nn.Identity)


def test_features_only_returns_the_projected_map(write_spec):
    model = archdsl.build_model(probe(write_spec, "output: map", "64x40"), features_only=True).eval()
    with torch.inference_mode():
        (out,) = model(torch.randn(1, 3, 64, 40))
    assert out.shape == (1, 32, 16, 10)
    assert model.feature_info == [dict(num_chs=32, reduction=4, module="stages.0")]


@pytest.mark.parametrize("options, field, message", [
    ("heads: 5", "heads", "5 heads do not divide the width 32; valid heads (dividing width and token_width): "
                          "1, 2, 4, 8, 16"),
    ("token_width: 42", "heads", "4 heads do not divide the token_width 42; valid heads (dividing width and "
                                 "token_width): 1, 2"),
    ("tokenizer: recurrent", "tokenizer", "the first VT module has no previous tokens for a recurrent tokenizer"),
    ("tokenizer: [filter, recurrent, recurrent]", "tokenizer", "3 tokenizers for 2 VT modules"),
    ("tokenizer: [filter, cluster]", "tokenizer[1]", "'cluster' is not valid"),
    ("output: map\nprojector: false", "output", "output: map needs projectors"),
    ("tokenizer: filter\nprojector: false", "tokenizer", "module 1 would be unused"),
    ("tokenizer: clustering\ntokens: 64", "tokenizer",
     "seeds its 64 centroids from 8x8 cells of the map, more than the 4x4 map of stage 1 (input 16x16, stride 4)"),
    ("tokens: 0", "tokens", "should be greater than or equal to 1"),
    ("tokns: 8", "tokns", "unknown option 'tokns'; did you mean 'tokens'"),
    ("peg: peg", "peg", "a PEG cannot sit between them"),
])
def test_bad_options_name_their_field(write_spec, options, field, message):
    size = "16x16" if "clustering" in options else "64x64"
    with pytest.raises(SpecError) as err:
        archdsl.load_design(probe(write_spec, options, size))
    assert f"stages[0].{field}: " in str(err.value) and message in str(err.value)


def test_a_width_change_needs_a_convolution(write_spec):
    """A single module outputting tokens: the message gives the stride of the map it works on."""
    text = probe(write_spec).read_text().replace("patch_embed(patch=4)", "patch_embed(patch=4, width=16)")
    text = text.replace("depth: 2", "depth: 1")
    with pytest.raises(SpecError, match=r"stages\[0\]\.width: stage 1 \(input 64x64, stride 4\) receives 16 "
                                        r"channels but its VT modules keep the width 32"):
        archdsl.load_design(write_spec(text))
    fixed = text.replace("block: visual_transformer", "block: visual_transformer\n    downsample: conv(kernel=1, stride=1)")
    design = archdsl.load_design(write_spec(fixed))
    assert design.graph.nodes["stages.0.downsample"]["out_shape"] == TensorShape("NLC", 32, 16, 16)
    assert design.graph.nodes["stages.0.blocks.0"]["out_shape"] == TensorShape("NLC", 48, 1, 4)
