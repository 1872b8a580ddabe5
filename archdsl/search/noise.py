"""The noise floor: re-evaluating the best trials with more seeds, and telling a winner from a tie.

A trained accuracy depends on the seed (initial weights, batch order) as much as on the
architecture, so one run per trial cannot rank close trials. After the search (``search.confirm``:
``trials`` best, ``seeds`` extra seeds each) the best trials are trained again with seeds
``seed + repeats, seed + repeats + 1, ...``; while a trial not yet confirmed ranks among the best by
its mean, it is confirmed too (at most ``3 x trials`` trials), so a lucky single run cannot win.
Each trial's values per seed (``search.repeats`` during the search, these after it) give its mean
and standard deviation.

**Ties.** The *seed noise* is the pooled standard deviation of every trial with two or more seeds
(``pooled_std``). A trial is *tied with the best* when the hypothesis "same expected value" is not
rejected at ``ALPHA`` = 0.05 (two-sided): Welch's t-test when both have at least two seeds, else a
two-sample z-test with the pooled seed noise as each run's standard deviation. With no trial of two
seeds the noise is unknown and no trial is called a winner: the report says the ranking is untested.
Confirmations are stored as study user attributes ``confirm:<trial>`` (a finished trial cannot be
changed); two workers finishing together compute the same seeds and write the same values.
"""
from __future__ import annotations

import math
import statistics

import optuna
from scipy import stats

ALPHA = 0.05
CONFIRM_LIMIT = 3  # at most this many times confirm.trials trials are confirmed
TEST_TEXT = ("Welch's t-test, or a z-test against the pooled seed noise for a trial of one seed; two-sided, "
             f"p >= {ALPHA}")


def seed_values(study: optuna.Study, trial: optuna.trial.FrozenTrial, attrs: dict | None = None) -> dict[int, list]:
    """A trial's metric values by seed: its own repeats, then the confirmations (``attrs``: the study's
    user attributes, read once by the caller)."""
    attrs = study.user_attrs if attrs is None else attrs
    source = trial.user_attrs.get("reused_from", trial.number)
    own = trial.user_attrs.get("seed_values") or {}
    merged = {int(s): list(v) for s, v in own.items()}
    merged.update({int(s): list(v) for s, v in attrs.get(f"confirm:{source}", {}).items()})
    return dict(sorted(merged.items()))


def pooled_std(groups: list[list[float]]) -> tuple[float | None, int]:
    """The pooled sample standard deviation of the groups with two or more values, and its degrees
    of freedom (None, 0 when no group has two)."""
    used = [g for g in groups if len(g) > 1]
    dof = sum(len(g) - 1 for g in used)
    if not dof:
        return None, 0
    squares = sum(sum((x - statistics.fmean(g)) ** 2 for x in g) for g in used)
    return math.sqrt(squares / dof), dof


def tie_p_value(best: list[float], other: list[float], noise: float | None) -> float | None:
    """The two-sided p-value of "same expected value" (Welch's t-test, or the z-test with ``noise``
    when either has one value); None when the noise is unknown."""
    if len(best) > 1 and len(other) > 1:
        if statistics.pvariance(best) == 0 and statistics.pvariance(other) == 0:
            return 1.0 if statistics.fmean(best) == statistics.fmean(other) else 0.0
        return float(stats.ttest_ind(best, other, equal_var=False).pvalue)
    if noise is None:
        return None
    if noise == 0:
        return 1.0 if statistics.fmean(best) == statistics.fmean(other) else 0.0
    z = (statistics.fmean(best) - statistics.fmean(other)) / (noise * math.sqrt(1 / len(best) + 1 / len(other)))
    return float(2 * stats.norm.sf(abs(z)))


def ranked(numbers: list[int], values: dict[int, list[float]], maximize: bool) -> list[int]:
    """Trial numbers by mean value, best first (ties by number)."""
    return sorted(numbers, key=lambda n: ((-1 if maximize else 1) * statistics.fmean(values[n]), n))


def confirm(study: optuna.Study, trials: list[optuna.trial.FrozenTrial], metric: int, maximize: bool, settings,
            measure) -> int:
    """Train the best of ``trials`` (by mean of metric ``metric``) with the confirmation seeds,
    ``measure(trial, seed)`` giving a trial's values for one seed; store them; the trainings run."""
    extra = [settings.seed + settings.repeats + k for k in range(settings.confirm.seeds)]
    top_count = settings.confirm.trials
    if not extra or not top_count or not trials:
        return 0
    by_number = {t.number: t for t in trials}
    confirmed: set[int] = set()
    runs = 0
    while len(confirmed) < CONFIRM_LIMIT * top_count:
        attrs = study.user_attrs
        values = {n: [v[metric] for v in seed_values(study, t, attrs).values()] for n, t in by_number.items()}
        todo = [n for n in ranked(list(values), values, maximize)[:top_count] if n not in confirmed]
        if not todo:
            break
        for number in todo:
            stored = {int(s): v for s, v in attrs.get(f"confirm:{number}", {}).items()}
            have = seed_values(study, by_number[number], attrs)
            for seed in extra:
                if seed not in have:
                    stored[seed] = measure(by_number[number], seed)
                    runs += 1
            study.set_user_attr(f"confirm:{number}", {str(s): v for s, v in sorted(stored.items())})
            confirmed.add(number)
    return runs
