"""A labelled grid of sprites as a PIL image (for samples.png and model cards)."""

from __future__ import annotations

import numpy as np


def contact_sheet(images, labels=None, *, scale: int = 4, cols: int = 6, label_height: int = 14,
                  background=(40, 40, 48), checker: bool = True):
    """Sprites (``N x H x W x 4`` uint8 RGBA or ``x 3`` RGB) scaled up with nearest neighbour, in a grid, each
    with its label underneath. Transparent pixels show a checkerboard. Returns a PIL RGB image."""
    from PIL import Image, ImageDraw, ImageFont

    imgs = [np.asarray(i) for i in images]
    n = len(imgs)
    if n == 0:
        raise ValueError("no images for the contact sheet")
    h, w = imgs[0].shape[:2]
    cw, ch = w * scale, h * scale
    cell_w = max(cw, 8) + 8
    font = ImageFont.load_default()
    cell_h = ch + 8 + (label_height * 2 if labels is not None else 0)
    rows = (n + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), background)
    draw = ImageDraw.Draw(sheet)
    yy, xx = np.mgrid[0:ch, 0:cw]
    board = np.where(((yy // 8) + (xx // 8)) % 2 == 0, 200, 160).astype(np.uint8)[..., None].repeat(3, -1)
    for i, im in enumerate(imgs):
        big = im.repeat(scale, 0).repeat(scale, 1)
        if big.shape[-1] == 4:
            a = big[..., 3:4].astype(np.float32) / 255.0
            bg = board if checker else np.full_like(board, background)
            rgb = (big[..., :3] * a + bg * (1 - a)).astype(np.uint8)
        else:
            rgb = big[..., :3].astype(np.uint8)
        x0, y0 = (i % cols) * cell_w + 4, (i // cols) * cell_h + 4
        sheet.paste(Image.fromarray(rgb), (x0 + (cell_w - 8 - cw) // 2, y0))
        if labels is not None:
            words = str(labels[i]).split()
            lines, cur = [], ""
            for wd in words:  # wrap to the cell width
                t = (cur + " " + wd).strip()
                if draw.textlength(t, font=font) > cell_w - 4 and cur:
                    lines.append(cur)
                    cur = wd
                else:
                    cur = t
            lines.append(cur)
            for k, line in enumerate(lines[:2]):
                draw.text((x0 - 2, y0 + ch + 2 + k * label_height), line, fill=(235, 235, 235), font=font)
    return sheet
