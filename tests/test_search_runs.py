"""The search's noise floor and ties (noise.py), pruners, devices and precision, custom objectives and
worker seeds (issue 12)."""
import math
import sys
import textwrap

import optuna
import pytest
import torch

from archdsl.cli import main
from archdsl.search import runner
from archdsl.search.noise import pooled_std, tie_p_value
from archdsl.search.pruners import make_pruner, pruning_note
from archdsl.search.settings import DataSettings
from archdsl.search.training import resolve_device, train_accuracy, warmup_lr_factor
from test_search import rows, search, space, study_of


# --- statistics ----------------------------------------------------------------------------------
def test_pooled_std_matches_the_definition():
    groups = [[1.0, 2.0, 3.0], [10.0, 14.0], [5.0]]  # the single value carries no spread
    std, dof = pooled_std(groups)
    assert dof == 3 and std == pytest.approx(math.sqrt((2.0 + 8.0) / 3))
    assert pooled_std([[1.0], [2.0]]) == (None, 0)


def test_tie_test_separates_noise_from_a_real_difference():
    best, close, far = [0.80, 0.81, 0.79], [0.795, 0.805, 0.80], [0.60, 0.61, 0.59]
    assert tie_p_value(best, close, None) > 0.05  # Welch: within noise
    assert tie_p_value(best, far, None) < 0.001
    assert tie_p_value([0.80], [0.79], 0.01) == pytest.approx(2 * (1 - 0.7602499), abs=1e-4)  # z = 0.707
    assert tie_p_value([0.80], [0.70], 0.01) < 1e-10
    assert tie_p_value([0.80], [0.79], None) is None  # one run each, noise unknown: untested


# --- pruners and devices -------------------------------------------------------------------------
def test_pruners_are_optunas_with_epochs_as_resource():
    assert isinstance(make_pruner("hyperband", 9), optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner("successive_halving", 9), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(make_pruner("median", 9), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner("none", 9), optuna.pruners.NopPruner)
    assert "single objective" in pruning_note("hyperband", ["train", "flops"], False)
    assert "trains nothing" in pruning_note("median", ["proxy"], False)
    assert pruning_note("median", ["objective"], True) == ""


def test_learning_rate_warms_up_linearly_then_decays_by_cosine():
    factors = [warmup_lr_factor(step, warmup=4, total=12) for step in range(13)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0 and factors[8] == pytest.approx(0.5) and factors[12] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(factors[3:], factors[4:]))
    assert [warmup_lr_factor(step, 0, 4) for step in (0, 2, 4)] == pytest.approx([1.0, 0.5, 0.0])


class OneHugeBatch:
    """An ``ImageData`` of one batch of huge inputs: unclipped gradients are huge."""
    train_size = 8

    def __init__(self):
        self.images, self.labels = torch.randn(8, 4) * 1e4, torch.arange(8) % 2

    def train_batches(self, batch, seed):
        yield self.images, self.labels

    def val_batches(self, batch, count=None):
        yield self.images, self.labels


@pytest.mark.parametrize("clip", [None, 0.5])
def test_gradients_are_clipped_to_the_stated_norm(clip):
    model = torch.nn.Linear(4, 2)
    norms = []
    step = torch.optim.AdamW.step

    def spy(optimizer, *args, **kwargs):  # the global gradient norm the optimizer is handed
        norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item())
        return step(optimizer, *args, **kwargs)

    opts = DataSettings(epochs=2, batch=8, warmup_epochs=1, clip_grad=clip)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim.AdamW, "step", spy)
        train_accuracy(model, OneHugeBatch(), opts, 0, lambda *_: None, torch.device("cpu"))
    assert len(norms) == 2
    if clip is None:
        assert min(norms) > 100
    else:
        assert max(norms) == pytest.approx(clip, rel=1e-4)


class CountingValidation(OneHugeBatch):
    """Records the subset size each validation pass asks for."""
    val_size = 1000

    def __init__(self):
        super().__init__()
        self.counts = []

    def val_batches(self, batch, count=None):
        self.counts.append(count)
        yield from super().val_batches(batch)


