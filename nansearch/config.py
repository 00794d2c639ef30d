"""Sweep configuration: typed defaults < YAML file < dotted command-line overrides.

Every problem in a sweep file is collected and reported in one :class:`ConfigError`
that names each bad key and what would be valid, instead of stopping at the first.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class NansearchError(Exception):
    """An error caused by the user's input: printed as one message, without a traceback."""


class ConfigError(NansearchError):
    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


TARGET_KINDS = ("causal-lm", "blip2", "custom", "function", "command")
# what a command target's templates and config keys can name besides the factors
COMMAND_VALUES = ("seed", "steps", "config", "checkpoint_level", "param_dtype", "autocast_dtype")
DTYPES = ("fp32", "bf16", "fp16", "amp-fp16", "amp-bf16")


@dataclass
class TargetConfig:
    """What is trained."""

    kind: str = "causal-lm"  # causal-lm | blip2 | custom | function
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
    timeout: float = 600.0  # seconds a trial's process may run
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
    scheme: str = "pretrained"  # pretrained | normal | uninitialized-missing
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
    isolate; -1 picks a size from the budget (see :func:`nansearch.search.phases.plan`)."""

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
    plugins: list[str] = field(default_factory=list)  # modules or files that register levels
    target: TargetConfig = field(default_factory=TargetConfig)
    factors: FactorsConfig = field(default_factory=FactorsConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    @property
    def study_dir(self) -> Path:
        return Path(self.out) / self.study


def _nest(path: list[str], value: Any) -> dict:
    for key in reversed(path):
        value = {key: value}
    return value


def _struct_keys(schema: DictConfig, path: list[str]) -> list[str] | None:
    """The keys allowed at ``path`` when its parent is a typed section, else None."""
    node: Any = schema
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, DictConfig) else None
    if isinstance(node, DictConfig) and node._metadata.object_type not in (None, dict):
        return [str(k) for k in node]
    return None


def _merge_each(schema: DictConfig, data: dict, path: list[str]) -> list[str]:
    """Merge subtree by subtree, descending only into failures, so every bad key is found.

    Keys travel as nested mappings, never as dotted strings: a level may be named
    ``opt-2.7b``.
    """
    problems = []
    for key, value in data.items():
        here = [*path, str(key)]
        patch = OmegaConf.create(_nest(here, value))
        try:
            OmegaConf.merge(schema, patch)
        except OmegaConfBaseException as exc:
            name = ".".join(here)
            allowed = _struct_keys(schema, here)
            if allowed is not None and here[-1] not in allowed:
                problems.append(f"{name}: unknown key (valid keys here: {', '.join(allowed)})")
                continue
            if isinstance(value, dict) and value:
                problems += _merge_each(schema, value, here)
                continue
            problems.append(f"{name}={value!r}: {str(exc).splitlines()[0]}")
            continue
        schema.merge_with(patch)
    return problems


def _check_values(cfg: SweepConfig) -> list[str]:
    problems = []
    if cfg.trials < 1:
        problems.append(f"trials={cfg.trials}: must be at least 1")
    if cfg.steps < 1:
        problems.append(f"steps={cfg.steps}: must be at least 1")
    if not cfg.study or "/" in cfg.study or cfg.study.startswith("."):
        problems.append(f"study={cfg.study!r}: must be a plain folder name")
    if cfg.workers < 1:
        problems.append(f"workers={cfg.workers}: must be at least 1")
    if cfg.threads < 1:
        problems.append(
            f"threads={cfg.threads}: must be at least 1 (torch CPU threads per worker; default 1)"
        )
    if cfg.heartbeat.interval < 1 or cfg.heartbeat.grace <= cfg.heartbeat.interval:
        problems.append(
            f"heartbeat: need interval >= 1 and grace > interval (seconds), got "
            f"interval={cfg.heartbeat.interval}, grace={cfg.heartbeat.grace}"
        )
    if cfg.device not in ("auto", "cpu", "cuda"):
        problems.append(f"device={cfg.device!r}: valid values are auto, cpu, cuda")
    if cfg.target.kind not in TARGET_KINDS:
        problems.append(
            f"target.kind={cfg.target.kind!r}: valid values are {', '.join(TARGET_KINDS)}"
        )
    if cfg.target.kind in ("custom", "function") and not cfg.target.fn:
        problems.append(
            f"target.fn: a {cfg.target.kind} target needs 'package.module:function' or "
            "'path/to/file.py:function'"
        )
    if cfg.target.kind == "command":
        problems += _check_command(cfg)
    if cfg.target.batch_size < 1 or cfg.target.seq_len < 2:
        problems.append("target.batch_size must be >= 1 and target.seq_len >= 2")
    for level in cfg.factors.dtype.levels:
        if level not in DTYPES:
            problems.append(
                f"factors.dtype.levels: {level!r} is not a dtype level; "
                f"valid levels are {', '.join(DTYPES)}"
            )
    if not cfg.factors.dtype.levels:
        problems.append(f"factors.dtype.levels: empty; name at least one of {', '.join(DTYPES)}")
    if not cfg.factors.batch.levels and not cfg.factors.batch.files:
        problems.append(
            "factors.batch.levels: empty; name at least one level (clean, for the target's "
            "own batch) or a file under factors.batch.files"
        )
    lr = cfg.factors.lr
    if not 0 < lr.low <= lr.high:
        problems.append(f"factors.lr: need 0 < low <= high, got low={lr.low}, high={lr.high}")
    if not cfg.factors.checkpoint.levels:
        problems.append(
            "factors.checkpoint.levels: name at least one checkpoint (level name: folder or hub id)"
        )
    for name, scheme in cfg.factors.init.levels.items():
        valid = ("pretrained", "normal", "uninitialized-missing")
        if scheme.scheme not in valid:
            problems.append(
                f"factors.init.levels.{name}.scheme={scheme.scheme!r}: "
                f"valid schemes are {', '.join(valid)}"
            )
    if cfg.optimizer.name not in ("adamw", "adam", "sgd"):
        problems.append(f"optimizer.name={cfg.optimizer.name!r}: valid values are adamw, adam, sgd")
    # YAML reads a bare `off` as false and `on` as true
    cfg.tracking.wandb = {"False": "off", "True": "online"}.get(
        cfg.tracking.wandb, cfg.tracking.wandb
    )
    if cfg.tracking.wandb not in (None, "offline", "online", "off"):
        problems.append(
            f"tracking.wandb={cfg.tracking.wandb!r}: valid values are offline, online, off"
        )
    if cfg.search.sampler not in ("tpe", "random"):
        problems.append(f"search.sampler={cfg.search.sampler!r}: valid values are tpe, random")
    for key in ("cover", "confirm", "isolate"):
        value = getattr(cfg.search, key)
        if value < -1:
            problems.append(f"search.{key}={value}: a number of trials, or -1 for a share of them")
    fixed = sum(max(getattr(cfg.search, k), 0) for k in ("cover", "confirm", "isolate"))
    if fixed > cfg.trials:
        problems.append(
            f"search.cover + search.confirm + search.isolate = {fixed}: more than "
            f"trials={cfg.trials}; they share the trial budget"
        )
    if cfg.search.seeds < 1:
        problems.append(f"search.seeds={cfg.search.seeds}: at least 1 fresh seed per rerun")
    for key in ("horizon", "verify_steps"):
        value = getattr(cfg.search, key)
        if value == 0 or value < -1:
            problems.append(f"search.{key}={value}: a number of steps, or -1 for ten times steps")
    if cfg.search.patience < 0:
        problems.append(
            f"search.patience={cfg.search.patience}: a number of trials, or 0 to never stop early"
        )
    return problems


def _check_command(cfg: SweepConfig) -> list[str]:
    """A command target's program, templates, config file and keys, each checked by name."""
    import string

    target = cfg.target
    problems = []
    if not target.program:
        problems.append("target.program: a command target needs the script to run (a .py file)")
    elif not Path(target.program).is_file():
        problems.append(f"target.program={target.program!r}: no such file")
    factors = ["checkpoint", "dtype", "lr", "init", "batch", *cfg.factors.extra]
    names = [*factors, *COMMAND_VALUES]
    templates = {
        "target.args": target.args,
        **{f"target.env.{k}": v for k, v in target.env.items()},
    }
    for key, text in templates.items():
        try:
            named = {
                m.group("named") or m.group("braced")
                for m in string.Template.pattern.finditer(str(text))
                if m.group("named") or m.group("braced")
            }
        except ValueError as exc:
            problems.append(f"{key}={text!r}: {exc}")
            continue
        for name in sorted(named - set(names)):
            problems.append(
                f"{key}={text!r}: ${{{name}}} is not a factor or value; valid names are "
                f"{', '.join(names)}"
            )
    for name in target.keys:
        if name not in names:
            problems.append(
                f"target.keys.{name}: not a factor or value; valid names are {', '.join(names)}"
            )
    if target.config:
        source = Path(target.config)
        if not source.is_file():
            problems.append(f"target.config={target.config!r}: no such file")
        else:
            try:
                data = OmegaConf.load(source)
            except Exception as exc:  # yaml errors come in many classes
                problems.append(f"target.config={target.config!r}: not valid YAML or JSON: {exc}")
            else:
                for name, dotted in target.keys.items():
                    if OmegaConf.select(data, dotted, default=_ABSENT) is _ABSENT:
                        problems.append(
                            f"target.keys.{name}={dotted!r}: no key {dotted} in {target.config}"
                        )
        uses = [target.args, *target.env.values()]
        if not any("${config}" in text or "$config" in text for text in uses):
            problems.append(
                "target.config: name ${config} in target.args or target.env, where the "
                "script takes its config file; each trial gets its own copy"
            )
    elif target.keys:
        problems.append("target.keys: needs target.config, the file the keys are written into")
    if target.start not in ("fork", "spawn"):
        problems.append(f"target.start={target.start!r}: valid values are fork, spawn")
    if target.timeout <= 0:
        problems.append(f"target.timeout={target.timeout}: seconds, more than 0")
    if target.nan_pattern:
        try:
            re.compile(target.nan_pattern)
        except re.error as exc:
            problems.append(f"target.nan_pattern={target.nan_pattern!r}: {exc}")
    return problems


