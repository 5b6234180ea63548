"""Matmul FLOPs of a jadapt train / eval step, counted by formula (not measured).

Counted: every matmul at ``2 * m * n * k`` -- Q/K/V/output projections, FFN, attention
scores and context (``4 * B * S^2 * d`` forward per layer), bottleneck adapters, LoRA
pairs, AdapterFusion as jadapt computes it (K frozen adapters, then three d x d products per
token: Q, the key kernel moved to the query side, V on the weighted sum -- AdapterHub's form
projects every adapter output, ``(1 + 2K) d^2``; jadapt.fusion.layer), the head. Backward: the weight gradient of each trainable matmul (1x its forward)
and the input gradient wherever something trainable lies earlier in the forward order (1x;
2x for the attention core, which has four backward products). LayerNorm, softmax, GELU,
dropout, embeddings and AdamW are not counted (elementwise; a few % of the total).
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    intermediate: int
    batch: int
    seq: int


MINILM = dict(layers=6, hidden=384, intermediate=1536)
BERT_BASE = dict(layers=12, hidden=768, intermediate=3072)


def _ops(s: Shape, method: str, bottleneck: int = 64, lora_r: int = 8,
         fused: int = 3) -> list[tuple[float, bool, bool]]:
    """(forward flops, trainable weight, is attention core) in forward order."""
    t, d, f = s.batch * s.seq, s.hidden, s.intermediate
    full = method == "full"
    mm = lambda k, n: 2.0 * t * k * n  # noqa: E731
    ops = [(0.0, full, False)]  # embeddings
    for _ in range(s.layers):
        for target in ("query", "key", "value"):
            ops.append((mm(d, d), full, False))
            if method == "lora" and target in ("query", "value"):
                ops += [(mm(d, lora_r), True, False), (mm(lora_r, d), True, False)]
        ops.append((4.0 * s.batch * s.seq * s.seq * d, False, True))
        ops.append((mm(d, d), full, False))
        if method == "houlsby":
            ops += [(mm(d, bottleneck), True, False), (mm(bottleneck, d), True, False)]
        ops += [(mm(d, f), full, False), (mm(f, d), full, False)]
        if method in ("houlsby", "pfeiffer"):
            ops += [(mm(d, bottleneck), True, False), (mm(bottleneck, d), True, False)]
        if method == "fusion":  # K frozen Pfeiffer adapters, then the fusion layer (trains)
            ops += [(fused * mm(d, bottleneck), False, False), (fused * mm(bottleneck, d), False, False)]
            ops += [(mm(d, d), True, False)] * 3  # Q, W_k Q(q), V (the K-way scores and sum are vector products: not counted)
    ops += [(2.0 * s.batch * d * d, True, False), (2.0 * s.batch * d * 2, True, False)]
    return ops


def step_flops(s: Shape, method: str, **kw) -> dict[str, float]:
    """{"forward", "train"}: FLOPs of one eval forward and of one train step."""
    fwd = bwd = 0.0
    seen_trainable = False
    for flops, trainable, attention in _ops(s, method, **kw):
        fwd += flops
        if trainable:
            bwd += flops  # weight gradient
        if seen_trainable:
            bwd += flops * (2 if attention else 1)  # input gradient
        seen_trainable = seen_trainable or trainable
    return {"forward": fwd, "train": fwd + bwd}
