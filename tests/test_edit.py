"""Editing with reference images (issue #24.4) on the torch engine: FLUX.1 Kontext against ``FluxKontextPipeline``,
FLUX.2 [klein] against ``Flux2KleinPipeline`` and [dev] against ``Flux2Pipeline`` (one and two references, CFG), on
tiny models in the released layouts loaded through the loader a user's file takes, with the same noise and sigmas;
the reference size rules, the refusals, the Edit node, Encode Prompt's references through the Sampler, and
``spriteforge edit``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_flux2 as tf  # noqa: E402
import tiny_models as tm  # noqa: E402

from spriteforge import pipeline  # noqa: E402
from spriteforge.engines import get_engine  # noqa: E402
from spriteforge.errors import BAD_INPUT, SpriteForgeError  # noqa: E402
from spriteforge.models.families import registry  # noqa: E402
from spriteforge.samplers import get_sigmas, make_noise  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SEED = 5


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("edit")


@pytest.fixture(scope="module")
def eng():
    return get_engine("torch", "cpu")


def picture(h: int, w: int, phase: float = 0.0) -> np.ndarray:
    """A smooth RGB test picture [H,W,3] in 0..1, exactly representable as 8-bit (the pipelines read PIL images)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.stack([x / w, y / h, 0.5 + 0.4 * np.sin(x / 3.0 + phase)], axis=-1)
    return np.rint(a * 255.0) / 255.0


def pil(a: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.rint(a * 255.0).astype(np.uint8))


def flux_dev(eng, root):
    """Flux.1 [dev] as BFL's single file (the layout of flux1-kontext-dev.safetensors) with ae / clip_l / t5xxl."""
    d = root / "parts"
    return eng.load_model(str(tm.make_flux(root, layout="original", variant="dev")), vae=str(tm.make_vae(d, 16, layout="original")),
                          text_encoders=[str(tm.make_clip(d, "clip_l")), str(tm.make_t5(d))], dtype="float32")


def _pack(x):
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def _unpack(x, c, h, w):
    b = x.shape[0]
    return x.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


# --------------------------------------------------------------------------- FLUX.1 Kontext