@pytest.mark.parametrize("epoch_val", [None, 300])
def test_epochs_before_the_last_are_scored_on_the_subset_the_last_on_everything(epoch_val):
    data = CountingValidation()
    opts = DataSettings(epochs=3, batch=8, epoch_val=epoch_val)
    train_accuracy(torch.nn.Linear(4, 2), data, opts, 0, lambda *_: None, torch.device("cpu"))
    assert data.counts == [epoch_val, epoch_val, None]


def test_devices_resolve_or_are_refused():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else
                                           "mps" if torch.backends.mps.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda:1")


def test_unavailable_device_is_a_clear_error(capsys, write_spec, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = search(capsys, space(write_spec), tmp_path / "r", "--device", "cuda")
    assert code == 2 and "archdsl search: device 'cuda': this machine has no CUDA device" in err


def test_old_data_pruner_option_points_to_search_pruner(capsys, write_spec, tmp_path):
    path = write_spec(space(write_spec).read_text().replace("data: {dataset: digits,", "data: {pruner: median, dataset: digits,"))
    code, _, err = search(capsys, path, tmp_path / "r")
    assert code == 2 and "search.data.pruner: unknown option 'pruner'; the pruner is now an option of the search " \
                         "section: write search.pruner" in err


# --- the noise floor in a search -----------------------------------------------------------------
def test_repeats_and_confirmation_give_mean_and_std_and_mark_ties(capsys, write_spec, tmp_path):
    path = space(write_spec, objective="train", trials=4, flops="2M", epochs=1, confirm=2)
    code, out, err = search(capsys, path, tmp_path / "r", "--repeats", "2")
    assert code == 0, err
    table = rows(tmp_path / "r")
    evaluated = [r for r in table if r["state"] == "complete" and not r["reused_from"]]
    assert all(int(r["seeds"]) >= 2 and r["accuracy_std"] != "" for r in evaluated)
    confirmed = [r for r in evaluated if int(r["seeds"]) == 3]  # 2 repeats + 1 confirmation seed
    assert len(confirmed) >= 2
    study = study_of(tmp_path / "r")
    for r in evaluated:  # the row's accuracy is the mean over its seeds; the trial's value the mean of its repeats
        trial = study.trials[int(r["trial"])]
        assert trial.value == pytest.approx(sum(trial.user_attrs["seed_values"][s][0] for s in ("0", "1")) / 2)
    assert "seed noise of accuracy: std " in out and "degrees of freedom" in out
    assert "tied with the best (Welch's t-test" in out
    assert " +- " in out and "vs best" in out and "best" in out.split("vs best")[1]


def test_without_repeats_or_confirmation_the_ranking_is_said_to_be_untested(capsys, write_spec, tmp_path):
    path = space(write_spec, objective="train", trials=2, flops="2M", epochs=1, confirm=0)
    code, out, err = search(capsys, path, tmp_path / "r")
    assert code == 0, err
    assert "seed noise not measured" in out and "untested against the others" in out


def test_hyperband_prunes_and_counts_epochs_saved(capsys, write_spec, tmp_path):
    path = space(write_spec, objective="train", trials=8, flops="2M", epochs=4, confirm=0)
    code, out, err = search(capsys, path, tmp_path / "r", "--pruner", "hyperband", "--sampler", "random")
    assert code == 0, err
    table = rows(tmp_path / "r")
    epochs = [int(r["epochs"]) for r in table if r["epochs"] and not r["reused_from"]]
    pruned = [r for r in table if r["state"] == "pruned"]
    assert pruned and any(e < 4 for e in epochs)
    assert f"pruner hyperband: {sum(epochs)} epochs trained in the search's first runs, against {4 * len(epochs)} " \
           f"unpruned" in out


# --- custom objectives ---------------------------------------------------------------------------
def parameter_count(model, context):
    """A custom objective for the tests: fewer parameters is better; checks what the context holds."""
    assert context.device == next(model.parameters()).device
    assert context.data.classes == 10 and context.precision == "fp32"
    context.report(1.0, 1)
    return float(sum(p.numel() for p in model.parameters()))


def test_custom_objective_from_python(write_spec, tmp_path):
    path = space(write_spec, trials=3, flops="600k")
    import archdsl.search

    outcome = archdsl.search.run(path, parameter_count, names=("weights",), directions=("minimize",), out=tmp_path / "r",
                         device="cpu", pruner="none")
    complete = [r for r in outcome.rows if r.state == "complete"]
    assert len(complete) == 3 and all(r.values["weights"] == r.params for r in complete)
    assert outcome.best[0].values["weights"] == min(r.params for r in complete)


def test_custom_objective_from_the_command_line(capsys, write_spec, tmp_path, monkeypatch):
    (tmp_path / "my_objectives.py").write_text(textwrap.dedent("""
        def depth_and_width(model, context):
            return float(context.design.spec.stages[0].depth), float(context.design.spec.stages[0].width)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    path = space(write_spec, trials=3, flops="600k")
    code, out, err = search(capsys, path, tmp_path / "r", "--objective-fn", "my_objectives:depth_and_width",
                            "--direction", "maximize,minimize", "--objective-names", "depth,width")
    assert code == 0, err
    assert "Pareto front" in out and "depth" in out
    table = rows(tmp_path / "r")
    assert all(float(r["depth"]) == float(r["stages[0].depth"]) for r in table if r["state"] == "complete")
    code, _, err = search(capsys, path, tmp_path / "s", "--objective-fn", "my_objectives:missing")
    assert code == 2 and "my_objectives has no 'missing'" in err
    assert "my_objectives" in sys.modules  # imported only because the command line named it


# --- workers -------------------------------------------------------------------------------------
def test_two_workers_with_one_seed_propose_different_first_architectures(write_spec, tmp_path):
    from archdsl.search import load_search

    path = space(write_spec, trials=4, flops="600k")
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    workers = [runner.Search(load_search(path), tmp_path / name, storage=storage, study_name="shared", device="cpu",
                             progress=False) for name in ("a", "b")]
    studies = [w.open_study() for w in workers]
    assert [w.worker_index for w in workers] == [0, 1]
    first = [w.proposer.propose(study)[2].arch_hash for w, study in zip(workers, studies)]
    assert first[0] != first[1]
    # a fresh study's first worker still samples the sequence of its seed
    again = runner.Search(load_search(path), tmp_path / "c", device="cpu", progress=False)
    study = again.open_study()
    assert again.worker_index == 0 and again.proposer.propose(study)[2].arch_hash == first[0]


# --- the check: bf16 on the CPU, hyperband, ties marked ------------------------------------
def test_bf16_hyperband_search_marks_ties(capsys, write_spec, tmp_path):
    """The flags of issue 12's check (``--trials 6 --device cpu --precision bf16 --pruner hyperband``)
    on the test space (digits, 2 epochs: bf16 is emulated on CPUs without AVX512-BF16 or AMX)."""
    path = space(write_spec, objective="train", flops="2M", epochs=2, confirm=2)
    code, out, err = search(capsys, path, tmp_path / "r", "--trials", "6", "--device", "cpu", "--precision", "bf16",
                            "--pruner", "hyperband")
    assert code == 0, err
    assert "device cpu, bf16" in out and "pruner hyperband:" in out
    assert "seed noise of accuracy: std " in out and "tied with the best" in out
    assert "vs best" in out
    assert sum(r["state"] in ("complete", "pruned") for r in rows(tmp_path / "r")) == 6


# --- real data folders through the command line ----------------------------------------------------
def test_data_imagenet_layout_sets_the_head_and_the_trap_is_refused(capsys, write_spec, tmp_path):
    from test_search_data import class_folders

    root = tmp_path / "imnet"
    class_folders(root / "train", {"ant": 12, "bee": 12, "cat": 12})
    class_folders(root / "val", {"ant": 4, "bee": 4, "cat": 4})
    path = space(write_spec, objective="train", trials=2, flops="2M", epochs=1)
    code, out, err = search(capsys, path, tmp_path / "r", "--data", str(root))
    assert code == 0, err
    spec = next((tmp_path / "r" / "best").glob("*.yaml")).read_text()
    assert "classes: 3" in spec  # the head classifies the folder's classes, not the file's 10
    trap = tmp_path / "trap"
    for split in ("train", "val"):
        from test_search_data import write_images
        write_images(trap / split, 12, (200, 30, 30))
    with pytest.raises(SystemExit) as exit_info:
        main(["search", str(path), "--out", str(tmp_path / "t"), "--data", str(trap)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "looks like a split data set (train/, val/)" in err and f"{trap}/train/<class>/" in err
