"""HED stain augmentation: random scale and shift of each stain's concentration.

Midnight (Karasikov et al. 2025, §2) applies "color augmentations in the Hematoxylin-Eosin-DAB
(HED) space [Tellez et al. 2019]". Colour deconvolution (Ruifrok & Johnston 2001) maps optical
density OD = -ln(I) (I in (0, 1]) to stain concentrations C = OD @ inv(M), M the stain matrix
below (rows: H, E, DAB OD vectors, the values scikit-image's `rgb_from_hed` uses). Concentrations
are in scikit-image's units, the ones Tellez's and the public Midnight-style code perturb through
`skimage.color.rgb2hed`/`hed2rgb`: `rgb2hed` divides OD by ln(1e6) (`SKIMAGE_OD_UNIT`), so a shift
beta there is beta * ln(1e6) ~ 13.8 beta in natural-log OD (beta 0.05 on H darkens a typical red
by ~0.3, not ~0.03). Tellez's perturbation C' = C * alpha + beta with alpha ~ U(1 - s, 1 + s),
beta ~ U(-s, s) per stain is linear, so it folds into one 3x3 map of OD:
OD' = OD @ (inv(M) diag(alpha) M) + ln(1e6) beta @ M, and the whole augmentation is a log, a (3x3)
matmul and an exp per pixel. Concentrations are not clipped at zero (scikit-image's `rgb2hed`
does), which is what makes strength 0 an exact identity; where no concentration is negative the
result equals `hed2rgb(rgb2hed(img) * alpha + beta)` (tests/ssl/test_ssl_augment.py).
"""

from __future__ import annotations

import math

import torch

RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
_MIN_INTENSITY = 1e-6  # keeps log finite for black pixels; scikit-image uses the same floor
SKIMAGE_OD_UNIT = -math.log(_MIN_INTENSITY)  # ln(1e6): natural-log OD per unit of skimage's HED concentration


def hed_perturbation(alpha: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., 3) stain scales and shifts (skimage HED units) -> (A (..., 3, 3), b (..., 3)) with OD' = OD @ A + b
    in natural-log OD, float32 on alpha's device."""
    m_inv, m = HED_FROM_RGB.to(alpha.device), RGB_FROM_HED.to(alpha.device)
    a = m_inv @ (alpha.double().unsqueeze(-1) * m)  # inv(M) diag(alpha) M
    b = (beta.double() * SKIMAGE_OD_UNIT) @ m
    return a.float(), b.float()


def hed_jitter(img: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Float RGB image (3, H, W), or a batch (N, 3, H, W) with (N, 3) factors, in [0, 1] -> stain-perturbed, same shape."""
    a, b = hed_perturbation(alpha, beta)
    od = -torch.log(img.clamp_min(_MIN_INTENSITY))
    od = (a.transpose(-1, -2) @ od.flatten(-2) + b.unsqueeze(-1)).view_as(img)
    return torch.exp_(od.neg_()).clamp_(0.0, 1.0)


def sample_hed_factors(strength: float, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Tellez et al. 2019 HED jitter draws: alpha ~ U(1 - s, 1 + s), beta ~ U(-s, s) (skimage HED units), one per stain."""
    u = torch.rand(2, 3, generator=generator, dtype=torch.float64) * 2 - 1
    return 1 + strength * u[0], strength * u[1]
