"""Stage, stem and head options: alternating mixers, CPVT's positional encoding generator, IWSA's LIM,
a depth-wise stem layer, a pre-logits layer before pooling."""
import pytest
import torch

import archdsl
from archdsl import SpecError
from archdsl.tools.trace import traced_cost


def spec(mixer: str, peg: str = "null", size: int = 28, depth: int = 2, cls: str = "false") -> str:
    return f"""
        name: probe
        input: 3x{size}x{size}
        stem: patch_embed(patch=4, cls_token={cls})
        stages:
          - depth: {depth}
            width: 16
            mixer: {mixer}
            peg: {peg}
        head: {{classes: 5, pool: {'token' if cls == 'true' else 'avg'}}}
        """


def tokens_model(write_spec, text: str):
    """The model's blocks alone, as a function of tokens (B, 49, 16)."""
    model = archdsl.build_model(write_spec(text)).eval()
    return model, model.stages[0].blocks


def assert_costs_match(model):
    image = model.design.graph.nodes["input"]["out_shape"]
    report = traced_cost(model, (image.channels, image.height, image.width))
    assert model.design.cost.params == report.params
    assert abs(model.design.cost.flops - report.flops) <= 0.01 * report.flops


def test_a_list_of_mixers_alternates_block_by_block(write_spec):
    # in a YAML [...] list commas split values: the list is quoted, so the grammar reads it whole
    model = archdsl.build_model(write_spec(spec('"[window(size=7, heads=2, lim=true), attention(heads=2)]"', depth=3)))
    labels = [d["label"] for _, d in model.design.nodes("block")]
    assert labels == ["iwsa(7x7, heads=2)", "attention(heads=2)", "iwsa(7x7, heads=2)"]
    assert [type(b.mixer).__name__ for b in model.stages[0].blocks] == ["WindowAttention", "MultiHeadAttention",
                                                                        "WindowAttention"]
    assert_costs_match(model)


def test_peg_positions_and_cost(write_spec):
    for after, expected in (("first", [0]), ("all", [0, 1, 2]), ("[1, 2]", [1, 2])):
        design = archdsl.load_design(write_spec(spec("attention(heads=2)", f"peg(blocks={after})", depth=3)))
        pegs = [n for n, _ in design.nodes("peg")]
        assert pegs == [f"stages.0.pegs.{j}" for j in expected]
        assert all(d["cost"].params == 16 * 9 + 16 for _, d in design.nodes("peg"))
    model = archdsl.build_model(design)
    assert [type(m).__name__ for m in model.stages[0].blocks] == [
        "MetaFormerBlock", "MetaFormerBlock", "PositionalEncodingGenerator", "MetaFormerBlock",
        "PositionalEncodingGenerator"]
    assert_costs_match(model)


def test_peg_after_a_missing_block_is_refused(write_spec):
    with pytest.raises(SpecError, match=r"stages\[0\]\.peg\.blocks: block 5 does not exist in a stage of 2 blocks"):
        archdsl.load_design(write_spec(spec("attention(heads=2)", "peg(blocks=[5])")))


def test_peg_makes_attention_position_aware(write_spec):
    """Global attention alone is permutation-equivariant over tokens; with a PEG it is not."""
    x = torch.randn(1, 49, 16)
    perm = torch.randperm(49)
    for peg, equivariant in (("null", True), ("peg", False)):
        _, blocks = tokens_model(write_spec, spec("attention(heads=2)", peg))
        with torch.inference_mode():
            same = torch.allclose(blocks(x)[:, perm], blocks(x[:, perm]), atol=1e-5)
        assert same is equivariant


def test_peg_leaves_the_class_token_alone(write_spec):
    model = archdsl.build_model(write_spec(spec("attention(heads=2)", "peg", cls="true", depth=1))).eval()
    peg = model.stages[0].blocks[1]
    x = torch.randn(2, 50, 16)
    with torch.inference_mode():
        assert torch.equal(peg(x)[:, 0], x[:, 0]) and not torch.allclose(peg(x)[:, 1:], x[:, 1:])
    assert_costs_match(model)


def test_lim_connects_windows(write_spec):
    """Without LIM a token in one 7x7 window cannot affect another window; with LIM it reaches
    the neighbouring window across the border (IWSA's interleaving)."""
    x = torch.randn(1, 14 * 14, 16)
    changed = x.clone()
    changed[0, 6 * 14 + 6] += 10 * torch.randn(16)  # the last token of the top-left window (row 6, column 6)
    neighbour = 7 * 14 + 7  # the first token of the bottom-right window, diagonal across the corner
    for lim in (False, True):
        model, blocks = tokens_model(write_spec, spec(f"window(size=7, heads=2, lim={str(lim).lower()})", size=56,
                                                      depth=1))
        with torch.inference_mode():
            moved = (blocks(changed) - blocks(x)).abs()[0, neighbour].max().item()
        assert (moved > 1e-4) is lim
        assert_costs_match(model)


def test_conv_stem_groups_make_a_depthwise_layer(write_spec):
    text = """
        name: probe
        input: 3x32x32
        stem: conv(widths=[8, 8, 16], strides=[2, 1, 2], groups={groups})
        stages: [{{depth: 1, width: 16, mixer: identity}}]
        head: {{classes: 5}}
        """
    dense = archdsl.load_design(write_spec(text.format(groups="null")))
    model = archdsl.build_model(write_spec(text.format(groups="[1, 8, 1]")))
    assert model.stem[3].groups == 8 and model.stem[3].weight.shape == (8, 1, 3, 3)
    assert dense.cost.params - model.design.cost.params == 8 * 8 * 9 - 8 * 9
    assert_costs_match(model)
    with pytest.raises(SpecError, match=r"stem\.groups\[1\]: layer 2: 3 groups do not divide its 8 input and 8 "
                                        r"output channels; valid groups: 1, 2, 4, 8"):
        archdsl.load_design(write_spec(text.format(groups="[1, 3, 1]")))
    with pytest.raises(SpecError, match=r"stem\.groups: 2 groups for 3 layers"):
        archdsl.load_design(write_spec(text.format(groups="[1, 8]")))


@pytest.mark.parametrize("layout", ["window(size=4, heads=2)", "resnet"])
def test_pre_logits_before_pooling(write_spec, layout):
    """A linear pre-logits layer commutes with the mean; a GELU one does not; the FLOPs are the tokens'."""
    stages = ("[{depth: 1, width: 16, mixer: \"window(size=4, heads=2)\"}]" if layout != "resnet" else
              "[{block: basic, depth: 1, width: 16}]")
    stem = "patch_embed(patch=4)" if layout != "resnet" else "conv(widths=[16], strides=[4])"

    def build(act: str, before: bool):
        torch.manual_seed(0)
        return archdsl.build_model(write_spec(f"""
            name: probe
            input: 3x32x32
            stem: {stem}
            stages: {stages}
            head: {{classes: 5, pre_logits: 24, pre_logits_act: {act}, pre_logits_before_pool: {str(before).lower()}}}
            """)).eval()

    x = torch.randn(2, 3, 32, 32)
    for act, commutes in [("identity", True), ("gelu", False)]:
        after, before = build(act, False), build(act, True)
        before.load_state_dict(after.state_dict())
        assert torch.allclose(after(x), before(x), atol=1e-5) == commutes
        assert before.design.cost.params == after.design.cost.params
        head = before.design.part_cost("head").flops - after.design.part_cost("head").flops
        assert head == (64 - 1) * 16 * 24 + 64 * (24 - 16)  # 8x8 tokens through the layer, a wider mean
        assert_costs_match(before)
