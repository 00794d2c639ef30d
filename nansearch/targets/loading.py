"""Where a checkpoint name points, and reading its weight files safely.

Weight files are read safetensors first; a torch pickle only with ``weights_only=True``,
which refuses any object that would run code while unpickling. A file that is missing,
truncated, corrupt or unsafe raises :class:`CheckpointError`, naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nansearch.errors import NansearchError

DEMO_PREFIX = "demo:"

# what from_pretrained reads in a folder, in the order it prefers them: (single file, index)
WEIGHT_FILES = (
    ("model.safetensors", "model.safetensors.index.json"),
    ("pytorch_model.bin", "pytorch_model.bin.index.json"),
)


class CheckpointError(NansearchError):
    """A checkpoint that cannot be read safely; names the file and, once known, the level.

    ``mismatched`` lists ``(key, shape in the checkpoint, shape the class expects)`` when
    the checkpoint was refused for tensors of the wrong shape.
    """

    def __init__(
        self,
        file: str | Path,
        reason: str,
        level: str | None = None,
        mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = (),
    ):
        self.file, self.reason, self.level = str(file), reason, level
        self.mismatched = tuple(mismatched)
        where = f"factors.checkpoint.levels.{level}: " if level else ""
        super().__init__(f"{where}{self.file}: {reason}")

    def at_level(self, level: str) -> CheckpointError:
        """The same error, naming the sweep level that points at the file."""
        return CheckpointError(self.file, self.reason, level, self.mismatched)


@dataclass(frozen=True)
class StoredTensor:
    """A tensor as a weight file stores it, read from the file's header only."""

    dtype: str  # torch's name, e.g. "float32", "bfloat16"
    shape: tuple[int, ...]


def resolve_checkpoint(checkpoint: str) -> str:
    """A path or hub id that ``from_pretrained`` accepts; builds demo checkpoints on first use."""
    if checkpoint.startswith(DEMO_PREFIX):
        from nansearch.demo import demo_checkpoint

        return str(demo_checkpoint(checkpoint[len(DEMO_PREFIX) :]))
    path = Path(checkpoint).expanduser()
    if path.exists():
        return str(path)
    if checkpoint.startswith((".", "/", "~")):
        raise CheckpointError(path, "no such file or folder")
    return checkpoint  # a hub id


def weight_files(folder: Path) -> list[Path]:
    """The weight files ``from_pretrained`` reads from ``folder``: safetensors first."""
    for single, index in WEIGHT_FILES:
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            try:
                shards = json.loads((folder / index).read_text())["weight_map"].values()
            except (ValueError, KeyError, AttributeError) as exc:
                raise CheckpointError(folder / index, f"not a valid shard index: {exc}") from None
            return [folder / name for name in sorted(set(shards))]
    return []


# safetensors' dtype names -> torch's
SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def read_header(file: Path) -> dict[str, StoredTensor]:
    """Every tensor's name, dtype and shape in one weight file, without reading the weights.

    Safetensors headers are checked against the file's length, so a truncated file is
    refused here; a torch pickle is opened with ``weights_only=True`` onto the meta device.
    """
    if not file.is_file():
        raise CheckpointError(file, "no such file (named by the checkpoint's shard index)")
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            stored = {}
            with safe_open(str(file), framework="pt") as fh:
                for key in fh.keys():  # noqa: SIM118  (safe_open is not iterable)
                    view = fh.get_slice(key)
                    dtype = view.get_dtype()
                    stored[key] = StoredTensor(
                        SAFETENSORS_DTYPES.get(dtype, dtype), tuple(view.get_shape())
                    )
            return stored
        except Exception as exc:  # SafetensorError and OSError alike
            raise CheckpointError(
                file, f"truncated or corrupt safetensors file ({exc}); save or download it again"
            ) from None
    import pickle

    import torch

    try:
        state = torch.load(file, map_location="meta", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = next((line for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise CheckpointError(
            file,
            "refused: this pickle would run code or build objects other than tensors while "
            f"loading ({first.strip()}); convert it to safetensors from a trusted source",
        ) from None
    except Exception as exc:
        raise CheckpointError(
            file, f"truncated or corrupt torch checkpoint ({str(exc).splitlines()[0]})"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(file, f"holds a {type(state).__name__}, not a dict of tensors")
    return {
        key: StoredTensor(str(value.dtype).removeprefix("torch."), tuple(value.shape))
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
    }


def stored_tensors(path: str | Path) -> dict[str, StoredTensor] | None:
    """The tensors a local checkpoint stores (a folder or one weight file); None for a hub id."""
    path = Path(path)
    if path.is_file():
        return read_header(path)
    if not path.is_dir():
        return None
    stored: dict[str, StoredTensor] = {}
    for file in weight_files(path):
        stored.update(read_header(file))
    return stored


def stored_config(path: str | Path) -> dict[str, Any] | None:
    """The ``config.json`` of a local checkpoint folder, when it has one."""
    file = Path(path) / "config.json"
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except ValueError as exc:
        raise CheckpointError(file, f"not valid JSON: {exc}") from None


def from_pretrained(cls, checkpoint: str, **kwargs):
    """``cls.from_pretrained`` on a checkpoint name, safely; returns ``(model, loading_info)``.

    A local checkpoint's weight files are checked first (truncation, unsafe pickles),
    so a bad file is named in the error rather than failing deep inside transformers.
    """
    path = resolve_checkpoint(checkpoint)
    if Path(path).is_dir():
        stored_tensors(path)
    safe = {"output_loading_info": True, "use_safetensors": None, "weights_only": True}
    try:
        return cls.from_pretrained(path, **safe, **kwargs)
    except NansearchError:
        raise
    except Exception as exc:  # transformers reports a bad checkpoint in many classes
        if "ignore_mismatched_sizes" in str(exc):  # transformers' advice on a shape mismatch
            raise _mismatch(cls, path, {**safe, **kwargs}) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            path, f"{cls.__name__}.from_pretrained failed: {type(exc).__name__}: {first}"
        ) from None


def _mismatch(cls, path: str, kwargs: dict[str, Any]) -> CheckpointError:
    """The error for a checkpoint refused for tensor shapes, naming each tensor."""
    _, info = cls.from_pretrained(path, ignore_mismatched_sizes=True, **kwargs)
    mismatched = tuple(
        sorted(
            (key, tuple(stored), tuple(expected))
            for key, stored, expected in info["mismatched_keys"]
        )
    )
    shown = ", ".join(f"{k} {list(a)} where the class has {list(b)}" for k, a, b in mismatched[:3])
    more = f" and {len(mismatched) - 3} more" if len(mismatched) > 3 else ""
    return CheckpointError(
        path,
        f"{len(mismatched)} tensors do not fit {cls.__name__}: {shown}{more}",
        mismatched=mismatched,
    )
