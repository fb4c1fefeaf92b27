"""``spriteforge doctor``: what the machine has, which engines work, and the policy's decisions."""

from __future__ import annotations

import json

from ..diagnostics import report


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
    p = sub.add_parser("doctor", help="show devices, engines, policy decisions and installed versions",
                       description="What this machine has and what SpriteForge will do on it: the devices, which engines "
                       "work (and why not), the families each runs, the dtype/attention/tiling policy per device with its "
                       "reasons, installed versions and what to install. Exit status 0 when at least one engine works, "
                       "17 (ENGINE_UNAVAILABLE) when none does.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)
