"""Run two models over the same sentences and compare their representations layer by layer.

Layers are paired by index: entry 0 is the embeddings output, entry i the output of
encoder layer i (``AdapterModel`` with ``head=None`` returns exactly that tuple). Per batch,
each model's hidden states [L+1, batch, seq, hidden] are reduced to rows of one of two
kinds (``level``):

- ``"sentence"``: masked mean over non-pad tokens (the model's own mean pooling) -> one row
  per sentence;
- ``"token"``: ``tokens_per_sentence`` non-pad, non-special token positions sampled per
  sentence (seeded, the same positions for both models) -> one row per sampled token.

Rows stream into the CKA statistics (O(L d^2) memory) and, normalised, into a host buffer
for the blocked RSA (O(L n d) + O(block^2)); see ``cka.py`` and ``rsa.py``.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from jadapt.analysis.cka import cka_init_layers, cka_result_layers, cka_update_layers, linear_cka_layers
from jadapt.analysis.rsa import normalize_rows, rsa_layers

LEVELS = ("sentence", "token")
Text = Union[str, tuple[str, str]]


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """How representations are read out and compared."""

    level: str = "sentence"
    tokens_per_sentence: int = 8  # token level only
    seed: int = 0  # token sampling
    block_size: int = 256  # RSA tile size

    def __post_init__(self):
        if self.level not in LEVELS:
            raise ValueError(f"level {self.level!r} is not supported; expected one of {LEVELS}")
        if self.tokens_per_sentence < 1:
            raise ValueError(f"tokens_per_sentence must be >= 1, got {self.tokens_per_sentence}")
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")


# ----------------------------------------------------------------------------- one-shot
def paired_layers(xs: Sequence[Any], ys: Sequence[Any]) -> tuple[jax.Array, jax.Array]:
    """Stack per-layer representations of two models, pairing layer i with layer i.

    ``xs``/``ys``: sequences of [n, d] arrays (or arrays [L, n, d]). Raises when the layer
    counts or row counts differ: silently comparing mismatched layers is the bug to avoid.
    """
    if len(xs) != len(ys):
        raise ValueError(f"layer counts differ: model A has {len(xs)}, model B has {len(ys)}; layers pair by index")
    x, y = jnp.stack([jnp.asarray(a) for a in xs]), jnp.stack([jnp.asarray(b) for b in ys])
    if x.ndim != 3 or y.ndim != 3 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected per-layer [n, d] arrays with equal n; got stacks {x.shape} and {y.shape}")
    return x, y


def layer_similarity(xs: Sequence[Any], ys: Sequence[Any], mask: Optional[Any] = None,
                     block_size: int = 256) -> dict[str, np.ndarray]:
    """RSA and linear CKA per layer of in-memory representations -> {"rsa": [L], "cka": [L]}."""
    x, y = paired_layers(xs, ys)
    m = None if mask is None else jnp.asarray(mask)
    return {"rsa": np.asarray(rsa_layers(x, y, m, block_size=block_size)),
            "cka": np.asarray(linear_cka_layers(x, y, m))}


# ----------------------------------------------------------------------------- read-out
def mean_pool(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """[L, B, T, d], [B, T] -> [L, B, d]: mean over non-pad tokens."""
    m = attention_mask.astype(jnp.float32)[None, :, :, None]
    return (hidden * m).sum(2) / jnp.maximum(m.sum(2), 1.0)


@functools.partial(jax.jit, static_argnums=2)
def sample_token_positions(key: jax.Array, token_mask: jax.Array, k: int = 8) -> tuple[jax.Array, jax.Array]:
    """Up to ``k`` distinct positions per row where ``token_mask [B, T]`` is 1, uniformly.

    Returns (positions [B, k], valid [B, k]); rows with fewer eligible tokens get invalid slots.
    """
    scores = jnp.where(token_mask > 0, jax.random.uniform(key, token_mask.shape), -1.0)
    top, pos = jax.lax.top_k(scores, k)
    return pos, top >= 0


def gather_tokens(hidden: jax.Array, positions: jax.Array) -> jax.Array:
    """[L, B, T, d], positions [B, k] -> [L, B * k, d]."""
    g = jnp.take_along_axis(hidden, positions[None, :, :, None], axis=2)
    return g.reshape(g.shape[0], -1, g.shape[-1])


def encoder_of(model: Any) -> Any:
    """The model without its head: tuned classifiers and bare encoders read out the same way."""
    return model.clone(head=None) if getattr(model, "head", None) is not None else model


@functools.partial(jax.jit, static_argnums=0)
def layer_rows(encoder: Any, params: Any, input_ids: jax.Array, attention_mask: jax.Array,
               token_type_ids: jax.Array, positions: Optional[jax.Array] = None) -> jax.Array:
    """Hidden states of ``encoder`` (head=None) reduced to rows: [L+1, rows, d].

    ``positions=None``: one mean-pooled row per sentence; else the tokens at ``positions [B, k]``.
    ``encoder`` is static (flax modules hash by config), so equal models share one compile.
    """
    hidden = jnp.stack(encoder.apply({"params": params}, input_ids, attention_mask, token_type_ids,
                                     deterministic=True)).astype(jnp.float32)
    return mean_pool(hidden, attention_mask) if positions is None else gather_tokens(hidden, positions)


# ----------------------------------------------------------------------------- batches
def tokenize_batches(tokenizer: Any, texts: Sequence[Text], batch_size: int = 32, max_length: int = 128,
                     pad_multiple: int = 32) -> Iterator[dict[str, np.ndarray]]:
    """Fixed-size numpy batches: input_ids, attention_mask, token_type_ids [B, T], token_mask
    [B, T] (non-pad, non-special: where token rows may be sampled) and valid [B] (real rows).

    T is the batch's longest length rounded up to ``pad_multiple`` (capped at ``max_length``)
    and short final batches are padded with invalid rows, so only a few shapes compile.
    """
    pad_id = tokenizer.pad_token_id or 0
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start:start + batch_size])
        pairs = isinstance(chunk[0], (tuple, list))
        args = ([a for a, _ in chunk], [b for _, b in chunk]) if pairs else (chunk,)
        enc = tokenizer(*args, padding="longest", truncation=True, max_length=max_length,
                        return_tensors="np", return_special_tokens_mask=True)
        n, t = enc["input_ids"].shape
        T = min(max_length, -(-t // pad_multiple) * pad_multiple)
        out = {
            "input_ids": np.full((batch_size, T), pad_id, np.int32),
            "attention_mask": np.zeros((batch_size, T), np.int32),
            "token_type_ids": np.zeros((batch_size, T), np.int32),
            "token_mask": np.zeros((batch_size, T), np.int32),
            "valid": np.zeros((batch_size,), bool),
        }
        out["input_ids"][:n, :t] = enc["input_ids"]
        out["attention_mask"][:n, :t] = enc["attention_mask"]
        if "token_type_ids" in enc:
            out["token_type_ids"][:n, :t] = enc["token_type_ids"]
        out["token_mask"][:n, :t] = enc["attention_mask"] * (1 - enc["special_tokens_mask"])
        out["valid"][:n] = True
        yield out


# ----------------------------------------------------------------------------- streaming
def stream_representations(model_a: Any, params_a: Any, model_b: Any, params_b: Any,
                           batches: Iterable[Mapping[str, np.ndarray]],
                           config: CompareConfig = CompareConfig()) -> Iterator[tuple[jax.Array, jax.Array, jax.Array]]:
    """Yield (rows_a [L+1, r, da], rows_b [L+1, r, db], mask [r]) per batch, layers paired by index.

    ``batches``: dicts as from :func:`tokenize_batches` (``token_type_ids``, ``token_mask``
    and ``valid`` optional). Both models see identical inputs, so they must share a tokenizer.
    """
    ca, cb = model_a.config, model_b.config
    if ca.num_layers != cb.num_layers:
        raise ValueError(f"layer counts differ: model A has {ca.num_layers}, model B has {cb.num_layers}; "
                         "layers pair by index")
    if ca.vocab_size != cb.vocab_size:
        raise ValueError(f"vocab sizes differ ({ca.vocab_size} vs {cb.vocab_size}): the models must share a tokenizer")
    ea, eb = encoder_of(model_a), encoder_of(model_b)
    key = jax.random.key(config.seed)
    for step, batch in enumerate(batches):
        ids = jnp.asarray(batch["input_ids"])
        attn = jnp.asarray(batch["attention_mask"])
        tt = jnp.asarray(batch.get("token_type_ids", np.zeros_like(batch["input_ids"])))
        valid = jnp.asarray(batch.get("valid", np.ones(ids.shape[0], bool)))
        if config.level == "sentence":
            pos, mask = None, valid
        else:
            eligible = jnp.asarray(batch.get("token_mask", batch["attention_mask"])) * valid[:, None]
            pos, ok = sample_token_positions(jax.random.fold_in(key, step), eligible,
                                             min(config.tokens_per_sentence, ids.shape[1]))
            mask = ok.reshape(-1)
        yield layer_rows(ea, params_a, ids, attn, tt, pos), layer_rows(eb, params_b, ids, attn, tt, pos), mask


def compare_stream(stream: Iterable[tuple[Any, Any, Any]], block_size: int = 256) -> dict[str, Any]:
    """Consume (rows_a [L, r, da], rows_b [L, r, db], mask [r]) batches -> per-layer RSA and CKA.

    Returns {"rsa": np [L], "cka": np [L], "num_rows": int}.
    """
    stats, kept_a, kept_b, num_layers = None, [], [], None
    for ra, rb, mask in stream:
        ra, rb = jnp.asarray(ra), jnp.asarray(rb)
        if ra.shape[0] != rb.shape[0] or ra.shape[1] != rb.shape[1]:
            raise ValueError(f"unpaired batch: A rows {ra.shape}, B rows {rb.shape} "
                             "(want [L, rows, d] with the same L and rows)")
        if num_layers is None:
            num_layers = ra.shape[0]
            stats = cka_init_layers(num_layers, ra.shape[-1], rb.shape[-1])
        elif ra.shape[0] != num_layers:
            raise ValueError(f"layer count changed mid-stream: {num_layers} -> {ra.shape[0]}")
        mask = jnp.ones(ra.shape[1], bool) if mask is None else jnp.asarray(mask, bool)
        stats = cka_update_layers(stats, ra, rb, mask)
        keep = np.asarray(mask)
        kept_a.append(np.asarray(normalize_rows(ra))[:, keep])
        kept_b.append(np.asarray(normalize_rows(rb))[:, keep])
    if num_layers is None:
        raise ValueError("no batches to compare")
    ua, ub = np.concatenate(kept_a, axis=1), np.concatenate(kept_b, axis=1)
    if ua.shape[1] < 3:
        raise ValueError(f"RSA needs at least 3 rows, got {ua.shape[1]}")
    return {
        "rsa": np.asarray(rsa_layers(jnp.asarray(ua), jnp.asarray(ub), block_size=block_size)),
        "cka": np.asarray(cka_result_layers(stats)),
        "num_rows": int(ua.shape[1]),
    }


def compare_models(model_a: Any, params_a: Any, model_b: Any, params_b: Any,
                   batches: Iterable[Mapping[str, np.ndarray]],
                   config: CompareConfig = CompareConfig()) -> dict[str, Any]:
    """Per-layer RSA and CKA between two models on the same batches (see module docstring).

    >>> out = compare_models(base, base_params, tuned, tuned_params,
    ...                      tokenize_batches(tok, sentences, 32, 128))
    >>> out["rsa"]  # [num_layers + 1]; entry 0 = embeddings
    """
    return compare_stream(stream_representations(model_a, params_a, model_b, params_b, batches, config),
                          block_size=config.block_size)
