"""``fit(TrainConfig)``: the training run behind ``jadapt train``, top to bottom.

Phases: validate -> data -> model -> optimizer/state (or resume) -> epochs of jit steps with
per-epoch dev evaluation -> best-dev adapter checkpoint + ``metrics.json``.
Resuming: a run restarted with the same config and ``out`` continues from its last
checkpoint (step, RNG, optimizer state and data position) and ends bitwise identical to an
uninterrupted run.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import jax
import numpy as np

from jadapt import tree
from jadapt.train.config import TrainConfig
from jadapt.train.model_setup import adapter_to_save, build_model, run_metadata
from jadapt.train.optim import learning_rate_now, make_optimizer, split, trainable_labels
from jadapt.train.step import init_state, jit_steps, make_eval_step, make_train_step


# ---------------------------------------------------------------- data
def prepare_data(cfg: TrainConfig, task, tokenizer_dir: Path, model_max_length: int) -> tuple[dict, dict]:
    """Tokenised (train, dev) numpy columns for the run's task, subset and seed."""
    from jadapt import data

    tok = data.load_tokenizer(tokenizer_dir)
    train_rows = data.load_split(task, task.train_split, cfg.data_dir)
    dev_rows = data.load_split(task, task.dev_split, cfg.data_dir)
    if cfg.train_size is not None:
        train_rows = data.subsample(train_rows, cfg.train_size, cfg.seed)
    if cfg.k_shot is not None:
        train_rows = data.k_shot(train_rows, cfg.k_shot, cfg.seed, task=task)
    train = data.encode(task, train_rows, tok, cfg.max_length, model_max_length=model_max_length)
    dev = data.encode(task, dev_rows, tok, cfg.max_length, model_max_length=model_max_length)
    return train, dev


# ---------------------------------------------------------------- devices
def place_and_jit(cfg: TrainConfig, model, tx, task, state: dict, frozen: dict):
    """Shard state / frozen params over the mesh by ``cfg.sharding`` and jit both steps."""
    from jadapt.sharding import (batch_sharding, make_mesh, opt_state_shardings, param_shardings,
                                 replicated_sharding)

    mesh = make_mesh()
    rep = replicated_sharding(mesh)
    train_sh = param_shardings(state["trainable"], mesh, cfg.sharding)
    state_sh = {"step": rep, "trainable": train_sh, "rng": rep,
                "opt_state": opt_state_shardings(state["opt_state"], train_sh, mesh)}
    frozen_sh = param_shardings(frozen, mesh, cfg.sharding)
    state, frozen = jax.device_put(state, state_sh), jax.device_put(frozen, frozen_sh)
    n_data = mesh.shape["data"]
    bsh = batch_sharding(mesh) if cfg.batch_size % n_data == 0 and cfg.eval_batch_size % n_data == 0 else None
    train_step, eval_step = jit_steps(make_train_step(model, tx, regression=task.regression),
                                      make_eval_step(model, regression=task.regression), state_sharding=state_sh,
                                      frozen_sharding=frozen_sh, batch_sharding=bsh)
    put = (lambda b: jax.device_put(b, bsh)) if bsh is not None else jax.device_put
    if jax.process_count() > 1:  # every process reads all rows; each feeds its slice of every batch
        from jadapt.distributed import global_batch, host_shard

        if bsh is None:
            raise ValueError(f"batch sizes must divide by the {n_data} data-parallel devices across hosts")
        put = lambda b: global_batch(host_shard(b, mesh), mesh)  # noqa: E731
        return train_step, (lambda t, f, b: eval_step(t, f, put(b))), state, frozen, put
    return train_step, eval_step, state, frozen, put


