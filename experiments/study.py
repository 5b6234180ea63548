"""What the effectiveness studies share: methods, compiled-once training (``Tuner``), a
resumable grid (``Study``), CPU-cost estimates (``Cost``), options and report helpers.

Used by experiments.effectiveness (low resource, learning rate, overfitting), forgetting and
cross_lingual; the statistics they report by live in experiments.protocol.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from experiments import common
from jadapt.train.config import DEFAULT_LR

RESULTS = Path(__file__).resolve().parent / "results"
ADAPTER_LR = DEFAULT_LR["houlsby"]  # the studies' fixed-rate defaults are jadapt train's
FULL_LR = DEFAULT_LR["full"]


# =============================================================================== shared
@dataclasses.dataclass(frozen=True)
class Method:
    """One tuning method of a study: ``kind`` "houlsby" | "pfeiffer" | "full"."""

    name: str
    kind: str
    bottleneck: Optional[int]
    lr: float

    def __post_init__(self):
        if self.kind not in ("houlsby", "pfeiffer", "full"):
            raise ValueError(f"method kind {self.kind!r} is not supported; expected houlsby, pfeiffer or full")
        if (self.kind == "full") != (self.bottleneck is None):
            raise ValueError(f"method {self.name!r}: bottleneck is for adapters only, got {self.bottleneck}")
        if not self.lr > 0:
            raise ValueError(f"method {self.name!r}: lr must be > 0, got {self.lr}")


def parse_methods(spec: str, adapter: str = "houlsby", adapter_lr: float = ADAPTER_LR,
                  full_lr: float = FULL_LR) -> list[Method]:
    """"adapter64,adapter256,full" -> Methods (``adapter<m>`` = ``adapter`` kind, bottleneck m)."""
    out = []
    for name in (s.strip() for s in spec.split(",") if s.strip()):
        if name == "full":
            out.append(Method("full", "full", None, full_lr))
        elif name.startswith("adapter") and name[len("adapter"):].isdigit():
            out.append(Method(name, adapter, int(name[len("adapter"):]), adapter_lr))
        else:
            raise ValueError(f"method {name!r} is not supported; expected 'full' or 'adapter<bottleneck>' (adapter64)")
    if not out:
        raise ValueError("--methods names no method")
    return out


def parse_list(text: str, cast=str) -> list:
    return [cast(s.strip()) for s in str(text).split(",") if s.strip()]


def model_identity(folder, given: Optional[str]) -> str:
    """The encoder's name in run keys and reports: a pack's ``study_identity``
    (``experiments.device_pack``: the same encoder wherever the pack lies, here or on a GPU
    machine), else what was given (the packaged model when nothing was)."""
    from jadapt.folders import read_folder_json

    source = read_folder_json(Path(str(folder)), "jadapt_source.json") or {}
    if source.get("study_identity"):
        return str(source["study_identity"])
    return str(given) if given else "all-MiniLM-L6-v2 (packaged)"


class Tuner:
    """Trains ``Method``s on tasks with few compilations.

    One ``jadapt.train.runner.Runner`` per (method, head shape): tasks whose heads have the
    same shape (all binary tasks) share its compiled steps, because the adapter is named
    "task" whatever the task. ``start(seed)`` gives each seed fresh adapter / head values
    (the pretrained leaves stay as loaded).
    """

    ADAPTER = "task"

    def __init__(self, model: Optional[str] = None, *, max_length: int = 128, batch_size: int = 32,
                 eval_batch_size: int = 64, compute_dtype: str = "float32", data_dir: Optional[str] = None,
                 buckets: Optional[tuple[int, ...]] = None):
        from transformers import AutoTokenizer

        from jadapt.models.config import EncoderConfig
        from jadapt.models.hf import resolve_model_path

        self.model_dir = resolve_model_path(model)
        self.model_name = model_identity(self.model_dir, model)
        self.config = EncoderConfig.from_pretrained(self.model_dir)
        if max_length > self.config.max_length:
            raise ValueError(f"max_length {max_length} exceeds the model's maximum {self.config.max_length}")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        self.max_length, self.compute_dtype, self.data_dir = max_length, compute_dtype, data_dir
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.buckets = buckets  # None: the Runner's STUDY_BUCKETS
        self._setups: dict = {}
        self._encoded: dict = {}
        self._base = None

    # ---------------------------------------------------------------- data
    def encoded(self, task, split: str) -> dict:
        """All rows of ``task``'s ``split``, tokenised (cached)."""
        from jadapt import data

        spec = data.get_task(task)
        key = (spec.name, split)
        if key not in self._encoded:
            rows = data.load_split(spec, split, self.data_dir)
            self._encoded[key] = data.encode(spec, rows, self.tokenizer, self.max_length,
                                             model_max_length=self.config.max_length)
        return self._encoded[key]

    def task_data(self, task, *, train_size: Optional[int] = None, seed: int = 0,
                  dev_limit: Optional[int] = None) -> tuple[dict, dict]:
        """(train, dev) encoded: a seeded ``train_size`` subset (None = all), the dev split
        (its first ``dev_limit`` rows when given: quick modes only)."""
        from jadapt import data

        spec = data.get_task(task)
        train = self.encoded(spec, spec.train_split)
        if train_size is not None and train_size < data.num_rows(train):
            train = data.subsample(train, train_size, seed)
        dev = self.encoded(spec, spec.dev_split)
        if dev_limit is not None and dev_limit < data.num_rows(dev):
            dev = data.take(dev, np.arange(dev_limit))
        return train, dev

    # ---------------------------------------------------------------- models
    def head(self, task):
        from jadapt import data
        from jadapt.models.model import HeadConfig

        spec = data.get_task(task)
        return HeadConfig(num_labels=1 if spec.regression else spec.num_labels, regression=spec.regression)

    def setup(self, method: Method, task) -> dict:
        """{"runner", "model", "init", "loaded"} for ``method`` with ``task``'s head shape."""
        import jax
        import jax.numpy as jnp

        from jadapt.adapters.config import preset
        from jadapt.models.build import pretrained_paths
        from jadapt.models.pretrained import load_pretrained
        from jadapt.train.optim import trainable_labels, trainable_rules
        from jadapt.train.runner import Runner

        head = self.head(task)
        key = (method.kind, method.bottleneck, head.num_labels, head.regression)
        if key in self._setups:
            return self._setups[key]
        adapters = () if method.kind == "full" else ((self.ADAPTER, preset(method.kind, bottleneck=method.bottleneck)),)
        model, params = load_pretrained(self.model_dir, adapters=adapters, head=head, compute_dtype=self.compute_dtype)
        ln = bool(adapters) and adapters[0][1].train_layer_norms
        labels = trainable_labels(params, trainable_rules(method.kind, [n for n, _ in adapters], train_layer_norms=ln))
        runner = Runner(model, params, labels, regression=head.regression, batch_size=self.batch_size,
                        eval_batch_size=self.eval_batch_size,
                        **({"buckets": self.buckets} if self.buckets else {}))
        loaded = pretrained_paths(model, self.model_dir)
        ids = jnp.ones((1, 8), jnp.int32)
        init = jax.jit(lambda k: model.init({"params": k}, ids, jnp.ones_like(ids))["params"])
        self._setups[key] = {"runner": runner, "model": model, "init": init, "loaded": loaded}
        return self._setups[key]

    def start(self, method: Method, task, seed: int) -> dict:
        """Initial trainable leaves for ``seed``: pretrained where the checkpoint has them,
        fresh (seeded) adapter / head values elsewhere."""
        import jax

        from jadapt import tree

        s = self.setup(method, task)
        base = tree.flatten(s["runner"].init_trainable)
        new = [p for p in base if p not in s["loaded"]]
        fresh = tree.flatten(s["init"](jax.random.key(seed)))
        return tree.unflatten({p: (fresh[p] if p in new else x) for p, x in base.items()})

    def run(self, method: Method, task, train: dict, dev: dict, *, seed: int, epochs: float,
            lr: Optional[float] = None, eval_each_epoch: bool = False, return_params: bool = False,
            epoch_hook=None) -> dict:
        """One training run (``Runner.run``) from the seed's initial values; adds "wall_s" and
        "cpu_s" (process CPU seconds, all threads: on a shared machine the better cost measure)."""
        s = self.setup(method, task)
        with common.Timer() as t:
            out = s["runner"].run(task, train, dev, seed=seed, epochs=epochs, lr=method.lr if lr is None else lr,
                                  trainable=self.start(method, task, seed), eval_each_epoch=eval_each_epoch,
                                  return_params=return_params, epoch_hook=epoch_hook)
        out["wall_s"], out["cpu_s"] = round(t.wall, 2), round(t.cpu, 2)
        return out

    def base(self) -> tuple[Any, dict]:
        """(model, params) of the original encoder: no adapters, no head (cached)."""
        if self._base is None:
            from jadapt.models.pretrained import load_pretrained

            self._base = load_pretrained(self.model_dir, compute_dtype=self.compute_dtype)
        return self._base

    def tuned(self, method: Method, task, trainable: dict) -> tuple[Any, dict]:
        """(model, all params) of a tuned run (``run(..., return_params=True)["trainable"]``)."""
        from jadapt import tree

        s = self.setup(method, task)
        return s["model"], tree.merge(s["runner"].frozen, trainable)

    def trainable_count(self, method: Method, task) -> int:
        from jadapt import tree

        return tree.count(self.setup(method, task)["runner"].init_trainable)


