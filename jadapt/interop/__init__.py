"""Interoperate with the PyTorch adapter ecosystem: AdapterHub and PEFT folders <-> jadapt.

An :class:`AdapterBundle` is the format-neutral middle: one named adapter (its
``AdapterConfig`` and params subtree at jadapt paths), an optional head and label names.
Readers turn a folder into a bundle, writers a bundle into a folder the PyTorch library
loads; :func:`import_adapter` / :func:`export_adapter` go through jadapt adapter
checkpoints (``jadapt import`` / ``jadapt export`` call them).

- AdapterHub (``adapters``): bottleneck adapters (``seq_bn``/pfeiffer,
  ``double_seq_bn``/houlsby, ``par_bn``) with a flex classification head.
- PEFT: LoRA on query / key / value / attention output / intermediate / output, with a
  sequence-classification head and other ``modules_to_save``.

>>> bundle = read_adapterhub("runs/sst2_adapter")          # doctest: +SKIP
>>> model, params = build_model(bundle, "all-MiniLM-L6-v2")  # doctest: +SKIP
>>> write_peft("out/peft", read_peft("peft_dir"), encoder_config=model.config)  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Optional

import numpy as np

from jadapt import tree
from jadapt import param_paths as paths
from jadapt.adapters.config import AdapterConfig
from jadapt.models.model import HeadConfig
from jadapt.models.spec import ModelSpec

FORMATS = ("adapterhub", "peft")


@dataclasses.dataclass(frozen=True)
class AdapterBundle:
    """One adapter in transit. ``params``: nested dict of numpy arrays at jadapt paths
    (``encoder/layer_i/<site>/<name>/...``, ``head/...``, and any trained base params such
    as LayerNorms). ``base_model``: the base the source names, if any (hub id or path)."""

    name: str
    config: AdapterConfig
    params: dict
    head: Optional[HeadConfig] = None
    label_names: Optional[tuple[str, ...]] = None
    base_model: Optional[str] = None
    model_type: Optional[str] = None
    source: Optional[dict] = None  # {"format": ..., "config": the source's own config dict}

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name or ""):
            raise ValueError(f"adapter name {self.name!r} must use letters, digits, '_', '.', '-' only "
                             "(choose another with --name)")


from jadapt.interop.adapterhub import read_adapterhub, write_adapterhub  # noqa: E402
from jadapt.interop.peft import read_peft, write_peft  # noqa: E402


def detect_format(path: str | os.PathLike) -> str:
    """``"adapterhub"`` or ``"peft"`` for an adapter folder, from its ``adapter_config.json``."""
    p = Path(path)
    cfg_file = p / "adapter_config.json"
    if not p.is_dir():
        raise FileNotFoundError(f"adapter folder {p} does not exist")
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{p} has no adapter_config.json (not an AdapterHub or PEFT adapter folder)")
    cfg = json.loads(cfg_file.read_text())
    if "peft_type" in cfg:
        return "peft"
    if "config" in cfg and ("hidden_size" in cfg or "model_type" in cfg or "name" in cfg):
        return "adapterhub"
    raise ValueError(f"{cfg_file} is neither an AdapterHub config (keys config/name/hidden_size) "
                     "nor a PEFT config (key peft_type)")


def read_adapter(path: str | os.PathLike, *, name: Optional[str] = None,
                 base_model: Optional[str | os.PathLike] = None) -> AdapterBundle:
    """Read an AdapterHub or PEFT folder (auto-detected) into a bundle."""
    if detect_format(path) == "adapterhub":
        return read_adapterhub(path, name=name)
    return read_peft(path, name=name, base_model=base_model)


def build_model(bundle: AdapterBundle, base_model: Optional[str | os.PathLike] = None, *,
                compute_dtype: str = "float32"):
    """(model, params): the pretrained base with the bundle's adapter (active) and head.

    ``base_model`` defaults to the one the bundle names. Every param comes from a file:
    the base checkpoint (a BERT pooler becomes ``head/dense``) or the bundle, which must
    fill every adapter / head leaf with the right shape; all problems are reported
    together. Nothing is randomly initialised (so no init is compiled either).
    """
    from jadapt.models.build import build

    base = _resolve_base(bundle, base_model)
    return build(bundle_spec(bundle, base, compute_dtype=compute_dtype), bundle.params, fresh=False,
                 where=f"adapter {bundle.name!r} (base model {base})", source="adapter")


def bundle_spec(bundle: AdapterBundle, base_model, *, encoder=None, compute_dtype: str = "float32") -> ModelSpec:
    """The spec of a model that runs ``bundle``'s adapter (active) and head on ``base_model``."""
    return ModelSpec(base_model=None if base_model is None else str(base_model), encoder=encoder,
                     adapters=((bundle.name, bundle.config),), active=(bundle.name,), head=bundle.head,
                     compute_dtype=compute_dtype)


