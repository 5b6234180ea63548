"""Permutation symmetry, alignment, the jit assignment solver and OT (jadapt.merge)."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment, linprog

from jadapt import merge, tree
from jadapt.adapters.config import preset
from jadapt.merge.sites import unit_axis_of
from jadapt.models.config import EncoderConfig
from jadapt.models.model import AdapterModel
from jadapt.models.pretrained import adapter_params, init_params

CFG = EncoderConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                    max_position_embeddings=64)
M = 16


def _randomize(adapter, seed, scale=0.3):
    """Non-trivial random adapter weights (the init is near zero, which hides permutation bugs)."""
    rng = np.random.default_rng(seed)
    return tree.map_with_path(
        lambda p, x: jnp.asarray(scale * rng.normal(size=x.shape) + (1.0 if p.endswith("scale") else 0.0), x.dtype),
        adapter)


@pytest.fixture(scope="module")
def setup():
    cfg = preset("houlsby", bottleneck=M, ln_before=True)  # LayerNorm inside the adapter: must stay put
    model = AdapterModel(CFG, adapters=(("a", cfg),), active=("a",))
    params = init_params(model, jax.random.key(0))
    adapters = [_randomize(adapter_params(params, "a"), 10 + k) for k in range(3)]
    ids = jax.random.randint(jax.random.key(1), (4, 12), 1, CFG.vocab_size)
    mask = jnp.ones_like(ids).at[1, 8:].set(0).at[3, 5:].set(0)
    batches = [{"input_ids": ids[:2], "attention_mask": mask[:2]}, {"input_ids": ids[2:], "attention_mask": mask[2:]}]
    return model, params, adapters, batches


def _forward(model, params, adapter, batch):
    hidden = model.apply({"params": tree.merge(params, adapter)}, batch["input_ids"], batch["attention_mask"])
    return hidden[-1]


# ------------------------------------------------------------------ permutation symmetry
def test_permuting_units_keeps_model_outputs(setup):
    model, params, adapters, batches = setup
    a = adapters[0]
    perms = merge.random_permutations(a, jax.random.key(3))
    assert len(perms) == 2 * CFG.num_layers
    assert all(not np.array_equal(p, np.arange(M)) for p in perms.values())
    b = merge.permute_adapter(a, perms)
    assert not np.allclose(tree.flatten(a)["encoder/layer_0/ffn_adapter/a/down/kernel"],
                           tree.flatten(b)["encoder/layer_0/ffn_adapter/a/down/kernel"])
    fwd = jax.jit(lambda adapter, batch: _forward(model, params, adapter, batch))
    for batch in batches:
        np.testing.assert_allclose(fwd(a, batch), fwd(b, batch), atol=1e-5)
    # a wrong permutation (down permuted, up not) does change the function: the test can fail
    site = "encoder/layer_0/ffn_adapter/a"
    broken = tree.flatten(a)
    broken[f"{site}/down/kernel"] = broken[f"{site}/down/kernel"][:, perms[site]]
    broken = tree.unflatten(broken)
    assert np.abs(fwd(a, batches[0]) - fwd(broken, batches[0])).max() > 1e-3


def test_permute_then_inverse_is_identity_and_lora_product_is_kept():
    rng = np.random.default_rng(0)
    a = tree.unflatten({"encoder/layer_0/attention/lora_query/x/lora_a": jnp.asarray(rng.normal(size=(8, 4))),
                        "encoder/layer_0/attention/lora_query/x/lora_b": jnp.asarray(rng.normal(size=(4, 8)))})
    perms = merge.random_permutations(a, jax.random.key(2))
    b = merge.permute_adapter(a, perms)
    site = "encoder/layer_0/attention/lora_query/x"
    fa, fb = tree.flatten(a), tree.flatten(b)
    np.testing.assert_allclose(fa[f"{site}/lora_a"] @ fa[f"{site}/lora_b"], fb[f"{site}/lora_a"] @ fb[f"{site}/lora_b"],
                               atol=1e-5)
    back = merge.permute_adapter(b, {s: merge.invert_permutation(p) for s, p in perms.items()})
    chex.assert_trees_all_equal(back, a)


def test_permute_adapter_errors_name_the_site(setup):
    a = setup[2][0]
    with pytest.raises(KeyError, match="nope"):
        merge.permute_adapter(a, {"nope": jnp.arange(M)})
    with pytest.raises(ValueError, match="layer_0/ffn_adapter/a.*16 units"):
        merge.permute_adapter(a, {"encoder/layer_0/ffn_adapter/a": jnp.arange(M + 1)})


# ------------------------------------------------------------------ alignment
@pytest.mark.parametrize("solver", ["hungarian", "scipy"])
def test_align_by_weights_recovers_the_permutation(setup, solver):
    a = setup[2][0]
    perms = merge.random_permutations(a, jax.random.key(4))
    b = merge.permute_adapter(a, perms)
    aligned, found = jax.jit(lambda r, x: merge.align_by_weights(r, x, solver=solver))(a, b)
    for site, q in perms.items():
        np.testing.assert_array_equal(found[site], merge.invert_permutation(q))
    chex.assert_trees_all_equal(aligned, a)


def test_align_by_activations_recovers_the_permutation(setup):
    model, params, adapters, batches = setup
    a = adapters[0]
    perms = merge.random_permutations(a, jax.random.key(5))
    b = merge.rename_adapter(merge.permute_adapter(a, perms), "a", "other")  # names are unified
    (acts_a, acts_b), mask = merge.collect_activations(model, params, [a, b], batches)
    assert set(acts_a) == {f"encoder/layer_{i}/{s}" for i in range(CFG.num_layers)
                           for s in ("attn_adapter", "ffn_adapter")}
    assert acts_a["encoder/layer_0/ffn_adapter"].shape == (4 * 12, M) and mask.shape == (4 * 12,)
    # the activations of a permuted adapter are the permuted activations
    for site, q in perms.items():
        key = merge.site_key(site)
        np.testing.assert_allclose(acts_b[key], acts_a[key][:, q], atol=1e-5)
    aligned, found = merge.align_by_activations(a, b, acts_a, acts_b, mask)
    for site, q in perms.items():
        np.testing.assert_array_equal(found[site], merge.invert_permutation(q))
    chex.assert_trees_all_equal(aligned, a)


def test_activation_similarity_ignores_masked_tokens():
    x = jax.random.normal(jax.random.key(0), (50, 6))
    y = x[:, ::-1]
    garbage = jax.random.normal(jax.random.key(1), (20, 6)) * 100
    mask = jnp.concatenate([jnp.ones(50), jnp.zeros(20)])
    sim = jax.jit(merge.activation_similarity)
    s = sim(jnp.concatenate([x, garbage]), jnp.concatenate([y, -garbage]), mask)
    np.testing.assert_allclose(s, np.corrcoef(np.asarray(x).T, np.asarray(y).T)[:6, 6:], atol=1e-5)
    dead = sim(x, jnp.zeros_like(x))
    assert np.all(np.isfinite(dead)) and np.all(dead == 0)


def test_merge_aligned_of_permuted_copies_is_the_adapter(setup):
    a = setup[2][0]
    copies = [a] + [merge.permute_adapter(a, merge.random_permutations(a, jax.random.key(20 + k))) for k in range(3)]
    aligned, exact_ot, plain = jax.jit(
        lambda c: (merge.merge_aligned(c), merge.ot_merge(c, exact=True), merge.average(c)))(copies)
    chex.assert_trees_all_close(aligned, a, atol=1e-6)
    chex.assert_trees_all_close(exact_ot, a, atol=1e-6)
    # plain averaging of the same copies is not the adapter: alignment does the work
    assert not np.allclose(tree.flatten(plain)["encoder/layer_0/ffn_adapter/a/down/kernel"],
                           tree.flatten(a)["encoder/layer_0/ffn_adapter/a/down/kernel"], atol=1e-2)


def test_aligned_average_is_order_independent(setup):
    a, b, c = setup[2]
    f = jax.jit(merge.merge_aligned, static_argnames="reference")
    abc = f([a, b, c], reference=0)
    acb = f([a, c, b], reference=0)
    cab = f([c, a, b], reference=1)
    chex.assert_trees_all_close(abc, acb, atol=1e-6)
    chex.assert_trees_all_close(abc, cab, atol=1e-6)
    # and alignment really permuted something for these independent adapters
    _, perms = jax.jit(merge.align_to_reference)([a, b, c])
    assert any(not np.array_equal(p, np.arange(M)) for p in perms[1].values())


def test_align_to_reference_batches_all_sites_in_one_jit(setup):
    adapters = setup[2]
    aligned, perms = jax.jit(merge.align_to_reference)(adapters)
    ref_aligned, ref_perms = merge.align_to_reference(adapters, solver="scipy")
    for k in range(3):
        for site in perms[k]:
            np.testing.assert_array_equal(perms[k][site], ref_perms[k][site])
    chex.assert_trees_all_equal(aligned[0], adapters[0])


def test_mismatched_adapters_raise_naming_site_and_shapes(setup):
    adapters = setup[2]
    axes = unit_axis_of(adapters[1])  # keep the first 8 of 16 units: a smaller bottleneck
    small = tree.map_with_path(lambda p, x: x if axes[p] is None else jnp.take(x, jnp.arange(8), axis=axes[p]),
                               adapters[1])
    with pytest.raises(ValueError, match=r"down/bias: shape \(8,\) vs \(16,\).*only be merged with method 'ot'"):
        merge.merge_aligned([adapters[0], small])
    other_sites = tree.select(adapters[1], "ffn_adapter")  # Pfeiffer-like: no attention sites
    with pytest.raises(ValueError, match="path.* missing, e.g. .*attn_adapter"):
        merge.merge_aligned([adapters[0], other_sites])
    with pytest.raises(ValueError, match="method 'activations' needs activations"):
        merge.align_to_reference(adapters, method="activations")
    # OT accepts different bottleneck sizes: the result has the reference's
    fused = jax.jit(lambda a: merge.ot_merge(a, epsilon=0.05))([adapters[0], small])
    assert tree.flatten(fused)["encoder/layer_1/attn_adapter/a/down/kernel"].shape == (CFG.hidden_size, M)


def test_sharded_adapters_align_without_gathers(setup):
    adapters = setup[2]
    mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))  # leading axis (d or m) over 8
    sharded = [jax.device_put(a, spec) for a in adapters]
    assert len(tree.flatten(sharded[0])["encoder/layer_0/ffn_adapter/a/down/kernel"].sharding.device_set) == 8
    out = jax.jit(merge.merge_aligned)(sharded)
    chex.assert_trees_all_close(out, jax.jit(merge.merge_aligned)(adapters), atol=1e-6)


# ------------------------------------------------------------------ the jit solver vs scipy
def _costs(kind: str, m: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "random":
        return rng.normal(size=(m, m)).astype(np.float32)
    if kind == "ties":
        return rng.integers(0, 3, size=(m, m)).astype(np.float32)
    if kind == "lowrank":
        return (rng.normal(size=(m, 2)) @ rng.normal(size=(2, m))).astype(np.float32)
    if kind == "perm_identity":
        return np.eye(m, dtype=np.float32)[rng.permutation(m)]
    if kind == "constant":
        return np.ones((m, m), np.float32)
    raise ValueError(kind)


def _scipy_best(sim: np.ndarray) -> float:
    r, c = linear_sum_assignment(sim.astype(np.float64), maximize=True)
    return float(sim.astype(np.float64)[r, c].sum())


def _objective(sim: np.ndarray, perm) -> float:
    perm = np.asarray(perm)
    assert sorted(perm.tolist()) == list(range(len(perm))), "not a permutation"
    return float(sim.astype(np.float64)[np.arange(len(perm)), perm].sum())


@pytest.mark.parametrize("kind", ["random", "ties", "lowrank", "perm_identity", "constant"])
@pytest.mark.parametrize("m", [8, 33, 128])
def test_hungarian_matches_scipy_objective(kind, m):
    rng = np.random.default_rng(m)
    sim = _costs(kind, m, rng)
    perm = jax.jit(merge.solve_assignment)(sim)
    got, best = _objective(sim, perm), _scipy_best(sim)
    np.testing.assert_allclose(got, best, rtol=1e-6, atol=1e-5)
    if kind == "perm_identity":  # unique optimum
        np.testing.assert_array_equal(sim[np.arange(m), np.asarray(perm)], 1.0)


def test_hungarian_minimises_when_asked():
    sim = _costs("random", 20, np.random.default_rng(0))
    r, c = linear_sum_assignment(sim.astype(np.float64))
    np.testing.assert_allclose(_objective(sim, merge.solve_assignment(sim, maximize=False)),
                               sim.astype(np.float64)[r, c].sum(), rtol=1e-6)


@pytest.mark.parametrize("batching", ["vmap", "map"])
def test_batched_solver_matches_scipy_per_problem(batching):
    rng = np.random.default_rng(1)
    kinds = ["random", "ties", "lowrank", "perm_identity"]
    sims = np.stack([_costs(kinds[i % 4], 24, rng) for i in range(12)]).reshape(3, 4, 24, 24)
    perms = jax.jit(lambda s: merge.solve_assignment(s, batching=batching))(sims)
    assert perms.shape == (3, 4, 24)
    ref = jax.jit(lambda s: merge.solve_assignment(s, solver="scipy"))(sims)
    outer = jax.jit(jax.vmap(lambda s: merge.solve_assignment(s, solver="scipy")))(sims)  # callback under vmap
    for i in range(3):
        for j in range(4):
            best = _scipy_best(sims[i, j])
            for p in (perms[i, j], ref[i, j], outer[i, j]):
                np.testing.assert_allclose(_objective(sims[i, j], p), best, rtol=1e-6, atol=1e-5)


def test_hungarian_768_under_vmap():
    rng = np.random.default_rng(7)
    sims = np.stack([_costs("random", 768, rng), _costs("lowrank", 768, rng)])
    perms = jax.jit(merge.solve_assignment)(sims)
    for s, p in zip(sims, perms):
        np.testing.assert_allclose(_objective(s, p), _scipy_best(s), rtol=1e-6)


def test_assignment_score_and_errors():
    sim = jnp.arange(9.0).reshape(3, 3)
    assert float(merge.assignment_score(sim, jnp.array([2, 1, 0]))) == 2 + 4 + 6
    with pytest.raises(ValueError, match="square"):
        merge.solve_assignment(jnp.zeros((3, 4)))
    with pytest.raises(ValueError, match="solver 'lapjv'"):
        merge.solve_assignment(sim, solver="lapjv")
    perm = merge.solve_assignment(sim.at[0, 0].set(jnp.nan))  # non-finite: treated as 0, no hang
    assert sorted(np.asarray(perm).tolist()) == [0, 1, 2]


# ------------------------------------------------------------------ optimal transport
def test_exact_ot_is_a_permutation_and_optimal_against_the_lp():
    n = 6
    cost = np.random.default_rng(0).uniform(size=(n, n)).astype(np.float32)
    plan = np.asarray(merge.exact_transport(cost))
    assert set(np.unique(plan * n).tolist()) <= {0.0, 1.0}
    np.testing.assert_allclose(plan.sum(0), 1 / n, atol=1e-7)
    np.testing.assert_allclose(plan.sum(1), 1 / n, atol=1e-7)
    a_eq = np.concatenate([np.kron(np.eye(n), np.ones((1, n))), np.kron(np.ones((1, n)), np.eye(n))])
    lp = linprog(cost.astype(np.float64).ravel(), A_eq=a_eq, b_eq=np.full(2 * n, 1 / n), bounds=(0, None))
    assert lp.status == 0
    np.testing.assert_allclose((plan * cost).sum(), lp.fun, rtol=1e-6)


@pytest.mark.parametrize("n,m", [(8, 8), (10, 6)])
def test_sinkhorn_marginals(n, m):
    rng = np.random.default_rng(n * m)
    cost = rng.uniform(size=(n, m)).astype(np.float32)
    a = rng.uniform(0.5, 1.5, n)
    a = (a / a.sum()).astype(np.float32)
    b = rng.uniform(0.5, 1.5, m)
    b = (b / b.sum()).astype(np.float32)
    plan = np.asarray(jax.jit(lambda c: merge.sinkhorn(c, a, b, epsilon=0.05, num_iters=500))(cost))
    assert np.all(plan >= 0)
    np.testing.assert_allclose(plan.sum(1), a, atol=1e-5)
    np.testing.assert_allclose(plan.sum(0), b, atol=1e-5)
    uni = np.asarray(merge.sinkhorn(cost, epsilon=0.1))
    np.testing.assert_allclose(uni.sum(1), 1 / n, atol=1e-5)
    np.testing.assert_allclose(uni.sum(0), 1 / m, atol=1e-5)


def test_sinkhorn_tends_to_the_exact_plan():
    n = 12
    rng = np.random.default_rng(3)
    cost = (1 - np.eye(n)[rng.permutation(n)] + 0.1 * rng.uniform(size=(n, n))).astype(np.float32)
    exact = np.asarray(merge.exact_transport(cost))
    soft = np.asarray(merge.sinkhorn(cost, epsilon=0.01, num_iters=300))
    np.testing.assert_allclose(soft, exact, atol=1e-4)
    blurry = np.asarray(merge.sinkhorn(cost, epsilon=1.0, num_iters=300))
    assert np.abs(blurry - exact).max() > 1e-2


def test_ot_merge_exact_equals_aligned_average_and_soft_is_close(setup):
    adapters = setup[2]
    aligned, exact = jax.jit(lambda a: (merge.merge_aligned(a), merge.ot_merge(a, exact=True)))(adapters)
    chex.assert_trees_all_close(exact, aligned, atol=1e-6)
    a = adapters[0]
    copy = merge.permute_adapter(a, merge.random_permutations(a, jax.random.key(9)))
    soft = jax.jit(lambda x: merge.ot_merge(x, epsilon=0.005, num_iters=400))([a, copy])
    chex.assert_trees_all_close(soft, a, atol=1e-3)
