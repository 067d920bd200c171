"""Parity: the project's eva-preset probe against eva 0.4.5's own `HeadModule` trained by eva's `Trainer`.

eva's side (`bench.bench_probe.eva_head_module_run`, also timed by the benchmark) is built as its
offline classification configs build it: `eva.HeadModule` with an `nn.Linear` head, the config's
criterion (CrossEntropyLoss, or BCEWithLogitsLoss on one logit for a binary task), AdamW lr 3e-4 and
no scheduler argument (so HeadModule's default applies), eva's metric collection, `eva.Trainer` with
the configs' ModelCheckpoint (best, save_top_k 1, mode max) and EarlyStopping (min_delta 0), run
through eva's `run_evaluation` (fit, then validate and test on the best checkpoint). Only max_steps
and patience are shortened, on both sides alike.

Both sides get the same head init (torch's default under `torch.manual_seed(seed)`) and the same
epoch permutations (what `shuffle=True` draws, from one seeded generator here instead of the global
RNG), so each run must agree on its own, not only on average: the best epoch, the monitored validation
score and the test balanced accuracy. A run whose epochs are cut by max_steps and one that stops early
are both covered, and the same runs without eva's warm-up learning rate disagree (the check has teeth).

Embeddings: a seeded Gaussian class mixture (imbalanced classes, overlapping so accuracy is ~0.8),
a few thousand rows: the mechanics under test do not depend on where embeddings come from, and the
bundled images are too few (32 CRC patches) for early stopping to mean anything.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bench.bench_probe import eva_head_module_run
from pluto.eval.linear_probe import fit_linear_probe, probe_protocol_for

pytest.importorskip("eva")
pytest.importorskip("lightning")

N_TRAIN, DIM, CLASSES = 2000, 64, 5  # 8 batches of 256 per epoch, the last one partial (208)
SHORT = dict(steps=1500, patience=3)  # stops early before max_steps (about 70 epochs)


def _mixture(n: int, seed: int, binary: bool):
    means = np.random.default_rng(0).normal(0.0, 0.3, (CLASSES, DIM))
    rng = np.random.default_rng(seed)
    weights = np.linspace(2, 1, CLASSES)
    y = rng.choice(CLASSES, n, p=weights / weights.sum())
    x = (means[y] + rng.normal(size=(n, DIM))).astype(np.float32)
    return x, (y > 1).astype(np.int64) if binary else y


@pytest.mark.parametrize("dataset, binary, short", [
    ("crc", False, SHORT),  # stops early
    ("mhist", True, dict(steps=300, patience=50)),  # max_steps cuts the 38th epoch: its last steps are never validated
])
def test_probe_matches_eva_head_module_run_by_run(dataset, binary, short, tmp_path):
    train, val, test = (_mixture(n, seed, binary) for n, seed in ((N_TRAIN, 1), (600, 2), (600, 3)))
    protocol = replace(probe_protocol_for(dataset, "eva"), **short)
    assert protocol.binary == binary
    ours, theirs, best_epochs = [], [], []
    for seed in range(2):
        fit = fit_linear_probe(*train, *val, *test, protocol, seed, n_classes=2 if binary else CLASSES)
        eva = eva_head_module_run(train, val, test, protocol, 2 if binary else CLASSES, seed, tmp_path)
        assert fit.best_epoch == eva["best_epoch"]
        assert fit.best_val_score == pytest.approx(eva["val"], abs=1e-6)
        assert fit.test_balanced_accuracy == pytest.approx(eva["test"], abs=1e-6)  # eva's macro/balanced test score
        ours.append(fit.test_balanced_accuracy), theirs.append(eva["test"]), best_epochs.append(fit.best_epoch)
        stopped_early = fit.steps < protocol.steps
        assert stopped_early == (short is SHORT)
        assert stopped_early or fit.epochs == -(-protocol.steps // 8) and len(fit.val_history) == fit.epochs - 1
    assert abs(np.mean(ours) - np.mean(theirs)) <= 0.01  # the bound, on the mean over runs
    if short is SHORT:  # without eva's warm-up (HeadModule's default ConstantLR) the same runs pick other epochs
        flat = replace(protocol, lr_factor=1.0)
        assert [fit_linear_probe(*train, *val, *test, flat, s, n_classes=CLASSES).best_epoch for s in range(2)] != best_epochs
