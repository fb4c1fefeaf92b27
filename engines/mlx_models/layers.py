"""Building blocks shared by the MLX ports, each matching the diffusers/transformers op it replaces.

Numerics follow the torch reference exactly where it matters for parity (GroupNorm in
PyTorch's grouping, tanh-GELU, diffusers' sinusoidal timestep embedding, 2-D sin-cos
position tables); attention runs through ``mx.fast.scaled_dot_product_attention``.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ...errors import MODEL_NOT_CONVERTED, SpriteForgeError
from ...progress import check_interrupt


# --------------------------------------------------------------------------- weights
def block_done(*arrays) -> None:
    """End of one transformer or text-encoder block: evaluate its outputs, then check for Cancel.

    MLX is lazy: a block loop only builds a graph, and all of it would run at the end of the network call,
    after the last check. Evaluating block by block bounds Cancel to one block's work (the interrupt point is
    :func:`spriteforge.progress.check_interrupt`); it also keeps one block's intermediates in memory at a time."""
    mx.eval(*[a for a in arrays if a is not None])
    check_interrupt()


def conv_kernel(w):
    """A torch conv kernel (O, I, kh, kw) as MLX's (O, kh, kw, I); other ranks pass through."""
    return w.transpose(0, 2, 3, 1) if len(w.shape) == 4 else w


def map_names(sd: dict, renames: dict | None = None, conv: set | None = None, drop=()) -> dict:
    """The common pure mapping: optional renames ``{old: new}``, kernels of 4-D conv weights
    transposed to OHWI (every 4-D ``*.weight`` unless ``conv`` names the keys), ``drop`` removed."""
    renames = renames or {}
    out = {}
    for k, v in sd.items():
        if k in drop:
            continue
        name = renames.get(k, k)
        if k.endswith(".weight") and len(v.shape) == 4 and (conv is None or k in conv):
            v = conv_kernel(v)
        out[name] = v
    return out


def load_weights(module: nn.Module, weights: dict, what: str = "model", strict: bool = True) -> nn.Module:
    """Put ``weights`` (names -> mx arrays) into ``module``; a clear coded error on any mismatch."""
    from mlx.utils import tree_flatten

    own = dict(tree_flatten(module.parameters()))
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    bad = sorted(k for k in set(own) & set(weights) if tuple(own[k].shape) != tuple(weights[k].shape))
    if strict and (missing or extra or bad):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({', '.join(missing[:4])})")
        if extra:
            parts.append(f"{len(extra)} unexpected ({', '.join(extra[:4])})")
        if bad:
            parts.append("shape mismatch for " + ", ".join(f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}" for k in bad[:3]))
        raise SpriteForgeError(MODEL_NOT_CONVERTED, f"the {what} weights do not fit the MLX port: " + "; ".join(parts) + ". "
                               "The file is a variant the MLX engine does not know: load it with engine 'torch'.",
                               details={"missing": missing[:50], "unexpected": extra[:50], "shape": bad[:50]})
    module.load_weights([(k, v) for k, v in weights.items() if k in own], strict=False)
    return module


def cast_module(module: nn.Module, dtype) -> nn.Module:
    """Cast every floating parameter of ``module`` to ``dtype`` in place (keeps integer buffers)."""
    from mlx.utils import tree_map

    module.update(tree_map(lambda p: p.astype(dtype) if mx.issubdtype(p.dtype, mx.floating) else p, module.parameters()))
    return module


def to_mx(a, dtype=None):
    """A numpy (or mx) array as an mx array, optionally cast."""
    x = a if isinstance(a, mx.array) else mx.array(np.asarray(a))
    return x.astype(dtype) if dtype is not None else x


# --------------------------------------------------------------------------- layout
def nchw_to_nhwc(x):
    return x.transpose(0, 2, 3, 1)


def nhwc_to_nchw(x):
    return x.transpose(0, 3, 1, 2)


# --------------------------------------------------------------------------- activations and norms
def gelu_tanh(x):
    """GELU with the tanh approximation (torch ``approximate="tanh"``)."""
    return nn.gelu_approx(x)


def gelu(x):
    """Exact (erf) GELU, torch's default."""
    return nn.gelu(x)


def layer_norm(x, eps: float = 1e-6, weight=None, bias=None):
    """LayerNorm over the last axis, optional affine (diffusers' ``elementwise_affine=False`` is none)."""
    return mx.fast.layer_norm(x, weight, bias, eps)


def rms_norm(x, weight, eps: float = 1e-6):
    return mx.fast.rms_norm(x, weight, eps)


class AttentionProjections(nn.Module):
    """diffusers ``Attention``'s projections under its own names: ``to_q``, ``to_k``/``to_v`` (from ``kv_dim``,
    default ``dim``) and ``to_out`` (the output Linear, then a parameterless slot where diffusers keeps its
    Dropout, so indices read like the torch module; no ``to_out`` when ``out=False``). Subclasses add the
    attention itself and any norms."""

    def __init__(self, dim: int, heads: int, head_dim: int, *, kv_dim: int | None = None, bias: bool = True,
                 out_bias: bool = True, out: bool = True, dropout_slot: bool = True):
        super().__init__()
        inner = heads * head_dim
        kv = kv_dim or dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=bias)
        self.to_k = nn.Linear(kv, inner, bias=bias)
        self.to_v = nn.Linear(kv, inner, bias=bias)
        if out:
            self.to_out = [nn.Linear(inner, dim, bias=out_bias)] + ([nn.Identity()] if dropout_slot else [])


