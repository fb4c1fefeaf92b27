"""Palettes: the shipped fixed palettes, palette files in and out, and palette extraction.

A :class:`Palette` is an ordered list of at most 256 sRGB colours (``colors``: ``N x 3`` uint8)
with an optional per-entry alpha (Aseprite's RGBA GPL extension) and a name.

Extraction (all deterministic; frames of a batch/animation are pooled so one palette is fitted
once and applied to every frame):

* :func:`kmeans` - weighted k-means in OKLab with a seeded k-means++ start;
* :func:`median_cut` - recursive splits at the weighted median in OKLab;
* :func:`octree` - classic octree reduction over the RGB cube (least-populated deepest nodes merge first).

File formats (read and write): Lospec ``.hex``, GIMP ``.gpl`` (with ``Channels: RGBA``),
JASC ``.pal`` and PNG strips.  Any malformed file raises ``SpriteForgeError(BAD_INPUT)``.
"""

from __future__ import annotations

import io as _io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .color import bad, check_image, oklab_to_srgb, srgb_to_oklab

MAX_COLORS = 256
PALETTE_DIR = Path(__file__).resolve().parent / "palettes"
FORMATS = ("hex", "gpl", "pal", "png")
METHODS = ("kmeans", "median_cut", "octree")
ALIASES = {
    "pico8": "pico-8",
    "sweetie16": "sweetie-16",
    "endesga32": "endesga-32",
    "gameboy": "nintendo-gameboy-bgb",
    "gb": "nintendo-gameboy-bgb",
    "dmg": "gameboy-dmg",
    "nes": "nintendo-entertainment-system",
    "cga": "color-graphics-adapter",
    "c64": "c64-pepto",
    "commodore64": "c64-pepto",
}


@dataclass
class Palette:
    """An ordered palette. ``colors`` is ``N x 3`` uint8 sRGB, ``alpha`` is ``N`` uint8 or None."""

    colors: np.ndarray
    name: str = ""
    alpha: np.ndarray | None = None
    comments: list[str] = field(default_factory=list)

    def __post_init__(self):
        c = np.asarray(self.colors)
        if c.ndim != 2 or c.shape[1] not in (3, 4):
            raise bad(f"palette colours have shape {c.shape}; expected N x 3. Give a list of RGB triples.")
        if len(c) == 0:
            raise bad("palette is empty. Give at least one colour.")
        if len(c) > MAX_COLORS:
            raise bad(f"palette has {len(c)} colours; at most {MAX_COLORS} are supported. Reduce it first.")
        if np.issubdtype(c.dtype, np.floating):
            c = np.clip(np.rint(c), 0, 255)
        elif c.size and (c.min() < 0 or c.max() > 255):
            raise bad("palette has values outside 0..255. Give 8-bit RGB values.")
        c = c.astype(np.uint8)
        if c.shape[1] == 4:
            if self.alpha is None:
                self.alpha = c[:, 3].copy()
            c = c[:, :3]
        self.colors = np.ascontiguousarray(c)
        if self.alpha is not None:
            a = np.asarray(self.alpha).astype(np.uint8).reshape(-1)
            if len(a) != len(c):
                raise bad("palette alpha has a different length from its colours.")
            self.alpha = None if bool((a == 255).all()) else a

    def __len__(self) -> int:
        return len(self.colors)

    def hex(self) -> list[str]:
        return ["%02x%02x%02x" % tuple(int(v) for v in c) for c in self.colors]

    def rgba(self) -> np.ndarray:
        a = self.alpha if self.alpha is not None else np.full(len(self), 255, np.uint8)
        return np.concatenate([self.colors, a[:, None]], axis=1)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Palette):
            return NotImplemented
        return np.array_equal(self.rgba(), other.rgba())

    def to_dict(self) -> dict:
        return {"name": self.name, "colors": ["#" + h for h in self.hex()]}

    def __repr__(self) -> str:
        return f"Palette({self.name!r}, {len(self)} colours)"


# --------------------------------------------------------------------------- shipped palettes

def builtin_names() -> list[str]:
    """Slugs of the palettes shipped in ``pixel/palettes/`` (Lospec naming)."""
    return sorted(p.stem for p in PALETTE_DIR.glob("*.hex"))


