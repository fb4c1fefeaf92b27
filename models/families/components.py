"""Text encoders and VAEs of today's families (Qwen3, Qwen2.5-VL, the Qwen-Image VAE; the FLUX.2 VAE's detection lives
with its family), named from
the header alone. One that no family SpriteForge generates with uses yet says what it is (``recognised_as``), and
:func:`.registry.check_generates` refuses it by that name; once a runnable family declares its slot (Qwen3-4B:
Z-Image), it loads. The Qwen-Image VAE loads on both engines (``AutoencoderKLQwenImage``).
"""

from __future__ import annotations

import re

from .. import configs
from ..detection import Detection, count
from ..safetensors_header import TensorInfo
from . import registry
from .flux2 import detect_vae as _flux2_vae  # the FLUX.2 VAE loads: its detection lives with its family

# Qwen3 language models by width: (our key, name, what uses it)
_QWEN3 = {2560: ("qwen3_4b", "Qwen3-4B", "Z-Image, FLUX.2 [klein] 4B"), 4096: ("qwen3_8b", "Qwen3-8B", "FLUX.2 [klein] 9B")}


def classify(t: dict[str, TensorInfo]) -> Detection | None:
    """The detection of one of these text encoders or VAEs (prefix-less tensors); None when ``t`` is none of them."""
    if "bn.running_mean" in t and "decoder.conv_in.weight" in t:
        return _flux2_vae(t)
    if "decoder.mid_block.resnets.0.norm1.gamma" in t and len(t["decoder.conv_in.weight"].shape) == 4:
        return _qwen_image21_vae(t)  # (its causal convs are 2-D: the Qwen-Image VAE's are 5-D)
    if "decoder.middle.0.residual.0.gamma" in t or "decoder.mid_block.resnets.0.norm1.gamma" in t:
        return _qwen_image_vae(t)
    pre = next((p for p in _LM_PREFIXES if f"{p}embed_tokens.weight" in t), "")
    if f"{pre}embed_tokens.weight" not in t or f"{pre}layers.0.self_attn.q_proj.weight" not in t:
        return None
    if f"{pre}layers.0.self_attn.q_norm.weight" in t and (pre == "model.language_model." or _vision_tower(t)):
        return _qwen3_vl(t, pre)  # (before Qwen2.5-VL's rule: its vision tower has the same patch embedding name)
    if "visual.patch_embed.proj.weight" in t or _qwen2_lm(t, pre):
        return _qwen25_vl(t, pre)
    if f"{pre}layers.0.self_attn.q_norm.weight" in t:
        return _qwen3(t, pre)
    if _is_mistral3(t, pre):
        return _mistral3(t, pre)
    return None


# where a decoder LM's layers sit: a Mistral3ForConditionalGeneration's language model (transformers' older and newer
# names), a ...ForCausalLM's
_LM_PREFIXES = ("language_model.model.", "model.language_model.", "model.")


def _qwen2_lm(t, pre) -> bool:
    """A Qwen2-style language model on its own (q/k/v biases, no q/k norms, no vision tower): Qwen2.5-VL's language
    model as a GGUF holds it (llama.cpp's converter leaves the vision tower to a separate ``mmproj`` file)."""
    return (pre == "model." and f"{pre}layers.0.self_attn.q_proj.bias" in t and f"{pre}layers.0.self_attn.k_proj.bias" in t
            and f"{pre}layers.0.self_attn.q_norm.weight" not in t)


def _is_mistral3(t, pre) -> bool:
    """A Llama-style decoder (no q/k norm, no q/k/v bias: Qwen3 has the one, Qwen2 the other) that is Mistral Small 3.1:
    a Mistral3ForConditionalGeneration's language-model names, its vision tower, the tekken tokenizer ComfyUI's file
    carries (``tekken_model``) or Mistral's 131072-token vocabulary (Qwen's is 151936)."""
    if f"{pre}layers.0.self_attn.q_proj.bias" in t:
        return False
    return (pre in _LM_PREFIXES[:2] or "tekken_model" in t or any(k.startswith("vision_tower.") for k in t)
            or t[f"{pre}embed_tokens.weight"].shape[0] == 131072)


