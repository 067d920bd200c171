"""Embedding extraction and cache, the real-data probe against chance, the suite, the report and the CLI."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pluto.errors import PlutoError
from pluto.eval.embeddings import extract_embeddings, input_px, model_id
from pluto.eval.images import ArrayImages, SlideTiles
from pluto.eval.linear_probe import QUICK_PROBE, cross_validated_probe

N_PERMUTATIONS = 19  # observed > all 19 label permutations  =>  permutation p-value <= 1/20


def test_modes_shapes_and_cache_written_once(fixed_tiny, tmp_path):
    ds = ArrayImages(np.random.default_rng(0).integers(0, 255, (5, 64, 64, 3), dtype=np.uint8), input_px(fixed_tiny))
    d = fixed_tiny.embed_dim
    assert extract_embeddings(fixed_tiny, ds, "cls", 4).shape == (5, d)
    assert extract_embeddings(fixed_tiny, ds, "patch_tokens", 4).shape == (5, d, 7, 7)
    first = extract_embeddings(fixed_tiny, ds, "cls+mean", 2, cache_dir=tmp_path)
    assert first.shape == (5, 2 * d)
    (cached,) = tmp_path.glob("emb-*.npy")
    stamp = cached.stat().st_mtime_ns
    again = extract_embeddings(fixed_tiny, ds, "cls+mean", 3, cache_dir=tmp_path)
    assert np.array_equal(first, again) and cached.stat().st_mtime_ns == stamp
    assert len(list(tmp_path.glob("emb-*.npy"))) == 1  # beside it only the content-hash memo
    extract_embeddings(fixed_tiny, ds, "cls+mean", 2, patch_size=32, cache_dir=tmp_path)  # patch size is part of the key
    assert len(list(tmp_path.glob("emb-*.npy"))) == 2
    np.testing.assert_allclose(first[:, :d], extract_embeddings(fixed_tiny, ds, "cls", 5), rtol=1e-5, atol=1e-6)


def test_model_id_changes_with_weights(fixed_tiny):
    import copy

    other = copy.deepcopy(fixed_tiny)
    assert model_id(other) == model_id(fixed_tiny)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    assert model_id(other) != model_id(fixed_tiny)


def test_every_cache_key_ingredient_changes_the_key():
    from pluto.eval.embeddings import cache_key, precision
    from pluto.eval.images import TRANSFORM

    base = dict(mid="m", fingerprint="f", mode="cls", patch_size=16, px=224, mean=(0.485, 0.456, 0.406),
                std=(0.229, 0.224, 0.225), transform=TRANSFORM, precision=precision(torch.device("cpu")))
    changed = dict(mid="m2", fingerprint="f2", mode="cls+mean", patch_size=8, px=112, mean=(0.5, 0.5, 0.5),
                   std=(0.5, 0.5, 0.5), transform="squash/v0", precision=precision(torch.device("cuda")))
    keys = {cache_key(**base)} | {cache_key(**(base | {k: v})) for k, v in changed.items()}
    assert len(keys) == 1 + len(changed) and cache_key(**base) == cache_key(**dict(base))
    assert precision(torch.device("cuda")) == "bf16-autocast" and precision(torch.device("cpu")) == "fp32"


def _rewrite_keeping_size_and_mtime(path, data: bytes) -> None:
    """Replace a file's bytes as `rsync -a` / `cp -p` of another version would: same size, old mtime."""
    import os

    st = path.stat()
    assert len(data) == st.st_size
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_image_files_cache_hits_when_unchanged_and_misses_on_content_norm_or_replacement(fixed_tiny, tmp_path):
    import copy

    from pluto.eval.images import ImageFiles

    rng = np.random.default_rng(0)
    paths = [tmp_path / f"img{i}.bmp" for i in range(3)]  # BMP: same size for any pixels
    for p in paths:
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(p)
    cache = tmp_path / "cache"
    ds = ImageFiles(paths, input_px(fixed_tiny))
    first = extract_embeddings(fixed_tiny, ds, "cls", 4, cache_dir=cache)
    (cached,) = cache.glob("emb-*.npy")
    assert (cache / "file-sha256.json").is_file()  # the digest memo for the next process
    stamp = cached.stat().st_mtime_ns
    assert np.array_equal(extract_embeddings(fixed_tiny, ImageFiles(paths, input_px(fixed_tiny)), "cls", 4, cache_dir=cache), first)
    assert cached.stat().st_mtime_ns == stamp and len(list(cache.glob("emb-*.npy"))) == 1  # a hit

    other_norm = copy.deepcopy(fixed_tiny)
    other_norm.pretrained_cfg = {**fixed_tiny.pretrained_cfg, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    extract_embeddings(other_norm, ds, "cls", 4, cache_dir=cache)
    assert len(list(cache.glob("emb-*.npy"))) == 2  # normalisation is part of the key

    replacement = tmp_path / "other.bmp"
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(replacement)
    _rewrite_keeping_size_and_mtime(paths[1], replacement.read_bytes())
    again = extract_embeddings(fixed_tiny, ImageFiles(paths, input_px(fixed_tiny)), "cls", 4, cache_dir=cache)
    assert len(list(cache.glob("emb-*.npy"))) == 3 and not np.array_equal(again[1], first[1])
    assert np.array_equal(again[[0, 2]], first[[0, 2]])


def test_slide_digest_is_content_memoised_per_file_version(tmp_path, monkeypatch):
    """A slide replaced at the same path (same size and mtime) changes SlideTiles' fingerprint; an unchanged
    slide is hashed once, and a later process reads its digest from the on-disk memo instead of re-hashing."""
    import hashlib

    from pluto.eval import images

    slide = tmp_path / "a.svs"
    slide.write_bytes(b"A" * 4096)
    manifest = pd.DataFrame({"path": [str(slide)] * 2, "x_l0": [0, 64], "y_l0": [0, 0], "mpp": [1.0, 1.0], "tile_px": [64, 64]})
    calls = []
    monkeypatch.setattr(images, "_DIGESTS", {})
    real = hashlib.file_digest
    monkeypatch.setattr(hashlib, "file_digest", lambda fh, name: calls.append(fh.name) or real(fh, name))
    memo = tmp_path / "memo.json"
    with images.digest_memo(memo):
        before = SlideTiles(manifest, 64).fingerprint
        assert SlideTiles(manifest, 64).fingerprint == before and calls == [str(slide)]  # one hash for both rows and lookups
    monkeypatch.setattr(images, "_DIGESTS", {})  # a new process
    with images.digest_memo(memo):
        assert SlideTiles(manifest, 64).fingerprint == before and len(calls) == 1
    _rewrite_keeping_size_and_mtime(slide, b"B" * 4096)
    assert SlideTiles(manifest, 64).fingerprint != before and len(calls) == 2
    with pytest.raises(PlutoError, match="missing.svs: file not found"):
        _ = SlideTiles(manifest.assign(path=str(tmp_path / "missing.svs")), 64).fingerprint


def test_probe_on_real_crc_beats_chance_and_repeats(crc_cls, crc_labeled):
    """8 classes x 4 real CRC patches, a fixed encoder (pluto_tiny, weights drawn under seed 0), quick probe,
    4-fold stratified CV with pooled out-of-fold predictions, 5 seeds.

    Margin: with 32 pooled predictions, chance balanced accuracy is 1/8 with a standard deviation of
    about sqrt(32 * 1/8 * 7/8) / 32 = 0.058, so 0.35 is ~4 sd above chance; and a label-permutation
    test (the same pipeline on 19 shuffled labelings, all of which must score lower) gives p <= 0.05
    without any distributional assumption.
    """
    y = crc_labeled.label_ids
    scores = [cross_validated_probe(crc_cls, y, QUICK_PROBE, seed) for seed in range(5)]
    assert np.mean(scores) > 0.35
    rng = np.random.default_rng(123)
    null = [cross_validated_probe(crc_cls, rng.permutation(y), QUICK_PROBE, 0) for _ in range(N_PERMUTATIONS)]
    assert scores[0] > max(null)
    assert scores == [cross_validated_probe(crc_cls, y, QUICK_PROBE, seed) for seed in range(5)]  # same seed, same numbers


def test_resolution_set_from_the_bundled_slide(cmu_svs):
    from pluto.eval.derived import RESOLUTION_MPPS, resolution_set

    images, labels, regions = resolution_set(cmu_svs, tile_px=32, max_regions=6)
    assert images.shape == (18, 32, 32, 3) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [6] * len(RESOLUTION_MPPS)
    for r in range(6):  # each region: the same centre read at every resolution, views differ
        views = images[regions == r]
        assert labels[regions == r].tolist() == [0, 1, 2] and not np.array_equal(views[0], views[2])


def test_slide_tiles_match_read_tile(cmu_svs):
    from pluto.slides import read_tile

    manifest = pd.DataFrame({"path": [str(cmu_svs)] * 2, "x_l0": [0, 600], "y_l0": [0, 900], "mpp": [1.0, 2.0], "tile_px": [64, 64]})
    ds = SlideTiles(manifest, input_px=64)
    assert torch.equal(ds[1], torch.from_numpy(read_tile(str(cmu_svs), 600, 900, 2.0, 64)).permute(2, 0, 1))
    assert ds.fingerprint != SlideTiles(manifest.assign(x_l0=[0, 601]), 64).fingerprint


def _two_class_folder(tmp_path, make_images, with_split: bool):
    names = [f"img/{c}_{i}.png" for c in ("red", "blue") for i in range(8)]
    make_images(tmp_path, names, size_px=32, colors={"red": (200, 40, 40), "blue": (40, 40, 200)})
    rows = ["filename,label" + (",split" if with_split else "")]
    rows += [f"{n[4:]},{n[4:].split('_')[0]}" + ((",test" if int(n[-5]) % 2 else ",train") if with_split else "") for n in names]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "img", tmp_path / "labels.csv"


def test_run_suite_from_a_checkpoint_dir_and_report(fixed_tiny, tmp_path, make_images):
    from pluto.eval.eval_config import EvalConfig
    from pluto.eval.suite import SuiteConfig, TaskConfig, evaluate, run_suite
    from pluto.models import save_model

    images, labels = _two_class_folder(tmp_path, make_images, with_split=True)
    ckpt = save_model(fixed_tiny, tmp_path / "ckpt")
    cfg = EvalConfig(n_seeds=2, cache_dir=str(tmp_path / "cache"))
    task = TaskConfig("colour", "folder", str(images), "test", labels_csv=str(labels))
    res = run_suite(ckpt, SuiteConfig((task,), cfg))
    assert {r.embedding_mode for r in res.records} == {"cls", "cls+mean"}
    cls = next(r for r in res.records if r.embedding_mode == "cls")
    assert res.score == pytest.approx(cls.mean) and cls.model_id == model_id(fixed_tiny) and cls.patch_size == 16
    assert cls.seeds == (0, 1) and cls.protocol == "linear_probe/quick" and cls.mean > 0.9  # red vs blue is trivial
    out = evaluate(fixed_tiny, [task], cfg, tmp_path / "out", champion=list(res.records))
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert files == {"results.csv", "results.html", "results.png", "records.json"}
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    assert {"model cls", "champion cls", "baseline mean-RGB", "baseline random-init twin"} <= set(table.columns)
    assert (tmp_path / "out" / "results.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "out" / "records.json").read_text())
    assert saved["baselines"]["mean_rgb"][0]["mean"] > 0.9 and out.score == pytest.approx(cls.mean)
    assert cls.extra["spread_over"] == "bootstrap"  # quick preset on a fixed split: one resample per seed
    # the baselines travel with the suite result into the gate's table, beside candidate and champion
    from pluto.registry.gate import SuiteScores, decide

    scores = SuiteScores.from_suite(out.to_dict())
    assert scores.baselines["mean_rgb"]["colour"] == pytest.approx(saved["baselines"]["mean_rgb"][0]["mean"])
    row = decide(scores, scores, 0.01).table[0]
    assert row["random init"] == f"{out.baselines['random_init'][0].mean:.3f}" and row["mean rgb"] != "–"
    # the twin is the per-run mean over eval.twin_draws random-init draws (init seeds 0, 1, 2), each its own weights
    twin = out.baselines["random_init"][0]
    from pluto.eval.baselines import random_init_twin

    assert twin.extra["init_seeds"] == [0, 1, 2] and len(set(twin.extra["draw_model_ids"])) == 3
    assert twin.model_id == model_id(random_init_twin(fixed_tiny, 0)) == twin.extra["draw_model_ids"][0]
    assert twin.values == pytest.approx(np.mean(twin.extra["draw_values"], axis=0))
    one = evaluate(fixed_tiny, [task], replace(cfg, twin_draws=1), tmp_path / "one").baselines["random_init"][0]
    assert one.values == pytest.approx(twin.extra["draw_values"][0]) and one.extra["init_seeds"] == [0]


def test_cli_evaluate_is_reproducible_and_prints_the_table_with_baselines_and_champion(tmp_path, make_images, monkeypatch):
    """`--model pluto_tiny` twice (fresh embedding caches): identical records, model and baselines; the terminal
    shows the results table (model, random-init, mean-RGB, champion), not only a mean ± std line."""
    from typer.testing import CliRunner

    from pluto.cli import app

    images, labels = _two_class_folder(tmp_path, make_images, with_split=False)
    runs = []
    for i, champion in enumerate([[], ["--champion", str(tmp_path / "out0" / "records.json")]]):
        monkeypatch.setenv("PLUTO_EVAL__CACHE_DIR", str(tmp_path / f"cache{i}"))
        result = CliRunner().invoke(app, ["evaluate", "--model", "pluto_tiny", "--images", str(images), "--labels", str(labels),
                                          "--out", str(tmp_path / f"out{i}"), "--seeds", "2", *champion])
        assert result.exit_code == 0, result.output
        runs.append((result.output, json.loads((tmp_path / f"out{i}" / "records.json").read_text())))
    (_, first), (output, second) = runs
    assert first["model"] == second["model"] and first["baselines"] == second["baselines"]
    assert {"random_init", "mean_rgb"} <= set(first["baselines"]) and second["champion"] == first["model"]
    assert {r["extra"]["spread_over"] for r in first["model"]} == {"folds"}  # no split: each seed re-deals the folds
    assert all(r["extra"]["train_folds"] == r["extra"]["folds"] - 1 for r in first["model"])  # L-BFGS: no validation fold
    header = next(line for line in output.splitlines() if line.startswith("task "))
    assert all(re.search(col, header, re.I) for col in ("model cls", "champion cls", r"random.init", r"mean.rgb"))
    row = next(line for line in output.splitlines() if line.startswith("img "))
    assert row.count(f"{first['model'][0]['mean']:.3f} ± ") >= 2  # the model's cell, and the champion's (same numbers)


def test_missing_images_folder_is_a_clear_error(tmp_path):
    from pluto.eval.labeled import DatasetLayoutError
    from pluto.eval.suite import evaluate_folder
    from pluto.eval.eval_config import EvalConfig

    (tmp_path / "labels.csv").write_text("filename,label\na.png,x\n")
    with pytest.raises(DatasetLayoutError, match="dataset folder not found"):
        evaluate_folder("pluto_tiny", tmp_path / "missing", tmp_path / "labels.csv", tmp_path / "out", EvalConfig())


def test_random_init_twin_redraws_every_parameter_deterministically(fixed_tiny):
    """Two twins of models with different weights are bit-identical (nothing of the source survives, nothing
    unseeded), and differ from a trained (here: perturbed) model in every parameter a draw initialises."""
    import copy

    from pluto.eval.baselines import random_init_twin

    trained = copy.deepcopy(fixed_tiny)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))
    state = torch.random.get_rng_state()
    a, b = random_init_twin(fixed_tiny).state_dict(), random_init_twin(trained).state_dict()
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is untouched
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    drawn = [k for k, v in trained.state_dict().items() if k in dict(trained.named_parameters())]
    assert all(not torch.equal(a[k], trained.state_dict()[k]) for k in drawn)
    assert a["blocks.0.mlp.fc1.weight"].std().item() == pytest.approx(0.02, rel=0.1)  # the model's own init (trunc normal 0.02)


def test_random_init_twin_refuses_a_parameter_no_initialiser_covers(fixed_tiny):
    from pluto.errors import PlutoError
    from pluto.eval.baselines import random_init_twin

    class Extra(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(2, 2)
            self.scale = torch.nn.Parameter(torch.ones(2))

    with pytest.raises(PlutoError, match=r"no initialiser re-draws \['scale'\]"):
        random_init_twin(Extra())


def test_architecture_name_resolves_to_the_same_encoder_every_time(fixed_tiny):
    from pluto.eval.embeddings import resolve_model

    state = torch.random.get_rng_state()
    assert model_id(resolve_model("pluto_tiny")) == model_id(resolve_model("pluto_tiny")) == model_id(fixed_tiny)
    assert torch.equal(state, torch.random.get_rng_state())
