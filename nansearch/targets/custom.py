"""A user's own training code, named as ``package.module:function`` or ``file.py:function``.

The function is called as ``function(checkpoint, options)`` and returns ``(model, batch)``:
a ``torch.nn.Module`` in float32 and a dict of tensors. ``model(**batch)`` must return
the logits (a tensor, or an object or dict with ``logits``), and the loss as ``loss`` when
it computes one; otherwise nansearch takes the cross-entropy against ``batch["labels"]``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nansearch.config.schema import TargetConfig
from nansearch.errors import NansearchError
from nansearch.targets._base import Loaded, Target


def refuse_standard_library(module_name: str, what: str, spec: str) -> None:
    """A code reference must name the user's own code: a function of Python's standard
    library (``builtins:exec``, ``os:system``, ``subprocess:run``) would run whatever the
    config's other values hold, so a config, or a database a stored config comes from,
    could run code that no file of the user's names."""
    top = module_name.partition(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        raise NansearchError(
            f"{what}={spec!r}: {module_name} is part of Python's standard library; name a "
            "module or .py file of your own (package.module:function or path/to/file.py:function)"
        )


def import_module_safely(module_name: str, what: str, spec: str):
    """Import ``module_name``; any error it raises as it loads becomes one line."""
    refuse_standard_library(module_name, what, spec)
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise NansearchError(f"{what}={spec!r}: cannot import {module_name}: {exc}") from None
    except Exception as exc:
        raise NansearchError(
            f"{what}={spec!r}: importing {module_name} raised {type(exc).__name__}: {exc}"
        ) from None


def exec_file(path: Path, name: str, what: str, spec: str):
    """Load the ``.py`` file at ``path`` as module ``name``; its errors become one line."""
    loader_spec = importlib.util.spec_from_file_location(name, path.resolve())
    if loader_spec is None or loader_spec.loader is None:
        raise NansearchError(f"{what}={spec!r}: {path} cannot be loaded as a Python file")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise NansearchError(
            f"{what}={spec!r}: running {path} raised {type(exc).__name__}: {exc}"
        ) from None
    return module


def function_spec(cfg: TargetConfig) -> str:
    """``target.fn``, which a custom or function target cannot do without."""
    if not cfg.fn:
        raise NansearchError(
            f"target.fn: a {cfg.kind} target needs 'package.module:function' or "
            "'path/to/file.py:function'"
        )
    return cfg.fn


def import_callable(spec: str, what: str):
    """Resolve ``package.module:name`` or ``path/to/file.py:name``."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise NansearchError(
            f"{what}={spec!r}: write it as 'package.module:function' or 'path/to/file.py:function'"
        )
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise NansearchError(f"{what}={spec!r}: no such file {path}")
        name = f"nansearch_user_{path.stem}"
        module = sys.modules.get(name)
        if module is None or getattr(module, "__file__", None) != str(path.resolve()):
            module = exec_file(path, name, what, spec)
    else:
        module = import_module_safely(module_name, what, spec)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise NansearchError(f"{what}={spec!r}: {module_name} has no function {attr!r}")
    return fn


class TargetBuildError(Exception):
    """The user's target function raised as it built the model and batch for a checkpoint.

    Its message is one line: the function, the exception and the line of the user's file it
    passed through last. Not a :class:`NansearchError`, so a trial records its traceback too.
    """

    def __init__(self, spec: str, checkpoint: str, exc: Exception, code_file: str | None = None):
        self.spec, self.checkpoint = spec, checkpoint
        self.file, _, self.function = spec.rpartition(":")
        # the last line of the user's own file that the error passed through
        own = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == code_file]
        self.line = f"{own[-1].filename}:{own[-1].lineno}" if own else None
        text = " ".join(str(exc).split())  # one line, however many the message had
        if len(text) > 240:
            text = text[:240] + "..."
        self.message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        super().__init__(
            f"target.fn={spec!r}: {self.function}() in {self.file} raised {self.message} "
            f"as it built checkpoint {checkpoint!r}" + (f" (at {self.line})" if self.line else "")
        )


class CustomTarget(Target):
    name = "custom"

    def __init__(self, cfg: TargetConfig):
        self.cfg = cfg
        self.spec = function_spec(cfg)
        self.fn = import_callable(self.spec, "target.fn")

    def load(self, checkpoint: str) -> Loaded:
        try:
            built = self.fn(checkpoint, dict(self.cfg.options))
        except Exception as exc:
            code = getattr(self.fn, "__code__", None)
            where = code.co_filename if code is not None else None
            raise TargetBuildError(self.spec, checkpoint, exc, where) from exc
        if not (isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], nn.Module)):
            raise NansearchError(
                f"target.fn={self.cfg.fn!r} must return (model, batch), got {type(built).__name__}"
            )
        model, batch = built
        return Loaded(model=model, checkpoint=checkpoint, batch=dict(batch))

    def make_batch(self, model: nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
        raise NansearchError("a custom target's batch comes from target.fn")

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]):
        out = model(**batch)
        logits = (
            out
            if torch.is_tensor(out)
            else (out["logits"] if isinstance(out, dict) else out.logits)
        )
        loss = out.get("loss") if isinstance(out, dict) else getattr(out, "loss", None)
        if loss is None:
            labels = batch["labels"]
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100
            )
        return logits, loss
