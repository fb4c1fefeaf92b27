"""MLX ports of the VAEs (KL and DC-AE) against diffusers on the same weights and inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
torch = pytest.importorskip("torch")

from spriteforge.errors import MODEL_NOT_CONVERTED, SpriteForgeError  # noqa: E402

from spriteforge.tests.tiny_models import build_dcae, build_vae  # noqa: E402
from spriteforge.engines.torch_models.generation import circular as _torch_circular  # the torch engine's seamless mode
from spriteforge.tests.parity import assert_close, mx_weights

REPO = Path(__file__).resolve().parents[1]
DEMO_VAE = REPO / "demo_model" / "vae"


def _inputs(channels, h, w, batch=2, seed=0):
    g = np.random.default_rng(seed)
    return g.uniform(-1, 1, (batch, channels, h, w)).astype(np.float32)


def _parity(tvae, mvae, h, w, label, encode_circular=True):
    """Encode and decode, normal and circular, batch 2, on the given (non-square) size."""
    f = 2 ** (len(tvae.config.block_out_channels) - 1)
    x = _inputs(tvae.config.in_channels, h, w)
    z = _inputs(tvae.config.latent_channels, h // f, w // f, seed=1)
    diffs = {}
    for circ in (False, True):
        mvae.set_circular(circ)
        with torch.no_grad():
            with _torch_circular(tvae, circ and encode_circular):
                enc = tvae.encode(torch.from_numpy(x))
                ref_z = enc.latent_dist.mode() if hasattr(enc, "latent_dist") else enc.latent
            with _torch_circular(tvae.decoder, circ):
                ref_x = tvae.decode(torch.from_numpy(z)).sample
        got_z = mvae.encode(mx.array(x))
        got_x = mvae.decode(mx.array(z))
        mx.eval(got_z, got_x)
        tag = f"{label} {'circular' if circ else 'zero-pad'}"
        if circ and encode_circular or not circ:
            diffs[tag + " encode"] = assert_close(np.array(got_z), ref_z.numpy(), tag + " encode")
        diffs[tag + " decode"] = assert_close(np.array(got_x), ref_x.numpy(), tag + " decode")
    mvae.set_circular(False)
    return diffs


# --------------------------------------------------------------------------- KL VAE
def _kl_port(tvae):
    from spriteforge.engines.mlx_models import layers
    from spriteforge.engines.mlx_models.vae import AutoencoderKL, map_weights

    m = AutoencoderKL(dict(tvae.config))
    layers.load_weights(m, map_weights(mx_weights(tvae.state_dict())), "vae")
    return m


@pytest.mark.parametrize("channels", [4, 16])
def test_kl_vae_parity_tiny(channels):
    tvae = build_vae(channels)
    assert (tvae.quant_conv is not None) == (channels == 4)
    m = _kl_port(tvae)
    assert ("quant_conv" in m) == (channels == 4) and ("post_quant_conv" in m) == (channels == 4)
    _parity(tvae, m, 48, 32, f"kl{channels}")


def test_kl_vae_parity_demo_model():
    """The built-in demo model's VAE, read from its own safetensors file by MLX."""
    from diffusers import AutoencoderKL as TorchKL

    from spriteforge.engines.mlx_models import layers
    from spriteforge.engines.mlx_models.vae import AutoencoderKL, map_weights

    if not (DEMO_VAE / "config.json").is_file():
        pytest.skip("demo model not present")
    tvae = TorchKL.from_pretrained(str(DEMO_VAE), local_files_only=True).eval()
    cfg = json.loads((DEMO_VAE / "config.json").read_text())
    m = AutoencoderKL(cfg)
    sd = dict(mx.load(str(DEMO_VAE / "diffusion_pytorch_model.safetensors")))
    layers.load_weights(m, map_weights({k: v.astype(mx.float32) for k, v in sd.items()}), "vae")
    _parity(tvae, m, 24, 40, "demo")


