"""Merging adapters: averaging, task arithmetic, TIES, DARE, permutation / OT alignment (MerA).

Every merge is a pure function ``[adapter, ...] -> adapter`` over params sub-trees as
``jadapt.models.pretrained.adapter_params(params, name)`` returns them; adapter names are
unified to the first adapter's (``unify_names``), and mismatched trees raise errors naming
the path and shapes. All are jit-able and keep leaves where they are sharded.

>>> from jadapt import merge
>>> merged = merge.merge_aligned([a, b, c])                     # align to a by weights, average
>>> merged = merge.merge_adapters([a, b], "ties", density=0.2)  # any method by name
>>> params, meta = merge.merge_checkpoints(["runs/a/best", "runs/b/best"], "align-weights")  # from checkpoints
"""
from jadapt.merge.activations import bottleneck_activations, collect as collect_activations, make_probe
from jadapt.merge.align import (
    activation_similarity,
    align_by_activations,
    align_by_weights,
    align_to_reference,
    merge_aligned,
    site_key,
    unit_features,
    weight_similarity,
)
from jadapt.merge.assignment import assignment_score, solve_assignment
from jadapt.merge.average import average, task_arithmetic, task_vectors, weighted_sum, zeros_like
from jadapt.merge.checkpoints import Probe, merge_checkpoints, save_merged
from jadapt.merge.dare import dare, drop_and_rescale
from jadapt.merge.methods import METHODS, merge_adapters
from jadapt.merge.ot import exact_transport, ot_align, ot_merge, sinkhorn, transport_adapter
from jadapt.merge.permutation import (
    identity_permutations,
    invert_permutation,
    permutation_matrix,
    permute_adapter,
    permute_site,
    random_permutations,
)
from jadapt.merge.sites import adapter_names, check_compatible, rename_adapter, unify_names, unit_sites
from jadapt.merge.ties import elect_sign, ties, trim

__all__ = [
    "METHODS", "Probe", "activation_similarity", "adapter_names", "align_by_activations", "align_by_weights",
    "align_to_reference", "assignment_score", "average", "bottleneck_activations", "check_compatible",
    "collect_activations", "dare", "drop_and_rescale", "elect_sign", "exact_transport", "identity_permutations",
    "invert_permutation", "make_probe", "merge_adapters", "merge_aligned", "merge_checkpoints", "ot_align",
    "ot_merge", "permutation_matrix", "permute_adapter", "permute_site", "random_permutations", "rename_adapter",
    "save_merged", "site_key", "sinkhorn", "solve_assignment", "task_arithmetic", "task_vectors", "ties",
    "transport_adapter", "trim", "unify_names", "unit_features", "unit_sites", "weight_similarity", "weighted_sum", "zeros_like",
]
