"""MerA study, part 2: few-shot tuning from merged pretrained adapters (He et al. 2023).

    python -m experiments.mera_pool && python -m experiments.mera_fewshot          # full study
    python -m experiments.mera_pool --quick && python -m experiments.mera_fewshot --quick

Question: on a few-shot target task, does starting the target adapter from a merge of the
source adapters of ``experiments.mera_pool`` ("MerA") beat training it from scratch, starting
from the single best source adapter, AdapterFusion over the pool, and full fine-tuning --
and which merge (plain average, alignment by weights / by activations, TIES, DARE, OT)?

Grid: target x k x seed x method (x pool mode) x learning rate. Every run trains for the same
number of optimizer steps (``steps``) and is scored after the last step on a held-out k-shot
set and on the target's dev set. The protocol (``experiments.protocol``, the same as the
effectiveness studies'): each method's rate is chosen per (target, k, pool mode) from its grid
by the mean held-out score over seeds; the dev set reported is never used to choose anything;
comparisons are paired by seed (same k-shot sample) with bootstrap intervals over seeds and
dev rows; the majority class (and MRPC's always-positive F1) stands beside every score.

- **targets**: MRPC, RTE, SICK (3-way NLI) and MNLI (k-shot from
  ``validation_mismatched``, evaluated on a fixed seeded ``--eval-limit`` rows of
  ``validation_matched``; the cap applies to any dev set above it: SICK's and MNLI's);
- **held-out**: ``heldout_k`` examples per class drawn once (``protocol.HELDOUT_SEED``) from
  the target's train split, the same rows for every run: where rates are chosen;
- **k**: examples per class drawn from the rest of the train split by ``jadapt.data.k_shot``
  (seed = run seed), so a seed fixes the sample, head / adapter init, dropout and batch order;
- **methods** (the adapter and head are trained in every adapter method; the backbone is frozen):
  ``scratch`` (fresh adapter), ``full-ft`` (no adapter, everything trains), and with the pool:
  ``best-single`` (start from one source adapter), ``fusion`` (AdapterFusion over the pool:
  adapters frozen, fusion layers + head train), ``mera-<merge>`` for merge in sum,
  average, align-weights, align-activations, ties, dare, ot (start from the merge of the pool:
  ``sum`` adds the K adapters' weights, the paper's naive baseline), and
  ``mera-same-track`` (``--same-track-method`` merge of the pool adapters whose source task is
  in the target's track);
- **pool modes**: ``excluded`` (adapters trained on the target's own dataset are left out:
  the dataset, not only the task, so SICK excludes sick and sick-relatedness) and
  ``included`` (the whole pool; the target's own adapter saw up to 20,000 labelled target rows,
  so "included" is not a few-shot setting -- it measures how much MerA keeps of that adapter).

Choices without dev data: the **best single adapter** is the pool member whose mean-pooled
final-layer features of the k-shot *training* inputs give the highest leave-one-out
nearest-class-mean (cosine) accuracy on the k-shot training labels (ties: larger mean
margin) -- a transferability estimate from the few-shot train set only. The same adapter is
the **reference** that alignment / OT merges align to. ``align-activations`` probes with the
target's k-shot training inputs (real tokens only). TIES keeps the top 20 % (density 0.2, its
paper's value) with sign election; DARE keeps each entry with p = 0.5, rescales by 1/p and
*averages* (scale 1/K: DARE's task-arithmetic sum of K = 14 adapters would be 14 times any
one of them); OT uses Sinkhorn (epsilon 0.05) on weight similarities. Merges use uniform
weights and the zero adapter as the task-vector base. Heads are never merged: every run gets
a fresh head (output layer drawn from N(0, 0.02) with the run seed; the tanh dense layer starts
from the model's pooler).

Hyperparameters: ``steps`` optimizer steps (default 200) for every method, batch 32, max
length 128, AdamW (weight decay 0.01, clip 1.0), linear warmup 10 % then decay, dropout 0.1;
rate grids (chosen on the held-out set): adapters 1e-4, 3e-4, 1e-3 (He et al.'s ~1e-4 and
jadapt's default), fusion 1e-4, 5e-4, 1e-3, full fine-tuning 2e-5, 5e-5, 1e-4. AdapterFusion is
AdapterHub's ``dynamic`` preset, so the train step adds its regulariser ``0.01 * sum ||I - V||^2``
(``jadapt.fusion.regularization_loss``) to the loss, as AdapterHub does. Every run
uses ``jadapt.train.runner.Runner``: one compiled step per model shape.

Resumable: every finished run is one JSON line of ``--jsonl`` (settings + metrics + timings);
a restart with the same settings skips those. Outputs: ``--out`` (markdown: tables of mean
± std over seeds per target and k, command, hardware, time), a PNG beside it, and the JSONL.
``--quick`` (k=16, one seed, 4 steps, one rate per family, dev sets capped at 200 rows) writes ``*_quick.*`` files
and a projection of the full study's run time from its own warm step / eval timings.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from experiments import common, protocol

RESULTS = Path(__file__).resolve().parent / "results"
MERGES = ("sum", "average", "align-weights", "align-activations", "ties", "dare", "ot")
POOL_METHODS = ("best-single", "fusion", *(f"mera-{m}" for m in MERGES), "mera-same-track")
METHODS = ("scratch", *POOL_METHODS, "full-ft")
POOL_MODES = ("excluded", "included")
SLOT = "target"  # name of the trained adapter in the few-shot model
VERSION = 2  # bump when a change makes old JSONL records incomparable (2: rate grids, step budget, held-out)


@dataclasses.dataclass(frozen=True)
class Settings:
    targets: tuple[str, ...] = ("mrpc", "rte", "sick", "mnli")
    ks: tuple[int, ...] = (16, 64)
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = METHODS
    pool_modes: tuple[str, ...] = POOL_MODES
    steps: int = 200
    adapter_lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3)
    fusion_lrs: tuple[float, ...] = (1e-4, 5e-4, 1e-3)
    full_lrs: tuple[float, ...] = (2e-5, 5e-5, 1e-4)
    heldout_k: int = 16
    batch_size: int = 32
    eval_batch_size: int = 64
    max_length: int = 128
    buckets: tuple[int, ...] = (32, 64, 128, 256, 512)  # padded widths (jadapt.train.runner.STUDY_BUCKETS)
    eval_limit: Optional[int] = 2000
    compute_dtype: str = "float32"
    same_track_method: str = "align-weights"
    ties_density: float = 0.2
    dare_density: float = 0.5

    def __post_init__(self):
        from jadapt import data

        for t in self.targets:
            spec = data.get_task(t)
            if spec.regression:
                raise ValueError(f"target {t!r} is a regression task: k-shot needs classes")
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"methods {bad or '()'} are not supported; expected a subset of {METHODS}")
        bad = [m for m in self.pool_modes if m not in POOL_MODES]
        if bad or not self.pool_modes:
            raise ValueError(f"pool_modes {bad or '()'} are not supported; expected a subset of {POOL_MODES}")
        if not self.ks or any(k < 1 for k in self.ks):
            raise ValueError(f"ks must be positive ints, got {self.ks}")
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        if self.same_track_method not in MERGES:
            raise ValueError(f"same_track_method {self.same_track_method!r} is not one of {MERGES}")
        if self.steps < 1 or self.heldout_k < 1:
            raise ValueError(f"steps and heldout_k must be >= 1, got {self.steps} and {self.heldout_k}")
        for name in ("adapter_lrs", "fusion_lrs", "full_lrs"):
            if not getattr(self, name) or not all(lr > 0 for lr in getattr(self, name)):
                raise ValueError(f"{name} must be a non-empty grid of rates > 0, got {getattr(self, name)}")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ValueError(f"eval_limit must be >= 1 or None, got {self.eval_limit}")
        for name in ("ties_density", "dare_density"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")


QUICK = dict(ks=(16,), seeds=(0,), steps=4, eval_limit=200, adapter_lrs=(1e-3,), fusion_lrs=(5e-4,),
             full_lrs=(5e-5,), heldout_k=4)  # timings project to the full grid


def needs_activations(s: Settings, method: str) -> bool:
    return method == "mera-align-activations" or (method == "mera-same-track"
                                                   and s.same_track_method == "align-activations")


def uses_pool(method: str) -> bool:
    return method in POOL_METHODS


def family(method: str) -> str:
    """Which compiled model a method runs on: adapter | fusion | full."""
    return {"fusion": "fusion", "full-ft": "full"}.get(method, "adapter")


def rates(s: Settings, method: str) -> tuple[float, ...]:
    """The learning-rate grid of a method's family."""
    return {"fusion": s.fusion_lrs, "full": s.full_lrs}.get(family(method), s.adapter_lrs)


