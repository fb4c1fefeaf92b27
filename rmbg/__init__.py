"""SpriteForge: background-removal pre/post-processing, pure numpy.

* :mod:`.geometry` - fit to the working resolution keeping the aspect ratio; pad to multiples of 32; unpad.
* :mod:`.refine` - threshold, grow/erode, feather, remove islands, fill holes, connected components.
* :mod:`.foreground` - foreground colour estimation (multi-level ML, blur-fusion) and compositing.
* :mod:`.remove` - the batch job around a ``predict`` callable, chunked, with progress/interrupt; one large
  image at the model's resolution (:func:`cutout`).
"""

from .foreground import blur_fusion, composite, estimate_foreground, estimate_foreground_ml, parse_color
from .geometry import MAX_PIXELS, MIN_SIDE, Geometry, pad, plan, unpad
from .remove import RMBGResult, cutout, predict_alpha, remove_background, to_rgb_batch
from .refine import RefineOptions, feather, fill_holes, grow, label, refine, remove_islands, threshold

__all__ = [
    "Geometry", "plan", "pad", "unpad", "MIN_SIDE", "MAX_PIXELS",
    "RefineOptions", "refine", "threshold", "grow", "feather", "remove_islands", "fill_holes", "label",
    "estimate_foreground", "estimate_foreground_ml", "blur_fusion", "composite", "parse_color",
    "remove_background", "cutout", "predict_alpha", "to_rgb_batch", "RMBGResult",
]
