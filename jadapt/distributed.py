"""Multi-host runs: start the JAX distributed system and feed each process its rows.

Every process runs the same program (multi-controller JAX). The only per-process parts are
(1) joining the job, :func:`initialize`, and (2) data: each process loads just the rows of
the global batch that its own devices hold (:func:`host_shard`) and the global array is
assembled without any cross-host copy (:func:`global_batch`). Params are placed with
``jadapt.sharding.shard_params`` from identical values on every process (same seed, same
checkpoint), or created sharded by ``jax.jit(init, out_shardings=...)``.

How a process finds the job, first match wins:

1. explicit arguments, else env ``JADAPT_COORDINATOR`` (``host:port`` of process 0),
   ``JADAPT_NUM_PROCESSES``, ``JADAPT_PROCESS_ID`` (set by ``tpu/launch.py`` or by hand);
2. ``JADAPT_DISTRIBUTED=auto``, a Cloud TPU pod slice (``TPU_WORKER_HOSTNAMES`` with
   several hosts), SLURM with ``SLURM_NTASKS > 1`` or Open MPI: JAX auto-detects
   everything (``jax.distributed.initialize()`` with no arguments);
3. otherwise a single process: nothing to do.

Checkpoints: orbax handles multi-process saves itself. Every process calls the same
``save`` (``jadapt.checkpoint`` / ``ocp.StandardCheckpointer().save(path, params)``) with
its sharded ``jax.Array`` s; each writes the shards it owns and process 0 finalises the
checkpoint after a barrier. So do not guard saves with ``if process_index() == 0`` (that
deadlocks); guard only plain files (metrics, JSON) with :func:`is_coordinator`. The path must
be visible to every host (a GCS bucket ``gs://...`` or a shared filesystem). Restoring with
the target shardings (``jadapt.sharding.param_shardings``) reads each shard on the process
that needs it.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from jadapt import tree
from jadapt.sharding import DATA, batch_sharding

ENV_COORDINATOR = "JADAPT_COORDINATOR"
ENV_NUM_PROCESSES = "JADAPT_NUM_PROCESSES"
ENV_PROCESS_ID = "JADAPT_PROCESS_ID"
ENV_MODE = "JADAPT_DISTRIBUTED"  # "auto" | "off"


def _env_int(name: str) -> Optional[int]:
    v = os.environ.get(name)
    if v in (None, ""):
        return None
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"env {name}={v!r} must be an integer") from None


def detect_cluster() -> Optional[str]:
    """Name of an environment JAX can auto-configure ("tpu", "slurm", "ompi"), or None."""
    if len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return "tpu"
    if "SLURM_JOB_ID" in os.environ and (_env_int("SLURM_NTASKS") or 1) > 1:
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in os.environ:
        return "ompi"
    return None


def initialize(
    coordinator_address: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
    *,
    local_device_ids: Optional[Sequence[int]] = None,
    initialization_timeout: int = 300,
) -> bool:
    """Join the multi-process job if there is one; returns True when distributed.

    Call once, first thing, before any other JAX call. Safe to call again (returns the
    current state) and a no-op for single-process runs. See the module docstring for how
    the job is found.
    """
    if jax.distributed.is_initialized():
        return True
    mode = os.environ.get(ENV_MODE, "").lower()
    if mode not in ("", "auto", "off"):
        raise ValueError(f"env {ENV_MODE}={mode!r} is not supported; expected 'auto' or 'off'")
    if mode == "off":
        return False
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    if coordinator_address is not None:
        missing = [n for n, v in (("num_processes", num_processes), ("process_id", process_id)) if v is None]
        if missing:
            raise ValueError(f"coordinator {coordinator_address!r} given but not {missing} "
                             f"(arguments or env {ENV_NUM_PROCESSES} / {ENV_PROCESS_ID})")
        if num_processes == 1:
            return False
        if not 0 <= process_id < num_processes:
            raise ValueError(f"process_id {process_id} must be in [0, {num_processes})")
        jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                   local_device_ids=local_device_ids,
                                   initialization_timeout=initialization_timeout)
        return True
    if num_processes not in (None, 1) or process_id not in (None, 0):
        raise ValueError(f"num_processes={num_processes} / process_id={process_id} need a coordinator "
                         f"address (argument or env {ENV_COORDINATOR})")
    if mode == "auto" or detect_cluster() is not None:
        jax.distributed.initialize(local_device_ids=local_device_ids,
                                   initialization_timeout=initialization_timeout)
        return True
    return False


def is_coordinator() -> bool:
    """True on process 0: the one that writes plain files (metrics, JSON, plots)."""
    return jax.process_index() == 0


def local_rows(global_size: int, mesh: Mesh, process_index: Optional[int] = None) -> slice:
    """Rows ``[start, stop)`` of a global batch of ``global_size`` held by one process's devices.

    Follows ``batch_sharding(mesh)``, so it is exact whatever order the mesh puts devices
    in; a process whose devices all sit in one data slice gets that slice (with
    ``data=1`` every process gets every row).
    """
    pid = jax.process_index() if process_index is None else process_index
    data = mesh.shape[DATA]
    if global_size % data:
        raise ValueError(f"global batch {global_size} must divide by the mesh data size {data}")
    index = batch_sharding(mesh).devices_indices_map((global_size,))
    spans = sorted({(s[0].start or 0, global_size if s[0].stop is None else s[0].stop)
                    for d, s in index.items() if d.process_index == pid})
    if not spans:
        raise ValueError(f"process {pid} owns no device of the mesh")
    start, stop = spans[0][0], spans[-1][1]
    if sum(b - a for a, b in spans) != stop - start:
        raise ValueError(f"process {pid}'s rows {spans} are not contiguous; reorder the mesh devices")
    return slice(start, stop)


def host_shard(indices_or_batch: Any, mesh: Mesh, process_index: Optional[int] = None) -> Any:
    """This process's part of a global batch: an index array [B] or a dict of [B, ...] arrays.

    Slice the indices before loading to read only local examples; slice a loaded batch
    when every process reads everything (small data). ``global_batch(host_shard(b, mesh),
    mesh)`` is ``b`` as one sharded array.
    """
    is_tree = isinstance(indices_or_batch, Mapping)
    leaves = tree.flatten(indices_or_batch) if is_tree else {"": indices_or_batch}
    sizes = {int(np.shape(x)[0]) for x in leaves.values()}
    if len(sizes) != 1:
        raise ValueError(f"batch leaves disagree on the batch size: {sorted(sizes)}")
    rows = local_rows(sizes.pop(), mesh, process_index)
    if is_tree:
        return tree.unflatten({p: x[rows] for p, x in leaves.items()})
    return indices_or_batch[rows]


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
    """One global ``jax.Array`` per leaf from each process's rows (``host_shard``), sharded
    by ``batch_sharding(mesh)``; no data crosses hosts. Works single-process too."""
    sharding = batch_sharding(mesh)
    return jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                                  local_batch)
