"""Training-free architecture scores ("zero-cost proxies") of an untrained network on one batch.

Every proxy has the signature ``proxy(model, images, labels) -> float``: ``images`` a float batch and
``labels`` its int64 class indices, both already on the model's device (every tensor made here is made
on that device; only the final scalar is read back). **Sign convention: higher is better for every
proxy** (each is returned as its paper defines it, and each paper reports it as positively correlated
with trained accuracy), so a search maximises all of them.

- ``naswot``: ``log |K_H|`` of the activation-code kernel (Mellor et al. 2021);
- ``synflow``: the synaptic flow ``sum |theta * dR/dtheta|`` of the network with absolute weights on
  an all-ones input (Tanaka et al. 2020; as a NAS proxy Abdelfattah et al. 2021);
- ``grad_norm``: the sum of the per-tensor L2 norms of the cross-entropy gradient (Abdelfattah et al. 2021);
- ``zico``: the inverse coefficient of variation of the gradients across mini-batches, summed over
  layers in log space (Li et al. 2023).

Every proxy leaves the model as it found it: parameters and buffers bit-identical (and the same tensor
objects), ``.grad`` as it was (the proxies never write it: gradients are taken with
``torch.autograd.grad``), every module's training flag and every parameter's ``requires_grad`` as they
were, also when the proxy raises. Gradient proxies differentiate with respect to every parameter, frozen
ones included (``requires_grad`` is switched on for the duration and switched back).

Modes. NASWOT runs the whole model in eval mode under ``no_grad`` (as the search has always done).
``grad_norm`` and ``zico`` run it in eval mode except for the BatchNorm-type layers, which use batch
statistics as in the papers' code (which calls ``net.train()``): so dropout and drop-path are off, the
whole architecture is scored and the score is deterministic, and the running statistics that the
forward updates are put back afterwards. ``synflow`` runs in eval mode with every normalisation layer
bypassed (see its docstring).

A proxy that cannot give a finite score raises ``ProxyFailure`` saying why.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import get_act_layer
from torch.nn.attention import SDPBackend, sdpa_kernel


class ProxyFailure(Exception):
    """A proxy that cannot give a finite score for this model and batch; the message says why."""


# the activation modules NASWOT reads its codes at (timm's classes for the names archdsl uses, and torch's)
ACTIVATIONS = tuple({type(get_act_layer(n)()) for n in ("gelu", "relu", "silu", "hard_swish", "tanh", "sigmoid")}
                    | {nn.GELU, nn.ReLU, nn.SiLU, nn.Hardswish, nn.Tanh, nn.Sigmoid, nn.ReLU6, nn.LeakyReLU})

# normalisation layers: SynFlow bypasses all of them; the gradient proxies run the batch-statistics ones
# (BatchNorm, InstanceNorm: torch's _NormBase) in training mode. timm's LayerNorm2d is an nn.LayerNorm.
BATCH_STAT_NORMS = (nn.modules.batchnorm._NormBase,)
NORMS = BATCH_STAT_NORMS + (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())

# ZiCo's layers: the weight of every Linear and every convolution (torch's _ConvNd: Conv1d/2d/3d and transposed)
ZICO_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)
ZICO_SPLITS = 2  # mini-batches the batch is split into for ZiCo's gradient statistics (the paper uses 2)


def _exact_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it (not MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _finite(value: torch.Tensor | float, what: str) -> float:
    """The value as a float, or ProxyFailure naming ``what`` when it is NaN or infinite."""
    score = float(value)
    if math.isnan(score):
        raise ProxyFailure(f"the {what} is NaN")
    if math.isinf(score):
        raise ProxyFailure(f"the {what} is {'+' if score > 0 else '-'}inf (it overflowed)")
    return score


@contextlib.contextmanager
def _untouched(model: nn.Module) -> Iterator[list[nn.Parameter]]:
    """Run the block on ``model`` and put back afterwards (also on an exception) every parameter's
    tensor and values, ``requires_grad`` and ``.grad``, every buffer (tensor object and values) and every
    module's training flag. Yields the (deduplicated) parameters."""
    params = list(model.parameters())
    saved_params = [(p, p.data, p.detach().clone(), p.requires_grad, p.grad) for p in params]
    saved_buffers = [(m, name, b, b.detach().clone()) for m in model.modules()
                     for name, b in m._buffers.items() if b is not None]
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield params
    finally:
        with torch.no_grad():
            for p, data, copy, requires_grad, grad in saved_params:
                data.copy_(copy)
                p.data = data
                p.requires_grad_(requires_grad)
                p.grad = grad
            for m, name, b, copy in saved_buffers:
                b.copy_(copy)
                m._buffers[name] = b
        for m, training in modes:
            m.training = training


