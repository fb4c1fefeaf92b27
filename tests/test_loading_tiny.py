"""Tiny models of every family, saved in the real formats, load back through the user's code path
(``load_model``) and give the same outputs as the model that was saved."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_models as tm  # noqa: E402

from spriteforge.engines.torch_models.loading import load_model, load_text_encoder, load_vae  # noqa: E402
from spriteforge.errors import SpriteForgeError  # noqa: E402


@pytest.fixture(scope="session")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def engine():
    from spriteforge.engines import get_engine

    return get_engine("torch", "cpu")


def _stub_engine(weight="float32", bf16=True, kind="cpu"):
    pol = SimpleNamespace(weight_dtype=weight, vae_dtype="float32", text_encoder_dtype=weight, bf16=bf16, fp8_compute=False)
    return SimpleNamespace(torch_device=torch.device("cpu"), policy=pol, device=SimpleNamespace(kind=kind))


def _run(family, model, variant="", dtype=None):
    g = torch.Generator().manual_seed(1)
    dt = dtype or next(p.dtype for p in model.parameters() if p.dtype not in (torch.float8_e4m3fn, torch.float8_e5m2))
    r = lambda *s: torch.randn(*s, generator=g).to(dt)  # noqa: E731
    with torch.no_grad():
        if family == "pixart":
            cond = {"resolution": torch.tensor([[64.0, 64.0]]), "aspect_ratio": torch.tensor([[1.0]])} if variant == "alpha" else {"resolution": None, "aspect_ratio": None}
            return model(r(1, 4, 8, 8), encoder_hidden_states=r(1, 5, tm.T5_DIM), timestep=torch.tensor([500]), added_cond_kwargs=cond).sample
        if family == "dit":
            return model(r(1, 4, 8, 8), timestep=torch.tensor([500]), class_labels=torch.tensor([3])).sample
        if family == "sd3":
            return model(r(1, 16, 8, 8), encoder_hidden_states=r(1, 5, 64), pooled_projections=r(1, 64), timestep=torch.tensor([500.0])).sample
        if family == "flux":
            in_ch = model.config.in_channels
            kw = {"guidance": torch.tensor([3.5])} if model.config.guidance_embeds else {}
            return model(
                r(1, 16, in_ch), encoder_hidden_states=r(1, 5, tm.T5_DIM), pooled_projections=r(1, tm.CLIP_DIM),
                timestep=torch.tensor([0.5]), img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(5, 3), **kw
            ).sample
        if family == "sana":
            return model(r(1, 32, 8, 8), encoder_hidden_states=r(1, 5, tm.GEMMA_DIM), timestep=torch.tensor([500])).sample
        if family == "zimage":  # lists of latents (C, 1, H, W) and captions; 6x10 latents: 15 tokens + learned pads
            return model([r(16, 1, 6, 10)], torch.tensor([0.3]), [r(5, 32)]).sample[0]
    raise ValueError(family)


def _reference(family, variant):
    if family in ("sana", "dit", "zimage"):
        return getattr(tm, f"build_{family}")()
    return getattr(tm, f"build_{family}")(variant)


CASES = [
    ("pixart", "original", "sigma"),
    ("pixart", "original", "alpha"),
    ("pixart", "diffusers", "sigma"),
    ("pixart", "folder", "sigma"),
    ("sd3", "original", "sd3"),
    ("sd3", "original", "sd3.5-medium"),
    ("sd3", "diffusers", "sd3.5-large"),
    ("sd3", "checkpoint", "sd3"),
    ("sd3", "folder", "sd3"),
    ("flux", "original", "dev"),
    ("flux", "original", "schnell"),
    ("flux", "original", "fill"),
    ("flux", "diffusers", "depth"),
    ("flux", "folder", "dev"),
    ("sana", "diffusers", ""),
    ("sana", "original", ""),
    ("sana", "folder", ""),
    ("dit", "original", ""),
    ("dit", "diffusers", ""),
    ("dit", "folder", ""),
    ("zimage", "original", ""),
    ("zimage", "diffusers", ""),
    ("zimage", "folder", ""),
]


@pytest.mark.parametrize("family,layout,variant", CASES, ids=[f"{f}-{l}-{v}" for f, l, v in CASES])
def test_roundtrip_same_outputs(root, engine, family, layout, variant):
    kw = {"variant": variant} if variant else {}
    path = getattr(tm, f"make_{family}")(root, layout=layout, **kw)
    h = load_model(engine, path)
    assert h.family == family
    ref = _reference(family, variant)
    torch.testing.assert_close(_run(family, h.transformer, variant), _run(family, ref, variant), rtol=0, atol=1e-5)
    assert h.dtype == "float32" and next(h.transformer.parameters()).dtype == torch.float32
    if family in ("sd3", "flux", "sana", "zimage"):
        assert h.prediction == "flow"
    else:
        assert h.prediction == "eps" and h.extras["sigma_learned"] is True
    if family == "flux":
        assert h.flow_shift is None and h.patch_size == 2 and h.latent_channels == 16
        assert h.extras["guidance_embeds"] is (variant != "schnell")
        assert h.extras["in_channels"] == {"fill": 384, "depth": 128}.get(variant, 64)
    if family in ("sd3", "zimage"):
        assert h.flow_shift == 3.0 and h.latent_channels == 16
    if family == "dit":
        assert h.extras["num_classes"] == 1000
    if layout in ("folder", "checkpoint"):
        assert h.vae is not None and h.extras["needs"] == []
        want = {"pixart": {"t5"}, "sd3": {"clip_l", "clip_g", "t5"}, "flux": {"clip_l", "t5"}, "sana": {"gemma"}, "dit": set(),
                "zimage": {"qwen3_4b"}}[family]
        assert set(h.text_encoders) == want and set(h.tokenizers) == want
        assert "scheduler" in h.extras or layout == "checkpoint"
        if family == "sana":
            assert h.vae_scale_factor == 4 and h.latent_channels == 32  # tiny DC-AE: 3 stages
        else:
            assert h.vae_scale_factor == 8
    else:
        assert h.vae is None and "vae" in h.extras["needs"]


def test_sd3_all_in_one_components(root, engine):
    path = tm.make_sd3(root, layout="checkpoint")
    h = load_model(engine, path)
    vae = tm.build_vae(16, 2)
    x = torch.randn(1, 16, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(h.vae.decode(x).sample, vae.decode(x).sample, rtol=0, atol=1e-5)
    assert h.scaling_factor == 1.5305 and h.shift_factor == 0.0609
    t5 = tm.build_t5(64, 1, vocab_size=tm.tokenizer_len(root, "t5"))
    ids = h.tokenizers["t5"]("a knight with a sword", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(h.text_encoders["t5"](ids).last_hidden_state, t5(ids).last_hidden_state)
    # clip_l ships without text_projection: identity, as ComfyUI does
    assert torch.equal(h.text_encoders["clip_l"].text_projection.weight, torch.eye(tm.CLIP_DIM))
    clip_g = tm.build_clip("clip_g", 4, vocab_size=tm.tokenizer_len(root, "clip"))
    ids = h.tokenizers["clip_g"]("a knight", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(h.text_encoders["clip_g"](ids).text_embeds, clip_g(ids).text_embeds)


def test_comfy_flux_all_in_one(root, engine, tmp_path):
    """A ComfyUI-style Flux checkpoint: model.diffusion_model. + vae. + text_encoders.clip_l/t5xxl.transformer."""
    from safetensors.torch import load_file, save_file

    sd = {"model.diffusion_model." + k: v for k, v in load_file(str(tm.make_flux(root, layout="original", variant="schnell"))).items()}
    sd.update({"vae." + k: v for k, v in load_file(str(tm.make_vae(root, 16, layout="original"))).items()})
    sd.update({"text_encoders.clip_l.transformer." + k: v for k, v in load_file(str(tm.make_clip(root, "clip_l"))).items()})
    sd.update({"text_encoders.t5xxl.transformer." + k: v for k, v in load_file(str(tm.make_t5(root))).items()})
    p = tmp_path / "flux1-schnell-fp8.safetensors"
    save_file({k: v.contiguous().clone() for k, v in sd.items()}, str(p))
    for kind in ("clip", "t5"):  # tokenizers beside the file
        import shutil

        shutil.copytree(tm.make_tokenizer(root, kind), tmp_path / f"{kind}_tokenizer")
    h = load_model(engine, p)
    assert h.family == "flux" and h.variant == "schnell" and h.extras["needs"] == []
    assert h.scaling_factor == 0.3611 and h.shift_factor == 0.1159
    assert set(h.text_encoders) == {"clip_l", "t5"} and type(h.text_encoders["clip_l"]).__name__ == "CLIPTextModel"
    torch.testing.assert_close(_run("flux", h.transformer), _run("flux", tm.build_flux("schnell")), rtol=0, atol=1e-5)


def test_single_file_text_encoders_and_vae(root, engine):
    """Flux the ComfyUI way: transformer in diffusion_models, ae in vae, clip_l + t5 in text_encoders."""
    d = root / "comfy"
    path = tm.make_flux(d, layout="original", variant="dev")
    clip = tm.make_clip(d, "clip_l")
    t5 = tm.make_t5(d)
    vae = tm.make_vae(d, 16, layout="original")
    h = load_model(engine, path, vae=vae, text_encoders=[clip, t5])
    assert set(h.text_encoders) == {"clip_l", "t5"} and set(h.tokenizers) == {"clip_l", "t5"}
    assert h.scaling_factor == 0.3611 and h.shift_factor == 0.1159  # Flux's factors for a 16-channel VAE
    assert type(h.text_encoders["clip_l"]).__name__ == "CLIPTextModel"  # Flux uses the pooled output
    ref_vae = tm.build_vae(16)
    z = torch.randn(1, 16, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(h.vae.decode(z).sample, ref_vae.decode(z).sample, rtol=0, atol=1e-5)
    ref_t5 = tm.build_t5(tm.T5_DIM, vocab_size=len(h.tokenizers["t5"]))
    ids = h.tokenizers["t5"](["pixel art knight"], return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(h.text_encoders["t5"](ids).last_hidden_state, ref_t5(ids).last_hidden_state)
    # the tied embedding is one tensor, not two
    assert h.text_encoders["t5"].encoder.embed_tokens.weight.data_ptr() == h.text_encoders["t5"].shared.weight.data_ptr()


def test_gemma_single_file(root, engine):
    d = root / "gemma"
    key, model, tok = load_text_encoder(engine, tm.make_gemma(d), family="sana")
    assert key == "gemma"
    ref = tm.build_gemma(vocab_size=len(tok))
    ids = tok("a cat", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).last_hidden_state, ref(ids).last_hidden_state)


def test_gemma_tokenizer_inside_the_file(root, engine, tmp_path):
    """ComfyUI's Gemma files carry the sentencepiece model as a uint8 tensor; no tokenizer folder needed."""
    lone = tmp_path / "gemma_2_2b_fp16.safetensors"
    lone.write_bytes(tm.make_gemma(root / "gemma", embed_tokenizer=True).read_bytes())
    key, model, tok = load_text_encoder(engine, lone, family="sana")
    assert key == "gemma" and len(tok) >= 200
    ref = tm.build_gemma(vocab_size=model.config.vocab_size)
    ids = tok("a cat", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).last_hidden_state, ref(ids).last_hidden_state)


