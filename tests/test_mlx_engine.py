"""The built-in demo model on the MLX engine gives the torch engine's pictures (same seed, within 2/255).

Through ``spriteforge.pipeline`` (txt2img, img2img, inpainting, seamless tiles, batches), the
``spriteforge generate --engine mlx`` command and the shipped sprite_demo workflow run in-process
with its Load Model engine set to mlx. Also: the handle means the same on both engines, the
capabilities list the families whose ports import, a family without a port is refused with a
coded error naming the port.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
pytest.importorskip("torch")

from spriteforge import pipeline  # noqa: E402
from spriteforge.errors import BAD_INPUT, UNSUPPORTED_ARCHITECTURE, SpriteForgeError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo_model"
WF = REPO / "example_workflows" / "api" / "sprite_demo.json"
TOL = 2.0 / 255.0

pytestmark = pytest.mark.skipif(not (DEMO / "model_index.json").exists(), reason="demo_model/ is not present")


@pytest.fixture(scope="module")
def engines():
    from spriteforge.engines import get_engine

    return get_engine("torch", "cpu"), get_engine("mlx", "cpu")


@pytest.fixture(scope="module")
def handles(engines):
    te, me = engines
    return te.load_model(str(DEMO)), me.load_model(str(DEMO))


def _both(engines, handles, **kw):
    te, me = engines
    ht, hm = handles
    params = pipeline.GenerateParams(**{"prompt": "red potion", "seed": 7, "steps": 4, "width": 32, "height": 32, **kw})
    a = pipeline.generate(te, ht, params)
    b = pipeline.generate(me, hm, params)
    assert a.shape == b.shape
    diff = float(np.abs(a - b).max())
    print(f"max |torch - mlx| = {diff * 255:.4f}/255")
    return a, b, diff


def _source(h=32, w=32):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([x / w, y / h, 0.5 + 0.4 * np.sin(x / 3.0)], axis=-1)[None]


def test_handle_means_the_same_on_both_engines(handles):
    ht, hm = handles
    for f in ("family", "variant", "prediction", "latent_channels", "vae_scale_factor", "patch_size", "scaling_factor",
              "shift_factor", "flow_shift", "extras", "dtype"):
        assert getattr(hm, f) == getattr(ht, f), f
    cfg_t = {k: v for k, v in ht.config.items() if not k.startswith("_")}
    assert hm.config == cfg_t
    assert set(hm.text_encoders) == set(ht.text_encoders) == {"t5"}
    assert type(hm.tokenizers["t5"]) is type(ht.tokenizers["t5"])
    assert hm.engine.name == "mlx" and isinstance(hm.transformer, __import__("mlx.nn").nn.Module)


def test_text_encoding_matches(engines, handles):
    te, me = engines
    ht, hm = handles
    ct = te.encode_text(ht, ["red potion", "a blue slime"])
    cm = me.encode_text(hm, ["red potion", "a blue slime"])
    assert isinstance(cm.embeds, mx.array)
    a, b = ct.embeds.numpy(), np.array(cm.embeds)
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= 1e-4 * (1 + np.abs(a).max())
    assert (ct.mask.numpy() == np.array(cm.mask)).all()


def test_txt2img(engines, handles):
    a, b, diff = _both(engines, handles)
    assert diff <= TOL
    assert a.std() > 0.02  # a picture, not a flat field


def test_img2img(engines, handles):
    _, _, diff = _both(engines, handles, init_image=_source(), denoise=0.6)
    assert diff <= TOL


def test_inpainting(engines, handles):
    mask = np.zeros((1, 32, 32), np.float32)
    mask[:, 8:24, 12:28] = 1.0
    src = _source()
    a, b, diff = _both(engines, handles, init_image=src, mask=mask, mask_feather=2)
    assert diff <= TOL
    assert np.abs(b[0, :4] - src[0, :4]).max() < 1e-6  # far from the mask: the source itself


def test_seamless_tile(engines, handles):
    _, b, diff = _both(engines, handles, tile=True, width=48, height=32)
    assert diff <= TOL
    # wraps: the left/right edge columns meet as well as neighbouring columns inside do
    inner = np.abs(b[0, :, 1:] - b[0, :, :-1]).mean()
    edge = np.abs(b[0, :, 0] - b[0, :, -1]).mean()
    assert edge < 3 * inner + 0.02


def test_batch_one_is_item_zero_of_batch_four(engines, handles):
    _, me = engines
    _, hm = handles
    p = pipeline.GenerateParams(prompt="red potion", seed=11, steps=2, width=32, height=32)
    one = pipeline.generate(me, hm, p)
    four = pipeline.generate(me, hm, dataclasses.replace(p, batch_size=4))
    assert four.shape[0] == 4
    diff = float(np.abs(one[0] - four[0]).max())
    print(f"batch 1 vs item 0 of batch 4: {diff * 255:.4f}/255")
    assert diff <= TOL
    assert np.abs(four[0] - four[1]).max() > 0.05  # item i has seed + i


def test_cli_generate_engine_mlx(tmp_path, capsys):
    from PIL import Image

    from spriteforge.cli.main import main

    out = tmp_path / "out"
    rc = main(["-q", "generate", "--engine", "mlx", "--model", str(DEMO), "--prompt", "red potion", "--seed", "3",
               "--steps", "3", "--width", "32", "--height", "32", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    files = sorted(out.glob("*.png"))
    assert len(files) == 1
    with Image.open(files[0]) as im:
        assert im.size == (32, 32)
        assert np.asarray(im.convert("RGB")).std() > 3


def test_sprite_demo_workflow_on_mlx_matches_torch(tmp_path):
    """The shipped workflow, its Load Model engine set to mlx: the decoded picture (saved beside the sprites by
    an added SaveImage on the VAE Decode output) is within 2/255 of torch's; the indexed sprites after the
    palette/quantize nodes have the same shape and transparency (their k-means palette is not continuous in
    its input, so a 0.01/255 change may move a palette entry: that part is compared by the mean only)."""
    import json

    from PIL import Image

    from spriteforge.execution.runner import run_workflow

    wf = json.loads(WF.read_text())
    wf["99"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "decoded"}}
    decoded, sprites = {}, {}
    for name in ("torch", "mlx"):
        res = run_workflow(wf, out_dir=tmp_path / name, engine=name, overrides=["3.batch_size=2", "3.steps=6"])
        assert res.prompt["1"]["inputs"]["engine"] == name
        files = sorted(str(p) for p in res.files)
        dec = [f for f in files if Path(f).name.startswith("decoded") and f.endswith(".png")]
        spr = [f for f in files if Path(f).name.startswith("demo_sprite_") and f.endswith(".png")]
        assert len(dec) == 2 and len(spr) == 2
        decoded[name] = [np.asarray(Image.open(f).convert("RGB")).astype(np.float32) / 255.0 for f in dec]
        sprites[name] = []
        for f in spr:
            with Image.open(f) as im:
                assert im.mode == "P"
                sprites[name].append(np.asarray(im.convert("RGBA")).astype(np.float32) / 255.0)
    # 8-bit PNGs: a value on a rounding boundary may land one step apart
    diffs = [float(np.abs(a - b).max()) for a, b in zip(decoded["torch"], decoded["mlx"])]
    print("sprite_demo decoded torch vs mlx:", [f"{d * 255:.0f}/255" for d in diffs])
    assert max(diffs) <= TOL
    for a, b in zip(sprites["torch"], sprites["mlx"]):
        assert a.shape == b.shape
        assert (a[..., 3] == b[..., 3]).mean() > 0.99
        print(f"sprite mean |diff| {np.abs(a - b).mean() * 255:.2f}/255")
        assert np.abs(a - b).mean() < 8 / 255


def test_capabilities_list_the_ported_families(engines):
    from spriteforge.engines.base import FAMILIES
    from spriteforge.engines.mlx_models.loading import missing_ports

    _, me = engines
    caps = me.capabilities
    assert caps.families == tuple(f for f in FAMILIES if not missing_ports(f))
    assert "pixart" in caps.families
    assert caps.vae_tiling is False and caps.birefnet is False


def test_a_family_without_its_port_is_refused(engines, monkeypatch, tmp_path):
    from spriteforge.engines.mlx_models import loading

    _, me = engines
    monkeypatch.setitem(loading.PORTS, "pixart", ("no_such_port", "PixArtTransformer2DModel"))
    monkeypatch.setattr(loading, "_port_cache", {})
    assert "pixart" not in me.capabilities.families
    with pytest.raises(SpriteForgeError) as e:
        me.load_model(str(DEMO))
    assert e.value.code == UNSUPPORTED_ARCHITECTURE
    assert "no_such_port.py" in str(e.value) and "torch" in str(e.value)


def test_a_torch_handle_is_refused_by_the_mlx_engine(engines, handles):
    _, me = engines
    ht, _ = handles
    with pytest.raises(SpriteForgeError) as e:
        me.encode_text(ht, ["x"])
    assert e.value.code == BAD_INPUT and "mlx" in str(e.value)


def test_component_folders_with_separate_vae_and_text_encoder(engines):
    """A transformer component folder (config.json + weights) with the VAE and T5 given as folders of their own."""
    te, me = engines
    kw = {"vae": str(DEMO / "vae"), "text_encoders": [str(DEMO / "text_encoder")]}
    ht, hm = te.load_model(str(DEMO / "transformer"), **kw), me.load_model(str(DEMO / "transformer"), **kw)
    for f in ("family", "prediction", "latent_channels", "vae_scale_factor", "patch_size", "scaling_factor", "extras"):
        assert getattr(hm, f) == getattr(ht, f), f
    assert set(hm.text_encoders) == {"t5"} and hm.extras["needs"] == []
    p = pipeline.GenerateParams(prompt="red potion", seed=4, steps=2, width=32, height=32)
    diff = float(np.abs(pipeline.generate(te, ht, p) - pipeline.generate(me, hm, p)).max())
    print(f"component folders: max |torch - mlx| = {diff * 255:.4f}/255")
    assert diff <= TOL


def test_loading_peak_memory_is_one_copy(engines):
    """Weights are made one group at a time from the mapped file: MLX's peak while loading stays near the
    size of the loaded parameters (no second copy of the model)."""
    from mlx.utils import tree_flatten

    _, me = engines
    if not hasattr(mx, "reset_peak_memory"):
        pytest.skip("this mlx has no peak-memory counter")
    import gc

    gc.collect()
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    h = me.load_model(str(DEMO))
    peak = mx.get_peak_memory() - base
    size = sum(v.nbytes for m in (h.transformer, h.vae, *h.text_encoders.values()) for _, v in tree_flatten(m.parameters()))
    print(f"loaded parameters {size / 2**20:.2f} MiB, MLX peak while loading {peak / 2**20:.2f} MiB")
    assert peak <= 1.25 * size + 2**20


def test_denoiser_pads_conditionings_of_different_lengths(engines, handles):
    """CFG with a negative encoded at another max length: both engines pad (uncond first) the same way."""
    te, me = engines
    ht, hm = handles
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32) * 2.0
    outs = []
    for eng, h in ((te, ht), (me, hm)):
        cond = eng.encode_text(h, ["red potion", "blue slime"])
        neg = eng.encode_text(h, [""], max_length=40, negative=True)
        dn = eng.denoiser(h, cond, neg, cfg=4.5, model_schedule=pipeline.model_schedule(h, 32, 32))
        outs.append(dn(x, 2.5))
    assert outs[1].shape == x.shape and isinstance(outs[1], np.ndarray)
    diff = float(np.abs(outs[0] - outs[1]).max())
    print(f"padded CFG denoiser: max |torch - mlx| = {diff:.3g}")
    assert diff <= 1e-4 * (1 + float(np.abs(outs[0]).max()))
