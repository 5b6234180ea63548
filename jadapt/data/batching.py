"""Fixed-shape batches from ``Encoded`` data, so a jitted step compiles once per bucket.

Every batch has exactly ``batch_size`` rows and a width from a small fixed set of length
buckets (default 8, 16, 24, 32, 48, 64, 96, 128, ... 512: steps of at most 1.5x above 16,
capped by the data's ``max_length``), so a batch is padded to at most 1.5x its longest row
(or 16 tokens) at the cost of one compilation per width used. On SST-2 (8k rows, length
sorting) the old (32, 64, 128) padded to 2.4x dynamic padding's width, these to 1.26x;
measured in benchmarks/RESULTS.md ("End to end"). A short last
batch is filled with copies of its first row whose ``weight`` is 0, so losses and metrics
that weight by ``weight`` ignore them. A batch is a dict of numpy arrays:

  input_ids, token_type_ids, attention_mask  int32   [B, width]
  labels                                     int32   [B]  (float32 for regression)
  weight                                     float32 [B]  1 real row, 0 filler
  index                                      int32   [B]  row in ``data``, -1 for filler

The training order depends only on (seed, epoch): the whole epoch's plan is a few numpy
index arrays, so resuming at ``start_step`` replays exactly the remaining batches. With
``sort_chunks`` the shuffled order is cut into chunks of ``sort_chunks * batch_size`` rows,
each chunk is sorted by length (like torchtext's BucketIterator) and the full batches are
shuffled again, which cuts padding without making batch composition depend on anything but
the seed.
"""
from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import numpy as np

from jadapt.data.loading import num_rows

DEFAULT_BUCKETS = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
Batch = dict  # dict[str, np.ndarray]


def bucket_sizes(max_length: int, buckets: Sequence[int] | None = None) -> tuple[int, ...]:
    """The widths batches may have: ``buckets`` (None: ``DEFAULT_BUCKETS``) below
    ``max_length``, then ``max_length``."""
    buckets = DEFAULT_BUCKETS if buckets is None else buckets
    if any(b < 1 for b in buckets):
        raise ValueError(f"buckets must be positive, got {tuple(buckets)}")
    return tuple(sorted({int(b) for b in buckets if b < max_length} | {int(max_length)}))


def bucket_for(length: int, sizes: Sequence[int]) -> int:
    """The smallest width in ``sizes`` (sorted) that holds ``length`` tokens."""
    i = int(np.searchsorted(np.asarray(sizes), length, side="left"))
    if i == len(sizes):
        raise ValueError(f"length {length} is longer than the largest bucket {sizes[-1]}")
    return int(sizes[i])


def num_batches(data: Mapping[str, np.ndarray] | int, batch_size: int, drop_remainder: bool = False) -> int:
    """Batches per epoch (the same for training and evaluation order)."""
    n = data if isinstance(data, (int, np.integer)) else num_rows(data)
    _check_batch_size(batch_size)
    return n // batch_size if drop_remainder else -(-n // batch_size)


def epoch_plan(data: Mapping[str, np.ndarray], batch_size: int, seed: int, epoch: int, shuffle: bool = True,
               sort_chunks: int | None = 64, drop_remainder: bool = False) -> list[np.ndarray]:
    """Row indices of each batch of one epoch (the last may be short unless dropped)."""
    n = num_rows(data)
    _check_batch_size(batch_size)
    if not shuffle:
        order = np.arange(n)
        rng = None
    else:
        rng = np.random.default_rng([int(seed), int(epoch)])
        order = rng.permutation(n)
        if sort_chunks:
            lengths = np.asarray(data["lengths"])
            size = int(sort_chunks) * batch_size
            chunks = [order[i:i + size] for i in range(0, n, size)]
            order = np.concatenate([c[np.argsort(lengths[c], kind="stable")] for c in chunks])
    n_full = n // batch_size
    batches = [order[i * batch_size:(i + 1) * batch_size] for i in range(n_full)]
    if rng is not None and sort_chunks:
        batches = [batches[i] for i in rng.permutation(n_full)]
    if n % batch_size and not drop_remainder:
        batches.append(order[n_full * batch_size:])
    return batches