@pytest.mark.parametrize("cfg,own", [(1.0, False), (2.0, False), (1.0, True)], ids=["guidance", "true-cfg", "its-sigmas"])
def test_kontext_matches_flux_kontext_pipeline(eng, root, cfg, own):
    """A reference image's packed latents after the image tokens at positions (1, row, col), the reference tokens'
    output dropped, guidance 2.5 by default; with a negative, FluxKontextPipeline's true CFG: the same latents for the
    same sigmas. ``its-sigmas``: our edit defaults (the simple schedule, the output's shift) against the pipeline's
    own scheduler (the flux-dev release's dynamic shift from the output's token count, not the reference's)."""
    from spriteforge.models import configs

    h = flux_dev(eng, root)
    W, H, steps = 64, 48, 4 if own else 3  # 4 steps: the simple schedule's table gives linspace(1, 1/4) exactly
    ref = picture(48, 80)  # the reference need not be the output's size
    cond = pipeline.encode(eng, h, "make it red", "blurry", references=[ref], reference_resize=False, with_negative=cfg != 1.0)
    assert cond.guidance == 2.5 and len(cond.references) == 1 and tuple(cond.references[0].shape) == (1, 16, 6, 10)
    how = {} if own else {"sampler": "euler", "schedule": "normal"}
    ours = pipeline.sample(eng, h, pipeline.GenerateParams(seed=SEED, steps=steps, cfg=cfg, width=W, height=H, cond=cond, **how))
    assert ours.info["schedule"] == ("simple" if own else "normal")
    noise = torch.from_numpy(make_noise(SEED, (1, 16, H // 8, W // 8)))
    if own:
        sc = {k: v for k, v in configs.load("flux-dev")["scheduler"].items() if k != "_class_name"}
        scheduler, sig = diffusers.FlowMatchEulerDiscreteScheduler.from_config(sc), {}
    else:
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
        sig = {"sigmas": get_sigmas("normal", steps, pipeline.model_schedule(h, W, H))[:-1]}
    pipe = diffusers.FluxKontextPipeline(transformer=h.transformer, vae=h.vae, text_encoder=None, tokenizer=None,
                                         text_encoder_2=None, tokenizer_2=None, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    neg = {"negative_prompt_embeds": cond.negative.embeds, "negative_pooled_prompt_embeds": cond.negative.pooled,
           "true_cfg_scale": cfg} if cfg != 1.0 else {}
    with torch.no_grad():
        ref_lat = pipe(image=pil(ref), prompt_embeds=cond.embeds, pooled_prompt_embeds=cond.pooled, guidance_scale=2.5,
                       num_inference_steps=steps, latents=_pack(noise), height=H, width=W, max_area=W * H,
                       _auto_resize=False, output_type="latent", return_dict=False, **sig, **neg)[0]
    ref_lat = _unpack(ref_lat, 16, H // 8, W // 8).numpy()
    diff = float(np.abs(ours.latents - ref_lat).max())
    what = "its own sigmas" if own else ("true CFG 2" if cfg != 1 else "guidance 2.5")
    print(f"Kontext ({what}): max |ours - FluxKontextPipeline| latent = {diff:.2e}")
    assert ours.latents.shape == ref_lat.shape and diff <= 1e-4 * max(1.0, float(np.abs(ref_lat).max()))


def test_kontext_sizes_references_as_its_pipeline():
    """Kontext's trained sizes, the nearest aspect (FluxKontextPipeline's PREFERRED_KONTEXT_RESOLUTIONS); kept size
    rounded down to the grid; FLUX.2 scaled down to 1 megapixel, its pipelines' minimum side and aspect refused."""
    from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

    flux, flux2 = registry.get("flux"), registry.get("flux2")
    assert flux.reference_resolutions == tuple(tuple(r) for r in PREFERRED_KONTEXT_RESOLUTIONS)
    assert flux.reference_size(64, 64, 16) == (1024, 1024)
    assert flux.reference_size(300, 100, 16) == (1568, 672)
    assert flux.reference_size(100, 70, 16, auto=False) == (96, 64)
    assert flux2.reference_size(2048, 1024, 16) == (1440, 720)  # int(2048 * sqrt(1/2)) = 1448 -> 1440
    assert flux2.reference_scaled(2048, 1024) == (1448, 724)
    assert flux2.reference_size(100, 70, 16) == (96, 64)
    for w, h in ((32, 32), (1024, 100)):
        with pytest.raises(SpriteForgeError) as e:
            flux2.reference_size(w, h, 16)
        assert e.value.code == BAD_INPUT
    d = flux.edit_sampling_defaults("dev")
    assert (d["steps"], d["schedule"], d["cfg"], flux.edit_defaults["guidance"]) == (28, "simple", 1.0, 2.5)


@pytest.mark.parametrize("w,h", [(100, 70), (1100, 1000)])
def test_flux2_references_are_prepared_as_its_pipelines_do(eng, w, h):
    """FLUX.2's reference: scaled down to 1 megapixel when above (Lanczos), cut about the centre to the 16-pixel grid
    (Flux2ImageProcessor's resize_mode "crop"), as Flux2KleinPipeline prepares its condition images."""
    from diffusers.pipelines.flux2.image_processor import Flux2ImageProcessor

    from spriteforge.generation.references import prepare
    from spriteforge.engines.base import ModelHandle

    handle = ModelHandle(family="flux2", variant="klein-4B", engine=eng, transformer=None, vae_scale_factor=16, patch_size=1)
    img = picture(h, w, 1.0)
    ours = prepare(handle, [img])[0][0]
    proc, im = Flux2ImageProcessor(vae_scale_factor=16), pil(img)
    if w * h > 1024 * 1024:  # the pipelines' steps (pipeline_flux2_klein.py, "process images")
        im = proc._resize_to_target_area(im, 1024 * 1024)
    rw, rh = (im.size[0] // 16) * 16, (im.size[1] // 16) * 16
    ref = proc.preprocess(im, height=rh, width=rw, resize_mode="crop")[0].permute(1, 2, 0).numpy() / 2 + 0.5
    assert ours.shape == ref.shape
    tol = 2.5 / 255 if w * h > 1024 * 1024 else 1e-6  # a float Lanczos against PIL's 8-bit one; no resize: exact
    assert float(np.abs(ours - ref).max()) <= tol


def test_flux1_dev_layout_file_is_said_to_maybe_be_kontext(root):
    from spriteforge.models.detect import detect

    det = detect(tm.make_flux(root, layout="original", variant="dev"))
    assert det.variant == "dev" and "Kontext" in det.extras["ambiguous"]
    assert "ambiguous" not in detect(tm.make_flux(root, layout="original", variant="schnell")).extras


# --------------------------------------------------------------------------- FLUX.2


def _noise2(h, w, batch=1):
    return torch.from_numpy(make_noise(SEED, (batch, 128, h // 16, w // 16)))


def test_klein_matches_flux2_klein_pipeline_with_two_references(eng, root):
    """From a Flux2KleinPipeline folder: two references, each its own time coordinate (10, 20), CFG 4 with the empty
    negative (the references in both passes), the output the first reference's size: the same picture and latents."""
    folder = tf.make_flux2(root, layout="folder", distilled=False)
    h = eng.load_model(str(folder), dtype="float32")
    r1, r2 = picture(64, 64), picture(64, 80, 2.0)
    params = pipeline.GenerateParams(prompt="a red knight", negative="", seed=SEED, steps=4, cfg=4.0, references=[r1, r2])
    res = pipeline.edit(eng, h, params)
    pipe = diffusers.Flux2KleinPipeline.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(image=[pil(r1), pil(r2)], prompt="a red knight", num_inference_steps=4, guidance_scale=4.0, latents=_noise2(64, 64))
    with torch.no_grad():
        ref = pipe(output_type="np", **kw).images
        ref_lat = pipe(output_type="latent", **kw).images
        ours_lat = h.vae._raw(torch.from_numpy(res.latents)).numpy()  # our patched, normalised latents as the pipeline's
    diff, ldiff = float(np.abs(res.images - ref).max()), float(np.abs(ours_lat - ref_lat.numpy()).max())
    print(f"FLUX.2 [klein] base, 2 references: max |ours - Flux2KleinPipeline| image {diff * 255:.4f}/255, latent {ldiff:.2e}")
    assert res.images.shape == ref.shape == (1, 64, 64, 3) and res.info["references"] == 2
    assert diff <= 1e-4 and ldiff <= 1e-4


def test_dev_matches_flux2_pipeline_with_references(eng, root):
    """[dev] (BFL's single file): the guidance input, no CFG, two references of different sizes."""
    vae = tf.make_flux2_vae(root, layout="original", name="flux2-vae.safetensors")
    h = eng.load_model(str(tf.make_flux2(root, layout="original", variant="dev")), vae=str(vae),
                       text_encoders=[str(tf.make_flux2_text_encoder(root / "te"))], dtype="float32")
    r1, r2 = picture(64, 96), picture(80, 64, 1.0)
    cond = pipeline.encode(eng, h, "a red knight", with_negative=False, references=[r1, r2])
    ours = pipeline.generate(eng, h, pipeline.GenerateParams(seed=SEED, steps=4, cfg=1.0, width=96, height=64, cond=cond))
    pipe = diffusers.Flux2Pipeline(scheduler=tf._scheduler(), vae=tf.build_flux2_vae(), text_encoder=None, tokenizer=None,
                                   transformer=h.transformer)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        ref = pipe(image=[pil(r1), pil(r2)], prompt_embeds=cond.embeds, num_inference_steps=4, guidance_scale=4.0,
                   latents=_noise2(64, 96), height=64, width=96, output_type="np").images
    diff = float(np.abs(ours - ref).max())
    print(f"FLUX.2 [dev], 2 references: max |ours - Flux2Pipeline| = {diff * 255:.4f}/255")
    assert diff <= 1e-4


# --------------------------------------------------------------------------- what an edit run does besides


def test_references_are_encoded_once_a_run_and_edits_change_the_picture(eng, root, monkeypatch):
    h = flux_dev(eng, root)
    calls = []
    real = eng.vae_encode
    monkeypatch.setattr(eng, "vae_encode", lambda hh, img: calls.append(np.asarray(img).shape) or real(hh, img))
    ref = picture(48, 64)
    p = pipeline.GenerateParams(prompt="make it red", seed=SEED, steps=2, references=[ref], reference_resize=False)
    res = pipeline.edit(eng, h, p)
    assert calls == [(1, 48, 64, 3)] and res.images.shape == (1, 48, 64, 3)
    assert res.info["steps"] == 2 and res.info["guidance"] == 2.5 and res.info["references"] == 1
    plain = pipeline.generate(eng, h, pipeline.GenerateParams(prompt="make it red", seed=SEED, steps=2, width=64, height=48,
                                                              guidance=2.5))
    assert float(np.abs(plain - res.images).max()) > 1e-3  # the reference is seen
    other = pipeline.edit(eng, h, pipeline.GenerateParams(prompt="make it red", seed=SEED, steps=2,
                                                          references=[picture(48, 64, 2.0)], reference_resize=False))
    assert float(np.abs(other.images - res.images).max()) > 1e-4  # and which one matters


def test_img2img_and_inpainting_with_a_reference(eng, root):
    h = flux_dev(eng, root)
    ref, src = picture(48, 64), picture(48, 64, 3.0)
    m = np.zeros((1, 48, 64), np.float32)
    m[:, 16:32, 16:48] = 1.0
    base = dict(prompt="make it red", seed=SEED, steps=3, references=[ref], reference_resize=False, init_image=src[None])
    i2i = pipeline.edit(eng, h, pipeline.GenerateParams(denoise=0.5, **base)).images
    inp = pipeline.edit(eng, h, pipeline.GenerateParams(mask=m, mask_feather=0, **base)).images
    assert np.isfinite(i2i).all() and i2i.shape == (1, 48, 64, 3)
    assert float(np.abs(inp[0, :8] - src[:8]).max()) < 1e-6  # outside the mask: the source


def test_refusals(eng, root):
    """A model that cannot edit, too many references, a Fill model, schnell, a bad image: BAD_INPUT saying what to do."""
    from spriteforge.tests.test_generation_tiny import make_flux, make_pixart

    ref = picture(64, 64)
    pix = make_pixart(eng)
    with pytest.raises(SpriteForgeError) as e:
        pipeline.generate(eng, pix, pipeline.GenerateParams(prompt="x", steps=1, width=64, height=64, references=[ref]))
    assert e.value.code == BAD_INPUT and "cannot take reference images" in e.value.message
    assert "Kontext" in e.value.message and "FLUX.2" in e.value.message  # what to load instead
    h = flux_dev(eng, root)
    with pytest.raises(SpriteForgeError) as e:
        pipeline.encode(eng, h, "x", references=[ref, ref])
    assert e.value.code == BAD_INPUT and "at most 1" in e.value.message
    for variant, fill in (("schnell", False), ("dev", True)):
        with pytest.raises(SpriteForgeError) as e:
            pipeline.generate(eng, make_flux(eng, variant, fill=fill), pipeline.GenerateParams(prompt="x", steps=1, width=64,
                                                                                              height=64, references=[ref]))
        assert e.value.code == BAD_INPUT, variant
    for bad in (np.zeros((2, 64, 64, 3), np.float32), np.zeros((64, 64), np.float32), np.full((64, 64, 3), np.nan, np.float32)):
        with pytest.raises(SpriteForgeError) as e:
            pipeline.encode(eng, h, "x", references=[bad])
        assert e.value.code == BAD_INPUT
    with pytest.raises(SpriteForgeError) as e:
        pipeline.edit(eng, h, pipeline.GenerateParams(prompt="x", steps=1))
    assert e.value.code == BAD_INPUT


# --------------------------------------------------------------------------- the nodes and the CLI


@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    (root / "diffusers").mkdir()
    return root, tm.make_flux(root / "diffusers", layout="folder", variant="dev"), tm.make_pixart(root / "diffusers", layout="folder")


def test_edit_node_and_reference_images_through_the_sampler(models_root):
    """The Edit node from Load Model's handle (output the reference's size, LATENT of the family); Encode Prompt, then
    Reference Images, then Sampler and VAE Decode give the same picture. Encode Prompt's inputs are unchanged."""
    from spriteforge import paths
    from spriteforge.nodes import edit as E
    from spriteforge.nodes import generate as G
    from spriteforge.nodes import loaders as L
    from spriteforge.nodes import node_map

    nodes = node_map(strict=True)
    for nid, outs in (("SpriteForgeEdit", ["IMAGE", "LATENT"]), ("SpriteForgeReferenceImages", ["SF_CONDITIONING"])):
        schema = nodes[nid].define_schema()
        assert schema.category == "SpriteForge/generate" and len(schema.description) > 40
        assert all(i.tooltip for i in schema.inputs) and [o.io_type for o in schema.outputs] == outs
    enc_ids = [i.id for i in nodes["SpriteForgeEncodePrompt"].define_schema().inputs]
    assert enc_ids == ["model", "positive", "negative", "guidance", "sana_instruction"]
    root, folder, pix_folder = models_root
    paths.set_models_root(root)
    try:
        h = L.LoadModel.execute(folder.name)[0]
        ref = torch.from_numpy(picture(48, 64)[None].astype(np.float32))
        img, lat = E.Edit.execute(h, ref, "make it red", seed=3, steps=2, reference_resize=False)
        assert tuple(img.shape) == (1, 48, 64, 3) and lat["sf_family"] == "flux" and tuple(lat["samples"].shape) == (1, 16, 6, 8)
        cond = G.EncodePrompt.execute(h, "make it red", guidance=2.5)[0]
        with_refs = E.ReferenceImages.execute(h, cond, ref, reference_resize=False)[0]
        assert cond.references is None and len(with_refs.references) == 1  # the input conditioning is not changed
        lat2 = G.Sampler.execute(h, with_refs, seed=3, steps=2, width=64, height=48, schedule="simple")[0]
        img2 = G.VAEDecode.execute(h, lat2)[0]
        assert float((img - img2).abs().max()) < 1e-5
        with pytest.raises(SpriteForgeError) as e:  # a batch of images is not one reference
            E.Edit.execute(h, torch.cat([ref, ref]), "x", steps=1)
        assert e.value.code == BAD_INPUT and "reference_1" in e.value.message
        pix = L.LoadModel.execute(pix_folder.name)[0]
        with pytest.raises(SpriteForgeError) as e:
            E.Edit.execute(pix, ref, "x", steps=1)
        assert e.value.code == BAD_INPUT and "cannot take reference images" in e.value.message
        assert E.Edit.validate_inputs(steps=-1) is not True and E.Edit.validate_inputs(sampler="nope") is not True
        assert E.Edit.validate_inputs(steps=2, sampler="default", schedule="simple", width=0, height=64) is True
        assert "width" in E.Edit.validate_inputs(width=8)
    finally:
        paths.set_models_root(None)


def test_cli_edit(models_root, tmp_path, capsys):
    from PIL import Image

    from spriteforge.cli.main import main

    _, folder, pix_folder = models_root
    pil(picture(48, 64)).save(tmp_path / "ref.png")
    out = tmp_path / "out"
    argv = ["-q", "edit", "--model", str(folder), "--image", str(tmp_path / "ref.png"), "--prompt", "make it red", "--steps", "2",
            "--keep-size", "--seed", "4", "--out", str(out)]
    assert main(argv) == 0 and main(argv) == 0  # the second run writes beside the first, never over it
    written = capsys.readouterr().out.split()
    assert len(written) == 2 and written[0] != written[1] and all(Path(p).exists() for p in written)
    im = Image.open(written[0])
    meta = json.loads(im.text["spriteforge"])
    assert im.size == (64, 48) and meta["spriteforge_command"] == "edit" and meta["references"] == ["ref.png"]
    assert meta["guidance"] == 2.5 and meta["seed"] == 4
    # refused before anything is written: a missing image, a model that cannot edit, a bad argument
    bad = tmp_path / "bad"
    assert main(["-q", "edit", "--model", str(folder), "--image", str(tmp_path / "nope.png"), "--prompt", "x", "--out", str(bad)]) == 19
    assert main(["-q", "edit", "--model", str(pix_folder), "--image", str(tmp_path / "ref.png"), "--prompt", "x", "--out", str(bad)]) == 19
    assert main(["-q", "edit", "--model", str(folder), "--image", str(tmp_path / "ref.png"), "--prompt", "x", "--steps", "0",
                 "--out", str(bad)]) == 19
    assert not bad.exists()
    assert "cannot take reference images" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["flux", "flux2"])
def test_attention_slicing_gives_the_batched_result(eng, root, family):
    """One row at a time (attention slicing) or cond and uncond in one batch: the same model output with references."""
    if family == "flux":
        h, refs = flux_dev(eng, root), [picture(48, 64)]
    else:
        h = eng.load_model(str(tf.make_flux2(root, layout="folder", distilled=False)), dtype="float32")
        refs = [picture(64, 64), picture(64, 80, 1.0)]
    cond = pipeline.encode(eng, h, "make it red", "blurry", references=refs, reference_resize=False)
    ms = pipeline.model_schedule(h, 64, 64, steps=2)
    c = h.latent_channels
    x = torch.from_numpy(make_noise(3, (2, c, 64 // h.vae_scale_factor, 64 // h.vae_scale_factor)))
    outs = [eng.denoiser(h, cond, cond.negative, cfg=3.0, model_schedule=ms, attention_slicing=s)(x, 0.7) for s in (False, True)]
    assert float((outs[0] - outs[1]).abs().max()) <= 1e-5 * max(1.0, float(outs[0].abs().max()))  # float rounding only


@pytest.mark.parametrize("name", ["flux1-dev.transformer.original", "flux1-dev.transformer.diffusers"])
def test_inspect_says_a_released_flux1_dev_file_may_be_kontext(shared_dir, tmp_path, capsys, name):
    """flux1-kontext-dev.safetensors has [dev]'s keys and shapes (the released [dev] manifests stand for it): inspect
    names it dev and says, as for the other one-layout pairs, that it may be Kontext."""
    from spriteforge.cli.main import main
    from spriteforge.tests.test_recognised_families import _fake_file, _manifest

    path = _fake_file(tmp_path / f"{name}.safetensors", _manifest(shared_dir, name)["tensors"])
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "variant:    dev" in text and "ambiguous:  dev or Kontext [dev]: same layout" in text


def test_the_family_encode_sees_the_reference_images(eng, root, monkeypatch):
    """``Family.encode(images=)`` gets the references as given, for the prompt and the negative; a family whose text
    encoder reads them (``encode_sees_references``) is encoded again when references join a conditioning later."""
    h = flux_dev(eng, root)
    fam = registry.rules("flux")
    seen = []
    real = type(fam).encode

    def recording(self, te, prompts, cond, **kw):
        seen.append((list(prompts), None if kw.get("images") is None else [a.shape for a in kw["images"]]))
        return real(self, te, prompts, cond, **kw)

    monkeypatch.setattr(type(fam), "encode", recording)
    ref = picture(48, 80)
    cond = pipeline.encode(eng, h, "make it red", "blurry", references=[ref], reference_resize=False)
    assert seen == [(["make it red"], [(48, 80, 3)]), (["blurry"], [(48, 80, 3)])]
    seen.clear()
    plain = pipeline.encode(eng, h, "make it red", "blurry")
    later = pipeline.with_references(eng, h, plain, [ref], resize=False)
    assert seen == [(["make it red"], None), (["blurry"], None)]  # latents only: Flux's encoders read no images
    assert float(np.abs(eng.to_numpy(later.references[0]) - eng.to_numpy(cond.references[0])).max()) == 0.0
    assert later.negative.references is later.references
    seen.clear()
    monkeypatch.setattr(type(fam), "encode_sees_references", True)
    again = pipeline.with_references(eng, h, plain, [ref], resize=False)
    assert seen == [(["make it red"], [(48, 80, 3)]), (["blurry"], [(48, 80, 3)])] and len(again.references) == 1
