"""BiRefNet (dichotomous image segmentation / background removal) in plain torch.

Written from the architecture of the official code (github.com/ZhengPeng7/BiRefNet,
models/ at 2cddd79) with no timm, torchvision, kornia, einops or remote code. The
module tree reproduces the official ``state_dict`` key for key and shape for shape,
so the released ``model.safetensors`` files load strictly:

* ``bb``: Swin Transformer v1 backbone (patch embed 4x4, shifted windows with a
  relative position bias, patch merging in x0,x1,x2,x3 order, a LayerNorm per output).
* the input pyramid (``mul_scl_ipt='cat'``): the backbone also runs on the half-size
  image and its outputs are concatenated; plus the ``cxt`` context of x1..x3 on x4.
* ``squeeze_module``: one ``BasicDecBlk``.
* ``decoder``: four ``BasicDecBlk`` with ``ASPPDeformable`` attention, lateral 1x1
  convs, gradient-attention gates (``gdt_convs_*``) and the "patch stack" image
  inputs (``ipt_blk5..1``) in the einops order ``b c (hg h) (wg w) -> b (c hg wg) h w``
  used since official commit 5198d3f (the goldens settle it; see ``PATCH_ORDER``).

Every size (embed width, depths, heads, window, decoder widths, BatchNorm or not,
ASPP kernel sizes) is read from the weights, so all released variants load:
general, lite (Swin-T), lite-2K, portrait, matting, HR, HR-matting, dynamic, massive.
Variants that share a backbone have identical keys; the working resolution then
comes from the file name (``variant_from_name``) or the caller.

Inference computes the same function with less memory than the literal layer order: the
ASPP 1x1 fusion conv is summed branch by branch (no 5-branch concatenation), and the output
head's 1x1 conv is split so its decoder part runs before the final upsampling and its image
part folds into ``ipt_blk1``'s last conv (no 96-channel full-resolution tensors). A forward
reports ``num_stages()`` progress steps through ``on_stage`` and checks for an interrupt at
every Swin block, ASPP branch and deformable-conv tap group.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import BAD_INPUT, MODEL_NOT_FOUND, UNSUPPORTED_ARCHITECTURE, SpriteForgeError
from ...log import get_logger
from ...progress import Interrupted, Progress, check_interrupt
from ...models.birefnet import (DEFAULT_VARIANT_FOR_BACKBONE, EXPECTED_FILES, IMAGENET_MEAN, IMAGENET_STD,  # noqa: F401
                               SWIN_L, SWIN_T, VARIANTS, BiRefNetConfig, config_from_shapes, strip_training_prefixes,
                               variant_from_name)
from .deform_conv import deform_conv2d

log = get_logger("torch")

# The channel order of the decoder's image "patch stack": channel = c*G*G + i*G + j
# (tile row i, tile column j, RGB channel c). The pre-5198d3f order (j*G + i)*3 + c
# differs by a permutation of ipt_blk{5,4,3,2}.conv1 input channels; see
# ``legacy_patch_order_permutation``.
PATCH_ORDER = "b c (hg h) (wg w) -> b (c hg wg) h w"

# Peak activation memory per image and 1024x1024 pixels in fp32 (scaled linearly by pixel count and
# element size), for choosing chunk sizes. Measured with benchmarks/bench_rmbg.py on the CPU: peak RSS
# of a chunk of n images minus that of the weights-only process, divided by n, rounded up ~20%.
BYTES_PER_MPX = {
    "swin_v1_t": 1_000_000_000,  # lite / lite-2K
    "swin_v1_l": 1_450_000_000,  # general, HR, matting, portrait, dynamic, massive (1.22 GB measured at 1024²)
}
# On a CPU a chunk's activations are also kept under this (see BiRefNetHandle.auto_chunk).
CPU_CHUNK_BYTES = 1 << 30


# --------------------------------------------------------------------------- Swin v1


def relative_position_index(window: int) -> torch.Tensor:
    """(W*W, W*W) int64: idx[p, q] = (r_p - r_q + W - 1) * (2W - 1) + (c_p - c_q + W - 1)."""
    r = torch.arange(window).repeat_interleave(window)
    c = torch.arange(window).repeat(window)
    dr = r[:, None] - r[None, :] + window - 1
    dc = c[:, None] - c[None, :] + window - 1
    return (dr * (2 * window - 1) + dc).to(torch.int64)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class WindowAttention(nn.Module):
    def __init__(self, dim: int, window: int, heads: int):
        super().__init__()
        self.dim, self.window, self.heads = dim, window, heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x: [B, nW, N, C]; mask: [nW, N, N] additive (0 / -inf) or None."""
        B, nW, N, C = x.shape
        h = self.heads
        qkv = self.qkv(x).reshape(B, nW, N, 3, h, C // h).permute(3, 0, 1, 4, 2, 5)
        q, k, v = qkv.unbind(0)  # [B, nW, h, N, d]
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        bias = bias.reshape(N, N, h).permute(2, 0, 1).to(q.dtype)  # [h, N, N]
        attn_mask = bias.unsqueeze(0) if mask is None else bias.unsqueeze(0) + mask.to(q.dtype).unsqueeze(1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # [B, nW, h, N, d]
        out = out.transpose(2, 3).reshape(B, nW, N, C)
        return self.proj(out)


def _window_partition(x: torch.Tensor, w: int) -> torch.Tensor:
    """[B, H, W, C] -> [B, nW, w*w, C] (windows in row-major order)."""
    B, H, W, C = x.shape
    x = x.view(B, H // w, w, W // w, w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, (H // w) * (W // w), w * w, C)


def _window_reverse(x: torch.Tensor, w: int, H: int, W: int) -> torch.Tensor:
    B, _, _, C = x.shape
    x = x.view(B, H // w, W // w, w, w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, H, W, C)


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, shift: int, mlp_ratio: float):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, H: int, W: int, mask: torch.Tensor | None) -> torch.Tensor:
        check_interrupt()  # one Swin block is the longest step between interrupt points in the backbone
        B, L, C = x.shape
        w = self.window
        shortcut = x
        x = self.norm1(x).view(B, H, W, C)
        pad_b = (w - H % w) % w
        pad_r = (w - W % w) % w
        # Zero padding after the norm, as the official (detection-style) Swin does.
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = H + pad_b, W + pad_r
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        win = self.attn(_window_partition(x, w), mask if self.shift else None)
        x = _window_reverse(win, w, Hp, Wp)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        if pad_b or pad_r:
            x = x[:, :H, :W, :]
        x = shortcut + x.reshape(B, H * W, C)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, L, C = x.shape
        x = x.view(B, H, W, C)
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.reshape(B, -1, 4 * C)))


