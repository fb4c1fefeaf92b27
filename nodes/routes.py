"""Extra ``/spriteforge/`` routes for the editor extension (``web/spriteforge.js``).

* ``GET /spriteforge/palettes`` -> ``{name: ["#rrggbb", ...]}``: the shipped palettes (swatches on palette nodes).
* ``GET /spriteforge/model_family?name=NAME`` -> ``{"name", "family", "variant", "error"}``: what a model file in
  the model dropdown is (headers only, cached), so the editor can disable widgets that do not apply. 200 when
  known; 400 for a name that is not a plain model name (empty, a path, ``.``, ``..``), 404 when no model folder
  has it, 422 when the file is not a model the pack recognises (``error`` says why).
* ``GET /spriteforge/capabilities[?refresh=1]`` -> the engine report (:func:`capabilities`): per engine whether it
  is available, the families it runs and whether it applies LoRAs, what ``auto`` picks, devices, policy, error codes.

No reply carries an absolute path (:func:`public`): the editor may be served to other machines.
:func:`register_routes` adds them to ComfyUI's server; it does nothing outside ComfyUI and is safe to call
twice. The handlers are plain functions (:func:`palettes`, :func:`model_family`, :func:`capabilities`) tested
without a server; the routes only turn their results into responses.
"""

from __future__ import annotations

import logging
import os
import re

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
            out[name] = ["#" + h for h in P.builtin(name).hex()]  # names are slugs, colours hex: no paths
        except Exception as exc:  # noqa: BLE001 - one broken file must not hide the others
            log.warning("[spriteforge] palette %s unreadable: %s", name, exc)
    return out


def model_family(name: str) -> dict:
    """``{"name", "family", "variant", "error", "status"}`` for a model dropdown value (cached by file and mtime);
    ``status`` is the HTTP status the route answers with."""
    from ..errors import SpriteForgeError
    from ..resolve import resolve_model

    res = {"name": name, "family": None, "variant": None, "error": None, "status": 200}
    not_a_name = {**res, "status": 400, "error": "give a model name from the model list, not a path"}
    if not name or any(part in ("", ".", "..") for part in re.split(r"[\\/]", name)) or \
            any(ord(c) < 32 for c in name):
        return not_a_name
    try:  # the built-in demo model or a file/folder of a model folder; never a path (the editor sends names)
        path = resolve_model(name, allow_path=False)
    except SpriteForgeError as exc:
        if exc.code != "MODEL_NOT_FOUND":
            return not_a_name
        return {**res, "status": 404, "error": f"{name} was not found in the model folders"}
    except (OSError, ValueError):  # a name the file system cannot even look up
        return not_a_name
    try:
        key = (str(path), os.path.getmtime(path))
    except OSError:
        key = (str(path), 0)
    if key not in _family_cache:
        try:
            from ..models.detect import detect

            det = detect(path)
            _family_cache[key] = {"family": det.family, "variant": det.variant, "error": None, "status": 200}
        except Exception as exc:  # noqa: BLE001 - reported to the editor, which then leaves widgets alone
            why = str(exc).replace(str(path), name)
            _family_cache[key] = {"family": None, "variant": None, "error": why, "status": 422}
    return public({**res, **_family_cache[key]})


# an absolute path inside a text: POSIX (/a/b) or Windows (C:\a, \\server\share), not part of a URL or a word
_ABS_PATH = re.compile(r"""(?<![\w.:/\\~-])(?:[A-Za-z]:[\\/]|[\\/])[^\s'"<>|,;()\[\]]*""")


def public(data):
    """``data`` (JSON-like) with every absolute path in its strings cut to its last part (``/home/me/x.bin`` ->
    ``x.bin``): what a route may show to whoever opens the editor."""
    if isinstance(data, str):
        return _ABS_PATH.sub(lambda m: re.split(r"[\\/]", m.group(0).rstrip("\\/"))[-1] or "(path)", data)
    if isinstance(data, dict):
        return {k: public(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [public(v) for v in data]
    if data is None or isinstance(data, (bool, int, float)):
        return data
    return public(str(data))


def capabilities() -> dict:
    """The ``/spriteforge/capabilities`` data (the Engine Info node's report): :func:`spriteforge.diagnostics.capabilities_report`."""
    from ..diagnostics import capabilities_report

    return public(capabilities_report())


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
        return web.json_response({k: v for k, v in data.items() if k != "status"}, status=data["status"])

    @routes.get("/spriteforge/capabilities")
    async def _capabilities(request):  # pragma: no cover - exercised in a real ComfyUI
        import asyncio
        import json

        if "caps" not in cache or request.query.get("refresh"):
            cache["caps"] = await asyncio.get_running_loop().run_in_executor(None, capabilities)
        return web.json_response(cache["caps"], dumps=lambda o: json.dumps(o, default=str))

    _registered[id(server)] = True
    return True


__all__ = ["register_routes", "palettes", "model_family", "capabilities", "public"]
