"""Tile read throughput per core: the PLUTO read path vs raw OpenSlide baselines, same process, same tiles.

224-px tiles at 0.25 (native of the generated pyramid), 0.5, 1.0 and 2.0 um/px, at random
positions on the read level's grid, from (a) the bundled Aperio slide (0.499 um/px, one level) and
(b) a large JPEG pyramid generated from its tissue (default 40,001 x 39,999 px at 0.25 um/px, odd
size so OpenSlide's level downsamples are floats like 1.99998; cached under work/bench/).

Methods: `pluto` (pooled handle, level pixels addressed with the integer factor, area resize),
`naive_l0` (OpenSlide read_region at level 0 + area resize), `openslide_best` (OpenSlide's
get_best_level_for_downsample + read_region with its float downsample + area resize), `reopen`
(open the slide for every tile, then as openslide_best). Geometry error = mean |tile - reference|
where the reference is the level-0 square area-resized to 224 px. Single process, cv2 single-threaded.

    python -m bench.bench_read            # ~3 min the first time (pyramid), then ~1-2 min
    python -m bench.bench_read --quick    # small pyramid, fewer tiles
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from bench.common import machine, publish

REPO = Path(__file__).resolve().parent.parent
TILE_PX = 224
MPPS = (0.25, 0.5, 1.0, 2.0)


def mirrored_source(tissue: np.ndarray) -> Callable[[int, int, int, int], np.ndarray]:
    """Region callable over an endless mirror-tiling of `tissue` (continuous at every seam)."""
    h, w = tissue.shape[:2]

    def index(start: int, n: int, period: int) -> np.ndarray:
        i = np.arange(start, start + n) % (2 * period)
        return np.where(i < period, i, 2 * period - 1 - i)

    def region(x: int, y: int, rw: int, rh: int) -> np.ndarray:
        return tissue[index(y, rh, h)][:, index(x, rw, w)]

    return region


def large_pyramid(cmu: Path, size: tuple[int, int], out_dir: Path) -> Path:
    from pluto.slides import open_slide, write_pyramid

    path = out_dir / f"cmu_mirror_{size[0]}x{size[1]}_0.25mpp.tiff"
    if not path.is_file():
        with open_slide(cmu) as h:
            tissue = h.read_level(0, 0, 0, h.info.width, h.info.height)
        n_levels = max(1, int(math.log2(max(size) / 1000)))
        write_pyramid(path, mirrored_source(tissue), 0.25, n_levels, size=size, quality=80)
    return path


def _area(rgb: np.ndarray) -> np.ndarray:
    import cv2

    return rgb if rgb.shape[0] == TILE_PX else cv2.resize(rgb, (TILE_PX, TILE_PX), interpolation=cv2.INTER_AREA)


def methods(path: Path, native_mpp: float) -> dict[str, Callable[[int, int, float], np.ndarray]]:
    import openslide

    from pluto.slides import get_handle, read_tile

    handle = get_handle(path)
    osr = openslide.OpenSlide(str(path))

    def best(o, x: int, y: int, mpp: float) -> np.ndarray:
        size_l0 = TILE_PX * mpp / native_mpp
        level = o.get_best_level_for_downsample(size_l0 / TILE_PX)
        n = int(round(size_l0 / o.level_downsamples[level]))
        return _area(np.asarray(o.read_region((x, y), level, (n, n)))[..., :3])

    def naive(x: int, y: int, mpp: float) -> np.ndarray:
        n = int(round(TILE_PX * mpp / native_mpp))
        return _area(np.asarray(osr.read_region((x, y), 0, (n, n)))[..., :3])

    def reopen(x: int, y: int, mpp: float) -> np.ndarray:
        with openslide.OpenSlide(str(path)) as o:
            return best(o, x, y, mpp)

    return {
        "pluto": lambda x, y, mpp: read_tile(handle, x, y, mpp, TILE_PX),
        "naive_l0": naive,
        "openslide_best": lambda x, y, mpp: best(osr, x, y, mpp),
        "reopen": reopen,
    }


def positions(info, mpp: float, n: int, seed: int) -> list[tuple[int, int]]:
    """Random top-lefts on the read level's grid, tile fully inside the slide."""
    from pluto.slides import plan_read

    size_l0 = int(math.ceil(TILE_PX * mpp / info.mpp))
    ds = int(info.level_downsamples[plan_read(info, 0, 0, mpp, TILE_PX).level])
    rng = np.random.default_rng(seed)
    xs = rng.integers(0, (info.width - size_l0) // ds, n) * ds
    ys = rng.integers(0, (info.height - size_l0) // ds, n) * ds
    return list(zip(xs.tolist(), ys.tolist()))


def geometry_error(fn, handle, xy: list[tuple[int, int]], mpp: float) -> float:
    """Mean abs error (0-255) of `fn` tiles vs the area-resized level-0 square."""
    errs = []
    for x, y in xy:
        n = int(round(TILE_PX * mpp / handle.info.mpp))
        ref = _area(handle.read_level(0, x, y, n, n)).astype(np.float64)
        errs.append(np.abs(fn(x, y, mpp) - ref).mean())
    return float(np.mean(errs))


def bench_slide(name: str, path: Path, n_tiles: int, n_geometry: int) -> list[dict]:
    from pluto.slides import get_handle

    handle = get_handle(path)
    info = handle.info
    fns = methods(path, info.mpp)
    rows = []
    for mpp in MPPS:
        if mpp < info.mpp * 0.85:
            continue
        xy = positions(info, mpp, n_tiles + 20, seed=int(mpp * 100))
        for method, fn in fns.items():
            count = n_tiles // 4 if method in ("reopen", "naive_l0") else n_tiles
            for x, y in xy[:5]:  # warm-up (page tables, decoder init)
                fn(x, y, mpp)
            t0 = time.perf_counter()
            for x, y in xy[20 : 20 + count]:
                fn(x, y, mpp)
            dt = time.perf_counter() - t0
            rows.append({
                "slide": name, "mpp": mpp, "method": method, "tiles": count,
                "tiles_per_s": count / dt,
                "mae_vs_level0": geometry_error(fn, handle, xy[:n_geometry], mpp),
            })
    return rows


def markdown(result: dict) -> str:
    rows = result["rows"]
    lines = [
        f"Machine: {result['machine']['cpu']} ({result['machine']['node']}), git {result['machine']['git_sha']}, "
        f"{result['date']}, load average {result['machine'].get('load_1min', 'n/a')} at start on "
        f"{result['machine'].get('cores', '?')} cores. One process, one core; the baselines run in the same process "
        "on the same tiles. MAE = mean |tile - area-resized level-0 reference| (0-255).",
        "",
        "| slide | um/px | method | tiles/s | x OpenSlide best | MAE vs level 0 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = next(b for b in rows if b["slide"] == r["slide"] and b["mpp"] == r["mpp"] and b["method"] == "openslide_best")
        lines.append(
            f"| {r['slide']} | {r['mpp']:g} | {r['method']} | {r['tiles_per_s']:.0f} | "
            f"{r['tiles_per_s'] / base['tiles_per_s']:.2f} | {r['mae_vs_level0']:.2f} |"
        )
    lines += ["", "Cores to feed one GPU at 1,000 tiles/s with the PLUTO path (large pyramid): "
              + ", ".join(f"{k} um/px: {v}" for k, v in result["cores_for_1000_tiles_per_s"].items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    import cv2

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="12k x 12k pyramid, fewer tiles")
    parser.add_argument("--tiles", type=int, default=None, help="timed tiles per method and resolution")
    parser.add_argument("--work", type=Path, default=REPO / "work" / "bench")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite the bench/README.md section")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    cmu = REPO.parent / "shared" / "data" / "wsi" / "CMU-1-Small-Region.svs"
    size = (12_001, 11_999) if args.quick else (40_001, 39_999)
    n_tiles = args.tiles or (150 if args.quick else 600)
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    big = large_pyramid(cmu, size, args.work)
    build_s = time.perf_counter() - t0
    rows = bench_slide("CMU-1-Small-Region.svs", cmu, n_tiles, 10) + bench_slide(big.name, big, n_tiles, 10)
    pluto_big = {r["mpp"]: r["tiles_per_s"] for r in rows if r["slide"] == big.name and r["method"] == "pluto"}
    result = {
        "benchmark": "bench_read",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "tile_px": TILE_PX,
        "large_pyramid": {"path": str(big), "size": list(size), "build_s": round(build_s, 1)},
        "rows": rows,
        "cores_for_1000_tiles_per_s": {f"{m:g}": math.ceil(1000 / tps) for m, tps in pluto_big.items()},
    }
    publish("bench_read", "tile reads per core", result, markdown(result), quick=args.quick, readme=not args.no_readme)
    return result


if __name__ == "__main__":
    main()
