"""What a model file or folder is, from tensor names and shapes alone.

:func:`detect` reads only the safetensors header (or a diffusers folder's JSON files)
and returns a :class:`Detection`: family, variant, kind, the full diffusers config,
dominant stored dtype, parameter count, what else the model needs, and for all-in-one
checkpoints which components were found under which prefix.

:func:`detect_tensors` does the same for a plain ``{name: TensorInfo}`` map, so reference
manifests (key/shape lists of released files) can be checked without any file.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import BAD_INPUT, MODEL_NOT_FOUND, UNSUPPORTED_ARCHITECTURE, SpriteForgeError
from . import configs, keymaps
from .safetensors_header import FLOAT_DTYPES, Header, TensorInfo, read_header

KINDS = ("transformer", "vae", "text_encoder", "checkpoint", "diffusers", "lora")

# All-in-one checkpoint prefixes -> component name.
PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.diffusion_model.", "transformer"),
    ("first_stage_model.", "vae"),
    ("vae.", "vae"),
    ("text_encoders.clip_l.transformer.", "clip_l"),
    ("text_encoders.clip_g.transformer.", "clip_g"),
    ("text_encoders.t5xxl.transformer.", "t5"),
)
TEXT_ENCODERS = ("clip_l", "clip_g", "t5", "gemma")
FAMILY_NEEDS = {
    "pixart": ["vae", "t5"],
    "sd3": ["vae", "clip_l", "clip_g", "t5"],
    "flux": ["vae", "clip_l", "t5"],
    "sana": ["vae", "gemma"],
    "dit": ["vae"],
}
# Default VAE config per family (the release's own VAE).
FAMILY_VAE = {"pixart": "vae-kl4-sdxl", "sd3": "vae-kl16-sd3", "flux": "vae-kl16-flux", "sana": "dc-ae-f32c32-sana", "dit": "vae-kl4-sd"}


@dataclass
class Detection:
    family: str | None
    variant: str | None
    kind: str
    config: dict = field(default_factory=dict)
    dtype: str = ""
    parameters: int = 0
    needs: list = field(default_factory=list)
    components: dict = field(default_factory=dict)  # component -> prefix (all-in-one files)
    layout: str = ""  # "original" | "diffusers" | "hf" | "ldm" | ...
    path: str = ""
    extras: dict = field(default_factory=dict)  # release info: scheduler, prediction, flow_shift, lora format/rank...
    parts: dict = field(default_factory=dict)  # component -> Detection (all-in-one files)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["parts"] = {k: v.to_dict() for k, v in self.parts.items()}
        return d


# --------------------------------------------------------------------------- helpers


def _count(keys, pattern: str) -> int:
    rx = re.compile(pattern)
    nums = {int(m.group(1)) for k in keys if (m := rx.match(k))}
    return max(nums) + 1 if nums else 0


def _indices(keys, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def _dominant_dtype(tensors: dict[str, TensorInfo]) -> str:
    by: dict[str, float] = {}
    for t in tensors.values():
        if t.dtype in FLOAT_DTYPES:
            by[t.dtype] = by.get(t.dtype, 0) + t.numel
    if not by:
        return next(iter(tensors.values())).dtype if tensors else ""
    return max(by.items(), key=lambda kv: kv[1])[0]


def _params(tensors) -> int:
    return sum(t.numel for t in tensors.values())


def _heads(hidden: int, preferred: tuple[int, ...]) -> tuple[int, int]:
    """(heads, head_dim) for ``hidden`` trying the family's usual head sizes first."""
    for hd in preferred:
        if hidden % hd == 0:
            return hidden // hd, hd
    return 1, hidden


def _res_name(sample: int, vae_factor: int = 8) -> str:
    """A PixArt variant's size: the release names (latent side x 8 = 256/512/1024/2k), else the pixel side."""
    if vae_factor == 8 and sample in (32, 64, 128, 256):
        return {32: "256", 64: "512", 128: "1024", 256: "2k"}[sample]
    return str(sample * vae_factor)


def _pixart_size_from_config(det: Detection, cfg: dict, pipeline: Path) -> None:
    """A PixArt transformer's variant from the ``sample_size`` of its config.json (its weights do not record it),
    in pixels of the VAE of the diffusers folder ``pipeline`` it sits in."""
    if det.family == "pixart" and isinstance(cfg.get("sample_size"), int):
        gen = (det.variant or "sigma").split("-")[0]
        det.variant = f"{gen}-{_res_name(cfg['sample_size'], _vae_factor(pipeline))}"
        det.extras.pop("ambiguous", None)


