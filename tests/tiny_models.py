"""Tiny models of every family, built with the REAL classes and saved in the REAL formats.

Shared by the loading, generation and node tests. Everything is small (hidden sizes 32-144,
1-2 layers) and builds in well under a second on a CPU. Weights are random but seeded
(``seed``), and every parameter is randomised (no zero-initialised output layers), so
"same outputs" checks are meaningful.

Stable API (keep names and signatures; add keyword arguments only):

Builders (in-memory models, deterministic per ``seed``):
    build_pixart(variant="sigma"|"alpha", seed=0)        -> PixArtTransformer2DModel
    build_sd3(variant="sd3"|"sd3.5-medium"|"sd3.5-large", seed=0) -> SD3Transformer2DModel
    build_flux(variant="dev"|"schnell"|"fill"|"depth", seed=0)   -> FluxTransformer2DModel
    build_sana(seed=0)                                    -> SanaTransformer2DModel
    build_dit(seed=0)                                     -> DiTTransformer2DModel
    build_vae(latent_channels=4|16, seed=0)              -> AutoencoderKL (4 blocks: scale factor 8)
    build_dcae(seed=0)                                    -> AutoencoderDC (tiny; scale factor 4)
    build_t5(d_model=32, seed=0), build_clip(kind="clip_l"|"clip_g", seed=0), build_gemma(seed=0)

Writers (return the Path they wrote; ``root`` is a folder, created if needed):
    make_pixart(root, layout="diffusers"|"original"|"folder", variant="sigma"|"alpha")
    make_sd3(root, layout="diffusers"|"original"|"checkpoint"|"folder", variant="sd3"|"sd3.5-medium"|"sd3.5-large")
        "checkpoint" = all-in-one file: model.diffusion_model. + first_stage_model. + text_encoders.{clip_l,clip_g,t5xxl}.transformer.
    make_flux(root, layout="diffusers"|"original"|"folder", variant="dev"|"schnell"|"fill"|"depth")
    make_sana(root, layout="diffusers"|"original"|"folder")
    make_dit(root, layout="diffusers"|"original"|"folder")
    make_zimage(root, layout="diffusers"|"original"|"folder"), make_zimage_parts(root): tests/tiny_zimage.py
    make_vae(root, latent_channels=4|16, layout="original"|"diffusers"|"folder", name=None)
    make_t5(root, d_model=32) -> t5xxl.safetensors (with the tied copy, like the release) + t5xxl_tokenizer/
    make_clip(root, kind="clip_l"|"clip_g") -> clip_l.safetensors (text_model.* keys) + <name>_tokenizer/
    make_gemma(root, embed_tokenizer=False) -> gemma.safetensors + gemma_tokenizer/ (or the tokenizer inside the file)
    make_tokenizer(root, kind="clip"|"t5"|"gemma") -> tokenizer folder (save_pretrained format)
    "folder" layouts are complete diffusers pipelines: model_index.json, transformer/, vae/,
    text_encoder*/, tokenizer*/, scheduler/ (scheduler config like the release's).

Original-layout writers use the inverse mappings below (``*_to_original``); loading them
back goes through diffusers' own converters where it has them, so a round trip checks our
key mapping against diffusers'. Tokenizers are real-format: a sentencepiece model trained
on the fly (T5/Gemma, vocab ~200) and a byte-level BPE vocab.json/merges.txt (CLIP).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

# sizes shared by the families and their text encoders
T5_DIM = 32  # caption width for PixArt/Flux; SD3 uses 64 (clip_l 32 + clip_g 32 padded)
CLIP_DIM = 32
GEMMA_DIM = 32

_TEXT = """a pixel art sprite of a knight with a sword and shield
a small red dragon breathing fire over a castle at night
the quick brown fox jumps over the lazy dog near the river bank
an isometric tile of grass water sand and stone for a game map
portrait of a wizard in a blue robe holding a glowing staff
a cute cat sitting on a window sill looking at the rain outside
treasure chest full of gold coins gems and a magic ring
a spaceship flying between planets with bright stars behind it
green slime monster bouncing through a dark forest dungeon
a robot walking in a futuristic city street with neon lights
""" * 3


def _randomize(model, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "embedding" not in name and "embed_tokens" not in name and "shared" not in name:
                std = 1.0 / max(p.shape[1] * (p[0, 0].numel() if p.dim() > 2 else 1), 1) ** 0.5
            else:
                std = 0.2
            base = 1.0 if (p.dim() == 1 and ("norm" in name or name.endswith("scale"))) else 0.0
            p.copy_(base + std * torch.randn(p.shape, generator=g))
    return model.eval()


def _save_file(sd: dict, path: Path, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared storage: give every tensor its own contiguous copy
    save_file({k: v.detach().contiguous().clone() for k, v in sd.items()}, str(path), metadata=metadata)
    return path


# --------------------------------------------------------------------------- tokenizers


def _bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _clip_tokenizer_files(d: Path):
    chars = _bytes_to_unicode()
    vocab_list = chars + [c + "</w>" for c in chars]
    merges = []
    # a few real merges learned from the text, enough to exercise the BPE
    words = re.findall(r"[a-z]+", _TEXT)
    pairs: dict = {}
    for w in words:
        for a, b in zip(w, w[1:]):
            pairs[(a, b)] = pairs.get((a, b), 0) + 1
    for (a, b), _ in sorted(pairs.items(), key=lambda kv: -kv[1])[:40]:
        merges.append(f"{a} {b}")
        vocab_list.append(a + b)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]  # last = highest id, as in CLIP (pooling uses argmax)
    vocab = {t: i for i, t in enumerate(dict.fromkeys(vocab_list))}
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def _train_spm(d: Path, kind: str) -> Path:
    import io

    import sentencepiece as spm

    d.mkdir(parents=True, exist_ok=True)
    out = io.BytesIO()
    if kind == "t5":
        kw = dict(model_type="unigram", vocab_size=200, pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    else:
        kw = dict(model_type="bpe", vocab_size=200, pad_id=0, eos_id=1, bos_id=2, unk_id=3, byte_fallback=False,
                  pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>", add_dummy_prefix=False)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_TEXT.splitlines()),
        model_writer=out,
        character_coverage=1.0,
        minloglevel=2,
        hard_vocab_limit=False,
        **kw,
    )
    name = "spiece.model" if kind == "t5" else "tokenizer.model"
    (d / name).write_bytes(out.getvalue())
    return d / name


def make_tokenizer(root, kind: str = "clip", name: str | None = None) -> Path:
    """A real-format tokenizer folder (``save_pretrained`` layout) for ``clip``, ``t5`` or ``gemma``."""
    import transformers

    from spriteforge.engines.tokenizers import tokenizer_from_spm

    d = Path(root) / (name or f"{kind}_tokenizer")
    if (d / "tokenizer_config.json").exists():
        return d
    raw = d.parent / f".{d.name}_raw"
    if kind == "clip":
        _clip_tokenizer_files(raw)
        tok = transformers.CLIPTokenizer.from_pretrained(str(raw))
    elif kind in ("t5", "gemma"):
        tok = tokenizer_from_spm(_train_spm(raw, kind), kind)
    else:
        raise ValueError(kind)
    tok.save_pretrained(str(d))
    if kind == "clip":  # keep the original two files too (what CLIPTokenizer reads)
        for f in ("vocab.json", "merges.txt"):
            if not (d / f).exists():
                (d / f).write_bytes((raw / f).read_bytes())
    if kind == "t5" and not (d / "spiece.model").exists():
        (d / "spiece.model").write_bytes((raw / "spiece.model").read_bytes())
    if kind == "gemma" and not (d / "tokenizer.model").exists():
        (d / "tokenizer.model").write_bytes((raw / "tokenizer.model").read_bytes())
    return d


def tokenizer_len(root, kind: str) -> int:
    import transformers

    d = make_tokenizer(root, kind)
    return len(transformers.AutoTokenizer.from_pretrained(str(d), local_files_only=True))


# --------------------------------------------------------------------------- text encoders


def build_clip(kind: str = "clip_l", seed: int = 0, vocab_size: int = 600, projection: bool = True):
    import transformers

    cfg = transformers.CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=CLIP_DIM,
        intermediate_size=64,
        projection_dim=CLIP_DIM,
        num_hidden_layers=1,
        num_attention_heads=1,
        max_position_embeddings=77,
        hidden_act="quick_gelu" if kind == "clip_l" else "gelu",
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    cls = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    return _randomize(cls(cfg), seed)


def build_t5(d_model: int = T5_DIM, seed: int = 0, vocab_size: int = 200):
    import transformers

    cfg = transformers.T5Config(
        vocab_size=vocab_size, d_model=d_model, d_kv=16, d_ff=64, num_layers=1, num_heads=2,
        relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=False,
    )
    return _randomize(transformers.T5EncoderModel(cfg), seed)


def build_gemma(seed: int = 0, vocab_size: int = 200):
    import transformers

    cfg = transformers.Gemma2Config(
        vocab_size=vocab_size, hidden_size=GEMMA_DIM, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, max_position_embeddings=512, sliding_window=4096,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    return _randomize(transformers.Gemma2Model(cfg), seed)


def _tok_vocab(root: Path, kind: str) -> int:
    return tokenizer_len(root, kind)


def make_clip(root, kind: str = "clip_l", seed: int = 0, projection: bool | None = None) -> Path:
    """``<kind>.safetensors`` with the released key names (``text_model.*``; clip_l without projection) + tokenizer."""
    root = Path(root)
    path = root / f"{kind}.safetensors"
    make_tokenizer(root, "clip", name=f"{kind}_tokenizer")
    if path.exists():
        return path
    vocab = _tok_vocab(root, "clip")
    m = build_clip(kind, seed, vocab_size=vocab)
    sd = m.state_dict()
    sd = {k if k.startswith(("text_model.", "text_projection")) else "text_model." + k: v for k, v in sd.items()}
    if projection is None:
        projection = kind == "clip_g"
    if not projection:
        sd.pop("text_projection.weight", None)
    sd.pop("text_model.embeddings.position_ids", None)
    return _save_file(sd, path)


def make_t5(root, d_model: int = T5_DIM, seed: int = 0, name: str = "t5xxl") -> Path:
    """``t5xxl.safetensors`` like the release (``shared.weight`` + tied ``encoder.embed_tokens.weight``) + tokenizer."""
    root = Path(root)
    path = root / f"{name}.safetensors"
    make_tokenizer(root, "t5", name=f"{name}_tokenizer")
    if path.exists():
        return path
    m = build_t5(d_model, seed, vocab_size=_tok_vocab(root, "t5"))
    sd = dict(m.state_dict())
    sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
    return _save_file(sd, path)


def make_gemma(root, seed: int = 0, embed_tokenizer: bool = False) -> Path:
    """``gemma.safetensors`` + ``gemma_tokenizer/``; ``embed_tokenizer`` stores the sentencepiece model
    inside the file as a uint8 ``spiece_model`` tensor instead (as ComfyUI's Gemma files do)."""
    root = Path(root)
    path = root / ("gemma_embedded.safetensors" if embed_tokenizer else "gemma.safetensors")
    make_tokenizer(root, "gemma", name="gemma_tokenizer")
    if path.exists():
        return path
    m = build_gemma(seed, vocab_size=_tok_vocab(root, "gemma"))
    sd = dict(m.state_dict())
    if embed_tokenizer:
        raw = (root / ".gemma_tokenizer_raw" / "tokenizer.model").read_bytes()
        sd["spiece_model"] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    return _save_file(sd, path)


# --------------------------------------------------------------------------- VAEs


def build_vae(latent_channels: int = 4, seed: int = 0, family: str | None = None):
    """Tiny KL VAE; scaling/shift factors are the release's for ``family`` (sd3 / flux / pixart / dit)."""
    from diffusers import AutoencoderKL

    sixteen = latent_channels == 16
    scale, shift = {"flux": (0.3611, 0.1159), "sd3": (1.5305, 0.0609), "dit": (0.18215, None)}.get(
        family or "", (1.5305, 0.0609) if sixteen else (0.13025, None))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 32, 32), layers_per_block=1, latent_channels=latent_channels, norm_num_groups=32,
        sample_size=64, scaling_factor=scale, shift_factor=shift,
        use_quant_conv=not sixteen, use_post_quant_conv=not sixteen,
    )
    return _randomize(vae, seed)