def epoch_batches(data: Mapping[str, np.ndarray], batch_size: int, seed: int, epoch: int, shuffle: bool = True,
                  start_step: int = 0, buckets: Sequence[int] | None = None, sort_chunks: int | None = 64,
                  drop_remainder: bool = False, process_index: int = 0, process_count: int = 1) -> Iterator[Batch]:
    """The training batches of epoch ``epoch``, starting at step ``start_step`` of it.

    ``batch_size`` is global; with ``process_count`` > 1 each process gets its contiguous
    ``batch_size // process_count`` rows of every batch (all processes share the width).
    """
    plan = epoch_plan(data, batch_size, seed, epoch, shuffle, sort_chunks, drop_remainder)
    if not 0 <= start_step <= len(plan):
        raise ValueError(f"start_step {start_step} is outside this epoch's 0..{len(plan)} batches")
    sizes = bucket_sizes(_width(data), buckets)
    for idx in plan[start_step:]:
        yield make_batch(data, idx, batch_size, sizes, process_index, process_count)


def first_batch_per_width(data: Mapping[str, np.ndarray], batch_size: int, seed: int, epoch: int,
                          start_step: int = 0, buckets: Sequence[int] | None = None, sort_chunks: int | None = 64,
                          drop_remainder: bool = False) -> dict[int, Batch]:
    """{width: the first batch of that width} over what ``epoch_batches`` would yield, in the
    order the widths first occur: one example per program a run compiles."""
    plan = epoch_plan(data, batch_size, seed, epoch, True, sort_chunks, drop_remainder)
    sizes = bucket_sizes(_width(data), buckets)
    lengths = np.asarray(data["lengths"])
    out: dict[int, Batch] = {}
    for idx in plan[start_step:]:
        width = bucket_for(int(lengths[idx].max()), sizes)
        if width not in out:
            out[width] = make_batch(data, idx, batch_size, sizes)
    return out


def eval_batches(data: Mapping[str, np.ndarray], batch_size: int, buckets: Sequence[int] | None = None,
                 sort_by_length: bool = False, process_index: int = 0, process_count: int = 1) -> Iterator[Batch]:
    """Every row exactly once, no shuffling, fixed shapes. ``sort_by_length`` orders rows by
    length to cut padding (use ``batch["index"]`` to map predictions back)."""
    n = num_rows(data)
    _check_batch_size(batch_size)
    order = np.argsort(np.asarray(data["lengths"]), kind="stable") if sort_by_length else np.arange(n)
    sizes = bucket_sizes(_width(data), buckets)
    for i in range(0, n, batch_size):
        yield make_batch(data, order[i:i + batch_size], batch_size, sizes, process_index, process_count)


def make_batch(data: Mapping[str, np.ndarray], idx: np.ndarray, batch_size: int, sizes: Sequence[int],
               process_index: int = 0, process_count: int = 1) -> Batch:
    """Gather rows ``idx`` (at most ``batch_size``) into one fixed-shape batch (see module doc)."""
    idx = np.asarray(idx, dtype=np.int64)
    n_real = len(idx)
    if not 0 < n_real <= batch_size:
        raise ValueError(f"a batch needs 1..{batch_size} rows, got {n_real}")
    if batch_size % process_count or not 0 <= process_index < process_count:
        raise ValueError(f"batch_size {batch_size} must split evenly over process_count {process_count} "
                         f"and process_index {process_index} be in 0..{process_count - 1}")
    full = np.concatenate([idx, np.full(batch_size - n_real, idx[0])])
    lengths = np.asarray(data["lengths"])[full]
    width = bucket_for(int(lengths[:n_real].max()), sizes)
    real = np.arange(batch_size) < n_real
    per = batch_size // process_count
    mine = slice(process_index * per, (process_index + 1) * per)
    full, lengths, real = full[mine], lengths[mine], real[mine]
    return {
        "input_ids": data["input_ids"][full, :width],
        "token_type_ids": data["token_type_ids"][full, :width],
        "attention_mask": (np.arange(width)[None, :] < lengths[:, None]).astype(np.int32),
        "labels": data["labels"][full],
        "weight": real.astype(np.float32),
        "index": np.where(real, full, -1).astype(np.int32),
    }


def _width(data: Mapping[str, np.ndarray]) -> int:
    return int(np.asarray(data["input_ids"]).shape[1])


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