def test_vae_layouts(root, engine):
    ref = tm.build_vae(4)
    z = torch.randn(1, 4, 4, 4)
    for layout in ("original", "diffusers", "folder"):
        model, cfg = load_vae(engine, tm.make_vae(root / "vaes", 4, layout=layout), family="pixart", variant="sigma-1024")
        assert cfg["latent_channels"] == 4
        with torch.no_grad():
            torch.testing.assert_close(model.decode(z).sample, ref.decode(z).sample, rtol=0, atol=1e-5)
    _, cfg = load_vae(engine, tm.make_vae(root / "vaes", 4, layout="original"), family="pixart", variant="alpha-512")
    assert cfg["scaling_factor"] == 0.18215


def test_missing_tokenizer_says_where(root, engine, tmp_path):
    t5 = tm.make_t5(root / "tok")
    lone = tmp_path / "t5xxl_fp16.safetensors"
    lone.write_bytes(t5.read_bytes())
    with pytest.raises(SpriteForgeError) as ei:
        load_text_encoder(engine, lone)
    assert ei.value.code == "MODEL_NOT_FOUND" and "t5xxl_fp16_tokenizer" in ei.value.message


def test_tokenizer_from_comfyui(root, engine, tmp_path, monkeypatch):
    """Inside ComfyUI, the tokenizers ComfyUI ships (comfy/text_encoders/t5_tokenizer) are used."""
    import shutil
    import types

    comfy = tmp_path / "comfy"
    (comfy / "text_encoders").mkdir(parents=True)
    (comfy / "__init__.py").write_text("")
    shutil.copytree(tm.make_tokenizer(root, "t5"), comfy / "text_encoders" / "t5_tokenizer")
    mod = types.ModuleType("comfy")
    mod.__file__ = str(comfy / "__init__.py")
    monkeypatch.setitem(sys.modules, "comfy", mod)
    lone = tmp_path / "t5.safetensors"
    lone.write_bytes(tm.make_t5(root / "tok").read_bytes())
    key, model, tok = load_text_encoder(engine, lone)
    assert key == "t5" and len(tok) == tm.tokenizer_len(root, "t5")


