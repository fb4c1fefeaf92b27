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

The implementation samples a group of kernel taps at a time with ``grid_sample`` from a
zero-bordered float32 copy of the input and multiplies the columns into the output, so
the working memory stays under ``max_chunk_bytes`` instead of the full ``C*kh*kw``
column matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...progress import check_interrupt


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
    *,
    max_chunk_bytes: int = 64 * 1024 * 1024,
) -> torch.Tensor:
    """Deformable 2-D convolution; see the module docstring for the exact semantics.

    Sampling is done with ``grid_sample`` (bilinear, zeros outside) on a copy of the input with a
    one-pixel zero border, in float32 whatever the input dtype (half-precision coordinates would
    be too coarse), for a group of kernel taps at a time; each group's columns
    ``[B, C*taps, Ho*Wo]`` are multiplied into the output with one batched GEMM.
    """
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
    G = offset.shape[1] // (2 * K)
    if C % G != 0:
        raise ValueError("input channels must be divisible by the offset groups")
    if tuple(offset.shape[2:]) != (Ho, Wo):
        raise ValueError(f"offset is {tuple(offset.shape[2:])} spatially; the output is {(Ho, Wo)}")
    if mask is not None and mask.shape[1] != G * K:
        raise ValueError(f"mask has {mask.shape[1]} channels; expected {G * K}")

    dev = input.device
    dtype = input.dtype
    L = Ho * Wo
    cg = C // G
    Hp, Wp = H + 2, W + 2
    # Zero border: samples in (-1, 0) mix in zeros and a sample at -1 or H/W reads only zeros.
    xp = F.pad(input, (1, 1, 1, 1)).float()
    off = offset.float().view(B, G, K, 2, Ho, Wo)
    msk = mask.float().view(B, G, K, L) if mask is not None else None
    f32 = torch.float32
    base_y = (torch.arange(Ho, device=dev, dtype=f32) * sh + (1 - ph)).view(1, 1, Ho, 1)
    base_x = (torch.arange(Wo, device=dev, dtype=f32) * sw + (1 - pw)).view(1, 1, 1, Wo)
    tap_y = (torch.arange(kh, device=dev, dtype=f32) * dh).repeat_interleave(kw).view(1, K, 1, 1)
    tap_x = (torch.arange(kw, device=dev, dtype=f32) * dw).repeat(kh).view(1, K, 1, 1)
    sy, sx = 2.0 / (Hp - 1), 2.0 / (Wp - 1)
    w_taps = weight.reshape(O, C, K)
    per_tap = B * cg * L * 4
    step = max(1, min(K, int(max_chunk_bytes // max(per_tap, 1))))
    out = None
    for g in range(G):
        xg = xp if G == 1 else xp[:, g * cg:(g + 1) * cg]
        for k0 in range(0, K, step):
            check_interrupt()  # a large deformable conv is seconds of work on a CPU: stop between tap groups
            k1 = min(K, k0 + step)
            k = k1 - k0
            y = (base_y + tap_y[:, k0:k1] + off[:, g, k0:k1, 0]) * sy - 1.0  # [B, k, Ho, Wo]
            x = (base_x + tap_x[:, k0:k1] + off[:, g, k0:k1, 1]) * sx - 1.0
            grid = torch.stack((x, y), dim=-1).view(B, k * Ho, Wo, 2)
            cols = F.grid_sample(xg, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
            cols = cols.view(B, cg, k, L)
            if msk is not None:
                cols.mul_(msk[:, g, k0:k1].unsqueeze(1))  # grid_sample's output is ours: no second copy
            wk = w_taps[:, g * cg:(g + 1) * cg, k0:k1].reshape(O, cg * k)
            part = torch.matmul(wk, cols.to(dtype).view(B, cg * k, L))  # [B, O, L]
            out = part if out is None else out.add_(part)
    out = out.view(B, O, Ho, Wo)
    if bias is not None:
        out = out + bias.view(1, O, 1, 1)
    return out


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
