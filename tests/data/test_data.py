"""jadapt.data: registry, loading, tokenisation, subsets, batching, prefetch.

Core tests use synthetic JSON Lines files and a tiny word-level tokenizer; tests marked
``data`` read ../shared/data (or $JADAPT_DATA_DIR) and skip when it is absent.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from jadapt import data

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- fixtures
WORDS = "the a cat dog sat ran on mat log big small red blue fast slow very".split()


def make_tokenizer(model_max_length=64):
    """A word-level BERT-style tokenizer (pad id 1, like RoBERTa, to catch pad-id-0 assumptions)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[PAD]": 1, "[CLS]": 2, "[SEP]": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", model_max_length=model_max_length)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def sentence(rng, lo=1, hi=40):
    return " ".join(rng.choice(WORDS, size=int(rng.integers(lo, hi))))


def write_jsonl(path: Path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def data_dir(tmp_path):
    rng = np.random.default_rng(0)
    write_jsonl(tmp_path / "sst2/train.jsonl", [{"sentence": sentence(rng), "label": i % 2, "idx": i} for i in range(50)])
    write_jsonl(tmp_path / "sst2/validation.jsonl", [{"sentence": sentence(rng), "label": 1 - i % 2, "idx": i} for i in range(9)])
    write_jsonl(tmp_path / "mrpc/train.jsonl",
                [{"sentence1": sentence(rng), "sentence2": sentence(rng), "label": int(i % 3 == 0), "idx": i} for i in range(30)])
    write_jsonl(tmp_path / "stsb/train.jsonl",
                [{"sentence1": sentence(rng), "sentence2": sentence(rng), "label": float(i % 6) * 0.9} for i in range(12)])
    write_jsonl(tmp_path / "snli/validation.jsonl",
                [{"premise": sentence(rng), "hypothesis": sentence(rng), "label": [0, 1, 2, -1][i % 4]} for i in range(20)])
    write_jsonl(tmp_path / "mnli/validation_matched.jsonl",
                [{"premise": "a", "hypothesis": "b", "label": i % 3, "idx": i} for i in range(6)])
    write_jsonl(tmp_path / "mnli/validation_mismatched.jsonl",
                [{"premise": "c", "hypothesis": "d", "label": i % 3, "idx": i} for i in range(9)])
    write_jsonl(tmp_path / "xnli/de/validation.jsonl", [{"premise": "p", "hypothesis": "h", "label": i % 3} for i in range(6)])
    write_jsonl(tmp_path / "mr/train.jsonl", [{"text": sentence(rng), "label": int(i >= 60), "idx": i} for i in range(100)])
    write_jsonl(tmp_path / "sick/train.jsonl", [{"id": str(i), "sentence_A": "a", "sentence_B": "b", "label": i % 3,
                                                  "relatedness_score": 1.0 + i % 5} for i in range(10)])
    return tmp_path


# ---------------------------------------------------------------- registry
def test_registry_tracks_and_fields():
    assert data.track_of("sst2") == "sentiment" and data.track_of("imdb") == "sentiment"
    assert data.track_of("mrpc") == "paraphrase" and data.track_of("stsb") == "paraphrase"
    assert data.track_of("sick") == "nli" and data.track_of("sick-relatedness") == "paraphrase"
    assert data.track_of("cola") == "acceptability" and data.track_of("xnli-de") == "nli"
    for lang in data.XNLI_LANGS:
        assert data.get_task(f"xnli-{lang}").local_dir == f"xnli/{lang}"
    for name, spec in data.TASKS.items():
        assert spec.name == name and spec.track in data.TRACKS
        assert spec.regression == (spec.num_labels == 1)
    assert data.get_task("mnli").dev_split == "validation_matched"
    assert data.get_task("stsb").metrics[0] == "pearson" and data.get_task("cola").main_metric == "matthews"
    assert set(data.tasks_in_track("nli")) >= {"mnli", "rte", "qnli", "snli", "sick", "xnli-en"}


@pytest.mark.parametrize("name", ["sst3", "xnli-xx", "", None])
def test_unknown_task_names_it_and_lists_known(name):
    with pytest.raises(ValueError) as e:
        data.get_task(name)
    assert repr(name) in str(e.value) and "sst2" in str(e.value) and "xnli-de" in str(e.value)


def test_taskspec_validation_names_field():
    with pytest.raises(ValueError, match="track 'vision'"):
        data.TaskSpec("t", ("x",), "label", 2, "vision", ("accuracy",), ("a", "b"))
    with pytest.raises(ValueError, match="num_labels=1"):
        data.TaskSpec("t", ("x",), "label", 2, "nli", ("pearson",), regression=True)
    with pytest.raises(ValueError, match="text_fields"):
        data.TaskSpec("t", ("x", "y", "z"), "label", 2, "nli", ("accuracy",), ("a", "b"))
    with pytest.raises(ValueError, match="label_names"):
        data.TaskSpec("t", ("x",), "label", 3, "nli", ("accuracy",), ("a", "b"))
    with pytest.raises(ValueError, match="metrics"):
        data.TaskSpec("t", ("x",), "label", 2, "nli", ("bleu",), ("a", "b"))


# ---------------------------------------------------------------- loading
def test_load_split_columns(data_dir):
    rows = data.load_split("mrpc", "train", data_dir)
    assert set(rows) == {"sentence1", "sentence2", "label", "row"}
    assert rows["label"].dtype == np.int64 and rows["sentence1"].dtype == object
    np.testing.assert_array_equal(rows["row"], np.arange(30))
    np.testing.assert_array_equal(rows["label"], [int(i % 3 == 0) for i in range(30)])
    reg = data.load_split("stsb", "train", data_dir)
    assert reg["label"].dtype == np.float32
    np.testing.assert_allclose(reg["label"], [float(i % 6) * 0.9 for i in range(12)], rtol=1e-6)
    rel = data.load_split("sick-relatedness", "train", data_dir)
    np.testing.assert_array_equal(rel["label"], [1.0 + i % 5 for i in range(10)])


def test_data_dir_from_env(data_dir, monkeypatch):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(data_dir))
    assert len(data.load_split("sst2", "dev")["label"]) == 9  # "dev" -> the spec's dev split


