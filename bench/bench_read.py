"""Tile read throughput per core: the PLUTO read path vs raw OpenSlide baselines, same process, same tiles.

224-px tiles at 0.25 (native of the generated pyramid), 0.5, 1.0 and 2.0 um/px from (a) the bundled
Aperio slide (0.499 um/px, one level) and (b) a large JPEG pyramid generated from its tissue
(default 40,001 x 39,999 px at 0.25 um/px, odd size so OpenSlide's level downsamples are floats
like 1.99998; cached under work/bench/). Two access patterns on the large pyramid: `random`
positions (a training loader) and `grid` order (the non-overlapping grid row by row, as tiling,
embedding and export read it, where neighbouring tiles share JPEG tiles).

Methods: `pluto` (pooled handle, level pixels addressed with the integer factor, decoded-tile
cache, area resize), `naive_l0` (OpenSlide read_region at level 0 + area resize),
`openslide_best` (OpenSlide's get_best_level_for_downsample + read_region with its float
downsample + area resize), `reopen` (open the slide for every tile, then as openslide_best).

(c) The pyramid's content as a 12,001 x 11,999 px WebP pyramid (lossy; the quick size in both modes,
so the first full run does not spend minutes encoding 40k px of WebP), which OpenSlide does not open: `pluto`
reads it through its tifffile reader, beside `tiffslide_best` (tiffslide, an independent
tifffile + zarr reader with OpenSlide's API: best level + read_region + area resize).
Geometry error = mean |tile - reference| where the reference is the level-0 square area-resized
to 224 px. Rates are per second of process CPU time (the machine is shared), wall rates beside.

    python -m bench.bench_read            # ~4 min the first time (pyramid), then ~3-4 min
    python -m bench.bench_read --quick    # small pyramid, fewer tiles
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from bench.common import machine, publish

REPO = Path(__file__).resolve().parent.parent
TILE_PX = 224
MPPS = (0.25, 0.5, 1.0, 2.0)
BASELINES = ("openslide_best", "tiffslide_best")  # the "x baseline" column's reference, per slide


def mirrored_source(tissue: np.ndarray) -> Callable[[int, int, int, int], np.ndarray]:
    """Region callable over an endless mirror-tiling of `tissue` (continuous at every seam)."""
    h, w = tissue.shape[:2]

    def index(start: int, n: int, period: int) -> np.ndarray:
        i = np.arange(start, start + n) % (2 * period)
        return np.where(i < period, i, 2 * period - 1 - i)

    def region(x: int, y: int, rw: int, rh: int) -> np.ndarray:
        return tissue[index(y, rh, h)][:, index(x, rw, w)]

    return region


def large_pyramid(cmu: Path, size: tuple[int, int], out_dir: Path, compression: str = "jpeg") -> Path:
    """The bundled tissue mirrored to `size` at 0.25 um/px as a tiled pyramid (cached); JPEG at quality 80
    (OpenSlide opens it), or e.g. "webp", which only the project's tifffile reader opens."""
    from pluto.slides import open_slide, write_pyramid

    suffix = "" if compression == "jpeg" else f"_{compression}"
    path = out_dir / f"cmu_mirror_{size[0]}x{size[1]}_0.25mpp{suffix}.tiff"
    if not path.is_file():
        with open_slide(cmu) as h:
            tissue = h.read_level(0, 0, 0, h.info.width, h.info.height)
        n_levels = max(1, int(math.log2(max(size) / 1000)))
        write_pyramid(path, mirrored_source(tissue), 0.25, n_levels, size=size, compression=compression, quality=80)
    return path


def _area(rgb: np.ndarray) -> np.ndarray:
    import cv2

    return rgb if rgb.shape[0] == TILE_PX else cv2.resize(rgb, (TILE_PX, TILE_PX), interpolation=cv2.INTER_AREA)


ReadFn = Callable[[int, int, float], np.ndarray]  # (x_l0, y_l0, mpp) -> 224 x 224 x 3 tile


