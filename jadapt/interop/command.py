"""``jadapt import`` and ``jadapt export``: AdapterHub / PEFT folders <-> jadapt adapter checkpoints.

    jadapt import PATH --out DIR [--model BASE] [--name NAME]
    jadapt export --checkpoint DIR --format adapterhub|peft --out DIR [--name NAME] [--drop-unsupported]

Both write ``<out>/metrics.json`` with a summary (what was converted, parameter count).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from jadapt.checkpoint import files
from jadapt.interop import FORMATS


def add_import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="an AdapterHub (adapter_config.json + adapter weights) or PEFT LoRA folder")
    p.add_argument("--out", required=True, help="jadapt adapter checkpoint directory to write")
    p.add_argument("--model", default=None,
                   help="base model dir or hub id (default: the one the adapter names)")
    p.add_argument("--name", default=None, help="adapter name (default: AdapterHub's name / the PEFT folder name)")


def run_import(args) -> dict:
    from jadapt.interop import detect_format, import_adapter

    if not Path(args.path).is_dir():
        raise FileNotFoundError(f"adapter folder {args.path} does not exist")
    fmt = detect_format(args.path)
    try:
        meta = import_adapter(args.path, args.out, base_model=args.model, name=args.name)
    except FileExistsError as e:  # --out holds something that is not a jadapt checkpoint
        raise ValueError(str(e)) from e
    name, cfg = meta["adapters"][0]
    result = {"command": "import", "format": fmt, "source": str(args.path), "checkpoint": str(args.out),
              "adapter": name, "method": cfg["method"], "base_model": meta["base_model"],
              "head": meta["head"]}
    _write_metrics(Path(args.out), result)
    print(f"imported {fmt} adapter {name!r} ({cfg['method']}) on {meta['base_model']} -> {args.out}")
    return result


def add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="jadapt adapter checkpoint dir (e.g. <train out>/best)")
    p.add_argument("--format", required=True, choices=FORMATS, help="adapterhub (bottleneck) or peft (LoRA)")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--name", default=None, help="which adapter of the checkpoint (default: its only / active one)")
    p.add_argument("--drop-unsupported", action="store_true",
                   help="leave out what the format cannot hold (e.g. trained LayerNorms for AdapterHub) "
                        "instead of failing")


def run_export(args) -> dict:
    from jadapt.interop import export_adapter

    if not Path(args.checkpoint).exists():
        raise FileNotFoundError(f"--checkpoint {args.checkpoint}: the path does not exist")
    with warnings.catch_warnings(record=True) as caught:  # what was left out: one line each, no warning frames
        warnings.simplefilter("always")
        out = export_adapter(args.checkpoint, args.format, args.out, name=args.name,
                             strict=not args.drop_unsupported)
    left_out = []
    for w in caught:
        if issubclass(w.category, UserWarning) and "jadapt" in Path(w.filename).parts:
            left_out.append(str(w.message))
            print(f"jadapt: note: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    files = sorted(f.name for f in Path(out).iterdir() if f.name != "metrics.json")
    result = {"command": "export", "format": args.format, "checkpoint": str(args.checkpoint), "out": str(out),
              "files": files, "left_out": left_out}
    _write_metrics(Path(out), result)
    print(f"exported {args.checkpoint} as {args.format} -> {out} ({', '.join(files)})")
    return result


def _write_metrics(out: Path, result: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    files.write_metrics(out, result)
