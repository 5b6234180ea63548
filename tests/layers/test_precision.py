"""The bfloat16 compute path, the custom VJPs and hash dropout (jadapt/layers/).

Tolerances are stated in units of bf16's unit roundoff U = 2**-9 (~0.2 %): each bf16
operand carries a relative error of at most U, fp32 accumulation adds almost nothing.
Measured on this code (CPU, jax 0.10.2): forward products of rounded operands agree with
fp32 to 1e-7 (the bf16 kernels accumulate in fp32); custom-VJP gradients sit within 2 U of
fp32 autodiff (operands and cotangent both rounded); a 2-layer model's hidden states within
0.3 U of their scale and its whole-model gradient within 1.1 U (relative norm); the packaged
MiniLM's hidden states within 1.4 U. Bounds below are 2-4x those measurements. The fp32 path must stay
exact: its custom VJPs (einsum, GELU, LayerNorm) match autodiff to 1e-5.
"""
from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jadapt import tree
from jadapt.adapters.config import preset
from jadapt.models.config import EncoderConfig
from jadapt.layers.activations import gelu
from jadapt.layers.dropout import Dropout, hash_dropout_mask
from jadapt.layers.einsum import einsum
from jadapt.layers.matmul import bf16_matmul, matmul
from jadapt.layers.norm import layer_norm
from jadapt.models.model import AdapterModel, HeadConfig
from jadapt.models.pretrained import init_params

U = 2.0 ** -9
CFG = EncoderConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                    max_position_embeddings=64)
ADAPTERS = (("p", preset("houlsby", bottleneck=8)), ("l", preset("lora")))


def _round(x):
    return x.astype(jnp.bfloat16).astype(jnp.float32)


def _rel(a, b):
    return float(jnp.abs(a - b).max() / jnp.abs(b).max())


def _model(cdt, cfg=CFG):
    return AdapterModel(cfg, adapters=ADAPTERS, active=("p", "l"), head=HeadConfig(num_labels=3), compute_dtype=cdt)