def test_folder_with_fp16_variant_files_only(root, engine, tmp_path):
    import shutil

    d = tmp_path / "dit-fp16"
    shutil.copytree(tm.make_dit(root, layout="folder"), d)
    w = d / "transformer" / "diffusion_pytorch_model.safetensors"
    w.rename(w.with_name("diffusion_pytorch_model.fp16.safetensors"))
    h = load_model(engine, d)
    torch.testing.assert_close(_run("dit", h.transformer), _run("dit", tm.build_dit()), rtol=0, atol=1e-5)


def test_models_root_and_names(root, engine, tmp_path):
    from spriteforge import paths

    models = tmp_path / "models"
    (models / "diffusion_models").mkdir(parents=True)
    (models / "diffusion_models" / "dit.safetensors").write_bytes(tm.make_dit(root, layout="original").read_bytes())
    paths.set_models_root(models)
    try:
        h = load_model(engine, "dit.safetensors")
        assert h.family == "dit"
        with pytest.raises(SpriteForgeError) as ei:
            load_model(engine, "nope.safetensors")
        assert ei.value.code == "MODEL_NOT_FOUND"
    finally:
        paths.set_models_root(None)


def test_comfyui_folder_paths(root, engine, tmp_path, monkeypatch):
    import types

    d = tmp_path / "user_models"
    d.mkdir()
    (d / "pix.safetensors").write_bytes(tm.make_pixart(root, layout="original").read_bytes())
    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(tmp_path)
    fp.folder_names_and_paths = {"diffusion_models": ([str(d)], {".safetensors"})}
    fp.get_folder_paths = lambda kind: fp.folder_names_and_paths.get(kind, ([], set()))[0]
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    h = load_model(engine, "pix.safetensors")
    assert h.family == "pixart"
    assert fp.folder_names_and_paths["diffusion_models"][0] == [str(d)]  # the user's paths are kept


