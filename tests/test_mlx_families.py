"""Every family on the MLX engine gives the torch engine's pictures from the same real-format files.

Tiny models of each family are written in the formats users have (original single files with the
VAE and text encoders as separate files, diffusers single files, all-in-one checkpoints, diffusers
folders; ``tests/tiny_models.py``), loaded by each engine's own loader, and run through
``spriteforge.pipeline`` for a few steps at a small size with the same seed: the images must be
within 2/255 (max abs pixel difference) and the handles must mean the same.

Every family is listed; a family whose MLX port files are missing fails here (it is never skipped).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_models as tm  # noqa: E402

from spriteforge import pipeline  # noqa: E402
from spriteforge.engines.base import Conditioning  # noqa: E402

TOL = 2.0 / 255.0
FIELDS = ("family", "variant", "prediction", "latent_channels", "vae_scale_factor", "patch_size", "scaling_factor",
          "shift_factor", "flow_shift", "extras", "dtype")


@pytest.fixture(scope="session")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_mlx")


@pytest.fixture(scope="session")
def engines():
    from spriteforge.engines import get_engine

    return get_engine("torch", "cpu"), get_engine("mlx", "cpu")


def _parts(root: Path, family: str, variant: str = "") -> dict:
    """The separate VAE / text-encoder files a single-file transformer of ``family`` needs."""
    d = root / "parts"
    if family == "pixart":
        return {"vae": tm.make_vae(d, 4, layout="original"), "text_encoders": [tm.make_t5(d)]}
    if family == "sd3":  # CLIP-L + CLIP-G only: SD3 then encodes with a zero T5
        return {"vae": tm.make_vae(d, 16, layout="original"), "text_encoders": [tm.make_clip(d, "clip_l"), tm.make_clip(d, "clip_g")]}
    if family == "flux":
        return {"vae": tm.make_vae(d, 16, layout="original"), "text_encoders": [tm.make_clip(d, "clip_l"), tm.make_t5(d)]}
    if family == "sana":
        return {"vae": tm.make_sana(root, layout="folder") / "vae", "text_encoders": [tm.make_gemma(d)]}
    if family == "dit":
        return {"vae": tm.make_vae(d, 4, layout="diffusers")}
    if family == "zimage":  # ae.safetensors + qwen_3_4b.safetensors (its tokenizer beside it), as ComfyUI users hold them
        return tm.make_zimage_parts(root)
    if family == "flux2":  # flux2-vae.safetensors in BFL's layout, qwen_3_4b.safetensors with its tokenizer beside it;
        import tiny_flux2  # [dev]: mistral_3_small_flux2_bf16.safetensors as ComfyUI's (its tekken tokenizer inside)
        import tiny_mistral

        te = tiny_mistral.make_mistral3(d / "mistral", tekken=True) if variant == "dev" else tiny_flux2.make_flux2_text_encoder(d / "flux2")
        return {"vae": tiny_flux2.make_flux2_vae(d, layout="original", name="flux2-vae.safetensors"), "text_encoders": [te]}
    if family == "qwenimage":  # ComfyUI's files: qwen_image_vae (Wan-2.1 layout), qwen_2.5_vl_7b (legacy names)
        from spriteforge.tests.tiny_qwenimage import make_qwen25_vl, make_qwen_vae

        return {"vae": make_qwen_vae(d, layout="original"), "text_encoders": [make_qwen25_vl(d)]}
    if family == "krea2":  # qwen_image_vae (Wan-2.1 layout), Qwen3-VL-4B as transformers saves it (tokenizer beside it)
        from spriteforge.tests.tiny_krea2 import make_qwen3_vl
        from spriteforge.tests.tiny_qwenimage import make_qwen_vae

        return {"vae": make_qwen_vae(d, layout="original"), "text_encoders": [make_qwen3_vl(d)]}
    if family == "qwenimage21":  # its VAE (diffusers names) and Qwen3-VL-8B as transformers saves it (tokenizer beside it)
        from spriteforge.tests.tiny_qwen21 import make_qwen3_vl_8b, make_qwen21_vae

        return {"vae": make_qwen21_vae(d), "text_encoders": [make_qwen3_vl_8b(d)]}
    raise ValueError(family)


# family, layout, variant, generation options
CASES = [
    ("pixart", "original", "sigma", {}),
    ("pixart", "original", "alpha", {"width": 64, "height": 48}),
    ("pixart", "diffusers", "sigma", {"init": True, "denoise": 0.6}),
    ("sd3", "checkpoint", "sd3", {}),
    ("sd3", "original", "sd3.5-medium", {"tile": True}),
    ("sd3", "folder", "sd3", {"init": True, "mask": True}),
    ("sd3", "diffusers", "sd3.5-large", {"steps": 1}),
    ("flux", "original", "dev", {}),
    ("flux", "diffusers", "schnell", {}),
    ("flux", "folder", "fill", {"init": True, "mask": True}),
    ("sana", "folder", "", {}),
    ("sana", "original", "", {"init": True, "denoise": 0.6}),
    ("sana", "diffusers", "", {"steps": 1}),
    ("dit", "original", "", {}),
    ("dit", "folder", "", {"tile": True}),
    ("dit", "diffusers", "", {"steps": 1}),
    ("zimage", "original", "", {"cfg": 3.0}),
    ("zimage", "original", "", {"tile": True, "width": 48}),
    ("zimage", "diffusers", "", {"init": True, "denoise": 0.6, "cfg": 2.0}),
    ("zimage", "folder", "", {"init": True, "mask": True}),
    ("zimage", "folder", "", {"lora": True, "cfg": 2.0}),
    ("flux2", "original", "klein", {}),
    ("flux2", "original", "dev", {"init": True, "denoise": 0.6}),
    ("flux2", "folder", "klein", {"init": True, "mask": True}),
    ("flux2", "diffusers", "klein", {"tile": True, "width": 64, "height": 48}),
    ("qwenimage", "diffusers", "", {}),
    ("qwenimage", "diffusers", "", {"init": True, "denoise": 0.6}),
    ("qwenimage", "diffusers", "", {"init": True, "mask": True, "width": 48}),
    ("qwenimage", "diffusers", "", {"tile": True}),
    ("qwenimage", "folder", "", {"width": 32, "height": 48}),
    ("krea2", "original", "", {"cfg": 3.0}),  # the released mixed precision: bf16 matrices, f32 norms and modulation
    ("krea2", "diffusers", "", {"init": True, "denoise": 0.6}),
    ("krea2", "original", "", {"init": True, "mask": True, "width": 48}),
    ("krea2", "original", "", {"tile": True}),
    ("krea2", "folder", "", {"width": 32, "height": 48}),
    ("qwenimage21", "original", "", {"cfg": 3.0}),  # ComfyUI's single file (fused gate_up); sizes in multiples of 32
    ("qwenimage21", "diffusers", "", {"init": True, "denoise": 0.6, "height": 96}),
    ("qwenimage21", "original", "", {"init": True, "mask": True}),
    ("qwenimage21", "diffusers", "", {"tile": True}),
]


def _source(h, w):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([x / w, y / h, 0.5 + 0.4 * np.sin(x / 3.0)], axis=-1)[None]


_HANDLES: dict = {}


def _load(engine, root, family, layout, variant):
    """The handle for one case on one engine (loaded once per session: the conditioning test reuses it)."""
    key = (engine.name, str(root), family, layout, variant)
    if key not in _HANDLES:
        kw = {"variant": variant} if variant else {}
        path = getattr(tm, f"make_{family}")(root, layout=layout, **kw)
        extra = _parts(root, family, variant) if layout in ("original", "diffusers") else {}
        _HANDLES[key] = engine.load_model(str(path), **extra)
    return _HANDLES[key]


def _lora(root, family):
    """A kohya LoRA on the layers the LoRA tests give ``family`` (tests/test_lora_torch.py), both engines' handles."""
    from spriteforge.tests import test_lora_util as U
    from spriteforge.tests.test_lora_torch import LAYERS

    path = root / f"{family}-lora.safetensors"
    if not path.exists():
        shapes = {n: tuple(m.weight.shape) for n, m in U.build(family).named_modules() if isinstance(m, torch.nn.Linear)}
        w = U.Writer(7)
        for layer in LAYERS[family]:
            w.lora("kohya", layer, shapes[layer], rank=4, alpha=4.0)
        w.save(path)
    return path


