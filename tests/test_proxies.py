"""Zero-cost proxies (archdsl.search.proxies): finite, deterministic, the model left as it was found,
on every mixer and block; and one property each that a wrong implementation would break."""
from __future__ import annotations

import copy
import math
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import archdsl
from archdsl.search.proxies import PROXIES, ProxyFailure, grad_norm, naswot, synflow, zico

pytestmark = pytest.mark.usefixtures("one_thread")

TRANSFORMER = """
    name: t
    input: 3x32x32
    stem: patch_embed(patch=4, norm=layernorm)
    stages:
      - {depth: 1, width: 16, mixer: "window(size=4, heads=2)"}
      - {depth: 1, width: 32, downsample: patch_merging, mixer: "attention(heads=2)"}
    head: {norm: layernorm, pool: avg, classes: 10}
"""

RESNET = """
    name: r
    input: 3x32x32
    stem: resnet(width=8)
    stages:
      - {depth: 1, width: 8, block: basic}
      - {depth: 1, width: 16, block: bottleneck, downsample: strided(stride=2)}
    head: {pool: avg, classes: 10}
"""

# one model per mixer (first stage; the second is global attention) and per block kind
MIXER_STAGES = """
    name: m
    input: 3x32x32
    stem: patch_embed(patch=4, norm=layernorm)
    stages:
      - {{depth: 1, width: 16, mixer: "{mixer}"{extra}}}
      - {{depth: 1, width: 32, downsample: patch_merging, mixer: "attention(heads=2)"}}
    drop_path: 0.1
    head: {{norm: layernorm, pool: avg, classes: 10}}
"""
MIXERS = {
    "attention": ("attention(heads=2)", ""),
    "window": ("window(size=4, heads=2, shift=true)", ""),
    "window_lim": ("window(size=4, heads=2, rpb=false, lim=true)", ""),
    "ssa": ("ssa(heads=2, sr=2)", ""),
    "partial": ("partial(heads=2, fg=9)", ", peg: \"peg(kernel=3, blocks=first)\""),
    "mat": ("mat(heads=2, size=4)", ""),
    "cmhsa": ("cmhsa(heads=2)", ""),
    "ems": ("ems(c_heads=2, g_heads=2)", ""),
    "identity": ("identity", ""),
}
MODELS = {name: MIXER_STAGES.format(mixer=mixer, extra=extra) for name, (mixer, extra) in MIXERS.items()}
MODELS["transformer"] = TRANSFORMER
MODELS["resnet"] = RESNET
MODELS["visual_transformer"] = """
    name: v
    input: 3x32x32
    stem: resnet(width=8)
    stages:
      - {depth: 1, width: 16, block: basic}
      - depth: 2
        width: 16
        block: visual_transformer
        downsample: conv(kernel=1, stride=1)
        tokens: 4
        token_width: 16
        heads: 2
        tokenizer: [filter, recurrent]
    head: {pool: avg, classes: 10}
"""
MODELS["graft"] = """
    name: g
    input: 3x32x32
    stem: patch_embed(patch=4, pos_embed=true)
    stages:
      - {depth: 2, width: 16, mixer: "window(size=4, heads=2)", graft: "graft(scales=1)"}
    head: {norm: layernorm, pool: avg, classes: 10}
"""


def build(text: str) -> nn.Module:
    torch.manual_seed(0)
    return archdsl.build_model(archdsl.load_design(archdsl.read_text(textwrap.dedent(text).lstrip())))


