"""AdapterFusion: config validation, identities, param paths, frozen training, regulariser,
and parity with AdapterHub's ``BertFusion`` (layer and whole model) on random weights."""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jadapt import tree
from jadapt.adapters.config import preset
from jadapt.fusion import (
    FusionConfig,
    FusionLayer,
    fuse,
    fusion_params,
    fusion_preset,
    fusion_state,
    regularization_loss,
    unfuse,
)
from jadapt.models.config import EncoderConfig
from jadapt.models.hf import convert_state_dict
from jadapt.models.model import AdapterModel, HeadConfig
from jadapt.models.pretrained import init_params, param_shapes
from jadapt.train.optim import trainable_labels, trainable_rules

TINY = EncoderConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                     max_position_embeddings=64)


def _ids(b=2, s=7, seed=0):
    ids = jax.random.randint(jax.random.key(seed), (b, s), 1, TINY.vocab_size)
    mask = jnp.ones((b, s), jnp.int32).at[1, s - 2:].set(0)
    return ids, mask


def _model(method="pfeiffer", names=("a", "b", "c"), active=("a",), head=True):
    cfg = preset(method, bottleneck=8)
    return AdapterModel(TINY, adapters=tuple((n, cfg) for n in names), active=active,
                        head=HeadConfig(num_labels=3) if head else None)


def _perturb(params, pattern, key, std=0.1):
    flat = tree.flatten(params)
    keys = jax.random.split(key, len(flat))
    return tree.unflatten({p: x + std * jax.random.normal(k, x.shape) if tree.matching([p], pattern) else x
                           for k, (p, x) in zip(keys, flat.items())})


@pytest.fixture(scope="module")
def base():
    """{method: (model with adapters a, b, c (a active) and a head, params)}."""
    out = {}
    for method in ("pfeiffer", "houlsby"):
        model = _model(method)
        out[method] = (model, init_params(model, jax.random.key(0)))
    return out


@pytest.fixture(scope="module")
def fused_houlsby(base):
    model, params = base["houlsby"]
    return fuse(model, params, ("a", "b", "c"), "dynamic", jax.random.key(1))


# ---------------------------------------------------------------- config


def test_presets_match_adapterhub_defaults():
    dyn, static = fusion_preset("dynamic"), fusion_preset("static")
    assert dyn == FusionConfig()
    assert (dyn.key, dyn.query, dyn.value, dyn.regularization, dyn.value_initialized) == (True,) * 5
    assert (static.value, static.regularization, static.value_initialized) == (False,) * 3
    for c in (dyn, static):
        assert not (c.query_before_ln or c.residual_before or c.temperature)
        assert c.value_before_softmax and c.dropout_prob is None
    assert FusionConfig.from_dict({**dyn.to_dict(), "architecture": "fusion"}) == dyn


@pytest.mark.parametrize("kw, field", [
    (dict(dropout_prob=1.0), "dropout_prob"),
    (dict(value=False), "regularization"),
    (dict(value=False, regularization=False), "value_initialized"),
    (dict(query=1), "query"),
])
def test_config_validation_names_field(kw, field):
    with pytest.raises(ValueError, match=field):
        FusionConfig(**kw)
    with pytest.raises(ValueError, match="static"):
        fusion_preset("nope")


# ---------------------------------------------------------------- layer


def _layer_inputs(k=3, d=16, seed=0):
    ks = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(ks[0], (2, 5, d)), jax.random.normal(ks[1], (2, 5, k, d)),
            jax.random.normal(ks[2], (2, 5, d)))


def test_value_init_is_adapterhub_identity_and_qk_bert_init():
    q, ups, r = _layer_inputs(d=64)
    params = FusionLayer(FusionConfig()).init(jax.random.key(0), q, ups, r)["params"]
    v = params["value"]["kernel"]
    np.testing.assert_array_equal(np.diag(v), 1.0)
    np.testing.assert_array_equal(v[~np.eye(64, dtype=bool)], np.float32(1e-6))
    assert "bias" not in params["value"]
    for n in ("query", "key"):
        assert np.all(params[n]["bias"] == 0)
        assert abs(float(params[n]["kernel"].std()) - 0.02) < 0.002