def test_missing_file_names_task_and_path(data_dir):
    with pytest.raises(FileNotFoundError) as e:
        data.load_split("rte", "train", data_dir)
    assert "rte" in str(e.value) and str(data_dir / "rte/train.jsonl") in str(e.value)
    with pytest.raises(FileNotFoundError, match="xnli-de.*xnli/de/train.jsonl"):
        data.load_split("xnli-de", "train", data_dir)
    assert len(data.load_split("xnli-de", "validation", data_dir)["label"]) == 6


@pytest.mark.parametrize("bad,row", [(-1, 3), (7, 5), (1.5, 0), ("1", 2), (None, 4), (True, 1)])
def test_bad_label_names_task_label_and_row(tmp_path, bad, row):
    recs = [{"sentence": "a", "label": 0} for _ in range(6)]
    recs[row]["label"] = bad
    write_jsonl(tmp_path / "sst2/train.jsonl", recs)
    with pytest.raises(ValueError) as e:
        data.load_split("sst2", "train", tmp_path)
    msg = str(e.value)
    assert "sst2" in msg and f"label {bad!r}" in msg and f"row {row}" in msg


def test_drop_unlabeled(data_dir, tmp_path):
    snli = data.load_split("snli", "validation", data_dir)  # the spec drops -1 by default
    assert len(snli["label"]) == 15 and set(snli["label"]) == {0, 1, 2}
    np.testing.assert_array_equal(snli["row"], [i for i in range(20) if i % 4 != 3])
    with pytest.raises(ValueError, match="snli.*label -1 in row 3"):
        data.load_split("snli", "validation", data_dir, drop_unlabeled=False)
    write_jsonl(tmp_path / "rte/train.jsonl", [{"sentence1": "a", "sentence2": "b", "label": l} for l in (0, -1, 1)])
    assert list(data.load_split("rte", "train", tmp_path, drop_unlabeled=True)["row"]) == [0, 2]


