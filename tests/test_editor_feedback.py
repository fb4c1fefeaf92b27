"""What the editor shows besides the outputs (issue 17): sampler previews only when ComfyUI's
``--preview-method`` asks for them, palettes and reports sent to the node as ui output, the demo
model's family for the widget hints, and what-to-do lines that are true where they are shown.

The preview decision reads ComfyUI's setting the way ComfyUI exposes it (``args.preview_method``, a
``LatentPreviewMethod`` enum): ComfyUI's own enum when ComfyUI is importable, else an enum with the
same values, given to the decision function directly.
"""

from __future__ import annotations

import enum
import os
import sys
import types
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from spriteforge import paths
from spriteforge import preview as PV
from spriteforge.errors import BAD_INPUT, HINTS, MODEL_NOT_FOUND, SpriteForgeError

REPO = Path(__file__).resolve().parents[1]

try:  # ComfyUI's own enum where ComfyUI is importable
    from comfy.cli_args import LatentPreviewMethod  # type: ignore
except Exception:
    class LatentPreviewMethod(enum.Enum):  # the values ComfyUI's comfy/cli_args.py defines
        NoPreviews = "none"
        Auto = "auto"
        Latent2RGB = "latent2rgb"
        TAESD = "taesd"


def comfy_args(method, size=512):
    return types.SimpleNamespace(preview_method=method, preview_size=size)


# --------------------------------------------------------------------------- previews
def test_preview_method_follows_comfyui_setting():
    assert PV.preview_method(comfy_args(LatentPreviewMethod.NoPreviews)) == "none"
    assert PV.preview_method(comfy_args(LatentPreviewMethod.Auto)) == "latent2rgb"  # ComfyUI: auto -> latent2rgb
    assert PV.preview_method(comfy_args(LatentPreviewMethod.Latent2RGB)) == "latent2rgb"
    assert PV.preview_method(comfy_args(LatentPreviewMethod.TAESD)) == "taesd"
    assert PV.preview_method(None) == "none"  # no ComfyUI: no previews
    if "comfy" not in sys.modules:
        assert PV.comfy_args() is None and PV.preview_method() == "none"
    assert PV.preview_size(comfy_args(LatentPreviewMethod.Auto, 256)) == 256


def test_release_vaes_use_comfyui_latent_formats():
    from spriteforge.engines.base import ModelHandle

    def h(family, variant, ch, scale, shift=0.0, f=8):
        return ModelHandle(family=family, variant=variant, engine=None, transformer=None, latent_channels=ch,
                           vae_scale_factor=f, scaling_factor=scale, shift_factor=shift)

    assert PV.latent_format_name(h("pixart", "sigma-1024", 4, 0.13025)) == "SDXL"
    assert PV.latent_format_name(h("pixart", "alpha-512", 4, 0.18215)) == "SD15"
    assert PV.latent_format_name(h("dit", "XL/2", 4, 0.18215)) == "SD15"
    assert PV.latent_format_name(h("sd3", "sd3.5-medium", 16, 1.5305, 0.0609)) == "SD3"
    assert PV.latent_format_name(h("flux", "schnell", 16, 0.3611, 0.1159)) == "Flux"
    # the demo model's own VAE (factor 4, its own scaling) and Sana's DC-AE have no ComfyUI format
    assert PV.latent_format_name(h("pixart", "sigma-64", 4, 0.7002, f=4)) is None
    assert PV.latent_format_name(h("sana", "600M", 32, 0.41407, f=32)) is None


@lru_cache(maxsize=1)
def _demo():
    from spriteforge.resolve import DEMO, load_handle

    if not (REPO / "demo_model" / "model_index.json").exists():
        pytest.skip("demo_model/ is not present")
    return load_handle(DEMO, engine="torch", device="cpu", dtype="float32")


class CountingPreviewer(PV.Latent2RGBPreviewer):
    def __init__(self, base):
        super().__init__(base.factors, base.bias, base.max_size, base.engine, base.source)
        self.calls = []

    def __call__(self, x0):
        out = super().__call__(x0)
        self.calls.append(out)
        return out


