"""The built-in demo's checkpoints: the case nansearch was born from, in miniature.

EasyEdit's MEND training on BLIP-2/OPT printed "NAN in logits!!!" because the full
multimodal checkpoint ``Salesforce/blip2-opt-2.7b`` was loaded where the language-only
``opt-2.7b`` was expected (zjunlp/EasyEdit#526). The demo builds both kinds, small:

- ``opt-lm``: a language-only OPT, trained briefly on a small synthetic corpus, so it
  is a really trained model.
- ``blip2-full``: a full BLIP-2 checkpoint whose language model is that same trained
  OPT, stored under ``language_model.`` as in the real one.

Loading ``blip2-full`` into ``OPTForCausalLM`` finds none of its weights: every
language-model weight is reported missing and newly initialized. Both are written with
``save_pretrained`` and read back with ``from_pretrained``, the way a user's are.

The build runs on one thread with deterministic algorithms, so a machine builds the same
bytes whatever its thread count. ``build.json`` beside the checkpoints records each
weight file's SHA-256; a cached build is checked against it before use, and rebuilt if
a file changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import torch

from nansearch.corpus import corpus_batch

log = logging.getLogger(__name__)

VERSION = "v3"
NAMES = ("opt-lm", "blip2-full")
BUILD_FILE = "build.json"
WEIGHTS = "model.safetensors"


def cache_root() -> Path:
    root = os.environ.get("NANSEARCH_CACHE") or Path.home() / ".cache" / "nansearch"
    return Path(root) / f"demo-{VERSION}"


def opt_config(**overrides: int):
    """The demo's OPT: small, no dropout (so a trial is deterministic on the CPU), and
    OPT's own special-token ids; ``overrides`` resize it (the overhead benchmark)."""
    from transformers import OPTConfig

    sizes: dict[str, Any] = {
        "vocab_size": 512,
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "ffn_dim": 512,
        "num_attention_heads": 4,
        "max_position_embeddings": 128,
        "word_embed_proj_dim": 128,
        **overrides,
        # not a named argument of OPTConfig in every transformers release: passed through
        # its keyword arguments, as an attribute of the config
        "activation_dropout": 0.0,
    }
    return OPTConfig(
        **sizes,
        dropout=0.0,
        attention_dropout=0.0,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=2,
    )


def train_opt(steps: int = 300, seed: int = 0):
    """A small OPT trained on the arithmetic-progression corpus until it predicts it;
    returns the model and its final training loss."""
    from transformers import OPTForCausalLM

    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = OPTForCausalLM(opt_config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, foreach=False)
    model.train()
    for _ in range(steps):
        ids = corpus_batch(generator, 16, 32, model.config.vocab_size)
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    log.info("demo OPT trained for %d steps, final loss %.4f", steps, loss.item())
    return model.eval(), loss.item()


def blip2_around(language_model):
    """A full BLIP-2 model whose language model is ``language_model``."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    text = language_model.config
    config = Blip2Config(
        vision_config=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        qformer_config=dict(
            hidden_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=128,
            encoder_hidden_size=64,
            vocab_size=text.vocab_size,
        ),
        text_config=text.to_dict(),
        num_query_tokens=4,
        image_token_index=text.vocab_size - 1,
    )
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = Blip2ForConditionalGeneration(config)
    model.language_model.load_state_dict(language_model.state_dict())
    # Query tokens start at zero here; the real checkpoint's are trained. Zero queries
    # make the Q-Former's LayerNorm divide by a zero deviation (eps 1e-12): gradients
    # of 1e18 that have nothing to do with the case this demo reproduces.
    with torch.no_grad():
        model.query_tokens.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(2))
    return model


@contextmanager
def reproducible() -> Iterator[None]:
    """One thread and deterministic algorithms, restored afterwards.

    The thread count decides how a reduction splits its sums, so the same training run
    ends in different weights on 1 and on 2 threads. On one thread it does not depend
    on how many cores the machine has.
    """
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_num_threads(threads)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build(root: Path) -> dict:
    """Build both checkpoints into ``root`` and write ``build.json``; returns its content."""
    with reproducible():
        opt, final_loss = train_opt()
        blip2 = blip2_around(opt)
    opt.save_pretrained(root / "opt-lm")
    blip2.save_pretrained(root / "blip2-full")
    record = {
        "version": VERSION,
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": 1,
        "final_loss": final_loss,
        "sha256": {name: sha256(root / name / WEIGHTS) for name in NAMES},
    }
    (root / BUILD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


# builds this process has checked: root -> the weight files' (size, mtime) when checked
_checked: dict[Path, tuple] = {}


def _stamp(root: Path) -> tuple:
    try:
        return tuple(
            (s.st_size, s.st_mtime_ns) for s in ((root / n / WEIGHTS).stat() for n in NAMES)
        )
    except OSError:
        return ()


def verified(root: Path) -> bool:
    """Whether the build in ``root`` is complete and its weight files are the ones built.

    Hashes the files once per process (again if they change), and logs each hash, so a
    run's log says which demo weights it used.
    """
    stamp = _stamp(root)
    if stamp and _checked.get(root) == stamp:
        return True
    try:
        record = json.loads((root / BUILD_FILE).read_text())
        expected = record["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    for name in NAMES:
        file = root / name / WEIGHTS
        if not (root / name / "config.json").is_file() or not file.is_file():
            return False
        actual = sha256(file)
        if actual != expected.get(name):
            log.warning(
                "demo checkpoint %s: %s has SHA-256 %s, not the %s recorded in %s; rebuilding",
                name,
                file,
                actual[:12],
                str(expected.get(name))[:12],
                root / BUILD_FILE,
            )
            return False
        log.info("demo checkpoint %s: %s sha256 %s", name, file, actual)
    _checked[root] = stamp
    return True


def demo_checkpoint(name: str) -> Path:
    """The folder of demo checkpoint ``name``, built on first use and checked on every use."""
    if name not in NAMES:
        from nansearch.errors import NansearchError

        raise NansearchError(
            f"demo:{name}: no such demo checkpoint; valid: " + ", ".join(f"demo:{n}" for n in NAMES)
        )
    root = cache_root()
    if root.exists() and not verified(root):
        # an interrupted build or a changed file: move it aside, then build afresh
        stale = Path(tempfile.mkdtemp(prefix=".stale-", dir=root.parent))
        with suppress(OSError):  # another process moved or rebuilt it first
            root.rename(stale / root.name)
        shutil.rmtree(stale, ignore_errors=True)
    if not root.exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".building-", dir=root.parent))
        log.info("building the demo checkpoints in %s (once)", root)
        record = build(staging)
        try:
            staging.rename(root)
        except OSError:  # another process finished first
            shutil.rmtree(staging, ignore_errors=True)
        else:
            for n in NAMES:
                log.info("demo checkpoint %s: built, sha256 %s", n, record["sha256"][n])
    return root / name
