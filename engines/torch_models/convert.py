"""Original checkpoint layouts -> the diffusers/transformers classes SpriteForge runs.

Every converter takes a ``{name: tensor}`` dict of prefix-less original keys and returns
a new dict of diffusers keys. Tensors are only sliced (``chunk``/``split`` give views) or
passed through, never copied, so converting a memory-mapped state dict costs no memory;
the same code runs on ``meta`` tensors to check key sets and shapes of released files
without their data.

Where diffusers has a single-file converter that works for any size, it is used
(SD3/SD3.5, Sana, the LDM KL VAE, DC-AE). Flux's hard-codes the 3072 hidden width, so a
size-generic copy lives here (checked against diffusers' on the real key manifests).
PixArt and DiT have none in diffusers; their mappings are written out here.
"""

from __future__ import annotations

import re

import torch

from ...errors import UNSUPPORTED_ARCHITECTURE, SpriteForgeError


def _layers(sd, pattern: str) -> int:
    rx = re.compile(pattern)
    nums = {int(m.group(1)) for k in sd if (m := rx.match(k))}
    return max(nums) + 1 if nums else 0


def _move(src: dict, dst: dict, old: str, new: str, required: bool = True) -> None:
    for suffix in (".weight", ".bias"):
        if old + suffix in src:
            dst[new + suffix] = src.pop(old + suffix)
        elif required and suffix == ".weight":
            raise KeyError(old + suffix)


def _swap_scale_shift(w: torch.Tensor) -> torch.Tensor:
    shift, scale = w.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)


# --------------------------------------------------------------------------- PixArt


def pixart_to_diffusers(sd: dict) -> dict:
    """PixArt-α/Σ original (``blocks.N.attn.qkv`` ...) -> PixArtTransformer2DModel keys."""
    sd = dict(sd)
    out: dict = {}
    sd.pop("pos_embed", None)  # fixed sin-cos table; diffusers recomputes it
    sd.pop("y_embedder.y_embedding", None)  # learned null caption; diffusers encodes "" instead
    _move(sd, out, "x_embedder.proj", "pos_embed.proj")
    _move(sd, out, "t_embedder.mlp.0", "adaln_single.emb.timestep_embedder.linear_1")
    _move(sd, out, "t_embedder.mlp.2", "adaln_single.emb.timestep_embedder.linear_2")
    _move(sd, out, "t_block.1", "adaln_single.linear")
    if "csize_embedder.mlp.0.weight" in sd:  # PixArt-α 1024 micro-conditions
        _move(sd, out, "csize_embedder.mlp.0", "adaln_single.emb.resolution_embedder.linear_1")
        _move(sd, out, "csize_embedder.mlp.2", "adaln_single.emb.resolution_embedder.linear_2")
        _move(sd, out, "ar_embedder.mlp.0", "adaln_single.emb.aspect_ratio_embedder.linear_1")
        _move(sd, out, "ar_embedder.mlp.2", "adaln_single.emb.aspect_ratio_embedder.linear_2")
    _move(sd, out, "y_embedder.y_proj.fc1", "caption_projection.linear_1")
    _move(sd, out, "y_embedder.y_proj.fc2", "caption_projection.linear_2")
    for i in range(_layers(sd, r"blocks\.(\d+)\.")):
        b, n = f"blocks.{i}.", f"transformer_blocks.{i}."
        out[n + "scale_shift_table"] = sd.pop(b + "scale_shift_table")
        for part in ("weight", "bias"):
            q, k, v = sd.pop(f"{b}attn.qkv.{part}").chunk(3, dim=0)
            out[f"{n}attn1.to_q.{part}"], out[f"{n}attn1.to_k.{part}"], out[f"{n}attn1.to_v.{part}"] = q, k, v
            k2, v2 = sd.pop(f"{b}cross_attn.kv_linear.{part}").chunk(2, dim=0)
            out[f"{n}attn2.to_k.{part}"], out[f"{n}attn2.to_v.{part}"] = k2, v2
        _move(sd, out, b + "attn.proj", n + "attn1.to_out.0")
        _move(sd, out, b + "cross_attn.q_linear", n + "attn2.to_q")
        _move(sd, out, b + "cross_attn.proj", n + "attn2.to_out.0")
        _move(sd, out, b + "mlp.fc1", n + "ff.net.0.proj")
        _move(sd, out, b + "mlp.fc2", n + "ff.net.2")
    out["scale_shift_table"] = sd.pop("final_layer.scale_shift_table")
    _move(sd, out, "final_layer.linear", "proj_out")
    _leftover(sd, "PixArt")
    return out


# --------------------------------------------------------------------------- DiT


