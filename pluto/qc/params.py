"""QC parameters: one frozen dataclass, also the type of `Settings.qc` (pydantic validates it).

Defaults and where they come from:
- `thumb_mpp` 8 um/px: masks at ~1/16 of 0.5 um/px; a 25 mm slide gives a ~3,000 px thumbnail.
- `cell_um` 128 at `cell_mpp` 0.5: the QC grid cell (256 working px) holds ~4 PLUTO-4 tiles of
  275 px at 0.25 um/px and is the unit the pixel filters (HSV, blur) decide on.
- `min_tissue_frac` 0.4: the Midnight paper's foreground threshold ("set to 40%").
- `hsv_min_frac` 0.6 and `hsv`: the Midnight paper's HSV filter (see `filters`).
- `min_blur_var` 100 at 0.5 um/px: on the CRC-VAL-HE-7K patches (0.5 um/px) every sharp patch
  has a Laplacian variance >= 213, every patch blurred with a Gaussian of sigma 2 px <= 50.
- `max_pen_frac`, `max_fold_frac`, `max_bubble_frac`: a cell is dropped when that much of it is
  covered by the artifact mask.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from pluto.errors import ConfigError
from pluto.qc.detectors import DEFAULT_DETECTOR
from pluto.qc.filters import MIDNIGHT_FOREGROUND_MIN_FRAC, MIDNIGHT_HSV_MIN_FRAC, HSVRange


@dataclass(frozen=True)
class QCParams:
    thumb_mpp: float = 8.0
    cell_um: float = 128.0
    cell_mpp: float = 0.5
    min_tissue_frac: float = MIDNIGHT_FOREGROUND_MIN_FRAC
    max_pen_frac: float = 0.1
    max_fold_frac: float = 0.25
    max_bubble_frac: float = 0.25
    min_blur_var: float = 100.0
    hsv_min_frac: float = MIDNIGHT_HSV_MIN_FRAC
    hsv: HSVRange = field(default_factory=HSVRange)
    hsv_stains: tuple[str, ...] = ("H&E", "HE")  # compared case- and space-insensitively
    tissue_min_saturation: int = 20
    tissue_min_component_um2: float = 1.0e5
    tissue_max_hole_um2: float = 1.0e5
    detector: str = DEFAULT_DETECTOR
    workers: int = 1

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be > 0"
            for name in ("thumb_mpp", "cell_um", "cell_mpp")
            if not getattr(self, name) > 0
        ]
        problems += [
            f"{name} must be in [0, 1]"
            for name in ("min_tissue_frac", "max_pen_frac", "max_fold_frac", "max_bubble_frac", "hsv_min_frac")
            if not 0.0 <= getattr(self, name) <= 1.0
        ]
        if self.cell_um / self.cell_mpp < 8:
            problems.append("cell_um / cell_mpp must be >= 8 working px")
        if self.workers < 1:
            problems.append("workers must be >= 1")
        if ":" not in self.detector:
            problems.append(f"detector {self.detector!r} must be 'package.module:callable'")
        if problems:
            raise ConfigError("qc settings: " + "; ".join(problems))

    @property
    def cell_px(self) -> int:
        """Edge of a QC cell in working px at `cell_mpp`."""
        return int(round(self.cell_um / self.cell_mpp))

    def applies_hsv(self, stain: str | None) -> bool:
        """The Midnight HSV filter is tuned for H&E: only slides whose stain is H&E get it."""
        norm = (stain or "").replace(" ", "").lower()
        return norm in {s.replace(" ", "").lower() for s in self.hsv_stains}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hsv_stains"] = list(self.hsv_stains)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QCParams:
        d = dict(d)
        if "hsv" in d and isinstance(d["hsv"], Mapping):
            d["hsv"] = HSVRange.from_dict(d["hsv"])
        if "hsv_stains" in d:
            d["hsv_stains"] = tuple(d["hsv_stains"])
        return cls(**d)
