"""A single-level 60k x 60k slide is ingested and QC'd in bounded memory, with the right tissue mask.

The slide is written from pre-encoded JPEG tiles (one white tile repeated, a square of tissue-coloured
ones), so it takes under a second to write and ~80 MB on disk while its level is 10.8 GB of RGB: reading
the whole level for the thumbnail, as QC once did, cannot stay under the 1 GB bound.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

SIDE_PX, TILE_PX, MPP = 60_000, 512, 0.25
TISSUE_TILES = (10, 20)  # tiles [10, 20) on both axes are tissue: level-0 px [5120, 10240)
MAX_RSS_MIB = 1024


def write_giant(path: Path) -> Path:
    """Single-level tiled JPEG TIFF at 0.25 um/px: white glass and one square of noisy pink tissue."""
    import imagecodecs
    import tifffile

    rng = np.random.default_rng(0)
    pink = np.clip(np.array([200, 110, 170]) + rng.integers(-30, 30, (TILE_PX, TILE_PX, 3)), 0, 255).astype(np.uint8)
    glass = imagecodecs.jpeg8_encode(np.full((TILE_PX, TILE_PX, 3), 255, np.uint8), level=90)
    tissue = imagecodecs.jpeg8_encode(pink, level=90)
    n = -(-SIDE_PX // TILE_PX)
    lo, hi = TISSUE_TILES
    tiles = (tissue if lo <= tx < hi and lo <= ty < hi else glass for ty in range(n) for tx in range(n))
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(tiles, shape=(SIDE_PX, SIDE_PX, 3), dtype=np.uint8, tile=(TILE_PX, TILE_PX), compression="jpeg",
                  photometric="ycbcr", subsampling=(2, 2), resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER",
                  metadata=None)
    return path


_CHILD = """
import json, resource, sys
from pathlib import Path
from pluto.qc import run_qc
from pluto.slides import ingest


def peak_kib():
    # VmHWM is this process's own high-water mark since exec: the wait4/getrusage maxrss of a child
    # started by a vfork from pytest also holds pytest's own peak (Linux keeps the old mm's mark at exec)
    own = int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0])
    return max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)

work = Path(sys.argv[1])
catalog = ingest(str(work / "src"), work, workers=1)
summary = run_qc(work / "catalog.parquet", work / "qc")
print(json.dumps({"status": catalog["status"].tolist(), "qc": summary.to_dict("records"), "peak_kib": peak_kib()}))
"""


def run_measured(cmd: list[str], tmp: Path) -> tuple[str, str]:
    """Run `cmd` to completion; (stdout, stderr), failing with its stderr if it failed."""
    with open(tmp / "child.out", "w+") as out, open(tmp / "child.err", "w+") as err:
        returncode = subprocess.run(cmd, stdout=out, stderr=err).returncode
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    assert returncode == 0, stderr[-4000:]
    return stdout, stderr


@pytest.mark.slow
def test_single_level_giant_is_ingested_and_qcd_under_1gb(tmp_path: Path) -> None:
    from pluto.qc import load_qc

    (tmp_path / "src").mkdir()
    write_giant(tmp_path / "src" / "giant.tiff")
    assert (tmp_path / "src" / "giant.tiff").stat().st_size < 100e6
    stdout, _ = run_measured([sys.executable, "-c", textwrap.dedent(_CHILD), str(tmp_path)], tmp_path)
    out = json.loads(stdout.strip().splitlines()[-1])
    peak_mib = out["peak_kib"] / 1024
    assert out["status"] == ["ok"]
    assert peak_mib < MAX_RSS_MIB, f"peak RSS {peak_mib:.0f} MiB"
    print(f"giant slide: ingest + QC peak RSS {peak_mib:.0f} MiB")

    row = out["qc"][0]
    qc = load_qc(tmp_path / "qc", row["slide_id"])
    ds = qc.downsample
    assert ds == pytest.approx(8.0 / MPP)  # thumb_mpp 8 um/px
    tissue = qc.masks["tissue"]
    assert tissue.shape == (round(SIDE_PX / ds),) * 2
    lo, hi = (int(t * TILE_PX / ds) for t in TISSUE_TILES)  # mask px [160, 320)
    expected = np.zeros_like(tissue)
    expected[lo:hi, lo:hi] = True
    assert (tissue == expected).mean() > 0.9999 and tissue[lo + 1 : hi - 1, lo + 1 : hi - 1].all()
    assert not tissue[: lo - 1].any() and not tissue[hi + 1 :].any()
    cells = qc.cells
    inside = (cells["x_l0"] >= lo * ds) & (cells["x_l0"] + cells["w_l0"] <= hi * ds) & (cells["y_l0"] >= lo * ds) & (cells["y_l0"] + cells["h_l0"] <= hi * ds)
    assert int(inside.sum()) == 100 and (cells.loc[inside, "tissue_frac"] > 0.99).all()  # corners rounded by the opening
    assert cells.loc[inside, "blur_var"].notna().all()  # the tissue cells were read at the working mpp
    assert row["n_tissue_cells"] == 100
