"""One way of writing output files (``paths.OutputFolder``), used by every command and save node: nothing a run
did not write is replaced, no link is followed out of the output folder, nothing is written beside the inputs,
every argument is checked before anything is written, and a failed run leaves no empty folder behind
(issue #22 items 1, 2, 6, 7, 8)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spriteforge.cli.main import main
from spriteforge.errors import BAD_INPUT, CODES, SpriteForgeError
from spriteforge.paths import OutputFolder
from spriteforge.sprites import generator as SG

RC_BAD = CODES[BAD_INPUT]


def _sprite(path: Path, seed: int = 0, side: int = 32) -> Path:
    Image.fromarray(SG.render(SG.random_spec(seed), side)).save(path)
    return path


@pytest.fixture
def pics(tmp_path):
    """pics/ with two sprites, an outside/ folder holding a file that is not ours, and an empty out/ path."""
    d = tmp_path / "pics"
    d.mkdir()
    _sprite(d / "ok64.png", 0)
    _sprite(d / "hero.png", 1)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "file").write_bytes(b"not yours")
    return {"pics": d, "outside": outside, "out": tmp_path / "out", "root": tmp_path}


# --------------------------------------------------------------------------- the library


def test_existing_names_get_new_ones_and_links_are_not_followed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"mine")
    (out / "b.png").symlink_to(tmp_path / "dangling-target")      # dangling: creating through it is refused
    (out / "c.png").symlink_to(tmp_path / "outside-file")
    (tmp_path / "outside-file").write_bytes(b"theirs")
    folder = OutputFolder(out)
    written = [folder.write_bytes(n, b"new") for n in ("a.png", "b.png", "c.png", "a.png")]
    assert [p.name for p in written] == ["a_1.png", "b_1.png", "c_1.png", "a_2.png"]
    assert (out / "a.png").read_bytes() == b"mine" and (tmp_path / "outside-file").read_bytes() == b"theirs"
    assert not (tmp_path / "dangling-target").exists()
    assert folder.written == written


def test_numbered_names_count_above_existing_ones(tmp_path):
    out = tmp_path / "out"
    (out / "s").mkdir(parents=True)
    (out / "s" / "x_00007_.png").symlink_to(tmp_path / "nowhere")
    with OutputFolder(out).create("x", sub="s", numbered=".png") as (path, f):
        f.write(b"png")
    assert path.name == "x_00008_.png" and not (tmp_path / "nowhere").exists()


def test_subfolder_through_a_link_out_is_refused_before_anything_is_created(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (out / "lnk").symlink_to(outside, target_is_directory=True)
    with pytest.raises(SpriteForgeError) as e:
        OutputFolder(out).write_bytes("x.png", b"png", sub="lnk/created_outside")
    assert e.value.code == BAD_INPUT and "outside" in e.value.message
    assert os.listdir(outside) == []


def test_nothing_is_created_until_a_file_is_written_and_a_failed_write_leaves_nothing(tmp_path):
    folder = OutputFolder(tmp_path / "a" / "b").check()
    assert not (tmp_path / "a").exists()
    with pytest.raises(RuntimeError):
        with folder.create("x.png") as (path, f):
            f.write(b"half")
            raise RuntimeError("encoder failed")
    assert not path.exists() and folder.written == []


def test_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "afile").write_bytes(b"x")
    for bad in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        with pytest.raises(SpriteForgeError) as e:
            OutputFolder(bad, label="--out").check()
        assert e.value.code == BAD_INPUT and "file" in e.value.message


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder this process cannot write: a chmod 555 folder (not root), or a read-only system folder."""
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    yield next((p for p in (d, Path("/sys"), Path("/proc/sys")) if p.is_dir() and not os.access(p, os.W_OK)), None)
    d.chmod(0o755)


def test_out_on_a_read_only_place_is_refused(read_only_dir):
    if read_only_dir is None:
        pytest.skip("root on a machine where every candidate folder is writable")
    with pytest.raises(SpriteForgeError) as e:
        OutputFolder(read_only_dir / "out", label="--out").check()
    assert e.value.code == BAD_INPUT and "cannot be written" in e.value.message


# --------------------------------------------------------------------------- spriteforge pixel / rmbg


