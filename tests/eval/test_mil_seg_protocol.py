"""ABMIL and segmentation follow eva 0.4.5: constants from EVA_TASKS and the vendored configs, eva's loop
(epochs, best checkpoint, early stopping, max_steps), binary BCE, padding, ignore_index, seeded spread."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_datasets import _camelyon16_tree, tissue_slide  # noqa: F401 (tissue_slide: the fixture)
from test_eva_protocol import load_eva_config

from pluto.eval.abmil import MIL_DEFAULT_TASK, build_abmil, fit_abmil, mil_protocol, pad_bags
from pluto.eval.eva_loop import train_epochs
from pluto.eval.eva_protocol import EVA_TASKS
from pluto.eval.labeled import DatasetLayoutError
from pluto.eval.segmentation import build_decoder, dice_loss, fit_segmentation, seg_protocol

MIL_TASKS = sorted(k for k, t in EVA_TASKS.items() if t.head == "abmil")
SEG_TASKS = sorted(k for k, t in EVA_TASKS.items() if t.head == "segmentation")


@pytest.mark.parametrize("name", MIL_TASKS)
def test_mil_protocol_is_the_tasks_eva_config(name):
    eva, p = EVA_TASKS[name], mil_protocol("eva", name)
    assert (p.task, p.max_epochs, p.patience, p.lr, p.weight_decay, p.batch_size, p.n_seeds, p.pad_size, p.binary) == (
        name, eva.max_epochs, eva.patience, eva.lr, eva.weight_decay, eva.batch_size, eva.n_runs, eva.pad_size, eva.out_features == 1)
    quick = mil_protocol("quick", name)  # fewer epochs/runs/tiles, same optimiser, loss and task
    assert (quick.name, quick.task, quick.lr, quick.weight_decay, quick.binary) == ("quick", name, p.lr, p.weight_decay, p.binary)


def test_mil_protocol_defaults_and_refusals():
    assert mil_protocol("eva", "magnification_bags") == mil_protocol("eva", MIL_DEFAULT_TASK)
    assert (mil_protocol("eva", "panda").pad_size, mil_protocol("eva", "panda_small").pad_size) == (1000, 200)
    with pytest.raises(DatasetLayoutError, match="linear task"):
        mil_protocol("eva", "crc")
    with pytest.raises(DatasetLayoutError, match="no ABMIL protocol"):
        mil_protocol("midnight", "panda")


@pytest.mark.parametrize("name", SEG_TASKS)
def test_seg_protocol_is_the_sets_eva_config(name):
    eva, p = EVA_TASKS[name], seg_protocol("eva", name)
    assert (p.max_steps, p.patience, p.lr, p.weight_decay, p.batch_size, p.n_seeds, p.n_classes, p.ignore_index) == (
        eva.max_steps, eva.patience, eva.lr, eva.weight_decay, eva.batch_size, eva.n_runs, eva.out_features, eva.ignore_index)
    cfg = load_eva_config(eva.config)["model"]["init_args"]
    assert type(build_decoder(8, p.n_classes)).__name__ == cfg["decoder"]["class_path"].rsplit(".", 1)[1]  # ConvDecoderMS
    headline = next(m for m in cfg["metrics"]["evaluation"] if m["class_path"].endswith("MulticlassSegmentationMetrics"))
    assert int(headline["init_args"]["num_classes"]) == p.label_classes  # MoNuSAC: 5 outputs, 6 label classes
    assert headline["init_args"].get("ignore_index") == p.ignore_index
    with pytest.raises(DatasetLayoutError, match="eva segmentation set"):
        seg_protocol("eva", "bach")


@pytest.mark.parametrize("name", sorted(set(MIL_TASKS)))
def test_slide_tiling_is_the_configs_sampler(name):
    """Tile resolution/size per set and the tile cap (sampler max_samples = pad_size) as the config's predict datasets."""
    from pluto.eval.slide_bags import EVA_SLIDE_TILES

    cfg = load_eva_config(EVA_TASKS[name].config)
    predict = cfg["data"]["init_args"]["datasets"]["predict"][0]["init_args"]
    assert EVA_SLIDE_TILES[name] == (float(predict["target_mpp"]), int(predict["width"])) and predict["width"] == predict["height"]
    sampler = predict["sampler"]
    assert sampler["class_path"].endswith("ForegroundGridSampler") and "seed" not in sampler["init_args"]  # its default, 42
    assert int(sampler["init_args"]["max_samples"]) == EVA_TASKS[name].pad_size


