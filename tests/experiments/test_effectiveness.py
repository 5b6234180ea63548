"""Adapter-effectiveness study scripts (the effectiveness grid: low resource, learning rate,
overfitting; forgetting; cross-lingual): helper properties, then each --quick mode end to end on a tiny random BERT
with synthetic tasks (results files, resume from the JSONL, the properties each study's
numbers must have). The --quick runs are the CI smoke test of each study (~2 min in all on 2
cores), so they are not marked slow."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from experiments import common, cross_lingual, effectiveness, forgetting, merge_logs, study
from experiments.study import Method, Study, Tuner, parse_methods
from tests.conftest import write_synthetic_task

NLI = "good bad great awful fine poor nice terrible happy sad".split()


# ---------------------------------------------------------------- helpers (fast)
def test_parse_methods_names_kinds_and_errors():
    ms = parse_methods("adapter64, adapter256,full", adapter="pfeiffer", adapter_lr=2e-3, full_lr=3e-5)
    assert [(m.name, m.kind, m.bottleneck, m.lr) for m in ms] == [
        ("adapter64", "pfeiffer", 64, 2e-3), ("adapter256", "pfeiffer", 256, 2e-3), ("full", "full", None, 3e-5)]
    for bad in ("lora", "adapter", "adapterX", ""):
        with pytest.raises(ValueError):
            parse_methods(bad)
    with pytest.raises(ValueError, match="bottleneck"):
        Method("x", "full", 8, 1e-3)
    with pytest.raises(ValueError, match="lr"):
        Method("x", "houlsby", 8, 0.0)


def test_study_runs_each_spec_once_and_resumes(tmp_path, capsys):
    specs = [{"task": "rte", "seed": s} for s in range(3)]
    calls = []

    def fn(s):
        calls.append(s)
        return {"value": s * 10}

    study = Study(tmp_path / "r.jsonl", specs)
    got = [study.once(sp, lambda s=sp["seed"]: fn(s), what=str(sp)) for sp in specs[:2]]
    assert calls == [0, 1] and [g["value"] for g in got] == [0, 10]
    again = Study(tmp_path / "r.jsonl", specs)  # a restarted study
    assert again.progress.done == 2
    got = [again.once(sp, lambda s=sp["seed"]: fn(s), what=str(sp)) for sp in specs]
    assert calls == [0, 1, 2] and [g["value"] for g in got] == [0, 10, 20]
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 3
    assert "done earlier" in capsys.readouterr().out


def test_drop_stats():
    s = effectiveness.drop_stats([0.5, 0.8, 0.6, 0.7])
    assert s == {"best_epoch": 2, "best": 0.8, "last": 0.7, "drop": pytest.approx(0.1)}
    assert effectiveness.drop_stats([0.1, 0.2, 0.3])["drop"] == 0.0


def test_spread_diff_sees_a_method_that_collapses_at_some_rates():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    good = lambda acc: np.where(rng.random(300) < acc, y, 1 - y)  # noqa: E731
    # full: right at two rates, constant at the third; adapter: about as good at all three
    pf = np.stack([np.stack([good(0.85), good(0.85), np.zeros(300, int)]) for _ in range(3)])
    pa = np.stack([np.stack([good(0.82), good(0.84), good(0.83)]) for _ in range(3)])
    fn = lambda p, t: float(np.mean(p == t))  # noqa: E731
    point, lo, hi = effectiveness.spread_diff(pf, pa, y, fn, 300)
    assert lo > 0.1 and point > 0.15
    point, lo, hi = effectiveness.spread_diff(pa, pa, y, fn, 100)
    assert point == 0.0 and lo == hi == 0.0


def test_study_max_minutes_leaves_runs_for_the_next_chunk(tmp_path, capsys):
    import time

    specs = [{"i": i} for i in range(4)]
    study = Study(tmp_path / "r.jsonl", specs, max_minutes=0.3 / 60)  # 0.3 s
    done = [study.once(sp, lambda: (time.sleep(0.2), {"v": 1})[1], what=str(sp)) for sp in specs]
    assert done[0] is not None and done[-1] is None and study.stopped >= 1
    assert "[later]" in capsys.readouterr().out
    again = Study(tmp_path / "r.jsonl", specs)  # the next chunk runs only what is left
    ran = [sp for sp in specs if not again.is_done(sp)]
    assert len(ran) == study.stopped


def test_merge_logs_adds_new_keys_once_and_reports_conflicts(tmp_path, capsys):
    dest, src = tmp_path / "dest.jsonl", tmp_path / "chunk.jsonl"
    log = common.RunLog(dest)
    log.append({"key": "a", "score": 0.5, "wall_s": 10})
    other = common.RunLog(src)
    other.append({"key": "a", "score": 0.5, "wall_s": 2})  # the same run, made faster elsewhere
    other.append({"key": "b", "score": 0.7})
    out = merge_logs.main([str(dest), str(src)])
    assert out["added"] == 1 and out["already"] == 1 and out["differ"] == []
    assert [r["key"] for r in common.RunLog(dest)] == ["a", "b"]
    assert merge_logs.main([str(dest), str(src)])["added"] == 0  # merging twice adds nothing
    common.RunLog(src).append({"key": "a", "score": 0.9})
    assert merge_logs.main([str(dest), str(src)])["differ"] == ["a"]
    assert common.RunLog(dest).records[0]["score"] == 0.5  # the destination's record is kept
    with pytest.raises(SystemExit):
        merge_logs.main([str(dest), str(tmp_path / "missing.jsonl")])
    assert "no such run log" in capsys.readouterr().err


def test_cost_counts_steps_by_width_and_prices_them():
    from types import SimpleNamespace

    enc = {"input_ids": np.zeros((100, 128), np.int32),
           "lengths": np.r_[np.full(50, 20), np.full(50, 100)].astype(np.int32)}
    cost = study.Cost(SimpleNamespace(batch_size=32, eval_batch_size=64))
    cost.add(Method("full", "full", None, 1e-5), enc, 2.5, [enc])
    cost.add(Method("adapter256", "houlsby", 256, 1e-3), enc, 1.0)
    assert sum(v for (k, _), v in cost.train.items() if k == "full") == 10  # ceil(2.5 epochs x 4 batches)
    assert sum(v for (k, _), v in cost.train.items() if k == "adapter256") == 4
    assert {w for _, w in cost.train} <= {32, 64, 128} and (("full", 128) in cost.train)
    assert sum(cost.forward.values()) == 2 and set(cost.forward) <= {("full", 32), ("full", 128)}
    unit = {"train_cpu": 2.0, "eval_cpu": 0.5}
    prices = {f"{k}/{w}": unit for k in ("full", "adapter64") for w in (32, 64, 128)}
    total, missing = cost.cpu_seconds(prices)  # adapter256 is priced as adapter64
    assert missing == [] and total == pytest.approx((10 + 4) * 2.0 + 2 * 0.5)
    total, missing = cost.cpu_seconds({"full/128": unit})
    assert missing and total < 14 * 2.0
    assert "estimated CPU time" in cost.report(prices)


def test_parse_task_lists():
    assert forgetting.parse_tasks("sst2:2000, mrpc") == [("sst2", 2000), ("mrpc", None)]
    assert cross_lingual.parse_sources("mnli:validation_mismatched,snli:train") == [
        ("mnli", "validation_mismatched"), ("snli", "train")]
    with pytest.raises(ValueError, match="task:split"):
        cross_lingual.parse_sources("snli")


# ---------------------------------------------------------------- synthetic inputs
def write_nli(root: Path, rel: str, n: int, seed: int) -> None:
    """3-way premise/hypothesis rows: the hypothesis' first words give the label away."""
    rng = np.random.default_rng(seed)
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for _ in range(n):
            y = int(rng.integers(3))
            w = rng.choice(NLI, size=5)
            f.write(json.dumps({"premise": " ".join(w), "hypothesis": ["it is", "maybe", "it is not"][y] + " " + w[0],
                                "label": y}) + "\n")


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("effectiveness_data")
    for i, t in enumerate(("rte", "mrpc", "stsb")):
        write_synthetic_task(root, t, n_train=96, n_dev=40, seed=i)
    for i, (rel, n) in enumerate((("mnli/validation_mismatched.jsonl", 64), ("mnli/validation_matched.jsonl", 32),
                                  ("snli/train.jsonl", 32), ("xnli/en/validation.jsonl", 24),
                                  ("xnli/de/validation.jsonl", 24))):
        write_nli(root, rel, n, seed=10 + i)
    return root


