"""PLUTO platform: pathology foundation-model training and release, from slides to a registered model.

Subpackages are usable alone and import nothing heavy at import time; see DESIGN.md for the layout.
"""

__version__ = "0.1.0"
