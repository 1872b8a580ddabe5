"""Specs as timm models: ``timm.create_model("archdsl_<spec file stem>", ...)``.

``register_spec(path)`` makes one spec a timm model: an entrypoint named ``archdsl_<stem>`` (or the
name given) in timm's registry, with a ``pretrained_cfg`` carrying the spec's input size, ImageNet's
mean and std, a 0.875 center crop and bicubic resizing, so that ``timm.data.resolve_data_config``
and ``timm.data.create_transform`` work, and timm's ``train.py --model archdsl_<stem>`` trains it
(distributed training is then timm's and ``torch.distributed``'s). Importing ``archdsl`` registers
every spec under the repository's ``specs/`` folder (ablations included); a spec's schema is checked
when it is registered, its shapes when a model is created.

The entrypoint takes timm's ``create_model`` arguments: ``num_classes``, ``in_chans`` (the input's
channels), ``drop_rate`` (the head's dropout), ``drop_path_rate`` (the spec's ``drop_path``),
``global_pool`` (``avg`` or ``token``), ``features_only`` and ``out_indices``. ``pretrained=True`` is refused: a spec has no weights
(``archdsl.load_timm_weights`` copies a timm model's into a spec with the same structure).
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import register_model

from ..errors import SpecError
from ..pipeline import build_model, design_from_source
from ..source import read_file
from ..spec import validate_tree

SPECS_DIR = Path(__file__).resolve().parents[2] / "specs"
PREFIX = "archdsl_"

default_cfgs: dict[str, dict] = {}  # timm's register_model reads a module's default_cfgs


def pretrained_cfg(channels: int, height: int, width: int, num_classes: int) -> dict[str, Any]:
    return dict(url="", num_classes=num_classes, input_size=(channels, height, width), pool_size=None,
                crop_pct=0.875, interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                first_conv="stem", classifier="head.fc", license="same as archdsl")


def _overrides(tree: dict, kwargs: dict) -> dict:
    """Apply timm's create_model arguments to a spec's tree; returns what is left for build_model."""
    head = dict(tree.get("head") or {})
    if "in_chans" in kwargs:
        image = tree.get("input", [3, 224, 224])
        size = list(image)[-2:] if isinstance(image, list) else [image.get("height", 224), image.get("width", 224)]
        tree["input"] = [kwargs.pop("in_chans"), *size]
    if "drop_rate" in kwargs:
        head["dropout"] = kwargs.pop("drop_rate")
    if "drop_path_rate" in kwargs:
        tree["drop_path"] = kwargs.pop("drop_path_rate")
    tree["head"] = head
    return kwargs


def register_spec(path: str | Path, name: str | None = None) -> str:
    """Register the spec at ``path`` as a timm model; returns its timm name."""

    path = Path(path).resolve()
    source = read_file(path)
    spec = validate_tree(source)
    model_name = name or PREFIX + path.stem
    default_cfgs[model_name] = pretrained_cfg(spec.input.channels, spec.input.height, spec.input.width,
                                              spec.head.classes)

    def create(pretrained: bool = False, pretrained_cfg: Any = None, pretrained_cfg_overlay: Any = None,
               cache_dir: Any = None, **kwargs):
        if pretrained:
            raise ValueError(f"{model_name} has no pretrained weights; use archdsl.load_timm_weights")
        fresh = read_file(path)
        features_only = kwargs.pop("features_only", False)
        out_indices = kwargs.pop("out_indices", None)
        num_classes = kwargs.pop("num_classes", None)
        global_pool = kwargs.pop("global_pool", None)
        rest = _overrides(fresh.tree, kwargs)
        if rest:
            raise TypeError(f"{model_name} does not take {', '.join(sorted(rest))}")
        model = build_model(design_from_source(fresh), features_only=features_only, out_indices=out_indices,
                            num_classes=num_classes)
        if global_pool is not None and not features_only:
            model.reset_classifier(model.num_classes, global_pool=global_pool)
        cfg = dict(default_cfgs[model_name], architecture=model_name)
        image = model.design.graph.nodes["input"]["out_shape"]
        cfg["input_size"] = (image.channels, image.height, image.width)
        cfg["num_classes"] = model.num_classes if not features_only else 0
        cfg.update(pretrained_cfg_overlay or {})
        model.pretrained_cfg = model.default_cfg = cfg
        return model

    create.__name__ = create.__qualname__ = model_name
    create.__module__ = __name__
    create.__doc__ = f"{spec.name}: {spec.description or path.name} (archdsl spec {path})"
    setattr(sys.modules[__name__], model_name, create)
    register_model(create)
    return model_name


def register_shipped_specs() -> list[str]:
    """Register every spec under the repository's ``specs/`` folder (none when installed without it).
    A spec that does not validate is not registered, with a warning that names its problems."""
    names = []
    for path in sorted(SPECS_DIR.glob("**/*.yaml")) if SPECS_DIR.is_dir() else []:
        try:
            names.append(register_spec(path))
        except SpecError as error:
            warnings.warn(f"archdsl: {path.name} is not registered with timm: {error}", stacklevel=2)
    return names
