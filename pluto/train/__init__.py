"""Distributed pretraining: DDP trainer, checkpoints, resume, metrics, guard rails, cluster launchers.

Modules: `config` (TrainConfig, ClusterSpec), `trainer` (train, run per rank under torchrun;
`python -m pluto.train CONFIG.json`), `data` (seeded multi-crop loader over the global sample
order), `checkpoint` (atomic consolidated checkpoints), `preflight` + `memory` (settings and
per-GPU memory checks), `throughput` (FLOPs, MFU),
`launch` (local torchrun / Slurm / Kubeflow). Rank 0 tracks metrics with
`pluto.tracking`. Kept import-light: the settings load TrainConfig.
"""

from pluto.train.config import ClusterSpec, TrainConfig

__all__ = ["ClusterSpec", "TrainConfig"]
