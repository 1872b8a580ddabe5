"""Training and timing a candidate on any device, at any precision.

``resolve_device`` turns ``auto | cpu | cuda | cuda:N | mps`` into a ``torch.device`` (``auto``:
CUDA when present, else MPS, else the CPU) and refuses one this machine lacks. ``precision`` is
``fp32``, ``bf16`` or ``fp16`` through ``torch.autocast`` on that device (bf16 runs on CPUs too;
fp16 scales the loss with ``torch.amp.GradScaler``). Batches come from an ``ImageData`` on the CPU
and move to the device as they are used, so data need not fit on it.
"""
from __future__ import annotations

import contextlib
import math
import statistics
import time
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .failures import TrialFailure

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA, else MPS, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; a device this
    machine does not have is refused with what it has."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; devices: auto, cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: this machine has no CUDA device (torch.cuda.is_available() is False)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: MPS is not available here")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {name!r}; devices: auto, cpu, cuda, cuda:N, mps")
    return device


def autocast(device: torch.device, precision: str):
    """``torch.autocast`` for ``bf16``/``fp16`` on ``device``; nothing for ``fp32``."""
    dtype = DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timings on CUDA and MPS are asynchronous otherwise)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def train_accuracy(model: nn.Module, data, opts, seed: int, report: Callable[[float, int], None],
                   device: torch.device, precision: str = "fp32") -> float:
    """Train ``opts.epochs`` epochs of ``data`` (an ``ImageData``) on ``device`` with AdamW, the
    learning rate of ``warmup_lr_factor`` and gradients clipped to ``opts.clip_grad``; after each epoch
    the validation accuracy goes to ``report(accuracy, epoch)`` (which may stop the run by raising);
    the last accuracy is returned."""
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    steps_per_epoch = math.ceil(data.train_size / opts.batch)
    total = opts.epochs * steps_per_epoch
    warmup = min(total, round(opts.warmup_epochs * steps_per_epoch))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_lr_factor(step, warmup, total))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    accuracy = 0.0
    for epoch in range(opts.epochs):
        model.train()
        for step, (images, labels) in enumerate(data.train_batches(opts.batch, seed * 1000 + epoch)):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with autocast(device, precision):
                loss = F.cross_entropy(model(images), labels)
            if not torch.isfinite(loss):
                raise TrialFailure(f"the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if opts.clip_grad is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), opts.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
        last = epoch + 1 == opts.epochs
        accuracy = evaluate_accuracy(model, data, device, precision, count=None if last else opts.epoch_val)
        report(accuracy, epoch + 1)
    return accuracy


def warmup_lr_factor(step: int, warmup: int, total: int) -> float:
    """The learning rate at optimizer step ``step`` (0-based) as a fraction of the peak: rising linearly
    over the first ``warmup`` steps (1/warmup at step 0, 1 at step ``warmup - 1``), then a half cosine
    from 1 at step ``warmup`` to 0 at step ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def evaluate_accuracy(model: nn.Module, data, device: torch.device, precision: str = "fp32",
                      batch: int = 256, count: int | None = None) -> float:
    """Top-1 accuracy on ``data``'s validation split (``count``: on its fixed subset of that many)."""
    model.eval()
    correct = total = 0
    with torch.no_grad(), autocast(device, precision):
        for images, labels in data.val_batches(batch, count):
            logits = model(images.to(device, non_blocking=True))
            correct += int((logits.argmax(dim=1) == labels.to(device)).sum())
            total += len(labels)
    return correct / total


def median_latency_ms(model: nn.Module, shape: tuple[int, int, int], device: torch.device | None = None,
                      precision: str = "fp32", repeats: int = 25, warmup: int = 5) -> float:
    """Median forward time at batch 1 on ``device`` (eval mode, no autograd, synchronised) over
    ``repeats`` runs after ``warmup``."""
    device = device or torch.device("cpu")
    model.eval().to(device)
    x = torch.randn(1, *shape, device=device)
    times = []
    with torch.inference_mode(), autocast(device, precision):
        for i in range(warmup + repeats):
            synchronize(device)
            start = time.perf_counter()
            model(x)
            synchronize(device)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
