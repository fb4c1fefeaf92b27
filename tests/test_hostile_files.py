"""Hostile model files (issue #22.6/#22.7, #21.8): every one gets a coded error that names the file and says what it
is, on every path a user's file takes (``inspect``, ``generate``, the header reader), never ENGINE_INTERNAL."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny_models  # noqa: E402

from spriteforge.cli.main import main  # noqa: E402
from spriteforge.errors import BAD_INPUT, UNSUPPORTED_ARCHITECTURE, SpriteForgeError  # noqa: E402
from spriteforge.models.safetensors_header import read_header  # noqa: E402


def _write(path: Path, header: bytes | dict, data: bytes = b"") -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw + data)
    return path


def _cli(capsys, *argv) -> tuple[int, str]:
    rc = main([*map(str, argv)])
    return rc, capsys.readouterr().err


F32_1 = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
HEADERS = {  # name -> (header bytes, what the message must say)
    "offset_1e999": (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,1e999]}}', "data_offsets"),
    "shape_1e999": (b'{"a":{"dtype":"F32","shape":[1e999],"data_offsets":[0,4]}}', "shape"),
    "shape_float": (b'{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}', "shape"),
    "dtype_list": (json.dumps({"a": {**F32_1, "dtype": ["F32"]}}).encode(), "dtype"),
    "dtype_object": (json.dumps({"a": {**F32_1, "dtype": {"F32": 1}}}).encode(), "dtype"),
    "entry_not_object": (b'{"a":[1,2,3]}', "malformed"),
    "nested_100000": (b"[" * 100000 + b"]" * 100000, "nested"),
    "nested_in_entry": (b'{"a":' + b"[" * 100000 + b"]" * 100000 + b"}", "nested"),
    "overlap_at_0": (json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                 "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode(), "overlap"),
    "overlap_partly": (json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                   "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode(), "overlap"),
}


@pytest.mark.parametrize("name", sorted(HEADERS))
def test_malformed_headers_are_bad_input_on_every_path(name, tmp_path, capsys):
    header, said = HEADERS[name]
    path = _write(tmp_path / f"{name}.safetensors", header, b"\0" * 16)
    with pytest.raises(SpriteForgeError) as exc:
        read_header(path)
    assert exc.value.code == BAD_INPUT and path.name in exc.value.message and said in exc.value.message
    rc, err = _cli(capsys, "inspect", path)
    assert rc == 19 and err.startswith("BAD_INPUT:") and said in err, err
    rc, err = _cli(capsys, "generate", "--model", path, "--prompt", "x", "--out", tmp_path / "out")
    assert rc == 19 and err.startswith("BAD_INPUT:") and said in err, err
    assert not (tmp_path / "out").exists()  # nothing written for a model that never loaded


def test_empty_tensors_may_share_an_offset(tmp_path):
    """Zero-size tensors occupy no bytes: several at one offset is a valid file (real writers make them)."""
    path = _write(tmp_path / "ok.safetensors", {
        "a": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]},
        "b": {"dtype": "F32", "shape": [1, 0], "data_offsets": [0, 0]},
        "c": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)
    assert set(read_header(path).tensors) == {"a", "b", "c"}


def test_folder_whose_tensors_overlap_is_refused_by_inspect_and_generate(tmp_path, capsys):
    """A diffusers folder with every tensor of its transformer at offset 0: inspect used to call it fine."""
    folder = tiny_models.make_pixart(tmp_path / "m", layout="folder")
    weights = next((folder / "transformer").glob("*.safetensors"))
    header = read_header(weights)
    codes = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
    hostile = {k: {"dtype": codes[t.dtype], "shape": list(t.shape), "data_offsets": [0, t.offsets[1] - t.offsets[0]]}
               for k, t in header.tensors.items()}
    _write(weights, hostile, b"\0" * max(t.offsets[1] - t.offsets[0] for t in header.tensors.values()))
    rc, err = _cli(capsys, "inspect", folder)
    assert rc == 19 and "overlap" in err and weights.name in err, err
    rc, err = _cli(capsys, "generate", "--model", folder, "--prompt", "x", "--steps", "1", "--out", tmp_path / "o")
    assert rc == 19 and "overlap" in err, err


@pytest.mark.parametrize("what,head,code", [
    ("a PNG image", b"\x89PNG\r\n\x1a\n" + b"\0" * 32, BAD_INPUT),
    ("a JPEG image", b"\xff\xd8\xff\xe0" + b"\0" * 32, BAD_INPUT),
    ("a GGUF file", b"GGUF\x03\x00\x00\x00" + b"\0" * 32, BAD_INPUT),  # read as GGUF: a damaged one
    ("a Python pickle", b"\x80\x04\x95" + b"\0" * 32, BAD_INPUT),
    ("a zip archive", b"PK\x03\x04" + b"\0" * 32, BAD_INPUT),
    ("a Git LFS pointer", b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 12\n", BAD_INPUT),
    ("a web page", b"<!DOCTYPE html><html><body>Sign in</body></html>", BAD_INPUT),
])
def test_other_formats_are_named_not_called_truncated(what, head, code, tmp_path, capsys):
    """A PNG is not "a truncated download"; a GGUF given to generate is a GGUF file, as inspect says."""
    for name in ("file.safetensors", "file.bin.safetensors"):
        path = tmp_path / name
        path.write_bytes(head)
        with pytest.raises(SpriteForgeError) as exc:
            read_header(path)
        assert exc.value.code == code and what in exc.value.message, exc.value.message
        assert "truncated" not in exc.value.message
        for argv in (("inspect", path), ("generate", "--model", path, "--prompt", "x", "--out", tmp_path / "o")):
            rc, err = _cli(capsys, *argv)
            assert err.startswith(f"{code}:") and what in err and "truncated" not in err, (argv, err)


def test_a_gguf_file_gets_one_message_wherever_it_is_given(tmp_path, capsys):
    """inspect said "model.gguf is a GGUF file; SpriteForge loads safetensors..." (by its extension) while generate
    and Load Model said the content check's message: now the bytes decide, and every entry point says the same."""
    from spriteforge.engines import get_engine

    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\0" * 64)
    errs = [_cli(capsys, *argv)[1] for argv in (("inspect", path),
                                                ("generate", "--model", path, "--prompt", "x", "--out", tmp_path / "o"))]
    with pytest.raises(SpriteForgeError) as exc:
        get_engine("torch").load_model(path)
    first = errs[0].splitlines()[0]
    assert first.startswith("BAD_INPUT: model.gguf is a GGUF file that cannot be read (") and \
        first.endswith("it is damaged or incomplete. Download it again."), errs
    assert all(e.splitlines()[0] == first for e in errs) and f"{exc.value.code}: {exc.value.message}" == first
    assert not (tmp_path / "o").exists()