def test_regression_label_must_be_finite(tmp_path):
    write_jsonl(tmp_path / "stsb/train.jsonl", [{"sentence1": "a", "sentence2": "b", "label": 1.0},
                                                 {"sentence1": "a", "sentence2": "b", "label": "x"}])
    with pytest.raises(ValueError, match="stsb.*'x' in row 1"):
        data.load_split("stsb", "train", tmp_path)


def test_empty_and_missing_field_raise(tmp_path):
    write_jsonl(tmp_path / "cola/train.jsonl", [])
    with pytest.raises(ValueError, match="cola.*no labelled rows"):
        data.load_split("cola", "train", tmp_path)
    write_jsonl(tmp_path / "snli/train.jsonl", [{"premise": "a", "hypothesis": "b", "label": -1}])
    with pytest.raises(ValueError, match="snli.*no labelled rows"):
        data.load_split("snli", "train", tmp_path)
    write_jsonl(tmp_path / "cola/validation.jsonl", [{"sentence": "a", "label": 0}, {"text": "b", "label": 1}])
    with pytest.raises(ValueError, match="cola: row 1 .* no field 'sentence'"):
        data.load_split("cola", "validation", tmp_path)


def test_mnli_train_falls_back_to_mismatched(data_dir):
    train = data.load_split("mnli", "train", data_dir)
    assert len(train["label"]) == 9 and set(train["premise"]) == {"c"}
    assert len(data.load_split("mnli", "dev", data_dir)["label"]) == 6
    write_jsonl(data_dir / "mnli/train.jsonl", [{"premise": "t", "hypothesis": "t", "label": 0}] * 4)
    assert len(data.load_split("mnli", "train", data_dir)["label"]) == 4  # a real train file wins


def test_holdout_dev_is_seeded_and_disjoint(data_dir):
    train, dev = data.load_split("mr", "train", data_dir), data.load_split("mr", "validation", data_dir)
    assert len(dev["row"]) == 10 and len(train["row"]) == 90
    assert sorted(np.concatenate([train["row"], dev["row"]]).tolist()) == list(range(100))
    np.testing.assert_array_equal(dev["row"], data.load_split("mr", "dev", data_dir)["row"])
    # a real validation file replaces the held-out part and train keeps every row
    write_jsonl(data_dir / "mr/validation.jsonl", [{"text": "a", "label": 0}])
    assert len(data.load_split("mr", "train", data_dir)["row"]) == 100


def test_hub_path_uses_spec_without_network(monkeypatch):
    """No data dir -> datasets.load_dataset(*spec.hub, split=...); faked here (no network)."""
    import datasets

    calls = []

    def fake(path, config, split):
        calls.append((path, config, split))
        return datasets.Dataset.from_dict({"text": ["x", "y", "z"], "label": [1, 0, -1]})

    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    with pytest.raises(ValueError, match="imdb.*label -1 in row 2"):
        data.load_split("imdb", "validation")
    assert calls == [("stanfordnlp/imdb", None, "test")]
    with pytest.raises(FileNotFoundError, match="mr has no hub source"):
        data.load_split("mr", "train")


# ---------------------------------------------------------------- tokenisation
def test_encode_matches_tokenizer_padding(data_dir, tok):
    rows = data.load_split("mrpc", "train", data_dir)
    enc = data.encode("mrpc", rows, tok, 24, chunk_size=7)  # several chunks
    ref = tok(list(rows["sentence1"]), list(rows["sentence2"]), truncation=True, max_length=24,
              padding="max_length", return_tensors="np", return_token_type_ids=True)
    assert enc["input_ids"].dtype == np.int32 and enc["input_ids"].shape == (30, 24)
    np.testing.assert_array_equal(enc["input_ids"], ref["input_ids"])
    np.testing.assert_array_equal(enc["token_type_ids"], ref["token_type_ids"])
    np.testing.assert_array_equal(enc["lengths"], ref["attention_mask"].sum(1))
    assert (enc["lengths"] == 24).any() and (enc["lengths"] < 24).any()  # both truncated and padded rows
    pad = np.arange(24)[None] >= enc["lengths"][:, None]
    assert (enc["input_ids"][pad] == tok.pad_token_id).all() and tok.pad_token_id == 1
    assert enc["labels"].dtype == np.int32
    np.testing.assert_array_equal(enc["labels"], rows["label"])
    np.testing.assert_array_equal(enc["row"], rows["row"])