def _vae_factor(folder: Path) -> int:
    """The scale factor of the VAE in a diffusers folder's ``vae/`` (2 ** (blocks - 1)); 8 when there is none."""
    cfg = folder / "vae" / "config.json"
    try:
        blocks = json.loads(cfg.read_text(encoding="utf-8")).get("block_out_channels") if cfg.is_file() else None
    except (OSError, json.JSONDecodeError):
        blocks = None
    return 2 ** (len(blocks) - 1) if isinstance(blocks, list) and blocks else 8


def _release(name: str) -> dict:
    return configs.load(name)


def _finish(det: Detection, rel: dict) -> Detection:
    for k in ("scheduler", "prediction", "flow_shift", "max_sequence_length", "num_classes", "sigma_learned", "text_encoders", "vae"):
        if k in rel and k not in det.extras:
            det.extras[k] = rel[k]
    return det


# --------------------------------------------------------------------------- transformers


def _layout(family: str, t: dict[str, TensorInfo], original: bool):
    """``(name, blocks)``: a diffusers tensor name as this file spells it, and the number of blocks in one of
    diffusers' block lists (``transformer_blocks.``), either layout (names through :mod:`.keymaps`)."""
    if not original:
        return (lambda name: name), (lambda prefix: _count(t.keys(), re.escape(prefix) + r"(\d+)\."))
    return (lambda name: keymaps.original_name(family, name),
            lambda prefix: _count(t.keys(), re.escape(keymaps.original_prefix(family, prefix)) + r"(\d+)\."))


