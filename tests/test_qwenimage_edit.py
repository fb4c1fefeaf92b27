"""Qwen-Image-Edit (2509, 2511) on both engines: the transformer with reference latents, detection of the releases'
files and folders, generation against QwenImageEditPlusPipeline and MLX against torch.

Tiny real-format parts (tests/tiny_qwenimage_edit.py, tests/tiny_qwenimage.py) loaded through the code a user's files
take; the prompt side (vision tower, processor, prompt embeddings) is tests/test_qwenimage_edit_prompt.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spriteforge.tests.parity import assert_close


# --------------------------------------------------------------------------- the transformer port
@pytest.mark.parametrize("zero_cond_t", [False, True], ids=["2509", "2511"])
@pytest.mark.parametrize("refs", [[(3, 5)], [(3, 5), (4, 2)]], ids=["1ref", "2refs"])
def test_mlx_transformer_port_matches_the_real_class_with_references(zero_cond_t, refs):
    """engines/mlx_models/qwenimage.py against QwenImageTransformer2DModel with reference tokens after the image's
    (``img_shapes`` listing every grid: frame positions 1, 2..., the text after the largest half side), a batch of two
    at different timesteps with a padded prompt; 2511's ``zero_cond_t`` (reference tokens modulated at timestep 0)."""
    mx = pytest.importorskip("mlx.core")
    from spriteforge.engines.mlx_models.layers import load_weights
    from spriteforge.engines.mlx_models.qwenimage import QwenImageTransformer2DModel, map_weights
    from spriteforge.tests.parity import mx_weights
    from spriteforge.tests.tiny_qwenimage_edit import build_qwenimage_edit

    tr = build_qwenimage_edit(3, zero_cond_t=zero_cond_t)
    port = load_weights(QwenImageTransformer2DModel(dict(tr.config)), map_weights(mx_weights(tr)))
    g = torch.Generator().manual_seed(0)
    b, h, w, n = 2, 2, 3, 7
    shapes = [(1, h, w)] + [(1, rh, rw) for rh, rw in refs]
    tokens = sum(s[1] * s[2] for s in shapes)
    x, c = torch.randn(b, tokens, 64, generator=g), torch.randn(b, n, tr.config.joint_attention_dim, generator=g)
    t = torch.tensor([0.9, 0.25])
    mask = torch.ones(b, n)
    mask[1, 4:] = 0
    with torch.no_grad():
        ref = tr(hidden_states=x, encoder_hidden_states=c, encoder_hidden_states_mask=mask, timestep=t,
                 img_shapes=[shapes] * b, return_dict=False)[0]
    out = port(mx.array(x.numpy()), mx.array(c.numpy()), mx.array(t.numpy()), [shapes] * b, mx.array(mask.numpy()))
    assert_close(np.array(out), ref.numpy(), f"transformer with {len(refs)} references (zero_cond_t {zero_cond_t})")


# --------------------------------------------------------------------------- generation
STEPS, SEED = 3, 5
PROMPT, NEGATIVE = "make the knight's armour red", "blurry"