_MISTRAL3_LAYERS = 40  # Mistral Small 3.1's; ComfyUI also ships one cut after layer 30 (FLUX.2 reads 10, 20, 30)


def _mistral3(t, pre) -> Detection:
    """FLUX.2 [dev]'s text encoder: Mistral Small 3.1 (Mistral3ForConditionalGeneration; its language model, a
    ``MistralModel``, the Pixtral vision tower unused): the release's facts (rope theta 1e9, norm epsilon), then what
    the shapes tell. ComfyUI's ``mistral_3_small_flux2_*.safetensors`` holds it under ``model.`` with its tokenizer
    (``tekken_model``); a 30-layer file is ComfyUI's pruned one (FLUX.2 reads layers 10, 20 and 30 only)."""
    cfg = {**configs.load("te-mistral3")["config"], "architectures": ["MistralModel"], **_language_model(t, pre)}
    if cfg["num_hidden_layers"] < _MISTRAL3_LAYERS:  # ComfyUI's pruned file: its last hidden state is a layer's, not normed
        cfg["final_norm"] = False
    det = _text_encoder("mistral3", "Mistral-3 (Mistral Small 3.1)", "FLUX.2 [dev]", cfg)
    if "tekken_model" in t:
        det.extras["tokenizer"] = "embedded (tekken_model)"
    if any(k.startswith("vision_tower.") for k in t):
        det.extras["vision_tower"] = "present (vision_tower.*, unused: the text part encodes prompts)"
    return det


def folder_text_encoder(cfg: dict) -> str | None:
    """Our key for a transformers folder's ``config.json`` of one of these text encoders (None: not one of them)."""
    mt = cfg.get("model_type", "")
    if mt == "qwen3":
        return _qwen3_slot(cfg.get("hidden_size"), cfg.get("tie_word_embeddings", True))[0]
    if mt == "qwen2_5_vl":
        return "qwen25_7b"
    if mt == "qwen3_vl":  # by width, another width by its head, as for a single file (:func:`_qwen3_vl`)
        hidden = (cfg.get("text_config") or {}).get("hidden_size")
        tied = cfg.get("tie_word_embeddings", (cfg.get("text_config") or {}).get("tie_word_embeddings", True))
        return "qwen3_vl_8b" if hidden == 4096 or (hidden != 2560 and not tied) else "qwen3_vl_4b"
    return {"mistral3": "mistral3"}.get(mt)


def _language_model(t: dict[str, TensorInfo], pre: str) -> dict:
    """The transformers config fields of a Qwen-style decoder that its shapes tell."""
    vocab, hidden = t[f"{pre}embed_tokens.weight"].shape
    q, k = t[f"{pre}layers.0.self_attn.q_proj.weight"].shape[0], t[f"{pre}layers.0.self_attn.k_proj.weight"].shape[0]
    norm = t.get(f"{pre}layers.0.self_attn.q_norm.weight")
    head_dim = norm.shape[0] if norm is not None else 128  # Qwen2/2.5 heads are 128 wide
    return {"vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": count(t.keys(), rf"{re.escape(pre)}layers\.(\d+)\."),
            "intermediate_size": t[f"{pre}layers.0.mlp.gate_proj.weight"].shape[0], "head_dim": head_dim,
            "num_attention_heads": q // head_dim, "num_key_value_heads": k // head_dim,
            "tie_word_embeddings": "lm_head.weight" not in t}


def _runs(key: str) -> bool:
    """Whether a family SpriteForge generates with has a text-encoder slot ``key``."""
    return any(te.key == key for f in registry.families() for te in f.text_encoders)


def _text_encoder(variant: str, name: str, used_by: str, cfg: dict, **extras) -> Detection:
    det = Detection(None, variant, "text_encoder", cfg, layout="hf")
    lm = "untied (lm_head.weight stored)" if not cfg["tie_word_embeddings"] else "tied (no lm_head.weight: the embedding is the head)"
    det.extras.update(lm_head=lm, **extras)
    if not _runs(variant):
        det.extras["recognised_as"] = f"the {name} text encoder ({used_by})"
    return det


