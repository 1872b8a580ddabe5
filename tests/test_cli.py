"""``archdsl validate|build|flops``: exit codes, messages, tables and figures (items 7, 9)."""
import json
import re
import shutil
import subprocess
import sys

import pytest

from archdsl.cli import main
from archdsl.components import MIXERS
from conftest import ROOT, TINY_ATTENTION, TINY_PARTIAL

SPEC = {name: str(ROOT / "specs" / f"{name}.yaml") for name in ("deit_t", "swin_t", "resnet18", "resnet50", "swin_t_graft")}


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def total_gflops(out: str, label: str) -> float:
    return float(re.search(rf"^{label}: .*?([\d.]+)G FLOPs", out, re.M).group(1))


def test_validate_reports_window_problem_with_valid_sizes(capsys, write_spec):
    text = (ROOT / "specs" / "swin_t.yaml").read_text().replace("input: 3x224x224", "input: 3x384x384")
    line = text.splitlines().index("    mixer: window(size=7, heads=24, shift=true)") + 1
    path = write_spec(text)
    code, out, err = run(capsys, "validate", str(path))
    assert code == 2 and not out
    assert re.search(rf"^{re.escape(str(path))}:{line}:19: stages\[3\]\.mixer\.size: window 7 does not divide the 12x12 "
                     r"token grid of stage 4 \(input 384x384, stride 32\); valid sizes: 1, 2, 3, 4, 6, 12$", err, re.M)


def test_validate_unknown_mixer_lists_known(capsys, write_spec):
    path = write_spec((ROOT / "specs" / "deit_t.yaml").read_text().replace("attention(heads=3)", "atention(heads=3)"))
    code, _, err = run(capsys, "validate", str(path))
    assert code == 2
    known = ", ".join(sorted(MIXERS.classes))
    assert "stages[0].mixer: unknown mixer 'atention'; did you mean 'attention'" in err  # the closest first
    assert err.rstrip().endswith(f"known: {known}")
    assert "attention" in known and "window" in known


def test_validate_ok(capsys):
    code, out, _ = run(capsys, "validate", SPEC["resnet18"])
    assert code == 0 and "ok: resnet18, 11.690M params, 1.819G FLOPs" in out


