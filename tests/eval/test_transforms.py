"""Images and masks reach the encoder as eva 0.4.5's `ResizeAndCrop` makes them: shorter side resized, centre crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pluto.errors import PlutoError
from pluto.eval.images import ArrayImages, ImageFiles, resize_and_crop, resize_and_crop_mask

PX = 224  # eva's RESIZE_DIM default in every vendored config (pluto/eval/eva_configs)


def _eva(rgb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """eva's own transform on an (image, mask) pair, as its segmentation datasets apply it; mean 0 and std 1
    so that the float output is the uint8 pixels / 255."""
    from torchvision import tv_tensors

    from eva.vision.data.transforms.common import ResizeAndCrop

    image, out_mask = ResizeAndCrop(size=PX, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))(
        tv_tensors.Image(torch.from_numpy(rgb).permute(2, 0, 1)), tv_tensors.Mask(torch.from_numpy(mask)))
    return image.numpy(), out_mask.numpy()


@pytest.mark.parametrize("h, w", [(300, 200), (200, 460), (97, 131)])
def test_images_and_masks_equal_eva_resize_and_crop_on_non_square_inputs(h, w):
    """Exact equality (no grey-level tolerance): the same torchvision v2 kernels run on the same uint8 tensor."""
    rng = np.random.default_rng(h * w)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = rng.integers(0, 5, (h, w))
    eva_image, eva_mask = _eva(rgb, mask)
    mine = resize_and_crop(rgb, PX)
    assert mine.dtype == torch.uint8 and mine.shape == (3, PX, PX)
    np.testing.assert_array_equal(mine.numpy(), np.round(eva_image * 255).astype(np.uint8))
    np.testing.assert_array_equal(resize_and_crop_mask(mask, PX), eva_mask)


def test_the_aspect_ratio_is_kept_and_the_centre_is_cropped_not_squashed():
    """A 100x400 image: red | green | blue bands of 100, 200 and 100 px. Resized on its shorter side to
    224 (896 wide), the centre crop (columns 336-560) lies inside the green band; a square resize would
    show all three bands."""
    rgb = np.zeros((100, 400, 3), np.uint8)
    labels = np.zeros((100, 400), np.int64)
    for band, (lo, hi) in enumerate([(0, 100), (100, 300), (300, 400)]):
        rgb[:, lo:hi, band], labels[:, lo:hi] = 255, band
    out = resize_and_crop(rgb, PX).numpy()
    assert (out[1] == 255).all() and (out[[0, 2]] == 0).all()
    assert set(np.unique(resize_and_crop_mask(labels, PX))) == {1}  # labels stay labels (nearest), same crop


def test_a_square_image_at_the_input_size_is_unchanged_and_bad_shapes_are_refused():
    rgb = np.random.default_rng(0).integers(0, 256, (PX, PX, 3), dtype=np.uint8)
    assert np.array_equal(resize_and_crop(rgb, PX).permute(1, 2, 0).numpy(), rgb)
    with pytest.raises(PlutoError, match=r"uint8 \(H, W, 3\)"):
        resize_and_crop(rgb.astype(np.float32), PX)
    with pytest.raises(PlutoError, match=r"\(H, W\) label mask"):
        resize_and_crop_mask(np.zeros((2, 4, 4)), PX)


def test_every_image_dataset_crops(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (120, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    want = resize_and_crop(rgb, 48)
    assert torch.equal(ImageFiles([tmp_path / "a.png"], 48)[0], want)
    assert torch.equal(ArrayImages(rgb[None], 48)[0], want)
