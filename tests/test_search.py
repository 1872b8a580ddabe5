"""``archdsl search`` (issue 5): budget before cost, canonical hashes, failures, seeds, SIGKILL-resume,
PostgreSQL workers, and the shipped search spaces."""
import csv
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

import archdsl
from archdsl.cli import main
from archdsl.search.candidate import architecture_hash
from archdsl.search.runner import with_driver
from conftest import ROOT

ARCHDSL = [sys.executable, "-m", "archdsl"]
PG_BIN = Path("/usr/lib/postgresql/15/bin")

SPACE = """
name: tiny
input: 3x16x16
stem: patch_embed(patch=4, norm=layernorm)
stages:
  - depth: int(1, 3)
    width: choice(16, 32, 64)
    mixer: choice(window(size=2, heads=2), attention(heads=2), ssa(heads=2, sr=2))
  - depth: 1
    width: 64
    downsample: patch_merging
    mixer: attention(heads=2)
    mlp_ratio: choice(2, 4)
head: {{norm: layernorm, classes: 10}}
search:
  objective: {objective}
  trials: {trials}
  budget: {{flops: {flops}}}
  seed: {seed}
  max_rejections: {max_rejections}
  pruner: none
  confirm: {{trials: {confirm}, seeds: 1}}
  data: {{dataset: digits, epochs: {epochs}}}
"""


def space(write_spec, name="space.yaml", objective="proxy", trials=6, flops="600k", seed=0, max_rejections=1000,
          epochs=1, confirm=0, text=SPACE):
    return write_spec(text.format(objective=objective, trials=trials, flops=flops, seed=seed,
                                  max_rejections=max_rejections, epochs=epochs, confirm=confirm), name)


