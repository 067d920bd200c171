"""Map-style datasets that feed embedding extraction: image files, or tiles read from slides.

Items are uint8 CHW tensors already brought to the encoder's input size by `resize_and_crop`
(normalisation happens on the device, in `embeddings.py`, so workers ship 1 byte per channel). Each
dataset has a `fingerprint`: the data part of the embedding cache key (`embeddings.cache_key` adds
the model, `TRANSFORM`, normalisation, precision, mode, patch size and input px).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as tvf

from pluto.atomic import write_with
from pluto.errors import PlutoError

# What `resize_and_crop` does, named in every embedding-cache key: changing the geometry or the
# interpolation must change this name so that no embedding of the old pixels is reused ("squash" was
# the square resize before issue 13).
TRANSFORM = "eva-resize-and-crop/v1 (shorter side bilinear+antialias, centre crop; masks nearest)"


def resize_and_crop(rgb: np.ndarray, px: int) -> torch.Tensor:
    """uint8 (H, W, 3) -> uint8 (3, px, px) with eva 0.4.5's `ResizeAndCrop` geometry, before its ToDtype/Normalize.

    eva's transform is torchvision v2 `Resize(px)` (shorter side to px, aspect kept, bilinear with
    antialias on the uint8 tensor) then `CenterCrop(px)`; the same torchvision kernels run here on
    the same uint8 tensor, so the pixels equal eva's exactly (tests/eval/test_transforms.py).
    """
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise PlutoError(f"resize_and_crop wants a uint8 (H, W, 3) image, got {rgb.dtype} {rgb.shape}")
    chw = torch.from_numpy(np.require(rgb, requirements=["C", "W"])).permute(2, 0, 1)  # copies only a read-only view
    return tvf.center_crop_image(tvf.resize_image(chw, [int(px)], antialias=True), [int(px), int(px)]).contiguous()


def resize_and_crop_mask(mask: np.ndarray, px: int) -> np.ndarray:
    """Label mask (H, W) -> (px, px) int64 with the image's geometry: eva applies `ResizeAndCrop` to the
    (image, mask) pair, and torchvision resizes a `Mask` with nearest-neighbour (labels never blend)."""
    if mask.ndim != 2:
        raise PlutoError(f"resize_and_crop_mask wants an (H, W) label mask, got shape {mask.shape}")
    m = torch.as_tensor(np.ascontiguousarray(mask), dtype=torch.int64)
    return tvf.center_crop_mask(tvf.resize_mask(m, [int(px)]), [int(px), int(px)]).numpy()


# File content digests, memoised per stat identity (this process, plus the on-disk memo `digest_memo` loads).
_DIGESTS: dict[str, str] = {}
DIGEST_MEMO = "file-sha256.json"  # the memo's name inside an embedding cache directory


def _identity(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, hashed once per stat identity (path, device, inode, size, mtime, ctime).

    Why bytes, and why this memo: size + mtime alone miss a same-size file restored with its old mtime
    (rsync -a, cp -p, unpacking another version of a benchmark), so a replaced slide or image would
    reuse stale embeddings. Hashing a multi-GB slide on every lookup is too slow, so the digest is
    kept per stat identity: ctime and inode cannot be set back by user tools, so any rewrite or
    replacement changes the identity and forces a re-hash, while an unchanged file costs one `stat`.
    The manifest's catalog slide_id is not used: it is the bytes at ingest, stale if the file is
    replaced after.
    """
    path = Path(path)
    if not path.is_file():
        raise PlutoError(f"{path}: file not found (needed for the embedding cache key)")
    key = _identity(path)
    if key not in _DIGESTS:
        with open(path, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        if _identity(path) == key:  # not rewritten while being read
            _DIGESTS[key] = digest
        return digest
    return _DIGESTS[key]


@contextmanager
def digest_memo(memo: Path) -> Iterator[None]:
    """Load the on-disk digest memo `memo` (a JSON object) into this process's memo, and write it back
    with the digests computed inside, so later processes hash each file version once. A memo that
    cannot be read is ignored (it only saves time)."""
    memo = Path(memo)
    try:
        known = json.loads(memo.read_text()) if memo.is_file() else {}
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    _DIGESTS.update(known)
    yield
    if not _DIGESTS.keys() <= known.keys():
        write_with(memo, lambda p: p.write_text(json.dumps(_DIGESTS)))


def files_fingerprint(prefix: str, paths) -> str:
    """Embedding-cache key of a file-backed dataset: the content digest of each file, in order
    (`file_sha256`: bytes, memoised per stat identity), so a replaced file invalidates the cache
    and a moved, unchanged copy still hits it."""
    h = hashlib.sha256(prefix.encode())
    for p in paths:
        h.update(f"{file_sha256(Path(p))}\n".encode())
    return h.hexdigest()


class ImageFiles(Dataset):
    """Image files (any format PIL reads), resized and centre-cropped to `input_px` (`resize_and_crop`).

    The fingerprint is the files' bytes (`files_fingerprint`): for small image files too, a restored
    same-size file with its old mtime must not reuse embeddings, and the stat-keyed memo makes a
    lookup one `stat` per file after the first.
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
        return resize_and_crop(rgb, self.input_px)

    @property
    def fingerprint(self) -> str:
        return files_fingerprint(f"files:{self.input_px}", self.paths)


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
        return resize_and_crop(tile, self.input_px)

    @property
    def fingerprint(self) -> str:
        """The tile rows with each slide's path replaced by its content digest (`file_sha256`), so a slide
        replaced at the same path invalidates the cache."""
        digests = {p: file_sha256(Path(p)) for p in self.rows["path"].unique()}
        tiles = self.rows.assign(path=self.rows["path"].map(digests)).astype(str).values.tolist()
        return hashlib.sha256(json.dumps({"tiles": tiles, "input_px": self.input_px}).encode()).hexdigest()


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
        return resize_and_crop(self.images[i], self.input_px)

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256(f"array:{self.images.shape}:{self.input_px}".encode())
        h.update(np.ascontiguousarray(self.images).data)
        return h.hexdigest()