def run_spec(s: Settings, target: str, k: int, seed: int, method: str, mode: Optional[str], lr: float, *,
             model: str, pool_id: Optional[str]) -> dict:
    """Everything a run's result depends on; its hash is the run's key in the JSONL."""
    spec = {"study": "mera-fewshot", "v": VERSION, "target": target, "k": k, "seed": seed, "method": method,
            "pool_mode": mode if uses_pool(method) else None, "steps": s.steps, "lr": lr,
            "heldout_k": s.heldout_k, "batch_size": s.batch_size, "max_length": s.max_length,
            "eval_limit": s.eval_limit, "compute_dtype": s.compute_dtype, "model": model,
            "buckets": list(s.buckets)}
    if uses_pool(method):
        spec["pool_id"] = pool_id
        if method == "mera-ties" or (method == "mera-same-track" and s.same_track_method == "ties"):
            spec["ties_density"] = s.ties_density
        if method == "mera-dare" or (method == "mera-same-track" and s.same_track_method == "dare"):
            spec["dare_density"] = s.dare_density
        if method == "mera-same-track":
            spec["same_track_method"] = s.same_track_method
    return spec


def plan(s: Settings) -> list[tuple]:
    """(seed, k, target, method, mode, lr) in run order: target outermost (only its compiled
    runners need to be in memory), then seeds, so a partial study already has every cell of
    a target's table (rate grid included) with fewer seeds."""
    out = []
    for target in s.targets:
        for seed in s.seeds:
            for k in s.ks:
                for method in s.methods:
                    for mode in (s.pool_modes if uses_pool(method) else (None,)):
                        out += [(seed, k, target, method, mode, lr) for lr in rates(s, method)]
    return out


# ================================================================ the pool
class Pool:
    """The source adapters of ``experiments.mera_pool`` (its ``pool.json``), all of one config."""

    def __init__(self, directory: str | Path):
        from jadapt.adapters.config import AdapterConfig
        from jadapt.checkpoint import load_adapter
        from jadapt.merge import rename_adapter
        from jadapt.models.pretrained import adapter_params

        directory = Path(directory)
        manifest_file = directory / "pool.json"
        if not manifest_file.is_file():
            raise FileNotFoundError(f"no pool manifest {manifest_file}: run `python -m experiments.mera_pool` first")
        manifest = json.loads(manifest_file.read_text())
        name = manifest["adapter_name"]
        # sources that did not beat their majority class (``mera_pool``'s "learned") stay out
        self.dropped = [e for e in manifest["adapters"] if not e.get("learned", True)]
        self.entries: list[dict] = [e for e in manifest["adapters"] if e.get("learned", True)]
        if not self.entries:
            raise ValueError(f"no pool adapter in {directory} beat its majority class: nothing to merge")
        self.adapters: list[dict] = []
        configs, arrays, bases = set(), {}, set()
        for e in self.entries:
            params, meta = load_adapter(e["checkpoint"])
            cfg = AdapterConfig.from_dict(dict(meta["adapters"])[name])
            configs.add(cfg)
            bases.add(meta.get("base_model"))
            self.adapters.append(rename_adapter(adapter_params(params, name), name, SLOT))
            raw = json.loads((Path(e["checkpoint"]) / "metadata.json").read_text())
            arrays[e["task"]] = {p: m.get("crc32") for p, m in raw["arrays"].items()}
        if len(configs) != 1:
            raise ValueError(f"pool adapters in {directory} have different configs: {configs}")
        self.config = configs.pop()
        self.base_models = sorted(str(b) for b in bases)
        self.tasks = [e["task"] for e in self.entries]
        self.id = common.run_key(arrays)  # changes whenever any adapter's values change
        self.manifest = manifest

    def members(self, target: str, mode: str) -> list[int]:
        from jadapt import data

        own = data.get_task(target).local_dir
        return [i for i, e in enumerate(self.entries) if mode == "included" or e["dataset"] != own]

    def same_track(self, target: str, members: Sequence[int]) -> list[int]:
        from jadapt import data

        track = data.track_of(target)
        return [i for i in members if self.entries[i]["track"] == track]


# ================================================================ init helpers
def overlay(base: dict, new: dict) -> dict:
    """``base`` with the leaves of ``new`` replaced; every leaf of ``new`` must exist there
    with the same shape (so the compiled step's pytree structure is unchanged)."""
    import jax.numpy as jnp

    from jadapt import tree

    fb, fn = tree.flatten(base), tree.flatten(new)
    for p, x in fn.items():
        if p not in fb:
            raise ValueError(f"{p} has no place in the model's trainable params")
        if tuple(fb[p].shape) != tuple(x.shape):
            raise ValueError(f"{p}: shape {tuple(x.shape)}, the model expects {tuple(fb[p].shape)}")
    return tree.unflatten({**fb, **{p: jnp.asarray(x, fb[p].dtype) for p, x in fn.items()}})


def seeded_init(params: dict, seed: int, pattern: str, std: float = 0.02) -> dict:
    """Redraw the leaves matching ``pattern``: kernels ~ N(0, std), biases 0 -- the "bert"
    init of jadapt's Dense and bottleneck adapters -- from a numpy RNG seeded by ``seed``."""
    from jadapt import tree

    rx = re.compile(pattern)
    rng = np.random.default_rng([int(seed), 20230501])
    flat = tree.flatten(params)
    for p in sorted(flat):
        if not rx.search(p):
            continue
        shape = tuple(flat[p].shape)
        if p.endswith("/kernel"):
            flat[p] = (rng.standard_normal(shape) * std).astype(np.float32)
        elif p.endswith("/bias"):
            flat[p] = np.zeros(shape, np.float32)
    redrawn = {p: x for p, x in flat.items() if rx.search(p)}
    if not redrawn:
        raise ValueError(f"seeded_init: no param matches {pattern!r}")
    return overlay(params, tree.unflatten(redrawn))


HEAD_OUT = r"^head/out/"
SCRATCH = rf"(^head/out/|/(attn_adapter|ffn_adapter)/{SLOT}/)"
FUSION = r"(^head/out/|/fusion/(query|key)/)"  # V starts as the identity (AdapterHub), not redrawn


