"""Extra ``/spriteforge/`` routes for the editor extension (``web/spriteforge.js``).

* ``GET /spriteforge/palettes`` -> ``{name: ["#rrggbb", ...]}``: the shipped palettes (swatches on palette nodes).
* ``GET /spriteforge/model_family?name=NAME`` -> ``{"name", "family", "variant", "error"}``: what a model file in
  the model dropdown is (headers only, cached), so the editor can disable widgets that do not apply.
* ``GET /spriteforge/capabilities[?refresh=1]`` -> the engine report (:func:`capabilities`): per engine whether it
  is available, the families it runs and whether it applies LoRAs, what ``auto`` picks, devices, policy, error codes.

:func:`register_routes` adds them to ComfyUI's server; it does nothing outside ComfyUI and is safe to call
twice. The handlers are plain functions (:func:`palettes`, :func:`model_family`, :func:`capabilities`) tested
without a server.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("spriteforge")
_registered: dict = {}
_family_cache: dict = {}


def palettes() -> dict[str, list[str]]:
    """Every shipped palette as ``#rrggbb`` strings (empty when the pixel library is absent)."""
    try:
        from ..pixel import palette as P
    except Exception as exc:  # noqa: BLE001 - the pack may ship without pixel tools
        log.warning("[spriteforge] palettes unavailable: %s", exc)
        return {}
    out = {}
    for name in P.builtin_names():
        try:
            out[name] = ["#" + h for h in P.builtin(name).hex()]
        except Exception as exc:  # noqa: BLE001 - one broken file must not hide the others
            log.warning("[spriteforge] palette %s unreadable: %s", name, exc)
    return out


def model_family(name: str) -> dict:
    """``{"name", "family", "variant", "error"}`` for a model dropdown value (cached by file and mtime)."""
    from ..resolve import resolve_model

    res = {"name": name, "family": None, "variant": None, "error": None}
    if not name:
        res["error"] = "no model name"
        return res
    try:  # the built-in demo model or a file/folder of a model folder; never a path (the editor sends names)
        path = resolve_model(name, allow_path=False)
    except Exception:  # noqa: BLE001 - reported to the editor
        res["error"] = f"{name} was not found in the model folders"
        return res
    try:
        key = (str(path), os.path.getmtime(path))
    except OSError:
        key = (str(path), 0)
    if key not in _family_cache:
        try:
            from ..models.detect import detect

            det = detect(path)
            _family_cache[key] = {"family": det.family, "variant": det.variant, "error": None}
        except Exception as exc:  # noqa: BLE001 - reported to the editor, which then leaves widgets alone
            _family_cache[key] = {"family": None, "variant": None, "error": str(exc)}
    res.update(_family_cache[key])
    return res


def capabilities() -> dict:
    """The ``/spriteforge/capabilities`` data (the Engine Info node's report): :func:`spriteforge.diagnostics.capabilities_report`."""
    from ..diagnostics import capabilities_report

    return capabilities_report()


def register_routes(server=None) -> bool:
    """Add the routes to ComfyUI's ``PromptServer`` (or ``server``); False when there is none."""
    try:
        from aiohttp import web
    except Exception:
        return False
    if server is None:
        try:
            from server import PromptServer  # type: ignore
        except Exception:
            return False
        server = getattr(PromptServer, "instance", None)
    if server is None or id(server) in _registered:
        return server is not None
    routes = server.routes
    cache: dict = {}

    @routes.get("/spriteforge/palettes")
    async def _palettes(request):  # pragma: no cover - exercised in a real ComfyUI
        if "p" not in cache or request.query.get("refresh"):
            cache["p"] = palettes()
        return web.json_response(cache["p"])

    @routes.get("/spriteforge/model_family")
    async def _model_family(request):  # pragma: no cover - exercised in a real ComfyUI
        import asyncio

        name = request.query.get("name", "")
        data = await asyncio.get_running_loop().run_in_executor(None, model_family, name)
        return web.json_response(data)

    @routes.get("/spriteforge/capabilities")
    async def _capabilities(request):  # pragma: no cover - exercised in a real ComfyUI
        import asyncio
        import json

        if "caps" not in cache or request.query.get("refresh"):
            cache["caps"] = await asyncio.get_running_loop().run_in_executor(None, capabilities)
        return web.json_response(cache["caps"], dumps=lambda o: json.dumps(o, default=str))

    _registered[id(server)] = True
    return True


__all__ = ["register_routes", "palettes", "model_family", "capabilities"]
