"""Artifact QC: tissue mask, artifact detectors (plug-in), tile pixel filters, per-slide QC tables,
Great Expectations gates and the cohort report."""

from pluto.qc.detectors import DEFAULT_DETECTOR, Detector, heuristic_detector, load_detector
from pluto.qc.slide_qc import SlideQC, load_qc
from pluto.qc.tissue_mask import tissue_mask

__all__ = [
    "DEFAULT_DETECTOR",
    "Detector",
    "SlideQC",
    "heuristic_detector",
    "load_detector",
    "load_qc",
    "tissue_mask",
]
