"""Every use of Optuna's private API, in one place. Checked against optuna 5.1.0.

Optuna gives no public way to claim a waiting trial with the storage's compare-and-set
(what ``study.ask()`` does inside), to create a running trial from a template, to record
a heartbeat for a trial that this process runs itself, to read a study's trials from
inside a sampler, or to append to the journal file under its lock. Each of those reaches into a private attribute here; the rest of the
package calls these functions. When Optuna changes one of them, this module is the
one to change (pyproject.toml bounds optuna below the next major version).
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import get_lock_file
from optuna.trial import FrozenTrial, TrialState

from nansearch import jsonl

# The private methods Optuna's cache in front of a database storage (``_CachedStorage``)
# calls on it instead of the public ones: a wrapper of the database storage's calls
# must wrap these too.
CACHED_STORAGE_BACKEND_CALLS = (
    "_create_new_trial",
    "_set_trial_param",
    "_get_best_trial_id",
    "_get_trials",
    "_get_stale_trial_ids",
)


def storage(study: optuna.Study) -> BaseStorage:
    """The study's storage (``Study._storage``)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The study's id in its storage (``Study._study_id``)."""
    return study._study_id


def trials_inside_sampler(study: optuna.Study, states: tuple[TrialState, ...]) -> list[FrozenTrial]:
    """The study's trials, read from inside a sampler (``Study._get_trials``, which Optuna's
    own samplers call there: the public ``get_trials`` would recurse into the sampler)."""
    return study._get_trials(deepcopy=False, states=states)


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The trial's id in its storage (``Trial._trial_id``, ``FrozenTrial._trial_id``)."""
    return trial._trial_id


class JournalFile(JournalFileBackend):
    """Optuna's journal file, its records appended by :mod:`nansearch.jsonl`.

    Optuna reads past a torn last record but appends straight after it, which makes
    the journal unreadable from then on; here a failed write is cut back, and a torn
    tail left by a killed process is cut off (a copy kept) before anything is appended.
    """

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        try:
            with get_lock_file(self._lock):
                jsonl.append(self._file_path, logs, sync=True, compact=True)
        except OSError as exc:  # the lock file itself, on a full or read-only disk
            raise jsonl.disk_error(exc, self._file_path) from None