@pytest.mark.parametrize("method", ["pfeiffer", "houlsby"])
def test_identical_adapters_with_identity_value_equal_single(base, method):
    """K copies of one adapter, V = I, uniform attention: fusion = that adapter's
    up-projection + residual = the single adapter's output; at model level, for both
    adapter placements (query / residual taken before or after the original LayerNorm)."""
    single, params = base[method]
    params = _perturb(params, r"_adapter/a/", jax.random.key(1), 0.2)
    copies = {p.replace("/a/", f"/{n}/"): x for p, x in tree.flatten(params).items() if "/a/" in p for n in "bc"}
    params = tree.merge(params, tree.unflatten(copies))
    fused, fparams = fuse(single, params, ("a", "b", "c"), "dynamic", jax.random.key(2))

    def identity_uniform(p, x):  # V = I; Q = 0 makes every score 0, so attention is uniform
        if p.endswith("fusion/value/kernel"):
            return jnp.eye(x.shape[0])
        return jnp.zeros_like(x) if "fusion/query/" in p else x

    fparams = tree.map_with_path(identity_uniform, fparams)
    ids, mask = _ids()
    run_single = jax.jit(functools.partial(single.apply, return_hidden=True))
    run_fused = jax.jit(functools.partial(fused.apply, return_hidden=True))
    want = run_single({"params": params}, ids, mask)
    chex.assert_trees_all_close(run_fused({"params": fparams}, ids, mask), want, atol=1e-5, rtol=1e-5)
    # distinct adapters do change the output (so this test can fail)
    other = _perturb(fparams, r"_adapter/b/up/", jax.random.key(3), 0.5)
    assert not np.allclose(run_fused({"params": other}, ids, mask)[1][-1], want[1][-1], atol=1e-3)


def test_uniform_attention_averages_adapters():
    q, ups, r = _layer_inputs()
    layer = FusionLayer(fusion_preset("static"))
    params = layer.init(jax.random.key(0), q, ups, r)["params"]
    params = jax.tree.map(jnp.zeros_like, params)  # Q = K = 0: scores 0, uniform softmax
    out, state = layer.apply({"params": params}, q, ups, r, mutable=["intermediates"])
    chex.assert_trees_all_close(out, ups.mean(-2) + r, atol=1e-6)
    probs = state["intermediates"]["attention"][0]
    chex.assert_trees_all_close(probs, jnp.full((2, 5, 3), 1 / 3), atol=1e-6)


def test_temperature_state_follows_schedule():
    q, ups, r = _layer_inputs()
    layer = FusionLayer(fusion_preset("dynamic", temperature=True))
    variables = layer.init(jax.random.key(0), q, ups, r)
    assert float(variables["fusion_state"]["temperature"]) == 50.0
    state = {"fusion_state": variables["fusion_state"]}
    for want in (49.95, 49.9):
        _, state = layer.apply({"params": variables["params"], **state}, q, ups, r, mutable=["fusion_state"])
        assert abs(float(state["fusion_state"]["temperature"]) - want) < 1e-4
    # without state T = 1 (the schedule's end): differs from T = 50
    cold = layer.apply({"params": variables["params"]}, q, ups, r)
    hot = layer.apply(variables, q, ups, r)
    assert not np.allclose(cold, hot)


# ---------------------------------------------------------------- setup / params


def test_fuse_param_paths_and_untouched_params(base, fused_houlsby):
    _, params = base["houlsby"]
    fused, fparams = fused_houlsby
    assert fused.active == ("a", "b", "c") and fused.fusion.dropout_prob == TINY.attention_dropout
    want = {f"encoder/layer_{i}/{s}/fusion/{m}/{w}" for i in range(2) for s in ("attn_adapter", "ffn_adapter")
            for m, w in (("query", "kernel"), ("query", "bias"), ("key", "kernel"), ("key", "bias"),
                         ("value", "kernel"))}
    assert set(tree.flatten(fusion_params(fparams))) == want
    assert set(tree.flatten(fparams)) - want == set(tree.flatten(params))
    chex.assert_trees_all_equal(tree.select(fparams, r"^(?!.*/fusion/)"), params)
    assert set(param_shapes(fused)) == set(tree.flatten(fparams))
    sites = [v for p, v in tree.flatten(fparams).items() if p.endswith("fusion/query/kernel")]
    assert not np.allclose(sites[0], sites[1])  # each site has its own init key
    static, sparams = fuse(fused, fparams, ("a", "b"), "static", jax.random.key(1))
    assert not [p for p in tree.flatten(sparams) if "/value/" in p and "fusion" in p]
    assert set(param_shapes(static)) == set(tree.flatten(sparams))
    back, bparams = unfuse(fused, fparams, ("a",))
    assert back.fusion is None and set(tree.flatten(bparams)) == set(tree.flatten(params))


