"""SpriteForge sampling for ComfyUI's own MODEL / CONDITIONING / LATENT (core Load Checkpoint, Load
Diffusion Model, CLIP Text Encode, LoraLoader, ...): any model ComfyUI loads, SD1.x and SDXL UNets
included, sampled with SpriteForge's samplers through ComfyUI's model patcher, memory manager and
CFGGuider.

* **SpriteForge KSampler** - MODEL + positive/negative + LATENT in, LATENT out, with the options of
  SpriteForge Sampler (CPU-made seed noise, schedules, denoise, inpaint mask, seamless tile) plus
  CFG-rescale and dynamic thresholding.
* **SpriteForge Sampler Select** - a SAMPLER for core SamplerCustom / SamplerCustomAdvanced.
* **SpriteForge Noise** - a NOISE for SamplerCustomAdvanced: our CPU-seeded noise.
* **SpriteForge VAE Decode (seamless)** - ComfyUI's VAE decoding with wrap-around padding (seamless tiles).

The maths lives in :mod:`spriteforge.comfy_bridge`; these nodes need ComfyUI to run.
"""

from __future__ import annotations

from ..errors import BAD_INPUT, ENGINE_UNAVAILABLE, SpriteForgeError
from ._compat import io
from .validation import ValidatedNode
from .comfy_types import mask_tensor

CATEGORY = "SpriteForge/generate"
MAX_SEED = 0xFFFFFFFFFFFFFFFF

SamplerType = getattr(io, "Sampler", None) or io.Custom("SAMPLER")
NoiseType = getattr(io, "Noise", None) or io.Custom("NOISE")


def _sampler_names() -> list[str]:
    from ..samplers import SAMPLERS

    return list(SAMPLERS)


def _schedule_names() -> list[str]:
    from ..samplers import SCHEDULES

    return list(SCHEDULES)


def _comfy():
    """ComfyUI's sampling modules; a coded error outside ComfyUI."""
    try:
        import comfy.model_management as mm  # type: ignore
        import comfy.sample as csample  # type: ignore
        import comfy.samplers as csamplers  # type: ignore
        import comfy.utils as cutils  # type: ignore
    except Exception as exc:
        raise SpriteForgeError(ENGINE_UNAVAILABLE, "this node samples ComfyUI's own MODEL and needs ComfyUI: run the graph in "
                               "ComfyUI, or use SpriteForge Load Model + SpriteForge Sampler.") from exc
    return mm, csample, csamplers, cutils


_ETA = ("euler_ancestral", "flow_euler_ancestral", "ddim", "dpmpp_2m_sde")


def _sampler_options(sampler: str, eta, s_noise, solver_type) -> dict:
    """The options ``sampler`` takes; ``eta`` < 0 keeps the sampler's default."""
    opts: dict = {}
    if sampler in _ETA:
        if eta is not None and float(eta) >= 0.0:
            opts["eta"] = float(eta)
        opts["s_noise"] = float(s_noise)
    if sampler == "dpmpp_2m_sde":
        opts["solver_type"] = str(solver_type)
    return opts


def _flow_choice(flow: str):
    return {"auto": None, "flow": True, "noise": False}[flow]


def _common_inputs():
    return [
        io.Float.Input("eta", default=-1.0, min=-1.0, max=2.0, step=0.01, optional=True,
                       tooltip="Noise amount of euler_ancestral / ddim / dpmpp_2m_sde; -1 = the sampler's default "
                       "(1 for ancestral and SDE, 0 for ddim)."),
        io.Float.Input("s_noise", default=1.0, min=0.0, max=2.0, step=0.01, optional=True,
                       tooltip="Scale of the fresh noise of ancestral/SDE steps."),
        io.Combo.Input("solver_type", options=["midpoint", "heun"], default="midpoint", optional=True,
                       tooltip="dpmpp_2m_sde's second-order correction."),
        io.Float.Input("dynamic_threshold", default=0.0, min=0.0, max=1.0, step=0.001, optional=True,
                       tooltip="Imagen's dynamic thresholding of the denoised latent: the percentile of |x0| "
                       "(e.g. 0.995) to clamp and rescale by; 0 = off."),
        io.Combo.Input("parametrisation", options=["auto", "flow", "noise"], default="auto", optional=True,
                       tooltip="auto reads the model: rectified flow (SD3, Flux) or noise (SD1.x, SDXL)."),
    ]


def _make_fn(sampler, seed, eta, s_noise, solver_type, dynamic_threshold, parametrisation, batch_index_offset=0):
    from ..comfy_bridge import sampler_function

    return sampler_function(sampler, seed=seed, flow=_flow_choice(parametrisation),
                            dynamic_threshold=float(dynamic_threshold or 0.0), batch_index_offset=int(batch_index_offset),
                            **_sampler_options(sampler, eta, s_noise, solver_type))


