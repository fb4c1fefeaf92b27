"""Z-Image / Z-Image-Turbo on MLX, a port of diffusers' ``ZImageTransformer2DModel`` (the S3-DiT: one stream).

``model(x, t, cap_feats)`` takes what diffusers' forward takes: a list of latents ``(C, 1, H, W)``, the timesteps
``t`` (``1 - sigma``) and a list of caption features ``(L_i, cap_feat_dim)`` (each prompt's real tokens), and gives a
list of ``(C, 1, H, W)``. Per row:

1. image: 2x2 patches (features ordered row, column, channel) embedded, padded to a multiple of 32 with the learned
   ``x_pad_token``, at positions ``(caption length + 1, row, column)`` (pads at 0); ``n_refiner_layers`` noise-refiner
   blocks, modulated by the timestep;
2. caption: RMS norm + linear, padded to a multiple of 32 with ``cap_pad_token``, at ``(1 + i, 0, 0)``;
   context-refiner blocks without modulation;
3. ``[image, caption]`` through ``n_layers`` modulated blocks, then the final layer (LayerNorm scaled by
   ``1 + linear(silu(t))``) on the image tokens, unpatchified.

A block: ``x + tanh(g1) * rms(attn(rms(x) * (1 + s1)))``, then ``x + tanh(g2) * rms(ffn(rms(x) * (1 + s2)))`` with
``(s1, g1, s2, g2)`` one linear of the timestep embedding; attention with RMS q/k norms and 3-axis rotary
embeddings (``axes_dims``, ``rope_theta``); a SwiGLU feed-forward (``w2(silu(w1 x) * w3 x)``). Rows of different
lengths are padded and masked, as diffusers does. Parameter paths are diffusers' own: :func:`map_weights` is the
identity.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .layers import (AttentionProjections, RMSNorm, apply_rope, block_done, keep_mask_to_bias, layer_norm, rope_tables, sdpa_heads,
                     timestep_embedding)

SEQ_MULTIPLE = 32  # every image and caption is padded to a multiple of this many tokens
ADALN_DIM = 256  # width of the timestep embedding the blocks are modulated by (at most ``dim``)


@dataclass
class ZImageConfig:
    in_channels: int = 16
    dim: int = 3840
    n_layers: int = 30
    n_refiner_layers: int = 2
    n_heads: int = 30
    norm_eps: float = 1e-5
    qk_norm: bool = True
    cap_feat_dim: int = 2560
    rope_theta: float = 256.0
    t_scale: float = 1000.0
    axes_dims: tuple = (32, 48, 48)
    patch: int = 2

    @classmethod
    def from_dict(cls, cfg: dict) -> "ZImageConfig":
        out = {f.name: cfg[f.name] for f in fields(cls) if cfg.get(f.name) is not None}
        out["patch"] = int((cfg.get("all_patch_size") or [2])[0])
        out["axes_dims"] = tuple(int(a) for a in out.get("axes_dims", cls.axes_dims))
        return cls(**out)


class TimestepEmbedder(nn.Module):
    """``mlp(sinusoid(t))``: cos-first features of 256, SiLU between two linears."""

    def __init__(self, out: int, mid: int = 1024, freq: int = 256):
        super().__init__()
        self.freq = freq
        self.mlp = [nn.Linear(freq, mid), nn.SiLU(), nn.Linear(mid, out)]

    def __call__(self, t):
        f = timestep_embedding(t, self.freq, flip_sin_to_cos=True, downscale_freq_shift=0.0)
        f = f.astype(self.mlp[0].weight.dtype)
        for layer in self.mlp:
            f = layer(f)
        return f


class Attention(AttentionProjections):
    def __init__(self, c: ZImageConfig):
        head_dim = c.dim // c.n_heads
        super().__init__(c.dim, c.n_heads, head_dim, bias=False, out_bias=False, dropout_slot=False)
        if c.qk_norm:
            self.norm_q = RMSNorm(head_dim, 1e-5)
            self.norm_k = RMSNorm(head_dim, 1e-5)

    def __call__(self, x, cos, sin, mask):
        b, n, _ = x.shape
        q, k, v = (p(x).reshape(b, n, self.heads, -1) for p in (self.to_q, self.to_k, self.to_v))
        if "norm_q" in self:
            q, k = self.norm_q(q), self.norm_k(k)
        q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = sdpa_heads(q, k, v, mask).transpose(0, 2, 1, 3).reshape(b, n, -1)
        return self.to_out[0](out)


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        hidden = int(dim / 3 * 8)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def __call__(self, x):
        return self.w2(nn.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """One single-stream block; ``modulation`` (noise refiner and main layers) scales and gates by the timestep."""

    def __init__(self, c: ZImageConfig, modulation: bool):
        super().__init__()
        self.attention = Attention(c)
        self.feed_forward = FeedForward(c.dim)
        for name in ("attention_norm1", "ffn_norm1", "attention_norm2", "ffn_norm2"):
            setattr(self, name, RMSNorm(c.dim, c.norm_eps))
        if modulation:
            self.adaLN_modulation = [nn.Linear(min(c.dim, ADALN_DIM), 4 * c.dim)]

    def __call__(self, x, cos, sin, mask, temb=None):
        if temb is None:
            x = x + self.attention_norm2(self.attention(self.attention_norm1(x), cos, sin, mask))
            return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))
        s1, g1, s2, g2 = mx.split(self.adaLN_modulation[0](temb)[:, None], 4, axis=-1)
        x = x + mx.tanh(g1) * self.attention_norm2(self.attention(self.attention_norm1(x) * (1.0 + s1), cos, sin, mask))
        return x + mx.tanh(g2) * self.ffn_norm2(self.feed_forward(self.ffn_norm1(x) * (1.0 + s2)))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out: int):
        super().__init__()
        self.linear = nn.Linear(dim, out)
        self.adaLN_modulation = [nn.SiLU(), nn.Linear(min(dim, ADALN_DIM), dim)]

    def __call__(self, x, temb):
        scale = 1.0 + self.adaLN_modulation[1](self.adaLN_modulation[0](temb))
        return self.linear(layer_norm(x, 1e-6) * scale[:, None])


def _padded(n: int) -> int:
    return n + (-n) % SEQ_MULTIPLE


def _batch(rows, pads, pad_token):
    """Rows ``(L_i, D)``, each followed by ``pads[i]`` copies of ``pad_token``, zero-padded to one length: ``(B, L, D)``
    and the keep mask (None when all rows are as long)."""
    rows = [mx.concatenate([r, mx.broadcast_to(pad_token.astype(r.dtype), (p, r.shape[1]))]) if p else r
            for r, p in zip(rows, pads)]
    lengths = [r.shape[0] for r in rows]
    n = max(lengths)
    out = mx.stack([mx.pad(r, [(0, n - r.shape[0]), (0, 0)]) if r.shape[0] < n else r for r in rows])
    keep = None if len(set(lengths)) == 1 else mx.array(np.arange(n)[None] < np.array(lengths)[:, None])
    return out, keep


class ZImageTransformer2DModel(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        c = self.config = ZImageConfig.from_dict(dict(config))
        key, p = f"{c.patch}-1", c.patch
        self.all_x_embedder = {key: nn.Linear(p * p * c.in_channels, c.dim)}
        self.all_final_layer = {key: FinalLayer(c.dim, p * p * c.in_channels)}
        self.noise_refiner = [Block(c, True) for _ in range(c.n_refiner_layers)]
        self.context_refiner = [Block(c, False) for _ in range(c.n_refiner_layers)]
        self.t_embedder = TimestepEmbedder(min(c.dim, ADALN_DIM))
        self.cap_embedder = [RMSNorm(c.cap_feat_dim, c.norm_eps), nn.Linear(c.cap_feat_dim, c.dim)]
        self.x_pad_token = mx.zeros((1, c.dim))
        self.cap_pad_token = mx.zeros((1, c.dim))
        self.layers = [Block(c, True) for _ in range(c.n_layers)]
        self._key = key

    # ------------------------------------------------------------------ positions
    def _rope(self, positions: list[np.ndarray], n: int, dtype):
        """``(cos, sin)`` ``(B, 1, n, head_dim)`` for each row's ``(L_i, 3)`` positions (zero-padded to ``n``)."""
        rows = [np.pad(p, [(0, n - len(p)), (0, 0)]) for p in positions]
        cos, sin = rope_tables(np.concatenate(rows), self.config.axes_dims, self.config.rope_theta)
        shape = (len(rows), 1, n, cos.shape[-1])
        return cos.reshape(shape), sin.reshape(shape)

    @staticmethod
    def _grid(f: int, h: int, w: int, start: tuple) -> np.ndarray:
        idx = np.stack(np.meshgrid(np.arange(f), np.arange(h), np.arange(w), indexing="ij"), -1).reshape(-1, 3)
        return idx + np.asarray(start)

    # ------------------------------------------------------------------ the network
    def _patchify(self, image):
        c, f, h, w = image.shape
        p = self.config.patch
        x = image.reshape(c, f, 1, h // p, p, w // p, p).transpose(1, 3, 5, 2, 4, 6, 0)
        return x.reshape(f * (h // p) * (w // p), p * p * c), (f, h // p, w // p)

    def __call__(self, x, t, cap_feats, **_):
        c = self.config
        dtype = x[0].dtype
        temb = self.t_embedder(mx.array(t) * c.t_scale).astype(dtype)
        # captions first: their padded length places the image on the first axis
        cap_len = [_padded(f.shape[0]) for f in cap_feats]
        cap_pos = [self._grid(n, 1, 1, (1, 0, 0)) for n in cap_len]
        embed = self.all_x_embedder[self._key]
        imgs, img_pos, sizes = [], [], []
        for image, n in zip(x, cap_len):
            tokens, grid = self._patchify(image)
            pad = _padded(tokens.shape[0]) - tokens.shape[0]
            imgs.append(embed(tokens))
            img_pos.append(np.concatenate([self._grid(*grid, (n + 1, 0, 0)), np.zeros((pad, 3), np.int64)]))
            sizes.append((image.shape, tokens.shape[0], pad))
        img_len = [real + pad for _, real, pad in sizes]
        imgs, img_keep = _batch(imgs, [pad for _, _, pad in sizes], self.x_pad_token)
        cos, sin = self._rope(img_pos, imgs.shape[1], dtype)
        mask = None if img_keep is None else keep_mask_to_bias(img_keep, dtype)
        for block in self.noise_refiner:
            imgs = block(imgs, cos, sin, mask, temb)
            block_done(imgs)
        caps = [self.cap_embedder[1](self.cap_embedder[0](f.astype(dtype))) for f in cap_feats]
        caps, cap_keep = _batch(caps, [n - f.shape[0] for n, f in zip(cap_len, cap_feats)], self.cap_pad_token)
        cos, sin = self._rope(cap_pos, caps.shape[1], dtype)
        mask = None if cap_keep is None else keep_mask_to_bias(cap_keep, dtype)
        for block in self.context_refiner:
            caps = block(caps, cos, sin, mask)
            block_done(caps)
        rows = [mx.concatenate([imgs[i, : img_len[i]], caps[i, : cap_len[i]]]) for i in range(len(x))]
        joint, keep = _batch(rows, [0] * len(rows), self.x_pad_token)
        cos, sin = self._rope([np.concatenate([a, b]) for a, b in zip(img_pos, cap_pos)], joint.shape[1], dtype)
        mask = None if keep is None else keep_mask_to_bias(keep, dtype)
        for block in self.layers:
            joint = block(joint, cos, sin, mask, temb)
            block_done(joint)
        out = self.all_final_layer[self._key](joint, temb)
        return [self._unpatchify(out[i, :real], shape) for i, (shape, real, _) in enumerate(sizes)]

    def _unpatchify(self, tokens, shape):
        ch, f, h, w = shape
        p = self.config.patch
        x = tokens.reshape(f, h // p, w // p, 1, p, p, ch).transpose(6, 0, 3, 1, 4, 2, 5)
        return x.reshape(ch, f, h, w)


def map_weights(sd: dict) -> dict:
    """diffusers names are ours."""
    return dict(sd)


__all__ = ["ZImageTransformer2DModel", "ZImageConfig", "map_weights"]
