"""Qwen-Image on MLX, a port of diffusers' ``QwenImageTransformer2DModel`` (the 20B MMDiT of Qwen-Image, 2512 and the
Edit releases).

Input is the 2x2-packed latent ``(B, N, 64)`` and the text encoder's last hidden states ``(B, L, 3584)`` with their
keep-mask, as the diffusers forward takes them. Each of ``num_layers`` double-stream blocks modulates the image and
text streams by the timestep (``img_mod`` / ``txt_mod``: shift, scale, gate for attention then MLP), attends jointly
over ``[text, image]`` with RMS q/k norms and 3-axis rotary positions, and runs a tanh-GELU MLP per stream.
Positions follow ``QwenEmbedRope(scale_rope=True)``: an image token at row ``r``, column ``c`` of an ``h`` x ``w``
grid sits at ``(0, r - ceil(h/2), c - ceil(w/2))`` (centred), text token ``j`` at ``m + j`` on every axis, where
``m = max(h//2, w//2)``. The timestep is sigma (multiplied by 1000 inside, as diffusers does).

Editing (Qwen-Image-Edit): ``img_shapes`` lists the output grid, then each reference's; the references' packed
latents follow the image tokens, reference ``i`` (from 1) at frame position ``i``, centred as the image, and ``m``
is the largest half side over all grids. Edit-2511 (``zero_cond_t``) modulates the reference tokens by the
embedding of timestep 0 (the image tokens, the text and the output norm by the true timestep's).

Parameter paths are diffusers' own (``img_mod.1`` is the Linear after the SiLU), so :func:`map_weights` is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ...errors import UNSUPPORTED_ARCHITECTURE, SpriteForgeError
from .layers import (AttentionProjections, RMSNorm, TimestepEmbedding, apply_rope, batch_vector, block_done, keep_mask_to_bias,
                     layer_norm, merge_heads, rope_tables, sdpa_heads, split_heads, timestep_embedding)
from .sd3 import AdaLayerNormContinuous, FeedForward, Identity


@dataclass(frozen=True)
class QwenImageConfig:
    patch_size: int = 2
    in_channels: int = 64
    out_channels: int = 16
    num_layers: int = 60
    attention_head_dim: int = 128
    num_attention_heads: int = 24
    joint_attention_dim: int = 3584
    axes_dims_rope: tuple = (16, 56, 56)
    zero_cond_t: bool = False  # Edit-2511: the reference tokens modulated at timestep 0

    @classmethod
    def from_dict(cls, c: dict) -> "QwenImageConfig":
        for flag in ("guidance_embeds", "use_additional_t_cond", "use_layer3d_rope"):
            if c.get(flag):
                raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"a Qwen-Image transformer with {flag} (a Layered "
                                       "release): the MLX port runs Qwen-Image, 2512 and the Edit releases. Load it with engine 'torch'.")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in c.items()
                      if k in cls.__dataclass_fields__ and v is not None})

    @property
    def dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


def positions(h: int, w: int, text: int, refs=()) -> list:
    """The 3-axis positions of ``text`` prompt tokens then an ``h`` x ``w`` grid of image tokens, then each reference
    grid ``(h_i, w_i)`` of ``refs`` (see the module note)."""
    grids = [(h, w), *refs]
    m = max(max(gh // 2, gw // 2) for gh, gw in grids)
    txt = [[m + j] * 3 for j in range(text)]
    return txt + [[i, r - (gh - gh // 2), c - (gw - gw // 2)] for i, (gh, gw) in enumerate(grids)
                  for r in range(gh) for c in range(gw)]


class QwenAttention(AttentionProjections):
    """Joint attention: image (``to_*``) and text (``add_*_proj``) projections, RMS norms on every q and k."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__(dim, heads, head_dim)
        inner = heads * head_dim
        for name in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            setattr(self, name, RMSNorm(head_dim, eps=1e-6))
        self.add_q_proj = nn.Linear(dim, inner)
        self.add_k_proj = nn.Linear(dim, inner)
        self.add_v_proj = nn.Linear(dim, inner)
        self.to_add_out = nn.Linear(inner, dim)

    def __call__(self, x, context, rope, mask):
        h, m = self.heads, context.shape[1]
        q = mx.concatenate([self.norm_added_q(split_heads(self.add_q_proj(context), h)), self.norm_q(split_heads(self.to_q(x), h))], axis=2)
        k = mx.concatenate([self.norm_added_k(split_heads(self.add_k_proj(context), h)), self.norm_k(split_heads(self.to_k(x), h))], axis=2)
        v = mx.concatenate([split_heads(self.add_v_proj(context), h), split_heads(self.to_v(x), h)], axis=2)
        cos, sin = rope
        out = merge_heads(sdpa_heads(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, mask)).astype(x.dtype)
        return self.to_out[0](out[:, m:]), self.to_add_out(out[:, :m])


def _modulation(seq, temb, split=None):
    """``img_mod`` / ``txt_mod`` (SiLU, then the Linear at index 1 as in the torch ``Sequential``) on ``temb``: shift,
    scale, gate for the attention, then for the MLP, each ``(B, 1, dim)``. ``split`` (``zero_cond_t``): ``temb`` holds
    the timestep's rows then timestep 0's; the first ``split`` tokens take the former, the rest the latter
    (``(B, N, dim)`` each)."""
    mods = [q[:, None] for q in mx.split(seq[1](nn.silu(temb)), 6, axis=-1)]
    if split is None:
        return mods
    n, total = split
    b = temb.shape[0] // 2
    first = (mx.arange(total) < n)[None, :, None]
    return [mx.where(first, q[:b], q[b:]) for q in mods]