def test_encode_single_and_regression(data_dir, tok):
    enc = data.encode("sst2", data.load_split("sst2", "train", data_dir), tok, 16)
    assert (enc["token_type_ids"] == 0).all()
    assert (enc["input_ids"][:, 0] == 2).all()  # [CLS]
    last = enc["input_ids"][np.arange(50), enc["lengths"] - 1]
    assert (last == 3).all()  # every row, truncated or not, ends in [SEP]
    reg = data.encode("stsb", data.load_split("stsb", "train", data_dir), tok, 16)
    assert reg["labels"].dtype == np.float32


def test_encode_rejects_length_over_model_limit(data_dir, tok):
    from jadapt.models.config import EncoderConfig

    rows = data.load_split("sst2", "train", data_dir)
    with pytest.raises(ValueError, match="max_length 128 exceeds .* limit of 64"):
        data.encode("sst2", rows, tok, 128)  # the tokenizer's own model_max_length
    cfg = EncoderConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                        max_position_embeddings=32)
    with pytest.raises(ValueError, match="max_length 48 exceeds .* limit of 32"):
        data.encode("sst2", rows, tok, 48, model_max_length=cfg)
    roberta = cfg.replace(model_type="roberta", pad_token_id=1)  # positions start at 2
    with pytest.raises(ValueError, match="max_length 32 exceeds .* limit of 30"):
        data.encode("sst2", rows, tok, 32, model_max_length=roberta)
    assert data.encode("sst2", rows, tok, 30, model_max_length=roberta)["input_ids"].shape == (50, 30)


# ---------------------------------------------------------------- subsets
def labelled(n=100, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return {"label": rng.integers(0, classes, n), "row": np.arange(n)}


def test_subsample_seeded():
    d = labelled()
    a, b, c = data.subsample(d, 20, 1), data.subsample(d, 20, 1), data.subsample(d, 20, 2)
    np.testing.assert_array_equal(a["row"], b["row"])
    assert len(set(a["row"])) == 20 and not np.array_equal(a["row"], c["row"])
    assert (np.diff(a["row"]) > 0).all()  # original order kept
    with pytest.raises(ValueError, match="cannot subsample 101 rows: only 100"):
        data.subsample(d, 101, 0)


def test_k_shot_k_per_class():
    d = labelled()
    s = data.k_shot(d, 4, seed=3)
    assert np.bincount(s["label"]).tolist() == [4, 4, 4]
    np.testing.assert_array_equal(s["row"], data.k_shot(d, 4, seed=3)["row"])
    assert not np.array_equal(s["row"], data.k_shot(d, 4, seed=4)["row"])
    np.testing.assert_array_equal(d["label"][s["row"]], s["label"])
    few = {"labels": np.array([0] * 10 + [1] * 2)}
    with pytest.raises(ValueError, match="class 1 has 2 rows, fewer than k=3"):
        data.k_shot(few, 3, 0)
    with pytest.raises(ValueError, match="task rte.*class 1 has 0 rows"):
        data.k_shot({"label": np.zeros(10, np.int64)}, 2, 0, task="rte")
    with pytest.raises(ValueError, match="task stsb.*regression"):
        data.k_shot({"label": np.zeros(10, np.float32)}, 2, 0, task="stsb")


# ---------------------------------------------------------------- batching
def encoded(n=103, width=100, seed=0, regression=False):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, width + 1, n).astype(np.int32)
    ids = np.where(np.arange(width)[None] < lengths[:, None], rng.integers(5, 50, (n, width)), 1).astype(np.int32)
    labels = rng.normal(size=n).astype(np.float32) if regression else rng.integers(0, 2, n).astype(np.int32)
    return {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "lengths": lengths, "labels": labels,
            "row": np.arange(n)}


