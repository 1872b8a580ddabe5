"""``archdsl validate|build|flops|export|graph|search SPEC`` and ``archdsl schema``: check a spec,
build (and optimize) it, count its cost, export it, draw it, search a space; print the spec
language's JSON Schema."""
from __future__ import annotations

import argparse
import json
import sys
import typing
import warnings
from pathlib import Path

from .errors import SpecError
from .expr import ExprError, evaluate, parse
from .graph import Design
from .pipeline import DEFAULT_MAX_PARAMS, build_model, design_from_source
from .search.candidate import option_problems
from .search.settings import Objective, SearchSettings, load_search, split_search_section
from .search.space import dimensions
from .source import Source, read_file

EXIT_INVALID = 2
EXPORT_TOLERANCE = OPTIMIZED_TOLERANCE = 1e-4  # max abs difference to eager (issue 6)


def _number(text: str) -> float:
    """A CLI number, sizes allowed: ``2e9``, ``2G``."""
    try:
        value = evaluate(parse(text), lambda ref: None)
    except ExprError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number ({exc.message})") from None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _image(text: str) -> list[int]:
    """``3x256x256`` or ``256x256``."""
    try:
        value = evaluate(parse(text), lambda ref: None)
    except ExprError:
        value = None
    if not (isinstance(value, list) and len(value) in (2, 3)):
        raise argparse.ArgumentTypeError(f"{text!r} is not an input shape such as 3x256x256")
    return value


def _source(args) -> Source:
    source = read_file(args.spec)
    if getattr(args, "input", None):
        source.tree["input"] = args.input
    return source


def _design(args) -> Design:
    return design_from_source(_source(args), args.max_params)


def fmt_params(n: int) -> str:
    return f"{n / 1e6:.3f}M"


def fmt_flops(n: int) -> str:
    return f"{n / 1e9:.3f}G"


def stage_rows(design: Design) -> list[dict]:
    """One row per stem, stage and head: resolution, channels, depth, mixer, params, FLOPs."""
    rows = []
    image = design.graph.nodes["input"]["out_shape"]
    stages = design.spec.stages
    for part in design.parts():
        out = design.output_shape(part)
        blocks = [d for _, d in design.nodes("block") if d["part"] == part]
        labels = list(dict.fromkeys(d["label"] for d in blocks))
        cost = design.part_cost(part)
        index = design.stage_of(part)
        grid = part != "head" and (index is None or stages[index].outputs_map())
        rows.append(dict(  # a stage that outputs a set of tokens (Visual Transformer) has no grid, no stride
            part=part, resolution=f"{out.height}x{out.width}" if grid else f"{out.tokens} tokens" if part != "head" else "-",
            stride=image.height // out.height if grid else None, channels=out.channels,
            depth=len(blocks) or None, mixer=" / ".join(labels) if labels else "-",
            params=cost.params, flops=cost.flops))
    return rows


TEXT_COLUMNS = {"part", "mixer"}


