"""Where adapters live in the params tree: the site names, and every path pattern built from them.

::

    encoder/layer_{i}/attn_adapter/<name>/{down,up,norm_before,norm_after}/...   bottleneck after attention
    encoder/layer_{i}/ffn_adapter/<name>/...                                      bottleneck after the FFN
    encoder/layer_{i}/{attn,ffn}_adapter/fusion/...                               AdapterFusion over a site
    encoder/layer_{i}/attention/lora_{query,key,value,attention_output}/<name>/{lora_a,lora_b}
    encoder/layer_{i}/lora_{intermediate,output}/<name>/{lora_a,lora_b}
    head/{dense,out}/...                                                          the task head

A *site* is the path component an adapter sits under (``attn_adapter``, ``ffn_adapter`` or
``lora_<target>``); the component after it is the adapter's name (or ``fusion``). Masks,
sharding rules, checkpoints, merges, fusion and the import / export formats select leaves
with the names and patterns here, so a new site is added in one place (and in the encoder
module that creates it).
"""
from __future__ import annotations

import re
from typing import Container, Optional

ATTN_SITE = "attn_adapter"  # bottleneck adapters after the attention block
FFN_SITE = "ffn_adapter"  # bottleneck adapters after the feed-forward block
BOTTLENECK_SITES = (ATTN_SITE, FFN_SITE)
FUSION = "fusion"  # the fusion layer's name inside a bottleneck site
LORA_PREFIX = "lora_"  # LoRA banks: lora_<target>
LORA_IN_ATTENTION = ("query", "key", "value", "attention_output")  # targets inside the attention scope


def lora_site(target: str) -> str:
    """``lora_<target>``: the site of a LoRA bank on ``target``."""
    return f"{LORA_PREFIX}{target}"


def lora_path(target: str) -> str:
    """The bank's path inside ``encoder/layer_i``: attention projections sit under ``attention/``."""
    return ("attention/" if target in LORA_IN_ATTENTION else "") + lora_site(target)


_BOTTLENECK_ALT = "|".join(map(re.escape, BOTTLENECK_SITES))
_BOTTLENECK = f"(?:{_BOTTLENECK_ALT})"
_SITE = rf"(?:{_BOTTLENECK_ALT}|{LORA_PREFIX}\w+)"

BOTTLENECK_SITE = _BOTTLENECK  # regex: one bottleneck site component
SITE_KEY = re.compile(rf"^{_SITE}$")  # a path component that is an adapter site
ADAPTER_LEAF = re.compile(rf"(?:^|/){_SITE}/([^/]+)/")  # group 1: the adapter's name (or "fusion")
ADAPTERS = rf"(?:^|/){_SITE}/"  # every adapter and fusion leaf
HEAD = r"^head/"
HEAD_OUT = r"^head/out/"  # the head's output layer: never in a base model
FUSION_LAYERS = rf"(?:^|/){_BOTTLENECK}/{FUSION}/"
FUSION_SITE = re.compile(rf"^(.*{_BOTTLENECK})/{FUSION}/")  # group 1: the site a fusion layer sits in
FUSION_VALUE_KERNEL = re.compile(rf"{FUSION_LAYERS}value/kernel$")
# encoder/layer_<i>/<site>/<name>/<part>/<leaf> of a bottleneck adapter
BOTTLENECK_LEAF = re.compile(rf"encoder/layer_(\d+)/({_BOTTLENECK})/([^/]+)/(down|up|norm_before|norm_after)/"
                             r"(kernel|bias|scale)")
# encoder/layer_<i>/<lora path>/<name>/lora_<a|b> of a LoRA bank
LORA_LEAF = re.compile(rf"encoder/layer_(\d+)/((?:attention/)?{LORA_PREFIX}\w+)/([^/]+)/lora_(a|b)")


def adapter_pattern(*names: str) -> str:
    """Regex (``re.search``) for the leaves of adapters ``names``, at every site; any adapter
    (not fusion layers) when no name is given."""
    alt = "|".join(re.escape(n) for n in names) if names else rf"(?!{FUSION}/)[^/]+"
    return rf"(?:^|/){_SITE}/(?:{alt})/"


def adapter_name(path: str) -> Optional[str]:
    """The adapter a leaf belongs to (``"fusion"`` for fusion layers), or None."""
    m = ADAPTER_LEAF.search(path)
    return m.group(1) if m else None


def rename(path: str, old: Container[str], new: str) -> str:
    """``path`` with its adapter name replaced by ``new`` when that name is in ``old``."""
    m = ADAPTER_LEAF.search(path)
    if m is None or m.group(1) not in old:
        return path
    return path[:m.start(1)] + new + path[m.end(1):]
