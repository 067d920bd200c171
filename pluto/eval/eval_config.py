"""The `eval` settings section: a plain frozen dataclass (no torch, no pydantic) so pluto/config.py can type
its section with it and the GPU machine can build it without pydantic."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvalConfig:
    preset: str = "quick"  # "quick" | "eva" (ProbeProtocol presets in linear_probe.py)
    modes: tuple[str, ...] = ("cls", "cls+mean")
    batch_size: int = 64
    device: str = "cpu"
    num_workers: int = 0
    cache_dir: str | None = "work/embeddings"
    n_folds: int = 4  # stratified folds when a labeled set has no splits
    n_seeds: int | None = None  # None = the preset's (5 for patch tasks, as EVA)
    seed: int = 0  # first seed; runs use seed, seed+1, ...
    baselines: bool = True  # mean-RGB and random-init twin in the report
    twin_draws: int = 3  # random-init draws (init seeds 0..N-1) averaged per run into the twin: one draw's luck moves a
    # 32-image probe by up to ~0.09 (bench_learning's draws), which the quality floor would otherwise take as learning