class Study:
    """A resumable grid: runs keyed by their settings in a ``common.RunLog``, progress printed.

    >>> study = Study(log_path, total=len(grid))
    >>> rec = study.once(spec, lambda: {...result...}, what="rte n=1000 adapter64 seed 0")
    """

    def __init__(self, path: str | os.PathLike, specs: Sequence[dict], *, report_only: bool = False,
                 max_minutes: Optional[float] = None):
        self.report_only = report_only  # then ``once`` runs nothing: None for a run not in the log
        self.deadline = common.Deadline(max_minutes)  # a chunk of the grid (a GPU call's limit)
        self.stopped = 0  # runs left for a later chunk
        self.log = common.RunLog(path)
        self.by_key = {r["key"]: r for r in self.log}
        keys = [common.run_key(s) for s in specs]
        self.progress = common.Progress(len(specs), already_done=sum(k in self.by_key for k in set(keys)))
        print(f"{len(specs)} runs ({self.progress.done} done earlier) -> {self.log.path}", flush=True)

    def is_done(self, spec: dict) -> bool:
        return common.run_key(spec) in self.by_key

    def todo(self, grid: Sequence, specs: Sequence[dict]) -> list:
        """The grid items whose spec is not in the log yet."""
        return [g for g, s in zip(grid, specs) if not self.is_done(s)]

    def once(self, spec: dict, fn, *, what: str, show=None) -> Optional[dict]:
        """The record of ``spec``: from the log, else ``fn()`` (a dict) run now and logged
        (with ``report_only``: None)."""
        key = common.run_key(spec)
        if key in self.by_key:
            print(f"[skip] {what}: done earlier", flush=True)
            return self.by_key[key]
        if self.report_only:
            print(f"[missing] {what}: not in the log, left out of the report", flush=True)
            return None
        if not self.deadline.allows_next():
            self.stopped += 1
            print(f"[later] {what}: the time limit would pass before it ends; left for the next chunk", flush=True)
            return None
        t0 = time.time()
        rec = {"key": key, "spec": spec, **fn()}
        self.deadline.ran(time.time() - t0)
        self.log.append(rec)
        self.by_key[key] = rec
        self.progress.step(f"{what}: {show(rec) if show else ''}")
        return rec