def test_png_given_to_inspect_under_its_own_name(tmp_path, capsys):
    from PIL import Image

    path = tmp_path / "sprite.png"
    Image.new("RGB", (8, 8)).save(path)
    rc, err = _cli(capsys, "inspect", path)
    assert rc == 19 and "is a PNG image" in err and "truncated" not in err, err


@pytest.mark.parametrize("engine", ["torch", "mlx"])
def test_a_vae_of_another_family_is_named_not_a_shape_error(engine, tmp_path, capsys):
    """A PixArt/SDXL (4-channel) VAE given for Flux, or Flux's 16-channel one for PixArt, ended in a shape error
    inside the sampler (ENGINE_INTERNAL); now the file, what it is for and what the model needs are said."""
    if engine == "mlx":
        pytest.importorskip("mlx.core")  # the MLX framework itself, on machines that have it
    root = tmp_path / "m"
    flux = tiny_models.make_flux(root, layout="original", variant="schnell")
    pixart = tiny_models.make_pixart(root, layout="original")
    vae4 = tiny_models.make_vae(root, 4, name="vae4.safetensors")
    vae16 = tiny_models.make_vae(root, 16, name="vae16.safetensors")
    clip, t5 = tiny_models.make_clip(root), tiny_models.make_t5(root)
    common = ["generate", "--engine", engine, "--prompt", "x", "--steps", "1", "--width", "32", "--height", "32"]
    rc, err = _cli(capsys, *common, "--model", flux, "--vae", vae4, "--text-encoder", clip, "--text-encoder", t5,
                   "--out", tmp_path / "a")
    assert rc == 19 and "vae4.safetensors is a VAE for 4-channel latents" in err and "flux model needs" in err, err
    rc, err = _cli(capsys, *common, "--model", pixart, "--vae", vae16, "--text-encoder", t5, "--out", tmp_path / "b")
    assert rc == 19 and "vae16.safetensors is a VAE for 16-channel latents" in err and "pixart model needs" in err, err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


