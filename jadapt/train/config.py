"""Training run configuration: one frozen dataclass, validated before any work starts."""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

from jadapt.adapters.config import preset
from jadapt.layers.precision import DEFAULT_COMPUTE_DTYPE, check_compute_dtype
from jadapt.models.config import ATTENTION_IMPLS
from jadapt.train.optim import METHODS

# Learning rates chosen by measurement on the packaged MiniLM (experiments/results/defaults.md).
DEFAULT_LR = {"houlsby": 1e-3, "pfeiffer": 1e-3, "parallel": 1e-3, "lora": 1e-3, "fusion": 5e-4,
              "head": 1e-3, "full": 5e-5}
SHARDINGS = ("dp", "fsdp", "tp", "fsdp+tp")
# The adapter fields default to the presets' values (``jadapt.preset``), so a run and a model
# built by hand from the same method name get the same adapter.
_BOTTLENECK, _LORA = preset("pfeiffer"), preset("lora")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    task: str
    method: str = "pfeiffer"
    model: Optional[str] = None  # HF dir or hub id; None = packaged all-MiniLM-L6-v2
    data_dir: Optional[str] = None
    out: str = "runs/default"
    train_size: Optional[int] = None  # seeded subset of N examples
    k_shot: Optional[int] = None  # k examples per class
    epochs: float = 3.0
    max_steps: Optional[int] = None  # stop early (resumable); the schedule still spans all epochs
    batch_size: int = 32
    eval_batch_size: int = 64
    max_length: int = 128
    buckets: Optional[tuple[int, ...]] = None  # padded batch widths; None: jadapt.data.DEFAULT_BUCKETS
    bottleneck: Optional[int] = _BOTTLENECK.bottleneck
    reduction_factor: Optional[float] = _BOTTLENECK.reduction_factor
    lora_r: int = _LORA.lora_r
    lora_alpha: float = _LORA.lora_alpha
    train_layer_norms: Optional[bool] = None  # None: the method's preset
    lr: Optional[float] = None  # None: DEFAULT_LR[method]
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0
    compute_dtype: str = DEFAULT_COMPUTE_DTYPE
    pooling: str = "mean"
    adapter_name: Optional[str] = None  # default: the task name
    init_adapter: Optional[str] = None  # adapter checkpoint to start from (e.g. a MerA merge)
    fusion_adapters: tuple[str, ...] = ()  # adapter checkpoints to fuse (method "fusion")
    save_every: int = 0  # steps between resumable checkpoints; 0 = at every epoch end
    progress: bool = True
    remat: bool = False
    compile_ahead: bool = True  # compile each batch width's step in a background thread (jadapt.train.ahead)
    attention: str = "matmul"  # matmul | fused (jax.nn.dot_product_attention: cuDNN on GPUs; no attention dropout)
    sharding: str = "dp"  # dp | fsdp | tp | fsdp+tp over all local devices (jadapt.sharding)
    restart: bool = False  # an ``out`` holding another (or this) run: move it aside and start over

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is not supported; expected one of {METHODS}")
        check_compute_dtype(self.compute_dtype)
        for name in ("batch_size", "eval_batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.buckets is not None and (not self.buckets or any(not isinstance(b, int) or b < 1
                                                                  for b in self.buckets)):
            raise ValueError(f"buckets must be positive ints (padded batch widths), got {self.buckets!r}")
        if not (isinstance(self.epochs, (int, float)) and math.isfinite(self.epochs) and self.epochs > 0):
            raise ValueError(f"epochs must be a finite number > 0, got {self.epochs!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 (a run of {self.max_steps} steps would report the untrained "
                             f"model), got {self.max_steps}")
        if self.train_size is not None and self.train_size < 1:
            raise ValueError(f"train_size must be >= 1, got {self.train_size}")
        if self.k_shot is not None and self.k_shot < 1:
            raise ValueError(f"k_shot must be >= 1, got {self.k_shot}")
        if self.train_size is not None and self.k_shot is not None:
            raise ValueError("give train_size or k_shot, not both")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.attention not in ATTENTION_IMPLS:
            raise ValueError(f"attention {self.attention!r} is not supported; expected one of {ATTENTION_IMPLS}")
        if self.sharding not in SHARDINGS:
            raise ValueError(f"sharding {self.sharding!r} is not supported; expected one of {SHARDINGS}")
        if self.method == "fusion" and len(self.fusion_adapters) < 2:
            raise ValueError("method 'fusion' needs at least 2 adapter checkpoints in fusion_adapters")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    @property
    def name(self) -> str:
        return self.adapter_name or self.task.replace("/", "-")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["fusion_adapters"] = list(self.fusion_adapters)
        return d