def _batch_statistics_mode(model: nn.Module) -> None:
    """Eval mode (no dropout, no drop-path) except BatchNorm-type layers, which use batch statistics."""
    model.eval()
    for m in model.modules():
        if isinstance(m, BATCH_STAT_NORMS):
            m.train()


def _logits(output) -> torch.Tensor:
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        raise ProxyFailure("the model's output is not a (batch, classes) tensor of logits "
                           f"(got {type(output).__name__}{'' if not isinstance(output, torch.Tensor) else tuple(output.shape)})")
    return output


def _cross_entropy_gradients(model: nn.Module, params: list[nn.Parameter], images: torch.Tensor,
                             labels: torch.Tensor) -> list[torch.Tensor | None]:
    """d(mean cross-entropy)/d(param) for every parameter (None for one the loss does not depend on)."""
    for p in params:
        p.requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(_logits(model(images)), labels)
        _finite(loss.detach(), "cross-entropy loss")
        return list(torch.autograd.grad(loss, params, allow_unused=True))


# --------------------------------------------------------------------------------------------- NASWOT
def naswot(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """NASWOT: Mellor et al. 2021, "Neural Architecture Search without Training" (ICML), eq. 2:
    ``s = log |K_H|``.

    Each image's binary code ``c_i`` is the sign pattern (``x > 0``) of the inputs of every activation
    module of the untrained network (so GELU and in-place ReLU count alike; activations applied as
    functions are not seen); ``K_H[i, j] = N_A - d_H(c_i, c_j)`` counts the units where images ``i`` and
    ``j`` agree. Networks that tell the images apart (codes far apart) score higher. Eval mode, no
    autograd; ``K`` is accumulated activation by activation in float64 on the device, never holding all
    codes at once. ``labels`` are not used.

    Raises ProxyFailure when the model has no activation modules, when ``K`` is singular (two images
    with the same code, e.g. identical images: ``log |K| = -inf``) or the score is NaN.
    """
    batch = images.shape[0]
    kernel = torch.zeros(batch, batch, dtype=_exact_dtype(images.device), device=images.device)
    units = [0]

    def hook(_module, inputs):
        x = inputs[0].detach()
        if x.numel() % batch:
            return
        codes = (x.reshape(batch, -1) > 0).to(kernel.dtype)
        ones = codes.sum(dim=1)
        n = codes.shape[1]
        # agreements = c_i.c_j + (1 - c_i).(1 - c_j) = 2 c_i.c_j - |c_i| - |c_j| + n
        kernel.add_(2 * (codes @ codes.T) - ones[:, None] - ones[None, :] + n)
        units[0] += n

    with _untouched(model):
        handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, ACTIVATIONS)]
        try:
            model.eval()
            with torch.no_grad():
                model(images)
        finally:
            for h in handles:
                h.remove()
    if not units[0]:
        raise ProxyFailure("the model has no activations (NASWOT reads its codes at the inputs of activation "
                           "modules: " + ", ".join(sorted({a.__name__ for a in ACTIVATIONS})) + ")")
    sign, logdet = torch.linalg.slogdet(kernel)
    if math.isnan(float(logdet)):
        raise ProxyFailure("the NASWOT score is NaN")
    if float(sign) <= 0:
        raise ProxyFailure("the NASWOT kernel K_H is singular (log|K| = -inf): at least two images of the batch "
                           "have the same activation code (identical images?)")
    return _finite(logdet, "NASWOT score")


# -------------------------------------------------------------------------------------------- SynFlow
def _bypass(_module, inputs, _output):
    return inputs[0]


