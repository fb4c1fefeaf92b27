"""MLX port of Qwen2.5-VL's vision tower (transformers' ``Qwen2_5_VisionTransformerPretrainedModel``), which reads
Qwen-Image-Edit's reference images.

The patches (``engines/vision_inputs.qwen_vl_pixels``: 3 x 2 x 14 x 14 values each) go through the patch embedding
(a Conv3d whose kernel is its stride: one matrix product, the kernel flattened by :func:`map_weights`), are put in
window order (the merged 2x2 units window by window, :func:`vision_inputs.window_index`), then through the blocks:
pre-norm (RMS) attention with a 2-D rotary embedding (rotate-half over the whole head: the row frequencies, then the
column ones, each ``head_dim / 4`` wide, repeated) restricted to each window, or to each image in the full-attention
blocks (``fullatt_block_indexes``), and a SwiGLU MLP with biases; the merger (RMS norm, 2x2 units concatenated,
Linear-GELU-Linear to the language model's width) and the units back in image order.

``model(patches, grids)`` -> ``[tokens, out_hidden_size]`` float32. Parameter paths are transformers' with the
``visual.`` prefix removed (``patch_embed.proj.weight``, ``blocks.0.attn.qkv.weight``, ``merger.mlp.0.weight``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .. import vision_inputs as vi
from .layers import RMSNorm, block_done


@dataclass
class VisionConfig:
    depth: int = 32
    hidden_size: int = 1280
    num_heads: int = 16
    intermediate_size: int = 3420
    out_hidden_size: int = 3584
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: list = field(default_factory=lambda: [7, 15, 23, 31])
    hidden_act: str = "silu"
    rope_theta: float = 10000.0

    @classmethod
    def from_dict(cls, cfg: dict) -> "VisionConfig":
        out = {f.name: cfg[f.name] for f in fields(cls) if cfg.get(f.name) is not None}
        if "in_chans" in cfg and "in_channels" not in cfg:
            out["in_channels"] = cfg["in_chans"]
        rp = cfg.get("rope_parameters") or {}
        if isinstance(rp, dict) and rp.get("rope_theta") is not None:
            out["rope_theta"] = float(rp["rope_theta"])
        return cls(**out)


_ACT = {"silu": nn.silu, "gelu": nn.gelu, "gelu_pytorch_tanh": nn.gelu_approx, "quick_gelu": nn.gelu_fast_approx}


def _rotate_half(x):
    half = x.shape[-1] // 2
    return mx.concatenate([-x[..., half:], x[..., :half]], axis=-1)


class Attention(nn.Module):
    def __init__(self, c: VisionConfig):
        super().__init__()
        self.heads = c.num_heads
        self.head_dim = c.hidden_size // c.num_heads
        self.qkv = nn.Linear(c.hidden_size, 3 * c.hidden_size, bias=True)
        self.proj = nn.Linear(c.hidden_size, c.hidden_size, bias=True)

    def __call__(self, x, cos, sin, bounds):
        n = x.shape[0]
        q, k, v = mx.split(self.qkv(x).reshape(n, 3, self.heads, self.head_dim), 3, axis=1)
        q, k, v = q[:, 0], k[:, 0], v[:, 0]  # [N, heads, d]
        dt = q.dtype
        qf, kf = q.astype(mx.float32), k.astype(mx.float32)  # the rotation in float32, as transformers applies it
        q = (qf * cos + _rotate_half(qf) * sin).astype(dt)
        k = (kf * cos + _rotate_half(kf) * sin).astype(dt)
        q, k, v = (a.transpose(1, 0, 2)[None] for a in (q, k, v))  # [1, heads, N, d]
        outs = [mx.fast.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], scale=self.head_dim ** -0.5)
                for s, e in zip(bounds[:-1], bounds[1:]) if e > s]
        out = mx.concatenate(outs, axis=2)[0].transpose(1, 0, 2).reshape(n, -1)
        return self.proj(out)


class MLP(nn.Module):
    def __init__(self, c: VisionConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=True)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=True)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=True)
        self.act = _ACT[c.hidden_act]

    def __call__(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, c: VisionConfig):
        super().__init__()
        self.norm1 = RMSNorm(c.hidden_size, 1e-6)
        self.norm2 = RMSNorm(c.hidden_size, 1e-6)
        self.attn = Attention(c)
        self.mlp = MLP(c)

    def __call__(self, x, cos, sin, bounds):
        x = x + self.attn(self.norm1(x), cos, sin, bounds)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, c: VisionConfig):
        super().__init__()
        n = c.in_channels * c.temporal_patch_size * c.patch_size * c.patch_size
        self.proj = nn.Linear(n, c.hidden_size, bias=False)  # the Conv3d (kernel = stride) as the matrix it is

    def __call__(self, x):
        return self.proj(x)


class Merger(nn.Module):
    def __init__(self, c: VisionConfig):
        super().__init__()
        self.unit = c.hidden_size * c.spatial_merge_size ** 2
        self.ln_q = RMSNorm(c.hidden_size, 1e-6)
        self.mlp = [nn.Linear(self.unit, self.unit), nn.GELU(), nn.Linear(self.unit, c.out_hidden_size)]

    def __call__(self, x):
        x = self.ln_q(x).reshape(-1, self.unit)
        for layer in self.mlp:
            x = layer(x)
        return x


class VisionTower(nn.Module):
    """``model(patches [N, C*T*P*P], grids [(t, h, w)...])`` -> merged features ``[N / merge^2, out_hidden_size]``."""

    def __init__(self, config: dict):
        super().__init__()
        c = self.config = VisionConfig.from_dict(dict(config))
        self.patch_embed = PatchEmbed(c)
        self.blocks = [Block(c) for _ in range(c.depth)]
        self.merger = Merger(c)
        spatial = (c.hidden_size // c.num_heads) // 2
        self._inv_freq = (1.0 / (c.rope_theta ** (np.arange(0, spatial, 2, dtype=np.float32) / np.float32(spatial)))).astype(np.float32)

    def __call__(self, patches, grids):
        c = self.config
        unit = c.spatial_merge_size ** 2
        grids = [tuple(int(v) for v in g) for g in grids]
        order, windows = vi.window_index(grids, c.spatial_merge_size, c.window_size, c.patch_size)
        full = vi.full_bounds(grids)
        # the patches in window order (whole merged units moved together)
        perm = (order[:, None] * unit + np.arange(unit)[None]).ravel()
        pos = vi.vision_positions(grids, c.spatial_merge_size)[perm].astype(np.float32)  # [N, 2] (row, col)
        freqs = np.concatenate([pos[:, :1] * self._inv_freq, pos[:, 1:] * self._inv_freq], axis=-1)
        emb = np.concatenate([freqs, freqs], axis=-1)[:, None, :]  # [N, 1, head_dim]
        cos, sin = mx.array(np.cos(emb)), mx.array(np.sin(emb))
        x = patches if isinstance(patches, mx.array) else mx.array(np.asarray(patches))
        dt = self.patch_embed.proj.weight.dtype
        x = self.patch_embed(x.astype(dt))[mx.array(perm)]
        windows, full = [int(b) for b in windows], [int(b) for b in full]
        for i, blk in enumerate(self.blocks):
            x = blk(x, cos, sin, full if i in c.fullatt_block_indexes else windows)
            block_done(x)
        out = self.merger(x)
        return out[mx.array(np.argsort(order))].astype(mx.float32)


def map_weights(sd: dict) -> dict:
    """transformers names (``visual.`` removed) -> ours: the Conv3d patch kernel flattened to its matrix."""
    out = {}
    for k, v in sd.items():
        k = k[len("visual."):] if k.startswith("visual.") else k
        if k == "patch_embed.proj.weight" and v.ndim == 5:
            v = v.reshape(v.shape[0], -1)
        out[k] = v
    return out
