"""Qwen-Image (Alibaba Qwen): 20B MMDiT, Qwen2.5-VL-7B prompts, the Qwen-Image (Wan-2.1 layout) VAE.

ComfyUI's ``qwen_image_bf16.safetensors`` uses the diffusers names (no prefix), so there is no key map. Prompts are
``QwenImagePipeline``'s: the prompt in its chat template, the language model's last hidden state, the template's
first 34 tokens dropped. The model call packs the latent 2x2 (as Flux) and gives the image grid (``img_shapes``)
for the rotary positions; the timestep is sigma.
"""

from __future__ import annotations

from ...errors import BAD_INPUT, UNSUPPORTED_ARCHITECTURE, SpriteForgeError
from ..detection import count
from .base import Family, TextEncoder

# diffusers pipelines/qwenimage/pipeline_qwenimage.py: prompt_template_encode, prompt_template_encode_start_idx
TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
            "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n")
TEMPLATE_DROP = 34
MAX_TOKENS = 1024  # tokenizer_max_length: prompt tokens kept after the template's

# Qwen-Image-Edit (pipeline_qwenimage_edit_plus.py, QwenImageEditPlusPipeline: 2509, 2511): the edit template, each
# reference image announced in the user turn before the instruction, the template's first 64 tokens dropped
EDIT_TEMPLATE = ("<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
                 "background), then explain how the user's text instruction should alter or modify the image. Generate a new "
                 "image that meets the user's requirements while maintaining consistency with the original input where "
                 "appropriate.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n")
EDIT_DROP = 64
PICTURE = "Picture {}: <|vision_start|><|image_pad|><|vision_end|>"
# QwenImageEditPipeline (the first Qwen-Image-Edit, one image): no "Picture n:", the image before the instruction
EDIT_V1_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
CONDITION_AREA = 384 * 384  # CONDITION_IMAGE_SIZE: the area the vision tower sees each reference at (Plus)
REFERENCE_AREA = 1024 * 1024  # VAE_IMAGE_SIZE: the area each reference is VAE-encoded at (both pipelines)
MAX_REFERENCES = 3  # the releases are trained on one to three (QwenImageEditPlusPipeline's documentation)


def calculate_dimensions(area: int, ratio: float) -> tuple[int, int]:
    """The pipelines' ``calculate_dimensions``: ``(w, h)`` of about ``area`` pixels at aspect ``ratio`` (w / h), each a
    multiple of 32."""
    w = (area * ratio) ** 0.5
    h = w / ratio
    return int(round(w / 32) * 32), int(round(h / 32) * 32)


def condition_image(image, area: int):
    """A reference as the pipelines hand it to the processor: uint8 RGB, resized (Lanczos, ``VaeImageProcessor.resize``)
    to ``calculate_dimensions(area, w / h)``."""
    import numpy as np
    from PIL import Image

    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float32), 0.0, 1.0) * 255).round().astype(np.uint8)
    w, h = calculate_dimensions(area, a.shape[1] / a.shape[0])
    if (h, w) == a.shape[:2]:
        return a[..., :3]
    return np.asarray(Image.fromarray(a[..., :3]).resize((w, h), resample=Image.LANCZOS))


