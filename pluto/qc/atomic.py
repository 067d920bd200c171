"""Atomic writers for the QC outputs (parquet, npz, png) on top of `pluto.atomic`."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pluto.atomic import write_bytes


def write_parquet(df: pd.DataFrame, path: Path) -> Path:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return write_bytes(path, buf.getvalue())


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return write_bytes(path, buf.getvalue())


def encode_png(rgb: np.ndarray) -> bytes:
    ok, png = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"cannot encode an image of shape {rgb.shape} as PNG")
    return png.tobytes()


def write_png(path: Path, rgb: np.ndarray) -> Path:
    return write_bytes(path, encode_png(rgb))
