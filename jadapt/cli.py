"""The ``jadapt`` command: train | eval | merge | rsa | import | export | convert.

Every command writes ``<out>/metrics.json``. Bad input (unknown task / method, missing
path, bad checkpoint, labels or lengths out of range) exits with status 2 and one line
``jadapt: error: ...`` naming the problem, before any heavy work starts.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jadapt import runtime
from jadapt.models.config import ATTENTION_IMPLS, COMPUTE_DTYPES

METHODS = ("houlsby", "pfeiffer", "parallel", "lora", "full", "fusion", "head")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of ints such as 16,32,64,128, got {text!r}")
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"expected positive widths such as 16,32,64,128, got {text!r}")
    return out


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help="local data root (else $JADAPT_DATA_DIR, else the HF hub)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--buckets", type=_int_list, default=None,
                   help="padded batch widths, comma list (default 8,16,24,32,48,64,96,128,...,512; "
                        "fewer widths: fewer compilations, more padding)")
    p.add_argument("--out", required=True, help="output directory (metrics.json, checkpoints, log)")


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, help="e.g. rte, sst2, mrpc, stsb, mnli, xnli-de (see jadapt.data.TASKS)")
    p.add_argument("--method", default="pfeiffer", help=f"one of {', '.join(METHODS)}")
    p.add_argument("--model", default=None, help="HF model dir or hub id (default: packaged all-MiniLM-L6-v2)")
    p.add_argument("--train-size", type=int, default=None, help="seeded subset of N training examples")
    p.add_argument("--k-shot", type=int, default=None, help="k training examples per class")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--max-steps", type=int, default=None, help="stop after N steps (resumable)")
    p.add_argument("--bottleneck", type=int, default=64)
    p.add_argument("--reduction-factor", type=float, default=None)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--lr", type=float, default=None, help="default: measured per method (see README)")
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compute-dtype", default="float32", choices=COMPUTE_DTYPES,
                   help="matmul precision; bfloat16: bf16 operands, fp32 results on CPU, bf16 results on GPU/TPU")
    p.add_argument("--pooling", default="mean", choices=("mean", "cls"))
    _add_attention(p)
    p.add_argument("--train-layer-norms", default=None, choices=("yes", "no"))
    p.add_argument("--init-adapter", default=None, help="adapter checkpoint to start from (e.g. a merge)")
    p.add_argument("--fusion-adapters", nargs="*", default=(), help="adapter checkpoints to fuse (--method fusion)")
    p.add_argument("--save-every", type=int, default=0, help="steps between resumable checkpoints (0: per epoch)")
    p.add_argument("--sharding", default="dp", choices=("dp", "fsdp", "tp", "fsdp+tp"),
                   help="how params are laid over the devices (batch is always data-parallel)")
    p.add_argument("--remat", action="store_true",
                   help="recompute each layer's activations in the backward pass "
                        "(MiniLM step: ~0.5x XLA temp memory, ~1.2x time)")
    p.add_argument("--no-compile-ahead", action="store_true",
                   help="compile each batch width's step when first met, not ahead in a background thread")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--restart", action="store_true",
                   help="--out holds a run (other settings, or finished): move it aside to <out>.old-<time> "
                        "and start over (without it, a rerun resumes or reports that run)")
    _add_common(p)


def run_train(args) -> dict:
    from jadapt.train.config import TrainConfig
    from jadapt.train.loop import fit

    if args.method not in METHODS:
        raise ValueError(f"method {args.method!r} is not supported; expected one of {METHODS}")
    _check_task(args.task)
    _check_model(args.model)
    cfg = TrainConfig(
        task=args.task, method=args.method, model=args.model, data_dir=args.data_dir, out=args.out,
        train_size=args.train_size, k_shot=args.k_shot, epochs=args.epochs, max_steps=args.max_steps,
        batch_size=args.batch_size, max_length=args.max_length, buckets=args.buckets, bottleneck=args.bottleneck,
        reduction_factor=args.reduction_factor, lora_r=args.lora_r, lora_alpha=args.lora_alpha,
        train_layer_norms=None if args.train_layer_norms is None else args.train_layer_norms == "yes",
        lr=args.lr, warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay, seed=args.seed,
        compute_dtype=args.compute_dtype, pooling=args.pooling, init_adapter=args.init_adapter,
        fusion_adapters=tuple(args.fusion_adapters), save_every=args.save_every,
        progress=not args.no_progress, sharding=args.sharding, attention=args.attention,
        remat=args.remat, compile_ahead=not args.no_compile_ahead, restart=args.restart,
    )
    result = fit(cfg)
    if not result["history"]:
        print(f"{result['task']} {result['method']}: stopped at step {result['steps']} before the first dev "
              f"evaluation (no result yet; rerun to go on) -> {args.out}/metrics.json")
        return result
    main = _main_metric(result)
    print(f"{result['task']} {result['method']}: dev {main[0]} = {main[1]:.4f} "
          f"(best of {len(result['history'])} evals, {result['wall_time_s']:.0f} s) -> {args.out}/metrics.json")
    return result


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="adapter checkpoint dir (e.g. <train out>/best)")
    p.add_argument("--task", default=None, help="default: the checkpoint's task")
    p.add_argument("--split", default=None, help="default: the task's dev split")
    p.add_argument("--allow-task-mismatch", action="store_true",
                   help="evaluate on --task although the checkpoint was trained on another task")
    _add_attention(p)
    _add_common(p)


def _add_attention(p: argparse.ArgumentParser) -> None:
    p.add_argument("--attention", default="matmul", choices=ATTENTION_IMPLS,
                   help="attention kernel: matmul (fastest on CPU) or fused (jax.nn.dot_product_attention, "
                        "cuDNN flash attention on GPUs; skips attention-probability dropout in training)")


def run_eval(args) -> dict:
    from jadapt.train.evaluate import evaluate_checkpoint

    if args.task is not None:
        _check_task(args.task)
    if not Path(args.checkpoint).exists():
        raise FileNotFoundError(f"checkpoint path {args.checkpoint} does not exist")
    result = evaluate_checkpoint(args.checkpoint, task=args.task, data_dir=args.data_dir, split=args.split,
                                 batch_size=args.batch_size, max_length=args.max_length,
                                 attention=args.attention, buckets=args.buckets,
                                 allow_task_mismatch=args.allow_task_mismatch)
    from jadapt.train.loop import write_metrics
    from jadapt.train.run_dir import prepare_out

    out = prepare_out(Path(args.out))

    write_metrics(out, result)
    main = _main_metric(result)
    print(f"{result['task']}: {main[0]} = {main[1]:.4f} on {result['examples']} examples -> {out}/metrics.json")
    return result


def _main_metric(result: dict) -> tuple[str, float]:
    from jadapt.data import get_task

    name = get_task(result["task"]).metrics[0]
    return name, float(result.get(name, float("nan")))


def _check_task(task: str) -> None:
    from jadapt.data import get_task

    get_task(task)


def _check_model(model) -> None:
    from jadapt.models.hf import resolve_model_path

    resolve_model_path(model)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jadapt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_args(sub.add_parser("train", help="adapter-tune (or fully fine-tune) on a task"))
    add_eval_args(sub.add_parser("eval", help="evaluate an adapter checkpoint on a task"))
    commands = {"train": run_train, "eval": run_eval}
    for name, module, add, run, help_ in (
        ("merge", "jadapt.merge.command", "add_merge_args", "run_merge", "merge K adapters into one (MerA)"),
        ("rsa", "jadapt.analysis.command", "add_rsa_args", "run_rsa", "layer-wise RSA / CKA vs the base model"),
        ("import", "jadapt.interop.command", "add_import_args", "run_import", "import an AdapterHub / PEFT folder"),
        ("export", "jadapt.interop.command", "add_export_args", "run_export", "export to AdapterHub / PEFT"),
    ):
        try:
            mod = __import__(module, fromlist=[add])
        except ImportError:
            continue
        getattr(mod, add)(sub.add_parser(name, help=help_))
        commands[name] = getattr(mod, run)
    from jadapt.convert.command import add_convert_args, run_convert

    add_convert_args(sub.add_parser("convert", help="write a model shipped in another format as an HF folder"))
    commands["convert"] = run_convert
    parser.set_defaults(_commands=commands)
    return parser


def main(argv=None) -> int:
    runtime.maybe_reexec_with_allocator(argv)
    runtime.apply_xla_flags(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    runtime.enable_compilation_cache(argv)
    try:
        from jadapt.distributed import initialize

        initialize()  # joins the other hosts of a multi-host run (env / TPU / SLURM); no-op otherwise
        args._commands[args.command](args)
    except (ValueError, FileNotFoundError, KeyError, NotADirectoryError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"jadapt: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jadapt: interrupted (checkpoints written so far are intact; rerun to resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