def test_no_preview_work_when_comfyui_says_none_and_latent2rgb_when_asked():
    from spriteforge.pipeline import GenerateParams, decode, encode, sample

    h = _demo()
    eng = h.engine
    assert PV.make_previewer(eng, h, comfy_args(LatentPreviewMethod.NoPreviews)) is None
    assert PV.make_previewer(eng, h) is None or "comfy" in sys.modules  # outside ComfyUI: none

    base = PV.make_previewer(eng, h, comfy_args(LatentPreviewMethod.Auto, 384))
    assert isinstance(base, PV.Latent2RGBPreviewer) and base.source == "fitted" and base.max_size == 384
    # TAESD asked but there is none for this VAE: latent2rgb, as ComfyUI falls back
    assert isinstance(PV.make_previewer(eng, h, comfy_args(LatentPreviewMethod.TAESD)), PV.Latent2RGBPreviewer)

    cond = encode(eng, h, "red potion")
    counting = CountingPreviewer(base)
    kw = dict(seed=3, steps=4, width=32, height=32, cond=cond, batch_size=2)
    with_prev = sample(eng, h, GenerateParams(preview=counting, **kw))
    assert len(counting.calls) == 4
    fmt, image, size = counting.calls[-1]
    assert fmt == "JPEG" and size == 384 and image.size == (8, 8) and image.mode == "RGB"  # ComfyUI's preview tuple
    without = sample(eng, h, GenerateParams(preview=None, **kw))
    np.testing.assert_array_equal(with_prev.latents, without.latents)  # previews never change the result

    # the fitted map is a fair picture of the decoded sprite (first of the batch, cell means)
    img = decode(eng, h, with_prev.latents)[0]
    cells = img.reshape(8, 4, 8, 4, 3).mean(axis=(1, 3))
    pv = np.clip((base.rgb(with_prev.latents) + 1.0) / 2.0, 0.0, 1.0)
    assert np.corrcoef(cells.ravel(), pv.ravel())[0, 1] > 0.7
    assert np.abs(cells - pv).mean() < 0.25


# --------------------------------------------------------------------------- ui outputs
def test_palette_nodes_send_the_palette_they_made():
    import torch

    from spriteforge.nodes.pixel import PixelPaletteExtract, PixelPaletteLoad, PixelQuantize
    from spriteforge.pixel import palette as P

    out = PixelPaletteLoad.execute(name="pico-8", file="")
    assert out.ui == {"palette": ["#" + c for c in P.builtin("pico-8").hex()]}
    img = torch.zeros(2, 8, 8, 3)
    img[:, :4] = torch.tensor([1.0, 0.0, 0.0])
    img[:, 4:] = torch.tensor([0.0, 0.0, 1.0])
    ex = PixelPaletteExtract.execute(image=img, colors=2, method="kmeans", seed=0)
    assert sorted(ex.ui["palette"]) == ["#0000ff", "#ff0000"]
    assert ex.ui["palette"] == ["#" + c for c in ex[0].hex()]
    # Quantize onto pico-8: the strip shows the colours the output uses, in palette order
    q = PixelQuantize.execute(image=img, palette=P.builtin("pico-8"), dither="none", strength=1.0, protect_edges=True)
    got = q[0].numpy()
    used = {"#%02x%02x%02x" % tuple(int(round(v * 255)) for v in px) for px in got.reshape(-1, 3)}
    pico = ["#" + c for c in P.builtin("pico-8").hex()]
    assert q.ui["palette"] == [c for c in pico if c in used] and len(q.ui["palette"]) == 2
    # transparent pixels do not count
    mask = torch.ones(2, 8, 8)
    mask[:, 4:, :] = 0.0  # the blue half is transparent
    q2 = PixelQuantize.execute(image=img, palette=P.builtin("pico-8"), mask=mask)
    assert len(q2.ui["palette"]) == 1


def test_info_nodes_show_their_report_as_ui_text():
    from spriteforge.nodes.info import EngineInfo

    out = EngineInfo.execute(as_json=False)
    assert out.ui == {"text": [out[0]]} and "torch" in out[0]
    js = EngineInfo.execute(as_json=True)
    assert js.ui["text"][0].lstrip().startswith("{")
    # LoRA Info: the demo model's night LoRA from a models root
    lora = REPO / "demo_model" / "loras" / "night.safetensors"
    if lora.exists():
        from spriteforge.nodes.lora import LoRAInfo

        paths.set_models_root(REPO / "demo_model")
        li = LoRAInfo.execute(lora_name="night.safetensors")
        assert li.ui == {"text": [li[0]]} and "pixart" in li[0].lower()


