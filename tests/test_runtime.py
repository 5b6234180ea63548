"""Process-start choices of the CLI (jadapt/runtime.py): allocator and compilation cache."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from jadapt import runtime


def test_allocator_choice():
    assert runtime.allocator_library("system") is None
    assert runtime.allocator_library(sys.executable) == sys.executable  # any existing library path
    with pytest.raises(ValueError, match="JADAPT_ALLOCATOR='jemallocx'"):
        runtime.allocator_library("jemallocx")


def test_compilation_cache_dir_choice(tmp_path):
    assert runtime.compilation_cache_dir({"JADAPT_COMPILATION_CACHE": "off"}) is None
    assert runtime.compilation_cache_dir({"JADAPT_COMPILATION_CACHE": str(tmp_path / "c")}) == str(tmp_path / "c")
    assert runtime.compilation_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == str(tmp_path / "jadapt" / "xla")
    assert runtime.enable_compilation_cache(["train"]) is None  # main([...]) from Python: JAX config untouched


def test_cli_reuses_compiled_programs_across_runs(tiny_model_dir, synthetic_data_dir, tmp_path):
    """The second identical `jadapt train` loads its programs from the cache, same result."""
    cache = tmp_path / "cache"
    env = dict(os.environ, JADAPT_COMPILATION_CACHE=str(cache), JADAPT_ALLOCATOR="system", JAX_LOG_COMPILES="1")
    results = []
    for run in ("a", "b"):
        out = tmp_path / run
        res = subprocess.run([sys.executable, "-m", "jadapt.cli", "train", "--task", "rte", "--method", "pfeiffer",
                              "--model", str(tiny_model_dir), "--data-dir", str(synthetic_data_dir), "--epochs", "1",
                              "--batch-size", "16", "--max-length", "32", "--bottleneck", "4", "--no-progress",
                              "--out", str(out)], env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        results.append((json.loads((out / "metrics.json").read_text()), res.stderr))
    assert any(cache.iterdir())
    assert "cache hit" not in results[0][1] and "Persistent compilation cache hit for 'jit_step'" in results[1][1]
    assert results[0][0]["accuracy"] == results[1][0]["accuracy"]
