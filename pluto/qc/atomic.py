"""Atomic file writes: write a temporary file beside the target, fsync, then `os.replace`.

A failed or interrupted stage therefore leaves the previous version of every output intact.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd


def write_bytes(path: Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


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
