"""The V3 node API: ComfyUI's own when running inside ComfyUI, a faithful subset otherwise.

Node modules import ``io`` and ``ComfyExtension`` from here and nothing else from
ComfyUI, so the pack imports (and its nodes run) without ComfyUI installed.
"""

from __future__ import annotations

try:  # inside ComfyUI
    from comfy_api.latest import ComfyExtension, io  # type: ignore

    IN_COMFYUI = True
except Exception:  # outside ComfyUI: tests, `spriteforge run`, the command line
    from . import _standalone_io as io  # type: ignore[no-redef]
    from ._standalone_io import ComfyExtension  # type: ignore[no-redef]

    IN_COMFYUI = False

__all__ = ["io", "ComfyExtension", "IN_COMFYUI"]
