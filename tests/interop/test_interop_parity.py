"""Parity of jadapt.interop against the real PyTorch libraries (``adapters``, ``peft``).

Each test builds an adapter with one side, randomises its weights (not the near-zero
init, so placement mistakes show), saves it in the library's format, loads it on the other
side and compares hidden states / logits (<= 1e-4). Bases: a random tiny BERT / RoBERTa
saved with ``save_pretrained`` and the packaged all-MiniLM-L6-v2.

Run in the venv that has the libraries:
    .venv-peers/bin/python -m pytest -q tests/interop/test_interop_parity.py
"""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jadapt import tree  # noqa: E402
from jadapt.adapters.config import preset  # noqa: E402
from jadapt.interop import (AdapterBundle, build_model, bundle_from_params, read_adapterhub, read_peft,  # noqa: E402
                            write_adapterhub, write_peft)
from jadapt.models.model import HeadConfig  # noqa: E402

TOL = 1e-4
VOCAB = 100


# ---------------------------------------------------------------- bases and inputs
def _perturb_layer_norms(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "LayerNorm" in n:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64)
    m = transformers.BertModel(cfg)
    _perturb_layer_norms(m, 0)
    d = tmp_path_factory.mktemp("tiny_bert")
    m.save_pretrained(d, safe_serialization=True)
    return d


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory):
    torch.manual_seed(1)
    cfg = transformers.RobertaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=40, type_vocab_size=1,
                                     pad_token_id=1, layer_norm_eps=1e-5)
    m = transformers.RobertaModel(cfg)
    _perturb_layer_norms(m, 1)
    d = tmp_path_factory.mktemp("tiny_roberta")
    m.save_pretrained(d, safe_serialization=True)
    return d


@pytest.fixture(scope="module")
def minilm_dir():
    from jadapt.models.hf import packaged_model_path

    try:
        return packaged_model_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))


