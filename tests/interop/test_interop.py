"""jadapt.interop without the PyTorch libraries: round trips through the AdapterHub and PEFT
file formats (bitwise), config translation, refusals that name the option, and the
``jadapt import`` / ``jadapt export`` commands. Parity against the real libraries lives in
test_interop_parity.py.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from jadapt import tree
from jadapt.adapters.config import AdapterConfig, preset
from jadapt.interop import (AdapterBundle, build_model, detect_format, read_adapter, read_adapterhub, read_peft,
                            write_adapterhub, write_peft)
from jadapt.interop.adapterhub import config_from_adapterhub, config_to_adapterhub, reduction_factor_for
from jadapt.interop.peft import config_from_peft, config_to_peft
from jadapt.models.config import EncoderConfig
from jadapt.models.model import AdapterModel, HeadConfig
from jadapt.param_paths import adapter_pattern
from jadapt.models.pretrained import param_shapes

ENC = EncoderConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                    max_position_embeddings=64)


def random_bundle(name, cfg, head=None, *, enc=ENC, also=None, seed=0, model_type="bert", labels=None):
    """A bundle with every leaf of adapter ``name`` (+ head, + params matching ``also``) random."""
    shapes = param_shapes(AdapterModel(enc, adapters=((name, cfg),), active=(name,), head=head))
    pick = re.compile("|".join([adapter_pattern(name)] + (["^head/"] if head else []) + ([also] if also else [])))
    rng = np.random.default_rng(seed)
    sub = {p: (rng.standard_normal(s) + p.endswith("/scale")).astype(np.float32)
           for p, s in shapes.items() if pick.search(p)}
    return AdapterBundle(name, cfg, tree.unflatten(sub), head, labels, None, model_type)


def assert_same_params(a: dict, b: dict):
    fa, fb = tree.flatten(a), tree.flatten(b)
    assert sorted(fa) == sorted(fb)
    for p in fa:
        x, y = np.asarray(fa[p]), np.asarray(fb[p])
        assert x.dtype == y.dtype == np.float32 and x.shape == y.shape, p
        assert np.array_equal(x, y), f"{p} differs"  # bitwise: no rounding on the way


def function_fields(cfg: AdapterConfig, hidden=ENC.hidden_size) -> dict:
    """The fields that decide what an adapter computes (not how it trains or is named)."""
    d = cfg.to_dict()
    d["bottleneck"], d["reduction_factor"] = cfg.size(hidden), None
    d.pop("train_layer_norms")
    return d


# ---------------------------------------------------------------- AdapterHub round trips
HUB_CONFIGS = {
    "pfeiffer": preset("pfeiffer", bottleneck=8),
    "houlsby_ln": preset("houlsby", bottleneck=5, ln_before=True, ln_after=True, activation="gelu",
                         adapter_residual_before_ln=True),
    "parallel": preset("parallel", bottleneck=None, reduction_factor=3.0, ln_after=True, scaling=2.5),
    "attn_only": preset("pfeiffer", bottleneck=4, mh_adapter=True, output_adapter=False, residual_before_ln=False,
                        original_ln_after=False, init="houlsby", dropout=0.1),
}
HEADS = {"none": None, "dense": HeadConfig(num_labels=3, pooling="cls"),
         "one_layer": HeadConfig(num_labels=2, pooling="cls", dense=False, dropout=0.2),
         "regression": HeadConfig(num_labels=1, regression=True, pooling="cls")}


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("case", sorted(HUB_CONFIGS))
def test_adapterhub_round_trip_is_bitwise(case, head, tmp_path):
    cfg, head_cfg = HUB_CONFIGS[case], HEADS[head]
    labels = ("x", "y", "z") if head == "dense" else None
    bundle = random_bundle("task", cfg, head_cfg, labels=labels)
    write_adapterhub(tmp_path / "hub", bundle, encoder_config=ENC)

    assert detect_format(tmp_path / "hub") == "adapterhub"
    back = read_adapterhub(tmp_path / "hub")
    assert_same_params(back.params, bundle.params)
    assert function_fields(back.config) == function_fields(cfg)
    assert back.head == head_cfg and back.label_names == labels and back.name == "task"
    # what the library would see: the full BnConfig dict, sorted, scaling a float
    saved = json.loads((tmp_path / "hub" / "adapter_config.json").read_text())
    assert saved["name"] == "task" and saved["hidden_size"] == 32 and saved["version"].startswith("adapters.")
    assert isinstance(saved["config"]["scaling"], float) and saved["config"]["phm_layer"] is False
    assert max(1, int(32 // saved["config"]["reduction_factor"])) == cfg.size(32)


def test_adapterhub_round_trip_again_gives_identical_files(tmp_path):
    bundle = random_bundle("a", HUB_CONFIGS["houlsby_ln"], HEADS["dense"])
    write_adapterhub(tmp_path / "one", bundle, encoder_config=ENC)
    write_adapterhub(tmp_path / "two", read_adapterhub(tmp_path / "one"), encoder_config=ENC)
    for f in ("adapter_config.json", "adapter.safetensors", "head_config.json", "model_head.safetensors"):
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f


def test_adapterhub_ln_before_saved_under_both_names(tmp_path):
    from safetensors.numpy import load_file

    bundle = random_bundle("a", HUB_CONFIGS["houlsby_ln"])
    write_adapterhub(tmp_path / "h", bundle, encoder_config=ENC)
    t = load_file(str(tmp_path / "h" / "adapter.safetensors"))
    k = "encoder.layer.1.attention.output.adapters.a."
    assert t[k + "adapter_down.0.weight"].shape == (32,) and t[k + "adapter_down.1.weight"].shape == (5, 32)
    np.testing.assert_array_equal(t[k + "adapter_norm_before.weight"], t[k + "adapter_down.0.weight"])
    # torch layout: Linear weights are [out, in], the transpose of jadapt's kernels
    np.testing.assert_array_equal(t[k + "adapter_up.weight"], bundle.params["encoder"]["layer_1"]["attn_adapter"]["a"]
                                  ["up"]["kernel"].T)


def test_adapterhub_disagreeing_layer_norm_copies_are_refused(tmp_path):
    from safetensors.numpy import load_file, save_file

    write_adapterhub(tmp_path / "h", random_bundle("a", HUB_CONFIGS["houlsby_ln"]), encoder_config=ENC)
    f = tmp_path / "h" / "adapter.safetensors"
    t = load_file(str(f))
    t["encoder.layer.0.output.adapters.a.adapter_norm_before.bias"] += 1.0
    save_file(t, str(f))
    with pytest.raises(ValueError, match="adapter_norm_before.bias disagrees"):
        read_adapterhub(tmp_path / "h")


# ---------------------------------------------------------------- AdapterHub configs
def test_named_adapterhub_configs_match_the_presets():
    for name, method in (("seq_bn", "pfeiffer"), ("double_seq_bn", "houlsby"), ("par_bn", "parallel")):
        got = config_from_adapterhub(name, bottleneck=4)
        want = preset(method, bottleneck=4, train_layer_norms=False)
        assert got == want, name


@pytest.mark.parametrize("option,value,named", [
    ("phm_layer", True, "phm_layer=True"),
    ("use_gating", True, "use_gating=True"),
    ("scaling", "learned", "scaling='learned'"),
    ("scaling", "channel", "scaling='channel'"),
    ("inv_adapter", "nice", "inv_adapter='nice'"),
    ("leave_out", [0], "leave_out=[0]"),
    ("stochastic_depth", 0.1, "stochastic_depth=0.1"),
    ("residual_before_ln", "post_add", "residual_before_ln='post_add'"),
    ("reduction_factor", {"0": 8, "default": 16}, "per-layer bottleneck sizes"),
    ("non_linearity", "mish", "non_linearity='mish'"),
    ("init_weights", "lora", "init_weights='lora'"),
])
def test_unsupported_adapterhub_options_are_named(option, value, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        config_from_adapterhub({**config_to_adapterhub(preset("pfeiffer"), 32), option: value})


@pytest.mark.parametrize("arch", ["prefix_tuning", "lora", "prompt_tuning", "union"])
def test_non_bottleneck_adapterhub_architectures_are_refused(arch):
    with pytest.raises(ValueError, match=f"architecture='{arch}'"):
        config_from_adapterhub({"architecture": arch, "r": 8})


def test_adapterhub_lora_folder_is_refused_by_its_config(tmp_path):
    from safetensors.numpy import save_file

    (tmp_path / "l").mkdir()
    (tmp_path / "l" / "adapter_config.json").write_text(json.dumps(
        {"config": {"architecture": "lora", "r": 8, "alpha": 8}, "name": "l", "hidden_size": 32, "model_type": "bert",
         "version": "adapters.1.3.0"}))
    save_file({"encoder.layer.0.attention.self.query.loras.l.lora_A": np.zeros((8, 32), np.float32)},
              str(tmp_path / "l" / "adapter.safetensors"))
    with pytest.raises(ValueError, match="architecture='lora'.*LoRA comes through PEFT"):
        read_adapter(tmp_path / "l")


def test_all_refusals_come_in_one_error():
    bad = {**config_to_adapterhub(preset("pfeiffer"), 32), "phm_layer": True, "use_gating": True, "scaling": "learned"}
    with pytest.raises(ValueError) as e:
        config_from_adapterhub(bad)
    assert all(s in str(e.value) for s in ("phm_layer", "use_gating", "scaling"))


def test_legacy_activation_names():
    old = {**config_to_adapterhub(preset("pfeiffer"), 32), "non_linearity": "gelu"}
    assert config_from_adapterhub(old, legacy=True).activation == "gelu_new"  # pre-"version" files meant tanh-GELU
    assert config_from_adapterhub(old).activation == "gelu"
    assert config_from_adapterhub({**old, "non_linearity": "gelu_orig"}, legacy=True).activation == "gelu"


@pytest.mark.parametrize("hidden", [32, 100, 384, 768, 1000])
def test_reduction_factor_reproduces_every_width(hidden):
    for width in range(1, 2 * hidden + 1):
        r = reduction_factor_for(hidden, width)
        assert max(1, int(hidden // r)) == width, (hidden, width, r)
        assert json.loads(json.dumps(r)) == r  # survives the JSON file exactly
    assert reduction_factor_for(hidden, hidden // 16, 16) == 16


def test_lora_cannot_go_to_adapterhub_and_bottleneck_cannot_go_to_peft(tmp_path):
    with pytest.raises(ValueError, match="--format peft"):
        write_adapterhub(tmp_path / "a", random_bundle("l", preset("lora")), encoder_config=ENC)
    with pytest.raises(ValueError, match="--format adapterhub"):
        write_peft(tmp_path / "b", random_bundle("b", preset("pfeiffer", bottleneck=4)), encoder_config=ENC)


def test_adapterhub_refuses_trained_layer_norms_unless_told(tmp_path):
    bundle = random_bundle("h", preset("houlsby", bottleneck=4), also=r"attention_layer_norm")
    with pytest.raises(ValueError, match="outside the adapter and head.*--drop-unsupported"):
        write_adapterhub(tmp_path / "a", bundle, encoder_config=ENC)
    with pytest.warns(UserWarning, match="left out"):
        write_adapterhub(tmp_path / "a", bundle, encoder_config=ENC, strict=False)
    assert "attention_layer_norm" not in str(tree.paths(read_adapterhub(tmp_path / "a").params))


def test_mean_pooling_head_is_left_out_with_a_warning(tmp_path):
    """A default-trained (mean-pooling) checkpoint exports its adapter; the head, which
    AdapterHub cannot express, is left out and the warning says so, strict or not."""
    bundle = random_bundle("m", preset("pfeiffer", bottleneck=4), HeadConfig(num_labels=2, pooling="mean"))
    for strict, out in ((True, tmp_path / "a"), (False, tmp_path / "b")):
        with pytest.warns(UserWarning, match="head not exported: it pools by 'mean'.*--pooling cls"):
            write_adapterhub(out, bundle, encoder_config=ENC, strict=strict)
        back = read_adapterhub(out)
        assert back.head is None
        for p, x in tree.flatten(bundle.params).items():
            if not p.startswith("head/"):
                np.testing.assert_array_equal(tree.flatten(back.params)[p], x)


# ---------------------------------------------------------------- PEFT round trips and configs
PEFT_CASES = {
    "qv": (preset("lora", lora_r=4, lora_alpha=8.0), None, None),
    "all_targets_head": (preset("lora", lora_r=2, lora_alpha=5.0, dropout=0.1,
                                lora_targets=("query", "key", "value", "attention_output", "intermediate", "output")),
                         HeadConfig(num_labels=3, pooling="cls"), None),
    "output_only_with_layer_norms": (preset("lora", lora_r=3, lora_targets=("output",)), None,
                                     r"attention_layer_norm|output_layer_norm"),
}


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
@pytest.mark.parametrize("case", sorted(PEFT_CASES))
def test_peft_round_trip_is_bitwise(case, model_type, tmp_path):
    cfg, head, also = PEFT_CASES[case]
    bundle = random_bundle("lo", cfg, head, also=also, model_type=model_type)
    write_peft(tmp_path / "lo", bundle, encoder_config=ENC)

    assert detect_format(tmp_path / "lo") == "peft"
    back = read_peft(tmp_path / "lo")
    assert back.name == "lo" and back.config == cfg and back.head == head
    assert_same_params(back.params, bundle.params)


def test_peft_target_regex_matches_exactly_the_targets():
    cfg = preset("lora", lora_targets=("output",))
    rx = config_to_peft(cfg)["target_modules"]
    assert re.fullmatch(rx, "bert.encoder.layer.3.output.dense")
    assert re.fullmatch(rx, "encoder.layer.11.output.dense")
    assert not re.fullmatch(rx, "encoder.layer.3.attention.output.dense")
    assert not re.fullmatch(rx, "pooler.dense")
    assert config_from_peft(config_to_peft(cfg)) == cfg  # the regex reads back to the same targets


def test_peft_config_options():
    base = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["query", "value"], "bias": "none"}
    assert config_from_peft(base).lora_scaling == 2.0
    rs = config_from_peft({**base, "use_rslora": True})
    assert rs.lora_scaling == pytest.approx(8 / 2.0, rel=1e-12)  # alpha / sqrt(r)
    assert config_from_peft({**base, "target_modules": ["dense"]}).lora_targets == (
        "attention_output", "intermediate", "output")
    assert config_from_peft({**base, "fan_in_fan_out": True, "lora_dropout": 0.05}).dropout == 0.05


@pytest.mark.parametrize("option,value,named", [
    ("use_dora", True, "DoRA"),
    ("bias", "all", "bias='all'"),
    ("bias", "lora_only", "bias='lora_only'"),
    ("lora_bias", True, "lora_bias"),
    ("layers_to_transform", [0], "layers_to_transform"),
    ("rank_pattern", {"query": 8}, "rank_pattern"),
    ("alpha_pattern", {"query": 8}, "alpha_pattern"),
    ("init_lora_weights", "loftq", "loftq"),
])
def test_unsupported_peft_options_are_named(option, value, named):
    c = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["query"], option: value}
    with pytest.raises(ValueError, match=re.escape(named)):
        config_from_peft(c)


def test_peft_non_lora_is_refused():
    with pytest.raises(ValueError, match="peft_type='IA3'"):
        config_from_peft({"peft_type": "IA3", "target_modules": ["query"]})


def test_peft_refused_before_weights_are_read(tmp_path):
    write_peft(tmp_path / "p", random_bundle("p", preset("lora")), encoder_config=ENC)
    cfg = json.loads((tmp_path / "p" / "adapter_config.json").read_text())
    (tmp_path / "p" / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(ValueError, match="DoRA"):
        read_adapter(tmp_path / "p")


def test_peft_lora_on_some_layers_only_is_refused(tmp_path):
    from safetensors.numpy import load_file, save_file

    write_peft(tmp_path / "p", random_bundle("p", preset("lora")), encoder_config=ENC)
    f = tmp_path / "p" / "adapter_model.safetensors"
    save_file({k: v for k, v in load_file(str(f)).items() if ".layer.1.attention.self.value" not in k}, str(f))
    with pytest.raises(ValueError, match="every layer, every target"):
        read_peft(tmp_path / "p")


# ---------------------------------------------------------------- against a base model
def test_build_model_needs_every_adapter_leaf(tiny_model_dir, tmp_path):
    bundle = random_bundle("a", preset("pfeiffer", bottleneck=4))
    flat = tree.flatten(bundle.params)
    partial = {p: x for p, x in flat.items() if "layer_1" not in p}
    with pytest.raises(ValueError, match="in neither the base model nor the adapter"):
        build_model(AdapterBundle("a", bundle.config, tree.unflatten(partial)), tiny_model_dir)
    with pytest.raises(ValueError, match=r"shape \(32, 8\) in the adapter != \(32, 4\) in the model"):
        wrong = random_bundle("a", preset("pfeiffer", bottleneck=8))
        build_model(AdapterBundle("a", bundle.config, wrong.params), tiny_model_dir)
    with pytest.raises(ValueError, match="names no base model"):
        build_model(bundle)


def test_imported_head_dense_defaults_to_the_pooler(tiny_model_dir):
    from jadapt.models.hf import read_state_dict

    bundle = random_bundle("a", preset("lora"), HeadConfig(num_labels=2, pooling="cls"))
    no_dense = tree.unflatten({p: x for p, x in tree.flatten(bundle.params).items() if "head/dense" not in p})
    model, params = build_model(AdapterBundle("a", bundle.config, no_dense, bundle.head), tiny_model_dir)
    pooler = read_state_dict(tiny_model_dir)["pooler.dense.weight"]
    np.testing.assert_array_equal(np.asarray(params["head"]["dense"]["kernel"]), pooler.T)


def test_written_adapter_computes_the_same_function(tiny_model_dir, tmp_path):
    """jadapt -> AdapterHub files -> jadapt gives the same logits on a real base."""
    import jax
    import jax.numpy as jnp

    enc = EncoderConfig.from_pretrained(tiny_model_dir)
    bundle = random_bundle("a", HUB_CONFIGS["parallel"], HEADS["dense"], enc=enc)
    model, params = build_model(bundle, tiny_model_dir)
    write_adapterhub(tmp_path / "h", bundle, encoder_config=model.config)
    model2, params2 = build_model(read_adapterhub(tmp_path / "h"), tiny_model_dir)
    # the same function (bottleneck=10 now says what reduction_factor=3 said), so one forward serves both
    assert function_fields(dict(model2.adapters)["a"]) == function_fields(dict(model.adapters)["a"])
    assert model2.clone(adapters=model.adapters) == model
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 1000, (2, 9)))
    forward = jax.jit(lambda p: model.apply({"params": p}, ids, jnp.ones_like(ids)))
    np.testing.assert_array_equal(np.asarray(forward(params)), np.asarray(forward(params2)))


# ---------------------------------------------------------------- the commands
def test_import_export_commands_round_trip(tiny_model_dir, tmp_path):
    pytest.importorskip("jadapt.checkpoint")
    from jadapt.checkpoint import load_adapter, load_model
    from jadapt.cli import main

    enc = EncoderConfig.from_pretrained(tiny_model_dir)
    bundle = random_bundle("sst", HUB_CONFIGS["houlsby_ln"], HEADS["dense"], enc=enc, labels=("a", "b", "c"))
    write_adapterhub(tmp_path / "hub", bundle, encoder_config=enc)

    assert main(["import", str(tmp_path / "hub"), "--out", str(tmp_path / "ck"), "--model", str(tiny_model_dir)]) == 0
    saved, meta = load_adapter(tmp_path / "ck")
    assert meta["adapters"][0][0] == "sst" and meta["label_names"] == ["a", "b", "c"]
    assert meta["imported_from"]["format"] == "adapterhub"
    assert json.loads((tmp_path / "ck" / "metrics.json").read_text())["adapter"] == "sst"
    for p, x in tree.flatten(bundle.params).items():
        np.testing.assert_array_equal(np.asarray(tree.flatten(saved)[p]), x)
    model, params, _ = load_model(tmp_path / "ck")
    assert model.head == bundle.head

    assert main(["export", "--checkpoint", str(tmp_path / "ck"), "--format", "adapterhub",
                 "--out", str(tmp_path / "back")]) == 0
    assert_same_params(read_adapterhub(tmp_path / "back").params, bundle.params)
    # a bottleneck adapter has no PEFT form: one clear error, exit status 2
    assert main(["export", "--checkpoint", str(tmp_path / "ck"), "--format", "peft",
                 "--out", str(tmp_path / "peft")]) == 2


def test_import_command_peft_and_errors(tiny_model_dir, tmp_path, capsys):
    pytest.importorskip("jadapt.checkpoint")
    from jadapt.checkpoint import load_model
    from jadapt.cli import main

    enc = EncoderConfig.from_pretrained(tiny_model_dir)
    bundle = random_bundle("lo", preset("lora", lora_targets=("key", "intermediate")), enc=enc)
    write_peft(tmp_path / "lo", bundle, encoder_config=enc)
    assert main(["import", str(tmp_path / "lo"), "--out", str(tmp_path / "ck"), "--model", str(tiny_model_dir),
                 "--name", "mine"]) == 0
    model, params, meta = load_model(tmp_path / "ck")
    assert dict(model.adapters)["mine"].lora_targets == ("key", "intermediate")
    assert main(["export", "--checkpoint", str(tmp_path / "ck"), "--format", "peft",
                 "--out", str(tmp_path / "p2")]) == 0
    back = read_peft(tmp_path / "p2", name="lo")
    assert_same_params(back.params, bundle.params)

    capsys.readouterr()
    assert main(["import", str(tmp_path / "lo"), "--out", str(tmp_path / "x")]) == 2  # no base model named
    assert "--model" in capsys.readouterr().err
    assert main(["import", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "adapter_config.json").write_text("{}")
    assert main(["import", str(tmp_path / "junk"), "--out", str(tmp_path / "x")]) == 2