class _RunsCode:
    """Pickles as a call of print("pwned"): what a hostile .pt would hold (os.system in the wild)."""

    def __reduce__(self):
        return (print, ("pwned",))


def test_pickles_that_would_run_code_are_refused_as_such(tmp_path, capsys):
    """A pickled LoRA that would run code was "damaged, download it again", passing on torch's advice to turn off
    weights_only; now LoRA and model alike say it may run code and was refused (#22.7)."""
    import torch

    lora = tmp_path / "evil_lora.pt"
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(4, 4), "lora_unet_x.lora_up.weight": torch.zeros(4, 4),
                "payload": _RunsCode()}, lora)
    model = tmp_path / "evil_model.ckpt"
    model.write_bytes(lora.read_bytes())
    for argv in (["--lora", lora], ["--model", model]):
        rc, err = _cli(capsys, "generate", "-q", "--prompt", "red sword", "--steps", "1", "--out", tmp_path / "o", *argv)
        out = capsys.readouterr()
        assert rc == 19 and "could run code from the file, so it was refused" in err, err
        assert "weights_only" not in err and "download it again" not in err and "damaged" not in err, err
        assert "pwned" not in err + out.out + out.err
    assert not (tmp_path / "o").exists()


def test_a_lora_full_of_nan_is_named(tmp_path, capsys):
    """"the sampler produced NaN latents ... load in float32" did not name the LoRA that caused it (#22.7)."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    from spriteforge.resolve import DEMO_DIR

    night = load_file(str(DEMO_DIR / "loras" / "night.safetensors"))
    save_file({k: np.full_like(v, np.nan) if v.ndim > 1 else v for k, v in night.items()}, str(tmp_path / "nan.safetensors"))
    rc, err = _cli(capsys, "generate", "-q", "--prompt", "red sword", "--steps", "2", "--lora", tmp_path / "nan.safetensors",
                   "--out", tmp_path / "o")
    assert rc == 19 and "with the LoRA nan.safetensors applied" in err and "float32" not in err, err
    assert not (tmp_path / "o").exists()  # a failed run leaves no empty output folder


@pytest.mark.parametrize("engine", ["torch", "mlx"])
def test_a_config_far_larger_than_its_weights_is_refused_before_allocating(engine, tmp_path, capsys):
    """config.json saying 1000x the layers of the weights beside it: compared on the meta device, refused (#22.7);
    MLX said MODEL_NOT_CONVERTED ("a variant the MLX engine does not know"), which was not true."""
    if engine == "mlx":
        pytest.importorskip("mlx.core")  # the MLX framework itself, on machines that have it
    folder = tiny_models.make_pixart(tmp_path / "m", layout="folder")
    cfg_path = folder / "transformer" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["num_layers"] *= 1000
    cfg_path.write_text(json.dumps(cfg))
    argv = ("generate", "-q", "--engine", engine, "--model", folder, "--prompt", "x", "--steps", "1", "--out", tmp_path / "o")
    rc, err = _cli(capsys, *argv)
    assert rc == 19 and "transformer/config.json does not match the weights" in err and "parameters" in err, err
    cfg["num_layers"] //= 1000
    cfg["attention_head_dim"] *= 1000
    cfg_path.write_text(json.dumps(cfg))
    rc, err = _cli(capsys, *argv)
    assert rc == 19 and "transformer/config.json does not match" in err and "in the config but" in err, err
    cfg["attention_head_dim"] //= 1000
    cfg_path.write_text(json.dumps(cfg))
    vae_cfg_path = folder / "vae" / "config.json"
    vae_cfg = json.loads(vae_cfg_path.read_text())
    vae_cfg["layers_per_block"] *= 1000
    vae_cfg_path.write_text(json.dumps(vae_cfg))
    rc, err = _cli(capsys, *argv)
    assert rc == 19 and "vae/config.json does not match the weights" in err, err
    assert not (tmp_path / "o").exists()