_ABSENT = object()


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A sweep file as a dict, with the files named by its ``include`` merged in first.

    ``include`` lists YAML files (relative to the including file) that hold shared
    pieces, such as those in ``configs/``; the including file's own keys win.
    """
    if not path.is_file():
        raise NansearchError(f"{path}: no such sweep file")
    if path.resolve() in seen:
        raise NansearchError(f"{path}: includes itself")
    try:
        data = OmegaConf.load(path)
    except Exception as exc:  # yaml errors come in many classes
        raise NansearchError(f"{path}: not valid YAML: {exc}") from None
    if isinstance(data, ListConfig):
        raise NansearchError(f"{path}: a sweep file is a mapping of keys, not a list")
    data = OmegaConf.to_container(data) or {}
    includes = data.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    merged = OmegaConf.create({})
    for name in includes:
        part = read_yaml(path.parent / name, (*seen, path.resolve()))
        merged = OmegaConf.merge(merged, part)
    return OmegaConf.to_container(OmegaConf.merge(merged, data))


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> SweepConfig:
    """Read a sweep: structured defaults, then the YAML file, then ``key=value`` overrides."""
    data = read_yaml(Path(path)) if path is not None else {}
    return _build(data, overrides, str(path) if path else "overrides")


def config_from_yaml(text: str, source: str, overrides: list[str] = ()) -> SweepConfig:
    """A configuration written by :func:`to_yaml` (kept in a study's storage), checked again."""
    try:
        data = OmegaConf.to_container(OmegaConf.create(text))
    except Exception as exc:  # yaml errors come in many classes
        raise NansearchError(f"{source}: not a valid configuration: {exc}") from None
    if not isinstance(data, dict):
        raise NansearchError(f"{source}: not a valid configuration (not a mapping)")
    return _build(data, overrides, source)


def _literal(value: Any) -> Any:
    """A command target's template kept as written: OmegaConf would resolve ``${lr}`` itself."""
    if isinstance(value, str):
        return re.sub(r"(?<!\\)\$\{", r"\\${", value)
    if isinstance(value, dict):
        return {k: _literal(v) for k, v in value.items()}
    return value


def _templates_literal(data: dict[str, Any]) -> dict[str, Any]:
    target = data.get("target")
    if not isinstance(target, dict):
        return data
    target = {k: _literal(v) if k in ("args", "env") else v for k, v in target.items()}
    return {**data, "target": target}


def _build(data: dict[str, Any], overrides: list[str], source: str) -> SweepConfig:
    schema = OmegaConf.structured(SweepConfig)
    problems = _merge_each(schema, _templates_literal(data), [])
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            problems.append(f"override {item!r}: write it as dotted.key=value")
            continue
        if key == "target.args" or key.startswith("target.env."):
            value = _literal(value)
        value = OmegaConf.to_container(OmegaConf.from_dotlist([f"x={value}"]))["x"]
        problems += _merge_each(schema, {key.split(".")[0]: _nest(key.split(".")[1:], value)}, [])
    # the schema took only the valid parts, so the values can be checked as well
    cfg: SweepConfig = OmegaConf.to_object(schema)
    problems += _check_values(cfg)
    if problems:
        raise ConfigError(source, problems)
    return cfg


def to_yaml(cfg: SweepConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: SweepConfig, path: Path) -> None:
    path.write_text(to_yaml(cfg))
