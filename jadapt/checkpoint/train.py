"""Resumable training checkpoints: the whole train state, rolling, with the best one kept.

Each step is an orbax step directory ``<dir>/<step>/`` with three items: ``state`` (the
train-state pytree; typed PRNG keys stored as their uint32 key data), ``metadata`` (the
run's JSON metadata) and ``layout`` (format, version, where the PRNG keys were, and the
CRC-32 of every leaf). orbax writes a step into a temporary directory and renames it into
place when complete, so a crash leaves the previous steps untouched and no half step
visible; the checksums catch what a crash cannot explain (a damaged disk or copy), which
orbax itself would read back as valid numbers.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import jax
import numpy as np

from jadapt.checkpoint import files
from jadapt.checkpoint.files import CheckpointError
from jadapt import faults

TRAIN_FORMAT = "jadapt-train"
MODES = ("min", "max")


def _path_str(path) -> str:
    """A pytree key path as "a/0/mu/b", the same for namedtuples and orbax's dict rendition."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _unkey(state) -> tuple[Any, dict[str, str]]:
    """(state with key data instead of typed keys, {path: key impl name})."""
    impls = {}

    def f(path, x):
        if _is_key(x):
            impls[_path_str(path)] = str(jax.random.key_impl(x))
            return jax.random.key_data(x)
        return x

    return jax.tree_util.tree_map_with_path(f, state), impls