def test_fuse_rejects_bad_names(base):
    model, params = base["pfeiffer"]
    for names, msg in ((("a",), "two distinct"), (("a", "zz"), "unknown"), (("a", "a"), "two distinct")):
        with pytest.raises(ValueError, match=msg):
            fuse(model, params, names, "dynamic", jax.random.key(0))
    mixed = model.clone(adapters=model.adapters + (("h", preset("houlsby", bottleneck=8)),))
    with pytest.raises(ValueError, match="same sites"):
        fuse(mixed, params, ("a", "h"), "dynamic", jax.random.key(0))


def test_only_fusion_and_head_train(fused_houlsby):
    model, params = fused_houlsby
    labels = trainable_labels(params, trainable_rules("fusion"))
    tx = optax.multi_transform({"decay": optax.adam(1e-2), "no_decay": optax.adam(1e-2),
                                "frozen": optax.set_to_zero()}, labels)
    opt_state = tx.init(params)
    ids, mask = _ids()
    y = jnp.array([0, 2])

    def loss_fn(p):
        logits = model.apply({"params": p}, ids, mask, deterministic=False, rngs={"dropout": jax.random.key(0)})
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean() + regularization_loss(p)

    @jax.jit
    def step(p, s):
        g = jax.grad(loss_fn)(p)
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), g

    new, grads = step(params, opt_state)
    flat_old, flat_new, flat_g = tree.flatten(params), tree.flatten(new), tree.flatten(grads)
    trainable = [p for p in flat_old if "/fusion/" in p or p.startswith("head/")]
    assert trainable and {p for p, lab in tree.flatten(labels).items() if lab != "frozen"} == set(trainable)
    for p in flat_old:
        if p in trainable:
            assert not np.array_equal(flat_new[p], flat_old[p]), p
        else:
            np.testing.assert_array_equal(flat_new[p], flat_old[p], err_msg=p)
    assert all(float(jnp.abs(flat_g[p]).max()) > 0 for p in trainable if p.endswith("kernel"))
    assert any(float(jnp.abs(flat_g[p]).max()) > 0 for p in flat_g if "ffn_adapter/a/" in p)  # frozen but live
    n_state = sum(x.size for x in jax.tree.leaves(opt_state) if x.ndim > 0)
    assert n_state == 2 * sum(flat_old[p].size for p in trainable)  # Adam mu + nu for trainable leaves only


def test_regulariser_zero_at_init_positive_after_perturbation(base, fused_houlsby):
    _, params = fused_houlsby
    d, sites = TINY.hidden_size, 4
    at_init = float(regularization_loss(params))
    assert at_init == pytest.approx(0.01 * sites * d * (d - 1) * 1e-12, rel=1e-3)  # AdapterHub's 1e-6 off-diagonal
    moved = _perturb(params, r"fusion/value/kernel", jax.random.key(2), 0.1)
    delta = sum(float(jnp.sum((x - jnp.eye(d)) ** 2)) for p, x in tree.flatten(moved).items()
                if p.endswith("fusion/value/kernel"))
    assert float(jax.jit(regularization_loss)(moved)) == pytest.approx(0.01 * delta, rel=1e-4)
    assert float(regularization_loss(moved)) > 100 * at_init
    assert float(regularization_loss(base["houlsby"][1])) == 0.0


