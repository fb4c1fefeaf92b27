"""The generation nodes (standalone V3 io) and `spriteforge generate`, with tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from spriteforge.errors import BAD_INPUT, DIMENSION_LIMIT, MODEL_NOT_FOUND, SpriteForgeError  # noqa: E402
from spriteforge.nodes import generate as G  # noqa: E402
from spriteforge.nodes import loaders as L  # noqa: E402
from spriteforge.tests.test_generation_tiny import engine, make_pixart, make_sd3  # noqa: E402,F401

NODE_IDS = ["SpriteForgeLoadModel", "SpriteForgeEncodePrompt", "SpriteForgeSampler", "SpriteForgeVAEEncode", "SpriteForgeVAEDecode"]


def test_schemas_follow_the_rules():
    from spriteforge.nodes import node_map

    nodes = node_map(strict=False)
    for nid in NODE_IDS:
        assert nid in nodes
        s = nodes[nid].define_schema()
        assert s.category == "SpriteForge/generate"
        assert s.description and len(s.description) > 40
        for inp in s.inputs:
            assert inp.tooltip, f"{nid}.{inp.id} has no tooltip"
        assert s.outputs
    sampler = nodes["SpriteForgeSampler"].define_schema()
    ids = [i.id for i in sampler.inputs]
    for want in ("seed", "steps", "sampler", "schedule", "cfg", "shift", "denoise", "batch_size", "width", "height", "latent", "mask", "tile"):
        assert want in ids
    types = {i.id: i.io_type for i in sampler.inputs}
    assert types["model"] == "SF_MODEL" and types["conditioning"] == "SF_CONDITIONING"
    assert types["latent"] == "LATENT" and types["mask"] == "MASK"


@pytest.fixture(scope="module")
def pix(engine):  # noqa: F811
    return make_pixart(engine)


def _chain(h, **kw):
    cond = G.EncodePrompt.execute(h, "a knight", "blurry")[0]
    kw.setdefault("steps", 2)
    kw.setdefault("width", 64)
    kw.setdefault("height", 64)
    lat = G.Sampler.execute(h, cond, **kw)[0]
    return cond, lat


def test_txt2img_graph(pix):
    cond, lat = _chain(pix, seed=3, batch_size=2)
    assert cond.family == "pixart" and cond.negative is not None
    assert lat["sf_family"] == "pixart" and tuple(lat["samples"].shape) == (2, 4, 8, 8)
    img = G.VAEDecode.execute(pix, lat)[0]
    assert isinstance(img, torch.Tensor) and tuple(img.shape) == (2, 64, 64, 3) and img.dtype == torch.float32
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    # batch item 1 = seed 4 at batch 1
    _, one = _chain(pix, seed=4)
    np.testing.assert_allclose(lat["samples"][1].numpy(), one["samples"][0].numpy(), atol=2e-4, rtol=1e-4)


def test_loadimage_to_img2img_and_inpaint(pix):
    yy, xx = np.mgrid[0:60, 0:70].astype(np.float32)
    image = torch.from_numpy(np.stack([xx / 70, yy / 60, 0.5 + 0.0 * xx], -1)[None])  # LoadImage-like, odd size
    enc = G.VAEEncode.execute(pix, image)[0]
    assert tuple(enc["samples"].shape) == (1, 4, 8, 8) and enc["sf_family"] == "pixart"
    cond = G.EncodePrompt.execute(pix, "a knight")[0]
    same = G.VAEDecode.execute(pix, G.Sampler.execute(pix, cond, steps=2, denoise=0.0, latent=enc)[0])[0]
    direct = G.VAEDecode.execute(pix, enc)[0]
    np.testing.assert_allclose(same.numpy(), direct.numpy(), atol=1e-5)
    mask = torch.zeros(1, 60, 70)
    mask[:, 20:40, 24:48] = 1.0
    lat = G.Sampler.execute(pix, cond, steps=2, latent=enc, mask=mask, mask_feather=4)[0]
    out = G.VAEDecode.execute(pix, lat)[0].numpy()[0]
    src = enc["sf_image"][0]
    far = np.ones((64, 64), bool)
    far[12:52, 16:60] = False
    np.testing.assert_allclose(out[far], src[far], atol=1e-6)


def test_foreign_latents_and_wrong_inputs(engine, pix):  # noqa: F811
    sd3 = make_sd3(engine)
    cond = G.EncodePrompt.execute(sd3, "a knight")[0]
    empty = {"samples": torch.zeros(2, 4, 12, 8)}  # ComfyUI EmptyLatentImage: used for its size
    lat = G.Sampler.execute(sd3, cond, steps=1, latent=empty)[0]
    assert tuple(lat["samples"].shape) == (2, 16, 12, 8)
    with pytest.raises(SpriteForgeError) as e:
        G.VAEDecode.execute(pix, lat)
    assert e.value.code == BAD_INPUT
    with pytest.raises(SpriteForgeError) as e:
        G.Sampler.execute(pix, cond, steps=1)  # sd3 conditioning into a pixart model
    assert e.value.code == BAD_INPUT
    with pytest.raises(SpriteForgeError) as e:
        G.Sampler.execute(pix, G.EncodePrompt.execute(pix, "x")[0], steps=1, width=4096, height=64)
    assert e.value.code == DIMENSION_LIMIT
    with pytest.raises(SpriteForgeError) as e:
        G.Sampler.execute(pix, G.EncodePrompt.execute(pix, "x")[0], steps=1, mask=torch.ones(1, 64, 64))
    assert e.value.code == BAD_INPUT
    with pytest.raises(SpriteForgeError) as e:
        G.EncodePrompt.execute("not a model", "x")
    assert e.value.code == BAD_INPUT


def test_tiled_sampler_run_decodes_seamlessly(pix):
    cond = G.EncodePrompt.execute(pix, "stone floor tile")[0]
    lat = G.Sampler.execute(pix, cond, steps=2, width=64, height=64, tile=True)[0]
    assert lat["sf_tile"] is True
    img = G.VAEDecode.execute(pix, lat)[0].numpy()[0]
    rolled = dict(lat, samples=torch.roll(lat["samples"], (1, 1), dims=(-2, -1)))
    img2 = G.VAEDecode.execute(pix, rolled)[0].numpy()[0]
    np.testing.assert_allclose(img2, np.roll(img, (8, 8), axis=(0, 1)), atol=2e-4)


# --------------------------------------------------------------------------- real files: loader node + CLI
@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    from spriteforge.tests import tiny_models as tm

    root = tmp_path_factory.mktemp("models")
    (root / "diffusers").mkdir()
    return root, tm.make_pixart(root / "diffusers", layout="folder")


def test_load_model_node_and_missing_models(models_root):
    from spriteforge import paths

    root, folder = models_root
    paths.set_models_root(root)
    try:
        assert folder.name in L.model_choices()
        schema = L.LoadModel.define_schema()
        assert folder.name in schema.inputs[0].options
        h = L.LoadModel.execute(folder.name)[0]
        assert h.family == "pixart" and h.vae is not None and "t5" in h.text_encoders
        img = G.VAEDecode.execute(h, _chain(h, seed=1)[1])[0]
        assert tuple(img.shape) == (1, 64, 64, 3) and np.isfinite(img.numpy()).all()
        with pytest.raises(SpriteForgeError) as e:
            L.LoadModel.execute("no-such-model.safetensors")
        assert e.value.code == MODEL_NOT_FOUND
        with pytest.raises(SpriteForgeError) as e:
            L.LoadModel.execute("")
        assert e.value.code == BAD_INPUT
    finally:
        paths.set_models_root(None)


@pytest.fixture
def reset_models_root():
    from spriteforge import paths

    yield
    paths.set_models_root(None)  # `--models` sets the process-wide root


def test_cli_generate(models_root, tmp_path, capsys, reset_models_root):
    from PIL import Image

    from spriteforge.cli.main import main

    root, folder = models_root
    out = tmp_path / "out"
    rc = main(["-q", "generate", "--models", str(root), "--model", folder.name, "--prompt", "a red knight", "--seed", "5",
               "--steps", "2", "--width", "64", "--height", "48", "--batch", "2", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / "sf-5.png"), str(out / "sf-6.png")]
    im = Image.open(out / "sf-6.png")
    assert im.size == (64, 48)
    meta = json.loads(im.text["spriteforge"])
    assert meta["seed"] == 6 and meta["prompt"] == "a red knight" and meta["steps"] == 2 and meta["family"] == "pixart"
    assert "a red knight" in im.text["parameters"]
    # img2img + mask from files, tile
    Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(tmp_path / "init.png")
    m = np.zeros((48, 64), np.uint8)
    m[16:32, 16:48] = 255
    Image.fromarray(m).save(tmp_path / "mask.png")
    rc = main(["-q", "generate", "--model", str(folder), "--prompt", "x", "--steps", "2", "--init", str(tmp_path / "init.png"),
               "--mask", str(tmp_path / "mask.png"), "--out", str(out), "--prefix", "inp", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    res = np.asarray(Image.open(summary["images"][0]))
    assert res.shape == (48, 64, 3)
    assert (res[:4] == 128).all()  # far from the mask: the source
    # coded errors and exit codes
    assert main(["-q", "generate", "--model", str(tmp_path / "nope.safetensors"), "--prompt", "x", "--out", str(out)]) == 10
    assert main(["-q", "generate", "--model", str(folder), "--prompt", "x", "--width", "9000", "--out", str(out)]) == 15
    assert main(["-q", "generate", "--model", str(folder), "--prompt", "x", "--mask", "m.png", "--out", str(out)]) == 19
    err = capsys.readouterr().err
    assert "MODEL_NOT_FOUND" in err and "DIMENSION_LIMIT" in err and "BAD_INPUT" in err


@pytest.mark.parametrize("family", ["pixart", "dit", "sd3", "flux", "sana", "zimage", "qwenimage"])
def test_every_family_from_real_format_files(models_root, family):
    """Load tiny real-format diffusers folders through the loader node and run the whole graph."""
    from spriteforge.tests import tiny_models as tm

    root, _ = models_root
    folder = getattr(tm, f"make_{family}")(root / "diffusers", layout="folder")
    h = L.load_handle(str(folder), allow_path=True)
    assert h.family == family
    cond = G.EncodePrompt.execute(h, "3" if family == "dit" else "a knight", "")[0]
    lat = G.Sampler.execute(h, cond, seed=1, steps=1, width=64, height=64)[0]
    img = G.VAEDecode.execute(h, lat)[0].numpy()
    assert img.shape == (1, 64, 64, 3) and np.isfinite(img).all() and img.std() > 1e-3


def test_cli_with_separate_vae_and_text_encoder_files(tmp_path, reset_models_root):
    """A single-file Flux transformer (original keys) with the VAE and text encoders given as files."""
    from PIL import Image

    from spriteforge.cli.main import main
    from spriteforge.tests import tiny_models as tm

    root = tmp_path / "models"
    for k in ("diffusion_models", "vae", "text_encoders"):
        (root / k).mkdir(parents=True)
    f = tm.make_flux(root / "diffusion_models", layout="original")
    v = tm.make_vae(root / "vae", 16)
    c = tm.make_clip(root / "text_encoders", "clip_l")
    t5 = tm.make_t5(root / "text_encoders")
    out = tmp_path / "out"
    rc = main(["-q", "generate", "--models", str(root), "--model", f.name, "--vae", v.name, "--text-encoder", c.name,
               "--text-encoder", t5.name, "--prompt", "a red knight", "--steps", "2", "--width", "64", "--height", "64",
               "--tile", "--seed", "3", "--out", str(out)])
    assert rc == 0
    im = Image.open(out / "sf-3.png")
    meta = json.loads(im.text["spriteforge"])
    assert meta["family"] == "flux" and meta["tile"] is True and meta["guidance"] == 3.5


def test_txt2img_api_workflow_runs_in_process(models_root, tmp_path):
    """An API-format txt2img graph with the SpriteForge nodes and core SaveImage, validated and run like /prompt."""
    from spriteforge.execution import runner

    root, folder = models_root
    wf = {
        "1": {"class_type": "SpriteForgeLoadModel", "inputs": {"model": folder.name}},
        "2": {"class_type": "SpriteForgeEncodePrompt", "inputs": {"model": ["1", 0], "positive": "a knight", "negative": ""}},
        "3": {"class_type": "SpriteForgeSampler", "inputs": {
            "model": ["1", 0], "conditioning": ["2", 0], "seed": 7, "steps": 2, "sampler": "euler", "schedule": "normal",
            "cfg": 4.5, "shift": 0.0, "denoise": 1.0, "batch_size": 1, "width": 64, "height": 64}},
        "4": {"class_type": "SpriteForgeVAEDecode", "inputs": {"model": ["1", 0], "latent": ["3", 0]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "sf_test"}},
    }
    res = runner.run_workflow(wf, out_dir=tmp_path / "out", models_dir=root)
    pngs = list((tmp_path / "out").rglob("*.png"))
    assert len(pngs) == 1, res
