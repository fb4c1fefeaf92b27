"""Modulated deformable convolution (DCNv2) in plain torch.

Same semantics as ``torchvision.ops.deform_conv2d`` (which SpriteForge must not
depend on):

* ``offset`` is ``[B, 2 * offset_groups * kh * kw, Ho, Wo]``; for kernel tap
  ``k = i * kw + j`` of offset group ``g`` the channels ``g*2*K + 2k`` and
  ``g*2*K + 2k + 1`` hold the (dy, dx) displacement of that tap.
* ``mask`` is ``[B, offset_groups * kh * kw, Ho, Wo]`` and multiplies the sampled value.
* The sample of tap (i, j) at output (y, x) is taken at
  ``(y*sh - ph + i*dh + dy, x*sw - pw + j*dw + dx)`` by bilinear interpolation in
  which every corner outside the input counts as 0, and a sample whose position is
  outside ``(-1, H) x (-1, W)`` is 0.

The implementation gathers the four bilinear corners for one kernel tap at a time
from a channels-last, zero-bordered copy of the input and accumulates
``weight[:, :, i, j] @ sample`` into the output, so the working memory is one
``[B*Ho*Wo, C]`` sample per tap instead of the full ``C*kh*kw`` column matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


def deform_conv2d(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Deformable 2-D convolution; see the module docstring for the exact semantics."""
    B, C, H, W = input.shape
    O, Cg, kh, kw = weight.shape
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    K = kh * kw
    Ho = (H + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    Wo = (W + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    if Cg != C:
        raise ValueError("grouped deformable convolution (weight groups > 1) is not supported")
    if offset.shape[1] % (2 * K) != 0:
        raise ValueError(f"offset has {offset.shape[1]} channels; expected a multiple of 2*kh*kw = {2 * K}")
    n_off_groups = offset.shape[1] // (2 * K)
    if C % n_off_groups != 0:
        raise ValueError("input channels must be divisible by the offset groups")
    if tuple(offset.shape[2:]) != (Ho, Wo):
        raise ValueError(f"offset is {tuple(offset.shape[2:])} spatially; the output is {(Ho, Wo)}")
    if mask is not None and mask.shape[1] != n_off_groups * K:
        raise ValueError(f"mask has {mask.shape[1]} channels; expected {n_off_groups * K}")

    dtype = input.dtype
    # Channels-last input with a one-pixel zero border: a corner at -1 or at H/W reads 0.
    xp = F.pad(input, (1, 1, 1, 1)).permute(0, 2, 3, 1).reshape(B * (H + 2) * (W + 2), C)
    Hp, Wp = H + 2, W + 2
    cg = C // n_off_groups
    # Offsets and mask as [B, Ho*Wo, G, K, 2] / [B, Ho*Wo, G, K], float32 coordinates.
    off = offset.float().reshape(B, n_off_groups, K, 2, Ho * Wo)
    msk = mask.float().reshape(B, n_off_groups, K, Ho * Wo) if mask is not None else None
    base_y = (torch.arange(Ho, device=input.device, dtype=torch.float32) * sh - ph).view(Ho, 1).expand(Ho, Wo).reshape(-1)
    base_x = (torch.arange(Wo, device=input.device, dtype=torch.float32) * sw - pw).view(1, Wo).expand(Ho, Wo).reshape(-1)
    batch_base = (torch.arange(B, device=input.device) * (Hp * Wp)).view(B, 1)

    out = torch.zeros(B * Ho * Wo, O, device=input.device, dtype=dtype)
    w_taps = weight.reshape(O, C, K)
    for k in range(K):
        i, j = divmod(k, kw)
        parts = []
        for g in range(n_off_groups):
            y = base_y + i * dh + off[:, g, k, 0]  # [B, L]
            x = base_x + j * dw + off[:, g, k, 1]
            valid = (y > -1) & (y < H) & (x > -1) & (x < W)
            y0 = torch.floor(y)
            x0 = torch.floor(x)
            ly = y - y0
            lx = x - x0
            hy = 1.0 - ly
            hx = 1.0 - lx
            # Indices into the bordered map (+1); clamp keeps invalid samples in range (they get weight 0).
            iy0 = (y0.long() + 1).clamp_(0, Hp - 1)
            ix0 = (x0.long() + 1).clamp_(0, Wp - 1)
            iy1 = (iy0 + 1).clamp_(max=Hp - 1)
            ix1 = (ix0 + 1).clamp_(max=Wp - 1)
            scale = valid.float()
            if msk is not None:
                scale = scale * msk[:, g, k]
            w00 = (hy * hx * scale).reshape(-1, 1)
            w01 = (hy * lx * scale).reshape(-1, 1)
            w10 = (ly * hx * scale).reshape(-1, 1)
            w11 = (ly * lx * scale).reshape(-1, 1)
            r0 = batch_base + iy0 * Wp
            r1 = batch_base + iy1 * Wp
            src = xp if n_off_groups == 1 else xp[:, g * cg:(g + 1) * cg]
            s = (
                src.index_select(0, (r0 + ix0).reshape(-1)) * w00.to(dtype)
                + src.index_select(0, (r0 + ix1).reshape(-1)) * w01.to(dtype)
                + src.index_select(0, (r1 + ix0).reshape(-1)) * w10.to(dtype)
                + src.index_select(0, (r1 + ix1).reshape(-1)) * w11.to(dtype)
            )
            parts.append(s)
        sample = parts[0] if n_off_groups == 1 else torch.cat(parts, dim=1)  # [B*L, C]
        out.addmm_(sample, w_taps[:, :, k].t())
    out = out.view(B, Ho, Wo, O).permute(0, 3, 1, 2)
    if bias is not None:
        out = out + bias.view(1, O, 1, 1)
    return out.contiguous()


def deform_conv2d_reference(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """A slow, literal per-sample version of the same op (tests compare the fast one against it)."""
    B, C, H, W = input.shape
    O, _, kh, kw = weight.shape
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    K = kh * kw
    Ho, Wo = offset.shape[2:]
    G = offset.shape[1] // (2 * K)
    cg = C // G
    x = input.double()
    cols = torch.zeros(B, C, K, Ho, Wo, dtype=torch.float64)

    def corner(b, c, yy, xx):
        if 0 <= yy < H and 0 <= xx < W:
            return x[b, c, yy, xx]
        return 0.0

    import math

    for b in range(B):
        for g in range(G):
            for k in range(K):
                i, j = divmod(k, kw)
                for oy in range(Ho):
                    for ox in range(Wo):
                        y = oy * sh - ph + i * dh + float(offset[b, g * 2 * K + 2 * k, oy, ox])
                        xx = ox * sw - pw + j * dw + float(offset[b, g * 2 * K + 2 * k + 1, oy, ox])
                        m = float(mask[b, g * K + k, oy, ox]) if mask is not None else 1.0
                        if y <= -1 or y >= H or xx <= -1 or xx >= W:
                            continue
                        y0, x0 = math.floor(y), math.floor(xx)
                        ly, lx = y - y0, xx - x0
                        for c in range(g * cg, (g + 1) * cg):
                            v = (
                                (1 - ly) * (1 - lx) * corner(b, c, y0, x0)
                                + (1 - ly) * lx * corner(b, c, y0, x0 + 1)
                                + ly * (1 - lx) * corner(b, c, y0 + 1, x0)
                                + ly * lx * corner(b, c, y0 + 1, x0 + 1)
                            )
                            cols[b, c, k, oy, ox] = m * v
    out = torch.einsum("ock,bckyx->boyx", weight.double().reshape(O, C, K), cols)
    if bias is not None:
        out = out + bias.double().view(1, O, 1, 1)
    return out.to(input.dtype)
