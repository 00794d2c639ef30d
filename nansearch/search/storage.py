"""The study's storage: opened from a URL (a journal file in the study folder by default,
or a database), and the configuration a sweep stores in its study for workers and for
a resumed sweep to check against."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import optuna
from optuna.exceptions import ExperimentalWarning

from nansearch.config import (
    HeartbeatConfig,
    NansearchError,
    SweepConfig,
    config_from_yaml,
    to_yaml,
)
from nansearch.search import queue as trial_queue
from nansearch.search.optuna_internals import JournalFile
from nansearch.search.reconnect import RetryingRDBStorage

CONFIG_ATTR = "config"  # the study's resolved configuration, as YAML: workers rebuild it
CONNECT_TIMEOUT = 5  # seconds to reach a database server


def open_storage(
    url: str | None, study_dir: Path, heartbeat: HeartbeatConfig | None = None
) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``; a journal file in the study folder by default.

    ``url`` is any Optuna storage URL (``sqlite:///...``, ``postgresql://...``), or a
    journal file as ``journal:PATH`` or a plain path ending in ``.log`` or ``.jsonl``.
    A database storage records a heartbeat for each running trial, so a trial whose
    worker died is failed and run again (see :mod:`nansearch.search.queue`).
    """
    from optuna.storages import JournalStorage

    if url is None or url.startswith("journal:") or url.endswith((".log", ".jsonl")):
        path = (
            study_dir / "optuna-journal.log" if url is None else Path(url.removeprefix("journal:"))
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        # absolute: the file lock is a symlink to it, and a relative one would dangle,
        # so a lock left by a killed worker would never be seen as stale and broken
        return JournalStorage(JournalFile(str(path.resolve())))
    if "://" not in url:
        raise NansearchError(
            f"storage={url!r}: not a storage URL; use e.g. sqlite:///study.db, "
            "postgresql://user@host/db, or journal:path/to/file.log"
        )
    heartbeat = heartbeat or HeartbeatConfig()
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith(("postgresql", "mysql")):
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            storage = RetryingRDBStorage(
                with_installed_driver(url),
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat.interval,
                grace_period=heartbeat.grace,
                heartbeat_stale_trial_callback=trial_queue.Requeue(),
            )
            storage.shown_url = shown(url)
            return storage
    except NansearchError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NansearchError(f"storage={shown(url)!r}: cannot open it: {first}") from None


TRIAL_KEYS = ("steps", "seed", "target", "factors", "optimizer", "plugins")  # what a trial is


def refuse_changed_trials(study: str, stored: str | None, cfg: SweepConfig) -> None:
    """A resumed study's trials must mean what its recorded ones meant: refuse a change of
    what defines a trial (steps, seed, target, factors, optimizer, plugins), listing each.
    The budget, the phases' shares, workers and tracking may change."""
    if not stored:
        return
    from omegaconf import OmegaConf

    before = cast(dict[str, Any], OmegaConf.to_container(OmegaConf.create(stored)))
    now = cast(dict[str, Any], OmegaConf.to_container(OmegaConf.create(to_yaml(cfg))))
    changes: list[str] = []
    for key in TRIAL_KEYS:
        if key in before and key in now:
            differences(key, before[key], now[key], changes)
    if changes:
        listed = "; ".join(changes)
        raise NansearchError(
            f"study {study!r} was run with other trial settings ({listed}): resumed, its "
            "ranking would mix both. Put them back to resume it, or start a new study "
            f"with study={study}-2 (or any new name)"
        )


def differences(key: str, before: Any, now: Any, out: list[str]) -> None:
    if isinstance(before, dict) and isinstance(now, dict):
        for sub in sorted(set(before) & set(now)):
            differences(f"{key}.{sub}", before[sub], now[sub], out)
        if key.startswith("factors."):  # a level added or removed; elsewhere a key
            # missing on one side is a setting a newer nansearch added, at its default
            out.extend(f"{key}.{sub} added" for sub in sorted(set(now) - set(before)))
            out.extend(f"{key}.{sub} removed" for sub in sorted(set(before) - set(now)))
    elif before != now:
        out.append(f"{key}: {before!r} -> {now!r}")


def with_installed_driver(url: str) -> str:
    """A ``postgresql://`` URL names no driver, and SQLAlchemy then wants psycopg 3; use
    psycopg2 when only that one is installed (``pip install nansearch[postgres]``)."""
    from importlib.util import find_spec

    scheme, sep, rest = url.partition("://")
    if scheme == "postgresql" and find_spec("psycopg") is None and find_spec("psycopg2"):
        return f"postgresql+psycopg2{sep}{rest}"
    return url


def shown(url: str) -> str:
    """``url`` with its password hidden, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def stored_config(
    storage: optuna.storages.BaseStorage, study: str, where: str, overrides: Sequence[str] = ()
) -> SweepConfig:
    """The configuration a sweep stored in its study, for a worker that joins it."""
    if study not in optuna.get_all_study_names(storage):
        raise NansearchError(
            f"study {study!r} not found in {where}; start it there first with "
            f"nansearch sweep SWEEP.yaml study={study} storage=..."
        )
    attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(study))
    if CONFIG_ATTR not in attrs:
        raise NansearchError(
            f"study {study!r} in {where} holds no nansearch configuration; "
            "it was not created by nansearch sweep"
        )
    return config_from_yaml(attrs[CONFIG_ATTR], f"study {study!r} in {where}", overrides)
