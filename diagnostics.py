"""What the machine has, which engines work and what the device policy decides: the data behind
``spriteforge doctor``, the Engine Info node and the editor's ``/spriteforge/capabilities`` badge.

:func:`report` probes engines and devices (cheap: no model is loaded); :func:`capabilities_report` adds each
usable engine's declared capabilities and the error codes with their hints.
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata

PACKAGES = ("torch", "numpy", "pillow", "safetensors", "diffusers", "transformers", "sentencepiece", "accelerate", "mlx")
INSTALL_HINTS = {
    "torch": "install PyTorch for your GPU (inside ComfyUI it is already there; on a CPU-only machine: pip install torch)",
    "mlx": "optional: pip install mlx (Metal on macOS; 'mlx[cpu]' on Linux), or pip install -e '.[mlx]' in the pack's folder",
}


def versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def engine_capabilities(status):
    """The declared :class:`~spriteforge.engines.base.Capabilities` of a usable engine (None when it cannot run)."""
    from .engines import engine_class
    from .engines.policy import decide

    if not status.usable or not status.devices:
        return None
    try:
        dev = status.devices[0]
        return engine_class(status.name)(dev, decide(dev)).capabilities
    except Exception:  # noqa: BLE001 - a broken engine is reported as not running anything
        return None


def report() -> dict:
    from .version import __version__
    from .engines import choose_engine, engine_status
    from .engines.policy import decide

    engines = engine_status()
    vers = versions()
    missing = {k: INSTALL_HINTS.get(k, f"pip install {k}") for k, v in vers.items() if v is None}
    devices = []
    for st in engines:
        for dev in st.devices:
            pol = decide(dev)
            devices.append({"engine": st.name, "device": dev.to_dict(), "policy": pol.to_dict()})
    return {
        "spriteforge": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "engines": [_engine_entry(s) for s in engines],
        "auto": _auto(choose_engine, engines),
        "devices": devices,
        "versions": vers,
        "missing": missing,
        "ok": any(s.usable for s in engines),
    }


def _engine_entry(status) -> dict:
    d = status.to_dict()
    caps = engine_capabilities(status)
    d["available"] = bool(status.usable)
    d["families"] = list(caps.families) if caps else []
    d["lora"] = bool(caps.lora) if caps else False
    return d


def _auto(choose, engines):
    try:
        return choose(engines)
    except Exception:  # noqa: BLE001 - no usable engine: reported by "ok"
        return None


def capabilities_report() -> dict:
    """:func:`report` plus, per usable engine, its capabilities, every error code with its hint, and the family
    registry's editor hints (``family_widgets``: :func:`spriteforge.models.families.registry.widget_hints`)."""
    from .engines import engine_class, pick_device
    from .engines.policy import decide
    from .errors import CODES, hint_for
    from .models.families import registry

    rep = report()
    caps = {}
    for e in rep["engines"]:
        if e["usable"] and e["devices"]:
            dev = pick_device(e["name"])
            caps[e["name"]] = engine_class(e["name"])(dev, decide(dev)).capabilities.to_dict()
    rep["capabilities"] = caps
    rep["error_codes"] = {code: hint_for(code) for code in CODES}
    rep["family_widgets"] = registry.widget_hints()  # what the editor greys out or relabels per family
    return rep


__all__ = ["PACKAGES", "INSTALL_HINTS", "versions", "engine_capabilities", "report", "capabilities_report"]