def predict_rows(runner, task, enc: dict, trainable: dict, frozen: Optional[dict] = None) -> tuple[np.ndarray, dict]:
    """(per-row predictions in row order, metrics incl. loss) of a tuned model on ``enc``:
    what a paired row bootstrap (``protocol.bootstrap_metric_diff``) needs besides the score."""
    from jadapt import data
    from jadapt.train.metrics import compute_metrics

    frozen = runner.frozen if frozen is None else frozen
    n = data.num_rows(enc)
    preds = np.zeros(n, np.float64)
    loss_sum = w_sum = 0.0
    for batch in data.eval_batches(enc, runner.eval_batch_size, buckets=runner.buckets, sort_by_length=True):
        loss, w, p = runner.eval_step(trainable, frozen, batch)
        loss_sum, w_sum = loss_sum + float(loss), w_sum + float(w)
        keep = batch["index"] >= 0
        preds[batch["index"][keep]] = np.asarray(p, np.float64)[keep]
    metrics = compute_metrics(task, preds, np.asarray(enc["labels"]), np.ones(n))
    return preds, {**metrics, "loss": loss_sum / max(w_sum, 1.0)}


def cost_line(records: Sequence[dict]) -> str:
    """Summed wall and CPU time of the runs (CPU: all threads; on a shared machine it is the
    steadier measure of cost -- wall time there mostly measures the other jobs)."""
    wall = sum(r.get("wall_s", 0.0) for r in records)
    cpu = sum(r.get("cpu_s", 0.0) for r in records)
    steps = sum(r.get("steps", 0) for r in records)
    return (f"Summed time of the {len(records)} runs (training, evaluation and compilation): wall "
            f"{common.fmt_duration(wall)}, CPU {common.fmt_duration(cpu)} for {steps} train steps "
            f"({cpu / max(steps, 1):.2f} CPU s per step, all included).")


