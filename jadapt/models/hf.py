"""Hugging Face checkpoints -> jadapt params, by an explicit regex name map.

Each entry maps an HF tensor name (``bert.``/``roberta.`` prefix stripped) to a jadapt
path and a transform: torch Linear weights are ``[out, in]`` and become ``[in, out]``
kernels; LayerNorm ``weight``/``gamma`` -> ``scale``, ``bias``/``beta`` -> ``bias``.
Every tensor's shape is checked against the model's own param shapes and all problems are
reported together.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np

from jadapt import tree
from jadapt.param_paths import ADAPTERS
# Model folders are found in ``jadapt.folders`` (the tokenizer needs them too); the names stay
# importable from here, where most callers look for them.
from jadapt.folders import DEFAULT_MODEL, packaged_model_path, resolve_model_path

__all__ = ["DEFAULT_MODEL", "IGNORED", "NAME_MAP", "convert_state_dict", "iter_state_dict", "packaged_model_path",
           "read_state_dict", "resolve_model_path"]

_T = lambda w: np.ascontiguousarray(w.T)  # noqa: E731
_I = lambda w: w  # noqa: E731

# (HF regex, jadapt path template, transform)
NAME_MAP: list[tuple[str, str, Callable]] = [
    (r"embeddings\.word_embeddings\.weight", "embeddings/word_embeddings/embedding", _I),
    (r"embeddings\.position_embeddings\.weight", "embeddings/position_embeddings/embedding", _I),
    (r"embeddings\.token_type_embeddings\.weight", "embeddings/token_type_embeddings/embedding", _I),
    (r"embeddings\.LayerNorm\.(?:weight|gamma)", "embeddings/layer_norm/scale", _I),
    (r"embeddings\.LayerNorm\.(?:bias|beta)", "embeddings/layer_norm/bias", _I),
    (r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.weight", r"encoder/layer_\1/attention/\2/kernel", _T),
    (r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.bias", r"encoder/layer_\1/attention/\2/bias", _I),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.weight", r"encoder/layer_\1/attention/output/kernel", _T),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.bias", r"encoder/layer_\1/attention/output/bias", _I),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.(?:weight|gamma)", r"encoder/layer_\1/attention_layer_norm/scale", _I),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.(?:bias|beta)", r"encoder/layer_\1/attention_layer_norm/bias", _I),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.weight", r"encoder/layer_\1/intermediate/kernel", _T),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.bias", r"encoder/layer_\1/intermediate/bias", _I),
    (r"encoder\.layer\.(\d+)\.output\.dense\.weight", r"encoder/layer_\1/output/kernel", _T),
    (r"encoder\.layer\.(\d+)\.output\.dense\.bias", r"encoder/layer_\1/output/bias", _I),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.(?:weight|gamma)", r"encoder/layer_\1/output_layer_norm/scale", _I),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.(?:bias|beta)", r"encoder/layer_\1/output_layer_norm/bias", _I),
    (r"pooler\.dense\.weight", "head/dense/kernel", _T),
    (r"pooler\.dense\.bias", "head/dense/bias", _I),
]
# Tensors that exist in HF files but are not encoder weights (MLM / NSP heads, buffers).
IGNORED = re.compile(r"^(cls\.|lm_head\.|classifier\.|qa_outputs\.|embeddings\.position_ids$|.*\.num_batches_tracked$)")
_PREFIX = re.compile(r"^(bert|roberta|xlm_roberta|camembert|model)\.")


def require_weights(model_dir: str | os.PathLike) -> Path:
    """``model_dir``, or FileNotFoundError where it holds no weights. Checked before any
    tokenizer is opened: transformers 4.57 fails on a folder with only ``config.json``
    inside its BERT tokenizer, with a TypeError that names neither the folder nor the cause."""
    d = Path(model_dir)
    if not (any(d.glob("model*.safetensors")) or (d / "pytorch_model.bin").is_file()):
        raise FileNotFoundError(f"model directory {d} has no weights (model.safetensors or pytorch_model.bin)")
    return d


def iter_state_dict(model_dir: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """(name, fp32 numpy tensor) pairs of a HF checkpoint, one at a time: ``model.safetensors``
    (sharded too) is read tensor by tensor, so converting it never holds the file twice;
    else ``pytorch_model.bin`` (needs torch). A folder without weights, or a ``.bin`` without
    torch, raises here, before the first tensor is asked for."""
    d = require_weights(model_dir)
    shards = sorted(d.glob("model*.safetensors"))
    if shards:
        return _safetensors_items(shards)
    try:
        import torch
    except ImportError as e:
        raise FileNotFoundError(
            f"{d} has only pytorch_model.bin; install torch (pip install torch==2.13.0) or convert to safetensors"
        ) from e
    return _torch_items(torch.load(str(d / "pytorch_model.bin"), map_location="cpu", weights_only=True))


def _safetensors_items(shards) -> Iterator[tuple[str, np.ndarray]]:
    from safetensors import safe_open

    for f in shards:
        with safe_open(str(f), framework="numpy") as fh:
            for name in fh.keys():
                yield name, fh.get_tensor(name)


def _torch_items(sd: dict) -> Iterator[tuple[str, np.ndarray]]:
    for k in list(sd):
        v = sd.pop(k)
        yield k, v.float().numpy() if v.is_floating_point() else v.numpy()


def read_state_dict(model_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a HF checkpoint as fp32 numpy (``iter_state_dict``, in one dict)."""
    return dict(iter_state_dict(model_dir))


def convert_state_dict(state: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
                       expected: Mapping[str, tuple]) -> dict:
    """HF tensors (a dict, or ``iter_state_dict``'s pairs) -> jadapt params restricted to
    ``expected`` ({path: shape}).

    Raises one ValueError listing every shape mismatch and every expected backbone path
    the checkpoint lacks (head and adapter paths may be missing: they are new).
    """
    out, errors = {}, []
    for raw_name, value in (state.items() if isinstance(state, Mapping) else state):
        name = _PREFIX.sub("", raw_name)
        if IGNORED.match(name):
            continue
        for rx, template, fn in NAME_MAP:
            m = re.fullmatch(rx, name)
            if m:
                path = m.expand(template)
                break
        else:
            errors.append(f"unknown tensor {raw_name!r} {tuple(value.shape)}")
            continue
        if path not in expected:
            if path.startswith("head/"):
                continue
            errors.append(f"{raw_name!r} -> {path!r} has no place in this model")
            continue
        arr = fn(np.asarray(value, dtype=np.float32))
        if tuple(arr.shape) != tuple(expected[path]):
            errors.append(f"{raw_name!r} -> {path!r}: shape {tuple(arr.shape)} != model's {tuple(expected[path])}")
            continue
        out[path] = arr
    missing = [p for p in expected if p not in out and _is_backbone(p)]
    if missing:
        errors.append(f"checkpoint lacks {len(missing)} backbone tensor(s), e.g. {missing[:4]}")
    if errors:
        raise ValueError("cannot load checkpoint:\n  " + "\n  ".join(errors[:20]))
    return tree.unflatten(out)


def _is_backbone(path: str) -> bool:
    return path.startswith(("embeddings/", "encoder/")) and not re.search(ADAPTERS, path)