def common_args(model: Path, data: Path, out: Path) -> list[str]:
    return ["--quick", "--model", str(model), "--data-dir", str(data), "--out", str(out), "--compile-cache", "",
            "--max-length", "32", "--batch-size", "16", "--eval-batch-size", "16"]


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_tuner_start_is_seeded_and_keeps_pretrained_leaves(tiny_model_dir, tasks_dir):
    from jadapt import tree

    tuner = Tuner(str(tiny_model_dir), max_length=32, data_dir=str(tasks_dir))
    m = Method("adapter4", "houlsby", 4, 1e-3)
    a, b, a2 = (tree.flatten(tuner.start(m, "rte", s)) for s in (0, 1, 0))
    init = tree.flatten(tuner.setup(m, "rte")["runner"].init_trainable)
    fresh = [p for p in a if "/task/" in p or p.startswith("head/out/")]
    kept = [p for p in a if "layer_norm" in p or p.startswith("head/dense/")]
    assert fresh and kept and set(a) == set(init)
    for p in fresh:
        assert np.array_equal(a[p], a2[p])  # seeded
    assert any(not np.array_equal(a[p], b[p]) for p in fresh if p.endswith("kernel"))
    for p in kept:  # pretrained (LayerNorms, pooler -> head/dense) whatever the seed
        assert np.array_equal(a[p], b[p]) and np.array_equal(a[p], init[p])
    # every binary task shares one setup (one compiled step), a regression head gets its own
    assert tuner.setup(m, "mrpc") is tuner.setup(m, "rte")
    assert tuner.head("stsb").regression and tuner.head("stsb").num_labels == 1
    train, dev = tuner.task_data("rte", train_size=50, seed=3)
    assert len(train["labels"]) == 50 and len(dev["labels"]) == 40
    t2, _ = tuner.task_data("rte", train_size=50, seed=3)
    assert np.array_equal(train["row"], t2["row"])


