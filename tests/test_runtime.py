"""Process-start choices of the CLI (jadapt/runtime.py): allocator, XLA:CPU scheduler, compilation cache."""
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


def test_xla_flags_choice():
    flag, cpu = runtime.CPU_SCHEDULER_FLAG, dict(accelerator=False)
    assert runtime.xla_flags({}, **cpu) == f"{flag}=false"
    assert runtime.xla_flags({"XLA_FLAGS": "--a=1"}, **cpu) == f"--a=1 {flag}=false"
    assert runtime.xla_flags({"XLA_FLAGS": f"{flag}=true"}, **cpu) == f"{flag}=true"  # the user's own setting wins
    assert runtime.xla_flags({"XLA_FLAGS": "--a=1", "JADAPT_CPU_SCHEDULER": "concurrency"}, **cpu) == "--a=1"
    # a GPU / TPU install keeps its XLA_FLAGS unless asked
    assert runtime.xla_flags({"XLA_FLAGS": "--a=1"}, accelerator=True) == "--a=1"
    assert runtime.xla_flags({"JADAPT_CPU_SCHEDULER": "memory"}, accelerator=True) == f"{flag}=false"
    with pytest.raises(ValueError, match="JADAPT_CPU_SCHEDULER='fast'"):
        runtime.xla_flags({"JADAPT_CPU_SCHEDULER": "fast"}, **cpu)


_REMAT_TEMP = """
import json
from jadapt import runtime
runtime.apply_xla_flags()
import jax, jax.numpy as jnp
from jadapt.adapters.config import preset
from jadapt.models.config import EncoderConfig
from jadapt.models.model import AdapterModel, HeadConfig
from jadapt.models.pretrained import init_params
cfg = EncoderConfig(vocab_size=100, hidden_size=64, num_layers=4, num_heads=4, intermediate_size=256,
                    max_position_embeddings=64)
temp = {}
for remat in (False, True):
    m = AdapterModel(cfg, adapters=(("a", preset("pfeiffer", bottleneck=8)),), active=("a",),
                     head=HeadConfig(num_labels=2), remat=remat)
    p = init_params(m, jax.random.key(0))
    ids = jnp.ones((16, 64), jnp.int32)
    loss = lambda p: m.apply({"params": p}, ids, jnp.ones_like(ids), deterministic=False,
                             rngs={"dropout": jax.random.key(1)}).sum()
    temp[remat] = jax.jit(jax.grad(loss)).lower(p).compile().memory_analysis().temp_size_in_bytes
print(json.dumps([temp[False], temp[True]]))
"""


def test_cli_scheduler_lets_remat_cut_cpu_memory():
    """With the CLI's XLA:CPU scheduler, --remat shrinks the backward's temp buffer (XLA's
    default concurrency scheduler keeps it as large: measured 36.3 vs 35.8 MB here)."""
    env = dict(os.environ, JADAPT_CPU_SCHEDULER="memory")  # the default on CPU-only installs
    res = subprocess.run([sys.executable, "-c", _REMAT_TEMP], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    plain, remat = json.loads(res.stdout.strip().splitlines()[-1])
    assert remat < 0.8 * plain, (plain, remat)