def _table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    cells = [[title for _, title in columns]] + [[str(r.get(k, "") if r.get(k) is not None else "-") for k, _ in columns]
                                                  for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    left = [key in TEXT_COLUMNS for key, _ in columns]
    lines = ["  ".join(c.ljust(w) if lj else c.rjust(w) for c, w, lj in zip(row, widths, left)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _pretty(rows: list[dict]) -> list[dict]:
    return [dict(r, params=fmt_params(r["params"]), flops=fmt_flops(r["flops"])) for r in rows]


def cmd_validate(args) -> int:
    source, settings = split_search_section(_source(args))
    dims = dimensions(source.tree)
    if not dims:
        design = design_from_source(source, args.max_params)
        cost = design.cost
        print(f"{args.spec}: ok: {design.spec.name}, {fmt_params(cost.params)} params, {fmt_flops(cost.flops)} FLOPs")
        return 0
    problems = option_problems(source, dims, args.max_params)
    if problems:
        raise SpecError(problems)
    search = f"; search: {', '.join(settings.objective)} under {fmt_flops(settings.budget.flops)} FLOPs" if settings else ""
    print(f"{args.spec}: ok: a search space of {len(dims)} choices; every option validates{search}")
    return 0


def cmd_build(args) -> int:
    if args.optimize and args.json:
        raise SystemExit("archdsl build: --optimize prints timings and cannot be combined with --json")
    design = _design(args)
    model = build_model(design)
    built = sum(p.numel() for p in model.parameters())
    rows = stage_rows(design)
    cost = design.cost
    if args.json:
        image = design.graph.nodes["input"]["out_shape"]
        json.dump(dict(name=design.spec.name, input=[image.channels, image.height, image.width], stages=rows,
                       params=cost.params, flops=cost.flops, built_params=built), sys.stdout, indent=2)
        print()
        return 0
    image = design.graph.nodes["input"]["out_shape"]
    print(f"{design.spec.name}: input {image.channels}x{image.height}x{image.width}")
    print(_table(_pretty(rows), [("part", "stage"), ("resolution", "output"), ("stride", "stride"),
                                 ("channels", "channels"), ("mixer", "mixer"), ("depth", "depth"),
                                 ("params", "params"), ("flops", "FLOPs")]))
    print(f"total: {fmt_params(cost.params)} params ({cost.params:,}), {fmt_flops(cost.flops)} FLOPs "
          f"(analytic, multiply-adds)")
    print(f"built: {type(model).__name__} with {built:,} parameters"
          f"{'' if built == cost.params else ' — differs from the analytic count!'}")
    if args.optimize and built == cost.params:
        return report_optimized(model, image, args.batch)
    return 0 if built == cost.params else 1


def report_optimized(model, image, batch: int, rounds: int = 3) -> int:
    """``build --optimize``: compile with ``archdsl.optimize``, check it against eager, time both."""
    import statistics
    import time

    import torch

    from .tools.optimize import images_per_second, optimize
    from .tools.testing import perturb_norms

    perturb_norms(model, torch.Generator().manual_seed(0))  # see archdsl.tools.testing: partial attention's ranking
    x = torch.randn(batch, image.channels, image.height, image.width)
    with torch.inference_mode():
        expected = model.eval()(x)
    start = time.perf_counter()
    fast = optimize(model, example=x)
    seconds = time.perf_counter() - start
    diff = (fast(x) - expected).abs().max().item()
    eager_rates, fast_rates = [], []
    for _ in range(rounds):  # alternating turns, medians: a busy machine slows both alike
        eager_rates.append(images_per_second(model, x, 1))
        fast_rates.append(images_per_second(fast, x, 1))
    eager, optimized = statistics.median(eager_rates), statistics.median(fast_rates)
    print(f"optimized: channels_last {'yes' if fast.channels_last else 'no'}, compiled in {seconds:.0f} s, "
          f"max |optimized - eager| {diff:.1e} (norm parameters perturbed, random input)")
    print(f"batch {batch}: eager {eager:.1f} images/s, optimized {optimized:.1f} images/s "
          f"({optimized / eager:.2f}x; medians of {rounds}; benchmarks/inference.py compares with timm)")
    return 0 if diff <= OPTIMIZED_TOLERANCE else 1


def cmd_export(args) -> int:
    from .tools.export import check_target, export_model, exported_difference

    try:
        path, fmt = check_target(args.output, args.format)
    except ValueError as exc:
        raise SystemExit(f"archdsl export: {exc}")
    import torch

    from .tools.testing import perturb_norms

    # random weights, norms included: with timm's norm init partial attention ranks tied scores
    # (archdsl.tools.testing), and the check below would compare two arbitrary picks
    model = perturb_norms(build_model(_design(args)), torch.Generator().manual_seed(0))
    export_model(model, path, fmt)
    diff = exported_difference(model, path)
    runtime = "onnxruntime" if fmt == "onnx" else "torch.export.load"
    print(f"{args.spec}: exported ({fmt}, dynamic batch, random weights with perturbed norms) to {path}, "
          f"{path.stat().st_size / 1e6:.1f} MB; {runtime} on a random batch of 3: max |exported - eager| {diff:.1e}")
    return 0 if diff <= EXPORT_TOLERANCE else 1


def modules_of_part(design: Design, part: str) -> tuple[str, ...]:
    """The top-level modules of the built model that make up a row of the table."""
    index = design.stage_of(part)
    if index is not None:
        return (f"stages.{index}",)
    return ("norm", "head") if part == "head" else (part,)


def cmd_flops(args) -> int:
    design = _design(args)
    rows = stage_rows(design)
    cost = design.cost
    image = design.graph.nodes["input"]["out_shape"]
    report = None
    if args.trace:
        from .tools.trace import traced_cost
        model = build_model(design)
        report = traced_cost(model, (image.channels, image.height, image.width))
        for row in rows:
            row["traced_flops"] = sum(report.by_module.get(k, 0) for k in modules_of_part(design, row["part"]))
    if args.json:
        out = dict(name=design.spec.name, input=[image.channels, image.height, image.width], stages=rows,
                   params=cost.params, flops=cost.flops)
        if report:
            out.update(traced_flops=report.flops, built_params=report.params, uncounted_ops=dict(report.uncounted))
        json.dump(out, sys.stdout, indent=2)
        print()
        return 0
    print(f"{design.spec.name}: input {image.channels}x{image.height}x{image.width}, FLOPs = multiply-adds (fvcore)")
    columns = [("part", "stage"), ("params", "params"), ("flops", "FLOPs")]
    pretty = _pretty(rows)
    if report:
        for row, raw in zip(pretty, rows):
            row["traced"] = fmt_flops(raw["traced_flops"])
        columns.append(("traced", "traced"))
    print(_table(pretty, columns))
    print(f"total: {fmt_params(cost.params)} params, {fmt_flops(cost.flops)} FLOPs (analytic)")
    if report:
        gap = (report.flops - cost.flops) / report.flops if report.flops else 0.0
        print(f"traced: {fmt_params(report.params)} params, {fmt_flops(report.flops)} FLOPs "
              f"(fvcore + attention/mean handles); analytic vs traced: {gap:+.3%}")
        if report.uncounted:
            ops = ", ".join(f"{op} x{n}" for op, n in sorted(report.uncounted.items()))
            print(f"not counted (element-wise or pooling, 0 FLOPs by fvcore's convention): {ops}")
    return 0


def _objectives(text: str) -> list[str]:
    """``train`` or ``train,flops``."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    known = typing.get_args(Objective)
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown objective {', '.join(unknown) or text!r}; known: {', '.join(known)}")
    return names


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _data(text: str) -> str:
    """``shapes``, ``digits`` or a folder in the ImageNet layout or a flat ImageFolder (checked now)."""
    from .search.data import BUILTIN_DATASETS, DataError, check_folder

    if text in BUILTIN_DATASETS:
        return text
    try:
        check_folder(text)
    except DataError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _directions(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names or any(n not in ("maximize", "minimize") for n in names):
        raise argparse.ArgumentTypeError(f"{text!r}: write maximize or minimize, one per value (comma-separated)")
    return names


def cmd_search(args) -> int:
    import torch

    from .search.objectives import CustomObjective, load_function
    from .search.runner import Search, SearchStopped

    torch.set_num_threads(args.threads)
    search = load_search(args.spec, model_input=args.input)
    settings = search.settings.model_dump()
    for key in ("trials", "objective", "seed", "sampler", "pruner", "precision", "repeats"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if args.data:
        settings["data"]["dataset"] = args.data
    search.settings = SearchSettings.model_validate(settings)
    custom = None
    try:
        if args.objective_fn:
            directions = args.direction or ("maximize",)
            names = tuple(args.objective_names.split(",")) if args.objective_names else (
                ("objective",) if len(directions) == 1 else tuple(f"objective{i}" for i in range(len(directions))))
            custom = CustomObjective(load_function(args.objective_fn), names, directions)
        out = Path(args.out) if args.out else Path("results") / (args.study or search.name)
        runner = Search(search, out, storage=args.storage, study_name=args.study, max_params=args.max_params,
                        progress=not args.no_progress, device=args.device, objective=custom)
    except ValueError as exc:
        print(f"archdsl search: {exc}", file=sys.stderr)
        return EXIT_INVALID
    try:
        outcome = runner.run()
    except SearchStopped as exc:
        print(f"{args.spec}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("interrupted; run the same command again to continue the study", file=sys.stderr)
        return 130
    print(outcome.summary)
    if not outcome.best:
        print("no trial completed; see the reasons in trials.csv", file=sys.stderr)
    else:
        title = ("Pareto front" if len(runner.metrics) > 1 else
                 f"best trial and {len(outcome.tied)} tied with it (within seed noise)" if outcome.tied else "best trial")
        print(f"{title}:\n{outcome.table}")
    specs = sorted((out / "best").glob("*.yaml"))
    print(f"results in {out}/: trials.csv, trials_vs_flops.png"
          + (f", {len(specs)} spec(s) in best/ (archdsl build {specs[0]})" if specs else ""))
    return 0 if outcome.best else 1


def cmd_graph(args) -> int:
    from .tools.drawing import FORMATS, draw

    if Path(args.output).suffix not in FORMATS:
        raise SystemExit(f"archdsl graph: {args.output} must end in {', '.join(FORMATS)}")
    path = draw(_design(args), args.output)
    print(f"{args.spec}: drawn to {path}")
    return 0


def cmd_schema(args) -> int:
    from .tools.schema import schema_text

    if args.output:
        Path(args.output).write_text(schema_text(), encoding="utf-8")
    else:
        sys.stdout.write(schema_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=FutureWarning)
    parser = argparse.ArgumentParser(prog="archdsl", description="Vision backbones from YAML specs.")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str, func):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("spec", help="a spec file, e.g. specs/swin_t.yaml")
        p.add_argument("--max-params", type=_number, default=DEFAULT_MAX_PARAMS,
                       help="refuse models with more parameters (default 2e9; sizes such as 500M work)")
        p.add_argument("--input", type=_image, help="input shape instead of the spec's, e.g. 3x256x256")
        p.set_defaults(func=func)
        return p

    command("validate", "check a spec (or a search space); exit 2 with every problem", cmd_validate)
    build = command("build", "build the model; print the per-stage table", cmd_build)
    build.add_argument("--json", action="store_true", help="machine-readable output")
    build.add_argument("--optimize", action="store_true", help="also compile it with archdsl.optimize, check it "
                       "against eager and time both")
    build.add_argument("--batch", type=_count, default=8, help="batch size for --optimize (default 8)")
    export = command("export", "export the model to ONNX or torch.export (dynamic batch); check the file", cmd_export)
    export.add_argument("-o", "--output", required=True, help="a .onnx or .pt2 file")
    export.add_argument("--format", choices=("onnx", "pt2"), help="default: from the output's suffix")
    flops = command("flops", "params and FLOPs per stage and in total", cmd_flops)
    flops.add_argument("--trace", action="store_true", help="also count the built model under fvcore")
    flops.add_argument("--json", action="store_true", help="machine-readable output")
    command("graph", "draw the model graph (stem, stages, blocks, branches, head)", cmd_graph).add_argument(
        "-o", "--output", required=True, help="a .png, .svg or .dot file")
    schema = sub.add_parser("schema", help="print the JSON Schema of the spec language (for editors)")
    schema.add_argument("-o", "--output", help="write it to this file instead (archdsl.schema.json)")
    schema.set_defaults(func=cmd_schema)
    search = command("search", "budgeted architecture search over a search file's space", cmd_search)
    search.add_argument("--trials", type=_count, help="trials the study runs to (default: the file's search.trials)")
    search.add_argument("--objective", type=_objectives, help="train, proxy, latency, flops, params, or several "
                        "separated by commas (a Pareto front), e.g. train,flops")
    search.add_argument("--seed", type=lambda t: _count(t) if t != "0" else 0, help="sampler and training seed (default: the file's, else 0)")
    search.add_argument("--sampler", choices=("tpe", "random", "nsga2"), help="default: the file's, else tpe")
    search.add_argument("--data", type=_data, help="shapes, digits, or a folder: DIR/train/<class>/ and DIR/val/<class>/ "
                        "(ImageNet layout, used as the split) or DIR/<class>/ (split 80/20); the class count sets the head")
    search.add_argument("--pruner", choices=("hyperband", "successive_halving", "median", "none"),
                        help="stop poor trials early, epochs as the resource (default: the file's, else median)")
    search.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N or mps: where "
                        "models train and latency is timed (one worker per GPU: --device cuda:1)")
    search.add_argument("--precision", choices=("fp32", "bf16", "fp16"),
                        help="torch.autocast precision for training and latency (default: the file's, else fp32)")
    search.add_argument("--repeats", type=_count, help="training seeds per trial, its value their mean (default 1)")
    search.add_argument("--objective-fn", metavar="MODULE:FUNCTION", help="a Python function fn(model, context) -> "
                        "float or tuple measured instead of the file's objectives (imported because you name it)")
    search.add_argument("--direction", type=_directions, help="with --objective-fn: maximize or minimize per returned "
                        "value, comma-separated (default maximize)")
    search.add_argument("--objective-names", help="with --objective-fn: names of the returned values, comma-separated")
    search.add_argument("--out", help="results folder (default results/STUDY)")
    search.add_argument("--storage", help="an Optuna RDB URL shared by several workers, e.g. "
                        "postgresql://user@host/db (default: sqlite in the results folder)")
    search.add_argument("--study", help="study name (default: the search file's name)")
    search.add_argument("--threads", type=_count, default=1, help="torch threads of this worker (default 1: tiny "
                        "models gain nothing from more, and a busy machine loses; run more workers instead)")
    search.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID


if __name__ == "__main__":
    sys.exit(main())