# --------------------------------------------------------------------------- routes
def test_model_family_route_knows_the_built_in_model():
    from spriteforge.nodes import routes
    from spriteforge.resolve import DEMO, model_choices

    if not (REPO / "demo_model" / "model_index.json").exists():
        pytest.skip("demo_model/ is not present")
    assert model_choices()[0] == DEMO
    res = routes.model_family(DEMO)
    assert res["error"] is None and res["family"] == "pixart" and res["variant"].startswith("sigma")


# --------------------------------------------------------------------------- what-to-do lines
def test_model_not_found_hint_on_the_command_line(tmp_path):
    from spriteforge.resolve import resolve_model

    assert not paths.in_comfyui() or "folder_paths" in sys.modules
    paths.set_models_root(tmp_path)
    with pytest.raises(SpriteForgeError) as ei:
        resolve_model("missing.safetensors", allow_path=True)
    e = ei.value
    assert e.code == MODEL_NOT_FOUND and "full path" in e.hint and "--models DIR" in e.hint
    assert "extra_model_paths" not in str(e)
    # where a path is not accepted, the hint does not offer one
    with pytest.raises(SpriteForgeError) as ei:
        paths.resolve("vae", "missing.safetensors")
    assert "full path" not in str(ei.value) and "--models DIR" in ei.value.hint
    assert "full path" not in HINTS[MODEL_NOT_FOUND]  # the code's generic line is true everywhere


def test_model_not_found_hint_inside_comfyui(tmp_path, monkeypatch):
    """Inside ComfyUI (its folder_paths module; a stand-in module only where ComfyUI is absent) names come from
    the list and paths are refused: the hint names ComfyUI's way to add a folder, never a path or --models."""
    from spriteforge.resolve import resolve_model

    if "folder_paths" not in sys.modules:
        fp = types.ModuleType("folder_paths")
        fp.models_dir = str(tmp_path)
        fp.folder_names_and_paths = {k: ([str(tmp_path / k)], set()) for k in paths.KINDS}
        fp.get_folder_paths = lambda kind: list(fp.folder_names_and_paths[kind][0])
        monkeypatch.setitem(sys.modules, "folder_paths", fp)
    assert paths.in_comfyui()
    with pytest.raises(SpriteForgeError) as ei:
        resolve_model("missing.safetensors", allow_path=False)
    e = ei.value
    assert e.code == MODEL_NOT_FOUND
    assert "extra_model_paths.yaml" in e.hint and "press R" in e.hint
    assert "full path" not in str(e) and "--models" not in str(e)
    with pytest.raises(SpriteForgeError) as ei:  # and a full path is indeed refused there
        resolve_model(str(tmp_path / "x.safetensors"), allow_path=False)
    assert ei.value.code == BAD_INPUT
    assert paths.not_found_hint(full_path=True, comfy=False) != paths.not_found_hint(full_path=True, comfy=True)


def test_generic_hints_name_the_command_line_only_on_the_command_line(monkeypatch):
    from spriteforge import errors as E

    for code in E.CODES:
        assert "spriteforge " not in E.hint_for(code, editor=True), code  # no `spriteforge ...` command in the editor
        assert "--" not in E.hint_for(code, editor=True), code
    assert "spriteforge doctor" in E.hint_for(E.ENGINE_UNAVAILABLE, editor=False)
    if "folder_paths" not in sys.modules:  # the CLI: errors carry the command-line line
        assert "spriteforge doctor" in SpriteForgeError(E.ENGINE_INTERNAL, "boom.").hint
        monkeypatch.setitem(sys.modules, "folder_paths", types.ModuleType("folder_paths"))
    err = SpriteForgeError(E.ENGINE_INTERNAL, "boom.")  # inside ComfyUI
    assert "Engine Info node" in err.hint and "spriteforge doctor" not in str(err)
    from spriteforge.nodes.info import capabilities_report

    codes = capabilities_report()["error_codes"]  # what the editor extension shows with an error
    assert codes[E.ENGINE_UNAVAILABLE] == E.EDITOR_HINTS[E.ENGINE_UNAVAILABLE]
