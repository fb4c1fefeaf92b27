"""Detection of releases with no reference manifest: build the real-config model on the meta device,
take its key/shape map (what a file header of it holds), and check family, variant and config.
Original layouts are produced with the inverse mappings in tiny_models (on meta tensors)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_models as tm  # noqa: E402

from spriteforge.engines.torch_models import convert  # noqa: E402
from spriteforge.engines.torch_models.building import diffusers_class  # noqa: E402
from spriteforge.models import configs  # noqa: E402
from spriteforge.models.detect import detect_tensors  # noqa: E402
from spriteforge.models.families import registry  # noqa: E402
from spriteforge.models.safetensors_header import TensorInfo  # noqa: E402


def _meta_model(class_name, cfg):
    cls = diffusers_class(class_name)
    with torch.device("meta"):
        return cls.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})


def _infos(sd, dtype="bfloat16"):
    return {k: TensorInfo(dtype, tuple(v.shape)) for k, v in sd.items()}


def _check_config(det_cfg, ref_cfg, keys):
    for k in keys:
        a, b = det_cfg.get(k), ref_cfg.get(k)
        a = list(a) if isinstance(a, (list, tuple)) else a
        b = list(b) if isinstance(b, (list, tuple)) else b
        assert a == b, (k, a, b)


@pytest.mark.parametrize("name,variant", [("flux-fill", "fill"), ("flux-depth", "depth")])
def test_flux_fill_depth_by_input_width(name, variant):
    rel = configs.load(name)
    cfg = dict(rel["transformer"], num_layers=1, num_single_layers=1)  # depth does not change detection
    sd = _meta_model("FluxTransformer2DModel", cfg).state_dict()
    det = detect_tensors(_infos(sd))
    assert det.family == "flux" and det.variant == variant and det.layout == "diffusers"
    assert det.extras["in_channels"] == cfg["in_channels"] and det.config["out_channels"] == 64
    orig = tm.flux_to_original(sd)
    det = detect_tensors(_infos(orig))
    assert det.variant == variant and det.layout == "original" and det.extras["guidance_embeds"] is True


@pytest.mark.parametrize("name,variant", [("sana-600m", "600m"), ("sana-1600m", "1600m")])
def test_sana_sizes(name, variant):
    rel = configs.load(name)
    model = _meta_model("SanaTransformer2DModel", rel["transformer"])
    det = detect_tensors(_infos(model.state_dict()))
    assert det.family == "sana" and det.variant == variant
    _check_config(det.config, rel["transformer"], ["num_attention_heads", "attention_head_dim", "num_layers", "num_cross_attention_heads",
                                                    "cross_attention_head_dim", "cross_attention_dim", "caption_channels", "mlp_ratio", "in_channels"])
    assert det.needs == ["vae", "gemma"] and det.extras["prediction"] == "flow" and det.extras["flow_shift"] == 3.0


@pytest.mark.parametrize("name", ["dit-xl-2-256", "dit-xl-2-512", "dit-l-2-256", "dit-b-2-256", "dit-s-2-256"])
def test_dit_sizes_both_layouts(name):
    rel = configs.load(name)
    model = _meta_model("DiTTransformer2DModel", rel["transformer"])
    sd = model.state_dict()
    sample = rel["transformer"]["sample_size"]
    orig = tm.dit_to_original(sd, n_pos=(sample // 2) ** 2)
    det = detect_tensors(_infos(orig, "float32"))
    assert det.family == "dit" and det.variant == rel["variant"] and det.extras["num_classes"] == 1000
    _check_config(det.config, rel["transformer"], ["num_attention_heads", "attention_head_dim", "num_layers", "sample_size", "out_channels"])
    conv = convert.dit_to_diffusers({k: torch.empty(v.shape, device="meta") for k, v in orig.items()})
    assert {k: tuple(v.shape) for k, v in conv.items()} == {k: tuple(v.shape) for k, v in sd.items()}


@pytest.mark.parametrize("name", ["pixart-alpha-256", "pixart-alpha-512", "pixart-alpha-1024", "pixart-sigma-256", "pixart-sigma-512", "pixart-sigma-2k"])
def test_pixart_releases_original_layout(name):
    rel = configs.load(name)
    cfg = dict(rel["transformer"], num_layers=2)
    sd = _meta_model("PixArtTransformer2DModel", cfg).state_dict()
    tokens = 120 if "alpha" in name else 300
    n_pos = (cfg["sample_size"] // 2) ** 2
    orig = {k: torch.empty(v.shape, device="meta") for k, v in tm.pixart_to_original(sd, tokens=tokens, hidden=1152, caption=4096, n_pos=1).items()}
    orig["pos_embed"] = torch.empty(1, n_pos, 1152, device="meta")
    det = detect_tensors(_infos(orig, "float32"))
    assert det.family == "pixart" and det.variant == rel["variant"] and det.extras["max_sequence_length"] == tokens
    _check_config(det.config, rel["transformer"], ["sample_size", "interpolation_scale", "use_additional_conditions", "caption_channels",
                                                    "num_attention_heads", "attention_head_dim", "out_channels"])
    conv = convert.pixart_to_diffusers(orig)
    assert {k: tuple(v.shape) for k, v in conv.items()} == {k: tuple(v.shape) for k, v in sd.items()}


def test_dc_ae_and_gemma():
    rel = configs.load("dc-ae-f32c32-sana")
    sd = _meta_model("AutoencoderDC", rel["config"]).state_dict()
    det = detect_tensors(_infos(sd))
    assert det.kind == "vae" and det.variant == "dc-ae-f32c32"
    import transformers

    g = configs.load("te-gemma-2-2b")
    with torch.device("meta"):
        model = transformers.Gemma2Model(transformers.Gemma2Config(**{k: v for k, v in g["config"].items() if k != "model_type"}))
    det = detect_tensors(_infos(model.state_dict()))
    assert det.kind == "text_encoder" and det.variant == "gemma" and det.extras["size"] == "2b"
    _check_config(det.config, g["config"], ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size", "vocab_size"])
    # a causal-LM export ("model." prefix, lm_head) is recognised too
    det = detect_tensors({("model." + k): v for k, v in _infos(model.state_dict()).items()})
    assert det.variant == "gemma"


def test_shipped_configs_build():
    """Every shipped transformer/VAE config builds its class (on meta)."""
    for name in configs.names():
        rel = configs.load(name)
        if "transformer" in rel:
            _meta_model(rel["transformer"]["_class_name"], rel["transformer"])
            assert rel["family"] in registry.names()
        elif rel.get("kind") == "vae":
            _meta_model(rel["config"]["_class_name"], rel["config"])


def test_unet_checkpoint_is_named_as_such():
    from spriteforge.errors import SpriteForgeError

    t = {
        "model.diffusion_model.input_blocks.0.0.weight": TensorInfo("float16", (320, 4, 3, 3)),
        "model.diffusion_model.out.2.weight": TensorInfo("float16", (4, 320, 3, 3)),
        "first_stage_model.encoder.conv_in.weight": TensorInfo("float16", (128, 3, 3, 3)),
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": TensorInfo("float16", (768,)),
    }
    with pytest.raises(SpriteForgeError) as ei:
        detect_tensors(t, name="v1-5-pruned.safetensors")
    assert ei.value.code == "UNSUPPORTED_ARCHITECTURE" and "UNet" in ei.value.message and "model.diffusion_model" in ei.value.message
