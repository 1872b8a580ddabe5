"""A search file: a model spec with search forms, plus its ``search:`` section (validated here).

```yaml
search:
  objective: train            # train | proxy | latency | flops | params, or a list of them (Pareto front)
  trials: 20                  # trials the study runs to (completed or pruned; failed ones are redone)
  budget: {flops: 30M, params: 1M, latency: 20}   # latency: ms, median at batch 1 on the CPU
  sampler: tpe                # tpe | random | nsga2
  seed: 0                     # sampler seed of the first worker (others derive theirs) and first training seed
  pruner: median              # hyperband | successive_halving | median | none (epochs are the resource)
  precision: fp32             # fp32 | bf16 | fp16 (torch.autocast) for training and latency
  repeats: 1                  # training seeds per trial; the trial's value is their mean
  confirm: {trials: 3, seeds: 2}   # after the search: the best trials re-evaluated with extra seeds
  input: 3x32x32              # the input the objective runs at (default: the model's; the budget is
                              # always counted at the model's input)
  max_rejections: 1000        # candidates rejected in a row before the search stops
  data: {dataset: shapes, epochs: 3, batch: 64, lr: 2e-3, weight_decay: 0.05, warmup_epochs: 1, clip_grad: 1.0,
         epoch_val: 2000, proxy: naswot, proxy_batch: 64, augment: false, workers: 2}
```
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from ..errors import SpecError, ValidationMapper
from ..source import Source, read_file
from ..spec import InputSpec, shape_to_input
from .space import Dimension, dimensions

Objective = Literal["train", "proxy", "latency", "flops", "params"]
OBJECTIVE_HELP = "train (validation accuracy), proxy (a training-free score, data.proxy), latency (ms), flops, params"
Pruner = Literal["hyperband", "successive_halving", "median", "none"]
Precision = Literal["fp32", "bf16", "fp16"]
Proxy = Literal["naswot", "synflow", "grad_norm", "zico"]


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Budget(Settings):
    """What a candidate may cost: analytic ``flops`` and ``params`` at the model's input, checked
    before anything is built; ``latency`` (ms, median at batch 1, CPU) measured on the built model,
    before it is trained."""

    flops: int = Field(gt=0)
    params: int | None = Field(default=None, gt=0)
    latency: float | None = Field(default=None, gt=0)


class DataSettings(Settings):
    """The images the objectives see: ``shapes`` (procedurally generated, ``archdsl/search/shapes.py``),
    ``digits`` (scikit-learn's, upscaled) or a folder (ImageNet layout or a flat ImageFolder); training
    and proxy options. Training is AdamW with ``lr`` reached by a linear warmup over ``warmup_epochs``
    (at most the run's epochs) and a cosine decay to 0 after it, gradients clipped to a global norm of
    ``clip_grad`` (``null``: not clipped). After each epoch but the last, the accuracy the pruner sees
    is measured on a fixed subset of ``epoch_val`` validation images (``null``: all of them); after the
    last, on the whole split, so a trial's final accuracy always uses every validation image. ``proxy`` names the training-free score the ``proxy``
    objective computes."""

    dataset: str = "shapes"
    epochs: int = Field(default=3, ge=1, le=1000)
    batch: int = Field(default=64, ge=1, le=4096)
    lr: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=0.05, ge=0)
    warmup_epochs: float = Field(default=1, ge=0, le=1000)
    clip_grad: float | None = Field(default=1.0, gt=0)
    epoch_val: int | None = Field(default=2000, ge=1)
    proxy: Proxy = "naswot"
    proxy_batch: int = Field(default=64, ge=2, le=1024)
    augment: bool = False
    workers: int = Field(default=2, ge=0, le=64)


class ConfirmSettings(Settings):
    """The final step: the ``trials`` best trials (the best first) re-evaluated with ``seeds`` more
    training seeds each, so the table can say which of them are tied within seed noise."""

    trials: int = Field(default=3, ge=0, le=100)
    seeds: int = Field(default=2, ge=0, le=100)


def _as_list(value):
    return [value] if isinstance(value, str) else value


class SearchSettings(Settings):
    """The ``search:`` section of a search file."""

    objective: Annotated[list[Objective], BeforeValidator(_as_list)] = Field(default=["train"], min_length=1)
    trials: int = Field(default=20, ge=1, le=100_000)
    budget: Budget
    sampler: Literal["tpe", "random", "nsga2"] = "tpe"
    seed: int = Field(default=0, ge=0)
    pruner: Pruner = "median"
    precision: Precision = "fp32"
    repeats: int = Field(default=1, ge=1, le=100)
    confirm: ConfirmSettings = ConfirmSettings()
    input: Annotated[InputSpec | None, BeforeValidator(shape_to_input)] = None
    max_rejections: int = Field(default=1000, ge=1)
    data: DataSettings = DataSettings()

    @field_validator("objective")
    @classmethod
    def _distinct(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError("an objective is named twice")
        return names


@dataclass
class SearchFile:
    """A read search file: the base model (a spec with forms), its dimensions, its settings."""

    base: Source
    dims: list[Dimension]
    settings: SearchSettings

    @property
    def name(self) -> str:
        return Path(self.base.file).stem


def split_search_section(source: Source) -> tuple[Source, SearchSettings | None]:
    """The model part of a read file and its validated ``search:`` section (None without one)."""
    if not isinstance(source.tree, dict) or "search" not in source.tree:
        return source, None
    section = source.tree.pop("search")
    if not isinstance(section, dict):
        raise SpecError([source.problem(("search",), "the search section is not a mapping",
                                        "write search: {objective: ..., budget: {flops: ...}, ...}")])
    try:
        return source, SearchSettings.model_validate(section)
    except ValidationError as exc:
        raise SpecError(SettingsMapper(source, section, ("search",)).problems(exc)) from None


class SettingsMapper(ValidationMapper):
    """Pydantic errors of a search section (mapped at ``search``): its sub-sections' classes and
    examples."""

    def owner(self, path: tuple) -> type[Settings]:
        return {"budget": Budget, "data": DataSettings, "confirm": ConfirmSettings}.get(
            path[1] if len(path) > 1 else None, SearchSettings)

    def unknown_hint(self, path, owner):
        if path[-2:] == ("data", "pruner"):
            return ("the pruner is now an option of the search section: write search.pruner (hyperband, "
                    "successive_halving, median or none)")
        return super().unknown_hint(path, owner)

    def missing_hint(self, path, owner):
        example = {"budget": "budget: {flops: 30M} (params and latency optional)", "flops": "flops: 30M"}
        return f"add {example.get(path[-1], str(path[-1]) + ': ...')}"

    def value_problem(self, path, err):
        hint = err["msg"][0].lower() + err["msg"][1:]
        if path[:2] == ("search", "objective"):
            hint = f"{hint}; objectives: {OBJECTIVE_HELP}"
        return self.source.problem(path, f"{repr(err.get('input'))[:80]} is not valid", hint.replace("value error, ", ""))


def load_search(path: str | Path, model_input: list[int] | None = None) -> SearchFile:
    """Read a search file; raises SpecError naming every problem of its search section."""
    source = read_file(path)
    source, settings = split_search_section(source)
    if settings is None:
        raise SpecError([source.problem((), "this spec has no search section",
                                        "add search: {objective: train, budget: {flops: 30M}}")])
    if model_input:
        source.tree["input"] = model_input
    return SearchFile(source, dimensions(source.tree), settings)
