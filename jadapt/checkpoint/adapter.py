"""Adapter checkpoints: the trained leaves only (adapters, head, trained LayerNorms), small.

Layout: ``<dir>/metadata.json`` (how to rebuild the model + an ``arrays`` manifest of every
leaf's shape, dtype and CRC-32) and ``<dir>/params/`` (orbax). The manifest lets a load
say which leaf is missing or damaged instead of failing somewhere inside tensorstore.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jadapt import tree
from jadapt.checkpoint import files
from jadapt.checkpoint.files import ARRAYS_DIR, METADATA_FILE, CheckpointError


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.Checkpointer(ocp.StandardCheckpointHandler())


def save_adapter(directory: str | os.PathLike, params: Mapping[str, Any], metadata: Mapping[str, Any]) -> Path:
    """Write ``params`` (a nested-dict subtree) and ``metadata`` to ``directory``, atomically.

    An existing checkpoint at ``directory`` is replaced only once the new one is complete;
    anything else already there is refused; leftovers of crashed saves beside it are removed
    (so: one writer per directory). Returns the absolute checkpoint path.
    """
    final = Path(directory).expanduser().absolute()
    meta = files.check_metadata(metadata)
    flat = tree.flatten(params)
    if not flat:
        raise ValueError("save_adapter got an empty params tree: nothing to save")
    host = {}
    for p, x in flat.items():
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(f"param {p!r} is a {type(x).__name__}, not an array")
        host[p] = np.asarray(jax.device_get(x))
    manifest = {p: {"shape": list(x.shape), "dtype": str(x.dtype), "crc32": files.crc32(x)} for p, x in host.items()}
    files.check_replaceable(final)
    tmp = files.staging_dir(final)
    try:
        import orbax.checkpoint as ocp

        _checkpointer().save(tmp / ARRAYS_DIR, args=ocp.args.StandardSave(tree.unflatten(host)))
        files.write_json(tmp / METADATA_FILE, {**meta, "arrays": manifest})
        files.publish(tmp, final)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files.remove_leftovers(final)
    return final


def load_adapter(directory: str | os.PathLike) -> tuple[dict, dict]:
    """(params subtree as jax arrays, metadata) of an adapter checkpoint, verified leaf by leaf.

    ``directory``: a checkpoint, or a training run folder (``jadapt train --out``), which
    stands for its best-dev checkpoint (``files.resolve_checkpoint``)."""
    path = files.resolve_checkpoint(directory)
    meta = files.read_metadata(path)
    manifest = meta.pop("arrays", None)
    if not isinstance(manifest, dict) or not manifest:
        raise CheckpointError(f"truncated or corrupt jadapt checkpoint: {path / METADATA_FILE} "
                              "has no 'arrays' manifest")
    arrays = path / ARRAYS_DIR
    if not arrays.is_dir():
        raise CheckpointError(f"truncated jadapt checkpoint: {path}: the array directory {ARRAYS_DIR}/ is missing")
    try:
        target = {p: np.empty(m["shape"], jnp.dtype(m["dtype"])) for p, m in manifest.items()}
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"corrupt jadapt checkpoint: {path / METADATA_FILE} "
                              f"has a malformed 'arrays' entry ({e})") from e
    try:
        import orbax.checkpoint as ocp

        with files.quiet_failed_reads():
            restored = _checkpointer().restore(arrays, args=ocp.args.StandardRestore(tree.unflatten(target)))
    except Exception as e:  # tensorstore / orbax raise many types; name the path and the cause
        msg = str(e).strip().splitlines()[0][:400] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"truncated or corrupt jadapt checkpoint: {arrays}: "
                              f"cannot read the arrays ({msg})") from e
    got = tree.flatten(restored)
    errors = [f"{p}: missing" for p in manifest if p not in got]
    for p, x in got.items():
        m = manifest.get(p)
        if m is None:
            errors.append(f"{p}: not in the manifest")
        elif list(x.shape) != list(m["shape"]) or str(x.dtype) != m["dtype"]:
            errors.append(f"{p}: {x.dtype}{list(x.shape)} != manifest's {m['dtype']}{m['shape']}")
        elif "crc32" in m and files.crc32(np.asarray(x)) != m["crc32"]:
            errors.append(f"{p}: checksum mismatch (damaged data)")
    if errors:
        raise CheckpointError(f"corrupt jadapt checkpoint: {path}:\n  " + "\n  ".join(errors[:10]))
    return tree.unflatten({p: jnp.asarray(x) for p, x in got.items()}), meta
