"""AdapterFusion (Pfeiffer et al. 2021), matching AdapterHub's ``BertFusion``."""
from jadapt.fusion.config import PRESETS, FusionConfig, fusion_preset
from jadapt.fusion.layer import FusionLayer, identity_init
from jadapt.fusion.regularizer import regularization_loss, value_kernels
from jadapt.fusion.setup import (
    FUSION_PATTERN,
    fuse,
    fusion_params,
    fusion_state,
    init_fusion_params,
    load_for_fusion,
    resolve_config,
    unfuse,
)

__all__ = [
    "FUSION_PATTERN", "PRESETS", "FusionConfig", "FusionLayer", "fuse", "fusion_params", "fusion_preset",
    "fusion_state", "identity_init", "init_fusion_params", "load_for_fusion", "regularization_loss", "resolve_config",
    "unfuse", "value_kernels",
]