def search(capsys, path, out, *extra):
    code = main(["search", str(path), "--out", str(out), "--no-progress", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rows(out) -> list[dict]:
    with open(Path(out) / "trials.csv") as f:
        return list(csv.DictReader(f))


def study_of(out, name="space") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{Path(out) / 'study.db'}")


def test_budget_never_exceeded_rejections_reported_best_spec_builds(capsys, write_spec, tmp_path):
    path = space(write_spec, flops="600k", trials=6)
    code, out, err = search(capsys, path, tmp_path / "r")
    assert code == 0, err
    table = rows(tmp_path / "r")
    complete = [r for r in table if r["state"] == "complete"]
    assert len(complete) == 6
    assert all(int(r["flops"]) <= 600_000 for r in complete)
    rejected = sum(int(r["rejected_before"]) for r in table)
    assert rejected > 0 and f"{rejected} candidates rejected before training" in out
    assert "best trial:" in out and "naswot" in out
    specs = list((tmp_path / "r" / "best").glob("*.yaml"))
    assert len(specs) == 1 and (tmp_path / "r" / "trials_vs_flops.png").stat().st_size > 10_000
    assert main(["build", str(specs[0])]) == 0
    best = next(r for r in table if specs[0].stem == f"trial_{r['trial']}")
    assert architecture_hash(archdsl.load_design(specs[0])) == best["arch_hash"]
    assert max(float(r["naswot"]) for r in complete) == float(best["naswot"])


def test_infeasible_space_names_cheapest_candidate_per_stage(capsys, write_spec, tmp_path):
    path = space(write_spec, flops="100k", max_rejections=60)
    code, out, err = search(capsys, path, tmp_path / "r")
    assert code == 2 and not out
    assert "the search space has no candidate within the budget: 60 candidates in a row were rejected (60 flops)" in err
    assert "cheapest candidate seen: stages[0].depth=1, stages[0].width=16" in err
    for part in ("stem", "stage 1", "stage 2", "head", "total", "budget"):
        assert f"\n  {part} " in err
    assert "over the budget of 100,000" in err


def test_search_section_errors_are_positioned(capsys, write_spec, tmp_path):
    path = write_spec(SPACE.format(objective="trian", trials=3, flops="1M", seed=0, max_rejections=10, epochs=1,
                                   confirm=0).replace("seed: 0", "sed: 0"))
    code, _, err = search(capsys, path, tmp_path / "r")
    assert code == 2
    assert f"{path}:15:14: search.objective: 'trian' is not valid; input should be 'train', 'proxy'" in err
    assert f"{path}:18:3: search.sed: unknown option 'sed'; did you mean 'seed'?" in err


def test_two_spellings_one_hash_one_evaluation(capsys, write_spec, tmp_path):
    text = SPACE.replace("choice(window(size=2, heads=2), attention(heads=2), ssa(heads=2, sr=2))",
                         "choice(window(size=2, heads=2), window(heads=2, size=2, shift=false, rpb=true))") \
                .replace("int(1, 3)", "2").replace("choice(16, 32, 64)", "32").replace("choice(2, 4)", "choice(4, 4.0)")
    path = space(write_spec, text=text, trials=5, flops="10M")
    code, out, err = search(capsys, path, tmp_path / "r")
    assert code == 0, err
    table = rows(tmp_path / "r")
    assert len({r["stages[0].mixer"] + r["stages[1].mlp_ratio"] for r in table}) > 1  # several spellings sampled
    assert len({r["arch_hash"] for r in table}) == 1
    evaluated = [r for r in table if not r["reused_from"]]
    assert len(evaluated) == 1 and all(r["reused_from"] == evaluated[0]["trial"] for r in table if r is not evaluated[0])
    assert "5 complete (4 reused a result)" in out


def test_hash_ignores_spelling_defaults_and_repeated_mixer_lists():
    base = SPACE.split("search:")[0].format().replace("int(1, 3)", "2").replace("choice(16, 32, 64)", "32") \
        .replace("choice(2, 4)", "4")
    mixers = "choice(window(size=2, heads=2), attention(heads=2), ssa(heads=2, sr=2))"
    spellings = ["window(size=2, heads=2)", "window(heads=2, size=2, rpb=true)",
                 '"[window(size=2, heads=2), window(size=2, heads=2)]"']
    hashes = {architecture_hash(archdsl.load_design(archdsl.read_text(base.replace(mixers, m)))) for m in spellings}
    other = architecture_hash(archdsl.load_design(archdsl.read_text(base.replace(mixers, "attention(heads=2)"))))
    assert len(hashes) == 1 and other not in hashes


def test_failing_trials_are_recorded_with_reasons_and_the_search_goes_on(capsys, write_spec, tmp_path, monkeypatch):
    import archdsl.search.evaluation as evaluation

    real_build = evaluation.build_model

    def build(design):
        mixer = design.spec.stages[0].mixer[0].kind
        if mixer == "ssa":
            raise RuntimeError("a module that cannot be built")
        model = real_build(design)
        if mixer == "attention":  # a model whose loss turns NaN in training
            model.head.register_forward_hook(lambda module, args, output: output * float("nan"))
        return model

    monkeypatch.setattr(evaluation, "build_model", build)
    path = space(write_spec, objective="train", trials=4, flops="2M", epochs=1)
    code, out, err = search(capsys, path, tmp_path / "r")
    assert code == 0, err
    table = rows(tmp_path / "r")
    failed = [r for r in table if r["state"] == "failed"]
    reasons = {r["reason"] for r in failed}
    assert any(r.startswith("TrialFailure: the loss became nan at epoch 1, step 1") for r in reasons), reasons
    assert "RuntimeError: a module that cannot be built" in reasons, reasons
    assert all(r["stages[0].mixer"].startswith("window") for r in table if r["state"] == "complete")
    assert sum(r["state"] == "complete" for r in table) == 4
    assert f"trial {failed[0]['trial']} failed: " in err


def sampled_sequence(out) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in study_of(out).trials]


def test_fixed_seed_samples_the_same_sequence(capsys, write_spec, tmp_path):
    path = space(write_spec, trials=5, flops="600k")
    for run in ("a", "b"):
        assert search(capsys, path, tmp_path / run, "--seed", "3")[0] == 0
    assert search(capsys, path, tmp_path / "c", "--seed", "4")[0] == 0
    first = sampled_sequence(tmp_path / "a")
    assert first == sampled_sequence(tmp_path / "b") and len(first) == 5
    assert first != sampled_sequence(tmp_path / "c")
    assert [r["rejected_before"] for r in rows(tmp_path / "a")] == [r["rejected_before"] for r in rows(tmp_path / "b")]


def test_sigkill_then_rerun_continues_the_study(write_spec, tmp_path):
    path = space(write_spec, objective="train", trials=4, flops="2M", epochs=6)
    out = tmp_path / "r"
    command = ARCHDSL + ["search", str(path), "--out", str(out), "--no-progress"]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed_number = None
    deadline = time.monotonic() + 240
    while killed_number is None and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.5)
        if not (out / "study.db").exists():
            continue
        try:
            trials = study_of(out).trials
        except Exception:  # noqa: BLE001 - the study is being created
            continue
        # a trial with at least 3 of its 6 epochs still to train: it cannot finish before the signal lands
        running = [t for t in trials if t.state.name == "RUNNING" and "worker" in t.user_attrs
                   and t.user_attrs.get("epochs_trained", 0) <= 3]
        if sum(t.state.name == "COMPLETE" for t in trials) >= 1 and running:
            first.send_signal(signal.SIGKILL)
            killed_number = running[0].number
    first.wait()
    assert killed_number is not None, first.stderr.read().decode()[-2000:]
    assert first.returncode == -signal.SIGKILL
    assert study_of(out).trials[killed_number].state.name == "RUNNING"

    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"trial {killed_number} was running when its worker died: marked failed, queued again" in again.stdout
    trials = study_of(out).trials
    killed = trials[killed_number]
    assert killed.state.name == "FAIL" and "died while it ran" in killed.user_attrs["fail_reason"]
    redo = [t for t in trials if t.user_attrs.get("retry_of") == killed_number]
    assert len(redo) == 1 and redo[0].state.name == "COMPLETE" and redo[0].params == killed.params
    assert sum(t.state.name == "COMPLETE" for t in trials) == 4
    assert not any(t.state.name in ("RUNNING", "WAITING") for t in trials)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(*command: str) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the ``postgres`` system user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


