"""Artifact QC: tissue mask, artifact detectors (plug-in), tile pixel filters, per-slide QC tables,
Great Expectations gates and the cohort report."""

from pluto.lazy_exports import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    **dict.fromkeys(["DEFAULT_DETECTOR", "Detector", "heuristic_detector", "load_detector"], "detectors"),
    **dict.fromkeys(["validate_catalog", "validate_manifest", "validate_qc"], "expectations"),
    **dict.fromkeys(["HSVRange", "blur_variance", "hsv_fraction"], "filters"),
    **dict.fromkeys(["QCParams"], "params"),
    **dict.fromkeys(["write_report"], "report"),
    **dict.fromkeys(["qc_slide", "run_qc"], "run"),
    **dict.fromkeys(["SlideQC", "load_qc"], "slide_qc"),
    **dict.fromkeys(["tissue_mask"], "tissue"),
})