def test_cross_lingual_pool_heldout_split_and_refusals(tiny_model_dir, tasks_dir):
    tuner = Tuner(str(tiny_model_dir), max_length=32, data_dir=str(tasks_dir))
    pool = cross_lingual.english_pool(tuner, [("mnli", "validation_mismatched"), ("snli", "train")])
    assert len(pool["labels"]) == 64 + 32 and set(np.unique(pool["labels"])) <= {0, 1, 2}
    train, held = cross_lingual.split_heldout(pool, 20)
    train2, held2 = cross_lingual.split_heldout(pool, 20)
    assert len(held["labels"]) == 20 and len(train["labels"]) == 76
    assert np.array_equal(held["input_ids"], held2["input_ids"])  # one fixed draw for every run
    rows = {tuple(r) for r in train["input_ids"].tolist()}
    assert len({tuple(r) for r in held["input_ids"].tolist()} & rows) <= 1  # disjoint (up to duplicate texts)
    with pytest.raises(ValueError, match="no training rows"):
        cross_lingual.split_heldout(pool, 96)
    with pytest.raises(ValueError, match="evaluation set"):
        cross_lingual.english_pool(tuner, [("xnli-en", "validation")])
    with pytest.raises(ValueError, match="3-way"):
        cross_lingual.english_pool(tuner, [("rte", "train")])


def test_cross_lingual_packing_and_loss_curve():
    rng = np.random.default_rng(0)
    bits = rng.random(37) < 0.5
    assert np.array_equal(cross_lingual.unpack(cross_lingual.pack(bits), 37), bits)


def test_dry_run_counts_the_grid_and_trains_nothing(tiny_model_dir, tasks_dir, tmp_path):
    argv = common_args(tiny_model_dir, tasks_dir, tmp_path) + [
        "--tasks", "rte", "--sizes", "48,1000", "--seeds", "0,1", "--methods", "adapter4,full", "--lrs", "1e-4,1e-3",
        "--heldout", "16", "--epochs", "2", "--dry-run"]
    cost = effectiveness.main(argv)["cost"]
    assert cost.runs == 2 * 2 * 2  # size 1000 > 96 - 16 train rows is skipped
    assert sum(cost.train.values()) == 8 * 2 * 3  # 48 rows in batches of 16, 2 epochs
    assert sum(cost.forward.values()) == 8 * 2 * (1 + 3)  # held-out 16 + dev 40 rows, each epoch
    assert not (tmp_path / "effectiveness_quick.jsonl").exists() and not (tmp_path / "effectiveness_quick.md").exists()