def build_dcae(seed: int = 0):
    from diffusers import AutoencoderDC

    vae = AutoencoderDC(
        in_channels=3, latent_channels=32, attention_head_dim=8,
        encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"), decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 16, 32), decoder_block_out_channels=(8, 16, 32),
        encoder_layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1),
        encoder_qkv_multiscales=((), (), (5,)), decoder_qkv_multiscales=((), (), (5,)),
        upsample_block_type="interpolate", downsample_block_type="Conv", decoder_norm_types="rms_norm",
        decoder_act_fns="silu", scaling_factor=0.41407,
    )
    return _randomize(vae, seed)


def vae_to_original(sd: dict, num_blocks: int = 4) -> dict:
    """diffusers AutoencoderKL keys -> original LDM keys (inverse of diffusers' convert_ldm_vae_checkpoint)."""
    out = {}
    for k, v in sd.items():
        n = k
        n = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", n)
        n = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.", r"encoder.down.\1.downsample.conv.", n)
        n = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: f"decoder.up.{num_blocks - 1 - int(m.group(1))}.block.{m.group(2)}.", n)
        n = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.", lambda m: f"decoder.up.{num_blocks - 1 - int(m.group(1))}.upsample.conv.", n)
        n = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m.group(1)) + 1}.", n)
        if "mid_block.attentions.0." in n:
            n = n.replace("mid_block.attentions.0.", "mid.attn_1.")
            n = n.replace("group_norm.", "norm.").replace("to_q.", "q.").replace("to_k.", "k.").replace("to_v.", "v.").replace("to_out.0.", "proj_out.")
            if v.dim() == 2:
                v = v[:, :, None, None]
        n = n.replace("conv_shortcut.", "nin_shortcut.").replace("conv_norm_out.", "norm_out.")
        out[n] = v
    return out


