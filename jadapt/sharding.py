"""Mesh, logical axis rules and shardings for params and batches.

The design, in three steps:

1. **Logical axes, once.** :data:`LOGICAL_AXES` names every param dimension by what it is
   (``("embed", "heads")`` for a query kernel), selected by path regex over the param path
   contract (first match wins; a param matching no rule is an error, via
   :func:`jadapt.tree.label_by_rules`). ``None`` as a dimension name means "no meaning worth
   sharding"; ``None`` instead of a tuple means "replicate, whatever the rank".
2. **A strategy maps logical axes to mesh axes** on a ``("data", "model")`` mesh:

   - ``dp``: params replicated, batch over ``data``.
   - ``fsdp``: each param sharded over ``data`` on its largest axis divisible by the data size.
   - ``tp``: Megatron-style; ``heads``, ``mlp``, ``vocab`` (and ``bottleneck``) over ``model``,
     so q/k/v and intermediate kernels are column-parallel, attention-output and output
     kernels row-parallel.
   - ``fsdp+tp``: ``tp`` first, then ``fsdp`` on the largest remaining divisible axis.

   The batch is always sharded over ``data`` on its leading axis.
3. **Fallback rule.** A dimension whose size is not divisible by its mesh axis size stays
   replicated (never padded), as does a mesh axis of size 1; a mesh axis is used at most
   once per param. So every strategy works on any mesh, only less sharded.

Frozen backbone and trainable parts get different treatment: leaves matching ``replicated``
(default :data:`ADAPTER_PATHS`: bottleneck adapters, fusion, LoRA, head) stay replicated under
every strategy. They are ~1% of the params but change every step, so sharding them buys
little memory and costs collectives; pass ``replicated=None`` to shard them by the same rules.

The mesh uses ``AxisType.Auto`` axes (GSPMD propagation from the param and batch
shardings): the model code carries no sharding annotations, which ``Explicit`` axes (the
``jax.make_mesh`` default) would require.

>>> mesh = make_mesh(data=2, model=4)
>>> shardings = param_shardings(params, mesh, "fsdp+tp")
>>> params = shard_params(params, shardings)
>>> step = jax.jit(step, in_shardings=(shardings, batch_sharding(mesh)), ...)
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Optional, Sequence, Union

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jadapt import tree
from jadapt.param_paths import ADAPTERS, BOTTLENECK_SITE, FUSION_LAYERS, HEAD, lora_path

DATA, MODEL = "data", "model"
_QKV_LORA = "(?:" + "|".join(lora_path(t) for t in ("query", "key", "value")) + ")"

# (path regex, logical axes per dimension); first match wins. Kernels are [in, out].
LOGICAL_AXES: tuple[tuple[str, Optional[tuple[Optional[str], ...]]], ...] = (
    (r"^embeddings/word_embeddings/embedding$", ("vocab", "embed")),
    (r"^embeddings/\w+_embeddings/embedding$", (None, "embed")),
    (r"/attention/(query|key|value)/kernel$", ("embed", "heads")),
    (r"/attention/(query|key|value)/bias$", ("heads",)),
    (r"/attention/output/kernel$", ("heads", "embed")),
    (r"/attention/output/bias$", ("embed",)),
    (rf"/{_QKV_LORA}/[^/]+/lora_a$", ("embed", "rank")),
    (rf"/{_QKV_LORA}/[^/]+/lora_b$", ("rank", "heads")),
    (rf"/{lora_path('attention_output')}/[^/]+/lora_a$", ("heads", "rank")),
    (rf"/{lora_path('attention_output')}/[^/]+/lora_b$", ("rank", "embed")),
    (rf"/{lora_path('intermediate')}/[^/]+/lora_a$", ("embed", "rank")),
    (rf"/{lora_path('intermediate')}/[^/]+/lora_b$", ("rank", "mlp")),
    (rf"/{lora_path('output')}/[^/]+/lora_a$", ("mlp", "rank")),
    (rf"/{lora_path('output')}/[^/]+/lora_b$", ("rank", "embed")),
    (r"/intermediate/kernel$", ("embed", "mlp")),
    (r"/intermediate/bias$", ("mlp",)),
    (r"layer_\d+/output/kernel$", ("mlp", "embed")),
    (r"layer_\d+/output/bias$", ("embed",)),
    (FUSION_LAYERS, None),
    (rf"/{BOTTLENECK_SITE}/[^/]+/down/kernel$", ("embed", "bottleneck")),
    (rf"/{BOTTLENECK_SITE}/[^/]+/down/bias$", ("bottleneck",)),
    (rf"/{BOTTLENECK_SITE}/[^/]+/up/kernel$", ("bottleneck", "embed")),
    (rf"/{BOTTLENECK_SITE}/[^/]+/up/bias$", ("embed",)),
    (r"(layer_norm|norm_before|norm_after)/(scale|bias)$", ("embed",)),
    (r"^head/", None),
)

# Small trainable parts that stay replicated by default (see module docstring).
ADAPTER_PATHS = f"{ADAPTERS}|{HEAD}"

_TP = (("heads", MODEL), ("mlp", MODEL), ("vocab", MODEL), ("bottleneck", MODEL))


@dataclasses.dataclass(frozen=True)
class Strategy:
    """How logical axes land on mesh axes.

    ``logical_to_mesh``: ((logical axis, mesh axis), ...); unnamed logical axes replicate.
    ``fsdp``: additionally shard each param's largest divisible free axis over ``data``.
    """

    name: str
    logical_to_mesh: tuple[tuple[str, str], ...] = ()
    fsdp: bool = False

    def __post_init__(self):
        bad = [p for p in self.logical_to_mesh
               if not (isinstance(p, tuple) and len(p) == 2 and all(isinstance(s, str) for s in p))]
        if bad:
            raise ValueError(f"Strategy.logical_to_mesh entries must be (logical, mesh) string pairs, got {bad}")
        if not isinstance(self.fsdp, bool):
            raise ValueError(f"Strategy.fsdp must be a bool, got {self.fsdp!r}")


STRATEGIES: dict[str, Strategy] = {
    "dp": Strategy("dp"),
    "fsdp": Strategy("fsdp", fsdp=True),
    "tp": Strategy("tp", _TP),
    "fsdp+tp": Strategy("fsdp+tp", _TP, fsdp=True),
}


def get_strategy(strategy: Union[str, Strategy]) -> Strategy:
    if isinstance(strategy, Strategy):
        return strategy
    if strategy not in STRATEGIES:
        raise ValueError(f"sharding strategy {strategy!r} is not supported; expected one of {tuple(STRATEGIES)}")
    return STRATEGIES[strategy]


def make_mesh(data: int = -1, model: int = 1, *, devices: Optional[Sequence[Any]] = None) -> Mesh:
    """A ``("data", "model")`` mesh over ``devices`` (default: all, across processes).

    ``data=-1`` takes whatever ``model`` leaves: ``make_mesh(model=4)`` on 8 devices is 2 x 4.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if model < 1 or n % model:
        raise ValueError(f"mesh model={model} must be >= 1 and divide the device count {n}")
    if data == -1:
        data = n // model
    if data < 1 or data * model != n:
        raise ValueError(f"mesh data={data} x model={model} must equal the device count {n} (or data=-1)")
    return jax.make_mesh((data, model), (DATA, MODEL), axis_types=(AxisType.Auto,) * 2, devices=devices)


