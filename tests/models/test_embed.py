"""embed(): CLS and CLS+mean-patch (registers excluded), recording the mode and the patch size."""

from __future__ import annotations

import pytest
import timm
import torch

from pluto.models import Embedding, embed


@pytest.mark.parametrize("patch_size", [16, 32])
def test_cls_and_cls_mean_from_the_token_layout(tiny, images, patch_size):
    with torch.no_grad():
        tokens = tiny.forward_features(images, patch_size=patch_size)
    cls = embed(tiny, images, "cls", patch_size)
    both = embed(tiny, images, "cls+mean", patch_size)
    assert (cls.mode, cls.patch_size, both.mode, both.patch_size) == ("cls", patch_size, "cls+mean", patch_size)
    torch.testing.assert_close(cls.values, tokens[:, 0])
    torch.testing.assert_close(both.values[:, :96], tokens[:, 0])
    torch.testing.assert_close(both.values[:, 96:], tokens[:, 5:].mean(dim=1))  # 1 CLS + 4 registers skipped
    assert not torch.allclose(both.values[:, 96:], tokens[:, 1:].mean(dim=1))  # registers would change it


def test_default_patch_size_is_recorded_and_mode_restored(tiny, images):
    tiny.train()
    e = embed(tiny, images)
    assert e.patch_size == 16 and e.values.shape == (2, 96) and not e.values.requires_grad
    assert tiny.training  # embed ran in eval mode and put the model back


def test_embedding_round_trips_through_a_dict(tiny, images):
    e = embed(tiny, images, "cls+mean", 32)
    back = Embedding.from_dict(e.to_dict())
    assert (back.mode, back.patch_size) == (e.mode, e.patch_size)
    torch.testing.assert_close(back.values, e.values)


def test_plain_timm_vit_at_its_own_patch_size():
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, reg_tokens=4, class_token=True).eval()
    x = torch.randn(1, 3, 224, 224)
    e = embed(vit, x, "cls+mean")
    assert e.patch_size == 16 and e.values.shape == (1, 2 * 192)
    with pytest.raises(ValueError, match="fixed patch size 16, got 8"):
        embed(vit, x, "cls", patch_size=8)


def test_unknown_mode_is_refused(tiny, images):
    with pytest.raises(ValueError, match="'mean'"):
        embed(tiny, images, "mean")