def _inputs(seed=0, b=4, s=16):
    rng = np.random.default_rng(seed)
    ids = jnp.asarray(rng.integers(1, CFG.vocab_size, (b, s)), jnp.int32)
    mask = jnp.ones((b, s), jnp.int32).at[1, s // 2:].set(0)
    return ids, mask


# --------------------------------------------------------------------------- products
EINSUMS = [
    ("bqhd,bkhd->bhqk", (2, 16, 4, 8), (2, 16, 4, 8)),  # attention scores (token-major inputs)
    ("bhqk,bkhd->bqhd", (2, 4, 16, 16), (2, 16, 4, 8)),  # attention context
    ("bhqd,bhkd->bhqk", (2, 4, 16, 8), (2, 4, 16, 8)),  # head-major scores
    ("bsd,bskd->bsk", (2, 5, 16), (2, 5, 3, 16)),  # AdapterFusion scores (a vector product)
    ("bsk,bskd->bsd", (2, 5, 3), (2, 5, 3, 16)),  # AdapterFusion mix
    ("ij,kj->ki", (16, 32), (24, 32)),
]


@pytest.mark.parametrize("spec,sa,sb", EINSUMS)
def test_bf16_einsum_forward_and_custom_vjp(spec, sa, sb):
    ka, kb, kc = jax.random.split(jax.random.key(0), 3)
    a, b = jax.random.normal(ka, sa), jax.random.normal(kb, sb)
    out = jax.jit(lambda a, b: einsum(spec, a, b, "bfloat16"))(a, b)
    # forward: exactly the fp32 product of bf16-rounded operands (fp32 accumulation)
    assert _rel(out, jnp.einsum(spec, _round(a), _round(b), precision="highest")) < 1e-6
    # ... which is not the fp32 product of the unrounded operands: bf16 really is used
    assert _rel(out, jnp.einsum(spec, a, b, precision="highest")) > U / 100
    ct = jax.random.normal(kc, out.shape)
    got = jax.jit(jax.grad(lambda a, b: (einsum(spec, a, b, "bfloat16") * ct).sum(), (0, 1)))(a, b)
    want = jax.grad(lambda a, b: (jnp.einsum(spec, a, b, precision="highest") * ct).sum(), (0, 1))(a, b)
    for g, w in zip(got, want):
        assert g.dtype == jnp.float32
        assert _rel(g, w) < 4 * U


@pytest.mark.parametrize("xshape", [(64, 48), (4, 16, 48)])
def test_bf16_matmul_custom_vjp(xshape):
    kx, kw, kc = jax.random.split(jax.random.key(1), 3)
    x, w = jax.random.normal(kx, xshape), jax.random.normal(kw, (48, 40))
    out = jax.jit(bf16_matmul)(x, w)
    assert _rel(out, jnp.matmul(_round(x), _round(w), precision="highest")) < 1e-6
    ct = jax.random.normal(kc, out.shape)
    got = jax.grad(lambda x, w: (bf16_matmul(x, w) * ct).sum(), (0, 1))(x, w)
    want = jax.grad(lambda x, w: (matmul(x, w, "float32") * ct).sum(), (0, 1))(x, w)
    for g, wt in zip(got, want):
        assert _rel(g, wt) < 4 * U


@pytest.mark.parametrize("spec,sa,sb", EINSUMS[:3])
def test_fp32_einsum_is_exact(spec, sa, sb):
    """fp32 also runs through the canonical-matmul path (speed); it must stay exact fp32."""
    ka, kb, kc = jax.random.split(jax.random.key(2), 3)
    a, b = jax.random.normal(ka, sa), jax.random.normal(kb, sb)
    ref = lambda a, b: jnp.einsum(spec, a, b, precision="highest")  # noqa: E731
    assert _rel(jax.jit(lambda a, b: einsum(spec, a, b, "float32"))(a, b), ref(a, b)) < 1e-6
    ct = jax.random.normal(kc, ref(a, b).shape)
    got = jax.grad(lambda a, b: (einsum(spec, a, b, "float32") * ct).sum(), (0, 1))(a, b)
    want = jax.grad(lambda a, b: (ref(a, b) * ct).sum(), (0, 1))(a, b)
    for g, w in zip(got, want):
        assert _rel(g, w) < 1e-6


def test_gelu_and_layer_norm_custom_vjps_are_exact():
    x = 3 * jax.random.normal(jax.random.key(5), (4, 16, 48))
    exact = np.vectorize(lambda v: v * 0.5 * (1.0 + math.erf(v / math.sqrt(2.0))))(np.asarray(x, np.float64))
    assert np.abs(np.asarray(gelu(x)) - exact).max() < 2e-6  # torch's erf form, to fp32 rounding
    assert _rel(gelu(x), jax.nn.gelu(x, approximate=False)) < 1e-6
    ct = jax.random.normal(jax.random.key(6), x.shape)
    g = jax.grad(lambda x: (gelu(x) * ct).sum())(x)
    assert _rel(g, jax.grad(lambda x: (jax.nn.gelu(x, approximate=False) * ct).sum())(x)) < 1e-6
    scale, bias = jax.random.normal(jax.random.key(7), (48,)), jax.random.normal(jax.random.key(8), (48,))

    def ref(x, s, b):
        mean = x.mean(-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(jnp.square(x - mean).mean(-1, keepdims=True) + 1e-12) * s + b

    assert _rel(layer_norm(x, scale, bias, 1e-12), ref(x, scale, bias)) < 1e-6
    got = jax.grad(lambda *a: (layer_norm(*a, 1e-12) * ct).sum(), (0, 1, 2))(x, scale, bias)
    want = jax.grad(lambda *a: (ref(*a) * ct).sum(), (0, 1, 2))(x, scale, bias)
    for a, b in zip(got, want):
        assert _rel(a, b) < 1e-5


# --------------------------------------------------------------------------- the model
def test_bf16_model_close_to_fp32():
    params = init_params(_model("float32"), jax.random.key(0))
    ids, mask = _inputs()
    l32, h32 = _model("float32").apply({"params": params}, ids, mask, return_hidden=True)
    l16, h16 = _model("bfloat16").apply({"params": params}, ids, mask, return_hidden=True)
    assert l16.dtype == h16[-1].dtype == jnp.float32  # residual stream and logits stay fp32
    for a, b in zip(h16[1:], h32[1:]):
        assert 0 < _rel(a, b) < 2 * U
    assert _rel(l16, l32) < 8 * U  # logits of a random head are small sums: a looser relative bound


def _flat_grads(params, ids, mask, *compute_dtypes):
    """Whole-model cross-entropy gradients, one flat vector per compute dtype."""
    y = jnp.asarray([0, 1, 2, 1])

    def loss(p, cdt):
        return optax.softmax_cross_entropy_with_integer_labels(_model(cdt).apply({"params": p}, ids, mask), y).mean()

    return [np.concatenate([np.ravel(v) for v in tree.flatten(jax.grad(loss)(params, c)).values()])
            for c in compute_dtypes]


def test_bf16_model_gradient_close_to_fp32():
    params = init_params(_model("float32"), jax.random.key(0))
    g32, g16 = _flat_grads(params, *_inputs(1), "float32", "bfloat16")
    assert np.linalg.norm(g16 - g32) / np.linalg.norm(g32) < 4 * U
    assert g16 @ g32 / np.linalg.norm(g16) / np.linalg.norm(g32) > 0.9999


def test_bf16_train_step_dots_run_in_bf16():
    """XLA:CPU silently upcasts a bf16 dot to fp32 when an operand arrives transposed; every
    encoder matmul of the compiled train step must keep bf16 operands."""
    cfg = EncoderConfig(vocab_size=100, hidden_size=64, num_layers=1, num_heads=4, intermediate_size=128,
                        max_position_embeddings=64)
    model = _model("bfloat16", cfg)
    params = init_params(model, jax.random.key(0))
    ids, mask = _inputs(b=4, s=32)

    def loss(p):
        return model.apply({"params": p}, ids, mask, deterministic=False, rngs={"dropout": jax.random.key(1)}).sum()

    hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
    types = dict(re.findall(r"%([\w.\-]+) = (\w+)\[", hlo))
    dots = re.findall(r"= \w+\[[^\]]*\][^ ]* dot\(%([\w.\-]+), %([\w.\-]+)\).*?op_name=\"([^\"]*)\"", hlo)
    encoder = [(types[a], types[b], name) for a, b, name in dots if "/encoder/" in name]
    assert len(encoder) >= 8 * 3  # 8 matmuls per layer (+ adapters), forward and backward
    upcast = [d for d in encoder if d[:2] != ("bf16", "bf16")]
    assert not upcast, upcast


def test_bf16_fusion_train_step_runs_and_matches_fp32():
    """AdapterFusion under bf16 compute: every dot of its backward must be one XLA:CPU has a
    bf16 kernel for (the step used to fail with ``Unsupported element type for DotThunk``),
    and its gradients stay within bf16 error of fp32."""
    from jadapt.fusion import fuse

    adapters = tuple((n, preset("pfeiffer", bottleneck=8)) for n in ("a", "b", "c"))
    grads = {}
    for cdt in ("float32", "bfloat16"):
        model = AdapterModel(CFG, adapters=adapters, active=("a",), head=HeadConfig(num_labels=3), compute_dtype=cdt)
        model, params = fuse(model, init_params(model, jax.random.key(0)), ("a", "b", "c"), "dynamic",
                             jax.random.key(1))
        ids, mask = _inputs(2)
        y = jnp.asarray([0, 1, 2, 1])

        def loss(p):
            logits = model.apply({"params": p}, ids, mask, deterministic=False, rngs={"dropout": jax.random.key(2)})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        g = jax.jit(jax.grad(loss))(params)
        grads[cdt] = np.concatenate([np.ravel(v) for p, v in tree.flatten(g).items() if "/fusion/" in p])
    g32, g16 = grads["float32"], grads["bfloat16"]
    assert np.all(np.isfinite(g16)) and np.linalg.norm(g32) > 0
    assert np.linalg.norm(g16 - g32) / np.linalg.norm(g32) < 8 * U


@pytest.mark.slow
def test_bf16_pretrained_minilm_close_to_fp32():
    from jadapt.models.pretrained import load_pretrained

    m32, params = load_pretrained(adapters=(("p", preset("pfeiffer", bottleneck=64)),), head=HeadConfig(num_labels=2))
    m16 = m32.clone(compute_dtype="bfloat16")
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(1000, 20000, (8, 64)), jnp.int32).at[:, 0].set(101)
    mask = jnp.ones((8, 64), jnp.int32).at[2, 20:].set(0)
    _, h32 = m32.apply({"params": params}, ids, mask, return_hidden=True)
    _, h16 = m16.apply({"params": params}, ids, mask, return_hidden=True)
    m = np.asarray(mask)[..., None]
    for a, b in zip(h16[1:], h32[1:]):
        assert np.abs((np.asarray(a) - np.asarray(b)) * m).max() < 4 * U * np.abs(np.asarray(b) * m).max()
    pool = lambda h: (np.asarray(h) * m).sum(1) / m.sum(1)  # noqa: E731
    e16, e32 = pool(h16[-1]), pool(h32[-1])
    cos = (e16 * e32).sum(-1) / np.linalg.norm(e16, axis=-1) / np.linalg.norm(e32, axis=-1)
    assert cos.min() > 0.9999


# --------------------------------------------------------------------------- hash dropout
@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_hash_dropout_keep_rate(rate):
    n = 1 << 20
    keep = np.asarray(hash_dropout_mask(jax.random.key(3), (n,), rate))
    sigma = np.sqrt(rate * (1 - rate) / n)
    assert abs(keep.mean() - (1 - rate)) < 5 * sigma
    # neighbours are independent (a hash of the index, not a pattern)
    a, b = keep[:-1].astype(float), keep[1:].astype(float)
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(n)


def test_hash_dropout_deterministic_and_key_dependent():
    shape = (8, 12, 128, 128)
    k1, k2 = jax.random.key(0), jax.random.key(1)
    m1 = np.asarray(hash_dropout_mask(k1, shape, 0.1))
    assert (m1 == np.asarray(hash_dropout_mask(k1, shape, 0.1))).all()
    m2 = np.asarray(hash_dropout_mask(k2, shape, 0.1))
    agree = (m1 == m2).mean()
    assert abs(agree - (0.9 ** 2 + 0.1 ** 2)) < 5e-3  # as for independent masks


def _max_shifted_agreement(a, b, max_shift):
    """Largest fraction of equal elements between ``a`` and ``b`` rolled by 1..max_shift."""
    return max(max((a == np.roll(b, s)).mean(), (a == np.roll(b, -s)).mean()) for s in range(1, max_shift + 1))


def test_hash_dropout_related_keys_not_shifted_copies():
    """Consecutive train steps use fold_in(rng, step): their masks must not be shifted copies
    of each other (a single additive hash round makes seed s+1 the mask of s shifted by one)."""
    n, rate = 1 << 14, 0.5
    base = jax.random.key(0)
    for keys in ([jax.random.fold_in(base, t) for t in range(4)], [jax.random.key(t) for t in range(4)]):
        _check_not_shifted([np.asarray(hash_dropout_mask(k, (n,), rate)) for k in keys], n)


def _check_not_shifted(masks, n):
    for a, b in zip(masks, masks[1:]):
        assert _max_shifted_agreement(a, b, 256) < 0.5 + 6 * np.sqrt(0.25 / n)
    # and the check itself detects a shifted copy
    assert _max_shifted_agreement(masks[0], np.roll(masks[0], 17), 256) == 1.0


def test_dropout_module_scales_kept_and_zeroes_dropped():
    x = jnp.ones((64, 64))
    layer = Dropout(0.25)
    assert (layer.apply({}, x, True) == x).all()
    y1 = np.asarray(layer.apply({}, x, False, rngs={"dropout": jax.random.key(0)}))
    y2 = np.asarray(layer.apply({}, x, False, rngs={"dropout": jax.random.key(0)}))
    assert (y1 == y2).all()
    assert set(np.unique(y1).tolist()) == {0.0, float(np.float32(1) / np.float32(0.75))}
    assert abs((y1 != 0).mean() - 0.75) < 0.03


# --------------------------------------------------------------------------- precision policies
def test_result_dtype_follows_platform_and_explicit_policy(monkeypatch):
    from jadapt.layers import precision

    assert precision.result_dtype("float32") == jnp.float32
    assert precision.result_dtype("bfloat16") == jnp.float32  # this CPU: XLA:CPU's bf16 kernels give fp32
    assert precision.result_dtype("bfloat16:bfloat16") == jnp.bfloat16
    monkeypatch.setattr(precision, "on_cpu", lambda: False)  # lowering for a GPU / TPU
    assert precision.result_dtype("bfloat16") == jnp.bfloat16
    assert precision.result_dtype("bfloat16:float32") == jnp.float32
    assert precision.result_dtype("float32") == jnp.float32
    with pytest.raises(ValueError, match="compute_dtype 'bf16'"):
        precision.result_dtype("bf16")
    with pytest.raises(ValueError, match="compute_dtype 'float16'"):
        matmul(jnp.ones((2, 3)), jnp.ones((3, 4)), "float16")


def test_compute_dtype_is_checked_when_a_module_is_built():
    """Every matmul module declares ``compute_dtype`` through ``PrecisionModule``: checked on
    construction (before any trace), and keyword-only, so a policy cannot land in another
    field by position."""
    from jadapt.fusion.config import FusionConfig
    from jadapt.fusion.layer import FusionLayer
    from jadapt.layers.dense import Dense

    with pytest.raises(ValueError, match="compute_dtype 'bf16' is not supported"):
        Dense(4, compute_dtype="bf16")
    with pytest.raises(ValueError, match="compute_dtype 'float16'"):
        AdapterModel(CFG, compute_dtype="float16")
    with pytest.raises(ValueError, match="parent"):  # the second positional field is Flax's parent
        FusionLayer(FusionConfig(), "bfloat16")
    assert Dense(4, compute_dtype="bfloat16:bfloat16").compute_dtype == "bfloat16:bfloat16"


def test_bf16_results_model_close_to_fp32():
    """bf16 Dense results (the GPU / TPU policy) add one rounding per product: hidden states
    within U of fp32 (measured 0.03-0.04 U of their scale, vs 0.02-0.03 U with fp32
    results), whole-model gradient within 4 U (measured 1.8 U, vs 1.2 U)."""
    params = init_params(_model("float32"), jax.random.key(0))
    ids, mask = _inputs()
    _, h32 = _model("float32").apply({"params": params}, ids, mask, return_hidden=True)
    l16, h16 = _model("bfloat16:bfloat16").apply({"params": params}, ids, mask, return_hidden=True)
    assert l16.dtype == h16[-1].dtype == jnp.float32  # LayerNorm output and logits stay fp32
    for a, b in zip(h16[1:], h32[1:]):
        assert 0 < _rel(a, b) < U
    g32, g16 = _flat_grads(params, ids, mask, "float32", "bfloat16:bfloat16")
    assert np.linalg.norm(g16 - g32) / np.linalg.norm(g32) < 4 * U


@pytest.mark.parametrize("attention", ["matmul", "fused"])
def test_accelerator_lowering_matches_cpu_forms(monkeypatch, attention):
    """Lowered for a GPU / TPU (``on_cpu`` False), ``bfloat16`` is ``bfloat16:bfloat16`` with
    plain einsums: the numbers of the CPU's canonical products (identical here), no
    optimization barriers, and the encoder's Dense products have bf16 results."""
    from jadapt.layers import precision

    params = init_params(_model("float32"), jax.random.key(0))
    ids, mask = _inputs(2)
    m = lambda cdt: AdapterModel(CFG, adapters=ADAPTERS, active=("p", "l"), head=HeadConfig(num_labels=3),  # noqa: E731
                                 compute_dtype=cdt, attention=attention)
    ref = m("bfloat16:bfloat16").apply({"params": params}, ids, mask, return_hidden=True)[1]
    monkeypatch.setattr(precision, "on_cpu", lambda: False)
    fwd = jax.jit(lambda p: m("bfloat16").apply({"params": p}, ids, mask, return_hidden=True)[1])
    for a, b in zip(fwd(params), ref):
        assert _rel(a, b) < 0.05 * U
    hlo = fwd.lower(params).as_text()
    assert "optimization_barrier" not in hlo
    assert re.search(r"dot_general.*-> tensor<[0-9x]+xbf16>", hlo)
    grads = jax.grad(lambda p: m("bfloat16").apply({"params": p}, ids, mask).sum())(params)
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree_util.tree_leaves(grads))
