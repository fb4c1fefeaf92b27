"""Engine information: a node that reports engines/devices/policy.

The report is :func:`spriteforge.diagnostics.capabilities_report` (also behind ``/spriteforge/capabilities``,
registered with the other routes in :mod:`.routes`, and ``spriteforge doctor``); the device probing happens
only when called.
"""

from __future__ import annotations

import json

from ..diagnostics import capabilities_report
from ._compat import io
from .validation import ValidatedNode


class EngineInfo(ValidatedNode):
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