# --------------------------------------------------------------------------- dtypes


def test_policy_dtype_and_bf16_cast(root):
    path = tm.make_dit(root, layout="original")
    h = load_model(_stub_engine("bfloat16", bf16=True), path)
    assert next(h.transformer.parameters()).dtype == torch.bfloat16 and h.dtype == "bfloat16"
    # a device without bf16 gets fp16
    h = load_model(_stub_engine("bfloat16", bf16=False, kind="mps"), path)
    assert next(h.transformer.parameters()).dtype == torch.float16


def test_bf16_file_on_a_float32_cpu_stays_mapped_and_computes_in_float32(root, engine, tmp_path):
    """A bf16 file on a CPU computing in float32: every weight stays a bf16 view of the file's mapping (no float32
    copy of the model), each layer upcast for its own forward only: the output is the float32 model's."""
    from safetensors.torch import load_file, save_file

    src = tm.make_flux(root, layout="original", variant="schnell")
    sd = {k: v.to(torch.bfloat16) for k, v in load_file(str(src)).items()}
    p, p32 = tmp_path / "flux_bf16.safetensors", tmp_path / "flux_bf16_as_fp32.safetensors"
    save_file(sd, str(p))
    save_file({k: v.float() for k, v in sd.items()}, str(p32))
    h, ref = load_model(engine, p), load_model(engine, p32)
    assert h.dtype == "float32"
    assert {prm.dtype for prm in h.transformer.parameters()} == {torch.bfloat16}
    views = {n for n, prm in h.transformer.named_parameters() if prm.untyped_storage().nbytes() == p.stat().st_size}
    assert set(dict(h.transformer.named_parameters())) - views == {"norm_out.linear.weight", "norm_out.linear.bias"}  # swapped halves
    assert torch.equal(h.transformer.x_embedder.weight.float(), sd["img_in.weight"].float())
    out = _run("flux", h.transformer, dtype=torch.float32)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, _run("flux", ref.transformer), rtol=1e-6, atol=1e-6)
    assert {prm.dtype for prm in h.transformer.parameters()} == {torch.bfloat16}  # restored after the forward


