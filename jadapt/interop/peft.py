"""PEFT LoRA adapters <-> jadapt.

A saved PEFT adapter is a folder with ``adapter_config.json`` (a ``LoraConfig`` dict) and
``adapter_model.safetensors`` (or ``adapter_model.bin``). Tensor names carry the wrapped
model's path, ``base_model.model.[bert.|roberta.]<module>``, with the adapter name dropped:

    encoder.layer.<i>.attention.self.{query,key,value}.lora_{A,B}.weight
                               -> encoder/layer_i/attention/lora_{query,key,value}/<name>/lora_{a,b}
    encoder.layer.<i>.attention.output.dense.lora_*   -> .../attention/lora_attention_output/<name>/...
    encoder.layer.<i>.intermediate.dense.lora_*       -> encoder/layer_i/lora_intermediate/<name>/...
    encoder.layer.<i>.output.dense.lora_*             -> encoder/layer_i/lora_output/<name>/...

``lora_A.weight`` is ``[r, in]`` and ``lora_B.weight`` ``[out, r]``; jadapt keeps
``lora_a`` ``[in, r]`` and ``lora_b`` ``[r, out]``, and both compute
``x W + b + (alpha / r) * dropout(x) A B`` (rsLoRA: ``alpha / sqrt(r)``, imported as an
equivalent ``lora_alpha``). ``modules_to_save`` tensors are whole modules: a
sequence-classification head (BERT: ``classifier`` + the pooler as ``head/dense``;
RoBERTa: ``classifier.dense`` / ``classifier.out_proj``) or trained base params such as
LayerNorms. A pooler LoRA (``target_modules`` "dense") is folded into ``head/dense`` when
there is a head and dropped otherwise: without a head the pooler is not computed.
"""
from __future__ import annotations

import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from jadapt import tree
from jadapt import param_paths as paths
from jadapt.adapters.config import LORA_TARGETS, AdapterConfig, preset
from jadapt.interop import AdapterBundle
from jadapt.models.model import HeadConfig

CONFIG_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_NAME = "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"

# HF module (inside encoder.layer.<i>.) of each jadapt LoRA target, and the target's param scope.
TARGET_MODULES = {
    "query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
    "attention_output": "attention.output.dense", "intermediate": "intermediate.dense", "output": "output.dense",
}
_MODULE_TARGET = {v: k for k, v in TARGET_MODULES.items()}
_PREFIX = re.compile(r"^(bert|roberta|xlm_roberta|camembert|model)\.")
_LORA = re.compile(r"^encoder\.layer\.(\d+)\.(" + "|".join(re.escape(m) for m in TARGET_MODULES.values())
                   + r")\.lora_([AB])(?:\.[^.]+)?\.weight$")
_POOLER_LORA = re.compile(r"^pooler\.dense\.lora_([AB])(?:\.[^.]+)?\.weight$")
_MODEL_PREFIX = {"bert": "bert.", "roberta": "roberta.", "xlm-roberta": "roberta.", "camembert": "roberta."}

# jadapt base param path -> (HF module, transform) for modules_to_save (and its inverse on import).
_BASE_MODULES = [
    (r"embeddings/(word|position|token_type)_embeddings", r"embeddings.\1_embeddings", "embed"),
    (r"embeddings/layer_norm", "embeddings.LayerNorm", "ln"),
    (r"encoder/layer_(\d+)/attention/(query|key|value)", r"encoder.layer.\1.attention.self.\2", "linear"),
    (r"encoder/layer_(\d+)/attention/output", r"encoder.layer.\1.attention.output.dense", "linear"),
    (r"encoder/layer_(\d+)/attention_layer_norm", r"encoder.layer.\1.attention.output.LayerNorm", "ln"),
    (r"encoder/layer_(\d+)/intermediate", r"encoder.layer.\1.intermediate.dense", "linear"),
    (r"encoder/layer_(\d+)/output", r"encoder.layer.\1.output.dense", "linear"),
    (r"encoder/layer_(\d+)/output_layer_norm", r"encoder.layer.\1.output.LayerNorm", "ln"),
]
_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
_TORCH_TO_LEAF = {"linear": {"weight": "kernel", "bias": "bias"}, "ln": {"weight": "scale", "bias": "bias"},
                  "embed": {"weight": "embedding"}}

