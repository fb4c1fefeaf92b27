"""Z-Image / Z-Image-Turbo: the MLX port against diffusers' ``ZImageTransformer2DModel`` on the same weights, our
torch generation against diffusers' own ``ZImagePipeline``, and the files users hold (ComfyUI's
``z_image_turbo_bf16.safetensors`` with ``qwen_3_4b.safetensors`` and ``ae.safetensors``, diffusers folders) through
the command line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spriteforge.tests import tiny_models as tm
from spriteforge.tests.parity import assert_close, mx_weights

mx = pytest.importorskip("mlx.core")


def _inputs(rng, shapes, caption_lengths, dim=32):
    x = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    caps = [rng.standard_normal((n, dim)).astype(np.float32) for n in caption_lengths]
    return x, caps


@pytest.mark.parametrize("shapes, lengths", [
    ([(16, 1, 8, 8)] * 2, (5, 37)),  # one image size, captions of different padded lengths (masked rows)
    ([(16, 1, 6, 10), (16, 1, 8, 4)], (32, 3)),  # image tokens off the multiple of 32 (learned pads), two sizes
])
def test_mlx_port_matches_diffusers(shapes, lengths):
    from spriteforge.engines.mlx_models import layers, zimage
    from spriteforge.engines.mlx_models.loading import full_config

    ref = tm.build_zimage(3)
    port = zimage.ZImageTransformer2DModel(full_config("ZImageTransformer2DModel", dict(ref.config)))
    layers.load_weights(port, zimage.map_weights(mx_weights(ref)), what="zimage transformer")
    x, caps = _inputs(np.random.default_rng(0), shapes, lengths)
    t = np.array([0.3, 0.85], np.float32)
    with torch.no_grad():
        want = ref([torch.from_numpy(a) for a in x], torch.from_numpy(t), [torch.from_numpy(c) for c in caps],
                   return_dict=False)[0]
    got = port([mx.array(a) for a in x], mx.array(t), [mx.array(c) for c in caps])
    for i, (g, w) in enumerate(zip(got, want)):
        assert_close(np.array(g), w.numpy(), f"zimage row {i} {shapes[i]} caption {lengths[i]}")


# --------------------------------------------------------------------------- our loop against ZImagePipeline


def test_torch_generation_matches_zimage_pipeline(tmp_path):
    """Same tiny folder, prompt and negative, noise, steps and sigmas (Euler): our encode (chat template, Qwen3's
    hidden_states[-2], real tokens) and sampling give diffusers' ZImagePipeline's latents (guidance 2 = our CFG 3)."""
    import diffusers

    from spriteforge.engines import get_engine
    from spriteforge.pipeline import encode
    from spriteforge.tests.test_generation_parity import SIZE, STEPS, _close, _ours, _setup

    engine = get_engine("torch", "cpu")
    h = engine.load_model(str(tm.make_zimage(tmp_path, layout="folder")))
    assert h.flow_shift == 3.0 and h.prediction == "flow"
    ours = _ours(engine, h, encode(engine, h, "a red knight", "blurry"), 3.0)
    sigmas, noise = _setup(h)
    pipe = diffusers.ZImagePipeline(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False),
                                    vae=h.vae, text_encoder=h.text_encoders["qwen3_4b"], tokenizer=h.tokenizers["qwen3_4b"],
                                    transformer=h.transformer)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        ref = pipe(prompt="a red knight", negative_prompt="blurry", guidance_scale=2.0, num_inference_steps=STEPS,
                   sigmas=list(sigmas[:-1]), latents=noise, height=SIZE, width=SIZE, output_type="latent", return_dict=False)[0]
    print(f"ZImagePipeline vs ours: max |diff| {float(np.abs(np.asarray(ours) - ref.numpy()).max()):.3g}")
    _close(np.asarray(ours), ref.numpy())


# --------------------------------------------------------------------------- LoRA


def _zimage_lora(path, fmt: str):
    """A Z-Image LoRA as it ships: ai-toolkit / diffusers-peft (``diffusion_model.layers.N.attention.to_q.lora_A``),
    ComfyUI / kohya on the fused ``attention.qkv`` (``lora_unet_layers_N_attention_qkv``)."""
    from spriteforge.tests import test_lora_util as U

    w = U.Writer(2)
    if fmt == "kohya":
        w.lora("kohya", "layers.0.attention.qkv", (192, 64), rank=4, alpha=4.0)
        w.lora("kohya", "layers.1.feed_forward.w2", (64, 170), rank=4, alpha=4.0)
    else:
        for q in ("to_q", "to_k", "to_v"):
            w.lora("comfyui_ab", f"layers.0.attention.{q}", (64, 64), rank=4)
        w.lora("comfyui_ab", "noise_refiner.0.feed_forward.w1", (170, 64), rank=4)
    return w.save(path)


@pytest.mark.parametrize("fmt", ["kohya", "peft"])
@pytest.mark.parametrize("engine_name", ["torch", "mlx"])
def test_lora_is_named_z_image_and_refused_on_other_families(tmp_path, capsys, fmt, engine_name):
    import json

    from spriteforge.cli.main import main
    from spriteforge.engines import get_engine
    from spriteforge.errors import LORA_KEY_MISMATCH, SpriteForgeError
    from spriteforge.lora import LoRASpec

    path = _zimage_lora(tmp_path / f"zimage_{fmt}.safetensors", fmt)
    assert main(["inspect", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["family"] == "zimage"
    engine = get_engine(engine_name, "cpu")
    parts = tm.make_zimage_parts(tmp_path)
    z = engine.load_model(str(tm.make_zimage(tmp_path, layout="original")), **parts)
    applied = engine.apply_loras(z, [LoRASpec(path, 1.0)])
    assert applied.loras[-1].matched == (2 if fmt == "kohya" else 4)
    flux = engine.load_model(str(tm.make_flux(tmp_path, layout="folder", variant="schnell")))
    with pytest.raises(SpriteForgeError) as e:
        engine.apply_loras(flux, [LoRASpec(path, 1.0)])
    assert e.value.code == LORA_KEY_MISMATCH and e.value.message.startswith(f"{path.name} is for Z-Image; the loaded model is Flux")
    from spriteforge.tests import test_lora_util as U

    w = U.Writer(3)
    w.lora("kohya", "double_blocks.0.img_attn.qkv", (96, 32), rank=4)
    other = w.save(tmp_path / "flux_lora.safetensors")
    with pytest.raises(SpriteForgeError) as e:
        engine.apply_loras(z, [LoRASpec(other, 1.0)])
    assert e.value.code == LORA_KEY_MISMATCH and "Z-Image" in e.value.message


# --------------------------------------------------------------------------- the command line and the nodes


@pytest.fixture
def release_files(tmp_path):
    """A models root holding the tiny model under the names ComfyUI users hold: diffusion_models/
    z_image_turbo_bf16.safetensors (bf16, original layout), text_encoders/qwen_3_4b.safetensors (its tokenizer
    beside it), vae/ae.safetensors."""
    from spriteforge import paths
    from spriteforge.tests.tiny_qwen import make_qwen3

    root = tmp_path / "models"
    tm.make_zimage(root / "diffusion_models", layout="original", bf16=True)
    make_qwen3(root / "text_encoders", seed=1)
    tm.make_vae(root / "vae", 16, layout="original", seed=2, name="ae.safetensors")
    yield root
    paths.set_models_root(None)  # `--models` sets the process-wide root


def test_cli_generate_with_the_release_file_names(release_files, tmp_path):
    """``spriteforge generate --model z_image_turbo_bf16.safetensors --text-encoder qwen_3_4b.safetensors --vae
    ae.safetensors``, the family's own defaults (8 Euler steps, no CFG, shift 3 from its scheduler)."""
    import json

    from PIL import Image

    from spriteforge.cli.main import main

    out = tmp_path / "out"
    rc = main(["-q", "generate", "--models", str(release_files), "--model", "z_image_turbo_bf16.safetensors",
               "--text-encoder", "qwen_3_4b.safetensors", "--vae", "ae.safetensors", "--prompt", "a red knight",
               "--width", "64", "--height", "48", "--seed", "4", "--engine", "torch", "--out", str(out)])
    assert rc == 0
    im = Image.open(out / "sf-4.png")
    meta = json.loads(im.text["spriteforge"])
    assert im.size == (64, 48) and np.asarray(im).std() > 1
    assert (meta["family"], meta["steps"], meta["cfg"], meta["sampler"]) == ("zimage", 8, 1.0, "euler")


