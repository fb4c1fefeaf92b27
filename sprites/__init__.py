"""Procedural game sprites and their measurements (framework-free: numpy + PIL).

* :mod:`.generator` - 32x32 RGBA sprites of 12 object kinds in 12 colours, 3 sizes, with or without outline,
  with captions ("small blue gem with outline"); deterministic by seed; key colour <-> alpha helpers.
* :mod:`.metrics` - colour families, luminance, blue share, silhouettes (for meaning tests), and shape IoU against
  the generator's own silhouettes for a caption (:func:`.metrics.caption_shape_iou`, the demo model's shape test).

The project's demo model (``demo_model/`` at the repository root) is trained on these sprites by
``training/train_demo_model.py``.
"""

from .generator import (
    COLORS, KEY_COLOR, KINDS, OUTLINE, SIZE, SIZES, SpriteSpec, caption, dataset, key_to_alpha, parse_caption,
    random_spec, render, sample, to_key_rgb, vocabulary,
)
from .metrics import (
    FAMILY_NAMES, WORD_FAMILY, blue_share, chromatic_shares, color_shares, dominant_family, families, iou,
    mean_luminance, silhouette,
)
from .sheet import contact_sheet

__all__ = [
    "COLORS", "KEY_COLOR", "KINDS", "OUTLINE", "SIZE", "SIZES", "SpriteSpec", "caption", "dataset", "key_to_alpha",
    "parse_caption", "random_spec", "render", "sample", "to_key_rgb", "vocabulary",
    "FAMILY_NAMES", "WORD_FAMILY", "blue_share", "chromatic_shares", "color_shares", "dominant_family", "families", "iou",
    "mean_luminance", "silhouette", "contact_sheet",
]
