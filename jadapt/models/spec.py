"""``ModelSpec``: what a model is made of, and what an adapter checkpoint says about it.

A spec names everything needed to rebuild a model around its pretrained encoder: the base
model, the encoder config it was trained with, the named adapters with their configs, the
active adapter(s), the head, the fusion config and the compute dtype. ``jadapt.models.build``
turns a spec (plus saved leaves) into (model, params); training, ``load_model``, the fusion
loader, ``--init-adapter``, the AdapterHub / PEFT import and the merge all go through it,
so a new field is added here and nowhere else.

Adapter checkpoint format (``metadata.json`` ``"version": 1``)
----------------------------------------------------------------
A checkpoint is a directory (written atomically by ``jadapt.checkpoint.save_adapter``)::

    <dir>/metadata.json    the fields below + "arrays": {path: {shape, dtype, crc32}}
    <dir>/params/          orbax arrays: only the trained leaves, at their param paths
                           (adapters, fusion layers, head, trained LayerNorms; never the backbone)

``metadata.json`` fields:

=================  ======================================================================
format             ``"jadapt-adapter"`` (checked on read)
version            ``1``; readers refuse versions they do not know (``jadapt.checkpoint.files``)
base_model         hub id or local folder of the HF encoder the leaves were trained on
encoder_config     ``EncoderConfig`` fields; a base whose weight-shaping fields differ is refused
adapters           ``[[name, AdapterConfig fields], ...]``, every adapter in the params tree
active             names that run (one; several under fusion); absent = all adapters
head               ``HeadConfig`` fields, or null (a merge holds adapters only)
fusion             ``FusionConfig`` fields, or null
compute_dtype      matmul precision policy (``jadapt.layers.precision.COMPUTE_DTYPES``)
=================  ======================================================================

Run fields ride along and are not part of the spec: ``task``, ``track``, ``label_names``,
``method``, ``train_config`` (training), ``metrics`` (best dev epoch), ``merge`` (how a merge
was made), ``imported_from`` (AdapterHub / PEFT source). A checkpoint holds every leaf of its
active adapters, its fusion layers and its head's output layer (anything else a rebuilt model
has comes from the base model, or is an unsaved inactive adapter drawn fresh); loading checks
every saved leaf against the rebuilt model and reports all problems at once.

Version 1 is the format jadapt has always written; a later change to these fields bumps
``jadapt.checkpoint.files.VERSION`` and teaches :meth:`ModelSpec.from_metadata` the old form.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional

from jadapt import param_paths as paths
from jadapt.adapters.config import AdapterConfig
from jadapt.layers.precision import check_compute_dtype
from jadapt.models.config import EncoderConfig
from jadapt.models.model import AdapterModel, HeadConfig

if TYPE_CHECKING:
    from jadapt.fusion.config import FusionConfig

# Config fields that shape no weights: checkpoints that differ only in these still fit.
WEIGHTLESS_ENCODER_FIELDS = ("hidden_dropout", "attention_dropout", "initializer_range")
WEIGHTLESS_ADAPTER_FIELDS = ("dropout",)


class MetadataError(ValueError):
    """Checkpoint metadata that does not describe a model; the message names the field."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything that decides a model's params tree and function, short of the weights.

    ``base_model``: hub id or folder (None: the packaged default encoder). ``encoder``: the
    encoder config the leaves were trained with (None: whatever the base model says).
    ``active``: None means every adapter.
    """

    base_model: Optional[str] = None
    encoder: Optional[EncoderConfig] = None
    adapters: tuple[tuple[str, AdapterConfig], ...] = ()
    active: Optional[tuple[str, ...]] = None
    head: Optional[HeadConfig] = None
    fusion: Optional[FusionConfig] = None
    compute_dtype: str = "float32"

    def __post_init__(self):
        adapters = tuple((str(n), c) for n, c in self.adapters)
        bad = [n for n, c in adapters if not isinstance(c, AdapterConfig)]
        if bad:
            raise ValueError(f"adapters {bad}: configs must be AdapterConfig")
        names = [n for n, _ in adapters]
        if len(set(names)) != len(names):
            raise ValueError(f"adapter names must be distinct, got {names}")
        active = tuple(names) if self.active is None else tuple(self.active)
        unknown = [a for a in active if a not in names]
        if unknown:
            raise ValueError(f"active names unknown adapter(s) {unknown}; adapters: {names}")
        check_compute_dtype(self.compute_dtype)
        object.__setattr__(self, "adapters", adapters)
        object.__setattr__(self, "active", active)
        if self.base_model is not None:
            object.__setattr__(self, "base_model", os.fspath(self.base_model))

    def replace(self, **kw) -> "ModelSpec":
        """A copy with ``kw`` changed; ``active`` stays as resolved (pass ``active=None`` with
        new ``adapters`` to make all of them active)."""
        return dataclasses.replace(self, **kw)

    @classmethod
    def of(cls, model: AdapterModel, base_model: Optional[str | os.PathLike] = None) -> "ModelSpec":
        """The spec of a built model (what its checkpoints record)."""
        return cls(base_model=base_model, encoder=model.config, adapters=model.adapters, active=model.active,
                   head=model.head, fusion=model.fusion, compute_dtype=model.compute_dtype)

    def model(self, encoder: EncoderConfig, *, remat: bool = False, attention: str = "matmul") -> AdapterModel:
        """The Flax module on ``encoder`` (the base model's config); ``remat`` / ``attention``
        are runtime choices, not part of the spec."""
        return AdapterModel(encoder, adapters=self.adapters, active=self.active, head=self.head, fusion=self.fusion,
                            compute_dtype=self.compute_dtype, remat=remat, attention=attention)

    def must_be_saved(self, path: str) -> bool:
        """Leaves a checkpoint of this spec must hold: the active adapters', the fusion layers'
        and the head's output layer (no base model has them; a fresh draw would be silently wrong)."""
        name = paths.adapter_name(path)
        if name is not None:
            return name in self.active or name == paths.FUSION
        return re.match(paths.HEAD_OUT, path) is not None

    def encoder_differences(self, other: EncoderConfig, labels: tuple[str, str] = ("", "")) -> list[str]:
        """Weight-shaping encoder fields in which ``self.encoder`` and ``other`` differ."""
        if self.encoder is None:
            return []
        return differences(dataclasses.asdict(self.encoder), dataclasses.asdict(other), WEIGHTLESS_ENCODER_FIELDS,
                           labels)

    # ------------------------------------------------------------ metadata
    def to_metadata(self) -> dict:
        """The spec's fields of ``metadata.json`` (JSON-ready; see the module docstring)."""
        return {
            "base_model": self.base_model,
            "encoder_config": dataclasses.asdict(self.encoder) if self.encoder is not None else None,
            "adapters": [[n, c.to_dict()] for n, c in self.adapters],
            "active": list(self.active),
            "head": dataclasses.asdict(self.head) if self.head is not None else None,
            "fusion": self.fusion.to_dict() if self.fusion is not None else None,
            "compute_dtype": self.compute_dtype,
        }

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any], where: str = "checkpoint") -> "ModelSpec":
        """The spec in checkpoint metadata; a MetadataError names ``where`` and the bad field.
        Fields other than the spec's are ignored (they describe the run, not the model)."""
        def field(name, parse):
            value = meta.get(name)
            if value is None:
                return None
            try:
                return parse(value)
            except (TypeError, ValueError, KeyError, AttributeError) as e:
                raise MetadataError(f"{where}: metadata field {name!r} is invalid ({e})") from e

        base = field("base_model", _string)
        encoder = field("encoder_config", lambda d: EncoderConfig(**_mapping(d)))
        adapters = field("adapters", _adapters) or ()
        active = field("active", lambda a: tuple(_string(n) for n in _sequence(a)))
        head = field("head", lambda d: HeadConfig(**_mapping(d)))
        fusion = field("fusion", _fusion)
        dtype = field("compute_dtype", _string) or "float32"
        try:
            return cls(base, encoder, adapters, active, head, fusion, dtype)
        except ValueError as e:
            raise MetadataError(f"{where}: metadata {e}") from e


