"""Task data: registry, loading, tokenisation, subsets, fixed-shape batches, prefetch.

Flow: ``load_split`` (numpy columns, labels checked) -> ``subsample`` / ``k_shot`` ->
``encode`` (token arrays) -> ``epoch_batches`` / ``eval_batches`` (fixed shapes, ``weight``
masks filler rows) -> ``prefetch`` (onto devices ahead of the step).
"""
from jadapt.data.batching import (
    DEFAULT_BUCKETS,
    bucket_for,
    bucket_sizes,
    epoch_batches,
    epoch_plan,
    eval_batches,
    first_batch_per_width,
    make_batch,
    num_batches,
)
from jadapt.data.loading import DATA_DIR_ENV, holdout_split, load_split, num_rows, read_jsonl, resolve_data_dir, take
from jadapt.data.prefetch import prefetch
from jadapt.data.subsets import k_shot, subsample
from jadapt.data.tasks import TASKS, TRACKS, XNLI_LANGS, TaskSpec, get_task, tasks_in_track, track_of
from jadapt.data.tokenize import encode, length_limit, load_tokenizer

__all__ = [
    "DATA_DIR_ENV", "DEFAULT_BUCKETS", "TASKS", "TRACKS", "XNLI_LANGS", "TaskSpec",
    "bucket_for", "bucket_sizes", "encode", "epoch_batches", "epoch_plan", "eval_batches",
    "first_batch_per_width", "get_task",
    "holdout_split", "k_shot", "length_limit", "load_split", "load_tokenizer", "make_batch", "num_batches",
    "num_rows", "prefetch", "read_jsonl", "resolve_data_dir", "subsample", "take", "tasks_in_track", "track_of",
]
