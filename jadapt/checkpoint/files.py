"""On-disk conventions shared by adapter and training checkpoints.

An adapter checkpoint is a directory ``<dir>/metadata.json`` + ``<dir>/params/`` (orbax).
It becomes visible only by a rename of a complete hidden sibling ``.<name>.tmp-<id>``, so
the path either holds a whole checkpoint or nothing new; a checkpoint being replaced is
moved aside (``.<name>.old-<id>``) only after its successor is complete, and deleted last.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
import uuid
import zlib
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

FORMAT = "jadapt-adapter"
VERSION = 1
SUPPORTED_VERSIONS = (1,)
METADATA_FILE = "metadata.json"
ARRAYS_DIR = "params"
# What ``jadapt train --out`` leaves in a run folder: its best-dev adapter checkpoint, the
# resumable train states, the summary.
RUN_BEST = "best"
METRICS_FILE = "metrics.json"  # what every jadapt command leaves in its --out
RUN_MARKERS = ("checkpoints", METRICS_FILE, "best_metrics.json", "log.jsonl")


class CheckpointError(ValueError):
    """A path that is not a usable jadapt checkpoint; the message names it and what is wrong."""


def _json_default(x: Any):
    if isinstance(x, (np.generic, np.ndarray)) or type(x).__module__.startswith("jax"):
        return np.asarray(x).tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"{type(x).__name__} is not JSON-serialisable")


def crc32(x: np.ndarray) -> int:
    """CRC-32 of an array's bytes: what a checkpoint manifest records per leaf."""
    return zlib.crc32(np.ascontiguousarray(x).view(np.uint8).reshape(-1)) & 0xFFFFFFFF


def finite_json(obj: Any, where: str = "") -> tuple[Any, list[str]]:
    """(``obj`` with every NaN / infinite float replaced by None, the paths replaced).

    JSON has no NaN or Infinity: ``json.dumps`` would write literals that strict readers
    (browsers, jq, most other languages) reject. A reader gets ``null`` and, where the
    writer records them, the list of what was not finite.
    """
    if isinstance(obj, np.ndarray) or type(obj).__module__.startswith("jax"):
        obj = np.asarray(obj).tolist()
    if isinstance(obj, (float, np.floating)) and not math.isfinite(float(obj)):
        return None, [where or "."]
    if isinstance(obj, Mapping):
        out, bad = {}, []
        for k, v in obj.items():
            out[k], b = finite_json(v, f"{where}/{k}" if where else str(k))
            bad += b
        return out, bad
    if isinstance(obj, (list, tuple)):
        out, bad = [], []
        for i, v in enumerate(obj):
            x, b = finite_json(v, f"{where}/{i}" if where else str(i))
            out.append(x)
            bad += b
        return out, bad
    return obj, []


def to_json(obj: Any, what: str) -> str:
    """Strict JSON text of ``obj`` (non-finite floats become null: see ``finite_json``)."""
    try:
        return json.dumps(finite_json(obj)[0], indent=1, default=_json_default, allow_nan=False)
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


def notice(message: str) -> None:
    """One line on stderr for something the user should know but that is not an error."""
    print(f"jadapt: {message}", file=sys.stderr, flush=True)


def write_metrics(out: str | os.PathLike, metrics: Mapping[str, Any]) -> Path:
    """``<out>/metrics.json``, what every jadapt command leaves: atomic (written beside, fsynced,
    renamed) and strict JSON, a NaN or infinite value written as null and its key listed under
    ``non_finite``."""
    out = Path(out)
    clean, bad = finite_json(dict(metrics))
    if bad:
        clean["non_finite"] = bad
    tmp = out / ".metrics.json.tmp"
    write_json(tmp, clean)
    os.replace(tmp, out / METRICS_FILE)
    return out / METRICS_FILE


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


def resolve_checkpoint(directory: str | os.PathLike) -> Path:
    """The adapter checkpoint ``directory`` names, as an absolute path.

    Users hand over the folder they gave ``jadapt train --out``, so a training run folder
    stands for its best-dev checkpoint (said in one line on stderr). A folder holding
    ``metadata.json`` is a checkpoint; anything else is returned as it is, for
    ``read_metadata`` to say what it is instead.
    """
    path = existing_dir(directory)
    if not path.is_dir() or (path / METADATA_FILE).is_file():
        return path
    best = path / RUN_BEST
    if not any((path / m).exists() for m in (RUN_BEST, *RUN_MARKERS)):
        return path
    if not best.exists():
        found = ", ".join(m + ("/" if (path / m).is_dir() else "") for m in RUN_MARKERS if (path / m).exists())
        raise CheckpointError(f"{path} is a training run folder (it holds {found}) but has no {RUN_BEST}/: "
                              "the run has not finished an evaluation yet (rerun the same `jadapt train` "
                              "command to resume it)")
    notice(f"{path} is a training run folder: using its best checkpoint {best}")
    return best


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
        return "; it looks like a Hugging Face model directory: pass it as --model / load it with load_pretrained"
    if any(p.name.isdigit() and p.is_dir() for p in path.iterdir()):
        return (f"; it holds resumable train states: pass the run folder {path.parent} "
                f"or its {RUN_BEST}/ instead")
    return "; pass an adapter checkpoint folder or a `jadapt train --out` folder"


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
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_leftovers(final: Path) -> None:
    """Delete staging / replaced directories that crashed saves left beside ``final``."""
    for pattern in (f".{final.name}.tmp-*", f".{final.name}.old-*"):
        for p in final.parent.glob(pattern):
            shutil.rmtree(p, ignore_errors=True)


def fsync_dir(path: Path) -> None:
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


@contextlib.contextmanager
def quiet_failed_reads() -> Iterator[None]:
    """Around an orbax restore: if it fails, keep the failure to the one error it raises.

    orbax runs a restore's tensorstore reads on a fresh event loop and closes that loop as
    soon as one read fails; the other reads still land afterwards, on tensorstore's threads,
    and each then reports "Event loop is closed" (an unraisable RuntimeError) or "Task
    exception was never retrieved" (asyncio's log), a traceback printed after the clear
    message of the failed restore, or at exit. Those reports are dropped: the restore has
    already failed and said why. The filters stay installed after a failure (the late reads
    may land any time) and are removed after a success.
    """
    previous = sys.unraisablehook
    log, noise = logging.getLogger("asyncio"), _FailedReadLog()

    def hook(unraisable):
        if not _is_closed_loop(unraisable.exc_value):
            previous(unraisable)

    sys.unraisablehook = hook
    log.addFilter(noise)
    yield
    if sys.unraisablehook is hook:  # reached only when the restore succeeded
        sys.unraisablehook = previous
    log.removeFilter(noise)


def _is_closed_loop(exc: BaseException | None) -> bool:
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


class _FailedReadLog(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (str(record.msg).startswith("Task exception was never retrieved")
                    and (_is_closed_loop(exc) or "tensorstore" in str(exc)))
