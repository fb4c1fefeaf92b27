"""CFG-rescale and dynamic thresholding on SpriteForge's own Sampler (node, ``generate``, both engines).

The ComfyUI-MODEL bridge had them; the pack's own Sampler now takes the same two inputs and runs them
through the same code (:mod:`spriteforge.samplers.guidance`). Checked with the built-in demo model on
torch and MLX (same picture within 2/255 with both on; each one changes the picture), against the
shared functions applied by hand to the two single-prompt denoisers, and through the node and the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spriteforge import pipeline
from spriteforge.engines import get_engine
from spriteforge.errors import BAD_INPUT, SpriteForgeError
from spriteforge.samplers import cfg_rescale, dynamic_threshold

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo_model"
TOL = 2.0 / 255.0
# a high cfg (over-saturated without the corrections) and a low percentile, so each correction bites
BASE = {"prompt": "red potion", "negative": "", "seed": 7, "steps": 4, "width": 32, "height": 32, "cfg": 12.0}
ON = {"cfg_rescale": 0.7, "dynamic_threshold": 0.9}


@pytest.fixture(scope="module")
def handles():
    return {name: get_engine(name, "cpu").load_model(str(DEMO)) for name in ("torch", "mlx")}


def _run(h, **kw):
    return pipeline.generate(h.engine, h, pipeline.GenerateParams(**{**BASE, **kw}))


def test_same_picture_on_both_engines_and_each_option_changes_it(handles):
    on = {name: _run(h, **ON) for name, h in handles.items()}
    diff = float(np.abs(on["torch"] - on["mlx"]).max())
    print(f"rescale + threshold: max |torch - mlx| = {diff * 255:.3f}/255")
    assert diff <= TOL
    for name, h in handles.items():
        off = _run(h)
        for opt in ON:
            one = _run(h, **{opt: ON[opt]})
            change = float(np.abs(one - off).max())
            print(f"{name} {opt}: max change {change * 255:.1f}/255")
            assert change > 8 / 255, (name, opt)


@pytest.mark.parametrize("engine_name", ["torch", "mlx"])
def test_denoiser_applies_the_shared_guidance_functions(handles, engine_name):
    """One step's x0 with both options equals the samplers' cfg_rescale + dynamic_threshold applied by hand to the
    cond-only and uncond-only denoisers' x0 (the code the ComfyUI bridge uses)."""
    h = handles[engine_name]
    eng = h.engine
    cond = pipeline.encode(eng, h, "red potion", "")
    ms = pipeline.model_schedule(h, 32, 32, None)
    x = eng.from_numpy(np.random.default_rng(1).standard_normal((2, 4, 4, 4)).astype(np.float32) * 3.0)
    sigma = 2.5
    guided = eng.denoiser(h, cond, cond.negative, cfg=6.0, model_schedule=ms, cfg_rescale=0.6, dynamic_threshold=0.8)(x, sigma)
    xc = eng.denoiser(h, cond, None, cfg=1.0, model_schedule=ms)(x, sigma)
    xu = eng.denoiser(h, cond.negative, None, cfg=1.0, model_schedule=ms)(x, sigma)
    want = dynamic_threshold(cfg_rescale(xc, xu, 6.0, 0.6, x=x, sigma=sigma, flow=False, ops=eng.ops), 0.8, ops=eng.ops)
    np.testing.assert_allclose(eng.to_numpy(guided), eng.to_numpy(want), rtol=1e-4, atol=1e-4)


def test_bad_values_are_refused_before_sampling(handles):
    h = handles["torch"]
    for bad in ({"cfg_rescale": 1.5}, {"cfg_rescale": float("nan")}, {"dynamic_threshold": -0.1}, {"dynamic_threshold": 2.0}):
        with pytest.raises(SpriteForgeError) as e:
            _run(h, steps=1, **bad)
        assert e.value.code == BAD_INPUT
        assert next(iter(bad)) in str(e.value)


def test_sampler_node_inputs(handles):
    from spriteforge.nodes import generate as G

    h = handles["torch"]
    ids = {i.id: i for i in G.Sampler.define_schema().inputs}
    assert ids["cfg_rescale"].optional and ids["dynamic_threshold"].optional
    cond = G.EncodePrompt.execute(h, "red potion", "")[0]
    kw = {"seed": 7, "steps": 3, "cfg": 12.0, "width": 32, "height": 32, "sampler": "euler", "schedule": "normal"}
    plain = G.Sampler.execute(h, cond, **kw)[0]["samples"]
    with_opts = G.Sampler.execute(h, cond, **kw, **ON)[0]["samples"]
    direct = pipeline.sample(h.engine, h, pipeline.GenerateParams(cond=cond, **kw, **ON)).latents
    np.testing.assert_array_equal(np.asarray(with_opts), direct)
    assert np.abs(np.asarray(with_opts) - np.asarray(plain)).max() > 1e-2


def test_cli_generate_options(tmp_path, capsys):
    from PIL import Image

    from spriteforge.cli.main import main

    out = tmp_path / "out"
    rc = main(["-q", "generate", "--engine", "torch", "--prompt", "red potion", "--seed", "7", "--steps", "3", "--cfg", "12",
               "--cfg-rescale", "0.7", "--dynamic-threshold", "0.9", "--keep-key", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    (png,) = sorted(out.glob("*.png"))
    with Image.open(png) as im:
        meta = json.loads(im.info["spriteforge"])
    assert meta["cfg_rescale"] == 0.7 and meta["dynamic_threshold"] == 0.9
    capsys.readouterr()
    rc = main(["-q", "generate", "--engine", "torch", "--prompt", "red potion", "--cfg-rescale", "2",
               "--out", str(tmp_path / "bad")])
    assert rc != 0
    assert "BAD_INPUT" in capsys.readouterr().err
