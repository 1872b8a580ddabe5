"""The two ways a search stops short: one trial, or the whole search."""


class TrialFailure(Exception):
    """An evaluation that cannot give a result (a NaN loss, a NaN score); the trial fails with it."""


class SearchStopped(Exception):
    """The search cannot go on (no feasible candidate, a study started with other settings)."""