@pytest.mark.parametrize("merge", [False, True])
def test_bf16_file_on_a_float32_cpu_takes_a_lora(root, engine, tmp_path, merge):
    """A LoRA on the bf16-stored model (patched per forward, or merged once into bf16) gives the float32 model's output
    with the same LoRA (merged: to bf16 rounding of the merged weights)."""
    from safetensors.torch import load_file, save_file

    from spriteforge.lora import apply_loras
    from spriteforge.tests.test_lora_torch import _write

    src = tm.make_flux(root, layout="original", variant="schnell")
    sd = {k: v.to(torch.bfloat16) for k, v in load_file(str(src)).items()}
    p, p32 = tmp_path / "flux_bf16.safetensors", tmp_path / "flux_bf16_as_fp32.safetensors"
    save_file(sd, str(p))
    save_file({k: v.float() for k, v in sd.items()}, str(p32))
    h, ref = load_model(engine, p), load_model(engine, p32)
    lora, _, _ = _write(tmp_path, "kohya", "flux", ref.transformer)
    got = _run("flux", apply_loras(h, [(lora, 0.8)], merge=merge).transformer, dtype=torch.float32)
    want = _run("flux", apply_loras(ref, [(lora, 0.8)], merge=merge).transformer)
    torch.testing.assert_close(got, want, rtol=2e-2 if merge else 1e-5, atol=2e-2 if merge else 1e-5)


def test_fp8_weights_stay_fp8_and_upcast_per_layer(root, engine, tmp_path):
    from safetensors.torch import load_file, save_file

    src = tm.make_flux(root, layout="original", variant="schnell")
    sd = load_file(str(src))
    sd8 = {k: (v.to(torch.float8_e4m3fn) if v.dim() == 2 else v) for k, v in sd.items()}
    p = tmp_path / "flux_fp8.safetensors"
    save_file(sd8, str(p))
    h = load_model(engine, p)
    assert h.extras["fp8_storage"] == "float8_e4m3fn"
    assert h.transformer.x_embedder.weight.dtype == torch.float8_e4m3fn
    ref = tm.build_flux("schnell")
    with torch.no_grad():
        for n, prm in ref.named_parameters():
            if prm.dim() == 2:
                prm.copy_(prm.to(torch.float8_e4m3fn).float())
    torch.testing.assert_close(_run("flux", h.transformer), _run("flux", ref), rtol=1e-4, atol=1e-4)
    # a device that cannot hold fp8 tensors gets them upcast at load
    h = load_model(_stub_engine(kind="mps"), p)
    assert "fp8_storage" not in h.extras and h.transformer.x_embedder.weight.dtype == torch.float32


def test_same_dtype_cpu_load_is_zero_copy(root, engine):
    path = tm.make_dit(root, layout="original")
    h = load_model(engine, path)
    w = h.transformer.pos_embed.proj.weight
    # the parameter is a view of the memory-mapped file, not a copy
    assert w.untyped_storage().nbytes() == path.stat().st_size


