"""A few steps of adapter training on a tiny random model, sharded by a strategy.

Imported by tests/test_sharding.py (single process) and run as a script, one copy per
process, by tests/distributed/test_multihost.py:

    JADAPT_COORDINATOR=localhost:PORT JADAPT_NUM_PROCESSES=2 JADAPT_PROCESS_ID=0 \\
    XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \\
        python tests/distributed/multihost_worker.py --out /tmp/p0.npz --strategy dp

The step is jadapt.train's (AdamW over the adapter + head + layer-norm partition, global-norm
clipping, weighted cross-entropy) with dropout on: hash dropout masks depend only on the
global element index, so every layout must compute the same function.
"""
from __future__ import annotations

import argparse
import functools
import sys

import numpy as np

BATCH, SEQ, STEPS, NUM_LABELS = 16, 12, 3, 3


def tiny_model():
    from jadapt.adapters.config import preset
    from jadapt.models.config import EncoderConfig
    from jadapt.models.model import AdapterModel, HeadConfig

    cfg = EncoderConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                        max_position_embeddings=64)
    return AdapterModel(cfg, adapters=(("a", preset("houlsby", bottleneck=8)),), active=("a",),
                        head=HeadConfig(num_labels=NUM_LABELS))


def global_batches(steps: int = STEPS, seed: int = 1) -> list[dict]:
    """The same host (numpy) batches on every process."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        lengths = rng.integers(4, SEQ + 1, BATCH)
        mask = (np.arange(SEQ)[None] < lengths[:, None]).astype(np.int32)
        ids = rng.integers(1, 100, (BATCH, SEQ)).astype(np.int32) * mask
        out.append({"input_ids": ids, "attention_mask": mask,
                    "labels": rng.integers(0, NUM_LABELS, BATCH).astype(np.int32),
                    "weight": np.ones(BATCH, np.float32)})
    return out


@functools.lru_cache(maxsize=1)
def initial_params() -> dict:
    """Host (numpy) params, identical on every process; computed once per process."""
    import jax

    from jadapt.models.pretrained import init_params

    return jax.device_get(init_params(tiny_model(), jax.random.key(0)))


def labels(params: dict) -> dict:
    """Adapter ``a`` (houlsby: + layer norms) and the head train; the rest is frozen."""
    from jadapt.train.optim import trainable_labels, trainable_rules

    return trainable_labels(params, trainable_rules("houlsby", ["a"], train_layer_norms=True))


def train(mesh, strategy: str, *, replicated="default", steps: int = STEPS, feed=None, params=None):
    """Run ``steps`` steps of jadapt.train's step (dropout on); returns
    (losses [steps], final trainable params, opt state, frozen params).

    ``feed(batch, mesh)`` places a host batch (default: jadapt.sharding.shard_batch);
    ``params``: host params to start from (default: :func:`initial_params`).
    """
    import jax

    from jadapt import sharding
    from jadapt.train.optim import make_optimizer, split
    from jadapt.train.step import init_state, jit_steps, make_eval_step, make_train_step

    model = tiny_model()
    params = initial_params() if params is None else params
    kw = {} if replicated == "default" else {"replicated": replicated}
    shardings = sharding.param_shardings(params, mesh, strategy, **kw)
    lab = labels(params)
    trainable, frozen = split(sharding.shard_params(params, shardings), lab)
    tr_sh, fr_sh = split(shardings, lab)
    tx = make_optimizer(split(lab, lab)[0], 1e-2, weight_decay=0.01)

    rep = sharding.replicated_sharding(mesh)
    opt_sh = sharding.opt_state_shardings(jax.eval_shape(tx.init, trainable), tr_sh, mesh)
    state_sh = {"step": rep, "trainable": tr_sh, "opt_state": opt_sh, "rng": rep}
    state = jax.jit(lambda tr: init_state(tr, tx, 0), out_shardings=state_sh)(trainable)
    step, _ = jit_steps(make_train_step(model, tx, regression=False), make_eval_step(model, regression=False),
                        state_sharding=state_sh, frozen_sharding=fr_sh,
                        batch_sharding=sharding.batch_sharding(mesh))
    feed = feed or sharding.shard_batch
    losses = []
    for b in global_batches(steps):
        state, metrics = step(state, frozen, feed(b, mesh))
        losses.append(metrics["loss"])
    return losses, state["trainable"], state["opt_state"], frozen


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="npz with losses and final trainable params (process 0 writes)")
    ap.add_argument("--strategy", default="dp")
    ap.add_argument("--model", type=int, default=1, help="mesh model-axis size")
    ap.add_argument("--shard-adapters", action="store_true", help="replicated=None")
    ap.add_argument("--params", help="npz of flat initial params (skips compiling the init)")
    args = ap.parse_args(argv)

    from jadapt import distributed  # before any other JAX use

    distributed.initialize(initialization_timeout=60)
    import jax
    from jax.experimental import multihost_utils

    from jadapt import sharding, tree

    mesh = sharding.make_mesh(model=args.model)
    feed = lambda b, m: distributed.global_batch(distributed.host_shard(b, m), m)
    params = None
    if args.params:
        with np.load(args.params) as f:
            params = tree.unflatten({k: f[k] for k in f.files})
    losses, trainable, _, _ = train(mesh, args.strategy, feed=feed, params=params,
                                    replicated=None if args.shard_adapters else "default")
    losses = [float(x.addressable_data(0)) for x in losses]  # replicated scalars
    flat = {p: np.asarray(multihost_utils.process_allgather(x, tiled=True)) for p, x in tree.flatten(trainable).items()}
    if distributed.is_coordinator():
        np.savez(args.out, losses=np.asarray(losses), process_count=jax.process_count(),
                 device_count=jax.device_count(), **{"param:" + p: v for p, v in flat.items()})
    print(f"process {jax.process_index()}/{jax.process_count()} losses {losses}", flush=True)
    jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