def loo_prototype_score(features: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(leave-one-out nearest-class-mean accuracy, mean margin) under cosine similarity.

    Row i is classified by the class means computed without row i. Margin = similarity to
    its own class mean minus the best other class's.
    """
    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    classes = np.unique(labels)
    sums = np.stack([x[labels == c].sum(0) for c in classes])  # [C, d]
    counts = np.array([(labels == c).sum() for c in classes], np.float64)
    own = labels[:, None] == classes[None, :]  # [n, C]
    means = sums[None, :, :] - own[:, :, None] * x[:, None, :]  # [n, C, d] loo sums
    denom = np.maximum(counts[None, :] - own, 1.0)
    means = means / denom[:, :, None]
    means /= np.maximum(np.linalg.norm(means, axis=2, keepdims=True), 1e-12)
    sim = np.einsum("nd,ncd->nc", x, means)
    pred = classes[np.argmax(sim, 1)]
    own_sim = sim[own]
    other = np.where(own, -np.inf, sim).max(1)
    return float(np.mean(pred == labels)), float(np.mean(own_sim - other))


# ================================================================ the study
class Study:
    """Data, pool and compiled runners, built lazily and reused across runs."""

    def __init__(self, s: Settings, *, pool: Optional[Pool], model: Optional[str], data_dir, log: common.RunLog,
                 calibrate: bool = False):
        from jadapt.data import load_tokenizer
        from jadapt.models.hf import resolve_model_path

        self.s, self.pool, self.log, self.data_dir = s, pool, log, data_dir
        self.model_dir = resolve_model_path(model)
        self.model_name = model or "all-MiniLM-L6-v2"
        self.tokenizer = load_tokenizer(self.model_dir)
        self.runners: dict[tuple, Any] = {}
        self.compiles: dict[tuple, float] = {}
        self._data: dict[str, tuple] = {}
        self._shot: dict[tuple, dict] = {}
        self._scores: dict[tuple, dict] = {}
        self._acts: dict[tuple, tuple] = {}
        self.calibrate = calibrate
        self.calibrated: set = set()

    # ------------------------------------------------------------ data
    def target_data(self, target: str) -> tuple[dict, dict, dict]:
        """(encoded train split minus the held-out rows, held-out k-shot set, encoded dev set)
        of a target. The held-out set is ``heldout_k`` rows per class drawn once
        (``protocol.HELDOUT_SEED``); the dev set is a fixed seeded ``eval_limit`` sample when
        larger (seed 0). Both are the same for every run."""
        if target not in self._data:
            from jadapt import data

            spec = data.get_task(target)
            train = data.load_split(spec, spec.train_split, self.data_dir)
            dev = data.load_split(spec, spec.dev_split, self.data_dir)
            if self.s.eval_limit is not None and data.num_rows(dev) > self.s.eval_limit:
                dev = data.subsample(dev, self.s.eval_limit, 0)
            enc = lambda rows: data.encode(spec, rows, self.tokenizer, self.s.max_length)  # noqa: E731
            train = enc(train)
            held = data.k_shot(train, self.s.heldout_k, protocol.HELDOUT_SEED, task=target)
            rest = data.take(train, np.flatnonzero(~np.isin(train["row"], held["row"])))
            self._data[target] = (rest, held, enc(dev))
        return self._data[target]

    def shots(self, target: str, k: int, seed: int) -> dict:
        key = (target, k, seed)
        if key not in self._shot:
            from jadapt import data

            self._shot = {kk: v for kk, v in self._shot.items() if kk[2] == seed}  # keep memory bounded
            self._shot[key] = data.k_shot(self.target_data(target)[0], k, seed, task=target)
        return self._shot[key]

    # ------------------------------------------------------------ memory
    def focus(self, target: str) -> None:
        """Drop what other targets needed: their data, and every compiled runner except the
        plain adapter / full ones of this target's head size (several GB otherwise)."""
        import gc

        from jadapt import data

        n = data.get_task(target).num_labels
        keep = {("adapter", n, 0), ("full", n, 0)}
        dropped = [k for k in self.runners if k not in keep]
        for k in dropped:
            del self.runners[k]
        self._data = {t: v for t, v in self._data.items() if t == target}
        self._shot, self._acts = {}, {}
        if dropped:
            gc.collect()

    def release_activations(self) -> None:
        self._acts = {}

    # ------------------------------------------------------------ compiled runners
    def runner(self, fam: str, num_labels: int, n_fused: int = 0):
        key = (fam, num_labels, n_fused)
        if key in self.runners:
            return self.runners[key]
        import jax

        from jadapt.models.model import HeadConfig
        from jadapt.models.pretrained import load_pretrained
        from jadapt.train.optim import trainable_labels, trainable_rules
        from jadapt.train.runner import Runner

        head = HeadConfig(num_labels=num_labels)
        kw = dict(compute_dtype=self.s.compute_dtype, seed=0)
        if fam == "adapter":
            model, params = load_pretrained(self.model_dir, adapters=((SLOT, self.pool_config()),), head=head, **kw)
            rules = trainable_rules(self.pool_config().method, [SLOT],
                                    train_layer_norms=self.pool_config().train_layer_norms)
        elif fam == "full":
            model, params = load_pretrained(self.model_dir, head=head, **kw)
            rules = trainable_rules("full")
        elif fam == "fusion":
            from jadapt.fusion import fuse

            names = tuple(f"a{i}" for i in range(n_fused))
            model, params = load_pretrained(self.model_dir, adapters=tuple((n, self.pool.config) for n in names),
                                            active=(names[0],), head=head, **kw)
            model, params = fuse(model, params, names, "dynamic", jax.random.key(0))
            rules = trainable_rules("fusion")
        else:
            raise ValueError(f"unknown model family {fam!r}")
        labels = trainable_labels(params, rules)
        r = Runner(model, params, labels, regression=False, batch_size=self.s.batch_size,
                   eval_batch_size=self.s.eval_batch_size, buckets=self.s.buckets)
        r.features = None  # compiled lazily (adapter family only)
        r.probe = None
        self.runners[key] = r
        return r

    def pool_config(self):
        if self.pool is not None:
            return self.pool.config
        from jadapt.adapters.config import preset

        return preset("pfeiffer", bottleneck=64)  # scratch-only studies without a pool

    def _features_fn(self, r):
        if r.features is None:
            import jax
            import jax.numpy as jnp

            model = r.model

            @jax.jit
            def features(params, batch):
                _, hidden = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                                        batch["token_type_ids"], deterministic=True, return_hidden=True)
                m = batch["attention_mask"][..., None].astype(jnp.float32)
                return (hidden[-1].astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1.0)

            r.features = features
        return r.features

    # ------------------------------------------------------------ pool-derived inits
    def adapter_scores(self, target: str, k: int, seed: int) -> dict[str, tuple[float, float]]:
        """{source task: (loo accuracy, margin)} of every pool adapter on the k-shot train set."""
        key = (target, k, seed)
        if key in self._scores:
            return self._scores[key]
        sel_key = common.run_key({"study": "mera-fewshot", "v": VERSION, "kind": "selection", "target": target,
                                  "k": k, "seed": seed, "pool_id": self.pool.id, "max_length": self.s.max_length,
                                  "model": self.model_name})
        for rec in self.log:
            if rec.get("key") == sel_key:
                self._scores[key] = {t: tuple(v) for t, v in rec["scores"].items()}
                return self._scores[key]
        from jadapt import data, tree

        spec = data.get_task(target)
        r = self.runner("adapter", spec.num_labels)
        feats_fn = self._features_fn(r)
        shot = self.shots(target, k, seed)
        batches = list(data.eval_batches(shot, self.s.eval_batch_size, buckets=r.buckets))
        scores = {}
        with common.Timer() as t:
            for task, adapter in zip(self.pool.tasks, self.pool.adapters):
                params = tree.merge(r.frozen, overlay(r.init_trainable, adapter))
                feats = np.zeros((data.num_rows(shot), r.model.config.hidden_size), np.float32)
                for b in batches:
                    f = np.asarray(feats_fn(params, b))
                    real = b["index"] >= 0
                    feats[b["index"][real]] = f[real]
                scores[task] = loo_prototype_score(feats, np.asarray(shot["labels"]))
        self.log.append({"key": sel_key, "kind": "selection", "target": target, "k": k, "seed": seed,
                         "pool_id": self.pool.id, "scores": scores, "wall_s": round(t.wall, 2),
                         "cpu_s": round(t.cpu, 2)})
        self._scores = {kk: v for kk, v in self._scores.items() if kk[2] == seed}
        self._scores[key] = scores
        return scores

    def best_member(self, target: str, k: int, seed: int, members: Sequence[int]) -> int:
        scores = self.adapter_scores(target, k, seed)
        return max(members, key=lambda i: (scores[self.pool.tasks[i]], -i))

    def activations(self, target: str, k: int, seed: int):
        """([{site: [N, m]}] per pool adapter, real-token mask [N]) on the k-shot train inputs."""
        key = (target, k, seed)
        if key not in self._acts:
            import jax.numpy as jnp

            from jadapt import data, tree
            from jadapt.merge import bottleneck_activations, make_probe

            self._acts = {}  # one probe set at a time (they are the largest arrays here)
            r = self.runner("adapter", data.get_task(target).num_labels)
            if r.probe is None:
                r.probe = make_probe(r.model)
            params = tree.merge(r.frozen, r.init_trainable)
            batches = list(data.eval_batches(self.shots(target, k, seed), self.s.eval_batch_size,
                                             buckets=r.buckets, sort_by_length=True))
            acts = [bottleneck_activations(r.model, params, a, batches, probe=r.probe)[0] for a in self.pool.adapters]
            mask = jnp.concatenate([jnp.asarray(b["attention_mask"] * b["weight"][:, None]).reshape(-1)
                                    for b in batches])
            self._acts[key] = (acts, mask)
        return self._acts[key]

    def merged_adapter(self, method: str, target: str, k: int, seed: int, members: list[int],
                       ref: int) -> tuple[dict, dict]:
        """(the merge, {"moved": share of the bottleneck units that alignment moves, for the
        aligning merges}): the share says whether alignment did anything on this pool (a pool
        trained from one shared init keeps its units in order, and alignment = averaging)."""
        import jax

        from jadapt.merge import align_to_reference, merge_adapters

        how = self.s.same_track_method if method == "mera-same-track" else method[len("mera-"):]
        adapters = [self.pool.adapters[i] for i in members]
        kw: dict[str, Any] = {"reference": members.index(ref)}
        if how in ("align-activations",):
            acts, mask = self.activations(target, k, seed)
            kw.update(activations=[acts[i] for i in members], mask=mask)
        if how == "ties":
            kw.update(density=self.s.ties_density)
        if how == "dare":
            kw.update(key=jax.random.key(seed), density=self.s.dare_density, scale=1.0 / len(adapters))
        info = {}
        if how in ("align-weights", "align-activations") and len(adapters) > 1:
            _, perms = align_to_reference(adapters, method=how[len("align-"):],
                                          **{k_: v for k_, v in kw.items() if k_ in ("reference", "activations", "mask")})
            info["moved"] = round(float(np.mean([np.mean(np.asarray(v) != np.arange(len(v)))
                                                 for j, p in enumerate(perms) if j != kw["reference"]
                                                 for v in p.values()])), 4)
        return merge_adapters(adapters, how, **kw), info

    # ------------------------------------------------------------ one run
    def run(self, target: str, k: int, seed: int, method: str, mode: Optional[str], lr: float) -> dict:
        """Train one (target, k, seed, method, pool mode, rate) cell; returns the JSONL record body."""
        from experiments.study import predict_rows
        from jadapt import data, tree

        spec = data.get_task(target)
        _, held, dev = self.target_data(target)
        shot = self.shots(target, k, seed)
        fam = family(method)
        info: dict[str, Any] = {}
        with common.Timer() as prep:
            frozen = None
            if fam == "full":
                r = self.runner("full", spec.num_labels)
                start = seeded_init(r.init_trainable, seed, HEAD_OUT)
            elif method == "scratch":
                r = self.runner("adapter", spec.num_labels)
                start = seeded_init(r.init_trainable, seed, SCRATCH)
            else:
                members = self.pool.members(target, mode)
                if mode == "included" and len(members) == len(self.pool.members(target, "excluded")):
                    return {"status": "skipped", "reason": "no pool adapter was trained on the target's dataset: "
                                                           "included = excluded"}
                if method == "mera-same-track":
                    members = self.pool.same_track(target, members)
                if not members:
                    return {"status": "skipped", "reason": f"no {mode} pool adapter for this method"}
                info["members"] = [self.pool.tasks[i] for i in members]
                if fam == "fusion":
                    if len(members) < 2:
                        return {"status": "skipped", "reason": "fusion needs >= 2 adapters"}
                    r = self.runner("fusion", spec.num_labels, len(members))
                    fused = {f"a{j}": tree.flatten(self.pool.adapters[i]) for j, i in enumerate(members)}
                    flat = {p.replace(f"/{SLOT}/", f"/{name}/"): x for name, f in fused.items() for p, x in f.items()}
                    frozen = tree.merge(r.frozen, tree.unflatten(flat))
                    start = seeded_init(r.init_trainable, seed, FUSION)
                else:
                    r = self.runner("adapter", spec.num_labels)
                    ref = self.best_member(target, k, seed, members)
                    info["reference"] = self.pool.tasks[ref]
                    if method == "best-single":
                        adapter = self.pool.adapters[ref]
                    else:
                        adapter, merge_info = self.merged_adapter(method, target, k, seed, members, ref)
                        info.update(merge_info)
                    start = seeded_init(overlay(r.init_trainable, adapter), seed, HEAD_OUT)
        n_compiled = r.train_step._cache_size() + r.eval_step._cache_size()
        with common.Timer() as t:
            out = r.run(spec, shot, held, seed=seed, epochs=self.s.steps / data.num_batches(shot, r.batch_size),
                        lr=lr, trainable=start, frozen=frozen, return_params=True)
            preds, dev_metrics = predict_rows(r, spec, dev, out["trainable"], frozen)
        compiled = r.train_step._cache_size() + r.eval_step._cache_size() > n_compiled
        if self.calibrate and (fam, target, mode if fam == "fusion" else None) not in self.calibrated:
            info.update(self._calibrate(r, spec, shot, dev, start, frozen, seed, lr))
            self.calibrated.add((fam, target, mode if fam == "fusion" else None))
        m = {k_: float(v) for k_, v in dev_metrics.items()}
        h = {k_: float(v) for k_, v in out["final"].items() if k_ != "epoch"}
        return {"status": "ok", "metrics": m, "main": m[spec.main_metric], "metric": spec.main_metric,
                "heldout": h, "heldout_main": h[spec.main_metric], "dev_pred": protocol.pack_predictions(preds, False),
                "curve": protocol.loss_curve(out["train_loss"]),
                "steps": out["steps"], "train_rows": int(data.num_rows(shot)), "dev_rows": int(data.num_rows(dev)),
                "prep_wall_s": round(prep.wall, 3), "prep_cpu_s": round(prep.cpu, 3), "run_wall_s": round(t.wall, 3),
                "run_cpu_s": round(t.cpu, 3), "compiled": bool(compiled), **info}

    def _calibrate(self, r, spec, shot, dev, start, frozen, seed, lr) -> dict:
        """Warm timings on an already compiled runner, for the run-time projection: one dev
        evaluation, then one more epoch of training (+ its final dev evaluation)."""
        with common.Timer() as ev:
            r.evaluate(spec, dev, start, frozen)
        with common.Timer() as tr:
            out = r.run(spec, shot, dev, seed=seed, epochs=1, lr=lr, trainable=start, frozen=frozen)
        steps = max(out["steps"], 1)
        return {"cal_eval_wall_s": round(ev.wall, 3), "cal_eval_cpu_s": round(ev.cpu, 3),
                "cal_step_wall_s": round(max(tr.wall - ev.wall, 0.0) / steps, 4),
                "cal_step_cpu_s": round(max(tr.cpu - ev.cpu, 0.0) / steps, 4)}


