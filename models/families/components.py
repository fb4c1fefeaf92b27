"""Text encoders and VAEs of today's families (Qwen3, Qwen2.5-VL, the FLUX.2 VAE, the Qwen-Image VAE), named from
the header alone. One that no family SpriteForge generates with uses yet says what it is (``recognised_as``), and
:func:`.registry.check_generates` refuses it by that name; once a runnable family declares its slot (Qwen3-4B:
Z-Image), it loads.
"""

from __future__ import annotations

import re

from .. import configs
from ..detection import Detection, count
from ..safetensors_header import TensorInfo
from . import registry

# Qwen3 language models by width: (our key, name, what uses it)
_QWEN3 = {2560: ("qwen3_4b", "Qwen3-4B", "Z-Image, FLUX.2 [klein] 4B"), 4096: ("qwen3_8b", "Qwen3-8B", "FLUX.2 [klein] 9B")}


def classify(t: dict[str, TensorInfo]) -> Detection | None:
    """The detection of one of these text encoders or VAEs (prefix-less tensors); None when ``t`` is none of them."""
    if "bn.running_mean" in t and "decoder.conv_in.weight" in t:
        return _flux2_vae(t)
    if "decoder.middle.0.residual.0.gamma" in t or "decoder.mid_block.resnets.0.norm1.gamma" in t:
        return _qwen_image_vae(t)
    pre = "model." if "model.embed_tokens.weight" in t else ""
    if f"{pre}embed_tokens.weight" not in t or f"{pre}layers.0.self_attn.q_proj.weight" not in t:
        return None
    if "visual.patch_embed.proj.weight" in t:
        return _qwen25_vl(t, pre)
    if f"{pre}layers.0.self_attn.q_norm.weight" in t:
        return _qwen3(t, pre)
    return None


def folder_text_encoder(cfg: dict) -> str | None:
    """Our key for a transformers folder's ``config.json`` of one of these text encoders (None: not one of them)."""
    mt = cfg.get("model_type", "")
    if mt == "qwen3":
        return _qwen3_slot(cfg.get("hidden_size"), cfg.get("tie_word_embeddings", True))[0]
    if mt == "qwen2_5_vl":
        return "qwen25_7b"
    return {"mistral3": "mistral3", "qwen3_vl": "qwen3_vl_4b"}.get(mt)


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
    cfg = {"model_type": "qwen2_5_vl", "architectures": ["Qwen2_5_VLForConditionalGeneration"], **_language_model(t, pre)}
    blocks = count(t.keys(), r"visual\.blocks\.(\d+)\.")
    width = t["visual.patch_embed.proj.weight"].shape[0]
    cfg["vision_config"] = {"depth": blocks, "hidden_size": width, "out_hidden_size": t["visual.merger.mlp.2.weight"].shape[0]}
    known = cfg["hidden_size"] == 3584 and cfg["num_hidden_layers"] == 28
    return _text_encoder("qwen25_7b" if known else "qwen25_vl", "Qwen2.5-VL-7B" if known else "Qwen2.5-VL", "Qwen-Image, Qwen-Image-Edit",
                         cfg, vision_tower=f"present: {blocks} blocks, {width} wide (visual.*)")


def _flux2_vae(t) -> Detection:
    original = "encoder.down.0.block.0.conv1.weight" in t
    block = "encoder.down.{}.block.0.conv1.weight" if original else "encoder.down_blocks.{}.resnets.0.conv1.weight"
    levels = count(t.keys(), r"encoder\.down\.(\d+)\." if original else r"encoder\.down_blocks\.(\d+)\.")
    cfg = {"_class_name": "AutoencoderKLFlux2", "latent_channels": t["decoder.conv_in.weight"].shape[1],
           "block_out_channels": [t[block.format(i)].shape[0] for i in range(levels)], "patch_size": [2, 2]}
    det = Detection(None, "flux2", "vae", cfg, layout="original" if original else "diffusers")
    tracked = t.get("bn.num_batches_tracked")
    det.extras.update(recognised_as="the FLUX.2 VAE (32-channel latent, batch-norm statistics)",
                      batch_norm=f"bn.running_mean/var {list(t['bn.running_mean'].shape)}"
                      + (f", num_batches_tracked {tracked.dtype}" if tracked is not None else ""))
    return det


def _qwen_image_vae(t) -> Detection:
    original = "decoder.middle.0.residual.0.gamma" in t
    conv_in = t["encoder.conv1.weight" if original else "encoder.conv_in.weight"]
    z = t["decoder.conv1.weight" if original else "decoder.conv_in.weight"].shape[1]
    cfg = {"_class_name": "AutoencoderKLQwenImage", "base_dim": conv_in.shape[0], "z_dim": z}
    det = Detection(None, "qwen-image", "vae", cfg, layout="original" if original else "diffusers")
    det.extras["recognised_as"] = "the Qwen-Image VAE (Wan-2.1 layout, 5-D convolutions; also Krea 2's)"
    return det


__all__ = ["classify", "folder_text_encoder"]
