"""Error types. A bad slide is quarantined and the run goes on; config and infrastructure errors stop it.

Every message names the file (or setting) and the problem, so a person can act on it.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path


class PlutoError(Exception):
    """Base of every error this project raises on purpose."""


class QuarantineReason(str, Enum):
    """Why a slide was set aside. Stored verbatim in the catalog's `status` column."""

    unreadable = "unreadable"  # opens but pixels cannot be decoded
    decode_mismatch = "decode_mismatch"  # the read path's pixels disagree with an independent decoder
    truncated = "truncated"  # file shorter than its own header says
    empty = "empty"  # zero bytes
    not_a_slide = "not_a_slide"  # no reader recognises the format
    no_mpp = "no_mpp"  # no microns-per-pixel in header and no override
    bad_mpp = "bad_mpp"  # MPP present but outside the sane range
    too_large = "too_large"  # header dimensions beyond the configured limit
    no_tissue = "no_tissue"  # QC found no tissue
    no_tiles = "no_tiles"  # tiling produced zero usable tiles
    bad_path = "bad_path"  # path escapes the data root (traversal, symlink)


class SlideError(PlutoError):
    """A single slide cannot be used. Carries the machine-readable reason for the catalog."""

    def __init__(self, path: str | Path, reason: QuarantineReason, detail: str = "") -> None:
        self.path = str(path)
        self.reason = QuarantineReason(reason)
        self.detail = detail
        msg = f"{self.path}: {self.reason.value}"
        super().__init__(f"{msg} ({detail})" if detail else msg)


class ConfigError(PlutoError):
    """Settings that cannot work (malformed file, impossible combination). Stops the run."""


class CheckpointError(PlutoError):
    """A checkpoint that is missing, corrupt, or not ours."""


class ValidationGateError(PlutoError):
    """A data-quality gate (Great Expectations suite) failed; lists the failing expectations."""

    def __init__(self, table: str, failures: list[str]) -> None:
        self.table = table
        self.failures = list(failures)
        lines = "\n  - ".join(self.failures)
        super().__init__(f"{table}: {len(self.failures)} expectation(s) failed:\n  - {lines}")