# ================================================================ report
def label(method: str, mode: Optional[str]) -> str:
    return method if mode is None else f"{method} ({mode})"


def collect(log: common.RunLog, s: Settings, model: str, pool_id: Optional[str]) -> tuple[dict, dict, dict]:
    """({(target, k, method, mode): [records at the chosen rate]}, {same key: (chosen rate,
    grid-edge warning or None, {rate: mean held-out score})}, {same key: [records at every
    rate]}) of this settings' finished runs. The rate is chosen by the mean held-out score over
    seeds (``protocol.choose_rate``)."""
    wanted = {}
    for seed, k, target, method, mode, lr in plan(s):
        key = common.run_key(run_spec(s, target, k, seed, method, mode, lr, model=model, pool_id=pool_id))
        wanted[key] = ((target, k, method, mode), lr)
    grid: dict = {}
    for rec in log:
        if rec.get("key") in wanted:
            cell, lr = wanted[rec["key"]]
            grid.setdefault(cell, {}).setdefault(lr, []).append(rec)
    cells, chosen = {}, {}
    for cell, by_lr in grid.items():
        held = {lr: [r["heldout_main"] for r in recs if r.get("status") == "ok"] for lr, recs in by_lr.items()}
        held = {lr: v for lr, v in held.items() if v}
        if held:
            lr, edge = protocol.choose_rate(held)
            chosen[cell] = (lr, edge, {x: float(np.mean(v)) for x, v in held.items()})
            cells[cell] = by_lr[lr]
        else:  # skipped cells: their records say why
            cells[cell] = next(iter(by_lr.values()))
    return cells, chosen, {cell: [r for recs in by_lr.values() for r in recs] for cell, by_lr in grid.items()}