def dit_to_diffusers(sd: dict) -> dict:
    """facebookresearch DiT (class-conditional) -> DiTTransformer2DModel keys.

    diffusers gives every block its own timestep/class embedder; they are the same
    tensors here (shared, not copied).
    """
    sd = dict(sd)
    out: dict = {}
    sd.pop("pos_embed", None)
    _move(sd, out, "x_embedder.proj", "pos_embed.proj")
    t1w, t1b = sd.pop("t_embedder.mlp.0.weight"), sd.pop("t_embedder.mlp.0.bias")
    t2w, t2b = sd.pop("t_embedder.mlp.2.weight"), sd.pop("t_embedder.mlp.2.bias")
    table = sd.pop("y_embedder.embedding_table.weight")
    for i in range(_layers(sd, r"blocks\.(\d+)\.")):
        b, n = f"blocks.{i}.", f"transformer_blocks.{i}."
        e = n + "norm1.emb."
        out[e + "timestep_embedder.linear_1.weight"], out[e + "timestep_embedder.linear_1.bias"] = t1w, t1b
        out[e + "timestep_embedder.linear_2.weight"], out[e + "timestep_embedder.linear_2.bias"] = t2w, t2b
        out[e + "class_embedder.embedding_table.weight"] = table
        _move(sd, out, b + "adaLN_modulation.1", n + "norm1.linear")
        for part in ("weight", "bias"):
            q, k, v = sd.pop(f"{b}attn.qkv.{part}").chunk(3, dim=0)
            out[f"{n}attn1.to_q.{part}"], out[f"{n}attn1.to_k.{part}"], out[f"{n}attn1.to_v.{part}"] = q, k, v
        _move(sd, out, b + "attn.proj", n + "attn1.to_out.0")
        _move(sd, out, b + "mlp.fc1", n + "ff.net.0.proj")
        _move(sd, out, b + "mlp.fc2", n + "ff.net.2")
    _move(sd, out, "final_layer.adaLN_modulation.1", "proj_out_1")
    _move(sd, out, "final_layer.linear", "proj_out_2")
    _leftover(sd, "DiT")
    return out


# --------------------------------------------------------------------------- Flux


def flux_to_diffusers(sd: dict) -> dict:
    """BFL Flux (``double_blocks``/``single_blocks``) -> FluxTransformer2DModel keys, any width.

    Same mapping as diffusers' ``convert_flux_transformer_checkpoint_to_diffusers``, which
    assumes a hidden width of 3072; here the width comes from ``img_in``.
    """
    sd = dict(sd)
    out: dict = {}
    inner = sd["img_in.weight"].shape[0]
    _move(sd, out, "time_in.in_layer", "time_text_embed.timestep_embedder.linear_1")
    _move(sd, out, "time_in.out_layer", "time_text_embed.timestep_embedder.linear_2")
    _move(sd, out, "vector_in.in_layer", "time_text_embed.text_embedder.linear_1")
    _move(sd, out, "vector_in.out_layer", "time_text_embed.text_embedder.linear_2")
    if "guidance_in.in_layer.weight" in sd:
        _move(sd, out, "guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1")
        _move(sd, out, "guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2")
    _move(sd, out, "txt_in", "context_embedder")
    _move(sd, out, "img_in", "x_embedder")
    for i in range(_layers(sd, r"double_blocks\.(\d+)\.")):
        b, n = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        _move(sd, out, b + "img_mod.lin", n + "norm1.linear")
        _move(sd, out, b + "txt_mod.lin", n + "norm1_context.linear")
        for part in ("weight", "bias"):
            q, k, v = sd.pop(f"{b}img_attn.qkv.{part}").chunk(3, dim=0)
            out[f"{n}attn.to_q.{part}"], out[f"{n}attn.to_k.{part}"], out[f"{n}attn.to_v.{part}"] = q, k, v
            q, k, v = sd.pop(f"{b}txt_attn.qkv.{part}").chunk(3, dim=0)
            out[f"{n}attn.add_q_proj.{part}"], out[f"{n}attn.add_k_proj.{part}"], out[f"{n}attn.add_v_proj.{part}"] = q, k, v
        out[n + "attn.norm_q.weight"] = sd.pop(b + "img_attn.norm.query_norm.scale")
        out[n + "attn.norm_k.weight"] = sd.pop(b + "img_attn.norm.key_norm.scale")
        out[n + "attn.norm_added_q.weight"] = sd.pop(b + "txt_attn.norm.query_norm.scale")
        out[n + "attn.norm_added_k.weight"] = sd.pop(b + "txt_attn.norm.key_norm.scale")
        _move(sd, out, b + "img_mlp.0", n + "ff.net.0.proj")
        _move(sd, out, b + "img_mlp.2", n + "ff.net.2")
        _move(sd, out, b + "txt_mlp.0", n + "ff_context.net.0.proj")
        _move(sd, out, b + "txt_mlp.2", n + "ff_context.net.2")
        _move(sd, out, b + "img_attn.proj", n + "attn.to_out.0")
        _move(sd, out, b + "txt_attn.proj", n + "attn.to_add_out")
    for i in range(_layers(sd, r"single_blocks\.(\d+)\.")):
        b, n = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        _move(sd, out, b + "modulation.lin", n + "norm.linear")
        w = sd[b + "linear1.weight"]
        split = (inner, inner, inner, w.shape[0] - 3 * inner)
        for part in ("weight", "bias"):
            q, k, v, mlp = torch.split(sd.pop(f"{b}linear1.{part}"), split, dim=0)
            out[f"{n}attn.to_q.{part}"], out[f"{n}attn.to_k.{part}"], out[f"{n}attn.to_v.{part}"] = q, k, v
            out[f"{n}proj_mlp.{part}"] = mlp
        out[n + "attn.norm_q.weight"] = sd.pop(b + "norm.query_norm.scale")
        out[n + "attn.norm_k.weight"] = sd.pop(b + "norm.key_norm.scale")
        _move(sd, out, b + "linear2", n + "proj_out")
    _move(sd, out, "final_layer.linear", "proj_out")
    out["norm_out.linear.weight"] = _swap_scale_shift(sd.pop("final_layer.adaLN_modulation.1.weight"))
    out["norm_out.linear.bias"] = _swap_scale_shift(sd.pop("final_layer.adaLN_modulation.1.bias"))
    _leftover(sd, "Flux")
    return out


