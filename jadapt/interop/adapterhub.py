"""AdapterHub (the ``adapters`` library) bottleneck adapters <-> jadapt.

A saved AdapterHub adapter is a folder with ``adapter_config.json`` ({"config": the full
``BnConfig`` dict, "name", "hidden_size", "model_type", "model_class", "model_name",
"version"}) and ``adapter.safetensors`` or ``pytorch_adapter.bin``; with a flex head also
``head_config.json`` and ``model_head.safetensors`` / ``pytorch_model_head.bin``.

Tensor names (an optional ``bert.``/``roberta.`` prefix), torch Linear weights ``[out, in]``:

    encoder.layer.<i>.attention.output.adapters.<name>.*  -> encoder/layer_i/attn_adapter/<name>/*
    encoder.layer.<i>.output.adapters.<name>.*            -> encoder/layer_i/ffn_adapter/<name>/*
      adapter_down.0 (Linear)  -> down         adapter_up          -> up
      with ln_before: adapter_down.0 is the LayerNorm (also saved as adapter_norm_before)
      and adapter_down.1 the Linear             adapter_norm_after  -> norm_after
    heads.<head>.1 / .4  (classification head, layers=2: dropout, dense, tanh, dropout, out)
                          -> head/dense, head/out   (layers=1: heads.<head>.1 -> head/out)

The placement flags map one to one onto :class:`jadapt.adapters.config.AdapterConfig`
(``AdapterSite`` implements AdapterHub's pre_forward / post_forward). Options jadapt does
not implement (Compacter PHM layers, gating, learned / channel scaling, invertible
adapters, per-layer sizes, left-out layers, stochastic depth, prefix tuning, LoRA) are
refused in one error that names them.
"""
from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

import numpy as np

from jadapt import tree
from jadapt import param_paths as paths
from jadapt.adapters.config import AdapterConfig
from jadapt.interop import AdapterBundle
from jadapt.models.model import HeadConfig

CONFIG_NAME, WEIGHTS_NAME, SAFE_WEIGHTS_NAME = "adapter_config.json", "pytorch_adapter.bin", "adapter.safetensors"
HEAD_CONFIG_NAME, HEAD_WEIGHTS_NAME, SAFE_HEAD_WEIGHTS_NAME = (
    "head_config.json", "pytorch_model_head.bin", "model_head.safetensors")
FORMAT_VERSION = "adapters.1.3.0"  # the library version whose file layout this module writes

# BnConfig defaults (adapters 1.3.0), so configs from any version compare and export alike.
BN_DEFAULTS = {
    "original_ln_before": False, "original_ln_after": True, "ln_before": False, "ln_after": False,
    "init_weights": "bert", "init_weights_seed": None, "is_parallel": False, "scaling": 1.0,
    "use_gating": False, "residual_before_ln": True, "adapter_residual_before_ln": False,
    "inv_adapter": None, "inv_adapter_reduction_factor": None, "cross_adapter": False, "leave_out": [],
    "dropout": 0.0, "phm_layer": False, "phm_dim": 4, "factorized_phm_W": True, "shared_W_phm": False,
    "shared_phm_rule": True, "factorized_phm_rule": False, "phm_c_init": "normal", "phm_init_range": 0.0001,
    "learn_phm": True, "hypercomplex_nonlinearity": "glorot-uniform", "phm_rank": 1, "phm_bias": True,
    "stochastic_depth": 0.0,
}
_SEQ = dict(mh_adapter=False, output_adapter=True, non_linearity="relu", reduction_factor=16,
            original_ln_before=True)
_DOUBLE = dict(mh_adapter=True, output_adapter=True, non_linearity="swish", reduction_factor=16)
_PAR = dict(mh_adapter=False, output_adapter=True, non_linearity="relu", reduction_factor=2,
            init_weights="mam_adapter", is_parallel=True, scaling=4.0)
# AdapterHub config names (ADAPTER_CONFIG_MAP) for the bottleneck architectures jadapt runs.
NAMED_CONFIGS = {"seq_bn": _SEQ, "pfeiffer": _SEQ, "double_seq_bn": _DOUBLE, "houlsby": _DOUBLE,
                 "par_bn": _PAR, "parallel": _PAR}