@pytest.mark.parametrize("family,layout,variant,opts", CASES,
                         ids=[f"{f}-{l}-{v or 'base'}-{'-'.join(o) or 'txt2img'}" for f, l, v, o in CASES])
def test_same_picture_on_both_engines(root, engines, family, layout, variant, opts):
    te, me = engines
    ht = _load(te, root, family, layout, variant)
    hm = _load(me, root, family, layout, variant)
    if opts.get("lora"):  # the same LoRA file on both engines
        from spriteforge.lora import LoRASpec

        spec = [LoRASpec(_lora(root, family), 1.5)]
        ht, hm = te.apply_loras(ht, spec), me.apply_loras(hm, spec)
        assert ht.loras[-1].matched == hm.loras[-1].matched > 0
    for f in FIELDS:
        assert getattr(hm, f) == getattr(ht, f), f
    assert set(hm.text_encoders) == set(ht.text_encoders)
    opts = dict(opts)
    w, h = opts.pop("width", 64), opts.pop("height", 64)
    kw = {"prompt": "3" if family == "dit" else "a red knight", "negative": "" if family == "dit" else "blurry",
          "seed": 5, "steps": 2, "width": w, "height": h, **opts}
    kw.pop("lora", None)
    if kw.pop("init", False):
        kw["init_image"] = _source(h, w)
    if kw.pop("mask", False):
        m = np.zeros((1, h, w), np.float32)
        m[:, h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1.0
        kw["mask"] = m
        kw["mask_feather"] = 2
    params = pipeline.GenerateParams(**kw)
    a = pipeline.generate(te, ht, params)
    b = pipeline.generate(me, hm, params)
    assert a.shape == b.shape == (1, h, w, 3)
    diff = float(np.abs(a - b).max())
    print(f"{family}-{layout}-{variant}: max |torch - mlx| = {diff * 255:.4f}/255")
    assert np.isfinite(b).all() and b.std() > 1e-3
    assert diff <= TOL


@pytest.mark.parametrize("family,layout", [("qwenimage", "diffusers"), ("krea2", "original")])
def test_batch_one_is_item_zero_of_batch_four(root, engines, family, layout):
    """Each row of a batch is its own picture (seed + i): the batch of one is the batch of four's first, on both engines."""
    import dataclasses

    for eng in engines:
        h = _load(eng, root, family, layout, "")
        p = pipeline.GenerateParams(prompt="a red knight", negative="blurry", seed=11, steps=2, width=32, height=32)
        one = pipeline.generate(eng, h, p)
        four = pipeline.generate(eng, h, dataclasses.replace(p, batch_size=4))
        diff = float(np.abs(one[0] - four[0]).max())
        print(f"{family} {eng.name}: batch 1 vs item 0 of batch 4: {diff * 255:.4f}/255")
        assert four.shape[0] == 4 and diff <= TOL
        assert np.abs(four[0] - four[1]).max() > 0.01  # item i has seed + i


def test_text_conditioning_matches_per_family(root, engines):
    """Sana with the complex human instruction, SD3 with its zero T5 and padding, Flux's pooled CLIP + T5, Z-Image's
    Qwen3 hidden states (prompts of different lengths: the mask says which tokens are real), Qwen-Image's Qwen2.5-VL
    language model (template dropped, padding zeroed), Krea 2's Qwen3-VL hidden states 2 and 5 side by side (the
    template's suffix after each prompt)."""
    te, me = engines
    for family, layout, opts in (("sana", "folder", {"complex_human_instruction": True}), ("sd3", "original", {}),
                                 ("flux", "original", {}), ("pixart", "original", {}), ("zimage", "original", {}),
                                 ("flux2", "original", {}), ("qwenimage", "diffusers", {}), ("krea2", "original", {})):
        variant = {"sd3": "sd3.5-medium", "flux": "dev", "pixart": "sigma", "flux2": "dev"}.get(family, "")
        ht = _load(te, root, family, layout, variant)
        hm = _load(me, root, family, layout, variant)
        ct = te.encode_text(ht, ["a red knight", "a very small green slime monster"], **opts)
        cm = me.encode_text(hm, ["a red knight", "a very small green slime monster"], **opts)
        for name in ("embeds", "mask", "pooled"):
            a, b = getattr(ct, name), getattr(cm, name)
            assert (a is None) == (b is None), (family, name)
            if a is None:
                continue
            a, b = a.float().numpy(), np.array(b).astype(np.float32)
            assert a.shape == b.shape, (family, name)
            d = float(np.abs(a - b).max())
            print(f"{family} {name}: max diff {d:.3g}")
            assert d <= 1e-4 * (1 + float(np.abs(a).max())), (family, name)
        assert cm.guidance == ct.guidance


@pytest.mark.parametrize("family,layout,variant", [("flux2", "original", "klein")])
def test_batch_one_is_item_zero_of_batch_four_on_both_engines(root, engines, family, layout, variant):
    for eng in engines:
        h = _load(eng, root, family, layout, variant)
        p = pipeline.GenerateParams(prompt="red potion", negative="", seed=11, steps=2, width=32, height=32)
        one = pipeline.generate(eng, h, p)
        four = pipeline.generate(eng, h, pipeline.GenerateParams(**{**p.__dict__, "batch_size": 4}))
        diff = float(np.abs(one[0] - four[0]).max())
        print(f"{family} {eng.name}: batch 1 vs item 0 of batch 4: {diff * 255:.4f}/255")
        assert four.shape[0] == 4 and diff <= TOL
        assert np.abs(four[0] - four[1]).max() > 0.01  # item i has seed + i


@pytest.mark.parametrize("storage", ["float16", "bfloat16", "float8_e4m3fn"])
def test_half_and_fp8_storage(root, engines, storage, tmp_path):
    """A transformer file stored in fp16 / bf16 / fp8: MLX reads it (bf16 through int16, fp8 upcast) to the
    same weights as torch, so both engines' denoisers give the same x0 for the same input."""
    from safetensors.torch import load_file, save_file

    te, me = engines
    src = tm.make_pixart(root, layout="original", variant="sigma")
    dt = getattr(torch, storage)
    sd = {k: (v.to(dt) if v.is_floating_point() else v) for k, v in load_file(str(src)).items()}
    p = tmp_path / f"pixart-sigma-{storage}.safetensors"
    save_file(sd, str(p))
    ht, hm = te.load_model(str(p)), me.load_model(str(p))
    assert hm.dtype == "float32" and hm.extras["needs"] == ht.extras["needs"] == ["vae", "t5"]
    rng = np.random.default_rng(0)
    emb, keep = rng.standard_normal((1, 6, tm.T5_DIM)).astype(np.float32), np.array([[1, 1, 1, 1, 0, 0]])
    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32) * 3.0
    outs = []
    for eng, h in ((te, ht), (me, hm)):
        cond = Conditioning(family="pixart", embeds=eng.from_numpy(emb), mask=eng.from_numpy(keep, "int32"))
        outs.append(eng.denoiser(h, cond)(x, 3.0))
    diff = float(np.abs(outs[0] - outs[1]).max())
    print(f"{storage} storage: denoiser max |torch - mlx| = {diff:.3g}")
    assert diff <= 1e-4 * (1 + float(np.abs(outs[0]).max()))


