"""Artifact QC: tissue mask, artifact detectors (plug-in), tile pixel filters, per-slide QC tables,
Great Expectations gates and the cohort report."""

from pluto.qc.detectors import DEFAULT_DETECTOR, Detector, heuristic_detector, load_detector
from pluto.qc.expectations import validate_catalog, validate_manifest, validate_qc
from pluto.qc.filters import HSVRange, blur_variance, hsv_fraction
from pluto.qc.params import QCParams
from pluto.qc.report import write_report
from pluto.qc.run import qc_slide, run_qc
from pluto.qc.slide_qc import SlideQC, load_qc
from pluto.qc.tissue_mask import tissue_mask

__all__ = [
    "DEFAULT_DETECTOR",
    "Detector",
    "HSVRange",
    "QCParams",
    "SlideQC",
    "blur_variance",
    "heuristic_detector",
    "hsv_fraction",
    "load_detector",
    "load_qc",
    "qc_slide",
    "run_qc",
    "tissue_mask",
    "validate_catalog",
    "validate_manifest",
    "validate_qc",
    "write_report",
]
