"""Stages and their blocks, one file per block family. A stage's ``block`` names its kind:
``metaformer`` (metaformer.py), ResNet's ``basic`` and ``bottleneck`` (residual.py), and whatever
other file here registers itself in ``archdsl.components.STAGES``: importing the package imports
every module in it, then makes the union of the registered kinds."""
from __future__ import annotations

import importlib
import pkgutil

from .. import STAGES
from .base import StageSpec

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

StageSpecUnion = STAGES.union()

__all__ = ["StageSpec", "StageSpecUnion"]
