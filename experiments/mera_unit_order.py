"""How much permutation alignment has to do in a MerA pool: the fraction of bottleneck units
that weight alignment moves when every pool adapter is aligned to one reference.

Adapters trained from one shared initialisation (``experiments.mera_pool --shared-seed``:
seed 0 for every source task) keep their units in matching order after a short training, so
the optimal assignment is the identity and alignment equals plain averaging; the pool's
default (task i from seed i + 1) starts from different random units.

    python -m experiments.mera_unit_order --pools runs/mera/pool runs/mera/pool_seeds --reference stsb
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from experiments import common

RESULTS = Path(__file__).resolve().parent / "results"


def moved_fraction(pool_dir: str, reference: str) -> dict[str, float]:
    """{task: mean over sites of the fraction of units whose position changes}."""
    from experiments.mera_fewshot import Pool
    from jadapt.merge.align import align_to_reference

    pool = Pool(pool_dir)
    if reference not in pool.tasks:
        raise SystemExit(f"reference {reference!r} is not in the pool {pool_dir} ({', '.join(pool.tasks)})")
    _, perms = align_to_reference(pool.adapters, reference=pool.tasks.index(reference), method="weights")
    return {t: float(np.mean([np.mean(np.asarray(v) != np.arange(len(v))) for v in p.values()]))
            for t, p in zip(pool.tasks, perms)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pools", nargs="+", default=["runs/mera/pool", "runs/mera/pool_seeds"])
    p.add_argument("--reference", default="stsb")
    p.add_argument("--out", default=str(RESULTS / "mera_unit_order.md"))
    args = p.parse_args(argv)
    res = {d: moved_fraction(d, args.reference) for d in args.pools}
    tasks = list(next(iter(res.values())))
    rows = [[t, *[f"{100 * res[d].get(t, float('nan')):.1f}" for d in args.pools]] for t in tasks]
    text = ["# MerA pools: units moved by weight alignment", "",
            f"Fraction (%) of bottleneck units (mean over the 6 adapter sites) whose position changes when "
            f"weight alignment (Hungarian, in jit) aligns each pool adapter to the `{args.reference}` adapter.", "",
            common.markdown_table(["adapter", *args.pools], rows), "",
            f"command: `{common.command_line(['experiments/mera_unit_order.py', *(sys.argv[1:] if argv is None else argv)])}`"]
    Path(args.out).write_text("\n".join(text) + "\n")
    print("\n".join(text))
    return res


if __name__ == "__main__":
    main()