# The paper's claims as paired comparisons (pool mode "excluded", the few-shot setting):
# (claim, method claimed better, the other)
CLAIMS = (("B1", "mera-{m}", "best-single"), ("B1", "mera-{m}", "fusion"),
          ("B2", "mera-align-weights", "mera-average"), ("B2", "mera-align-activations", "mera-average"),
          ("B2", "mera-ot", "mera-average"), ("B3", "mera-same-track", "mera-{same}"))


def comparisons(s: Settings, cells: dict, dev_labels, reps: int = 2000) -> tuple[str, list[str]]:
    """Table of paired differences (x100, 95 % bootstrap interval over seeds and dev rows) for
    the claims B1 (each MerA merge vs the best single adapter and vs AdapterFusion), B2
    (alignment vs plain averaging) and B3 (same-track vs the same merge of the whole pool);
    and one verdict line per claim, target and k."""
    from jadapt import data

    rows, verdicts = [], []
    mode = "excluded" if "excluded" in s.pool_modes else s.pool_modes[0]
    merges = [m for m in MERGES if f"mera-{m}" in s.methods]
    for target in s.targets:
        spec = data.get_task(target)
        metric = protocol.main_metric_fn(spec)
        for k in s.ks:
            for claim, a_tmpl, b_tmpl in CLAIMS:
                for m in (merges if "{m}" in a_tmpl else [None]):
                    a = a_tmpl.format(m=m, same=s.same_track_method)
                    b = b_tmpl.format(m=m, same=s.same_track_method)
                    ra = {r["seed"]: r for r in cells.get((target, k, a, mode), []) if r.get("status") == "ok"}
                    rb = {r["seed"]: r for r in cells.get((target, k, b, mode), []) if r.get("status") == "ok"}
                    seeds = sorted(set(ra) & set(rb))
                    if len(seeds) < 2 or any("dev_pred" not in x[t] for x in (ra, rb) for t in seeds):
                        continue
                    pa = np.stack([protocol.unpack_predictions(ra[t]["dev_pred"], False) for t in seeds])
                    pb = np.stack([protocol.unpack_predictions(rb[t]["dev_pred"], False) for t in seeds])
                    ci = protocol.bootstrap_metric_diff(pa, pb, dev_labels(target), metric, reps)
                    wins = protocol.sign_count([ra[t]["main"] for t in seeds], [rb[t]["main"] for t in seeds])
                    rows.append([claim, target, k, f"{a} − {b}", protocol.fmt_ci(ci), f"{wins}", protocol.verdict(ci)])
                    verdicts.append(f"- {claim} {target} k={k}: {a} − {b} = {protocol.fmt_ci(ci)} points "
                                    f"({len(seeds)} seeds, better in {wins}) -> **{protocol.verdict(ci)}**")
    table = common.markdown_table(["claim", "target", "k", "pair (pool: " + mode + ")", "dev difference x100 [95 % CI]",
                                   "seeds better", "verdict"], rows) if rows else "no paired runs yet"
    return table, verdicts


def convergence(s: Settings, runs: dict) -> str:
    """Whether the step budget let every run's training loss flatten (``protocol.flattened``
    on its 40-point curve), and by which step the loss first fell below 5 % of its start."""
    rows = []
    for (target, k, method, mode), recs in sorted(runs.items(), key=lambda kv: str(kv[0])):
        ok = [r for r in recs if r.get("status") == "ok" and r.get("curve")]
        if not ok:
            continue
        flat = sum(protocol.flattened(r["curve"]) for r in ok)
        reach = []
        for r in ok:
            c = np.asarray(r["curve"], float)
            hit = np.nonzero(c <= 0.05 * c[0])[0]
            reach.append((hit[0] + 1) * r["steps"] / len(c) if len(hit) else np.inf)
        worst = max(reach)
        rows.append([target, k, label(method, mode), f"{flat} of {len(ok)}",
                     f"{np.median(reach):.0f}" if np.isfinite(np.median(reach)) else "never",
                     f"{worst:.0f}" if np.isfinite(worst) else "never", f"{np.mean([r['curve'][-1] for r in ok]):.4f}"])
    if not rows:
        return "no runs yet"
    return common.markdown_table(["target", "k", "method", "runs flattened", "step loss < 5 % of start (median)",
                                  "(slowest run)", "final loss (mean)"], rows, align="lrlrrrr")


def rate_table(s: Settings, chosen: dict) -> str:
    """Mean held-out score per rate (bold: chosen), per (target, k, method, mode)."""
    lrs = sorted({lr for *_, means in chosen.values() for lr in means})
    rows, edges = [], []
    for (target, k, method, mode), (lr, edge, means) in chosen.items():
        rows.append([target, k, label(method, mode), *[(f"**{100 * means[x]:.1f}**" if x == lr else f"{100 * means[x]:.1f}")
                                                       if x in means else "" for x in lrs]])
        if edge and len(means) > 1:
            edges.append(f"{target} k={k} {label(method, mode)}: {edge}")
    text = common.markdown_table(["target", "k", "method", *[f"{x:g}" for x in lrs]], rows) if rows else "–"
    return text + ("\n\nChosen at an end of its grid: " + "; ".join(edges) if edges else "")


def results_tables(s: Settings, cells: dict, baselines: Optional[dict] = None) -> str:
    """Per target: dev score at the chosen rate (mean ± std over seeds, n, @ rate) per method
    and k, and the majority-class baseline (MRPC: also always-positive F1) beneath."""
    from jadapt import data

    parts = []
    for target in s.targets:
        spec = data.get_task(target)
        dev_rows = {r["dev_rows"] for (t, *_), recs in cells.items() if t == target for r in recs if "dev_rows" in r}
        where = f"{spec.dev_split}, {'/'.join(map(str, sorted(dev_rows)))} rows" if dev_rows else spec.dev_split
        parts += [f"### {target.upper()} ({spec.main_metric} % on {where}; mean ± std over seeds, n = seeds)", ""]
        rows = []
        for method in s.methods:
            for mode in (s.pool_modes if uses_pool(method) else (None,)):
                row = [label(method, mode)]
                for k in s.ks:
                    recs = cells.get((target, k, method, mode), [])
                    ok = [r["main"] for r in recs if r.get("status") == "ok"]
                    f1 = [r["metrics"]["f1"] for r in recs if r.get("status") == "ok" and "f1" in r.get("metrics", {})]
                    if not ok and recs:
                        row.append("n/a")
                    else:
                        lr = next((r["lr"] for r in recs if r.get("status") == "ok"), None)
                        row.append(common.fmt_mean_std(ok) + (f", F1 {common.fmt_mean_std(f1)}" if f1 and "f1" != spec.main_metric else "")
                                   + (f" (n={len(ok)}) @ {lr:g}" if ok else ""))
                rows.append(row)
        base = (baselines or {}).get(target)
        if base:
            rows.append(["majority class" + (f" (always-positive F1 {100 * base['f1']:.1f})" if "f1" in base else ""),
                         *[f"{100 * base[spec.main_metric]:.1f}"] * len(s.ks)])
        parts += [common.markdown_table(["method"] + [f"k={k}" for k in s.ks], rows), ""]
    return "\n".join(parts)