def test_train_step_adds_regulariser_only_when_configured(base):
    """The one train step (``Runner``, ``jadapt train``) adds 0.01 * ||I - V||^2 for a dynamic
    fusion and nothing when the config turns it off: same batch, dropout key and params."""
    from jadapt.train.step import init_state, make_train_step

    model, params = base["pfeiffer"]
    fused, fparams = fuse(model, params, ("a", "b"), "dynamic", jax.random.key(1))
    fparams = _perturb(fparams, r"fusion/value/kernel", jax.random.key(3), 0.1)
    labels = trainable_labels(fparams, trainable_rules("fusion"))
    flat_labels = tree.flatten(labels)
    trainable, frozen = tree.partition(fparams, lambda p: flat_labels[p] != "frozen")
    ids, mask = _ids()
    batch = {"input_ids": ids, "attention_mask": mask, "labels": jnp.array([0, 2]),
             "weight": jnp.ones((2,), jnp.float32)}
    tx = optax.sgd(0.0)
    losses = {}
    for reg in (True, False):
        m = fused.clone(fusion=fused.fusion.replace(regularization=reg))
        step = jax.jit(make_train_step(m, tx, regression=False))
        _, logs = step(init_state(trainable, tx, 0), frozen, batch)
        losses[reg] = float(logs["loss"])
    expected = float(regularization_loss(trainable))
    assert expected > 1e-3  # V was moved off the identity, so the term is visible
    assert losses[True] - losses[False] == pytest.approx(expected, rel=1e-3)


def test_fusion_state_helper(base):
    model, params = base["pfeiffer"]
    fused, params = fuse(model, params, ("a", "b"), fusion_preset(temperature=True), jax.random.key(1))
    state = fusion_state(fused)
    temps = tree.flatten(state)
    assert list(temps) == [f"fusion_state/encoder/layer_{i}/ffn_adapter/fusion/temperature" for i in range(2)]
    ids, mask = _ids()
    _, new_state = jax.jit(functools.partial(fused.apply, mutable=["fusion_state"]))(
        {"params": params, **state}, ids, mask)
    assert all(abs(float(t) - 49.95) < 1e-4 for t in tree.flatten(new_state).values())
    assert fusion_state(model) == {}


def test_load_for_fusion_from_adapter_checkpoints(tiny_model_dir, tmp_path):
    from types import SimpleNamespace

    from jadapt.checkpoint import save_adapter
    from jadapt.fusion import load_for_fusion
    from jadapt.models.pretrained import adapter_params, load_pretrained

    cfg_a = preset("pfeiffer", bottleneck=8)
    model, params = load_pretrained(tiny_model_dir, adapters=(("sst2", cfg_a), ("rte", cfg_a)), active=("sst2",),
                                    head=HeadConfig())
    dirs, saved = [], {}
    for name in ("sst2", "rte"):
        own = tree.merge(adapter_params(params, name), tree.select(params, r"^head/"))
        saved[name] = adapter_params(params, name)
        dirs.append(save_adapter(tmp_path / name, jax.device_get(own),
                                 {"adapters": [[name, cfg_a.to_dict()]], "active": [name]}))
    run = SimpleNamespace(fusion_adapters=tuple(map(str, dirs)), compute_dtype="float32", seed=0, remat=False,
                          attention="matmul")
    model, params, train_names = load_for_fusion(run, tiny_model_dir, HeadConfig(num_labels=3))
    assert model.active == ("sst2", "rte") and model.fusion is not None and train_names == []
    for name in ("sst2", "rte"):
        chex.assert_trees_all_equal(adapter_params(params, name), saved[name])
    assert params["head"]["out"]["kernel"].shape[-1] == 3
    assert set(param_shapes(model)) == set(tree.flatten(params))
    with pytest.raises(ValueError, match="distinct names"):
        load_for_fusion(SimpleNamespace(**{**vars(run), "fusion_adapters": (str(dirs[0]),) * 2}),
                        tiny_model_dir, HeadConfig())


# ---------------------------------------------------------------- parity with AdapterHub

