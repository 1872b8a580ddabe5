"""``archdsl.optimize``: compiled inference equals eager on every spec; channels_last follows the conv rule.

The per-spec test is also the check that ``torch.compile`` works on every spec: it compiles each
model with inductor (10-130 s each on 2 cores): by default on one spec per family
(``conftest.REPRESENTATIVES``), on every spec with ``make test-all`` (the others are marked ``slow``).
"""
import pytest
import torch
import torch._dynamo
from conftest import ROOT, SPECS, TINY_ATTENTION, sweep

import archdsl
from archdsl.tools.optimize import CONV_SHARE, conv_share
from archdsl.tools.testing import eager_and_optimized

TOLERANCE = 1e-4

CONV_SPEC = """
    name: tiny_conv
    input: 3x64x64
    stem: conv(widths=[16], kernel=3)
    stages:
      - {depth: 1, width: 16, block: basic}
      - {depth: 1, width: 32, block: basic, downsample: strided}
    head: {classes: 10}
"""

@pytest.mark.parametrize("spec_text, conv", [(CONV_SPEC, True), (TINY_ATTENTION, False)], ids=["conv", "attention"])
def test_tiny_spec_channels_last_rule_and_parity(write_spec, spec_text, conv):
    model = archdsl.build_model(write_spec(spec_text))
    assert (conv_share(model.design) >= CONV_SHARE) is conv
    expected, out, fast = eager_and_optimized(model)
    assert fast.channels_last is conv
    conv_weight = max((p for p in model.parameters() if p.dim() == 4), key=torch.Tensor.numel)
    assert conv_weight.is_contiguous(memory_format=torch.channels_last) is conv
    assert not model.training
    assert out.shape == expected.shape == (2, 10)
    assert (out - expected).abs().max().item() <= TOLERANCE
    image = model.design.spec.input
    x = torch.randn(3, image.channels, image.height, image.width)
    with torch.inference_mode():
        assert (fast(x) - model(x)).abs().max().item() <= TOLERANCE  # another batch size: the dynamic graph


@pytest.mark.parametrize("path", sweep(SPECS), ids=[str(p.relative_to(ROOT / "specs")) for p in SPECS])
def test_optimized_equals_eager(path):
    torch.manual_seed(0)
    expected, out, _ = eager_and_optimized(archdsl.build_model(path))
    assert (out - expected).abs().max().item() <= TOLERANCE
