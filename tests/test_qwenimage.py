"""Qwen-Image on both engines: its VAE (the Wan-2.1 causal 3-D VAE on single frames), from the files people hold.

Tiny real-format parts (tests/tiny_qwenimage.py) loaded through the code a user's file takes; the MLX port is held
to the real diffusers class (run as a one-frame video, latents normalised as QwenImagePipeline does).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spriteforge.engines import get_engine
from spriteforge.engines.base import ModelHandle
from spriteforge.tests.parity import assert_close
from spriteforge.tests.tiny_qwenimage import build_qwen_vae, make_qwen_vae, qwen_vae_to_original

VAE_LAYOUTS = ("original", "diffusers", "folder")


def _image(seed=0, size=(32, 48)):
    return np.random.default_rng(seed).random((1, *size, 3), dtype=np.float32)


def _reference(img):
    """The real class on a one-frame video, latents normalised and back as QwenImagePipeline does."""
    vae = build_qwen_vae()
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    x = torch.from_numpy(img.transpose(0, 3, 1, 2))[:, :, None] * 2 - 1
    with torch.no_grad():
        z = (vae.encode(x).latent_dist.mode() - mean) / std
        out = vae.decode(z * std + mean).sample[:, :, 0]
    return z[:, :, 0].numpy(), (out / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def _handle(eng, vae, cfg):
    return ModelHandle(family="qwenimage", variant="", engine=eng, transformer=None, vae=vae, vae_config=cfg,
                       latent_channels=16, vae_scale_factor=8, patch_size=2)


def _load_vae(eng, path):
    if eng.name == "torch":
        from spriteforge.engines.torch_models.vae import load_vae
    else:
        from spriteforge.engines.mlx_models.loading import load_vae
    return load_vae(eng, path, family="qwenimage", dtype="float32")


def test_vae_original_layout_is_the_released_files(shared_dir):
    """The tiny VAE has the released block structure: its original-layout names are qwen_image_vae.safetensors' own,
    and its diffusers names the diffusers release's (ranks alike, widths smaller)."""
    sd = build_qwen_vae().state_dict()
    for name, keys in (("qwen-image.vae.original", qwen_vae_to_original(sd)), ("qwen-image.vae.diffusers", sd)):
        want = json.loads((shared_dir / "checkpoints" / f"{name}.json").read_text())["tensors"]
        assert set(keys) == set(want), name
        assert all(keys[k].dim() == len(want[k]["shape"]) for k in want), name


def _meta(name, shared_dir):
    """A released file's tensors (its reference manifest) as meta tensors: names and shapes, no data."""
    want = json.loads((shared_dir / "checkpoints" / f"{name}.json").read_text())["tensors"]
    return {k: torch.empty(v["shape"], device="meta") for k, v in want.items()}


def _fits(model, sd):
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert own == {k: tuple(v.shape) for k, v in sd.items()}


@pytest.mark.parametrize("name", ["qwen-image.transformer.diffusers", "qwen-image.vae.original", "qwen-image.vae.diffusers",
                                  "qwen2.5-vl-7b.text-encoder"])
def test_the_released_files_fit_the_classes_the_engines_build(shared_dir, name):
    """What detection reads from each released file's header builds the real class (on the meta device) whose every
    tensor name and shape the file's (converted as the loaders convert it) fill exactly: the 20B transformer, the
    VAE in both layouts, and Qwen2.5-VL-7B's language model (``visual.*`` and the untied ``lm_head`` left out)."""
    from spriteforge.engines.model_files import vae_config_for
    from spriteforge.engines.torch_models import convert
    from spriteforge.engines.torch_models.building import build_empty, diffusers_class
    from spriteforge.engines.torch_models.text_encoders import build_text_encoder
    from spriteforge.engines.torch_models.vae import build_vae
    from spriteforge.models.detect import detect_tensors
    from spriteforge.models.safetensors_header import header_from_manifest

    sd = _meta(name, shared_dir)
    det = detect_tensors(header_from_manifest(json.loads((shared_dir / "checkpoints" / f"{name}.json").read_text())).tensors, name=name)
    if det.kind == "transformer":
        cls = diffusers_class(det.config["_class_name"])
        model = build_empty(lambda: cls.from_config({k: v for k, v in det.config.items() if not k.startswith("_")}))
        _fits(model, sd)
    elif det.kind == "vae":
        model = build_vae(vae_config_for(det, "qwenimage"))
        _fits(model, convert.convert_vae(det.variant, sd, det.layout, det.config))
    else:
        assert det.variant == "qwen25_7b" and "recognised_as" not in det.extras
        model = build_text_encoder(det.variant, det.config, "qwenimage")
        assert type(model).__name__ == "Qwen2_5_VLTextModel"
        _fits(model, convert.convert_text_encoder(det.variant, sd, set(model.state_dict())))


