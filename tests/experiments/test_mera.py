"""MerA study scripts: helpers (properties) and an end-to-end --quick smoke run on a tiny
random BERT with synthetic tasks (pool training, few-shot grid, resume, report)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import common
from experiments import mera_fewshot as fs
from experiments import mera_pool
from tests.conftest import write_synthetic_task


# ---------------------------------------------------------------- common helpers
def test_run_key_ignores_key_order_and_sees_values():
    a = {"x": 1, "y": [1, 2], "z": None}
    assert common.run_key(a) == common.run_key(dict(reversed(list(a.items()))))
    assert common.run_key(a) != common.run_key({**a, "x": 2})


def test_runlog_resumes_and_ignores_a_torn_line(tmp_path):
    path = tmp_path / "runs.jsonl"
    log = common.RunLog(path)
    log.append({"key": "a", "v": 1})
    log.append({"key": "b", "v": np.float32(2.5)})
    with open(path, "a") as f:
        f.write('{"key": "c", "v"')  # killed mid-write
    again = common.RunLog(path)
    assert again.done("a") and again.done("b") and not again.done("c")
    assert [r["v"] for r in again] == [1, 2.5]
    with pytest.raises(ValueError, match="key"):
        again.append({"v": 3})


def test_mean_std_and_table():
    m, s, n = common.mean_std([0.5, 0.7, None, float("nan")])
    assert n == 2 and m == pytest.approx(0.6) and s == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert common.fmt_mean_std([0.5]) == "50.0 ± 0.0"
    assert common.fmt_mean_std([]) == "–"
    t = common.markdown_table(["a", "b"], [["x|y", 1.0], ["z", None]])
    lines = t.splitlines()
    assert lines[1] == "| --- | ---: |" and "x\\|y" in lines[2] and lines[3].endswith("– |")
    with pytest.raises(ValueError, match="cells"):
        common.markdown_table(["a"], [[1, 2]])


# ---------------------------------------------------------------- study helpers
def test_loo_prototype_score_separable_and_confused():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 8)
    centers = np.eye(3, 16) * 10
    x = centers[y] + rng.normal(size=(24, 16))
    acc, margin = fs.loo_prototype_score(x, y)
    assert acc == 1.0 and margin > 0.5
    acc_r, margin_r = fs.loo_prototype_score(rng.normal(size=(24, 16)), y)
    assert acc_r < 0.8 and margin_r < margin
    # leave-one-out: a class whose only other member is far away misclassifies its rows
    x2 = np.array([[1.0, 0], [0, 1.0], [1.0, 0.1], [0.1, 1.0]])
    assert fs.loo_prototype_score(x2, np.array([0, 0, 1, 1]))[0] == 0.0


def test_seeded_init_is_seeded_and_bert_scaled():
    tree = {"head": {"out": {"kernel": np.ones((384, 3), np.float32), "bias": np.ones(3, np.float32)},
                     "dense": {"kernel": np.ones((4, 4), np.float32)}}}
    a = fs.seeded_init(tree, 0, fs.HEAD_OUT)
    b = fs.seeded_init(tree, 0, fs.HEAD_OUT)
    c = fs.seeded_init(tree, 1, fs.HEAD_OUT)
    np.testing.assert_array_equal(a["head"]["out"]["kernel"], b["head"]["out"]["kernel"])
    assert not np.allclose(a["head"]["out"]["kernel"], c["head"]["out"]["kernel"])
    assert np.std(np.asarray(a["head"]["out"]["kernel"])) == pytest.approx(0.02, rel=0.1)
    assert np.all(np.asarray(a["head"]["out"]["bias"]) == 0)
    assert np.all(np.asarray(a["head"]["dense"]["kernel"]) == 1)  # not matched: untouched
    with pytest.raises(ValueError, match="no param"):
        fs.seeded_init(tree, 0, fs.FUSION.replace("^head/out/|", ""))


def test_overlay_refuses_unknown_paths_and_shapes():
    base = {"a": {"kernel": np.zeros((2, 3), np.float32)}}
    assert np.all(np.asarray(fs.overlay(base, {"a": {"kernel": np.ones((2, 3))}})["a"]["kernel"]) == 1)
    with pytest.raises(ValueError, match="no place"):
        fs.overlay(base, {"b": {"kernel": np.ones((2, 3))}})
    with pytest.raises(ValueError, match="shape"):
        fs.overlay(base, {"a": {"kernel": np.ones((3, 2))}})


def test_plan_order_keys_and_settings_validation():
    s = fs.Settings(targets=("mrpc", "rte"), ks=(16, 32), seeds=(0, 1), methods=("scratch", "fusion"),
                    adapter_lrs=(1e-4, 1e-3), fusion_lrs=(5e-4,))
    p = fs.plan(s)
    assert len(p) == 2 * 2 * 2 * (2 + 2 * 1)  # scratch x 2 rates, fusion x 2 pool modes x 1 rate
    assert [x[2] for x in p] == ["mrpc"] * 16 + ["rte"] * 16  # targets outermost, then seeds
    assert [x[0] for x in p[:16]] == sorted(x[0] for x in p[:16])
    assert {x[5] for x in p if x[3] == "scratch"} == {1e-4, 1e-3} and {x[5] for x in p if x[3] == "fusion"} == {5e-4}
    keys = {common.run_key(fs.run_spec(s, t, k, seed, m, mode, lr, model="m", pool_id="p"))
            for seed, k, t, m, mode, lr in p}
    assert len(keys) == len(p)
    # scratch does not depend on the pool; pool methods do
    assert fs.run_spec(s, "rte", 16, 0, "scratch", None, 1e-3, model="m", pool_id="p1") == \
        fs.run_spec(s, "rte", 16, 0, "scratch", None, 1e-3, model="m", pool_id="p2")
    assert fs.run_spec(s, "rte", 16, 0, "fusion", "excluded", 5e-4, model="m", pool_id="p1") != \
        fs.run_spec(s, "rte", 16, 0, "fusion", "excluded", 5e-4, model="m", pool_id="p2")
    with pytest.raises(ValueError, match="methods"):
        fs.Settings(methods=("nope",))
    with pytest.raises(ValueError, match="grid"):
        fs.Settings(adapter_lrs=())
    with pytest.raises(ValueError, match="regression"):
        fs.Settings(targets=("stsb",))


def test_comparisons_pair_by_seed_and_give_one_verdict_per_claim():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    noisy = lambda acc: np.where(rng.random(200) < acc, y, 1 - y)  # noqa: E731
    s = fs.Settings(targets=("rte",), ks=(16,), seeds=(0, 1, 2), methods=("best-single", "mera-average",
                                                                      "mera-align-weights"), pool_modes=("excluded",))

    def recs(acc, seeds=(0, 1, 2)):
        out = []
        for seed in seeds:
            p = noisy(acc)
            out.append({"status": "ok", "seed": seed, "main": float(np.mean(p == y)),
                        "dev_pred": fs.protocol.pack_predictions(p, False)})
        return out

    cells = {("rte", 16, "best-single", "excluded"): recs(0.6), ("rte", 16, "mera-average", "excluded"): recs(0.8),
             ("rte", 16, "mera-align-weights", "excluded"): recs(0.8, seeds=(0,))}  # one seed: not paired
    table, verdicts = fs.comparisons(s, cells, lambda t: y, reps=200)
    assert "mera-average − best-single" in table and len(verdicts) == 1
    assert "B1 rte k=16" in verdicts[0] and "**reproduced**" in verdicts[0] and "3/3" in verdicts[0]


# ---------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("mera")
    data = root / "data"
    for i, task in enumerate(("rte", "mrpc", "stsb")):
        write_synthetic_task(data, task, n_train=96, n_dev=40, seed=i)
    return root, data, tiny_model_dir


def test_snli_source_trains_on_its_sample_plus_validation_minus_the_dev(tmp_path):
    d = tmp_path / "snli"
    d.mkdir()
    for split, n, base in (("train", 30, 0), ("validation", 50, 1000)):
        with open(d / f"{split}.jsonl", "w") as f:
            for i in range(n):
                f.write(json.dumps({"premise": f"p{base + i}", "hypothesis": "h", "label": i % 3, "idx": i}) + "\n")
    train, dev, note = mera_pool.source_splits("snli", tmp_path, train_cap=1000, dev_cap=1000, holdout=10)
    tr, dv = set(train["premise"]), set(dev["premise"])
    assert len(train["label"]) == 30 + 40 and len(dev["label"]) == 10 and not tr & dv
    assert {f"p{i}" for i in range(30)} <= tr and all(p >= "p1000" for p in dv) and "validation" in note
    again = mera_pool.source_splits("snli", tmp_path, train_cap=1000, dev_cap=1000, holdout=10)[1]
    assert list(again["premise"]) == list(dev["premise"])  # the same held-out rows for every init seed


def test_pool_source_retrains_from_scratch_when_its_settings_change(tmp_path, monkeypatch):
    """A source trained with other settings is not resumed by ``fit`` (which would return the old
    adapter under the new settings): its folder is cleared first; same settings reuse it."""
    import jadapt.train.loop as loop
    from tests.conftest import write_synthetic_task

    calls = []

    def fake_fit(cfg):
        out = tmp_path / "pool" / "rte"
        calls.append(sorted(p.name for p in out.iterdir()))
        (out / "best").mkdir(exist_ok=True)
        (out / "best" / "metadata.json").write_text("{}")
        (out / "leftover_checkpoint").write_text("x")
        return {"accuracy": 0.9, "steps": 3}

    monkeypatch.setattr(loop, "fit", fake_fit)
    write_synthetic_task(tmp_path / "data", "rte", n_train=20, n_dev=10)
    kw = dict(pool=tmp_path / "pool", data_dir=tmp_path / "data", model=None,
              budget=dict(mera_pool.QUICK), seed=1)
    mera_pool.train_source("rte", **kw)
    mera_pool.train_source("rte", **kw)  # same settings: done, nothing retrained
    assert len(calls) == 1
    mera_pool.train_source("rte", **{**kw, "seed": 2})  # other settings: a fresh folder
    assert len(calls) == 2 and "leftover_checkpoint" not in calls[1]


def test_convergence_table_flags_runs_whose_loss_had_not_flattened():
    flat = [0.7 * 0.5 ** i for i in range(20)] + [0.0] * 20  # below 5 % of its start at point 6
    falling = list(np.linspace(0.7, 0.3, 40))  # still falling at the end
    recs = [{"status": "ok", "curve": flat, "steps": 100}, {"status": "ok", "curve": falling, "steps": 100}]
    table = fs.convergence(fs.Settings(), {("mrpc", 16, "fusion", "excluded"): recs,
                                           ("mrpc", 16, "best-single", "excluded"): recs[:1]})
    rows = {line.split("|")[3].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in table.splitlines() if "mrpc" in line}
    assert rows["fusion (excluded)"][3] == "1 of 2" and rows["fusion (excluded)"][5] == "never"
    assert rows["best-single (excluded)"][3] == "1 of 1" and rows["best-single (excluded)"][4] == "15"
    assert fs.convergence(fs.Settings(), {}) == "no runs yet"


@pytest.mark.slow  # ~90 s of CPU (pool fits + ~8 compiled runners), minutes on a loaded machine
def test_quick_study_end_to_end_and_resume(tiny_setup):
    root, data, model = tiny_setup
    pool_dir = root / "pool"
    entries = mera_pool.main(["--quick", "--tasks", "rte,mrpc,stsb", "--pool", str(pool_dir), "--model", str(model),
                              "--data-dir", str(data), "--report", str(root / "pool.md"), "--compile-cache", ""])
    manifest = json.loads((pool_dir / "pool.json").read_text())
    assert [e["task"] for e in manifest["adapters"]] == ["rte", "mrpc", "stsb"]
    assert {e["track"] for e in entries} == {"nli", "paraphrase"}
    assert all(e["train_rows"] == 64 and 0 <= e["dev_score"] <= 1 or e["regression"] for e in entries)
    assert "| rte | nli |" in (root / "pool.md").read_text()

    out = root / "mera.md"
    argv = ["--quick", "--pool", str(pool_dir), "--targets", "rte,mrpc", "--steps", "2",
            "--methods", "scratch,best-single,fusion,mera-align-activations,mera-same-track",
            "--model", str(model), "--data-dir", str(data), "--out", str(out), "--compile-cache", ""]
    chunk = fs.main(argv + ["--max-minutes", "0.0001"])  # a chunk: one run, then the time is up
    assert chunk["left"] == 2 * (1 + 4 * 2) - 1
    assert sum('"kind": "run"' in line for line in open(out.with_suffix(".jsonl"))) == 1
    res = fs.main(argv)  # the next chunk finishes the plan
    assert res["left"] == 0
    runs = [json.loads(line) for line in open(out.with_suffix(".jsonl")) if '"kind": "run"' in line]
    assert len(runs) == 2 * (1 + 4 * 2)
    by = {(r["target"], r["method"], r["pool_mode"]): r for r in runs}
    # RTE is the only nli adapter: excluding it leaves no same-track adapter
    assert by[("rte", "mera-same-track", "excluded")]["status"] == "skipped"
    assert by[("mrpc", "mera-same-track", "excluded")]["members"] == ["stsb"]
    assert set(by[("mrpc", "mera-same-track", "included")]["members"]) == {"mrpc", "stsb"}
    for (target, method, mode), r in by.items():
        if r["status"] != "ok":
            continue
        assert 0.0 <= r["main"] <= 1.0 and r["steps"] == 2 * 1 and r["train_rows"] == 32
        if mode == "excluded":
            assert target not in r.get("members", []) and r.get("reference") != target
        if method == "fusion":
            assert len(r["members"]) == (2 if mode == "excluded" else 3)
    assert by[("rte", "best-single", "excluded")]["reference"] in ("mrpc", "stsb")
    report = out.read_text()
    assert "### RTE" in report and "### MRPC" in report and "Projection for its" in report
    assert out.with_suffix(".png").is_file()
    proj = res["projection"]
    assert proj["total_s"] > proj["compile_s"] >= 0 and not proj["unmeasured"]
    full = fs.Settings()
    per_seed_k = len(full.adapter_lrs) * (1 + 3 * 2) + len(full.fusion_lrs) * 2  # scratch + 3 adapter-pool methods
    # rte same-track (excluded) is skipped at every k, seed and rate
    assert proj["runs"] == 2 * len(full.seeds) * len(full.ks) * per_seed_k - len(full.seeds) * len(full.ks) * 3
    # the protocol's parts: held-out scores, per-row dev predictions, chosen rates, baselines, paired comparisons
    for r in runs:
        if r["status"] == "ok":
            assert 0 <= r["heldout_main"] <= 1 and len(fs.protocol.unpack_predictions(r["dev_pred"], False)) == 40
    assert set(res["chosen"]) == {key for key, recs in res["cells"].items() if recs[0]["status"] == "ok"}
    assert "majority class" in report and "## Learning-rate choice" in report and "## Paired comparisons" in report
    assert "Share of bottleneck units" in report  # one seed: no paired comparison yet (see the unit test)

    # resume: nothing is retrained, the JSONL does not grow
    n_lines = len(open(out.with_suffix(".jsonl")).readlines())
    fs.main(argv)
    assert len(open(out.with_suffix(".jsonl")).readlines()) == n_lines

    # report only, from a wider plan: runs nothing, keeps the finished runs, includes a verdict
    verdict = root / "verdict.md"
    verdict.write_text("## Verdict\n\n- a claim: reproduced\n")
    fs.main([*argv, "--seeds", "2", "--report-only", "--verdict", str(verdict)])
    assert len(open(out.with_suffix(".jsonl")).readlines()) == n_lines
    report = out.read_text()
    assert "- a claim: reproduced" in report and "_to fill_" not in report and "### RTE" in report
