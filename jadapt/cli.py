"""The ``jadapt`` command: train | eval | merge | rsa | import | export | convert.

Every command writes ``<out>/metrics.json``. Bad input (unknown task / method, missing
path, bad checkpoint, labels or lengths out of range) exits with status 2 and one line
``jadapt: error: ...`` naming the problem, before any heavy work starts.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

from jadapt import runtime
from jadapt.layers.precision import COMPUTE_DTYPES
from jadapt.models.config import ATTENTION_IMPLS


class _Parser(argparse.ArgumentParser):
    """Bad flags get the same one line as every other bad input (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"jadapt: error: {message}\n")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of ints such as 16,32,64,128, got {text!r}")
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"expected positive widths such as 16,32,64,128, got {text!r}")
    return out


def _int_at_least(low: int):
    """An argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or v < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return v

    return parse


_positive_int, _non_negative_int = _int_at_least(1), _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return v


def _yes_no(text: str) -> bool:
    if text not in ("yes", "no"):
        raise argparse.ArgumentTypeError(f"expected yes or no, got {text!r}")
    return text == "yes"


def _train_defaults() -> dict:
    """``TrainConfig``'s field defaults: the CLI states none of its own, so ``jadapt train``
    and ``jadapt.fit(TrainConfig(...))`` build the same run from the same words."""
    from jadapt.train.config import TrainConfig

    return {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}


def _eval_defaults() -> dict:
    """``evaluate_checkpoint``'s keyword defaults, for the same reason."""
    import inspect

    from jadapt.train.evaluate import evaluate_checkpoint

    return {n: p.default for n, p in inspect.signature(evaluate_checkpoint).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _add_common(p: argparse.ArgumentParser, d: dict) -> None:
    p.add_argument("--data-dir", default=d["data_dir"],
                   help="local data root (else $JADAPT_DATA_DIR, else the HF hub)")
    p.add_argument("--batch-size", type=_positive_int, default=d["batch_size"], help="default: %(default)s")
    p.add_argument("--max-length", type=_positive_int, default=d["max_length"], help="default: %(default)s")
    p.add_argument("--buckets", type=_int_list, default=d["buckets"],
                   help="padded batch widths, comma list (default 8,16,24,32,48,64,96,128,...,512; "
                        "fewer widths: fewer compilations, more padding)")
    p.add_argument("--out", required=True, help="output directory (metrics.json, checkpoints, log)")


def add_train_args(p: argparse.ArgumentParser) -> None:
    from jadapt.train.config import SHARDINGS
    from jadapt.train.optim import METHODS

    d = _train_defaults()
    p.add_argument("--task", required=True, help="e.g. rte, sst2, mrpc, stsb, mnli, xnli-de (see jadapt.data.TASKS)")
    p.add_argument("--method", default=d["method"], choices=METHODS, help="default: %(default)s")
    p.add_argument("--model", default=d["model"], help="HF model dir or hub id (default: packaged all-MiniLM-L6-v2)")
    p.add_argument("--train-size", type=_positive_int, default=d["train_size"],
                   help="seeded subset of N training examples")
    p.add_argument("--k-shot", type=_positive_int, default=d["k_shot"], help="k training examples per class")
    p.add_argument("--epochs", type=_positive_float, default=d["epochs"], help="default: %(default)s")
    p.add_argument("--max-steps", type=_positive_int, default=d["max_steps"], help="stop after N steps (resumable)")
    p.add_argument("--bottleneck", type=_positive_int, default=d["bottleneck"], help="default: %(default)s")
    p.add_argument("--reduction-factor", type=_positive_float, default=d["reduction_factor"],
                   help="bottleneck = hidden size / this (instead of --bottleneck)")
    p.add_argument("--lora-r", type=_positive_int, default=d["lora_r"], help="default: %(default)s")
    p.add_argument("--lora-alpha", type=_positive_float, default=d["lora_alpha"],
                   help="LoRA scaling is alpha / r (default: %(default)s)")
    p.add_argument("--lr", type=float, default=d["lr"], help="default: measured per method (see README)")
    p.add_argument("--warmup-ratio", type=float, default=d["warmup_ratio"], help="default: %(default)s")
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"], help="default: %(default)s")
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--compute-dtype", default=d["compute_dtype"], choices=COMPUTE_DTYPES,
                   help="matmul precision; bfloat16: bf16 operands, fp32 results on CPU, bf16 results on GPU/TPU")
    p.add_argument("--pooling", default=d["pooling"], choices=("mean", "cls"), help="default: %(default)s")
    _add_attention(p, d)
    p.add_argument("--train-layer-norms", type=_yes_no, default=d["train_layer_norms"], metavar="{yes,no}",
                   help="default: the method's preset (yes for houlsby)")
    p.add_argument("--init-adapter", default=d["init_adapter"],
                   help="adapter checkpoint or training run folder to start from (e.g. a merge)")
    p.add_argument("--fusion-adapters", nargs="*", default=d["fusion_adapters"],
                   help="adapter checkpoints or training run folders to fuse (--method fusion)")
    p.add_argument("--save-every", type=_non_negative_int, default=d["save_every"],
                   help="steps between resumable checkpoints (0: per epoch)")
    p.add_argument("--sharding", default=d["sharding"], choices=SHARDINGS,
                   help="how params are laid over the devices (batch is always data-parallel)")
    p.add_argument("--remat", action="store_true", default=d["remat"],
                   help="recompute each layer's activations in the backward pass "
                        "(MiniLM step: ~0.5x XLA temp memory, ~1.2x time)")
    p.add_argument("--no-compile-ahead", dest="compile_ahead", action="store_false", default=d["compile_ahead"],
                   help="compile each batch width's step when first met, not ahead in a background thread")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=d["progress"])
    p.add_argument("--restart", action="store_true", default=d["restart"],
                   help="--out holds a run (other settings, or finished): move it aside to <out>.old-<time> "
                        "and start over (without it, a rerun resumes or reports that run)")
    _add_common(p, d)