def make_vae(root, latent_channels: int = 4, layout: str = "original", seed: int = 0, name: str | None = None) -> Path:
    root = Path(root)
    vae = build_vae(latent_channels, seed)
    if layout == "folder":
        d = root / (name or f"vae{latent_channels}")
        if not (d / "config.json").exists():
            vae.save_pretrained(str(d))
        return d
    path = root / (name or f"vae{latent_channels}_{layout}.safetensors")
    if path.exists():
        return path
    sd = vae.state_dict()
    if layout == "original":
        sd = vae_to_original(sd)
    return _save_file(sd, path)


# --------------------------------------------------------------------------- transformers


def build_pixart(variant: str = "sigma", seed: int = 0):
    from diffusers import PixArtTransformer2DModel

    alpha = variant == "alpha"
    m = PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=144, sample_size=128, patch_size=2, caption_channels=T5_DIM,
        interpolation_scale=None if alpha else 2, use_additional_conditions=alpha, norm_num_groups=32,
    )
    return _randomize(m, seed)


def pixart_to_original(sd: dict, tokens: int = 300, hidden: int = 144, caption: int = T5_DIM, n_pos: int = 64 * 64) -> dict:
    """diffusers PixArtTransformer2DModel keys -> PixArt repo keys (sample_size 128 => a 64x64 pos_embed table)."""
    out = {"pos_embed": torch.zeros(1, n_pos, hidden), "y_embedder.y_embedding": torch.randn(tokens, caption)}
    ren = {
        "pos_embed.proj.": "x_embedder.proj.",
        "adaln_single.emb.timestep_embedder.linear_1.": "t_embedder.mlp.0.",
        "adaln_single.emb.timestep_embedder.linear_2.": "t_embedder.mlp.2.",
        "adaln_single.emb.resolution_embedder.linear_1.": "csize_embedder.mlp.0.",
        "adaln_single.emb.resolution_embedder.linear_2.": "csize_embedder.mlp.2.",
        "adaln_single.emb.aspect_ratio_embedder.linear_1.": "ar_embedder.mlp.0.",
        "adaln_single.emb.aspect_ratio_embedder.linear_2.": "ar_embedder.mlp.2.",
        "adaln_single.linear.": "t_block.1.",
        "caption_projection.linear_1.": "y_embedder.y_proj.fc1.",
        "caption_projection.linear_2.": "y_embedder.y_proj.fc2.",
        "proj_out.": "final_layer.linear.",
    }
    for k, v in sd.items():
        if k == "scale_shift_table":
            out["final_layer.scale_shift_table"] = v
            continue
        m = re.match(r"transformer_blocks\.(\d+)\.(.*)", k)
        if m:
            i, rest = m.groups()
            b = f"blocks.{i}."
            part = rest.rsplit(".", 1)[-1]
            if rest.startswith("attn1.to_q."):
                out[f"{b}attn.qkv.{part}"] = torch.cat([v, sd[k.replace("to_q", "to_k")], sd[k.replace("to_q", "to_v")]])
            elif rest.startswith("attn2.to_k."):
                out[f"{b}cross_attn.kv_linear.{part}"] = torch.cat([v, sd[k.replace("to_k", "to_v")]])
            elif rest.startswith(("attn1.to_k.", "attn1.to_v.", "attn2.to_v.")):
                continue
            else:
                r = (rest.replace("attn1.to_out.0.", "attn.proj.").replace("attn2.to_q.", "cross_attn.q_linear.")
                     .replace("attn2.to_out.0.", "cross_attn.proj.").replace("ff.net.0.proj.", "mlp.fc1.").replace("ff.net.2.", "mlp.fc2."))
                out[b + r] = v
            continue
        for a, o in ren.items():
            if k.startswith(a):
                out[o + k[len(a):]] = v
                break
        else:
            raise KeyError(k)
    return out


