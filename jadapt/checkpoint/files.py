"""On-disk conventions shared by adapter and training checkpoints.

An adapter checkpoint is a directory ``<dir>/metadata.json`` + ``<dir>/params/`` (orbax).
It becomes visible only by a rename of a complete hidden sibling ``.<name>.tmp-<id>``, so
the path either holds a whole checkpoint or nothing new; a checkpoint being replaced is
moved aside (``.<name>.old-<id>``) only after its successor is complete, and deleted last.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping

import numpy as np

FORMAT = "jadapt-adapter"
VERSION = 1
SUPPORTED_VERSIONS = (1,)
METADATA_FILE = "metadata.json"
ARRAYS_DIR = "params"


class CheckpointError(ValueError):
    """A path that is not a usable jadapt checkpoint; the message names it and what is wrong."""


def _json_default(x: Any):
    if isinstance(x, (np.generic, np.ndarray)) or type(x).__module__.startswith("jax"):
        return np.asarray(x).tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"{type(x).__name__} is not JSON-serialisable")


def to_json(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, indent=1, default=_json_default)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be JSON-serialisable: {e}") from e


def check_metadata(metadata: Mapping[str, Any]) -> dict:
    """A copy of ``metadata`` with ``format`` / ``version`` filled in (and checked if given)."""
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    meta = {"format": FORMAT, "version": VERSION, **metadata}
    if meta["format"] != FORMAT:
        raise ValueError(f"metadata format must be {FORMAT!r}, got {meta['format']!r}")
    if meta["version"] not in SUPPORTED_VERSIONS:
        raise ValueError(f"metadata version {meta['version']!r} is not supported; expected one of {SUPPORTED_VERSIONS}")
    if "arrays" in meta:
        raise ValueError("metadata key 'arrays' is reserved for the checkpoint's array manifest")
    return json.loads(to_json(meta, "metadata"))


def write_json(path: Path, obj: Any) -> None:
    """Write and fsync, so a later rename never publishes an unwritten file."""
    data = to_json(obj, str(path))
    with open(path, "w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def existing_dir(directory: str | os.PathLike) -> Path:
    """``directory`` as an absolute path, or FileNotFoundError (with a recovery hint)."""
    path = Path(directory).expanduser().absolute()
    if not path.exists():
        hint = ""
        old = sorted(path.parent.glob(f".{path.name}.old-*")) if path.parent.is_dir() else []
        if old:
            hint = f"; an interrupted save left the previous checkpoint at {old[-1]} (rename it back)"
        raise FileNotFoundError(f"no jadapt checkpoint at {path}: the path does not exist{hint}")
    return path


def read_metadata(path: Path) -> dict:
    """The parsed, format- and version-checked ``metadata.json`` of checkpoint ``path``."""
    if not path.is_dir():
        raise CheckpointError(f"not a jadapt checkpoint: {path} (a file, not a checkpoint directory)")
    f = path / METADATA_FILE
    if not f.is_file():
        raise CheckpointError(f"not a jadapt checkpoint: {path} (missing {METADATA_FILE}){_what_it_is(path)}")
    try:
        meta = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"truncated or corrupt jadapt checkpoint: {f} is not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"not a jadapt checkpoint: {path} "
                              f"({METADATA_FILE} has format {got!r}, expected {FORMAT!r})")
    if meta.get("version") not in SUPPORTED_VERSIONS:
        raise CheckpointError(f"unsupported jadapt checkpoint version {meta.get('version')!r} in {f}; "
                              f"this jadapt reads version(s) {list(SUPPORTED_VERSIONS)} (upgrade jadapt?)")
    return meta


def _what_it_is(path: Path) -> str:
    if (path / "config.json").is_file():
        return "; it looks like a Hugging Face model directory: load it with load_pretrained"
    if any(p.name.isdigit() and p.is_dir() for p in path.iterdir()):
        return "; it looks like a training-checkpoint directory: use TrainCheckpointer"
    return ""


def check_replaceable(path: Path) -> None:
    """Refuse to overwrite anything but an empty directory or a jadapt checkpoint."""
    if not path.exists():
        return
    if path.is_dir() and (not any(path.iterdir()) or (path / METADATA_FILE).is_file()):
        return
    raise FileExistsError(f"refusing to overwrite {path}: it exists and is not a jadapt checkpoint")


def staging_dir(final: Path) -> Path:
    """A fresh hidden directory beside ``final`` (same filesystem, so renames are atomic)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:12]}")
    tmp.mkdir()
    return tmp


def publish(tmp: Path, final: Path) -> None:
    """Make the complete directory ``tmp`` appear at ``final``, replacing what was there."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:12]}")
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        if old is not None and not final.exists():
            os.rename(old, final)
        raise
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_leftovers(final: Path) -> None:
    """Delete staging / replaced directories that crashed saves left beside ``final``."""
    for pattern in (f".{final.name}.tmp-*", f".{final.name}.old-*"):
        for p in final.parent.glob(pattern):
            shutil.rmtree(p, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
