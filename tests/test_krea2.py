"""Krea 2 on torch, from the files people hold: Comfy-Org's mixed-precision single file (krea's names, bf16 matrices,
f32 norms and modulation), diffusers' single file and a Krea2Pipeline folder, with the Qwen3-VL-4B text encoder and
the Qwen-Image VAE; held to diffusers' Krea2Pipeline (same weights, noise and sigmas) and its text encoder to the real
transformers classes. Tiny real-format parts: tests/tiny_krea2.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spriteforge.engines import get_engine
from spriteforge.tests.parity import assert_close
from spriteforge.models.families.krea2 import SUFFIX
from spriteforge.tests.tiny_krea2 import SELECT, build_qwen3_vl, make_krea2, make_qwen3_vl

STEPS, SIZE, SEED = 3, 64, 5


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from spriteforge.tests.tiny_qwenimage import make_qwen_vae

    d = tmp_path_factory.mktemp("krea2")
    return make_krea2(d, layout="original"), make_qwen_vae(d), make_qwen3_vl(d)


def _params(cond, **kw):
    from spriteforge.pipeline import GenerateParams

    return GenerateParams(seed=SEED, steps=kw.pop("steps", STEPS), cfg=kw.pop("cfg", 1.0), sampler="euler", schedule=kw.pop("schedule", "normal"),
                          width=SIZE, height=SIZE, cond=cond, **kw)


def _packed_noise():
    from spriteforge.samplers import make_noise

    noise = torch.from_numpy(make_noise(SEED, (1, 16, SIZE // 8, SIZE // 8)))
    b, c, hh, ww = noise.shape
    return noise.view(b, c, hh // 2, 2, ww // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (hh // 2) * (ww // 2), c * 4)


def _unpacked(lat):
    b, c, hh, ww = 1, 16, SIZE // 8, SIZE // 8
    return lat.view(b, hh // 2, ww // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, hh, ww).numpy()


def _text_encoder(path):
    """The tiny Qwen3-VL's ``Qwen3VLModel`` (what Krea2Pipeline takes) with the file's weights."""
    from safetensors.torch import load_file

    sd = load_file(str(path))
    vl = build_qwen3_vl(vocab_size=sd["model.language_model.embed_tokens.weight"].shape[0]).eval()
    missing, unexpected = vl.load_state_dict(sd, strict=False)
    assert set(missing) == {"lm_head.weight"} and not unexpected  # the file is the class's layout, the tied head aside
    return vl.model


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_torch_generation_matches_krea2_pipeline(files, cfg):
    """Our prompt encoding (the template's prefix, the cut prompt, the suffix after it, hidden states 2 and 5 of the
    language model side by side, the first 34 tokens dropped) and loop (2x2 packing, (0, row, col) positions, timestep
    = sigma, CFG at 1 + Krea's guidance) against Krea2Pipeline with the real Qwen3VLModel, on the weights our loader
    read from the mixed-precision original file; the pipeline pads its prompts to 512 tokens, ours to the longest."""
    import diffusers
    import transformers

    from spriteforge.pipeline import encode, model_schedule, sample
    from spriteforge.samplers import get_sigmas
    from spriteforge.tests.tiny_qwenimage import build_qwen_vae

    m, v, te = files
    eng = get_engine("torch", "cpu")
    h = eng.load_model(str(m), vae=str(v), text_encoders=[str(te)], dtype="float32")
    prompt, negative = "a red knight with a shield", "blurry"
    cond = encode(eng, h, prompt, negative, with_negative=cfg > 1)
    ours = np.asarray(sample(eng, h, _params(cond, cfg=cfg)).latents)
    tok = transformers.AutoTokenizer.from_pretrained(str(te.parent / f"{te.stem}_tokenizer"), local_files_only=True)
    pipe = diffusers.Krea2Pipeline(transformer=h.transformer, vae=build_qwen_vae(), text_encoder=_text_encoder(te), tokenizer=tok,
                                   scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False),
                                   text_encoder_select_layers=SELECT)
    pipe.set_progress_bar_config(disable=True)
    sigmas = get_sigmas("normal", STEPS, model_schedule(h, SIZE, SIZE))
    with torch.no_grad():
        emb, keep = pipe.encode_prompt(prompt, device=torch.device("cpu"))
        ref = pipe(prompt=prompt, negative_prompt=negative if cfg > 1 else None, guidance_scale=cfg - 1.0, num_inference_steps=STEPS,
                   sigmas=list(sigmas[:-1]), latents=_packed_noise(), height=SIZE, width=SIZE, output_type="latent",
                   return_dict=False)[0]
    # the same states on the real tokens (the pipeline's padding sits between the prompt and the suffix, ours after both)
    mine = eng.to_numpy(cond.embeds)[0][eng.to_numpy(cond.mask)[0] > 0]
    assert_close(mine, emb[0][keep[0]].flatten(1).numpy(), "prompt hidden states")
    assert_close(ours, _unpacked(ref), f"latents (cfg {cfg})")


def test_the_mixed_precision_file_is_read_tensor_by_tensor(files):
    """bf16 matrices and f32 norms/modulation in one file: named as such, and every tensor loaded is the file's own,
    through diffusers' converter (the flat ``mod.lin`` as a 6-row table)."""
    from diffusers.loaders.single_file_utils import convert_krea2_transformer_checkpoint_to_diffusers
    from safetensors.torch import load_file

    from spriteforge.models.detect import detect as detect_file

    det = detect_file(files[0])
    assert (det.family, det.layout) == ("krea2", "original") and set(det.extras["dtypes"]) == {"bfloat16", "float32"}
    h = get_engine("torch", "cpu").load_model(str(files[0]), vae=str(files[1]), text_encoders=[str(files[2])], dtype="float32")
    want = convert_krea2_transformer_checkpoint_to_diffusers(load_file(str(files[0])))
    got = h.transformer.state_dict()
    assert set(got) == set(want)
    for k, v in want.items():
        assert torch.equal(got[k], v.float()), k


def test_the_text_encoder_s_multimodal_rope_is_ordinary_rope_for_text():
    """Text-only prompts have equal positions on Qwen3-VL's three (interleaved) rope sections, so its language model
    is a Qwen3 with the same weights: checked on the real classes (hidden states of every layer)."""
    import transformers

    vl = build_qwen3_vl().model.language_model.eval()
    c = vl.config
    q3 = transformers.Qwen3Model(transformers.Qwen3Config(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim,
        rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_parameters["rope_theta"])).eval()
    assert q3.load_state_dict(vl.state_dict()).missing_keys == []
    ids = torch.randint(0, c.vocab_size, (2, 23), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = vl(input_ids=ids, output_hidden_states=True).hidden_states
        b = q3(input_ids=ids, output_hidden_states=True).hidden_states
    for x, y in zip(a, b, strict=True):
        assert_close(x.numpy(), y.numpy(), "hidden states")


def test_the_text_encoder_is_named_from_its_layout(files, tmp_path):
    """Qwen3-VL-4B as transformers saves Qwen3VLForConditionalGeneration (model.language_model.*, model.visual.* with
    pos_embed and deepstack mergers, tied head): Krea 2's slot, not Qwen3-4B's (same width, no vision tower) nor
    Qwen2.5-VL's (same vision patch embedding name, no q/k norms); its config builds the real text class."""
    import transformers
    from safetensors.torch import load_file, save_file

    from spriteforge.engines.torch_models.text_encoders import decoder_config
    from spriteforge.models import keymaps
    from spriteforge.models.detect import detect as detect_file

    det = detect_file(files[2])
    assert (det.kind, det.variant) == ("text_encoder", "qwen3_vl_4b") and "recognised_as" not in det.extras
    assert det.extras["vision_tower"] == "present: 1 blocks (model.visual.*)"
    with torch.device("meta"):
        lm = transformers.AutoModel.from_config(decoder_config(det.config))
    assert type(lm).__name__ == "Qwen3VLTextModel"
    sd = load_file(str(files[2]))
    assert set(keymaps.gemma_model_keys(sd)) == set(lm.state_dict())  # every language-model tensor, nothing more
    # the transformers-4 style names a repack may use (model.layers.*, visual.*) are the same encoder
    legacy = {k.replace("model.language_model.", "model.").replace("model.visual.", "visual."): v for k, v in sd.items()}
    save_file(legacy, str(tmp_path / "legacy.safetensors"))
    assert detect_file(tmp_path / "legacy.safetensors").variant == "qwen3_vl_4b"


@pytest.mark.parametrize("distilled", [True, False])
def test_a_pipeline_folder_generates_as_krea2_pipeline_does(tmp_path, distilled):
    """A Krea2Pipeline folder (its scheduler's dynamic shift, is_distilled, text_encoder_select_layers) against
    Krea2Pipeline.from_pretrained of the same folder at the pipeline's own sigmas: turbo's fixed mu = 1.15, raw's mu
    from the image size on the release's line (256 -> 6400 tokens, 0.5 -> 1.15)."""
    import diffusers

    from spriteforge.pipeline import encode, sample

    d = make_krea2(tmp_path, layout="folder", distilled=distilled)
    eng = get_engine("torch", "cpu")
    h = eng.load_model(str(d), dtype="float32")
    assert (h.family, h.variant) == ("krea2", "turbo" if distilled else "raw")
    from spriteforge.models.families import registry

    fam = registry.get("krea2")
    assert fam.sampling_defaults(h.variant) == ({"cfg": 1.0, "steps": 8, "sampler": "euler", "schedule": "simple"} if distilled
                                                else {"cfg": 5.5, "steps": 28, "sampler": "euler", "schedule": "simple"})
    assert fam.fixed_shift(h.variant) == (pytest.approx(math.exp(1.15)) if distilled else None)
    cfg = 1.0 if distilled else 2.5
    cond = encode(eng, h, "a knight", "", with_negative=cfg > 1)
    # the family's schedule ("simple": the pipeline's linspace(1, 1/n, n), exactly for n dividing 10000)
    ours = np.asarray(sample(eng, h, _params(cond, cfg=cfg, steps=4, schedule=fam.defaults["schedule"])).latents)
    pipe = diffusers.Krea2Pipeline.from_pretrained(str(d), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        ref = pipe(prompt="a knight", guidance_scale=cfg - 1.0, num_inference_steps=4, latents=_packed_noise(), height=SIZE,
                   width=SIZE, output_type="latent", return_dict=False)[0]
    assert_close(ours, _unpacked(ref), "latents")


def test_mlx_transformer_port_matches_the_real_class():
    """engines/mlx_models/krea2.py against Krea2Transformer2DModel on the same weights: a non-square token grid, a batch
    of two at different timesteps, with and without a text mask (the second prompt padded)."""
    mx = pytest.importorskip("mlx.core")
    from spriteforge.engines.mlx_models.krea2 import Krea2Transformer2DModel, map_weights
    from spriteforge.engines.mlx_models.layers import load_weights
    from spriteforge.tests.parity import mx_weights
    from spriteforge.tests.tiny_krea2 import TEXT_DIM, build_krea2

    tr = build_krea2(3)
    port = load_weights(Krea2Transformer2DModel(dict(tr.config)), map_weights(mx_weights(tr)))
    g = torch.Generator().manual_seed(0)
    b, h, w, n = 2, 3, 5, 7
    x, c = torch.randn(b, h * w, 64, generator=g), torch.randn(b, n, len(SELECT), TEXT_DIM, generator=g)
    t = torch.tensor([0.9, 0.25])
    ids = diffusers_ids(n, h, w)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, 4:] = False
    for m in (None, mask):
        with torch.no_grad():
            ref = tr(hidden_states=x, encoder_hidden_states=c, timestep=t, position_ids=ids, encoder_attention_mask=m,
                     return_dict=False)[0]
        out = port(mx.array(x.numpy()), mx.array(c.numpy()), mx.array(t.numpy()), mx.array(ids.numpy()),
                   None if m is None else mx.array(m.numpy()))
        assert_close(np.array(out), ref.numpy(), f"transformer (mask {m is not None})")


def diffusers_ids(text, h, w):
    from diffusers import Krea2Pipeline

    return Krea2Pipeline.prepare_position_ids(text, h, w, torch.device("cpu"))


# --------------------------------------------------------------------------- LoRA
# the layers a Krea 2 LoRA trains: the gated attention and SwiGLU of a block, a text-fusion block, the text projection
KREA_LORA = ("transformer_blocks.0.attn.to_q", "transformer_blocks.1.attn.to_gate", "transformer_blocks.0.ff.down",
             "text_fusion.refiner_blocks.0.attn.to_v", "txt_in.linear_1")
ORIGINAL = {"transformer_blocks.0.attn.to_q": "blocks.0.attn.wq", "transformer_blocks.1.attn.to_gate": "blocks.1.attn.gate",
            "transformer_blocks.0.ff.down": "blocks.0.mlp.down", "text_fusion.refiner_blocks.0.attn.to_v": "txtfusion.refiner_blocks.0.attn.wv",
            "txt_in.linear_1": "txtmlp.1"}


def _krea_lora(path, fmt, h):
    from spriteforge.tests.test_lora_torch import _shapes
    from spriteforge.tests.test_lora_util import Writer

    w = Writer(4)
    shapes = _shapes(h.transformer)
    for name in KREA_LORA:  # "comfyui": diffusion_model. + krea's own names, as ComfyUI-trained Krea 2 LoRAs are written
        w.lora(fmt, ORIGINAL[name] if fmt == "comfyui" else name, shapes[name], rank=4, alpha=4.0)
    return w.save(path)


def test_lora_gives_the_same_image_on_both_engines(files, tmp_path):
    """A Krea 2 LoRA in diffusers-peft names (Krea2LoraLoaderMixin's) and in krea's original names under ComfyUI's
    ``diffusion_model.`` (the same weights): named Krea 2, every layer matched, the picture changed, the same on torch
    and MLX (2/255), and the same picture from either naming."""
    pytest.importorskip("mlx.core")
    from spriteforge.lora import LoRASpec, apply_loras
    from spriteforge.pipeline import encode, generate

    def load(name):
        return get_engine(name, "cpu").load_model(str(files[0]), vae=str(files[1]), text_encoders=[str(files[2])], dtype="float32")

    out = {}
    for name in ("torch", "mlx"):
        eng, h = get_engine(name, "cpu"), load(name)
        cond = encode(eng, h, "a knight", with_negative=False)
        base = generate(eng, h, _params(cond))
        for fmt in ("peft", "comfyui"):
            lh = apply_loras(h, [LoRASpec(_krea_lora(tmp_path / f"krea_{fmt}.safetensors", fmt, load("torch")), 1.0)])
            rec = lh.loras[-1]
            assert rec.family == ("krea2",) and rec.matched == len(KREA_LORA) and not rec.unmatched, rec.summary()
            out[name, fmt] = generate(eng, lh, _params(cond))
            assert np.abs(out[name, fmt] - base).max() > 2 / 255  # the LoRA does something
    for fmt in ("peft", "comfyui"):
        diff = float(np.abs(out["mlx", fmt] - out["torch", fmt]).max())
        print(f"{fmt} LoRA: max |torch - mlx| {diff * 255:.3f}/255")
        assert diff <= 2 / 255
    assert float(np.abs(out["torch", "peft"] - out["torch", "comfyui"]).max()) <= 1e-5


def test_a_long_prompt_is_cut_before_the_template_s_suffix(files):
    """Krea2Pipeline cuts the prefix and prompt at max_sequence_length + 34 - 5 tokens and appends the template's five
    suffix tokens after the cut: so do we (TextEncoding.decoder's ``suffix``), hidden states equal on the kept tokens."""
    import diffusers
    import transformers

    from spriteforge.tests.tiny_qwenimage import build_qwen_vae

    m, v, te = files
    eng = get_engine("torch", "cpu")
    h = eng.load_model(str(m), vae=str(v), text_encoders=[str(te)], dtype="float32")
    prompt = "a red knight with a shield, " * 6
    cond = eng.encode_text(h, [prompt], max_length=12)
    tok = transformers.AutoTokenizer.from_pretrained(str(te.parent / f"{te.stem}_tokenizer"), local_files_only=True)
    pipe = diffusers.Krea2Pipeline(transformer=h.transformer, vae=build_qwen_vae(), text_encoder=_text_encoder(te), tokenizer=tok,
                                   scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), text_encoder_select_layers=SELECT)
    with torch.no_grad():
        emb, keep = pipe.encode_prompt(prompt, device=torch.device("cpu"), max_sequence_length=12)
    # cut: every position real, the suffix last (the tiny tokenizer spells the suffix in more than the real one's 5)
    suffix = len(tok(SUFFIX).input_ids)
    assert keep.shape == (1, 12 - 5 + suffix) and bool(keep.all()) and bool(eng.to_numpy(cond.mask).all())
    assert_close(eng.to_numpy(cond.embeds)[0], emb[0].flatten(1).numpy(), "cut prompt hidden states")