class Cost:
    """The work a study plans, for ``--dry-run``: train steps and forward-only batches by
    (method kind, sequence width), and an estimate from per-batch CPU costs."""

    def __init__(self, tuner: "Tuner"):
        self.tuner = tuner
        self.train: dict = {}
        self.forward: dict = {}
        self.runs = 0

    def _widths(self, enc: dict, batch_size: int, shuffle: bool) -> list[int]:
        from jadapt import data
        from jadapt.train.runner import STUDY_BUCKETS

        sizes = data.bucket_sizes(enc["input_ids"].shape[1], STUDY_BUCKETS)
        lengths = np.asarray(enc["lengths"])
        if shuffle:
            plan = data.epoch_plan(enc, batch_size, seed=0, epoch=0)
        else:
            n = data.num_rows(enc)
            plan = [np.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
        return [data.bucket_for(int(lengths[idx].max()), sizes) for idx in plan]

    def add(self, method: Method, train: Optional[dict], epochs: float, forward: Sequence[dict] = ()) -> None:
        """One run: ``epochs`` over ``train`` and one forward pass over each of ``forward``."""
        kind = method.kind if method.kind == "full" else f"adapter{method.bottleneck}"
        self.runs += 1
        if train is not None:
            widths = self._widths(train, self.tuner.batch_size, True)
            total = max(1, math.ceil(epochs * len(widths)))
            for i in range(total):
                key = (kind, widths[i % len(widths)])
                self.train[key] = self.train.get(key, 0) + 1
        for enc in forward:
            for w in self._widths(enc, self.tuner.eval_batch_size, False):
                self.forward[(kind, w)] = self.forward.get((kind, w), 0) + 1

    def _unit(self, cpu_cost: dict, kind: str, width: int) -> Optional[dict]:
        """CPU s per train step / forward batch of this run's batch sizes (adapters of a size
        not measured fall back to adapter64's cost)."""
        c = cpu_cost.get(f"{kind}/{width}") or (cpu_cost.get(f"adapter64/{width}") if kind != "full" else None)
        if not c:
            return None
        return {"train": c["train_cpu"] * self.tuner.batch_size / 32,
                "forward": c["eval_cpu"] * self.tuner.eval_batch_size / 64}

    def cpu_seconds(self, cpu_cost: Optional[dict] = None) -> tuple[float, list]:
        """(estimated CPU seconds, the (kind, width) cells without a known cost)."""
        cpu_cost = CPU_COST if cpu_cost is None else cpu_cost
        total, missing = 0.0, []
        for kind, w in sorted(set(self.train) | set(self.forward)):
            u = self._unit(cpu_cost, kind, w)
            if u is None:
                missing.append((kind, w))
                continue
            total += self.train.get((kind, w), 0) * u["train"] + self.forward.get((kind, w), 0) * u["forward"]
        return total, missing

    def report(self, cpu_cost: Optional[dict] = None) -> str:
        """Counts per (method, width) and the CPU / idle-machine wall estimate."""
        cpu_cost = CPU_COST if cpu_cost is None else cpu_cost
        lines = [f"{self.runs} runs to do; train steps (batch {self.tuner.batch_size}) and forward batches "
                 f"({self.tuner.eval_batch_size} rows) by method and width:"]
        for kind, w in sorted(set(self.train) | set(self.forward)):
            tr, fw = self.train.get((kind, w), 0), self.forward.get((kind, w), 0)
            u = self._unit(cpu_cost, kind, w)
            est = f" ~{common.fmt_duration(tr * u['train'] + fw * u['forward'])} CPU" if u else ""
            lines.append(f"  {kind:>10} width {w:>3}: {tr:>7} train steps, {fw:>6} forward batches{est}")
        total, missing = self.cpu_seconds(cpu_cost)
        lines.append(f"estimated CPU time {common.fmt_duration(total)} = wall {common.fmt_duration(total / 2)} on "
                     "2 idle cores (plus compiles, ~1-2 CPU min per method and width); on a shared machine "
                     "wall time grows with its load" + (f"; no cost known for {missing}" if missing else ""))
        return "\n".join(lines)


# CPU seconds (all threads) per train step of 32 rows / per forward batch of 64 rows, by
# method and width: packaged MiniLM (6 x 384), fp32, tcmalloc, jax 0.10.2 on this project's
# 2-core Xeon, 3 repetitions each while the machine was shared (load 11-15): +-30 %. The two
# adapter sizes measured 1.8 / 1.3 s at width 64; both use the mean.
CPU_COST: dict = {
    "adapter64/32": {"train_cpu": 0.53, "eval_cpu": 0.45},
    "adapter64/64": {"train_cpu": 1.55, "eval_cpu": 1.27},
    "adapter64/128": {"train_cpu": 2.74, "eval_cpu": 2.39},
    "adapter256/32": {"train_cpu": 0.60, "eval_cpu": 0.48},
    "adapter256/64": {"train_cpu": 1.55, "eval_cpu": 1.27},
    "adapter256/128": {"train_cpu": 2.82, "eval_cpu": 3.14},
    "full/32": {"train_cpu": 0.83, "eval_cpu": 0.40},
    "full/64": {"train_cpu": 1.73, "eval_cpu": 0.95},
    "full/128": {"train_cpu": 3.50, "eval_cpu": 2.00},
}


def add_common_args(p: argparse.ArgumentParser, *, name: str, full: dict,
                    fixed_budget: bool = True) -> argparse.ArgumentParser:
    """The options every study shares; ``full``: the study's full-mode defaults (for the help).
    ``fixed_budget=False`` leaves out ``--epochs`` / ``--adapter-lr`` / ``--full-lr`` for a study
    that sets its budget in steps and chooses each method's rate itself."""
    p.add_argument("--quick", action="store_true", help="a minutes-long version (smoke test / timing)")
    p.add_argument("--seeds", default=None, help=f"(default {full['seeds']})")
    p.add_argument("--methods", default=None, help=f"adapter<bottleneck> and/or full (default {full['methods']})")
    if fixed_budget:
        p.add_argument("--epochs", type=float, default=None, help=f"(default {full['epochs']})")
    p.add_argument("--model", default=None, help="HF model dir or hub id (default: packaged all-MiniLM-L6-v2)")
    p.add_argument("--data-dir", default=None, help="task data root (default: $JADAPT_DATA_DIR, else ../shared/data)")
    p.add_argument("--out", default=str(RESULTS), help="results directory (report, PNG, JSONL of finished runs)")
    p.add_argument("--name", default=None, help=f"results file stem (default: {name}, {name}_quick with --quick)")
    p.add_argument("--adapter", default="houlsby", choices=("houlsby", "pfeiffer"), help="adapter architecture")
    if fixed_budget:
        p.add_argument("--adapter-lr", type=float, default=ADAPTER_LR)
        p.add_argument("--full-lr", type=float, default=FULL_LR)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--dev-limit", type=int, default=None, help="score only the first N dev rows (quick checks)")
    p.add_argument("--compile-cache", default="runs/jax_cache", help="XLA persistent compilation cache dir ('' = off)")
    p.add_argument("--dry-run", action="store_true",
                   help="count the work still to do (runs, steps by width) and estimate CPU time; train nothing")
    p.add_argument("--report-only", action="store_true",
                   help="write the report from the runs already in the JSONL (cells show their n); train nothing")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="run a chunk: start no run that would end after this many minutes (judged by the longest "
                        "run so far), then write the report; rerun to go on (a GPU call's limit; merge logs made "
                        "elsewhere with python -m experiments.merge_logs)")
    return p


