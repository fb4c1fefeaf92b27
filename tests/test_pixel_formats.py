"""Palette files: every format round-trips; malformed files give BAD_INPUT, never a crash (hypothesis)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import spriteforge.pixel as px
from spriteforge.errors import BAD_INPUT, SpriteForgeError
from spriteforge.pixel.palette import FORMATS, Palette, format_palette, parse_palette

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _pal(seed: int, n: int, alpha: bool = False) -> Palette:
    rng = np.random.default_rng(seed)
    cols = rng.integers(0, 256, (n, 3))
    a = rng.integers(1, 256, n).astype(np.uint8) if alpha else None
    if alpha:
        a[0] = 0
    return Palette(cols, f"test-{n}", a)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("n", [1, 2, 16, 255, 256])
def test_round_trip_every_format(fmt, n, tmp_path):
    pal = _pal(n, n)
    assert parse_palette(format_palette(pal, fmt), fmt) == pal
    path = tmp_path / f"p.{fmt}"
    path.write_bytes(format_palette(pal, fmt))
    back = px.read_palette(path)
    assert np.array_equal(back.colors, pal.colors)  # order preserved too


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_with_alpha(fmt):
    pal = _pal(3, 12, alpha=True)
    back = parse_palette(format_palette(pal, fmt), fmt)
    if fmt == "png":  # a fully transparent swatch is not a colour in a PNG strip
        assert np.array_equal(back.colors, pal.colors[1:])
    else:
        assert back == pal


@pytest.mark.parametrize("name", px.builtin_names())
def test_shipped_palettes_round_trip(name):
    pal = px.builtin(name)
    for fmt in FORMATS:
        assert np.array_equal(parse_palette(format_palette(pal, fmt), fmt).colors, pal.colors)


def test_aseprite_rgba_gpl_and_foreign_files():
    gpl = b"GIMP Palette\nName: Test\nChannels: RGBA\nColumns: 4\n#\n255   0   0 128\tRed\n  0 255   0 255 Green\n"
    pal = parse_palette(gpl, "gpl")
    assert pal.name == "Test" and pal.hex() == ["ff0000", "00ff00"] and list(pal.alpha) == [128, 255]
    assert b"Channels: RGBA" in format_palette(pal, "gpl")
    jasc = b"JASC-PAL\r\n0100\r\n2\r\n0 0 0\r\n255 255 255\r\n"
    assert parse_palette(jasc, "pal").hex() == ["000000", "ffffff"]
    lospec = b"ff0000\n#00ff00\n0000FF\n"
    assert parse_palette(lospec, "hex").hex() == ["ff0000", "00ff00", "0000ff"]
    # a PNG strip of 4x4 swatches reads back as its colours in order
    strip = np.repeat(np.repeat(np.array([[[10, 20, 30], [40, 50, 60], [10, 20, 30]]], np.uint8), 4, 0), 4, 1)
    buf = io.BytesIO()
    Image.fromarray(strip).save(buf, "PNG")
    assert parse_palette(buf.getvalue(), "png").hex() == ["0a141e", "28323c"]


@pytest.mark.parametrize("fmt,data", [
    ("hex", b""), ("hex", b"zzzzzz\n"), ("hex", b"12345\n"), ("hex", b"\n".join([b"000000"] * 257)),
    ("gpl", b""), ("gpl", b"GIMP Palette\n"), ("gpl", b"GIMP Palette\n1 2\n"), ("gpl", b"GIMP Palette\n1 2 300\n"),
    ("gpl", b"GIMP Palette\nChannels: CMYK\n"), ("gpl", b"Not a palette\n1 2 3\n"),
    ("pal", b"JASC-PAL\n0100\n3\n0 0 0\n"), ("pal", b"JASC-PAL\n0100\nx\n"), ("pal", b"JASC-PAL\n0200\n1\n0 0 0\n"),
    ("pal", b"JASC-PAL\n0100\n1\n0 0\n"), ("pal", b"JASC-PAL\n0100\n0\n"),
    ("png", b""), ("png", b"\x89PNG\r\n\x1a\n"), ("png", b"GIF89a"), ("bmp", b"BM"),
])
def test_malformed_files_are_bad_input(fmt, data):
    with pytest.raises(SpriteForgeError) as e:
        parse_palette(data, fmt)
    assert e.value.code == BAD_INPUT


def _check(fmt, data):
    try:
        pal = parse_palette(data, fmt)
    except SpriteForgeError as e:
        assert e.code == BAD_INPUT
        return
    assert 1 <= len(pal) <= 256
    assert pal.colors.dtype == np.uint8 and pal.colors.shape[1] == 3


@FUZZ
@given(fmt=st.sampled_from(["hex", "gpl", "pal", "png"]), data=st.binary(max_size=400))
def test_fuzz_random_bytes(fmt, data):
    _check(fmt, data)


_line = st.one_of(
    st.text(alphabet="0123456789abcdefABCDEF#; \t-x", max_size=12),
    st.lists(st.integers(-5, 300), min_size=0, max_size=5).map(lambda v: " ".join(map(str, v))),
    st.sampled_from(["GIMP Palette", "JASC-PAL", "0100", "Channels: RGBA", "Channels: RGB", "Name: x", "#", "", "16"]),
    st.text(max_size=8),
)


@FUZZ
@given(fmt=st.sampled_from(["hex", "gpl", "pal"]), lines=st.lists(_line, max_size=12),
       header=st.sampled_from(["", "GIMP Palette\n", "JASC-PAL\n0100\n", "JASC-PAL\r\n0100\r\n3\r\n"]))
def test_fuzz_structured_text(fmt, lines, header):
    _check(fmt, (header + "\n".join(lines)).encode("utf-8", "surrogatepass"))


@FUZZ
@given(data=st.binary(max_size=200), cut=st.integers(0, 400))
def test_fuzz_corrupted_png(data, cut):
    buf = io.BytesIO()
    Image.fromarray(np.arange(24, dtype=np.uint8).reshape(1, 8, 3)).save(buf, "PNG")
    raw = buf.getvalue()
    _check("png", raw[:cut] + data + raw[cut + len(data):])


def test_resolve_palette_paths_and_names(tmp_path):
    path = tmp_path / "mine.gpl"
    path.write_bytes(px.format_palette(px.builtin("sweetie-16"), "gpl"))
    assert px.resolve_palette(str(path)) == px.builtin("sweetie-16")
    assert px.resolve_palette("sweetie-16") == px.builtin("sweetie-16")
    for spec in (str(tmp_path / "missing.hex"), "../../etc/passwd", "pico-9"):
        with pytest.raises(SpriteForgeError) as e:
            px.resolve_palette(spec)
        assert e.value.code == BAD_INPUT