def logical_axes(params_or_shapes: Mapping[str, Any]) -> dict[str, Optional[tuple]]:
    """{path: logical axes} for every leaf, from :data:`LOGICAL_AXES` (errors on uncovered paths)."""
    return tree.flatten(tree.label_by_rules(params_or_shapes, LOGICAL_AXES))


def spec_for(shape: Sequence[int], axes: Optional[tuple], mesh: Mesh, strategy: Union[str, Strategy],
             path: str = "?") -> PartitionSpec:
    """The PartitionSpec of one param of ``shape`` with logical ``axes`` under ``strategy``."""
    strat = get_strategy(strategy)
    shape = tuple(shape)
    if axes is not None and len(axes) != len(shape):
        raise ValueError(f"param {path!r} has shape {shape} but logical axes {axes} (rank mismatch)")
    to_mesh = dict(strat.logical_to_mesh)
    for mesh_axis in set(to_mesh.values()) | ({DATA} if strat.fsdp else set()):
        if mesh_axis not in mesh.shape:
            raise ValueError(f"strategy {strat.name!r} uses mesh axis {mesh_axis!r}; mesh has {tuple(mesh.shape)}")
    spec: list[Optional[str]] = [None] * len(shape)
    used: set[str] = set()

    def fits(dim: int, mesh_axis: str) -> bool:
        size = mesh.shape[mesh_axis]
        return size > 1 and mesh_axis not in used and spec[dim] is None and shape[dim] % size == 0

    for dim, name in enumerate(axes or ()):
        mesh_axis = to_mesh.get(name) if name is not None else None
        if mesh_axis is not None and fits(dim, mesh_axis):
            spec[dim] = mesh_axis
            used.add(mesh_axis)
    if strat.fsdp:
        free = [d for d in range(len(shape)) if fits(d, DATA)]
        if free:
            spec[max(free, key=lambda d: (shape[d], -d))] = DATA  # largest axis; ties: first
    return PartitionSpec(*spec)