@pytest.fixture
def postgres():
    """A throw-away PostgreSQL cluster on a free loopback port; its URL."""
    root = Path(tempfile.mkdtemp(prefix="archdsl-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
    data, port = root / "data", free_port()
    subprocess.run(as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"),
                   check=True, capture_output=True)
    subprocess.run(as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                               f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"),
                   check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"),
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_a_postgresql_study(write_spec, tmp_path, postgres):
    path = space(write_spec, objective="train", trials=8, flops="2M", epochs=1)
    workers = [subprocess.Popen(ARCHDSL + ["search", str(path), "--storage", postgres, "--study", "shared", "--out",
                                           str(tmp_path / name), "--no-progress"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    for worker in workers:
        out, err = worker.communicate(timeout=400)
        assert worker.returncode == 0, err[-2000:]
        assert "best trial:" in out
    trials = optuna.load_study(study_name="shared", storage=with_driver(postgres)).trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 8
    evaluated = [t.user_attrs["arch_hash"] for t in complete if "reused_from" not in t.user_attrs]
    assert len(evaluated) == len(set(evaluated))  # no architecture evaluated twice
    assert len({t.user_attrs["worker"] for t in complete}) == 2  # both workers ran trials
    assert all("surplus" in t.user_attrs.get("fail_reason", "") for t in trials if t.state.name == "FAIL")


@pytest.mark.parametrize("name", ["mixer_placement", "scales", "tokens"])
def test_shipped_search_spaces_validate(capsys, name):
    code = main(["validate", str(ROOT / "search" / f"{name}.yaml")])
    assert code == 0 and "every option validates; search: " in capsys.readouterr().out


def test_nested_form_is_sampled_only_with_its_option():
    from archdsl.search import load_search
    from archdsl.search.space import suggest

    space = load_search(ROOT / "search" / "tokens.yaml")
    assert [d.name for d in space.dims] == ["stages[0].mixer", "stages[0].graft", "stages[1].mixer.fg",
                                            "stages[2].mixer.sr"]
    window, graft = "window(size=choice(2, 4, 8, 16), heads=2)", "graft(scales=int(1, 3, step=1, log=false))"
    common = {"stages[1].mixer.fg": 8, "stages[2].mixer.sr": 2}
    on = suggest(optuna.trial.FixedTrial({"stages[0].mixer": window, "stages[0].mixer:0.size": 8,
                                          "stages[0].graft": graft, "stages[0].graft:1.scales": 2, **common}),
                 space.dims)
    assert on[("stages", 0, "mixer")] == {"kind": "window", "size": 8, "heads": 2}
    assert on[("stages", 0, "graft")] == {"kind": "graft", "scales": 2}
    off = suggest(optuna.trial.FixedTrial({"stages[0].mixer": window, "stages[0].mixer:0.size": 8,
                                           "stages[0].graft": None, **common}), space.dims)
    assert off[("stages", 0, "graft")] is None  # no graft scales asked for: FixedTrial would raise


def test_nsga2_leaves_its_random_first_generation(write_spec, tmp_path):
    """NSGA-II counts a finished trial in a generation only by the generation number it recorded when
    sampling it; the mirrored trials carry it back, so later generations are bred, not random."""
    from archdsl.search.runner import Search
    from archdsl.search.settings import load_search

    path = space(write_spec, objective="[flops, params]", trials=25, flops="2M")
    outcomes = {}
    for sampler in ("nsga2", "random"):
        search = load_search(path)
        search.settings = search.settings.model_copy(update={"sampler": sampler})
        runner = Search(search, tmp_path / sampler, progress=False, device="cpu", echo=lambda _: None)
        outcome = runner.run()
        outcomes[sampler] = [r.arch_hash for r in outcome.rows]
        if sampler == "nsga2":
            generations = [v for t in runner.proposer.study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE
                           for k, v in t.system_attrs.items() if k.endswith(":generation")]
            assert len(generations) >= 20 and max(generations) >= 2, generations
    assert outcomes["nsga2"][:10] == outcomes["random"][:10]  # the first generation is random sampling
    assert outcomes["nsga2"] != outcomes["random"]
