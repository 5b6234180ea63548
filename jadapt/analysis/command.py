"""``jadapt rsa``: how far did tuning move each layer's representations from the base model?

    jadapt rsa --tuned runs/sst2_adapter --task sst2 --num-sentences 500 --out results/rsa_sst2

Reads the first ``--num-sentences`` rows of ``<data-dir>/<task>/<split>.jsonl`` (sentence
pairs are encoded as pairs, as the model saw them), runs the base and the tuned model over
them, prints RSA and linear CKA per layer (0 = embeddings) and writes ``<out>/metrics.json``
(``rsa_layer_<i>``, ``cka_layer_<i>``, ``rsa_mean``, ``cka_mean``: means over the encoder
layers 1..L, since the embeddings are frozen under adapter tuning) and ``<out>/rsa.png``.
"""
from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path
from typing import Any, Optional

import numpy as np

from jadapt.analysis.collect import LEVELS, CompareConfig, compare_models, tokenize_batches
from jadapt.checkpoint import files

# Text fields per row, first match wins: pairs before single texts.
TEXT_FIELDS = (("sentence1", "sentence2"), ("question", "sentence"), ("premise", "hypothesis"),
               ("sentence_A", "sentence_B"), ("question1", "question2"), ("sentence",), ("text",))
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def add_rsa_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = parser
    p.add_argument("--base", default=None,
                   help="base model: HF model directory, a jadapt checkpoint, or omitted for the packaged default")
    p.add_argument("--tuned", required=True, help="tuned model: jadapt checkpoint directory (or an HF model directory)")
    p.add_argument("--task", default="sst2", help="task folder under --data-dir (e.g. sst2, rte, xnli/en)")
    p.add_argument("--data-dir", default=None, help="task data root (default: $JADAPT_DATA_DIR)")
    p.add_argument("--split", default="validation", help="split file name without .jsonl")
    p.add_argument("--text-file", default=None, help="use these sentences (one per line) instead of --task")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer directory (default: the first HF directory of base/tuned)")
    p.add_argument("--num-sentences", type=int, default=500)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--level", choices=LEVELS, default="sentence")
    p.add_argument("--tokens-per-sentence", type=int, default=8, help="token level: tokens sampled per sentence")
    p.add_argument("--seed", type=int, default=0, help="token level: sampling seed")
    p.add_argument("--block-size", type=int, default=256, help="RSA tile size (memory O(block^2))")
    p.add_argument("--out", required=True, help="output directory for metrics.json and rsa.png")
    return p


