"""Qwen-Image 2.1 (issue #24.1): its own family (``QwenImage21Transformer2DModel``, not a Qwen-Image variant) on both
engines. Files in diffusers' names, ComfyUI's single-file layout and diffusers folders are named from the header and
told apart from Qwen-Image / 2512; its text encoder (Qwen3-VL-8B) and VAE (``AutoencoderKLQwenImage21``) are named and
loaded; torch generation is held to diffusers' ``QwenImage21Pipeline`` on the same weights, noise and sigmas (LoRAs
too), the MLX ports (transformer, VAE) to the diffusers classes, and MLX to torch on the same files and noise
(text to image, CFG, img2img, a LoRA; batch 1 = item 0 of batch 4).

The layouts are checked against diffusers itself: the tiny files are the real classes' state dicts, the release-size
header is the real class's at its default (release) config on the meta device, and ComfyUI's layout is the one
diffusers' ``convert_qwen_image21_transformer_checkpoint_to_diffusers`` turns back into the class's exact keys."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
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
from spriteforge.tests.parity import assert_close  # noqa: E402

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
    assert "recognised_as" not in det.extras
    if layout != "folder":  # (a folder's pipeline names the release)
        assert "base or Turbo" in det.extras["ambiguous"]
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
    assert "qwenimage21" in out and "base-or-turbo" in out and "base or Turbo: same layout" in out


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


def test_its_vae_is_named_and_the_qwen_image_vae_still_is(tmp_path):
    from tiny_qwenimage import make_qwen_vae

    det = detect(Q.make_qwen21_vae(tmp_path))
    assert (det.kind, det.variant) == ("vae", "qwen-image-2.1")
    assert det.config["z_dim"] == 64 and det.config["in_channels"] == 4  # RGBA in, 64 latent channels
    assert det.config["dim_mult"] == Q.VAE_CONFIG["dim_mult"] and det.config["decoder_base_dim"] == 12
    for layout in ("original", "diffusers"):
        old = detect(make_qwen_vae(tmp_path / layout, layout=layout))
        assert (old.kind, old.variant) == ("vae", "qwen-image")


def test_its_text_encoder_is_named(tmp_path):
    """An untied Qwen3-VL (the 8B's head; the 4B's is tied: Krea 2's) is Qwen-Image 2.1's text encoder."""
    from tiny_krea2 import make_qwen3_vl

    det = detect(Q.make_qwen3_vl_8b(tmp_path))
    assert (det.kind, det.variant) == ("text_encoder", "qwen3_vl_8b") and "recognised_as" not in det.extras
    assert detect(make_qwen3_vl(tmp_path / "krea")).variant == "qwen3_vl_4b"


# --------------------------------------------------------------------------- generation on torch against the pipeline

STEPS, SIZE, SEED = 3, 64, 5
PROMPT = "a red knight with a shield"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("qwen21")
    return Q.make_qwenimage21(d, layout="original"), Q.make_qwen21_vae(d), Q.make_qwen3_vl_8b(d)


@pytest.fixture(scope="module")
def loaded(files):
    from spriteforge.engines import get_engine

    eng = get_engine("torch", "cpu")
    m, v, te = files
    return eng, eng.load_model(str(m), vae=str(v), text_encoders=[str(te)], dtype="float32")


def _pipeline(files, h, scheduler):
    """QwenImage21Pipeline on the weights our loader read (the transformer) and the files' own (text encoder, VAE)."""
    import diffusers
    import transformers
    from safetensors.torch import load_file

    m, v, te = files
    tok = transformers.AutoTokenizer.from_pretrained(str(te.parent / f"{te.stem}_tokenizer"), local_files_only=True)
    vl = Q.build_qwen3_vl_8b(vocab_size=len(tok))
    vl.load_state_dict(load_file(str(te)), strict=True)
    vae = diffusers.AutoencoderKLQwenImage21(**Q.VAE_CONFIG)
    vae.load_state_dict(load_file(str(v)), strict=True)
    tr = diffusers.QwenImage21Transformer2DModel(**Q.CONFIG)
    tr.load_state_dict(h.transformer.state_dict(), strict=True)
    pipe = diffusers.QwenImage21Pipeline(scheduler=scheduler, vae=vae.eval(), text_encoder=vl.eval(), processor=Q.processor(tok),
                                         transformer=tr.eval())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _noise():
    from spriteforge.samplers import make_noise

    return torch.from_numpy(make_noise(SEED, (1, 64, SIZE // 16, SIZE // 16)))


def test_the_loaded_transformer_is_the_file_through_diffusers_converter(files, loaded):
    from diffusers.loaders.single_file_utils import convert_qwen_image21_transformer_checkpoint_to_diffusers as convert
    from safetensors.torch import load_file

    want = convert(load_file(str(files[0])))
    got = loaded[1].transformer.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_torch_generation_matches_qwenimage21_pipeline(files, loaded):
    """Prompt encoding (the template, the last layer before the final norm, the system turn dropped), the model call
    (unpatched tokens after the text, the image slots, timestep = sigma) and the VAE (RGBA, normalised latents) against
    QwenImage21Pipeline: the same sigmas given to both (a scheduler that applies no shift of its own), and our schedule
    against the pipeline's own shifted one."""
    import diffusers
    from diffusers.pipelines.qwenimage21.pipeline_qwenimage21 import calculate_shift

    from spriteforge.pipeline import GenerateParams, decode, encode, model_schedule, sample
    from spriteforge.samplers import get_sigmas

    eng, h = loaded
    assert (h.family, h.latent_channels, h.vae_scale_factor, h.latent_multiple) == ("qwenimage21", 64, 16, 32)
    cond = encode(eng, h, PROMPT, "", with_negative=False)
    ours = np.asarray(sample(eng, h, GenerateParams(seed=SEED, steps=STEPS, cfg=1.0, sampler="euler", schedule="simple",
                                                   width=SIZE, height=SIZE, cond=cond)).latents)
    sigmas = get_sigmas("simple", STEPS, model_schedule(h, SIZE, SIZE))
    own = diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                    base_image_seq_len=256, max_image_seq_len=4096)
    own.set_timesteps(sigmas=np.linspace(1.0, 1 / STEPS, STEPS), mu=calculate_shift((SIZE // 16) ** 2, 256, 4096, 0.5, 1.15))
    assert_close(np.asarray(sigmas, np.float32), own.sigmas.numpy(), "sigmas", rel=2e-4)  # (our 10000-level table)

    pipe = _pipeline(files, h, diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False))
    lat = _noise().view(1, 64, -1).transpose(1, 2)
    with torch.no_grad():
        emb, mask, image_slots = pipe.encode_prompt(PROMPT, device=torch.device("cpu"))
        ref = pipe(prompt=PROMPT, num_inference_steps=STEPS, sigmas=list(sigmas[:-1]), latents=lat, height=SIZE, width=SIZE,
                   output_type="latent", return_dict=False)[0]
        image = pipe(prompt=PROMPT, num_inference_steps=STEPS, sigmas=list(sigmas[:-1]), latents=lat, height=SIZE, width=SIZE,
                     output_type="np", return_dict=False)[0]
    assert mask is None and not image_slots.any()
    assert_close(eng.to_numpy(cond.embeds), emb.numpy(), "prompt hidden states", rel=1e-6)
    ref = ref.transpose(1, 2).reshape(1, 64, SIZE // 16, SIZE // 16).numpy()
    assert_close(ours, ref, "latents", rel=1e-5)
    mine = decode(eng, h, ours)
    assert image.shape == (1, SIZE, SIZE, 4)  # the pipeline's RGBA; ours is its RGB
    assert_close(mine, image[..., :3], "images", rel=1e-4)


def test_cfg_with_a_negative_prompt_matches_the_pipeline(files, loaded):
    """True CFG (``neg + scale * (cond - neg)``, no rescale) with a negative prompt of another length: the pipeline runs
    the two as separate calls, each at its own length (the image's rotary frame follows the text's length), and so do
    we; a batch of two prompts of different lengths draws each as it draws alone."""
    import diffusers

    from spriteforge.pipeline import GenerateParams, encode, model_schedule, sample
    from spriteforge.samplers import get_sigmas

    eng, h = loaded
    negative, cfg = "blurry", 2.5
    cond = encode(eng, h, PROMPT, negative, with_negative=True)
    ours = np.asarray(sample(eng, h, GenerateParams(seed=SEED, steps=STEPS, cfg=cfg, sampler="euler", schedule="simple",
                                                   width=SIZE, height=SIZE, cond=cond)).latents)
    sigmas = get_sigmas("simple", STEPS, model_schedule(h, SIZE, SIZE))
    pipe = _pipeline(files, h, diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False))
    with torch.no_grad():
        ref = pipe(prompt=PROMPT, negative_prompt=negative, true_cfg_scale=cfg, num_inference_steps=STEPS, sigmas=list(sigmas[:-1]),
                   latents=_noise().view(1, 64, -1).transpose(1, 2), height=SIZE, width=SIZE, output_type="latent",
                   return_dict=False)[0]
    assert_close(ours, ref.transpose(1, 2).reshape(1, 64, SIZE // 16, SIZE // 16).numpy(), "CFG latents", rel=1e-5)

    both = encode(eng, h, [PROMPT, negative], "", with_negative=False)
    two = np.asarray(sample(eng, h, GenerateParams(seed=SEED, steps=STEPS, cfg=1.0, sampler="euler", schedule="simple",
                                                  width=SIZE, height=SIZE, cond=both, batch_size=2)).latents)
    alone = np.asarray(sample(eng, h, GenerateParams(seed=SEED, steps=STEPS, cfg=1.0, sampler="euler", schedule="simple",
                                                    width=SIZE, height=SIZE, cond=encode(eng, h, PROMPT, "", with_negative=False))).latents)
    assert_close(two[:1], alone, "the longer prompt in a batch with a shorter one", rel=1e-5)


def test_vae_encode_is_the_pipeline_s(files, loaded):
    """img2img's VAE encode: an RGB image with an opaque alpha, the distribution's mode normalised by the config's
    latents_mean / latents_std, as QwenImage21Pipeline._encode_vae_image (argmax)."""
    eng, h = loaded
    pipe = _pipeline(files, h, None)
    img = np.random.default_rng(1).random((1, SIZE, SIZE, 3)).astype(np.float32)
    ours = eng.to_numpy(eng.vae_encode(h, img))
    x = torch.from_numpy(np.concatenate([img, np.ones_like(img[..., :1])], -1)).permute(0, 3, 1, 2)[:, :, None] * 2 - 1
    with torch.no_grad():
        ref = pipe._encode_vae_image(x, generator=None)[:, :, 0].numpy()
    assert_close(ours, ref, "image latents", rel=1e-5)


# --------------------------------------------------------------------------- LoRA
# the layers a Qwen-Image 2.1 LoRA trains: the single stream's attention, its SwiGLU, the text projection
LORA = ("transformer_blocks.0.attn.to_q", "transformer_blocks.1.attn.to_out.0", "transformer_blocks.0.img_mlp.gate_layer",
        "transformer_blocks.1.img_mlp.out", "txt_in.in_layer")


@pytest.mark.parametrize("fmt", ["peft", "kohya"])
def test_a_lora_is_its_merged_weights_in_the_pipeline(files, loaded, tmp_path, fmt):
    """A LoRA in diffusers-peft (``transformer.transformer_blocks.N.img_mlp.gate_layer``) or kohya names is read as
    Qwen-Image 2.1's and gives QwenImage21Pipeline's latents with the LoRA's product merged into the weights."""
    import diffusers

    from spriteforge.lora import LoRASpec, apply_loras
    from spriteforge.lora.family import detect_family
    from spriteforge.pipeline import GenerateParams, encode, model_schedule, sample
    from spriteforge.samplers import get_sigmas
    from spriteforge.tests.test_lora_torch import _shapes
    from spriteforge.tests.test_lora_util import Writer

    eng, h = loaded
    w = Writer(3)
    shapes = _shapes(h.transformer)
    keys = {name: w.lora(fmt, name, shapes[name], rank=4, alpha=4.0) for name in LORA}
    path = w.save(tmp_path / f"q21_{fmt}.safetensors")
    assert detect_family([n.replace(".", "_") for n in LORA]).family == "qwenimage21"
    lh = apply_loras(h, [LoRASpec(path, 1.0)])
    cond = encode(eng, lh, PROMPT, "", with_negative=False)
    params = GenerateParams(seed=SEED, steps=STEPS, cfg=1.0, sampler="euler", schedule="simple", width=SIZE, height=SIZE, cond=cond)
    ours = np.asarray(sample(eng, lh, params).latents)
    base = np.asarray(sample(eng, h, params).latents)
    assert np.abs(ours - base).max() > 1e-3  # the LoRA does something

    pipe = _pipeline(files, h, diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False))
    mods = dict(pipe.transformer.named_modules())
    with torch.no_grad():
        for name in LORA:
            mods[name].weight += torch.from_numpy(w.delta[keys[name]]).float()
        sigmas = get_sigmas("simple", STEPS, model_schedule(h, SIZE, SIZE))
        ref = pipe(prompt=PROMPT, num_inference_steps=STEPS, sigmas=list(sigmas[:-1]), latents=_noise().view(1, 64, -1).transpose(1, 2),
                   height=SIZE, width=SIZE, output_type="latent", return_dict=False)[0]
    assert_close(ours, ref.transpose(1, 2).reshape(1, 64, SIZE // 16, SIZE // 16).numpy(), f"{fmt} LoRA latents", rel=1e-4)


# --------------------------------------------------------------------------- the MLX ports and both engines


def test_mlx_transformer_port_is_the_diffusers_class():
    """engines/mlx_models/qwenimage21.py against QwenImage21Transformer2DModel on the same weights: a batch of two with
    different timesteps, the second prompt padded (its padded keys masked, as the block-causal attention and the
    causal_condition rows of timestep 0 are), over the whole joint sequence."""
    mx = pytest.importorskip("mlx.core")
    from spriteforge.engines.mlx_models.layers import load_weights
    from spriteforge.engines.mlx_models.qwenimage21 import QwenImage21Transformer2DModel, map_weights

    tm = Q.build_transformer(1)
    mm = QwenImage21Transformer2DModel(dict(tm.config))
    load_weights(mm, {k: mx.array(v.numpy()) for k, v in map_weights(tm.state_dict()).items()})
    g = torch.Generator().manual_seed(0)
    b, n_text, h, w = 2, 7, 4, 6
    x, e = torch.randn(b, h * w, 64, generator=g), torch.randn(b, n_text, Q.CONFIG["context_in_dim"], generator=g)
    keep = torch.ones(b, n_text, dtype=torch.bool)
    keep[1, 5:] = False
    t = torch.tensor([0.7, 0.3])
    slots = torch.cat([torch.zeros(b, n_text, dtype=torch.bool), torch.ones(b, h * w // 4, dtype=torch.bool)], 1)
    with torch.no_grad():
        ref = tm(hidden_states=x, encoder_hidden_states=e, timestep=t, img_shapes=[[(1, h, w)]] * b, img_mask=slots,
                 encoder_hidden_states_mask=keep, return_dict=False)[0].numpy()
    out = mm(mx.array(x.numpy()), mx.array(e.numpy()), mx.array(t.numpy()), [[(1, h, w)]] * b, mx.array(slots.numpy()),
             mx.array(keep.numpy()))
    assert_close(np.asarray(out)[:, n_text:], ref[:, n_text:], "MLX port: image tokens", rel=1e-5)
    assert_close(np.asarray(out)[0], ref[0], "MLX port: the unpadded row", rel=1e-5)


def test_mlx_vae_port_is_the_diffusers_class():
    """engines/mlx_models/vae_qwenimage21.py against AutoencoderKLQwenImage21 (through the torch engine's single-frame
    class on the same weights): encode (RGB with an opaque alpha, the mode normalised) and decode (RGB kept), the
    residual down/up shortcuts included (the zero frame of the temporal ones)."""
    mx = pytest.importorskip("mlx.core")
    from spriteforge.engines.mlx_models.layers import load_weights
    from spriteforge.engines.mlx_models.vae_qwenimage21 import AutoencoderKLQwenImage21, map_weights
    from spriteforge.engines.torch_models.vae_qwenimage21 import AutoencoderKLQwenImage21 as Torch

    for cfg in (Q.VAE_CONFIG, {**Q.VAE_CONFIG, "dim_mult": [1, 2, 4, 8, 8]}):  # (the release's widths, in proportion)
        tv = Q._randomize(Torch(**cfg), 2, Q.VAE_SCALE)
        mv = AutoencoderKLQwenImage21(dict(tv.config))
        load_weights(mv, {k: mx.array(v) for k, v in map_weights({k: v.numpy() for k, v in tv.state_dict().items()}).items()})
        g = torch.Generator().manual_seed(0)
        x, z = torch.rand(2, 3, 64, 96, generator=g) * 2 - 1, torch.randn(2, 64, 4, 6, generator=g)
        with torch.no_grad():
            enc, dec = tv.encode(x).latent_dist.mode().numpy(), tv.decode(z).sample.numpy()
        assert_close(np.asarray(mv.encode(mx.array(x.numpy()))), enc, f"MLX VAE encode {cfg['dim_mult']}", rel=1e-5)
        assert_close(np.asarray(mv.decode(mx.array(z.numpy()))), dec, f"MLX VAE decode {cfg['dim_mult']}", rel=1e-5)


@pytest.fixture(scope="module")
def engines(files):
    pytest.importorskip("mlx.core")
    from spriteforge.engines import get_engine

    m, v, te = files
    out = {}
    for name in ("torch", "mlx"):
        eng = get_engine(name, "cpu")
        out[name] = (eng, eng.load_model(str(m), vae=str(v), text_encoders=[str(te)], dtype="float32"))
    return out


def _draw(eng, h, *, batch=1, negative="", cfg=1.0, **kw):
    """(images, latents) of one run."""
    from spriteforge.pipeline import GenerateParams, encode, generate_full

    cond = encode(eng, h, PROMPT, negative, with_negative=cfg > 1)
    res = generate_full(eng, h, GenerateParams(seed=SEED, steps=STEPS, cfg=cfg, sampler="euler", schedule="simple",
                                               width=SIZE, height=96, cond=cond, batch_size=batch, **kw))
    return np.asarray(res.images), np.asarray(res.latents)


def _same(out, what):
    """torch's and MLX's images within 2/255, and their latents (which the tiny VAE's flat images hide) within 1e-4."""
    (ti, tl), (mi, ml) = out["torch"], out["mlx"]
    diff = float(np.abs(ti - mi).max())
    print(f"{what}: max |torch - mlx| {diff * 255:.4f}/255")
    assert diff <= 2 / 255
    assert_close(ml, tl, f"{what}: MLX vs torch latents", rel=1e-4)


CASES = {"txt2img": {}, "cfg": {"cfg": 2.5, "negative": "blurry"},
         "img2img": {"init_image": np.random.default_rng(3).random((1, 96, SIZE, 3)).astype(np.float32), "denoise": 0.6}}


@pytest.mark.parametrize("case", list(CASES))
def test_both_engines_draw_the_same_image(engines, case):
    """torch (diffusers' class, held to QwenImage21Pipeline above) and MLX (the ports) on the same files and noise:
    within 2/255, text to image, with a negative prompt and CFG, and from an image."""
    out = {name: _draw(eng, h, **CASES[case]) for name, (eng, h) in engines.items()}
    assert out["torch"][0].shape == (1, 96, SIZE, 3)
    _same(out, case)


def test_a_lora_draws_the_same_on_both_engines(engines, tmp_path):
    from spriteforge.lora import LoRASpec, apply_loras
    from spriteforge.tests.test_lora_torch import _shapes
    from spriteforge.tests.test_lora_util import Writer

    w = Writer(3)
    shapes = _shapes(engines["torch"][1].transformer)
    for name in LORA:
        w.lora("kohya", name, shapes[name], rank=4, alpha=4.0)
    path = w.save(tmp_path / "q21_kohya.safetensors")
    out = {}
    for name, (eng, h) in engines.items():
        out[name] = _draw(eng, apply_loras(h, [LoRASpec(path, 1.0)]))
        assert np.abs(out[name][1] - _draw(eng, h)[1]).max() > 1e-2  # the LoRA does something
    _same(out, "LoRA")


@pytest.mark.parametrize("engine_name", ["torch", "mlx"])
def test_batch_one_is_item_zero_of_batch_four(engines, engine_name):
    eng, h = engines[engine_name]
    (one, lat1), (four, lat4) = _draw(eng, h), _draw(eng, h, batch=4)
    assert four.shape[0] == 4
    assert_close(lat1[0], lat4[0], f"{engine_name}: batch 1 vs item 0 of 4 (latents)", rel=1e-5)
    assert_close(one[0], four[0], f"{engine_name}: batch 1 vs item 0 of 4 (images)", rel=1e-5)


@pytest.mark.parametrize("engine_name", ["torch", "mlx"])
def test_a_pipeline_folder_draws_as_the_single_files(files, engines, tmp_path, engine_name):
    """A QwenImage21Pipeline folder as the release lays it out (the tokenizer inside processor/, the full
    Qwen3VLForConditionalGeneration in text_encoder/) loads by itself on both engines and draws what the single files
    with the same weights draw."""
    eng, h = engines[engine_name]
    folder = eng.load_model(str(Q.make_qwenimage21_folder(tmp_path)), dtype="float32")
    assert (folder.family, folder.extras["needs"]) == ("qwenimage21", [])
    (img_f, lat_f), (img, lat) = _draw(eng, folder), _draw(eng, h)
    assert_close(lat_f, lat, f"{engine_name}: folder vs single files (latents)", rel=1e-5)
    assert np.abs(img_f - img).max() <= 1 / 255


def test_a_gguf_of_comfyui_s_file_loads_quantized(tmp_path):
    """ComfyUI's single file (fused gate_up) as a Q8_0 GGUF: loaded with its matrices kept quantized (the converter's
    chunk of the fused gate_up included), computing exactly as its decoded weights (the gguf package's decoding)."""
    from gguf import GGMLQuantizationType
    from safetensors.torch import load_file

    import test_gguf as G
    from spriteforge.engines import get_engine
    from spriteforge.engines.torch_models import quant

    p = G.write_gguf(load_file(str(Q.make_qwenimage21(tmp_path, layout="original"))), tmp_path / "q21.gguf",
                     GGMLQuantizationType.Q8_0, arch="qwen_image")
    eng = get_engine("torch", "cpu")
    h, ref = eng.load_model(str(p), dtype="float32"), eng.load_model(str(p.with_suffix(".decoded.safetensors")), dtype="float32")
    assert h.family == "qwenimage21" and sum(isinstance(m, quant.QuantLinear) for m in h.transformer.modules()) >= 4
    g = torch.Generator().manual_seed(0)
    kw = dict(hidden_states=torch.randn(1, 16, 64, generator=g), encoder_hidden_states=torch.randn(1, 5, 32, generator=g),
              timestep=torch.tensor([0.5]), img_shapes=[[(1, 4, 4)]],
              img_mask=torch.cat([torch.zeros(1, 5, dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool)], 1), return_dict=False)
    with torch.no_grad():
        torch.testing.assert_close(h.transformer(**kw)[0], ref.transformer(**kw)[0], rtol=1e-5, atol=1e-5)