# Options whose non-default value changes what the saved weights compute.
_REFUSED = {
    "use_dora": "DoRA (use_dora=True)",
    "lora_bias": "LoRA biases (lora_bias=True)",
    "layers_to_transform": "LoRA on some layers only (layers_to_transform)",
    "rank_pattern": "per-module ranks (rank_pattern)",
    "alpha_pattern": "per-module alphas (alpha_pattern)",
    "layer_replication": "layer_replication",
    "trainable_token_indices": "trainable_token_indices",
    "target_parameters": "target_parameters",
    "use_qalora": "QA-LoRA (use_qalora=True)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "use_bdlora": "use_bdlora",
}


# ---------------------------------------------------------------- configs
def config_from_peft(c: dict, *, targets: Optional[tuple[str, ...]] = None, name: str = "lora") -> AdapterConfig:
    """jadapt LoRA config for a PEFT ``LoraConfig`` dict; ``targets`` read from the weights
    (else from ``target_modules``). Raises one ValueError naming every refused option."""
    bad = []
    if c.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"PEFT adapter {name!r}: peft_type={c.get('peft_type')!r} is not supported (only 'LORA')")
    for key, what in _REFUSED.items():
        if c.get(key):
            bad.append(f"{what}")
    if c.get("bias", "none") != "none":
        bad.append(f"bias={c['bias']!r} (trained base biases; only 'none')")
    if c.get("init_lora_weights") == "loftq":
        bad.append("init_lora_weights='loftq' (LoftQ changes the base weights)")
    if targets is None:
        targets = _targets_from_config(c.get("target_modules"), bad)
    if bad:
        raise ValueError(f"PEFT adapter {name!r} uses options jadapt does not implement: " + "; ".join(bad))
    r, alpha = int(c["r"]), float(c.get("lora_alpha", 8))
    if c.get("use_rslora"):  # scaling alpha / sqrt(r) == alpha' / r
        alpha = alpha * math.sqrt(r)
    return preset("lora", lora_r=r, lora_alpha=alpha, lora_targets=tuple(targets),
                  dropout=float(c.get("lora_dropout") or 0.0))


def _targets_from_config(target_modules, bad: list) -> tuple[str, ...]:
    names = [target_modules] if isinstance(target_modules, str) else list(target_modules or [])
    found = []
    for t in LORA_TARGETS:
        mod = TARGET_MODULES[t]
        key = f"encoder.layer.0.{mod}"
        for n in names:
            hit = re.fullmatch(n, key) if isinstance(target_modules, str) else (key == n or key.endswith("." + n))
            if hit:
                found.append(t)
                break
    if not found:
        bad.append(f"target_modules={target_modules!r} (matches none of {sorted(TARGET_MODULES.values())})")
    return tuple(found)


def config_to_peft(cfg: AdapterConfig, *, head: bool = False, modules_to_save=None, base_model=None) -> dict:
    """A ``LoraConfig`` dict PEFT loads, targeting exactly ``cfg.lora_targets``."""
    if cfg.method != "lora":
        raise ValueError("PEFT export covers LoRA adapters; export bottleneck adapters with --format adapterhub")
    mods = "|".join(re.escape(TARGET_MODULES[t]) for t in cfg.lora_targets)
    return {
        "peft_type": "LORA", "task_type": "SEQ_CLS" if head else None, "base_model_name_or_path": base_model,
        "r": cfg.lora_r, "lora_alpha": float(cfg.lora_alpha), "lora_dropout": float(cfg.dropout),
        # a regex (fullmatch), so "output.dense" cannot also catch "attention.output.dense"
        "target_modules": rf"(.*\.)?encoder\.layer\.\d+\.({mods})",
        "modules_to_save": list(modules_to_save) if modules_to_save else None,
        "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "lora_bias": False,
        "init_lora_weights": True, "inference_mode": True, "layers_to_transform": None, "layers_pattern": None,
        "rank_pattern": {}, "alpha_pattern": {}, "exclude_modules": None, "layer_replication": None,
        "revision": None, "auto_mapping": None,
    }


