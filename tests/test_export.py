"""Export (issue 6, item 4): every spec to ``torch.export`` (.pt2) and ONNX with a dynamic batch,
reloaded and run at another batch size than the one exported with, equal to eager within 1e-4.

The per-spec tests run on one full-size spec per family (``conftest.REPRESENTATIVES``) and are
marked ``slow`` on the others (an ONNX export of a large model takes up to two minutes here;
``make test-all`` runs them); the other tests cover both formats on tiny specs with shifted window
attention (relative position bias, mask, LIM) and partial attention (the stable sort's ONNX
translation), and the errors of ``export_model``.
"""
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from conftest import ROOT, SPECS, TINY_PARTIAL, sweep

import archdsl
from archdsl.tools.export import export_model, onnx_translations
from archdsl.tools.testing import exported_difference_after

EXPORT_BATCH, RUN_BATCH = 2, 3  # exported at one batch size, run at another: the batch is dynamic
TOLERANCE = 1e-4

TINY_WINDOW = """
    name: tiny_window
    input: 3x32x32
    stem: patch_embed(patch=4, norm=layernorm)
    stages:
      - depth: 2
        width: 16
        mixer: window(size=4, heads=2, shift=true)
      - depth: 2
        width: 32
        downsample: patch_merging
        mixer: window(size=2, heads=2, shift=true, lim=true)
    head: {norm: layernorm, pool: avg, classes: 10}
"""

def check_export(model: nn.Module, tmp_path: Path, fmt: str) -> float:
    """Export at batch 2, reload, run at batch 3 (``archdsl.tools.testing.exported_difference_after``); returns the
    max abs difference to eager."""
    diff, seconds = exported_difference_after(model, tmp_path, fmt, EXPORT_BATCH, RUN_BATCH)
    print(f"\n{model.spec.name} {fmt}: exported in {seconds:.1f} s, max abs difference {diff:.3g}")
    assert diff <= TOLERANCE, f"{fmt}: max abs difference {diff:.3g} over {TOLERANCE}"
    return diff


def spec_id(path: Path) -> str:
    return path.relative_to(ROOT / "specs").with_suffix("").as_posix()


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
@pytest.mark.parametrize("spec", sweep(SPECS), ids=spec_id)
def test_every_spec_exports(spec, fmt, tmp_path):
    check_export(archdsl.build_model(spec), tmp_path, fmt)


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
@pytest.mark.parametrize("text", [TINY_WINDOW, TINY_PARTIAL], ids=["window", "partial"])
def test_tiny_mixers_export(text, fmt, write_spec, tmp_path):
    check_export(archdsl.build_model(write_spec(text)), tmp_path, fmt)


class StableSort(nn.Module):
    def __init__(self, descending: bool):
        super().__init__()
        self.descending = descending

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.sort(x, dim=1, descending=self.descending, stable=True)


@pytest.mark.parametrize("descending", [True, False])
def test_stable_sort_translation_breaks_ties_by_index(descending, tmp_path):
    """PartialFormer's token separation is a stable sort; its ONNX translation (TopK) returns the
    same values and indices, ties included (ten values out of three levels tie many times)."""
    x = torch.randint(0, 3, (2, 10)).float()
    batch = torch.export.Dim("batch", min=1, max=16)
    path = tmp_path / "sort.onnx"
    torch.onnx.export(StableSort(descending).eval(), (x,), path, dynamo=True, dynamic_shapes=({0: batch},),
                      custom_translation_table=onnx_translations(), external_data=False, verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randint(0, 3, (RUN_BATCH, 10)).float()
    values, indices = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    expected = torch.sort(x, dim=1, descending=descending, stable=True)
    assert np.array_equal(values, expected.values.numpy()) and np.array_equal(indices, expected.indices.numpy())


def test_export_takes_a_spec_path_and_keeps_the_mode(write_spec, tmp_path):
    path = export_model(write_spec(TINY_WINDOW), tmp_path / "m.pt2")  # format from the suffix
    assert path == tmp_path / "m.pt2" and path.is_file()
    model = archdsl.build_model(write_spec(TINY_WINDOW)).train()
    export_model(model, tmp_path / "m2.pt2")
    assert model.training


@pytest.mark.parametrize("name, fmt, message", [
    ("m.onnx", "tflite", "unknown export format 'tflite'; valid formats: 'onnx', 'pt2'"),
    ("m.onnx", "pt2", "does not end in '.pt2', the pt2 format's suffix"),
    ("m.pt2", "onnx", "does not end in '.onnx', the onnx format's suffix"),
    ("m.pt", None, "cannot tell the export format from the path"),
    ("model", None, "cannot tell the export format from the path"),
])
def test_export_errors(name, fmt, message, tmp_path):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        export_model(ROOT / "specs" / "deit_t.yaml", tmp_path / name, fmt)
    assert not (tmp_path / name).exists()


def test_export_refuses_other_modules(tmp_path):
    with pytest.raises(TypeError, match="expected an archdsl model"):
        export_model(nn.Linear(2, 2), tmp_path / "m.onnx")