# --------------------------------------------------------------------------- diffusers' own converters


def sd3_to_diffusers(sd: dict) -> dict:
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    return convert_sd3_transformer_checkpoint_to_diffusers(dict(sd))


def sana_to_diffusers(sd: dict) -> dict:
    from diffusers.loaders.single_file_utils import convert_sana_transformer_to_diffusers

    sd = dict(sd)
    sd.setdefault("pos_embed", torch.empty(0, device="meta"))  # the converter pops it unconditionally
    sd.setdefault("y_embedder.y_embedding", torch.empty(0, device="meta"))
    return convert_sana_transformer_to_diffusers(sd)


def vae_kl_to_diffusers(sd: dict, config: dict) -> dict:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    out = convert_ldm_vae_checkpoint(dict(sd), config)
    return out


def dcae_to_diffusers(sd: dict) -> dict:
    from diffusers.loaders.single_file_utils import convert_autoencoder_dc_checkpoint_to_diffusers

    return convert_autoencoder_dc_checkpoint_to_diffusers(dict(sd))


TRANSFORMER_CONVERTERS = {
    "pixart": pixart_to_diffusers,
    "dit": dit_to_diffusers,
    "flux": flux_to_diffusers,
    "sd3": sd3_to_diffusers,
    "sana": sana_to_diffusers,
}


def convert_transformer(family: str, sd: dict, layout: str) -> dict:
    """Diffusers keys for a transformer state dict in ``layout`` (``original`` or ``diffusers``)."""
    if layout == "diffusers":
        return dict(sd)
    try:
        return TRANSFORMER_CONVERTERS[family](sd)
    except KeyError as exc:
        raise SpriteForgeError(
            UNSUPPORTED_ARCHITECTURE,
            f"the {family} checkpoint lacks tensor {exc.args[0]!r} that its layout needs; the file is incomplete or a variant SpriteForge does not know.",
            details={"missing": str(exc.args[0])},
        ) from None


def convert_vae(variant: str, sd: dict, layout: str, config: dict) -> dict:
    if layout == "diffusers":
        return dict(sd)
    if variant.startswith("dc-ae"):
        return dcae_to_diffusers(sd)
    return vae_kl_to_diffusers(sd, config)


def convert_text_encoder(variant: str, sd: dict, model_keys: set) -> dict:
    """Match a text-encoder state dict to ``model_keys`` (the transformers class's own keys)."""
    sd = dict(sd)
    if variant in ("clip_l", "clip_g"):
        sd.pop("text_model.embeddings.position_ids", None)
        sd.pop("embeddings.position_ids", None)
        has_prefix = any(k.startswith("text_model.") for k in model_keys)
        out = {}
        for k, v in sd.items():
            if k == "text_projection.weight" or k.startswith("text_projection"):
                out[k] = v
            elif k.startswith("text_model.") and not has_prefix:
                out[k[len("text_model."):]] = v
            elif not k.startswith("text_model.") and has_prefix:
                out["text_model." + k] = v
            else:
                out[k] = v
        return out
    if variant == "t5":
        # the released file also stores the tied copy encoder.embed_tokens; keep one
        if "shared.weight" not in sd and "encoder.embed_tokens.weight" in sd:
            sd["shared.weight"] = sd.pop("encoder.embed_tokens.weight")
        else:
            sd.pop("encoder.embed_tokens.weight", None)
        if "encoder.embed_tokens.weight" in model_keys:
            sd["encoder.embed_tokens.weight"] = sd["shared.weight"]  # tied: one tensor under both names
        return sd
    if variant == "gemma":
        out = {}
        for k, v in sd.items():
            if k.startswith("lm_head."):
                continue
            out[k[len("model."):] if k.startswith("model.") else k] = v
        return out
    return sd


def _leftover(sd: dict, what: str) -> None:
    if sd:
        names = ", ".join(sorted(sd)[:8])
        raise SpriteForgeError(
            UNSUPPORTED_ARCHITECTURE,
            f"the {what} checkpoint has {len(sd)} tensor(s) SpriteForge does not know where to put: {names}.",
            details={"unexpected": sorted(sd)[:50]},
        )