def check_batch(b, d, batch_size, sizes):
    width = b["input_ids"].shape[1]
    assert width in sizes and b["input_ids"].shape == (batch_size, width)
    assert b["input_ids"].dtype == np.int32 and b["attention_mask"].dtype == np.int32
    assert b["weight"].dtype == np.float32 and b["weight"].shape == (batch_size,)
    real = b["weight"] > 0
    assert ((b["index"] >= 0) == real).all() and set(np.unique(b["weight"])) <= {0.0, 1.0}
    idx = b["index"][real]
    lengths = d["lengths"][idx]
    assert width == min(s for s in sizes if s >= lengths.max())  # the smallest bucket that fits
    np.testing.assert_array_equal(b["attention_mask"][real].sum(1), lengths)
    np.testing.assert_array_equal(b["input_ids"][real], d["input_ids"][idx, :width])
    np.testing.assert_array_equal(b["labels"][real], d["labels"][idx])
    return idx


def test_bucket_sizes():
    assert data.bucket_sizes(128) == (8, 16, 24, 32, 48, 64, 96, 128)
    assert data.bucket_sizes(100) == (8, 16, 24, 32, 48, 64, 96, 100)
    assert data.bucket_sizes(16) == (8, 16)
    assert data.bucket_sizes(128, (32, 64)) == (32, 64, 128)
    assert data.bucket_sizes(512, (8, 600, 64)) == (8, 64, 512)


@pytest.mark.parametrize("sort_chunks", [None, 2])
def test_epoch_covers_every_row_once_with_fixed_shapes(sort_chunks):
    d = encoded()
    sizes = data.bucket_sizes(100, (16, 32, 64))
    batches = list(data.epoch_batches(d, 8, seed=0, epoch=0, buckets=(16, 32, 64), sort_chunks=sort_chunks))
    assert len(batches) == data.num_batches(d, 8) == 13
    seen = np.concatenate([check_batch(b, d, 8, sizes) for b in batches])
    assert sorted(seen.tolist()) == list(range(103))
    last = batches[-1]
    assert last["weight"].tolist() == [1.0] * 7 + [0.0]  # 103 = 12 * 8 + 7
    assert all(b["weight"].all() for b in batches[:-1])