def test_bf16_file_on_cpu_peak_memory_is_the_file_plus_one_layer(root, tmp_path, engine):
    """bf16 file, float32 compute on a CPU: loading it and running it once grows the peak RSS by at most 1.1x the file
    plus one transformer layer (block) in float32 (the file mapped, each layer cast for its forward), not by a float32
    copy of the model (2x the file)."""
    import re as _re

    clear = Path("/proc/self/clear_refs")
    if not clear.exists():
        pytest.skip("needs Linux /proc to reset the peak RSS")

    def status(field):
        return int(_re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024

    from diffusers import DiTTransformer2DModel
    from safetensors.torch import save_file

    with torch.device("meta"):  # DiT-XL width, 4 layers: ~80M parameters, a 160 MiB bf16 file
        shapes = {k: v.shape for k, v in DiTTransformer2DModel(num_layers=4, sample_size=32).state_dict().items()}
    big = tm.dit_to_original({k: torch.zeros(s, dtype=torch.bfloat16) for k, s in shapes.items()})
    big = {k: v.to(torch.bfloat16).contiguous() for k, v in big.items()}
    p = tmp_path / "dit_bf16.safetensors"
    save_file(big, str(p))
    del big
    size = p.stat().st_size
    load_model(engine, tm.make_dit(root, layout="original"))  # what a first load imports is not this load's memory
    try:
        clear.write_text("5")
    except OSError:
        pytest.skip("cannot reset the peak RSS here")
    base = status("VmRSS")
    h = load_model(engine, p)
    with torch.no_grad():
        h.transformer(torch.zeros(1, 4, 32, 32), timestep=torch.tensor([500]), class_labels=torch.tensor([3]))
    peak = status("VmHWM") - base
    layer = max(sum(prm.numel() * 4 for prm in b.parameters()) for b in h.transformer.transformer_blocks)
    assert next(h.transformer.parameters()).dtype == torch.bfloat16
    assert peak <= 1.1 * (size + layer), f"peak growth {peak / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB bf16 file"


# --------------------------------------------------------------------------- errors


def test_truncated_and_corrupt_files(root, engine, tmp_path):
    data = tm.make_dit(root, layout="original").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SpriteForgeError) as ei:
        load_model(engine, cut)
    assert ei.value.code == "BAD_INPUT" and "truncated" in ei.value.message
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\0" * 64)
    with pytest.raises(SpriteForgeError) as ei:
        load_model(engine, junk)
    assert ei.value.code == "BAD_INPUT"
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"abc")
    with pytest.raises(SpriteForgeError) as ei:
        load_model(engine, tiny)
    assert ei.value.code == "BAD_INPUT"


def test_pickles(root, engine, tmp_path):
    from safetensors.torch import load_file

    sd = load_file(str(tm.make_dit(root, layout="original")))
    ok = tmp_path / "DiT-tiny.pt"
    torch.save(sd, ok)
    h = load_model(engine, ok)
    assert h.family == "dit"
    ref = tm.build_dit()
    torch.testing.assert_close(_run("dit", h.transformer), _run("dit", ref), rtol=0, atol=1e-5)
    # PixArt .pth: under "state_dict"
    sd = load_file(str(tm.make_pixart(root, layout="original")))
    pth = tmp_path / "PixArt-tiny.pth"
    torch.save({"state_dict": sd, "epoch": 3}, pth)
    assert load_model(engine, pth).family == "pixart"
    # anything that is not plain tensors is refused, and never executed
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": sd, "obj": _Evil()}, bad)
    with pytest.raises(SpriteForgeError) as ei:
        load_model(engine, bad)
    assert ei.value.code == "BAD_INPUT" and "could run code from the file, so it was refused" in ei.value.message
    assert not (tmp_path / "pwned").exists()


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {Path(__file__).parent}/pwned",))


def test_shape_mismatch_and_unknown(root, engine, tmp_path):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(tm.make_pixart(root, layout="original")))
    sd["blocks.1.mlp.fc1.weight"] = torch.zeros(10, 144)
    p = tmp_path / "bad.safetensors"
    save_file(sd, str(p))
    with pytest.raises(SpriteForgeError) as ei:
        load_model(engine, p)
    assert ei.value.code == "UNSUPPORTED_ARCHITECTURE" and "blocks.1.ff.net.0.proj.weight" in ei.value.message.replace("transformer_blocks", "blocks")
    unk = tmp_path / "unknown.safetensors"
    save_file({"foo.bar.weight": torch.zeros(2, 2)}, str(unk))
    with pytest.raises(SpriteForgeError) as ei:
        load_model(engine, unk)
    assert ei.value.code == "UNSUPPORTED_ARCHITECTURE" and "foo" in ei.value.message
    with pytest.raises(SpriteForgeError) as ei:
        load_model(engine, tm.make_vae(root, 4))
    assert ei.value.code == "BAD_INPUT" and "VAE" in ei.value.message.upper()