_INITS = {"bert": "bert", "houlsby": "houlsby", "mam_adapter": "mam"}
_ACT_ALIASES = {"gelu_python": "gelu", "leaky_relu": "leakyrelu"}  # HF names jadapt spells differently
_LEGACY_ACTIVATIONS = {"gelu": "gelu_new", "gelu_orig": "gelu"}  # files without "version"
_LEGACY_MODULES = ("attention_text_task_adapters", "attention_text_lang_adapters",
                   "layer_text_task_adapters", "layer_text_lang_adapters")
_KEY = re.compile(r"^(?:[A-Za-z_]+\.)?encoder\.layer\.(\d+)\.(attention\.output|output)\.adapters\.([^.]+)\.(.+)$")
_SITES = {"attention.output": paths.ATTN_SITE, "output": paths.FFN_SITE}  # AdapterHub module -> jadapt site
_MODULES = {v: k for k, v in _SITES.items()}
_MODEL_CLASS = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta"}


# ---------------------------------------------------------------- configs
def config_from_adapterhub(config: Mapping | str, *, bottleneck: Optional[int] = None,
                           legacy: bool = False, name: str = "adapter") -> AdapterConfig:
    """jadapt ``AdapterConfig`` for an AdapterHub bottleneck config dict (or config name).

    ``bottleneck``: the width read from the weights; without it the reduction factor is
    kept. ``legacy``: the file had no "version" (old activation names). Raises one
    ValueError naming every option jadapt does not implement.
    """
    if isinstance(config, str):
        if config not in NAMED_CONFIGS:
            raise ValueError(f"AdapterHub config {config!r} is not a bottleneck adapter jadapt runs; "
                             f"expected one of {sorted(NAMED_CONFIGS)}")
        config = NAMED_CONFIGS[config]
    c = {**BN_DEFAULTS, **config}
    bad = []
    if c.get("architecture") is not None:
        bad.append(f"architecture={c['architecture']!r} (jadapt imports AdapterHub bottleneck adapters only: "
                   "seq_bn, double_seq_bn, par_bn; LoRA comes through PEFT)")
    for key in ("mh_adapter", "output_adapter", "reduction_factor", "non_linearity"):
        if key not in c:
            bad.append(f"{key} is missing")
    if bad:
        raise ValueError(f"AdapterHub adapter {name!r} cannot be imported: " + "; ".join(bad))
    if c["phm_layer"]:
        bad.append("phm_layer=True (Compacter PHM layers)")
    if c["use_gating"]:
        bad.append("use_gating=True (UniPELT gating)")
    if c["inv_adapter"]:
        bad.append(f"inv_adapter={c['inv_adapter']!r} (invertible adapters)")
    if c["leave_out"]:
        bad.append(f"leave_out={list(c['leave_out'])} (layers without the adapter)")
    if c["stochastic_depth"]:
        bad.append(f"stochastic_depth={c['stochastic_depth']}")
    scaling = c["scaling"]
    if isinstance(scaling, bool) or not isinstance(scaling, (int, float)):
        bad.append(f"scaling={scaling!r} (only a constant float scaling)")
    if not isinstance(c["residual_before_ln"], bool):
        bad.append(f"residual_before_ln={c['residual_before_ln']!r} (only True / False)")
    if c["init_weights"] not in _INITS:
        bad.append(f"init_weights={c['init_weights']!r} (expected one of {sorted(_INITS)})")
    rf = c["reduction_factor"]
    if isinstance(rf, Mapping):
        values = {float(v) for v in rf.values()}
        if len(values) != 1:
            bad.append(f"reduction_factor={dict(rf)} (per-layer bottleneck sizes)")
        rf = values.pop() if len(values) == 1 else None
    act = str(c["non_linearity"]).lower()
    act = _LEGACY_ACTIVATIONS.get(act, act) if legacy else act
    act = _ACT_ALIASES.get(act, act)
    try:
        from jadapt.layers.activations import activation

        activation(act)
    except ValueError:
        bad.append(f"non_linearity={c['non_linearity']!r}")
    if bad:
        raise ValueError(f"AdapterHub adapter {name!r} uses options jadapt does not implement: " + "; ".join(bad))
    method = "parallel" if c["is_parallel"] else ("houlsby" if c["mh_adapter"] and c["output_adapter"] else "pfeiffer")
    return AdapterConfig(
        method=method,
        bottleneck=None if bottleneck is None else int(bottleneck),
        reduction_factor=None if bottleneck is not None else float(rf),
        activation=act,
        mh_adapter=bool(c["mh_adapter"]),
        output_adapter=bool(c["output_adapter"]),
        original_ln_before=bool(c["original_ln_before"]),
        original_ln_after=bool(c["original_ln_after"]),
        residual_before_ln=bool(c["residual_before_ln"]),
        adapter_residual_before_ln=bool(c["adapter_residual_before_ln"]),
        ln_before=bool(c["ln_before"]),
        ln_after=bool(c["ln_after"]),
        is_parallel=bool(c["is_parallel"]),
        scaling=float(scaling),
        init=_INITS[c["init_weights"]],
        dropout=float(c["dropout"]),
        train_layer_norms=False,
    )


