"""Released checkpoints (key/shape manifests in ../shared/reference/checkpoints): detection names the right
family and variant, and conversion yields exactly the parameter set of the model class built with the real
config, on the meta device (nothing large is allocated)."""

from __future__ import annotations

import json

import pytest
import torch

from spriteforge.engines.torch_models import convert
from spriteforge.models.detect import detect_tensors
from spriteforge.models.safetensors_header import header_from_manifest

TRANSFORMERS = {
    # manifest -> (family, variant, layout)
    "flux1-dev.transformer.original": ("flux", "dev", "original"),
    "flux1-dev.transformer.diffusers": ("flux", "dev", "diffusers"),
    "flux1-schnell.transformer.original": ("flux", "schnell", "original"),
    "flux1-schnell.transformer.diffusers": ("flux", "schnell", "diffusers"),
    "sd3-medium.mmdit.original": ("sd3", "sd3-medium", "original"),
    "sd3-medium.mmdit.diffusers": ("sd3", "sd3-medium", "diffusers"),
    "sd3.5-medium.mmdit.original": ("sd3", "sd3.5-medium", "original"),
    "sd3.5-medium.mmdit.diffusers": ("sd3", "sd3.5-medium", "diffusers"),
    "sd3.5-large.mmdit.original": ("sd3", "sd3.5-large", "original"),
    "sd3.5-large.mmdit.diffusers": ("sd3", "sd3.5-large", "diffusers"),
    "pixart-sigma-xl-2-1024-ms.original": ("pixart", "sigma-1024", "original"),
    "pixart-sigma-xl-2-1024-ms.diffusers": ("pixart", "sigma-1024", "diffusers"),
}
DIFFUSERS_TWIN = {
    "flux1-dev.transformer.original": "flux1-dev.transformer.diffusers",
    "flux1-schnell.transformer.original": "flux1-schnell.transformer.diffusers",
    "sd3-medium.mmdit.original": "sd3-medium.mmdit.diffusers",
    "sd3.5-medium.mmdit.original": "sd3.5-medium.mmdit.diffusers",
    "sd3.5-large.mmdit.original": "sd3.5-large.mmdit.diffusers",
    "pixart-sigma-xl-2-1024-ms.original": "pixart-sigma-xl-2-1024-ms.diffusers",
    "vae16-flux-ae.original": "vae16-flux.diffusers",
    "vae16-sd3.original": "vae16-flux.diffusers",
    "vae4-sdxl.original": "vae4-sdxl.diffusers",
}
VAES = {
    "vae16-flux-ae.original": ("kl16", "original"),
    "vae16-sd3.original": ("kl16", "original"),
    "vae16-flux.diffusers": ("kl16", "diffusers"),
    "vae4-sdxl.original": ("kl4", "original"),
    "vae4-sdxl.diffusers": ("kl4", "diffusers"),
}
TEXT = {"clip-l.text.hf": "clip_l", "clip-g.text.hf": "clip_g", "t5xxl-fp16.encoder.hf": "t5"}


def _manifest(shared_dir, name):
    path = shared_dir / "checkpoints" / f"{name}.json"
    if not path.exists():
        pytest.skip(f"{path.name} not in the reference set")
    return json.loads(path.read_text())


def _meta(tensors, prefix=""):
    from spriteforge.engines.torch_models.tensors import torch_dtype

    return {k[len(prefix):]: torch.empty(v.shape, dtype=torch_dtype(v.dtype), device="meta") for k, v in tensors.items() if k.startswith(prefix)}


def _shapes(sd):
    return {k: tuple(v.shape) for k, v in sd.items()}


def _model_shapes(cls, config):
    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.device("meta"):
        model = cls.from_config(cfg)
    return _shapes(model.state_dict())


def _assert_same(got: dict, want: dict, what: str):
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    assert not missing and not extra, f"{what}: missing {missing[:5]} ({len(missing)}), unexpected {extra[:5]} ({len(extra)})"
    wrong = [(k, got[k], want[k]) for k in want if got[k] != want[k]]
    assert not wrong, f"{what}: shape mismatch {wrong[:5]}"


@pytest.mark.parametrize("name", sorted(TRANSFORMERS))
def test_transformer_manifest_detect_and_convert(shared_dir, name):
    import diffusers

    from spriteforge.engines.model_files import TRANSFORMER_CLASSES

    man = _manifest(shared_dir, name)
    header = header_from_manifest(man)
    family, variant, layout = TRANSFORMERS[name]
    det = detect_tensors(header.tensors, name=name)
    assert (det.family, det.variant, det.layout) == (family, variant, layout)
    assert det.kind == "transformer"
    assert det.parameters == man["parameter_count"]
    assert set(det.needs) >= {"vae"}
    if "diffusers_config" in man:  # the release's config, as recorded with the manifest
        for k, v in man["diffusers_config"].items():
            got = det.config.get(k)
            assert (list(got) if isinstance(got, (list, tuple)) else got) == (list(v) if isinstance(v, (list, tuple)) else v), k
    prefix = det.components.get("transformer", "")
    converted = convert.convert_transformer(family, _meta(header.tensors, prefix), layout)
    cls = getattr(diffusers, TRANSFORMER_CLASSES[family])
    _assert_same(_shapes(converted), _model_shapes(cls, det.config), f"{name} -> {cls.__name__}")
    twin = DIFFUSERS_TWIN.get(name)
    if twin:
        _assert_same(_shapes(converted), _shapes(_meta(header_from_manifest(_manifest(shared_dir, twin)).tensors)), f"{name} vs {twin}")


