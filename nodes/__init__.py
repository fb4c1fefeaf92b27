"""ComfyUI node adapters. Thin: read inputs, call the library, return.

Each module listed in :data:`NODE_MODULES` exposes ``NODES``, a list of
``io.ComfyNode`` classes. Importing this package does no work beyond defining
classes: no model loading, no device work, no downloads.
"""

from __future__ import annotations

import importlib
import logging

from ._compat import IN_COMFYUI, ComfyExtension, io

NODE_MODULES = ("info", "loaders", "generate", "edit", "comfy_sampling", "lora", "pixel", "rmbg", "tileset")

log = logging.getLogger("spriteforge")


def all_nodes(strict: bool = False) -> list[type]:
    """Every node class of the pack, in a stable order.

    With ``strict`` an import failure raises (tests); otherwise it is logged and the
    other modules' nodes are still offered (one broken backend must not hide the rest).
    """
    nodes: list[type] = []
    for name in NODE_MODULES:
        try:
            mod = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # not written yet / not shipped
            if strict:
                raise
            log.error("[spriteforge] node module %s failed to import: %s", name, exc)
            continue
        except Exception as exc:  # pragma: no cover - logged for users
            if strict:
                raise
            log.error("[spriteforge] node module %s failed to import: %s", name, exc)
            continue
        nodes.extend(getattr(mod, "NODES", []))
    return nodes


def node_map(strict: bool = False) -> dict[str, type]:
    return {cls.define_schema().node_id: cls for cls in all_nodes(strict)}


if IN_COMFYUI:
    from .routes import register_routes

    register_routes()


class SpriteForgeExtension(ComfyExtension):
    async def get_node_list(self):
        return all_nodes()


async def comfy_entrypoint() -> SpriteForgeExtension:
    return SpriteForgeExtension()


__all__ = ["all_nodes", "node_map", "comfy_entrypoint", "SpriteForgeExtension", "io", "IN_COMFYUI"]
