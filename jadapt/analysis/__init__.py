"""How far tuning moves representations: per-layer RSA and linear CKA between two models.

>>> from jadapt.analysis import compare_models, tokenize_batches
>>> out = compare_models(base, base_params, tuned, tuned_params, tokenize_batches(tok, sentences))
>>> out["rsa"], out["cka"]  # [num_layers + 1] each; index 0 = embeddings output
"""
from jadapt.analysis.cka import (
    CkaStats,
    cka_init,
    cka_init_layers,
    cka_merge,
    cka_result,
    cka_result_layers,
    cka_update,
    cka_update_layers,
    linear_cka,
    linear_cka_layers,
)
from jadapt.analysis.collect import (
    CompareConfig,
    compare_models,
    compare_stream,
    layer_similarity,
    paired_layers,
    encoder_of,
    layer_rows,
    stream_representations,
    tokenize_batches,
)
from jadapt.analysis.rsa import PearsonStats, normalize_rows, pearson_merge, pearson_result, pearson_stats, rsa, rsa_layers

__all__ = [
    "CkaStats", "cka_init", "cka_init_layers", "cka_merge", "cka_result", "cka_result_layers", "cka_update",
    "cka_update_layers", "linear_cka", "linear_cka_layers",
    "CompareConfig", "compare_models", "compare_stream", "layer_similarity", "paired_layers",
    "encoder_of", "layer_rows", "stream_representations", "tokenize_batches",
    "PearsonStats", "normalize_rows", "pearson_merge", "pearson_result", "pearson_stats", "rsa", "rsa_layers",
]