class LayerNorm(nn.Module):
    """torch ``nn.LayerNorm`` over the last axis, with or without the affine pair (``elementwise_affine``)."""

    def __init__(self, dim: int, eps: float, affine: bool):
        super().__init__()
        self.eps = eps
        if affine:
            self.weight = mx.ones((dim,))
            self.bias = mx.zeros((dim,))

    def __call__(self, x):
        return layer_norm(x, self.eps, self.get("weight"), self.get("bias"))


class RMSNorm(nn.Module):
    """diffusers/transformers RMSNorm with a ``weight`` (computed in float32, cast back)."""

    def __init__(self, dims: int, eps: float = 1e-6):
        super().__init__()
        self.weight = mx.ones((dims,))
        self.eps = eps

    def __call__(self, x):
        return mx.fast.rms_norm(x.astype(mx.float32), self.weight.astype(mx.float32), self.eps).astype(x.dtype)


# --------------------------------------------------------------------------- attention
def attention(q, k, v, heads: int, mask=None):
    """Multi-head attention on ``(B, L, heads*D)`` inputs, result ``(B, Lq, heads*D)``.

    ``mask``: None, an additive float mask broadcastable to ``(B, heads, Lq, Lk)``, or a
    ``(B, Lk)`` keep-mask (1 = attend), turned into an additive one here.
    """
    b, lq, inner = q.shape
    d = inner // heads
    q = q.reshape(b, lq, heads, d).transpose(0, 2, 1, 3)
    k = k.reshape(b, k.shape[1], heads, d).transpose(0, 2, 1, 3)
    v = v.reshape(b, v.shape[1], heads, d).transpose(0, 2, 1, 3)
    return sdpa_heads(q, k, v, mask).transpose(0, 2, 1, 3).reshape(b, lq, inner)


def sdpa_heads(q, k, v, mask=None):
    """Scaled dot-product attention on ``(B, H, L, D)`` arrays (mask as in :func:`attention`)."""
    if mask is not None and mask.ndim == 2:
        mask = keep_mask_to_bias(mask, q.dtype)
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(q.shape[-1]), mask=mask)


def keep_mask_to_bias(mask, dtype=mx.float32):
    """A ``(B, Lk)`` keep-mask (1 attend, 0 ignore) as an additive ``(B, 1, 1, Lk)`` bias."""
    m = mask.astype(mx.float32)
    return ((1.0 - m) * -10000.0).astype(dtype)[:, None, None, :]


# --------------------------------------------------------------------------- rotary embedding
def rope_tables(ids, axes_dim, theta: float = 10000.0):
    """diffusers ``FluxPosEmbed`` / ``Flux2PosEmbed`` (also Z-Image's rotary table): ``(S, axes)`` position ids -> ``(cos, sin)``, each ``(S, sum(axes_dim))`` float32.

    Each axis ``i`` contributes ``axes_dim[i]`` features, every frequency repeated twice
    (interleaved real/imaginary pairs). Computed in float64 on the host (ids are small).
    """
    pos = np.asarray(ids, dtype=np.float64)
    if pos.ndim == 3:  # the deprecated batched form: diffusers takes the first item
        pos = pos[0]
    cos, sin = [], []
    for i, d in enumerate(axes_dim):
        freqs = 1.0 / (theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
        ang = np.outer(pos[:, i], freqs)
        cos.append(np.repeat(np.cos(ang), 2, axis=1))
        sin.append(np.repeat(np.sin(ang), 2, axis=1))
    return (mx.array(np.concatenate(cos, axis=1).astype(np.float32)), mx.array(np.concatenate(sin, axis=1).astype(np.float32)))


def apply_rope(x, cos, sin):
    """Rotate interleaved pairs of ``x`` ``(B, H, S, D)`` by the ``(S, D)`` tables (or ``(B, 1, S, D)``: per row), in float32."""
    xf = x.astype(mx.float32)
    pairs = xf.reshape(*xf.shape[:-1], -1, 2)
    rotated = mx.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(xf.shape)
    return (xf * cos + rotated * sin).astype(x.dtype)


# --------------------------------------------------------------------------- heads
def batch_vector(t, batch: int):
    """A timestep/guidance given as a scalar or ``(1,)`` broadcast to ``(batch,)``."""
    t = t if isinstance(t, mx.array) else mx.array(np.asarray(t, dtype=np.float32))
    t = t.reshape(-1)
    return mx.broadcast_to(t, (batch,)) if t.shape[0] == 1 and batch != 1 else t


def split_heads(x, heads: int):
    """``(B, L, H*D)`` -> ``(B, H, L, D)``."""
    b, n, _ = x.shape
    return x.reshape(b, n, heads, -1).transpose(0, 2, 1, 3)


def merge_heads(x):
    """``(B, H, L, D)`` -> ``(B, L, H*D)``."""
    b, h, n, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, n, h * d)


