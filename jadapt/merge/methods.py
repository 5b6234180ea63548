"""One entry point over every merge method, used by the CLI and by user code alike.

>>> merged = merge_adapters([a, b, c], "align-weights")           # MerA, weight matching
>>> merged = merge_adapters([a, b], "ties", density=0.2)            # base: zero adapter
>>> merged = merge_adapters([a, b], "dare", key=jax.random.key(0), density=0.5)
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax

from jadapt.merge.align import merge_aligned
from jadapt.merge.average import average, task_arithmetic, weighted_sum
from jadapt.merge.dare import dare
from jadapt.merge.ot import ot_merge
from jadapt.merge.ties import ties

METHODS = ("average", "sum", "task-arithmetic", "ties", "dare", "align-weights", "align-activations", "ot")
NEEDS_ACTIVATIONS = ("align-activations",)


def merge_adapters(adapters: Sequence[Mapping[str, Any]], method: str, *, weights: Optional[Any] = None,
                   base: Optional[Mapping[str, Any]] = None, reference: int = 0, key: Optional[jax.Array] = None,
                   density: Optional[float] = None, scale: float = 1.0, sign_method: str = "total",
                   dare_combine: str = "task_arithmetic", solver: str = "hungarian", batching: str = "vmap",
                   activations=None, mask=None, ot_cost: str = "weights", exact: bool = False,
                   epsilon: float = 0.05, num_iters: int = 200) -> dict:
    """Merge K adapters with ``method`` (one of ``METHODS``); unused options are ignored.

    ``density`` defaults to 0.2 for TIES (paper) and 0.5 for DARE (keep probability).
    ``activations`` / ``mask`` (from ``jadapt.merge.activations.collect``) are needed by
    ``align-activations`` and by ``ot`` with ``ot_cost="activations"``.
    """
    if method not in METHODS:
        raise ValueError(f"merge method {method!r} is not supported; expected one of {METHODS}")
    if method == "average":
        return average(adapters, weights)
    if method == "sum":
        return weighted_sum(adapters, weights)
    if method == "task-arithmetic":
        return task_arithmetic(adapters, base, weights, scale)
    if method == "ties":
        return ties(adapters, base, density=0.2 if density is None else density, weights=weights,
                         scale=scale, sign_method=sign_method)
    if method == "dare":
        if key is None:
            raise ValueError("method 'dare' needs a PRNG key (key=jax.random.key(seed))")
        return dare(adapters, key, base, density=0.5 if density is None else density, weights=weights,
                         scale=scale, combine=dare_combine, sign_method=sign_method)
    if method in ("align-weights", "align-activations"):
        how = "weights" if method == "align-weights" else "activations"
        return merge_aligned(adapters, reference=reference, weights=weights, method=how,
                                   activations=activations, mask=mask, solver=solver, batching=batching)
    return ot_merge(adapters, reference=reference, weights=weights, method=ot_cost, activations=activations,
                       mask=mask, exact=exact, epsilon=epsilon, num_iters=num_iters, solver=solver)
