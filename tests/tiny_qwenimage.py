"""Tiny Qwen-Image parts built with the REAL classes and saved in the REAL layouts (see tests/tiny_models.py).

    build_qwenimage(seed=0) -> QwenImageTransformer2DModel; make_qwenimage(root, layout="diffusers")
        (qwen_image_bf16.safetensors' layout: diffusers names, no prefix)
    build_qwen25_vl(seed=0) -> Qwen2_5_VLForConditionalGeneration; make_qwen25_vl(root)
        (qwen_2.5_vl_7b.safetensors: transformers-4 names, visual.* and an untied lm_head, tokenizer beside it)
    build_qwen_vae(seed=0)            -> AutoencoderKLQwenImage (base_dim 8; the released block structure, so the
                                          original layout's key names are exactly the released file's)
    make_qwen_vae(root, layout="original"|"diffusers"|"folder")
        "original" = ComfyUI's qwen_image_vae.safetensors layout (Wan-2.1 names, 5-D convs, ``gamma`` norms)
"""

from __future__ import annotations

import re
from pathlib import Path



# --------------------------------------------------------------------------- the VAE


def build_qwen_vae(seed: int = 0):
    from diffusers import AutoencoderKLQwenImage

    from spriteforge.tests.tiny_models import _randomize

    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                 temperal_downsample=[False, True, True])
    return _randomize(vae, seed)


_RES = {"norm1.gamma": "residual.0.gamma", "conv1": "residual.2", "norm2.gamma": "residual.3.gamma", "conv2": "residual.6",
        "conv_shortcut": "shortcut"}


def _res(rest: str) -> str:
    for new, old in _RES.items():
        if rest.startswith(new):
            return old + rest[len(new):]
    return rest