def test_kl_vae_old_attention_names_and_no_attention():
    """Old-style ``query/key/value/proj_attn`` 1x1-conv names map; ``mid_block_add_attention=False`` ports."""
    from diffusers import AutoencoderKL as TorchKL

    from spriteforge.engines.mlx_models import layers
    from spriteforge.engines.mlx_models.vae import AutoencoderKL, map_weights

    tvae = build_vae(4)
    sd = mx_weights(tvae.state_dict())
    old = {}
    for k, v in sd.items():
        if ".attentions.0." in k:
            for a, b in (("to_q.", "query."), ("to_k.", "key."), ("to_v.", "value."), ("to_out.0.", "proj_attn.")):
                k = k.replace(a, b)
            if k.endswith(".weight") and v.ndim == 2:
                v = v.reshape(*v.shape, 1, 1)
        old[k] = v
    m = AutoencoderKL(dict(tvae.config))
    layers.load_weights(m, map_weights(old), "vae")
    z = _inputs(4, 3, 5, batch=1)
    with torch.no_grad():
        ref = tvae.decode(torch.from_numpy(z)).sample.numpy()
    assert_close(np.array(m.decode(mx.array(z))), ref, "kl4 old names decode")

    torch.manual_seed(0)
    t2 = TorchKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                 up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=2, norm_num_groups=4,
                 latent_channels=4, mid_block_add_attention=False).eval()
    m2 = AutoencoderKL(dict(t2.config))
    layers.load_weights(m2, map_weights(mx_weights(t2.state_dict())), "vae")
    _parity(t2, m2, 12, 20, "kl-noattn")