def compile_ahead(train_step, eval_step, state: dict, frozen: dict, put, train: dict, dev: dict,
                  cfg: TrainConfig, epoch: int, start_step: int):
    """Start compiling the train step for every batch width of this epoch (in the order the
    loop meets them) and the eval step for the dev set's widths, in a background thread
    (``jadapt.train.ahead``). Keys: ("train" | "eval", width)."""
    from jadapt import data
    from jadapt.train.ahead import CompileAhead, abstract

    state_spec, frozen_spec = abstract(state), abstract(frozen)
    jobs = []
    for width, batch in data.first_batch_per_width(train, cfg.batch_size, seed=cfg.seed, epoch=epoch,
                                                   start_step=start_step, buckets=cfg.buckets).items():
        jobs.append((("train", width), train_step, (state_spec, frozen_spec, abstract(put(batch)))))
    if hasattr(eval_step, "lower"):  # single process: the eval step takes host batches
        seen = set()
        for batch in data.eval_batches(dev, cfg.eval_batch_size, buckets=cfg.buckets, sort_by_length=True):
            width = batch["input_ids"].shape[1]
            if width not in seen:
                seen.add(width)
                jobs.append((("eval", width), eval_step, (state_spec["trainable"], frozen_spec, abstract(batch))))
    return CompileAhead(jobs)


# ---------------------------------------------------------------- evaluation
def evaluate(evaluate_fn, trainable, frozen, dev: dict, task, batch_size: int, buckets=None) -> dict:
    from jadapt import data
    from jadapt.train.metrics import compute_metrics

    loss_sum, w_sum, preds, labels, weights = 0.0, 0.0, [], [], []
    # length-sorted: less padding; labels travel with their rows
    for batch in data.eval_batches(dev, batch_size, buckets=buckets, sort_by_length=True):
        l, w, p = evaluate_fn(trainable, frozen, batch)
        loss_sum += float(l)
        w_sum += float(w)
        preds.append(np.asarray(p))
        labels.append(batch["labels"])
        weights.append(batch["weight"])
    metrics = compute_metrics(task, np.concatenate(preds), np.concatenate(labels), np.concatenate(weights))
    metrics["loss"] = loss_sum / max(w_sum, 1.0)
    return metrics


