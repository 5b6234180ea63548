"""The README's "bring in AdapterHub adapters and merge them" snippet works as written."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jadapt import interop, merge, tree
from jadapt.adapters.config import preset
from jadapt.models.config import EncoderConfig
from jadapt.models.model import AdapterModel
from jadapt.models.pretrained import adapter_params, init_params

CFG = EncoderConfig(vocab_size=60, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                    max_position_embeddings=32)


def test_readme_import_folder_and_merge(tmp_path):
    hub = tmp_path / "hub_adapters"
    originals = []
    for i, task in enumerate(["mnli", "snli", "sick"]):
        model = AdapterModel(CFG, adapters=((task, preset("pfeiffer", bottleneck=4)),), active=(task,))
        params = adapter_params(init_params(model, jax.random.key(i)), task)
        params = jax.tree_util.tree_map(lambda x: np.asarray(x) + 0.1 * (i + 1), params)
        originals.append(params)
        bundle = interop.AdapterBundle(task, preset("pfeiffer", bottleneck=4), params)
        interop.write_adapterhub(hub / task, bundle, encoder_config=CFG)

    # --- the README snippet
    from pathlib import Path

    bundles = [interop.read_adapter(d) for d in sorted(Path(hub).iterdir())]
    adapters = merge.unify_names([jax.tree_util.tree_map(jnp.asarray, tree.select(b.params, r"^encoder/"))
                                  for b in bundles])
    merged = merge.merge_adapters(adapters, "align-weights")
    # ---

    assert [b.name for b in bundles] == ["mnli", "sick", "snli"]
    flat = tree.flatten(merged)
    assert set(flat) == set(tree.flatten(originals[0]))  # names unified to the first (mnli)
    # aligning can only permute units: the merged b_up (not permuted) is the plain mean
    key = "encoder/layer_1/ffn_adapter/mnli/up/bias"
    mean = np.mean([tree.flatten(o)[key.replace("mnli", t)] for o, t in zip(originals, ["mnli", "snli", "sick"])], 0)
    np.testing.assert_allclose(flat[key], mean, rtol=1e-6)
