"""Qwen-Image 2.1 (Alibaba Qwen): its own family, not a Qwen-Image variant.

diffusers gives it its own classes (``QwenImage21Transformer2DModel``, ``QwenImage21Pipeline``,
``AutoencoderKLQwenImage21``) and they share no layout with Qwen-Image / 2512 (``QwenImageTransformer2DModel``): one
single stream (no ``img_mod`` / ``txt_mod`` / ``txt_mlp``), one shared ``modulation`` for every block, bias-free SwiGLU
blocks, a zero-centred RMS text norm (``txt_in.text_norm``), block-causal attention over the joint text/image
sequence with the image tokens placed in the vision-language encoder's image slots, 64-channel unpatched latents
(patch 1) from a 16x RGBA VAE, and Qwen3-VL (4096 wide: 8B) prompts read before the final norm. The Turbo checkpoint
(``QwenImage21TurboModularPipeline``: few steps, no guidance) builds the same class: no shape tells them apart.

Layouts: diffusers' names, and ComfyUI's single file (diffusers' ``convert_qwen_image21_transformer_checkpoint_to_diffusers``
is its inverse): the same names under ``model.diffusion_model.`` with each block's SwiGLU gate and up projections fused
into ``img_mlp.gate_up.weight`` (gate rows first).

Prompts are ``QwenImage21Pipeline``'s for text to image: the prompt in its chat template, the language model's last
layer before the final norm (the pipeline hooks the norm away), the system turn's tokens dropped. The model call gives
unpatched latent tokens after the text, one image slot (2x2 latent tokens) per four of them (``img_mask``), and keeps
the image tokens' output; the timestep is sigma. No KV cache (the pipeline's ``use_kv_cache`` is an equal-result
speed-up: the prefix is recomputed each step).
"""

from __future__ import annotations

from ..detection import count
from .base import Family, TextEncoder
from .qwenimage import _mu_args

_BLOCKS = r"transformer_blocks\.(\d+)\."
# pipelines/qwenimage21/pipeline_qwenimage21.py: sys_prompt, prompt_template_t2i; _drop_idx = the system turn's tokens
SYSTEM = "<|im_start|>system\nComprehend and analyze the provided prompt.<|im_end|>\n"
TEMPLATE = SYSTEM + "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
SLOT = 4  # latent tokens an image slot of the vision-language sequence stands for (2x2)


