"""Helpers for checking a built model against the analytic model and against other runtimes (exported,
compiled) without trained weights; the conformance suite (``tests/test_conformance.py``) and the
per-spec export and optimize tests use them."""
from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch._dynamo
import torch.nn as nn
import yaml

from ..components import Example

EXAMPLE_HEAD = {"pool": "avg", "classes": 4}  # the head of an example that names none


def perturb_norms(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Give every LayerNorm and BatchNorm2d trained-looking parameters, in place; returns ``model``.

    Gains uniform in [0.5, 1.5] and biases normal (std 0.2) instead of timm's 1 and 0; batch norms
    also get running statistics (means normal with std 0.1, variances uniform in [0.5, 1.5]) for an
    optimizer to fold. Why: at initialisation a LayerNorm's output has channel mean exactly 0 for
    every token, so partial attention's foreground ranking (by channel mean, ``mixers/partial.py``)
    ranks rounding noise, and any runtime that rounds differently (fused kernels, ONNX) picks other
    tokens. With non-trivial norms, as in a trained model, the scores are apart and the pick is the
    model's own. Norm layers from timm that subclass torch's (``LayerNorm2d``) are included."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)) and m.weight is not None:
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.normal_(0.0, 0.2, generator=generator)
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
                m.running_mean.normal_(0.0, 0.1, generator=generator)
                m.running_var.uniform_(0.5, 1.5, generator=generator)
    return model


def example_tree(name: str, example: Example, input: str, change: tuple[str, Any] | None = None) -> dict:
    """The spec (as a YAML tree) of ``example`` at ``input``, with ``change`` (a dotted path and its new
    value, such as ``("stages.0.mixer", "attention(heads=3)")``) applied."""
    tree = {"name": name, "input": input, **copy.deepcopy(example.model)}
    tree.setdefault("head", dict(EXAMPLE_HEAD))
    if change is not None:
        path, value = change
        *parents, last = [int(k) if k.isdigit() else k for k in path.split(".")]
        node = tree
        for key in parents:
            node = node[key]
        node[last] = value
    return tree


def write_example(directory: Path, name: str, example: Example, input: str,
                  change: tuple[str, Any] | None = None) -> Path:
    """Write ``example_tree(...)`` as a spec file in ``directory``; returns its path."""
    path = Path(directory) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(example_tree(name, example, input, change), sort_keys=False))
    return path


def exported_difference_after(model: nn.Module, directory: str | os.PathLike, fmt: str, export_batch: int = 2,
                              run_batch: int = 3) -> tuple[float, float]:
    """Export ``model`` (norms perturbed first, ``perturb_norms``) at batch ``export_batch``, reload it and
    run it at ``run_batch`` (the batch must be dynamic; for ONNX the file is checked and its batch
    dimension must be symbolic). Returns (max abs difference to eager, seconds the export took)."""
    import onnx
    import onnxruntime as ort

    from .export import export_model, exported_difference

    perturb_norms(model).eval()
    start = time.perf_counter()
    path = export_model(model, Path(directory) / f"model.{fmt}", fmt, example_batch=export_batch)
    seconds = time.perf_counter() - start
    if fmt == "onnx":
        onnx.checker.check_model(str(path))
        (image,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()
        if not isinstance(image.shape[0], str):
            raise AssertionError(f"the ONNX batch dimension is fixed: {image.shape}")
    return exported_difference(model, path, batch=run_batch), seconds


def eager_and_optimized(model: nn.Module, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, object]:
    """The eager output (eval mode, no autograd, norms perturbed first) and ``archdsl.optimize``'s, on one
    random batch; returns (eager, optimized, the optimized callable). Dynamo's cache is reset first:
    compiling many models of one class would hit its recompile limit."""
    from .optimize import optimize

    perturb_norms(model)
    torch._dynamo.reset()
    image = model.design.spec.input
    x = torch.randn(batch, image.channels, image.height, image.width)
    with torch.inference_mode():
        expected = model.eval()(x)
    fast = optimize(model)
    return expected, fast(x), fast
