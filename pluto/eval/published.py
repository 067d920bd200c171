"""Published numbers, shown beside ours only when the protocol matches (same task, metric, embedding mode, EVA/HEST protocol).

Sources: PLUTO-4 paper Table 3 (CLS and CLS+Mean(Patch-Token), EVA protocol, balanced accuracy %
/ dice / Pearson) and Midnight paper Table 2 (CLS+Mean, eva with early stopping disabled; images
resized to 224). Values are stored as fractions. Keys: (task, embedding_mode) -> {model: value}.

Left out on purpose, because no record of ours is comparable to them:
- PANDA: the papers report eva's PANDA-Small subset (PLUTO-4 §4.2), and our `panda` adapter builds the full split.
- HEST: the papers report the mean over the nine HEST-Bench tasks, and our records are per task.
"""

from __future__ import annotations

PUBLISHED: dict[tuple[str, str], dict[str, float]] = {
    ("mhist", "cls"): {"PLUTO-4S-8": 0.837, "PLUTO-4S-16": 0.835, "PLUTO-4G": 0.875},
    ("breakhis", "cls"): {"PLUTO-4S-8": 0.813, "PLUTO-4S-16": 0.792, "PLUTO-4G": 0.815},
    ("bach", "cls"): {"PLUTO-4S-8": 0.827, "PLUTO-4S-16": 0.796, "PLUTO-4G": 0.938},
    ("gleason_arvaniti", "cls"): {"PLUTO-4S-8": 0.762, "PLUTO-4S-16": 0.763, "PLUTO-4G": 0.793},
    ("pcam", "cls"): {"PLUTO-4S-8": 0.907, "PLUTO-4S-16": 0.909, "PLUTO-4G": 0.951},
    ("crc", "cls"): {"PLUTO-4S-8": 0.952, "PLUTO-4S-16": 0.950, "PLUTO-4G": 0.964},
    ("monusac", "patch_tokens"): {"PLUTO-4S-8": 0.678, "PLUTO-4S-16": 0.640, "PLUTO-4G": 0.704, "Midnight-92k": 0.656},
    ("consep", "patch_tokens"): {"PLUTO-4S-8": 0.649, "PLUTO-4S-16": 0.621, "PLUTO-4G": 0.650, "Midnight-92k": 0.629},
    ("mhist", "cls+mean"): {"PLUTO-4S-8": 0.842, "PLUTO-4S-16": 0.834, "PLUTO-4G": 0.879, "Midnight-92k": 0.831},
    ("breakhis", "cls+mean"): {"PLUTO-4S-8": 0.808, "PLUTO-4S-16": 0.768, "PLUTO-4G": 0.818, "Midnight-92k": 0.793},
    ("bach", "cls+mean"): {"PLUTO-4S-8": 0.851, "PLUTO-4S-16": 0.798, "PLUTO-4G": 0.932, "Midnight-92k": 0.889},
    ("gleason_arvaniti", "cls+mean"): {"PLUTO-4S-8": 0.763, "PLUTO-4S-16": 0.766, "PLUTO-4G": 0.785, "Midnight-92k": 0.823},
    ("pcam", "cls+mean"): {"PLUTO-4S-8": 0.914, "PLUTO-4S-16": 0.916, "PLUTO-4G": 0.952, "Midnight-92k": 0.948},
    ("crc", "cls+mean"): {"PLUTO-4S-8": 0.954, "PLUTO-4S-16": 0.955, "PLUTO-4G": 0.968, "Midnight-92k": 0.967},
    ("bracs", "cls+mean"): {"Midnight-92k": 0.615},
}
PUBLISHED_PROTOCOLS = {"linear_probe/eva", "segmentation/eva"}  # records run under these only


def published_for(task: str, mode: str, protocol: str) -> dict[str, float]:
    """Published values comparable to one of our records, or {} when the protocol differs (e.g. quick preset)."""
    return PUBLISHED.get((task, mode), {}) if protocol in PUBLISHED_PROTOCOLS else {}
