"""``fit(TrainConfig)``: the training run behind ``jadapt train``, top to bottom.

Phases: validate -> lock ``out`` -> data -> model -> optimizer/state (or resume) -> epochs of
jit steps with per-epoch dev evaluation -> best-dev adapter (``best/``) + ``metrics.json``.
Resuming: a run restarted with the same config and ``out`` continues from its last intact
checkpoint (step, RNG, optimizer state, data position, and the evals reported so far) and
ends bitwise identical to an uninterrupted run, in its state and in what it reports,
wherever it was killed: an epoch's checkpoint is written after its evaluation and records
it, and ``best/`` follows the checkpoint (``jadapt.train.publish``).
A non-finite loss stops the run (``NonFiniteError``) before anything non-finite is saved.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jadapt import tree
from jadapt.checkpoint import files
from jadapt.faults import fault_point
from jadapt.train import publish, run_dir
from jadapt.train.config import TrainConfig
from jadapt.train.epochs import run_steps
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
    """Train, evaluate every epoch, keep the best dev adapter; returns the final metrics.

    The run folder is locked for the run, checked against the settings it was started with
    (``jadapt.train.run_dir``), and a finished run is reported, not retrained.
    """
    from jadapt import data
    from jadapt.distributed import is_coordinator
    from jadapt.models.config import EncoderConfig
    from jadapt.models.hf import require_weights, resolve_model_path

    # --- validate everything cheap before any heavy work
    task = data.get_task(cfg.task)
    model_dir = require_weights(resolve_model_path(cfg.model))  # before a tokenizer opens it (see require_weights)
    enc_cfg = EncoderConfig.from_pretrained(model_dir)
    if cfg.max_length > enc_cfg.max_length:
        raise ValueError(f"max_length {cfg.max_length} exceeds the model's maximum {enc_cfg.max_length}")
    out = run_dir.prepare_out(Path(cfg.out))
    with run_dir.RunLock(out, enabled=is_coordinator()):
        fault_point("run-start")
        done = run_dir.open_run(out, cfg, write=is_coordinator())
        if done is not None:
            return done
        return _train(cfg, task, model_dir, enc_cfg, out)


class NonFiniteError(ValueError):
    """The training loss or the trained parameters stopped being finite numbers."""


def _train(cfg: TrainConfig, task, model_dir: Path, enc_cfg, out: Path) -> dict:
    from jadapt import data
    from jadapt.checkpoint import TrainCheckpointer
    from jadapt.distributed import is_coordinator

    t0 = time.time()
    coordinator = is_coordinator()

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

    # two kept: a damaged latest one leaves one to fall back to
    ckpt = TrainCheckpointer(out / "checkpoints", max_to_keep=2, keep_best=False)
    state, record = _resume(ckpt, state)
    start = int(state["step"])
    main = task.metrics[0]
    history, best_metrics = list(record.get("history", [])), record.get("best")
    if coordinator:
        if "history" in record:
            publish.reconcile_best(out, None if best_metrics is None else best_metrics["step"])
        elif (out / publish.BEST_METRICS).is_file():  # a checkpoint from before the record: trust the file
            best_metrics = json.loads((out / publish.BEST_METRICS).read_text())

    train_step, eval_step, state, frozen, put = place_and_jit(cfg, model, tx, task, state, frozen)
    stop_at = total_steps if cfg.max_steps is None else min(total_steps, cfg.max_steps)
    if start >= stop_at:
        why = ("the run's last checkpoint is its end" if start >= total_steps else
               f"it is at step {start} already and max_steps is {cfg.max_steps}")
        files.notice(f"{out}: nothing to train ({why}); reporting the run as its checkpoint records it")
    elif coordinator:
        (out / files.METRICS_FILE).unlink(missing_ok=True)  # a report of an earlier stop; the new one follows
    ahead = None
    if cfg.compile_ahead and start < stop_at:
        ahead = compile_ahead(train_step, eval_step, state, frozen, put, train, dev, cfg,
                              *divmod(start, steps_per_epoch))
        train_step, eval_step = ahead.waiting(train_step, "train"), ahead.waiting(eval_step, "eval")

    # --- epochs
    log = open(out / "log.jsonl", "a") if coordinator else open(os.devnull, "w")
    bar = _progress(cfg.progress, total_steps, start)
    step, losses = start, []  # losses: (step, device scalar) not yet checked for finiteness
    saved = [s for s in ckpt.all_steps() if s <= start]

    def save(step: int, state: dict) -> None:
        _check_finite(losses, state["trainable"], step, saved)
        if ckpt.save(step, state, {**metadata, "record": {"history": history, "best": best_metrics}}):
            saved.append(step)

    def on_step(step: int, epoch: int, state: dict, m) -> None:
        losses.append((step, m["loss"]))
        bar.update(1)
        if step % 10 == 0 or step == stop_at:
            _check_finite(losses, None, step, saved)
            rec = {"step": step, "epoch": epoch, "loss": float(m["loss"]),
                   "lr": learning_rate_now(state["opt_state"])}
            log.write(json.dumps(rec) + "\n")
            bar.set_postfix(loss=f"{rec['loss']:.4f}")
        epoch_end = step % steps_per_epoch == 0 or step >= total_steps
        if cfg.save_every and step % cfg.save_every == 0 and not epoch_end:
            save(step, state)  # an epoch's last step is saved after its evaluation

    def on_epoch_end(step: int, epoch: int, state: dict) -> None:
        nonlocal best_metrics
        _check_finite(losses, state["trainable"], step, saved)
        metrics = evaluate(eval_step, state["trainable"], frozen, dev, task, cfg.eval_batch_size, cfg.buckets)
        metrics.update(step=step, epoch=round(step / steps_per_epoch, 4))
        history.append(metrics)
        log.write(json.dumps(files.finite_json(metrics)[0]) + "\n")
        if best_metrics is None or metrics[main] > best_metrics[main]:
            best_metrics = metrics
            if coordinator:
                publish.publish_best(out, step, adapter_to_save(state["trainable"], frozen, model), metadata, metrics)
        log.flush()
        save(step, state)  # records the history and the best: a restart resumes what was reported
        fault_point("epoch-checkpoint")
        if coordinator:
            publish.remove_losers(out)

    try:
        state, step = run_steps(train_step, state, frozen, train, batch_size=cfg.batch_size, seed=cfg.seed,
                                steps_per_epoch=steps_per_epoch, start=start, stop=stop_at, total=total_steps,
                                buckets=cfg.buckets, put=put, on_step=on_step, on_epoch_end=on_epoch_end)
        if step > start and step not in saved:  # stopped inside an epoch (--max-steps): resumable from here
            log.flush()
            save(step, state)
    finally:  # a failed run must not leave a compile running into interpreter exit
        if ahead is not None:
            ahead.close()
        bar.close()
        ckpt.close()
        log.close()
    finished = step >= total_steps
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
        "total_steps": total_steps,
        "finished": finished,
        "trainable_params": tree.count(state["trainable"]),
        "total_params": tree.count(state["trainable"]) + tree.count(frozen),
        "wall_time_s": round(time.time() - t0, 2),
        "config": cfg.to_dict(),
    }
    if coordinator:
        fault_point("metrics")
        files.write_metrics(out, result)
        if finished:
            _keep_only_last(out / "checkpoints")
    return result


def _resume(ckpt, like: dict) -> tuple[dict, dict]:
    """(state, record) of the newest intact checkpoint, or (``like``, {}) where there is none.

    A damaged checkpoint (its checksums, or orbax, refuse it) is deleted, so that its step is
    written anew, and the one before it is tried, saying so; none left intact: stop.
    """
    from jadapt.checkpoint import CheckpointError

    steps = ckpt.all_steps()
    for i, step in enumerate(reversed(steps)):
        try:
            state = ckpt.restore(step, like=like)
            meta = ckpt.metadata(step)
        except CheckpointError as e:
            older = steps[:len(steps) - 1 - i]
            if not older:
                raise CheckpointError(f"{e}; no older intact checkpoint to resume from "
                                      f"(pass --restart to start over)") from None
            files.notice(f"{e}; resuming from {ckpt.directory / str(older[-1])} instead")
            ckpt.delete(step)
            continue
        return state, meta.get("record", {}) if isinstance(meta, dict) else {}
    return like, {"history": [], "best": None}


def _check_finite(losses: list, trainable, step: int, saved: list) -> None:
    """Raise NonFiniteError naming the first step whose loss (or, at ``step``, whose
    trained parameters, when ``trainable`` is given) is not finite. Reads the losses in one
    transfer, here rather than every step, so the steps keep being dispatched ahead."""
    where = f"; checkpoints up to step {saved[-1]} are intact" if saved else "; no checkpoint was written"
    if losses:
        values = np.asarray(jax.device_get([v for _, v in losses]), dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            s, v = losses[bad[0]][0], values[bad[0]]
            raise NonFiniteError(f"training loss is {v} at step {s}: the run stopped{where} "
                                 f"(a lower --lr may help)")
        losses.clear()
    if trainable is not None:
        finite = jax.tree_util.tree_map(lambda x: jnp.isfinite(x).all(), trainable)
        if not all(bool(f) for f in jax.tree_util.tree_leaves(finite)):
            raise NonFiniteError(f"trained parameters are not finite after step {step} (the loss was finite up "
                                 f"to there): the run stopped{where} (a lower --lr may help)")


def _keep_only_last(directory: Path) -> None:
    """A finished run keeps its final checkpoint only (the rolling ones were for resuming)."""
    from jadapt.checkpoint import TrainCheckpointer

    ck = TrainCheckpointer(directory, max_to_keep=None, keep_best=False)
    for s in ck.all_steps()[:-1]:
        ck.delete(s)
    ck.close()


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
