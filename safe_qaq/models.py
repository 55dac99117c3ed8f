"""One way to name a model: resolve a ``--model`` argument, and fingerprint what a model folder holds.

Every CLI that loads a model (``evaluate``, ``sample``, ``live``, ``budget``) goes through
:func:`resolve_model`: the local backends load a local folder, the ``openai`` backend takes the
served model name.  A folder that does not exist is one line naming it, never a hub lookup:
nothing here reaches the network at run time (ms-swift would otherwise try the hub, retrying
for seconds, and end in a network traceback).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# What decides token counts: a stage's merged model carries the base model's copies of these.
TOKENIZER_FILES = (
    "tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "added_tokens.json",
    "special_tokens_map.json", "preprocessor_config.json",
)  # fmt: skip
GET_WEIGHTS = "get hub weights first, e.g. `modelscope download --model Qwen/Qwen2-Audio-7B-Instruct --local_dir DIR`"


class ModelError(ValueError):
    """A model argument that names nothing loadable (the message names it and says why, in one line)."""


def resolve_model(model: str | None, *, backend: str = "pt", what: str = "model") -> str | None:
    """The model to load, checked before anything is imported or downloaded.

    ``backend="openai"``: the served model name, as given (None: the server's first model).
    Otherwise a local folder: a model (``what="model"``) needs its ``config.json``; an adapter
    (``what="adapter"``) only has to be a folder.  Returned as given, so the names a run records
    do not change (``~`` expanded); :class:`ModelError` otherwise.
    """
    if backend == "openai":
        return model
    if not model:
        raise ModelError(f"no {what} given: the local backends load a {what} folder")
    folder = Path(model).expanduser()
    if not folder.exists():
        raise ModelError(
            f"{what} folder {model} does not exist; models load from local folders, never from a hub ({GET_WEIGHTS})"
        )
    if not folder.is_dir():
        raise ModelError(f"{what} {model} is a file, not a folder (a {what} is a folder of weights and config)")
    if what == "model" and not (folder / "config.json").is_file():
        raise ModelError(
            f"{what} folder {model} has no config.json, so it is not a model (a checkpoint's parent folder?)"
        )
    return model if folder == Path(model) else str(folder)


def max_positions(model: str) -> int | None:
    """``max_position_embeddings`` from a local model's config.json (None without one): a cheap early check."""
    path = Path(model) / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ms-swift names what is wrong with it when it loads the model
        return None
    value = (config.get("text_config") or {}).get("max_position_embeddings", config.get("max_position_embeddings"))
    return int(value) if value else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_fingerprint(model: str | None) -> dict[str, Any] | None:
    """What a local model (or adapter) folder holds; None for a served model name (nothing local to look at).

    * ``weights``: ``[name, size, mtime_ns]`` per weight file, which tells a retrained model from
      the one before (sizes and mtimes rather than a hash: hashing 15 GB of weights on every run
      would cost more than it protects; retraining into a folder rewrites its files);
    * ``tokenizer``: SHA-256 per tokenizer file (what token counts depend on; a few MB);
    * ``positions``: ``max_position_embeddings``.
    """
    folder = Path(model) if model else None
    if folder is None or not folder.is_dir():
        return None
    weights = [
        [f.name, f.stat().st_size, f.stat().st_mtime_ns]
        for f in sorted(folder.iterdir())
        if f.is_file() and f.suffix in WEIGHT_SUFFIXES
    ]
    tokenizer = {name: _sha256(folder / name) for name in TOKENIZER_FILES if (folder / name).is_file()}
    return {
        "path": str(folder.resolve()),
        "weights": weights,
        "tokenizer": tokenizer,
        "positions": max_positions(model),
    }
