"""What a Qwen2.5-VL vision tower reads, in numpy, shared by the torch and MLX engines.

- :func:`qwen_vl_pixels`: transformers' ``Qwen2VLImageProcessor`` (the PIL backend; torchvision is never needed):
  ``smart_resize`` to multiples of ``patch x merge`` (28) within the pixel bounds, bicubic resize of the uint8 image,
  rescale to 0..1, CLIP mean/std normalisation, and the patches ``[grid_h * grid_w, 3 * 2 * 14 * 14]`` (each
  14x14 patch repeated over the 2 temporal frames of a still image) laid out merge-block by merge-block, with the
  grid ``(1, grid_h, grid_w)``.
- :func:`expand_image_pads`: the processor's text side: each ``<|image_pad|>`` repeated once per merged patch.
- :func:`rope_index`: Qwen2.5-VL's 3-D rotary positions of such a text (``get_rope_index``): text tokens count
  on, an image's tokens take ``(t, row, col)`` from where the text stopped, and the text after it continues from
  the image's largest side.
- :func:`vision_positions`, :func:`window_index`: the vision tower's own 2-D rotary positions and its window order
  (``get_vision_position_ids`` / ``get_vision_window_index``).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import BAD_INPUT, SpriteForgeError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MIN_PIXELS = 56 * 56  # Qwen2VLImageProcessor's size: shortest_edge / longest_edge (pixel counts)
MAX_PIXELS = 28 * 28 * 1280
IMAGE_PAD = "<|image_pad|>"


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS):
    """``(h, w)``: multiples of ``factor``, aspect kept as closely as may be, the pixel count within the bounds."""
    if max(height, width) / min(height, width) > 200:
        raise SpriteForgeError(BAD_INPUT, f"a {width}x{height} reference image is too long or narrow for the vision "
                               "encoder (aspect ratio over 200). Crop or pad it first.")
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def to_uint8(image) -> np.ndarray:
    """An RGB ``[H, W, 3]`` image as uint8 (a float image in 0..1 rounded, as ``VaeImageProcessor.numpy_to_pil``)."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float32), 0.0, 1.0) * 255).round().astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    return a[..., :3]


def qwen_vl_pixels(image, *, patch: int = 14, merge: int = 2, temporal: int = 2, min_pixels: int = MIN_PIXELS,
                   max_pixels: int = MAX_PIXELS):
    """``(patches float32 [gh * gw, 3 * temporal * patch * patch], (1, gh, gw))`` of an RGB image (uint8, or float
    in 0..1), as ``Qwen2VLImageProcessor`` makes ``pixel_values`` and ``image_grid_thw``."""
    from PIL import Image

    a = to_uint8(image)
    h, w = smart_resize(a.shape[0], a.shape[1], patch * merge, min_pixels, max_pixels)
    if (h, w) != a.shape[:2]:
        a = np.asarray(Image.fromarray(a).resize((w, h), resample=Image.BICUBIC))
    x = (a.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    x = x.transpose(2, 0, 1)  # [3, H, W]
    gh, gw = h // patch, w // patch
    x = x.reshape(3, gh // merge, merge, patch, gw // merge, merge, patch).transpose(1, 4, 2, 5, 0, 3, 6)
    x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], temporal, patch, patch))
    return np.ascontiguousarray(x.reshape(gh * gw, 3 * temporal * patch * patch), np.float32), (1, gh, gw)


