"""The sweep's settings as typed dataclasses, one per section, with their defaults.

What is valid beyond the types is checked in :mod:`nansearch.config.checks`; a file is
read into them by :mod:`nansearch.config.load`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from nansearch.dtypes import LEVELS

# what a command target's templates and config keys can name besides the factors
COMMAND_VALUES = ("seed", "steps", "config", "checkpoint_level", "param_dtype", "autocast_dtype")
# the dtype levels a sweep tries unless it names some: every level of the dtype factor
DTYPES = tuple(LEVELS)


@dataclass
class TargetConfig:
    """What is trained."""

    kind: str = "causal-lm"  # a kind in nansearch.targets.TARGETS: causal-lm, command...
    # causal-lm: the class that loads every checkpoint, e.g. OPTForCausalLM, the way
    # the user's own code loads it. AutoModelForCausalLM follows each checkpoint's config.
    model_class: str = "AutoModelForCausalLM"
    # custom, function: "package.module:function" or "path/file.py:function"; a function
    # target's function is the trial: it receives a nansearch.Trial and runs its own loop
    fn: str | None = None
    trust_remote_code: bool = False
    attn_implementation: str | None = "eager"
    batch_size: int = 8
    seq_len: int = 32
    options: dict[str, Any] = field(default_factory=dict)  # passed to a custom target
    # command: the user's unmodified script, run once per trial in its own process,
    # watched from inside by `python -m nansearch.inject`. Templates name ${factor} values.
    program: str | None = None  # the Python script
    args: str = ""  # command-line template, e.g. "--hparams ${config} --seed ${seed}"
    env: dict[str, str] = field(default_factory=dict)  # variable -> template
    config: str | None = None  # the script's own YAML/JSON config, copied for each trial
    keys: dict[str, str] = field(default_factory=dict)  # factor -> dotted key in that config
    timeout: float | None = None  # renamed trial_timeout, which every target kind takes
    nan_pattern: str | None = None  # a regex over its output that means NaN logits
    nan_exit_codes: list[int] = field(default_factory=list)  # statuses that mean it saw NaN
    start: str = "fork"  # fork: a copy of the sweep's process, torch loaded | spawn: fresh


@dataclass
class CheckpointFactor:
    # level name -> local folder or hub id; "demo:<name>" names a built-in demo checkpoint
    levels: dict[str, str] = field(default_factory=dict)


@dataclass
class DtypeFactor:
    levels: list[str] = field(default_factory=lambda: list(DTYPES))


@dataclass
class LrFactor:
    low: float = 1e-5
    high: float = 1e-1


@dataclass
class InitScheme:
    scheme: str = "pretrained"  # nansearch.factors.init.SCHEMES: pretrained, normal...
    std: float = 0.02
    pattern: str = ".*"  # regular expression over parameter names (normal)


@dataclass
class InitFactor:
    # level name -> scheme; empty means the one level "pretrained"
    levels: dict[str, InitScheme] = field(default_factory=dict)


@dataclass
class BatchFactor:
    levels: list[str] = field(default_factory=lambda: ["clean"])
    files: dict[str, str] = field(default_factory=dict)  # level name -> .safetensors/.pt file
    # skip each step whose batch has no counted label, as a training loop guards against
    # 0/0 (the audit's fix for batch.labels-ignored)
    skip_empty_labels: bool = False


@dataclass
class FactorsConfig:
    checkpoint: CheckpointFactor = field(default_factory=CheckpointFactor)
    dtype: DtypeFactor = field(default_factory=DtypeFactor)
    lr: LrFactor = field(default_factory=LrFactor)
    init: InitFactor = field(default_factory=InitFactor)
    batch: BatchFactor = field(default_factory=BatchFactor)
    # factors registered from Python (see nansearch.factors.register): name -> levels
    extra: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class OptimizerConfig:
    name: str = "adamw"  # adamw | adam | sgd
    eps: float = 1e-8
    weight_decay: float = 0.0
    min_loss_scale: float = 1.0  # amp-fp16: a non-finite gradient at this scale is a failure


@dataclass
class SearchConfig:
    """The phases that share ``trials``: cover, focus (what the others leave), confirm and
    isolate; -1 picks a size from the budget (see :func:`nansearch.search.plan.plan`)."""

    cover: int = -1  # trials of the pairwise cover; -1: one design, every pair of levels
    confirm: int = -1  # reruns of failing configurations with fresh seeds; -1: a tenth
    isolate: int = -1  # delta-debugging probes toward the minimal cause; -1: a fifth
    seeds: int = 3  # fresh seeds per confirmed configuration
    patience: int = 15  # focus ends once the top cause has led this many trials; 0: never
    sampler: str = "tpe"  # tpe | random
    horizon: int = -1  # steps a finite run is forecast over (at risk); -1: ten times steps
    verify_steps: int = -1  # steps each fix is verified over; -1: ten times steps


@dataclass
class HeartbeatConfig:
    """How a shared (RDB) storage notices a worker that died: seconds between a running
    trial's heartbeats, and the silence after which it is failed and run again."""

    interval: int = 10
    grace: int = 30


@dataclass
class TrackingConfig:
    wandb: str | None = None  # offline | online | off; default online with credentials
    project: str = "nansearch"
    entity: str | None = None


@dataclass
class SweepConfig:
    study: str = "demo"
    out: str = "runs"
    trials: int = 40
    steps: int = 20
    seed: int = 0
    storage: str | None = None  # any Optuna storage URL; default a journal file
    device: str = "auto"  # auto | cpu | cuda
    workers: int = 1  # worker processes on this machine, sharing the study and the GPUs
    threads: int = 1  # torch CPU threads of each worker (and of a one-worker sweep)
    heartbeat: HeartbeatConfig = field(default_factory=HeartbeatConfig)
    # seconds a trial may run before it is an error trial and its process is ended;
    # -1: 10 x the slowest trial recorded, at least 600 (3600 until one is); 0: no limit
    trial_timeout: float = -1.0
    plugins: list[str] = field(default_factory=list)  # modules or files that register levels
    target: TargetConfig = field(default_factory=TargetConfig)
    factors: FactorsConfig = field(default_factory=FactorsConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    @property
    def study_dir(self) -> Path:
        return Path(self.out) / self.study


def to_yaml(cfg: SweepConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: SweepConfig, path: Path) -> None:
    path.write_text(to_yaml(cfg))
