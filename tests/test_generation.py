"""pipeline.generate with tiny real-format models of every family (random weights, CPU)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from spriteforge.errors import BAD_INPUT, DIMENSION_LIMIT, MODEL_NOT_FOUND, SpriteForgeError  # noqa: E402
from spriteforge.pipeline import GenerateParams, decode, generate, generate_full, sample  # noqa: E402
from spriteforge.progress import Interrupted, clear_interrupt, request_interrupt  # noqa: E402

from spriteforge.tests.test_generation_tiny import MAKERS, engine, make_flux, make_pixart  # noqa: E402,F401

PROMPT = {"dit": "3"}


@pytest.fixture(scope="module")
def handles(engine):  # noqa: F811
    return {}


def H(handles, engine, family):  # noqa: F811
    if family not in handles:
        handles[family] = MAKERS[family](engine)
    return handles[family]


def P(family, **kw):
    kw.setdefault("prompt", PROMPT.get(family, "a knight with a red shield"))
    kw.setdefault("steps", 2)
    kw.setdefault("width", 64)
    kw.setdefault("height", 64)
    return GenerateParams(**kw)


@pytest.mark.parametrize("family", ["pixart", "dit", "sd3", "flux", "sana"])
def test_txt2img_every_family(engine, handles, family):  # noqa: F811
    h = H(handles, engine, family)
    steps = []
    W, Hh = (64, 64) if family == "dit" else (64, 96)
    res = generate_full(engine, h, P(family, seed=3, width=W, height=Hh, callback=lambda s: steps.append(s["i"])))
    assert res.images.shape == (1, Hh, W, 3) and res.images.dtype == np.float32
    assert np.isfinite(res.images).all() and 0.0 <= res.images.min() and res.images.max() <= 1.0
    assert res.images.std() > 1e-3
    assert steps == [0, 1]
    assert res.latents.shape == (1, h.latent_channels, Hh // h.vae_scale_factor, W // h.vae_scale_factor)
    # deterministic
    again = generate(engine, h, P(family, seed=3, width=W, height=Hh))
    np.testing.assert_allclose(again, res.images, atol=1e-5)


def test_flux_schnell_and_true_cfg(engine):  # noqa: F811
    h = make_flux(engine, "schnell")
    img = generate(engine, h, P("flux", seed=1))
    assert img.shape == (1, 64, 64, 3) and np.isfinite(img).all()
    img2 = generate(engine, h, P("flux", seed=1, cfg=3.0, negative="blurry"))
    assert np.abs(img2 - img).max() > 1e-4


def test_pixart_alpha_1024_resolution_conditions_and_sd3_without_t5(engine, handles):  # noqa: F811
    import dataclasses

    h = make_pixart(engine, "alpha-1024", additional_conditions=True)
    assert h.transformer.use_additional_conditions
    img = generate(engine, h, P("pixart", width=64, height=32))
    assert img.shape == (1, 32, 64, 3) and np.isfinite(img).all()
    sd3 = H(handles, engine, "sd3")
    no_t5 = dataclasses.replace(sd3, text_encoders={k: v for k, v in sd3.text_encoders.items() if k != "t5"})
    img = generate(engine, no_t5, P("sd3"))
    assert img.shape == (1, 64, 64, 3) and np.isfinite(img).all()


def test_sana_complex_human_instruction_and_t5_fp32_retry(engine, handles):  # noqa: F811
    from spriteforge.pipeline import encode

    sana = H(handles, engine, "sana")
    plain = encode(engine, sana, "a cat", with_negative=False)
    chi = encode(engine, sana, "a cat", with_negative=False, complex_human_instruction=True)
    assert chi.embeds.shape == plain.embeds.shape  # [first token] + the last max_length - 1 tokens, as diffusers
    assert not torch.allclose(chi.embeds, plain.embeds)
    # a T5 that overflows (NaN) in its stored dtype is run again in float32 and restored
    pix = H(handles, engine, "pixart")
    t5 = pix.text_encoders["t5"]
    calls = []
    orig = t5.forward

    def flaky(*a, **kw):
        out = orig(*a, **kw)
        calls.append(next(t5.parameters()).dtype)
        if len(calls) == 1:
            out.last_hidden_state = out.last_hidden_state * float("nan")
        return out

    t5.forward = flaky
    try:
        cond = encode(engine, pix, "a cat", with_negative=False)
    finally:
        del t5.forward
    assert len(calls) == 2 and torch.isfinite(cond.embeds).all()


@pytest.mark.parametrize("family", ["pixart", "sd3"])
def test_same_seed_same_image_whatever_the_batch(engine, handles, family):  # noqa: F811
    h = H(handles, engine, family)
    one = sample(engine, h, P(family, seed=11, batch_size=1)).latents
    four = sample(engine, h, P(family, seed=11, batch_size=4)).latents
    assert four.shape[0] == 4
    np.testing.assert_allclose(four[0], one[0], atol=2e-4, rtol=1e-4)
    second = sample(engine, h, P(family, seed=12, batch_size=1)).latents
    np.testing.assert_allclose(four[1], second[0], atol=2e-4, rtol=1e-4)
    assert np.abs(four[0] - four[1]).max() > 1e-3


def _source(h=64, w=64):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([xx / w, yy / h, 0.5 + 0.4 * np.sin(xx / 5.0)], -1)[None]
    return img.astype(np.float32)


@pytest.mark.parametrize("family", ["pixart", "sd3", "sana"])
def test_img2img_denoise_0_returns_the_source_and_1_ignores_it(engine, handles, family):  # noqa: F811
    h = H(handles, engine, family)
    src = _source()
    out0 = generate(engine, h, P(family, init_image=src, denoise=0.0, seed=5))
    roundtrip = engine.vae_decode(h, engine.vae_encode(h, src))
    np.testing.assert_allclose(out0, roundtrip, atol=1e-4)
    a = generate(engine, h, P(family, init_image=src, denoise=1.0, seed=5))
    b = generate(engine, h, P(family, init_image=1.0 - src, denoise=1.0, seed=5))
    np.testing.assert_allclose(a, b, atol=1e-5)
    txt = generate(engine, h, P(family, seed=5))
    np.testing.assert_allclose(a, txt, atol=1e-5)
    half = generate(engine, h, P(family, init_image=src, denoise=0.5, seed=5, steps=4))
    assert np.abs(half - out0).mean() < np.abs(a - out0).mean()


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_inpaint_keeps_the_unmasked_area(engine, handles, family):  # noqa: F811
    h = H(handles, engine, family)
    src = _source()
    mask = np.zeros((1, 64, 64), np.float32)
    mask[:, 16:48, 16:48] = 1.0
    res = generate_full(engine, h, P(family, init_image=src, mask=mask, denoise=1.0, seed=2, mask_feather=8))
    img = res.images
    far = np.ones((64, 64), bool)
    far[8:56, 8:56] = False  # outside the mask and its feathered edge
    np.testing.assert_allclose(img[0][far], src[0][far], atol=1e-6)
    assert np.abs(img[0, 20:44, 20:44] - src[0, 20:44, 20:44]).mean() > 0.02  # the hole was repainted
    # in latent space the unmasked cells are the source's at the end of sampling (per-step replacement)
    lat_src = engine.to_numpy(engine.vae_encode(h, src))
    keep = np.ones((8, 8), bool)
    keep[1:7, 1:7] = False
    np.testing.assert_allclose(res.latents[0][:, keep], lat_src[0][:, keep], atol=1e-5)


def test_flux_fill_model_is_used_natively(engine):  # noqa: F811
    h = make_flux(engine, fill=True)
    calls = []
    orig = h.transformer.forward

    def spy(*a, **kw):
        calls.append(kw["hidden_states"].shape)
        return orig(*a, **kw)

    h.transformer.forward = spy
    try:
        src = _source()
        mask = np.zeros((1, 64, 64), np.float32)
        mask[:, :32] = 1.0
        res = generate_full(engine, h, P("flux", init_image=src, mask=mask, seed=1))
    finally:
        del h.transformer.forward
    assert res.info["fill_model"] is True
    assert calls and all(c[-1] == 384 for c in calls)
    np.testing.assert_allclose(res.images[0, 48:], src[0, 48:], atol=1e-6)


@pytest.mark.parametrize("family", ["pixart", "sana"])
def test_tiled_result_wraps_around(engine, handles, family):  # noqa: F811
    """With tile=True the decoded image is periodic: decoding a latent rolled by k cells equals the
    image rolled by k*f pixels, so the right edge continues into the left edge (and bottom into top)
    exactly as interior columns continue each other."""
    h = H(handles, engine, family)
    f = h.vae_scale_factor
    W, Hh = (128, 96) if f == 8 else (128, 128)
    res = generate_full(engine, h, P(family, seed=4, width=W, height=Hh, tile=True))
    lat = res.latents
    rolled = decode(engine, h, np.roll(lat, (1, 2), axis=(-2, -1)), tile=True)
    np.testing.assert_allclose(rolled[0], np.roll(res.images[0], (f, 2 * f), axis=(0, 1)), atol=2e-4)
    plain = decode(engine, h, np.roll(lat, (1, 2), axis=(-2, -1)), tile=False)
    plain0 = decode(engine, h, lat, tile=False)
    assert np.abs(plain[0] - np.roll(plain0[0], (f, 2 * f), axis=(0, 1))).max() > 1e-2  # not periodic without tiling
    # the VAE is left as it was (no circular padding outside a tiled decode)
    assert all(m.padding_mode == "zeros" for m in h.vae.modules() if isinstance(m, torch.nn.Conv2d))


def test_interrupt_mid_run_and_the_next_run_works(engine, handles):  # noqa: F811
    h = H(handles, engine, "pixart")
    clear_interrupt()
    ref = generate(engine, h, P("pixart", seed=9, steps=4))
    seen = []

    def cb(state):
        seen.append(state["i"])
        if state["i"] == 1:
            request_interrupt()

    with pytest.raises(Interrupted):
        generate(engine, h, P("pixart", seed=9, steps=4, callback=cb))
    assert seen == [0, 1]
    again = generate(engine, h, P("pixart", seed=9, steps=4))
    np.testing.assert_allclose(again, ref, atol=1e-6)


def test_dimension_guard(engine, handles):  # noqa: F811
    h = H(handles, engine, "pixart")
    with pytest.raises(SpriteForgeError) as e:
        generate(engine, h, P("pixart", width=4096, height=64))
    assert e.value.code == DIMENSION_LIMIT
    with pytest.raises(SpriteForgeError) as e:
        generate(engine, h, P("pixart", width=64, height=300, max_side=256))
    assert e.value.code == DIMENSION_LIMIT
    with pytest.raises(SpriteForgeError) as e:
        generate(engine, h, P("pixart", width=2048, height=2048, batch_size=64))
    assert e.value.code == DIMENSION_LIMIT
    for bad in (0, -64, "wide", float("nan")):
        with pytest.raises(SpriteForgeError) as e:
            generate(engine, h, P("pixart", width=bad))
        assert e.value.code == BAD_INPUT
    res = generate_full(engine, h, P("pixart", width=70, height=60, steps=1))
    assert res.images.shape == (1, 64, 64, 3)
    assert any("rounded to 64" in n for n in res.notes)


def test_wrong_inputs_give_coded_errors(engine, handles):  # noqa: F811
    h = H(handles, engine, "pixart")
    cases = [
        dict(sampler="nope"), dict(schedule="nope"), dict(steps=0), dict(cfg=-1.0), dict(batch_size=0),
        dict(denoise=1.5), dict(mask=np.ones((1, 64, 64), np.float32)),
        dict(init_image=np.zeros((64, 64), np.float32), denoise=0.5),
    ]
    for kw in cases:
        with pytest.raises(SpriteForgeError) as e:
            generate(engine, h, P("pixart", **kw))
        assert e.value.code == BAD_INPUT, kw
    with pytest.raises(SpriteForgeError) as e:
        generate(engine, H(handles, engine, "dit"), P("dit", prompt="not a class"))
    assert e.value.code == BAD_INPUT
    with pytest.raises(SpriteForgeError) as e:
        generate(engine, H(handles, engine, "dit"), P("dit", width=64, height=128))
    assert e.value.code == BAD_INPUT
    # conditioning from another family
    from spriteforge.pipeline import encode

    cond = encode(engine, H(handles, engine, "dit"), "3")
    with pytest.raises(SpriteForgeError) as e:
        generate(engine, h, P("pixart", cond=cond))
    assert e.value.code == BAD_INPUT


def test_missing_parts_give_model_not_found(engine, handles):  # noqa: F811
    import dataclasses

    h = H(handles, engine, "pixart")
    with pytest.raises(SpriteForgeError) as e:
        generate(engine, dataclasses.replace(h, text_encoders={}), P("pixart"))
    assert e.value.code == MODEL_NOT_FOUND
    with pytest.raises(SpriteForgeError) as e:
        generate(engine, dataclasses.replace(h, vae=None), P("pixart", steps=1))
    assert e.value.code == MODEL_NOT_FOUND


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_nan_image_is_retried_with_fp32_vae(engine, handles, monkeypatch):  # noqa: F811
    h = H(handles, engine, "pixart")
    real = type(engine).vae_decode
    seen = []

    def flaky(self, handle, latents):
        out = real(self, handle, latents)
        seen.append(bool(handle.extras.get("vae_force_fp32")))
        return out if handle.extras.get("vae_force_fp32") else out * np.nan

    monkeypatch.setattr(type(engine), "vae_decode", flaky)
    collect = _Collect()
    logger = logging.getLogger("spriteforge")
    logger.addHandler(collect)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        img = generate(engine, h, P("pixart", steps=1))
    finally:
        logger.removeHandler(collect)
        logger.setLevel(old)
    assert seen == [False, True]
    assert np.isfinite(img).all()
    assert any("float32" in r.getMessage() for r in collect.records)
    assert not h.extras.get("vae_force_fp32")  # the handle itself is untouched


def test_denoiser_matches_a_direct_transformer_call(engine, handles):  # noqa: F811
    """The eps wrapper: x0 = x - sigma * eps(x / sqrt(sigma^2 + 1), t(sigma)), first C channels."""
    from spriteforge.pipeline import encode, model_schedule

    h = H(handles, engine, "pixart")
    cond = encode(engine, h, "a cat", with_negative=False)
    ms = model_schedule(h, 64, 64)
    dn = engine.denoiser(h, cond, None, cfg=1.0, model_schedule=ms)
    x = torch.randn(1, 4, 8, 8)
    sigma = 3.0
    x0 = dn(x, sigma)
    t = ms.timestep(sigma)
    with torch.no_grad():
        eps = h.transformer(x / (sigma**2 + 1) ** 0.5, encoder_hidden_states=cond.embeds, encoder_attention_mask=cond.mask,
                            timestep=torch.tensor([t]), added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                            return_dict=False)[0][:, :4]
    torch.testing.assert_close(x0, x - sigma * eps, atol=1e-5, rtol=1e-5)
    # numpy in, numpy out
    assert isinstance(dn(x.numpy(), sigma), np.ndarray)


@pytest.mark.parametrize("family", ["pixart", "sd3", "flux", "sana", "dit", "zimage"])
def test_loop_matches_the_family_diffusers_pipeline(engine, family, tmp_path):  # noqa: F811
    """Our loop (samplers + denoiser) equals the family's own diffusers pipeline on the same model file, sigmas, latents
    and embeddings: the comparison bench_generate times."""
    from spriteforge.benchmarks.bench_generate import load_case, run_diffusers, run_ours

    case = load_case(family, engine, tmp_path, 3)
    ours, ref = run_ours(case, 0), run_diffusers(case, 0)
    assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()


@pytest.mark.parametrize("family", ["pixart", "sana"])
def test_padding_no_prompt_keeps_is_dropped_once_a_run(engine, handles, family):  # noqa: F811
    """PixArt and Sana attend to the prompt's tokens only: the T5/Gemma padding after the last token any prompt keeps is
    dropped once a run, so every step's transformer sees the kept tokens only, and x0 (CFG included) is what calls
    on the full padded sequences give."""
    from spriteforge.pipeline import encode, model_schedule

    h = H(handles, engine, family)
    cond = encode(engine, h, "a knight with a red shield and a sword", "blurry")
    kept = int(max(cond.mask.sum(), cond.negative.mask.sum()))
    assert kept < cond.mask.shape[1] == cond.negative.mask.shape[1]
    ms = model_schedule(h, 64, 64)
    dn = engine.denoiser(h, cond, cond.negative, cfg=4.5, model_schedule=ms)
    seen = []
    hook = h.transformer.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw["encoder_hidden_states"].shape[1]),
                                                   with_kwargs=True)
    c = int(h.latent_channels)
    x = torch.randn(1, c, 2 if family == "sana" else 8, 2 if family == "sana" else 8, generator=torch.Generator().manual_seed(0))
    sigma = 0.7 if family == "sana" else 3.0
    try:
        x0 = dn(x, sigma)
        dn(x, sigma / 2)
    finally:
        hook.remove()
    assert seen == [kept, kept]
    t = torch.tensor([ms.timestep(sigma)] * 2)
    with torch.no_grad():
        emb, mask = torch.cat([cond.negative.embeds, cond.embeds]), torch.cat([cond.negative.mask, cond.mask])
        if family == "pixart":
            out = h.transformer(torch.cat([x, x]) / (sigma ** 2 + 1) ** 0.5, encoder_hidden_states=emb, encoder_attention_mask=mask,
                                timestep=t, added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0][:, :c]
        else:
            out = h.transformer(torch.cat([x, x]), encoder_hidden_states=emb, encoder_attention_mask=mask, timestep=t,
                                return_dict=False)[0]
    pred = out[:1] + (out[1:] - out[:1]) * 4.5
    torch.testing.assert_close(x0, x - sigma * pred, atol=1e-5, rtol=1e-5)


def test_sd3_size_over_its_position_table_is_a_dimension_limit(engine, handles):  # noqa: F811
    from spriteforge.generation.sizes import model_max_side

    sd3 = H(handles, engine, "sd3")
    cap = model_max_side(sd3)
    assert cap == sd3.config["pos_embed_max_size"] * sd3.latent_multiple
    with pytest.raises(SpriteForgeError) as ei:
        generate(engine, sd3, P("sd3", width=cap + sd3.latent_multiple, height=64))
    assert ei.value.code == DIMENSION_LIMIT and str(cap) in ei.value.message