def builtin(name: str) -> Palette:
    """A shipped palette by Lospec slug (``pico-8``, ``sweetie-16``...) or alias (``pico8``, ``c64``...)."""
    slug = str(name).strip().lower()
    slug = ALIASES.get(slug, slug)
    path = PALETTE_DIR / f"{slug}.hex"
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", slug) or not path.is_file():
        raise bad(f"unknown palette {name!r}. Use one of: {', '.join(builtin_names())} (or a palette file).",
                  name=str(name))
    return read_palette(path)


def resolve_palette(spec) -> Palette:
    """A Palette from a Palette, a shipped name, or a palette file path."""
    if isinstance(spec, Palette):
        return spec
    s = str(spec)
    p = Path(s)
    if p.suffix.lower().lstrip(".") in FORMATS and p.is_file():
        return read_palette(p)
    if p.suffix.lower().lstrip(".") in FORMATS and (os.sep in s or "/" in s):
        raise bad(f"palette file {s} does not exist. Check the path.")
    return builtin(s)


# --------------------------------------------------------------------------- file formats

def _text(data: bytes | str, what: str) -> str:
    if isinstance(data, str):
        return data
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        try:
            return data.decode("latin-1")
        except Exception as exc:  # pragma: no cover - latin-1 decodes every byte
            raise bad(f"{what} is not text. Check the file.") from exc