def observations(s: Settings, cells: dict) -> list[str]:
    """Plain factual comparisons of means (no significance claims)."""
    def mean(target, k, method, mode):
        ok = [r["main"] for r in cells.get((target, k, method, mode), []) if r.get("status") == "ok"]
        return (float(np.mean(ok)), len(ok)) if ok else (None, 0)

    lines = []
    mode0 = s.pool_modes[0]
    for target in s.targets:
        for k in s.ks:
            base, n = mean(target, k, "scratch", None)
            if base is None:
                continue
            cands = []
            for method in s.methods:
                for mode in (s.pool_modes if uses_pool(method) else (None,)):
                    v, nn = mean(target, k, method, mode)
                    if v is not None:
                        cands.append((v, label(method, mode), nn))
            best = max(cands)
            comp = []
            for method in ("mera-align-weights", "mera-average", "best-single", "fusion", "full-ft"):
                if method not in s.methods:
                    continue
                v, nn = mean(target, k, method, mode0 if uses_pool(method) else None)
                if v is not None:
                    comp.append(f"{label(method, mode0 if uses_pool(method) else None)} "
                                f"{100 * (v - base):+.1f}")
            lines.append(f"- {target.upper()}, k={k}: scratch {100 * base:.1f} (n={n}); vs scratch: "
                         + ", ".join(comp) + f"; best mean: {best[1]} {100 * best[0]:.1f} (n={best[2]}).")
    return lines


def plot(s: Settings, cells: dict, path: Path) -> Optional[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(s.pool_modes)
    if len(s.ks) == 1:
        return _bar_plot(s, cells, path, plt)
    fig, axes = plt.subplots(len(modes), len(s.targets), figsize=(5 * len(s.targets), 4 * len(modes)),
                             squeeze=False)
    for ci, target in enumerate(s.targets):
        for ri, mode in enumerate(modes):
            ax = axes[ri][ci]
            for method in s.methods:
                m = mode if uses_pool(method) else None
                xs, ys, es = [], [], []
                for k in s.ks:
                    ok = [r["main"] for r in cells.get((target, k, method, m), []) if r.get("status") == "ok"]
                    if ok:
                        mu, sd, _ = common.mean_std(ok)
                        xs.append(k), ys.append(100 * mu), es.append(100 * sd)
                if xs:
                    style = "--" if method in ("scratch", "full-ft") else "-"
                    ax.errorbar(xs, ys, yerr=es, fmt=style + "o", ms=3, capsize=2, label=method, alpha=0.85)
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(s.ks), [str(k) for k in s.ks])
            ax.set_title(f"{target.upper()} (pool: {mode})")
            ax.set_xlabel("k (examples per class)")
            ax.set_ylabel("dev accuracy (%)")
            ax.grid(alpha=0.3)
    handles, labels_ = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels_, loc="lower center", ncol=min(6, len(handles)), fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bar_plot(s: Settings, cells: dict, path: Path, plt) -> Path:
    """One k: a bar per method and pool mode (mean ± std over seeds), one panel per target."""
    k = s.ks[0]
    fig, axes = plt.subplots(1, len(s.targets), figsize=(5.5 * len(s.targets), 4.5), squeeze=False)
    for ci, target in enumerate(s.targets):
        ax = axes[0][ci]
        names, ys, es, colors = [], [], [], []
        for method in s.methods:
            for mode in (s.pool_modes if uses_pool(method) else (None,)):
                ok = [r["main"] for r in cells.get((target, k, method, mode), []) if r.get("status") == "ok"]
                if not ok:
                    continue
                mu, sd, _ = common.mean_std(ok)
                names.append(label(method, mode).replace(" (excluded)", "").replace(" (included)", " (incl.)"))
                ys.append(100 * mu), es.append(100 * sd)
                colors.append("tab:gray" if method in ("scratch", "full-ft") else
                              "tab:orange" if method in ("best-single", "fusion") else "tab:blue")
        ax.bar(range(len(ys)), ys, yerr=es, color=colors, capsize=3)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        lo = min((y - e for y, e in zip(ys, es)), default=0)
        ax.set_ylim(max(0, lo - 5), max((y + e for y, e in zip(ys, es)), default=100) + 3)
        ax.set_title(f"{target.upper()}, k={k} per class")
        ax.set_ylabel(f"dev {data_metric(target)} (%)")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def data_metric(target: str) -> str:
    from jadapt import data

    return data.get_task(target).metrics[0]


# ---------------------------------------------------------------- run-time projection
def steps_for(rows: int, s: Settings) -> int:
    return s.steps  # the budget is in optimizer steps, whatever the rows


def cal_key(method: str, target: str, mode: Optional[str]) -> tuple:
    """Runs sharing one compiled runner (and so one warm step time) on one target."""
    fam = family(method)
    return fam, target, mode if fam == "fusion" else None


def project(records: list[dict], target_settings: Settings, num_labels: dict, dev_rows_full: dict,
            clock: str = "wall") -> dict:
    """Seconds the study ``target_settings`` would take, from timed runs of a (quick) study.

    Warm step and dev-eval times come from the calibration entries (``Study._calibrate``)
    per runner and target; a planned run costs steps x step time + dev rows x eval time
    per row + its method's preparation time (selection, probes, merge) scaled by k.
    Compilation is counted once per runner and target: the excess of the first run there.
    """
    ok = [r for r in records if r.get("status") == "ok"]
    skipped = {(r["method"], r["target"], r["pool_mode"]) for r in records if r.get("status") == "skipped"}
    cal, prep, compile_s = {}, {}, 0.0
    for r in ok:
        if f"cal_step_{clock}_s" in r:
            key = cal_key(r["method"], r["target"], r["pool_mode"])
            step, ev_row = r[f"cal_step_{clock}_s"], r[f"cal_eval_{clock}_s"] / max(r["dev_rows"], 1)
            cal[key] = (step, ev_row)
            compile_s += max(r[f"run_{clock}_s"] - r["steps"] * step - r["dev_rows"] * ev_row, 0.0)
        prep.setdefault((r["method"], r["target"]), []).append(r[f"prep_{clock}_s"] / r["k"])
    total, by_method, missing, runs = 0.0, {}, set(), 0
    for seed, k, target, method, mode, _ in plan(target_settings):
        if (method, target, mode) in skipped:
            continue
        runs += 1
        key = cal_key(method, target, mode)
        if key not in cal or (method, target) not in prep:
            missing.add((method, target, mode))
            continue
        step, ev_row = cal[key]
        t = steps_for(k * num_labels[target], target_settings) * step + ev_row * dev_rows_full[target] \
            + float(np.median(prep[(method, target)])) * k
        total += t
        by_method[method] = by_method.get(method, 0.0) + t
    return {"total_s": total + compile_s, "compile_s": compile_s, "by_method_s": by_method,
            "runs": runs, "unmeasured": sorted(map(str, missing))}


