"""Jit-compiled train and eval steps over the trainable partition.

Train state (a plain dict, checkpointed as is):
    {"step": int32 [], "trainable": params subtree, "opt_state": optax state, "rng": key}
Frozen params travel separately and are never differentiated or donated. The dropout key
of step ``t`` is ``fold_in(rng, t)``, so a resumed run draws exactly the same masks.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jadapt import tree

Batch = dict[str, jax.Array]


def loss_and_outputs(model, params: dict, batch: Batch, *, regression: bool, deterministic: bool,
                     dropout_key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Weighted mean loss (cross-entropy or MSE) and raw model outputs."""
    rngs = None if deterministic else {"dropout": dropout_key}
    out = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                      batch.get("token_type_ids"), deterministic=deterministic, rngs=rngs)
    w = batch["weight"].astype(jnp.float32)
    if regression:
        per = jnp.square(out.astype(jnp.float32) - batch["labels"].astype(jnp.float32))
    else:
        per = optax.softmax_cross_entropy_with_integer_labels(out.astype(jnp.float32), batch["labels"])
    return (per * w).sum() / jnp.maximum(w.sum(), 1.0), out


def init_state(trainable: dict, tx: optax.GradientTransformation, seed: int) -> dict:
    return {
        "step": jnp.zeros((), jnp.int32),
        "trainable": trainable,
        "opt_state": tx.init(trainable),
        "rng": jax.random.key(seed),
    }


def make_train_step(model, tx: optax.GradientTransformation, *, regression: bool) -> Callable:
    """``step(state, frozen, batch) -> (state, {"loss", "grad_norm"})`` (not yet jitted)."""
    fusion_reg = getattr(model, "fusion", None) is not None and model.fusion.regularization

    def step(state: dict, frozen: dict, batch: Batch):
        key = jax.random.fold_in(state["rng"], state["step"])

        def loss_fn(trainable):
            params = tree.merge(frozen, trainable)
            loss = loss_and_outputs(model, params, batch, regression=regression, deterministic=False,
                                    dropout_key=key)[0]
            if fusion_reg:  # AdapterFusion: 0.01 * ||I - V||^2 keeps value matrices near identity
                from jadapt.fusion.regularizer import regularization_loss

                loss = loss + regularization_loss(trainable)
            return loss

        loss, grads = jax.value_and_grad(loss_fn)(state["trainable"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["trainable"])
        new = {
            "step": state["step"] + 1,
            "trainable": optax.apply_updates(state["trainable"], updates),
            "opt_state": opt_state,
            "rng": state["rng"],
        }
        return new, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    return step


def make_eval_step(model, *, regression: bool) -> Callable:
    """``eval_step(trainable, frozen, batch) -> (loss_sum, weight_sum, predictions)``.

    Predictions are class ids (classification) or scores (regression), fp32 on device.
    """

    def eval_step(trainable: dict, frozen: dict, batch: Batch):
        params = tree.merge(frozen, trainable)
        loss, out = loss_and_outputs(model, params, batch, regression=regression, deterministic=True)
        w = batch["weight"].astype(jnp.float32)
        preds = out.astype(jnp.float32) if regression else jnp.argmax(out, -1)
        return loss * w.sum(), w.sum(), preds

    return eval_step


def jit_steps(train_step, eval_step, *, state_sharding: Any = None, frozen_sharding: Any = None,
              batch_sharding: Any = None):
    """Jit both steps with the given shardings; the train state is donated."""
    train = jax.jit(train_step, in_shardings=(state_sharding, frozen_sharding, batch_sharding),
                    out_shardings=(state_sharding, None), donate_argnums=(0,))
    state_trainable = state_sharding["trainable"] if isinstance(state_sharding, dict) else state_sharding
    evaluate = jax.jit(eval_step, in_shardings=(state_trainable, frozen_sharding, batch_sharding))
    return train, evaluate
