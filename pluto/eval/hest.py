"""HEST gene-expression regression (Jaume et al. 2024, HEST-Benchmark; PLUTO-4 §4.2, Midnight Table 2).

Protocol: targets log1p(counts) of the benchmark's top-50 genes; features StandardScaler ->
PCA (256 components) -> ridge, all fitted on the training fold only; Pearson r per gene on the
test fold, averaged over genes, then over the patient-level folds. Implemented in torch (SVD +
closed-form ridge) so it runs without scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pluto.eval.metrics import pearson_per_column

HEST_PCA_COMPONENTS = 256


@dataclass(frozen=True)
class RidgeFit:
    mean: torch.Tensor
    scale: torch.Tensor
    components: torch.Tensor  # (D, k)
    coef: torch.Tensor  # (k, G)
    intercept: torch.Tensor  # (G,)

    def predict(self, x) -> np.ndarray:
        z = ((torch.as_tensor(np.asarray(x), dtype=torch.float64) - self.mean) / self.scale) @ self.components
        return (z @ self.coef + self.intercept).numpy()


def fit_pca_ridge(x, y, n_components: int = HEST_PCA_COMPONENTS, alpha: float | None = None) -> RidgeFit:
    """StandardScaler + PCA(n_components) + ridge on (N, D) features and (N, G) targets.

    `alpha` defaults to 100 / (k * G) as in the HEST-Benchmark ridge (k = PCA components kept).
    """
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(y), dtype=torch.float64)
    mean, scale = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-12)
    xs = (x - mean) / scale
    k = min(n_components, xs.shape[0] - 1, xs.shape[1])
    _, _, vh = torch.linalg.svd(xs - xs.mean(0), full_matrices=False)
    comps = vh[:k].T
    z = xs @ comps
    zm, ym = z.mean(0), y.mean(0)
    a = (100.0 / (k * y.shape[1])) if alpha is None else alpha
    zc = z - zm
    coef = torch.linalg.solve(zc.T @ zc + a * torch.eye(k, dtype=z.dtype), zc.T @ (y - ym))
    return RidgeFit(mean, scale, comps, coef, ym - zm @ coef)


def hest_fold_pearson(train_x, train_counts, test_x, test_counts, n_components: int = HEST_PCA_COMPONENTS) -> float:
    """Mean Pearson r over genes for one patient-level fold; counts are raw (log1p is applied here)."""
    fit = fit_pca_ridge(train_x, np.log1p(train_counts), n_components)
    r = pearson_per_column(np.log1p(test_counts), fit.predict(test_x))
    return float(np.nanmean(r))


def patient_folds(patients) -> list[tuple[np.ndarray, np.ndarray]]:
    """Leave-one-patient-out (train_idx, test_idx) pairs, patients in sorted order (HEST's split design)."""
    patients = np.asarray(patients)
    return [(np.flatnonzero(patients != p), np.flatnonzero(patients == p)) for p in np.unique(patients)]