@pytest.mark.parametrize("engine_name", ["torch", "mlx"])
@pytest.mark.parametrize("layout", VAE_LAYOUTS)
def test_vae_encodes_and_decodes_as_the_real_class(tmp_path, engine_name, layout):
    """Every layout a user holds loads on both engines and encodes/decodes one frame as diffusers' class does
    (the MLX port: 2-D convolutions from the last time tap, checked here against the 3-D causal original)."""
    if engine_name == "mlx":
        pytest.importorskip("mlx.core")
    eng = get_engine(engine_name, "cpu")
    vae, cfg = _load_vae(eng, make_qwen_vae(tmp_path, layout))
    h = _handle(eng, vae, cfg)
    img = _image()
    z_ref, img_ref = _reference(img)
    z = eng.to_numpy(eng.vae_encode(h, img))
    assert_close(z, z_ref, f"{engine_name} {layout} encode")
    assert_close(eng.vae_decode(h, z_ref), img_ref, f"{engine_name} {layout} decode")


# --------------------------------------------------------------------------- the transformer port


def test_mlx_transformer_port_matches_the_real_class():
    """engines/mlx_models/qwenimage.py against QwenImageTransformer2DModel: an odd token grid (centred rope rows and
    columns), a batch of two at different timesteps, with and without a text mask (the second prompt padded)."""
    mx = pytest.importorskip("mlx.core")
    from spriteforge.engines.mlx_models.layers import load_weights
    from spriteforge.engines.mlx_models.qwenimage import QwenImageTransformer2DModel, map_weights
    from spriteforge.tests.parity import mx_weights
    from spriteforge.tests.tiny_qwenimage import build_qwenimage

    tr = build_qwenimage(3)
    port = load_weights(QwenImageTransformer2DModel(dict(tr.config)), map_weights(mx_weights(tr)))
    g = torch.Generator().manual_seed(0)
    b, h, w, n = 2, 3, 5, 7
    x, c = torch.randn(b, h * w, 64, generator=g), torch.randn(b, n, tr.config.joint_attention_dim, generator=g)
    t = torch.tensor([0.9, 0.25])
    mask = torch.ones(b, n)
    mask[1, 4:] = 0
    for m in (None, mask):
        with torch.no_grad():
            ref = tr(hidden_states=x, encoder_hidden_states=c, encoder_hidden_states_mask=m, timestep=t,
                     img_shapes=[[(1, h, w)]] * b, return_dict=False)[0]
        out = port(mx.array(x.numpy()), mx.array(c.numpy()), mx.array(t.numpy()), [[(1, h, w)]] * b,
                   None if m is None else mx.array(m.numpy()))
        assert_close(np.array(out), ref.numpy(), f"transformer (mask {m is not None})")


# --------------------------------------------------------------------------- generation
STEPS, SIZE, SEED = 3, 64, 5


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from spriteforge.tests.tiny_qwenimage import make_qwen25_vl, make_qwenimage

    d = tmp_path_factory.mktemp("qwenimage")
    return make_qwenimage(d), make_qwen_vae(d), make_qwen25_vl(d)


