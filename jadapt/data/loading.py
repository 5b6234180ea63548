"""Read one split of a task into plain numpy columns, checking every label on the way in.

A split is a ``Rows`` dict: the task's text fields (numpy ``object`` arrays of ``str``, under
their HF names), ``"label"`` (``int64`` class ids, or ``float32`` for regression, taken from
the spec's ``label_field``) and ``"row"`` (``int64``, the row's position in its source file
or hub split, for tracing a prediction back). Plain columns keep subsets and batching to
numpy fancy indexing, with no cache files written behind the caller's back.

Where the data comes from: ``data_dir`` if given, else ``$JADAPT_DATA_DIR``, else the
Hugging Face hub (``datasets.load_dataset(*spec.hub)``, needs network). Locally a split
is ``<data_dir>/<local_dir>/<split>.jsonl`` (xnli: ``xnli/<lang>/validation.jsonl``).
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from jadapt.data.tasks import TaskSpec, get_task

Rows = dict  # dict[str, np.ndarray], all columns the same length
DATA_DIR_ENV = "JADAPT_DATA_DIR"
_log = logging.getLogger(__name__)


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """``data_dir``, else ``$JADAPT_DATA_DIR``, else None (meaning: the hub)."""
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or None
    if data_dir is None:
        return None
    p = Path(data_dir).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"data directory {p} does not exist")
    return p


def num_rows(rows: Mapping[str, np.ndarray]) -> int:
    lengths = {len(v) for v in rows.values()}
    if len(lengths) != 1:
        raise ValueError(f"columns have different lengths: { {k: len(v) for k, v in rows.items()} }")
    return lengths.pop()


def take(rows: Mapping[str, np.ndarray], indices) -> Rows:
    """The rows at ``indices`` (any column dict: raw rows, encoded data)."""
    idx = np.asarray(indices, dtype=np.int64)
    return {k: v[idx] for k, v in rows.items()}


def load_split(task: str | TaskSpec, split: str, data_dir: str | os.PathLike | None = None, *,
               drop_unlabeled: bool | None = None) -> Rows:
    """One split of ``task`` as numpy columns (see the module docstring).

    ``split`` is a split name (``"train"``, ``"validation"``, ``"validation_matched"``...) or
    ``"dev"`` for the spec's dev split. Labels outside the task's label set raise ValueError
    naming the task, the label and its row; ``drop_unlabeled`` (default: the spec's, True
    for SNLI) drops rows labelled -1 instead. An empty result raises.
    """
    spec = get_task(task)
    if split == "dev":
        split = spec.dev_split
    drop = spec.drop_unlabeled if drop_unlabeled is None else drop_unlabeled
    root = resolve_data_dir(data_dir)
    if root is None:
        columns, source = _read_hub(spec, split)
    else:
        columns, source = _read_local(spec, split, root)
    rows = _validate(spec, columns, source, drop)
    if not num_rows(rows):
        raise ValueError(f"task {spec.name}: split {split!r} from {source} has no labelled rows")
    return rows


def read_jsonl(path: str | os.PathLike, limit: int | None = None) -> list[dict[str, Any]]:
    """The records (the first ``limit``) of a JSON Lines file; a line that is not UTF-8 or
    not JSON raises a ValueError naming ``path:line``."""
    out = []
    with open(path, "rb") as f:  # decoded line by line, so an error can name its line
        for lineno, raw in enumerate(f, 1):
            if limit is not None and len(out) >= limit:
                break
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start} of the line)"
                                 ) from None
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    return out


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, dev) row indices: a seeded ``fraction`` of ``range(n)`` held out, both sorted."""
    perm = np.random.default_rng(seed).permutation(n)
    n_dev = int(round(n * fraction))
    return np.sort(perm[n_dev:]), np.sort(perm[:n_dev])


