"""Shared plumbing for study scripts: provenance, resumable run logs, tables, mean ± std.

Every study in ``experiments/`` runs many small trainings and writes a markdown report.
This module holds what they all need and nothing study-specific:

- ``hardware()`` / ``command_line()`` / ``software()``: what the report must say about where
  and how its numbers were made;
- ``RunLog``: a JSON Lines file of finished runs, one object per line, keyed by a stable
  ``run_key``; a restarted study skips keys already there (resume after a kill or a crash);
- ``mean_std`` / ``fmt_mean_std`` / ``markdown_table``: aggregate and print;
- ``Progress``: a one-line progress print with an ETA;
- ``default_data_dir`` / ``write_text_atomic``;
- ``reexec_with_allocator`` / ``enable_compile_cache``: process-level speed settings a
  long study wants (tcmalloc, as the ``jadapt`` CLI; XLA's persistent compilation cache,
  so a resumed study does not recompile).

Pure Python + numpy; nothing here imports JAX, so the helpers are cheap to import in tests.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- provenance
def command_line(argv: Optional[Sequence[str]] = None, python: str = "python") -> str:
    """The command that reproduces this process, relative to the repo root where possible."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]) if argv else Path("?")
    try:
        script_s = str(script.resolve().relative_to(REPO))
    except ValueError:
        script_s = str(script)
    if script_s.endswith(".py") and "/" in script_s and not script_s.startswith("/"):
        head = [python, "-m", script_s[:-3].replace("/", ".")]
    else:
        head = [python, script_s]
    env = [f"{k}={shlex.quote(os.environ[k])}" for k in ("JADAPT_DATA_DIR", "XLA_FLAGS") if os.environ.get(k)]
    return " ".join(env + head + [shlex.quote(a) for a in argv[1:]])


def hardware() -> dict:
    """CPU model, cores this process may use, memory, and JAX's devices (if JAX is loaded)."""
    from jadapt import machine

    info: dict[str, Any] = {"machine": platform.machine(), "cpu_model": machine.cpu_model(),
                            "cpu_bf16": machine.cpu_isa(), "cores_available": machine.cores(),
                            "memory_gb": _memory_gb()}
    try:
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    if "jax" in sys.modules:
        import jax

        devs = jax.devices()
        info["jax_backend"] = jax.default_backend()
        info["jax_devices"] = f"{len(devs)} x {devs[0].device_kind}" if devs else "none"
    return info


def software() -> dict:
    """Versions of the packages a study's numbers depend on (those that are installed)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "flax", "optax", "numpy", "transformers", "jadapt"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    out["git_commit"] = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    out["git_dirty"] = bool(dirty) if dirty is not None else None
    return out


def _memory_gb() -> Optional[float]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _git(*args: str) -> Optional[str]:
    try:
        r = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
        return r.stdout.strip() if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def default_data_dir() -> Optional[Path]:
    """``$JADAPT_DATA_DIR``, else ``../shared/data`` beside the repo, else None."""
    for cand in (os.environ.get("JADAPT_DATA_DIR"), REPO.parent / "shared" / "data"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


# ---------------------------------------------------------------- resumable run log
def run_key(spec: Mapping[str, Any]) -> str:
    """A stable short id of a run's full specification (key order does not matter)."""
    blob = json.dumps(spec, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


class RunLog:
    """Append-only JSON Lines of finished runs; ``done(key)`` says whether to skip one.

    A line is written (and flushed, fsynced) only when a run has finished, so a killed
    study loses at most the run in flight. A torn last line (killed mid-write) is ignored.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.records: list[dict] = []
        if self.path.is_file():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        self.records.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue
        self._keys = {r.get("key") for r in self.records}

    def done(self, key: str) -> bool:
        return key in self._keys

    def append(self, record: Mapping[str, Any]) -> None:
        if "key" not in record:
            raise ValueError("a run record needs a 'key' (experiments.common.run_key of its spec)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rec = dict(record)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, default=_json_default) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records.append(rec)
        self._keys.add(rec["key"])

    def __iter__(self) -> Iterator[dict]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


# ---------------------------------------------------------------- aggregation and tables
def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, sample std (ddof=1; 0 for one value), n), ignoring None / NaN."""
    v = np.asarray([float(x) for x in values if x is not None and not math.isnan(float(x))], dtype=np.float64)
    if not len(v):
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, int(len(v))


def fmt_mean_std(values: Iterable[float], scale: float = 100.0, digits: int = 1, show_n: bool = False) -> str:
    """``"71.3 ± 2.0"`` (values scaled, e.g. accuracy in %); ``"–"`` when there are none."""
    m, s, n = mean_std(values)
    if not n:
        return "–"
    text = f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"
    return f"{text} (n={n})" if show_n else text


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: Optional[str] = None) -> str:
    """A GitHub markdown table; ``align`` is one char per column: l / r / c (default: l then r)."""
    header = [str(h) for h in header]
    rows = [[_cell(c) for c in r] for r in rows]
    for r in rows:
        if len(r) != len(header):
            raise ValueError(f"row has {len(r)} cells, the header {len(header)}: {r}")
    align = align or ("l" + "r" * (len(header) - 1))
    if len(align) != len(header):
        raise ValueError(f"align {align!r} must have one character per column ({len(header)})")
    marks = {"l": "---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks[a] for a in align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _cell(c: Any) -> str:
    if c is None:
        return "–"
    if isinstance(c, float):
        return "–" if math.isnan(c) else f"{c:.4g}"
    return str(c).replace("|", "\\|").replace("\n", " ")


def fmt_duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------- process settings
_REEXEC_MARK = "JADAPT_ALLOCATOR_APPLIED"


def reexec_with_allocator(module: str, argv: Optional[Sequence[str]] = None, default: str = "tcmalloc") -> None:
    """Re-run ``python -m <module> <args>`` once with the allocator ``$JADAPT_ALLOCATOR``
    (else ``default``) preloaded: "tcmalloc" (faster XLA:CPU steps, see ``jadapt.runtime``;
    it also keeps freed memory resident), "system" (glibc, no re-exec) or a library path.
    Only for a real command line: ``main([...])`` called from Python (``argv`` given) never
    replaces the process."""
    if argv is not None or os.environ.get(_REEXEC_MARK):
        return
    from jadapt.runtime import allocator_library

    lib = allocator_library(os.environ.get("JADAPT_ALLOCATOR") or default)
    if not lib or lib in os.environ.get("LD_PRELOAD", ""):
        return
    env = dict(os.environ, **{_REEXEC_MARK: lib})
    env["LD_PRELOAD"] = ":".join(x for x in (lib, os.environ.get("LD_PRELOAD", "")) if x)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(REPO), os.environ.get("PYTHONPATH", "")) if x)
    try:
        os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], env)
    except OSError:
        return


