"""Z-Image and Z-Image-Turbo (Tongyi-MAI): 6B single-stream DiT (S3-DiT), Qwen3-4B prompts, the 16-channel Flux VAE.

One stream of image tokens then caption tokens (each padded to a multiple of 32 with a learned pad token), after two
noise-refiner blocks (image, timestep-modulated) and two context-refiner blocks (caption); 3-axis rotary positions.
The model is fed ``1 - sigma`` and predicts ``x0 - noise`` (the negated flow velocity). The caption is Qwen3-4B's
second-to-last hidden state of the prompt in Qwen's chat template, its real tokens only (diffusers' ZImagePipeline).
"""

from __future__ import annotations

from ..keymaps import rule as _r, tensor_rule as _t
from .base import Family, TextEncoder

_BLOCKS = ("layers", "noise_refiner", "context_refiner")
# Qwen3's chat template around one user message, with the generation prompt and thinking on (nothing more added),
# as ZImagePipeline's apply_chat_template(..., add_generation_prompt=True, enable_thinking=True) renders it
CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


def _attention_rules(block: str) -> tuple:
    a = f"{block}.{{i}}.attention"
    return (_r(f"{a}.qkv", [f"{a}.to_q", f"{a}.to_k", f"{a}.to_v"]), _r(f"{a}.out", f"{a}.to_out.0"),
            _t(f"{a}.q_norm.weight", f"{a}.norm_q.weight"), _t(f"{a}.k_norm.weight", f"{a}.norm_k.weight"))


class ZImage(Family):
    name = "zimage"
    label = "Z-Image"
    # Turbo (distilled) and base have one layout: no shape tells them apart, so detection says so
    variant_titles = {"turbo-or-base": "(Turbo or base: same layout)"}
    original_markers = (("cap_pad_token", "layers.0.attention.qkv.weight"),)
    diffusers_markers = (("cap_pad_token", "layers.0.attention.to_q.weight"),)
    reference_manifests = {
        "z-image-turbo.transformer.original": "turbo-or-base", "z-image-turbo.transformer.diffusers": "turbo-or-base",
    }
    detect_order = 30
    transformer_class = "ZImageTransformer2DModel"
    transformer_module = "diffusers.models.transformers.transformer_z_image"
    # the modules whose names differ (what LoRAs and detection read); the file itself is converted by diffusers' own
    # single-file converter, which also drops the unused ``norm_final.weight`` ComfyUI's all-in-one saves carry
    keymap = (
        _r("x_embedder", "all_x_embedder.2-1"),
        _r("final_layer.linear", "all_final_layer.2-1.linear"),
        _r("final_layer.adaLN_modulation.1", "all_final_layer.2-1.adaLN_modulation.1"),
        *(r for block in _BLOCKS for r in _attention_rules(block)),
    )
    original_converter = "convert_z_image_transformer_checkpoint_to_diffusers"
    text_encoders = (TextEncoder("qwen3_4b", "text_encoder"),)
    latent_channels = 16
    vae_by_latent = {16: "vae-kl16-flux"}  # the FLUX.1 VAE (ae.safetensors)
    prediction = "flow"
    patch_size = 2  # 2x2 latent patches
    float32_timestep = True  # ZImagePipeline: (1000 - t) / 1000 of the scheduler's float32 timesteps, in any dtype
    # its scheduler config (FlowMatchEulerDiscreteScheduler, shift 3.0, no dynamic shifting): a fixed shift of 3
    # whatever the size (ZImagePipeline computes a resolution mu, which that scheduler ignores)
    # diffusers pipelines/z_image/pipeline_z_image.py: its example runs Z-Image-Turbo with num_inference_steps=8,
    # guidance_scale=0.0 (no CFG: cfg 1.0 here); __call__'s own defaults (50 steps, guidance 5.0) are the base model's
    defaults = {"cfg": 1.0, "steps": 8, "sampler": "euler", "schedule": "normal"}
    mlx_port = "zimage"
    # LoRA: its block lists (noise_refiner / context_refiner) and the module names only it has among the families
    lora_names = (r"(^|_)(noise_refiner|context_refiner)_\d|(^|_)layers_\d+_(attention_(qkv|out|to_q|to_k|to_v|to_out_0)|"
                  r"feed_forward_w[123]|adaLN_modulation_0)$", "names (noise_refiner / layers.N.attention / feed_forward.w1-3)")
    lora_rank = 50
    lora_widths = (3840,)
    lora_metadata = ("z-image", "z_image", "zimage")
    widget_labels = {"text_encoder_1": "Qwen3-4B text encoder (qwen_3_4b.safetensors)",
                     "negative": "what to avoid (only with cfg above 1: Turbo samples without CFG)"}

    def detect(self, t, original):
        n, blocks = self.names(t, original)
        dim, patch_in = t[n("all_x_embedder.2-1.weight")].shape
        head_dim = t[n("layers.0.attention.norm_q.weight")].shape[0]
        heads = dim // head_dim
        if original:  # the fused q, k, v rows
            kv = (t["layers.0.attention.qkv.weight"].shape[0] // head_dim - heads) // 2
        else:
            kv = t["layers.0.attention.to_k.weight"].shape[0] // head_dim
        rel = self.release("zimage-turbo")
        cfg = rel["transformer"]
        cfg.update({
            "in_channels": patch_in // 4,  # 2x2 patches, one frame
            "dim": dim,
            "n_layers": blocks("layers."),
            "n_refiner_layers": blocks("noise_refiner."),
            "n_heads": heads, "n_kv_heads": kv,
            "cap_feat_dim": t["cap_embedder.0.weight"].shape[0],
        })
        if head_dim != sum(cfg["axes_dims"]):  # another width: the release's rotary split (1/4 frame, 3/8 row, 3/8 column)
            frame = 2 * round(head_dim / 8)
            cfg["axes_dims"] = [frame, (head_dim - frame) // 2, head_dim - frame - (head_dim - frame) // 2]
        return self.finish(self.detection("turbo-or-base", cfg, original), rel)

    def flow_shift(self, sched):
        return float(sched.get("shift", 3.0) or 3.0)

    # ------------------------------------------------------------------ prompts and the model call
    def encode(self, te, prompts, cond, *, max_length=None, **_):
        """Qwen3's second-to-last hidden states of each prompt in the chat template (real tokens; the mask says which)."""
        (hidden,), mask = te.decoder("qwen3_4b", [CHAT.format(p) for p in prompts], layers=(-2,), max_length=max_length or 512)
        cond.embeds, cond.mask = hidden, mask

    def forward(self, den, x, t, cond):
        """One latent ``[C, 1, h, w]`` and one caption ``[tokens, D]`` (its real tokens) a row, at ``1 - sigma``;
        the output negated into the flow velocity."""
        b, c, h, w = x.shape
        ops = den.ops
        mask = cond["mask"]  # each caption's real tokens (right-padded), read once a run (the entry keeps ``mask`` alive)
        _, lengths = den.cached(("caption lengths", id(mask)), lambda: (mask, [int(n) for n in ops.to_numpy(mask).sum(1)]))
        caps = [cond["embeds"][i, :n] for i, n in enumerate(lengths)]
        out = den.run(x=[ops.reshape(x[i], (c, 1, h, w)) for i in range(b)], t=(1000.0 - t) / 1000.0, cap_feats=caps)
        return ops.concat([ops.reshape(o, (1, c, h, w)) for o in out], 0) * -1.0