def _shape(leaf: Any) -> tuple[int, ...]:
    if hasattr(leaf, "shape"):
        return tuple(leaf.shape)
    if isinstance(leaf, (tuple, list)) and all(isinstance(d, (int, np.integer)) for d in leaf):
        return tuple(int(d) for d in leaf)
    raise TypeError(f"expected an array, ShapeDtypeStruct or shape tuple as leaf, got {type(leaf).__name__}")


def param_specs(params_or_shapes: Mapping[str, Any], mesh: Mesh, strategy: Union[str, Strategy] = "dp", *,
                replicated: Optional[str] = ADAPTER_PATHS) -> dict:
    """Nested tree of PartitionSpec, one per param (see :func:`param_shardings`)."""
    axes = logical_axes(params_or_shapes)
    rx = re.compile(replicated) if replicated else None

    def spec(path, leaf):
        shape = _shape(leaf)
        if rx is not None and rx.search(path):
            return PartitionSpec(*([None] * len(shape)))
        return spec_for(shape, axes[path], mesh, strategy, path)

    return tree.map_with_path(spec, params_or_shapes)


def param_shardings(params_or_shapes: Mapping[str, Any], mesh: Mesh, strategy: Union[str, Strategy] = "dp", *,
                    replicated: Optional[str] = ADAPTER_PATHS) -> dict:
    """Nested tree of NamedSharding matching ``params_or_shapes``.

    Leaves may be arrays, ``jax.ShapeDtypeStruct`` (``jax.eval_shape`` of an init) or shape
    tuples. ``replicated``: path regex of leaves kept replicated under every strategy
    (default: adapters, fusion, LoRA, head); ``None`` shards everything by the rules.
    """
    specs = param_specs(params_or_shapes, mesh, strategy, replicated=replicated)
    return tree.map_with_path(lambda _, s: NamedSharding(mesh, s), specs)


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis over ``data``, everything else replicated; for every batch leaf."""
    return NamedSharding(mesh, PartitionSpec(DATA))


def shard_params(params: Any, shardings: Any) -> Any:
    """Place ``params`` (host or device arrays, same values on every process) by ``shardings``."""
    return jax.device_put(params, shardings)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Single-process: put a global batch (dict of [batch, ...] arrays) on the mesh.

    Multi-process runs feed each process's rows with :func:`jadapt.distributed.global_batch`.
    """
    if jax.process_count() > 1:
        raise RuntimeError("shard_batch is for one process; use jadapt.distributed.global_batch across hosts")
    data = mesh.shape[DATA]
    for path, x in tree.flatten(batch).items() if isinstance(batch, Mapping) else [("batch", batch)]:
        if np.ndim(x) == 0 or np.shape(x)[0] % data:
            raise ValueError(f"batch leaf {path!r} of shape {np.shape(x)}: leading axis must divide by data={data}")
    return jax.device_put(batch, batch_sharding(mesh))


def opt_state_shardings(opt_state: Any, shardings: Mapping[str, Any], mesh: Mesh) -> Any:
    """Shardings for an optimizer state (optax chains, ``multi_transform``, ``masked`` ...).

    A state leaf whose trailing dict keys spell a param path (Adam's ``mu``/``nu``) takes
    that param's sharding when the rank matches and it divides; everything else (step
    counts, factored moments) is replicated. ``opt_state``: the state or its
    ``jax.eval_shape``; ``shardings``: param shardings keyed like the optimised params.
    """
    flat = tree.flatten(shardings)
    rep = replicated_sharding(mesh)

    def pick(keypath, leaf):
        keys = []
        for k in reversed(keypath):
            if not isinstance(k, jax.tree_util.DictKey):
                break
            keys.append(str(k.key))
        s = flat.get("/".join(reversed(keys)))
        shape = _shape(leaf)
        if s is None or len(s.spec) != len(shape):
            return rep
        try:
            s.shard_shape(shape)
        except ValueError:
            return rep
        return s

    return jax.tree_util.tree_map_with_path(pick, opt_state)