def _scripted_loop(scores, patience, n_train=4, batch=2, max_epochs=None, max_steps=None):
    """train_epochs on a one-weight model whose validation scores follow `scores`; returns (result, weight at each check)."""
    model = torch.nn.Linear(1, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    seen, it = [], iter(scores)

    def validate():
        seen.append(float(model.weight.detach()))
        return next(it)

    res = train_epochs(model, opt, n_train, batch, lambda idx: model.weight.sum() * -1.0, validate, patience,
                       torch.Generator().manual_seed(0), max_epochs=max_epochs, max_steps=max_steps)
    return res, seen, float(model.weight.detach())


def test_early_stopping_counts_checks_without_a_strictly_higher_score_and_restores_the_best():
    res, seen, final = _scripted_loop([0.5, 0.7, 0.6, 0.7, 0.65, 0.9, 0.9], patience=3, max_epochs=100)
    assert res.val_history == (0.5, 0.7, 0.6, 0.7, 0.65)  # a tie (0.7) is no improvement: stopped 3 checks after epoch 1
    assert (res.best_epoch, res.best_score, res.epochs, res.steps) == (1, 0.7, 5, 10)
    assert final == seen[1] != seen[-1]  # the model holds epoch 1's weights, not the last epoch's


def test_max_steps_ends_mid_epoch_without_validating_the_last_steps():
    res, seen, final = _scripted_loop([0.1, 0.2, 0.3], patience=10, n_train=10, batch=4, max_steps=7)  # 3 steps per epoch
    assert (res.steps, res.epochs, res.val_history, res.best_epoch) == (7, 3, (0.1, 0.2), 1)
    assert final == seen[1]
    res, *_ = _scripted_loop([0.1, 0.2, 0.3], patience=10, n_train=10, batch=4, max_steps=6)  # ends on an epoch's last batch
    assert res.val_history == (0.1, 0.2) and res.steps == 6
    with pytest.raises(ValueError, match="before its first validation"):
        _scripted_loop([0.1], patience=1, n_train=10, batch=4, max_steps=2)


def _bags(n: int, seed: int, dim: int = 12):
    """Bag label 1 when it holds one 'signal' tile (feature 0 high): the MIL assumption."""
    rng = np.random.default_rng(seed)
    bags = [rng.normal(size=(int(rng.integers(5, 20)), dim)).astype(np.float32) for _ in range(n)]
    for b in bags[1::2]:
        b[rng.integers(len(b)), 0] = 6.0
    return bags, np.arange(n) % 2


def test_abmil_scores_the_best_validation_epoch_and_stops_early():
    """Validation labels are flipped, so validation accuracy falls as the head learns the training labels: the run
    must stop `patience` epochs after its best and score the test bags (= validation bags) with that epoch's weights."""
    tb, ty = _bags(40, 0)
    p = dataclasses.replace(mil_protocol("quick", "panda_small"), patience=4, max_epochs=30)
    fit = fit_abmil(tb, ty, tb, 1 - ty, tb, 1 - ty, p, seed=0, n_classes=2)
    best = int(np.argmax(fit.val_history))
    assert fit.best_epoch == best and fit.val_history[-1] < max(fit.val_history)
    assert fit.epochs == best + 1 + p.patience < p.max_epochs
    assert fit.test_balanced_accuracy == pytest.approx(max(fit.val_history))


def test_binary_abmil_is_one_logit_with_bce(monkeypatch):
    import pluto.eval.abmil as abmil

    built = []
    monkeypatch.setattr(abmil, "build_abmil", lambda d, k: built.append(k) or build_abmil(d, k))
    losses = []
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    monkeypatch.setattr(torch.nn.functional, "binary_cross_entropy_with_logits", lambda x, t: losses.append(x.shape) or bce(x, t))
    tb, ty = _bags(40, 1)
    sb, sy = _bags(20, 2)
    fit = fit_abmil(tb, ty, sb, sy, sb, sy, mil_protocol("quick", "camelyon16"), seed=0, n_classes=2)
    assert built == [1] and losses and all(len(s) == 1 for s in losses)  # (batch,) logits against float targets
    assert fit.test_balanced_accuracy > 0.8 and set(fit.test_pred) <= {0, 1}
    with pytest.raises(DatasetLayoutError, match="binary task"):
        fit_abmil(tb, ty % 3, sb, sy, sb, sy, mil_protocol("quick", "camelyon16"), seed=0, n_classes=3)


def test_padding_to_the_batch_is_padding_to_pad_size_and_long_bags_are_refused():
    torch.manual_seed(0)
    net = build_abmil(12, 3).eval()
    bags, _ = _bags(4, 3)
    with torch.no_grad():
        short = net(pad_bags(bags, range(4)))
        full = net(torch.nn.functional.pad(pad_bags(bags, range(4)), (0, 0, 0, 64 - max(map(len, bags))), value=float("-inf")))
    torch.testing.assert_close(short, full)  # eva's -inf rows are masked exactly: the pad length changes nothing
    p = mil_protocol("quick", "panda_small")
    with pytest.raises(DatasetLayoutError, match="pad_size=64"):
        fit_abmil(bags + [np.zeros((65, 12), np.float32)], np.arange(5) % 2, bags, np.arange(4) % 2, bags, np.arange(4) % 2, p, 0, 2)


def test_mil_and_segmentation_runs_differ_by_seed_and_repeat_by_seed():
    tb, ty = _bags(30, 4)
    vb, vy = _bags(12, 5)
    p = dataclasses.replace(mil_protocol("quick", "panda_small"), max_epochs=4)
    a, b, c = (fit_abmil(tb, ty, vb, vy, vb, vy, p, s, 2) for s in (0, 0, 1))
    assert a.val_history == b.val_history and np.array_equal(a.test_pred, b.test_pred)
    assert a.val_history != c.val_history  # init and data order follow the seed: the spread over runs is real
    tt, tm = _token_grids(16, 0)
    q = dataclasses.replace(seg_protocol("quick", "consep"), n_classes=3, max_steps=6)
    d, e, f = (fit_segmentation(tt, tm, tt, tm, tt, tm, q, s) for s in (0, 0, 1))
    assert d == e and d.val_history != f.val_history


def _token_grids(n: int, seed: int, k: int = 3):
    """4x4 token grids whose cells carry their class; masks are the cells at 4x4 px each."""
    g = torch.Generator().manual_seed(seed)
    cells = torch.randint(0, k, (n, 4, 4), generator=g)
    tokens = torch.nn.functional.one_hot(cells, 8).permute(0, 3, 1, 2).float() * 2 + 0.3 * torch.randn(n, 8, 4, 4, generator=g)
    return tokens, cells.repeat_interleave(4, 1).repeat_interleave(4, 2)


def test_monusac_ignore_index_gives_no_gradient_and_no_score():
    p = seg_protocol("quick", "monusac")
    assert (p.n_classes, p.ignore_index, p.label_classes) == (5, 5, 6)
    target = torch.randint(0, 5, (2, 8, 8))
    target[:, :4] = 5  # top half "Ambiguous"
    logits = torch.randn(2, 5, 8, 8, requires_grad=True)
    dice_loss(5)(logits, target).backward()
    assert logits.grad[:, :, :4].abs().max() == 0 and logits.grad[:, :, 4:].abs().max() > 0
    from pluto.eval.metrics import dice_without_background

    pred = target.clone()
    pred[:, :4] = 0  # background where ambiguous: the ignored class never counts
    assert dice_without_background(pred, target, p.label_classes, p.ignore_index) == pytest.approx(1.0)
    tt, tm = _token_grids(24, 1, k=6)  # labels 0..5, 5 ignored; the decoder has 5 outputs
    fit = fit_segmentation(tt[:16], tm[:16], tt[16:], tm[16:], tt[16:], tm[16:], dataclasses.replace(p, max_steps=40), seed=0)
    assert fit.test_dice == pytest.approx(max(fit.val_history)) and fit.test_dice > 0.5


@pytest.mark.parametrize("preset", ["quick", "eva"])
def test_abmil_runner_on_a_camelyon16_small_tree_uses_the_adapters_tiles(tmp_path, tissue_slide, fixed_tiny, preset):  # noqa: F811
    """The runner takes eva's tiles from the adapter, trains the binary head and records what the number is."""
    from pluto.eval.eval_config import EvalConfig
    from pluto.eval.task_config import TaskConfig
    from pluto.eval.task_runners import run_abmil

    _camelyon16_tree(tmp_path / "c16", tissue_slide[0.25], normal=11, tumor=2, test=3)
    task = TaskConfig("c16s", "camelyon16_small", str(tmp_path / "c16"), split="test", protocol="abmil")
    (rec,) = run_abmil(fixed_tiny, task, EvalConfig(preset=preset, modes=("cls",), n_seeds=2, cache_dir=str(tmp_path / "cache")))
    assert rec.protocol == f"abmil/{preset}" and rec.seeds == (0, 1) and all(0 <= v <= 1 for v in rec.values)
    assert (rec.extra["eva_task"], rec.extra["n_bags"]) == ("camelyon16_small", 16)
    assert rec.extra["pad_size"] == mil_protocol(preset, "camelyon16_small").pad_size
    assert rec.extra["incomplete"].startswith("11 of 216 slides")  # a generated tree is never the published benchmark
    from pluto.eval.benchmarks import ADAPTERS
    from pluto.eval.task_runners import _bag_data

    four = dataclasses.replace(mil_protocol(preset, "camelyon16_small"), pad_size=4)
    tiles, bags, *_ = _bag_data(task, 32, four)
    eva_tiles = ADAPTERS["camelyon16_small"](tmp_path / "c16").tiles  # 6 per slide, in the sampler's order
    assert [len(b) for b in bags] == [4] * 16 and tiles.rows.x_l0.tolist()[:4] == eva_tiles[0].x_l0.tolist()[:4]