# ---------------------------------------------------------------- reading
def read_peft(path: str | os.PathLike, *, name: Optional[str] = None,
              base_model: Optional[str | os.PathLike] = None) -> AdapterBundle:
    """A PEFT LoRA folder as an :class:`AdapterBundle`.

    ``name`` defaults to the folder name. ``base_model`` (else the config's
    ``base_model_name_or_path``) is read only to fold a pooler LoRA into the head.
    """
    d = Path(path)
    cfg_file = d / CONFIG_NAME
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file} does not exist")
    c = json.loads(cfg_file.read_text())
    name = name or (d.name if re.fullmatch(r"[A-Za-z0-9_.-]+", d.name) else "lora")
    config_from_peft(c, targets=("query",), name=name)  # refuse bad options before reading weights
    state = _read_tensors(d)
    lora, pooler, whole, errors, model_prefix = {}, {}, {}, [], None
    for key, value in state.items():
        k = key[len("base_model.model."):] if key.startswith("base_model.model.") else key
        pm = _PREFIX.match(k)
        if pm and not k.startswith("classifier"):
            model_prefix, k = pm[1], k[pm.end():]
        value = np.asarray(value, np.float32)
        if m := _LORA.match(k):
            lora[(int(m[1]), _MODULE_TARGET[m[2]], m[3])] = value
        elif m := _POOLER_LORA.match(k):
            pooler[m[1]] = value
        elif "lora_" in k:
            errors.append(f"LoRA tensor {key!r} targets a module jadapt has no LoRA site for "
                          f"(supported: {sorted(TARGET_MODULES.values())})")
        else:
            whole[k] = value
    if errors:
        raise ValueError(f"cannot read PEFT adapter {d}:\n  " + "\n  ".join(errors[:20]))
    if not lora:
        raise ValueError(f"PEFT adapter {d} holds no LoRA weights on encoder layers")
    targets = tuple(t for t in LORA_TARGETS if any(tt == t for _, tt, _ in lora))
    cfg = config_from_peft(c, targets=targets, name=name)
    flat = {}
    for (layer, target, ab), value in lora.items():
        want_r = value.shape[0] if ab == "A" else value.shape[1]
        if want_r != cfg.lora_r:
            errors.append(f"layer {layer} {target} lora_{ab} has rank {want_r}, the config says r={cfg.lora_r}")
        flat[f"encoder/layer_{layer}/{paths.lora_path(target)}/{name}/lora_{ab.lower()}"] = value.T
    layers = sorted({layer for layer, _, _ in lora})
    want = {(layer, t, ab) for layer in range(len(layers)) for t in targets for ab in "AB"}
    if set(lora) != want:
        errors.append(f"LoRA weights at {sorted(set(lora) ^ want)[:6]} break the pattern "
                      f"'every layer, every target ({', '.join(targets)})'")
    head_flat, head, extra = _whole_modules(whole, errors)
    if errors:
        raise ValueError(f"cannot read PEFT adapter {d}:\n  " + "\n  ".join(errors[:20]))
    base_name = c.get("base_model_name_or_path")
    if pooler:
        if head is None:
            warnings.warn(f"PEFT adapter {d}: LoRA on the pooler is dropped (no classification head uses it)",
                          stacklevel=2)
        elif "head/dense/kernel" in head_flat:
            raise ValueError(f"PEFT adapter {d} has both a saved pooler and a pooler LoRA")
        else:
            head_flat.update(_fold_pooler(pooler, cfg, base_model or base_name, d))
    params = tree.unflatten({**flat, **head_flat, **extra})
    model_type = {"bert": "bert", "roberta": "roberta"}.get(model_prefix)
    return AdapterBundle(name, cfg, params, head, None, base_name, model_type, {"format": "peft", "config": c})