def test_load_model_and_encode_prompt_nodes(release_files):
    """Load Model takes the Qwen3-4B file in a text-encoder slot; Encode Prompt, Sampler and VAE Decode run; the
    editor's hints name what the inputs mean for Z-Image."""
    from spriteforge import paths
    from spriteforge.models.families import registry
    from spriteforge.nodes import generate as G, loaders

    paths.set_models_root(release_files)
    h = loaders.LoadModel.execute("z_image_turbo_bf16.safetensors", vae="ae.safetensors",
                                  text_encoder_1="qwen_3_4b.safetensors", engine="torch", device="cpu")[0]
    assert (h.family, list(h.text_encoders)) == ("zimage", ["qwen3_4b"])
    cond = G.EncodePrompt.execute(h, "a red knight", "blurry")[0]
    lat = G.Sampler.execute(h, cond, seed=1, steps=2, cfg=2.0, width=32, height=32)[0]
    img = G.VAEDecode.execute(h, lat)[0].numpy()
    assert img.shape == (1, 32, 32, 3) and np.isfinite(img).all()
    labels = registry.widget_hints()["labels"]
    assert "Qwen3-4B" in labels["text_encoder_1"]["zimage"]
    assert "guidance" in registry.widget_hints()["rules"] and "zimage" not in registry.widget_hints()["rules"]["guidance"]["only"]


