"""Encoder: parity with transformers' PyTorch models, the HF name map and its errors."""
from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from jadapt import tree
from jadapt.adapters.config import preset
from jadapt.models.config import EncoderConfig
from jadapt.models.hf import convert_state_dict, read_state_dict, resolve_model_path
from jadapt.models.model import AdapterModel, HeadConfig
from jadapt.models.pretrained import load_pretrained, param_shapes


def _hf_hidden_states(model_dir, enc):
    torch = pytest.importorskip("torch")
    from transformers import AutoModel

    hf = AutoModel.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        out = hf(**{k: torch.tensor(v) for k, v in enc.items()}, output_hidden_states=True)
    return [h.numpy() for h in out.hidden_states]


def _assert_parity(hidden, ref, mask, tol=1e-4):
    assert len(hidden) == len(ref)
    for i, (a, b) in enumerate(zip(hidden, ref)):
        diff = np.abs((np.asarray(a) - b) * mask[..., None]).max()
        assert diff <= tol, f"layer {i}: max abs diff {diff}"


@pytest.mark.torch
def test_parity_packaged_minilm():
    from transformers import AutoTokenizer

    path = resolve_model_path(None)
    tok = AutoTokenizer.from_pretrained(str(path))
    enc = tok(["The cat sat on the mat, and nobody minded at all.", "Short one.", "Adapters forget less."],
              padding=True, return_tensors="np")
    model, params = load_pretrained(None)
    hidden = model.apply({"params": params}, enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    assert len(hidden) == model.config.num_layers + 1
    _assert_parity(hidden, _hf_hidden_states(path, enc), enc["attention_mask"])


@pytest.mark.torch
def test_parity_random_roberta(tmp_path):
    """RoBERTa counts positions from padding_idx + 1: a wrong offset fails this test."""
    torch = pytest.importorskip("torch")
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=120, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=96, max_position_embeddings=40, type_vocab_size=1, pad_token_id=1,
                        layer_norm_eps=1e-5)
    RobertaModel(cfg).save_pretrained(str(tmp_path), safe_serialization=True)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 120, size=(3, 11)).astype(np.int64)
    ids[:, 0] = 0
    mask = np.ones_like(ids)
    ids[1, 7:], mask[1, 7:] = 1, 0  # padded row
    enc = {"input_ids": ids, "attention_mask": mask}
    model, params = load_pretrained(tmp_path)
    assert model.config.position_offset == 2
    hidden = model.apply({"params": params}, ids, mask)
    _assert_parity(hidden, _hf_hidden_states(tmp_path, enc), mask)


def test_load_tiny_dir_and_adapter_paths(tiny_model_dir):
    adapters = (("a", preset("houlsby", bottleneck=8)), ("b", preset("pfeiffer", bottleneck=4)),
                ("l", preset("lora", lora_r=2)))
    model, params = load_pretrained(tiny_model_dir, adapters=adapters, active=("a",), head=HeadConfig(3))
    shapes = {p: tuple(x.shape) for p, x in tree.flatten(params).items()}
    assert shapes["encoder/layer_1/attn_adapter/a/down/kernel"] == (32, 8)
    assert shapes["encoder/layer_1/ffn_adapter/a/up/kernel"] == (8, 32)
    assert shapes["encoder/layer_0/ffn_adapter/b/down/bias"] == (4,)
    assert "encoder/layer_0/attn_adapter/b/down/kernel" not in shapes  # pfeiffer: FFN only
    assert shapes["encoder/layer_0/attention/lora_query/l/lora_a"] == (32, 2)
    assert shapes["encoder/layer_0/attention/lora_value/l/lora_b"] == (2, 32)
    assert shapes["head/out/kernel"] == (32, 3)
    ids = jnp.ones((2, 5), jnp.int32)
    assert model.apply({"params": params}, ids, ids).shape == (2, 3)


def test_pretrained_weights_are_loaded_exactly(tiny_model_dir):
    model, params = load_pretrained(tiny_model_dir)
    sd = read_state_dict(tiny_model_dir)
    np.testing.assert_array_equal(params["encoder"]["layer_1"]["intermediate"]["kernel"],
                                  sd["encoder.layer.1.intermediate.dense.weight"].T)
    np.testing.assert_array_equal(params["embeddings"]["layer_norm"]["scale"], sd["embeddings.LayerNorm.weight"])


def test_inactive_adapter_changes_nothing_and_active_one_does(tiny_model_dir):
    cfg = preset("pfeiffer", bottleneck=4)
    base, p0 = load_pretrained(tiny_model_dir)
    model, p = load_pretrained(tiny_model_dir, adapters=(("x", cfg),), active=())
    ids = jnp.array([[101, 2000, 2001, 102]])
    h0 = base.apply({"params": p0}, ids, jnp.ones_like(ids))[-1]
    h_off = model.apply({"params": p}, ids, jnp.ones_like(ids))[-1]
    np.testing.assert_allclose(h0, h_off, atol=1e-6)
    on = model.clone(active=("x",))
    h_on = on.apply({"params": p}, ids, jnp.ones_like(ids))[-1]
    assert np.abs(np.asarray(h_on) - np.asarray(h0)).max() > 1e-5


def test_convert_reports_shape_mismatch_and_missing(tiny_model_dir):
    sd = read_state_dict(tiny_model_dir)
    model = AdapterModel(EncoderConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=64))
    with pytest.raises(ValueError, match=r"encoder/layer_0/attention/query/kernel.*shape \(32, 32\)"):
        convert_state_dict(sd, param_shapes(model))
    sd.pop("encoder.layer.1.output.dense.bias")
    small = AdapterModel(EncoderConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64))
    with pytest.raises(ValueError, match="lacks 1 backbone tensor"):
        convert_state_dict(sd, param_shapes(small))


def test_model_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_path(tmp_path / "nope")
    (tmp_path / "m").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model_path(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(FileNotFoundError, match="has no weights"):
        read_state_dict(tmp_path / "m")


def test_unsupported_hf_options_are_refused():
    from transformers import BertConfig

    with pytest.raises(ValueError, match="position_embedding_type 'relative_key'"):
        EncoderConfig.from_hf(BertConfig(position_embedding_type="relative_key"))
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        EncoderConfig(model_type="gpt2")


def test_head_config_validation():
    with pytest.raises(ValueError, match="pooling 'max'"):
        HeadConfig(pooling="max")
    with pytest.raises(ValueError, match="regression head"):
        HeadConfig(num_labels=2, regression=True)
