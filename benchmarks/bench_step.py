"""jadapt train / eval step side by side with the PyTorch adapter libraries, on this machine.

Rows: houlsby, pfeiffer (bottleneck 64), lora (r 8, query/value), full fine-tuning and
AdapterFusion over 3 frozen Pfeiffer adapters (AdapterHub's ``dynamic`` fusion; fusion layers
and head train), in fp32 and bf16 compute. jadapt runs what ``jadapt train`` runs (``load_pretrained`` +
``trainable_rules`` / ``split`` / ``make_optimizer`` + ``make_train_step`` / ``jit_steps``
with the donated state, dropout on, tcmalloc preloaded as the CLI does); the peer runs
benchmarks/peers/peer_step.py in the peers' venv (AdapterHub ``adapters``, ``peft``,
``transformers``; fp32 eager or bf16 autocast). Each side of a row is one fresh process
(so ``ru_maxrss`` is that row's peak memory); both stay alive while the driver interleaves
repetitions (jadapt, peer, peer, jadapt, ...), because this shared machine is noisy.
Times are medians over all repetitions after warm-up. GFLOP/s use FLOPs counted by formula
(benchmarks/flops.py); the floor is those FLOPs at the best matmul rate measured at the start
of the same run (benchmarks/bench_matmul.py: bf16 and fp32; bf16 only wins on CPUs with AMX).

    python benchmarks/bench_step.py                       # MiniLM 6x384, batch 32 x 128
    python benchmarks/bench_step.py --model bert-base     # random 12x768 config
    python benchmarks/bench_step.py --methods pfeiffer --dtypes float32 --rounds 3

The peers' venv: ``--peer-python`` or ``$JADAPT_PEER_PYTHON``; without either it is created
at benchmarks/.peervenv (python -m venv + pip install torch 2.13 CPU, transformers ~=4.57.6,
adapters 1.3.0, peft). Results: benchmarks/results/step_<model>_<time>.{json,md}.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from flops import BERT_BASE, MINILM, Shape, step_flops  # noqa: E402
from jadapt.machine import cpu_isa, cpu_model, machine_line  # noqa: E402
from jadapt.models.config import ATTENTION_IMPLS  # noqa: E402

METHODS = ("houlsby", "pfeiffer", "lora", "full", "fusion")
FUSED = ("a", "b", "c")  # the fusion row's three Pfeiffer adapters
DTYPES = ("float32", "bfloat16")
PEER_PACKAGES = ["torch==2.13.0", "transformers~=4.57.6", "adapters==1.3.0", "peft"]
PEER_NAMES = {"houlsby": "adapters Houlsby", "pfeiffer": "adapters Pfeiffer", "lora": "peft LoRA",
              "full": "transformers full", "fusion": "adapters Fusion (3 Pfeiffer)"}


# --------------------------------------------------------------------------- jadapt worker
def jadapt_worker(args) -> None:
    """Build the jadapt step for one row, warm up, then serve ``train N`` / ``eval N``."""
    t0 = time.perf_counter()
    import jax

    train_step, eval_step, _ = build_jadapt_steps(args)
    t1 = time.perf_counter()
    for _ in range(args.warmup):
        train_step()
        eval_step()
    info = {"setup_s": time.perf_counter() - t0, "warmup_s": time.perf_counter() - t1, "jax": jax.__version__,
            "trainable_params": train_step.trainable_params,
            "allocator": os.environ.get("LD_PRELOAD", "") or "system"}
    _serve({"train": train_step, "eval": eval_step}, info)


def build_jadapt_steps(args):
    """(train_step(), eval_step(), lower()) for one row: the code ``jadapt train`` runs, on a
    fixed random batch; each call runs one step and waits for it; ``lower()`` lowers the
    train step (for its HLO)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jadapt.adapters.config import preset
    from jadapt.models.model import AdapterModel, HeadConfig
    from jadapt.train.optim import linear_schedule, make_optimizer, split, trainable_labels, trainable_rules
    from jadapt.train.step import init_state, jit_steps, make_eval_step, make_train_step

    if args.method == "full":
        adapters = ()
    elif args.method == "fusion":
        adapters = tuple((n, preset("pfeiffer", bottleneck=args.bottleneck)) for n in FUSED)
    elif args.method == "lora":
        adapters = (("a", preset("lora", lora_r=8, lora_alpha=8.0)),)
    else:
        adapters = (("a", preset(args.method, bottleneck=args.bottleneck)),)
    head = HeadConfig(num_labels=2)
    active = tuple(n for n, _ in adapters)[:1 if args.method == "fusion" else None]  # `fuse` activates all three
    remat = getattr(args, "remat", False)  # bench_gpu / profile_step build rows without the flag
    model_dir = getattr(args, "model_dir", None)  # bench_encoders.py: any HF folder
    if model_dir or (args.model == "minilm" and args.model_path != "random"):
        from jadapt.models.pretrained import load_pretrained

        model, params = load_pretrained(model_dir, adapters=adapters, active=active, head=head,
                                        compute_dtype=args.dtype, attention=args.attention, remat=remat)
    else:  # a random model of the named shape (bench_gpu.py: the weights do not travel)
        from jadapt.models.config import EncoderConfig
        from jadapt.models.pretrained import init_params

        shape = MINILM if args.model == "minilm" else BERT_BASE
        cfg = EncoderConfig(hidden_size=shape["hidden"], num_layers=shape["layers"], num_heads=12,
                            intermediate_size=shape["intermediate"])
        model = AdapterModel(cfg, adapters=adapters, active=active, head=head,
                             compute_dtype=args.dtype, attention=args.attention, remat=remat)
        params = init_params(model, jax.random.key(0))
    if args.method == "fusion":  # AdapterHub's add_adapter_fusion + train_adapter_fusion
        from jadapt.fusion import fuse

        model, params = fuse(model, params, FUSED, "dynamic", jax.random.key(1))
    names = [n for n, _ in adapters]
    ln = any(c.train_layer_norms for _, c in adapters)  # as `jadapt train` (Houlsby trains LayerNorms)
    labels = trainable_labels(params, trainable_rules(args.method, names, train_layer_norms=ln))
    trainable, frozen = split(params, labels)
    trainable_labels_tree, _ = split(labels, labels)
    tx = make_optimizer(trainable_labels_tree, linear_schedule(1e-4, 10_000, 100))
    state = init_state(trainable, tx, seed=0)
    train, evaluate = jit_steps(make_train_step(model, tx, regression=False),
                                make_eval_step(model, regression=False))
    rng = np.random.default_rng(0)
    b, s = args.batch, args.seq
    batch = {"input_ids": jnp.asarray(rng.integers(1000, 30000, (b, s)), jnp.int32),
             "attention_mask": jnp.ones((b, s), jnp.int32), "token_type_ids": jnp.zeros((b, s), jnp.int32),
             "labels": jnp.asarray(rng.integers(0, 2, b), jnp.int32), "weight": jnp.ones((b,), jnp.float32)}
    del params

    def train_step():
        nonlocal state
        state, m = train(state, frozen, batch)
        m["loss"].block_until_ready()

    def eval_step():
        jax.block_until_ready(evaluate(state["trainable"], frozen, batch))

    train_step.trainable_params = int(sum(x.size for x in jax.tree_util.tree_leaves(state["trainable"])))
    return train_step, eval_step, lambda: train.lower(state, frozen, batch)