def _read_local(spec: TaskSpec, split: str, root: Path) -> tuple[dict[str, list], str]:
    if spec.holdout and split in (spec.train_split, spec.dev_split):
        dev_file = root / spec.local_candidates(spec.dev_split)[0]
        train_file = root / spec.local_candidates(spec.train_split)[0]
        if not dev_file.is_file() and train_file.is_file():
            records = read_jsonl(train_file)
            tr, dev = holdout_split(len(records), spec.holdout, spec.holdout_seed)
            idx = dev if split == spec.dev_split else tr
            source = f"{train_file} ({'held-out' if split == spec.dev_split else 'kept'} part, " \
                     f"holdout={spec.holdout}, seed={spec.holdout_seed})"
            return _records_to_columns(spec, [records[i] for i in idx], source, idx), source
    for rel in spec.local_candidates(split):
        path = root / rel
        if path.is_file():
            if rel != spec.local_candidates(split)[0]:
                _log.info("task %s: no %s.jsonl, reading split %r from %s", spec.name, split, split, path)
            return _records_to_columns(spec, read_jsonl(path), str(path), itertools.count()), str(path)
    tried = ", ".join(str(root / r) for r in spec.local_candidates(split))
    hint = f" ({spec.note})" if spec.note else ""
    raise FileNotFoundError(f"task {spec.name}: split {split!r} not found; tried {tried}{hint}")


def _records_to_columns(spec: TaskSpec, records: Sequence[Mapping], source: str, row_ids) -> dict[str, list]:
    fields = (*spec.text_fields, spec.label_field)
    cols: dict[str, list] = {f: [] for f in fields}
    rows = []
    for rec, row in zip(records, row_ids):
        for f in fields:
            try:
                cols[f].append(rec[f])
            except KeyError:
                raise ValueError(f"task {spec.name}: row {row} of {source} has no field {f!r} "
                                 f"(fields: {sorted(rec)})") from None
        rows.append(row)
    cols["row"] = rows
    return cols


def _read_hub(spec: TaskSpec, split: str) -> tuple[dict[str, list], str]:
    if spec.hub is None:
        raise FileNotFoundError(
            f"task {spec.name} has no hub source: pass data_dir or set ${DATA_DIR_ENV}"
            + (f" ({spec.note})" if spec.note else ""))
    import datasets  # imported here: loading local files never needs it

    path, config = spec.hub
    hub_split = spec.hub_split(split)
    try:
        ds = datasets.load_dataset(path, config, split=hub_split)
    except Exception as e:  # offline, unknown config...: the fix is local data, so say how to give it
        cause = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(f"task {spec.name}: no local data given (--data-dir DIR or ${DATA_DIR_ENV}) and "
                                f"the Hugging Face hub dataset {path}/{config} cannot be loaded ({cause})") from e
    fields = (*spec.text_fields, spec.label_field)
    missing = [f for f in fields if f not in ds.column_names]
    if missing:
        raise ValueError(f"task {spec.name}: hub dataset {path}/{config} has no fields {missing} "
                         f"(columns: {ds.column_names})")
    cols = {f: list(ds[f]) for f in fields}
    cols["row"] = list(range(len(ds)))
    return cols, f"hub {path}/{config} split {hub_split}"


def _validate(spec: TaskSpec, cols: dict[str, list], source: str, drop_unlabeled: bool) -> Rows:
    """Check labels and texts, drop -1 rows if asked, and convert to numpy columns."""
    raw, row_ids = cols[spec.label_field], cols["row"]
    keep = np.ones(len(raw), dtype=bool)
    labels = np.zeros(len(raw), dtype=np.float32 if spec.regression else np.int64)
    for i, (v, row) in enumerate(zip(raw, row_ids)):
        bad = isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating))
        if not bad and spec.regression:
            bad = not math.isfinite(v)
        elif not bad:
            bad = not math.isfinite(v) or float(v) != int(v)
            if not bad and int(v) == -1 and drop_unlabeled:
                keep[i] = False
                continue
            bad = bad or not 0 <= int(v) < spec.num_labels
        if bad:
            want = "a finite number" if spec.regression else \
                f"a class id in 0..{spec.num_labels - 1} {spec.label_names}"
            extra = "; pass drop_unlabeled=True to drop rows labelled -1" if v == -1 and not spec.regression else ""
            raise ValueError(f"task {spec.name}: label {v!r} in row {row} of {source} is not {want}{extra}")
        labels[i] = v
    out: Rows = {}
    for f in spec.text_fields:
        texts = cols[f]
        for v, row in zip(texts, row_ids):
            if not isinstance(v, str):
                raise ValueError(f"task {spec.name}: field {f!r} in row {row} of {source} is {v!r}, not a string")
        arr = np.empty(len(texts), dtype=object)
        arr[:] = texts
        out[f] = arr[keep]
    out["label"] = labels[keep]
    out["row"] = np.asarray(row_ids, dtype=np.int64)[keep]
    return out
