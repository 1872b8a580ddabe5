import os
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from archdsl.cost import TensorShape

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("**/*.yaml"))

# One full-size spec per family (plain attention, shifted windows with the graft, EMS, MAT, partial
# attention, ScalableViT, bottleneck ResNet, visual tokens on basic blocks): the per-spec export and
# compile checks run on these by default; on every other spec they are marked ``slow`` and run by
# ``make test-all``.
REPRESENTATIVES = frozenset({"deit_t", "swin_t_graft", "emsnet_xxtiny", "mat_1", "partialformer_b0",
                             "scalablevit_s", "resnet50", "vt_r18"})


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs one process per core) each process gets its share of
    the cores as torch threads, so the processes do not oversubscribe them."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def sweep(paths: list[Path]) -> list:
    """``paths`` as pytest parameters, each spec outside ``REPRESENTATIVES`` marked ``slow``."""
    return [pytest.param(path, marks=() if path.stem in REPRESENTATIVES else pytest.mark.slow)
            for path in paths]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def write_spec(tmp_path):
    """Write spec text (dedented) to a file and return its path."""

    def write(text: str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    return write


@pytest.fixture(scope="module")
def one_thread():
    """Small ops on small maps: one intra-op thread is faster on a busy machine; restored afterwards.
    A test file opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def grid(height: int, width: int, channels: int = 32) -> TensorShape:
    """A token grid of ``height x width`` tokens, ``channels`` wide."""
    return TensorShape("NLC", channels, height, width)


class Tokens(nn.Module):
    """A mixer as a model of one ``1 x N x C`` "image", for the traced count."""

    def __init__(self, mixer: nn.Module):
        super().__init__()
        self.mixer = mixer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixer(x[:, 0])


# tiny specs shared by the export, optimize and command-line tests
TINY_ATTENTION = """
    name: tiny_attention
    input: 3x32x32
    stem: patch_embed(patch=8, cls_token=true, pos_embed=true)
    stages:
      - {depth: 2, width: 32, mixer: "attention(heads=2)"}
    head: {norm: layernorm, pool: token, classes: 10}
"""

TINY_PARTIAL = """
    name: tiny_partial
    input: 3x32x32
    stem: patch_embed(patch=4)
    stages:
      - depth: 2
        width: 16
        mixer: partial(heads=2, fg=9)
        peg: peg(kernel=3, blocks=first)
    head: {norm: layernorm, pool: avg, classes: 10}
"""
