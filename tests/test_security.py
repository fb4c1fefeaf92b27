"""Paths stay inside their folders, and nothing reaches the network at run time.

* Model names (``paths.resolve``), LoadImage names, Palette Load's ``file``, save prefixes (SaveImage, PreviewImage,
  the pack's indexed PNG and sprite-sheet savers), ``spriteforge generate --prefix`` and the
  ``/spriteforge/model_family`` route refuse ``..``, absolute paths and symlinks that lead out, with BAD_INPUT (the
  route with 400/404/422); no route reply holds an absolute path; nothing is written outside the output folder.
* A full generation of the sprite-demo workflow on the built-in model runs with every socket connect refused.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spriteforge import paths
from spriteforge.errors import BAD_INPUT, SpriteForgeError
from spriteforge.execution import graph as G
from spriteforge.execution.runner import run_workflow

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("torch")


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def tree(tmp_path):
    """models/ (with a real file, a link inside and links out), input/ (an image, a link out), out/, and a secret."""
    secret = tmp_path / "outside"
    secret.mkdir()
    (secret / "secret.safetensors").write_bytes(b"not yours")
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[2:6, 2:6] = [255, 0, 0, 255]
    Image.fromarray(rgba).save(secret / "secret.png")
    models = tmp_path / "models"
    loras = models / "loras"
    loras.mkdir(parents=True)
    (loras / "mine.safetensors").write_bytes(b"x")
    (loras / "alias.safetensors").symlink_to(loras / "mine.safetensors")
    (loras / "out.safetensors").symlink_to(secret / "secret.safetensors")
    (loras / "outdir").symlink_to(secret, target_is_directory=True)
    inp = tmp_path / "input"
    inp.mkdir()
    Image.fromarray(rgba).save(inp / "sprite.png")
    (inp / "link.png").symlink_to(secret / "secret.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "escape").symlink_to(secret, target_is_directory=True)
    return {"root": tmp_path, "models": models, "input": inp, "out": out, "secret": secret}


@pytest.mark.parametrize("name", ["../mine.safetensors", "../../outside/secret.safetensors", "a/../../x.safetensors",
                                  "/etc/passwd", "out.safetensors", "outdir/secret.safetensors"])
def test_model_names_stay_in_their_folder(tree, name):
    paths.set_models_root(tree["models"])
    if name.startswith("/"):
        name = str(tree["secret"] / "secret.safetensors")
    with pytest.raises(SpriteForgeError) as e:
        paths.resolve("loras", name)
    assert e.value.code == BAD_INPUT, e.value


def test_model_names_inside_resolve(tree):
    paths.set_models_root(tree["models"])
    assert paths.resolve("loras", "mine.safetensors") == tree["models"] / "loras" / "mine.safetensors"
    assert paths.resolve("loras", "alias.safetensors").resolve() == (tree["models"] / "loras" / "mine.safetensors")
    with pytest.raises(SpriteForgeError) as e:
        paths.resolve("loras", "nope.safetensors")
    assert e.value.code == "MODEL_NOT_FOUND"


def _load_save(image: str, prefix: str = "ok", save: str = "SaveImage") -> dict:
    wf = {"1": {"class_type": "LoadImage", "inputs": {"image": image}}}
    if save == "SaveImage":
        wf["2"] = {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}}
    elif save == "indexed":
        wf["2"] = {"class_type": "SpriteForgePixelSaveIndexed",
                   "inputs": {"images": ["1", 0], "mask": ["1", 1], "filename_prefix": prefix}}
    else:
        wf["2"] = {"class_type": "SpriteForgePixelSpriteSheet",
                   "inputs": {"images": ["1", 0], "mask": ["1", 1], "filename_prefix": prefix}}
    return G.fill_defaults(wf)


@pytest.mark.parametrize("image", ["link.png", "../outside/secret.png", "/abs"])
def test_load_image_refuses_paths_out_of_the_input_folder(tree, image):
    if image == "/abs":
        image = str(tree["secret"] / "secret.png")
    with pytest.raises(SpriteForgeError) as e:
        run_workflow(_load_save(image), out_dir=tree["out"], input_dir=tree["input"])
    assert e.value.code == BAD_INPUT
    from spriteforge.execution.core_nodes import Folders, LoadImage, with_folders  # the node, past the choice list

    with pytest.raises(SpriteForgeError) as e:
        with_folders(LoadImage, Folders(input=tree["input"])).execute(image)
    assert e.value.code == BAD_INPUT


@pytest.mark.parametrize("save", ["SaveImage", "indexed", "sheet"])
@pytest.mark.parametrize("prefix", ["../up", "../../up", "/tmp/abs", "C:/x", "a/../../b", "escape/x"])
def test_save_prefixes_stay_in_the_output_folder(tree, save, prefix):
    before = _files(tree["root"])
    with pytest.raises(SpriteForgeError) as e:
        run_workflow(_load_save("sprite.png", prefix, save), out_dir=tree["out"], input_dir=tree["input"])
    assert e.value.code == BAD_INPUT, e.value
    assert _files(tree["root"]) == before
    assert sorted(os.listdir(tree["secret"])) == ["secret.png", "secret.safetensors"]


@pytest.mark.parametrize("save", ["SaveImage", "indexed", "sheet"])
def test_saving_twice_never_overwrites(tree, save):
    r1 = run_workflow(_load_save("sprite.png", "sub/x", save), out_dir=tree["out"], input_dir=tree["input"])
    stamp = {p: p.read_bytes() for p in r1.files}
    r2 = run_workflow(_load_save("sprite.png", "sub/x", save), out_dir=tree["out"], input_dir=tree["input"])
    assert r1.files and r2.files and not set(r1.files) & set(r2.files)
    assert all(p.read_bytes() == b for p, b in stamp.items())
    assert all(tree["out"] in Path(p).resolve().parents for p in r1.files + r2.files)


@pytest.mark.parametrize("name", ["../../outside/secret.safetensors", "/etc/passwd", "out.safetensors",
                                  "outdir/secret.safetensors", "a\0b", "x" * 5000, "..", "/", ".", "./", "a/./b"])
def test_model_family_route_refuses_paths_out(tree, name):
    from spriteforge.nodes import routes

    paths.set_models_root(tree["models"])
    for kind in ("diffusion_models", "checkpoints"):
        (tree["models"] / kind).mkdir(exist_ok=True)
    (tree["models"] / "checkpoints" / "out.safetensors").symlink_to(tree["secret"] / "secret.safetensors")
    (tree["models"] / "checkpoints" / "outdir").symlink_to(tree["secret"], target_is_directory=True)
    res = routes.model_family(name)
    assert res["family"] is None and res["error"], res
    assert res["status"] in (400, 404), res  # the route answers 4xx, not 200 with an error field
    assert "not yours" not in str(res) and str(tree["root"]) not in str(res)


def test_model_family_route_statuses_and_no_absolute_paths(tree):
    from spriteforge.nodes import routes
    from spriteforge.resolve import DEMO

    paths.set_models_root(tree["models"])
    dm = tree["models"] / "diffusion_models"
    dm.mkdir()
    (dm / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (dm / "notes.safetensors").write_bytes(b"\xff" * 64)
    replies = {n: routes.model_family(n) for n in ("", ".", "..", "missing.safetensors", "junk.safetensors",
                                                     "notes.safetensors")}
    assert {n: r["status"] for n, r in replies.items()} == {
        "": 400, ".": 400, "..": 400, "missing.safetensors": 404, "junk.safetensors": 422, "notes.safetensors": 422}
    assert all(r["error"] and r["family"] is None for r in replies.values())
    if (REPO / "demo_model" / "model_index.json").exists():
        replies[DEMO] = routes.model_family(DEMO)
        assert replies[DEMO]["status"] == 200 and replies[DEMO]["family"] == "pixart"
    text = repr(replies)
    for root in {str(tree["root"]), str(REPO), str(REPO.resolve()), str(paths.models_root)}:
        assert root not in text, (root, text)


def test_route_replies_cut_absolute_paths():
    from spriteforge.nodes.routes import public

    got = public({"reason": "cannot load /opt/sw/lib/libmlx.so: missing", "win": "C:\\Users\\me\\m.safetensors bad",
                  "list": ["\\\\server\\share\\x.bin"], "n": 3, "none": None})
    assert got == {"reason": "cannot load libmlx.so: missing", "win": "m.safetensors bad", "list": ["x.bin"],
                   "n": 3, "none": None}
    kept = "see http://127.0.0.1:8188/api and models/diffusion_models, 1/2 of it"
    assert public(kept) == kept


# --------------------------------------------------------------------------- Palette Load's file input (issue 22.3)

def _palette_wf(file: str) -> dict:
    return G.fill_defaults({
        "1": {"class_type": "SpriteForgePixelPaletteLoad", "inputs": {"name": "pico-8", "file": file}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "sprite.png"}},
        "3": {"class_type": "SpriteForgePixelQuantize", "inputs": {"image": ["2", 0], "palette": ["1", 0]}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    })


@pytest.fixture
def palettes(tree):
    """A palette outside every allowed folder (its second line a secret), a link to it from the input folder."""
    (tree["secret"] / "secret.hex").write_text("ff0000\nmy-secret-line\n")
    (tree["secret"] / "secret.gpl").write_text("GIMP Palette\nmy-secret-line\n")
    (tree["input"] / "link.hex").symlink_to(tree["secret"] / "secret.hex")
    (tree["input"] / "mine.gpl").write_text("GIMP Palette\n255 0 0 red\n0 0 255 blue\n")
    return tree


@pytest.mark.parametrize("file", ["ABS/secret.hex", "ABS/secret.gpl", "../outside/secret.hex",
                                  "sub/../../outside/secret.gpl", "link.hex", "/etc/passwd", "sprite.png.txt"])
def test_palette_file_input_stays_in_its_folders(palettes, file):
    from spriteforge.nodes.folders import Folders, with_folders
    from spriteforge.nodes.pixel import PixelPaletteLoad

    file = file.replace("ABS", str(palettes["secret"]))
    with pytest.raises(SpriteForgeError) as e:
        run_workflow(_palette_wf(file), out_dir=palettes["out"], input_dir=palettes["input"])
    assert e.value.code == BAD_INPUT and "my-secret-line" not in str(e.value), e.value
    with pytest.raises(SpriteForgeError) as e:  # the node itself, as ComfyUI calls it
        with_folders(PixelPaletteLoad, Folders(input=palettes["input"])).execute("pico-8", file)
    assert e.value.code == BAD_INPUT and "my-secret-line" not in str(e.value), e.value


def test_palette_file_input_reads_the_input_folder_and_shipped_palettes(palettes):
    from spriteforge.nodes.folders import Folders, with_folders
    from spriteforge.nodes.pixel import PixelPaletteLoad
    from spriteforge.pixel import palette as P

    node = with_folders(PixelPaletteLoad, Folders(input=palettes["input"]))
    assert node.execute("pico-8", "mine.gpl")[0].hex() == ["ff0000", "0000ff"]
    assert node.execute("pico-8", " sweetie-16.hex ")[0] == P.builtin("sweetie-16")
    with pytest.raises(SpriteForgeError) as e:
        node.execute("pico-8", "nope.hex")
    assert e.value.code == BAD_INPUT and "was not found" in e.value.message
    run_workflow(_palette_wf("mine.gpl"), out_dir=palettes["out"], input_dir=palettes["input"])


def test_cli_generate_prefix_and_no_overwrite(tmp_path, capsys):
    from spriteforge.cli.main import main

    if not (REPO / "demo_model" / "model_index.json").exists():
        pytest.skip("demo_model/ is not present")
    out = tmp_path / "out"
    for bad in ("../up", "a/b", "/abs"):
        rc = main(["-q", "generate", "--prompt", "red potion", "--steps", "1", "--width", "32", "--height", "32",
                   "--out", str(out), "--prefix", bad])
        assert rc == 19  # BAD_INPUT's exit code
    assert not (tmp_path / "up-0.png").exists()
    args = ["-q", "generate", "--prompt", "red potion", "--steps", "2", "--width", "32", "--height", "32",
            "--seed", "3", "--out", str(out)]
    assert main(args) == 0
    first = (out / "sf-3.png").read_bytes()
    assert main(args) == 0
    assert (out / "sf-3.png").read_bytes() == first and (out / "sf-3_1.png").exists()
    capsys.readouterr()


# --------------------------------------------------------------------------- no network

@pytest.fixture
def no_network(monkeypatch):
    """Every way out refused: connect/connect_ex on any socket, create_connection, name lookups."""
    attempts = []

    def refuse(*a, **k):
        attempts.append(a[1:] if len(a) > 1 else a)
        raise OSError("network access attempted at run time (blocked by the test)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


@pytest.mark.skipif(not (REPO / "demo_model" / "model_index.json").exists(), reason="demo_model/ is not present")
def test_sprite_demo_generates_with_sockets_blocked(tmp_path, no_network):
    with pytest.raises(OSError):  # the block is real
        socket.create_connection(("example.com", 80), timeout=1)
    no_network.clear()
    res = run_workflow(REPO / "example_workflows" / "api" / "sprite_demo.json", out_dir=tmp_path,
                       overrides=["3.batch_size=2", "3.steps=4"])
    sprites = [p for p in res.files if p.name.startswith("demo_sprite_")]
    assert len(sprites) == 2 and all(p.is_file() for p in sprites)
    with Image.open(sprites[0]) as im:
        assert im.mode == "P" and im.size == (32, 32)
    assert no_network == [], f"the run tried to reach the network: {no_network}"