def _qwen3(t, pre) -> Detection:
    # the released config (Qwen/Qwen3-4B, -8B: rope theta, norm epsilon...), then what the shapes tell
    cfg = {**configs.load("te-qwen3")["config"], "architectures": ["Qwen3ForCausalLM"], **_language_model(t, pre)}
    key, name, used_by = _qwen3_slot(cfg["hidden_size"], cfg["tie_word_embeddings"])
    return _text_encoder(key, name, used_by, cfg)


def _qwen3_slot(hidden, tied: bool) -> tuple[str, str, str]:
    """(our key, name, what uses it) of a Qwen3 ``hidden`` wide: the released widths by their width; another width (a
    tiny or custom model) by its head, as the releases differ: Qwen3-4B's is tied (no ``lm_head``), Qwen3-8B's not."""
    if hidden in _QWEN3:
        return _QWEN3[hidden]
    key, _, used_by = _QWEN3[2560 if tied else 4096]
    return key, f"Qwen3 ({hidden} wide, {'tied' if tied else 'untied'} head)", used_by


def _qwen25_vl(t, pre) -> Detection:
    # the language model only (a text prompt needs no vision tower): Qwen2.5-VL-7B's release facts, then the shapes
    cfg = {**configs.load("te-qwen25-vl")["config"], "architectures": ["Qwen2_5_VLForConditionalGeneration"], **_language_model(t, pre)}
    known = cfg["hidden_size"] == 3584 and cfg["num_hidden_layers"] == 28
    extras = {}
    if "visual.patch_embed.proj.weight" in t:
        cfg["vision_config"] = _qwen25_vision(t)
        v = cfg["vision_config"]
        extras["vision_tower"] = f"present: {v['depth']} blocks, {v['hidden_size']} wide (visual.*; Qwen-Image-Edit reads it)"
    else:
        extras["vision_tower"] = "absent (text prompts only: Qwen-Image-Edit needs a file with visual.*)"
    # one slot (Qwen-Image's): another width (a tiny or custom model) is named by its width
    return _text_encoder("qwen25_7b", "Qwen2.5-VL-7B" if known else f"Qwen2.5-VL ({cfg['hidden_size']} wide)", "Qwen-Image, Qwen-Image-Edit",
                         cfg, **extras)


