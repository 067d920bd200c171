"""CPU thread control for the small fits of evaluation heads (probes, ABMIL on small sets)."""

from __future__ import annotations

from contextlib import contextmanager

import torch

SMALL_PROBLEM_NUMEL = 4_000_000  # training-feature elements below which a CPU fit runs single-threaded


@contextmanager
def cpu_threads(n: int):
    """Temporarily set torch's intra-op threads. On small fits OpenMP spin-waits cost ~100x the maths
    (measured: the 32 x 96 quick probe took 0.14 s on 1 thread vs 11.8 s on 2 threads of a loaded 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