PEER_SCRIPT = textwrap.dedent(r'''
    import re, sys
    import numpy as np, torch
    import adapters
    from adapters import AdapterFusionConfig, DoubleSeqBnConfig, ParBnConfig, SeqBnConfig
    from adapters.composition import Fuse
    from adapters.methods.modeling import BertFusion
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    out = {}
    d, K = 16, 3
    g = torch.Generator().manual_seed(1)
    q, ups, r = torch.randn(2, 5, d, generator=g), torch.randn(2, 5, K, d, generator=g), torch.randn(2, 5, d, generator=g)
    out["layer/query"], out["layer/ups"], out["layer/residual"] = q.numpy(), ups.numpy(), r.numpy()
    variants = {
        "dynamic": ("dynamic", {}), "static": ("static", {}),
        "residual_before": ("dynamic", {"residual_before": True}),
        "value_after_softmax": ("dynamic", {"value_before_softmax": False}),
        "no_qk": ("static", {"query": False, "key": False}),
        "temperature": ("dynamic", {"temperature": True}),
    }
    for name, (base, kw) in variants.items():
        f = BertFusion(AdapterFusionConfig.load(base, **kw), d, 0.1).eval()
        if name == "dynamic":
            out["layer/dynamic/value_init"] = f.value.weight.detach().numpy().copy()
        with torch.no_grad():
            for p in f.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=g))
        for pn, p in f.named_parameters():
            out[f"layer/{name}/param/{pn}"] = p.detach().numpy().copy()
        with torch.no_grad():
            for call in range(3):
                u = ups.clone()  # compose_fuse passes one tensor as key and value; forward adds in place
                out[f"layer/{name}/out{call}"] = f(q.clone(), u, u, r.clone()).numpy()

    c = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=64, max_position_embeddings=64)
    ids = torch.randint(1, 100, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.long); mask[1, -2:] = 0
    out["model/ids"], out["model/mask"] = ids.numpy(), mask.numpy()
    cases = {
        "houlsby": (DoubleSeqBnConfig(reduction_factor=4), "dynamic", {}),
        "pfeiffer": (SeqBnConfig(reduction_factor=4), "dynamic", {}),
        "pfeiffer_qbln": (SeqBnConfig(reduction_factor=4), "dynamic", {"query_before_ln": True}),
        "pfeiffer_static": (SeqBnConfig(reduction_factor=4), "static", {}),
        "parallel": (ParBnConfig(reduction_factor=4), "dynamic", {}),
    }
    SITES = {"attention.output": "attn_adapter", "output": "ffn_adapter"}
    for case, (acfg, fbase, fkw) in cases.items():
        torch.manual_seed(2)
        m = BertModel(c); adapters.init(m)
        for n in "abc":
            m.add_adapter(n, config=acfg)
        m.add_adapter_fusion(Fuse("a", "b", "c"), AdapterFusionConfig.load(fbase, **fkw))
        m.set_active_adapters(Fuse("a", "b", "c"))
        m.eval()
        with torch.no_grad():
            for pn, p in m.named_parameters():
                if "adapter" in pn:
                    p.add_(0.3 * torch.randn(p.shape, generator=g))
            hs = m(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        for i, h in enumerate(hs):
            out[f"model/{case}/hidden{i}"] = h.numpy()
        for k, v in m.state_dict().items():
            v = v.numpy()
            mm = re.fullmatch(r"encoder\.layer\.(\d+)\.(attention\.output|output)\.adapters\.(\w+)\.adapter_(down|up)(?:\.0)?\.(weight|bias)", k)
            mf = re.fullmatch(r"encoder\.layer\.(\d+)\.(attention\.output|output)\.adapter_fusion_layer\.[\w,]+\.(query|key|value)\.(weight|bias)", k)
            if mm:
                i, s, n, w, kind = mm.groups()
                out[f"model/{case}/jx/encoder/layer_{i}/{SITES[s]}/{n}/{w}/" + ("kernel" if kind == "weight" else "bias")] = v.T if kind == "weight" else v
            elif mf:
                i, s, w, kind = mf.groups()
                out[f"model/{case}/jx/encoder/layer_{i}/{SITES[s]}/fusion/{w}/" + ("kernel" if kind == "weight" else "bias")] = v.T if kind == "weight" else v
            elif "adapter" in k or k.startswith("prompt_tuning."):  # prompt_tuning: AdapterHub's tied embedding copy
                if k.startswith("prompt_tuning."):
                    continue
                raise SystemExit(f"unmapped adapter tensor {k}")
            else:
                out[f"model/{case}/hf/{k}"] = v
    np.savez(sys.argv[1], **out)
''')