def _whole_modules(whole: dict, errors: list) -> tuple[dict, Optional[HeadConfig], dict]:
    """modules_to_save tensors -> (head params, head config, other base params)."""
    head, extra = {}, {}
    for k, v in whole.items():
        if m := re.fullmatch(r"classifier(?:\.out_proj)?\.(weight|bias)", k):
            head[f"head/out/{'kernel' if m[1] == 'weight' else 'bias'}"] = v.T if m[1] == "weight" else v
        elif m := re.fullmatch(r"(?:classifier|pooler)\.dense\.(weight|bias)", k):
            head[f"head/dense/{'kernel' if m[1] == 'weight' else 'bias'}"] = v.T if m[1] == "weight" else v
        elif path := _base_path(k):
            extra[path] = v.T if path.endswith("/kernel") else v
        else:
            errors.append(f"unexpected tensor {k!r} (modules_to_save jadapt cannot place)")
    if not head:
        return head, None, extra
    if "head/out/kernel" not in head or "head/out/bias" not in head:
        errors.append(f"head tensors {sorted(head)} lack the output layer (classifier)")
        return head, None, extra
    n = head["head/out/kernel"].shape[1]
    return head, HeadConfig(num_labels=n, regression=n == 1, pooling="cls", dense=True), extra


def _base_path(hf_name: str) -> Optional[str]:
    module, _, leaf = hf_name.rpartition(".")
    for jpath, hf_mod, kind in _BASE_MODULES:
        m = re.fullmatch(_hf_module_regex(hf_mod), module)
        if m and leaf in _TORCH_TO_LEAF[kind]:
            return _fill(jpath, m.groups()) + "/" + _TORCH_TO_LEAF[kind][leaf]
    return None


def _hf_module_regex(template: str) -> str:
    """``encoder.layer.\\1.attention.self.\\2`` -> a regex capturing \\1, \\2."""
    groups = {"1": r"(\w+?)", "2": r"(query|key|value)"}
    parts = re.split(r"(\\\d)", template)
    return "".join(groups[p[1]] if re.fullmatch(r"\\\d", p) else re.escape(p) for p in parts)


def _fill(jpath_regex: str, groups: tuple) -> str:
    out, it = [], iter(groups)
    for part in re.split(r"(\([^)]*\))", jpath_regex):
        out.append(next(it) if part.startswith("(") else part)
    return "".join(out)


def _fold_pooler(pooler: dict, cfg: AdapterConfig, base_model, d: Path) -> dict:
    """head/dense = pooler + scaling * B A: the base's pooler with its LoRA merged in."""
    if set(pooler) != {"A", "B"}:
        raise ValueError(f"PEFT adapter {d}: pooler LoRA lacks lora_A or lora_B")
    if base_model in (None, ""):
        raise ValueError(f"PEFT adapter {d} has a pooler LoRA; pass the base model (--model) to merge it into the head")
    from jadapt.models.hf import read_state_dict, resolve_model_path

    sd = {_PREFIX.sub("", k): v for k, v in read_state_dict(resolve_model_path(base_model)).items()}
    if "pooler.dense.weight" not in sd:
        raise ValueError(f"PEFT adapter {d} has a pooler LoRA but base model {base_model} has no pooler")
    w = sd["pooler.dense.weight"].astype(np.float64) + cfg.lora_scaling * (
        pooler["B"].astype(np.float64) @ pooler["A"].astype(np.float64))
    return {"head/dense/kernel": np.ascontiguousarray(w.T.astype(np.float32)),
            "head/dense/bias": np.asarray(sd["pooler.dense.bias"], np.float32)}


def _read_tensors(d: Path) -> dict[str, np.ndarray]:
    if (d / SAFE_WEIGHTS_NAME).is_file():
        from safetensors.numpy import load_file

        return load_file(str(d / SAFE_WEIGHTS_NAME))
    if (d / WEIGHTS_NAME).is_file():
        try:
            import torch
        except ImportError as e:
            raise FileNotFoundError(f"{d / WEIGHTS_NAME} needs torch to read (pip install torch), "
                                    f"or save with safetensors") from e
        sd = torch.load(str(d / WEIGHTS_NAME), map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in sd.items()}
    raise FileNotFoundError(f"{d} has neither {SAFE_WEIGHTS_NAME} nor {WEIGHTS_NAME}")


