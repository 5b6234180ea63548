"""Checkpoints: small adapter files for sharing, full train states for resuming.

- ``save_adapter(dir, params, metadata)`` / ``load_adapter(dir)``: only the trained leaves
  (adapters, head, trained LayerNorms) + ``metadata.json`` saying how to rebuild the model
  (its format: ``jadapt.models.spec``).
- ``load_model(dir)``: that model rebuilt around its base encoder, saved leaves in place.
- ``TrainCheckpointer``: rolling orbax checkpoints of the whole train state (optimizer
  state, step, PRNG key), restored bitwise; keeps the best step by a metric.

Every write is atomic (complete directory renamed into place) and every bad input fails
with one ``CheckpointError`` / ``FileNotFoundError`` naming the path and what is wrong.
"""
from jadapt.checkpoint.adapter import load_adapter, save_adapter
from jadapt.checkpoint.files import FORMAT, SUPPORTED_VERSIONS, VERSION, CheckpointError
from jadapt.checkpoint.model import load_model, overlay, spec_of
from jadapt.checkpoint.train import TrainCheckpointer

__all__ = ["FORMAT", "SUPPORTED_VERSIONS", "VERSION", "CheckpointError", "TrainCheckpointer", "load_adapter",
           "load_model", "overlay", "save_adapter", "spec_of"]
