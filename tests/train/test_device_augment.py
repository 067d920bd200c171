"""Device-side multi-crop (augment_on="device") on CPU: same plans, same crops, same training step."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from pluto.ssl.batched_color import adjust, gaussian_blur
from pluto.ssl.multicrop import MultiCropAugment
from pluto.train.data import MultiCropCollate, MultiCropStream, StreamPosition, open_rows, to_device
from pluto.train.trainer import train


@pytest.mark.parametrize("op, factors", [
    ("brightness", (0.6, 1.0, 1.4)), ("contrast", (0.6, 1.0, 1.4)), ("saturation", (0.8, 1.0, 1.2)), ("hue", (-0.1, 0.0, 0.07)),
])
def test_batched_colour_op_equals_torchvision_image_by_image(op, factors):
    torch.manual_seed(0)
    imgs = torch.rand(3, 3, 20, 20)
    f = torch.tensor(factors)
    got = adjust(imgs, op, f)
    tv = getattr(TF, f"adjust_{op}")
    want = torch.stack([tv(img, float(x)) for img, x in zip(imgs, f)])
    assert torch.allclose(got, want, atol=1e-5)


def test_batched_blur_equals_torchvision_per_sigma():
    torch.manual_seed(0)
    imgs = torch.rand(2, 3, 24, 24)
    sigma = torch.tensor([0.3, 1.7])
    want = torch.stack([TF.gaussian_blur(img, [9, 9], [float(s), float(s)]) for img, s in zip(imgs, sigma)])
    assert torch.allclose(gaussian_blur(imgs, sigma), want, atol=1e-5)


def _batches(tiles_manifest, cfg, augment_on: str, n: int = 2):
    stream = MultiCropStream(open_rows(str(tiles_manifest), "manifest", None), 7, cfg, StreamPosition(0, 0, 1, 3), augment_on)
    collate, it = MultiCropCollate(cfg, 7), iter(stream)
    return [collate([next(it) for _ in range(3)]) for _ in range(n)]


def test_device_path_renders_the_crops_the_workers_would(tiles_manifest, tiny_config, tmp_path):
    cfg = tiny_config(tmp_path, tiles_manifest).ssl
    on_cpu = _batches(tiles_manifest, cfg, "cpu")
    shipped = _batches(tiles_manifest, cfg, "device")
    assert all(t.dtype == torch.uint8 and t.shape == (3, 96, 96) for t in shipped[0]["tiles"])  # workers ship uint8 tiles
    assert "global_crops" not in shipped[0]
    augment = MultiCropAugment(cfg)
    for want, raw in zip(on_cpu, shipped, strict=True):
        got = to_device(raw, "cpu", augment)
        assert set(got) == set(want)
        assert got["global_crops"].shape == (2 * 3, 3, 48, 48) and got["local_crops"].shape == (2 * 3, 3, 32, 32)
        for key in ("global_zoom", "local_zoom", "global_mpp", "local_mpp", "masks_p16", "index"):
            assert torch.equal(got[key], want[key]), key  # same crop geometry and masks, drawn from (seed, k)
        for key in ("global_crops", "local_crops"):
            assert torch.allclose(got[key], want[key], atol=1e-5), key
            lo = (0 - torch.tensor(cfg.mean)) / torch.tensor(cfg.std)
            hi = (1 - torch.tensor(cfg.mean)) / torch.tensor(cfg.std)
            per_channel = got[key].transpose(0, 1).flatten(1)
            assert (per_channel.min(1).values >= lo - 1e-5).all() and (per_channel.max(1).values <= hi + 1e-5).all()
    again = to_device(_batches(tiles_manifest, cfg, "device", n=1)[0], "cpu", augment)
    assert torch.equal(again["global_crops"], to_device(shipped[0], "cpu", augment)["global_crops"])  # seeded: repeatable


def test_a_training_step_with_device_augmentation_matches_the_worker_path(tmp_path, tiles_manifest, tiny_config):
    base = tiny_config(tmp_path / "cpu", tiles_manifest, steps=1, ckpt_every=1)
    cpu = train(base)
    dev = train(replace(base, run_dir=str(tmp_path / "dev"), augment_on="device"))
    assert dev.history[0]["loss"] == pytest.approx(cpu.history[0]["loss"], rel=1e-4)