def tiffslide_methods(path: Path, native_mpp: float) -> tuple[dict[str, ReadFn], Callable[[int], None]]:
    """PLUTO (its tifffile reader) and tiffslide on a TIFF OpenSlide does not open; tiffslide keeps no tile cache."""
    import tiffslide

    from pluto.slides import clear_tile_cache, configure_tile_cache, get_handle, read_tile

    handle = get_handle(path)
    ts = tiffslide.TiffSlide(str(path))

    def best(x: int, y: int, mpp: float) -> np.ndarray:
        size_l0 = TILE_PX * mpp / native_mpp
        level = ts.get_best_level_for_downsample(size_l0 / TILE_PX)
        n = int(round(size_l0 / ts.level_downsamples[level]))
        return _area(np.asarray(ts.read_region((x, y), level, (n, n), as_array=True))[..., :3])

    def reset(cache_bytes: int) -> None:
        configure_tile_cache(cache_bytes / 2**20)
        clear_tile_cache()

    return {"pluto": lambda x, y, mpp: read_tile(handle, x, y, mpp, TILE_PX), "tiffslide_best": best}, reset


def methods(path: Path, native_mpp: float) -> tuple[dict[str, ReadFn], Callable[[int], None]]:
    """The read methods on one slide, and `reset(cache_bytes)`, which empties every cache they keep and
    gives OpenSlide's tile cache and PLUTO's decoded-tile cache the same byte budget.
    """
    import openslide

    from pluto.slides import clear_tile_cache, configure_tile_cache, get_handle, read_tile

    handle = get_handle(path)
    if handle.reader == "tifffile":
        return tiffslide_methods(path, native_mpp)
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

    def reset(cache_bytes: int) -> None:
        configure_tile_cache(cache_bytes / 2**20)
        clear_tile_cache()
        osr.set_cache(openslide.OpenSlideCache(cache_bytes))

    fns = {
        "pluto": lambda x, y, mpp: read_tile(handle, x, y, mpp, TILE_PX),
        "naive_l0": naive,
        "openslide_best": lambda x, y, mpp: best(osr, x, y, mpp),
        "reopen": reopen,
    }
    return fns, reset