def _flux(t: dict[str, TensorInfo], original: bool) -> Detection:
    n, blocks = _layout("flux", t, original)
    hidden, in_ch = t[n("x_embedder.weight")].shape
    joint = t[n("context_embedder.weight")].shape[1]
    pooled = t[n("time_text_embed.text_embedder.linear_1.weight")].shape[1]
    guidance = n("time_text_embed.guidance_embedder.linear_1.weight") in t
    layers = blocks("transformer_blocks.")
    single = blocks("single_transformer_blocks.")
    head_dim = t[n("transformer_blocks.0.attn.norm_q.weight")].shape[0] if layers else 128
    out = t[n("proj_out.weight")].shape[0]
    if in_ch == 384:
        variant = "fill"
    elif in_ch == 128:
        variant = "depth"
    else:
        variant = "dev" if guidance else "schnell"
    rel = _release(f"flux-{variant}")
    cfg = rel["transformer"]
    axes = [16, 56, 56] if head_dim == 128 else [head_dim // 8, head_dim * 7 // 16, head_dim * 7 // 16]
    if sum(axes) != head_dim or any(a % 2 for a in axes):
        a = 2 * (head_dim // 8)
        b = 2 * ((head_dim - a) // 4)
        axes = [head_dim - 2 * b, b, b]
    cfg.update(
        in_channels=in_ch,
        out_channels=None if out == in_ch else out,
        num_layers=layers,
        num_single_layers=single,
        attention_head_dim=head_dim,
        num_attention_heads=hidden // head_dim,
        joint_attention_dim=joint,
        pooled_projection_dim=pooled,
        guidance_embeds=guidance,
        axes_dims_rope=axes,
    )
    det = Detection("flux", variant, "transformer", cfg, layout="original" if original else "diffusers")
    det.extras["guidance_embeds"] = guidance
    det.extras["in_channels"] = in_ch
    return _finish(det, rel)


def _sd3(t: dict[str, TensorInfo], original: bool) -> Detection:
    n, blocks = _layout("sd3", t, original)
    pe = t[n("pos_embed.proj.weight")].shape
    ctx = t[n("context_embedder.weight")].shape
    pooled = t[n("time_text_embed.text_embedder.linear_1.weight")].shape[1]
    layers = blocks("transformer_blocks.")
    dual = _indices(t.keys(), r"joint_blocks\.(\d+)\.x_block\.attn2\." if original else r"transformer_blocks\.(\d+)\.attn2\.")
    qk = n("transformer_blocks.0.attn.norm_q.weight") in t
    head_dim = t[n("transformer_blocks.0.attn.norm_q.weight")].shape[0] if qk else 64
    out = t[n("proj_out.weight")].shape[0]
    pos = t[n("pos_embed.pos_embed")].shape[1] if n("pos_embed.pos_embed") in t else 192 * 192
    hidden, in_ch, patch = pe[0], pe[1], pe[2]
    if layers == 38 or (qk and not dual):
        variant = "sd3.5-large"
    elif dual:
        variant = "sd3.5-medium"
    else:
        variant = "sd3-medium"
    rel = _release(variant)
    cfg = rel["transformer"]
    cfg.update(
        patch_size=patch,
        in_channels=in_ch,
        num_layers=layers,
        attention_head_dim=head_dim,
        num_attention_heads=hidden // head_dim,
        joint_attention_dim=ctx[1],
        caption_projection_dim=ctx[0],
        pooled_projection_dim=pooled,
        out_channels=out // (patch * patch),
        pos_embed_max_size=int(round(math.sqrt(pos))),
        dual_attention_layers=dual,
        qk_norm="rms_norm" if qk else None,
    )
    std = {"sd3-medium": (24, 1536), "sd3.5-medium": (24, 1536), "sd3.5-large": (38, 2432)}[variant]
    if (layers, hidden) != std:
        variant = f"{variant}-like"
    det = Detection("sd3", variant, "transformer", cfg, layout="original" if original else "diffusers")
    return _finish(det, rel)


def _patch_config(cfg: dict, heads: int, head_dim: int, in_ch: int, out: int, patch: int, layers: int, **more) -> None:
    """The fields every patch-embedding DiT's config (PixArt, Sana, DiT) takes from the file's shapes, and ``more``."""
    cfg.update(num_attention_heads=heads, attention_head_dim=head_dim, in_channels=in_ch, out_channels=out // (patch * patch),
               num_layers=layers, patch_size=patch, **more)


def _pixart(t: dict[str, TensorInfo], original: bool) -> Detection:
    n, blocks = _layout("pixart", t, original)
    pe = t[n("pos_embed.proj.weight")].shape
    caption = t[n("caption_projection.linear_1.weight")].shape[1]
    layers = blocks("transformer_blocks.")
    out = t[n("proj_out.weight")].shape[0]
    extra_cond = n("adaln_single.emb.resolution_embedder.linear_1.weight") in t
    tokens = sample = None  # only the original layout keeps the null caption and the position table
    if original:
        tokens = t["y_embedder.y_embedding"].shape[0] if "y_embedder.y_embedding" in t else None
        sample = int(round(math.sqrt(t["pos_embed"].shape[1]))) * pe[2] if "pos_embed" in t else None
    hidden, in_ch, patch = pe[0], pe[1], pe[2]
    alpha = extra_cond or tokens == 120
    if sample is None:
        sample = 128
    gen = "alpha" if alpha else "sigma"
    res = _res_name(sample)
    interp = (sample / 64 if sample != 64 else 1) if gen == "sigma" else None
    name = f"pixart-{gen}-{res}"
    if name not in configs.names():
        name = f"pixart-{gen}-1024"
    rel = _release(name)
    heads, hd = _heads(hidden, (72, 64))
    cfg = rel["transformer"]
    _patch_config(cfg, heads, hd, in_ch, out, patch, layers, cross_attention_dim=hidden, sample_size=sample, caption_channels=caption,
                  use_additional_conditions=bool(extra_cond), interpolation_scale=interp)
    det = Detection("pixart", f"{gen}-{res}", "transformer", cfg, layout="original" if original else "diffusers")
    if tokens:
        det.extras["max_sequence_length"] = 300 if tokens >= 300 else tokens
    if not original:
        det.extras["ambiguous"] = "a diffusers-layout PixArt file does not record its resolution; assumed 1024"
    det.extras["sigma_learned"] = cfg["out_channels"] == 2 * in_ch
    return _finish(det, rel)


def _sana(t: dict[str, TensorInfo], original: bool) -> Detection:
    n, blocks = _layout("sana", t, original)
    pe = t[n("patch_embed.proj.weight")].shape
    caption = t[n("caption_projection.linear_1.weight")].shape[1]
    layers = blocks("transformer_blocks.")
    inv = t[n("transformer_blocks.0.ff.conv_inverted.weight")].shape[0] if layers else 2 * 2.5 * pe[0]
    out = t[n("proj_out.weight")].shape[0]
    hidden, in_ch, patch = pe[0], pe[1], pe[2]
    variant = {1152: "600m", 2240: "1600m"}.get(hidden, "1600m")
    rel = _release(f"sana-{variant}")
    cfg = rel["transformer"]
    heads, hd = _heads(hidden, (32,))
    cross = {1152: (16, 72), 2240: (20, 112)}.get(hidden, (heads, hd))
    _patch_config(cfg, heads, hd, in_ch, out, patch, layers, num_cross_attention_heads=cross[0], cross_attention_head_dim=cross[1],
                  cross_attention_dim=hidden, caption_channels=caption, mlp_ratio=inv / (2 * hidden))
    if hidden not in (1152, 2240):
        variant = f"{variant}-like"
    det = Detection("sana", variant, "transformer", cfg, layout="original" if original else "diffusers")
    return _finish(det, rel)


def _dit(t: dict[str, TensorInfo], original: bool) -> Detection:
    n, blocks = _layout("dit", t, original)
    pe = t[n("pos_embed.proj.weight")].shape
    layers = blocks("transformer_blocks.")
    classes = t[n("transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight")].shape[0]
    out = t[n("proj_out_2.weight")].shape[0]
    sample = 32  # the original layout's position table tells the sample size
    if original and "pos_embed" in t:
        sample = int(round(math.sqrt(t["pos_embed"].shape[1]))) * pe[2]
    hidden, in_ch, patch = pe[0], pe[1], pe[2]
    size = {1152: "XL", 1024: "L", 768: "B", 384: "S"}.get(hidden)
    res = "512" if sample == 64 else "256"
    rel = _release(f"dit-{(size or 'xl').lower()}-2-{res}")
    heads, hd = {1152: (16, 72), 1024: (16, 64), 768: (12, 64), 384: (6, 64)}.get(hidden) or _heads(hidden, (64, 72))
    cfg = rel["transformer"]
    _patch_config(cfg, heads, hd, in_ch, out, patch, layers, sample_size=sample, num_embeds_ada_norm=1000)
    variant = f"{size or 'custom'}/{patch}-{res}"
    det = Detection("dit", variant, "transformer", cfg, layout="original" if original else "diffusers")
    det.extras["num_classes"] = classes - 1 if classes % 2 == 1 else classes
    det.extras["sigma_learned"] = cfg["out_channels"] == 2 * in_ch
    return _finish(det, rel)


# --------------------------------------------------------------------------- VAEs / text encoders


def _vae_kl(t: dict[str, TensorInfo], original: bool, family_hint: str | None = None) -> Detection:
    k = t.keys()
    if original:
        nblocks = _count(k, r"encoder\.down\.(\d+)\.")
        ch = [t[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in range(nblocks)]
        lpb = _count(k, r"encoder\.down\.0\.block\.(\d+)\.")
    else:
        nblocks = _count(k, r"encoder\.down_blocks\.(\d+)\.")
        ch = [t[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(nblocks)]
        lpb = _count(k, r"encoder\.down_blocks\.0\.resnets\.(\d+)\.")
    latent = t["decoder.conv_in.weight"].shape[1]
    if latent == 16:
        name = "vae-kl16-flux" if family_hint == "flux" else "vae-kl16-sd3"
    else:
        name = "vae-kl4-sd" if family_hint in ("dit",) else "vae-kl4-sdxl"
    rel = configs.load(name)
    cfg = rel["config"]
    groups = t["encoder.conv_norm_out.weight" if not original else "encoder.norm_out.weight"].shape[0]
    cfg.update(
        block_out_channels=ch,
        down_block_types=["DownEncoderBlock2D"] * nblocks,
        up_block_types=["UpDecoderBlock2D"] * nblocks,
        layers_per_block=lpb,
        latent_channels=latent,
        in_channels=t["encoder.conv_in.weight"].shape[1],
        out_channels=t["decoder.conv_out.weight"].shape[0],
        use_quant_conv="quant_conv.weight" in t,
        use_post_quant_conv="post_quant_conv.weight" in t,
        norm_num_groups=min(32, groups),
    )
    det = Detection(None, f"kl{latent}", "vae", cfg, layout="original" if original else "diffusers")
    det.extras["config_name"] = name
    return det


def _vae_dc(t: dict[str, TensorInfo], original: bool) -> Detection:
    rel = configs.load("dc-ae-f32c32-sana")
    det = Detection(None, "dc-ae-f32c32", "vae", rel["config"], layout="original" if original else "diffusers")
    det.extras["config_name"] = "dc-ae-f32c32-sana"
    return det


def _clip(t: dict[str, TensorInfo], hint: str | None, name: str = "") -> Detection:
    pre = "text_model." if "text_model.embeddings.token_embedding.weight" in t else ""
    vocab, hidden = t[f"{pre}embeddings.token_embedding.weight"].shape
    layers = _count(t.keys(), rf"{re.escape(pre)}encoder\.layers\.(\d+)\.")
    inter = t[f"{pre}encoder.layers.0.mlp.fc1.weight"].shape[0] if layers else 4 * hidden
    if hint in ("clip_l", "clip_g"):
        variant = hint
    elif hidden == 1280:
        variant = "clip_g"
    elif hidden == 768:
        variant = "clip_l"
    else:
        low = name.lower()
        variant = "clip_g" if ("clip_g" in low or "clip-g" in low or "bigg" in low) else "clip_l"
    rel = configs.load("te-clip-g" if variant == "clip_g" else "te-clip-l")
    cfg = rel["config"]
    heads, _ = _heads(hidden, (64,))
    proj = t["text_projection.weight"].shape[0] if "text_projection.weight" in t else hidden
    cfg.update(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=t[f"{pre}embeddings.position_embedding.weight"].shape[0],
        projection_dim=proj,
    )
    det = Detection(None, variant, "text_encoder", cfg, layout="hf")
    det.extras.update(model_class=rel["class"], tokenizer=rel["tokenizer"], has_projection="text_projection.weight" in t)
    return det


def _t5(t: dict[str, TensorInfo]) -> Detection:
    emb = t.get("shared.weight") or t.get("encoder.embed_tokens.weight")
    vocab, d_model = emb.shape
    layers = _count(t.keys(), r"encoder\.block\.(\d+)\.")
    inner = t["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]
    rel_bias = t.get("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    heads = rel_bias.shape[1] if rel_bias is not None else max(1, inner // 64)
    buckets = rel_bias.shape[0] if rel_bias is not None else 32
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in t
    d_ff = t["encoder.block.0.layer.1.DenseReluDense.wi_0.weight" if gated else "encoder.block.0.layer.1.DenseReluDense.wi.weight"].shape[0]
    rel = configs.load("te-t5-xxl")
    cfg = rel["config"]
    cfg.update(
        vocab_size=vocab,
        d_model=d_model,
        d_kv=inner // heads,
        d_ff=d_ff,
        num_layers=layers,
        num_heads=heads,
        relative_attention_num_buckets=buckets,
        feed_forward_proj="gated-gelu" if gated else "relu",
    )
    det = Detection(None, "t5", "text_encoder", cfg, layout="hf")
    det.extras.update(model_class=rel["class"], tokenizer="t5", size="xxl" if d_model == 4096 else ("xl" if d_model == 2048 else "custom"))
    return det


def _gemma(t: dict[str, TensorInfo]) -> Detection:
    pre = "model." if "model.embed_tokens.weight" in t else ""
    vocab, hidden = t[f"{pre}embed_tokens.weight"].shape
    layers = _count(t.keys(), rf"{re.escape(pre)}layers\.(\d+)\.")
    rel = configs.load("te-gemma-2-2b")
    cfg = rel["config"]
    hd = cfg["head_dim"]
    q = t[f"{pre}layers.0.self_attn.q_proj.weight"].shape[0]
    kv = t[f"{pre}layers.0.self_attn.k_proj.weight"].shape[0]
    cfg.update(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        intermediate_size=t[f"{pre}layers.0.mlp.gate_proj.weight"].shape[0],
        num_attention_heads=max(1, q // hd),
        num_key_value_heads=max(1, kv // hd),
    )
    det = Detection(None, "gemma", "text_encoder", cfg, layout="hf")
    det.extras.update(model_class=rel["class"], tokenizer="gemma", size="2b" if hidden == 2304 else "custom")
    return det


def _lora(t: dict[str, TensorInfo]) -> Detection | None:
    keys = list(t)
    down = [k for k in keys if k.endswith((".lora_down.weight", ".lora_A.weight", ".lora_A.default.weight"))]
    if not down:
        return None
    if any(k.startswith(("lora_unet_", "lora_te", "lora_transformer_")) for k in keys):
        fmt = "kohya"
    elif any(k.startswith("diffusion_model.") for k in keys):
        fmt = "comfy"
    elif any(".lora_A." in k for k in keys):
        fmt = "peft"
    else:
        fmt = "kohya"
    rank = min(t[k].shape[0] for k in down)
    target = None
    joined = " ".join(keys[:200])
    if "double_blocks" in joined or "single_transformer_blocks" in joined or "single_blocks" in joined:
        target = "flux"
    elif "joint_blocks" in joined:
        target = "sd3"
    elif "transformer_blocks" in joined and ("attn2" in joined or "adaln" in joined):
        target = "pixart"
    det = Detection(target, None, "lora", {}, layout=fmt)
    det.extras.update(format=fmt, rank=rank, modules=len(down))
    return det


# --------------------------------------------------------------------------- classification


def _strip(t: dict[str, TensorInfo], prefix: str) -> dict[str, TensorInfo]:
    n = len(prefix)
    return {k[n:]: v for k, v in t.items() if k.startswith(prefix)}


def classify(t: dict[str, TensorInfo], *, hint: str | None = None, name: str = "") -> Detection | None:
    """Classify prefix-less tensors; ``None`` when nothing matches.

    A file that has a family's marker tensors but lacks the others (or has them with impossible shapes)
    gives UNSUPPORTED_ARCHITECTURE naming what is wrong, never a raw KeyError/IndexError.
    """
    try:
        return _classify(t, hint=hint, name=name)
    except SpriteForgeError:
        raise
    except (KeyError, IndexError, ValueError, TypeError, ZeroDivisionError) as exc:
        what = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise SpriteForgeError(
            UNSUPPORTED_ARCHITECTURE,
            f"{name or 'the file'} looks like a model SpriteForge knows but is incomplete or malformed "
            f"({type(exc).__name__}: {what!s}). Check that the file downloaded completely.",
            details={"error": type(exc).__name__},
        ) from None


def _classify(t: dict[str, TensorInfo], *, hint: str | None = None, name: str = "") -> Detection | None:
    has = t.__contains__
    if has("double_blocks.0.img_attn.qkv.weight") or (has("img_in.weight") and has("txt_in.weight")):
        return _flux(t, True)
    if has("x_embedder.weight") and has("context_embedder.weight") and any(k.startswith("single_transformer_blocks.") for k in t):
        return _flux(t, False)
    if has("x_embedder.proj.weight") and has("context_embedder.weight") and any(k.startswith("joint_blocks.") for k in t):
        return _sd3(t, True)
    if has("pos_embed.proj.weight") and has("context_embedder.weight") and has("time_text_embed.text_embedder.linear_1.weight"):
        return _sd3(t, False)
    if has("x_embedder.proj.weight") and (has("attention_y_norm.weight") or has("blocks.0.mlp.inverted_conv.conv.weight")):
        return _sana(t, True)
    if has("patch_embed.proj.weight") and (has("caption_norm.weight") or has("transformer_blocks.0.ff.conv_inverted.weight")):
        return _sana(t, False)
    if has("x_embedder.proj.weight") and has("y_embedder.y_proj.fc1.weight"):
        return _pixart(t, True)
    if has("pos_embed.proj.weight") and has("adaln_single.linear.weight") and has("caption_projection.linear_1.weight"):
        return _pixart(t, False)
    if has("x_embedder.proj.weight") and has("y_embedder.embedding_table.weight"):
        return _dit(t, True)
    if has("transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight"):
        return _dit(t, False)
    if any(k.startswith(("encoder.stages.", "encoder.project_in.")) for k in t):
        return _vae_dc(t, True)
    if has("encoder.conv_in.weight") and any("to_qkv_multiscale" in k or ".conv_depth." in k for k in t):
        return _vae_dc(t, False)
    if has("encoder.down.0.block.0.conv1.weight") and has("decoder.conv_in.weight"):
        return _vae_kl(t, True, hint)
    if has("encoder.down_blocks.0.resnets.0.conv1.weight") and has("decoder.conv_in.weight"):
        return _vae_kl(t, False, hint)
    if has("text_model.embeddings.token_embedding.weight") or has("embeddings.token_embedding.weight"):
        return _clip(t, hint, name)
    if has("encoder.block.0.layer.0.SelfAttention.q.weight"):
        return _t5(t)
    if (has("embed_tokens.weight") or has("model.embed_tokens.weight")) and any("pre_feedforward_layernorm" in k for k in t):
        return _gemma(t)
    return _lora(t)


def _describe_unknown(t: dict[str, TensorInfo]) -> str:
    tops: dict[str, int] = {}
    for k in t:
        top = k.split(".")[0]
        tops[top] = tops.get(top, 0) + 1
    best = sorted(tops.items(), key=lambda kv: -kv[1])[:8]
    return f"{len(t)} tensors; top-level names: " + ", ".join(f"{k} ({n})" for k, n in best)


def detect_tensors(tensors: dict[str, TensorInfo], *, name: str = "", family_hint: str | None = None) -> Detection:
    """Detect from a ``{name: TensorInfo}`` map (a header, or a manifest)."""
    if not tensors:
        raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"{name or 'the file'} holds no tensors.")
    found: dict[str, str] = {}
    for prefix, comp in PREFIXES:
        if comp in found:
            continue
        if any(k.startswith(prefix) for k in tensors):
            found[comp] = prefix
    # a standalone transformer/VAE with a single prefix; or an all-in-one checkpoint
    if found:
        parts: dict[str, Detection] = {}
        claimed = set()
        for comp, prefix in found.items():
            sub = _strip(tensors, prefix)
            claimed.update(prefix + k for k in sub)
            d = classify(sub, hint=comp if comp in TEXT_ENCODERS else None, name=name)
            if d is not None:
                d.parameters = _params(sub)
                d.dtype = _dominant_dtype(sub)
                parts[comp] = d
        main = parts.get("transformer")
        rest = {k: v for k, v in tensors.items() if k not in claimed}
        if main is not None:
            if "vae" in parts and parts["vae"].kind == "vae":
                # re-detect the VAE with the family's default scaling
                parts["vae"] = _redetect_vae(_strip(tensors, found["vae"]), main.family)
            det = Detection(
                main.family,
                main.variant,
                "checkpoint" if len(parts) > 1 else "transformer",
                main.config,
                layout=main.layout,
                extras=dict(main.extras),
            )
            det.components = {c: found[c] for c in parts}
            det.parts = parts
            det.needs = [n for n in FAMILY_NEEDS.get(main.family, []) if n not in parts]
            det.extras["other_tensors"] = len(rest)
        elif len(parts) == 1 and not rest:
            (comp, det), = parts.items()
            det.components = {comp: found[comp]}
        else:
            det = classify(tensors, hint=family_hint, name=name)
            if det is None:
                raise SpriteForgeError(
                    UNSUPPORTED_ARCHITECTURE,
                    f"{name or 'the file'} has {', '.join(found.values())} entries but no diffusion model SpriteForge knows "
                    f"({_describe_unknown(tensors)}).{_unet_hint(tensors)}",
                    details={"prefixes": list(found.values())},
                )
    else:
        det = classify(tensors, hint=family_hint, name=name)
        if det is None:
            raise SpriteForgeError(
                UNSUPPORTED_ARCHITECTURE,
                f"{name or 'the file'} is not a model SpriteForge knows: {_describe_unknown(tensors)}.{_unet_hint(tensors)}",
                details={"tensors": len(tensors)},
            )
        if det.kind == "transformer":
            det.needs = list(FAMILY_NEEDS.get(det.family, []))
    det.parameters = _params(tensors)
    det.dtype = _dominant_dtype(tensors)
    return det


def _unet_hint(tensors) -> str:
    if any("input_blocks." in k or "down_blocks.0.attentions." in k for k in tensors):
        return " It looks like a UNet model (SD1.x/SD2/SDXL), which SpriteForge does not run: it runs DiT models (PixArt, SD3, Flux, Sana, DiT)."
    return ""


def _redetect_vae(t, family):
    d = classify(t, hint=family)
    d.parameters = _params(t)
    d.dtype = _dominant_dtype(t)
    return d


def detect_header(header: Header, *, family_hint: str | None = None) -> Detection:
    det = detect_tensors(header.tensors, name=Path(header.path).name, family_hint=family_hint)
    det.path = header.path
    return det


# --------------------------------------------------------------------------- folders


def _read_json(p: Path) -> dict:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SpriteForgeError(BAD_INPUT, f"{p} is not valid JSON ({exc.__class__.__name__}).", details={"path": str(p)}) from None


PIPELINE_FAMILY = {
    "PixArtTransformer2DModel": "pixart",
    "SD3Transformer2DModel": "sd3",
    "FluxTransformer2DModel": "flux",
    "SanaTransformer2DModel": "sana",
    "DiTTransformer2DModel": "dit",
    "Transformer2DModel": "dit",
}


def weight_files(folder: Path) -> list[Path]:
    """The safetensors weight files of one diffusers/transformers component folder."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return []
    # prefer the un-suffixed full-precision names; fall back to any
    main = [f for f in files if not re.search(r"\.(fp16|bf16|fp8)\.safetensors$", f.name)]
    return main or files


def folder_tensors(folder: Path) -> dict[str, TensorInfo]:
    out: dict[str, TensorInfo] = {}
    for f in weight_files(folder):
        out.update(read_header(f).tensors)
    return out


def _detect_folder(p: Path) -> Detection:
    if (p / "model_index.json").exists():
        index = _read_json(p / "model_index.json")
        tdir = p / "transformer"
        if not (tdir / "config.json").exists():
            raise SpriteForgeError(
                UNSUPPORTED_ARCHITECTURE,
                f"{p.name} is a diffusers folder for {index.get('_class_name', 'an unknown pipeline')} without a transformer/; SpriteForge runs DiT models only.",
            )
        cfg = _read_json(tdir / "config.json")
        cls = cfg.get("_class_name", "")
        family = PIPELINE_FAMILY.get(cls)
        tensors = folder_tensors(tdir)
        if family is None:
            raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"{p.name}: transformer class {cls!r} is not supported.")
        det = classify(tensors) if tensors else None
        variant = det.variant if (det is not None and det.family == family) else None
        pipe = index.get("_class_name", "")
        if family == "pixart":
            gen = "alpha" if "Alpha" in pipe else "sigma"
            variant = f"{gen}-{_res_name(cfg.get('sample_size', 128), _vae_factor(p))}"
        if family == "flux" and variant is None:
            variant = "dev" if cfg.get("guidance_embeds") else "schnell"
        out = Detection(family, variant, "diffusers", {k: v for k, v in cfg.items() if not k.startswith("_") or k == "_class_name"}, layout="diffusers", path=str(p))
        out.parameters = _params(tensors)
        out.dtype = _dominant_dtype(tensors) if tensors else ""
        comps = {k: v for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v and v[0]}
        out.components = {k: f"{k}/" for k in comps}
        have = set()
        for sub in comps:
            if sub.startswith("text_encoder"):
                tc = _read_json(p / sub / "config.json") if (p / sub / "config.json").exists() else {}
                mt = tc.get("model_type", "")
                if mt.startswith("t5"):
                    have.add("t5")
                elif mt.startswith("gemma"):
                    have.add("gemma")
                elif mt.startswith("clip"):
                    have.add("clip_g" if tc.get("hidden_size") == 1280 or sub == "text_encoder_2" else "clip_l")
            elif sub == "vae":
                have.add("vae")
        out.needs = [n for n in FAMILY_NEEDS[family] if n not in have]
        if det is not None:
            out.extras.update({k: v for k, v in det.extras.items() if k in ("guidance_embeds", "in_channels", "num_classes", "sigma_learned")})
        if (p / "scheduler" / "scheduler_config.json").exists():
            out.extras["scheduler"] = _read_json(p / "scheduler" / "scheduler_config.json")
        return out
    if (p / "config.json").exists():
        cfg = _read_json(p / "config.json")
        tensors = folder_tensors(p)
        det = classify(tensors, name=p.name) if tensors else None
        if det is None:
            raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"{p} holds a config.json for {cfg.get('_class_name') or cfg.get('model_type')!r} that SpriteForge does not know.")
        det.config = {**det.config, **{k: v for k, v in cfg.items() if not k.startswith("_") or k == "_class_name"}}
        _pixart_size_from_config(det, cfg, p.parent)
        det.path = str(p)
        det.parameters = _params(tensors)
        det.dtype = _dominant_dtype(tensors)
        if det.kind == "transformer":
            det.needs = list(FAMILY_NEEDS.get(det.family, []))
        det.extras["folder"] = True
        return det
    st = sorted(p.glob("*.safetensors"))
    if len(st) == 1:
        return detect(st[0])
    raise SpriteForgeError(
        UNSUPPORTED_ARCHITECTURE,
        f"{p} is a folder without model_index.json or config.json; give the model file itself or a diffusers folder.",
    )


def _with_side_config(det: Detection, p: Path) -> Detection:
    """A diffusers-layout file does not record settings that have no weights (PixArt's sample size...):
    take them from ``<name>.json`` or ``config.json`` beside it when that names the same class."""
    if det.kind not in ("transformer", "vae") or det.layout != "diffusers":
        return det
    for cand in (p.with_suffix(".json"), p.parent / "config.json"):
        if cand.is_file():
            try:
                cfg = json.loads(cand.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(cfg, dict) and cfg.get("_class_name") == det.config.get("_class_name"):
                keep = {k: v for k, v in cfg.items() if not k.startswith("_")}
                det.config.update(keep)
                det.extras["config_file"] = str(cand)
                det.extras.pop("ambiguous", None)
                _pixart_size_from_config(det, keep, cand.parent.parent)
                break
    return det


def detect(path: str | os.PathLike, *, family_hint: str | None = None) -> Detection:
    """What ``path`` (a safetensors file or a diffusers folder) is. Reads headers and JSON only."""
    p = Path(path).expanduser()
    if not p.exists():
        raise SpriteForgeError(MODEL_NOT_FOUND, f"{p} does not exist.", details={"path": str(p)})
    if p.is_dir():
        return _detect_folder(p)
    suffix = p.suffix.lower()
    if suffix in (".safetensors", ".sft"):
        return _with_side_config(detect_header(read_header(p), family_hint=family_hint), p)
    if suffix in (".ckpt", ".pt", ".pth", ".bin"):
        raise SpriteForgeError(
            UNSUPPORTED_ARCHITECTURE,
            f"{p.name} is a pickle checkpoint ({suffix}); inspecting it would mean unpickling it. "
            "Convert it to .safetensors, or load it with the torch engine (which only accepts plain tensor dicts via weights_only).",
            details={"path": str(p), "format": "pickle"},
        )
    if suffix == ".gguf":
        raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"{p.name} is a GGUF file; SpriteForge loads safetensors and diffusers folders.")
    # sniff: maybe a safetensors file with another extension
    return detect_header(read_header(p), family_hint=family_hint)
