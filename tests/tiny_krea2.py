"""Tiny Krea 2 parts built with the REAL classes and saved in the REAL layouts (see tests/tiny_models.py).

    build_krea2(seed=0) -> Krea2Transformer2DModel (2 blocks, 2 heads of 16 over 1 key/value head, text fusion over
        2 tapped hidden states of a 32-wide text encoder)
    make_krea2(root, layout="original"|"diffusers"|"folder", distilled=None)
        "original" = Comfy-Org's krea2_{raw,turbo}_bf16.safetensors: krea's names, MIXED precision as released (bf16
                     block and text-fusion matrices, f32 everything else), ``blocks.N.mod.lin`` flat
        "diffusers" = Krea2Transformer2DModel's own names; "folder" = a Krea2Pipeline folder (``is_distilled`` and
                     ``text_encoder_select_layers`` in model_index.json; ``distilled`` None leaves is_distilled out)
    build_qwen3_vl(seed=0) -> Qwen3VLForConditionalGeneration (5-layer language model, 1-block vision tower, tied head)
    make_qwen3_vl(root) -> its file as transformers saves it (model.language_model.*, model.visual.*; no lm_head:
        tied), with ``<name>_tokenizer/`` (Qwen's byte-level BPE) beside it
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

TEXT_DIM = 32  # the tiny Qwen3-VL's width: the transformer's text_hidden_dim
SELECT = (2, 5)  # Krea2Pipeline's text_encoder_select_layers for 2 tapped states (the release: 2, 5, ..., 35)


def build_qwen3_vl(seed: int = 0, vocab_size: int = 400):
    import transformers

    from spriteforge.tests.tiny_models import _randomize

    vision = dict(depth=1, hidden_size=16, num_heads=2, intermediate_size=32, out_hidden_size=TEXT_DIM, patch_size=16,
                  spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16, deepstack_visual_indexes=[0])
    text = dict(vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=64, num_hidden_layers=5, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16, rms_norm_eps=1e-6, max_position_embeddings=1024,
                rope_parameters={"rope_type": "default", "rope_theta": 5000000, "mrope_section": [4, 2, 2], "mrope_interleaved": True})
    cfg = transformers.Qwen3VLConfig(vision_config=vision, text_config=text, tie_word_embeddings=True)
    return _randomize(transformers.Qwen3VLForConditionalGeneration(cfg), seed)


def make_qwen3_vl(root, seed: int = 0, name: str = "qwen3_vl_4b") -> Path:
    from spriteforge.tests.tiny_models import _save_file
    from spriteforge.tests.tiny_qwen import make_qwen_tokenizer, tokenizer_size

    root = Path(root)
    tok = make_qwen_tokenizer(root)
    path = root / f"{name}.safetensors"
    if not path.exists():
        sd = build_qwen3_vl(seed, tokenizer_size(root)).state_dict()
        _save_file({k: v for k, v in sd.items() if k != "lm_head.weight"}, path)  # tied: transformers saves no head
        side = root / f"{name}_tokenizer"
        side.mkdir(parents=True, exist_ok=True)
        for f in tok.iterdir():
            (side / f.name).write_bytes(f.read_bytes())
    return path


def build_krea2(seed: int = 0):
    from diffusers import Krea2Transformer2DModel

    from spriteforge.tests.tiny_models import _randomize

    tr = Krea2Transformer2DModel(in_channels=64, num_layers=2, attention_head_dim=16, num_attention_heads=2, num_key_value_heads=1,
                                 intermediate_size=64, timestep_embed_dim=32, text_hidden_dim=TEXT_DIM, num_text_layers=len(SELECT),
                                 text_num_attention_heads=2, text_num_key_value_heads=2, text_intermediate_size=64,
                                 num_layerwise_text_blocks=1, num_refiner_text_blocks=1, axes_dims_rope=(4, 6, 6))
    return _randomize(tr, seed)


_PREFIXES = {"img_in.": "first.", "time_embed.linear_1.": "tmlp.0.", "time_embed.linear_2.": "tmlp.2.",
             "time_mod_proj.": "tproj.1.", "txt_in.norm.weight": "txtmlp.0.scale", "txt_in.linear_1.": "txtmlp.1.",
             "txt_in.linear_2.": "txtmlp.3.", "text_fusion.": "txtfusion.", "transformer_blocks.": "blocks.",
             "final_layer.linear.": "last.linear.", "final_layer.norm.weight": "last.norm.scale",
             "final_layer.scale_shift_table": "last.modulation.lin"}
_BLOCK = {".attn.to_q.": ".attn.wq.", ".attn.to_k.": ".attn.wk.", ".attn.to_v.": ".attn.wv.", ".attn.to_out.0.": ".attn.wo.",
          ".attn.to_gate.": ".attn.gate.", ".attn.norm_q.weight": ".attn.qknorm.qnorm.scale",
          ".attn.norm_k.weight": ".attn.qknorm.knorm.scale", ".ff.": ".mlp.", ".norm1.weight": ".prenorm.scale",
          ".norm2.weight": ".postnorm.scale", ".scale_shift_table": ".mod.lin"}
# the manifest's rule for the released mixed precision: these matrices bf16, every other tensor f32
_BF16 = re.compile(r"^(blocks\.\d+|txtfusion\.(layerwise|refiner)_blocks\.\d+)\.(attn\.(wq|wk|wv|wo|gate)|mlp\.(gate|up|down))\.weight$")


def krea2_to_original(sd: dict) -> dict:
    """diffusers names -> krea's (the inverse of diffusers' ``convert_krea2_transformer_checkpoint_to_diffusers``,
    which loading goes through, so a round trip checks this), in the released mixed precision."""
    out = {}
    for k, v in sd.items():
        for new, old in _PREFIXES.items():
            if k.startswith(new):
                k = old + k[len(new):]
                break
        for new, old in _BLOCK.items():
            k = k.replace(new, old)
        if k.startswith("blocks.") and k.endswith(".mod.lin"):
            v = v.reshape(-1)  # six modulation vectors flat
        out[k] = v.to(torch.bfloat16 if _BF16.match(k) else torch.float32).contiguous()
    return out


def make_krea2(root, layout: str = "original", seed: int = 0, distilled: bool | None = None) -> Path:
    from spriteforge.tests.tiny_models import _done, _save_file

    if layout == "folder":
        return make_krea2_folder(root, seed, distilled)
    path = Path(root) / ("krea2_tiny_bf16.safetensors" if layout == "original" else "krea2_tiny_diffusers.safetensors")
    if _done(path):
        return path
    sd = build_krea2(seed).state_dict()
    return _save_file(krea2_to_original(sd) if layout == "original" else sd, path)


def make_krea2_folder(root, seed: int = 0, distilled: bool | None = None) -> Path:
    """A complete diffusers ``Krea2Pipeline`` folder: transformer/, vae/ (the Qwen-Image VAE), text_encoder/
    (``Qwen3VLModel``, vision tower included), tokenizer/, scheduler/ (the documented dynamic shift)."""
    import diffusers
    import transformers

    from spriteforge.models import configs
    from spriteforge.tests.tiny_models import _done, _write_pipeline
    from spriteforge.tests.tiny_qwen import make_qwen_tokenizer, tokenizer_size
    from spriteforge.tests.tiny_qwenimage import build_qwen_vae

    d = Path(root) / f"Krea-2-tiny{'' if distilled is None else '-turbo' if distilled else '-raw'}"
    if _done(d):
        return d
    tok_dir = make_qwen_tokenizer(root)
    sched = configs.load("krea2")["scheduler"]
    sched.pop("_class_name")
    _write_pipeline(d, "Krea2Pipeline", {
        "transformer": build_krea2(seed), "vae": build_qwen_vae(seed + 1),
        "text_encoder": build_qwen3_vl(seed + 2, tokenizer_size(root)).model,
        "tokenizer": transformers.Qwen2Tokenizer.from_pretrained(str(tok_dir), local_files_only=True),
        "scheduler": diffusers.FlowMatchEulerDiscreteScheduler.from_config(sched)})
    index = json.loads((d / "model_index.json").read_text())
    index.update(text_encoder_select_layers=list(SELECT), patch_size=2, **({} if distilled is None else {"is_distilled": distilled}))
    (d / "model_index.json").write_text(json.dumps(index, indent=2))
    return d