def qwen_vae_to_original(sd: dict, res_blocks: int = 2) -> dict:
    """diffusers ``AutoencoderKLQwenImage`` keys -> the original Wan-2.1 keys (the inverse of diffusers'
    ``convert_wan_vae_to_diffusers``; loading goes back through that converter, so a round trip checks this)."""
    per_up = res_blocks + 2  # decoder.upsamples: the up block's resnets, then its resample
    out = {}
    for k, v in sd.items():
        n = {"quant_conv.weight": "conv1.weight", "quant_conv.bias": "conv1.bias",
             "post_quant_conv.weight": "conv2.weight", "post_quant_conv.bias": "conv2.bias"}.get(k, k)
        n = re.sub(r"^(encoder|decoder)\.conv_in\.", r"\1.conv1.", n)
        n = re.sub(r"^(encoder|decoder)\.norm_out\.gamma", r"\1.head.0.gamma", n)
        n = re.sub(r"^(encoder|decoder)\.conv_out\.", r"\1.head.2.", n)
        n = re.sub(r"^(encoder|decoder)\.mid_block\.attentions\.0\.", r"\1.middle.1.", n)
        m = re.match(r"^(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.*)$", n)
        if m:
            n = f"{m.group(1)}.middle.{2 * int(m.group(2))}.{_res(m.group(3))}"
        m = re.match(r"^encoder\.down_blocks\.(\d+)\.(.*)$", n)
        if m:
            n = f"encoder.downsamples.{m.group(1)}.{_res(m.group(2))}"
        m = re.match(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$", n)
        if m:
            n = f"decoder.upsamples.{per_up * int(m.group(1)) + int(m.group(2))}.{_res(m.group(3))}"
        m = re.match(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)$", n)
        if m:
            n = f"decoder.upsamples.{per_up * int(m.group(1)) + per_up - 1}.{m.group(2)}"
        out[n] = v
    return out


def make_qwen_vae(root, layout: str = "original", seed: int = 0, name: str | None = None) -> Path:
    from spriteforge.tests.tiny_models import _save_file

    root = Path(root)
    vae = build_qwen_vae(seed)
    if layout == "folder":
        d = root / (name or "qwen_vae")
        if not (d / "config.json").exists():
            vae.save_pretrained(str(d))
        return d
    path = root / (name or f"qwen_image_vae_{layout}.safetensors")
    if path.exists():
        return path
    sd = vae.state_dict()
    return _save_file(qwen_vae_to_original(sd) if layout == "original" else sd, path)


# --------------------------------------------------------------------------- the text encoder (Qwen2.5-VL)

QWEN25_DIM = 256  # 2 heads of 128 (Qwen2/2.5's head width, which detection assumes): the transformer's joint_attention_dim


def build_qwen25_vl(seed: int = 0, vocab_size: int = 400):
    """A tiny real ``Qwen2_5_VLForConditionalGeneration``: a 2-layer language model (q/k/v biases, GQA 2 over 1, mrope
    sections as the release's) and a 1-block vision tower, untied ``lm_head``."""
    import transformers

    from spriteforge.tests.tiny_models import _randomize

    vision = dict(depth=1, hidden_size=16, num_heads=2, intermediate_size=32, out_hidden_size=QWEN25_DIM, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[0], in_channels=3)
    text = dict(vocab_size=vocab_size, hidden_size=QWEN25_DIM, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=512,
                rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    cfg = transformers.Qwen2_5_VLConfig(vision_config=vision, text_config=text, tie_word_embeddings=False)
    return _randomize(transformers.Qwen2_5_VLForConditionalGeneration(cfg), seed)


def qwen25_vl_legacy_names(sd: dict) -> dict:
    """transformers-5 names -> the transformers-4 names ComfyUI's ``qwen_2.5_vl_7b.safetensors`` keeps
    (``model.layers.*``, ``visual.*``, ``lm_head.weight``)."""
    out = {}
    for k, v in sd.items():
        k = k.replace("model.language_model.", "model.", 1) if k.startswith("model.language_model.") else k
        out[k.replace("model.visual.", "visual.", 1) if k.startswith("model.visual.") else k] = v
    return out


def make_qwen25_vl(root, seed: int = 0, name: str = "qwen_2.5_vl_7b") -> Path:
    """``qwen_2.5_vl_7b.safetensors`` as ComfyUI users hold it (legacy names, vision tower and untied head included),
    with ``<name>_tokenizer/`` (Qwen's byte-level BPE) beside it."""
    from spriteforge.tests.tiny_models import _save_file
    from spriteforge.tests.tiny_qwen import make_qwen_tokenizer, tokenizer_size

    root = Path(root)
    tok = make_qwen_tokenizer(root)
    path = root / f"{name}.safetensors"
    if not path.exists():
        _save_file(qwen25_vl_legacy_names(build_qwen25_vl(seed, tokenizer_size(root)).state_dict()), path)
        side = root / f"{name}_tokenizer"
        side.mkdir(parents=True, exist_ok=True)
        for f in tok.iterdir():
            (side / f.name).write_bytes(f.read_bytes())
    return path


# --------------------------------------------------------------------------- the transformer


def build_qwenimage(seed: int = 0):
    """A tiny real ``QwenImageTransformer2DModel`` (2 blocks, 2 heads of 16, rope axes 4/6/6)."""
    from diffusers import QwenImageTransformer2DModel

    from spriteforge.tests.tiny_models import _randomize

    tr = QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=16,
                                     num_attention_heads=2, joint_attention_dim=QWEN25_DIM, axes_dims_rope=(4, 6, 6))
    return _randomize(tr, seed)


def make_qwenimage(root, layout: str = "diffusers", seed: int = 0) -> Path:
    """``layout="diffusers"``: ``qwen_image_bf16.safetensors`` as ComfyUI users hold it (diffusers names, no prefix;
    Qwen-Image has no other single-file layout); ``"folder"``: :func:`make_qwenimage_folder`."""
    if layout == "folder":
        return make_qwenimage_folder(root, seed)
    if layout != "diffusers":
        raise ValueError(f"Qwen-Image ships no {layout!r} layout")
    from spriteforge.tests.tiny_models import _save_file

    path = Path(root) / "qwen_image_tiny.safetensors"
    if not path.exists():
        _save_file(build_qwenimage(seed).state_dict(), path)
    return path


def make_qwenimage_folder(root, seed: int = 0) -> Path:
    """A complete diffusers ``QwenImagePipeline`` folder (as Qwen/Qwen-Image is laid out): transformer/, vae/,
    text_encoder/ (``Qwen2_5_VLForConditionalGeneration``, vision tower included), tokenizer/, scheduler/ (the
    release's scheduler config)."""
    import diffusers
    import transformers

    from spriteforge.models import configs
    from spriteforge.tests.tiny_models import _done, _write_pipeline
    from spriteforge.tests.tiny_qwen import make_qwen_tokenizer, tokenizer_size

    root = Path(root)
    d = root / "Qwen-Image-tiny"
    if _done(d):
        return d
    tok_dir = make_qwen_tokenizer(root)
    sched = configs.load("qwen-image")["scheduler"]
    sched.pop("_class_name")
    return _write_pipeline(d, "QwenImagePipeline", {
        "transformer": build_qwenimage(seed), "vae": build_qwen_vae(seed + 1),
        "text_encoder": build_qwen25_vl(seed + 2, tokenizer_size(root)),
        "tokenizer": transformers.Qwen2Tokenizer.from_pretrained(str(tok_dir), local_files_only=True),
        "scheduler": diffusers.FlowMatchEulerDiscreteScheduler.from_config(sched)})