def test_comfy_flux_all_in_one_and_pickle_checkpoint(root, engines, tmp_path):
    """Two more file kinds on both engines: a ComfyUI-style Flux all-in-one (model.diffusion_model. + vae. +
    text_encoders.*, tokenizers beside the file) and a PixArt ``.ckpt`` read with ``weights_only``."""
    import shutil

    from safetensors.torch import load_file, save_file

    te, me = engines
    sd = {"model.diffusion_model." + k: v for k, v in load_file(str(tm.make_flux(root, layout="original", variant="schnell"))).items()}
    d = root / "parts"
    sd.update({"vae." + k: v for k, v in load_file(str(tm.make_vae(d, 16, layout="original"))).items()})
    sd.update({"text_encoders.clip_l.transformer." + k: v for k, v in load_file(str(tm.make_clip(d, "clip_l"))).items()})
    sd.update({"text_encoders.t5xxl.transformer." + k: v for k, v in load_file(str(tm.make_t5(d))).items()})
    flux = tmp_path / "flux1-schnell-aio.safetensors"
    save_file({k: v.contiguous().clone() for k, v in sd.items()}, str(flux))
    for kind in ("clip", "t5"):
        shutil.copytree(tm.make_tokenizer(root, kind), tmp_path / f"{kind}_tokenizer")
    ckpt = tmp_path / "pixart-sigma.ckpt"
    torch.save({"state_dict": load_file(str(tm.make_pixart(root, layout="original", variant="sigma")))}, ckpt)
    for path, extra, size in ((flux, {}, 64), (ckpt, _parts(root, "pixart"), 32)):
        ht, hm = te.load_model(str(path), **extra), me.load_model(str(path), **extra)
        for f in FIELDS:
            assert getattr(hm, f) == getattr(ht, f), (path.name, f)
        assert hm.extras["needs"] == []
        params = pipeline.GenerateParams(prompt="a red knight", seed=9, steps=2, width=size, height=size)
        diff = float(np.abs(pipeline.generate(te, ht, params) - pipeline.generate(me, hm, params)).max())
        print(f"{path.name}: max |torch - mlx| = {diff * 255:.4f}/255")
        assert diff <= TOL