def build_sd3(variant: str = "sd3", seed: int = 0):
    from diffusers import SD3Transformer2DModel

    qk = variant != "sd3"
    m = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, num_layers=2,
        attention_head_dim=32 if qk else 64, num_attention_heads=2 if qk else 1,
        joint_attention_dim=2 * CLIP_DIM, caption_projection_dim=64, pooled_projection_dim=2 * CLIP_DIM, out_channels=16,
        pos_embed_max_size=16, dual_attention_layers=(0,) if variant == "sd3.5-medium" else (), qk_norm="rms_norm" if qk else None,
    )
    return _randomize(m, seed)


def sd3_to_original(sd: dict) -> dict:
    """diffusers SD3Transformer2DModel keys -> SAI MMDiT keys (without ``model.diffusion_model.``)."""
    n_layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("transformer_blocks."))
    out = {}

    def swap(w):
        scale, shift = w.chunk(2, dim=0)
        return torch.cat([shift, scale])

    top = {
        "pos_embed.pos_embed": "pos_embed", "pos_embed.proj.weight": "x_embedder.proj.weight", "pos_embed.proj.bias": "x_embedder.proj.bias",
        "time_text_embed.timestep_embedder.linear_1.weight": "t_embedder.mlp.0.weight", "time_text_embed.timestep_embedder.linear_1.bias": "t_embedder.mlp.0.bias",
        "time_text_embed.timestep_embedder.linear_2.weight": "t_embedder.mlp.2.weight", "time_text_embed.timestep_embedder.linear_2.bias": "t_embedder.mlp.2.bias",
        "time_text_embed.text_embedder.linear_1.weight": "y_embedder.mlp.0.weight", "time_text_embed.text_embedder.linear_1.bias": "y_embedder.mlp.0.bias",
        "time_text_embed.text_embedder.linear_2.weight": "y_embedder.mlp.2.weight", "time_text_embed.text_embedder.linear_2.bias": "y_embedder.mlp.2.bias",
        "context_embedder.weight": "context_embedder.weight", "context_embedder.bias": "context_embedder.bias",
        "proj_out.weight": "final_layer.linear.weight", "proj_out.bias": "final_layer.linear.bias",
    }
    for k, v in sd.items():
        if k in top:
            out[top[k]] = v
        elif k.startswith("norm_out.linear."):
            out["final_layer.adaLN_modulation.1." + k.rsplit(".", 1)[1]] = swap(v)
    for i in range(n_layers):
        t, j = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
        last = i == n_layers - 1
        for part in ("weight", "bias"):
            out[f"{j}x_block.attn.qkv.{part}"] = torch.cat([sd[f"{t}attn.to_{c}.{part}"] for c in "qkv"])
            out[f"{j}context_block.attn.qkv.{part}"] = torch.cat([sd[f"{t}attn.add_{c}_proj.{part}"] for c in "qkv"])
            out[f"{j}x_block.attn.proj.{part}"] = sd[f"{t}attn.to_out.0.{part}"]
            out[f"{j}x_block.adaLN_modulation.1.{part}"] = sd[f"{t}norm1.linear.{part}"]
            w = sd[f"{t}norm1_context.linear.{part}"]
            out[f"{j}context_block.adaLN_modulation.1.{part}"] = swap(w) if last else w
            out[f"{j}x_block.mlp.fc1.{part}"] = sd[f"{t}ff.net.0.proj.{part}"]
            out[f"{j}x_block.mlp.fc2.{part}"] = sd[f"{t}ff.net.2.{part}"]
            if not last:
                out[f"{j}context_block.attn.proj.{part}"] = sd[f"{t}attn.to_add_out.{part}"]
                out[f"{j}context_block.mlp.fc1.{part}"] = sd[f"{t}ff_context.net.0.proj.{part}"]
                out[f"{j}context_block.mlp.fc2.{part}"] = sd[f"{t}ff_context.net.2.{part}"]
            if f"{t}attn2.to_q.{part}" in sd:
                out[f"{j}x_block.attn2.qkv.{part}"] = torch.cat([sd[f"{t}attn2.to_{c}.{part}"] for c in "qkv"])
                out[f"{j}x_block.attn2.proj.{part}"] = sd[f"{t}attn2.to_out.0.{part}"]
        if f"{t}attn.norm_q.weight" in sd:
            out[f"{j}x_block.attn.ln_q.weight"] = sd[f"{t}attn.norm_q.weight"]
            out[f"{j}x_block.attn.ln_k.weight"] = sd[f"{t}attn.norm_k.weight"]
            out[f"{j}context_block.attn.ln_q.weight"] = sd[f"{t}attn.norm_added_q.weight"]
            out[f"{j}context_block.attn.ln_k.weight"] = sd[f"{t}attn.norm_added_k.weight"]
        if f"{t}attn2.norm_q.weight" in sd:
            out[f"{j}x_block.attn2.ln_q.weight"] = sd[f"{t}attn2.norm_q.weight"]
            out[f"{j}x_block.attn2.ln_k.weight"] = sd[f"{t}attn2.norm_k.weight"]
    return out