def _index_offset(batch_index) -> int:
    """The step-noise offset for a latent's ``batch_index`` (e.g. from Latent From Batch): its first index when the
    indices are consecutive, so item k's step noise is that of seed + batch_index[k]; 0 otherwise."""
    if not batch_index:
        return 0
    idx = [int(i) for i in batch_index]
    return idx[0] if idx == list(range(idx[0], idx[0] + len(idx))) else 0


class SamplerSelect(ValidatedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpriteForgeSamplerSelect",
            display_name="SpriteForge Sampler Select",
            category=CATEGORY,
            description="A SAMPLER for core SamplerCustom / SamplerCustomAdvanced running one of SpriteForge's samplers "
            "(our maths; ancestral and SDE steps draw our CPU-seeded noise from the graph's noise seed, the same "
            "on every device and at every batch size), with optional dynamic thresholding.",
            inputs=[io.Combo.Input("sampler", options=_sampler_names(), default="euler", tooltip="The sampling method."),
                    *_common_inputs()],
            outputs=[SamplerType.Output(display_name="sampler",
                                        tooltip="A SAMPLER for SamplerCustom / SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, sampler="euler", eta=-1.0, s_noise=1.0, solver_type="midpoint", dynamic_threshold=0.0,
                parametrisation="auto"):
        _, _, csamplers, _ = _comfy()
        fn = _make_fn(sampler, None, eta, s_noise, solver_type, dynamic_threshold, parametrisation)
        return io.NodeOutput(csamplers.KSAMPLER(fn))


class _Noise:
    """ComfyUI's NOISE protocol (``seed``, ``generate_noise(latent)``) with our CPU-seeded noise."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def generate_noise(self, input_latent):
        import torch

        from ..comfy_bridge import initial_noise

        lat = input_latent["samples"]
        a = initial_noise(self.seed, tuple(lat.shape), input_latent.get("batch_index"))
        return torch.from_numpy(a).to(dtype=lat.dtype)


class Noise(ValidatedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpriteForgeNoise",
            display_name="SpriteForge Noise",
            category=CATEGORY,
            description="Starting noise for SamplerCustomAdvanced made on the CPU from the seed: batch item i is seed + i "
            "(or the latent's batch_index), so a seed gives the same picture on every device and batch size.",
            inputs=[io.Int.Input("noise_seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                                 tooltip="Noise seed; batch item i uses seed + i.")],
            outputs=[NoiseType.Output(display_name="noise", tooltip="A NOISE for SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, noise_seed=0):
        return io.NodeOutput(_Noise(noise_seed))


class KSampler(ValidatedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpriteForgeKSampler",
            display_name="SpriteForge KSampler",
            category=CATEGORY,
            description="Samples ComfyUI's own MODEL (core Load Checkpoint / Load Diffusion Model / LoraLoader: SD1.x, "
            "SDXL, SD3, Flux, ...) with SpriteForge's samplers and schedules through ComfyUI's model patcher and memory "
            "manager. The starting noise is made on the CPU from the seed (item i = seed + i: the same picture on every "
            "device and batch size); img2img with denoise < 1, inpainting with a mask (or the latent's noise_mask), "
            "seamless tiles, CFG-rescale and dynamic thresholding.",
            inputs=[
                io.Model.Input("model", tooltip="A MODEL from a ComfyUI loader (Load Checkpoint, LoraLoader, ...)."),
                io.Conditioning.Input("positive", tooltip="What to draw (CLIP Text Encode)."),
                io.Conditioning.Input("negative", tooltip="What to avoid (CLIP Text Encode)."),
                io.Latent.Input("latent_image", tooltip="The start latent: Empty Latent Image for txt2img, VAE Encode for "
                                "img2img / inpainting (Set Latent Noise Mask's mask is used)."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="Noise seed; batch item i uses seed + i (noise made on the CPU)."),
                io.Int.Input("steps", default=20, min=1, max=1000, tooltip="Sampling steps."),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale (1 = off)."),
                io.Combo.Input("sampler", options=_sampler_names(), default="euler", tooltip="The sampling method."),
                io.Combo.Input("schedule", options=_schedule_names(), default="normal",
                               tooltip="How the noise levels are spaced (from the model's own sigma table)."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="1 = a new image; below 1 keeps that much of the input latent (img2img)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional inpainting mask, 1 = repaint (overrides the latent's noise_mask)."),
                io.Boolean.Input("tile", default=False, optional=True,
                                 tooltip="Seamless tile: the latent wraps around on both axes (for tilesets); decode it "
                                 "with SpriteForge VAE Decode (seamless)."),
                io.Float.Input("cfg_rescale", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="CFG-rescale phi (Lin et al. 2023) against over-saturation at high cfg; 0 = off."),
                *_common_inputs(),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="The sampled latent, for VAE Decode.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent_image, seed=0, steps=20, cfg=7.0, sampler="euler",
                schedule="normal", denoise=1.0, mask=None, tile=False, cfg_rescale=0.0, eta=-1.0, s_noise=1.0,
                solver_type="midpoint", dynamic_threshold=0.0, parametrisation="auto"):
        import torch

        from .. import comfy_bridge as B
        from ..samplers import get_sigmas

        mm, csample, csamplers, cutils = _comfy()
        if not isinstance(latent_image, dict) or "samples" not in latent_image:
            raise SpriteForgeError(BAD_INPUT, "latent_image is not a LATENT: connect Empty Latent Image or VAE Encode.")
        lat = csample.fix_empty_latent_channels(model, latent_image["samples"])
        noise = torch.from_numpy(B.initial_noise(int(seed), tuple(lat.shape), latent_image.get("batch_index")))
        noise = noise.to(dtype=lat.dtype)
        noise_mask = mask_tensor(mask) if mask is not None else latent_image.get("noise_mask")

        ms = model.get_model_object("model_sampling")
        flow = _flow_choice(parametrisation)
        flow = B.is_flow(ms) if flow is None else flow
        sigmas = torch.tensor(get_sigmas(schedule, int(steps), B.model_schedule(ms), denoise=float(denoise)),
                              dtype=torch.float32)

        m = model.clone()
        if cfg_rescale and float(cfg_rescale) > 0.0 and abs(float(cfg) - 1.0) > 1e-6:  # cfg 1 runs no uncond
            m.set_model_sampler_cfg_function(B.rescale_cfg_function(float(cfg_rescale), flow))
        if tile:
            patch = 2 if flow else 1  # patchified transformers (SD3, Flux) move by whole patches
            m.set_model_unet_function_wrapper(B.SeamlessWrapper(int(seed), patch,
                                                                previous=m.model_options.get("model_function_wrapper")))
        guider = csamplers.CFGGuider(m)
        guider.set_conds(positive, negative)
        guider.set_cfg(float(cfg))
        ks = csamplers.KSAMPLER(_make_fn(sampler, int(seed), eta, s_noise, solver_type, dynamic_threshold,
                                         "flow" if flow else "noise", _index_offset(latent_image.get("batch_index"))))
        callback = _callback(m, max(len(sigmas) - 1, 1))
        samples = guider.sample(noise, lat, ks, sigmas, denoise_mask=noise_mask, callback=callback,
                                disable_pbar=not cutils.PROGRESS_BAR_ENABLED, seed=int(seed))
        samples = samples.to(mm.intermediate_device())
        out = dict(latent_image)
        out.pop("downscale_ratio_spacial", None)
        out["samples"] = samples
        if tile:
            out["sf_tile"] = True
        return io.NodeOutput(out)


def _callback(model, steps):
    """ComfyUI's progress bar + latent preview callback (honours the preview setting and Cancel)."""
    try:
        import latent_preview  # type: ignore

        return latent_preview.prepare_callback(model, steps)
    except Exception:  # pragma: no cover - only without ComfyUI's latent_preview
        from ..progress import Progress

        bar = Progress(steps, desc="SpriteForge KSampler")
        return lambda step, x0, x, total: bar.update(1)


class SeamlessVAEDecode(ValidatedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpriteForgeSeamlessVAEDecode",
            display_name="SpriteForge VAE Decode (seamless)",
            category=CATEGORY,
            description="Decodes a LATENT with ComfyUI's VAE (from Load Checkpoint / Load VAE) with wrap-around padding, "
            "so a seamless latent (SpriteForge KSampler with tile on) becomes an image that tiles without a seam.",
            inputs=[io.Latent.Input("samples", tooltip="The latent to decode (tile it with SpriteForge KSampler's tile)."),
                    io.Vae.Input("vae", tooltip="ComfyUI's VAE (Load Checkpoint's or Load VAE's).")],
            outputs=[io.Image.Output(display_name="image", tooltip="The decoded images [B,H,W,3]; they tile seamlessly.")],
        )

    @classmethod
    def execute(cls, samples, vae):
        from ..comfy_bridge import circular_padding

        _comfy()
        model = getattr(vae, "first_stage_model", None)
        if model is None:
            raise SpriteForgeError(BAD_INPUT, "the vae input is not a ComfyUI VAE: connect Load Checkpoint's or Load VAE's VAE.")
        with circular_padding(model):
            images = vae.decode(samples["samples"])
        if images.ndim == 5:  # video VAEs: frames into the batch
            images = images.reshape(-1, *images.shape[-3:])
        return io.NodeOutput(images)


NODES = [KSampler, SamplerSelect, Noise, SeamlessVAEDecode]