def test_dit_null_class_guidance_without_a_negative(root, engines):
    """DiT with CFG and no negative conditioning: both denoisers add the null class themselves."""
    te, me = engines
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32) * 4.0
    outs = []
    for eng in (te, me):
        h = _load(eng, root, "dit", "original", "")
        cond = eng.encode_text(h, ["3", "7"])
        dn = eng.denoiser(h, cond, None, cfg=4.0, model_schedule=pipeline.model_schedule(h, 64, 64))
        outs.append(dn(x, 4.0))
    diff = float(np.abs(outs[0] - outs[1]).max())
    print(f"DiT null-class CFG denoiser: max |torch - mlx| = {diff:.3g}")
    assert diff <= 1e-4 * (1 + float(np.abs(outs[0]).max()))


def test_sana_sprint_guidance_embeds_and_timestep_scale(engines, tmp_path):
    """A Sana transformer folder with guidance embeddings, q/k RMS norms and a timestep scale (SANA-Sprint's
    settings): both denoisers scale the timestep and pass the guidance the same way."""
    from diffusers import SanaTransformer2DModel

    te, me = engines
    m = SanaTransformer2DModel(in_channels=32, out_channels=32, num_attention_heads=2, attention_head_dim=32, num_layers=1,
                               num_cross_attention_heads=2, cross_attention_head_dim=32, cross_attention_dim=64,
                               caption_channels=tm.GEMMA_DIM, sample_size=8, patch_size=1, guidance_embeds=True,
                               qk_norm="rms_norm_across_heads", timestep_scale=0.5)
    tm._randomize(m, 6).save_pretrained(str(tmp_path / "sprint"))
    rng = np.random.default_rng(5)
    emb, keep = rng.standard_normal((1, 6, tm.GEMMA_DIM)).astype(np.float32), np.array([[1, 1, 1, 1, 1, 0]])
    x = rng.standard_normal((1, 32, 8, 8)).astype(np.float32)
    outs = []
    for eng in (te, me):
        h = eng.load_model(str(tmp_path / "sprint"))
        assert h.family == "sana" and h.config["timestep_scale"] == 0.5 and h.config["guidance_embeds"] is True
        cond = Conditioning(family="sana", embeds=eng.from_numpy(emb), mask=eng.from_numpy(keep, "int32"), guidance=2.5)
        outs.append(eng.denoiser(h, cond, model_schedule=pipeline.model_schedule(h, 256, 256))(x, 0.7))
    diff = float(np.abs(outs[0] - outs[1]).max())
    print(f"Sana guidance/timestep_scale denoiser: max |torch - mlx| = {diff:.3g}")
    assert diff <= 1e-4 * (1 + float(np.abs(outs[0]).max()))


@pytest.mark.parametrize("family,layout", [("zimage", "original")])
def test_batch_one_is_item_zero_of_batch_four_on_both_engines(root, engines, family, layout):
    """Row 0 of a batch of 4 is the batch-1 picture (item i has seed + i), with CFG batching its prompts' padded
    sequences, on each engine."""
    import dataclasses

    for eng in engines:
        h = _load(eng, root, family, layout, "")
        p = pipeline.GenerateParams(prompt="a red knight", negative="blurry", cfg=2.0, seed=11, steps=2, width=32, height=32)
        one = pipeline.generate(eng, h, p)
        four = pipeline.generate(eng, h, dataclasses.replace(p, batch_size=4))
        diff = float(np.abs(one[0] - four[0]).max())
        print(f"{family} {eng.name}: batch 1 vs item 0 of batch 4: {diff * 255:.4f}/255")
        assert four.shape[0] == 4 and diff <= TOL
        assert np.abs(four[0] - four[1]).max() > 0.02