def test_a_bfloat16_model_gets_its_timestep_in_float32(tmp_path):
    """ZImagePipeline feeds ``(1000 - t) / 1000`` of float32 timesteps whatever the model's dtype; in bfloat16,
    1000 * 0.9923 would round to 992 and the model would see 0.008 instead of 0.0077."""
    from spriteforge import pipeline
    from spriteforge.engines import get_engine
    from spriteforge.engines.base import Conditioning

    engine = get_engine("torch", "cpu")
    h = engine.load_model(str(tm.make_zimage(tmp_path, layout="diffusers")), dtype="bfloat16")
    assert next(h.transformer.parameters()).dtype == torch.bfloat16
    rng = np.random.default_rng(1)
    emb, keep = rng.standard_normal((1, 7, 32)).astype(np.float32), np.array([[1, 1, 1, 1, 1, 0, 0]])
    x = rng.standard_normal((1, 16, 8, 8)).astype(np.float32)
    sigma = 0.9923
    cond = Conditioning(family="zimage", embeds=torch.from_numpy(emb), mask=torch.from_numpy(keep))
    ours = engine.denoiser(h, cond, model_schedule=pipeline.model_schedule(h, 64, 64))(x, sigma)
    t = (1000.0 - torch.full((1,), sigma * 1000.0, dtype=torch.float32)) / 1000.0
    with torch.no_grad():
        out = h.transformer([torch.from_numpy(x[0]).to(torch.bfloat16)[:, None]], t,
                            [torch.from_numpy(emb[0, :5]).to(torch.bfloat16)], return_dict=False)[0][0]
    want = x - (-out[:, 0].float().numpy()[None]) * sigma
    assert np.abs(ours - want).max() <= 1e-5 * (1 + np.abs(want).max())


def test_all_in_one_checkpoint_on_both_engines(tmp_path):
    """A ComfyUI all-in-one Z-Image file (``model.diffusion_model.`` + ``text_encoders.qwen3_4b.transformer.model.*``
    + ``vae.``, and the unused ``norm_final.weight`` ComfyUI's save adds) loads with its own text encoder and VAE on
    both engines: the pictures of the separate files, within 2/255."""
    from safetensors.torch import load_file

    from spriteforge import pipeline
    from spriteforge.engines import get_engine
    from spriteforge.tests.tiny_models import _save_file

    parts = tm.make_zimage_parts(tmp_path)
    sd = {"model.diffusion_model." + k: v for k, v in load_file(str(tm.make_zimage(tmp_path, layout="original"))).items()}
    sd["model.diffusion_model.norm_final.weight"] = torch.ones(64)
    sd.update({"text_encoders.qwen3_4b.transformer." + k: v for k, v in load_file(str(parts["text_encoders"][0])).items()})
    sd.update({"vae." + k: v for k, v in load_file(str(parts["vae"])).items()})
    aio = _save_file(sd, tmp_path / "aio" / "z_image_turbo_aio.safetensors")
    (tmp_path / "aio" / "qwen_tokenizer").symlink_to(tmp_path / "zimage_parts" / "qwen_tokenizer")
    params = pipeline.GenerateParams(prompt="a red knight", negative="blurry", cfg=2.0, seed=3, steps=2, width=32, height=32)
    images = []
    for name in ("torch", "mlx"):
        engine = get_engine(name, "cpu")
        h = engine.load_model(str(aio))
        assert h.extras["needs"] == [] and list(h.text_encoders) == ["qwen3_4b"] and h.vae is not None
        images.append(pipeline.generate(engine, h, params))
    separate = pipeline.generate(engine, engine.load_model(str(tm.make_zimage(tmp_path, layout="original")), **parts), params)
    for a in images[1:] + [separate]:
        assert np.abs(images[0] - a).max() <= 2 / 255