def enable_compile_cache(directory: Optional[str | os.PathLike]) -> None:
    """XLA's persistent compilation cache in ``directory`` (None: leave it off)."""
    if not directory:
        return
    import jax

    Path(directory).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(Path(directory).absolute()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


class Deadline:
    """A grid chunk's time limit (``--max-minutes``): the next run may start unless it would
    end after the limit, judged by the longest run so far; the first run always starts, so a
    chunk shorter than one run still makes progress."""

    def __init__(self, max_minutes: Optional[float]):
        self.at = None if max_minutes is None else time.time() + 60 * max_minutes
        self.longest = 0.0

    def allows_next(self) -> bool:
        return self.at is None or not self.longest or time.time() + self.longest <= self.at

    def ran(self, seconds: float) -> None:
        self.longest = max(self.longest, seconds)


class Timer:
    """Wall and process-CPU seconds (all threads) of a block: ``with Timer() as t: ...``."""

    def __enter__(self):
        self.wall0, self.cpu0 = time.time(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.time() - self.wall0
        self.cpu = time.process_time() - self.cpu0
        return False


# ---------------------------------------------------------------- progress
class Progress:
    """``[12/300] 4.0% elapsed 3.1 min, eta 75 min | <message>`` on stdout, flushed."""

    def __init__(self, total: int, *, already_done: int = 0, stream=None):
        self.total, self.done, self.fresh = int(total), int(already_done), 0
        self.t0 = time.time()
        self.stream = stream or sys.stdout

    def step(self, message: str = "") -> None:
        self.done += 1
        self.fresh += 1
        el = time.time() - self.t0
        left = self.total - self.done
        eta = el / self.fresh * left if self.fresh else math.nan
        pct = 100.0 * self.done / max(self.total, 1)
        print(f"[{self.done}/{self.total}] {pct:.1f}% elapsed {fmt_duration(el)}, eta {fmt_duration(eta)} | {message}",
              file=self.stream, flush=True)


def merge_logs(dest: str | os.PathLike, sources: Sequence[str | os.PathLike]) -> dict:
    """Append to ``dest`` the records of ``sources`` whose key it lacks (runs made elsewhere,
    e.g. a grid chunk on a GPU machine): {"added", "already", "differ": keys held by both
    with other results (``dest``'s record is kept; a rerun on other hardware differs in
    the last digits, so only the scores are compared)}."""
    log = RunLog(dest)
    held = {r["key"]: r for r in log}
    out = {"added": 0, "already": 0, "differ": []}
    for src in sources:
        for rec in RunLog(src):
            key = rec.get("key")
            if key is None:
                continue
            if key in held:
                out["already"] += 1
                mine = {k: v for k, v in held[key].items() if k not in ("wall_s", "cpu_s", "host")}
                theirs = {k: v for k, v in rec.items() if k not in ("wall_s", "cpu_s", "host")}
                if json.dumps(mine, sort_keys=True, default=_json_default) != \
                        json.dumps(theirs, sort_keys=True, default=_json_default):
                    out["differ"].append(key)
                continue
            log.append(rec)
            held[key] = rec
            out["added"] += 1
    return out


def run_host() -> str:
    """Where a run computed: the accelerator's kind, else the CPU model and its bf16 ISA (a
    study's log may hold chunks from several machines)."""
    import jax

    from jadapt import machine

    d = jax.devices()[0]
    return d.device_kind if d.platform != "cpu" else f"{machine.cpu_model()} ({machine.cpu_isa()})"