def _peer_python() -> str | None:
    from tests.conftest import REPO

    cand = os.environ.get("JADAPT_PEER_PYTHON") or str(REPO / ".venv-peers" / "bin" / "python")
    for exe in (cand, sys.executable):
        if exe and (Path(exe).is_file() or shutil.which(exe)):
            ok = subprocess.run([exe, "-c", "import adapters, torch"], capture_output=True).returncode == 0
            if ok:
                return exe
    return None


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    exe = _peer_python()
    if exe is None:
        pytest.skip("AdapterHub `adapters` + torch not importable (set JADAPT_PEER_PYTHON)")
    d = tmp_path_factory.mktemp("peer")
    (d / "peer.py").write_text(PEER_SCRIPT)
    res = subprocess.run([exe, str(d / "peer.py"), str(d / "out.npz")], capture_output=True, text=True,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "TRANSFORMERS_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    return dict(np.load(d / "out.npz"))


_LAYER_CONFIGS = {
    "dynamic": fusion_preset("dynamic"), "static": fusion_preset("static"),
    "residual_before": fusion_preset("dynamic", residual_before=True),
    "value_after_softmax": fusion_preset("dynamic", value_before_softmax=False),
    "no_qk": fusion_preset("static", query=False, key=False),
    "temperature": fusion_preset("dynamic", temperature=True),
}


@pytest.mark.torch
@pytest.mark.parametrize("name", list(_LAYER_CONFIGS))
def test_layer_parity_with_adapterhub(peer, name):
    cfg = _LAYER_CONFIGS[name].replace(dropout_prob=0.1)
    q, ups, r = (jnp.asarray(peer[f"layer/{k}"]) for k in ("query", "ups", "residual"))
    flat = {}
    for k, v in peer.items():
        if k.startswith(f"layer/{name}/param/"):
            mod, kind = k.split("/")[-1].split(".")
            if mod == "dense":  # AdapterHub builds it without Q / K but never uses it
                continue
            flat[f"{mod}/{'kernel' if kind == 'weight' else 'bias'}"] = v.T if kind == "weight" else v
    params = tree.unflatten(flat)
    layer = FusionLayer(cfg)
    assert set(tree.flatten(params)) == set(tree.flatten(layer.init(jax.random.key(0), q, ups, r).get("params", {})))
    if name == "dynamic":
        init_v = layer.init(jax.random.key(0), q, ups, r)["params"]["value"]["kernel"]
        np.testing.assert_array_equal(init_v, peer["layer/dynamic/value_init"].T)
    variables = {"params": params}
    if cfg.temperature:
        variables["fusion_state"] = {"temperature": jnp.float32(50.0)}
    for call in range(3):
        got, state = layer.apply(variables, q, ups, r, mutable=["fusion_state"])
        variables = {"params": params, **state}
        np.testing.assert_allclose(got, peer[f"layer/{name}/out{call}"], atol=2e-5, rtol=1e-5)


_MODEL_CASES = {
    "houlsby": ("houlsby", fusion_preset("dynamic")),
    "pfeiffer": ("pfeiffer", fusion_preset("dynamic")),
    "pfeiffer_qbln": ("pfeiffer", fusion_preset("dynamic", query_before_ln=True)),
    "pfeiffer_static": ("pfeiffer", fusion_preset("static")),
    "parallel": ("parallel", fusion_preset("dynamic")),
}


@pytest.mark.torch
@pytest.mark.parametrize("case", list(_MODEL_CASES))
def test_model_parity_with_adapterhub(peer, case):
    method, fcfg = _MODEL_CASES[case]
    acfg = preset(method, bottleneck=None, reduction_factor=4)
    model = AdapterModel(TINY, adapters=tuple((n, acfg) for n in "abc"), active=("a", "b", "c"),
                         fusion=fcfg.replace(dropout_prob=0.1))
    hf = {k.split("/hf/")[1]: v for k, v in peer.items() if k.startswith(f"model/{case}/hf/")}
    jx = {k.split("/jx/")[1]: v for k, v in peer.items() if k.startswith(f"model/{case}/jx/")}
    expected = param_shapes(model)
    params = tree.merge(convert_state_dict(hf, expected), tree.unflatten(jx))
    assert set(tree.flatten(params)) == set(expected)
    hidden = jax.jit(model.apply)({"params": params}, jnp.asarray(peer["model/ids"]), jnp.asarray(peer["model/mask"]))
    for i, h in enumerate(hidden):
        np.testing.assert_allclose(h, peer[f"model/{case}/hidden{i}"], atol=3e-5, rtol=1e-4, err_msg=f"hidden {i}")
