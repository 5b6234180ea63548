"""Shared fixtures: a tiny HF-format BERT directory, synthetic task data, the real data dir."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

# The sharding and multi-host tests need 8 devices; on CPU, XLA makes them from host threads, and
# only if told before jax starts. Setting it here lets a plain `python -m pytest` run them (CI
# runs the whole suite this way too); a user's own device count wins.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path | None:
    for cand in (os.environ.get("JADAPT_DATA_DIR"), REPO.parent / "shared" / "data"):
        if cand and (Path(cand) / "README.md").is_file():
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = real_data_dir()
    if d is None:
        pytest.skip("real task data (../shared/data or $JADAPT_DATA_DIR) is absent")
    return d


def write_tiny_bert(path: Path, *, hidden=32, layers=2, heads=4, intermediate=64, seed=0,
                    model_type="bert") -> Path:
    """A random BERT (or RoBERTa-shaped) checkpoint in HF format, with the packaged tokenizer.

    Needs no torch: tensors are written with safetensors.numpy under HF names.
    """
    from safetensors.numpy import save_file

    from jadapt.models.hf import packaged_model_path

    tok_dir = packaged_model_path()
    path.mkdir(parents=True, exist_ok=True)
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tok_dir / f).is_file():
            shutil.copy(tok_dir / f, path / f)
    vocab, max_pos, types = 30522, 512, 2
    cfg = {"architectures": ["BertModel"], "model_type": model_type, "vocab_size": vocab,
           "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
           "intermediate_size": intermediate, "max_position_embeddings": max_pos,
           "type_vocab_size": types, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
           "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "pad_token_id": 0,
           "initializer_range": 0.02}
    (path / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(seed)
    w = lambda *s: (rng.standard_normal(s) * 0.05).astype(np.float32)  # noqa: E731
    t = {"embeddings.word_embeddings.weight": w(vocab, hidden),
         "embeddings.position_embeddings.weight": w(max_pos, hidden),
         "embeddings.token_type_embeddings.weight": w(types, hidden),
         "embeddings.LayerNorm.weight": 1 + w(hidden), "embeddings.LayerNorm.bias": w(hidden),
         "pooler.dense.weight": w(hidden, hidden), "pooler.dense.bias": w(hidden)}
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for n in ("query", "key", "value"):
            t[p + f"attention.self.{n}.weight"] = w(hidden, hidden)
            t[p + f"attention.self.{n}.bias"] = w(hidden)
        t[p + "attention.output.dense.weight"] = w(hidden, hidden)
        t[p + "attention.output.dense.bias"] = w(hidden)
        t[p + "attention.output.LayerNorm.weight"] = 1 + w(hidden)
        t[p + "attention.output.LayerNorm.bias"] = w(hidden)
        t[p + "intermediate.dense.weight"] = w(intermediate, hidden)
        t[p + "intermediate.dense.bias"] = w(intermediate)
        t[p + "output.dense.weight"] = w(hidden, intermediate)
        t[p + "output.dense.bias"] = w(hidden)
        t[p + "output.LayerNorm.weight"] = 1 + w(hidden)
        t[p + "output.LayerNorm.bias"] = w(hidden)
    save_file(t, str(path / "model.safetensors"))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


_WORDS = "good bad great awful fine poor nice terrible happy sad movie film plot actor".split()


def write_synthetic_task(root: Path, task: str = "rte", n_train: int = 96, n_dev: int = 40, seed: int = 0) -> Path:
    """A learnable two-sentence binary task in the local jsonl layout of ``task``."""
    rng = np.random.default_rng(seed)
    (root / task).mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("validation", n_dev)):
        with open(root / task / f"{split}.jsonl", "w") as f:
            for i in range(n):
                label = int(rng.integers(2))
                words = rng.choice(_WORDS[:2] if label else _WORDS[2:4], size=int(rng.integers(3, 12)))
                row = {"sentence1": " ".join(words), "sentence2": "it was " + words[0], "label": label, "idx": i}
                f.write(json.dumps(row) + "\n")
    return root


@pytest.fixture()
def synthetic_data_dir(tmp_path) -> Path:
    return write_synthetic_task(tmp_path / "data")


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, tiny_model_dir):
    """Two finished ``jadapt train --out`` folders on the tiny model: rte and mrpc (synthetic
    data in ``.data``), Pfeiffer adapters of one shape, so they merge and fuse."""
    from types import SimpleNamespace

    from jadapt.train.config import TrainConfig
    from jadapt.train.loop import fit

    root = tmp_path_factory.mktemp("tiny_runs")
    for task in ("rte", "mrpc"):
        write_synthetic_task(root / "data", task, n_train=32, n_dev=16)
        fit(TrainConfig(task=task, method="pfeiffer", model=str(tiny_model_dir), data_dir=str(root / "data"),
                        out=str(root / task), epochs=1, batch_size=16, eval_batch_size=16, max_length=16,
                        bottleneck=4, progress=False, compile_ahead=False))
    return SimpleNamespace(model=tiny_model_dir, data=root / "data", rte=root / "rte", mrpc=root / "mrpc")