class _Drop(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _checksums(stored) -> dict[str, int]:
    """{path: CRC-32} of every leaf this process holds whole (on one host: all of them)."""
    out = {}
    for path, x in jax.tree_util.tree_flatten_with_path(stored)[0]:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            continue  # spread over hosts: no process sees the whole leaf
        out[_path_str(path)] = files.crc32(np.asarray(jax.device_get(x)))
    return out


def _layout_handler():
    """orbax's JSON handler; under fault injection (jadapt.faults) it reaches the point
    ``train-checkpoint`` once its file is in the temporary step directory, mid-write."""
    import orbax.checkpoint as ocp

    handler = ocp.JsonCheckpointHandler()
    if os.environ.get(faults.ENV):
        write = handler._save_fn

        async def save_then_fault(x, directory):
            await write(x, directory)
            faults.fault_point("train-checkpoint")

        handler._save_fn = save_then_fault
    return handler


def _abstract(like):
    """Restore targets: shape, dtype and sharding of every leaf of the template."""
    def f(x):
        if _is_key(x):
            return jax.eval_shape(jax.random.key_data, x)
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        if isinstance(x, np.ndarray):
            return np.empty(x.shape, x.dtype)
        if isinstance(x, jax.ShapeDtypeStruct):
            return x
        return np.asarray(x)

    return jax.tree_util.tree_map(f, like)


class TrainCheckpointer:
    """Keeps the latest ``max_to_keep`` steps, plus (``keep_best``) the step with the best
    ``metrics[best_metric]`` (``best_mode`` "max" or "min") among saves that passed metrics.

    >>> ckpt = TrainCheckpointer(out / "checkpoints", max_to_keep=2, best_metric="accuracy")
    >>> ckpt.save(step, state, metadata, metrics={"accuracy": 0.91})
    >>> state = ckpt.restore(like=state)          # latest step, bitwise, PRNG key included
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: Optional[int] = 2, keep_best: bool = True,
                 best_metric: str = "loss", best_mode: str = "min", async_save: bool = False):
        import orbax.checkpoint as ocp
        from orbax.checkpoint import checkpoint_managers as cm

        if max_to_keep is not None and (not isinstance(max_to_keep, int) or max_to_keep < 1):
            raise ValueError(f"max_to_keep must be a positive int or None (keep all), got {max_to_keep!r}")
        if best_mode not in MODES:
            raise ValueError(f"best_mode {best_mode!r} is not supported; expected one of {MODES}")
        self.directory = Path(directory).expanduser().absolute()
        if self.directory.exists() and not self.directory.is_dir():
            raise CheckpointError(f"training checkpoint directory {self.directory} is a file")
        self.keep_best, self.best_metric, self.best_mode = keep_best, best_metric, best_mode
        metric = lambda m: float(m[best_metric])  # noqa: E731
        policies = [cm.LatestN(n=max_to_keep)]
        if keep_best:
            policies.append(cm.BestN(get_metric_fn=metric, reverse=best_mode == "min", n=1,
                                     keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=cm.AnyPreservationPolicy(policies),
            best_fn=metric if keep_best else None, best_mode=best_mode,  # orbax stores metrics only with a best_fn
            enable_async_checkpointing=async_save, cleanup_tmp_directories=True, create=True)
        self._ocp = ocp
        handlers = {"state": ocp.StandardCheckpointHandler(), "metadata": ocp.JsonCheckpointHandler(),
                    "layout": _layout_handler()}
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    # ------------------------------------------------------------------ writing
    def save(self, step: int, state: Any, metadata: Mapping[str, Any],
             metrics: Optional[Mapping[str, float]] = None) -> bool:
        """Save ``state`` at ``step``; False (nothing written) if that step is already saved."""
        step = int(step)
        if step in self.all_steps():
            return False
        if metrics is not None:
            metrics = {k: float(np.asarray(v)) for k, v in metrics.items()}
            if self.keep_best and self.best_metric not in metrics:
                raise ValueError(f"metrics lack best_metric {self.best_metric!r}; got {sorted(metrics)}")
        stored, impls = _unkey(state)
        layout = {"format": TRAIN_FORMAT, "version": files.VERSION, "prng_keys": impls,
                  "crc32": _checksums(stored)}
        meta = json.loads(files.to_json(dict(metadata), "metadata"))  # numpy scalars -> JSON, or fail early
        args = self._ocp.args
        quiet = _Drop("did not provide metrics")  # a save without metrics is normal here
        logging.getLogger("absl").addFilter(quiet)
        try:
            self._manager.save(step, args=args.Composite(state=args.StandardSave(stored), metadata=args.JsonSave(meta),
                                                         layout=args.JsonSave(layout)), metrics=metrics)
        finally:
            logging.getLogger("absl").removeFilter(quiet)
        return True

    def delete(self, step: int) -> None:
        """Remove step ``step`` (e.g. one found damaged, so that it is written anew)."""
        self._manager.delete(int(step))

    def wait_until_finished(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending (async) writes and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ reading
    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def best_step(self) -> Optional[int]:
        """The kept step with the best metric (None without metrics or ``keep_best=False``)."""
        if not self.keep_best:
            return None
        scored = [(float(m[self.best_metric]), s) for s in self.all_steps()
                  if (m := self._manager.metrics(s)) is not None and self.best_metric in m]
        if not scored:
            return None
        return (max(scored) if self.best_mode == "max" else min(scored, key=lambda t: (t[0], -t[1])))[1]

    def metrics(self, step: int) -> Optional[dict]:
        return self._manager.metrics(step)

    def metadata(self, step: Optional[int] = None) -> dict:
        """The run metadata saved with ``step`` (default: latest)."""
        step = self._step(step)
        return self._read(step, metadata=self._ocp.args.JsonRestore())["metadata"]

    def restore(self, step: Optional[int] = None, like: Any = None) -> Any:
        """The state saved at ``step`` (default: latest), bitwise, typed PRNG keys rebuilt.

        ``like``: a state (or abstract state) giving the tree structure (optax namedtuples),
        dtypes and shardings; without it the tree comes back as nested dicts / lists.
        """
        step = self._step(step)
        layout = self._read(step, layout=self._ocp.args.JsonRestore())["layout"]
        if not isinstance(layout, dict) or layout.get("format") != TRAIN_FORMAT:
            raise CheckpointError(f"not a jadapt training checkpoint: {self.directory / str(step)} (bad layout item)")
        if layout.get("version") not in files.SUPPORTED_VERSIONS:
            raise CheckpointError(f"unsupported jadapt checkpoint version {layout.get('version')!r} in "
                                  f"{self.directory / str(step)}; this jadapt reads {list(files.SUPPORTED_VERSIONS)}")
        target = None
        if like is not None:
            target = _abstract(like)
            self._check_like(step, target)
        state = self._read(step, state=self._ocp.args.StandardRestore(target))["state"]
        self._verify(step, state, layout.get("crc32"))
        impls = layout.get("prng_keys", {})

        def wrap(path, x):
            impl = impls.get(_path_str(path))
            return x if impl is None else jax.random.wrap_key_data(x, impl=impl)

        return jax.tree_util.tree_map_with_path(wrap, state)

    # ------------------------------------------------------------------ helpers
    def _step(self, step: Optional[int]) -> int:
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f"no jadapt training checkpoint in {self.directory} (no step directories)")
        if step is None:
            return steps[-1]
        if int(step) not in steps:
            raise CheckpointError(f"no step {step} in {self.directory}; saved steps: {steps}")
        return int(step)

    def _read(self, step: int, **items) -> dict:
        try:
            with files.quiet_failed_reads():
                return self._manager.restore(step, args=self._ocp.args.Composite(**items))
        except Exception as e:  # orbax / tensorstore raise many types; name the path and the cause
            msg = str(e).strip().splitlines()[0][:400] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"truncated or corrupt jadapt training checkpoint: {self.directory / str(step)}: "
                                  f"cannot read {'/'.join(items)} ({msg})") from e

    def _verify(self, step: int, state, manifest: Optional[dict]) -> None:
        """Compare every leaf with its saved CRC-32 (checkpoints from before checksums: none)."""
        if not manifest:
            return
        got = _checksums(state)
        bad = [p for p, c in manifest.items() if p in got and got[p] != c]
        if bad:
            raise CheckpointError(f"corrupt jadapt training checkpoint: {self.directory / str(step)}: "
                                  f"{len(bad)} of {len(manifest)} leaves fail their checksum (first: {bad[0]})")

    def _check_like(self, step: int, target) -> None:
        """One error naming every leaf whose path or shape differs from the template's."""
        try:
            saved = self._manager.item_metadata(step)["state"]
        except Exception:  # no usable metadata: let the restore itself report
            return
        if saved is None:
            return
        def shapes(t):
            return {_path_str(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(t)[0]
                    if hasattr(x, "shape")}

        have, want = shapes(saved), shapes(target)
        errors = [f"{p}: saved {have.get(p, 'absent')} vs template {want.get(p, 'absent')}"
                  for p in sorted(set(have) | set(want)) if have.get(p) != want.get(p)]
        if errors:
            raise ValueError(f"training checkpoint {self.directory / str(step)} does not match the state template "
                             f"({len(errors)} leaves differ):\n  " + "\n  ".join(errors[:20]))
