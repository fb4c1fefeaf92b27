"""Run with ComfyUI's python inside a ComfyUI folder (tests/test_comfy_sampling_comfyui.py does): our schedules
from each model family's real ComfyUI model_sampling against ComfyUI's own calculate_sigmas, and the
parametrisation read from it. Prints one JSON line."""

import json
import sys

sys.argv = [sys.argv[0], "--cpu"]  # ComfyUI reads its command line at import, when asked to

import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()

import comfy.model_base as mb
import comfy.samplers as cs
import comfy.supported_models as sm
import torch

try:
    import spriteforge  # noqa: F401  (installed in ComfyUI's environment)
except ImportError:  # only linked into custom_nodes: import the checkout as `spriteforge`
    import importlib.util
    from pathlib import Path

    _repo = Path(__file__).resolve().parents[1]
    _spec = importlib.util.spec_from_file_location("spriteforge", _repo / "__init__.py",
                                                   submodule_search_locations=[str(_repo)])
    sys.modules["spriteforge"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["spriteforge"])

from spriteforge import comfy_bridge as B  # noqa: E402
from spriteforge.samplers import get_sigmas  # noqa: E402

cases = {"SD15": (sm.SD15, mb.ModelType.EPS), "SDXL": (sm.SDXL, mb.ModelType.EPS),
         "SDXL_vpred": (sm.SDXL, mb.ModelType.V_PREDICTION), "SD3": (sm.SD3, mb.ModelType.FLOW),
         "Flux": (sm.Flux, mb.ModelType.FLUX)}
out = {}
for name, (cls, mt) in cases.items():
    cfg = cls(dict(cls.unet_config))
    ms = mb.model_sampling(cfg, mt)
    res = {"flow": B.is_flow(ms), "max_err": {}}
    sch = B.model_schedule(ms)
    for s in ("normal", "karras", "exponential", "simple", "sgm_uniform", "beta", "ddim_uniform"):
        theirs = cs.calculate_sigmas(ms, s, 12).double()
        ours = torch.tensor(get_sigmas(s, 12, sch), dtype=torch.float64)
        if theirs.shape != ours.shape:
            res["max_err"][s] = f"shape {tuple(ours.shape)} vs {tuple(theirs.shape)}"
            continue
        res["max_err"][s] = float(((ours - theirs).abs() / theirs.abs().clamp_min(1e-3)).max())
    out[name] = res
print(json.dumps(out))
sys.stdout.flush()
