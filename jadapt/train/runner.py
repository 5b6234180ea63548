"""Many short trainings of one model shape in one process, compiled once.

Studies (few-shot MerA, low-resource, learning-rate grids) run hundreds of small trainings.
``fit`` builds and compiles a fresh step per run; ``Runner`` keeps one jitted train / eval
step per model shape and varies everything else through arrays: the learning-rate schedule
lives in the optimizer state (``scale_by_linear_schedule``), initial adapter / head values
and the frozen params (e.g. another adapter pool for fusion) are arguments.

>>> runner = Runner(model, params, labels, regression=False)
>>> out = runner.run(task, train, dev, seed=0, epochs=20, lr=1e-3)
>>> out["final"]["accuracy"]
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from jadapt.train.epochs import run_steps
from jadapt.train.optim import make_optimizer, split
from jadapt.train.step import init_state, make_eval_step, make_train_step


# Padded widths of the studies' batches: the widths their recorded results (experiments/results)
# and per-width CPU costs (experiments.study.CPU_COST) were measured with; coarser than
# jadapt.data.DEFAULT_BUCKETS, which matters less here: a Runner compiles each width once for
# hundreds of runs.
STUDY_BUCKETS = (32, 64, 128, 256, 512)


class Runner:
    def __init__(self, model, params: dict, labels: dict, *, regression: bool, batch_size: int = 32,
                 eval_batch_size: int = 64, weight_decay: float = 0.01, max_grad_norm: float = 1.0,
                 buckets: tuple[int, ...] = STUDY_BUCKETS):
        self.model, self.regression, self.buckets = model, regression, tuple(buckets)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.init_trainable, self.frozen = split(params, labels)
        self.labels = split(labels, labels)[0]
        self._opt = dict(weight_decay=weight_decay, max_grad_norm=max_grad_norm)
        tx = make_optimizer(self.labels, 1.0, total_steps=1, **self._opt)  # structure; numbers live in state
        self.train_step = jax.jit(make_train_step(model, tx, regression=regression), donate_argnums=(0,))
        self.eval_step = jax.jit(make_eval_step(model, regression=regression))

    def evaluate(self, task, dev: dict, trainable: dict, frozen: Optional[dict] = None) -> dict:
        from jadapt.train.loop import evaluate

        return evaluate(self.eval_step, trainable, self.frozen if frozen is None else frozen, dev, task,
                        self.eval_batch_size, self.buckets)

    def run(self, task, train: dict, dev: dict, *, seed: int, epochs: float, lr: float, warmup_ratio: float = 0.1,
            trainable: Optional[dict] = None, frozen: Optional[dict] = None, eval_each_epoch: bool = False,
            return_params: bool = False, epoch_hook: Optional[Callable[[int, int, dict], dict]] = None) -> dict:
        """Train from ``trainable`` (default: the initial adapter + head) and evaluate on ``dev``.

        Returns {"final": metrics after the last step, "history": per-epoch metrics when
        ``eval_each_epoch``, "best": the best of those, "steps", "train_loss": the loss of every
        step} (+ "trainable" on request). ``epoch_hook(epoch, step, trainable)``, called at the
        end of every epoch (the last included), returns a dict recorded in "epoch_log": how a
        study scores more than one set per epoch (held-out and dev) without a second loop.
        """
        from jadapt import data

        frozen = self.frozen if frozen is None else frozen
        start = self.init_trainable if trainable is None else trainable
        steps_per_epoch = data.num_batches(train, self.batch_size)
        total = max(1, math.ceil(epochs * steps_per_epoch))
        tx = make_optimizer(self.labels, lr, total_steps=total, warmup_steps=int(warmup_ratio * total), **self._opt)
        state = init_state(jax.tree_util.tree_map(jnp.array, start), tx, seed)  # copy: the step donates
        history, losses, epoch_log = [], [], []

        def on_step(step, epoch, state, metrics):
            losses.append(metrics["loss"])  # device scalars: read once at the end, no sync per step

        def on_epoch_end(step, epoch, state):
            if epoch_hook is not None:
                epoch_log.append({"epoch": epoch + 1, "step": step, **epoch_hook(epoch + 1, step, state["trainable"])})
            if eval_each_epoch and step < total:  # the last epoch is scored below, as "final"
                history.append({**self.evaluate(task, dev, state["trainable"], frozen), "epoch": epoch + 1})

        state, step = run_steps(self.train_step, state, frozen, train, batch_size=self.batch_size, seed=seed,
                                steps_per_epoch=steps_per_epoch, start=0, stop=total, total=total,
                                buckets=self.buckets, on_step=on_step, on_epoch_end=on_epoch_end)
        final = {**self.evaluate(task, dev, state["trainable"], frozen), "epoch": round(step / steps_per_epoch, 4)}
        history.append(final) if eval_each_epoch else None
        main = data.get_task(task).metrics[0]
        out = {"final": final, "history": history, "epoch_log": epoch_log, "steps": step, "train_loss": [float(x) for x in losses],
               "best": max(history, key=lambda m: m[main]) if history else final}
        if return_params:
            out["trainable"] = jax.device_get(state["trainable"])
        return out
