"""The :class:`Detection` record (what a file is) and the shape helpers detection shares.

:mod:`.detect` fills a Detection for any file; each family's ``detect`` (:mod:`.families`) fills one for its
transformer from the tensor shapes, with these helpers.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field


@dataclass
class Detection:
    family: str | None
    variant: str | None
    kind: str
    config: dict = field(default_factory=dict)
    dtype: str = ""
    parameters: int = 0
    needs: list = field(default_factory=list)
    components: dict = field(default_factory=dict)  # component -> prefix (all-in-one files)
    layout: str = ""  # "original" | "diffusers" | "hf" | "ldm" | ...
    path: str = ""
    extras: dict = field(default_factory=dict)  # release info: scheduler, prediction, flow_shift, lora format/rank...
    parts: dict = field(default_factory=dict)  # component -> Detection (all-in-one files)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["parts"] = {k: v.to_dict() for k, v in self.parts.items()}
        return d


def count(keys, pattern: str) -> int:
    """One more than the largest index ``pattern``'s group 1 matches in ``keys`` (0 when none)."""
    rx = re.compile(pattern)
    nums = {int(m.group(1)) for k in keys if (m := rx.match(k))}
    return max(nums) + 1 if nums else 0


def indices(keys, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def heads(hidden: int, preferred: tuple[int, ...]) -> tuple[int, int]:
    """(heads, head_dim) for ``hidden`` trying the family's usual head sizes first."""
    for hd in preferred:
        if hidden % hd == 0:
            return hidden // hd, hd
    return 1, hidden


def res_name(sample: int, vae_factor: int = 8) -> str:
    """A variant's size: the release names (latent side x 8 = 256/512/1024/2k), else the pixel side."""
    if vae_factor == 8 and sample in (32, 64, 128, 256):
        return {32: "256", 64: "512", 128: "1024", 256: "2k"}[sample]
    return str(sample * vae_factor)


__all__ = ["Detection", "count", "indices", "heads", "res_name"]
