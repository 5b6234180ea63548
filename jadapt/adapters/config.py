"""Adapter configurations: one frozen dataclass, presets that match the papers / AdapterHub.

The placement flags follow AdapterHub's ``BnConfig`` exactly (``original_ln_before``,
``residual_before_ln`` ...), because that is where formats silently differ and because
imported AdapterHub adapters must compute the same function here.

- houlsby (Houlsby et al. 2019; AdapterHub ``double_seq_bn``): after attention and after
  FFN, before the residual + LayerNorm; swish. He et al. 2021 also train LayerNorms.
- pfeiffer (Pfeiffer et al. 2021; ``seq_bn``): after the FFN only, applied to the
  LayerNorm-ed output with the sublayer output as residual; relu.
- parallel (He et al. 2022; ``par_bn``): reads the sublayer input, adds scaled output
  beside the sublayer.
- lora (Hu et al. 2022): low-rank updates of attention query / value projections.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from jadapt import param_paths as paths

METHODS = ("houlsby", "pfeiffer", "parallel", "lora")
INITS = ("bert", "houlsby", "mam", "lora")
LORA_TARGETS = ("query", "key", "value", "attention_output", "intermediate", "output")


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    method: str = "pfeiffer"
    bottleneck: Optional[int] = 64
    reduction_factor: Optional[float] = None
    activation: str = "relu"
    mh_adapter: bool = False
    output_adapter: bool = True
    original_ln_before: bool = True
    original_ln_after: bool = True
    residual_before_ln: bool = True
    adapter_residual_before_ln: bool = False
    ln_before: bool = False
    ln_after: bool = False
    is_parallel: bool = False
    scaling: float = 1.0
    init: str = "bert"
    dropout: float = 0.0
    train_layer_norms: bool = False
    lora_r: int = 8
    lora_alpha: float = 8.0
    lora_targets: tuple[str, ...] = ("query", "value")

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"adapter method {self.method!r} is not supported; expected one of {METHODS}")
        if self.init not in INITS:
            raise ValueError(f"adapter init {self.init!r} is not supported; expected one of {INITS}")
        if self.method != "lora":
            if self.bottleneck is None and self.reduction_factor is None:
                raise ValueError("adapter needs bottleneck or reduction_factor")
            if self.bottleneck is not None and self.bottleneck < 1:
                raise ValueError(f"bottleneck must be >= 1, got {self.bottleneck}")
            if self.reduction_factor is not None and self.reduction_factor <= 0:
                raise ValueError(f"reduction_factor must be > 0, got {self.reduction_factor}")
            if not (self.mh_adapter or self.output_adapter):
                raise ValueError("adapter must be placed somewhere: mh_adapter or output_adapter")
        else:
            if self.lora_r < 1:
                raise ValueError(f"lora_r must be >= 1, got {self.lora_r}")
            bad = [t for t in self.lora_targets if t not in LORA_TARGETS]
            if bad or not self.lora_targets:
                raise ValueError(f"lora_targets {bad or '()'} not supported; expected a subset of {LORA_TARGETS}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"adapter dropout must be in [0, 1), got {self.dropout}")

    def size(self, hidden: int) -> int:
        """Bottleneck width m for a model of width ``hidden`` (AdapterHub rounds down, min 1)."""
        if self.bottleneck is not None:
            return int(self.bottleneck)
        return max(1, int(hidden // self.reduction_factor))

    @property
    def lora_scaling(self) -> float:
        return self.lora_alpha / self.lora_r

    def sites(self) -> tuple[str, ...]:
        """Param-tree site names this adapter occupies in every layer."""
        if self.method == "lora":
            return tuple(paths.lora_site(t) for t in self.lora_targets)
        return ((paths.ATTN_SITE,) if self.mh_adapter else ()) + ((paths.FFN_SITE,) if self.output_adapter else ())

    def replace(self, **kw) -> "AdapterConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AdapterConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown adapter config key(s) {unknown}")
        d = dict(d)
        if "lora_targets" in d:
            d["lora_targets"] = tuple(d["lora_targets"])
        return cls(**d)


_PRESETS = {
    "pfeiffer": dict(method="pfeiffer", activation="relu", mh_adapter=False, output_adapter=True,
                     original_ln_before=True, original_ln_after=True, residual_before_ln=True),
    "houlsby": dict(method="houlsby", activation="swish", mh_adapter=True, output_adapter=True,
                    original_ln_before=False, original_ln_after=True, residual_before_ln=True,
                    train_layer_norms=True),
    "parallel": dict(method="parallel", activation="relu", mh_adapter=False, output_adapter=True,
                     original_ln_before=False, original_ln_after=True, is_parallel=True,
                     scaling=4.0, init="mam"),
    "lora": dict(method="lora", bottleneck=None, init="lora", lora_r=8, lora_alpha=8.0,
                 lora_targets=("query", "value")),
}


def preset(method: str, **overrides) -> AdapterConfig:
    """The paper / AdapterHub defaults for ``method``, with overrides.

    >>> preset("houlsby", bottleneck=64).sites()
    ('attn_adapter', 'ffn_adapter')
    """
    if method not in _PRESETS:
        raise ValueError(f"adapter method {method!r} is not supported; expected one of {METHODS}")
    return AdapterConfig(**{**_PRESETS[method], **overrides})