def batch(n: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def bits(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().numpy().tobytes()


def snapshot(model: nn.Module) -> dict:
    """Everything a proxy must leave as it was: values (bitwise) and tensor objects of parameters and
    buffers (non-persistent ones too), dtypes, requires_grad, .grad, every module's mode, the RNG."""
    return {
        "params": [(name, p.dtype, p.data_ptr(), bits(p), p.requires_grad,
                    None if p.grad is None else (id(p.grad), bits(p.grad))) for name, p in model.named_parameters()],
        "buffers": [(name, id(b), b.dtype, bits(b)) for name, b in model.named_buffers()],
        "modes": [(name, m.training) for name, m in model.named_modules()],
        "rng": bits(torch.get_rng_state()),
    }


def unusual_state(model: nn.Module) -> nn.Module:
    """Training mode but for the head; one parameter frozen; one with a gradient already."""
    model.train()
    model.head.eval()
    params = list(model.parameters())
    params[0].requires_grad_(False)
    params[1].grad = torch.full_like(params[1], 0.5)
    return model


# --- every proxy on every model ----------------------------------------------------------------------
def test_the_registry_names_the_four_proxies():
    assert PROXIES == {"naswot": naswot, "synflow": synflow, "grad_norm": grad_norm, "zico": zico}


@pytest.mark.parametrize("proxy", list(PROXIES))
@pytest.mark.parametrize("model_name", list(MODELS))
def test_a_proxy_is_finite_deterministic_and_leaves_the_model_as_it_found_it(model_name, proxy):
    model = unusual_state(build(MODELS[model_name]))
    images, labels = batch()
    before = snapshot(model)
    first = PROXIES[proxy](model, images, labels)
    assert snapshot(model) == before
    assert math.isfinite(first)
    assert PROXIES[proxy](model, images, labels) == first
    # and the same on a fresh copy in the default state (eval, nothing frozen, no gradients)
    fresh = build(MODELS[model_name]).eval()
    before = snapshot(fresh)
    assert PROXIES[proxy](fresh, images, labels) == pytest.approx(first, rel=1e-6)
    assert snapshot(fresh) == before
    assert all(p.grad is None for p in fresh.parameters())


@pytest.mark.parametrize("proxy", list(PROXIES))
def test_a_non_finite_score_raises_proxy_failure_and_the_model_is_still_restored(proxy):
    model = build(TRANSFORMER)
    with torch.no_grad():
        model.stem.patch_embed.proj.weight[0, 0, 0, 0] = float("nan")
    before = snapshot(model)
    with pytest.raises(ProxyFailure):
        PROXIES[proxy](model, *batch())
    assert snapshot(model) == before


@pytest.mark.parametrize("proxy, message", [("naswot", "no activations"), ("synflow", "no parameters"),
                                            ("grad_norm", "no parameters"), ("zico", "no Linear")])
def test_a_model_without_what_the_proxy_reads_raises_proxy_failure(proxy, message):
    pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())  # (B, 3) "logits", no parameters, no activations
    with pytest.raises(ProxyFailure, match=message):
        PROXIES[proxy](pool, *batch())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("model_name", ["transformer", "resnet", "partial"])
def test_on_the_gpu_the_scores_match_the_cpu_ones(model_name):
    images, labels = batch()
    cpu = {name: f(build(MODELS[model_name]), images, labels) for name, f in PROXIES.items()}
    model = build(MODELS[model_name]).cuda()
    before = snapshot(model)
    gpu = {name: f(model, images.cuda(), labels.cuda()) for name, f in PROXIES.items()}
    assert snapshot(model) == before
    assert gpu == pytest.approx(cpu, rel=1e-3)


# --- NASWOT ---------------------------------------------------------------------------------------------
def test_naswot_is_log_det_of_the_hamming_kernel_of_the_relu_codes():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3))
    x = torch.randn(6, 3, 2, 2)
    with torch.no_grad():
        h1 = mlp[1](x.flatten(1))
        h2 = mlp[3](mlp[2](h1))
    codes = torch.cat([h1 > 0, h2 > 0], dim=1).double()
    hamming = (codes[:, None, :] != codes[None, :, :]).sum(-1).double()
    expected = torch.linalg.slogdet(codes.shape[1] - hamming)[1]
    assert naswot(mlp, x, torch.zeros(6, dtype=torch.long)) == pytest.approx(float(expected), abs=1e-9)


def test_naswot_scores_near_copies_of_one_image_lower_than_distinct_images_and_copies_fail():
    model = build(TRANSFORMER)
    images, labels = batch(32)
    near = images[:1] + 0.05 * torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    assert naswot(model, near, labels) < naswot(model, images, labels) - 50
    with pytest.raises(ProxyFailure, match="singular"):
        naswot(model, images[:1].expand(32, -1, -1, -1).contiguous(), labels)


# --- SynFlow --------------------------------------------------------------------------------------------
def head_bias_flow(model: nn.Module) -> float:
    """The head bias's share of the flow: dR/db = 1 for each logit, so |b| summed."""
    return float(model.get_classifier().bias.detach().abs().double().sum())


def test_synflow_scales_linearly_with_the_classifier_weights():
    """With the norms bypassed, R = 1^T (|W| h + |b|) and every term but the head bias's is linear in
    |W|: S(cW) = c (S(W) - sum|b|) + sum|b|. Flipping signs changes nothing; the images' values neither."""
    model = build(TRANSFORMER)
    images, labels = batch()
    with torch.no_grad():
        model.get_classifier().bias.uniform_(-1, 1)
    base, bias = synflow(model, images, labels), head_bias_flow(model)
    with torch.no_grad():
        model.get_classifier().weight.mul_(-3)
    # rel 1e-8, not 1e-9: the queries' and keys' share is zero in exact arithmetic (every token of the
    # all-ones input is the same, so attention is a plain average) and rounding noise in float64
    assert synflow(model, images, labels) == pytest.approx(3 * (base - bias) + bias, rel=1e-8)
    assert synflow(model, 5 * images + 2, labels) == synflow(model, images, labels)


