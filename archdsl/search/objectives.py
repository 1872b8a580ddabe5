"""What a search optimises: measured metrics of a built candidate, and the analytic ones.

- ``train``: validation accuracy after a short training run (AdamW, cosine decay, fixed seed), reported
  after every epoch so Optuna's pruner can stop a poor run early;
- ``proxy``: NASWOT (Mellor et al. 2021, "Neural Architecture Search without Training", eq. 2), a
  training-free score: for a batch of real images, each image's binary code is the sign pattern of the
  inputs of every activation of the untrained network; ``K[i, j]`` counts the units where images
  ``i`` and ``j`` agree, and the score is ``log |det K|``. Networks that separate the images well
  (codes far apart) score higher; the paper finds it correlated with trained accuracy;
- ``latency``: median wall time of a forward pass at batch 1 on the CPU, in ms;
- ``flops``, ``params``: the analytic cost (what the budget is checked against).
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import get_act_layer

from .data import ImageSet
from .settings import DataSettings


@dataclass(frozen=True)
class Metric:
    """A column of the results: its name and whether larger is better."""

    name: str
    direction: str  # "maximize" or "minimize"


METRICS = {
    "train": Metric("accuracy", "maximize"),
    "proxy": Metric("naswot", "maximize"),
    "latency": Metric("latency_ms", "minimize"),
    "flops": Metric("flops", "minimize"),
    "params": Metric("params", "minimize"),
}


class TrialFailure(Exception):
    """An evaluation that cannot give a result (a NaN loss, a NaN score); the trial fails with it."""


ACTIVATIONS = tuple({type(get_act_layer(n)()) for n in ("gelu", "relu", "silu", "hard_swish", "tanh", "sigmoid")}
                    | {nn.GELU, nn.ReLU, nn.SiLU, nn.Hardswish, nn.Tanh, nn.Sigmoid, nn.ReLU6, nn.LeakyReLU})


def naswot_score(model: nn.Module, images: torch.Tensor) -> float:
    """NASWOT's ``log |det K_H|`` on ``images``, codes taken before every activation (so GELU and
    in-place ReLU count alike); ``K`` summed layer by layer, never holding all codes at once."""
    batch = images.shape[0]
    kernel = torch.zeros(batch, batch, dtype=torch.float64)
    units = [0]

    def hook(_module, inputs):
        codes = (inputs[0].detach().reshape(batch, -1) > 0).to(torch.float64)
        kernel.add_(codes @ codes.T + (1 - codes) @ (1 - codes).T)
        units[0] += codes.shape[1]

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, ACTIVATIONS)]
    try:
        model.eval()
        with torch.no_grad():
            model(images)
    finally:
        for h in handles:
            h.remove()
    if not units[0]:
        raise TrialFailure("NASWOT needs activations, and the model has none")
    sign, logdet = torch.linalg.slogdet(kernel)
    score = float(logdet) if float(sign) > 0 else -math.inf
    if math.isnan(score):
        raise TrialFailure("the NASWOT score is NaN")
    return score


def train_accuracy(model: nn.Module, data: ImageSet, opts: DataSettings, seed: int,
                   report: Callable[[float, int], None]) -> float:
    """Train ``opts.epochs`` epochs on the training split; validation accuracy after each is passed
    to ``report(accuracy, epoch)`` (which may stop the run); the last one is returned."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    steps_per_epoch = math.ceil(len(data.train_y) / opts.batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=opts.epochs * steps_per_epoch)
    accuracy = 0.0
    for epoch in range(opts.epochs):
        model.train()
        order = torch.randperm(len(data.train_y), generator=generator)
        for step in range(steps_per_epoch):
            index = order[step * opts.batch:(step + 1) * opts.batch]
            loss = F.cross_entropy(model(data.train_x[index]), data.train_y[index])
            if not torch.isfinite(loss):
                raise TrialFailure(f"the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        accuracy = evaluate_accuracy(model, data.val_x, data.val_y)
        report(accuracy, epoch + 1)
    return accuracy


def evaluate_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 256) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(labels), batch):
            logits = model(images[start:start + batch])
            correct += int((logits.argmax(dim=1) == labels[start:start + batch]).sum())
    return correct / len(labels)


def median_latency_ms(model: nn.Module, shape: tuple[int, int, int], repeats: int = 25, warmup: int = 5) -> float:
    """Median forward time at batch 1 (eval mode, no autograd) over ``repeats`` runs after ``warmup``."""
    model.eval()
    x = torch.randn(1, *shape)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            start = time.perf_counter()
            model(x)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