# ---------------------------------------------------------------- markdown
def write_report(path: Path, *, s: Settings, cells: dict, pool: Optional[Pool], quick: bool,
                 command: str, full_command: str, wall_s: float, png: Optional[Path], projection: Optional[dict],
                 load_start: Optional[float], jsonl: Path, verdict: Optional[Path] = None,
                 chosen: Optional[dict] = None, baselines: Optional[dict] = None,
                 pairs: tuple[str, list] = ("", []), cells_all: Optional[dict] = None) -> None:
    hw, sw = common.hardware(), common.software()
    n_ok = sum(1 for recs in cells.values() for r in recs if r.get("status") == "ok")
    n_skip = sum(1 for recs in cells.values() for r in recs if r.get("status") == "skipped")
    every = [r for recs in (cells_all or cells).values() for r in recs]
    n_all = sum(1 for r in every if r.get("status") == "ok")
    run_time = sum(r.get("run_wall_s", 0) + r.get("prep_wall_s", 0) for r in every)
    skipped = sorted({f"{label(key[2], key[3])} on {key[0]}: {r['reason']}" for key, recs in cells.items()
                      for r in recs if r.get("status") == "skipped"})
    text = ["# MerA few-shot study: merged pretrained adapters vs scratch, single adapter, fusion, full FT", ""]
    if quick:
        text += [f"**QUICK MODE** (k={','.join(map(str, s.ks))}, seeds {','.join(map(str, s.seeds))}, "
                 f"{s.steps} steps, dev sets capped at {s.eval_limit} rows"
                 + (", source pool trained with `mera_pool --quick` budgets"
                    if pool and pool.manifest.get("quick") else "")
                 + "): a check of the pipeline and a timing, **not a result**. The study itself: see *Full study* "
                 "below.", ""]
    text += [
        "Protocol: `experiments/mera_fewshot.py` (module docstring: data, methods, selection without dev data, "
        "merge settings). Source pool: `experiments/mera_pool.py`"
        + (f" ({len(pool.tasks)} Pfeiffer adapters, bottleneck {pool.config.size(384)}: "
           f"{', '.join(pool.tasks)})." if pool else "."),
        "",
        f"Protocol: {s.steps} optimizer steps for every method, batch {s.batch_size}, max length {s.max_length}, "
        f"warmup 10 %, linear decay, AdamW wd 0.01; each method's rate chosen per target, k and pool mode by the mean "
        f"score over seeds on a held-out set of {s.heldout_k} training rows per class (one fixed draw, disjoint "
        f"from every seed's k-shot sample) from the grids adapters {{{', '.join(f'{x:g}' for x in s.adapter_lrs)}}}, "
        f"fusion {{{', '.join(f'{x:g}' for x in s.fusion_lrs)}}}, full fine-tuning "
        f"{{{', '.join(f'{x:g}' for x in s.full_lrs)}}}; dev scores after the last step (no early stopping), "
        + (f"dev sets whole, or a fixed seeded sample of {s.eval_limit} rows where larger" if s.eval_limit
           else "whole dev sets") +
        f"; k = {', '.join(map(str, s.ks))} per class; seeds {', '.join(map(str, s.seeds))}; "
        f"same-track merge: {s.same_track_method}; AdapterFusion: AdapterHub's dynamic preset with its "
        f"0.01 ||I - V||^2 regulariser in the loss; TIES density {s.ties_density:g}; DARE keep {s.dare_density:g}.",
        "",
        "## Results (dev score at the rate chosen on held-out rows)",
        "",
        results_tables(s, cells, baselines),
        "## Learning-rate choice (mean held-out score x100 over seeds; bold: chosen)",
        "",
        rate_table(s, chosen or {}),
        "",
        "## Convergence (training loss of every run, chosen rate or not)",
        "",
        convergence(s, cells_all or {}),
        "",
        "## Paired comparisons (by seed: same k-shot sample and init; bootstrap over seeds and dev rows)",
        "",
        pairs[0],
        "",
        *pairs[1],
        "",
    ]
    moved = [(key, r["moved"]) for key, recs in cells.items() for r in recs if "moved" in r]
    if pool is not None and pool.dropped:
        text += ["Sources left out of the pool (best dev score not 2 points above their majority class): "
                 + ", ".join(f"{e['task']} ({e['metric']} {100 * e['dev_score']:.1f} vs {100 * e['majority']:.1f})"
                             for e in pool.dropped), ""]
    if moved:
        by = {}
        for (target, k, method, mode), v in moved:
            by.setdefault(label(method, mode), []).append(v)
        text += ["Share of bottleneck units alignment moves on this pool (mean over runs; 0 % = alignment equals "
                 "plain averaging): " + "; ".join(f"{m} {100 * np.mean(v):.1f} %" for m, v in by.items()), ""]
    if skipped:
        text += ["Cells marked n/a were not run:", ""] + [f"- {x}" for x in skipped] + [""]
    if png:
        text += [f"![mean accuracy vs k]({png.name})", ""]
    text += ["## Observations (automatic, differences of means in points; no significance test)", ""]
    text += observations(s, cells) or ["- no finished runs yet"]
    if verdict is not None:  # written by a person from the tables above (``--verdict FILE``)
        text += ["", verdict.read_text().strip(), ""]
    else:
        text += ["", "Verdicts, claim by claim and per encoder, with what they rest on: `mera_verdict.md` (the "
                 "paired comparisons above are the only numbers a verdict may use).", ""]
    text += ["## Time and provenance", "",
             f"- command: `{command}`",
             f"- finished runs: {n_all} over every rate, {n_ok} of them at the chosen rates in the tables "
             f"(+{n_skip} skipped cells); summed run time of all {n_all} "
             f"{common.fmt_duration(run_time)}; this invocation's wall time {common.fmt_duration(wall_s)} "
             f"(runs already in the JSONL are not redone)",
             f"- every run (settings, metrics, timings): `{jsonl}`",
             f"- hardware: {hw['cpu_model']} ({hw['cpu_bf16']}), {hw['cores_available']} cores, {hw.get('memory_gb')} GB RAM, "
             f"{hw.get('jax_devices', 'cpu')}; load average {load_start} at start, {hw.get('load_average_1m')} "
             f"at the end (the machine is shared: wall times include waiting for the CPU)",
             "- software: " + ", ".join(f"{k} {v}" for k, v in sw.items())]
    if pool is not None:
        text.append(f"- pool: `{pool.manifest.get('command', '?')}` (id {pool.id}; base model "
                    f"{', '.join(pool.base_models)})")
    if projection:
        cores = hw["cores_available"]
        cpu = projection["cpu"]
        text += ["", "## Full study", "",
                 f"Command: `{full_command}` (after `python -m experiments.mera_pool`).", "",
                 f"Projection for its {cpu['runs']} runs from this quick run's own warm step and dev-eval timings "
                 f"(`project` in the script): **{common.fmt_duration(cpu['total_s'])} of process CPU time** "
                 f"(all threads; incl. {common.fmt_duration(cpu['compile_s'])} of compilation). On an idle "
                 f"{cores}-core machine the wall time lies between CPU/{cores} and CPU time, i.e. "
                 f"{common.fmt_duration(cpu['total_s'] / cores)} to {common.fmt_duration(cpu['total_s'])}. "
                 f"During this quick run the shared machine gave wall = {projection['wall_per_cpu']:.1f} x CPU "
                 f"(load average {load_start} at start), which would make it "
                 f"{common.fmt_duration(cpu['total_s'] * projection['wall_per_cpu'])}; the wall-clock projection "
                 f"from the noisy wall timings is {common.fmt_duration(projection['wall']['total_s'])}.", "",
                 "CPU time by method: " + ", ".join(
                     f"{m} {common.fmt_duration(v)}" for m, v in sorted(cpu["by_method_s"].items(),
                                                                         key=lambda kv: -kv[1])) + "."]
        if cpu.get("unmeasured"):
            text.append(f"Not measured here (not in the projection): {cpu['unmeasured']}.")
    common.write_text_atomic(path, "\n".join(text) + "\n")


