"""Bottleneck activations of an adapter on probe inputs, for activation-based alignment.

Each adapter is run **alone** in the frozen model: ``model`` has one active adapter slot
(``model.active == (name,)``) and the adapter's leaves are put into that slot of ``params``.
``BottleneckAdapter`` sows ``act(down(x))`` as ``intermediates/.../<site>/<name>/bottleneck``;
one jit-compiled forward per batch returns them, reshaped to tokens [B * S, m], plus the
attention mask [B * S]. All adapters of the same shape reuse the one compiled forward.

Results are keyed by ``jadapt.merge.align.site_key`` (site path without the adapter name),
so activations of differently named adapters line up.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp

from jadapt import tree
from jadapt.merge import sites

Tree = Mapping[str, Any]


def _slot(model, params: Tree, adapter: Tree) -> dict:
    """``adapter`` renamed to the model's active adapter and checked against its slot."""
    if len(model.active) != 1:
        raise ValueError(f"the probe model must have exactly one active adapter, has {model.active}")
    name = model.active[0]
    (adapter,) = sites.unify_names([adapter], name)
    flat, slot = tree.flatten(adapter), tree.flatten(params)
    for p, x in flat.items():
        if p not in slot:
            raise ValueError(f"adapter leaf {p} has no slot in the probe model's params "
                             f"(model adapters: {[n for n, _ in model.adapters]})")
        if tuple(slot[p].shape) != tuple(x.shape):
            raise ValueError(f"adapter leaf {p} has shape {tuple(x.shape)}, the probe model's slot "
                             f"{tuple(slot[p].shape)}: adapter config or base model differ")
    return adapter


def make_probe(model):
    """jit-compiled ``(params, adapter, batch) -> ({site_key: [B*S, m]}, mask [B*S])``."""

    @jax.jit
    def probe(params, adapter, batch):
        full = tree.merge(params, adapter)
        _, state = model.apply({"params": full}, batch["input_ids"], batch["attention_mask"],
                               batch.get("token_type_ids"), deterministic=True, mutable=["intermediates"])
        acts = {}
        for path, value in tree.flatten(state["intermediates"]).items():
            if path.endswith("/bottleneck"):
                z = value[0] if isinstance(value, (tuple, list)) else value
                key = path[: -len("/bottleneck")].rsplit("/", 1)[0]
                acts[key] = z.reshape(-1, z.shape[-1])
        return acts, batch["attention_mask"].reshape(-1)

    return probe


def bottleneck_activations(model, params: Tree, adapter: Tree, batches: Iterable[Mapping[str, Any]],
                           probe=None) -> tuple[dict[str, jax.Array], jax.Array]:
    """({site_key: [N, m]}, mask [N]) over all tokens of ``batches`` (padding included, masked 0).

    ``batches``: dicts with ``input_ids``, ``attention_mask`` [B, S] (``token_type_ids``
    optional). Pass ``probe=make_probe(model)`` to share one compiled forward.
    """
    adapter = _slot(model, params, adapter)
    probe = probe or make_probe(model)
    chunks, masks = [], []
    for batch in batches:
        acts, mask = probe(params, adapter, dict(batch))
        chunks.append(acts)
        masks.append(mask)
    if not chunks:
        raise ValueError("no probe batches given")
    if not chunks[0]:
        raise ValueError("the probe model sowed no bottleneck activations: is the adapter a bottleneck "
                         "adapter (LoRA has none) and active in the model?")
    acts = {k: jnp.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    return acts, jnp.concatenate(masks)


def collect(model, params: Tree, adapters: Sequence[Tree], batches: Sequence[Mapping[str, Any]]
            ) -> tuple[list[dict[str, jax.Array]], jax.Array]:
    """Activations of each adapter on the same batches: ([{site_key: [N, m]}] per adapter, mask [N])."""
    probe = make_probe(model)
    out, mask = [], None
    for a in adapters:
        acts, mask = bottleneck_activations(model, params, a, batches, probe)
        out.append(acts)
    return out, mask