class QwenImage(Family):
    name = "qwenimage"
    label = "Qwen-Image"
    # Qwen-Image and Qwen-Image-2512 ship the same key set and shapes (the manifest matches both); the Edit
    # releases build the same class (2511 adds only a config flag, zero_cond_t): no shape tells them apart. A
    # diffusers folder says which (its pipeline class; 2511's transformer config: zero_cond_t), as does a config.json
    # beside a single file (Qwen-Image-Edit-2511's transformer/config.json: ``<file>.json``)
    variant_titles = {"20B": "20B (Qwen-Image, 2512 or an Edit release: same layout)",
                      "edit": "Qwen-Image-Edit (one reference)", "edit-2509": "Qwen-Image-Edit-2509",
                      "edit-2511": "Qwen-Image-Edit-2511 (references modulated at timestep 0: zero_cond_t)"}
    diffusers_markers = (("img_in.weight", "txt_norm.weight", "transformer_blocks.0.img_mod.1.weight"),)
    reference_manifests = {"qwen-image.transformer.diffusers": "20B"}
    detect_order = 6  # before Flux.1: its original markers (img_in, txt_in) match Qwen-Image files too
    transformer_class = "QwenImageTransformer2DModel"
    transformer_module = "diffusers.models.transformers.transformer_qwenimage"
    text_encoders = (TextEncoder("qwen25_7b", "text_encoder"),)
    latent_channels = 16
    vae_class = "AutoencoderKLQwenImage"
    vae_by_latent = {16: "vae-qwen-image"}
    prediction = "flow"
    flow_multiplier = 1.0  # the pipeline passes timestep / 1000 = sigma; the model multiplies by 1000 inside
    resolution_shift = True  # QwenImagePipeline: mu = calculate_shift(image_seq_len, ...) from the scheduler config
    patch_size = 2
    # diffusers pipelines/qwenimage/pipeline_qwenimage.py __call__: num_inference_steps=50, true_cfg_scale=4.0
    defaults = {"cfg": 4.0, "steps": 50, "sampler": "euler", "schedule": "normal"}
    mlx_port = "qwenimage"
    # (the Qwen-Image transformer's own block names: img_mod / txt_mod modulation, img_mlp / txt_mlp feed-forwards)
    lora_names = (r"(^|_)transformer_blocks_\d+_(img_mod|txt_mod|img_mlp|txt_mlp)(_|$)", "img_mod/txt_mlp block names")
    lora_shared = ("joint",)  # an attention-only LoRA (to_q, add_k_proj, to_add_out) has Flux's and SD3's names
    lora_rank = 30  # after Flux and SD3
    lora_max_blocks = 60
    lora_widths = (3072,)
    lora_metadata = ("qwen-image", "qwen_image", "qwenimage")
    widget_labels = {"text_encoder_1": "Qwen2.5-VL-7B text encoder (qwen_2.5_vl_7b.safetensors)"}
    # editing (Qwen-Image-Edit 2509/2511: any Qwen-Image file takes references, as in ComfyUI; the Edit releases are
    # the ones trained for them): up to three, each VAE-encoded at about 1024x1024 (reference_scaled) and seen by the
    # text encoder's vision tower; the edit pipelines' defaults are the txt2img ones (50 steps, true CFG 4)
    max_references = MAX_REFERENCES
    encode_sees_references = True  # the vision tower reads them: a prompt encoded without them is encoded again
    edit_title = "Qwen-Image-Edit 2509/2511 (qwen_image_edit_2509_bf16.safetensors, qwen_image_edit_2511_bf16.safetensors)"

    def detect(self, t, original):
        width, in_ch = t["img_in.weight"].shape
        head_dim = t["transformer_blocks.0.attn.norm_q.weight"].shape[0]
        rel = self.release("qwen-image")
        cfg = rel["transformer"]
        cfg.update({
            "patch_size": 2, "in_channels": in_ch, "out_channels": t["proj_out.weight"].shape[0] // 4,
            "num_layers": count(t.keys(), r"transformer_blocks\.(\d+)\."),
            "attention_head_dim": head_dim, "num_attention_heads": width // head_dim,
            "joint_attention_dim": t["txt_in.weight"].shape[1],
            "use_additional_t_cond": "time_text_embed.addition_t_embedding.weight" in t,
        })
        if head_dim != 128:  # a smaller model (the tests'): the rope axes in the release's proportions
            a = 2 * (head_dim // 16)
            b = 2 * ((head_dim - a) // 4)
            cfg["axes_dims_rope"] = [head_dim - 2 * b, b, b]
        return self.finish(self.detection("20B", cfg, False), rel)

    def variant_from_folder(self, cfg, pipeline_class, detected, vae_factor=8):
        if pipeline_class == "QwenImageEditPlusPipeline":
            return "edit-2511" if cfg.get("zero_cond_t") else "edit-2509"
        if pipeline_class == "QwenImageEditPipeline":
            return "edit"
        return detected

    def variant_from_config(self, det, cfg, vae_factor=8):
        if cfg.get("zero_cond_t"):  # only Qwen-Image-Edit-2511's transformer config sets it
            det.variant = "edit-2511"

    def references_of(self, variant, in_channels=0):
        return 1 if variant == "edit" else self.max_references

    def reference_scaled(self, width, height, *, auto=True):
        """The edit pipelines' VAE size: ``calculate_dimensions(1024 * 1024, w / h)`` (about a megapixel, multiples of
        32), whatever the reference's own size; ``auto=False``: as given."""
        w, h = super().reference_scaled(width, height, auto=False)
        return calculate_dimensions(REFERENCE_AREA, w / h) if auto else (w, h)

    def mu_args(self, sched: dict) -> dict:
        return _mu_args(sched)

    def guide(self, ops, uncond, cond, scale):
        """QwenImagePipeline's true CFG: the guided prediction rescaled, token by token (a 2x2 patch of latent
        channels), to the norm of the conditional one."""
        comb = uncond + (cond - uncond) * scale
        b, c, h, w = cond.shape
        tokens = (b, c, h // 2, 2, w // 2, 2)

        def norm(x):
            return ops.sqrt(ops.sum_keep(ops.reshape(x * x, tokens), (1, 3, 5)))

        return ops.reshape(ops.reshape(comb, tokens) * (norm(cond) / norm(comb)), (b, c, h, w))

    # ------------------------------------------------------------------ prompts and the model call
    def encode(self, te, prompts, cond, *, max_length=None, images=None, **_):
        """The last hidden state of the prompts in the pipeline's template, the template's first tokens dropped
        (padding zeroed and masked, as the pipeline's). With reference ``images`` (editing), the edit pipelines'
        template with the images in the user turn, seen by the vision tower (``te.vision_decoder``)."""
        if images:
            return self._encode_edit(te, prompts, cond, images)
        (h,), keep = te.decoder("qwen25_7b", [TEMPLATE.format(p) for p in prompts],
                                max_length=(max_length or MAX_TOKENS) + TEMPLATE_DROP)
        keep = keep[:, TEMPLATE_DROP:]
        cond.embeds, cond.mask = h[:, TEMPLATE_DROP:] * te.like(keep[..., None], h), keep

    def _encode_edit(self, te, prompts, cond, images):
        """QwenImageEditPlusPipeline's ``encode_prompt`` (2509, 2511): "Picture n: <image>" for each reference before the
        instruction, each image at about 384x384 for the vision tower; the first Qwen-Image-Edit (a folder of
        QwenImageEditPipeline: variant ``edit``) puts its one image before the instruction, at about 1024x1024."""
        if len(images) > MAX_REFERENCES:
            raise SpriteForgeError(BAD_INPUT, f"{len(images)} reference images were given: Qwen-Image-Edit takes one to "
                                   f"{MAX_REFERENCES}. Give fewer.", details={"references": len(images)})
        if te.handle.variant == "edit":
            if len(images) != 1:
                raise SpriteForgeError(BAD_INPUT, "the first Qwen-Image-Edit takes one reference image. Give one, or use "
                                       "Qwen-Image-Edit-2509/2511 for up to three.", details={"references": len(images)})
            texts = [EDIT_TEMPLATE.format(EDIT_V1_IMAGE + p) for p in prompts]
            shown = [condition_image(images[0], REFERENCE_AREA)]
        else:
            pictures = "".join(PICTURE.format(i + 1) for i in range(len(images)))
            texts = [EDIT_TEMPLATE.format(pictures + p) for p in prompts]
            shown = [condition_image(im, CONDITION_AREA) for im in images]
        (h,), keep = te.vision_decoder("qwen25_7b", texts, shown)
        keep = keep[:, EDIT_DROP:]
        cond.embeds, cond.mask = h[:, EDIT_DROP:] * te.like(keep[..., None], h), keep

    def forward(self, den, x, t, cond):
        """On 2x2-packed latent tokens; ``img_shapes`` (one frame, the token grid) place the rotary positions. Editing:
        each reference's packed latents follow the image's tokens, its grid listed after the image's in
        ``img_shapes`` (QwenImageEditPlusPipeline), and only the image's tokens' output is kept."""
        if den.config.get("use_additional_t_cond"):  # (an embedding only Qwen-Image-Layered's transformer has)
            raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, "this Qwen-Image transformer is a Layered release (it embeds a "
                                   "layer condition): SpriteForge draws with Qwen-Image, 2512 and the Edit releases. Load one of those.")
        b, _, h, w = x.shape
        tokens = den.pack(x)
        n = tokens.shape[1]
        shapes = [(1, h // 2, w // 2)]
        refs = den.references(cond)
        if refs:
            tokens = den.ops.concat([tokens, *(den.pack(r) for r in refs)], 1)
            shapes += [(1, r.shape[2] // 2, r.shape[3] // 2) for r in refs]
        out = den.run(hidden_states=tokens, encoder_hidden_states=cond["embeds"], encoder_hidden_states_mask=cond.get("mask"),
                      timestep=t, img_shapes=[shapes] * b)
        return den.unpack(out[:, :n] if refs else out, h, w)


def _mu_args(sched: dict) -> dict:
    """The resolution shift's line (``calculate_shift``'s arguments) from a scheduler config."""
    keys = {"base_image_seq_len": "base_seq_len", "max_image_seq_len": "max_seq_len", "base_shift": "base_shift", "max_shift": "max_shift"}
    return {ours: float(sched[k]) if "shift" in k else int(sched[k]) for k, ours in keys.items() if sched.get(k) is not None}
