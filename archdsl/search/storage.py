"""Where a study lives and who works on it: the Optuna storage, worker identity and index, and the
recovery of trials whose worker died.

Workers share a study through an Optuna RDB storage (SQLite by default, PostgreSQL for many
hosts). Each worker registers once, in a side study ``<study>:workers``, by creating a trial
there: Optuna numbers trials under a row lock, so the number is a unique **worker index** (0 for
the first worker of a study, 1 for the next, ...), from which the worker derives its sampler seed
(``sampler_seed``): two workers started with one ``--seed`` propose different architectures,
while the first worker of a fresh study still samples the sequence its seed gives. Only public
storage calls are used (``create_new_trial``, ``set_trial_user_attr``, ``set_trial_state_values``,
``get_trial_id_from_study_id_trial_number``).
"""
from __future__ import annotations

import os
import socket
import time
import warnings
from pathlib import Path

import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState

from .failures import SearchStopped

HEARTBEAT_S = 5  # a running trial records a heartbeat this often
GRACE_S = 30  # ... and is taken as lost after this long without one
WORKER_SEED_STRIDE = 1_000_003  # a prime: worker k samples with seed + k * stride


def _start_ticks(pid: int) -> str:
    """A process's start time in clock ticks since boot (Linux), to tell a live pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


WORKER = f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def worker_is_dead(worker: str) -> bool:
    """True for a worker of this host whose process is gone (other hosts: the heartbeat decides)."""
    host, pid, ticks = worker.rsplit(":", 2)
    return host == socket.gethostname() and bool(ticks) and _start_ticks(int(pid)) != ticks


def with_driver(url: str) -> str:
    """``postgresql://`` through psycopg2 (the driver archdsl installs; SQLAlchemy 2.1 defaults to psycopg 3)."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg2://" + url[len(scheme):]
    return url


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue a lost trial's parameters again (a WAITING trial, which workers pop first), with what its
    sampler recorded on it."""
    if trial.params:
        kept = {"sampler_attrs": trial.user_attrs["sampler_attrs"]} if "sampler_attrs" in trial.user_attrs else {}
        study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, params=trial.params,
                                                  distributions=trial.distributions,
                                                  user_attrs={"retry_of": trial.number, **kept}))


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The RDB storage, with heartbeats (a lost trial is queued again); retried while another worker
    creates the same tables."""
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {}
    return _retrying(lambda: optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S,
                                                        grace_period=GRACE_S, heartbeat_stale_trial_callback=requeue))


def open_study(storage: optuna.storages.RDBStorage, name: str, directions: list[str],
               pruner: optuna.pruners.BasePruner, fingerprint: dict) -> optuna.Study:
    """Create or load the study; one started with another ``fingerprint`` (objectives, budget, space,
    data, precision) is refused, since its results would not compare."""
    study = _retrying(lambda: optuna.create_study(storage=storage, study_name=name, load_if_exists=True,
                                                  directions=directions, pruner=pruner,
                                                  sampler=optuna.samplers.RandomSampler()))
    stored = study.user_attrs.get("search")
    if stored is None:
        study.set_user_attr("search", fingerprint)
    elif stored != fingerprint:
        raise SearchStopped(f"study {name!r} was started with other settings ({stored}); continue it with those, or "
                            f"give another --study or --out")
    return study


def _retrying(make):
    for attempt in range(5):
        try:
            return make()
        except Exception as exc:  # noqa: BLE001 - filtered below
            racing = (type(exc).__module__.startswith("sqlalchemy")  # tables created by another worker
                      or isinstance(exc, optuna.exceptions.DuplicatedStudyError))
            if attempt == 4 or not racing:
                raise
            time.sleep(1 + attempt)


def register_worker(storage: optuna.storages.RDBStorage, study_name: str) -> int:
    """This worker's index on the study: the number of its trial in the side study ``<study>:workers``
    (unique, since Optuna numbers trials under a lock), which records the worker's identity."""
    side = f"{study_name}:workers"
    try:
        study_id = storage.get_study_id_from_name(side)
    except KeyError:
        try:
            study_id = storage.create_new_study([StudyDirection.MINIMIZE], side)
        except optuna.exceptions.DuplicatedStudyError:  # another worker created it first
            study_id = storage.get_study_id_from_name(side)
    trial_id = storage.create_new_trial(study_id)
    index = storage.get_trial_number_from_id(trial_id)
    storage.set_trial_user_attr(trial_id, "worker", WORKER)
    storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [float(index)])
    return index


def sampler_seed(seed: int, worker_index: int) -> int:
    """Worker 0 samples with ``seed`` itself; worker k with ``seed + k * WORKER_SEED_STRIDE`` (mod 2**32)."""
    return (seed + worker_index * WORKER_SEED_STRIDE) % 2**32


def recover(study: optuna.Study, storage: optuna.storages.RDBStorage) -> list[int]:
    """Fail the RUNNING trials whose worker is gone and queue them again; the trial numbers. (Trials
    of other hosts are failed by Optuna's heartbeat check, ``fail_stale_trials``.)"""
    failed = []
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if worker and worker != WORKER and worker_is_dead(worker):
            pid = worker.rsplit(":", 2)[1]
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            try:
                storage.set_trial_user_attr(trial_id, "fail_reason", f"its worker (pid {pid}) died while it ran; redone")
                if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                    requeue(study, trial)
                    failed.append(trial.number)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another worker got there first
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return failed
