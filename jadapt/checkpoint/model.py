"""Rebuild the model an adapter checkpoint was trained with, and put its leaves in place.

The checkpoint must be self-contained: every adapter / fusion / head-output leaf the rebuilt
model has must come from it (a fusion checkpoint therefore stores its fused adapters too);
a leaf left at a fresh random init would give a silently wrong model, so that is an error.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Optional

import jax.numpy as jnp

from jadapt import tree
from jadapt.checkpoint.adapter import load_adapter
from jadapt.checkpoint.files import CheckpointError

_ADAPTER_LEAF = re.compile(r"/(?:attn_adapter|ffn_adapter|lora_\w+)/([^/]+)/")
# Encoder-config fields that change no weights: they may differ from the training run.
_FREE_FIELDS = ("hidden_dropout", "attention_dropout", "initializer_range")


def load_model(directory: str | os.PathLike, *, base_model: Optional[str] = None,
               compute_dtype: Optional[str] = None, seed: int = 0, attention: str = "matmul"):
    """(model, full params, metadata) from an adapter checkpoint.

    The backbone comes from the base model's HF weights, adapters / head from the checkpoint;
    only leaves in neither (an inactive adapter that was not saved, a head dense layer the
    base model has no pooler for) are initialised, with ``seed``: that costs a compile, so
    it is skipped when nothing is missing. ``base_model`` overrides the checkpoint's
    ``base_model`` (e.g. a local copy of a hub model). ``attention``: the attention kernel
    (``matmul`` | ``fused``, see ``SelfAttention``), a runtime choice not stored in checkpoints.
    """
    import jax

    from jadapt.models.config import EncoderConfig
    from jadapt.models.hf import convert_state_dict, iter_state_dict, resolve_model_path
    from jadapt.models.model import AdapterModel
    from jadapt.models.pretrained import param_shapes, with_fresh_leaves

    saved, meta = load_adapter(directory)
    where = f"checkpoint {os.fspath(directory)}"
    adapters, active, head, fusion = _model_spec(meta, where)
    base = base_model if base_model is not None else meta.get("base_model")
    try:
        path = resolve_model_path(base)
        config = EncoderConfig.from_pretrained(path)
        state_dict = iter_state_dict(path)  # read tensor by tensor in convert_state_dict
    except (FileNotFoundError, OSError) as e:
        raise FileNotFoundError(f"{where} was trained on base model {base!r}, which cannot be found ({e}); "
                                "pass base_model=<local HF model dir> to load it against a copy") from e
    model = AdapterModel(config, adapters=adapters, active=active, head=head, fusion=fusion,
                         compute_dtype=compute_dtype or meta.get("compute_dtype", "float32"), attention=attention)
    expected = param_shapes(model)
    params = overlay(convert_state_dict(state_dict, expected), saved, expected, where, active)
    _check_encoder(meta.get("encoder_config"), config, base, where)  # after overlay: shape errors name leaves
    params = with_fresh_leaves(model, params, expected, jax.random.key(seed))
    return model, jax.tree_util.tree_map(jnp.asarray, params), meta


def overlay(params: dict, saved: dict, expected: dict[str, tuple], where: str = "checkpoint",
            active: tuple[str, ...] = ()) -> dict:
    """``params`` with ``saved``'s leaves in place; every mismatch reported in one ValueError.

    ``expected``: {path: shape} of the model; the result holds those of its paths that
    ``params`` or ``saved`` has. Leaves of ``active`` adapters, fusion layers and the head's
    output layer must all come from ``saved``.
    """
    flat, errors = tree.flatten(params), []
    model_dtypes = {p: x.dtype for p, x in flat.items()}
    for p, x in tree.flatten(saved).items():
        if p not in expected:
            errors.append(f"{p}: shape {tuple(x.shape)} in the checkpoint, but the model has no such param")
        elif tuple(x.shape) != tuple(expected[p]):
            errors.append(f"{p}: shape {tuple(x.shape)} in the checkpoint != {tuple(expected[p])} in the model")
        else:
            flat[p] = jnp.asarray(x, model_dtypes.get(p, x.dtype))
    if not errors:
        have = set(tree.flatten(saved))
        missing = [p for p in expected if p not in have and _must_be_saved(p, active)]
        if missing:
            errors.append(f"{len(missing)} param(s) of the model's active adapters / fusion / head are not in "
                          f"the checkpoint (they would stay randomly initialised), e.g. {missing[:4]}")
    if errors:
        raise ValueError(f"{where} does not fit the model rebuilt from its metadata "
                         "(saved from another architecture?):\n  " + "\n  ".join(errors[:20]))
    return tree.unflatten({p: flat[p] for p in expected if p in flat})


def _must_be_saved(path: str, active: tuple[str, ...]) -> bool:
    m = _ADAPTER_LEAF.search(path)
    return path.startswith("head/out/") or (m is not None and (m.group(1) in active or m.group(1) == "fusion"))


def _model_spec(meta: dict, where: str):
    """(adapters, active, head, fusion) from metadata, with errors that name the field."""
    from jadapt.adapters.config import AdapterConfig
    from jadapt.models.model import HeadConfig

    try:
        adapters = tuple((str(n), AdapterConfig.from_dict(c)) for n, c in meta.get("adapters") or [])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: metadata field 'adapters' is invalid ({e})") from e
    active = meta.get("active")
    active = tuple(n for n, _ in adapters) if active is None else tuple(active)
    unknown = [a for a in active if a not in dict(adapters)]
    if unknown:
        raise CheckpointError(f"{where}: metadata 'active' names unknown adapter(s) {unknown}")
    try:
        head = HeadConfig(**meta["head"]) if meta.get("head") else None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: metadata field 'head' is invalid ({e})") from e
    fusion = None
    if meta.get("fusion"):
        from jadapt.fusion.config import FusionConfig

        try:
            fusion = FusionConfig.from_dict(meta["fusion"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: metadata field 'fusion' is invalid ({e})") from e
    return adapters, active, head, fusion


def _check_encoder(saved: Optional[dict[str, Any]], config, base, where: str) -> None:
    """Same-shaped but different base models would load silently: compare the configs."""
    if not saved:
        return
    now = dataclasses.asdict(config)
    diff = [f"{k}: {saved[k]!r} (trained) vs {now[k]!r} (now)" for k in saved
            if k in now and k not in _FREE_FIELDS and _norm(saved[k]) != _norm(now[k])]
    if diff:
        raise ValueError(f"{where}: base model {base!r} differs from the one it was trained on: " + "; ".join(diff))


def _norm(v):
    return list(v) if isinstance(v, tuple) else v