def _mod(x, shift, scale):
    return layer_norm(x, 1e-6) * (1 + scale) + shift


class QwenImageTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.img_mod = [Identity(), nn.Linear(dim, 6 * dim)]
        self.txt_mod = [Identity(), nn.Linear(dim, 6 * dim)]
        self.attn = QwenAttention(dim, heads, head_dim)
        self.img_mlp = FeedForward(dim, dim)
        self.txt_mlp = FeedForward(dim, dim)

    def __call__(self, x, context, temb, rope, mask, split=None):
        i1, i2, i3, i4, i5, i6 = _modulation(self.img_mod, temb, split)
        t1, t2, t3, t4, t5, t6 = _modulation(self.txt_mod, temb if split is None else temb[: temb.shape[0] // 2])
        a, ca = self.attn(_mod(x, i1, i2), _mod(context, t1, t2), rope, mask)
        x = x + i3 * a
        context = context + t3 * ca
        x = x + i6 * self.img_mlp(_mod(x, i4, i5))
        context = context + t6 * self.txt_mlp(_mod(context, t4, t5))
        if x.dtype == mx.float16:
            x, context = mx.clip(x, -65504, 65504), mx.clip(context, -65504, 65504)
        return context, x


class TimeTextEmbed(nn.Module):
    """``QwenTimestepProjEmbeddings``: 256 sinusoidal features of 1000 x sigma (cos first), then an MLP."""

    def __init__(self, dim: int):
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(256, dim)

    def __call__(self, t, dtype):
        return self.timestep_embedder(timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0.0, scale=1000.0).astype(dtype))


class QwenImageTransformer2DModel(nn.Module):
    """``__call__(hidden_states (B,N,64) packed, encoder_hidden_states (B,L,D), encoder_hidden_states_mask (B,L) or None,
    timestep (B,) sigma, img_shapes [[(1, h, w)]] per row)`` -> ``(B, N, 4 * out_channels)``."""

    def __init__(self, config: dict):
        super().__init__()
        object.__setattr__(self, "config", dict(config))
        c = QwenImageConfig.from_dict(config)
        object.__setattr__(self, "cfg", c)
        if sum(c.axes_dims_rope) != c.attention_head_dim:
            raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"a Qwen-Image config whose axes_dims_rope {c.axes_dims_rope} do not add "
                                   f"up to the head dimension {c.attention_head_dim}. Check the model file, or load it with engine 'torch'.")
        dim = c.dim
        self.time_text_embed = TimeTextEmbed(dim)
        self.txt_norm = RMSNorm(c.joint_attention_dim, eps=1e-6)
        self.img_in = nn.Linear(c.in_channels, dim)
        self.txt_in = nn.Linear(c.joint_attention_dim, dim)
        self.transformer_blocks = [QwenImageTransformerBlock(dim, c.num_attention_heads, c.attention_head_dim)
                                   for _ in range(c.num_layers)]
        self.norm_out = AdaLayerNormContinuous(dim, dim)
        self.proj_out = nn.Linear(dim, c.patch_size * c.patch_size * c.out_channels)

    @property
    def dtype(self):
        return self.proj_out.weight.dtype

    def rope(self, h: int, w: int, text: int, refs=()):
        key = (h, w, text, tuple(refs))
        cached = getattr(self, "_rope_cache", None)
        if cached is None or cached[0] != key:  # the same every sampling step: built once
            cached = (key, rope_tables(positions(h, w, text, refs), self.cfg.axes_dims_rope))
            object.__setattr__(self, "_rope_cache", cached)
        return cached[1]

    def __call__(self, hidden_states, encoder_hidden_states, timestep, img_shapes, encoder_hidden_states_mask=None):
        """``img_shapes[0]``: ``(1, h, w)`` of the image, then of each reference (their tokens follow the image's in
        ``hidden_states``); every row of the batch has the first row's shapes, as diffusers' rope takes them."""
        dt = self.dtype
        b = hidden_states.shape[0]
        x = self.img_in(hidden_states.astype(dt))
        context = self.txt_in(self.txt_norm(encoder_hidden_states.astype(dt)))
        t = batch_vector(timestep, b).astype(dt)
        shapes = [(int(h), int(w)) for _, h, w in img_shapes[0]]
        split = None
        if self.cfg.zero_cond_t:  # Edit-2511: rows of timestep 0 after the timestep's, for the reference tokens
            t = mx.concatenate([t, t * 0])
            split = (shapes[0][0] * shapes[0][1], x.shape[1])
        temb = self.time_text_embed(t, dt)
        rope = self.rope(*shapes[0], context.shape[1], shapes[1:])
        mask = None
        if encoder_hidden_states_mask is not None:
            keep = mx.concatenate([encoder_hidden_states_mask.astype(mx.float32), mx.ones((b, x.shape[1]))], axis=1)
            mask = keep_mask_to_bias(keep, dt)
        for block in self.transformer_blocks:
            context, x = block(x, context, temb, rope, mask, split)
            block_done(context, x)
        return self.proj_out(self.norm_out(x, temb[:b]))


def map_weights(sd: dict) -> dict:
    """diffusers ``QwenImageTransformer2DModel`` names -> this port's: the same names (``img_mod.1`` included)."""
    return dict(sd)


__all__ = ["QwenImageTransformer2DModel", "QwenImageConfig", "map_weights", "positions"]