def picture(h: int, w: int, phase: float = 0.0) -> np.ndarray:
    """A smooth RGB picture [H,W,3] in 0..1, exactly representable in 8 bits (the pipelines read PIL images)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.stack([x / w, y / h, 0.5 + 0.4 * np.sin(x / 3.0 + phase)], axis=-1)
    return np.rint(a * 255.0) / 255.0


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from spriteforge.tests.tiny_qwenimage import make_qwen_vae
    from spriteforge.tests.tiny_qwenimage_edit import make_qwen25_vl_edit, make_qwenimage_edit

    d = tmp_path_factory.mktemp("qwenimage_edit")
    return {"2509": make_qwenimage_edit(d, "2509"), "2511": make_qwenimage_edit(d, "2511"), "vae": make_qwen_vae(d),
            "te": make_qwen25_vl_edit(d), "root": d}


def _load(engine_name, files, release="2509"):
    from spriteforge.engines import get_engine

    eng = get_engine(engine_name, "cpu")
    model = _said_2511(files[release]) if release == "2511" else files[release]
    return eng, eng.load_model(str(model), vae=str(files["vae"]), text_encoders=[str(files["te"])], dtype="float32")


def _said_2511(model):
    """A single file does not say 2511: its transformer config.json (``<file>.json`` beside it) does."""
    side = model.with_suffix(".json")
    if not side.exists():
        from spriteforge.tests.tiny_qwenimage_edit import build_qwenimage_edit

        side.write_text(json.dumps(dict(build_qwenimage_edit(zero_cond_t=True).config, _class_name="QwenImageTransformer2DModel")))
    return model


def _params(cond, w, h, **kw):
    from spriteforge.pipeline import GenerateParams

    return GenerateParams(seed=SEED, steps=STEPS, cfg=kw.pop("cfg", 1.0), sampler="euler", schedule="normal", width=w,
                          height=h, cond=cond, **kw)


@pytest.fixture
def small_areas(monkeypatch):
    """The edit pipelines' two areas (VAE: 1024x1024, vision tower: 384x384) scaled down alike on both sides, so the
    tiny test runs in seconds: the rules are the same code at any area."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as plus

    from spriteforge.models.families import qwenimage

    for ours, theirs, area in (("REFERENCE_AREA", "VAE_IMAGE_SIZE", 160 * 160), ("CONDITION_AREA", "CONDITION_IMAGE_SIZE", 112 * 112)):
        monkeypatch.setattr(qwenimage, ours, area)
        monkeypatch.setattr(plus, theirs, area)


