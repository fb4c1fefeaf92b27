"""FLUX.2 generates: BFL's single files and diffusers' layouts map to diffusers' ``Flux2Transformer2DModel`` (checked
against diffusers' own converter and the real key manifests), the MLX port matches the real class on the same
weights, and our torch generation (prompt template, stacked Qwen3 layers, 4-axis positions, the empirical-mu shift)
gives ``Flux2KleinPipeline``'s / ``Flux2Pipeline``'s pictures on the same tiny model, noise and steps."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_flux2 as tf  # noqa: E402

from spriteforge import pipeline  # noqa: E402
from spriteforge.engines import get_engine  # noqa: E402
from spriteforge.engines.torch_models import convert  # noqa: E402
from spriteforge.models.detect import detect  # noqa: E402
from spriteforge.samplers import make_noise  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STEPS, W, H, SEED = 4, 64, 48, 5  # 4 steps: the "simple" table's sigmas are linspace(1, 1/4) exactly


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("flux2")


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("variant", ["klein", "dev"])
def test_the_key_map_is_diffusers_converter(variant):
    """Our key map (the family's) gives what diffusers' convert_flux2_transformer_checkpoint_to_diffusers gives."""
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers

    sd = tf.flux2_to_original(tf.build_flux2(variant).state_dict())
    ours = convert.to_diffusers("flux2", dict(sd))
    ref = convert_flux2_transformer_checkpoint_to_diffusers(dict(sd))
    assert set(ours) == set(ref) == set(tf.build_flux2(variant).state_dict())
    for k in ref:
        assert torch.equal(ours[k], ref[k]), k


@pytest.mark.parametrize("size", ["klein-4b", "klein-9b", "dev"])
def test_the_released_single_files_map_onto_diffusers_names(shared_dir, size):
    """Every tensor of BFL's released file (its key manifest, on the meta device) lands on the diffusers layout's
    name with its shape; detection names the file by its size."""
    man = {lay: json.loads((shared_dir / "checkpoints" / f"flux2-{size}.transformer.{lay}.json").read_text())["tensors"]
           for lay in ("original", "diffusers")}
    meta = {k: torch.empty(v["shape"], device="meta") for k, v in man["original"].items()}
    out = convert.to_diffusers("flux2", meta)
    assert {k: list(v.shape) for k, v in out.items()} == {k: v["shape"] for k, v in man["diffusers"].items()}


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_tiny_files_are_detected_as_flux2(root, layout):
    det = detect(tf.make_flux2(root, layout=layout))
    assert (det.family, det.kind, det.layout) == ("flux2", "transformer", layout)
    assert det.config["axes_dims_rope"] == [4, 4, 4, 4] and det.config["joint_attention_dim"] == 96


# --------------------------------------------------------------------------- the MLX port


@pytest.mark.parametrize("variant", ["klein", "dev"])
def test_mlx_port_matches_the_real_class(variant):
    mx = pytest.importorskip("mlx.core")
    from spriteforge.engines.mlx_models import layers
    from spriteforge.engines.mlx_models.flux2 import Flux2Transformer2DModel, map_weights
    from spriteforge.tests.parity import assert_close, mx_weights

    ref = tf.build_flux2(variant, seed=3)
    port = Flux2Transformer2DModel(dict(ref.config))
    layers.load_weights(port, map_weights(mx_weights(ref)), "flux2")
    g = np.random.default_rng(0)
    b, n, m = 2, 12, 7
    x = g.standard_normal((b, n, 128)).astype(np.float32)
    ctx = g.standard_normal((b, m, 96)).astype(np.float32)
    t = np.array([0.7, 0.3], np.float32)
    img_ids = np.array([[0, i, j, 0] for i in range(3) for j in range(4)], np.float32)
    txt_ids = np.array([[0, 0, 0, k] for k in range(m)], np.float32)
    guidance = np.array([4.0, 2.5], np.float32) if variant == "dev" else None
    with torch.no_grad():
        want = ref(hidden_states=torch.from_numpy(x), encoder_hidden_states=torch.from_numpy(ctx), timestep=torch.from_numpy(t),
                   img_ids=torch.from_numpy(img_ids), txt_ids=torch.from_numpy(txt_ids),
                   guidance=None if guidance is None else torch.from_numpy(guidance), return_dict=False)[0].numpy()
    got = port(mx.array(x), mx.array(ctx), mx.array(t), img_ids, txt_ids, None if guidance is None else mx.array(guidance))
    assert_close(np.array(got), want, f"flux2 {variant}")


# --------------------------------------------------------------------------- our generation vs diffusers' pipelines


def _noise(batch=1):
    """Our seeded starting noise (the pipeline's ``make_noise``), as the pipelines' ``latents`` (B, 128, H/16, W/16)."""
    return torch.from_numpy(make_noise(SEED, (batch, 128, H // 16, W // 16)))


@pytest.mark.parametrize("distilled", [False, True], ids=["base", "distilled"])
def test_torch_generation_matches_flux2_klein_pipeline(root, distilled):
    """From a Flux2KleinPipeline folder: the prompt through the Qwen3 chat template and layers 9/18/27, CFG with the
    empty negative for the base model (none for a distilled one: the pipeline ignores guidance_scale), the
    empirical-mu sigmas, Euler, the VAE's batch-norm denormalisation: the same picture."""
    from diffusers import Flux2KleinPipeline

    folder = tf.make_flux2(root, layout="folder", distilled=distilled)
    eng = get_engine("torch", "cpu")
    h = eng.load_model(str(folder), dtype="float32")
    assert h.variant == "custom" and set(h.text_encoders) == {"qwen3_4b"}
    cfg = 1.0 if distilled else 4.0
    ours = pipeline.generate(eng, h, pipeline.GenerateParams(prompt="a red knight", negative="", seed=SEED, steps=STEPS, cfg=cfg,
                                                             width=W, height=H))
    pipe = Flux2KleinPipeline.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        ref = pipe(prompt="a red knight", num_inference_steps=STEPS, guidance_scale=4.0, latents=_noise(), height=H, width=W,
                   output_type="np").images
    diff = float(np.abs(ours - ref).max())
    print(f"FLUX.2 [klein] {'distilled' if distilled else 'base'}: max |ours - Flux2KleinPipeline| = {diff * 255:.4f}/255")
    assert ours.shape == ref.shape == (1, H, W, 3) and diff <= 1e-4


def test_torch_dev_matches_flux2_pipeline(root):
    """[dev]: the guidance as a model input (4.0 by default), no CFG; text from the same prompt embeddings."""
    from diffusers import Flux2Pipeline

    eng = get_engine("torch", "cpu")
    vae = tf.make_flux2_vae(root, layout="original", name="flux2-vae.safetensors")
    h = eng.load_model(str(tf.make_flux2(root, layout="original", variant="dev")), vae=str(vae),
                       text_encoders=[str(tf.make_flux2_text_encoder(root / "te"))], dtype="float32")
    cond = pipeline.encode(eng, h, "a red knight", with_negative=False)
    assert cond.guidance == 4.0
    ours = pipeline.generate(eng, h, pipeline.GenerateParams(seed=SEED, steps=STEPS, cfg=1.0, width=W, height=H, cond=cond))
    pipe = Flux2Pipeline(scheduler=tf._scheduler(), vae=tf.build_flux2_vae(), text_encoder=None, tokenizer=None, transformer=h.transformer)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        ref = pipe(prompt_embeds=cond.embeds, num_inference_steps=STEPS, guidance_scale=4.0, latents=_noise(), height=H,
                   width=W, output_type="np").images
    diff = float(np.abs(ours - ref).max())
    print(f"FLUX.2 [dev]: max |ours - Flux2Pipeline| = {diff * 255:.4f}/255")
    assert diff <= 1e-4


# --------------------------------------------------------------------------- [dev]'s Mistral-3


def test_dev_with_its_mistral3_text_encoder_matches_flux2_pipeline(root):
    """[dev] from the files ComfyUI users hold (BFL's transformer, flux2-vae, mistral_3_small_flux2_bf16 with a bare
    tokenizer.json): the same picture as Flux2Pipeline given the prompt, its Mistral3ForConditionalGeneration and the
    tokenizer with the Mistral-Small-3 chat template (the [dev] test above checks the model call from embeddings)."""
    from diffusers import Flux2Pipeline

    import tiny_mistral as tm

    eng = get_engine("torch", "cpu")
    vae = tf.make_flux2_vae(root, layout="original", name="flux2-vae.safetensors")
    h = eng.load_model(str(tf.make_flux2(root, layout="original", variant="dev")), vae=str(vae),
                       text_encoders=[str(tm.make_mistral3(root / "mistral"))], dtype="float32")
    assert set(h.text_encoders) == {"mistral3"}
    ours = pipeline.generate(eng, h, pipeline.GenerateParams(prompt="a red knight", seed=SEED, steps=STEPS, cfg=1.0, width=W, height=H))
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(tm.make_mistral_tokenizer(root / "mistral" / "tokenizers")), local_files_only=True)
    pipe = Flux2Pipeline(scheduler=tf._scheduler(), vae=tf.build_flux2_vae(), text_encoder=tm.build_mistral3(), tokenizer=tok,
                         transformer=h.transformer)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        ref = pipe(prompt="a red knight", num_inference_steps=STEPS, guidance_scale=4.0, latents=_noise(), height=H, width=W,
                   output_type="np").images
    diff = float(np.abs(ours - ref).max())
    print(f"FLUX.2 [dev] with Mistral-3: max |ours - Flux2Pipeline| = {diff * 255:.4f}/255")
    assert diff <= 1e-4


def test_dev_without_its_text_encoder_says_so_and_a_misfit_encoder_is_refused(root):
    """[dev] without a text encoder: MODEL_NOT_FOUND naming its Mistral-3, never a crash; a Qwen3 whose width is
    not the transformer's joint width: BAD_INPUT before the model runs."""
    from spriteforge.errors import BAD_INPUT, MODEL_NOT_FOUND, SpriteForgeError

    eng = get_engine("torch", "cpu")
    vae = tf.make_flux2_vae(root, layout="original", name="flux2-vae.safetensors")
    import dataclasses

    dev = eng.load_model(str(tf.make_flux2(root, layout="original", variant="dev")), vae=str(vae))
    dev = dataclasses.replace(dev, variant="dev")  # as the released [dev] file is named (the tiny one is "custom")
    with pytest.raises(SpriteForgeError) as e:
        pipeline.encode(eng, dev, "a red knight", with_negative=False)
    assert e.value.code == MODEL_NOT_FOUND and "Mistral-3" in e.value.message
    from spriteforge.tests.tiny_flux2 import build_flux2

    wide = root / "klein-wide.safetensors"
    from spriteforge.tests.tiny_models import _save_file

    _save_file(build_flux2("klein", joint=64).state_dict(), wide)
    h = eng.load_model(str(wide), vae=str(vae), text_encoders=[str(tf.make_flux2_text_encoder(root / "te"))])
    with pytest.raises(SpriteForgeError) as e:
        pipeline.encode(eng, h, "a red knight", with_negative=False)
    assert e.value.code == BAD_INPUT and "64-wide prompt features" in e.value.message
