"""Rows -> fixed-width token arrays, with a fast HF tokenizer in batch mode.

``encode`` returns an ``Encoded`` dict of numpy arrays, one row per example:
``input_ids`` / ``token_type_ids`` int32 ``[N, max_length]`` (right-padded with the
tokenizer's pad id), ``lengths`` int32 ``[N]`` (tokens before padding, so the attention mask
is ``arange(L) < length``), ``labels`` int32 ``[N]`` (float32 for regression) and ``row``
int64 ``[N]`` (carried over from the rows). Batching later cuts each batch down to a length
bucket, so padding to ``max_length`` here costs memory, not compute.
"""
from __future__ import annotations

import itertools
import os
from typing import Any, Mapping

import numpy as np

from jadapt.data.loading import num_rows
from jadapt.data.tasks import TaskSpec, get_task

Encoded = dict  # dict[str, np.ndarray]


def load_tokenizer(path: str | os.PathLike | None = None, *, fast: bool = True):
    """The tokenizer of a model dir (default: the packaged all-MiniLM-L6-v2).

    BERT WordPiece folders open with the ``tokenizers`` library directly (no transformers
    import, and so no torch import either; see ``jadapt.data.fast_tokenizer``);
    everything else, or ``fast=False``, gets ``transformers.AutoTokenizer``.
    """
    from jadapt.data.fast_tokenizer import open_fast_tokenizer
    from jadapt.folders import resolve_model_path

    folder = resolve_model_path(path)
    tok = open_fast_tokenizer(folder) if fast else None
    if tok is not None:
        return tok
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def length_limit(tokenizer: Any = None, model_max_length: Any = None) -> int | None:
    """The longest sequence the model takes: ``model_max_length`` (an int, or an
    ``EncoderConfig`` whose ``max_length`` is used), else the tokenizer's own limit."""
    if model_max_length is not None:
        return int(getattr(model_max_length, "max_length", model_max_length))
    m = getattr(tokenizer, "model_max_length", None)
    return int(m) if m is not None and m < 10**9 else None


def encode(task: str | TaskSpec, rows: Mapping[str, np.ndarray], tokenizer: Any = None, max_length: int = 128, *,
           model_max_length: Any = None, chunk_size: int = 8192) -> Encoded:
    """Tokenise ``rows`` of ``task`` (one text or a text pair), truncating to ``max_length``.

    ``tokenizer``: a transformers tokenizer, a model dir, or None for the packaged model.
    ``max_length`` above the model's limit (see :func:`length_limit`) raises ValueError.
    """
    spec = get_task(task)
    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    if not isinstance(max_length, (int, np.integer)) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
    limit = length_limit(tokenizer, model_max_length)
    if limit is not None and max_length > limit:
        raise ValueError(f"max_length {max_length} exceeds the model's limit of {limit} tokens")
    if getattr(tokenizer, "padding_side", "right") != "right":
        raise ValueError(f"the tokenizer pads on the {tokenizer.padding_side}; jadapt batching needs right padding")
    n = num_rows(rows)
    pad_id = tokenizer.pad_token_id if getattr(tokenizer, "pad_token_id", None) is not None else 0
    ids = np.full((n, max_length), pad_id, dtype=np.int32)
    types = np.zeros((n, max_length), dtype=np.int32)
    lengths = np.empty((n,), dtype=np.int32)
    for start in range(0, n, chunk_size):
        sl = slice(start, min(n, start + chunk_size))
        texts = [list(rows[f][sl]) for f in spec.text_fields]
        # No padding here: padding 67k rows to max_length inside the tokenizer doubles the
        # time; the rows go into the pre-filled arrays through one boolean mask instead.
        enc = tokenizer(*texts, truncation=True, max_length=max_length, padding=False,
                        return_attention_mask=False, return_token_type_ids=True)
        lens = np.fromiter(map(len, enc["input_ids"]), dtype=np.int32, count=sl.stop - sl.start)
        mask = np.arange(max_length)[None, :] < lens[:, None]
        lengths[sl] = lens
        ids[sl][mask] = np.fromiter(itertools.chain.from_iterable(enc["input_ids"]), dtype=np.int32)
        if enc.get("token_type_ids") is not None:
            types[sl][mask] = np.fromiter(itertools.chain.from_iterable(enc["token_type_ids"]), dtype=np.int32)
    labels = np.asarray(rows["label"], dtype=np.float32 if spec.regression else np.int32)
    out: Encoded = {"input_ids": ids, "token_type_ids": types, "lengths": lengths, "labels": labels}
    if "row" in rows:
        out["row"] = np.asarray(rows["row"], dtype=np.int64)
    return out
