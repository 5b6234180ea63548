"""``build(spec, saved)``: the one way a model is made from a pretrained encoder and saved leaves.

The backbone comes from the base model's HF weights (read tensor by tensor), ``saved``'s
leaves go on top (``overlay``: every misfit reported in one error), and only the leaves in
neither are drawn fresh with ``seed`` -- an init compile that is skipped when nothing is
missing. ``load_pretrained``, ``load_model``, the fusion loader, ``--init-adapter``, the
AdapterHub / PEFT import and the merge's activation probe all call it.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Optional

import jax
import jax.numpy as jnp

from jadapt import tree
from jadapt.models.model import AdapterModel
from jadapt.models.spec import ModelSpec


def init_params(model: AdapterModel, rng: jax.Array, seq_len: int = 8, *,
                paths: Optional[Iterable[str]] = None) -> dict:
    """Fresh random params for every leaf of ``model`` (jit-compiled init), or only for
    ``paths``: the same values, and XLA drops the rest's random draws (a pretrained
    backbone is not drawn only to be overwritten)."""
    ids = jnp.ones((1, seq_len), jnp.int32)
    keep = None if paths is None else frozenset(paths)

    @jax.jit
    def _init(key):
        params = model.init({"params": key}, ids, jnp.ones_like(ids))["params"]
        if keep is None:
            return params
        return {p: x for p, x in tree.flatten(params).items() if p in keep}

    out = jax.tree_util.tree_map(lambda x: x, _init(rng))
    return out if keep is None else tree.unflatten(out)


def param_structs(model: AdapterModel, seq_len: int = 8) -> dict[str, jax.ShapeDtypeStruct]:
    """{path: shape and dtype} of every param of ``model``, without computing any."""
    ids = jax.ShapeDtypeStruct((1, seq_len), jnp.int32)
    shapes = jax.eval_shape(lambda i: model.init({"params": jax.random.key(0)}, i, i)["params"], ids)
    return tree.flatten(shapes)


def param_shapes(model: AdapterModel, seq_len: int = 8) -> dict[str, tuple]:
    return {p: tuple(s.shape) for p, s in param_structs(model, seq_len).items()}


def with_fresh_leaves(model: AdapterModel, params: dict, expected, rng: jax.Array) -> dict:
    """``params`` plus fresh random values (``init_params``) for the paths of ``expected``
    it lacks (new adapters, a head); no init is compiled when nothing is missing."""
    have = tree.flatten(params)
    missing = [p for p in expected if p not in have]
    return tree.merge(init_params(model, rng, paths=missing), params) if missing else params


def pretrained_paths(model: AdapterModel, model_dir) -> frozenset[str]:
    """The param paths of ``model`` that the HF weights in ``model_dir`` fill; ``build`` draws
    the others fresh. For callers that redraw those others per seed without rebuilding
    (the studies' many short runs)."""
    from jadapt.models.hf import convert_state_dict, iter_state_dict

    return frozenset(tree.flatten(convert_state_dict(iter_state_dict(model_dir), param_shapes(model))))


def overlay(params: dict, saved: dict, expected: Mapping[str, tuple], where: str = "checkpoint",
            required: Optional[Callable[[str], bool]] = None, *, source: str = "checkpoint",
            dtypes: Optional[Mapping[str, jnp.dtype]] = None) -> dict:
    """``params`` with ``saved``'s leaves in place; every misfit reported in one ValueError.

    ``expected``: {path: shape} of the model; the result holds those of its paths that
    ``params`` or ``saved`` has. Every ``required`` path (default: none) must be in one of
    them. ``source`` names ``saved`` in messages; ``dtypes`` ({path: dtype}, default: that of
    ``params``' leaf) is what saved leaves are cast to.
    """
    flat, errors = tree.flatten(params), []
    dtypes = dict(dtypes or {})
    for p, x in flat.items():
        dtypes.setdefault(p, x.dtype)
    saved = tree.flatten(saved)
    for p, x in saved.items():
        if p not in expected:
            errors.append(f"{p}: shape {tuple(x.shape)} in the {source}, but the model has no such param")
        elif tuple(x.shape) != tuple(expected[p]):
            errors.append(f"{p}: shape {tuple(x.shape)} in the {source} != {tuple(expected[p])} in the model")
        else:
            flat[p] = jnp.asarray(x, dtypes.get(p, x.dtype))
    missing = [p for p in expected if p not in flat and p not in saved and required is not None and required(p)]
    if missing:
        errors.append(f"{len(missing)} param(s) in neither the base model nor the {source} (they would stay "
                      f"randomly initialised), e.g. {missing[:4]}")
    if errors:
        shown = errors[:20] + ([f"... and {len(errors) - 20} more"] if len(errors) > 20 else [])
        raise ValueError(f"{where} does not fit the model it describes (saved from another architecture or "
                         "base model?):\n  " + "\n  ".join(shown))
    return tree.unflatten({p: flat[p] for p in expected if p in flat})


def build(spec: ModelSpec, saved: Optional[dict] = None, *, seed: int = 0,
          required: Optional[Callable[[str], bool]] = None, where: str = "checkpoint", source: str = "checkpoint",
          fresh: bool = True, remat: bool = False, attention: str = "matmul") -> tuple[AdapterModel, dict]:
    """(model, params as jax arrays) for ``spec`` around its base model, ``saved`` in place.

    ``required`` (default ``spec.must_be_saved`` when ``saved`` is given): paths that must
    come from ``saved`` or the base model. ``fresh=False``: any other missing leaf is an
    error too, instead of a draw from ``seed``. When ``spec.encoder`` is given, a base model
    whose weight-shaping config differs is refused (after the shape check, so misfits name
    their leaves). ``remat`` / ``attention``: runtime choices (``AdapterModel``).
    """
    from jadapt.models.config import EncoderConfig
    from jadapt.models.hf import convert_state_dict, iter_state_dict, resolve_model_path

    path = resolve_model_path(spec.base_model)
    config = EncoderConfig.from_pretrained(path)
    model = spec.model(config, remat=remat, attention=attention)
    structs = param_structs(model)
    expected = {p: tuple(s.shape) for p, s in structs.items()}
    params = convert_state_dict(iter_state_dict(path), expected)  # tensor by tensor: one copy in memory
    if required is None and saved is not None:
        required = spec.must_be_saved
    if not fresh:
        required = _always
    params = overlay(params, saved or {}, expected, where, required, source=source,
                     dtypes={p: s.dtype for p, s in structs.items()})
    diff = spec.encoder_differences(config, ("trained", "now"))
    if diff:
        raise ValueError(f"{where}: base model {spec.base_model!r} differs from the one it was trained on: "
                         + "; ".join(diff))
    params = with_fresh_leaves(model, params, expected, jax.random.key(seed))
    return model, jax.tree_util.tree_map(jnp.asarray, params)


def _always(path: str) -> bool:
    return True
