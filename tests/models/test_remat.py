"""Rematerialisation (``remat=True`` / ``jadapt train --remat``) changes memory, not numbers."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jadapt.adapters.config import preset
from jadapt.cli import build_parser
from jadapt.models.config import EncoderConfig
from jadapt.models.model import AdapterModel, HeadConfig
from jadapt.models.pretrained import init_params

CFG = EncoderConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                    max_position_embeddings=32)


def test_remat_gives_the_same_loss_and_gradients_with_dropout():
    kw = dict(adapters=(("a", preset("pfeiffer", bottleneck=8)),), active=("a",), head=HeadConfig(num_labels=2))
    plain, remat = AdapterModel(CFG, **kw), AdapterModel(CFG, remat=True, **kw)
    params = init_params(plain, jax.random.key(0))
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 100, (2, 12)), jnp.int32)
    mask = jnp.ones_like(ids)

    def loss(model, p):
        out = model.apply({"params": p}, ids, mask, deterministic=False, rngs={"dropout": jax.random.key(3)})
        return jnp.sum(out ** 2)

    la, ga = jax.value_and_grad(lambda p: loss(plain, p))(params)
    lb, gb = jax.value_and_grad(lambda p: loss(remat, p))(params)
    np.testing.assert_allclose(lb, la, rtol=1e-6)
    for x, y in zip(jax.tree_util.tree_leaves(gb), jax.tree_util.tree_leaves(ga)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    # and it really rematerialises: the backward recomputes (more dots in the jaxpr)
    n_dots = lambda m: str(jax.make_jaxpr(jax.grad(lambda p: loss(m, p)))(params)).count("dot_general")  # noqa: E731
    assert n_dots(remat) > n_dots(plain)


def test_cli_remat_flag():
    args = build_parser().parse_args(["train", "--task", "rte", "--remat", "--out", "x"])
    assert args.remat is True
    assert build_parser().parse_args(["train", "--task", "rte", "--out", "x"]).remat is False