# ---------------------------------------------------------------- the run
def fit(cfg: TrainConfig) -> dict:
    """Train, evaluate every epoch, keep the best dev adapter; returns the final metrics."""
    from jadapt import data
    from jadapt.checkpoint import TrainCheckpointer, save_adapter
    from jadapt.models.config import EncoderConfig
    from jadapt.models.hf import resolve_model_path

    # --- validate everything cheap before any heavy work
    task = data.get_task(cfg.task)
    model_dir = resolve_model_path(cfg.model)
    enc_cfg = EncoderConfig.from_pretrained(model_dir)
    if cfg.max_length > enc_cfg.max_length:
        raise ValueError(f"max_length {cfg.max_length} exceeds the model's maximum {enc_cfg.max_length}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    # --- data
    train, dev = prepare_data(cfg, task, model_dir, enc_cfg.max_length)
    steps_per_epoch = data.num_batches(train, cfg.batch_size)
    total_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))

    # --- model, optimizer, state
    model, params, names = build_model(cfg, task, model_dir)
    from jadapt.train.optim import trainable_rules

    ln = cfg.train_layer_norms if cfg.train_layer_norms is not None else any(
        c.train_layer_norms for _, c in model.adapters if _ in names)
    labels = trainable_labels(params, trainable_rules(cfg.method, names, train_layer_norms=ln))
    trainable, frozen = split(params, labels)
    trainable_label_tree, _ = split(labels, labels)
    tx = make_optimizer(trainable_label_tree, cfg.learning_rate, total_steps=total_steps,
                        warmup_steps=int(cfg.warmup_ratio * total_steps), weight_decay=cfg.weight_decay,
                        max_grad_norm=cfg.max_grad_norm)
    state = init_state(trainable, tx, cfg.seed)
    metadata = run_metadata(cfg, model, model_dir, task)

    ckpt = TrainCheckpointer(out / "checkpoints", max_to_keep=1, keep_best=False)
    start = ckpt.latest_step()
    if start is not None:
        state = ckpt.restore(start, like=state)
    start = int(state["step"])

    train_step, eval_step, state, frozen, put = place_and_jit(cfg, model, tx, task, state, frozen)
    stop_at = total_steps if cfg.max_steps is None else min(total_steps, cfg.max_steps)
    ahead = None
    if cfg.compile_ahead and start < stop_at:
        ahead = compile_ahead(train_step, eval_step, state, frozen, put, train, dev, cfg,
                              *divmod(start, steps_per_epoch))
        train_step, eval_step = ahead.waiting(train_step, "train"), ahead.waiting(eval_step, "eval")

    # --- epochs
    from jadapt.distributed import is_coordinator

    log = open(out / "log.jsonl", "a") if is_coordinator() else open(os.devnull, "w")
    best, best_metrics, history = -math.inf, None, []
    best_path = out / "best"
    if (out / "best_metrics.json").is_file():
        best_metrics = json.loads((out / "best_metrics.json").read_text())
        best = best_metrics[task.metrics[0]]
    bar = _progress(cfg.progress, total_steps, start)
    step = start
    try:
        while step < stop_at:
            epoch, in_epoch = divmod(step, steps_per_epoch)
            batches = data.epoch_batches(train, cfg.batch_size, seed=cfg.seed, epoch=epoch, start_step=in_epoch,
                                         buckets=cfg.buckets)
            for batch in data.prefetch(batches, put):
                state, m = train_step(state, frozen, batch)
                step, in_epoch = step + 1, in_epoch + 1
                bar.update(1)
                if step % 10 == 0 or step == stop_at:
                    rec = {"step": step, "epoch": epoch, "loss": float(m["loss"]),
                           "lr": learning_rate_now(state["opt_state"])}
                    log.write(json.dumps(rec) + "\n")
                    bar.set_postfix(loss=f"{rec['loss']:.4f}")
                if cfg.save_every and step % cfg.save_every == 0:
                    ckpt.save(step, state, metadata)
                if step >= stop_at:
                    break
            if in_epoch >= steps_per_epoch or step >= total_steps:  # an epoch (or the run) ended
                metrics = evaluate(eval_step, state["trainable"], frozen, dev, task, cfg.eval_batch_size, cfg.buckets)
                metrics.update(step=step, epoch=round(step / steps_per_epoch, 4))
                history.append(metrics)
                log.write(json.dumps({"eval": metrics}) + "\n")
                if metrics[task.metrics[0]] > best:
                    best, best_metrics = metrics[task.metrics[0]], metrics
                    if is_coordinator():
                        save_adapter(best_path, adapter_to_save(state["trainable"], frozen, model),
                                     {**metadata, "metrics": metrics})
                        (out / "best_metrics.json").write_text(json.dumps(metrics, indent=1))
            log.flush()
            ckpt.save(step, state, metadata)
    finally:  # a failed run must not leave a compile running into interpreter exit
        if ahead is not None:
            ahead.close()
    bar.close()
    ckpt.close()
    log.close()
    if not history and best_metrics is None:  # resumed after the end: evaluate once more
        best_metrics = evaluate(eval_step, state["trainable"], frozen, dev, task, cfg.eval_batch_size, cfg.buckets)
    result = {
        "task": task.name,
        "method": cfg.method,
        **{k: v for k, v in (best_metrics or {}).items() if k not in ("step", "epoch")},
        "best_step": (best_metrics or {}).get("step"),
        "last": history[-1] if history else None,
        "history": history,
        "train_examples": int(len(train["labels"])),
        "dev_examples": int(len(dev["labels"])),
        "steps": step,
        "trainable_params": tree.count(state["trainable"]),
        "total_params": tree.count(state["trainable"]) + tree.count(frozen),
        "wall_time_s": round(time.time() - t0, 2),
        "config": cfg.to_dict(),
    }
    if is_coordinator():
        write_metrics(out, result)
    return result


def write_metrics(out: Path, metrics: dict) -> None:
    """Atomic ``metrics.json``."""
    tmp = out / ".metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=1, default=float))
    os.replace(tmp, out / "metrics.json")


class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix(self, **kw):
        pass

    def close(self):
        pass


def _progress(enabled: bool, total: int, initial: int):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