def load_texts(task: str, data_dir: str | os.PathLike | None = None, split: str = "validation",
               limit: Optional[int] = None) -> list:
    """The first ``limit`` inputs of a task split: strings, or (a, b) pairs for pair tasks."""
    from jadapt.data.loading import read_jsonl, resolve_data_dir

    root = resolve_data_dir(data_dir)
    if root is None:
        raise FileNotFoundError(f"--data-dir: the RSA probe reads {task!r} sentences from a local data directory; "
                                "pass --data-dir DIR or set $JADAPT_DATA_DIR (or give --text-file)")
    path = root / task / f"{split}.jsonl"
    if not path.is_file():
        have = sorted(p.stem for p in (root / task).glob("*.jsonl")) if (root / task).is_dir() else []
        raise FileNotFoundError(f"no {path}; splits present for {task!r}: {have or 'none (check --data-dir)'}")

    out = []
    for row in read_jsonl(path, limit=limit):
        fields = next((fs for fs in TEXT_FIELDS if all(k in row for k in fs)), None)
        if fields is None:
            raise ValueError(f"{path}: no known text fields in row keys {sorted(row)}; known: {TEXT_FIELDS}")
        out.append(row[fields[0]] if len(fields) == 1 else (row[fields[0]], row[fields[1]]))
    return out


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raw = Path(path).read_bytes()
        line = raw[: e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text ({e.reason})") from None


def is_hf_model_dir(path: Any) -> bool:
    if path is None:
        return True  # the packaged default
    p = Path(path)
    return not p.exists() or ((p / "config.json").is_file() and any((p / w).is_file() for w in HF_WEIGHTS))


def load_any(path: Optional[str]) -> tuple[Any, dict, dict]:
    """(model, params, metadata) from an HF model directory / default, or a jadapt checkpoint."""
    if is_hf_model_dir(path):
        from jadapt.models.hf import resolve_model_path
        from jadapt.models.pretrained import load_pretrained

        model, params = load_pretrained(path)
        return model, params, {"hf_model": str(resolve_model_path(path))}
    from jadapt.checkpoint import load_model

    return load_model(path)


def _model_dir(meta: Any) -> Optional[Path]:
    """The HF directory a model came from: ours ("hf_model") or a checkpoint's "base_model"."""
    from jadapt.models.hf import resolve_model_path

    for key in ("hf_model", "base_model"):
        v = meta.get(key) if isinstance(meta, dict) else None
        if isinstance(v, str):
            try:
                return resolve_model_path(v).resolve()
            except FileNotFoundError:
                continue
    return None


def _tokenizer_dir(args, meta_base: dict, meta_tuned: dict) -> str:
    if args.tokenizer:
        return args.tokenizer
    base_dir, tuned_dir = _model_dir(meta_base), _model_dir(meta_tuned)
    if base_dir and tuned_dir and base_dir != tuned_dir:
        print(f"warning: the tuned model was trained from {tuned_dir}, but --base is {base_dir}")
    found = base_dir or tuned_dir
    if found is None:
        from jadapt.models.hf import resolve_model_path

        print("note: no tokenizer found in base/tuned; using the packaged default model's")
        found = resolve_model_path(None)
    return str(found)


def metrics_dict(result: dict, num_sentences: int) -> dict[str, float]:
    """Flat JSON metrics; the means skip layer 0 (embeddings), frozen under adapter tuning."""
    rsa, cka = np.asarray(result["rsa"], float), np.asarray(result["cka"], float)
    m: dict[str, float] = {}
    for i, (r, c) in enumerate(zip(rsa, cka)):
        m[f"rsa_layer_{i}"], m[f"cka_layer_{i}"] = float(r), float(c)
    m["rsa_mean"] = float(np.mean(rsa[1:])) if len(rsa) > 1 else float(rsa[0])
    m["cka_mean"] = float(np.mean(cka[1:])) if len(cka) > 1 else float(cka[0])
    m["num_sentences"] = num_sentences
    m["num_rows"] = result["num_rows"]
    return m


def format_table(result: dict) -> str:
    lines = [f"{'layer':>6}  {'RSA':>7}  {'CKA':>7}"]
    for i, (r, c) in enumerate(zip(result["rsa"], result["cka"])):
        lines.append(f"{'emb' if i == 0 else i:>6}  {r:7.4f}  {c:7.4f}")
    return "\n".join(lines)


def run_rsa(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    from jadapt.analysis.plot import plot_layer_curves

    config = CompareConfig(level=args.level, tokens_per_sentence=args.tokens_per_sentence, seed=args.seed,
                           block_size=args.block_size)
    if args.text_file:
        texts = [t.strip() for t in _read_text(args.text_file).splitlines() if t.strip()][: args.num_sentences]
    else:
        texts = load_texts(args.task, args.data_dir, args.split, args.num_sentences)
    if len(texts) < 3:
        raise ValueError(f"need at least 3 sentences, got {len(texts)}")
    base, base_params, meta_base = load_any(args.base)
    tuned, tuned_params, meta_tuned = load_any(args.tuned)
    tokenizer = AutoTokenizer.from_pretrained(_tokenizer_dir(args, meta_base, meta_tuned))
    max_len = min(args.max_length, base.config.max_length, tuned.config.max_length)
    print("command: jadapt rsa " + " ".join(
        f"--{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in sorted(vars(args).items())
        if v is not None and not k.startswith("_") and k not in ("func", "command")))
    result = compare_models(base, base_params, tuned, tuned_params,
                            tokenize_batches(tokenizer, texts, args.batch_size, max_len), config)
    print(format_table(result))
    metrics = metrics_dict(result, len(texts))
    print(f"mean over layers 1..{len(result['rsa']) - 1}: RSA {metrics['rsa_mean']:.4f}  CKA {metrics['cka_mean']:.4f}"
          f"  ({len(texts)} sentences, {result['num_rows']} rows, level={args.level})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files.write_metrics(out, metrics)
    label = args.task if not args.text_file else Path(args.text_file).name
    plot_layer_curves({"RSA": result["rsa"], "CKA": result["cka"]}, out / "rsa.png",
                      title=f"tuned vs base ({label}, {args.level} level, n={len(texts)})")
    print(f"wrote {out / 'metrics.json'} and {out / 'rsa.png'}")
