"""Engine information: a node that reports engines/devices/policy and the data of the capabilities route.

``/spriteforge/capabilities`` itself is registered with the other routes in :mod:`.routes`;
it serves :func:`capabilities_report`, which does the (cheap) device probing only when called.
"""

from __future__ import annotations

import json

from ._compat import io


def capabilities_report() -> dict:
    """Engines, devices, policy and capabilities: the data behind the editor badge and `doctor`."""
    from ..cli.doctor import report
    from ..engines import engine_class

    rep = report()
    caps = {}
    for e in rep["engines"]:
        if e["usable"] and e["devices"]:
            from ..engines import pick_device
            from ..engines.policy import decide

            dev = pick_device(e["name"])
            caps[e["name"]] = engine_class(e["name"])(dev, decide(dev)).capabilities.to_dict()
    rep["capabilities"] = caps
    from ..errors import CODES, hint_for

    rep["error_codes"] = {code: hint_for(code) for code in CODES}
    return rep


class EngineInfo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpriteForgeEngineInfo",
            display_name="SpriteForge Engine Info",
            category="SpriteForge/utils",
            description="Reports the engines SpriteForge can use on this machine, their devices, capabilities and the "
            "device policy's decisions (dtypes, attention, slicing) with the reason for each.",
            inputs=[
                io.Boolean.Input("as_json", default=False, tooltip="Output the full report as JSON instead of a summary."),
            ],
            outputs=[io.String.Output(display_name="report", tooltip="Devices, usable engines and the device policy's choices.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, as_json=False):
        rep = capabilities_report()
        if as_json:
            text = json.dumps(rep, indent=2, default=str)
        else:
            lines = []
            for e in rep["engines"]:
                if e["usable"]:
                    fams = ", ".join(e.get("families") or ()) or "none yet"
                    lines.append(f"{e['name']}: available; families {fams}; LoRA {'yes' if e.get('lora') else 'no'}")
                else:
                    lines.append(f"{e['name']}: not available ({e['reason']})")
            if rep.get("auto"):
                lines.append(f"engine 'auto' picks {rep['auto']}")
            for d in rep["devices"]:
                p = d["policy"]
                lines.append(f"{d['engine']} on {d['device']['label']}: weights {p['weight_dtype']}, VAE {p['vae_dtype']}, attention {p['attention']}")
            text = "\n".join(lines) or "no usable engine"
        return io.NodeOutput(text, ui={"text": [text]})


NODES = [EngineInfo]