@pytest.mark.parametrize("name", ["flux1-dev.transformer.original", "flux1-schnell.transformer.original"])
def test_flux_converter_matches_diffusers(shared_dir, name):
    """Our width-generic Flux converter gives diffusers' own result on the released key set."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    header = header_from_manifest(_manifest(shared_dir, name))
    ours = convert.flux_to_diffusers(_meta(header.tensors))
    theirs = convert_flux_transformer_checkpoint_to_diffusers(_meta(header.tensors))
    _assert_same(_shapes(ours), _shapes(theirs), "flux converters")


@pytest.mark.parametrize("name", sorted(VAES))
def test_vae_manifest_detect_and_convert(shared_dir, name):
    from diffusers import AutoencoderKL

    man = _manifest(shared_dir, name)
    header = header_from_manifest(man)
    det = detect_tensors(header.tensors, name=name)
    variant, layout = VAES[name]
    assert det.kind == "vae" and det.variant == variant and det.layout == layout
    assert det.parameters == man["parameter_count"]
    prefix = det.components.get("vae", "")
    converted = convert.convert_vae(det.variant, _meta(header.tensors, prefix), layout, det.config)
    _assert_same(_shapes(converted), _model_shapes(AutoencoderKL, det.config), name)
    twin = DIFFUSERS_TWIN.get(name)
    if twin:
        _assert_same(_shapes(converted), _shapes(_meta(header_from_manifest(_manifest(shared_dir, twin)).tensors)), f"{name} vs {twin}")
    if "scaling_factor" in man and det.config["latent_channels"] == 16:
        from spriteforge.engines.model_files import vae_config_for

        family = "flux" if "flux" in name else "sd3"
        cfg = vae_config_for(det, family)
        assert cfg["scaling_factor"] == man["scaling_factor"] and cfg["shift_factor"] == man["shift_factor"]


@pytest.mark.parametrize("name", sorted(TEXT))
def test_text_encoder_manifest(shared_dir, name):
    from spriteforge.engines.torch_models.text_encoders import build_text_encoder as _te_model

    man = _manifest(shared_dir, name)
    header = header_from_manifest(man)
    det = detect_tensors(header.tensors, name=name)
    assert det.kind == "text_encoder" and det.variant == TEXT[name]
    assert det.parameters == man["parameter_count"]
    with torch.device("meta"):
        family = "sd3"
        model = _te_model(det.variant, det.config, family)
    want = _shapes(model.state_dict())
    got = _shapes(convert.convert_text_encoder(det.variant, _meta(header.tensors), set(want)))
    if det.variant == "clip_l":  # released clip_l has no projection; the loader uses the identity (as ComfyUI)
        assert "text_projection.weight" not in got
        got["text_projection.weight"] = want["text_projection.weight"]
    for opt in man.get("optional_tensors", {}):
        if opt not in want:
            got.pop(opt, None)
    _assert_same(got, want, name)


def test_all_in_one_sd3_layout(shared_dir):
    """An SD3.5 all-in-one file (MMDiT + VAE + the three text encoders under their prefixes)."""
    t = {}
    for name, prefix in (
        ("sd3.5-medium.mmdit.original", ""),
        ("vae16-sd3.original", ""),
        ("clip-l.text.hf", "text_encoders.clip_l.transformer."),
        ("clip-g.text.hf", "text_encoders.clip_g.transformer."),
        ("t5xxl-fp16.encoder.hf", "text_encoders.t5xxl.transformer."),
    ):
        for k, v in header_from_manifest(_manifest(shared_dir, name)).tensors.items():
            t[prefix + k] = v
    det = detect_tensors(t, name="sd3.5_medium_incl_clips_t5xxlfp16.safetensors")
    assert det.kind == "checkpoint" and det.family == "sd3" and det.variant == "sd3.5-medium"
    assert set(det.components) == {"transformer", "vae", "clip_l", "clip_g", "t5"}
    assert det.needs == []
    assert det.parts["vae"].variant == "kl16" and det.parts["vae"].config["scaling_factor"] == 1.5305
    assert det.parts["clip_g"].variant == "clip_g" and det.parts["t5"].variant == "t5"


def test_unknown_manifest_is_unsupported(shared_dir):
    from spriteforge.errors import SpriteForgeError

    header = header_from_manifest(_manifest(shared_dir, "birefnet-lite"))
    with pytest.raises(SpriteForgeError) as ei:
        detect_tensors(header.tensors, name="birefnet-lite.safetensors")
    assert ei.value.code == "UNSUPPORTED_ARCHITECTURE"
    assert "bb" in ei.value.message and "586 tensors" in ei.value.message
