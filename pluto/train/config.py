"""TrainConfig: everything the distributed trainer needs, as one plain frozen dataclass.

Each architecture's values (batch, crops, heads, schedules, drop path) come from its cited recipe
in `pluto.train.recipes`, which `pluto.config.Settings` applies under any explicit setting; this
class's own defaults are only what a bare `TrainConfig()` gets.

The objective, augmentations and schedules (lr, weight decay, teacher temperature and momentum,
clipping, and the lr scaling rule) live in `SSLConfig` (pluto.ssl), nested here as `ssl`; this
class adds what is about running them at scale. `pluto.config.Settings.train` is typed as this
class, so defaults < file < env < flags apply to it like every other section.

Batches (PLUTO-4 §3.2): 32 tiles per GPU, global batch 1024 for 4G and 1536 for 4S. With fewer
GPUs the global batch is reached by gradient accumulation: accumulation steps =
global_batch / (batch_per_gpu x world_size), which must be a whole number (`preflight`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from pluto.ssl.config import SSLConfig

PRECISIONS = ("bf16", "fp32")
DATA_KINDS = ("manifest", "images")
AUGMENT_ON = ("cpu", "device")
# DDP bucket sizes (MB of fp32 gradients). PLUTO-4 §3.3 raised bucket_cap_mb from 25 to 360 for
# ViT-G (4.5 GB of gradients -> ~13 all-reduces per step). PLUTO-4S has ~90 MB of gradients: in
# one 360 MB bucket the single all-reduce could only start after the whole backward, so it keeps
# torch's 25 MB default (~4 buckets overlapping the backward).
BUCKET_CAP_MB = {"pluto_4g": 360, "pluto_4s": 25, "pluto_tiny": 1}


@dataclass(frozen=True)
class ClusterSpec:
    """Where and how a launcher runs the job; not part of the model's identity (resume ignores it).

    Defaults are PLUTO-4's cluster (§3.3): 4 nodes x 8 H200, NVLink inside a node, InfiniBand with
    GPUDirect RDMA between nodes. `storage` is the shared mount (PVC / parallel file system) that
    holds the data, the run directory and its checkpoints on every node.
    """

    job_name: str = "pluto-pretrain"
    nodes: int = 4
    gpus_per_node: int = 8  # 0: a CPU job (gloo), `cpu_ranks_per_node` processes per node (Slurm)
    gpu_memory_gb: float = 141.0  # H200
    cpus_per_gpu: int = 12
    cpu_ranks_per_node: int = 1  # torchrun processes per node of a CPU job
    cpus_per_task: int = 0  # CPUs of a node's task (Slurm --cpus-per-task); 0: cpus_per_gpu x gpus_per_node
    max_restarts: int = 3  # torchrun --max-restarts: elastic restarts resume from the last checkpoint
    rdzv_port: int = 29500
    image: str = "ghcr.io/pluto-platform/pluto:latest"
    namespace: str = "default"
    storage: str = "/shared"
    pvc: str = "pluto-shared"
    rdma_resource: str = "rdma/rdma_shared_device_a"
    s3_secret: str = ""  # Kubernetes secret with AWS_* variables, when data/checkpoints live on S3
    mlflow_secret: str = ""  # Kubernetes secret with MLFLOW_TRACKING_USERNAME/PASSWORD, for a server behind a login
    partition: str = "gpu"
    time_limit: str = "72:00:00"
    setup: str = "source .venv/bin/activate"  # Slurm: shell line that makes `torchrun` and pluto available
    poll_s: float = 30.0  # how often a launcher asks the scheduler about the job it follows

    @property
    def ranks_per_node(self) -> int:
        return self.gpus_per_node or self.cpu_ranks_per_node

    @property
    def world_size(self) -> int:
        return self.nodes * self.ranks_per_node

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainConfig:
    """One pretraining run. Paths are strings so the object stays JSON-able (saved in checkpoints)."""

    arch: str = "pluto_tiny"
    ssl: SSLConfig = field(default_factory=SSLConfig)
    # stochastic depth of the student (the teacher has none, as dinov2's build_model): every block at
    # drop_path_rate when uniform (dinov2's configs), else linear in depth (timm)
    drop_path_rate: float = 0.0
    drop_path_uniform: bool = True
    # LayerScale's initial gamma (dinov2's student.layerscale): a block's residual branch starts at this
    # scale, so at 1e-5 a short run's first hundreds of steps train a near-identity network
    layerscale: float = 1e-5
    # fields (dotted, e.g. "ssl.base_lr") set over the arch's recipe (pluto.train.recipes); Settings fills it
    recipe_overrides: tuple[str, ...] = ()
    # data: a tile manifest directory/parquet (tiling) or a folder of image files (tests, demo)
    data: str = "work/tiles"
    data_kind: str = "manifest"
    image_mpp: float | None = None  # um/px of an image folder's files (None: unknown)
    run_dir: str = "work/train"
    batch_per_gpu: int = 32
    global_batch: int = 1024
    steps: int = 100
    seed: int = 0
    precision: str = "bf16"  # bf16 autocast (CUDA) with loss/centering in fp32; fp16 overflows (PLUTO-4 §3.2)
    compile: bool = False  # torch.compile(dynamic=False): dynamic shapes made ViT-B 2.3x slower (DESIGN.md)
    activation_checkpointing: bool = False
    bucket_cap_mb: int | None = None  # None: BUCKET_CAP_MB[arch], else torch's default 25
    num_workers: int = 8
    # where the multi-crop runs: "cpu" in the DataLoader workers, or "device": workers read tiles and
    # draw the augmentation plans, the training device renders crops, flips, HED and colour batched
    augment_on: str = "cpu"
    prefetch_factor: int = 4
    ckpt_every: int = 500
    keep_ckpts: int = 3
    max_consecutive_nan: int = 5  # non-finite loss/grad steps in a row before the run aborts
    log_every: int = 1
    knn_every: int = 0  # optimizer steps between kNN monitor evaluations; 0 = off
    knn_data: str = ""  # folder with labels.csv (filename,label,split), e.g. shared/data/patches_crc_val_he_7k
    knn_k: int = 5
    tracking_uri: str = ""  # MLflow server; empty = JSONL file only
    experiment: str = "pluto-pretrain"
    run_name: str = ""
    parent_run_id: str = ""  # MLflow run this run nests under (tag mlflow.parentRunId), e.g. the retrain flow's
    # a pluto.models.save_model directory whose weights start BOTH backbones (heads fresh) when the run
    # has no checkpoint yet; a resume ignores it (the checkpoint holds the newer weights)
    init_from: str = ""
    peak_tflops: float | None = None  # per-GPU dense bf16 peak for MFU; None: from the device name
    gpu_memory_gb: float | None = None  # per-GPU memory for the preflight; None: query the device
    cluster: ClusterSpec = field(default_factory=ClusterSpec)

    def __post_init__(self) -> None:
        object.__setattr__(self, "recipe_overrides", tuple(self.recipe_overrides))
        if isinstance(self.ssl, dict):
            object.__setattr__(self, "ssl", SSLConfig.from_dict(self.ssl))
        if isinstance(self.cluster, dict):
            object.__setattr__(self, "cluster", ClusterSpec(**self.cluster))

    @property
    def resolved_bucket_cap_mb(self) -> int:
        return self.bucket_cap_mb if self.bucket_cap_mb is not None else BUCKET_CAP_MB.get(self.arch, 25)

    def accumulation_steps(self, world_size: int) -> int:
        """Micro-batches per optimizer step on each rank (exact division checked by preflight)."""
        return max(1, self.global_batch // (self.batch_per_gpu * world_size))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)