def build_flux(variant: str = "dev", seed: int = 0):
    from diffusers import FluxTransformer2DModel

    in_ch = {"fill": 384, "depth": 128}.get(variant, 64)
    m = FluxTransformer2DModel(
        patch_size=1, in_channels=in_ch, out_channels=64 if in_ch != 64 else None, num_layers=1, num_single_layers=1,
        attention_head_dim=32, num_attention_heads=2, joint_attention_dim=T5_DIM, pooled_projection_dim=CLIP_DIM,
        guidance_embeds=variant != "schnell", axes_dims_rope=(4, 14, 14),
    )
    return _randomize(m, seed)


def flux_to_original(sd: dict) -> dict:
    """diffusers FluxTransformer2DModel keys -> BFL keys."""
    out = {}

    def swap(w):
        scale, shift = w.chunk(2, dim=0)
        return torch.cat([shift, scale])

    top = {
        "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer", "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
        "time_text_embed.text_embedder.linear_1": "vector_in.in_layer", "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
        "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
        "context_embedder": "txt_in", "x_embedder": "img_in", "proj_out": "final_layer.linear",
    }
    for k, v in sd.items():
        base, part = k.rsplit(".", 1)
        if base in top:
            out[f"{top[base]}.{part}"] = v
        elif base == "norm_out.linear":
            out[f"final_layer.adaLN_modulation.1.{part}"] = swap(v)
    nd = 1 + max([int(k.split(".")[1]) for k in sd if k.startswith("transformer_blocks.")], default=-1)
    ns = 1 + max([int(k.split(".")[1]) for k in sd if k.startswith("single_transformer_blocks.")], default=-1)
    for i in range(nd):
        t, b = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for part in ("weight", "bias"):
            out[f"{b}img_mod.lin.{part}"] = sd[f"{t}norm1.linear.{part}"]
            out[f"{b}txt_mod.lin.{part}"] = sd[f"{t}norm1_context.linear.{part}"]
            out[f"{b}img_attn.qkv.{part}"] = torch.cat([sd[f"{t}attn.to_{c}.{part}"] for c in "qkv"])
            out[f"{b}txt_attn.qkv.{part}"] = torch.cat([sd[f"{t}attn.add_{c}_proj.{part}"] for c in "qkv"])
            out[f"{b}img_mlp.0.{part}"] = sd[f"{t}ff.net.0.proj.{part}"]
            out[f"{b}img_mlp.2.{part}"] = sd[f"{t}ff.net.2.{part}"]
            out[f"{b}txt_mlp.0.{part}"] = sd[f"{t}ff_context.net.0.proj.{part}"]
            out[f"{b}txt_mlp.2.{part}"] = sd[f"{t}ff_context.net.2.{part}"]
            out[f"{b}img_attn.proj.{part}"] = sd[f"{t}attn.to_out.0.{part}"]
            out[f"{b}txt_attn.proj.{part}"] = sd[f"{t}attn.to_add_out.{part}"]
        out[f"{b}img_attn.norm.query_norm.scale"] = sd[f"{t}attn.norm_q.weight"]
        out[f"{b}img_attn.norm.key_norm.scale"] = sd[f"{t}attn.norm_k.weight"]
        out[f"{b}txt_attn.norm.query_norm.scale"] = sd[f"{t}attn.norm_added_q.weight"]
        out[f"{b}txt_attn.norm.key_norm.scale"] = sd[f"{t}attn.norm_added_k.weight"]
    for i in range(ns):
        t, b = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for part in ("weight", "bias"):
            out[f"{b}modulation.lin.{part}"] = sd[f"{t}norm.linear.{part}"]
            out[f"{b}linear1.{part}"] = torch.cat([sd[f"{t}attn.to_{c}.{part}"] for c in "qkv"] + [sd[f"{t}proj_mlp.{part}"]])
            out[f"{b}linear2.{part}"] = sd[f"{t}proj_out.{part}"]
        out[f"{b}norm.query_norm.scale"] = sd[f"{t}attn.norm_q.weight"]
        out[f"{b}norm.key_norm.scale"] = sd[f"{t}attn.norm_k.weight"]
    return out


