"""Merge study run logs made elsewhere (a grid chunk on a GPU machine) into the results JSONL.

    python -m experiments.merge_logs experiments/results/effectiveness.jsonl /work/.device/.../effectiveness.jsonl

Records are keyed by their settings (``experiments.common.run_key``): a key already in the
destination is skipped (and counted when its results differ), every other record is
appended. Then rerun the study with ``--report-only`` to write the report from all runs.
"""
from __future__ import annotations

import argparse
import sys

from experiments import common


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dest", help="the results JSONL to add to (created if absent)")
    p.add_argument("sources", nargs="+", help="JSONL files of runs made elsewhere")
    args = p.parse_args(argv)
    missing = [s for s in args.sources if not common.Path(s).is_file()]
    if missing:
        p.exit(2, f"merge_logs: error: no such run log: {', '.join(missing)}\n")
    out = common.merge_logs(args.dest, args.sources)
    print(f"{args.dest}: {out['added']} runs added, {out['already']} already there"
          + (f" ({len(out['differ'])} with other results; the destination's kept)" if out["differ"] else ""))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