def test_epoch_order_deterministic_and_varies():
    d = encoded()
    a = data.epoch_plan(d, 8, seed=5, epoch=2)
    b = data.epoch_plan(d, 8, seed=5, epoch=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    for other in (data.epoch_plan(d, 8, 5, 3), data.epoch_plan(d, 8, 6, 2)):
        assert not np.array_equal(np.concatenate(a), np.concatenate(other))
    plain = data.epoch_plan(d, 8, 0, 0, shuffle=False)
    np.testing.assert_array_equal(np.concatenate(plain), np.arange(103))


@pytest.mark.parametrize("start", [0, 1, 6, 12, 13])
def test_resume_from_step_yields_exactly_the_rest(start):
    d = encoded()
    full = list(data.epoch_batches(d, 8, seed=1, epoch=4, buckets=(16, 32, 64)))
    rest = list(data.epoch_batches(d, 8, seed=1, epoch=4, start_step=start, buckets=(16, 32, 64)))
    assert len(rest) == len(full) - start
    for x, y in zip(full[start:], rest):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    with pytest.raises(ValueError, match="start_step 14"):
        next(data.epoch_batches(d, 8, seed=1, epoch=4, start_step=14))


def test_drop_remainder():
    d = encoded()
    batches = list(data.epoch_batches(d, 8, 0, 0, drop_remainder=True))
    assert len(batches) == data.num_batches(d, 8, drop_remainder=True) == 12
    assert all(b["weight"].all() for b in batches)


def test_length_sorting_cuts_padding():
    d = encoded(n=2000, width=256, seed=1)
    d["lengths"] = np.minimum(d["lengths"], np.random.default_rng(0).geometric(0.03, 2000)).astype(np.int32) + 2

    def padded(sort_chunks):
        return sum(b["input_ids"].size for b in data.epoch_batches(d, 16, 0, 0, sort_chunks=sort_chunks))

    assert padded(32) < 0.8 * padded(None)


@pytest.mark.parametrize("sort_by_length", [False, True])
def test_eval_batches_cover_each_row_once(sort_by_length):
    d = encoded(regression=True)
    sizes = data.bucket_sizes(100)
    batches = list(data.eval_batches(d, 16, sort_by_length=sort_by_length))
    assert len(batches) == data.num_batches(d, 16)
    seen = np.concatenate([check_batch(b, d, 16, sizes) for b in batches])
    if sort_by_length:
        assert sorted(seen.tolist()) == list(range(103))
        assert (np.diff(d["lengths"][seen]) >= 0).all()
    else:
        np.testing.assert_array_equal(seen, np.arange(103))
    assert batches[0]["labels"].dtype == np.float32


def test_process_shards_split_each_global_batch():
    d = encoded()
    whole = list(data.epoch_batches(d, 8, 3, 1))
    parts = [list(data.epoch_batches(d, 8, 3, 1, process_index=i, process_count=4)) for i in range(4)]
    for g, *ps in zip(whole, *parts):
        for k in g:
            np.testing.assert_array_equal(g[k], np.concatenate([p[k] for p in ps]))
    with pytest.raises(ValueError, match="process_count 3"):
        next(data.epoch_batches(d, 8, 3, 1, process_index=0, process_count=3))


# ---------------------------------------------------------------- prefetch
def test_prefetch_order_put_and_device_sharding():
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    d = encoded()
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    host = list(data.eval_batches(d, 16))
    dev = list(data.prefetch(iter(host), lambda b: jax.device_put(b, sharding), size=2))
    assert len(dev) == len(host)
    for h, x in zip(host, dev):
        assert x["input_ids"].sharding == sharding
        np.testing.assert_array_equal(np.asarray(x["input_ids"]), h["input_ids"])


def test_prefetch_is_bounded_propagates_errors_and_stops():
    produced = []

    def gen(n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise RuntimeError("boom at 3")
            produced.append(i)
            yield i

    it = data.prefetch(gen(100), put=lambda x: x * 10, size=2)
    assert next(it) == 0
    time.sleep(0.3)
    assert len(produced) <= 1 + 2 + 1  # the consumed one, a full queue, one waiting in put
    it.close()
    time.sleep(0.2)
    n = len(produced)
    time.sleep(0.2)
    assert len(produced) == n and not any(t.name == "jadapt-prefetch" for t in threading.enumerate())
    assert list(data.prefetch(gen(5), put=lambda x: x * 10)) == [0, 10, 20, 30, 40]
    with pytest.raises(RuntimeError, match="boom at 3"):
        list(data.prefetch(gen(10, fail_at=3), put=lambda x: x))


# ---------------------------------------------------------------- real data
def _real_data_dir():
    for cand in (os.environ.get(data.DATA_DIR_ENV), REPO.parent / "shared" / "data"):
        if cand and Path(cand, "sst2").is_dir():
            return Path(cand)
    return None


REAL = _real_data_dir()

# (task, split): label counts from shared/data/README.md
README_COUNTS = {
    ("cola", "train"): [2528, 6023], ("cola", "validation"): [324, 719],
    ("sst2", "train"): [29780, 37569], ("sst2", "validation"): [428, 444],
    ("mrpc", "train"): [1194, 2474], ("mrpc", "validation"): [129, 279],
    ("rte", "train"): [1249, 1241], ("rte", "validation"): [146, 131],
    ("qnli", "validation"): [2702, 2761],
    ("sick", "train"): [1299, 2536, 665], ("sick", "validation"): [144, 282, 74],
    ("mnli", "validation_matched"): [3479, 3123, 3213], ("mnli", "validation_mismatched"): [3463, 3129, 3240],
    ("mnli", "train"): [3463, 3129, 3240],  # the README's protocol: train on validation_mismatched
    ("snli", "train"): [562, 554, 550], ("snli", "validation"): [3329, 3235, 3278],
    ("imdb", "train"): [851, 856], ("imdb", "validation"): [122, 123],
    **{(f"xnli-{lang}", "validation"): [830, 830, 830] for lang in ("ar", "de", "en", "sw", "zh")},
}


@pytest.mark.parametrize("task,split", sorted(README_COUNTS))
@pytest.mark.data
@pytest.mark.skipif(REAL is None, reason="../shared/data not found")
def test_real_label_distributions(task, split):
    rows = data.load_split(task, split, REAL)
    assert np.bincount(rows["label"]).tolist() == README_COUNTS[(task, split)]


@pytest.mark.data
@pytest.mark.skipif(REAL is None, reason="../shared/data not found")
def test_real_regression_and_holdout():
    stsb = data.load_split("stsb", "validation", REAL)
    assert len(stsb["label"]) == 1500 and 0.0 <= stsb["label"].min() and stsb["label"].max() <= 5.0
    rel = data.load_split("sick-relatedness", "train", REAL)
    assert len(rel["label"]) == 4500 and 1.0 <= rel["label"].min() and rel["label"].max() <= 5.0
    for task, total, counts in (("mr", 10662, [5331, 5331]), ("cr", 3775, [1368, 2407]), ("mpqa", 10606, [7294, 3312])):
        tr, dev = data.load_split(task, "train", REAL), data.load_split(task, "validation", REAL)
        assert len(dev["label"]) == round(total * 0.1) and len(tr["label"]) + len(dev["label"]) == total
        assert (np.bincount(tr["label"]) + np.bincount(dev["label"])).tolist() == counts
        assert not set(tr["row"]) & set(dev["row"])


@pytest.mark.data
@pytest.mark.skipif(REAL is None, reason="../shared/data not found")
def test_real_packaged_tokenizer():
    try:
        tok = data.load_tokenizer()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    from jadapt.models.config import EncoderConfig
    from jadapt.models.hf import packaged_model_path

    cfg = EncoderConfig.from_pretrained(packaged_model_path())
    rows = data.load_split("mrpc", "validation", REAL)
    enc = data.encode("mrpc", rows, tok, 128, model_max_length=cfg)
    assert enc["input_ids"].shape == (408, 128)
    assert (enc["input_ids"][:, 0] == tok.cls_token_id).all()
    first = tok.decode(enc["input_ids"][0, :enc["lengths"][0]])
    assert first.startswith("[CLS] he said the foodservice pie business") and first.count("[SEP]") == 2
    assert set(np.unique(enc["token_type_ids"])) == {0, 1}
    with pytest.raises(ValueError, match="max_length 1024 exceeds .* limit of 512"):
        data.encode("mrpc", rows, tok, 1024, model_max_length=cfg)
    sst = data.load_split("sst2", "validation", REAL)
    batches = list(data.eval_batches(data.encode("sst2", sst, tok, 128), 32))
    assert sum(int(b["weight"].sum()) for b in batches) == 872
    assert {b["input_ids"].shape[1] for b in batches} <= set(data.bucket_sizes(128))


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.skipif(REAL is None, reason="../shared/data not found")
def test_real_sst2_train_tokenises_in_seconds():
    tok = data.load_tokenizer()
    rows = data.load_split("sst2", "train", REAL)
    t0 = time.perf_counter()
    enc = data.encode("sst2", rows, tok, 128)
    assert time.perf_counter() - t0 < 60  # ~3-10 s on 2 shared CPU cores
    assert enc["input_ids"].shape == (67349, 128) and enc["lengths"].max() < 128


def test_default_buckets_bound_padding():
    """Default widths pad a batch to at most 1.5x its longest row (or to 16), up to 512."""
    sizes = data.bucket_sizes(512)
    for length in range(1, 513):
        assert data.bucket_for(length, sizes) <= max(16, 1.5 * length), length
    assert len(sizes) <= 12  # one compilation per width used: keep the set small


def test_train_config_and_cli_check_buckets():
    from jadapt.cli import build_parser
    from jadapt.train.config import TrainConfig

    assert TrainConfig(task="rte", buckets=(16, 64)).buckets == (16, 64)
    with pytest.raises(ValueError, match="buckets must be positive ints"):
        TrainConfig(task="rte", buckets=(0, 64))
    args = build_parser().parse_args(["train", "--task", "rte", "--out", "x", "--buckets", "16,64"])
    assert args.buckets == (16, 64)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--task", "rte", "--out", "x", "--buckets", "16,sixty"])
