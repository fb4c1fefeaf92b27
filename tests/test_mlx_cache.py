"""The converted MLX cache (``spriteforge convert --engine mlx``): same pictures as the source, checked on load.

The built-in demo model (a diffusers folder) and a tiny original-layout Flux file with separate VAE and
text-encoder files are converted, the cache is loaded (given itself, or found from the source in the
default cache folder), and the images equal those of the source loaded on MLX. A changed cache file or
a changed source is refused with MODEL_NOT_CONVERTED; the source files are never written; the
``convert`` command's exit codes and messages.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_models as tm  # noqa: E402

from spriteforge import pipeline  # noqa: E402
from spriteforge.errors import MODEL_NOT_CONVERTED, SpriteForgeError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo_model"
FIELDS = ("family", "variant", "prediction", "latent_channels", "vae_scale_factor", "patch_size", "scaling_factor",
          "shift_factor", "flow_shift", "extras", "dtype")

pytestmark = pytest.mark.skipif(not (DEMO / "model_index.json").exists(), reason="demo_model/ is not present")


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("mlx_cache")


@pytest.fixture(autouse=True)
def cache_root(tmp, monkeypatch):
    monkeypatch.setenv("SPRITEFORGE_MLX_CACHE", str(tmp / "root"))


@pytest.fixture(scope="module")
def me():
    from spriteforge.engines import get_engine

    return get_engine("mlx", "cpu")


def _hashes(folder: Path) -> dict:
    return {str(f.relative_to(folder)): (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mtime_ns)
            for f in sorted(folder.rglob("*")) if f.is_file()}


def _image(engine, handle, **kw):
    p = pipeline.GenerateParams(**{"prompt": "red potion", "seed": 3, "steps": 2, "width": 32, "height": 32, **kw})
    return pipeline.generate(engine, handle, p)


def _same_handle(a, b):
    for f in FIELDS:
        assert getattr(a, f) == getattr(b, f), f
    assert json.loads(json.dumps(a.config)) == json.loads(json.dumps(b.config))  # tuples come back as lists
    assert json.loads(json.dumps(a.vae_config)) == json.loads(json.dumps(b.vae_config))
    assert set(a.text_encoders) == set(b.text_encoders)
    assert {k: type(v) for k, v in a.tokenizers.items()} == {k: type(v) for k, v in b.tokenizers.items()}


def _flip_byte(path: Path, offset_from_end: int = 16):
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def demo_cache(tmp, me):
    from spriteforge.engines.mlx_models import cache

    before = _hashes(DEMO)
    out = cache.convert(me, str(DEMO), out=tmp / "demo_cache")
    assert _hashes(DEMO) == before  # the user's folder: not a byte or an mtime changed
    return out


def test_demo_cache_gives_the_source_images(demo_cache, me):
    from spriteforge.engines.mlx_models import cache

    man = json.loads((demo_cache / "manifest.json").read_text())
    assert man["format"] == cache.FORMAT and man["format_version"] == cache.FORMAT_VERSION
    assert man["family"] == "pixart" and set(man["components"]) == {"transformer", "vae", "te_t5"}
    assert (demo_cache / "tokenizers" / "t5").is_dir() and man["tokenizers"]["t5"]["class"]
    # the integrity record of the transformer file, recomputed here from the raw bytes
    src = DEMO / "transformer" / "diffusion_pytorch_model.safetensors"
    raw = src.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    rec = next(r for r in man["source"]["files"] if r["path"] == str(src))
    assert rec["header_sha256"] == hashlib.sha256(raw[:8 + n]).hexdigest()
    assert rec["tensors_sha256"] == hashlib.sha256(raw[8 + n:]).hexdigest()
    for name, digest in man["files"].items():
        assert hashlib.sha256((demo_cache / name).read_bytes()).hexdigest() == digest
    # MLX-native: the port's own parameter names, readable by mx.load alone
    w = mx.load(str(demo_cache / "transformer.safetensors"))
    from mlx.utils import tree_flatten

    hs = me.load_model(str(DEMO))
    assert set(w) == {k for k, _ in tree_flatten(hs.transformer.parameters())}

    hc = me.load_model(str(demo_cache))
    _same_handle(hc, hs)
    a, b = _image(me, hs), _image(me, hc)
    diff = float(np.abs(a - b).max())
    print(f"demo model, source vs cache on MLX: max pixel diff {diff:.3g}")
    assert diff <= 1e-6
    src_img = np.zeros((1, 32, 32, 3), np.float32) + 0.5
    a, b = _image(me, hs, init_image=src_img, denoise=0.6), _image(me, hc, init_image=src_img, denoise=0.6)
    assert float(np.abs(a - b).max()) <= 1e-6  # img2img: the VAE encoder from the cache too


def test_tampered_cache_file_is_refused(demo_cache, me, tmp):
    bad = tmp / "tampered"
    shutil.copytree(demo_cache, bad)
    _flip_byte(bad / "transformer.safetensors")
    with pytest.raises(SpriteForgeError) as e:
        me.load_model(str(bad))
    assert e.value.code == MODEL_NOT_CONVERTED
    assert "transformer.safetensors" in e.value.message and "spriteforge convert --engine mlx" in e.value.message
    bad2 = tmp / "tampered2"
    shutil.copytree(demo_cache, bad2)
    (bad2 / "tokenizers" / "t5" / "tokenizer_config.json").write_text("{}")
    with pytest.raises(SpriteForgeError) as e:
        me.load_model(str(bad2))
    assert e.value.code == MODEL_NOT_CONVERTED


def test_changed_source_is_refused(me, tmp):
    from spriteforge.engines.mlx_models import cache

    src = tmp / "demo_copy"
    shutil.copytree(DEMO, src)
    out = cache.convert(me, str(src), out=tmp / "copy_cache")
    me.load_model(str(out))  # fresh: loads
    _flip_byte(src / "vae" / "diffusion_pytorch_model.safetensors")  # same size, other tensor bytes
    with pytest.raises(SpriteForgeError) as e:
        me.load_model(str(out))
    assert e.value.code == MODEL_NOT_CONVERTED and "tensor data" in e.value.message
    assert f"spriteforge convert --engine mlx {src}" in e.value.message
    # converting again makes it fresh; a changed config is seen too
    cache.convert(me, str(src), out=out)
    me.load_model(str(out))
    cfg = json.loads((src / "transformer" / "config.json").read_text())
    (src / "transformer" / "config.json").write_text(json.dumps({**cfg, "num_layers": cfg["num_layers"]}, indent=4) + " ")
    with pytest.raises(SpriteForgeError) as e:
        me.load_model(str(out))
    assert e.value.code == MODEL_NOT_CONVERTED


def _original_with_parts(root, family):
    """A single file in its original layout and the separate files it needs, and the text encoders among them."""
    if family == "zimage":  # ComfyUI's z_image_turbo file, ae.safetensors, qwen_3_4b.safetensors
        parts = tm.make_zimage_parts(root)
        return tm.make_zimage(root, layout="original"), {"vae": str(parts["vae"]), "text_encoders": [str(p) for p in parts["text_encoders"]]}, {"qwen3_4b"}
    parts = {"vae": str(tm.make_vae(root / "parts", 16, layout="original")),
             "text_encoders": [str(tm.make_clip(root / "parts", "clip_l")), str(tm.make_t5(root / "parts"))]}
    return tm.make_flux(root, layout="original", variant="dev"), parts, {"clip_l", "t5"}


@pytest.mark.parametrize("family", ["flux", "zimage"])
def test_original_layout_with_parts_found_from_the_source(me, tmp, family):
    """A Flux dev file in the original (BFL) layout with separate VAE, CLIP-L and T5 files (Z-Image: ComfyUI's file
    with ae and Qwen3-4B): converted to the default cache folder, which loading the source with the same parts then
    uses."""
    from spriteforge.engines.mlx_models import cache

    root = tmp / "tiny"
    path, parts, tes = _original_with_parts(root, family)
    hs = me.load_model(str(path), **parts)  # no cache yet: from the files
    before = _hashes(root)
    out = cache.convert(me, str(path), **parts)
    assert _hashes(root) == before
    assert out.parent == tmp / "root" and cache.find_cache(path, **parts) == out
    assert cache.find_cache(path) is None  # another set of parts: another cache
    man = json.loads((out / "manifest.json").read_text())
    assert set(man["components"]) == {"transformer", "vae", *(f"te_{k}" for k in tes)}
    assert set(man["text_encoder_configs"]) == tes
    hc = me.load_model(str(path), **parts)
    _same_handle(hc, hs)
    a, b = _image(me, hs, width=32, height=32), _image(me, hc, width=32, height=32)
    diff = float(np.abs(a - b).max())
    print(f"tiny {family} (original layout), source vs cache on MLX: max pixel diff {diff:.3g}")
    assert diff <= 1e-6
    # the source load really goes through the cache: a tampered default cache is refused
    _flip_byte(out / f"te_{sorted(tes)[-1]}.safetensors")
    with pytest.raises(SpriteForgeError) as e:
        me.load_model(str(path), **parts)
    assert e.value.code == MODEL_NOT_CONVERTED


def test_cli_convert(tmp, capsys):
    from spriteforge.cli.main import main

    out = tmp / "cli_cache"
    assert main(["convert", "--engine", "mlx", str(DEMO), "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "pixart" in printed
    assert main(["convert", "--engine", "mlx", str(DEMO), "--out", str(out), "--json", "-q"]) == 0  # again: replaces it
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["cache"] == str(out) and info["dtype"] == "auto"
    _flip_byte(out / "vae.safetensors")
    rc = main(["generate", "--engine", "mlx", "--model", str(out), "--prompt", "red potion", "--steps", "1",
               "--out", str(tmp / "gen2"), "-q"])
    err = capsys.readouterr().err
    assert rc == 11 and "MODEL_NOT_CONVERTED" in err and "spriteforge convert --engine mlx" in err
    # refused: the torch engine (nothing to convert), an --out inside the model, an --out that is not a cache
    assert main(["convert", "--engine", "torch", str(DEMO), "-q"]) == 19
    assert "only the MLX engine" in capsys.readouterr().err
    assert main(["convert", "--engine", "mlx", str(DEMO), "--out", str(DEMO / "mlx"), "-q"]) == 19
    assert not (DEMO / "mlx").exists()
    other = tmp / "not_a_cache"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["convert", "--engine", "mlx", str(DEMO), "--out", str(other), "-q"]) == 19
    assert (other / "notes.txt").read_text() == "mine" and len(list(other.iterdir())) == 1


def test_cache_dtypes(me, tmp, demo_cache):
    """auto keeps the demo model's float16 storage; --dtype float32 widens every weight (and loads the same model)."""
    from spriteforge.engines.mlx_models import cache

    floating = lambda f: {v.dtype for v in mx.load(str(f)).values() if mx.issubdtype(v.dtype, mx.floating)}  # noqa: E731
    assert floating(demo_cache / "transformer.safetensors") == {mx.float16}  # as demo_model stores it
    out = cache.convert(me, str(DEMO), out=tmp / "demo_fp32", dtype="float32")
    assert floating(out / "transformer.safetensors") == {mx.float32}
    assert (out / "transformer.safetensors").stat().st_size > 1.9 * (demo_cache / "transformer.safetensors").stat().st_size
    hc = me.load_model(str(out))
    hs = me.load_model(str(demo_cache))
    from mlx.utils import tree_flatten

    a, b = dict(tree_flatten(hs.transformer.parameters())), dict(tree_flatten(hc.transformer.parameters()))
    assert all(bool(mx.array_equal(a[k], b[k]).item()) for k in a)  # float16 values widen exactly
