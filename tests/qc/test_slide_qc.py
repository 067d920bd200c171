"""SlideQC.score_boxes against a brute-force level-0 reference; load_qc round trip and path safety."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pluto.errors import PlutoError
from pluto.qc.atomic import write_npz, write_parquet
from pluto.qc.slide_qc import MASK_NAMES, SlideQC, load_qc, slide_dir


def _qc(downsample: float = 4.0) -> SlideQC:
    rng = np.random.default_rng(1)
    masks = {n: rng.random((40, 60)) > p for n, p in zip(MASK_NAMES, (0.3, 0.8, 0.9, 0.95))}
    cells = pd.DataFrame({"x_l0": [0, 100, 0], "y_l0": [0, 0, 100], "w_l0": [100, 100, 100], "h_l0": [100, 100, 60],
                          "keep": [True, False, True], "reason": ["", "pen", ""]})
    return SlideQC("s", masks, downsample, cells)


def test_score_boxes_matches_upsampled_masks():
    qc = _qc()
    rng = np.random.default_rng(2)
    boxes = np.concatenate([rng.integers(0, 230, (300, 2)), rng.integers(1, 80, (300, 2))], axis=1)
    scores = qc.score_boxes(boxes)
    for name in MASK_NAMES:
        level0 = np.kron(qc.masks[name], np.ones((4, 4)))
        ref = [level0[y : y + h, x : x + w].sum() / (w * h) for x, y, w, h in boxes]
        np.testing.assert_allclose(scores[f"{name}_frac"], ref, atol=1e-9)


def test_score_boxes_fractional_boxes_and_outside():
    """Non-integer downsample: compare with a midpoint sampling of the mask over the level-0 box."""
    qc = _qc(downsample=2.5)
    boxes = np.array([[3, 7, 11, 13], [100, 60, 40, 30], [-20, -20, 10, 10]])
    got = qc.score_boxes(boxes)["tissue_frac"].to_numpy()
    for (x, y, w, h), frac in zip(boxes[:2], got[:2]):
        xs = np.arange(x, x + w, 0.05) + 0.025
        ys = np.arange(y, y + h, 0.05) + 0.025
        ref = qc.masks["tissue"][(ys / 2.5).astype(int)[:, None], (xs / 2.5).astype(int)[None, :]].mean()
        assert frac == pytest.approx(ref, abs=2e-3)
    assert got[2] == 0.0  # entirely outside the slide


def test_cell_keep_and_reason_follow_box_centre():
    scores = _qc().score_boxes(np.array([[10, 10, 20, 20], [150, 40, 20, 20], [20, 110, 30, 30], [150, 150, 10, 10]]))
    assert scores["cell_keep"].tolist() == [True, False, True, False]
    assert scores["cell_reason"].tolist() == ["", "pen", "", "outside"]


def test_load_qc_round_trip(tmp_path):
    qc = _qc()
    d = slide_dir(tmp_path, "abc")
    write_npz(d / "masks.npz", **qc.masks, downsample=np.float64(qc.downsample))
    write_parquet(qc.cells, d / "qc.parquet")
    back = load_qc(tmp_path, "abc")
    assert back.downsample == qc.downsample
    for n in MASK_NAMES:
        np.testing.assert_array_equal(back.masks[n], qc.masks[n])
    pd.testing.assert_frame_equal(back.cells, qc.cells)


def test_load_qc_errors(tmp_path):
    with pytest.raises(PlutoError, match="run `pluto qc`"):
        load_qc(tmp_path, "missing")
    for bad in ["../etc", "a/b", "..", ""]:
        with pytest.raises(PlutoError, match="slide_id"):
            slide_dir(tmp_path, bad)