def _qwen25_vision(t) -> dict:
    """Qwen2.5-VL's vision tower config (transformers' ``Qwen2_5_VLVisionConfig``) from its ``visual.*`` shapes and the
    release's facts no shape tells (80-wide heads, full attention in every 8th block, 112-pixel windows)."""
    rel = configs.load("te-qwen25-vl")["vision"]
    width, chans, temporal, patch, _ = t["visual.patch_embed.proj.weight"].shape
    depth = count(t.keys(), r"visual\.blocks\.(\d+)\.")
    merge = round((t["visual.merger.mlp.0.weight"].shape[1] // width) ** 0.5)
    every = rel["fullatt_every"]
    return {"depth": depth, "hidden_size": width, "num_heads": max(width // rel["head_dim"], 1),
            "intermediate_size": t["visual.blocks.0.mlp.gate_proj.weight"].shape[0],
            "out_hidden_size": t["visual.merger.mlp.2.weight"].shape[0], "in_channels": chans, "patch_size": patch,
            "temporal_patch_size": temporal, "spatial_merge_size": merge, "window_size": rel["window_size"],
            # the release's blocks 7, 15, 23, 31; a shallower tower (a tiny model) attends fully in its last block
            "fullatt_block_indexes": [i for i in range(depth) if (i + 1) % every == 0] or [depth - 1],
            "hidden_act": rel["hidden_act"], "tokens_per_second": rel["tokens_per_second"]}


def _vision_tower(t) -> str | None:
    """Where a Qwen-VL vision tower sits in ``t`` (``visual.`` or ``model.visual.``), or None."""
    return next((p for p in ("visual.", "model.visual.") if f"{p}patch_embed.proj.weight" in t), None)


def _qwen3_vl(t, pre) -> Detection:
    """Krea 2's text encoder: Qwen3-VL-4B (``Qwen3VLForConditionalGeneration``: its language model under
    ``model.language_model.`` with Qwen3's q/k norms, the vision tower under ``model.visual.`` with a learned
    ``pos_embed`` and ``deepstack_merger_list``, the head tied). The language model only; text prompts have equal
    positions on the three rope sections, so the multimodal rope is ordinary rope."""
    cfg = {**configs.load("krea2-qwen3-vl-4b")["config"], "architectures": ["Qwen3VLForConditionalGeneration"], **_language_model(t, pre)}
    half = cfg["head_dim"] // 2
    if half != 64:  # a smaller model (the tests'): the release's 24/20/20 sections in proportion (text ignores them)
        side = half * 20 // 64
        cfg["rope_parameters"] = {**cfg["rope_parameters"], "mrope_section": [half - 2 * side, side, side]}
    vis = _vision_tower(t)
    blocks = count(t.keys(), re.escape(vis or "") + r"blocks\.(\d+)\.")
    extras = {"vision_tower": f"present: {blocks} blocks ({vis}*)"} if vis else {}
    # by width, as the releases differ (Qwen3-VL-4B: 2560 wide, tied head; -8B: 4096 wide, untied); another width (a
    # tiny or custom model) by its head
    key, name, used_by, size = _QWEN3_VL[4096 if cfg["hidden_size"] == 4096 or (cfg["hidden_size"] != 2560 and not cfg["tie_word_embeddings"]) else 2560]
    known = cfg["hidden_size"] == size and cfg["num_hidden_layers"] == 36
    return _text_encoder(key, name if known else f"Qwen3-VL ({cfg['hidden_size']} wide)", used_by, cfg, **extras)


# Qwen3-VL language models by width: (our key, name, what uses it, width)
_QWEN3_VL = {2560: ("qwen3_vl_4b", "Qwen3-VL-4B", "Krea 2", 2560), 4096: ("qwen3_vl_8b", "Qwen3-VL-8B", "Qwen-Image 2.1", 4096)}


def _qwen_image_vae(t) -> Detection:
    original = "decoder.middle.0.residual.0.gamma" in t
    conv_in = t["encoder.conv1.weight" if original else "encoder.conv_in.weight"]
    z = t["decoder.conv1.weight" if original else "decoder.conv_in.weight"].shape[1]
    cfg = {"_class_name": "AutoencoderKLQwenImage", "base_dim": conv_in.shape[0], "z_dim": z}
    # loaded by both engines (a single-frame AutoencoderKLQwenImage): named by its variant, not refused
    return Detection(None, "qwen-image", "vae", cfg, layout="original" if original else "diffusers")


def _qwen_image21_vae(t) -> Detection:
    """Qwen-Image 2.1's VAE (``AutoencoderKLQwenImage21``, diffusers' names): the Qwen-Image VAE's names with 2-D
    causal convolutions, RGBA in and out (``encoder.conv_in`` takes 4 channels), 64 latent channels, 16x spatial."""
    base = t["encoder.conv_in.weight"].shape[0]
    levels = count(t.keys(), r"encoder\.down_blocks\.(\d+)\.")
    cfg = {**configs.load("vae-qwen-image-2.1")["config"], "base_dim": base,
           "decoder_base_dim": t["decoder.conv_out.weight"].shape[1], "z_dim": t["decoder.conv_in.weight"].shape[1],
           "dim_mult": [t[f"encoder.down_blocks.{i}.resnets.0.conv2.weight"].shape[0] // base for i in range(levels)],
           "num_res_blocks": count(t.keys(), r"encoder\.down_blocks\.0\.resnets\.(\d+)\."),
           "in_channels": t["encoder.conv_in.weight"].shape[1], "out_channels": t["decoder.conv_out.weight"].shape[0]}
    det = Detection(None, "qwen-image-2.1", "vae", cfg, layout="diffusers")
    if not any(f.vae_class == cfg["_class_name"] for f in registry.families()):
        det.extras["recognised_as"] = "the Qwen-Image 2.1 VAE (AutoencoderKLQwenImage21)"
    return det


__all__ = ["classify", "folder_text_encoder"]