def train_config(args: argparse.Namespace):
    """The ``TrainConfig`` of parsed ``jadapt train`` flags: every field the flags name."""
    from jadapt.train.config import TrainConfig

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    given["fusion_adapters"] = tuple(given.get("fusion_adapters") or ())
    return TrainConfig(**given)


def run_train(args) -> dict:
    from jadapt.train.loop import fit

    cfg = train_config(args)
    _check_task(cfg.task)
    _check_model(cfg.model)
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
    d = _eval_defaults()
    p.add_argument("--checkpoint", required=True,
                   help="adapter checkpoint dir, or a training run folder (<train out>: its best/)")
    p.add_argument("--task", default=d["task"], help="default: the checkpoint's task")
    p.add_argument("--split", default=d["split"], help="default: the task's dev split")
    p.add_argument("--allow-task-mismatch", action="store_true", default=d["allow_task_mismatch"],
                   help="evaluate on --task although the checkpoint was trained on another task")
    _add_attention(p, d)
    _add_common(p, d)


def _add_attention(p: argparse.ArgumentParser, d: dict) -> None:
    p.add_argument("--attention", default=d["attention"], choices=ATTENTION_IMPLS,
                   help="attention kernel: matmul (fastest on CPU) or fused (jax.nn.dot_product_attention, "
                        "cuDNN flash attention on GPUs; skips attention-probability dropout in training)")


def run_eval(args) -> dict:
    from jadapt.train.evaluate import evaluate_checkpoint

    if args.task is not None:
        _check_task(args.task)
    if not Path(args.checkpoint).exists():
        raise FileNotFoundError(f"--checkpoint {args.checkpoint}: the path does not exist")
    from jadapt.checkpoint.files import write_metrics
    from jadapt.train.run_dir import prepare_out

    out = prepare_out(Path(args.out))  # before the work: a bad --out fails fast
    result = evaluate_checkpoint(args.checkpoint, task=args.task, data_dir=args.data_dir, split=args.split,
                                 batch_size=args.batch_size, max_length=args.max_length,
                                 attention=args.attention, buckets=args.buckets,
                                 allow_task_mismatch=args.allow_task_mismatch)

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
    from jadapt.models.hf import require_weights, resolve_model_path

    require_weights(resolve_model_path(model))


def build_parser() -> argparse.ArgumentParser:
    from jadapt.analysis.command import add_rsa_args, run_rsa
    from jadapt.convert.command import add_convert_args, run_convert
    from jadapt.interop.command import add_export_args, add_import_args, run_export, run_import
    from jadapt.merge.command import add_merge_args, run_merge

    parser = _Parser(prog="jadapt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {}
    for name, add, run, help_ in (
        ("train", add_train_args, run_train, "adapter-tune (or fully fine-tune) on a task"),
        ("eval", add_eval_args, run_eval, "evaluate an adapter checkpoint on a task"),
        ("merge", add_merge_args, run_merge, "merge K adapters into one (MerA)"),
        ("rsa", add_rsa_args, run_rsa, "layer-wise RSA / CKA vs the base model"),
        ("import", add_import_args, run_import, "import an AdapterHub / PEFT folder"),
        ("export", add_export_args, run_export, "export to AdapterHub / PEFT"),
        ("convert", add_convert_args, run_convert, "write a model shipped in another format as an HF folder"),
    ):
        add(sub.add_parser(name, help=help_))
        commands[name] = run
    parser.set_defaults(_commands=commands)
    return parser


def main(argv=None) -> int:
    runtime.maybe_reexec_with_allocator(argv)
    runtime.apply_xla_flags(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # bad flags (one line already printed), --help
        return e.code if isinstance(e.code, int) else 2
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