def test_synflow_bypasses_batchnorm_and_runs_in_float64():
    """A BatchNorm ResNet without norms is positively homogeneous in its stem conv (every path crosses
    it; convs have no bias): scaling stem and classifier by 1e20 each multiplies the flow by 1e40 (but for
    the head bias's share). With BatchNorm kept, the stem's scale would cancel; in float32, 1e40
    overflows."""
    model = build(RESNET)
    images, labels = batch()
    assert isinstance(model.stem[1], nn.BatchNorm2d) and model.stem[0].bias is None
    base, bias = synflow(model, images, labels), head_bias_flow(model)
    with torch.no_grad():
        model.stem[0].weight.mul_(1e20)
        model.get_classifier().weight.mul_(1e20)
    scaled = synflow(model, images, labels)
    assert scaled > torch.finfo(torch.float32).max
    assert scaled == pytest.approx(1e40 * (base - bias) + bias, rel=1e-5)


TOKENS_ARCH = """
    name: tokens_window2
    input: 3x32x32
    stem: patch_embed(patch=2, norm=layernorm)
    stages:
      - {depth: 2, width: 32, mixer: "window(size=2, heads=2)"}
      - {depth: 2, width: 64, downsample: patch_merging, mixer: "partial(heads=4, fg=32)"}
      - {depth: 1, width: 128, downsample: patch_merging, mixer: "ssa(heads=4, sr=1)"}
    head: {norm: layernorm, pool: avg, classes: 10}
"""


def test_synflow_through_attention_is_finite_where_the_fused_kernel_gives_nan():
    """An architecture of ``search/tokens.yaml`` (window 2, no graft, 32 foreground tokens, SSA without
    reduction; 10 classes here): with every weight absolute, its attention logits reach about 1e10
    and torch 2.14's fused CPU attention backward returns NaN gradients in float64 for this model
    (measured: SynFlow NaN on 6 of 40 ``tokens`` architectures). On the math backend the score is
    finite and positive."""
    images, labels = batch()
    score = synflow(build(TOKENS_ARCH), images, labels)
    assert math.isfinite(score) and score > 0


# --- grad_norm ------------------------------------------------------------------------------------------
def test_grad_norm_with_a_zero_classifier_is_the_norm_of_the_head_gradients():
    """Zero classifier weights: logits = b, so only W and b get gradients: dL/db = mean(p - y),
    dL/dW = (p - y)^T h / B with p = softmax(b) and h the pre-logit features. The score is
    ||dL/dW|| + ||dL/db|| (per-tensor norms summed, not one global norm)."""
    model = build(TRANSFORMER)
    images, labels = batch()
    fc = model.get_classifier()
    with torch.no_grad():
        fc.weight.zero_()
        fc.bias.uniform_(-1, 1)
        h = model.forward_head(model.forward_features(images), pre_logits=True).double()
    error = (torch.softmax(fc.bias.detach().double(), 0)[None, :] - F.one_hot(labels, 10).double()) / len(labels)
    expected = float(torch.linalg.vector_norm(error.T @ h) + torch.linalg.vector_norm(error.sum(0)))
    assert grad_norm(model, images, labels) == pytest.approx(expected, rel=1e-5)


# --- ZiCo -----------------------------------------------------------------------------------------------
def reference_zico(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The authors' compute_zico.py, restated: two mini-batches in training mode, .backward(),
    Linear/Conv weight gradients, numpy std (population), mean |g|, log of each layer's sum."""
    net = copy.deepcopy(model).train()
    grads: dict[str, list[np.ndarray]] = {}
    for x, y in zip(images.chunk(2), labels.chunk(2)):
        net.zero_grad()
        F.cross_entropy(net(x), y).backward()
        for name, m in net.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                grads.setdefault(name, []).append(m.weight.grad.double().reshape(-1).numpy())
    total = 0.0
    for g in grads.values():
        g = np.array(g)
        std, mean_abs = np.std(g, axis=0), np.mean(np.abs(g), axis=0)
        nonzero = np.nonzero(std)[0]
        ratio = np.sum(mean_abs[nonzero] / std[nonzero])
        if ratio:
            total += np.log(ratio)
    return total


def test_zico_matches_the_authors_algorithm_on_a_batchnorm_resnet():
    model = build(RESNET)  # no dropout or drop-path, so the authors' train() mode is ours
    images, labels = batch(32)
    assert zico(model, images, labels) == pytest.approx(reference_zico(model, images, labels), rel=1e-6)


def test_zico_rewards_gradients_that_agree_across_mini_batches():
    """The second mini-batch a near copy of the first: gradients barely vary, so mean|g|/std is large;
    an exact copy: std 0 everywhere, no layer left, ProxyFailure."""
    model = build(TRANSFORMER)
    images, labels = batch(32)
    half, y = images[:16], labels[:16]
    noise = 0.01 * torch.randn(half.shape, generator=torch.Generator().manual_seed(5))
    assert zico(model, torch.cat([half, half + noise]), torch.cat([y, y])) > zico(model, images, labels) + 20
    with pytest.raises(ProxyFailure, match="varies"):
        zico(model, torch.cat([half, half]), torch.cat([y, y]))
    with pytest.raises(ProxyFailure, match="at least 2 images"):
        zico(model, images[:1], labels[:1])