def parse_hex(data: bytes | str, name: str = "") -> Palette:
    """Lospec ``.hex``: one ``rrggbb`` (or ``rrggbbaa``) per line; ``;`` starts a comment line."""
    colors, alpha, comments = [], [], []
    for n, raw in enumerate(_text(data, "hex palette").splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith(";") or line.startswith("//"):
            comments.append(line.lstrip(";/ ").rstrip())
            continue
        tok = line.split()[0].lstrip("#")
        if tok.lower().startswith("0x"):
            tok = tok[2:]
        if len(tok) not in (6, 8) or not re.fullmatch(r"[0-9a-fA-F]+", tok):
            raise bad(f"hex palette line {n} ({line[:40]!r}) is not a colour. Write one rrggbb per line.", line=n)
        colors.append([int(tok[i:i + 2], 16) for i in (0, 2, 4)])
        alpha.append(int(tok[6:8], 16) if len(tok) == 8 else 255)
        if len(colors) > MAX_COLORS:
            raise bad(f"hex palette has more than {MAX_COLORS} colours. Use a smaller palette.")
    if not colors:
        raise bad("hex palette has no colours. Write one rrggbb per line.")
    return Palette(np.array(colors), name, np.array(alpha, np.uint8), comments)


def parse_gpl(data: bytes | str, name: str = "") -> Palette:
    """GIMP ``.gpl`` (``GIMP Palette`` header, ``R G B name`` rows), with Aseprite's ``Channels: RGBA``."""
    lines = _text(data, "GPL palette").splitlines()
    if not lines or lines[0].strip().lstrip("\ufeff") != "GIMP Palette":
        raise bad("GPL palette does not start with 'GIMP Palette'. Check the file is a GIMP/Aseprite palette.")
    channels, colors, alpha, comments = 3, [], [], []
    for n, raw in enumerate(lines[1:], 2):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            comments.append(line.lstrip("# ").rstrip())
            continue
        low = line.lower()
        if low.startswith("name:"):
            name = name or line.split(":", 1)[1].strip()
            continue
        if low.startswith("columns:"):
            continue
        if low.startswith("channels:"):
            ch = line.split(":", 1)[1].strip().upper()
            if ch not in ("RGB", "RGBA"):
                raise bad(f"GPL palette line {n}: unknown channels {ch!r}. Use RGB or RGBA.", line=n)
            channels = len(ch)
            continue
        parts = line.split()
        try:
            vals = [int(v) for v in parts[:channels]]
        except ValueError:
            raise bad(f"GPL palette line {n} ({line[:40]!r}) is not '{' '.join('RGBA'[:channels])} name'. "
                      "Fix or remove the line.", line=n) from None
        if len(vals) != channels or any(v < 0 or v > 255 for v in vals):
            raise bad(f"GPL palette line {n} ({line[:40]!r}) needs {channels} values in 0..255. Fix the line.", line=n)
        colors.append(vals[:3])
        alpha.append(vals[3] if channels == 4 else 255)
        if len(colors) > MAX_COLORS:
            raise bad(f"GPL palette has more than {MAX_COLORS} colours. Use a smaller palette.")
    if not colors:
        raise bad("GPL palette has no colours. Add 'R G B name' rows.")
    return Palette(np.array(colors), name, np.array(alpha, np.uint8), comments)


def parse_pal(data: bytes | str, name: str = "") -> Palette:
    """JASC ``.pal``: ``JASC-PAL``, ``0100``, count, then ``R G B`` (optionally ``A``) rows."""
    lines = [ln.strip() for ln in _text(data, "JASC palette").splitlines()]
    lines = [ln for ln in lines if ln]
    if len(lines) < 3 or lines[0].lstrip("\ufeff") != "JASC-PAL":
        raise bad("JASC palette does not start with 'JASC-PAL'. Check the file is a JASC/PaintShop .pal.")
    if lines[1] != "0100":
        raise bad(f"JASC palette version {lines[1][:10]!r} is not 0100. Save it as a JASC-PAL 0100 file.")
    try:
        count = int(lines[2])
    except ValueError:
        raise bad("JASC palette colour count (line 3) is not a number. Fix the file.") from None
    if count < 1 or count > MAX_COLORS:
        raise bad(f"JASC palette declares {count} colours; expected 1..{MAX_COLORS}. Fix the count.")
    rows = lines[3:]
    if len(rows) < count:
        raise bad(f"JASC palette declares {count} colours but has {len(rows)} rows. Fix the count or the rows.")
    colors, alpha = [], []
    for n, row in enumerate(rows[:count], 4):
        try:
            vals = [int(v) for v in row.split()]
        except ValueError:
            raise bad(f"JASC palette line {n} ({row[:40]!r}) is not 'R G B'. Fix the line.", line=n) from None
        if len(vals) not in (3, 4) or any(v < 0 or v > 255 for v in vals):
            raise bad(f"JASC palette line {n} ({row[:40]!r}) needs 3 values in 0..255. Fix the line.", line=n)
        colors.append(vals[:3])
        alpha.append(vals[3] if len(vals) == 4 else 255)
    return Palette(np.array(colors), name, np.array(alpha, np.uint8))


def parse_png(data: bytes, name: str = "") -> Palette:
    """A PNG strip/swatch image: its distinct colours in first-seen (row-major) order; transparent pixels skipped."""
    from PIL import Image

    if isinstance(data, str):
        raise bad("PNG palette must be read as bytes. Open the file in binary mode.")
    try:
        with Image.open(_io.BytesIO(data)) as im:
            if im.format != "PNG":
                raise bad(f"palette image is {im.format}, not PNG. Save it as a PNG strip.")
            if im.width * im.height > 4096 * 4096:
                raise bad("palette image is too large. Use a small strip (one pixel or cell per colour).")
            arr = np.asarray(im.convert("RGBA"))
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file
        if getattr(exc, "code", None) == "BAD_INPUT":
            raise
        raise bad(f"palette PNG could not be decoded ({type(exc).__name__}). Check the file.") from exc
    flat = arr.reshape(-1, 4)
    flat = flat[flat[:, 3] > 0]
    if len(flat) == 0:
        raise bad("palette PNG has no opaque pixels. Save the colours as opaque pixels.")
    key = (flat[:, 0].astype(np.uint32) << 24) | (flat[:, 1].astype(np.uint32) << 16) | (flat[:, 2].astype(np.uint32) << 8) | flat[:, 3]
    _, first = np.unique(key, return_index=True)
    if len(first) > MAX_COLORS:
        raise bad(f"palette PNG has {len(first)} distinct colours; at most {MAX_COLORS}. Use a palette strip, not a picture.")
    rows = flat[np.sort(first)]
    return Palette(rows[:, :3], name, rows[:, 3])


_PARSERS = {"hex": parse_hex, "gpl": parse_gpl, "pal": parse_pal, "png": parse_png}


def parse_palette(data: bytes | str, fmt: str, name: str = "") -> Palette:
    """Parse palette file contents of format ``hex``, ``gpl``, ``pal`` or ``png``."""
    fmt = str(fmt).lower().lstrip(".")
    if fmt not in _PARSERS:
        raise bad(f"unknown palette format {fmt!r}. Use one of {', '.join(FORMATS)}.")
    if fmt != "png" and isinstance(data, (bytes, bytearray)) and len(data) > 1 << 20:
        raise bad("palette file is larger than 1 MiB. Check you picked a palette file.")
    try:
        return _PARSERS[fmt](data, name)
    except RecursionError as exc:  # pragma: no cover - defensive
        raise bad(f"{fmt} palette could not be parsed. Check the file.") from exc


def read_palette(path) -> Palette:
    """Read a palette file; the format comes from the extension (``.hex .gpl .pal .png``)."""
    p = Path(path)
    fmt = p.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise bad(f"{p.name}: unknown palette extension. Use .hex, .gpl, .pal or .png.")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise bad(f"cannot read palette file {p} ({exc.strerror or exc}). Check the path.") from exc
    return parse_palette(data, fmt, p.stem)


def find_palette_file(name: str, folders) -> Path:
    """The palette file ``name`` in the first of ``folders`` that holds it: for inputs that must not read the
    rest of the machine (a node's ``file`` input reads the input folder and the shipped palettes only).

    ``name`` is relative (``mine.gpl``, ``palettes/mine.hex``). BAD_INPUT for an absolute path, ``..``, an
    extension other than ``.hex .gpl .pal .png``, a link that leads out of its folder, or a name no folder has;
    the message never shows what a file outside holds.
    """
    text = str(name).strip()
    p = Path(text)
    if p.suffix.lower().lstrip(".") not in FORMATS:
        raise bad(f"palette file {text!r} is not a .hex, .gpl, .pal or .png file. Give a palette file's name.",
                  file=text)
    if p.is_absolute() or p.drive or ".." in p.parts:
        raise bad(f"palette file {text!r} must be a name inside the input folder, not a path. Put the file in "
                  "the input folder and give its name.", file=text)
    for folder in map(Path, folders):
        cand = folder / p
        if not cand.is_file():
            continue
        if not cand.resolve().is_relative_to(folder.resolve()):
            raise bad(f"palette file {text!r} is a link that leads out of {folder}. Copy the file into the folder "
                      "instead of linking it.", file=text)
        return cand
    raise bad(f"palette file {text!r} was not found in {' or '.join(str(f) for f in folders)}. Put it in the input "
              "folder (or pick a shipped palette by name).", file=text)


def format_palette(pal: Palette, fmt: str) -> bytes:
    """Serialise a palette as ``hex``, ``gpl`` (RGBA channels when it has alpha), ``pal`` or ``png`` bytes."""
    fmt = str(fmt).lower().lstrip(".")
    has_alpha = pal.alpha is not None
    rgba = pal.rgba()
    if fmt == "hex":
        lines = [f"; {c}" for c in pal.comments]
        lines += ["%02x%02x%02x%02x" % tuple(r) if has_alpha else "%02x%02x%02x" % tuple(r[:3]) for r in rgba]
        return ("\n".join(lines) + "\n").encode()
    if fmt == "gpl":
        lines = ["GIMP Palette", f"Name: {pal.name or 'SpriteForge'}"]
        if has_alpha:
            lines.append("Channels: RGBA")
        lines.append("Columns: 8")
        lines += [f"# {c}" for c in pal.comments]
        lines.append("#")
        for r in rgba:
            vals = " ".join(f"{int(v):3d}" for v in (r if has_alpha else r[:3]))
            lines.append(f"{vals}\t#{'%02x%02x%02x' % tuple(r[:3])}")
        return ("\n".join(lines) + "\n").encode()
    if fmt == "pal":
        lines = ["JASC-PAL", "0100", str(len(pal))]
        lines += [" ".join(str(int(v)) for v in (r if has_alpha else r[:3])) for r in rgba]
        return ("\r\n".join(lines) + "\r\n").encode()
    if fmt == "png":
        from PIL import Image

        buf = _io.BytesIO()
        Image.fromarray(rgba[None, :, :], "RGBA").save(buf, format="PNG")
        return buf.getvalue()
    raise bad(f"unknown palette format {fmt!r}. Use one of {', '.join(FORMATS)}.")


# --------------------------------------------------------------------------- extraction

def _histogram(frames, alpha_threshold: int = 128, bits: int = 5, max_points: int = 1 << 14):
    """Pool frames into (colours float N x 3 in 0..255, pixel counts): means of 6-bit (or, above
    ``max_points`` bins, ``bits``-bit) RGB bins.

    Pixels whose alpha is below ``alpha_threshold`` are ignored.
    """
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        frames = [frames]
    pix = []
    for f in frames:
        f = check_image(f, "frame")
        rgb = f[..., :3].reshape(-1, 3)
        if f.shape[2] == 4:
            rgb = rgb[f[..., 3].reshape(-1) >= alpha_threshold]
        pix.append(rgb)
    pix = np.concatenate(pix) if pix else np.zeros((0, 3), np.uint8)
    if len(pix) == 0:
        raise bad("no opaque pixels to fit a palette to. Check the image/mask.")
    pix = pix.astype(np.int64)

    def binned(b):
        sh = 8 - b
        key = ((pix[:, 0] >> sh) << (2 * b)) | ((pix[:, 1] >> sh) << b) | (pix[:, 2] >> sh)
        n = 1 << (3 * b)
        wts = np.bincount(key, minlength=n)
        nzb = np.flatnonzero(wts)
        sums = np.stack([np.bincount(key, weights=pix[:, c], minlength=n)[nzb] for c in range(3)], 1)
        return sums / wts[nzb, None], wts[nzb].astype(np.float64)

    # Bin means: exact for every bin holding a single colour (the usual case for pixel art).
    cols, w = binned(6)
    if len(cols) > max_points:
        cols, w = binned(bits)
    return cols, w


def _finish(lab_centres: np.ndarray, name: str) -> Palette:
    rgb = oklab_to_srgb(lab_centres)
    rgb = np.unique(rgb, axis=0)
    lab = srgb_to_oklab(rgb)
    order = np.lexsort((lab[:, 2], lab[:, 1], lab[:, 0]))  # dark to light: a stable, readable order
    return Palette(rgb[order], name)


def _check_k(k) -> int:
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise bad(f"colour count {k!r} is not a number. Give 1..256.") from None
    if not 1 <= k <= MAX_COLORS:
        raise bad(f"colour count {k} is out of range. Give 1..{MAX_COLORS}.")
    return k


def kmeans(frames, k: int, *, seed: int = 0, iterations: int = 24, alpha_threshold: int = 128) -> Palette:
    """Seeded, deterministic weighted k-means in OKLab over all frames' pixels; returns <= k colours."""
    k = _check_k(k)
    cols, w = _histogram(frames, alpha_threshold)
    x = srgb_to_oklab(cols.astype(np.float32) / 255.0).astype(np.float64)
    if len(x) <= k:
        return _finish(x, f"kmeans-{k}")
    rng = np.random.default_rng(int(seed))
    # weighted k-means++ start
    centres = np.empty((k, 3))
    centres[0] = x[rng.choice(len(x), p=w / w.sum())]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for i in range(1, k):
        p = d2 * w
        tot = p.sum()
        j = rng.choice(len(x), p=p / tot) if tot > 0 else int(np.argmax(w))
        centres[i] = x[j]
        d2 = np.minimum(d2, ((x - centres[i]) ** 2).sum(1))
    x32 = x.astype(np.float32)
    for _ in range(int(iterations)):
        c32 = centres.astype(np.float32)
        lab = np.argmin((c32 * c32).sum(1)[None, :] - 2.0 * (x32 @ c32.T), 1)  # |x|^2 does not change argmin
        wsum = np.bincount(lab, weights=w, minlength=k)
        new = np.stack([np.bincount(lab, weights=w * x[:, c], minlength=k) for c in range(3)], 1)
        empty = wsum == 0
        new[~empty] /= wsum[~empty, None]
        if empty.any():  # re-seed empty clusters at the worst-served points, deterministically
            dist = ((x - centres[lab]) ** 2).sum(1) * w
            far = np.argsort(-dist, kind="stable")[: int(empty.sum())]
            new[empty] = x[far]
        shift = np.abs(new - centres).max()
        centres = new
        if shift < 1e-5:
            break
    return _finish(centres, f"kmeans-{k}")


def median_cut(frames, k: int, *, alpha_threshold: int = 128) -> Palette:
    """Median cut in OKLab: split the box with the largest weighted spread at its weighted median."""
    k = _check_k(k)
    cols, w = _histogram(frames, alpha_threshold)
    x = srgb_to_oklab(cols.astype(np.float32) / 255.0).astype(np.float64)
    boxes = [np.arange(len(x))]
    while len(boxes) < k:
        best, score, axis = -1, 0.0, 0
        for i, b in enumerate(boxes):
            if len(b) < 2:
                continue
            xb, wb = x[b], w[b]
            mean = (xb * wb[:, None]).sum(0) / wb.sum()
            var = ((xb - mean) ** 2 * wb[:, None]).sum(0)
            a = int(np.argmax(var))
            if var[a] > score:
                best, score, axis = i, float(var[a]), a
        if best < 0:
            break
        b = boxes.pop(best)
        order = b[np.argsort(x[b, axis], kind="stable")]
        cw = np.cumsum(w[order])
        cut = int(np.searchsorted(cw, cw[-1] / 2.0))
        cut = min(max(cut, 1), len(order) - 1)
        boxes += [order[:cut], order[cut:]]
    centres = np.stack([(x[b] * w[b, None]).sum(0) / w[b].sum() for b in boxes])
    return _finish(centres, f"median-cut-{k}")


def octree(frames, k: int, *, depth: int = 6, alpha_threshold: int = 128) -> Palette:
    """Octree quantisation over RGB: leaves at ``depth``; the deepest, least-populated nodes merge first."""
    k = _check_k(k)
    cols, w = _histogram(frames, alpha_threshold)
    c8 = np.clip(np.rint(cols), 0, 255).astype(np.int64)
    sums = cols * w[:, None]
    d = int(depth)
    # leaf code at level d: interleave the top d bits of r, g, b
    def code(level):
        s = 8 - level
        return ((c8[:, 0] >> s) << (2 * level)) | ((c8[:, 1] >> s) << level) | (c8[:, 2] >> s)

    # each colour is assigned to a node (level, code); start at depth d
    level = np.full(len(c8), d)
    node = code(d)
    while len(np.unique(level * (1 << 27) + node)) > k and d > 0:
        nleaves = len(np.unique(level * (1 << 27) + node))
        at_d = np.flatnonzero(level == d)
        if len(at_d) == 0:
            d -= 1
            continue
        parent = code(d - 1)[at_d]
        pk, pinv = np.unique(parent, return_inverse=True)
        pairs = np.unique(np.stack([pinv, node[at_d]], 1), axis=0)
        nchild = np.bincount(pairs[:, 0], minlength=len(pk))
        pw = np.bincount(pinv, weights=w[at_d], minlength=len(pk))
        order = np.lexsort((pk, pw))  # least populated first, ties by code
        gain = np.cumsum(nchild[order] - 1)
        need = nleaves - k
        m = int(np.searchsorted(gain, need)) + 1 if gain[-1] >= need else len(order)
        merge = np.zeros(len(pk), bool)
        merge[order[:m]] = True
        sel = at_d[merge[pinv]]
        level[sel] = d - 1
        node[sel] = parent[merge[pinv]]
        if m == len(order):
            d -= 1
    keys, inv = np.unique(level * (1 << 27) + node, return_inverse=True)
    wt = np.bincount(inv, weights=w, minlength=len(keys))
    cen = np.stack([np.bincount(inv, weights=sums[:, c], minlength=len(keys)) for c in range(3)], 1) / wt[:, None]
    return _finish(srgb_to_oklab(cen.astype(np.float32) / 255.0), f"octree-{k}")


def extract(frames, k: int, method: str = "kmeans", *, seed: int = 0, alpha_threshold: int = 128) -> Palette:
    """Fit one palette of at most ``k`` colours to an image or a list/batch of frames (shared, no flicker)."""
    m = str(method).lower().replace("-", "_")
    if isinstance(frames, np.ndarray) and frames.ndim == 4:
        frames = list(frames)
    if m == "kmeans":
        return kmeans(frames, k, seed=seed, alpha_threshold=alpha_threshold)
    if m == "median_cut":
        return median_cut(frames, k, alpha_threshold=alpha_threshold)
    if m == "octree":
        return octree(frames, k, alpha_threshold=alpha_threshold)
    raise bad(f"unknown palette method {method!r}. Use one of {', '.join(METHODS)}.")
