"""Evaluate a saved adapter checkpoint on a task split (``jadapt eval``)."""
from __future__ import annotations

from typing import Optional


def evaluate_checkpoint(checkpoint: str, *, task: Optional[str] = None, data_dir: Optional[str] = None,
                        split: Optional[str] = None, batch_size: int = 64, max_length: int = 128,
                        attention: str = "matmul", buckets: Optional[tuple[int, ...]] = None) -> dict:
    """Metrics of the checkpoint's model on ``task``'s ``split`` (default: its dev split).
    ``attention``: ``matmul`` or ``fused`` (same numbers at inference; fused is for GPUs);
    ``buckets``: padded batch widths (default ``jadapt.data.DEFAULT_BUCKETS``)."""
    from jadapt import data
    from jadapt.checkpoint import load_model
    from jadapt.train.loop import evaluate
    from jadapt.train.step import make_eval_step

    model, params, meta = load_model(checkpoint, attention=attention)
    spec = data.get_task(task or meta["task"])
    head = model.head
    want = 1 if spec.regression else spec.num_labels
    if head is None:  # e.g. a merge: heads belong to their source tasks, so merging drops them
        raise ValueError(f"checkpoint {checkpoint} holds adapters but no head (a merge?); train one on the "
                         f"task first: jadapt train --task {spec.name} --init-adapter {checkpoint} --out DIR")
    if head.num_labels != want or head.regression != spec.regression:
        raise ValueError(f"checkpoint {checkpoint} has a head for {meta.get('task')!r} "
                         f"({None if head is None else head.num_labels} outputs); task {spec.name!r} needs {want}")
    if max_length > model.config.max_length:
        raise ValueError(f"max_length {max_length} exceeds the model's maximum {model.config.max_length}")
    tok = data.load_tokenizer(meta["base_model"])
    rows = data.load_split(spec, split or spec.dev_split, data_dir)
    encoded = data.encode(spec, rows, tok, max_length, model_max_length=model.config.max_length)
    import jax

    eval_fn = jax.jit(make_eval_step(model, regression=spec.regression))
    metrics = evaluate(eval_fn, params, {}, encoded, spec, batch_size, buckets=buckets)
    return {"task": spec.name, "split": split or spec.dev_split, "checkpoint": str(checkpoint),
            "examples": int(len(encoded["labels"])), **metrics}
