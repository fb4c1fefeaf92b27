"""MLX port of diffusers' ``DiTTransformer2DModel`` (class-conditional DiT, adaLN-Zero blocks).

Parameter paths are diffusers' own (``transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight``,
``transformer_blocks.0.attn1.to_out.0.weight``, ``transformer_blocks.0.ff.net.0.proj.weight`` ...), so
:func:`map_weights` only transposes the patch-embedding kernel. Inputs and outputs are NCHW like the torch
model; the output keeps every channel (``2 * in_channels`` for learned-sigma checkpoints).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ...errors import BAD_INPUT, SpriteForgeError
from .layers import AttentionProjections, LayerNorm, TimestepEmbedding, attention, block_done, gelu, gelu_tanh, layer_norm, map_names, sincos_2d, timestep_embedding

_EMB = "norm1.emb."


class _PatchEmbed(nn.Module):
    """diffusers' ``PatchEmbed`` (sincos table, no layer norm): NHWC conv with stride = kernel = patch."""

    def __init__(self, sample_size: int, patch: int, in_channels: int, dim: int, interpolation_scale: float = 1.0):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch, bias=True)
        self.patch = patch
        self.dim = dim
        self.base_size = sample_size // patch
        self.interpolation_scale = float(interpolation_scale)
        self._tables: dict = {}

    def pos(self, gh: int, gw: int):
        key = (gh, gw)
        if key not in self._tables:
            self._tables[key] = mx.array(sincos_2d(self.dim, gh, gw, base_size=self.base_size,
                                                   interpolation_scale=self.interpolation_scale))
        return self._tables[key]

    def __call__(self, x_nhwc):
        y = self.proj(x_nhwc)  # (B, h, w, D)
        b, gh, gw, d = y.shape
        y = y.reshape(b, gh * gw, d)
        return (y + self.pos(gh, gw).astype(y.dtype)[None]).astype(y.dtype)


class _LabelEmbedding(nn.Module):
    def __init__(self, num_classes: int, dim: int, dropout_prob: float = 0.1):
        super().__init__()
        # diffusers keeps one extra row (the "null" class, index num_classes) when dropout_prob > 0
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), dim)

    def __call__(self, labels):
        return self.embedding_table(labels)


class _CombinedTimestepLabelEmbeddings(nn.Module):
    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(256, dim)
        self.class_embedder = _LabelEmbedding(num_classes, dim)

    def __call__(self, timestep, class_labels, dtype):
        t = timestep_embedding(timestep, 256, flip_sin_to_cos=True, downscale_freq_shift=1).astype(dtype)
        return self.timestep_embedder(t) + self.class_embedder(class_labels).astype(dtype)


class _AdaLayerNormZero(nn.Module):
    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.emb = _CombinedTimestepLabelEmbeddings(num_classes, dim)
        self.linear = nn.Linear(dim, 6 * dim)

    def __call__(self, x, timestep, class_labels):
        e = self.linear(nn.silu(self.emb(timestep, class_labels, x.dtype)))
        shift, scale, gate, shift_mlp, scale_mlp, gate_mlp = mx.split(e, 6, axis=1)
        x = layer_norm(x, 1e-6) * (1 + scale[:, None]) + shift[:, None]
        return x, gate, shift_mlp, scale_mlp, gate_mlp


class _Attention(AttentionProjections):
    """diffusers ``Attention`` self-attention with the default (SDPA) processor."""

    def __init__(self, dim: int, heads: int, head_dim: int, bias: bool = True, out_bias: bool = True):
        super().__init__(dim, heads, head_dim, bias=bias, out_bias=out_bias)

    def __call__(self, x):
        return self.to_out[0](attention(self.to_q(x), self.to_k(x), self.to_v(x), self.heads))


class _GELU(nn.Module):
    def __init__(self, dim: int, inner: int, approximate: bool, bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(dim, inner, bias=bias)
        self.approximate = approximate

    def __call__(self, x):
        h = self.proj(x)
        return gelu_tanh(h) if self.approximate else gelu(h)


class _GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int, approximate: bool = False, bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2, bias=bias)

    def __call__(self, x):
        h, g = mx.split(self.proj(x), 2, axis=-1)
        return h * gelu(g)