def test_not_a_spec_is_one_clear_error(capsys, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("just some notes\nnothing here\n")
    code, out, err = run(capsys, "validate", str(path))
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name,lo,hi", [("deit_t", 1.23, 1.29), ("swin_t", 4.45, 4.55), ("resnet50", 4.05, 4.15)])
def test_flops_in_paper_range_and_trace_agrees(capsys, name, lo, hi):
    code, out, _ = run(capsys, "flops", SPEC[name])
    assert code == 0 and lo <= total_gflops(out, "total") <= hi
    code, out, _ = run(capsys, "flops", SPEC[name], "--trace", "--json")
    result = json.loads(out)
    assert result["params"] == result["built_params"]
    assert abs(result["flops"] - result["traced_flops"]) <= 0.01 * result["traced_flops"]
    assert lo * 1e9 <= result["traced_flops"] <= hi * 1e9
    assert all(abs(s["flops"] - s["traced_flops"]) <= 0.01 * max(s["traced_flops"], 1) for s in result["stages"])


def test_flops_trace_text_lists_uncounted_ops(capsys):
    code, out, _ = run(capsys, "flops", SPEC["deit_t"], "--trace")
    assert code == 0
    assert "analytic vs traced: +0.000%" in out
    assert re.search(r"not counted .*aten::add x\d+.*aten::gelu x12", out)


def test_flops_at_another_input(capsys):
    code, out, _ = run(capsys, "flops", SPEC["resnet50"], "--input", "3x256x256")
    assert code == 0 and "input 3x256x256" in out
    assert total_gflops(out, "total") == pytest.approx(4.1115 * (256 / 224) ** 2, rel=0.01)


def test_build_table_and_json(capsys):
    code, out, _ = run(capsys, "build", SPEC["swin_t"])
    assert code == 0
    for row in ("stem", "stage 1", "stage 2", "stage 3", "stage 4", "head"):
        assert re.search(rf"^{row}\s", out, re.M)
    assert re.search(r"^stage 3\s+14x14\s+16\s+384\s+window\(7x7, heads=12\) / window\(7x7, shifted, heads=12\)\s+6\s",
                     out, re.M)
    assert "total: 28.288M params (28,288,354), 4.509G FLOPs" in out
    assert "built: ArchModel with 28,288,354 parameters" in out
    code, out, _ = run(capsys, "build", SPEC["resnet18"], "--json")
    result = json.loads(out)
    assert result["params"] == result["built_params"] == 11_689_512
    assert [s["part"] for s in result["stages"]] == ["stem", "stage 1", "stage 2", "stage 3", "stage 4", "head"]
    assert sum(s["params"] for s in result["stages"]) == result["params"]


def test_max_params_option(capsys):
    code, _, err = run(capsys, "build", SPEC["resnet50"], "--max-params", "20M")
    assert code == 2 and "over the limit of 20,000,000" in err


def test_validate_search_space(capsys, write_spec):
    base = (ROOT / "specs" / "swin_t.yaml").read_text()
    good = write_spec(base.replace("window(size=7, heads=12, shift=true)",
                                   "choice(window(size=7, heads=12), attention(heads=choice(6, 12)))"
                                   .replace("choice(6, 12)", "12")).replace("depth: 6", "depth: int(2, 8, step=2)"))
    code, out, _ = run(capsys, "validate", str(good))
    assert code == 0 and "a search space of 2 choices" in out
    bad = write_spec(base.replace("window(size=7, heads=12, shift=true)", "window(size=choice(7, 5), heads=12)"))
    code, _, err = run(capsys, "validate", str(bad))
    assert code == 2 and "stages[2].mixer.size: window 5 does not divide the 14x14 token grid" in err


def test_console_script():
    exe = shutil.which("archdsl") or str(ROOT / ".venv" / "bin" / "archdsl")
    done = subprocess.run([exe, "validate", SPEC["deit_t"]], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([sys.executable, "-m", "archdsl", "validate", "/nonexistent.yaml"], capture_output=True,
                          text=True)
    assert done.returncode == 2 and "cannot read the file" in done.stderr and "Traceback" not in done.stderr


def test_graph_draws_the_graft_branches(capsys, tmp_path):
    code, out, _ = run(capsys, "graph", SPEC["swin_t_graft"], "-o", str(tmp_path / "x.png"))
    assert code == 0 and (tmp_path / "x.png").read_bytes()[:4] == b"\x89PNG"
    code, _, _ = run(capsys, "graph", SPEC["swin_t_graft"], "-o", str(tmp_path / "x.dot"))
    dot = (tmp_path / "x.dot").read_text()
    assert code == 0 and dot.count('[label="graft') == 9 and "stage 1: 56x56, 96 channels, stride 4" in dot


def test_schema_is_printed_and_written(capsys, tmp_path):
    code, out, _ = run(capsys, "schema")
    assert code == 0 and out == (ROOT / "archdsl.schema.json").read_text()
    code, _, _ = run(capsys, "schema", "-o", str(tmp_path / "s.json"))
    assert code == 0 and (tmp_path / "s.json").read_text() == out


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
@pytest.mark.parametrize("text", [TINY_ATTENTION, TINY_PARTIAL], ids=["attention", "partial"])
def test_export_writes_and_checks_the_file(capsys, write_spec, tmp_path, fmt, text):
    """The command's check holds for partial attention too, whose ranking ties at timm's norm init."""
    out = tmp_path / f"tiny.{fmt}"
    assert main(["export", str(write_spec(text)), "--format", fmt, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and f"exported ({fmt}, dynamic batch, random weights with perturbed norms) to {out}" in printed
    diff = float(re.search(r"max \|exported - eager\| (\S+)", printed).group(1))
    assert diff <= 1e-4


def test_export_refuses_a_mismatched_suffix(write_spec, tmp_path):
    with pytest.raises(SystemExit, match="does not end in '.onnx'"):
        main(["export", str(write_spec(TINY_ATTENTION)), "--format", "onnx", "-o", str(tmp_path / "tiny.pt2")])
    assert not (tmp_path / "tiny.pt2").exists()


def test_build_optimize_checks_and_times(capsys, write_spec):
    assert main(["build", str(write_spec(TINY_ATTENTION)), "--optimize", "--batch", "4"]) == 0
    printed = capsys.readouterr().out
    assert "optimized: channels_last no" in printed
    assert float(re.search(r"max \|optimized - eager\| (\S+)", printed).group(1)) <= 1e-4
    assert re.search(r"batch 4: eager \d+\.\d images/s, optimized \d+\.\d images/s", printed)
    with pytest.raises(SystemExit, match="cannot be combined with --json"):
        main(["build", str(write_spec(TINY_ATTENTION)), "--optimize", "--json"])


def test_build_table_of_a_token_set_stage(capsys):
    """A Visual Transformer stage outputs a set of tokens, not a grid: no resolution, no stride."""
    assert main(["build", str(ROOT / "specs" / "vt_r18.yaml"), "--json"]) == 0
    stages = {row["part"]: row for row in json.loads(capsys.readouterr().out)["stages"]}
    assert (stages["stage 3"]["resolution"], stages["stage 3"]["stride"]) == ("14x14", 16)
    assert (stages["stage 4"]["resolution"], stages["stage 4"]["stride"]) == ("16 tokens", None)
