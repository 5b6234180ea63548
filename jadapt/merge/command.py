"""``jadapt merge``: K adapter checkpoints -> one merged adapter checkpoint (MerA).

    jadapt merge --adapters runs/sst2 runs/mr runs/cr --method align-weights --out runs/merged

A thin wrapper over :func:`jadapt.merge.checkpoints.merge_checkpoints` (what is merged, and
the compatibility checks, are described there) and ``save_merged``.
"""
from __future__ import annotations

import argparse

from jadapt.merge.methods import METHODS


def add_merge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapters", nargs="+", required=True, help="adapter checkpoint directories (K >= 1)")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--out", required=True, help="output adapter checkpoint directory")
    p.add_argument("--weights", nargs="+", type=float, default=None,
                   help="one weight per adapter (average / align / ot: normalised; sum / task-arithmetic / "
                        "dare / ties: as given). Default: uniform (1/K) or 1 for the sum-type methods")
    p.add_argument("--reference", type=int, default=0, help="index of the adapter the others are aligned to")
    p.add_argument("--seed", type=int, default=0, help="DARE drop masks and probe-subset sampling")
    p.add_argument("--base", default=None,
                   help="adapter checkpoint used as the base point of task vectors (default: zero adapter)")
    p.add_argument("--density", type=float, default=None,
                   help="TIES: fraction kept by magnitude (0.2); DARE: keep probability (0.5)")
    p.add_argument("--scale", type=float, default=1.0, help="lambda for task-arithmetic / ties / dare")
    p.add_argument("--sign-method", default="total", choices=("total", "frequency"))
    p.add_argument("--dare-combine", default="task_arithmetic", choices=("task_arithmetic", "ties"))
    p.add_argument("--solver", default="hungarian", choices=("hungarian", "scipy"))
    p.add_argument("--ot-cost", default="weights", choices=("weights", "activations"))
    p.add_argument("--exact", action="store_true", help="ot: exact transport (= permutation alignment)")
    p.add_argument("--epsilon", type=float, default=0.05, help="ot: Sinkhorn entropy, relative to the cost range")
    p.add_argument("--sinkhorn-iters", type=int, default=200)
    p.add_argument("--name", default=None, help="name of the merged adapter (default: the reference's)")
    p.add_argument("--model", default=None, help="base model dir (default: the checkpoints' base_model)")
    p.add_argument("--allow-base-mismatch", action="store_true",
                   help="merge adapters whose metadata names different base models of the same shape")
    p.add_argument("--probe-task", default=None, help="task whose inputs probe activations (align-activations)")
    p.add_argument("--probe-split", default=None, help="default: the task's train split")
    p.add_argument("--probe-size", type=int, default=256, help="probe examples (seeded subset)")
    p.add_argument("--data-dir", default=None, help="local data root (else $JADAPT_DATA_DIR, else the hub)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)


def run_merge(args: argparse.Namespace) -> dict:
    """Merge ``args.adapters`` into ``args.out``; returns a summary (also in ``metrics.json``)."""
    from jadapt.merge.checkpoints import Probe, merge_checkpoints, save_merged

    probe = None
    if args.probe_task:
        probe = Probe(args.probe_task, split=args.probe_split, size=args.probe_size, data_dir=args.data_dir,
                      batch_size=args.batch_size, max_length=args.max_length)
    params, meta = merge_checkpoints(
        args.adapters, args.method, weights=args.weights, reference=args.reference, base=args.base, name=args.name,
        base_model=args.model, allow_base_mismatch=args.allow_base_mismatch, seed=args.seed, probe=probe,
        density=args.density, scale=args.scale, sign_method=args.sign_method, dare_combine=args.dare_combine,
        solver=args.solver, ot_cost=args.ot_cost, exact=args.exact, epsilon=args.epsilon,
        num_iters=args.sinkhorn_iters)
    summary = save_merged(args.out, params, meta)
    print(f"merged {len(args.adapters)} adapters with {args.method} -> {summary['out']} ({summary['params']} params)")
    return summary
