"""Evaluate a saved adapter checkpoint on a task split (``jadapt eval``)."""
from __future__ import annotations

from typing import Optional


def evaluate_checkpoint(checkpoint: str, *, task: Optional[str] = None, data_dir: Optional[str] = None,
                        split: Optional[str] = None, batch_size: int = 64, max_length: int = 128,
                        attention: str = "matmul", buckets: Optional[tuple[int, ...]] = None,
                        allow_task_mismatch: bool = False) -> dict:
    """Metrics of the checkpoint's model on ``task``'s ``split`` (default: its dev split).
    ``attention``: ``matmul`` or ``fused`` (same numbers at inference; fused is for GPUs);
    ``buckets``: padded batch widths (default ``jadapt.data.DEFAULT_BUCKETS``).

    A head trained on one task scores another task's examples as if they were its own
    labels (MRPC's "equivalent" read as SST-2's "positive"): a number, but no result. So a
    task of another track than the checkpoint's is refused unless ``allow_task_mismatch``,
    even where the label counts agree; one of the same track and labels (MNLI -> XNLI,
    SST-2 -> IMDb: transfer) is evaluated with a notice. A checkpoint without a head (a
    merge) is refused."""
    from jadapt import data
    from jadapt.checkpoint import load_model
    from jadapt.train.loop import evaluate
    from jadapt.train.step import make_eval_step

    model, params, meta = load_model(checkpoint, attention=attention)
    head = model.head
    if head is None:  # a merge: heads belong to their source tasks, so merging drops them
        what = "a merge of adapters" if "merge" in meta else "adapters only"
        target = task or "<task>"
        raise ValueError(f"checkpoint {checkpoint} is {what}, with no task head to evaluate; give it one by "
                         f"training on the target task: jadapt train --task {target} --init-adapter {checkpoint} "
                         "--out DIR")
    trained_on = meta.get("task")
    spec = data.get_task(task or trained_on)
    if trained_on is not None and spec.name != trained_on:
        _check_transfer(checkpoint, data.get_task(trained_on) if trained_on in data.TASKS else None, spec,
                        allow_task_mismatch)
    want = 1 if spec.regression else spec.num_labels
    if head.num_labels != want or head.regression != spec.regression:
        raise ValueError(f"checkpoint {checkpoint} has a head for {meta.get('task')!r} "
                         f"({head.num_labels} outputs); task {spec.name!r} needs {want}")
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


def _check_transfer(checkpoint, trained, spec, allowed: bool) -> None:
    """Refuse (unless ``allowed``) a task whose labels mean something else than the head's."""
    from jadapt.checkpoint.files import notice

    same_labels = (trained is not None and trained.track == spec.track and trained.num_labels == spec.num_labels
                   and trained.regression == spec.regression)
    name = trained.name if trained is not None else "another task"
    if same_labels or allowed:
        what = f"same {spec.track} labels" if same_labels else "--allow-task-mismatch"
        notice(f"evaluating a checkpoint trained on {name!r} on {spec.name!r} ({what})")
        return
    track = f" ({trained.track})" if trained is not None else ""
    raise ValueError(f"checkpoint {checkpoint} was trained on {name!r}{track}, not {spec.name!r} ({spec.track}): "
                     f"its head's outputs mean {name}'s labels; pass --allow-task-mismatch to evaluate it anyway")