def _serve(fns, info) -> None:
    print("READY " + json.dumps(info), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "quit":
            break
        times = []
        for _ in range(int(cmd[1])):
            t = time.perf_counter()
            fns[cmd[0]]()
            times.append(time.perf_counter() - t)
        print("TIMES " + json.dumps(times), flush=True)
    done = {"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    try:
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats and jax.devices()[0].platform != "cpu":
            done["device_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
    except Exception:  # noqa: BLE001 -- memory stats are optional
        pass
    print("DONE " + json.dumps(done), flush=True)


def rates_worker(args) -> None:
    from bench_matmul import matmul_rates

    print("RATES " + json.dumps(matmul_rates()), flush=True)


# --------------------------------------------------------------------------- driver
class Worker:
    """A row's process, driven line by line."""

    def __init__(self, name, cmd, env):
        self.name, self.cmd = name, cmd
        self.log = tempfile.TemporaryFile("w+")  # stderr: a pipe nobody reads could fill and block
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, env=env, bufsize=1)
        self.info = None

    def expect(self, tag):
        for line in self.proc.stdout:
            if line.startswith(tag + " "):
                return json.loads(line[len(tag) + 1:])
        self.proc.wait(timeout=60)
        self.log.seek(0)
        err = self.log.read()[-3000:]
        raise RuntimeError(f"{self.name} exited before {tag}: {' '.join(self.cmd)}\n{err}")

    def ready(self):
        self.info = self.expect("READY")
        return self.info

    def run(self, what, n):
        self.proc.stdin.write(f"{what} {n}\n")
        self.proc.stdin.flush()
        return self.expect("TIMES")

    def quit(self):
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        done = self.expect("DONE")
        self.proc.wait(timeout=120)
        return done


def ensure_peer_python(explicit: str | None) -> str:
    """The peers' interpreter: --peer-python, $JADAPT_PEER_PYTHON, or a venv made here."""
    path = explicit or os.environ.get("JADAPT_PEER_PYTHON")
    if path:
        if not Path(path).exists():
            raise SystemExit(f"peer python {path} does not exist")
        return path
    venv = HERE / ".peervenv"
    py = venv / "bin" / "python"
    if not py.exists():
        print(f"creating the peers' venv at {venv} (torch CPU, transformers, adapters, peft) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(py), "-m", "pip", "install", "-q"]
        # the CPU-only torch wheel (no CUDA libraries); plain PyPI if that index is unreachable
        if subprocess.run([*pip, "--index-url", "https://download.pytorch.org/whl/cpu", PEER_PACKAGES[0]]).returncode:
            subprocess.run([*pip, PEER_PACKAGES[0]], check=True)
        subprocess.run([*pip, *PEER_PACKAGES], check=True)
    return str(py)


def prioritize(nice: int) -> None:
    """Give this process tree ``nice``. Linux groups CPU time by session ("autogroup"), so a
    plain nice value only ranks processes within their session: start a new session and set
    the autogroup's nice too. Workers inherit both."""
    try:
        os.setsid()
    except OSError:
        pass  # already a session leader
    try:
        Path("/proc/self/autogroup").write_text(str(nice))
    except OSError:
        pass
    os.nice(nice - os.nice(0))


def jadapt_env(allocator: str) -> dict:
    from jadapt import runtime

    env = dict(os.environ)
    lib = runtime.allocator_library(allocator)
    if lib:
        env["LD_PRELOAD"] = ":".join(x for x in (lib, env.get("LD_PRELOAD", "")) if x)
    env.pop("XLA_FLAGS", None)  # one CPU device, as `jadapt train` on this machine
    env["XLA_FLAGS"] = runtime.xla_flags(env)  # and its XLA:CPU scheduler (jadapt.runtime)
    return env


def med_ms(times):
    return 1e3 * statistics.median(times)


def time_workers(specs, steps, eval_steps, rounds, sequential=False):
    """Start one worker per ``specs`` entry (name: (cmd, env)) and time ``train`` / ``eval``.

    Interleaved: all workers alive, repetitions alternate (a, b, b, a, ...) so every side
    sees the same background load. Sequential: one worker at a time (half the peak memory,
    for big models on small machines). Returns (ready info, {name: {train, eval: [s]}},
    quit info), each keyed by worker name.
    """
    groups = [list(specs)] if not sequential else [[k] for k in specs]
    info, times, done = {}, {k: {"train": [], "eval": []} for k in specs}, {}
    for group in groups:
        workers = {k: Worker(k, *specs[k]) for k in group}
        try:
            info.update({k: w.ready() for k, w in workers.items()})
            for what, n in (("train", steps), ("eval", eval_steps)):
                for r in range(rounds):
                    for k in (group if r % 2 == 0 else group[::-1]):
                        times[k][what] += workers[k].run(what, n)
            done.update({k: w.quit() for k, w in workers.items()})
        finally:
            for w in workers.values():
                if w.proc.poll() is None:
                    w.proc.kill()
    return info, times, done


def run_row(args, method, dtype, peer_python, model_path):
    common = ["--model", args.model, "--method", method, "--dtype", dtype, "--batch", str(args.batch),
              "--seq", str(args.seq), "--bottleneck", str(args.bottleneck), "--warmup", str(args.warmup)]
    load0 = os.getloadavg()[0]
    specs = {"jadapt": ([sys.executable, __file__, "--worker", "jadapt", *common, "--attention", args.attention,
                       *(["--remat"] if args.remat else [])],
                        jadapt_env(args.allocator))}
    if peer_python:
        peer_env = dict(os.environ)
        if args.peer_allocator != "system":
            peer_env["LD_PRELOAD"] = jadapt_env(args.peer_allocator).get("LD_PRELOAD", "")
        specs["peer"] = ([peer_python, str(HERE / "peers" / "peer_step.py"), *common, "--model-path", model_path],
                         peer_env)
    info, times, done = time_workers(specs, args.steps, args.eval_steps, args.rounds, args.sequential)
    row = {"method": method, "dtype": dtype, "load_start": load0, "load_end": os.getloadavg()[0]}
    for k in specs:
        row[k] = {"train_ms": med_ms(times[k]["train"]), "eval_ms": med_ms(times[k]["eval"]),
                  "peak_rss_mb": done[k]["maxrss_mb"], "train_times_s": times[k]["train"],
                  "eval_times_s": times[k]["eval"], **info[k]}
    return row


def markdown(result) -> str:
    rows, fl, rate = result["rows"], result["flops"], result["floor_rate_gflops"]
    has_peer = any("peer" in r for r in rows)
    lines = []
    head = f"| method | compute | jadapt step ms | GFLOP/s | floor ms (at {rate:.0f} GFLOP/s) |"
    sep = "|---|---|---:|---:|---:|"
    if has_peer:
        head += (" peer | peer step ms | step ratio | jadapt eval ms | peer eval ms | eval ratio | jadapt peak MB |"
                 " peer peak MB | mem ratio |")
        sep += "---|---:|---:|---:|---:|---:|---:|---:|---:|"
    else:
        head += " jadapt eval ms | jadapt peak MB |"
        sep += "---:|---:|"
    lines += [head, sep]
    for r in rows:
        j, f = r["jadapt"], fl[r["method"]]
        gf = f["train"] / (j["train_ms"] / 1e3) / 1e9
        floor = f["train"] / (rate * 1e9) * 1e3
        line = (f"| {r['method']} | {'bf16' if r['dtype'] == 'bfloat16' else 'fp32'} | {j['train_ms']:,.0f} | "
                f"{gf:,.0f} | {floor:,.0f} |")
        if "peer" in r:
            p = r["peer"]
            line += (f" {PEER_NAMES[r['method']]}{' (bf16 autocast)' if r['dtype'] == 'bfloat16' else ''} | "
                     f"{p['train_ms']:,.0f} | **{j['train_ms'] / p['train_ms']:.2f}** | {j['eval_ms']:,.0f} | "
                     f"{p['eval_ms']:,.0f} | {j['eval_ms'] / p['eval_ms']:.2f} | {j['peak_rss_mb']:,.0f} | "
                     f"{p['peak_rss_mb']:,.0f} | {j['peak_rss_mb'] / p['peak_rss_mb']:.2f} |")
        elif has_peer:
            line += " - | - | - | " + f"{j['eval_ms']:,.0f} | - | - | {j['peak_rss_mb']:,.0f} | - | - |"
        else:
            line += f" {j['eval_ms']:,.0f} | {j['peak_rss_mb']:,.0f} |"
        lines.append(line)
    # adapter vs full, per dtype
    by = {(r["method"], r["dtype"]): r for r in rows}
    extra = []
    for dt in DTYPES:
        if ("full", dt) not in by:
            continue
        full = by[("full", dt)]
        for m in ("houlsby", "pfeiffer", "lora"):
            if (m, dt) in by:
                r = by[(m, dt)]
                ideal = fl[m]["train"] / fl["full"]["train"]
                s = (f"- {dt} {m}/full step time: jadapt {r['jadapt']['train_ms'] / full['jadapt']['train_ms']:.2f}")
                if "peer" in r and "peer" in full:
                    s += f", peer {r['peer']['train_ms'] / full['peer']['train_ms']:.2f}"
                s += (f" (FLOP ideal {ideal:.2f}); peak MB jadapt {r['jadapt']['peak_rss_mb']:,.0f}"
                      f" vs full {full['jadapt']['peak_rss_mb']:,.0f}")
                extra.append(s)
    if extra:
        lines += ["", "Adapter vs full fine-tuning:", *extra]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", choices=("jadapt", "rates"), help=argparse.SUPPRESS)
    p.add_argument("--model", default="minilm", choices=("minilm", "bert-base"))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--dtypes", default=",".join(DTYPES))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--bottleneck", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per worker (the first compiles)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per row")
    p.add_argument("--steps", type=int, default=3, help="train steps per worker per round")
    p.add_argument("--eval-steps", type=int, default=3, help="eval forwards per worker per round")
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--sequential", action="store_true",
                   help="run jadapt's and the peer's process one after the other (not interleaved): half the "
                        "memory, for bert-base on a small machine")
    p.add_argument("--peer-python", default=None, help="python of the peers' venv (else $JADAPT_PEER_PYTHON)")
    p.add_argument("--allocator", default="tcmalloc", help="jadapt side: tcmalloc | system | path")
    p.add_argument("--peer-allocator", default="system", help="peer side: system (as users run torch) | tcmalloc")
    p.add_argument("--nice", type=int, default=0,
                   help="run this benchmark (and its workers) at this nice value, e.g. -15 on a shared machine "
                        "(Linux: own session + autogroup; negative values need root)")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--model-path", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)  # worker: load this HF folder
    p.add_argument("--method", default=None, help=argparse.SUPPRESS)  # worker: one row
    p.add_argument("--dtype", default=None, help=argparse.SUPPRESS)
    p.add_argument("--attention", default="matmul", choices=ATTENTION_IMPLS, help="jadapt's attention kernel")
    p.add_argument("--remat", action="store_true", help="jadapt side: recompute each layer in the backward pass")
    args = p.parse_args()
    if args.worker == "jadapt":
        return jadapt_worker(args)
    if args.worker == "rates":
        return rates_worker(args)

    methods = [m for m in args.methods.split(",") if m]
    dtypes = [d for d in args.dtypes.split(",") if d]
    bad = [m for m in methods if m not in METHODS] + [d for d in dtypes if d not in DTYPES]
    if bad:
        raise SystemExit(f"unknown method / dtype {bad}; expected {METHODS} / {DTYPES}")
    peer_python = None if args.no_peers else ensure_peer_python(args.peer_python)
    if args.nice:
        prioritize(args.nice)
    from jadapt.models.hf import packaged_model_path

    model_path = str(packaged_model_path())
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__), *sys.argv[1:]])
    started = datetime.datetime.now().astimezone()
    print(f"# {command}\n# {started:%Y-%m-%d %H:%M %Z}, {machine_line()}, "
          f"load {os.getloadavg()[0]:.2f}, nice {os.nice(0)}", flush=True)

    rw = Worker("rates", [sys.executable, __file__, "--worker", "rates"], jadapt_env(args.allocator))
    rates = rw.expect("RATES")
    rw.proc.wait()
    bf16_rate = max(r["bfloat16"] for r in rates.values())
    fp32_rate = max(r["float32"] for r in rates.values())
    floor_rate = max(bf16_rate, fp32_rate)  # bf16 is only the faster one on CPUs with AMX
    shape = Shape(**(MINILM if args.model == "minilm" else BERT_BASE), batch=args.batch, seq=args.seq)
    flops = {m: step_flops(shape, m, bottleneck=args.bottleneck) for m in METHODS}
    print(f"# matmul rate (best shape): bf16 {bf16_rate:.0f} GFLOP/s, fp32 {fp32_rate:.0f} GFLOP/s", flush=True)

    rows = []
    for dtype in dtypes:
        for method in methods:
            t = time.perf_counter()
            row = run_row(args, method, dtype, peer_python, model_path)
            rows.append(row)
            j = row["jadapt"]
            msg = (f"{method:9s} {dtype:9s} jadapt {j['train_ms']:7.0f} ms step {j['eval_ms']:6.0f} ms eval "
                   f"{j['peak_rss_mb']:6.0f} MB")
            if "peer" in row:
                q = row["peer"]
                msg += (f" | peer {q['train_ms']:7.0f} ms step {q['eval_ms']:6.0f} ms eval {q['peak_rss_mb']:6.0f} MB"
                        f" | ratio {j['train_ms'] / q['train_ms']:.2f}")
            print(msg + f" | load {row['load_start']:.1f}->{row['load_end']:.1f} ({time.perf_counter() - t:.0f} s)",
                  flush=True)

    finished = datetime.datetime.now().astimezone().isoformat()
    result = {"command": command, "started": started.isoformat(), "finished": finished,
              "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "isa": cpu_isa(),
                          "python": platform.python_version()},
              "args": vars(args), "matmul_rates_gflops": rates, "bf16_rate_gflops": bf16_rate,
              "fp32_rate_gflops": fp32_rate, "floor_rate_gflops": floor_rate,
              "flops": flops, "rows": rows}
    table = markdown(result)
    print("\n" + table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"step_{args.model}_{started:%Y%m%d_%H%M}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    stem.with_suffix(".md").write_text(f"`{command}`\n\n{started:%Y-%m-%d %H:%M %Z}, {machine_line()}\n\n{table}\n")
    print(f"\nwrote {stem}.json / .md")


if __name__ == "__main__":
    main()