def random_positions(info, mpp: float, n: int, seed: int) -> list[tuple[int, int]]:
    """Random top-lefts on the read level's grid, tile fully inside the slide (a training loader's pattern)."""
    from pluto.slides import plan_read

    size_l0 = int(math.ceil(TILE_PX * mpp / info.mpp))
    ds = int(info.level_downsamples[plan_read(info, 0, 0, mpp, TILE_PX).level])
    rng = np.random.default_rng(seed)
    xs = rng.integers(0, (info.width - size_l0) // ds, n) * ds
    ys = rng.integers(0, (info.height - size_l0) // ds, n) * ds
    return list(zip(xs.tolist(), ys.tolist()))


def grid_positions(info, mpp: float, n: int) -> list[tuple[int, int]]:
    """Up to `n` top-lefts of the non-overlapping tile grid, row-major over the full slide width from the
    middle row down (the order a grid manifest is tiled, embedded or exported in)."""
    from pluto.slides import plan_read

    req = plan_read(info, 0, 0, mpp, TILE_PX)
    step = req.read_px * int(info.level_downsamples[req.level])
    cols, rows = (info.width - step) // step + 1, (info.height - step) // step + 1
    first = max(0, rows // 2 - -(-n // cols) // 2)
    return [(c * step, r * step) for r in range(first, rows) for c in range(cols)][:n]


def in_memory(paths: list[Path], memory_dir: Path | None) -> tuple[list[Path], Callable[[], None]]:
    """Copies of `paths` in a RAM-backed folder (tmpfs), and a cleanup; the originals when `memory_dir` is None.

    The rates are meant to measure reading and decoding, not storage: on a VM whose kernel reclaims
    cold page-cache pages within seconds (DAMON), a 350 MB slide read at random positions is partly
    served from disk even right after being read through once. tmpfs pages stay in memory.
    """
    if memory_dir is None:
        return paths, lambda: None
    folder = Path(tempfile.mkdtemp(prefix="bench_read.", dir=memory_dir))
    copies = []
    for path in paths:
        copies.append(folder / path.name)
        shutil.copyfile(path, copies[-1])
    return copies, lambda: shutil.rmtree(folder, ignore_errors=True)


def geometry_error(fn, handle, xy: list[tuple[int, int]], mpp: float) -> float:
    """Mean abs error (0-255) of `fn` tiles vs the area-resized level-0 square."""
    errs = []
    for x, y in xy:
        n = int(round(TILE_PX * mpp / handle.info.mpp))
        ref = _area(handle.read_level(0, x, y, n, n)).astype(np.float64)
        errs.append(np.abs(fn(x, y, mpp) - ref).mean())
    return float(np.mean(errs))


def bench_slide(
    name: str, path: Path, n_tiles: int, n_geometry: int, patterns: tuple[str, ...], cache_bytes: int
) -> list[dict]:
    """Every method on the same tiles in the same order (the slow baselines on the first quarter of them).

    Before each timed block: page cache warmed, every method's caches emptied, 5 warm-up reads at
    other positions (decoder set-up), caches emptied again. `random` runs with no tile cache (PLUTO's
    and OpenSlide's at 0 bytes): a training loader spreads its reads over thousands of slides, so
    reuse within one slide is not what it sees (with a cache, a small level fits whole and random
    reads would be served from memory). `grid` runs with both caches at `cache_bytes`. Rates are
    tiles per second of this process's CPU time (one core; cv2 single-threaded), so other jobs on
    the machine do not count.
    """
    from pluto.slides import get_handle, tile_cache

    handle = get_handle(path)
    info = handle.info
    fns, reset = methods(path, info.mpp)
    budget = {"random": 0, "grid": cache_bytes}
    rows = []
    for mpp in MPPS:
        if mpp < info.mpp * 0.85:
            continue
        warm = random_positions(info, mpp, 5, seed=1)
        for pattern in patterns:
            if pattern == "random":
                xy = random_positions(info, mpp, n_tiles, seed=int(mpp * 100))
            else:
                xy = grid_positions(info, mpp, n_tiles)
            for method, fn in fns.items():
                count = len(xy) // 4 if method in ("reopen", "naive_l0") else len(xy)
                reset(budget[pattern])
                for x, y in warm:
                    fn(x, y, mpp)
                reset(budget[pattern])
                c0, w0 = time.process_time(), time.perf_counter()
                for x, y in xy[:count]:
                    fn(x, y, mpp)
                cpu_s, wall_s = time.process_time() - c0, time.perf_counter() - w0
                decodes = tile_cache().misses / count if method == "pluto" and handle.direct else None
                rows.append({
                    "slide": name, "mpp": mpp, "order": pattern, "method": method, "tiles": count,
                    "tiles_per_s": count / cpu_s, "tiles_per_s_wall": count / wall_s,
                    "decoded_tiles_per_tile": decodes,
                    "mae_vs_level0": geometry_error(fn, handle, xy[:n_geometry], mpp),
                })
    return rows


def markdown(result: dict) -> str:
    rows = result["rows"]
    m = result["machine"]
    lines = [
        f"Machine: {m['cpu']} ({m['node']}), git {m['git_sha']}, {result['date']}, {m.get('cores', '?')} cores shared "
        f"with other jobs (load average {m.get('load_1min', 'n/a')} at start, {result.get('load_1min_end', 'n/a')} at end). "
        "One process; tiles/s per core = tiles per second of process CPU time (cv2 single-threaded), wall-clock rate "
        f"beside it. Slides read from a RAM-backed copy ({result['slides_read_from']}): the rates measure reading and "
        "decoding, not storage. `random`: uniform random "
        "positions (training), no tile cache for any method (a loader spreads its reads over many slides); `grid`: the "
        "non-overlapping grid, row-major across the full slide width (tiling, embedding, export), PLUTO's decoded-tile "
        f"cache and OpenSlide's tile cache both {result['cache_mib']} MiB, emptied before each block. Baselines read "
        "the same tiles in the same order (naive_l0 and reopen: the first quarter). "
        "MAE = mean |tile - area-resized level-0 reference| (0-255). decodes/tile = JPEG tiles PLUTO decoded per 224-px "
        "tile read.",
        "",
        "| slide | um/px | order | method | tiles/s per core | tiles/s wall | x baseline (OpenSlide or tiffslide best) | decodes/tile | MAE vs level 0 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = next(b for b in rows if (b["slide"], b["mpp"], b["order"]) == (r["slide"], r["mpp"], r["order"])
                    and b["method"] in BASELINES)
        dec = "" if r["decoded_tiles_per_tile"] is None else f"{r['decoded_tiles_per_tile']:.2f}"
        lines.append(
            f"| {r['slide']} | {r['mpp']:g} | {r['order']} | {r['method']} | {r['tiles_per_s']:.0f} | "
            f"{r['tiles_per_s_wall']:.0f} | {r['tiles_per_s'] / base['tiles_per_s']:.2f} | {dec} | {r['mae_vs_level0']:.2f} |"
        )
    big = result["large_pyramid"]["path"].rsplit("/", 1)[-1]
    pluto = {(r["mpp"], r["order"]): r["tiles_per_s"] for r in rows if r["slide"] == big and r["method"] == "pluto"}
    verdict = []
    for mpps, target in (((0.25,), 950), ((1.0, 2.0), 600)):
        for order in ("random", "grid"):
            got = [pluto[(m, order)] for m in mpps if (m, order) in pluto]
            if got:
                verdict.append(f"{'/'.join(f'{m:g}' for m in mpps)} um/px {order} >= {target}: "
                               f"{'/'.join(f'{g:.0f}' for g in got)} ({'met' if min(got) >= target else 'NOT met'})")
    lines += ["", "Issue 3 targets, PLUTO path on the large pyramid, tiles/s per core: " + "; ".join(verdict) + "."]
    lines += ["", "Cores to feed one GPU at 1,000 tiles/s with the PLUTO path (large pyramid): "
              + "; ".join(f"{order}: " + ", ".join(f"{k} um/px: {v}" for k, v in per.items())
                          for order, per in result["cores_for_1000_tiles_per_s"].items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    import cv2

    from pluto.slides import configure_tile_cache, tile_cache

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="12k x 12k pyramid, fewer tiles")
    parser.add_argument("--tiles", type=int, default=None, help="timed tiles per method and resolution")
    parser.add_argument("--work", type=Path, default=REPO / "work" / "bench")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite the bench/README.md section")
    parser.add_argument("--cache-mib", type=float, default=None, help="decoded-tile cache budget (default: the library's)")
    parser.add_argument("--memory-dir", type=Path, default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
                        help="RAM-backed folder the slides are copied to for the timed reads (default /dev/shm)")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    cmu = REPO.parent / "shared" / "data" / "wsi" / "CMU-1-Small-Region.svs"
    size = (12_001, 11_999) if args.quick else (40_001, 39_999)
    n_tiles = args.tiles or (150 if args.quick else 600)
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    big = large_pyramid(cmu, size, args.work)
    build_s = time.perf_counter() - t0
    webp = large_pyramid(cmu, (12_001, 11_999), args.work, compression="webp")
    if args.cache_mib is not None:
        configure_tile_cache(args.cache_mib)
    cache_bytes = tile_cache().max_bytes
    host = machine()  # load average before the run
    (cmu_mem, big_mem, webp_mem), cleanup = in_memory([cmu, big, webp], args.memory_dir)
    try:  # the small slide has too few grid tiles at 1-2 um/px to time, and fits in either cache whole
        rows = (bench_slide(cmu.name, cmu_mem, n_tiles, 10, ("random",), cache_bytes)
                + bench_slide(big.name, big_mem, n_tiles, 10, ("random", "grid"), cache_bytes)
                + bench_slide(webp.name, webp_mem, n_tiles // 2, 10, ("random", "grid"), cache_bytes))
    finally:
        cleanup()
    cores = {}
    for r in rows:
        if r["slide"] == big.name and r["method"] == "pluto":
            cores.setdefault(r["order"], {})[f"{r['mpp']:g}"] = math.ceil(1000 / r["tiles_per_s"])
    result = {
        "benchmark": "bench_read",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": host,
        "tile_px": TILE_PX,
        "large_pyramid": {"path": str(big), "size": list(size), "build_s": round(build_s, 1)},
        "slides_read_from": str(args.memory_dir or "their own folders"),
        "cache_mib": round(cache_bytes / 2**20, 1),
        "load_1min_end": round(os.getloadavg()[0], 2),
        "rows": rows,
        "cores_for_1000_tiles_per_s": cores,
    }
    publish("bench_read", "tile reads per core", result, markdown(result), quick=args.quick, readme=not args.no_readme)
    return result


if __name__ == "__main__":
    main()