def _shift_mask(Hp: int, Wp: int, window: int, shift: int, device) -> torch.Tensor:
    """[nW, N, N] additive mask (0 / -inf) for the shifted windows of a padded Hp x Wp map."""
    img = torch.zeros(1, Hp, Wp, 1, device=device)
    cnt = 0
    for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            img[:, hs, ws, :] = cnt
            cnt += 1
    mw = _window_partition(img, window).reshape(-1, window * window)
    diff = mw.unsqueeze(1) - mw.unsqueeze(2)
    return torch.zeros_like(diff).masked_fill(diff != 0, float("-inf"))


class SwinStage(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float, downsample: bool):
        super().__init__()
        self.window, self.shift = window, window // 2
        self.blocks = nn.ModuleList(
            [SwinBlock(dim, heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio) for i in range(depth)]
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x, H: int, W: int):
        w = self.window
        Hp, Wp = -(-H // w) * w, -(-W // w) * w
        mask = _shift_mask(Hp, Wp, w, self.shift, x.device) if len(self.blocks) > 1 else None
        for blk in self.blocks:
            x = blk(x, H, W, mask)
        if self.downsample is None:
            return x, x, (H + 1) // 2, (W + 1) // 2
        return x, self.downsample(x, H, W), (H + 1) // 2, (W + 1) // 2


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int = 4):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        H, W = x.shape[2:]
        p = self.patch
        if W % p or H % p:
            x = F.pad(x, (0, (p - W % p) % p, 0, (p - H % p) % p))
        x = self.proj(x)
        B, C, h, w = x.shape
        x = self.norm(x.flatten(2).transpose(1, 2))
        return x, h, w


class SwinTransformer(nn.Module):
    def __init__(self, cfg: BiRefNetConfig):
        super().__init__()
        d = cfg.embed_dim
        self.num_features = [d * 2 ** i for i in range(len(cfg.depths))]
        self.patch_embed = PatchEmbed(d)
        self.layers = nn.ModuleList(
            [
                SwinStage(d * 2 ** i, cfg.depths[i], cfg.num_heads[i], cfg.window_size, cfg.mlp_ratio, i < len(cfg.depths) - 1)
                for i in range(len(cfg.depths))
            ]
        )
        for i, nf in enumerate(self.num_features):
            self.add_module(f"norm{i}", nn.LayerNorm(nf))

    def forward(self, x: torch.Tensor, on_stage=None) -> list[torch.Tensor]:
        x, H, W = self.patch_embed(x)
        outs = []
        for i, layer in enumerate(self.layers):
            x_out, x, Hn, Wn = layer(x, H, W)
            y = getattr(self, f"norm{i}")(x_out)
            del x_out
            outs.append(y.view(-1, H, W, self.num_features[i]).permute(0, 3, 1, 2).contiguous())
            del y
            H, W = Hn, Wn
            if on_stage is not None:
                on_stage()
        return outs


# --------------------------------------------------------------------------- decoder parts


def _bn(ch: int, use_bn: bool) -> nn.Module:
    return nn.BatchNorm2d(ch) if use_bn else nn.Identity()


class DeformableConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, padding: int):
        super().__init__()
        self.padding = padding
        self.offset_conv = nn.Conv2d(cin, 2 * k * k, k, 1, padding, bias=True)
        self.modulator_conv = nn.Conv2d(cin, k * k, k, 1, padding, bias=True)
        self.regular_conv = nn.Conv2d(cin, cout, k, 1, padding, bias=False)

    def forward(self, x):
        offset = self.offset_conv(x)
        mask = 2.0 * torch.sigmoid(self.modulator_conv(x))
        return deform_conv2d(x, offset, self.regular_conv.weight, self.regular_conv.bias, 1, self.padding, 1, mask)


class ASPPBranch(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, use_bn: bool):
        super().__init__()
        self.atrous_conv = DeformableConv2d(cin, cout, k, k // 2)
        self.bn = _bn(cout, use_bn)

    def forward(self, x):
        return F.relu(self.bn(self.atrous_conv(x)))


class ASPPDeformable(nn.Module):
    def __init__(self, cin: int, inter: int, kernels, use_bn: bool):
        super().__init__()
        self.aspp1 = ASPPBranch(cin, inter, 1, use_bn)
        self.aspp_deforms = nn.ModuleList([ASPPBranch(cin, inter, k, use_bn) for k in kernels])
        self.global_avg_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d((1, 1)), nn.Conv2d(cin, inter, 1, bias=False), _bn(inter, use_bn), nn.ReLU()
        )
        self.conv1 = nn.Conv2d(inter * (2 + len(kernels)), cin, 1, bias=False)
        self.bn1 = _bn(cin, use_bn)

    def forward(self, x):
        # conv1 (1x1, no bias) over cat(aspp1, deforms..., pooled) is the sum of its per-branch slices, so each
        # branch is folded into the sum as soon as it exists: the 5-branch concatenation (the decoder's largest
        # tensor) is never built. The pooled branch is constant over the image (a 1x1 map upsampled with
        # align_corners=True), so its term is added as a [B, C, 1, 1] broadcast.
        w = self.conv1.weight.flatten(1)  # [cin, inter * n_branches]
        inter = self.aspp1.atrous_conv.regular_conv.out_channels
        out = None
        for i, m in enumerate((self.aspp1, *self.aspp_deforms)):
            check_interrupt()
            part = _conv1x1(m(x), w[:, i * inter:(i + 1) * inter])
            out = part if out is None else out.add_(part)
        x5 = self.global_avg_pool(x)
        out.add_(_conv1x1(x5, w[:, -inter:]))
        return F.relu(self.bn1(out))  # dropout is the identity in eval


class BasicDecBlk(nn.Module):
    def __init__(self, cin: int, cout: int, cfg: BiRefNetConfig):
        super().__init__()
        inter = cfg.dec_inter
        self.conv_in = nn.Conv2d(cin, inter, 3, 1, 1)
        self.dec_att = ASPPDeformable(inter, cfg.aspp_inter, cfg.aspp_kernels, cfg.use_bn)
        self.conv_out = nn.Conv2d(inter, cout, 3, 1, 1)
        self.bn_in = _bn(inter, cfg.use_bn)
        self.bn_out = _bn(cout, cfg.use_bn)

    def forward(self, x):
        x = F.relu(self.bn_in(self.conv_in(x)))
        x = self.dec_att(x)
        return self.bn_out(self.conv_out(x))


class BasicLatBlk(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, 1, 0)

    def forward(self, x):
        return self.conv(x)


class SimpleConvs(nn.Module):
    def __init__(self, cin: int, cout: int, inter: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, inter, 3, 1, 1)
        self.conv_out = nn.Conv2d(inter, cout, 3, 1, 1)

    def forward(self, x):
        return self.conv_out(self.conv1(x))


def image_to_patch_stack(x: torch.Tensor, ref_hw) -> torch.Tensor:
    """Tile x into G x G tiles of size ref_hw and stack them on channels: channel = c*G*G + i*G + j."""
    B, C, H, W = x.shape
    h, w = int(ref_hw[0]), int(ref_hw[1])
    gh, gw = H // h, W // w
    x = x[:, :, : gh * h, : gw * w]
    return x.reshape(B, C, gh, h, gw, w).permute(0, 1, 2, 4, 3, 5).reshape(B, C * gh * gw, h, w)


