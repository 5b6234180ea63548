"""AdapterFusion configuration: AdapterHub's ``AdapterFusionConfig`` fields and presets.

Fields and defaults follow AdapterHub (``adapters`` 1.x) exactly, so a fusion trained there
and one trained here compute the same function (Pfeiffer et al. 2021, arXiv:2005.00247):

- ``query`` / ``key`` / ``value``: learn the Q, K (bias, N(0, 0.02) init) and V (no bias)
  projections; without Q / K the raw query / adapter outputs are dot-multiplied.
- ``query_before_ln``: the query is the sublayer output before the transformer's
  ``LayerNorm(h + x)`` (else after it, when the adapter config applies that LayerNorm first).
- ``residual_before``: add the residual to every adapter output before attention (keys
  included, as AdapterHub's in-place add does), instead of to the fused output.
- ``temperature``: softmax temperature starting at 50 and falling by 0.05 per training
  call to 1 (needs the mutable ``fusion_state`` collection; see ``FusionLayer``).
- ``value_before_softmax``: apply V to each adapter output (else to the weighted sum; the
  same function since V has no bias, kept for parity).
- ``value_initialized``: V starts as identity (off-diagonal 1e-6, as AdapterHub).
- ``regularization``: add ``0.01 * ||I - V||^2`` per site to the training loss.
- ``dropout_prob``: dropout on the attention scores; ``None`` = the encoder's attention
  dropout (``fuse`` fills it in), as AdapterHub.

Presets: ``dynamic`` (AdapterHub's default; learns V) and ``static`` (no V).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

TEMPERATURE_START = 50.0  # AdapterHub's T when ``temperature`` is on; it falls by T/1000 per call to 1.
REGULARIZATION_WEIGHT = 0.01  # AdapterHub's weight of ||I - V||^2.

_BOOL_FIELDS = ("key", "query", "value", "query_before_ln", "regularization", "residual_before",
                "temperature", "value_before_softmax", "value_initialized")


@dataclasses.dataclass(frozen=True)
class FusionConfig:
    """One AdapterFusion layer per adapter site. Defaults = AdapterHub's ``dynamic``."""

    key: bool = True
    query: bool = True
    value: bool = True
    query_before_ln: bool = False
    regularization: bool = True
    residual_before: bool = False
    temperature: bool = False
    value_before_softmax: bool = True
    value_initialized: bool = True
    dropout_prob: Optional[float] = None

    def __post_init__(self):
        for f in _BOOL_FIELDS:
            if not isinstance(getattr(self, f), bool):
                raise ValueError(f"fusion config field {f} must be True or False, got {getattr(self, f)!r}")
        if self.dropout_prob is not None and not 0.0 <= self.dropout_prob < 1.0:
            raise ValueError(f"fusion dropout_prob must be None or in [0, 1), got {self.dropout_prob}")
        if self.regularization and not self.value:
            raise ValueError("fusion regularization=True needs value=True (it pulls V towards identity)")
        if self.value_initialized and not self.value:
            raise ValueError("fusion value_initialized=True needs value=True (there is no V to initialise)")

    def replace(self, **kw) -> "FusionConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FusionConfig":
        """From our ``to_dict`` or an AdapterHub ``adapter_fusion_config.json`` dict."""
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k != "architecture"}  # AdapterHub tags configs with it
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown fusion config key(s) {unknown}; expected a subset of {sorted(known)}")
        if isinstance(d.get("value_initialized"), str):  # AdapterHub types this field as str
            d["value_initialized"] = d["value_initialized"].lower() == "true"
        return cls(**d)


PRESETS = {
    "dynamic": FusionConfig(),
    "static": FusionConfig(value=False, regularization=False, value_initialized=False),
}


def fusion_preset(name: str = "dynamic", **overrides) -> FusionConfig:
    """AdapterHub's ``dynamic`` (default) or ``static`` fusion config, with overrides.

    >>> fusion_preset("static").value
    False
    """
    if name not in PRESETS:
        raise ValueError(f"fusion preset {name!r} is not supported; expected one of {tuple(PRESETS)}")
    return PRESETS[name].replace(**overrides)