# ---------------------------------------------------------------- writing
def write_peft(out: str | os.PathLike, bundle: AdapterBundle, *, encoder_config, strict: bool = True) -> Path:
    """Write ``bundle`` as a PEFT LoRA folder that ``PeftModel.from_pretrained`` loads.

    Without a head the names fit the bare encoder (``AutoModel``); with one they fit
    ``AutoModelForSequenceClassification`` (task_type SEQ_CLS, the head as
    ``modules_to_save``). Trained base params (e.g. LayerNorms) become ``modules_to_save``
    too. ``strict=False`` drops a head PEFT cannot express (mean pooling, no dense layer)
    with a warning instead of raising.
    """
    from safetensors.numpy import save_file

    cfg, name = bundle.config, bundle.name
    if cfg.method != "lora":
        raise ValueError("PEFT export covers LoRA adapters; export bottleneck adapters with --format adapterhub")
    model_type = bundle.model_type or encoder_config.model_type
    head = bundle.head
    if head is not None and (head.pooling != "cls" or not head.dense):
        msg = (f"head (pooling={head.pooling!r}, dense={head.dense}) has no PEFT / transformers equivalent: "
               "sequence classification pools the first token through a dense tanh layer")
        if strict:
            raise ValueError(msg + " (pass strict=False / --drop-unsupported to leave it out)")
        warnings.warn(msg + "; left out", stacklevel=2)
        head = None
    prefix = "base_model.model." + (_MODEL_PREFIX.get(model_type, "bert.") if head is not None else "")
    roberta_head = model_type != "bert"
    state, modules, errors = {}, [], []
    targets = {paths.lora_path(t): t for t in cfg.lora_targets}
    for path, value in tree.flatten(bundle.params).items():
        value = np.asarray(value, np.float32)
        if m := paths.LORA_LEAF.fullmatch(path):
            if m[3] != name or m[2] not in targets:
                errors.append(f"{path} is not a target of adapter {name!r}")
                continue
            mod = f"encoder.layer.{m[1]}.{TARGET_MODULES[targets[m[2]]]}"
            state[f"{prefix}{mod}.lora_{m[4].upper()}.weight"] = value.T
        elif path.startswith("head/"):
            if head is None:
                continue
            mod, leaf = path.split("/")[1:]
            torch_leaf = _LEAF_TO_TORCH[leaf]
            if mod == "dense":
                key = "classifier.dense" if roberta_head else _MODEL_PREFIX.get(model_type, "bert.") + "pooler.dense"
            else:
                key = "classifier.out_proj" if roberta_head else "classifier"
            state[f"base_model.model.{key}.{torch_leaf}"] = value.T if leaf == "kernel" else value
        elif hf := _hf_module(path):
            module, leaf = hf
            modules.append(module)
            state[f"{prefix}{module}.{_LEAF_TO_TORCH[leaf]}"] = value.T if leaf == "kernel" else value
        else:
            errors.append(f"{path} has no place in a PEFT LoRA adapter")
    lora_modules = {k.rsplit(".lora_", 1)[0][len(prefix):] for k in state if ".lora_" in k}
    clash = sorted(lora_modules & set(modules))
    if clash:
        errors.append(f"modules both LoRA-adapted and trained in full: {clash[:3]}")
    if errors:
        raise ValueError(f"cannot write PEFT adapter {name!r}:\n  " + "\n  ".join(errors[:20]))
    to_save = sorted(set(modules))
    if head is not None:
        to_save = ["classifier"] + ([] if roberta_head else ["pooler"]) + to_save
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    config = config_to_peft(cfg, head=head is not None, modules_to_save=to_save, base_model=bundle.base_model)
    (o / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(o / SAFE_WEIGHTS_NAME),
              metadata={"format": "pt"})
    return o


def _hf_module(path: str) -> Optional[tuple[str, str]]:
    """jadapt base param path -> (HF module name, jadapt leaf), e.g. LayerNorm scales."""
    module, _, leaf = path.rpartition("/")
    for jpath, hf_mod, kind in _BASE_MODULES:
        m = re.fullmatch(jpath, module)
        if m and leaf in {"linear": ("kernel", "bias"), "ln": ("scale", "bias"), "embed": ("embedding",)}[kind]:
            return m.expand(hf_mod), leaf
    return None