def build_sana(seed: int = 0):
    from diffusers import SanaTransformer2DModel

    m = SanaTransformer2DModel(
        in_channels=32, out_channels=32, num_attention_heads=2, attention_head_dim=32, num_layers=2,
        num_cross_attention_heads=2, cross_attention_head_dim=32, cross_attention_dim=64, caption_channels=GEMMA_DIM,
        mlp_ratio=2.5, sample_size=8, patch_size=1,
    )
    return _randomize(m, seed)


def sana_to_original(sd: dict, tokens: int = 300, n_pos: int = 64) -> dict:
    """diffusers SanaTransformer2DModel keys -> NVlabs Sana keys (inverse of diffusers' converter)."""
    hidden = sd["patch_embed.proj.weight"].shape[0]
    caption = sd["caption_projection.linear_1.weight"].shape[1]
    out = {"pos_embed": torch.zeros(1, n_pos, hidden), "y_embedder.y_embedding": torch.zeros(tokens, caption)}
    top = {
        "patch_embed.proj": "x_embedder.proj", "time_embed.emb.timestep_embedder.linear_1": "t_embedder.mlp.0",
        "time_embed.emb.timestep_embedder.linear_2": "t_embedder.mlp.2", "time_embed.linear": "t_block.1",
        "caption_projection.linear_1": "y_embedder.y_proj.fc1", "caption_projection.linear_2": "y_embedder.y_proj.fc2",
        "caption_norm": "attention_y_norm", "proj_out": "final_layer.linear",
    }
    blk = {
        "attn1.to_out.0": "attn.proj", "attn2.to_q": "cross_attn.q_linear", "attn2.to_out.0": "cross_attn.proj",
        "ff.conv_inverted": "mlp.inverted_conv.conv", "ff.conv_depth": "mlp.depth_conv.conv", "ff.conv_point": "mlp.point_conv.conv",
    }
    for k, v in sd.items():
        if k == "scale_shift_table":
            out["final_layer.scale_shift_table"] = v
            continue
        base, part = k.rsplit(".", 1)
        if base in top:
            out[f"{top[base]}.{part}"] = v
            continue
        m = re.match(r"transformer_blocks\.(\d+)\.(.*)$", base)
        if not m:
            if k.startswith("transformer_blocks.") and k.endswith("scale_shift_table"):
                out["blocks." + k.split(".")[1] + ".scale_shift_table"] = v
                continue
            raise KeyError(k)
        i, rest = m.groups()
        b = f"blocks.{i}."
        if rest == "attn1.to_q":
            out[f"{b}attn.qkv.{part}"] = torch.cat([v, sd[k.replace("to_q", "to_k")], sd[k.replace("to_q", "to_v")]])
        elif rest == "attn2.to_k":
            out[f"{b}cross_attn.kv_linear.{part}"] = torch.cat([v, sd[k.replace("to_k", "to_v")]])
        elif rest in ("attn1.to_k", "attn1.to_v", "attn2.to_v"):
            continue
        elif rest in blk:
            out[f"{b}{blk[rest]}.{part}"] = v
        else:
            raise KeyError(k)
    return out


def build_dit(seed: int = 0):
    from diffusers import DiTTransformer2DModel

    m = DiTTransformer2DModel(
        num_attention_heads=1, attention_head_dim=64, in_channels=4, out_channels=8, num_layers=2, sample_size=32, patch_size=2,
        num_embeds_ada_norm=1000,
    )
    m = _randomize(m, seed)
    # the original DiT has ONE timestep/class embedder; diffusers copies it into every block
    first = m.transformer_blocks[0].norm1.emb.state_dict()
    for blk in m.transformer_blocks[1:]:
        blk.norm1.emb.load_state_dict(first)
    return m