def _up(x, size):
    if tuple(x.shape[2:]) == tuple(size):
        return x  # align_corners=True at the same size is the identity
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def _conv1x1(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A 1x1 convolution [B, Ci, H, W] x [Co, Ci] as one GEMM per image (faster than conv2d's path for these on CPU)."""
    B, C, H, W = x.shape
    out = torch.matmul(w, x.reshape(B, C, H * W)).view(B, w.shape[0], H, W)
    return out if bias is None else out.add_(bias.view(1, -1, 1, 1))


class Decoder(nn.Module):
    def __init__(self, cfg: BiRefNetConfig):
        super().__init__()
        ch = cfg.lateral_channels  # e.g. [3072, 1536, 768, 384]
        ipt_in = [3 * 4 ** i for i in (5, 4, 3, 2, 0)]
        ipt_out = [c // 8 for c in ch]
        N = cfg.ipt_inter
        self.ipt_blk5 = SimpleConvs(ipt_in[0], ipt_out[0], N)
        self.ipt_blk4 = SimpleConvs(ipt_in[1], ipt_out[0], N)
        self.ipt_blk3 = SimpleConvs(ipt_in[2], ipt_out[1], N)
        self.ipt_blk2 = SimpleConvs(ipt_in[3], ipt_out[2], N)
        self.ipt_blk1 = SimpleConvs(ipt_in[4], ipt_out[3], N)
        dec_out = ch[1:] + [ch[-1] // 2]
        dec_in = [ch[i] + ipt_out[max(0, i - 1)] for i in range(4)]
        self.decoder_block4 = BasicDecBlk(dec_in[0], dec_out[0], cfg)
        self.decoder_block3 = BasicDecBlk(dec_in[1], dec_out[1], cfg)
        self.decoder_block2 = BasicDecBlk(dec_in[2], dec_out[2], cfg)
        self.decoder_block1 = BasicDecBlk(dec_in[3], dec_out[3], cfg)
        self.conv_out1 = nn.Sequential(nn.Conv2d(dec_out[3] + ipt_out[3], 1, 1, 1, 0))
        self.lateral_block4 = BasicLatBlk(ch[1], dec_out[0])
        self.lateral_block3 = BasicLatBlk(ch[2], dec_out[1])
        self.lateral_block2 = BasicLatBlk(ch[3], dec_out[2])
        # Multi-scale supervision heads: only used in training, kept so the weights load strictly.
        self.conv_ms_spvn_4 = nn.Conv2d(dec_out[0], 1, 1, 1, 0)
        self.conv_ms_spvn_3 = nn.Conv2d(dec_out[1], 1, 1, 1, 0)
        self.conv_ms_spvn_2 = nn.Conv2d(dec_out[2], 1, 1, 1, 0)
        n = cfg.gdt_channels
        for k, c in ((4, dec_out[0]), (3, dec_out[1]), (2, dec_out[2])):
            self.add_module(f"gdt_convs_{k}", nn.Sequential(nn.Conv2d(c, n, 3, 1, 1), _bn(n, cfg.use_bn), nn.ReLU()))
        for k in (4, 3, 2):
            self.add_module(f"gdt_convs_pred_{k}", nn.Sequential(nn.Conv2d(n, 1, 1, 1, 0)))
        for k in (4, 3, 2):
            self.add_module(f"gdt_convs_attn_{k}", nn.Sequential(nn.Conv2d(n, 1, 1, 1, 0)))

    def _ipt(self, blk, x, ref_hw):
        return blk(_up(image_to_patch_stack(x, ref_hw), ref_hw))

    def forward(self, x, x1, x2, x3, x4, taps: dict | None = None, on_stage=None):
        tick = on_stage if on_stage is not None else check_interrupt
        x4 = torch.cat((x4, self._ipt(self.ipt_blk5, x, x4.shape[2:])), 1)
        p4 = self.decoder_block4(x4)
        if taps is not None:
            taps["dec_block4_out"] = p4
        p4 = p4 * torch.sigmoid(self.gdt_convs_attn_4(self.gdt_convs_4(p4)))
        tick()
        _p3 = _up(p4, x3.shape[2:]) + self.lateral_block4(x3)
        _p3 = torch.cat((_p3, self._ipt(self.ipt_blk4, x, x3.shape[2:])), 1)
        p3 = self.decoder_block3(_p3)
        if taps is not None:
            taps["dec_block3_out"] = p3
        p3 = p3 * torch.sigmoid(self.gdt_convs_attn_3(self.gdt_convs_3(p3)))
        tick()
        _p2 = _up(p3, x2.shape[2:]) + self.lateral_block3(x2)
        _p2 = torch.cat((_p2, self._ipt(self.ipt_blk3, x, x2.shape[2:])), 1)
        p2 = self.decoder_block2(_p2)
        if taps is not None:
            taps["dec_block2_out"] = p2
        p2 = p2 * torch.sigmoid(self.gdt_convs_attn_2(self.gdt_convs_2(p2)))
        tick()
        _p1 = _up(p2, x1.shape[2:]) + self.lateral_block2(x1)
        _p1 = torch.cat((_p1, self._ipt(self.ipt_blk2, x, x1.shape[2:])), 1)
        _p1 = self.decoder_block1(_p1)
        if taps is not None:
            taps["dec_block1_out"] = _p1
        tick()
        return self._head(x, _p1)

    def _head(self, x, p1):
        """``conv_out1(cat(up(p1), ipt_blk1(x)))`` without its full-resolution intermediates.

        conv_out1 is a 1x1 convolution, i.e. the sum of its slice on ``up(p1)`` and its slice on
        ``ipt_blk1(x)``. The first commutes with the bilinear upsampling (both linear, and the
        upsampling weights sum to 1), so it runs at the decoder's stride-4 size on 1 channel; the
        second folds into ipt_blk1's last (linear, 3x3) convolution. Same function, at 1024x1024
        ~1 GB less memory per image than the literal order (and no 96-channel full-size upsample).
        """
        head = self.conv_out1[0]
        w = head.weight.flatten(1)  # [1, C_p1 + C_ipt]
        cp = p1.shape[1]
        y = _up(_conv1x1(p1, w[:, :cp]), x.shape[2:])
        blk = self.ipt_blk1
        h = blk.conv1(x)  # the G = 1 patch stack is the image itself, already at its own size
        wo = blk.conv_out.weight  # [C_ipt, inter, 3, 3]
        wf = torch.einsum("oc,cikl->oikl", w[:, cp:], wo)
        bf = w[:, cp:] @ blk.conv_out.bias + head.bias
        y = y + F.conv2d(h, wf, bf, padding=blk.conv_out.padding)
        return y


class BiRefNet(nn.Module):
    """BiRefNet; ``forward(x)`` takes the ImageNet-normalised image [B,3,H,W] (H, W multiples of 32) and returns logits [B,1,H,W]."""

    def __init__(self, cfg: BiRefNetConfig = SWIN_L):
        super().__init__()
        self.cfg = cfg
        self.bb = SwinTransformer(cfg)
        ch = cfg.lateral_channels
        self.squeeze_module = nn.Sequential(BasicDecBlk(ch[0] + sum(ch[1:]), ch[0], cfg))
        self.decoder = Decoder(cfg)

    def num_stages(self) -> int:
        """How many times ``forward(..., on_stage=f)`` calls ``f`` (backbone stages twice, squeeze, 4 decoder steps)."""
        return 2 * len(self.bb.layers) + 5

    def encode(self, x: torch.Tensor, taps: dict | None = None, on_stage=None):
        H, W = x.shape[2:]
        full = self.bb(x, on_stage)
        half = self.bb(F.interpolate(x, size=(H // 2, W // 2), mode="bilinear", align_corners=True), on_stage)
        if taps is not None:
            for i in range(4):
                taps[f"bb_full_s{i + 1}"] = full[i]
                taps[f"bb_half_s{i + 1}"] = half[i]
        x1, x2, x3, x4 = [torch.cat([f, _up(h, f.shape[2:])], dim=1) for f, h in zip(full, half)]
        del full, half
        size4 = x4.shape[2:]
        x4 = torch.cat((_up(x1, size4), _up(x2, size4), _up(x3, size4), x4), dim=1)
        return x1, x2, x3, x4

    def forward(self, x: torch.Tensor, taps: dict | None = None, on_stage=None) -> torch.Tensor:
        """Logits; ``on_stage()`` (if given) is called after each of :meth:`num_stages` stages, e.g. to report
        progress. Interrupt points (:func:`spriteforge.progress.check_interrupt`) come at every Swin block,
        ASPP branch and deformable-convolution tap group, so a request stops the forward within a fraction
        of a second on a CPU."""
        x1, x2, x3, x4 = self.encode(x, taps, on_stage)
        x4 = self.squeeze_module(x4)
        if taps is not None:
            taps["squeeze_out"] = x4
        if on_stage is not None:
            on_stage()
        return self.decoder(x, x1, x2, x3, x4, taps, on_stage)


# --------------------------------------------------------------------------- weights


def legacy_patch_order_permutation(G: int) -> torch.Tensor:
    """Index p such that ``W_head = W_legacy[:, p]`` for ipt_blk conv1 weights with a G x G grid.

    Head order: channel c*G*G + i*G + j; legacy (pre-5198d3f) order: (j*G + i)*3 + c.
    """
    idx = torch.empty(3 * G * G, dtype=torch.long)
    for c in range(3):
        for i in range(G):
            for j in range(G):
                idx[c * G * G + i * G + j] = (j * G + i) * 3 + c
    return idx


def convert_legacy_patch_order(sd: dict) -> dict:
    """Re-order ``decoder.ipt_blk{5,4,3,2}.conv1.weight`` input channels of a checkpoint trained with the
    pre-5198d3f patch order so it runs with :data:`PATCH_ORDER` (exactly equivalent)."""
    out = dict(sd)
    for blk, G in (("ipt_blk5", 32), ("ipt_blk4", 16), ("ipt_blk3", 8), ("ipt_blk2", 4)):
        for k in list(out):
            if k.endswith(f"decoder.{blk}.conv1.weight"):
                out[k] = out[k][:, legacy_patch_order_permutation(G).to(out[k].device)].contiguous()
    return out


def _read_state_dict(path: Path) -> dict:
    """Tensors of a .safetensors file (or a weights-only torch file). Coded errors for damaged files."""
    if not path.exists():
        raise SpriteForgeError(
            MODEL_NOT_FOUND, f"{path} does not exist. Expected file names: {EXPECTED_FILES}.", details={"path": str(path)}
        )
    suffix = path.suffix.lower()
    with open(path, "rb") as fh:
        head = fh.read(8)
    if suffix in (".safetensors", ".sft") or (len(head) == 8 and int.from_bytes(head, "little") < 100_000_000 and _looks_safetensors(path)):
        try:
            return _read_safetensors(path)
        except Exception as exc:  # damaged, truncated, a pickle renamed to .safetensors...
            if _is_interrupt(exc):
                raise
            raise SpriteForgeError(
                BAD_INPUT,
                f"{path.name} is not a readable safetensors file ({type(exc).__name__}: {str(exc)[:160]}). "
                "It may be truncated or another format; download model.safetensors again.",
                details={"path": str(path)},
            ) from exc
    if suffix in (".pth", ".pt", ".bin", ".ckpt"):
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise SpriteForgeError(
                BAD_INPUT,
                f"{path.name} could not be read as a weights-only torch file ({type(exc).__name__}). "
                "Only plain tensor checkpoints are loaded (no pickled code); use model.safetensors instead.",
                details={"path": str(path)},
            ) from exc
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise SpriteForgeError(BAD_INPUT, f"{path.name} does not hold a state dict of tensors.", details={"path": str(path)})
        return obj
    raise SpriteForgeError(
        BAD_INPUT, f"{path.name}: unsupported file type {suffix!r}; use a .safetensors file.", details={"path": str(path)}
    )


def _is_interrupt(exc: BaseException) -> bool:
    """Our :class:`Interrupted` or ComfyUI's ``InterruptProcessingException`` (Cancel): never re-labelled."""
    return isinstance(exc, Interrupted) or type(exc).__name__ == "InterruptProcessingException"


def _read_safetensors(path: Path, group_bytes: int = 64 << 20) -> dict:
    """All tensors of a safetensors file, read in groups of ~``group_bytes`` with a progress step (the
    interrupt point) after each group."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as fh:
        keys = list(fh.keys())
        groups, size = [[]], 0
        for k in keys:
            sl = fh.get_slice(k)
            n = math.prod(sl.get_shape()) * 2  # a size estimate is enough for grouping
            if groups[-1] and size + n > group_bytes:
                groups.append([])
                size = 0
            groups[-1].append(k)
            size += n
        out = {}
        with Progress(len(groups), f"loading {path.name}") as bar:
            for group in groups:
                for k in group:
                    out[k] = fh.get_tensor(k)
                bar.update()
    return out


def _looks_safetensors(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            return fh.read(1) == b"{" and n > 2
    except OSError:
        return False


def build_from_state_dict(sd: dict, *, strict_buffers: bool = False) -> tuple[BiRefNet, BiRefNetConfig]:
    """A BiRefNet whose config is read from ``sd`` (prefixes stripped), with the weights loaded strictly.

    Integer buffers (relative_position_index, num_batches_tracked) missing from ``sd`` are computed.
    Key or shape mismatches raise UNSUPPORTED_ARCHITECTURE naming the first differences.
    """
    sd = strip_training_prefixes(sd)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    cfg = config_from_shapes(shapes)
    with torch.device("meta"):
        model = BiRefNet(cfg)
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    fillable = [k for k in missing if k.endswith("relative_position_index") or k.endswith("num_batches_tracked")]
    bad_missing = [k for k in missing if k not in fillable] if not strict_buffers else missing
    wrong = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if bad_missing or unexpected or wrong:
        parts = []
        if bad_missing:
            parts.append(f"{len(bad_missing)} missing (e.g. {', '.join(bad_missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} with other shapes (e.g. {k}: {tuple(sd[k].shape)} vs {tuple(expected[k].shape)})")
        raise SpriteForgeError(
            UNSUPPORTED_ARCHITECTURE,
            f"the weights do not match BiRefNet ({cfg.backbone}): {'; '.join(parts)}. "
            "Use an official BiRefNet model.safetensors.",
            details={"missing": bad_missing[:20], "unexpected": unexpected[:20], "shape_mismatch": wrong[:20]},
        )
    full = {}
    for k, ref in expected.items():
        if k in sd:
            v = sd[k]
            full[k] = v if ref.dtype == torch.int64 else v
        elif k.endswith("relative_position_index"):
            full[k] = relative_position_index(cfg.window_size)
        else:
            full[k] = torch.zeros((), dtype=torch.int64)
    for k, ref in expected.items():
        v = full[k]
        if ref.dtype == torch.int64:
            full[k] = v.to(torch.int64)
        elif not v.is_floating_point():
            raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"tensor {k} has dtype {v.dtype}; expected a float tensor.")
    # The index must be the one BiRefNet computes; a stored copy that differs means another model.
    for k in [k for k in full if k.endswith("relative_position_index")]:
        if not torch.equal(full[k], relative_position_index(cfg.window_size)):
            raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"{k} is not the Swin v1 relative position index.")
    model.load_state_dict(full, strict=True, assign=True)
    model.eval()
    return model, cfg


# --------------------------------------------------------------------------- device, loading


def _same_device(a, b) -> bool:
    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _default_precision(device) -> torch.dtype:
    """The compute dtype for ``device``: fp16 on GPUs, fp32 on the CPU (to be replaced by engines/policy.py)."""
    kind = torch.device(device).type
    if kind in ("cuda", "mps", "xpu"):
        return torch.float16
    return torch.float32


@dataclass
class BiRefNetHandle:
    """A loaded BiRefNet: the module, its config, variant, working resolution and device/dtype.

    ``patcher`` is the ComfyUI ModelPatcher when running inside ComfyUI (memory management).
    """

    model: BiRefNet
    config: BiRefNetConfig
    variant: str
    resolution: tuple  # (width, height) the variant was trained at
    device: torch.device
    dtype: torch.dtype
    path: str = ""
    file_dtype: str = ""
    patcher: object = None
    info: dict = field(default_factory=dict)

    def describe(self) -> str:
        w, h = self.resolution
        return f"BiRefNet {self.variant} ({self.config.backbone}), {w}x{h}, {str(self.dtype).replace('torch.', '')} on {self.device}"

    # -- running -------------------------------------------------------------
    def prepare(self) -> torch.device:
        """Make sure the weights are on the compute device (through ComfyUI's model management if present)."""
        if self.patcher is not None:
            import comfy.model_management as mm  # type: ignore

            mm.load_model_gpu(self.patcher)
            dev = torch.device(self.patcher.load_device)
            # A plain module has no per-layer weight casting; if ComfyUI left part of it offloaded, finish the move.
            if any(not _same_device(p.device, dev) for p in self.model.parameters()):
                log.warning("BiRefNet was only partly loaded to %s by ComfyUI; moving the rest", dev)
                self.model.to(dev)
            return dev
        p = next(self.model.parameters())
        if not _same_device(p.device, self.device):
            self.model.to(self.device)
        return self.device

    @property
    def stages(self) -> int:
        """How often :meth:`predict` calls its ``on_stage`` per chunk (for progress bars)."""
        fn = getattr(self.model, "num_stages", None)
        return int(fn()) if callable(fn) else 1

    @torch.inference_mode()
    def predict(self, images, size_hw, *, channels_last: bool | None = None, on_stage=None):
        """Foreground probability for a batch.

        ``images``: float32 numpy [b, h, w, 3] in 0..1 (already padded to the target aspect);
        ``size_hw``: (H, W) multiples of 32 the model runs at. Returns float32 numpy [b, h, w] in 0..1.
        ``on_stage()`` is called after each of :attr:`stages` network stages (progress; it may raise to stop).
        """
        import numpy as np

        device = self.prepare()
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(device)
        x = x.permute(0, 3, 1, 2)
        h, w = x.shape[2:]
        H, W = int(size_hw[0]), int(size_hw[1])
        if (h, w) != (H, W):
            x = F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False, antialias=(H < h or W < w))
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        x = ((x - mean) / std).to(self.dtype)
        if channels_last is None:
            channels_last = device.type == "cuda"  # cuDNN half convs prefer NHWC; on CPUs NHWC measured ~1.4x slower
        # The permuted NHWC input would otherwise carry channels-last strides into the whole network.
        x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        logits = (self.model(x) if on_stage is None else self.model(x, on_stage=on_stage)).float()
        prob = torch.sigmoid(logits)
        if (h, w) != (H, W):
            prob = F.interpolate(prob, size=(h, w), mode="bilinear", align_corners=False)
        return prob[:, 0].clamp_(0, 1).cpu().numpy()

    def compute_device(self) -> torch.device:
        return torch.device(self.patcher.load_device) if self.patcher is not None else torch.device(self.device)

    def free_memory(self) -> int:
        """Bytes the compute device has free now (ComfyUI's view inside ComfyUI; psutil's available RAM on a CPU)."""
        dev = self.compute_device()
        mm, _ = _comfy_mm()
        try:
            if mm is not None:
                return int(mm.get_free_memory(dev))
            if dev.type == "cuda":
                return int(torch.cuda.mem_get_info(dev)[0])
            try:
                import psutil

                return int(psutil.virtual_memory().available)
            except ImportError:
                return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except Exception:
            return 0

    def auto_chunk(self, size_hw, batch: int, limit: int = 8, free: int | None = None) -> int:
        """How many images of ``size_hw`` go in one model call (``batch_chunk = 0``), at least 1.

        The chunk's activations (:meth:`bytes_per_image` each) get half of the memory free now; on a CPU
        at most :data:`CPU_CHUNK_BYTES` as well: batching buys a CPU no speed (benchmarks/bench_rmbg.py,
        per-image time at batch 4 vs 1), while a bigger chunk costs resident memory and makes progress
        reports and interrupt checks between images rarer.
        """
        free = self.free_memory() if free is None else int(free)
        if free <= 0:
            return 1
        budget = 0.5 * free
        if self.compute_device().type == "cpu":
            budget = min(budget, CPU_CHUNK_BYTES)
        n = int(budget // max(self.bytes_per_image(size_hw), 1))
        return max(1, min(int(batch), int(limit), n))

    def empty_cache(self) -> None:
        """Release cached device memory (after an out-of-memory chunk, before retrying smaller)."""
        mm, _ = _comfy_mm()
        if mm is not None:
            mm.soft_empty_cache()
        elif torch.cuda.is_available():
            torch.cuda.empty_cache()

    def bytes_per_image(self, size_hw) -> int:
        """Activation memory one image needs at ``size_hw`` (H, W), an upper bound used for chunking.

        :data:`BYTES_PER_MPX` per backbone, scaled by the pixel count and the element size.
        """
        H, W = size_hw
        el = 2 if self.dtype in (torch.float16, torch.bfloat16) else 4
        per_mpx = BYTES_PER_MPX.get(self.config.backbone, BYTES_PER_MPX["swin_v1_l"])
        return int(per_mpx * el / 4 * (H * W) / (1024 * 1024))


def _comfy_mm():
    try:
        import comfy.model_management as mm  # type: ignore
        import comfy.model_patcher as mp  # type: ignore

        return mm, mp
    except Exception:
        return None, None


def _pick_variant(variant: str | None, path: Path, backbone: str) -> str:
    """The released variant: ``variant`` when given (it must fit the backbone), else guessed from the file or
    folder name, else the backbone's default."""
    if variant and variant != "auto":
        if variant not in VARIANTS:
            raise SpriteForgeError(BAD_INPUT, f"unknown BiRefNet variant {variant!r}; choose one of {', '.join(VARIANTS)}.")
        if VARIANTS[variant]["backbone"] != backbone:
            raise SpriteForgeError(
                BAD_INPUT,
                f"{path.name} has a {backbone} backbone but variant {variant!r} uses {VARIANTS[variant]['backbone']}; "
                "pick 'auto' or a matching variant.",
            )
        return variant
    var = variant_from_name(path.name, backbone) or variant_from_name(path.parent.name, backbone)
    return var if var is not None else DEFAULT_VARIANT_FOR_BACKBONE.get(backbone, "custom")


def _place(model, device, dtype, use_comfy):
    """``(device, dtype, patcher)``: the model moved to ``device``/``dtype`` (defaults: the best device, fp16 on GPUs),
    or inside ComfyUI (``use_comfy`` None/True) onto its offload device under a ModelPatcher."""
    dev = torch.device(device) if device is not None else _default_device()
    dt = dtype or _default_precision(dev)
    mm, mp = _comfy_mm() if use_comfy in (None, True) else (None, None)
    if mm is None or mp is None:
        model.to(device=dev, dtype=dt)
        return dev, dt, None
    load_device = mm.get_torch_device()
    offload_device = mm.unet_offload_device()
    if device is None:
        dev = torch.device(load_device)
        dt = dtype or _default_precision(dev)
    model.to(device=offload_device, dtype=dt)
    return dev, dt, mp.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


def load_birefnet(
    path: str | os.PathLike,
    *,
    device=None,
    dtype: torch.dtype | None = None,
    variant: str | None = None,
    use_comfy: bool | None = None,
) -> BiRefNetHandle:
    """Load a BiRefNet weights file (.safetensors; .pth/.bin weights-only) and detect its backbone and variant.

    ``variant`` ("general", "lite", "lite-2K", "HR", ...) overrides the name-based guess; it must fit the
    backbone found in the weights. ``device``/``dtype`` default to the device policy (fp16 on GPUs, fp32 on CPU).
    Inside ComfyUI the model is wrapped in a ModelPatcher so ComfyUI can load/offload it.
    """
    path = Path(path)
    sd = _read_state_dict(path)
    if not sd:
        raise SpriteForgeError(BAD_INPUT, f"{path.name} holds no tensors; download model.safetensors again.")
    file_dtypes = sorted({str(v.dtype).replace("torch.", "") for v in sd.values() if v.is_floating_point()})
    model, cfg = build_from_state_dict(sd)
    del sd
    var = _pick_variant(variant, path, cfg.backbone)
    resolution = VARIANTS[var]["resolution"] if var in VARIANTS else (1024, 1024)
    dev, dt, patcher = _place(model, device, dtype, use_comfy)
    # BatchNorm statistics and LayerNorm in fp16 are fine for inference; integer buffers stay int64.
    model.eval()
    model.requires_grad_(False)
    handle = BiRefNetHandle(
        model=model,
        config=cfg,
        variant=var,
        resolution=tuple(resolution),
        device=dev,
        dtype=dt,
        path=str(path),
        file_dtype="/".join(file_dtypes),
        patcher=patcher,
        info={"config": cfg.to_dict()},
    )
    log.info("loaded %s from %s (file %s)", handle.describe(), path.name, handle.file_dtype)
    return handle