def config_to_adapterhub(cfg: AdapterConfig, hidden_size: int) -> dict:
    """The full ``BnConfig`` dict (as the library writes it) for a jadapt bottleneck config."""
    if cfg.method == "lora":
        raise ValueError("AdapterHub export covers bottleneck adapters; export LoRA adapters with --format peft")
    init = {v: k for k, v in _INITS.items()}.get(cfg.init)
    if init is None:
        raise ValueError(f"adapter init {cfg.init!r} has no AdapterHub equivalent; "
                         f"expected one of {sorted(_INITS.values())}")
    return {
        **BN_DEFAULTS,
        "mh_adapter": cfg.mh_adapter,
        "output_adapter": cfg.output_adapter,
        "reduction_factor": reduction_factor_for(hidden_size, cfg.size(hidden_size), cfg.reduction_factor),
        "non_linearity": "linear" if cfg.activation.lower() == "identity" else cfg.activation.lower(),
        "original_ln_before": cfg.original_ln_before,
        "original_ln_after": cfg.original_ln_after,
        "ln_before": cfg.ln_before,
        "ln_after": cfg.ln_after,
        "init_weights": init,
        "is_parallel": cfg.is_parallel,
        "scaling": float(cfg.scaling),  # the library accepts only a float (an int is "unknown")
        "residual_before_ln": cfg.residual_before_ln,
        "adapter_residual_before_ln": cfg.adapter_residual_before_ln,
        "dropout": float(cfg.dropout),
    }