# --------------------------------------------------------------------------- embeddings
def timestep_embedding(timesteps, dim: int, flip_sin_to_cos: bool = False, downscale_freq_shift: float = 1.0,
                       scale: float = 1.0, max_period: int = 10000):
    """diffusers' ``get_timestep_embedding``: sinusoidal features of ``timesteps`` ``(N,)`` -> ``(N, dim)``."""
    half = dim // 2
    exponent = -math.log(max_period) * mx.arange(0, half, dtype=mx.float32) / (half - downscale_freq_shift)
    emb = timesteps.astype(mx.float32)[:, None] * mx.exp(exponent)[None, :] * scale
    emb = mx.concatenate([mx.sin(emb), mx.cos(emb)], axis=-1)
    if flip_sin_to_cos:
        emb = mx.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2 == 1:
        emb = mx.pad(emb, [(0, 0), (0, 1)])
    return emb


class TimestepEmbedding(nn.Module):
    """diffusers' ``TimestepEmbedding``: ``linear_1`` -> SiLU -> ``linear_2``."""

    def __init__(self, in_channels: int, time_embed_dim: int, out_dim: int | None = None, act: str = "silu", bias: bool = True):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim, bias=bias)
        self.linear_2 = nn.Linear(time_embed_dim, out_dim or time_embed_dim, bias=bias)
        self.act = act

    def __call__(self, x):
        h = self.linear_1(x)
        h = nn.silu(h) if self.act == "silu" else gelu(h)
        return self.linear_2(h)


def sincos_2d(embed_dim: int, grid_h: int, grid_w: int, base_size: int = 16, interpolation_scale: float = 1.0,
              pos_embed_max_size: int | None = None):
    """diffusers' ``get_2d_sincos_pos_embed`` (numpy, float64 -> float32) as ``(grid_h*grid_w, embed_dim)``."""
    gh = np.arange(grid_h, dtype=np.float64) / (grid_h / base_size) / interpolation_scale
    gw = np.arange(grid_w, dtype=np.float64) / (grid_w / base_size) / interpolation_scale
    ww, hh = np.meshgrid(gw, gh)  # w first, as diffusers
    grid = np.stack([ww, hh], axis=0).reshape(2, 1, grid_h, grid_w)

    def one(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one(embed_dim // 2, grid[0]), one(embed_dim // 2, grid[1])], axis=1)
    return emb.astype(np.float32)


# --------------------------------------------------------------------------- convolution
class Conv2d(nn.Module):
    """A 2-D convolution on NHWC inputs with torch-style zero or circular padding.

    MLX's own conv pads with zeros only; the VAE's seamless mode needs circular padding,
    switched per call through :attr:`circular` (set by the owner, never saved).
    Parameters ``weight`` (O, kh, kw, I) and ``bias`` (O) as ``nn.Conv2d``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 0,
                 bias: bool = True, groups: int = 1):
        super().__init__()
        k = kernel_size
        scale = math.sqrt(1.0 / (in_channels * k * k))
        self.weight = mx.random.uniform(-scale, scale, (out_channels, k, k, in_channels // groups))
        if bias:
            self.bias = mx.zeros((out_channels,))
        self._cfg = (int(stride), int(padding), int(groups))
        self._circular = False

    def set_circular(self, on: bool) -> None:
        self._circular = bool(on)

    def __call__(self, x):
        stride, pad, groups = self._cfg
        if pad and self._circular:
            x = mx.concatenate([x[:, -pad:], x, x[:, :pad]], axis=1)
            x = mx.concatenate([x[:, :, -pad:], x, x[:, :, :pad]], axis=2)
            pad = 0
        y = mx.conv2d(x, self.weight, stride=stride, padding=pad, groups=groups)
        if "bias" in self:
            y = y + self.bias
        return y


def set_circular(module: nn.Module, on: bool) -> None:
    """Switch circular padding on every :class:`Conv2d` inside ``module``."""
    for _, m in module.named_modules():
        if isinstance(m, Conv2d):
            m.set_circular(on)