def bundle_from_params(model, params: dict, name: str, *, label_names=None, base_model=None) -> AdapterBundle:
    """The bundle of adapter ``name`` of an ``AdapterModel`` (plus its head, if any)."""
    from jadapt.models.pretrained import adapter_params

    configs = dict(model.adapters)
    if name not in configs:
        raise KeyError(f"no adapter {name!r}; existing: {list(configs)}")
    sub = tree.merge(adapter_params(params, name), tree.select(params, r"^head/") if model.head else {})
    sub = tree.map_with_path(lambda _, x: np.asarray(x, np.float32), sub)
    return AdapterBundle(name, configs[name], sub, model.head, tuple(label_names) if label_names else None,
                         None if base_model is None else str(base_model), model.config.model_type)


def import_adapter(path: str | os.PathLike, out: str | os.PathLike, *, base_model: Optional[str] = None,
                   name: Optional[str] = None) -> dict:
    """Read an AdapterHub / PEFT folder, check it against the base model, and write a jadapt
    adapter checkpoint to ``out``. Returns the checkpoint metadata."""
    from jadapt.checkpoint import save_adapter

    fmt = detect_format(path)
    bundle = read_adapter(path, name=name, base_model=base_model)
    base = _resolve_base(bundle, base_model)
    model, params = build_model(bundle, base)
    sub = bundle.params
    if bundle.head is not None:  # e.g. BERT's pooler as the head's dense layer: store it explicitly
        sub = tree.merge(tree.select(params, r"^head/"), sub)
    given = base_model if base_model not in (None, "") else bundle.base_model
    meta = checkpoint_metadata(model, bundle, Path(given).absolute() if Path(given).is_dir() else given, fmt)
    save_adapter(out, tree.map_with_path(lambda _, x: np.asarray(x), sub), meta)
    return meta


def checkpoint_metadata(model, bundle: AdapterBundle, base_model, fmt: str) -> dict:
    """jadapt adapter-checkpoint metadata for an imported bundle: its spec and where it came from."""
    return {
        **bundle_spec(bundle, base_model, encoder=model.config, compute_dtype=model.compute_dtype).to_metadata(),
        "task": None,
        "label_names": list(bundle.label_names or ()),
        "method": bundle.config.method,
        "imported_from": {"format": fmt, **(bundle.source or {})},
    }


def export_adapter(checkpoint: str | os.PathLike, fmt: str, out: str | os.PathLike, *,
                   name: Optional[str] = None, strict: bool = True) -> Path:
    """Write adapter ``name`` (default: the checkpoint's only / first active adapter) of a
    jadapt checkpoint as an AdapterHub or PEFT folder. ``strict=False`` drops params the
    format cannot hold (e.g. trained LayerNorms for AdapterHub) instead of failing."""
    from jadapt.checkpoint import load_adapter, spec_of

    if fmt not in FORMATS:
        raise ValueError(f"export format {fmt!r} is not supported; expected one of {FORMATS}")
    params, meta = load_adapter(checkpoint)
    spec = spec_of(meta, f"checkpoint {checkpoint}")
    configs = dict(spec.adapters)
    if name is None:
        active = [n for n in spec.active if n in configs]
        if len(active) != 1 and len(configs) != 1:
            raise ValueError(f"checkpoint {checkpoint} holds adapters {list(configs)}; pick one with --name")
        name = active[0] if len(active) == 1 else next(iter(configs))
    if name not in configs:
        raise KeyError(f"checkpoint {checkpoint} has no adapter {name!r}; it has {list(configs)}")
    if spec.encoder is None:
        raise ValueError(f"checkpoint {checkpoint}: metadata field 'encoder_config' is missing (the export needs "
                         "the encoder's shape)")
    others = re.compile(paths.adapter_pattern(*[n for n in configs if n != name])) if len(configs) > 1 else None
    fusion = re.compile(paths.FUSION_LAYERS)
    flat = {p: np.asarray(x, np.float32) for p, x in tree.flatten(params).items()
            if not (others is not None and others.search(p)) and not fusion.search(p)}
    labels = tuple(meta.get("label_names") or ()) or None
    bundle = AdapterBundle(name, configs[name], tree.unflatten(flat), spec.head, labels, spec.base_model,
                           spec.encoder.model_type)
    enc = spec.encoder
    writer = write_adapterhub if fmt == "adapterhub" else write_peft
    return writer(out, bundle, encoder_config=enc, strict=strict)


def _resolve_base(bundle: AdapterBundle, base_model) -> Path:
    from jadapt.models.hf import resolve_model_path

    cand = base_model if base_model not in (None, "") else bundle.base_model
    if cand in (None, ""):
        raise ValueError(f"adapter {bundle.name!r} names no base model; pass one (--model DIR_OR_HUB_ID)")
    try:
        return resolve_model_path(cand)
    except FileNotFoundError as e:
        if base_model in (None, ""):
            raise FileNotFoundError(f"the adapter's base model {cand!r} is not available ({e}); "
                                    "pass a local one with --model") from e
        raise


__all__ = [
    "AdapterBundle", "FORMATS", "build_model", "bundle_from_params", "bundle_spec", "checkpoint_metadata", "detect_format",
    "export_adapter", "import_adapter", "read_adapter", "read_adapterhub", "read_peft", "write_adapterhub",
    "write_peft",
]
