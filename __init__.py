"""SpriteForge: DiT image models on every engine, pixel-art tools and background removal for ComfyUI.

Loaded by ComfyUI from any folder name (relative imports only) and importable as
``spriteforge`` after ``pip install -e .``. Importing has no side effects: no model
loading, no device work, no downloads, no installs.
"""

from __future__ import annotations

from .version import __version__

WEB_DIRECTORY = "./web"

try:
    from .nodes import comfy_entrypoint  # noqa: F401  (ComfyUI's V3 entry point)
except Exception as _exc:  # pragma: no cover - only reached with a broken install
    import logging

    logging.getLogger("spriteforge").error("[spriteforge] nodes unavailable: %s", _exc)

__all__ = ["__version__", "WEB_DIRECTORY", "comfy_entrypoint"]
