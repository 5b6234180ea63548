"""Rebuild the model an adapter checkpoint was trained with, and put its leaves in place.

The checkpoint's metadata is a ``ModelSpec`` (``jadapt.models.spec``, where the format is
documented); ``jadapt.models.build`` does the rebuilding. The checkpoint must be
self-contained: every leaf of its active adapters, fusion layers and head output layer
must come from it (a fusion checkpoint therefore stores its fused adapters too); a leaf
left at a fresh random init would give a silently wrong model, so that is an error.
"""
from __future__ import annotations

import os
from typing import Optional

from jadapt.checkpoint.adapter import load_adapter
from jadapt.checkpoint.files import CheckpointError
from jadapt.models.build import overlay
from jadapt.models.spec import MetadataError, ModelSpec

__all__ = ["load_model", "overlay", "spec_of"]


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
    from jadapt.models.build import build

    saved, meta = load_adapter(directory)
    where = f"checkpoint {os.fspath(directory)}"
    spec = spec_of(meta, where)
    if base_model is not None:
        spec = spec.replace(base_model=base_model)
    if compute_dtype is not None:
        spec = spec.replace(compute_dtype=compute_dtype)
    try:
        model, params = build(spec, saved, seed=seed, where=where, attention=attention)
    except (FileNotFoundError, OSError) as e:
        raise FileNotFoundError(f"{where} was trained on base model {spec.base_model!r}, which cannot be found "
                                f"({e}); pass base_model=<local HF model dir> to load it against a copy") from e
    return model, params, meta


def spec_of(meta: dict, where: str) -> ModelSpec:
    """The checkpoint's ``ModelSpec``; bad metadata is a ``CheckpointError`` naming the field."""
    try:
        return ModelSpec.from_metadata(meta, where)
    except MetadataError as e:
        raise CheckpointError(str(e)) from e