def _load(engine_name, files):
    m, v, te = files
    eng = get_engine(engine_name, "cpu")
    return eng, eng.load_model(str(m), vae=str(v), text_encoders=[str(te)], dtype="float32")


def _params(cond, **kw):
    from spriteforge.pipeline import GenerateParams

    return GenerateParams(seed=SEED, steps=STEPS, cfg=kw.pop("cfg", 1.0), sampler="euler", schedule="normal", width=SIZE,
                          height=SIZE, cond=cond, **kw)


@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_torch_generation_matches_qwen_image_pipeline(files, cfg):
    """Our prompt encoding (template, dropped tokens, the language model's last hidden state) and loop (packing,
    img_shapes, timestep = sigma, true CFG with the pipeline's norm rescale) against diffusers' QwenImagePipeline with
    the real Qwen2_5_VLForConditionalGeneration (vision tower and mrope included), the same tiny weights, noise and
    sigmas; with CFG the negative prompt is shorter than the prompt (our batch pads it, the pipeline runs it alone)."""
    import diffusers
    import transformers
    from safetensors.torch import load_file

    from spriteforge.pipeline import encode, model_schedule, sample
    from spriteforge.samplers import get_sigmas, make_noise
    from spriteforge.tests.tiny_qwenimage import build_qwen25_vl, qwen25_vl_legacy_names

    eng, h = _load("torch", files)
    prompt, negative = "a red knight with a shield", "blurry"
    cond = encode(eng, h, prompt, negative, with_negative=cfg > 1)
    ours = np.asarray(sample(eng, h, _params(cond, cfg=cfg)).latents)
    te_path = files[2]
    tok = transformers.AutoTokenizer.from_pretrained(str(te_path.parent / f"{te_path.stem}_tokenizer"), local_files_only=True)
    sd = load_file(str(te_path))
    text_encoder = build_qwen25_vl(vocab_size=sd["model.embed_tokens.weight"].shape[0]).eval()
    assert qwen25_vl_legacy_names(text_encoder.state_dict()).keys() == sd.keys()
    pipe = diffusers.QwenImagePipeline(transformer=h.transformer, vae=build_qwen_vae(), text_encoder=text_encoder, tokenizer=tok,
                                       scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False))
    pipe.set_progress_bar_config(disable=True)
    sigmas = get_sigmas("normal", STEPS, model_schedule(h, SIZE, SIZE))
    noise = torch.from_numpy(make_noise(SEED, (1, 16, SIZE // 8, SIZE // 8)))
    b, c, hh, ww = noise.shape
    packed = noise.view(b, c, hh // 2, 2, ww // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (hh // 2) * (ww // 2), c * 4)
    with torch.no_grad():
        emb, _ = pipe.encode_prompt(prompt, device=torch.device("cpu"))
        ref = pipe(prompt=prompt, negative_prompt=negative if cfg > 1 else None, true_cfg_scale=cfg, num_inference_steps=STEPS,
                   sigmas=list(sigmas[:-1]), latents=packed, height=SIZE, width=SIZE, output_type="latent", return_dict=False)[0]
    assert_close(eng.to_numpy(cond.embeds), emb.numpy(), "prompt embeds")
    ref = ref.view(b, hh // 2, ww // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, hh, ww)
    assert_close(ours, ref.numpy(), f"latents (cfg {cfg})")


# torch vs MLX pictures (txt2img, img2img, inpainting, seamless, CFG): tests/test_mlx_families.py's cases


# --------------------------------------------------------------------------- LoRA
# the layers a Qwen-Image LoRA trains (its attention on both streams, the image MLP, the text modulation)
QWEN_LORA = ("transformer_blocks.0.attn.to_q", "transformer_blocks.1.attn.add_v_proj", "transformer_blocks.0.img_mlp.net.2",
             "transformer_blocks.1.txt_mod.1")


def _qwen_lora(tmp_path, fmt, h):
    from spriteforge.tests.test_lora_torch import _shapes
    from spriteforge.tests.test_lora_util import Writer

    w = Writer(4)
    shapes = _shapes(h.transformer)
    for name in QWEN_LORA:
        w.lora(fmt, name, shapes[name], rank=4, alpha=4.0)
    return w.save(tmp_path / f"qwen_{fmt}.safetensors")


@pytest.mark.parametrize("fmt", ["peft", "kohya"])
def test_lora_gives_the_same_image_on_both_engines(files, tmp_path, fmt):
    """A Qwen-Image LoRA in the formats Qwen-Image ships in (diffusers-peft ``transformer.transformer_blocks.N.attn.to_q``,
    kohya ``lora_unet_transformer_blocks_N_...``) changes the picture, the same on torch and MLX (within 2/255)."""
    pytest.importorskip("mlx.core")
    from spriteforge.lora import LoRASpec, apply_loras
    from spriteforge.pipeline import encode, generate

    out = {}
    for name in ("torch", "mlx"):
        eng, h = _load(name, files)
        cond = encode(eng, h, "a knight", with_negative=False)
        base = generate(eng, h, _params(cond))
        lh = apply_loras(h, [LoRASpec(_qwen_lora(tmp_path, fmt, _load("torch", files)[1]), 1.0)])
        rec = lh.loras[-1]
        assert rec.family == ("qwenimage",) and rec.matched == len(QWEN_LORA) and not rec.unmatched, rec.summary()
        out[name] = generate(eng, lh, _params(cond))
        assert np.abs(out[name] - base).max() > 2 / 255  # the LoRA does something
    diff = float(np.abs(out["mlx"] - out["torch"]).max())
    print(f"{fmt} LoRA: max |torch - mlx| {diff * 255:.3f}/255")
    assert diff <= 2 / 255


def test_a_lora_of_another_family_is_refused(files, tmp_path):
    """LORA_KEY_MISMATCH both ways: a Qwen-Image LoRA on Flux, a Flux (original layout) LoRA on Qwen-Image."""
    from spriteforge.errors import LORA_KEY_MISMATCH, SpriteForgeError
    from spriteforge.lora import apply_loras
    from spriteforge.tests import test_lora_util as U
    from spriteforge.tests.test_lora_torch import _original_case

    _, h = _load("torch", files)
    with pytest.raises(SpriteForgeError) as e:
        apply_loras(U.handle("flux"), [_qwen_lora(tmp_path, "peft", h)])
    assert e.value.code == LORA_KEY_MISMATCH and "is for Qwen-Image; the loaded model is Flux" in e.value.message, e.value.message
    _, _, flux_lora, _ = _original_case(tmp_path, "flux", "kohya")
    with pytest.raises(SpriteForgeError) as e:
        apply_loras(h, [flux_lora])
    assert e.value.code == LORA_KEY_MISMATCH and "is for Flux; the loaded model is Qwen-Image" in e.value.message, e.value.message


def test_the_shift_follows_the_image_size_on_the_release_s_line():
    """QwenImagePipeline's mu = calculate_shift(image tokens, ...) with its scheduler's numbers (base 256 tokens ->
    0.5, 8192 tokens -> 0.9; Flux's line ends at 4096 -> 1.15), read from the release's scheduler config."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

    from spriteforge.generation.sizes import model_schedule
    from spriteforge.models import configs

    sched = configs.load("qwen-image")["scheduler"]
    h = ModelHandle(family="qwenimage", variant="20B", engine=None, transformer=None, prediction="flow", extras={"scheduler": sched})
    for w, hh in ((1024, 1024), (1328, 1328), (512, 768)):
        want = calculate_shift((w // 16) * (hh // 16), sched["base_image_seq_len"], sched["max_image_seq_len"], sched["base_shift"],
                               sched["max_shift"])
        assert model_schedule(h, w, hh).mu == pytest.approx(want, rel=1e-12)


def test_an_attention_only_lora_applies(files, tmp_path):
    """A Qwen-Image LoRA on its joint attention only (the names Flux and SD3 share): a candidate family, applied."""
    from spriteforge.lora import apply_loras
    from spriteforge.tests.test_lora_torch import _shapes
    from spriteforge.tests.test_lora_util import Writer

    _, h = _load("torch", files)
    w = Writer(5)
    shapes = _shapes(h.transformer)
    layers = ("transformer_blocks.0.attn.to_q", "transformer_blocks.1.attn.add_k_proj", "transformer_blocks.1.attn.to_out.0",
              "transformer_blocks.0.attn.to_add_out")
    for name in layers:
        w.lora("peft", name, shapes[name], rank=4, alpha=4.0)
    rec = apply_loras(h, [w.save(tmp_path / "qwen_attn.safetensors")]).loras[-1]
    assert "qwenimage" in rec.family and rec.matched == len(layers) and not rec.unmatched, rec.summary()


@pytest.mark.parametrize("engine_name", ["torch", "mlx"])
def test_a_layered_release_is_refused_by_name(files, tmp_path, engine_name):
    """Qwen-Image-Layered's transformer (the same blocks plus a layer-condition embedding) is not drawn with: a coded
    UNSUPPORTED_ARCHITECTURE naming what to load, not an engine failure."""
    if engine_name == "mlx":
        pytest.importorskip("mlx.core")
    from diffusers import QwenImageTransformer2DModel

    from spriteforge.errors import UNSUPPORTED_ARCHITECTURE, SpriteForgeError
    from spriteforge.pipeline import encode, generate
    from spriteforge.tests.tiny_models import _randomize, _save_file
    from spriteforge.tests.tiny_qwenimage import QWEN25_DIM

    tr = _randomize(QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=1, attention_head_dim=16,
                                                num_attention_heads=2, joint_attention_dim=QWEN25_DIM, axes_dims_rope=(4, 6, 6),
                                                use_additional_t_cond=True), 0)
    path = _save_file(tr.state_dict(), tmp_path / "qwen_image_layered.safetensors")
    eng = get_engine(engine_name, "cpu")
    with pytest.raises(SpriteForgeError) as e:
        h = eng.load_model(str(path), vae=str(files[1]), text_encoders=[str(files[2])], dtype="float32")
        generate(eng, h, _params(encode(eng, h, "a knight", with_negative=False)))
    assert e.value.code == UNSUPPORTED_ARCHITECTURE and "Layered" in e.value.message, e.value.message


def test_an_all_in_one_file_loads_its_own_vae_and_text_encoder(files, tmp_path):
    """A ComfyUI all-in-one Qwen-Image file (``model.diffusion_model.``, the VAE in its Wan-2.1 layout under ``vae.``,
    Qwen2.5-VL under ``text_encoders.qwen25_7b.transformer.``, the tokenizer beside it) needs nothing else, on either
    engine, and draws what the separate files draw."""
    import shutil

    from safetensors.torch import load_file

    from spriteforge.pipeline import encode, generate
    from spriteforge.tests.tiny_models import _save_file

    m, v, te = files
    sd = {f"model.diffusion_model.{k}": t for k, t in load_file(str(m)).items()}
    sd.update({f"vae.{k}": t for k, t in load_file(str(v)).items()})
    sd.update({f"text_encoders.qwen25_7b.transformer.{k}": t for k, t in load_file(str(te)).items()})
    path = _save_file(sd, tmp_path / "qwen_image_aio.safetensors")
    shutil.copytree(te.parent / f"{te.stem}_tokenizer", tmp_path / "qwen_image_aio_tokenizer")
    for name in ("torch", "mlx"):
        if name == "mlx":
            pytest.importorskip("mlx.core")
        eng = get_engine(name, "cpu")
        h = eng.load_model(str(path), dtype="float32")
        assert list(h.text_encoders) == ["qwen25_7b"] and h.vae is not None and h.extras["needs"] == []
        got = generate(eng, h, _params(encode(eng, h, "a knight", with_negative=False)))
        _, hs = _load(name, files)
        want = generate(eng, hs, _params(encode(eng, hs, "a knight", with_negative=False)))
        assert float(np.abs(got - want).max()) <= 1e-6, name