def _synflow_pass(model: nn.Module, params: list[nn.Parameter], weights: list[torch.Tensor],
                  buffers: list[tuple[nn.Module, str, torch.Tensor]], dtype: torch.dtype,
                  shape: tuple, device: torch.device) -> torch.Tensor:
    for p, w in zip(params, weights):
        p.data = w.detach().to(dtype).abs()  # always a new tensor: the original is never written
        p.requires_grad_(True)
    for m, name, b in buffers:
        m._buffers[name] = b.to(dtype, copy=True) if b.is_floating_point() else b
    handles = [m.register_forward_hook(_bypass) for m in model.modules() if isinstance(m, NORMS)]
    try:
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            output = model(torch.ones((1, *shape), dtype=dtype, device=device))
            tensors = [output] if isinstance(output, torch.Tensor) else list(output)
            flow = sum(t.sum() for t in tensors)
            grads = torch.autograd.grad(flow, params, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    total = torch.zeros((), dtype=torch.float64, device=device)
    for p, g in zip(params, grads):
        if g is not None:
            total += (p.detach() * g).abs().sum().to(torch.float64)
    return total


def synflow(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """SynFlow: Tanaka et al. 2020, "Pruning neural networks without any data by iteratively conserving
    synaptic flow" (NeurIPS), eq. 2 and the score ``S(theta) = dR/dtheta * theta``; as a NAS proxy
    Abdelfattah et al. 2021, "Zero-Cost Proxies for Lightweight NAS" (ICLR), eq. 4 summed over the
    parameters:

        ``synflow = sum over all parameters theta of |theta * dR/dtheta|``,
        ``R = 1^T (prod_l |theta_l|) 1``,

    i.e. every parameter (weights, biases, embeddings, tokens, bias tables, ...) replaced by its
    absolute value, one all-ones input of the images' shape, ``R`` the sum of the outputs. The images'
    values and ``labels`` are not used (only the image shape). Higher is better.

    Decisions:
    - normalisation layers (BatchNorm, InstanceNorm, LayerNorm incl. timm's LayerNorm2d, GroupNorm,
      RMSNorm) are **bypassed** (output = input): Abdelfattah et al.'s code scores ``synflow`` on a copy
      of the network built without BatchNorm (``bn=False``); LayerNorm is treated the same way, for the
      same reason: it divides by the data's statistics, so it is no path product, it cancels any
      scaling of the layers before it, and on the constant all-ones input it would centre the features
      (negative values into the following layers);
    - eval mode (no dropout or drop-path: the whole architecture's flow);
    - float64 (parameters, floating buffers and the input) where the device allows it, against
      overflow of ``R``; if the model fails to run in float64 (an op without a float64 kernel), the
      model's own dtype is used instead;
    - attention (``F.scaled_dot_product_attention``) runs on PyTorch's math backend, the formula
      itself: on these very large float64 logits torch 2.14's fused CPU kernel returns wrong gradients
      (on the 40 ``tokens`` architectures of ``benchmarks/proxy_correlation.py``: NaN on 6; of the
      other 34, one equals the formula's score and the rest are 5e-11 to 4e16 times it, median 100).
      A limit of the score itself, not of this code: every token of the all-ones input is the same,
      so attention is a plain average and the queries' and keys' share of the flow is zero in exact
      arithmetic; at logits of about 1e10 their float64 gradients are rounding noise, which on 5 of
      those 40 architectures moves the score by a factor of 0.18-9.8 against softmax attention
      written out as matrix products (equal to 1e-6 on the other 35). On attention networks SynFlow
      is therefore not a reliable ranking;
    - only parameters are made absolute, not buffers (a shifted-window attention mask of -100 must stay
      negative); the sum includes the absolute value, as the reference code has it.

    Weights, buffers and modes are restored afterwards. Raises ProxyFailure when the flow is not
    finite (it overflowed even in float64) or the model has no parameters.
    """
    device, shape = images.device, tuple(images.shape[1:])
    with _untouched(model) as params:
        if not params:
            raise ProxyFailure("the model has no parameters, so SynFlow has nothing to score")
        weights = [p.data for p in params]
        buffers = [(m, name, b) for m in model.modules() for name, b in m._buffers.items() if b is not None]
        model.eval()
        dtype = _exact_dtype(device)
        try:
            total = _synflow_pass(model, params, weights, buffers, dtype, shape, device)
        except (RuntimeError, TypeError, NotImplementedError):
            own = weights[0].dtype if weights[0].is_floating_point() else torch.get_default_dtype()
            if own == dtype:
                raise
            total = _synflow_pass(model, params, weights, buffers, own, shape, device)
    return _finite(total, "SynFlow score")


# ------------------------------------------------------------------------------------------ grad_norm
def grad_norm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """grad_norm: Abdelfattah et al. 2021, "Zero-Cost Proxies for Lightweight NAS" (ICLR), section 3:

        ``grad_norm = sum over parameter tensors theta of || dL/dtheta ||_2``,

    ``L`` the mean cross-entropy of the whole batch (one forward and backward pass). Every parameter
    tensor counts (the reference code keeps only the Conv/Linear weights); a parameter the loss does not
    depend on contributes 0, and a model whose gradients are all zero scores 0.0. Eval mode except
    BatchNorm-type layers (batch statistics). Higher is better.

    Raises ProxyFailure when the loss or the sum is not finite, the model has no parameters, or no
    parameter gets a gradient (the output does not depend on them).
    """
    with _untouched(model) as params:
        if not params:
            raise ProxyFailure("the model has no parameters, so there is no gradient to measure")
        _batch_statistics_mode(model)
        grads = _cross_entropy_gradients(model, params, images, labels)
        present = [g for g in grads if g is not None]
        if not present:
            raise ProxyFailure("no parameter gets a gradient: the loss does not depend on the parameters")
        total = torch.zeros((), dtype=torch.float64, device=images.device)
        for g in present:
            total += torch.linalg.vector_norm(g.to(torch.float64))
    return _finite(total, "gradient norm")


# ----------------------------------------------------------------------------------------------- ZiCo
def zico(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """ZiCo: Li et al. 2023, "ZiCo: Zero-shot NAS via inverse Coefficient of Variation on Gradients"
    (ICLR), eq. 2:

        ``ZiCo = sum over layers l of log( sum over the weights w of layer l of E[|g_w|] / sqrt(Var(g_w)) )``,

    ``g_w`` the gradient of the mean cross-entropy with respect to ``w`` on one mini-batch; the mean of
    ``|g_w|`` and the (population, ``ddof=0``) standard deviation of the signed ``g_w`` over
    ``ZICO_SPLITS = 2`` mini-batches, the batch split into near-equal parts in order
    (``torch.tensor_split``), one forward and backward pass each. As in the authors' code
    (``compute_zico.py``): weights whose gradient does not vary across the mini-batches (std 0) are left
    out of their layer's sum, and a layer with none left is left out of the total.

    A **layer** is the ``weight`` of an ``nn.Linear`` or a convolution (``nn.Conv1d/2d/3d``, depth-wise
    and transposed ones included), as in the authors' code: so an attention mixer contributes its
    ``qkv`` and ``proj`` Linears (and any convolution, e.g. spatial-reduction or LIM convs), an MLP its two
    Linears, a stem or downsample its convs, the head its classifier. Biases and normalisation layers
    (LayerNorm, BatchNorm affines) are not layers, nor are other parameters: position embeddings, class
    and abstract tokens, relative position bias tables, GrafT's anti-alias weights, the VT tokenizer's
    ``filters``. Eval mode except BatchNorm-type layers (batch statistics of each mini-batch, as the
    authors' ``network.train()`` gives). Higher is better.

    Raises ProxyFailure when the batch has fewer than 2 images, the model has no Linear or conv layer,
    a gradient or the loss is not finite, or no weight's gradient varies across the mini-batches.
    """
    if images.shape[0] < ZICO_SPLITS:
        raise ProxyFailure(f"ZiCo needs at least {ZICO_SPLITS} images (one per mini-batch), got {images.shape[0]}")
    with _untouched(model) as params:
        layers = list({id(m.weight): m.weight for m in model.modules()
                       if isinstance(m, ZICO_LAYERS) and isinstance(getattr(m, "weight", None), torch.Tensor)}.values())
        if not layers:
            raise ProxyFailure("the model has no Linear or convolution layers, so ZiCo has no layer to score")
        _batch_statistics_mode(model)
        index = {id(p): i for i, p in enumerate(params)}
        per_split = []  # per split, per layer: the flattened gradient (None: the loss does not depend on it)
        for x, y in zip(torch.tensor_split(images, ZICO_SPLITS), torch.tensor_split(labels, ZICO_SPLITS)):
            grads = _cross_entropy_gradients(model, params, x, y)
            per_split.append([grads[index[id(w)]] for w in layers])
        total = torch.zeros((), dtype=torch.float64, device=images.device)
        counted = 0
        for i, w in enumerate(layers):
            if any(split[i] is None for split in per_split):
                continue
            g = torch.stack([split[i].reshape(-1) for split in per_split]).to(torch.float64)  # splits, weights
            if not torch.isfinite(g).all():
                raise ProxyFailure("a ZiCo gradient is not finite")
            std = g.std(dim=0, correction=0)
            varying = std > 0
            if not bool(varying.any()):
                continue
            total += torch.log((g.abs().mean(dim=0)[varying] / std[varying]).sum())
            counted += 1
    if not counted:
        raise ProxyFailure("no layer's gradient varies across ZiCo's mini-batches (are the mini-batches identical?)")
    return _finite(total, "ZiCo score")


PROXIES: dict[str, Callable[[nn.Module, torch.Tensor, torch.Tensor], float]] = {
    "naswot": naswot,
    "synflow": synflow,
    "grad_norm": grad_norm,
    "zico": zico,
}