def dit_to_original(sd: dict, n_pos: int = 256) -> dict:
    hidden = sd["pos_embed.proj.weight"].shape[0]
    out = {"pos_embed": torch.randn(1, n_pos, hidden)}
    e = "transformer_blocks.0.norm1.emb."
    out["t_embedder.mlp.0.weight"] = sd[e + "timestep_embedder.linear_1.weight"]
    out["t_embedder.mlp.0.bias"] = sd[e + "timestep_embedder.linear_1.bias"]
    out["t_embedder.mlp.2.weight"] = sd[e + "timestep_embedder.linear_2.weight"]
    out["t_embedder.mlp.2.bias"] = sd[e + "timestep_embedder.linear_2.bias"]
    out["y_embedder.embedding_table.weight"] = sd[e + "class_embedder.embedding_table.weight"]
    for k, v in sd.items():
        base, part = k.rsplit(".", 1)
        if base == "pos_embed.proj":
            out[f"x_embedder.proj.{part}"] = v
        elif base == "proj_out_1":
            out[f"final_layer.adaLN_modulation.1.{part}"] = v
        elif base == "proj_out_2":
            out[f"final_layer.linear.{part}"] = v
        m = re.match(r"transformer_blocks\.(\d+)\.(.*)$", base)
        if not m:
            continue
        i, rest = m.groups()
        b = f"blocks.{i}."
        if rest == "norm1.linear":
            out[f"{b}adaLN_modulation.1.{part}"] = v
        elif rest == "attn1.to_q":
            out[f"{b}attn.qkv.{part}"] = torch.cat([v, sd[k.replace("to_q", "to_k")], sd[k.replace("to_q", "to_v")]])
        elif rest == "attn1.to_out.0":
            out[f"{b}attn.proj.{part}"] = v
        elif rest == "ff.net.0.proj":
            out[f"{b}mlp.fc1.{part}"] = v
        elif rest == "ff.net.2":
            out[f"{b}mlp.fc2.{part}"] = v
    return out


# --------------------------------------------------------------------------- pipelines (diffusers folders)


def _scheduler(family: str, variant: str = ""):
    import diffusers

    from spriteforge.models import configs

    name = {"pixart": f"pixart-{'alpha' if variant == 'alpha' else 'sigma'}-1024", "sd3": "sd3-medium", "flux": f"flux-{variant or 'dev'}",
            "sana": "sana-600m", "dit": "dit-xl-2-256"}[family]
    cfg = configs.load(name)["scheduler"]
    cls = getattr(diffusers, cfg.pop("_class_name"))
    return cls.from_config(cfg)


def _write_pipeline(d: Path, pipe_class: str, parts: dict) -> Path:
    """parts: name -> (library, object) ; objects with save_pretrained."""
    d.mkdir(parents=True, exist_ok=True)
    index = {"_class_name": pipe_class, "_diffusers_version": "0.42.1"}
    for name, obj in parts.items():
        if obj is None:
            index[name] = [None, None]
            continue
        lib = "diffusers" if type(obj).__module__.startswith("diffusers") else "transformers"
        index[name] = [lib, type(obj).__name__]
        obj.save_pretrained(str(d / name))
    (d / "model_index.json").write_text(json.dumps(index, indent=2))
    return d


def _load_tok(root: Path, kind: str):
    import transformers

    d = make_tokenizer(root, kind)
    cls = {"clip": transformers.CLIPTokenizer, "t5": transformers.T5Tokenizer, "gemma": transformers.GemmaTokenizer}[kind]
    return cls.from_pretrained(str(d), local_files_only=True)


def _done(p: Path) -> bool:
    return p.exists() and (p.is_file() or (p / "model_index.json").exists() or (p / "config.json").exists())


def _single_file(path: Path, model, layout: str, to_original) -> Path:
    """``model``'s weights as one safetensors file: diffusers keys, or the original repo's through ``to_original``."""
    if _done(path):
        return path
    sd = model.state_dict()
    return _save_file(to_original(sd) if layout == "original" else sd, path)


def make_pixart(root, layout: str = "diffusers", variant: str = "sigma", seed: int = 0) -> Path:
    """``layout``: ``diffusers`` (single transformer file, diffusers keys), ``original`` (PixArt repo keys, with
    pos_embed and y_embedding), ``folder`` (full diffusers pipeline)."""
    root = Path(root)
    m = build_pixart(variant, seed)
    if layout == "folder":
        d = root / f"pixart-{variant}-pipe"
        if _done(d):
            return d
        te = build_t5(T5_DIM, seed + 1, vocab_size=tokenizer_len(root, "t5"))
        return _write_pipeline(d, "PixArtAlphaPipeline" if variant == "alpha" else "PixArtSigmaPipeline", {
            "transformer": m, "vae": build_vae(4, seed + 2), "text_encoder": te, "tokenizer": _load_tok(root, "t5"),
            "scheduler": _scheduler("pixart", variant)})
    return _single_file(root / f"pixart-{variant}-{layout}.safetensors", m, layout, lambda sd: pixart_to_original(sd, tokens=120 if variant == "alpha" else 300))


