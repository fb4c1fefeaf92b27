"""``spriteforge generate`` with FLUX.2 [klein] as ComfyUI users hold it: the BFL single file
``flux-2-klein-4b.safetensors`` in ``diffusion_models/``, ``qwen_3_4b.safetensors`` (its tokenizer beside it) in
``text_encoders/`` and ``flux2-vae.safetensors`` in ``vae/``, given by their bare names (tiny files of the real
layouts)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_flux2 as tf  # noqa: E402

from spriteforge.cli.main import main  # noqa: E402


def _models(tmp_path) -> Path:
    root = tmp_path / "models"
    parts = tmp_path / "parts"
    (root / "diffusion_models").mkdir(parents=True)
    shutil.copy(tf.make_flux2(parts, layout="original"), root / "diffusion_models" / "flux-2-klein-4b.safetensors")
    te = tf.make_flux2_text_encoder(root / "text_encoders")
    assert te.name == "qwen_3_4b.safetensors" and (te.parent / "qwen_3_4b_tokenizer").is_dir()
    tf.make_flux2_vae(root / "vae", layout="original", name="flux2-vae.safetensors")
    return root


def test_generate_with_release_file_names(tmp_path, capsys):
    from PIL import Image

    root = _models(tmp_path)
    out = tmp_path / "out"
    rc = main(["-q", "generate", "--models", str(root), "--model", "flux-2-klein-4b.safetensors", "--text-encoder",
               "qwen_3_4b.safetensors", "--vae", "flux2-vae.safetensors", "--prompt", "a red knight", "--steps", "2",
               "--width", "64", "--height", "48", "--seed", "3", "--engine", "torch", "--device", "cpu", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    img = np.asarray(Image.open(out / "sf-3.png"))
    assert img.shape == (48, 64, 3) and img.std() > 1