def test_pixel_keeps_the_users_files_and_follows_no_link(pics):
    out = pics["out"]
    out.mkdir()
    (out / "ok64.png").write_bytes(b"the user's own")
    (out / "palette.hex").write_bytes(b"the user's palette")
    (out / "hero.png").symlink_to(pics["outside"] / "file")
    assert main(["-q", "pixel", str(pics["pics"]), "--out", str(out), "--palette", "4"]) == 0
    assert (out / "ok64.png").read_bytes() == b"the user's own"
    assert (out / "palette.hex").read_bytes() == b"the user's palette"
    assert (pics["outside"] / "file").read_bytes() == b"not yours"
    assert {"ok64_1.png", "hero_1.png", "palette_1.hex", "palette.gpl"} <= set(os.listdir(out))
    assert main(["-q", "pixel", str(pics["pics"]), "--out", str(out)]) == 0  # a second run: new names again
    assert {"ok64_2.png", "hero_2.png"} <= set(os.listdir(out))


def test_pixel_into_the_input_folder_says_so(pics, capsys):
    before = {p.name: p.read_bytes() for p in pics["pics"].iterdir()}
    for argv in ([str(pics["pics"])], [str(pics["pics"] / "ok64.png")]):
        assert main(["-q", "pixel", *argv, "--out", str(pics["pics"])]) == RC_BAD
        err = capsys.readouterr().err
        assert "the results would be written among the originals" in err and "no images found" not in err
    assert {p.name: p.read_bytes() for p in pics["pics"].iterdir()} == before


@pytest.mark.parametrize("argv, option", [
    (["--palette", "0"], "--palette 0"), (["--palette", "-3"], "--palette -3"), (["--factor", "0"], "--factor 0"),
    (["--min-island", "-5"], "--min-island -5"), (["--fill-holes", "-1"], "--fill-holes -1"),
    (["--upscale", "0"], "--upscale 0"), (["--columns", "-3", "--sheet", "s"], "--columns -3"),
    (["--size", "0x8"], "--size 0x8"), (["--seed", "-1", "--palette", "4"], "--seed -1"),
    (["--fit", "crop"], "--fit"), (["--sheet", "///"], "--sheet"),
])
def test_pixel_refuses_bad_options_before_writing_anything(pics, capsys, argv, option):
    assert main(["-q", "pixel", str(pics["pics"]), "--out", str(pics["out"]), *argv]) == RC_BAD
    assert option in capsys.readouterr().err
    assert not pics["out"].exists()


def test_pixel_sheet_of_unequal_sizes_is_refused_before_the_pngs(pics, capsys):
    _sprite(pics["pics"] / "big.png", 2, side=48)
    assert main(["-q", "pixel", str(pics["pics"]), "--out", str(pics["out"]), "--sheet", "s"]) == RC_BAD
    assert "one size" in capsys.readouterr().err and not pics["out"].exists()


@pytest.mark.parametrize("command", [["pixel"], ["rmbg", "--model", "unused.safetensors"], ["run"]])
def test_out_that_is_an_existing_file(pics, capsys, command):
    afile = pics["root"] / "afile"
    afile.write_bytes(b"x")
    inputs = [str(Path(__file__).resolve().parents[1] / "example_workflows" / "api" / "sprite_demo.json")] \
        if command == ["run"] else [str(pics["pics"])]
    rc = main(["-q", command[0], *inputs, *command[1:], "--out", str(afile)])
    assert rc == RC_BAD
    assert "is an existing file, not a folder" in capsys.readouterr().err
    assert afile.read_bytes() == b"x"


# --------------------------------------------------------------------------- generate and the save nodes


def test_generate_does_not_write_through_a_dangling_link(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sf-0.png").symlink_to(tmp_path / "created-outside.png")
    assert main(["-q", "generate", "--prompt", "a red potion", "--seed", "0", "--steps", "1", "--out", str(out)]) == 0
    assert not (tmp_path / "created-outside.png").exists()
    assert (out / "sf-0_1.png").is_file()


@pytest.mark.parametrize("save", ["SaveImage", "SpriteForgePixelSaveIndexed", "SpriteForgePixelSpriteSheet"])
def test_save_nodes_refuse_a_link_out_before_creating_folders(tmp_path, save):
    import torch

    from spriteforge.execution.core_nodes import SaveImage
    from spriteforge.nodes import pixel as PN
    from spriteforge.nodes.folders import Folders, with_folders

    out = tmp_path / "out"
    out.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (out / "lnk").symlink_to(outside, target_is_directory=True)
    cls = {"SaveImage": SaveImage, "SpriteForgePixelSaveIndexed": PN.PixelSaveIndexed,
           "SpriteForgePixelSpriteSheet": PN.PixelSpriteSheet}[save]
    node = with_folders(cls, Folders(input=tmp_path, output=out))
    with pytest.raises(SpriteForgeError) as e:
        node.execute(torch.rand(1, 8, 8, 3), filename_prefix="lnk/created_outside/x")
    assert e.value.code == BAD_INPUT
    assert os.listdir(outside) == []