def make_sd3(root, layout: str = "diffusers", variant: str = "sd3", seed: int = 0) -> Path:
    root = Path(root)
    m = build_sd3(variant, seed)
    if layout == "folder":
        d = root / f"{variant}-pipe"
        if _done(d):
            return d
        nclip = tokenizer_len(root, "clip")
        return _write_pipeline(d, "StableDiffusion3Pipeline", {
            "transformer": m, "vae": build_vae(16, seed + 2),
            "text_encoder": build_clip("clip_l", seed + 3, vocab_size=nclip), "tokenizer": _load_tok(root, "clip"),
            "text_encoder_2": build_clip("clip_g", seed + 4, vocab_size=nclip), "tokenizer_2": _load_tok(root, "clip"),
            "text_encoder_3": build_t5(2 * CLIP_DIM, seed + 1, vocab_size=tokenizer_len(root, "t5")), "tokenizer_3": _load_tok(root, "t5"),
            "scheduler": _scheduler("sd3")})
    path = root / f"{variant}-{layout}.safetensors"
    if _done(path):
        return path
    sd = m.state_dict()
    if layout == "diffusers":
        return _save_file(sd, path)
    sd = {"model.diffusion_model." + k: v for k, v in sd3_to_original(sd).items()}
    if layout == "checkpoint":
        sd.update({"first_stage_model." + k: v for k, v in vae_to_original(build_vae(16, seed + 2).state_dict()).items()})
        nclip = tokenizer_len(root, "clip")
        for key, mod in (("clip_l", build_clip("clip_l", seed + 3, vocab_size=nclip)), ("clip_g", build_clip("clip_g", seed + 4, vocab_size=nclip))):
            for k, v in mod.state_dict().items():
                if key == "clip_l" and k.startswith("text_projection"):
                    continue
                sd[f"text_encoders.{key}.transformer.{k}"] = v
        t5 = build_t5(2 * CLIP_DIM, seed + 1, vocab_size=tokenizer_len(root, "t5")).state_dict()
        for k, v in t5.items():
            sd["text_encoders.t5xxl.transformer." + k] = v
    return _save_file(sd, path)


def make_flux(root, layout: str = "diffusers", variant: str = "dev", seed: int = 0) -> Path:
    root = Path(root)
    m = build_flux(variant, seed)
    if layout == "folder":
        d = root / f"flux-{variant}-pipe"
        if _done(d):
            return d
        pipe = {"fill": "FluxFillPipeline", "depth": "FluxControlPipeline"}.get(variant, "FluxPipeline")
        return _write_pipeline(d, pipe, {
            "transformer": m, "vae": build_vae(16, seed + 2, family="flux"),
            "text_encoder": build_clip("clip_l", seed + 3, vocab_size=tokenizer_len(root, "clip"), projection=False), "tokenizer": _load_tok(root, "clip"),
            "text_encoder_2": build_t5(T5_DIM, seed + 1, vocab_size=tokenizer_len(root, "t5")), "tokenizer_2": _load_tok(root, "t5"),
            "scheduler": _scheduler("flux", variant)})
    return _single_file(root / f"flux-{variant}-{layout}.safetensors", m, layout, flux_to_original)


def make_sana(root, layout: str = "diffusers", seed: int = 0) -> Path:
    root = Path(root)
    m = build_sana(seed)
    if layout == "folder":
        d = root / "sana-pipe"
        if _done(d):
            return d
        return _write_pipeline(d, "SanaPipeline", {
            "transformer": m, "vae": build_dcae(seed + 2),
            "text_encoder": build_gemma(seed + 1, vocab_size=tokenizer_len(root, "gemma")), "tokenizer": _load_tok(root, "gemma"),
            "scheduler": _scheduler("sana")})
    return _single_file(root / f"sana-{layout}.safetensors", m, layout, sana_to_original)


def make_dit(root, layout: str = "diffusers", seed: int = 0) -> Path:
    root = Path(root)
    m = build_dit(seed)
    if layout == "folder":
        d = root / "dit-pipe"
        if _done(d):
            return d
        return _write_pipeline(d, "DiTPipeline", {"transformer": m, "vae": build_vae(4, seed + 2, family="dit"), "scheduler": _scheduler("dit")})
    return _single_file(root / f"dit-{layout}.safetensors", m, layout, dit_to_original)


from spriteforge.tests.tiny_zimage import build_zimage, make_zimage, make_zimage_parts  # noqa: E402,F401  (tests/tiny_zimage.py)
def make_flux2(root, **kw) -> Path:  # FLUX.2's tiny real-format models live in tests/tiny_flux2.py
    from spriteforge.tests.tiny_flux2 import make_flux2 as make

    return make(root, **kw)
from spriteforge.tests.tiny_qwenimage import build_qwenimage, make_qwenimage  # noqa: E402,F401  (Qwen-Image: tests/tiny_qwenimage.py)
from spriteforge.tests.tiny_krea2 import build_krea2, make_krea2  # noqa: E402,F401  (Krea 2: tests/tiny_krea2.py)
from spriteforge.tests.tiny_qwen21 import make_qwenimage21  # noqa: E402,F401  (Qwen-Image 2.1: tests/tiny_qwen21.py)
