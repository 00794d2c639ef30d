"""Weights & Biases tracking: which tracker a study gets.

The search hands results to a :class:`Tracker` through its callbacks; the tracker never
stops a sweep. ``tracking.wandb`` (else ``WANDB_MODE``, else whether W&B credentials
exist) picks it: nothing recorded (``off``), or a :class:`WandbTracker`
(:mod:`nansearch.tracking.wandb_tracker`) writing runs online or offline. During a sweep
its trial runs are written by a thread of their own (:class:`Background`,
:mod:`nansearch.tracking.background`), so the next trial trains while W&B writes the
last one.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

from nansearch.config.schema import SweepConfig
from nansearch.tracking._base import FinishedStudy, Tracker
from nansearch.tracking.background import Background, in_background
from nansearch.tracking.wandb_tracker import LEDGER, WandbTracker, end_session, read_ledger

log = logging.getLogger(__name__)

DEFAULT_HOST = "api.wandb.ai"


def has_credentials() -> bool:
    """Whether W&B can log in: ``WANDB_API_KEY``, or a ``.netrc`` entry for its host."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", f"https://{DEFAULT_HOST}")).hostname
    try:
        entries = netrc.netrc(os.environ.get("NETRC")).hosts
    except (OSError, netrc.NetrcParseError):
        return False
    return host in entries


def resolve_mode(setting: str | None) -> str:
    """``online``, ``offline`` or ``off``: the sweep file's choice, else ``WANDB_MODE``,
    else online when credentials exist and offline when they do not."""
    if setting:
        return setting
    env = os.environ.get("WANDB_MODE", "").lower()
    if env in ("disabled", "off"):
        return "off"
    if env in ("offline", "dryrun"):
        return "offline"
    if env == "online":
        return "online"
    return "online" if has_credentials() else "offline"


def make_tracker(cfg: SweepConfig, study_dir: Path) -> Tracker:
    mode = resolve_mode(cfg.tracking.wandb)
    if mode == "off":
        return Tracker()
    if mode == "online" and not has_credentials():
        # W&B would stop the sweep at a login prompt
        log.warning(
            "W&B: online asked for, but no credentials (WANDB_API_KEY or `wandb login`); "
            "logging offline under %s",
            Path(study_dir) / "wandb",
        )
        mode = "offline"
    return WandbTracker(mode, study_dir)


__all__ = [
    "LEDGER",
    "Background",
    "FinishedStudy",
    "Tracker",
    "WandbTracker",
    "end_session",
    "has_credentials",
    "in_background",
    "make_tracker",
    "read_ledger",
    "resolve_mode",
]