def differences(a: Mapping[str, Any], b: Mapping[str, Any], ignore: Iterable[str] = (),
                labels: tuple[str, str] = ("", "")) -> list[str]:
    """``"key: a vs b"`` for every key (outside ``ignore``) whose values differ (tuples = lists)."""
    ignore = set(ignore)
    la, lb = (f" ({lab})" if lab else "" for lab in labels)
    keys = list(a) + [k for k in b if k not in a]
    return [f"{k}: {a.get(k)!r}{la} vs {b.get(k)!r}{lb}" for k in keys
            if k not in ignore and _norm(a.get(k)) != _norm(b.get(k))]


def adapter_differences(a: AdapterConfig, b: AdapterConfig) -> list[str]:
    """Weight-shaping adapter-config fields in which ``a`` and ``b`` differ."""
    return differences(a.to_dict(), b.to_dict(), WEIGHTLESS_ADAPTER_FIELDS)


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


def _mapping(d) -> dict:
    if not isinstance(d, Mapping):
        raise TypeError(f"expected an object, got {type(d).__name__}")
    return dict(d)


def _sequence(x) -> list:
    if isinstance(x, (str, bytes)) or not isinstance(x, (list, tuple)):
        raise TypeError(f"expected a list, got {type(x).__name__}")
    return list(x)


def _string(x) -> str:
    if not isinstance(x, str):
        raise TypeError(f"expected a string, got {type(x).__name__}")
    return x


def _fusion(d) -> "FusionConfig":
    from jadapt.fusion.config import FusionConfig  # the fusion package imports models: not at import time

    return FusionConfig.from_dict(_mapping(d))


def _adapters(items) -> tuple[tuple[str, AdapterConfig], ...]:
    out = []
    for item in _sequence(items):
        pair = _sequence(item)
        if len(pair) != 2:
            raise ValueError(f"each entry is [name, config], got {item!r}")
        out.append((_string(pair[0]), AdapterConfig.from_dict(_mapping(pair[1]))))
    return tuple(out)
