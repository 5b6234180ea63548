"""Reading HF model folders without transformers: config.json and BERT tokenizer.json.

Each fast path must give exactly what transformers gives (checked here under transformers 5
and, in CI's second venv, 4.57), and must step aside where it cannot promise that.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jadapt import data
from jadapt.data.fast_tokenizer import FastTokenizer, open_fast_tokenizer
from jadapt.models.config import EncoderConfig
from jadapt.models.hf import packaged_model_path

transformers = pytest.importorskip("transformers")

TRICKY = ["Hello, World!", "naïve café — Ünïcödé", "中文字符 mixed with English", "", "   spaces   ",
          "antidisestablishmentarianism " * 40, "tab\tand\nnewline\u200bzero-width", "[SEP] inside [CLS] text",
          "e-mail: someone@example.com, 3.14159 and $100", "Ω≈ç√∫˜µ≤≥÷ 🙂"]


def _auto_config(path):
    return EncoderConfig.from_hf(transformers.AutoConfig.from_pretrained(str(path)))


def test_packaged_config_json_matches_autoconfig():
    path = packaged_model_path()
    assert EncoderConfig.from_pretrained(path) == _auto_config(path)


@pytest.mark.parametrize("model_type", ["bert", "roberta", "xlm-roberta", "camembert"])
def test_minimal_config_json_gets_transformers_defaults(tmp_path, model_type):
    # only the required keys: every other field must take transformers' default for the type
    cfg = {"model_type": model_type, "vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 4, "intermediate_size": 128, "max_position_embeddings": 130}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert EncoderConfig.from_pretrained(tmp_path) == _auto_config(tmp_path)


def test_config_json_written_by_transformers_matches(tmp_path):
    c = transformers.RobertaConfig(vocab_size=500, hidden_size=48, num_hidden_layers=1, num_attention_heads=3,
                                   intermediate_size=96, layer_norm_eps=1e-5, hidden_dropout_prob=0.2,
                                   max_position_embeddings=66, type_vocab_size=1, hidden_act="gelu_new")
    c.save_pretrained(str(tmp_path))
    got = EncoderConfig.from_pretrained(tmp_path)
    assert got == _auto_config(tmp_path)
    assert (got.layer_norm_eps, got.hidden_dropout, got.type_vocab_size, got.pad_token_id) == (1e-5, 0.2, 1, 1)


def test_unsupported_config_still_refused_by_name(tmp_path):
    cfg = {"model_type": "bert", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
           "intermediate_size": 16, "max_position_embeddings": 20, "position_embedding_type": "relative_key"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="position_embedding_type 'relative_key'"):
        EncoderConfig.from_pretrained(tmp_path)


def _both(path):
    fast = open_fast_tokenizer(path)
    assert isinstance(fast, FastTokenizer)
    return fast, transformers.AutoTokenizer.from_pretrained(str(path))


@pytest.mark.parametrize("max_length", [128, 12, 5])
def test_fast_tokenizer_matches_autotokenizer(max_length):
    fast, auto = _both(packaged_model_path())
    names = ("pad_token_id", "cls_token_id", "sep_token_id", "unk_token_id", "mask_token_id", "model_max_length",
             "padding_side", "pad_token")
    assert [getattr(fast, n) for n in names] == [getattr(auto, n) for n in names]
    ids = auto(TRICKY[:3], TRICKY[3:6])["input_ids"]
    assert [fast.decode(x) for x in ids] == [auto.decode(x) for x in ids]
    pairs = (TRICKY, TRICKY[::-1])
    for args in ((TRICKY,), pairs):
        kw = dict(truncation=True, max_length=max_length, padding=False, return_attention_mask=False,
                  return_token_type_ids=True)
        got, want = fast(*args, **kw), auto(*args, **kw)
        assert got["input_ids"] == [list(x) for x in want["input_ids"]]
        assert got["token_type_ids"] == [list(x) for x in want["token_type_ids"]]


@pytest.mark.data
@pytest.mark.parametrize("task,max_length", [("sst2", 128), ("sst2", 32), ("mrpc", 128), ("mrpc", 24)])
def test_encode_real_rows_same_with_either_tokenizer(data_dir, task, max_length):
    rows = data.load_split(task, data.get_task(task).dev_split, data_dir)
    path = packaged_model_path()
    fast, auto = _both(path)
    got = data.encode(task, rows, fast, max_length)
    want = data.encode(task, rows, auto, max_length)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    if max_length < 64:
        assert got["lengths"].max() == max_length  # truncation was exercised


def _copy_tokenizer(tmp_path, **config_changes):
    src = packaged_model_path()
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "config.json"):
        shutil.copy(src / f, tmp_path / f)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg.update(config_changes)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    return tmp_path


@pytest.mark.parametrize("change", [{"do_lower_case": False}, {"strip_accents": True},
                                    {"tokenizer_class": "RobertaTokenizer"}, {"padding_side": "left"}])
def test_fast_path_steps_aside_where_transformers_would_differ(tmp_path, change):
    path = _copy_tokenizer(tmp_path, **change)
    assert open_fast_tokenizer(path) is None
    assert not isinstance(data.load_tokenizer(path), FastTokenizer)


def test_fast_path_taken_for_the_packaged_model_and_can_be_refused():
    assert isinstance(data.load_tokenizer(None), FastTokenizer)
    assert not isinstance(data.load_tokenizer(None, fast=False), FastTokenizer)


def test_training_inputs_need_no_transformers_import():
    code = ("import sys\nfrom jadapt import data\nfrom jadapt.models.config import EncoderConfig\n"
            "from jadapt.models.hf import packaged_model_path\n"
            "cfg = EncoderConfig.from_pretrained(packaged_model_path())\n"
            "enc = data.encode('sst2', {'sentence': ['a fine film'], 'label': [1]}, None, 16)\n"
            "assert enc['lengths'][0] == 5, enc\n"
            "print(sorted(m for m in ('transformers', 'torch') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