class QwenImage21(Family):
    name = "qwenimage21"
    label = "Qwen-Image 2.1"
    variant_titles = {"base-or-turbo": "(base or Turbo: same layout)", "base": "", "turbo": "Turbo"}
    # the tensors only 2.1 has: the zero-centred text norm, and each block's SwiGLU (fused by ComfyUI, split by diffusers)
    original_markers = (("txt_in.text_norm.weight", "modulation.1.weight", "transformer_blocks.0.img_mlp.gate_up.weight"),)
    diffusers_markers = (("txt_in.text_norm.weight", "modulation.1.weight", "transformer_blocks.0.img_mlp.gate_layer.weight"),)
    detect_order = 5  # before Qwen-Image (6) and Flux.1, whose markers name img_in / txt_in too
    transformer_class = "QwenImage21Transformer2DModel"
    transformer_module = "diffusers.models.transformers.transformer_qwenimage21"
    original_converter = "convert_qwen_image21_transformer_checkpoint_to_diffusers"
    text_encoders = (TextEncoder("qwen3_vl_8b", "text_encoder"),)
    latent_channels = 64
    vae_scale_factor = 16
    vae_class = "AutoencoderKLQwenImage21"
    prediction = "flow"
    flow_multiplier = 1.0  # the pipeline passes timestep / 1000 = sigma; the model multiplies by 1000 inside
    resolution_shift = True  # QwenImage21Pipeline: calculate_shift(image_seq_len, 256, 4096, 0.5, 1.15) unless configured
    patch_size = 1
    size_multiple = 32  # QwenImage21Pipeline: multiple_of = vae_scale_factor * 2 (a slot holds 2x2 latent tokens)
    # QwenImage21Pipeline.__call__: 40 steps, true_cfg_scale 1.0 ("meant to be sampled without guidance")
    defaults = {"cfg": 1.0, "steps": 40, "sampler": "euler", "schedule": "simple"}
    mlx_port = "qwenimage21"
    # LoRA: the names only 2.1 has (its SwiGLU's gate_layer / proj / out, ComfyUI's fused gate_up, the text projection's
    # in_layer / out_layer); a LoRA on its attention alone (to_q...) has the joint-attention families' names
    lora_names = (r"(^|_)transformer_blocks_\d+_img_mlp_(gate_layer|gate_up|proj|out)(_|$)|(^|_)txt_in_(in|out)_layer(_|$)",
                  "img_mlp gate_layer/proj/out, txt_in in/out_layer names")
    lora_rank = 35
    lora_max_blocks = 32
    lora_widths = (4096,)
    lora_metadata = ("qwen-image-2.1", "qwen_image_2.1", "qwenimage21")

    def detect(self, t, original):
        width, in_ch = t["img_in.weight"].shape
        head_dim = t["transformer_blocks.0.attn.norm_q.weight"].shape[0]
        mlp = (t["transformer_blocks.0.img_mlp.gate_up.weight"].shape[0] // 2 if original
               else t["transformer_blocks.0.img_mlp.gate_layer.weight"].shape[0])
        rel = self.release("qwen-image-2.1")
        cfg = rel["transformer"]
        patch = int(cfg["patch_size"])  # 1: the release samples the VAE's latents unpatched (no shape tells the patch)
        cfg.update({
            "in_channels": in_ch // (patch * patch), "out_channels": t["proj_out.weight"].shape[0] // (patch * patch),
            "num_layers": count(t.keys(), _BLOCKS), "attention_head_dim": head_dim, "num_attention_heads": width // head_dim,
            "context_in_dim": t["txt_in.in_layer.weight"].shape[1], "mlp_ratio": mlp // width,
        })
        if head_dim != 128:  # a smaller model (the tests'): the rope axes in the release's proportions (16/56/56)
            a = 2 * max(1, head_dim // 16)
            b = (head_dim - a) // 2
            cfg["axes_dims_rope"] = [head_dim - 2 * b, b, b]
        det = self.detection("base-or-turbo", cfg, original)
        det.extras["ambiguous"] = ("base or Turbo: same layout (drawn as base: 40 Euler steps without guidance, the size's "
                                   "shift; Turbo's modular pipeline samples 8 steps, also without guidance)")
        return self.finish(det, rel)

    def vae_config_name(self, variant, latent):
        return "vae-qwen-image-2.1"  # (the 64-channel VAE: not one of the KL configs the base rule picks among)

    def mu_args(self, sched: dict) -> dict:
        return _mu_args(sched)

    # ------------------------------------------------------------------ prompts and the model call
    def encode(self, te, prompts, cond, **_):
        """QwenImage21Pipeline._get_qwen_prompt_embeds (text to image): each prompt (" " for an empty one) in the
        template, the last layer's output before the final norm, the system turn dropped, padding zeroed and masked."""
        tok = te.encoder("qwen3_vl_8b")[1]
        drop = len(tok(SYSTEM, add_special_tokens=False)["input_ids"])
        (h,), keep = te.decoder("qwen3_vl_8b", [TEMPLATE.format(p or " ") for p in prompts], prenorm=True)
        keep = keep[:, drop:]
        cond.embeds, cond.mask = h[:, drop:] * te.like(keep[..., None], h), keep

    def forward(self, den, x, t, cond):
        """Unpatched latent tokens after the text; ``img_mask`` marks the text's positions False and one image slot per
        four image tokens True (the vision-language sequence the transformer expands); the image tokens' output kept.

        Each prompt is read at its own length: the image's rotary frame follows the text's length, padding included,
        so a prompt padded to a longer one's length (a negative beside its prompt, prompts in one batch) would draw
        another picture. QwenImage21Pipeline runs the prompt and the negative as separate calls; here rows of different
        lengths are separate calls too (rows of one length, the common case, one call)."""
        emb, mask = cond["embeds"], cond.get("mask")
        if mask is None:
            return self._call(den, x, t, emb)
        lengths = den.cached(("qwenimage21_lengths", id(mask), tuple(mask.shape)),
                             lambda: [int(n) for n in (den.ops.to_numpy(mask) > 0).sum(axis=1)])
        if len(set(lengths)) == 1:
            return self._call(den, x, t, emb[:, :lengths[0]])
        return den.ops.concat([self._call(den, x[i:i + 1], t[i:i + 1], emb[i:i + 1, :n]) for i, n in enumerate(lengths)], 0)

    @staticmethod
    def _call(den, x, t, emb):
        b, _, h, w = x.shape
        n, text = h * w, emb.shape[1]
        slots = den.cached(("qwenimage21_slots", b, text, n), lambda: den.rows([[0.0] * text + [1.0] * (n // SLOT)] * b, den.F32) > 0)
        out = den.run(hidden_states=den.pack(x, p=1), encoder_hidden_states=emb, timestep=t, img_shapes=[[(1, h, w)]] * b,
                      img_mask=slots)
        return den.unpack(out[:, -n:], h, w, p=1)