@pytest.mark.parametrize("channels", [4, 16])
def test_kl_vae_original_layout_matches_diffusers_converter(channels):
    """Single-file (LDM / BFL) names map like diffusers' own convert_ldm_vae_checkpoint, and the
    port loaded from them (under ``first_stage_model.``) decodes like diffusers."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from spriteforge.engines.mlx_models import layers
    from spriteforge.engines.mlx_models.vae import AutoencoderKL, is_ldm_layout, ldm_to_diffusers, map_weights
    from spriteforge.tests.tiny_models import vae_to_original

    tvae = build_vae(channels)
    orig = vae_to_original(tvae.state_dict(), num_blocks=4)
    ref = convert_ldm_vae_checkpoint({"first_stage_model." + k: v for k, v in orig.items()}, dict(tvae.config))
    mine = ldm_to_diffusers({"first_stage_model." + k: v for k, v in orig.items()})
    assert is_ldm_layout(orig) and not is_ldm_layout(tvae.state_dict())
    assert sorted(mine) == sorted(ref)
    for k in ref:
        assert tuple(mine[k].shape) == tuple(ref[k].shape) and torch.equal(mine[k], ref[k]), k
    m = AutoencoderKL(dict(tvae.config))
    layers.load_weights(m, map_weights(mx_weights({"first_stage_model." + k: v for k, v in orig.items()})), "vae")
    z = _inputs(channels, 4, 6, batch=1)
    with torch.no_grad():
        want = tvae.decode(torch.from_numpy(z)).sample.numpy()
    assert_close(np.array(m.decode(mx.array(z))), want, f"kl{channels} original-layout decode")


def test_kl_vae_wrong_weights_coded_error():
    from spriteforge.engines.mlx_models import layers
    from spriteforge.engines.mlx_models.vae import AutoencoderKL, map_weights

    tvae = build_vae(16)
    w = map_weights(mx_weights(tvae.state_dict()))
    m = AutoencoderKL(dict(tvae.config))
    missing = dict(w)
    missing.pop("decoder.conv_out.weight")
    with pytest.raises(SpriteForgeError) as e:
        layers.load_weights(m, missing, "vae")
    assert e.value.code == MODEL_NOT_CONVERTED and "decoder.conv_out.weight" in str(e.value)
    bad = dict(w)
    bad["encoder.conv_in.weight"] = mx.zeros((32, 3, 3, 4))
    with pytest.raises(SpriteForgeError) as e:
        layers.load_weights(m, bad, "vae")
    assert e.value.code == MODEL_NOT_CONVERTED and "shape mismatch" in str(e.value)
    # a 4-channel VAE's weights (with quant convs) do not fit a 16-channel port
    with pytest.raises(SpriteForgeError) as e:
        layers.load_weights(m, map_weights(mx_weights(build_vae(4).state_dict())), "vae")
    assert e.value.code == MODEL_NOT_CONVERTED


# --------------------------------------------------------------------------- DC-AE
def _dc_port(tvae):
    from spriteforge.engines.mlx_models import layers
    from spriteforge.engines.mlx_models.dcae import AutoencoderDC, map_weights

    m = AutoencoderDC(dict(tvae.config))
    layers.load_weights(m, map_weights(mx_weights(tvae.state_dict())), "dc-ae")
    return m


def _dc_parity(tvae, m, h, w, label):
    """Like :func:`_parity`, for an autoencoder whose encode gives the latent itself."""
    f = 2 ** (len(tvae.config.encoder_block_out_channels) - 1)
    x = _inputs(tvae.config.in_channels, h, w)
    z = _inputs(tvae.config.latent_channels, h // f, w // f, seed=1)
    for circ in (False, True):
        m.set_circular(circ)
        with torch.no_grad():
            with _torch_circular(tvae.encoder, circ):
                ref_z = tvae.encode(torch.from_numpy(x)).latent
            with _torch_circular(tvae.decoder, circ):
                ref_x = tvae.decode(torch.from_numpy(z)).sample
        got_z, got_x = m.encode(mx.array(x)), m.decode(mx.array(z))
        tag = f"{label} {'circular' if circ else 'zero-pad'}"
        assert_close(np.array(got_z), ref_z.numpy(), tag + " encode")
        assert_close(np.array(got_x), ref_x.numpy(), tag + " decode")
    m.set_circular(False)


def test_dcae_parity_tiny():
    """tiny_models.build_dcae: interpolate upsampling, Conv downsampling, rms_norm, linear attention
    (16x24 image, 4x6 latent) and the quadratic branch (a 2x2 latent has fewer tokens than the head width)."""
    tvae = build_dcae()
    m = _dc_port(tvae)
    _dc_parity(tvae, m, 16, 24, "dcae")
    z = _inputs(32, 2, 2, batch=2, seed=3)
    with torch.no_grad():
        ref = tvae.decode(torch.from_numpy(z)).sample.numpy()
    assert_close(np.array(m.decode(mx.array(z))), ref, "dcae quadratic-attention decode")


def test_dcae_parity_pixel_shuffle_batch_norm():
    """The other DC-AE options: pixel_shuffle / pixel_unshuffle, batch-norm + ReLU decoder blocks with
    real running statistics, two attention scales, an empty first stage (shuffle blocks as conv_in/conv_out)."""
    from diffusers import AutoencoderDC as TorchDC

    from spriteforge.tests.tiny_models import _randomize

    tvae = _randomize(TorchDC(
        in_channels=3, latent_channels=16, attention_head_dim=4,
        encoder_block_types=("ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 16, 32), decoder_block_out_channels=(8, 16, 32),
        encoder_layers_per_block=(0, 1, 1), decoder_layers_per_block=(0, 1, 2),
        encoder_qkv_multiscales=((), (3,), (3, 5)), decoder_qkv_multiscales=((), (3,), (3, 5)),
        upsample_block_type="pixel_shuffle", downsample_block_type="pixel_unshuffle",
        decoder_norm_types=("batch_norm", "batch_norm", "rms_norm"), decoder_act_fns=("relu", "relu", "silu"),
        decoder_conv_act_fn="silu", scaling_factor=0.5), seed=1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for mod in tvae.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.copy_(0.3 * torch.randn(mod.running_mean.shape, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(mod.running_var.shape, generator=g))
    m = _dc_port(tvae)
    _dc_parity(tvae, m, 24, 16, "dcae-shuffle")


def test_dcae_wrong_weights_coded_error():
    from spriteforge.engines.mlx_models import layers
    from spriteforge.engines.mlx_models.dcae import AutoencoderDC, map_weights

    tvae = build_dcae()
    w = map_weights(mx_weights(tvae.state_dict()))
    m = AutoencoderDC(dict(tvae.config))
    w.pop("decoder.up_blocks.2.0.attn.to_q.weight")
    w["encoder.conv_out.extra"] = mx.zeros((1,))
    with pytest.raises(SpriteForgeError) as e:
        layers.load_weights(m, w, "dc-ae")
    assert e.value.code == MODEL_NOT_CONVERTED
    assert "to_q.weight" in str(e.value) and "encoder.conv_out.extra" in str(e.value)
