"""Map-style datasets that feed embedding extraction: image files, or tiles read from slides.

Items are uint8 CHW tensors already resized to the encoder's input size (normalisation happens on
the device, in `embeddings.py`, so workers ship 1 byte per channel). Each dataset has a
`fingerprint`: the data part of the embedding cache key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pluto.errors import PlutoError


def resize_chw(rgb: np.ndarray, input_px: int) -> torch.Tensor:
    img = Image.fromarray(rgb)
    if img.size != (input_px, input_px):
        img = img.resize((input_px, input_px), Image.Resampling.BILINEAR, reducing_gap=None)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


class ImageFiles(Dataset):
    """Image files (any format PIL reads), resized to `input_px` square.

    The fingerprint hashes each file's path, size and mtime (not its bytes, so a cache lookup costs
    one `stat` per file): replacing a file invalidates the cache.
    """

    def __init__(self, paths: list[Path] | tuple[Path, ...], input_px: int) -> None:
        self.paths = tuple(Path(p) for p in paths)
        self.input_px = int(input_px)
        missing = [str(p) for p in self.paths if not p.is_file()]
        if missing:
            raise PlutoError(f"{len(missing)} image file(s) not found, e.g. {missing[0]}")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        try:
            with Image.open(self.paths[i]) as im:
                rgb = np.asarray(im.convert("RGB"))
        except OSError as exc:
            raise PlutoError(f"{self.paths[i]}: cannot decode image ({exc})") from exc
        return resize_chw(rgb, self.input_px)

    @property
    def fingerprint(self) -> str:
        return files_fingerprint(f"files:{self.input_px}", self.paths)


def files_fingerprint(prefix: str, paths) -> str:
    """Embedding-cache key of a file-backed dataset: path, size and mtime of each file, so an edited
    or replaced file invalidates the cache without hashing image bytes."""
    h = hashlib.sha256(prefix.encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


class SlideTiles(Dataset):
    """Tiles of a tiling manifest (columns path, x_l0, y_l0, mpp, tile_px), read through pluto.slides' handle pool."""

    COLUMNS = ("path", "x_l0", "y_l0", "mpp", "tile_px")

    def __init__(self, manifest, input_px: int) -> None:
        missing = [c for c in self.COLUMNS if c not in manifest.columns]
        if missing:
            raise PlutoError(f"tile manifest lacks column(s) {missing}")
        self.rows = manifest[list(self.COLUMNS)].reset_index(drop=True)
        self.input_px = int(input_px)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> torch.Tensor:
        from pluto.slides import get_handle, read_tile

        r = self.rows.iloc[i]
        tile = read_tile(get_handle(r.path), int(r.x_l0), int(r.y_l0), float(r.mpp), int(r.tile_px))
        return resize_chw(tile, self.input_px)

    @property
    def fingerprint(self) -> str:
        blob = json.dumps({"tiles": self.rows.astype(str).values.tolist(), "input_px": self.input_px})
        return hashlib.sha256(blob.encode()).hexdigest()


class ArrayImages(Dataset):
    """In-memory uint8 (N, H, W, 3) images, e.g. derived tiles; fingerprint is the array's hash."""

    def __init__(self, images: np.ndarray, input_px: int) -> None:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise PlutoError(f"ArrayImages wants uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        self.images = images
        self.input_px = int(input_px)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return resize_chw(self.images[i], self.input_px)

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256(f"array:{self.images.shape}:{self.input_px}".encode())
        h.update(np.ascontiguousarray(self.images).data)
        return h.hexdigest()