@pytest.mark.parametrize("release,cfg", [("2509", 4.0), ("2511", 4.0)])
def test_torch_edit_matches_qwen_image_edit_plus_pipeline(files, small_areas, release, cfg):
    """The whole edit against diffusers' QwenImageEditPlusPipeline (the real Qwen2_5_VLForConditionalGeneration,
    QwenImageTransformer2DModel and AutoencoderKLQwenImage with the files' weights, its own processor, the same noise
    and sigmas): the reference VAE-encoded at the pipeline's area (calculate_dimensions: the picture stays), its
    packed latents after the image tokens, img_shapes listing both grids, the vision tower seeing it Lanczos-resized
    to the condition area in the edit template; true CFG with the norm rescale; 2511's zero_cond_t (from the config
    beside its file). (The pipeline's text encoder gets ``mm_token_type_ids``, see
    test_qwenimage_edit_prompt._pipeline_embeds.)"""
    import diffusers
    import transformers
    from PIL import Image

    from spriteforge import pipeline
    from spriteforge.samplers import get_sigmas, make_noise
    from spriteforge.tests.tiny_qwenimage import build_qwen_vae
    from spriteforge.tests.tiny_qwenimage_edit import load_qwen25_vl_edit, processor

    eng, h = _load("torch", files, release)
    assert h.transformer.config.zero_cond_t == (release == "2511")
    W, H = 48, 32
    ref = picture(160, 160)
    cond = pipeline.encode(eng, h, PROMPT, NEGATIVE, references=[ref], with_negative=cfg > 1)
    assert tuple(cond.references[0].shape) == (1, 16, 20, 20)
    ours = np.asarray(pipeline.sample(eng, h, _params(cond, W, H, cfg=cfg)).latents)

    te = files["te"]
    tok = transformers.AutoTokenizer.from_pretrained(str(te.parent / f"{te.stem}_tokenizer"), local_files_only=True)
    enc = load_qwen25_vl_edit(te)
    image_token = enc.config.image_token_id
    enc.register_forward_pre_hook(lambda _m, a, kw: (a, {**kw, "mm_token_type_ids": (kw["input_ids"] == image_token).int()}),
                                  with_kwargs=True)
    pipe = diffusers.QwenImageEditPlusPipeline(transformer=h.transformer, vae=build_qwen_vae(), text_encoder=enc, tokenizer=tok,
                                               processor=processor(tok),
                                               scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False))
    pipe.set_progress_bar_config(disable=True)
    sigmas = get_sigmas("normal", STEPS, pipeline.model_schedule(h, W, H))
    noise = torch.from_numpy(make_noise(SEED, (1, 16, H // 8, W // 8)))
    b, c, hh, ww = noise.shape
    packed = noise.view(b, c, hh // 2, 2, ww // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (hh // 2) * (ww // 2), c * 4)
    with torch.no_grad():
        got = pipe(image=[Image.fromarray(np.rint(ref * 255).astype(np.uint8))], prompt=PROMPT,
                   negative_prompt=NEGATIVE if cfg > 1 else None, true_cfg_scale=cfg, num_inference_steps=STEPS,
                   sigmas=list(sigmas[:-1]), latents=packed, height=H, width=W, output_type="latent", return_dict=False)[0]
    got = got.view(b, hh // 2, ww // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, hh, ww)
    assert_close(ours, got.numpy(), f"Qwen-Image-Edit-{release} latents vs QwenImageEditPlusPipeline (cfg {cfg})")


# --------------------------------------------------------------------------- MLX vs torch
TOL = 2 / 255


@pytest.mark.parametrize("release,refs", [("2509", 1), ("2509", 2), ("2511", 2)])
def test_same_edit_on_both_engines(files, release, refs):
    """The same edit (one or two references of their own sizes, CFG with a negative) drawn by torch and MLX from the
    same files, seed and sigmas: pictures within 2/255."""
    pytest.importorskip("mlx.core")
    from spriteforge import pipeline

    images = [picture(48, 64), picture(40, 40, 1.0)][:refs]
    params = pipeline.GenerateParams(prompt=PROMPT, negative=NEGATIVE, cfg=4.0, seed=SEED, steps=2, width=48, height=32,
                                     references=images, reference_resize=False)
    out = []
    for name in ("torch", "mlx"):
        eng, h = _load(name, files, release)
        out.append(pipeline.generate(eng, h, params))
    diff = float(np.abs(out[0] - out[1]).max())
    print(f"Qwen-Image-Edit-{release} with {refs} reference(s): max |torch - mlx| = {diff * 255:.4f}/255")
    assert out[0].shape == out[1].shape == (1, 32, 48, 3) and np.isfinite(out[1]).all() and out[1].std() > 1e-3
    assert diff <= TOL


def test_references_joined_to_a_text_prompt_are_seen_by_the_text_encoder(files):
    """The Reference Images node's path (``pipeline.with_references``: a prompt encoded without images, the references
    added after): Qwen-Image-Edit's text encoder reads the images, so the prompts are encoded again with them, the
    same conditioning as encoding them together (and not the text-only one)."""
    from spriteforge import pipeline

    eng, h = _load("torch", files)
    ref = picture(48, 32)
    plain = pipeline.encode(eng, h, PROMPT, NEGATIVE)
    joined = pipeline.with_references(eng, h, plain, [ref], resize=False)
    direct = pipeline.encode(eng, h, PROMPT, NEGATIVE, references=[ref], reference_resize=False)
    for a, b in ((joined, direct), (joined.negative, direct.negative)):
        assert_close(eng.to_numpy(a.embeds), eng.to_numpy(b.embeds), "with_references vs encode(references=)")
        assert_close(eng.to_numpy(a.references[0]), eng.to_numpy(b.references[0]), "reference latents")
    assert joined.embeds.shape[1] > plain.embeds.shape[1] + 4  # the image tokens are in the prompt now


def test_references_change_the_picture_and_batch_rows_are_independent(files):
    """An edit's row 0 of a batch of two is the batch of one (seed + i a row, the references repeated per row), on
    both engines; another reference gives another picture."""
    import dataclasses

    pytest.importorskip("mlx.core")
    from spriteforge import pipeline

    p = pipeline.GenerateParams(prompt=PROMPT, negative=NEGATIVE, cfg=4.0, seed=11, steps=2, width=32, height=32,
                                references=[picture(32, 32)], reference_resize=False)
    for name in ("torch", "mlx"):
        eng, h = _load(name, files)
        one = pipeline.generate(eng, h, p)
        two = pipeline.generate(eng, h, dataclasses.replace(p, batch_size=2))
        diff = float(np.abs(one[0] - two[0]).max())
        print(f"{name}: edit batch 1 vs item 0 of batch 2: {diff * 255:.4f}/255")
        assert two.shape[0] == 2 and diff <= TOL
        assert np.abs(two[0] - two[1]).max() > 0.01
        if name == "torch":
            other = pipeline.generate(eng, h, dataclasses.replace(p, references=[picture(32, 32, 2.0)]))
            assert np.abs(one - other).max() > 0.01


# --------------------------------------------------------------------------- releases: detection, folders, sizes
@pytest.fixture(scope="module")
def folders(files):
    from spriteforge.tests.tiny_qwenimage_edit import make_qwenimage_edit_folder

    return {r: make_qwenimage_edit_folder(files["root"], r) for r in ("2509", "2511", "edit")}


def test_what_inspect_can_tell_of_the_edit_releases(files, folders, tmp_path):
    """The Edit releases' transformers have Qwen-Image's key set and shapes (2511 adds only the config flag
    zero_cond_t): a single file is "20B" (Qwen-Image, 2512 or an Edit release); a diffusers folder says which by its
    pipeline class (QwenImageEditPipeline: ``edit``; QwenImageEditPlusPipeline: ``edit-2509``, with zero_cond_t
    ``edit-2511``), and so does the 2511 transformer's config.json put beside its single file."""
    from spriteforge.models.detect import detect
    from spriteforge.models.families import registry
    from spriteforge.tests.tiny_qwenimage import build_qwenimage
    from spriteforge.tests.tiny_qwenimage_edit import build_qwenimage_edit

    def shapes(m):
        return {k: tuple(v.shape) for k, v in m.state_dict().items()}

    assert shapes(build_qwenimage_edit(zero_cond_t=True)) == shapes(build_qwenimage())  # nothing in the weights
    assert detect(files["2509"]).variant == "20B"
    assert {r: detect(d).variant for r, d in folders.items()} == {"2509": "edit-2509", "2511": "edit-2511", "edit": "edit"}
    det = detect(_said_2511(files["2511"]))
    assert det.variant == "edit-2511" and det.config["zero_cond_t"] is True
    fam = registry.get("qwenimage")
    assert "2511" in fam.title("edit-2511") and fam.references_of("edit") == 1 and fam.references_of("edit-2509") == 3


def test_a_2511_folder_edits_the_same_on_both_engines(folders):
    """A Qwen-Image-Edit-2511 diffusers folder (text_encoder/ a Qwen2_5_VLForConditionalGeneration with its vision
    tower, processor/, zero_cond_t in transformer/config.json) loads and edits on both engines within 2/255."""
    pytest.importorskip("mlx.core")
    from spriteforge import pipeline
    from spriteforge.engines import get_engine

    params = pipeline.GenerateParams(prompt=PROMPT, negative="", cfg=4.0, seed=SEED, steps=2, width=32, height=32,
                                     references=[picture(40, 40)], reference_resize=False)
    out = []
    for name in ("torch", "mlx"):
        eng = get_engine(name, "cpu")
        h = eng.load_model(str(folders["2511"]), dtype="float32")
        assert h.variant == "edit-2511"
        out.append(pipeline.generate(eng, h, params))
    diff = float(np.abs(out[0] - out[1]).max())
    print(f"Qwen-Image-Edit-2511 folder: max |torch - mlx| = {diff * 255:.4f}/255")
    assert diff <= TOL


def test_the_first_edit_release_encodes_as_qwen_image_edit_pipeline(folders):
    """A QwenImageEditPipeline folder (variant ``edit``): its template (the one image before the instruction, no
    "Picture 1:"), the image the vision tower sees at about a megapixel: prompt embeddings equal the pipeline's
    ``encode_prompt`` on the real class; a second reference is refused."""
    import diffusers
    import transformers
    from PIL import Image

    from spriteforge.engines import get_engine
    from spriteforge.errors import SpriteForgeError
    from spriteforge.models.families.qwenimage import REFERENCE_AREA, calculate_dimensions
    from spriteforge.tests.tiny_qwenimage_edit import processor

    d = folders["edit"]
    eng = get_engine("torch", "cpu")
    h = eng.load_model(str(d), dtype="float32")
    img = picture(60, 90)
    cond = eng.encode_text(h, [PROMPT], images=[img])
    with pytest.raises(SpriteForgeError):
        eng.encode_text(h, [PROMPT], images=[img, img])
    tok = transformers.AutoTokenizer.from_pretrained(str(d / "tokenizer"), local_files_only=True)
    enc = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(str(d / "text_encoder"), local_files_only=True).eval()
    image_token = enc.config.image_token_id
    enc.register_forward_pre_hook(lambda _m, a, kw: (a, {**kw, "mm_token_type_ids": (kw["input_ids"] == image_token).int()}),
                                  with_kwargs=True)
    pipe = diffusers.QwenImageEditPipeline(transformer=h.transformer, vae=h.vae, text_encoder=enc, tokenizer=tok, processor=processor(tok),
                                           scheduler=diffusers.FlowMatchEulerDiscreteScheduler())
    pil = Image.fromarray(np.rint(img * 255).astype(np.uint8))
    w, hh = calculate_dimensions(REFERENCE_AREA, pil.size[0] / pil.size[1])
    with torch.no_grad():
        ref, _ = pipe.encode_prompt(PROMPT, image=pipe.image_processor.resize(pil, hh, w))
    assert_close(eng.to_numpy(cond.embeds), ref.numpy(), "Qwen-Image-Edit (first release) prompt embeds")


@pytest.mark.parametrize("w,h", [(64, 64), (300, 100), (1000, 1300), (17, 900)])
def test_references_are_sized_as_the_edit_pipelines(w, h):
    """A reference is VAE-encoded at ``calculate_dimensions(1024 * 1024, w / h)`` whatever its size (the pipelines'
    rule: about a megapixel, multiples of 32); ``reference_resize=False`` keeps its size, rounded down to the grid."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import VAE_IMAGE_SIZE, calculate_dimensions

    from spriteforge.models.families import registry

    fam = registry.get("qwenimage")
    assert fam.reference_size(w, h, 16) == calculate_dimensions(VAE_IMAGE_SIZE, w / h)
    assert fam.reference_size(w, h, 16, auto=False) == (w // 16 * 16, h // 16 * 16)


def test_edit_with_a_lora_on_both_engines(files, tmp_path):
    """A Qwen-Image LoRA (the Edit releases' LoRAs are Qwen-Image's format) applied to the Edit model: the same
    edited picture on both engines within 2/255, and not the picture without it."""
    pytest.importorskip("mlx.core")
    from spriteforge import pipeline
    from spriteforge.lora import LoRASpec
    from spriteforge.tests.test_qwenimage import _qwen_lora

    params = pipeline.GenerateParams(prompt=PROMPT, negative=NEGATIVE, cfg=4.0, seed=SEED, steps=2, width=32, height=32,
                                     references=[picture(48, 32)], reference_resize=False)
    out, plain, spec = [], None, None
    for name in ("torch", "mlx"):
        eng, h = _load(name, files)
        if plain is None:  # (torch first: the LoRA is written for its modules' shapes)
            plain = pipeline.generate(eng, h, params)
            spec = [LoRASpec(_qwen_lora(tmp_path, "peft", h), 1.5)]
        h = eng.apply_loras(h, spec)
        assert h.loras[-1].matched > 0
        out.append(pipeline.generate(eng, h, params))
    diff = float(np.abs(out[0] - out[1]).max())
    print(f"Qwen-Image-Edit with a LoRA: max |torch - mlx| = {diff * 255:.4f}/255")
    assert diff <= TOL and np.abs(out[0] - plain).max() > 0.01


def test_an_mlx_cache_keeps_the_vision_tower(files, tmp_path):
    """A converted MLX cache of an Edit model carries the text encoder's vision tower: the cached model edits as the
    files do."""
    pytest.importorskip("mlx.core")
    from spriteforge import pipeline
    from spriteforge.engines.mlx_models import cache

    eng, h = _load("mlx", files)
    params = pipeline.GenerateParams(prompt=PROMPT, negative="", cfg=4.0, seed=SEED, steps=2, width=32, height=32,
                                     references=[picture(32, 48)], reference_resize=False)
    direct = pipeline.generate(eng, h, params)
    d = cache.convert(eng, str(files["2509"]), out=str(tmp_path / "cache"), vae=str(files["vae"]), text_encoders=[str(files["te"])],
                      dtype="float32")
    hc = cache.load_cache(eng, d)
    assert getattr(hc.text_encoders["qwen25_7b"], "_sf_visual", None) is not None
    diff = float(np.abs(pipeline.generate(eng, hc, params) - direct).max())
    print(f"Qwen-Image-Edit from the MLX cache vs its files: {diff * 255:.4f}/255")
    assert diff <= 1e-5
