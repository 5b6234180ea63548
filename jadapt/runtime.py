"""Process-start choices: the memory allocator, XLA:CPU's scheduler and the compilation cache.

glibc malloc hands XLA:CPU's large per-step buffers back to the kernel and faults them in
again every step; tcmalloc keeps them, which makes train steps faster at a higher peak memory
(benchmarks/RESULTS.md). The allocator can only be chosen before the process starts, so the
CLI re-executes itself once with ``LD_PRELOAD`` set. Switch: ``JADAPT_ALLOCATOR=system`` (keep
glibc) or ``=tcmalloc`` (default; silently skipped when the library is not installed:
``apt-get install libtcmalloc-minimal4``), or a path to another allocator library.

XLA:CPU's concurrency-optimised scheduler (XLA's default) orders a step's operations for
parallel execution at the cost of live memory, and makes ``--remat`` useless on CPU (the
temp buffer stays as large as without it). The CLI turns it off: the train step's temp
buffer shrinks, and with ``--remat`` roughly halves, at an unchanged step time
(benchmarks/RESULTS.md, fifth session).
Switch: ``JADAPT_CPU_SCHEDULER=concurrency`` keeps XLA's default, or set the flag in
``XLA_FLAGS`` yourself. It only concerns the CPU backend, so where a GPU / TPU plugin is
installed it is left out unless ``JADAPT_CPU_SCHEDULER=memory`` asks for it.

Compiled XLA programs are kept across runs in a persistent cache (JAX's
``jax_compilation_cache_dir``): compiling is a large share of a short CPU run (one train and
eval program per length bucket), which a rerun with the same shapes (another seed, learning
rate, task of the same label count) skips. Default ``$XDG_CACHE_HOME/jadapt/xla``
(``~/.cache/jadapt/xla``); ``JADAPT_COMPILATION_CACHE`` names another directory, or ``off``.
Set by the CLI only: code that imports jadapt keeps its own JAX configuration.
"""
from __future__ import annotations

import glob
import os
import sys

_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4",
    "/usr/lib/libtcmalloc_minimal.so.4",
)
_MARK = "JADAPT_ALLOCATOR_APPLIED"


def allocator_library(choice: str | None = None) -> str | None:
    """Path of the allocator to preload for ``choice`` (env ``JADAPT_ALLOCATOR``), or None."""
    choice = (choice or os.environ.get("JADAPT_ALLOCATOR", "tcmalloc")).strip()
    if choice in ("system", "glibc", "none", ""):
        return None
    if choice == "tcmalloc":
        found = [p for p in _CANDIDATES if os.path.exists(p)] or sorted(
            glob.glob("/usr/lib/*/libtcmalloc_minimal.so*"))
        return found[0] if found else None
    if os.path.exists(choice):
        return choice
    raise ValueError(f"JADAPT_ALLOCATOR={choice!r}: expected 'tcmalloc', 'system' or a library path")


def maybe_reexec_with_allocator(argv=None) -> None:
    """Re-exec the current command once with the chosen allocator preloaded.

    Only for the real command line (``argv is None``): ``jadapt.cli.main([...])`` called
    from Python (tests, notebooks) never replaces the calling process.
    """
    if argv is not None or os.environ.get(_MARK):
        return
    try:
        lib = allocator_library()
    except ValueError as e:
        print(f"jadapt: error: {e}", file=sys.stderr)
        raise SystemExit(2)
    if not lib or lib in os.environ.get("LD_PRELOAD", ""):
        return
    env = dict(os.environ, **{_MARK: lib})
    env["LD_PRELOAD"] = ":".join(x for x in (lib, os.environ.get("LD_PRELOAD", "")) if x)
    try:
        os.execve(sys.executable, [sys.executable, "-m", "jadapt.cli", *sys.argv[1:]], env)
    except OSError:
        return  # keep the system allocator rather than fail


CPU_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"


_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin", "libtpu")


def accelerator_plugin_installed() -> bool:
    """True where a GPU / TPU backend for JAX is installed (found without importing it)."""
    import importlib.util

    return any(importlib.util.find_spec(name) is not None for name in _ACCELERATOR_PLUGINS)


def xla_flags(environ=None, *, accelerator: bool | None = None) -> str:
    """``XLA_FLAGS`` for a jadapt command: the user's, plus XLA:CPU's memory-minimising
    scheduler unless they set the flag themselves or ``JADAPT_CPU_SCHEDULER=concurrency``.
    Where a GPU / TPU plugin is installed (``accelerator``; None: look) the flag is only
    added when ``JADAPT_CPU_SCHEDULER=memory`` asks for it: the CPU backend does not run the
    steps there, and the XLA_FLAGS of an accelerator build are left as the user wrote them."""
    env = os.environ if environ is None else environ
    flags = env.get("XLA_FLAGS", "").strip()
    asked = env.get("JADAPT_CPU_SCHEDULER", "").strip()
    if asked not in ("", "memory", "concurrency"):
        raise ValueError(f"JADAPT_CPU_SCHEDULER={asked!r}: expected 'memory' or 'concurrency'")
    if not asked:
        if accelerator is None:
            accelerator = accelerator_plugin_installed()
        asked = "concurrency" if accelerator else "memory"
    if asked == "concurrency" or CPU_SCHEDULER_FLAG in flags:
        return flags
    return " ".join(x for x in (flags, CPU_SCHEDULER_FLAG + "=false") if x)


def apply_xla_flags(argv=None) -> None:
    """Set ``XLA_FLAGS`` to :func:`xla_flags` for the real command line (``argv is None``);
    must run before JAX starts its backends, which read the variable once."""
    if argv is None:
        try:
            os.environ["XLA_FLAGS"] = xla_flags()
        except ValueError as e:
            print(f"jadapt: error: {e}", file=sys.stderr)
            raise SystemExit(2)


def compilation_cache_dir(environ=None) -> str | None:
    """The persistent compilation cache directory the CLI uses (module docstring), or None."""
    env = os.environ if environ is None else environ
    choice = env.get("JADAPT_COMPILATION_CACHE", "").strip()
    if choice.lower() in ("off", "none", "0", "false", "no"):
        return None
    if choice:
        return os.path.abspath(os.path.expanduser(choice))
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jadapt", "xla")


def enable_compilation_cache(argv=None) -> str | None:
    """Point JAX's persistent compilation cache at ``compilation_cache_dir()``; only for the
    real command line (``argv is None``), like the allocator. Returns the directory used."""
    path = compilation_cache_dir() if argv is None else None
    if path is None:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None  # an unwritable cache location costs speed, never the run
    import jax

    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)  # skip trivial programs
    return path