def finish_args(args: argparse.Namespace, name: str, quick: dict, full: dict) -> argparse.Namespace:
    """Fill unset options from the quick / full defaults and name the results files."""
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    args.name = args.name or (f"{name}_quick" if args.quick else name)
    return args


def start(module: str, args: argparse.Namespace, argv) -> str:
    """Process settings + the command that reproduces this invocation."""
    common.enable_compile_cache(args.compile_cache)
    rel = module.replace(".", "/") + ".py"
    return common.command_line([rel, *(sys.argv[1:] if argv is None else argv)])


def make_tuner(args) -> Tuner:
    data_dir = args.data_dir or common.default_data_dir()
    return Tuner(args.model, max_length=args.max_length, batch_size=args.batch_size,
                 eval_batch_size=args.eval_batch_size, compute_dtype=args.compute_dtype,
                 data_dir=None if data_dir is None else str(data_dir))


def settings_of(args: argparse.Namespace, tuner: Tuner, **extra) -> dict:
    """What every run's result depends on besides its own cell (part of every run key)."""
    return dict(model=tuner.model_name, adapter=args.adapter, max_length=args.max_length,
                batch_size=args.batch_size, compute_dtype=args.compute_dtype, dev_limit=args.dev_limit, **extra)


def write_report(path: Path, title: str, sections: Sequence[str], *, command: str, wall_s: float,
                 settings: dict, quick: bool) -> Path:
    """Markdown: title, sections, then provenance (command, hardware, software, wall time)."""
    hw, sw = common.hardware(), common.software()
    text = [f"# {title}" + (" (QUICK MODE: tiny budgets, plumbing + timing, not a result)" if quick else ""), "",
            *[s.rstrip() + "\n" for s in sections],
            "## Provenance", "",
            f"- command: `{command}`",
            "- settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()),
            f"- wall time of this invocation: {common.fmt_duration(wall_s)} (runs found in the JSONL were "
            "skipped; per-run wall times are in it)",
            f"- hardware: {hw['cpu_model']} ({hw['cpu_bf16']}), {hw['cores_available']} cores, {hw.get('memory_gb')} GB, "
            f"load average {hw.get('load_average_1m')} at the end (machine shared with other jobs); "
            f"JAX devices: {hw.get('jax_devices')}; allocator: {os.environ.get('LD_PRELOAD') or 'system'}",
            "- software: " + ", ".join(f"{k} {v}" for k, v in sw.items()), ""]
    return common.write_text_atomic(path, "\n".join(text))


def new_figure(n_panels: int, *, width: float = 4.2, height: float = 3.4):
    """(fig, axes) on matplotlib's Agg canvas (no pyplot state), one panel per task."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * n_panels, height), dpi=110)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, n_panels, i + 1) for i in range(n_panels)]
    return fig, axes


def save_figure(fig, path: Path) -> Path:
    """Lay out and write ``fig`` as PNG at ``path``."""
    fig.tight_layout()
    fig.savefig(str(path), format="png")
    return path


def main_metric(task) -> str:
    from jadapt import data

    return data.get_task(task).metrics[0]
