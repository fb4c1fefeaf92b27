"""The FLUX.2 VAE (``AutoencoderKLFlux2``) loads on both engines from both layouts published as
``flux2-vae.safetensors`` (BFL's original, diffusers'), told apart by their keys; its latents are the ones the
FLUX.2 pipelines sample (the mode, patchified 2x2, normalised by the batch-norm statistics), checked against
diffusers' own class and ``Flux2KleinPipeline``'s latent code on the same tiny weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_flux2 as tf  # noqa: E402

from spriteforge.engines.base import handle_fields  # noqa: E402
from spriteforge.models.detect import detect  # noqa: E402
from spriteforge.models.families import registry  # noqa: E402

LAYOUTS = ["original", "diffusers", "folder"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("flux2_vae")


def _image(b=2, h=32, w=48, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (b, h, w, 3)).astype(np.float32)


def _pipeline_latents(vae, images):
    """What ``Flux2KleinPipeline`` samples for ``images`` (its own ``_encode_vae_image`` on the diffusers class)."""
    from diffusers import Flux2KleinPipeline

    x = torch.from_numpy(images.transpose(0, 3, 1, 2)) * 2 - 1
    with torch.no_grad():
        return Flux2KleinPipeline._encode_vae_image(_Pipe(vae), x, None).numpy()


class _Pipe:
    """The pipeline's ``self`` for its latent helpers: only the VAE and the static patchify are read."""

    def __init__(self, vae):
        from diffusers import Flux2KleinPipeline

        self.vae = vae
        self._patchify_latents = Flux2KleinPipeline._patchify_latents


def _pipeline_decode(vae, z):
    """``Flux2KleinPipeline``'s decode of sampled latents ``z`` (its denormalise + unpatchify + ``vae.decode``)."""
    from diffusers import Flux2KleinPipeline

    z = torch.from_numpy(z)
    mean = vae.bn.running_mean.view(1, -1, 1, 1)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
    with torch.no_grad():
        x = vae.decode(Flux2KleinPipeline._unpatchify_latents(z * std + mean), return_dict=False)[0]
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_both_published_layouts_are_detected_by_their_keys(root, layout):
    det = detect(tf.make_flux2_vae(root, layout=layout, name=f"{layout}/flux2-vae.safetensors"))
    assert (det.kind, det.variant, det.layout) == ("vae", "flux2", layout)
    assert det.config["_class_name"] == "AutoencoderKLFlux2" and det.config["latent_channels"] == 32
    assert det.config["block_out_channels"] == [32, 32, 64, 64] and det.config["layers_per_block"] == 1
    assert "recognised_as" not in det.extras  # it loads now: nothing refuses it
    assert "num_batches_tracked int64" in det.extras["batch_norm"]


def test_the_tiny_original_file_has_the_release_s_names(root, shared_dir):
    """The BFL writer makes the names of the published ``ae.safetensors`` (block indices aside)."""
    from safetensors import safe_open

    with safe_open(str(tf.make_flux2_vae(root, layout="original")), "pt") as f:
        tiny = set(f.keys())
    real = set(json.loads((shared_dir / "checkpoints" / "flux2-vae.original.json").read_text())["tensors"])
    assert tf.original_names_like_the_release(tiny) == tf.original_names_like_the_release(real)


def test_the_family_samples_patched_latents():
    """128 channels at 16 pixels a latent, from the VAE's 32 at 8 (the pipelines' 2x2 patchify)."""
    from spriteforge.models.detection import Detection

    det = Detection("flux2", "klein-4B", "transformer", {})
    f = handle_fields(det, {}, {}, has_vae=False, text_encoders=(), extras={})
    assert (f["latent_channels"], f["vae_scale_factor"], f["scaling_factor"], f["shift_factor"]) == (128, 16, 1.0, 0.0)
    f = handle_fields(det, {}, dict(tf.build_flux2_vae().config), has_vae=True, text_encoders=(), extras={})
    assert (f["latent_channels"], f["vae_scale_factor"]) == (128, 16)
    assert registry.get("flux2").latent_channels == 32  # what a VAE given with a FLUX.2 model must make


def _torch_vae(root, layout):
    from spriteforge.engines import get_engine
    from spriteforge.engines.torch_models.vae import load_vae

    eng = get_engine("torch", "cpu")
    return load_vae(eng, str(tf.make_flux2_vae(root, layout=layout)), family="flux2", dtype="float32")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_torch_latents_are_the_pipeline_s(root, layout):
    ref = tf.build_flux2_vae()
    vae, cfg = _torch_vae(root, layout)
    assert vae.bn.num_batches_tracked.dtype == torch.int64 and int(vae.bn.num_batches_tracked) == 1234
    img = _image()
    want = _pipeline_latents(ref, img)
    x = torch.from_numpy(img.transpose(0, 3, 1, 2)) * 2 - 1
    with torch.no_grad():
        got = vae.encode(x)[0].numpy()
        dec = vae.decode(torch.from_numpy(want), return_dict=False)[0]
    assert got.shape == (2, 128, 2, 3)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose((dec / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy(), _pipeline_decode(ref, want), atol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_mlx_port_matches_the_real_class(root, layout):
    """MLX's port loaded through the MLX loader: the plain autoencoder against diffusers' class, and the sampled
    latents (encode) and pictures (decode) against ``Flux2KleinPipeline``'s."""
    mx = pytest.importorskip("mlx.core")
    from spriteforge.engines import get_engine
    from spriteforge.engines.mlx_models.loading import load_vae

    ref = tf.build_flux2_vae()
    vae, cfg = load_vae(get_engine("mlx", "cpu"), str(tf.make_flux2_vae(root, layout=layout)), family="flux2", dtype="float32")
    assert cfg["_class_name"] == "AutoencoderKLFlux2"
    img = _image()
    want = _pipeline_latents(ref, img)
    x = mx.array(img.transpose(0, 3, 1, 2)) * 2 - 1
    got = np.array(vae.encode(x))
    np.testing.assert_allclose(got, want, atol=1e-4)
    with torch.no_grad():
        raw = ref.encode(torch.from_numpy(np.array(x))).latent_dist.mode().numpy()
    np.testing.assert_allclose(np.array(vae.encode_raw(x)), raw, atol=1e-4)
    dec = np.array(mx.clip(vae.decode(mx.array(want)) / 2 + 0.5, 0, 1)).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(dec, _pipeline_decode(ref, want), atol=1e-4)
