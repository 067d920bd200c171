"""Evaluation of frozen encoders: embeddings, EVA-protocol tasks, HEST, baselines, reports, suites.

Names resolve lazily (PEP 562) so `pluto.eval.eval_config` (the settings section) imports without torch.
"""

from __future__ import annotations

from pluto.lazy_exports import lazy_exports

_EXPORTS = {
    "EvalRecord": "records", "SuiteResult": "records", "EVAL_SUITE_VERSION": "records", "suite_score": "records",
    "extract_embeddings": "embeddings", "resolve_model": "embeddings", "model_id": "embeddings",
    "ImageFiles": "images", "SlideTiles": "images", "ArrayImages": "images",
    "balanced_accuracy": "metrics", "pearson_per_column": "metrics", "dice_without_background": "metrics",
    "ProbeProtocol": "linear_probe", "EVA_PROBE": "linear_probe", "QUICK_PROBE": "linear_probe",
    "fit_linear_probe": "linear_probe", "cross_validated_probe": "linear_probe", "knn_accuracy": "linear_probe",
    "quick_linear_probe": "linear_probe", "stratified_folds": "linear_probe",
    "build_abmil": "abmil", "fit_abmil": "abmil", "MilProtocol": "abmil", "mil_protocol": "abmil",
    "build_decoder": "segmentation", "fit_segmentation": "segmentation", "seg_protocol": "segmentation",
    "load_hest_task": "hest_data", "read_sample": "hest_data", "EvaImageSet": "benchmarks", "LabeledSlides": "benchmarks",
    "SegmentationSet": "benchmarks", "magnification_bags": "slide_bags",
    "fit_pca_ridge": "hest", "hest_fold_pearson": "hest", "patient_folds": "hest",
    "LabeledImages": "labeled", "read_labels_csv": "labeled", "DatasetLayoutError": "labeled",
    "ADAPTERS": "benchmarks", "resolution_set": "derived", "qc_label_set": "derived", "QCLabelSet": "derived",
    "bundled_qc_label_set": "derived", "mean_rgb_features": "baselines",
    "random_init_twin": "baselines", "write_report": "report", "EvalConfig": "eval_config",
    "TaskConfig": "task_config", "SuiteConfig": "suite", "load_suite_tasks": "suite", "run_suite": "suite", "evaluate": "suite", "load_records": "suite",
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