def reduction_factor_for(hidden: int, width: int, preferred: Optional[float] = None) -> float | int:
    """A reduction factor r with AdapterHub's ``max(1, int(hidden // r)) == width``."""
    ok = lambda r: max(1, int(hidden // r)) == width  # noqa: E731
    if preferred is not None and ok(preferred):
        return preferred
    if hidden % width == 0 and ok(hidden // width):
        return hidden // width
    r = hidden / width
    for _ in range(64):  # floor division of floats can land one below: step r down by ulps
        if ok(r):
            return r
        r = math.nextafter(r, 0.0)
    raise ValueError(f"no AdapterHub reduction_factor gives bottleneck {width} at hidden size {hidden}")


# ---------------------------------------------------------------- reading
def read_adapterhub(path: str | os.PathLike, *, name: Optional[str] = None) -> AdapterBundle:
    """An AdapterHub adapter folder (with its head, if saved) as an :class:`AdapterBundle`."""
    d = Path(path)
    meta = _read_json(d / CONFIG_NAME)
    saved_name = meta.get("name") or d.name
    name = name or saved_name
    raw = meta.get("config")
    if raw is None:
        raise ValueError(f"{d / CONFIG_NAME} has no adapter config")
    legacy = "version" not in meta
    config_from_adapterhub(raw, bottleneck=1, legacy=legacy, name=saved_name)  # refuse options before weights
    state = _read_tensors(d, SAFE_WEIGHTS_NAME, WEIGHTS_NAME)
    width, per_site, errors = None, {}, []
    for key, value in state.items():
        key2 = key
        for old in _LEGACY_MODULES:
            key2 = key2.replace(old, "adapters")
        m = _KEY.match(key2)
        if not m:
            errors.append(f"unexpected tensor {key!r} (not a bottleneck adapter weight)")
            continue
        layer, site, owner, rest = int(m[1]), _SITES[m[2]], m[3], m[4]
        if owner != saved_name:
            errors.append(f"tensor {key!r} belongs to adapter {owner!r}, the config names {saved_name!r}")
            continue
        per_site.setdefault((layer, site), {})[rest] = np.asarray(value, np.float32)
    if errors:
        raise ValueError(f"cannot read AdapterHub adapter {d}:\n  " + "\n  ".join(errors[:20]))
    if not per_site:
        raise ValueError(f"AdapterHub adapter {d} holds no bottleneck adapter weights")
    ln_before = bool({**BN_DEFAULTS, **(raw if isinstance(raw, Mapping) else NAMED_CONFIGS.get(raw, {}))}["ln_before"])
    flat = {}
    for (layer, site), t in sorted(per_site.items()):
        prefix = f"encoder/layer_{layer}/{site}/{name}"
        for rest, (sub, kind) in _weight_names(ln_before).items():
            if rest in t:
                leaf, value = rest.rsplit(".", 1)[1], t.pop(rest)
                flat[f"{prefix}/{sub}/{_leaf(kind, leaf)}"] = value.T if kind == "linear" and leaf == "weight" else value
        alias = {k: t.pop(k) for k in [k for k in t if k.startswith("adapter_norm_before.")]}
        for k, v in alias.items():  # the LayerNorm saved twice: both copies must agree
            other = flat.get(f"{prefix}/norm_before/{'scale' if k.endswith('weight') else 'bias'}")
            if other is None or not np.array_equal(other, v):
                errors.append(f"{prefix}: {k} disagrees with adapter_down.0")
        errors += [f"layer {layer} {site}: unexpected tensor {k!r}" for k in t]
        kernel = flat.get(f"{prefix}/down/kernel")
        if kernel is None:
            errors.append(f"layer {layer} {site}: no adapter_down weight")
        elif width is None:
            width = kernel.shape[1]
    if errors:
        raise ValueError(f"cannot read AdapterHub adapter {d}:\n  " + "\n  ".join(errors[:20]))
    cfg = config_from_adapterhub(raw, bottleneck=width, legacy=legacy, name=saved_name)
    hidden = meta.get("hidden_size")
    rf = {**BN_DEFAULTS, **(raw if isinstance(raw, Mapping) else NAMED_CONFIGS[raw])}["reduction_factor"]
    if hidden and not isinstance(rf, Mapping) and max(1, int(hidden // rf)) != width:
        raise ValueError(f"AdapterHub adapter {d}: reduction_factor {rf} at hidden size {hidden} means width "
                         f"{max(1, int(hidden // rf))}, the weights have {width}")
    _check_sites(cfg, per_site, d)
    head, labels, head_params = _read_head(d)
    params = tree.unflatten({**flat, **head_params})
    return AdapterBundle(name, cfg, params, head, labels, meta.get("model_name") or None, meta.get("model_type"),
                         {"format": "adapterhub", "config": raw, "name": saved_name, "version": meta.get("version")})


def _weight_names(ln_before: bool) -> dict[str, tuple[str, str]]:
    """AdapterHub tensor suffix -> (jadapt module, kind)."""
    names = {"adapter_up.weight": ("up", "linear"), "adapter_up.bias": ("up", "linear"),
             "adapter_norm_after.weight": ("norm_after", "ln"), "adapter_norm_after.bias": ("norm_after", "ln")}
    if ln_before:
        names.update({"adapter_down.0.weight": ("norm_before", "ln"), "adapter_down.0.bias": ("norm_before", "ln"),
                      "adapter_down.1.weight": ("down", "linear"), "adapter_down.1.bias": ("down", "linear")})
    else:
        names.update({"adapter_down.0.weight": ("down", "linear"), "adapter_down.0.bias": ("down", "linear")})
    return names


def _leaf(kind: str, torch_leaf: str) -> str:
    if torch_leaf == "bias":
        return "bias"
    return "kernel" if kind == "linear" else "scale"


def _check_sites(cfg: AdapterConfig, per_site: dict, d: Path) -> None:
    layers = sorted({layer for layer, _ in per_site})
    if layers != list(range(len(layers))):
        raise ValueError(f"AdapterHub adapter {d}: adapter weights only for layers {layers}")
    want = {(layer, s) for layer in layers for s in cfg.sites()}
    if set(per_site) != want:
        raise ValueError(f"AdapterHub adapter {d}: weights at {sorted(set(per_site) ^ want)} do not match the "
                         f"config (mh_adapter={cfg.mh_adapter}, output_adapter={cfg.output_adapter})")


def _read_head(d: Path) -> tuple[Optional[HeadConfig], Optional[tuple[str, ...]], dict]:
    if not (d / HEAD_CONFIG_NAME).is_file():
        return None, None, {}
    meta = _read_json(d / HEAD_CONFIG_NAME)
    hc = meta.get("config")
    if hc is None:
        raise ValueError(f"{d / HEAD_CONFIG_NAME}: a static head of {meta.get('model_class')} is not supported; "
                         "save the adapter from a flex-head model (e.g. BertAdapterModel)")
    bad = []
    if hc.get("head_type") != "classification":
        bad.append(f"head_type={hc.get('head_type')!r} (only 'classification')")
    layers = hc.get("layers", 2)
    if layers not in (1, 2):
        bad.append(f"layers={layers} (1 or 2)")
    if layers == 2 and str(hc.get("activation_function", "tanh")).lower() != "tanh":
        bad.append(f"activation_function={hc.get('activation_function')!r} (only 'tanh')")
    if hc.get("use_pooler"):
        bad.append("use_pooler=True")
    if not hc.get("bias", True):
        bad.append("bias=False")
    if bad:
        raise ValueError(f"AdapterHub head in {d} uses options jadapt does not implement: " + "; ".join(bad))
    n = int(hc["num_labels"])
    head = HeadConfig(num_labels=n, regression=n == 1, pooling="cls", dense=layers == 2,
                      dropout=float(hc["dropout_prob"]) if hc.get("dropout_prob") is not None else 0.1)
    state = _read_tensors(d, SAFE_HEAD_WEIGHTS_NAME, HEAD_WEIGHTS_NAME)
    idx = {"1": "dense", "4": "out"} if layers == 2 else {"1": "out"}
    flat, errors = {}, []
    for key, value in state.items():
        m = re.fullmatch(r"heads\.([^.]+)\.(\d+)\.(weight|bias)", key)
        if not m or m[2] not in idx:
            errors.append(f"unexpected head tensor {key!r}")
            continue
        value = np.asarray(value, np.float32)
        flat[f"head/{idx[m[2]]}/{'kernel' if m[3] == 'weight' else 'bias'}"] = value.T if m[3] == "weight" else value
    want = {f"head/{mod}/{leaf}" for mod in idx.values() for leaf in ("kernel", "bias")}
    if set(flat) != want:
        errors.append(f"head tensors {sorted(flat)} do not match a {layers}-layer classification head")
    elif flat["head/out/kernel"].shape[1] != n:
        errors.append(f"head output has {flat['head/out/kernel'].shape[1]} labels, the config says {n}")
    if errors:
        raise ValueError(f"cannot read AdapterHub head in {d}:\n  " + "\n  ".join(errors))
    label2id = hc.get("label2id")
    labels = tuple(k for k, _ in sorted(label2id.items(), key=lambda kv: kv[1])) if label2id else None
    if labels == tuple(f"LABEL_{i}" for i in range(len(labels or ()))):
        labels = None  # transformers' placeholder names carry no information
    return head, labels, flat


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return json.loads(path.read_text())


def _read_tensors(d: Path, safe_name: str, bin_name: str) -> dict[str, np.ndarray]:
    if (d / safe_name).is_file():
        from safetensors.numpy import load_file

        return load_file(str(d / safe_name))
    if (d / bin_name).is_file():
        try:
            import torch
        except ImportError as e:
            raise FileNotFoundError(f"{d / bin_name} needs torch to read (pip install torch), "
                                    f"or save the adapter with safetensors ({safe_name})") from e
        sd = torch.load(str(d / bin_name), map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in sd.items()}
    raise FileNotFoundError(f"{d} has neither {safe_name} nor {bin_name}")


# ---------------------------------------------------------------- writing
def write_adapterhub(out: str | os.PathLike, bundle: AdapterBundle, *, encoder_config, strict: bool = True) -> Path:
    """Write ``bundle`` as an AdapterHub adapter folder (safetensors) that
    ``model.load_adapter(out)`` loads, with the head as a flex classification head.

    ``strict=False`` drops what AdapterHub cannot hold (trained base params such as
    LayerNorms) with a warning instead of raising. A head that does not pool the first
    token (jadapt's default mean pooling) is always left out, with a warning: the adapter
    is complete without it, and a new head is what a user of the adapter trains anyway.
    """
    cfg, name, hidden = bundle.config, bundle.name, encoder_config.hidden_size
    full = config_to_adapterhub(cfg, hidden)
    state, head_state, extra = {}, {}, []
    for path, value in tree.flatten(bundle.params).items():
        value = np.asarray(value, np.float32)
        m = paths.BOTTLENECK_LEAF.fullmatch(path)
        if m and m[3] == name:
            site = _MODULES[m[2]]
            base = f"encoder.layer.{m[1]}.{site}.adapters.{name}."
            leaf = "bias" if m[5] == "bias" else "weight"
            tensor = value.T if m[5] == "kernel" else value
            if m[4] == "down":
                state[base + f"adapter_down.{1 if cfg.ln_before else 0}.{leaf}"] = tensor
            elif m[4] == "up":
                state[base + f"adapter_up.{leaf}"] = tensor
            elif m[4] == "norm_before":  # the library saves this LayerNorm under both names
                state[base + f"adapter_down.0.{leaf}"] = tensor
                state[base + f"adapter_norm_before.{leaf}"] = tensor.copy()
            else:
                state[base + f"adapter_norm_after.{leaf}"] = tensor
        elif path.startswith("head/"):
            head_state[path] = value
        else:
            extra.append(path)
    if not state:
        raise ValueError(f"bundle {name!r} holds no params of adapter {name!r}")
    head = bundle.head
    if head is not None and head.pooling != "cls":  # the adapter is still whole: write it, say what is left
        warnings.warn(f"head not exported: it pools by {head.pooling!r}, AdapterHub classification heads pool "
                      "the first token (train with --pooling cls to export the head too)", stacklevel=2)
        head, head_state = None, {}
    if extra:
        _refuse(strict, f"{len(extra)} param(s) outside the adapter and head have no place in an AdapterHub "
                        f"adapter, e.g. {extra[:3]}")
    model_type = bundle.model_type or encoder_config.model_type
    model_class = _MODEL_CLASS.get(model_type, "Bert") + "AdapterModel"
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    common = {"hidden_size": hidden, "model_class": model_class, "model_name": bundle.base_model or "",
              "model_type": model_type, "name": name, "version": FORMAT_VERSION}
    _write_json(o / CONFIG_NAME, {"config": full, **common})
    _save_tensors(state, o, SAFE_WEIGHTS_NAME, WEIGHTS_NAME)
    if head is not None:
        if model_type not in _MODEL_CLASS:
            raise ValueError(f"no AdapterHub flex-head model class for model_type {model_type!r}")
        _write_head(o, name, head, head_state, bundle.label_names, common)
    return o


def _write_head(o: Path, name: str, head: HeadConfig, head_state: dict, label_names, common: dict) -> None:
    labels = list(label_names) if label_names else [f"LABEL_{i}" for i in range(head.num_labels)]
    if len(labels) != head.num_labels:
        labels = [f"LABEL_{i}" for i in range(head.num_labels)]
    hc = {"activation_function": "tanh", "bias": True, "dropout_prob": float(head.dropout),
          "head_type": "classification", "label2id": {lab: i for i, lab in enumerate(labels)},
          "layers": 2 if head.dense else 1, "num_labels": head.num_labels, "use_pooler": False}
    idx = {"dense": 1, "out": 4} if head.dense else {"out": 1}
    state = {}
    for mod, i in idx.items():
        for leaf, torch_leaf in (("kernel", "weight"), ("bias", "bias")):
            v = head_state.get(f"head/{mod}/{leaf}")
            if v is None:
                raise ValueError(f"head of {name!r} lacks head/{mod}/{leaf}")
            state[f"heads.{name}.{i}.{torch_leaf}"] = np.ascontiguousarray(v.T if leaf == "kernel" else v)
    _write_json(o / HEAD_CONFIG_NAME, {"config": hc, **common})
    _save_tensors(state, o, SAFE_HEAD_WEIGHTS_NAME, HEAD_WEIGHTS_NAME)


def _save_tensors(state: dict, o: Path, safe_name: str, bin_name: str) -> None:
    """safetensors always; the torch ``.bin`` too when torch is installed, because
    ``load_adapter`` reads the ``.bin`` unless called with ``use_safetensors=True``."""
    from safetensors.numpy import save_file

    state = {k: np.ascontiguousarray(v, np.float32) for k, v in state.items()}
    save_file(state, str(o / safe_name), metadata={"format": "pt"})
    try:
        import torch
    except ImportError:
        (o / bin_name).unlink(missing_ok=True)  # never leave a stale .bin beside new safetensors
        return
    torch.save({k: torch.from_numpy(v.copy()) for k, v in state.items()}, str(o / bin_name))


def _refuse(strict: bool, msg: str) -> None:
    if strict:
        raise ValueError(msg + " (pass strict=False / --drop-unsupported to leave it out)")
    warnings.warn(msg + "; left out", stacklevel=3)


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True))
