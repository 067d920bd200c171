"""Models-area fixtures: small seeded PLUTO models (CPU, eval mode)."""

from __future__ import annotations

import pytest
import timm
import torch

import pluto.models  # noqa: F401  (registers the PLUTO archs with timm)


@pytest.fixture
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("pluto_tiny").eval()


@pytest.fixture
def images() -> torch.Tensor:
    """Two 112 px images (pluto_tiny's pretrained_cfg input size), seeded."""
    return torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
