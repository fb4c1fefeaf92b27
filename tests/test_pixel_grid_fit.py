"""Grid recovery on 64-pixel sprites at any upscale, "no grid" said out loud, and the fit mode (crop or pad to
whole cells) in the library, the command line and the Downscale node (issue #21.3)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from spriteforge.cli.main import main
from spriteforge.errors import BAD_INPUT, CODES, SpriteForgeError
from spriteforge.pixel import grid as G
from spriteforge.pixel import scale as S
from spriteforge.sprites import generator as SG
from spriteforge.sprites.degrade import cells_right


def _upscaled(seed: int, side: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A procedural ``side``-pixel sprite and its nearest-neighbour resize to ``size`` (a non-integer factor)."""
    art = SG.render(SG.random_spec(seed), side)
    return art, np.asarray(Image.fromarray(art).resize((size, size), Image.NEAREST))


def _photo(h=300, w=451) -> np.ndarray:
    """Photo-like: smooth shading plus sensor noise, no pixel grid."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([0.5 + 0.4 * np.sin(5 * xx), 0.4 + 0.3 * yy, 0.3 + 0.3 * xx * yy], -1)
    noisy = base + np.random.default_rng(0).normal(0, 0.04, base.shape)
    return np.clip(np.rint(noisy * 255), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("seed, size", [(1, 275), (2, 275), (3, 333), (4, 275), (5, 333), (5, 411)])
def test_64px_sprites_recover_at_fractional_scales(seed, size):
    art, big = _upscaled(seed, 64, size)  # these raised "matmul ... size 137 is different from 138" before
    out, info = G.recover_grid(big)
    assert info.found and out.shape == art.shape
    assert cells_right(out, art) > 0.99


def test_cli_detect_grid_on_a_275px_sprite_and_on_a_photo(tmp_path, capsys):
    _, big = _upscaled(1, 64, 275)
    Image.fromarray(big).save(tmp_path / "sprite.png")
    Image.fromarray(_photo()).save(tmp_path / "chelsea.png")
    assert main(["-q", "pixel", str(tmp_path / "sprite.png"), str(tmp_path / "chelsea.png"), "--detect-grid",
                 "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert Image.open(tmp_path / "out" / "sprite.png").size == (64, 64)
    assert "no pixel grid found" in printed and "chelsea.png" in printed


def test_grid_node_says_when_no_grid_was_found():
    import torch

    from spriteforge.nodes.pixel import PixelGridRecover

    res = PixelGridRecover.execute(torch.from_numpy(_photo(64, 96)[None].astype(np.float32) / 255))
    assert "no pixel grid found" in res.ui["text"][0]
    assert res.args[3] == 96 and res.args[4] == 64


def test_fit_crop_and_pad_in_the_library():
    img = np.zeros((300, 451, 4), np.uint8)
    img[..., 3] = 255
    img[:, :, 0] = np.arange(451)[None] % 256
    with pytest.raises(SpriteForgeError) as e:
        S.downscale(img, factor=8)
    assert e.value.code == BAD_INPUT and "--fit" in e.value.message
    crop = S.fit_to_cells(img, factor=8, fit="crop")
    assert crop.shape == (296, 448, 4) and (crop == img[2:298, 1:449]).all()  # centred
    pad = S.fit_to_cells(img, factor=8, fit="pad")
    assert pad.shape == (304, 456, 4) and (pad[2:302, 2:453] == img).all()
    assert (pad[:2, :, 3] == 0).all() and (pad[:, :2, 3] == 0).all()  # transparent border
    assert S.downscale(img, factor=8, fit="crop").shape == (37, 56, 4)
    assert S.downscale(img, size=(64, 48), fit="pad").shape == (48, 64, 4)
    assert S.downscale(img, size=(64, 48), fit="crop").shape == (48, 64, 4)
    rgb = S.fit_to_cells(img[..., :3], factor=8, fit="pad")
    assert (rgb[0, 2:453] == img[0, :, :3]).all()  # RGB pads with its edge colours
    with pytest.raises(SpriteForgeError):
        S.fit_to_cells(img, size=(500, 10), fit="crop")  # larger than the image: cropping cannot help


def test_cli_fit_modes_and_the_file_named_in_size_errors(tmp_path, capsys):
    Image.fromarray(_photo()).save(tmp_path / "chelsea.png")
    src = str(tmp_path / "chelsea.png")
    assert main(["-q", "pixel", src, "--factor", "8", "--out", str(tmp_path / "a")]) == CODES[BAD_INPUT]
    err = capsys.readouterr().err
    assert "chelsea.png" in err and "451x300" in err
    assert main(["-q", "pixel", src, "--factor", "8", "--fit", "crop", "--out", str(tmp_path / "b")]) == 0
    assert Image.open(tmp_path / "b" / "chelsea.png").size == (56, 37)
    assert main(["-q", "pixel", src, "--size", "64x64", "--fit", "pad", "--out", str(tmp_path / "c")]) == 0
    assert Image.open(tmp_path / "c" / "chelsea.png").size == (64, 64)


def test_downscale_node_fit_input():
    import torch

    from spriteforge.nodes.pixel import PixelDownscale

    x = torch.from_numpy(_photo()[None].astype(np.float32) / 255)
    with pytest.raises(SpriteForgeError):
        PixelDownscale.execute(x, factor=8)
    assert tuple(PixelDownscale.execute(x, factor=8, fit="crop").args[0].shape) == (1, 37, 56, 3)
    assert tuple(PixelDownscale.execute(x, factor=8, fit="pad").args[0].shape) == (1, 38, 57, 3)
