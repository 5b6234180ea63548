"""AdapterFusion (Pfeiffer et al. 2021), matching AdapterHub's ``BertFusion``.

``config``, ``layer`` and ``regularizer`` sit beside the adapters, on ``jadapt.layers``; the
encoder places the fusion layer (``jadapt.models.adapter_site``). ``setup`` loads adapters
from checkpoints to fuse them, so it sits above the models and checkpoints: its names are
imported on first use, or importing ``jadapt.fusion.layer`` from the encoder would pull the
checkpoint code (and through it the encoder itself) in.
"""
from __future__ import annotations

import importlib

from jadapt.fusion.config import PRESETS, FusionConfig, fusion_preset
from jadapt.fusion.layer import FusionLayer, identity_init
from jadapt.fusion.regularizer import regularization_loss, value_kernels

_SETUP = ("FUSION_PATTERN", "fuse", "fusion_params", "fusion_state", "init_fusion_params", "load_for_fusion",
          "resolve_config", "unfuse")

__all__ = [
    "FUSION_PATTERN", "PRESETS", "FusionConfig", "FusionLayer", "fuse", "fusion_params", "fusion_preset",
    "fusion_state", "identity_init", "init_fusion_params", "load_for_fusion", "regularization_loss", "resolve_config",
    "unfuse", "value_kernels",
]


def __getattr__(name: str):
    if name in _SETUP:
        value = getattr(importlib.import_module("jadapt.fusion.setup"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jadapt.fusion' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
