"""The model families SpriteForge runs, each declared once (:mod:`.registry`, one module a family), framework-free.

``FAMILIES`` is the names of the registered families, in report order (engines, LoRA detection and the CLI share it).
"""

from . import registry
from .base import Family, TextEncoder
from .registry import get

FAMILIES = registry.names()

__all__ = ["FAMILIES", "Family", "TextEncoder", "get", "registry"]
