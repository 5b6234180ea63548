"""Adapter-effectiveness study scripts (forgetting, low-resource, lr robustness, overfitting,
cross-lingual): helper properties, then each --quick mode end to end on a tiny random BERT
with synthetic tasks (results files, resume from the JSONL, the properties each study's
numbers must have). The --quick runs are the CI smoke test of each study (~2 min in all on 2
cores), so they are not marked slow."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from experiments import cross_lingual, forgetting, low_resource, lr_robustness, overfitting, study
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


def test_overfitting_drop_and_lr_spread():
    s = overfitting.drop_stats([0.5, 0.8, 0.6, 0.7])
    assert s == {"best_epoch": 2, "best": 0.8, "last": 0.7, "drop": pytest.approx(0.1)}
    assert overfitting.drop_stats([0.1, 0.2, 0.3])["drop"] == 0.0
    sp = lr_robustness.spread([0.5, 0.9, 0.7])
    assert sp["range"] == pytest.approx(0.4) and sp["std"] == pytest.approx(0.2) and sp["mean"] == pytest.approx(0.7)
    assert lr_robustness.spread([0.6])["std"] == 0.0
    assert sp["near_best"] == 1 and lr_robustness.spread([0.80, 0.79, 0.5, 0.785])["near_best"] == 3


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
    assert cross_lingual.loss_curve([4.0, 2.0, 1.0, 1.0], points=2) == [3.0, 1.0]


def test_dry_run_counts_the_grid_and_trains_nothing(tiny_model_dir, tasks_dir, tmp_path):
    argv = common_args(tiny_model_dir, tasks_dir, tmp_path) + [
        "--tasks", "rte", "--sizes", "48,full,1000", "--seeds", "0,1", "--methods", "adapter4,full", "--dry-run"]
    cost = low_resource.main(argv)["cost"]
    assert cost.runs == 2 * 2 * 2  # size 1000 > 96 train rows is skipped
    assert sum(cost.train.values()) == 2 * 2 * (3 + 6)  # 48 and 96 rows in batches of 16, 1 epoch
    assert sum(cost.forward.values()) == 8 * 3  # 40 dev rows in batches of 16, once per run
    assert not (tmp_path / "low_resource_quick.jsonl").exists() and not (tmp_path / "low_resource_quick.md").exists()


# ---------------------------------------------------------------- --quick end to end (slow)
def test_low_resource_quick_end_to_end_and_resume(tiny_model_dir, tasks_dir, tmp_path):
    argv = common_args(tiny_model_dir, tasks_dir, tmp_path) + [
        "--tasks", "rte,stsb", "--sizes", "48,full", "--seeds", "0,1", "--methods", "adapter4,full"]
    out = low_resource.main(argv)
    log = tmp_path / "low_resource_quick.jsonl"
    recs = jsonl(log)
    assert len(recs) == 2 * 2 * 2 * 2  # task x size x method x seed
    assert {r["train_examples"] for r in recs if r["size"] == 48} == {48}
    assert {r["train_examples"] for r in recs if r["size"] == "full"} == {96}
    assert {r["dev_examples"] for r in recs} == {40}
    assert all(len(v) == 2 for v in out["stats"].values()) and len(out["stats"]) == 8  # 2 seeds per cell
    assert {r["steps"] for r in recs if r["size"] == 48} == {3}  # 48 rows / batch 16, 1 epoch
    md = (tmp_path / "low_resource_quick.md").read_text()
    assert "| rte | accuracy | 48 |" in md and "| stsb | pearson | full (96) |" in md and "command:" in md
    assert (tmp_path / "low_resource_quick.png").stat().st_size > 1000
    again = low_resource.main(argv)  # resumed: nothing reruns, same summary
    assert len(jsonl(log)) == len(recs) and again["stats"] == out["stats"]
    # --report-only with a wider grid: trains nothing, reports what the log has
    wider = [x if x != "0,1" else "0,1,2" for x in argv] + ["--report-only"]
    partial = low_resource.main(wider)
    assert len(jsonl(log)) == len(recs) and partial["stats"] == out["stats"]


def test_lr_robustness_quick_spread(tiny_model_dir, tasks_dir, tmp_path):
    argv = common_args(tiny_model_dir, tasks_dir, tmp_path) + [
        "--tasks", "rte", "--lrs", "1e-5,3e-2", "--methods", "adapter4,full", "--train-size", "64", "--epochs", "2"]
    out = lr_robustness.main(argv)
    recs = jsonl(tmp_path / "lr_robustness_quick.jsonl")
    assert len(recs) == 2 * 2 and {r["lr"] for r in recs} == {1e-5, 3e-2}
    for m in ("adapter4", "full"):
        by = {r["lr"]: r["metrics"] for r in recs if r["method"] == m}
        assert by[1e-5]["loss"] != by[3e-2]["loss"]  # the rate reaches the optimizer
    md = (tmp_path / "lr_robustness_quick.md").read_text()
    assert "| rte | accuracy | adapter4 |" in md and "lr 0.03" in md
    assert (tmp_path / "lr_robustness_quick.png").is_file() and (tmp_path / "lr_robustness_quick_curves.png").is_file()
    assert set(out["scores"]) == {("rte", "adapter4"), ("rte", "full")}


def test_overfitting_quick_histories(tiny_model_dir, tasks_dir, tmp_path):
    argv = common_args(tiny_model_dir, tasks_dir, tmp_path) + [
        "--tasks", "rte,mrpc", "--methods", "adapter4,full", "--train-size", "0", "--epochs", "3"]
    overfitting.main(argv)
    recs = jsonl(tmp_path / "overfitting_quick.jsonl")
    assert len(recs) == 4
    for r in recs:
        assert [h["epoch"] for h in r["history"]] == [1, 2, 3.0]
        assert r["history"][-1] == r["metrics"] and r["train_examples"] == 96
        s = overfitting.drop_stats(overfitting.curve(r, "accuracy"))
        assert s["drop"] >= 0 and 1 <= s["best_epoch"] <= 3
    assert "drop best → last" in (tmp_path / "overfitting_quick.md").read_text()
    assert (tmp_path / "overfitting_quick.png").is_file()


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