"""Configs of the released models, shipped with the pack (nothing is looked up online).

Each ``<name>.json`` holds either a DiT release (``family``, ``variant``, ``transformer``
(the diffusers config), ``vae``, ``text_encoders``, ``scheduler``, ``prediction``,
``flow_shift``, ...) or a component (``kind`` ``vae``/``text_encoder`` with ``config``).
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).resolve().parent


@lru_cache(maxsize=None)
def _load(name: str) -> dict:
    return json.loads((HERE / f"{name}.json").read_text(encoding="utf-8"))


def load(name: str) -> dict:
    """A deep copy of shipped config ``name`` (file name without ``.json``)."""
    return copy.deepcopy(_load(name))


def names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.json"))
