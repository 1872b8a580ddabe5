"""Export a built model to ``torch.export`` (``.pt2``) or ONNX (``.onnx``), batch dimension dynamic.

``export_model(model_or_spec, path, format)`` exports the model in eval mode (its mode is restored
afterwards) on a random example input of batch ``example_batch`` at the spec's input size; the
batch dimension is a ``torch.export.Dim`` (``1..max_batch``), every other dimension is fixed (the
compiled model's grids are fixed by the spec). ``.pt2`` files are written with
``torch.export.save`` (reload with ``torch.export.load(path).module()``); ``.onnx`` files with
``torch.onnx.export(..., dynamo=True)``, weights inside the file, readable by onnxruntime.

ONNX translations the exporter lacks (``onnx_translations()``, passed as its
``custom_translation_table``):

* ``aten.sort.stable`` (PartialFormer's token separation, ``mixers/partial.py``: a stable sort,
  ties broken by token order) -> ONNX ``TopK`` with ``k`` the whole dimension and ``sorted=1``.
  The ONNX operator's specification breaks ties the same way ("if two elements are equal, the
  element with the lower index will appear first"), for both ``largest=1`` (descending) and
  ``largest=0`` (ascending), so the translation returns the very same values and indices.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn

from ..pipeline import build_model

FORMATS = {"onnx": ".onnx", "pt2": ".pt2"}
MAX_BATCH = 1024


def _sort_stable(self, *, stable: bool | None = None, dim: int = -1, descending: bool = False):
    """ONNX translation of ``aten.sort.stable`` (see the module docstring)."""
    from onnxscript import opset18 as op

    rank = len(self.shape) if self.shape is not None else None
    axis = dim if dim >= 0 or rank is None else dim + rank
    k = op.Slice(op.Shape(self), op.Constant(value_ints=[axis]), op.Constant(value_ints=[axis + 1]))
    values, indices = op.TopK(self, k, axis=axis, largest=1 if descending else 0, sorted=1)
    return values, indices


def onnx_translations() -> dict:
    return {torch.ops.aten.sort.stable: _sort_stable}


def _model_and_input(model_or_spec, example_batch: int) -> tuple[nn.Module, torch.Tensor]:
    model = model_or_spec if isinstance(model_or_spec, nn.Module) else build_model(model_or_spec)
    design = getattr(model, "design", None)
    if design is None:
        raise TypeError(f"cannot export a {type(model).__name__}: expected an archdsl model (built by "
                        "archdsl.build_model) or a spec path, Source or Design")
    image = design.graph.nodes["input"]["out_shape"]
    return model, torch.randn(example_batch, image.channels, image.height, image.width)


@contextlib.contextmanager
def _eval_without_grad(model: nn.Module):
    """``model`` in eval mode without autograd for the block; its mode is restored afterwards."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(training)


def check_target(path: str | os.PathLike, format: str | None) -> tuple[Path, str]:
    """The path and the format, the format given or read from the path's suffix; refuses an unknown
    format and a suffix that does not match it."""
    path = Path(path)
    if format is None:
        by_suffix = {suffix: name for name, suffix in FORMATS.items()}
        if path.suffix.lower() not in by_suffix:
            raise ValueError(f"cannot tell the export format from the path {str(path)!r}; name it "
                             f"*.onnx or *.pt2, or pass format='onnx' or format='pt2'")
        return path, by_suffix[path.suffix.lower()]
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; valid formats: {', '.join(map(repr, FORMATS))}")
    if path.suffix.lower() != FORMATS[format]:
        raise ValueError(f"the path {str(path)!r} does not end in {FORMATS[format]!r}, the {format} format's "
                         f"suffix; name it {path.stem}{FORMATS[format]} or pass the format its suffix names")
    return path, format


def export_model(model_or_spec, path: str | os.PathLike, format: Literal["onnx", "pt2"] | None = None, *,
                 example_batch: int = 2, max_batch: int = MAX_BATCH) -> Path:
    """Export an archdsl model (or a spec path, Source or Design, built first) to ``path``.

    ``format`` is ``"onnx"`` or ``"pt2"``; left out, the path's suffix (``.onnx``, ``.pt2``)
    chooses it, and given, the suffix must match it. The batch dimension is dynamic
    (``1..max_batch``). Returns the path written."""
    path, format = check_target(path, format)
    if example_batch < 2 or example_batch > max_batch:
        raise ValueError(f"example_batch must be between 2 and max_batch ({max_batch}), not {example_batch}: "
                         "a batch of 1 would be specialised as a constant")
    model, x = _model_and_input(model_or_spec, example_batch)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    with _eval_without_grad(model):
        if format == "pt2":
            torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({0: batch},)), path)
        else:
            torch.onnx.export(model, (x,), path, dynamo=True, dynamic_shapes=({0: batch},),
                              input_names=["image"], external_data=False,
                              custom_translation_table=onnx_translations(), verbose=False)
    return path


def run_exported(path: str | os.PathLike, x: torch.Tensor) -> torch.Tensor:
    """Run an exported file on ``x``: a ``.pt2`` through ``torch.export.load``, an ``.onnx`` through
    onnxruntime's CPU provider."""
    path, format = check_target(path, None)
    if format == "pt2":
        with torch.no_grad():
            return torch.export.load(path).module()(x)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (image,) = session.get_inputs()
    return torch.from_numpy(session.run(None, {image.name: x.numpy()})[0])


def exported_difference(model: nn.Module, path: str | os.PathLike, batch: int = 3) -> float:
    """Max abs difference between ``model`` (eval mode, no autograd) and the file it was exported
    to, on a random batch of ``batch`` images (by default another batch size than the export's
    example: the batch dimension must be dynamic)."""
    model, x = _model_and_input(model, batch)
    with _eval_without_grad(model):
        expected = model(x)
    out = run_exported(path, x)
    if out.shape != expected.shape:
        raise ValueError(f"{path}: output shape {tuple(out.shape)} for a batch of {batch}, expected {tuple(expected.shape)}")
    return float((out - expected).abs().max())