def _inputs(vocab=VOCAB, pad=0, seed=0):
    """Two rows, the second padded: ids avoid the pad id except where masked."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, (2, 12))
    mask = np.ones_like(ids)
    mask[1, 8:] = 0
    ids[mask == 0] = pad
    return ids, mask


def _torch_hidden(model, ids, mask):
    model.eval()
    with torch.no_grad():
        out = model(torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
    return [h.numpy() for h in out.hidden_states]


def _torch_logits(model, ids, mask):
    model.eval()
    with torch.no_grad():
        return model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()


def _jadapt_out(model, params, ids, mask):
    out = jax.jit(model.apply)({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
    return [np.asarray(h) for h in out] if isinstance(out, tuple) else np.asarray(out)


def _assert_close(a, b, *, differs_from=None):
    a, b = (list(a), list(b)) if isinstance(a, list) else ([a], [b])
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        x, y = np.asarray(x).reshape(np.shape(y)), np.asarray(y)
        err = float(np.abs(x - y).max())
        print(f"max |jadapt - torch| output {i}: {err:.1e}")  # pytest -s shows the measured gaps
        assert err <= TOL, f"output {i}: max |jadapt - torch| = {err:.2e}"
    if differs_from is not None:  # the adapter really changed the function (so parity means something)
        ref = differs_from if isinstance(differs_from, list) else [differs_from]
        assert float(np.abs(np.asarray(b[-1]) - np.asarray(ref[-1]).reshape(np.shape(b[-1]))).max()) > 1e-2


def _randomise_torch(model, pattern, seed=0, std=0.3):
    """Random adapter weights (LayerNorm weights around 1)."""
    g = torch.Generator().manual_seed(seed)
    n = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if pattern in name:
                norm = ("norm" in name or "adapter_down.0" in name and p.dim() == 1) and name.endswith("weight")
                p.copy_(std * torch.randn(p.shape, generator=g) + (1.0 if norm else 0.0))
                n += 1
    assert n, f"no parameter matches {pattern!r}"


def _random_jadapt(base_dir, name, cfg, head=None, *, also=None, seed=0, std=0.3):
    """(model, params): the base with adapter ``name`` (and head, and params matching
    ``also``) drawn at random (LayerNorm scales around 1). Built through ``build_model``, so
    no init is compiled."""
    import re

    from jadapt.models.config import EncoderConfig
    from jadapt.models.model import AdapterModel
    from jadapt.param_paths import adapter_pattern
    from jadapt.models.pretrained import param_shapes

    shapes = param_shapes(AdapterModel(EncoderConfig.from_pretrained(base_dir), adapters=((name, cfg),),
                                       active=(name,), head=head))
    pick = re.compile("|".join([adapter_pattern(name)] + (["^head/"] if head else []) + ([also] if also else [])))
    rng = np.random.default_rng(seed)
    sub = {p: (std * rng.standard_normal(s) + p.endswith("/scale")).astype(np.float32)
           for p, s in shapes.items() if pick.search(p)}
    return build_model(AdapterBundle(name, cfg, tree.unflatten(sub), head), base_dir)


# ---------------------------------------------------------------- AdapterHub -> jadapt
def _hub_configs():
    adapters = pytest.importorskip("adapters")
    return adapters


HUB_CASES = {
    "seq_bn": ("SeqBnConfig", {}),
    "seq_bn_options": ("SeqBnConfig", dict(reduction_factor=4, non_linearity="gelu", ln_before=True, ln_after=True,
                                           adapter_residual_before_ln=True, residual_before_ln=False)),
    "double_seq_bn_options": ("DoubleSeqBnConfig", dict(reduction_factor=3, non_linearity="tanh",
                                                        original_ln_before=True, scaling=0.5)),
    "par_bn_options": ("ParBnConfig", dict(scaling=2.0, ln_before=True, ln_after=True, non_linearity="swish")),
    "attn_only_no_ln_after": ("SeqBnConfig", dict(mh_adapter=True, output_adapter=False, original_ln_after=False,
                                                  residual_before_ln=False, reduction_factor=8)),
    "double_seq_bn_leakyrelu_dropout": ("DoubleSeqBnConfig", dict(non_linearity="leakyrelu", dropout=0.1,
                                                                  init_weights="houlsby")),
}


@pytest.mark.parametrize("case", sorted(HUB_CASES))
def test_adapterhub_import_matches_library(case, bert_dir, tmp_path):
    adapters = _hub_configs()
    cls, kw = HUB_CASES[case]
    config = getattr(adapters, cls)(**kw)
    m = transformers.BertModel.from_pretrained(bert_dir)
    ids, mask = _inputs()
    base = _torch_hidden(m, ids, mask)
    adapters.init(m)
    m.add_adapter("a", config=config)
    m.set_active_adapters("a")
    _randomise_torch(m, ".adapters.a.")
    want = _torch_hidden(m, ids, mask)
    # ln_before makes the library's safetensors save fail (the LayerNorm is saved under two names)
    m.save_adapter(tmp_path / "a", "a", use_safetensors=not kw.get("ln_before"))

    bundle = read_adapterhub(tmp_path / "a")
    assert bundle.name == "a" and bundle.config.activation == config["non_linearity"].lower()
    model, params = build_model(bundle, bert_dir)
    _assert_close(_jadapt_out(model, params, ids, mask), want, differs_from=base)


def test_adapterhub_import_head_and_labels(bert_dir, tmp_path):
    adapters = _hub_configs()
    m = adapters.BertAdapterModel.from_pretrained(bert_dir)
    m.add_adapter("sst", config=adapters.SeqBnConfig(reduction_factor=4))
    m.add_classification_head("sst", num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"})
    m.set_active_adapters("sst")
    _randomise_torch(m, ".sst.")
    ids, mask = _inputs()
    want = _torch_logits(m, ids, mask)
    m.save_adapter(tmp_path / "sst", "sst", use_safetensors=True)

    bundle = read_adapterhub(tmp_path / "sst")
    assert bundle.head == HeadConfig(num_labels=3, pooling="cls", dense=True, dropout=0.1)
    assert bundle.label_names == ("neg", "neu", "pos")
    model, params = build_model(bundle, bert_dir)
    _assert_close(_jadapt_out(model, params, ids, mask), want)


def test_adapterhub_import_one_layer_head_bin(bert_dir, tmp_path):
    adapters = _hub_configs()
    m = adapters.BertAdapterModel.from_pretrained(bert_dir)
    m.add_adapter("t", config="double_seq_bn")
    m.add_classification_head("t", num_labels=4, layers=1)
    m.set_active_adapters("t")
    _randomise_torch(m, ".t.")
    ids, mask = _inputs()
    want = _torch_logits(m, ids, mask)
    m.save_adapter(tmp_path / "t", "t")  # pytorch_adapter.bin + pytorch_model_head.bin

    bundle = read_adapterhub(tmp_path / "t")
    assert bundle.head.dense is False and bundle.head.num_labels == 4
    model, params = build_model(bundle, bert_dir)
    _assert_close(_jadapt_out(model, params, ids, mask), want)


def test_adapterhub_import_roberta_regression_head(roberta_dir, tmp_path):
    adapters = _hub_configs()
    m = adapters.RobertaAdapterModel.from_pretrained(roberta_dir)
    m.add_adapter("r", config=adapters.DoubleSeqBnConfig(reduction_factor=4, ln_after=True))
    m.add_classification_head("r", num_labels=1)
    m.set_active_adapters("r")
    _randomise_torch(m, ".r.")
    ids, mask = _inputs(pad=1)
    want = _torch_logits(m, ids, mask)
    m.save_adapter(tmp_path / "r", "r", use_safetensors=True)

    bundle = read_adapterhub(tmp_path / "r")
    assert bundle.head.regression and bundle.model_type == "roberta"
    model, params = build_model(bundle, roberta_dir)
    _assert_close(_jadapt_out(model, params, ids, mask), want)


def test_adapterhub_import_minilm(minilm_dir, tmp_path):
    adapters = _hub_configs()
    m = adapters.BertAdapterModel.from_pretrained(minilm_dir)
    m.add_adapter("mini", config="seq_bn")
    m.add_classification_head("mini", num_labels=2)
    m.set_active_adapters("mini")
    _randomise_torch(m, ".mini.", std=0.1)
    ids, mask = _inputs(vocab=30522)
    want = _torch_logits(m, ids, mask)
    m.save_adapter(tmp_path / "mini", "mini", use_safetensors=True)

    model, params = build_model(read_adapterhub(tmp_path / "mini"), minilm_dir)
    _assert_close(_jadapt_out(model, params, ids, mask), want)


def test_adapterhub_config_dicts_match_the_library():
    from jadapt.interop.adapterhub import BN_DEFAULTS, config_to_adapterhub

    adapters = _hub_configs()
    required = {"mh_adapter", "output_adapter", "reduction_factor", "non_linearity"}
    assert set(adapters.BnConfig.__dataclass_fields__) == set(BN_DEFAULTS) | required
    for lib, method, width in ((adapters.SeqBnConfig(), "pfeiffer", 2), (adapters.DoubleSeqBnConfig(), "houlsby", 2),
                               (adapters.ParBnConfig(), "parallel", 16)):
        assert config_to_adapterhub(preset(method, bottleneck=width), 32) == lib.to_dict(), method


def test_import_and_export_commands_with_the_library(bert_dir, tmp_path):
    """``jadapt import`` a library-saved adapter, ``load_model`` it, ``jadapt export`` it back."""
    adapters = _hub_configs()
    pytest.importorskip("jadapt.checkpoint")
    from jadapt.checkpoint import load_model
    from jadapt.cli import main

    m = adapters.BertAdapterModel.from_pretrained(bert_dir)
    m.add_adapter("cli", config=adapters.DoubleSeqBnConfig(reduction_factor=4, ln_after=True))
    m.add_classification_head("cli", num_labels=2)
    m.set_active_adapters("cli")
    _randomise_torch(m, ".cli.")
    ids, mask = _inputs()
    want = _torch_logits(m, ids, mask)
    m.save_adapter(tmp_path / "hub", "cli")

    assert main(["import", str(tmp_path / "hub"), "--out", str(tmp_path / "ck"), "--model", str(bert_dir)]) == 0
    model, params, meta = load_model(tmp_path / "ck")
    _assert_close(_jadapt_out(model, params, ids, mask), want)

    assert main(["export", "--checkpoint", str(tmp_path / "ck"), "--format", "adapterhub",
                 "--out", str(tmp_path / "back")]) == 0
    m2 = adapters.BertAdapterModel.from_pretrained(bert_dir)
    m2.load_adapter(str(tmp_path / "back"), set_active=True)
    _assert_close(_torch_logits(m2, ids, mask), want)


# ---------------------------------------------------------------- jadapt -> AdapterHub
EXPORT_CASES = {
    "houlsby_ln": ("houlsby", dict(bottleneck=5, ln_before=True, ln_after=True, activation="gelu")),
    "pfeiffer_rf": ("pfeiffer", dict(bottleneck=None, reduction_factor=4.0, residual_before_ln=False)),
    "parallel": ("parallel", dict(bottleneck=6, ln_after=True, scaling=2.0)),
}


@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_adapterhub_export_loads_in_library(case, bert_dir, tmp_path):
    adapters = _hub_configs()
    method, kw = EXPORT_CASES[case]
    head = HeadConfig(num_labels=3, pooling="cls")
    model, params = _random_jadapt(bert_dir, "x", preset(method, **kw), head)
    ids, mask = _inputs()
    got = _jadapt_out(model, params, ids, mask)
    write_adapterhub(tmp_path / "x", bundle_from_params(model, params, "x", label_names=["a", "b", "c"]),
                     encoder_config=model.config)

    m = adapters.BertAdapterModel.from_pretrained(bert_dir)
    assert m.load_adapter(str(tmp_path / "x"), set_active=True) == "x"
    assert m.active_head == "x" and m.heads["x"].config["label2id"] == {"a": 0, "b": 1, "c": 2}
    _assert_close(got, _torch_logits(m, ids, mask))
    # the library's own view of the config equals what jadapt meant
    lib = m.adapters_config.get("x")
    assert lib["ln_before"] == kw.get("ln_before", False) and lib["is_parallel"] == (method == "parallel")


def test_adapterhub_export_minilm_no_head(minilm_dir, tmp_path):
    adapters = _hub_configs()
    model, params = _random_jadapt(minilm_dir, "m", preset("houlsby", bottleneck=24), std=0.05)
    ids, mask = _inputs(vocab=30522)
    got = _jadapt_out(model, params, ids, mask)
    write_adapterhub(tmp_path / "m", bundle_from_params(model, params, "m"), encoder_config=model.config)

    m = transformers.BertModel.from_pretrained(minilm_dir)
    adapters.init(m)
    m.load_adapter(str(tmp_path / "m"), set_active=True, use_safetensors=True)
    _assert_close(got, _torch_hidden(m, ids, mask))


def test_adapterhub_export_roberta_head(roberta_dir, tmp_path):
    adapters = _hub_configs()
    model, params = _random_jadapt(roberta_dir, "r", preset("pfeiffer", bottleneck=8),
                                   HeadConfig(num_labels=2, pooling="cls"))
    ids, mask = _inputs(pad=1)
    got = _jadapt_out(model, params, ids, mask)
    write_adapterhub(tmp_path / "r", bundle_from_params(model, params, "r"), encoder_config=model.config)
    m = adapters.RobertaAdapterModel.from_pretrained(roberta_dir)
    m.load_adapter(str(tmp_path / "r"), set_active=True)
    _assert_close(got, _torch_logits(m, ids, mask))


# ---------------------------------------------------------------- PEFT -> jadapt
def _peft():
    return pytest.importorskip("peft")


def test_peft_import_all_targets_no_head(bert_dir, tmp_path):
    peft = _peft()
    m = transformers.BertModel.from_pretrained(bert_dir)
    ids, mask = _inputs()
    base = _torch_hidden(m, ids, mask)
    p = peft.get_peft_model(m, peft.LoraConfig(r=4, lora_alpha=16, lora_dropout=0.1,
                                               target_modules=["query", "key", "value", "dense"]))
    _randomise_torch(p, "lora_", std=0.2)
    want = _torch_hidden(p, ids, mask)
    p.save_pretrained(tmp_path / "lora")

    with pytest.warns(UserWarning, match="pooler"):  # "dense" also hits the pooler, unused without a head
        bundle = read_peft(tmp_path / "lora")
    assert bundle.config.lora_targets == ("query", "key", "value", "attention_output", "intermediate", "output")
    assert bundle.config.lora_r == 4 and bundle.config.lora_scaling == 4.0 and bundle.config.dropout == 0.1
    model, params = build_model(bundle, bert_dir)
    _assert_close(_jadapt_out(model, params, ids, mask), want, differs_from=base)


@pytest.mark.parametrize("rslora", [False, True])
def test_peft_import_seq_cls_head(rslora, bert_dir, tmp_path):
    peft = _peft()
    m = transformers.BertForSequenceClassification.from_pretrained(bert_dir, num_labels=3)
    p = peft.get_peft_model(m, peft.LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=8, use_rslora=rslora,
                                               target_modules=["query", "value"]))
    _randomise_torch(p, "lora_", std=0.2)
    _randomise_torch(p, "classifier.modules_to_save", std=0.3)
    ids, mask = _inputs()
    want = _torch_logits(p, ids, mask)
    p.save_pretrained(tmp_path / "cls", safe_serialization=not rslora)  # rslora case: adapter_model.bin

    bundle = read_peft(tmp_path / "cls", name="cls")
    assert bundle.head == HeadConfig(num_labels=3, pooling="cls", dense=True)
    model, params = build_model(bundle, bert_dir)  # head/dense comes from the base's pooler
    _assert_close(_jadapt_out(model, params, ids, mask), want)


def test_peft_import_pooler_lora_folds_into_head(bert_dir, tmp_path):
    peft = _peft()
    m = transformers.BertForSequenceClassification.from_pretrained(bert_dir, num_labels=2)
    p = peft.get_peft_model(m, peft.LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=6,
                                               target_modules=["key", "dense"]))
    _randomise_torch(p, "lora_", std=0.3)
    ids, mask = _inputs()
    want = _torch_logits(p, ids, mask)
    p.save_pretrained(tmp_path / "pool")

    bundle = read_peft(tmp_path / "pool", base_model=bert_dir)
    assert "head" in bundle.params and "dense" in bundle.params["head"]
    model, params = build_model(bundle, bert_dir)
    _assert_close(_jadapt_out(model, params, ids, mask), want)


def test_peft_import_roberta_seq_cls(roberta_dir, tmp_path):
    peft = _peft()
    m = transformers.RobertaForSequenceClassification.from_pretrained(roberta_dir, num_labels=2)
    p = peft.get_peft_model(m, peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8,
                                               target_modules=["query", "value", "output.dense"]))
    _randomise_torch(p, "lora_", std=0.2)
    _randomise_torch(p, "classifier.modules_to_save", std=0.3)
    ids, mask = _inputs(pad=1)
    want = _torch_logits(p, ids, mask)
    p.save_pretrained(tmp_path / "rob")

    bundle = read_peft(tmp_path / "rob")
    assert set(bundle.config.lora_targets) == {"query", "value", "attention_output", "output"}
    model, params = build_model(bundle, roberta_dir)
    _assert_close(_jadapt_out(model, params, ids, mask), want)


def test_peft_import_minilm(minilm_dir, tmp_path):
    peft = _peft()
    m = transformers.BertModel.from_pretrained(minilm_dir)
    p = peft.get_peft_model(m, peft.LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"]))
    _randomise_torch(p, "lora_", std=0.05)
    ids, mask = _inputs(vocab=30522)
    want = _torch_hidden(p, ids, mask)
    p.save_pretrained(tmp_path / "mini")
    model, params = build_model(read_peft(tmp_path / "mini"), minilm_dir)
    _assert_close(_jadapt_out(model, params, ids, mask), want)


# ---------------------------------------------------------------- jadapt -> PEFT
def test_peft_export_no_head(bert_dir, tmp_path):
    peft = _peft()
    cfg = preset("lora", lora_r=4, lora_alpha=12.0, lora_targets=("key", "attention_output", "intermediate", "output"))
    model, params = _random_jadapt(bert_dir, "l", cfg, std=0.2)
    ids, mask = _inputs()
    got = _jadapt_out(model, params, ids, mask)
    write_peft(tmp_path / "l", bundle_from_params(model, params, "l"), encoder_config=model.config)

    p = peft.PeftModel.from_pretrained(transformers.BertModel.from_pretrained(bert_dir), str(tmp_path / "l"))
    wrapped = {n for n, _ in p.named_modules() if n.endswith("lora_A")}
    assert len(wrapped) == 2 * 4  # exactly the jadapt targets: "output.dense" did not catch attention.output
    _assert_close(got, _torch_hidden(p, ids, mask))


def test_peft_export_head_and_layer_norms(bert_dir, tmp_path):
    peft = _peft()
    cfg = preset("lora", lora_r=4, lora_alpha=8.0, lora_targets=("query", "value"))
    model, params = _random_jadapt(bert_dir, "c", cfg, HeadConfig(num_labels=3, pooling="cls"),
                                   also="attention_layer_norm", std=0.2)
    ids, mask = _inputs()
    got = _jadapt_out(model, params, ids, mask)
    bundle = bundle_from_params(model, params, "c")
    ln = tree.select(params, r"attention_layer_norm")  # trained LayerNorms travel as modules_to_save
    bundle = bundle.__class__(**{**bundle.__dict__, "params": tree.merge(bundle.params, ln)})
    write_peft(tmp_path / "c", bundle, encoder_config=model.config)

    m = transformers.BertForSequenceClassification.from_pretrained(bert_dir, num_labels=3)
    p = peft.PeftModel.from_pretrained(m, str(tmp_path / "c"))
    _assert_close(got, _torch_logits(p, ids, mask))


def test_peft_export_roberta_head(roberta_dir, tmp_path):
    peft = _peft()
    cfg = preset("lora", lora_r=2, lora_alpha=4.0, lora_targets=("query", "key", "value", "output"), dropout=0.1)
    model, params = _random_jadapt(roberta_dir, "r", cfg, HeadConfig(num_labels=2, pooling="cls"), std=0.2)
    ids, mask = _inputs(pad=1)
    got = _jadapt_out(model, params, ids, mask)
    write_peft(tmp_path / "r", bundle_from_params(model, params, "r"), encoder_config=model.config)
    m = transformers.RobertaForSequenceClassification.from_pretrained(roberta_dir, num_labels=2)
    p = peft.PeftModel.from_pretrained(m, str(tmp_path / "r"))
    _assert_close(got, _torch_logits(p, ids, mask))


def test_peft_export_minilm(minilm_dir, tmp_path):
    peft = _peft()
    cfg = preset("lora", lora_r=8, lora_alpha=16.0, lora_targets=("query", "value", "intermediate"))
    model, params = _random_jadapt(minilm_dir, "m", cfg, std=0.05)
    ids, mask = _inputs(vocab=30522)
    got = _jadapt_out(model, params, ids, mask)
    write_peft(tmp_path / "m", bundle_from_params(model, params, "m"), encoder_config=model.config)
    p = peft.PeftModel.from_pretrained(transformers.BertModel.from_pretrained(minilm_dir), str(tmp_path / "m"))
    _assert_close(got, _torch_hidden(p, ids, mask))
