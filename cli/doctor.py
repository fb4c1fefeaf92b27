"""``spriteforge doctor``: what the machine has, which engines work, and the policy's decisions."""

from __future__ import annotations

import json
import platform
import sys
from importlib import metadata

PACKAGES = ("torch", "numpy", "pillow", "safetensors", "diffusers", "transformers", "sentencepiece", "accelerate", "mlx")
INSTALL_HINTS = {
    "torch": "install PyTorch for your GPU (inside ComfyUI it is already there; on a CPU-only machine: pip install torch)",
    "mlx": "optional: pip install 'comfyui-spriteforge[mlx]' (Metal on macOS, mlx[cpu] on Linux)",
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
    from ..engines import engine_class
    from ..engines.policy import decide

    if not status.usable or not status.devices:
        return None
    try:
        dev = status.devices[0]
        return engine_class(status.name)(dev, decide(dev)).capabilities
    except Exception:  # noqa: BLE001 - a broken engine is reported as not running anything
        return None


def report() -> dict:
    from ..version import __version__
    from ..engines import choose_engine, engine_status
    from ..engines.policy import decide

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


def _print(rep: dict) -> None:
    print(f"SpriteForge {rep['spriteforge']} on Python {rep['python']} ({rep['platform']})\n")
    print("Engines:")
    for e in rep["engines"]:
        mark = "ok " if e["usable"] else "-- "
        devs = ", ".join(d["label"] for d in e["devices"]) or "none"
        print(f"  {mark}{e['name']:<6} devices: {devs}" + ("" if e["usable"] else f"   ({e['reason']})"))
        if e["usable"]:
            fams = ", ".join(e.get("families") or ()) or "none yet"
            print(f"         families: {fams}; LoRA: {'yes' if e.get('lora') else 'no'}")
    if rep.get("auto"):
        print(f"  engine 'auto' picks: {rep['auto']}")
    print("\nPolicy per device:")
    for d in rep["devices"]:
        p = d["policy"]
        print(f"  [{d['engine']}] {d['device']['label']}: weights {p['weight_dtype']}, compute {p['compute_dtype']}, "
              f"VAE {p['vae_dtype']}, attention {p['attention']} (VAE: {p['vae_attention']})"
              f"{', attention slicing' if p['attention_slicing'] else ''}{', VAE tiling' if p['vae_tiling'] else ''}")
        for r in p["reasons"]:
            print(f"      because {r}")
        for k, v in p["env"].items():
            print(f"      env {k}={v}")
        for h in p["hints"]:
            print(f"      hint: {h}")
    print("\nInstalled:")
    for k, v in rep["versions"].items():
        print(f"  {k:<14} {v or 'not installed'}")
    if rep["missing"]:
        print("\nTo install:")
        for k, hint in rep["missing"].items():
            print(f"  {k}: {hint}")
    print("\n" + ("OK: at least one engine works." if rep["ok"] else "No engine works: install PyTorch (or MLX on a Mac)."))


def run(args) -> int:
    rep = report()
    if args.json:
        print(json.dumps(rep, indent=2, default=str))
    else:
        _print(rep)
    return 0 if rep["ok"] else 17


def register(sub) -> None:
    p = sub.add_parser("doctor", help="show devices, engines, policy decisions and installed versions")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)
