"""Qwen-Image 2.1 (issue #24.1): its own family (``QwenImage21Transformer2DModel``, not a Qwen-Image variant),
recognised only. Files in diffusers' names, ComfyUI's single-file layout and diffusers folders are named from the
header and told apart from Qwen-Image / 2512; Load Model refuses them naming what they are; its text encoder
(Qwen3-VL-8B) and VAE (``AutoencoderKLQwenImage21``) are named too.

The layouts are checked against diffusers itself: the tiny files are the real classes' state dicts, the release-size
header is the real class's at its default (release) config on the meta device, and ComfyUI's layout is the one
diffusers' ``convert_qwen_image21_transformer_checkpoint_to_diffusers`` turns back into the class's exact keys."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_qwen21 as Q  # noqa: E402
from test_inspect_cli import _fake_file  # noqa: E402

from spriteforge.cli.main import main  # noqa: E402
from spriteforge.errors import UNSUPPORTED_ARCHITECTURE, SpriteForgeError  # noqa: E402
from spriteforge.models import configs  # noqa: E402
from spriteforge.models.detect import detect  # noqa: E402
from spriteforge.models.families import registry  # noqa: E402

torch.set_num_threads(1)
_DTYPES = {torch.bfloat16: "bf16", torch.float32: "f32"}


def _release_header(tmp_path, comfy: bool) -> Path:
    """A sparse file with the header of the release-size transformer (diffusers' class at its default config, which
    is the release's: 32 blocks, 32 x 128 heads, Qwen3-VL 4096), in bf16, in diffusers' or ComfyUI's layout."""
    from accelerate import init_empty_weights
    from diffusers import QwenImage21Transformer2DModel

    with init_empty_weights():
        model = QwenImage21Transformer2DModel().to(torch.bfloat16)
    sd = model.state_dict()
    if comfy:
        sd = Q.comfy_state_dict(sd)
    tensors = {k: {"dtype": _DTYPES[v.dtype], "shape": list(v.shape)} for k, v in sd.items()}
    return _fake_file(tmp_path / f"qwen_image_2.1_{'comfy' if comfy else 'diffusers'}.safetensors", tensors)


def test_comfyui_layout_is_what_diffusers_converter_reads():
    from diffusers.loaders.single_file_utils import convert_qwen_image21_transformer_checkpoint_to_diffusers as convert

    sd = Q.build_transformer().state_dict()
    back = convert(dict(Q.comfy_state_dict(sd)))
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


@pytest.mark.parametrize("layout", ["diffusers", "original", "folder"])
def test_tiny_files_are_named_with_the_real_config(tmp_path, layout):
    det = detect(Q.make_qwenimage21(tmp_path, layout=layout))
    assert (det.family, det.variant) == ("qwenimage21", "base-or-turbo")
    assert det.kind == ("diffusers" if layout == "folder" else "transformer")  # (a folder: by its transformer's _class_name)
    assert det.layout == ("original" if layout == "original" else "diffusers")
    assert det.needs == ["vae", "qwen3_vl_8b"]
    assert det.extras["recognised_as"] == "Qwen-Image 2.1 (base or Turbo: same layout)"
    # the detected config builds the real class, which takes the file's weights strictly
    from diffusers import QwenImage21Transformer2DModel

    cfg = {k: v for k, v in det.config.items() if not k.startswith("_")}
    model = QwenImage21Transformer2DModel(**cfg)
    model.load_state_dict(Q.build_transformer().state_dict(), strict=True)
    assert {k: det.config[k] for k in Q.CONFIG} == {k: (list(v) if isinstance(v, tuple) else v) for k, v in Q.CONFIG.items()}
    assert det.config["patch_size"] == 1 and det.config["causal_condition"] is True


@pytest.mark.parametrize("comfy", [False, True])
def test_release_size_header_is_the_release(tmp_path, capsys, comfy):
    path = _release_header(tmp_path, comfy)
    det = detect(path)
    assert (det.family, det.layout) == ("qwenimage21", "original" if comfy else "diffusers")
    want = configs.load("qwen-image-2.1")["transformer"]
    assert {k: det.config[k] for k in want} == {k: want[k] for k in want}
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Qwen-Image 2.1" in out and "qwenimage21" in out


def test_told_apart_from_qwen_image(tmp_path):
    """Qwen-Image / 2512's tiny file is still Qwen-Image; 2.1's markers are none of Qwen-Image's (and back)."""
    from tiny_qwenimage import make_qwenimage

    qi = detect(make_qwenimage(tmp_path / "qi"))
    assert qi.family == "qwenimage"
    q21 = detect(Q.make_qwenimage21(tmp_path / "q21"))
    assert q21.family == "qwenimage21"
    from spriteforge.models.safetensors_header import read_header

    t21 = read_header(Q.make_qwenimage21(tmp_path / "q21")).tensors
    assert registry.get("qwenimage").layout_of(t21) is None
    assert registry.get("qwenimage21").layout_of(read_header(make_qwenimage(tmp_path / "qi")).tensors) is None


@pytest.mark.parametrize("layout", ["original", "folder"])
def test_load_model_refuses_it_naming_it(tmp_path, layout):
    from spriteforge.engines import get_engine

    path = Q.make_qwenimage21(tmp_path, layout=layout)
    with pytest.raises(SpriteForgeError) as e:
        get_engine("torch").load_model(str(path))
    assert e.value.code == UNSUPPORTED_ARCHITECTURE
    assert "recognised as Qwen-Image 2.1" in e.value.message and "does not generate with this family yet" in e.value.message


def test_its_vae_is_named_and_the_qwen_image_vae_still_is(tmp_path):
    from tiny_qwenimage import make_qwen_vae

    det = detect(Q.make_qwen21_vae(tmp_path))
    assert (det.kind, det.variant) == ("vae", "qwen-image-2.1")
    assert det.config["z_dim"] == 64 and det.config["in_channels"] == 4  # RGBA in, 64 latent channels
    assert "Qwen-Image 2.1 VAE" in det.extras["recognised_as"]
    for layout in ("original", "diffusers"):
        old = detect(make_qwen_vae(tmp_path / layout, layout=layout))
        assert (old.kind, old.variant) == ("vae", "qwen-image")


def test_its_text_encoder_is_named(tmp_path):
    """An untied Qwen3-VL (the 8B's head; the 4B's is tied, Krea 2's) is Qwen-Image 2.1's text encoder."""
    import transformers
    from safetensors.torch import save_file
    from tiny_krea2 import build_qwen3_vl, make_qwen3_vl

    m = build_qwen3_vl()
    cfg = m.config
    cfg.tie_word_embeddings = False
    untied = transformers.Qwen3VLForConditionalGeneration(cfg)
    path = tmp_path / "qwen3_vl_8b.safetensors"
    save_file({k: v.contiguous() for k, v in untied.state_dict().items()}, str(path))
    det = detect(path)
    assert (det.kind, det.variant) == ("text_encoder", "qwen3_vl_8b")
    assert "Qwen-Image 2.1" in det.extras["recognised_as"]
    assert detect(make_qwen3_vl(tmp_path / "krea")).variant == "qwen3_vl_4b"