def expand_image_pads(text: str, grids, merge: int = 2, pad: str = IMAGE_PAD) -> str:
    """``text`` with its i-th ``pad`` repeated ``t * h * w / merge^2`` times for ``grids[i]`` (the processor's
    expansion); BAD_INPUT when the counts differ."""
    parts = text.split(pad)
    if len(parts) - 1 != len(grids):
        raise SpriteForgeError(BAD_INPUT, f"the prompt template has {len(parts) - 1} image places for {len(grids)} "
                               "reference images. Give as many images as the template names.")
    out = [parts[0]]
    for (t, h, w), rest in zip(grids, parts[1:]):
        out.append(pad * (t * h * w // merge ** 2) + rest)
    return "".join(out)


def rope_index(ids, mask, image_token: int, grids, merge: int = 2) -> np.ndarray:
    """The ``[3, B, L]`` int64 rotary positions (temporal, height, width) of token ``ids`` [B, L] (``mask`` 1 = real
    token; padding gets 0) where each row's runs of ``image_token`` are the images of ``grids`` in order."""
    ids, mask = np.asarray(ids), np.asarray(mask)
    out = np.zeros((3,) + ids.shape, np.int64)
    for row in range(ids.shape[0]):
        real = np.flatnonzero(mask[row] > 0)
        toks = ids[row, real]
        pos, k, i, n = [], 0, 0, len(toks)
        start = 0
        while i < n:
            j = i
            is_img = toks[i] == image_token
            while j < n and (toks[j] == image_token) == is_img:
                j += 1
            if not is_img:
                pos.append(np.broadcast_to(np.arange(j - i) + start, (3, j - i)))
                start += j - i
            else:
                t, h, w = (int(v) for v in grids[k])
                k += 1
                gh, gw = h // merge, w // merge
                tt, hh, ww = np.meshgrid(np.arange(t), np.arange(gh), np.arange(gw), indexing="ij")
                p = np.stack([tt.ravel() + start, hh.ravel() + start, ww.ravel() + start])
                if p.shape[1] != j - i:
                    raise SpriteForgeError(BAD_INPUT, f"an image takes {p.shape[1]} tokens but its place in the prompt "
                                           f"has {j - i}. Give the images the prompt was made for.")
                pos.append(p)
                start += max(h, w) // merge
            i = j
        out[:, row, real] = np.concatenate(pos, axis=1) if pos else np.zeros((3, 0), np.int64)
    return out


def vision_positions(grids, merge: int = 2) -> np.ndarray:
    """``[N, 2]`` (row, col) of every patch of ``grids``, merge-block by merge-block (the patches' order)."""
    out = []
    for t, h, w in grids:
        hh, ww = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        shape = (h // merge, merge, w // merge, merge)
        hh = hh.reshape(shape).transpose(0, 2, 1, 3).ravel()
        ww = ww.reshape(shape).transpose(0, 2, 1, 3).ravel()
        out.append(np.tile(np.stack([hh, ww], -1), (int(t), 1)))
    return np.concatenate(out, 0)


def window_index(grids, merge: int = 2, window: int = 112, patch: int = 14):
    """``(order [N / merge^2] of merged units, window boundaries [W + 1] in patches)``: the merged units window by
    window (``window / merge / patch`` units a side, the edge windows smaller)."""
    size = window // merge // patch
    order, bounds, base = [], [0], 0
    for t, h, w in grids:
        gh, gw = h // merge, w // merge
        idx = np.arange(t * gh * gw).reshape(t, gh, gw)
        ph, pw = size - gh % size, size - gw % size
        padded = np.pad(idx, ((0, 0), (0, ph), (0, pw)), constant_values=-100)
        nh, nw = (gh + ph) // size, (gw + pw) // size
        padded = padded.reshape(t, nh, size, nw, size).transpose(0, 1, 3, 2, 4).reshape(t, nh * nw, size, size)
        lens = (padded != -100).sum((2, 3)).ravel()
        flat = padded.ravel()
        order.append(flat[flat != -100] + base)
        offset = bounds[-1]
        for c in np.cumsum(lens) * merge ** 2 + offset:
            if c != bounds[-1]:  # (torch.unique_consecutive: an empty window adds no boundary)
                bounds.append(int(c))
        base += t * gh * gw
    return np.concatenate(order), np.asarray(bounds, np.int64)


def full_bounds(grids) -> np.ndarray:
    """Each image's boundary in patches (full attention within an image)."""
    return np.concatenate([[0], np.cumsum([t * h * w for t, h, w in grids])]).astype(np.int64)
