"""``spriteforge inspect``: header-only detection of files and folders, human and JSON output."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from spriteforge.cli.main import main  # noqa: E402
from spriteforge.models.detect import detect  # noqa: E402
from spriteforge.models.safetensors_header import read_header  # noqa: E402


def _inspect_json(capsys, *args):
    rc = main(["inspect", *map(str, args), "--json"])
    out = capsys.readouterr().out
    assert rc == 0, out
    return json.loads(out)


def _fake_file(path: Path, tensors: dict, metadata: dict | None = None) -> Path:
    """A safetensors file with a real header and a sparse (unwritten) data part of the full size."""
    sizes = {"bf16": ("BF16", 2), "f16": ("F16", 2), "f32": ("F32", 4), "i64": ("I64", 8), "f8_e4m3": ("F8_E4M3", 1)}
    hdr, off = {}, 0
    for k, v in tensors.items():
        code, item = sizes[v["dtype"]]
        n = 1
        for s in v["shape"]:
            n *= s
        hdr[k] = {"dtype": code, "shape": v["shape"], "data_offsets": [off, off + n * item]}
        off += n * item
    if metadata:
        hdr["__metadata__"] = metadata
    raw = json.dumps(hdr).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        fh.truncate(8 + len(raw) + off)
    return path


def _bytes_read() -> int | None:
    """Bytes this process has read so far (``rchar`` of /proc/self/io), or None where there is no such file."""
    try:
        with open("/proc/self/io") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("rchar:"))
    except OSError:
        return None


def test_multi_gigabyte_file_reads_header_only(shared_dir, tmp_path, capsys):
    man = json.loads((shared_dir / "checkpoints" / "flux1-dev.transformer.original.json").read_text())
    path = _fake_file(tmp_path / "flux1-dev.safetensors", man["tensors"], {"format": "pt"})
    assert path.stat().st_size > 20 * 2**30  # sparse: nothing is written, nothing is read
    before = _bytes_read()
    out = _inspect_json(capsys, path)
    if before is not None:  # Linux: what this process read through read(2) while inspecting, header included
        assert _bytes_read() - before < 16 * 2**20
    assert out["family"] == "flux" and out["variant"] == "dev" and out["dtype"] == "bfloat16"
    assert out["parameters"] == 11_901_408_320 and out["kind"] == "transformer"
    assert out["needs"] == ["vae", "clip_l", "t5"] and out["config"]["num_single_layers"] == 38
    rc = main(["inspect", str(path)])
    text = capsys.readouterr().out
    assert rc == 0 and "flux" in text and "11.90B" in text and "vae, clip_l, t5" in text


def test_all_in_one_checkpoint(shared_dir, tmp_path, capsys):
    t = {}
    for name, prefix in (("sd3-medium.mmdit.original", ""), ("vae16-sd3.original", ""), ("clip-l.text.hf", "text_encoders.clip_l.transformer.")):
        for k, v in json.loads((shared_dir / "checkpoints" / f"{name}.json").read_text())["tensors"].items():
            t[prefix + k] = v
    path = _fake_file(tmp_path / "sd3_medium_incl_clips.safetensors", t)
    out = _inspect_json(capsys, path)
    assert out["family"] == "sd3" and out["variant"] == "sd3-medium" and out["kind"] == "checkpoint"
    assert out["components"] == {"transformer": "model.diffusion_model.", "vae": "first_stage_model.", "clip_l": "text_encoders.clip_l.transformer."}
    assert out["needs"] == ["clip_g", "t5"]


def test_tiny_files_and_folders(tmp_path, capsys):
    import tiny_models as tm

    out = _inspect_json(capsys, tm.make_pixart(tmp_path, layout="original", variant="alpha"))
    assert out["family"] == "pixart" and out["variant"] == "alpha-1024" and out["config"]["use_additional_conditions"] is True
    out = _inspect_json(capsys, tm.make_dit(tmp_path, layout="folder"))
    assert out["kind"] == "diffusers" and out["family"] == "dit" and out["needs"] == []
    assert out["extras"]["scheduler"]["_class_name"] == "DDIMScheduler"
    out = _inspect_json(capsys, tm.make_vae(tmp_path, 16, layout="original"))
    assert out["kind"] == "vae" and out["variant"] == "kl16" and out["family"] is None
    out = _inspect_json(capsys, tm.make_t5(tmp_path))
    assert out["kind"] == "text_encoder" and out["variant"] == "t5"


def test_lora_formats(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    kohya = {
        "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(8, 64),
        "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(192, 8),
        "lora_unet_double_blocks_0_img_attn_qkv.alpha": torch.tensor(8.0),
    }
    peft = {
        "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 64),
        "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(64, 4),
    }
    comfy = {
        "diffusion_model.joint_blocks.0.x_block.attn.qkv.lora_down.weight": torch.zeros(16, 64),
        "diffusion_model.joint_blocks.0.x_block.attn.qkv.lora_up.weight": torch.zeros(192, 16),
    }
    for name, sd, fmt, rank in (("k", kohya, "kohya", 8), ("p", peft, "diffusers", 4), ("c", comfy, "comfyui", 16)):
        p = tmp_path / f"{name}.safetensors"
        save_file(sd, str(p))
        out = _inspect_json(capsys, p)
        assert out["kind"] == "lora" and out["format"] == fmt and out["rank"] == rank
        assert {"family", "variant", "dtype", "parameters"} <= set(out)


def test_unknown_and_errors(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    p = tmp_path / "mystery.safetensors"
    save_file({"backbone.layer1.weight": torch.zeros(3, 3)}, str(p))
    assert main(["inspect", str(p)]) == 12  # UNSUPPORTED_ARCHITECTURE
    err = capsys.readouterr().err
    assert "UNSUPPORTED_ARCHITECTURE" in err and "backbone" in err
    assert main(["inspect", str(tmp_path / "missing.safetensors")]) == 10  # MODEL_NOT_FOUND
    capsys.readouterr()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 10**6) + b"{}")
    assert main(["inspect", str(bad)]) == 19  # BAD_INPUT: truncated
    assert "truncated" in capsys.readouterr().err
    pk = tmp_path / "model.ckpt"
    pk.write_bytes(b"not read")
    assert main(["inspect", str(pk)]) == 12
    assert "pickle" in capsys.readouterr().err


def test_name_from_models_root(tmp_path, capsys):
    import tiny_models as tm

    from spriteforge import paths

    (tmp_path / "models" / "vae").mkdir(parents=True)
    (tmp_path / "models" / "vae" / "ae.safetensors").write_bytes(tm.make_vae(tmp_path, 16).read_bytes())
    try:
        out = _inspect_json(capsys, "ae.safetensors", "--models", tmp_path / "models")
    finally:
        paths.set_models_root(None)
    assert out["variant"] == "kl16"


def test_header_validation(tmp_path):
    from spriteforge.errors import SpriteForgeError

    hdr = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}).encode()
    p = tmp_path / "x.safetensors"
    p.write_bytes(struct.pack("<Q", len(hdr)) + hdr + b"\0" * 16)
    with pytest.raises(SpriteForgeError) as ei:
        read_header(p)
    assert "needs 16" in ei.value.message
    hdr = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    p.write_bytes(struct.pack("<Q", len(hdr)) + hdr + b"\0" * 16)
    assert read_header(p).tensors["w"].shape == (4,)
    with pytest.raises(SpriteForgeError):
        detect(p)


def test_built_in_model_is_named_by_its_own_size_however_it_is_given(capsys):
    """The 32-px demo transformer was called sigma-1024 as a file and sigma-64 as a folder (issue #21.8)."""
    from spriteforge.resolve import DEMO_DIR

    for path in (DEMO_DIR, DEMO_DIR / "transformer", DEMO_DIR / "transformer" / "diffusion_pytorch_model.safetensors"):
        rep = _inspect_json(capsys, path)
        assert (rep["family"], rep["variant"]) == ("pixart", "sigma-32"), path
        assert "ambiguous" not in rep["extras"]


def test_file_sizes_are_shown_in_a_unit_that_fits(capsys):
    from spriteforge.cli.inspect import human_bytes
    from spriteforge.resolve import DEMO_DIR

    assert [human_bytes(n) for n in (512, 3 * 2**10, int(3.44 * 2**20), 24 * 2**30)] == \
        ["512 B", "3.0 KiB", "3.4 MiB", "24.00 GiB"]
    assert main(["inspect", str(DEMO_DIR / "transformer" / "diffusion_pytorch_model.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "file size:  3.4 MiB" in out and "0.00 GiB" not in out
