"""Which params train, and the optimizer over them.

``trainable_labels`` labels every leaf by path rules (first match wins, every leaf covered):
``"decay"`` / ``"no_decay"`` (trainable, with / without weight decay: biases, LayerNorms and
embeddings get none) or ``"frozen"``. ``make_optimizer`` turns labels into an
``optax.multi_transform`` whose frozen branch is ``optax.set_to_zero()``: frozen leaves carry
no optimizer state. jadapt's train step goes one further and differentiates only w.r.t. the
trainable partition (``split``), so frozen weight gradients are never formed.
"""
from __future__ import annotations

import re
from typing import Iterable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from jadapt import tree
from jadapt import param_paths as paths

TRAINABLE = ("decay", "no_decay")
FROZEN = "frozen"
METHODS = ("houlsby", "pfeiffer", "parallel", "lora", "full", "fusion", "head")

_NO_DECAY = re.compile(r"(/bias$|layer_norm/|norm_before/|norm_after/|embedding$)")


def trainable_rules(method: str, adapter_names: Iterable[str] = (), *, train_layer_norms: bool = False,
                    train_head: bool = True) -> list[tuple[str, bool]]:
    """(path regex, trains?) rules for a tuning method; first match wins.

    ``fusion``: the fusion layers (and head) train, the fused adapters stay frozen unless
    named in ``adapter_names`` (AdapterHub's ``unfreeze_adapters``).
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not supported; expected one of {METHODS}")
    if method == "full":
        return [(r".", True)]
    names = tuple(adapter_names)
    rules: list[tuple[str, bool]] = []
    if train_head:
        rules.append((paths.HEAD, True))
    if method == "fusion":
        rules.append((paths.FUSION_LAYERS, True))
    elif method != "head" and not names:
        raise ValueError(f"method {method!r} needs at least one adapter name")
    if names and method != "head":
        rules.append((paths.adapter_pattern(*names), True))
    if train_layer_norms:
        rules.append((r"^encoder/layer_\d+/(attention_layer_norm|output_layer_norm)/", True))
    rules.append((r".", False))
    return rules


def trainable_labels(params: dict, rules: Sequence[tuple[str, bool]]) -> dict:
    """Label tree: "decay" | "no_decay" | "frozen" for every leaf of ``params``."""
    trains = tree.label_by_rules(params, [(rx, "t" if t else "f") for rx, t in rules])
    return tree.map_with_path(
        lambda p, t: FROZEN if t == "f" else ("no_decay" if _NO_DECAY.search(p) else "decay"), trains)


def split(params: dict, labels: dict) -> tuple[dict, dict]:
    """(trainable, frozen) sub-trees of ``params`` by ``labels``."""
    flat_labels = tree.flatten(labels)
    return tree.partition(params, lambda p: flat_labels[p] != FROZEN)


def linear_schedule(lr: float, total_steps: int, warmup_steps: int) -> optax.Schedule:
    """Linear warmup to ``lr``, then linear decay to 0 (HF Trainer's default)."""
    warmup_steps = max(0, min(warmup_steps, total_steps))
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, max(warmup_steps, 1)),
         optax.linear_schedule(lr, 0.0, max(total_steps - warmup_steps, 1))],
        [warmup_steps],
    )


class ScheduleState(NamedTuple):
    count: jax.Array
    peak: jax.Array
    warmup: jax.Array
    total: jax.Array


def scale_by_linear_schedule(peak_lr: float, total_steps: int, warmup_steps: int) -> optax.GradientTransformation:
    """Scale updates by ``-lr(t)``, linear warmup then decay, with the schedule's numbers in
    the optimizer *state*: runs with other learning rates or lengths reuse the same compiled
    step (experiments run hundreds of short trainings in one process)."""

    def init(params):
        del params
        return ScheduleState(jnp.zeros((), jnp.int32), jnp.asarray(peak_lr, jnp.float32),
                             jnp.asarray(max(0, min(warmup_steps, total_steps)), jnp.float32),
                             jnp.asarray(max(total_steps, 1), jnp.float32))

    def update(updates, state, params=None):
        del params
        t = state.count.astype(jnp.float32)
        warm = state.peak * t / jnp.maximum(state.warmup, 1.0)
        decay = state.peak * jnp.maximum(state.total - t, 0.0) / jnp.maximum(state.total - state.warmup, 1.0)
        lr = jnp.where(t < state.warmup, warm, decay)
        updates = jax.tree_util.tree_map(lambda u: -lr * u, updates)
        return updates, state._replace(count=state.count + 1)

    return optax.GradientTransformation(init, update)


def learning_rate_now(opt_state) -> float | None:
    """The learning rate the next step will use (for logs), if the schedule lives in the state."""
    for leaf in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, ScheduleState)):
        if isinstance(leaf, ScheduleState):
            t, w, total, peak = (float(leaf.count), float(leaf.warmup), float(leaf.total), float(leaf.peak))
            return peak * t / max(w, 1.0) if t < w else peak * max(total - t, 0.0) / max(total - w, 1.0)
    return None


def make_optimizer(labels: dict, learning_rate: float | optax.Schedule, *, total_steps: int | None = None,
                   warmup_steps: int = 0, weight_decay: float = 0.01, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8, max_grad_norm: float | None = 1.0) -> optax.GradientTransformation:
    """AdamW on trainable leaves (no decay on biases / norms), ``set_to_zero`` on frozen ones.

    With ``total_steps`` the learning rate follows linear warmup + decay held in the optimizer
    state (:func:`scale_by_linear_schedule`; numerically AdamW as in PyTorch / optax.adamw);
    otherwise ``learning_rate`` is a constant or an optax schedule. ``labels`` may be the full
    label tree (frozen leaves get no state) or that of the trainable partition only (what
    jadapt's train step uses).
    """
    if total_steps is not None:
        lr_tx = scale_by_linear_schedule(learning_rate, total_steps, warmup_steps)
    else:
        lr_tx = optax.scale_by_learning_rate(learning_rate)

    def adamw(wd):
        parts = [optax.scale_by_adam(b1=b1, b2=b2, eps=eps)]
        if wd:
            parts.append(optax.add_decayed_weights(wd))
        return optax.chain(*parts)

    groups = {"decay": adamw(weight_decay), "no_decay": adamw(0.0), FROZEN: optax.set_to_zero()}
    tx = optax.chain(optax.multi_transform(groups, labels), lr_tx)
    if max_grad_norm:
        tx = optax.chain(optax.clip_by_global_norm(max_grad_norm), tx)
    return tx