# ---------------------------------------------------------------- --quick end to end
def test_effectiveness_quick_end_to_end_chunks_and_resume(tiny_model_dir, tasks_dir, tmp_path):
    from jadapt import data

    argv = common_args(tiny_model_dir, tasks_dir, tmp_path) + [
        "--tasks", "rte,stsb", "--sizes", "48", "--seeds", "0,1", "--methods", "adapter4,full", "--lrs", "1e-4,3e-2",
        "--heldout", "16", "--epochs", "2", "--bootstrap", "50"]
    log = tmp_path / "effectiveness_quick.jsonl"
    first = effectiveness.main(argv + ["--max-minutes", "0.0001"])  # a chunk: one run, then the time is up
    assert len(first["records"]) == 1 and first["left"] == 2 * 2 * 2 * 2 - 1 and len(jsonl(log)) == 1
    out = effectiveness.main(argv)  # the next chunk finishes the grid
    recs = jsonl(log)
    assert len(recs) == 16 and out["left"] == 0
    held_rows = set()
    for r in recs:
        assert r["steps"] == 6 and [e["epoch"] for e in r["evals"]] == [1, 2]  # 48 rows / 16, 2 epochs
        assert r["train_examples"] == 48 and r["heldout_examples"] == 16 and r["dev_examples"] == 40
        assert len(r["curve"]) == 6 and all(np.isfinite(r["curve"]))
        preds = effectiveness.preds_of(r)
        assert len(preds) == 40
        main = effectiveness.main_metric(r["task"])
        y = effectiveness.dev_labels(effectiveness.make_tuner(effectiveness.parse_args(argv)), r["task"], None)
        assert effectiveness.protocol.main_metric_fn(r["task"])(preds, y) == pytest.approx(r["evals"][-1]["dev"][main], abs=2e-3)
    by = {(r["method"], r["lr"], r["seed"]): r for r in recs if r["task"] == "rte"}
    assert by[("full", 1e-4, 0)]["curve"] != by[("full", 3e-2, 0)]["curve"]  # the rate reaches the optimizer
    # the held-out rows are one draw outside every seed's subset
    tuner = effectiveness.make_tuner(effectiveness.parse_args(argv))
    for seed in (0, 1):
        train, held, dev = effectiveness.cell_data(tuner, "rte", 48, seed, 16, None)
        assert not set(train["row"].tolist()) & set(held["row"].tolist())
        held_rows.add(tuple(held["row"].tolist()))
    assert len(held_rows) == 1
    md = (tmp_path / "effectiveness_quick.md").read_text()
    for want in ("## Protocol", "## Learning-rate choice", "## A3 low resource", "## A4 learning-rate robustness",
                 "## A5 overfitting", "## Convergence", "| rte | accuracy | 48 |", "| stsb | pearson | 48 | 0.0",
                 "adapter4 − full:", "full − adapter4:", "command:"):
        assert want in md, want
    assert (tmp_path / "effectiveness_quick.png").stat().st_size > 1000
    # chosen rates follow the held-out scores, never the dev scores
    rates = effectiveness.chosen_rates(recs)
    for (task, size, method), (lr, _, means) in rates.items():
        main = effectiveness.main_metric(task)
        held = {x: np.mean([r["evals"][-1]["heldout"][main] for r in recs if (r["task"], r["method"], r["lr"]) ==
                            (task, method, x)]) for x in (1e-4, 3e-2)}
        assert lr == max(held, key=lambda x: (held[x], -x))
    again = effectiveness.main(argv)  # resumed: nothing reruns
    assert len(jsonl(log)) == 16 and len(again["records"]) == 16
    assert data.num_rows(dev) == 40


def test_forgetting_quick_rsa_properties(tiny_model_dir, tasks_dir, tmp_path):
    # a large full-FT rate so that full fine-tuning visibly moves every layer
    argv = common_args(tiny_model_dir, tasks_dir, tmp_path) + [
        "--tasks", "rte:64", "--methods", "adapter4,full", "--full-lr", "1e-2", "--epochs", "2",
        "--probe-task", "mrpc", "--probe-size", "30", "--sts-size", "40"]
    out = forgetting.main(argv)
    recs = jsonl(tmp_path / "forgetting_quick.jsonl")
    base = next(r for r in recs if "sts" in r and "method" not in r)
    tuned = {r["method"]: r for r in recs if "method" in r}
    assert len(base["sts"]) == 3 and all(-1 <= v <= 1 for v in base["sts"])  # 2 layers + embeddings
    ad, full = tuned["adapter4"], tuned["full"]
    assert ad["rows"] == 30 and len(ad["rsa"]) == len(ad["cka"]) == 3
    assert ad["rsa"][0] == pytest.approx(1.0, abs=1e-5)  # adapters leave the embeddings alone
    assert ad["cka"][0] == pytest.approx(1.0, abs=1e-5)
    assert full["rsa"][0] < 0.9999 and full["rsa"][-1] < ad["rsa"][-1]
    assert all(-1 <= v <= 1 + 1e-6 for r in (ad, full) for v in r["rsa"] + r["cka"])
    md = (tmp_path / "forgetting_quick.md").read_text()
    assert "| original encoder |" in md and "| rte | adapter4 |" in md
    assert out["png"] is not None and out["png"].is_file()


