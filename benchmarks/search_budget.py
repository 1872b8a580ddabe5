"""How fast ``archdsl search`` checks candidates against the budget: sampling plus analytic cost.

What: for each shipped search space (``search/*.yaml``) and for the TPE and random samplers, the
number of candidates per second that go through what the search does before deciding to build
anything: ask the in-memory proposal study for a trial, sample every dimension define-by-run,
resolve the spec, validate it, infer its graph and analytic params/FLOPs, hash it, compare with the
budget, and tell the proposal study (pruned with constraints when rejected). Each candidate is
checked afresh (the search's own cache of already-seen candidates is bypassed), so repeats cost
as much as new ones.

How: ``--candidates`` candidates per space and sampler after 20 untimed ones (imports, parser
caches). The proposal study grows as it goes, as in a real search (TPE's cost grows with it).

Reading the output: one line per space and sampler: candidates/s, the share rejected (over budget
or breaking a shape rule), and the mean ms spent sampling and checking; the target is at least
200 candidates/s, printed met / NOT met.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from archdsl.search import load_search
from archdsl.search.candidate import check_candidate
from archdsl.search.runner import Search
from archdsl.search.space import suggest

ROOT = Path(__file__).resolve().parents[1]
TARGET_PER_S = 200.0


def measure(path: Path, sampler: str, count: int, warmup: int = 20) -> tuple[float, float, float, float]:
    """Candidates/s, share rejected, mean ms sampling, mean ms checking."""
    search = load_search(path)
    search.settings = search.settings.model_copy(update={"sampler": sampler})
    with tempfile.TemporaryDirectory() as out:
        worker = Search(search, Path(out), progress=False)  # the study itself is never opened here
        proposals, budget = worker.proposals, search.settings.budget
        sampling = checking = 0.0
        rejected = 0
        start = None
        for i in range(warmup + count):
            if i == warmup:
                start, sampling, checking, rejected = time.perf_counter(), 0.0, 0.0, 0
            t0 = time.perf_counter()
            trial = proposals.ask()
            values = suggest(trial, search.dims)
            t1 = time.perf_counter()
            candidate = check_candidate(search, values, budget, worker.max_params)
            t2 = time.perf_counter()
            if candidate.feasible:
                proposals.tell(trial, state=TrialState.FAIL)
            else:
                for key, excess in candidate.constraints().items():
                    trial.set_constraint(key, excess)
                proposals.tell(trial, state=TrialState.PRUNED)
                rejected += 1
            sampling += (t1 - t0) + (time.perf_counter() - t2)
            checking += t2 - t1
        elapsed = time.perf_counter() - start
    return count / elapsed, rejected / count, sampling / count * 1e3, checking / count * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=500)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    print(f"{'space':<16} {'sampler':<7} {'cand/s':>8} {'rejected':>9} {'sample ms':>10} {'check ms':>9}  target")
    for path in sorted((ROOT / "search").glob("*.yaml")):
        for sampler in ("tpe", "random"):
            rate, rejected, sample_ms, check_ms = measure(path, sampler, args.candidates)
            verdict = "met" if rate >= TARGET_PER_S else "NOT met"
            print(f"{path.stem:<16} {sampler:<7} {rate:>8.0f} {rejected:>8.0%} {sample_ms:>10.2f} {check_ms:>9.2f}  "
                  f">= {TARGET_PER_S:.0f}/s {verdict}")


if __name__ == "__main__":
    main()