# ================================================================ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="k=16, one seed, 4 steps, one rate per family, dev capped at 200 rows, *_quick outputs, "
                        "full-study time projection")
    p.add_argument("--pool", default=None,
                   help="pool dir with pool.json (default runs/mera/pool; quick: runs/mera_quick/pool)")
    p.add_argument("--targets", default=None, help="comma-separated (default mrpc,rte,sick,mnli)")
    p.add_argument("--k", default=None, help="comma-separated examples per class (default 16,64)")
    p.add_argument("--seeds", default=None, help="number of seeds N (0..N-1) or a comma list (default 3)")
    p.add_argument("--methods", default=None, help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--pool-modes", default=None, help="comma-separated subset of excluded,included")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 200, quick 4)")
    p.add_argument("--buckets", default=None, help="comma list of padded widths (default 32,64,128,256,512)")
    for fam in ("adapter", "fusion", "full"):
        p.add_argument(f"--{fam}-lrs", default=None, help=f"comma list: the {fam} learning-rate grid")
    p.add_argument("--heldout-k", type=int, default=None,
                   help="held-out rows per class for choosing rates (default 16, quick 4)")
    p.add_argument("--eval-limit", type=int, default=None,
                   help="cap dev sets at N rows (fixed seeded sample; default 2000, quick 200); 0 = none")
    p.add_argument("--same-track-method", default=None, choices=MERGES)
    p.add_argument("--compute-dtype", default=None, choices=("float32", "bfloat16"))
    p.add_argument("--model", default=None,
                   help="HF model dir (default: packaged all-MiniLM-L6-v2; must match the pool's)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="markdown (default experiments/results/mera.md; quick: mera_quick.md)")
    p.add_argument("--jsonl", default=None, help="run log (default: --out with .jsonl)")
    p.add_argument("--compile-cache", default="runs/jax_cache", help="XLA persistent compilation cache ('' = off)")
    p.add_argument("--verdict", default=None,
                   help="markdown file with the claim-by-claim verdict, included in the report as is")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: write the report from the runs of this plan already in the JSONL")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="run a chunk: start no run that would end after this many minutes (judged by the longest "
                        "run so far), then write the report; rerun to go on")
    return p.parse_args(argv)


def settings_from_args(args) -> Settings:
    kw: dict[str, Any] = dict(QUICK) if args.quick else {}
    if args.targets:
        kw["targets"] = tuple(t for t in args.targets.split(",") if t)
    if args.k:
        kw["ks"] = tuple(int(x) for x in args.k.split(","))
    if args.seeds:
        kw["seeds"] = tuple(range(int(args.seeds))) if "," not in args.seeds else \
            tuple(int(x) for x in args.seeds.split(","))
    if args.methods:
        kw["methods"] = tuple(m for m in args.methods.split(",") if m)
    if args.pool_modes:
        kw["pool_modes"] = tuple(m for m in args.pool_modes.split(",") if m)
    if args.buckets:
        kw["buckets"] = tuple(int(x) for x in args.buckets.split(",") if x.strip())
    for name in ("steps", "heldout_k", "same_track_method", "compute_dtype"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    for name in ("adapter_lrs", "fusion_lrs", "full_lrs"):
        if getattr(args, name):
            kw[name] = tuple(float(x) for x in getattr(args, name).split(",") if x.strip())
    if args.eval_limit is not None:
        kw["eval_limit"] = args.eval_limit or None
    return Settings(**kw)


def full_command_for(args, argv) -> str:
    """The command of the full study matching a quick invocation (same options, no --quick)."""
    rest = [a for a in argv if a != "--quick"]
    return common.command_line(["experiments/mera_fewshot.py", *rest])


def main(argv: Optional[Sequence[str]] = None) -> dict:
    # glibc malloc by default: tcmalloc kept ~7.8 GB resident here (vs 2.5 GB) and got the quick
    # run OOM-killed on the shared 24 GB machine; JADAPT_ALLOCATOR=tcmalloc opts in (faster steps)
    common.reexec_with_allocator("experiments.mera_fewshot", argv, default="system")
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    s = settings_from_args(args)
    command = common.command_line(["experiments/mera_fewshot.py", *raw])
    common.enable_compile_cache(args.compile_cache)
    out = Path(args.out or (RESULTS / ("mera_quick.md" if args.quick else "mera.md")))
    jsonl = Path(args.jsonl or out.with_suffix(".jsonl"))
    data_dir = args.data_dir or common.default_data_dir()
    if data_dir is None:
        raise SystemExit("no task data: pass --data-dir or set $JADAPT_DATA_DIR")
    load_start = common.hardware().get("load_average_1m")
    t0 = time.time()

    needs_pool = any(uses_pool(m) for m in s.methods)
    pool = Pool(args.pool or ("runs/mera_quick/pool" if args.quick else "runs/mera/pool")) if needs_pool else None
    log = common.RunLog(jsonl)
    study = Study(s, pool=pool, model=args.model, data_dir=data_dir, log=log, calibrate=args.quick)
    model_name = study.model_name
    pool_id = pool.id if pool else None
    todo = plan(s)
    keys = [common.run_key(run_spec(s, target, k, seed, method, mode, lr, model=model_name, pool_id=pool_id))
            for seed, k, target, method, mode, lr in todo]
    progress = common.Progress(len(todo), already_done=sum(log.done(k) for k in keys))
    print(f"MerA few-shot: {len(todo)} runs planned, {progress.done} already in {jsonl}", flush=True)
    probed = {i for i, item in enumerate(todo) if needs_activations(s, item[3])}
    current = None
    deadline, left = common.Deadline(args.max_minutes), 0
    for i, ((seed, k, target, method, mode, lr), key) in enumerate(zip(todo, keys)):
        if log.done(key) or args.report_only:
            continue
        if not deadline.allows_next():
            left += 1
            continue
        started = time.time()
        if target != current:
            study.focus(target)
            current = target
        spec = run_spec(s, target, k, seed, method, mode, lr, model=model_name, pool_id=pool_id)
        body = study.run(target, k, seed, method, mode, lr)
        if i in probed and not any(j in probed and todo[j][:3] == todo[i][:3] for j in range(i + 1, len(todo))):
            study.release_activations()  # the last run of this (seed, k, target) that probes
        log.append({"key": key, "kind": "run", **spec, **body, "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
        msg = f"{target} k={k} seed={seed} {label(method, mode)} lr {lr:g}: "
        msg += (f"held-out {100 * body['heldout_main']:.1f}, dev {body['metric']} {100 * body['main']:.1f} "
                f"({body['steps']} steps, "
                f"{body['run_wall_s'] + body['prep_wall_s']:.0f} s)") if body["status"] == "ok" else body["reason"]
        progress.step(msg)
        deadline.ran(time.time() - started)
    if left:
        print(f"time limit: {left} runs left for the next chunk (rerun the same command)", flush=True)

    cells, chosen, cells_all = collect(log, s, model_name, pool_id)
    baselines = {t: protocol.majority_baseline(t, study.target_data(t)[2]["labels"]) for t in s.targets}
    pairs = comparisons(s, cells, lambda t: np.asarray(study.target_data(t)[2]["labels"]))
    png = plot(s, cells, out.with_suffix(".png")) if cells else None
    projection = None
    if args.quick:
        from jadapt import data

        full = dataclasses.replace(s, ks=Settings.ks, seeds=Settings.seeds, eval_limit=Settings.eval_limit,
                                   steps=args.steps or Settings.steps, adapter_lrs=Settings.adapter_lrs,
                                   fusion_lrs=Settings.fusion_lrs, full_lrs=Settings.full_lrs,
                                   heldout_k=Settings.heldout_k)
        recs = [r for recs in cells.values() for r in recs]
        num_labels = {t: data.get_task(t).num_labels for t in s.targets}
        dev_full = {}
        for t in s.targets:
            spec = data.get_task(t)
            n = data.num_rows(data.load_split(spec, spec.dev_split, data_dir))
            dev_full[t] = min(n, full.eval_limit) if full.eval_limit else n
        wall, cpu = (project(recs, full, num_labels, dev_full, c) for c in ("wall", "cpu"))
        ok = [r for r in recs if r.get("status") == "ok"]
        ratio = sum(r["run_wall_s"] + r["prep_wall_s"] for r in ok) / max(
            sum(r["run_cpu_s"] + r["prep_cpu_s"] for r in ok), 1e-9)
        projection = {"cpu": cpu, "wall": wall, "wall_per_cpu": ratio, "total_s": cpu["total_s"],
                      "compile_s": cpu["compile_s"], "runs": cpu["runs"], "unmeasured": cpu["unmeasured"]}
        print(f"projected full study: {common.fmt_duration(cpu['total_s'])} CPU "
              f"({common.fmt_duration(wall['total_s'])} wall at this load) for {cpu['runs']} runs", flush=True)
    write_report(out, s=s, cells=cells, pool=pool, quick=args.quick, command=command,
                 full_command=full_command_for(args, raw), wall_s=time.time() - t0, png=png,
                 projection=projection, load_start=load_start, jsonl=jsonl,
                 verdict=Path(args.verdict) if args.verdict else None, chosen=chosen, baselines=baselines,
                 pairs=pairs, cells_all=cells_all)
    print(f"report: {out}", flush=True)
    return {"cells": cells, "chosen": chosen, "projection": projection, "report": out, "left": left}


if __name__ == "__main__":
    main()