def test_forgetting_takes_rates_subsets_and_budget_from_the_grid(tiny_model_dir, tasks_dir, tmp_path):
    base = common_args(tiny_model_dir, tasks_dir, tmp_path)
    effectiveness.main(base + ["--tasks", "rte", "--sizes", "48", "--seeds", "0,1", "--methods", "adapter4,full",
                               "--lrs", "1e-4,3e-2", "--heldout", "16", "--epochs", "2", "--bootstrap", "20"])
    grid = jsonl(tmp_path / "effectiveness_quick.jsonl")
    chosen = effectiveness.chosen_rates(grid)
    out = forgetting.main(base + ["--tasks", "rte:48", "--seeds", "0,1", "--methods", "adapter4,full",
                                  "--rates-from", str(tmp_path / "effectiveness_quick.jsonl"), "--probe-task", "mrpc",
                                  "--probe-size", "30", "--sts-size", "40", "--bootstrap", "20"])
    for r in out["records"]:
        lr = chosen[("rte", 48, r["method"])][0]
        assert r["lr"] == lr and r["steps"] == 6
        twin = next(g for g in grid if (g["method"], g["lr"], g["seed"]) == (r["method"], lr, r["seed"]))
        # the same run as the grid's: same subset, rate, budget (deterministic on CPU)
        assert r["metrics"]["accuracy"] == pytest.approx(twin["evals"][-1]["dev"]["accuracy"], abs=1e-6)
    md = (tmp_path / "forgetting_quick.md").read_text()
    for want in ("## Paired differences", "| rte | adapter4 − full | 2 |", "## Did both methods learn",
                 "majority class", "effectiveness grid"):
        assert want in md, want
    with pytest.raises(ValueError, match="no adapter4 runs for rte:32"):
        forgetting.main(base + ["--tasks", "rte:32", "--methods", "adapter4,full",
                                "--rates-from", str(tmp_path / "effectiveness_quick.jsonl")])


def test_cross_lingual_quick_pipeline(tiny_model_dir, tasks_dir, tmp_path):
    argv = common_args(tiny_model_dir, tasks_dir, tmp_path) + [
        "--langs", "en,de", "--methods", "adapter4,full", "--steps", "3", "--heldout", "16", "--eval-rows", "16",
        "--adapter-lrs", "1e-3,3e-2", "--full-lrs", "5e-5", "--seeds", "0,1", "--bootstrap", "50",
        "--keep-checkpoints", str(tmp_path / "ckpt")]
    out = cross_lingual.main(argv)
    recs = jsonl(tmp_path / "cross_lingual_quick.jsonl")
    select = [r for r in recs if r["phase"] == "select"]
    finals = [r for r in recs if r["phase"] == "final"]
    assert sorted((r["method"], r["lr"]) for r in select) == [("adapter4", 1e-3), ("adapter4", 3e-2), ("full", 5e-5)]
    assert sorted((r["method"], r["seed"]) for r in finals) == [("adapter4", 0), ("adapter4", 1), ("full", 0),
                                                                 ("full", 1)]
    best = max((r for r in select if r["method"] == "adapter4"), key=lambda r: (r["heldout_accuracy"],
                                                                                -r["heldout_loss"]))
    assert {r["lr"] for r in finals if r["method"] == "adapter4"} == {best["lr"]} == {out["chosen"]["adapter4"]}
    for r in finals:
        assert set(r["accuracy"]) == {"xnli-en", "xnli-de"} and all(0 <= a <= 1 for a in r["accuracy"].values())
        bits = cross_lingual.unpack(r["correct"]["xnli-de"], 16)
        assert bits.mean() == pytest.approx(r["accuracy"]["xnli-de"])
        assert len(r["loss_curve"]) == 3
    seed0 = next(r for r in finals if r["method"] == "adapter4" and r["seed"] == 0)
    assert seed0["heldout_accuracy"] == best["heldout_accuracy"]  # the grid's run, not a second one
    assert (tmp_path / "ckpt" / "adapter4" / "metadata.json").is_file()
    assert (tmp_path / "ckpt" / "full" / "metadata.json").is_file()
    md = (tmp_path / "cross_lingual_quick.md").read_text()
    for want in ("## Protocol", "80 train every run", "| adapter4 (n=2) |", "| majority class |", "adapter4 − full", "## Verdict",
                 "**Encoder:**"):
        assert want in md, want
    assert out["stats"]["pairs"]["adapter4 − full"]["wins"][1] == 2
    again = cross_lingual.main(argv)  # resumes: nothing new is trained
    assert len(jsonl(tmp_path / "cross_lingual_quick.jsonl")) == len(recs) and again["chosen"] == out["chosen"]