class _ApproximateGELU(nn.Module):
    def __init__(self, dim: int, inner: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(dim, inner, bias=bias)

    def __call__(self, x):
        h = self.proj(x)
        return h * mx.sigmoid(1.702 * h)


class _FeedForward(nn.Module):
    def __init__(self, dim: int, activation_fn: str, mult: int = 4, bias: bool = True):
        super().__init__()
        inner = int(dim * mult)
        if activation_fn == "gelu":
            act = _GELU(dim, inner, approximate=False, bias=bias)
        elif activation_fn == "gelu-approximate":
            act = _GELU(dim, inner, approximate=True, bias=bias)
        elif activation_fn == "geglu":
            act = _GEGLU(dim, inner, bias=bias)
        elif activation_fn == "geglu-approximate":
            act = _ApproximateGELU(dim, inner, bias=bias)
        else:
            raise SpriteForgeError(BAD_INPUT, f"DiT activation {activation_fn!r} is not supported by the MLX port. "
                                              "Load this model with engine 'torch'.")
        self.net = [act, nn.Identity(), nn.Linear(inner, dim, bias=bias)]

    def __call__(self, x):
        return self.net[2](self.net[0](x))


class _DiTBlock(nn.Module):
    """``BasicTransformerBlock`` with ``norm_type="ada_norm_zero"`` and no cross-attention."""

    def __init__(self, dim: int, heads: int, head_dim: int, cfg: dict):
        super().__init__()
        self.norm1 = _AdaLayerNormZero(dim, int(cfg["num_embeds_ada_norm"]))
        self.attn1 = _Attention(dim, heads, head_dim, bias=bool(cfg.get("attention_bias", True)))
        self.norm3 = LayerNorm(dim, float(cfg.get("norm_eps", 1e-5)), bool(cfg.get("norm_elementwise_affine", False)))
        self.ff = _FeedForward(dim, cfg.get("activation_fn", "gelu-approximate"))

    def __call__(self, x, timestep, class_labels):
        h, gate, shift_mlp, scale_mlp, gate_mlp = self.norm1(x, timestep, class_labels)
        x = x + gate[:, None] * self.attn1(h)
        h = self.norm3(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return x + gate_mlp[:, None] * self.ff(h)


class DiTTransformer2DModel(nn.Module):
    """diffusers ``DiTTransformer2DModel`` built from its config dict."""

    def __init__(self, config: dict):
        super().__init__()
        cfg = dict(config)
        norm_type = cfg.get("norm_type", "ada_norm_zero")
        if norm_type != "ada_norm_zero" or cfg.get("num_embeds_ada_norm", 1000) is None:
            raise SpriteForgeError(BAD_INPUT, f"DiT with norm_type {norm_type!r} and no class embedding is not supported "
                                              "by the MLX port. Load this model with engine 'torch'.")
        cfg.setdefault("num_embeds_ada_norm", 1000)
        heads = int(cfg.get("num_attention_heads", 16))
        head_dim = int(cfg.get("attention_head_dim", 72))
        dim = heads * head_dim
        self.in_channels = int(cfg.get("in_channels", 4))
        self.out_channels = int(cfg.get("out_channels") or self.in_channels)
        self.patch_size = int(cfg.get("patch_size", 2))
        self.inner_dim = dim
        self.pos_embed = _PatchEmbed(int(cfg.get("sample_size", 32)), self.patch_size, self.in_channels, dim)
        self.transformer_blocks = [_DiTBlock(dim, heads, head_dim, cfg) for _ in range(int(cfg.get("num_layers", 28)))]
        self.proj_out_1 = nn.Linear(dim, 2 * dim)
        self.proj_out_2 = nn.Linear(dim, self.patch_size * self.patch_size * self.out_channels)

    def __call__(self, hidden_states, timestep, class_labels):
        """``hidden_states`` (B, C, H, W); ``timestep`` scalar or (B,); ``class_labels`` (B,) ints -> (B, out, H, W)."""
        x = hidden_states
        b, _, H, W = x.shape
        p = self.patch_size
        gh, gw = H // p, W // p
        t = mx.array(timestep) if not isinstance(timestep, mx.array) else timestep
        t = mx.broadcast_to(t.reshape(-1), (b,)) if t.size in (1, b) else t
        labels = class_labels if isinstance(class_labels, mx.array) else mx.array(class_labels)
        labels = mx.broadcast_to(labels.reshape(-1).astype(mx.int32), (b,))
        h = self.pos_embed(x.transpose(0, 2, 3, 1))
        for blk in self.transformer_blocks:
            h = blk(h, t, labels)
            block_done(h)
        cond = self.transformer_blocks[0].norm1.emb(t, labels, h.dtype)
        shift, scale = mx.split(self.proj_out_1(nn.silu(cond)), 2, axis=1)
        h = layer_norm(h, 1e-6) * (1 + scale[:, None]) + shift[:, None]
        h = self.proj_out_2(h)
        c = self.out_channels
        h = h.reshape(b, gh, gw, p, p, c).transpose(0, 5, 1, 3, 2, 4)
        return h.reshape(b, c, gh * p, gw * p)


def map_weights(sd: dict) -> dict:
    """diffusers DiT names -> this port's names (the patch-embedding kernel to OHWI).

    The original DiT has one timestep/class embedder which diffusers copies into every block; a state
    dict that carries it under the first block only (or the same arrays under every block) is accepted:
    the missing per-block copies are filled with the first block's arrays (no extra memory).
    """
    out = map_names(sd, conv={"pos_embed.proj.weight"})
    first = {k[len("transformer_blocks.0." + _EMB):]: v for k, v in out.items()
             if k.startswith("transformer_blocks.0." + _EMB)}
    if first:
        blocks = {int(k.split(".")[1]) for k in out if k.startswith("transformer_blocks.")}
        for i in blocks:
            for rest, v in first.items():
                out.setdefault(f"transformer_blocks.{i}.{_EMB}{rest}", v)
    return out
