"""ComfyUI's per-layer quantized files (``comfy_quant`` / ``_quantization_metadata``, the legacy ``scaled_fp8``):
a tiny Flux in its original layout is quantized here the way ComfyUI / comfy-kitchen write each format, loaded
through ``load_model`` (the path a user's file takes), and must give the outputs of the same model with the
weights decoded (so the layout, the scales, the tiling and the row splits of the key map are all checked), with
the weights kept in their stored form."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_lora_util as U  # noqa: E402
import tiny_models as tm  # noqa: E402
from test_loading_tiny import _run  # noqa: E402

from spriteforge.engines.torch_models import quant  # noqa: E402
from spriteforge.engines.torch_models.loading import load_model  # noqa: E402
from spriteforge.errors import SpriteForgeError  # noqa: E402
from spriteforge.lora import LoRASpec, apply_loras  # noqa: E402
from spriteforge.models.detect import detect  # noqa: E402

E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])


# ------------------------------------------------------------------ writers: each format as ComfyUI stores it


def tiled(scales: torch.Tensor) -> torch.Tensor:
    """cuBLAS's block-scale layout as its documentation gives it: the [rows, blocks] matrix padded to 128 x 4 tiles;
    the scale of row r, block c lies at tile (r // 128, c // 4), offset (r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4."""
    rows, blocks = scales.shape
    rt, ct = -(-rows // 128), -(-blocks // 4)
    out = torch.zeros(rt * ct * 512, dtype=scales.dtype)
    for r in range(rows):
        for c in range(blocks):
            tile = (r // 128) * ct + c // 4
            out[tile * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4] = scales[r, c]
    return out.reshape(rt * 128, ct * 4)


def hadamard(n: int) -> torch.Tensor:
    h4 = torch.tensor([[1, 1, 1, -1], [1, 1, -1, 1], [1, -1, 1, 1], [-1, 1, 1, 1]], dtype=torch.float32)
    h = h4
    while h.shape[0] < n:
        h = torch.kron(h, h4)
    return h / math.sqrt(n)


def quantize(fmt: str, w: torch.Tensor):
    """``(stored tensors by suffix, the decoded weight)`` of ``w`` in ``fmt`` (comfy-kitchen's quantize maths)."""
    w = w.float()
    if fmt in ("float8_e4m3fn", "float8_e5m2", "scaled_fp8"):
        dt = torch.float8_e5m2 if fmt == "float8_e5m2" else torch.float8_e4m3fn
        scale = w.abs().max() / torch.finfo(dt).max
        q = (w / scale).clamp(torch.finfo(dt).min, torch.finfo(dt).max).to(dt)
        suffix = ".scale_weight" if fmt == "scaled_fp8" else ".weight_scale"
        return {"": q, suffix: scale.reshape(())}, q.float() * scale
    if fmt in ("int8", "int8_rows", "int8_convrot"):
        g = 16
        src = (w.reshape(w.shape[0], -1, g) @ hadamard(g).T).reshape(w.shape) if fmt == "int8_convrot" else w
        scale = src.abs().amax(1, keepdim=True) / 127 if fmt != "int8" else (src.abs().max() / 127).reshape(())
        q = (src / scale).round().clamp(-128, 127).to(torch.int8)
        dq = q.float() * scale
        if fmt == "int8_convrot":
            dq = (dq.reshape(w.shape[0], -1, g) @ hadamard(g)).reshape(w.shape)
        return {"": q, ".weight_scale": scale.reshape(-1) if fmt != "int8" else scale}, dq
    if fmt == "mxfp8":
        blocks = w.reshape(w.shape[0], -1, 32)
        e = torch.ceil(torch.log2((blocks.abs().amax(-1) / 448).clamp(min=2 ** -127))).to(torch.int32) + 127
        s = torch.pow(2.0, (e - 127).float())
        q = (blocks / s.unsqueeze(-1)).clamp(-448, 448).reshape(w.shape).to(torch.float8_e4m3fn)
        dq = (q.float().reshape(blocks.shape) * s.unsqueeze(-1)).reshape(w.shape)
        return {"": q, ".weight_scale": tiled(e.to(torch.uint8)).view(torch.float8_e8m0fnu)}, dq
    if fmt == "nvfp4":
        s2 = w.abs().max() / (448 * 6)
        blocks = w.reshape(w.shape[0], -1, 16)
        bs = (blocks.abs().amax(-1) / 6 / s2).clamp(max=448).to(torch.float8_e4m3fn)
        total = bs.float() * s2
        codes = (blocks / total.unsqueeze(-1)).unsqueeze(-1).sub(E2M1).abs().argmin(-1).reshape(w.shape[0], -1)
        packed = (codes[:, 0::2] << 4 | codes[:, 1::2]).to(torch.uint8)
        dq = (E2M1[codes].reshape(blocks.shape) * total.unsqueeze(-1)).reshape(w.shape)
        return {"": packed, ".weight_scale": tiled(bs.view(torch.uint8)).view(torch.float8_e4m3fn),
                ".weight_scale_2": s2.reshape(())}, dq
    raise ValueError(fmt)


COMFY_JSON = {"float8_e4m3fn": {"format": "float8_e4m3fn"}, "float8_e5m2": {"format": "float8_e5m2"},
              "int8": {"format": "int8_tensorwise"}, "int8_rows": {"format": "int8_tensorwise", "per_row": True},
              "int8_convrot": {"format": "int8_tensorwise", "convrot": True, "convrot_groupsize": 16, "per_row": True},
              "mxfp8": {"format": "mxfp8"}, "nvfp4": {"format": "nvfp4"}}


def _fits(fmt, w) -> bool:
    block = {"mxfp8": 32, "nvfp4": 16, "int8_convrot": 16}.get(fmt, 1)
    return w.dim() == 2 and w.shape[1] % block == 0 and w.shape[0] % block == 0 and w.shape[0] >= 16


def write_quantized(src: Path, dst: Path, fmt: str, *, metadata: bool = False, prefix: str = "") -> Path:
    """``src``'s 2-D weights quantized as ComfyUI writes ``fmt`` (markers as ``comfy_quant`` tensors, or in
    ``_quantization_metadata`` with ``metadata``); also writes ``<dst>.decoded.safetensors``: the same model with
    the decoded weights (the reference)."""
    sd = load_file(str(src))
    out, ref, layers = {}, {}, {}
    for k, v in sd.items():
        if k.endswith(".weight") and _fits(fmt, v):
            layer = prefix + k[: -len(".weight")]
            stored, dq = quantize(fmt, v)
            for suffix, t in stored.items():
                out[layer + (".weight" if suffix == "" else suffix)] = t.contiguous()
            if fmt == "scaled_fp8":
                pass
            elif metadata:
                layers[layer] = COMFY_JSON[fmt]
            else:
                out[layer + ".comfy_quant"] = torch.tensor(list(json.dumps(COMFY_JSON[fmt]).encode()), dtype=torch.uint8)
            ref[k] = dq
        else:
            out[prefix + k] = v
            ref[k] = v
    if fmt == "scaled_fp8":
        out[prefix + "scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    meta = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})} if metadata else None
    save_file(out, str(dst), metadata=meta)
    save_file({k: v.contiguous() for k, v in ref.items()}, str(dst.with_suffix(".decoded.safetensors")))
    return dst


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    return root, tm.make_flux(root, layout="original", variant="dev")


@pytest.fixture(scope="module")
def engine():
    from spriteforge.engines import get_engine

    return get_engine("torch", "cpu")


FORMATS = [("float8_e4m3fn", False, "fp8_e4m3fn_scaled", torch.float8_e4m3fn),
           ("float8_e5m2", True, "fp8_e5m2_scaled", torch.float8_e5m2),
           ("scaled_fp8", False, "fp8_e4m3fn_scaled", torch.float8_e4m3fn),
           ("int8", True, "int8_tensorwise", torch.int8),
           ("int8_rows", False, "int8_tensorwise", torch.int8),
           ("int8_convrot", False, "int8_convrot", torch.int8),
           ("mxfp8", True, "mxfp8", torch.float8_e4m3fn),
           ("nvfp4", False, "nvfp4", torch.uint8)]


@pytest.mark.parametrize("fmt,metadata,name,stored", FORMATS, ids=[f[0] for f in FORMATS])
def test_comfy_formats_load_stored_and_compute_exactly(flux, engine, fmt, metadata, name, stored):
    root, src = flux
    p = write_quantized(src, root / f"flux-{fmt}.safetensors", fmt, metadata=metadata)
    det = detect(p)
    assert (det.family, det.variant, det.dtype) == ("flux", "dev", name)  # inspect names family, variant, format
    h = load_model(engine, p)
    layers = [m for m in h.transformer.modules() if isinstance(m, quant.QuantLinear)]
    assert len(layers) >= 10 and {m.qweight.fmt for m in layers} == {name}
    assert {m.qweight.data.dtype for m in layers} == {stored}  # kept as the file stores it
    ref = load_model(engine, p.with_suffix(".decoded.safetensors"))
    torch.testing.assert_close(_run("flux", h.transformer, "dev"), _run("flux", ref.transformer, "dev"), rtol=1e-5, atol=1e-5)
    # close to the unquantized model too (a wrong tiling or nibble order would not be)
    orig = _run("flux", tm.build_flux("dev"), "dev")
    err = (_run("flux", h.transformer, "dev") - orig).abs().mean() / orig.abs().mean()
    assert err < {"nvfp4": 0.5, "float8_e5m2": 0.3}.get(fmt, 0.15)


def test_prefixed_scaled_fp8_checkpoint(flux, engine, tmp_path):
    """ComfyUI's own fp8 checkpoints: every key under ``model.diffusion_model.`` and the marker there too."""
    _, src = flux
    p = write_quantized(src, tmp_path / "ckpt.safetensors", "scaled_fp8", prefix="model.diffusion_model.")
    assert "model.diffusion_model.scaled_fp8" in load_file(str(p))
    h = load_model(engine, p)
    assert {m.qweight.fmt for m in h.transformer.modules() if isinstance(m, quant.QuantLinear)} == {"fp8_e4m3fn_scaled"}
    ref = load_model(engine, p.with_suffix(".decoded.safetensors"))
    torch.testing.assert_close(_run("flux", h.transformer, "dev"), _run("flux", ref.transformer, "dev"), rtol=1e-5, atol=1e-5)


def test_unsupported_comfy_format_refused(flux, engine, tmp_path):
    _, src = flux
    p = write_quantized(src, tmp_path / "w4.safetensors", "int8_rows")
    sd = load_file(str(p))
    marker = json.dumps({"format": "convrot_w4a4", "convrot_groupsize": 256, "quant_group_size": 64}).encode()
    key = next(k for k in sd if k.endswith(".comfy_quant"))
    sd[key] = torch.tensor(list(marker), dtype=torch.uint8)
    save_file(sd, str(p))
    with pytest.raises(SpriteForgeError) as e:
        load_model(engine, p)
    assert e.value.code == "UNSUPPORTED_ARCHITECTURE" and "convrot_w4a4" in str(e.value)


def test_quantized_memory_follows_the_file(flux, engine):
    root, src = flux
    p = write_quantized(src, root / "flux-mem.safetensors", "float8_e4m3fn")
    h = load_model(engine, p)
    stored = quant.stored_bytes(h.transformer)
    full = sum(m.out_features * m.in_features * 4 for m in h.transformer.modules() if isinstance(m, quant.QuantLinear))
    assert stored < full / 3.5  # one byte a weight (plus one scale a layer) instead of four
    # the stored weights are views of the file's mapping: no copy was made
    layer = next(m for m in h.transformer.modules() if isinstance(m, quant.QuantLinear))
    assert layer.qweight.data.untyped_storage().nbytes() == p.stat().st_size


def test_row_splits_stay_stored():
    """Fused q/k/v split by the key maps and shift/scale halves swapped by diffusers' converters stay stored
    (per-tensor scales that differ become per-row scales on a concatenation)."""
    w = torch.randn(96, 32)
    stored, dq = quantize("float8_e4m3fn", w)
    q = quant.QTensor("fp8_e4m3fn_scaled", stored[""], w.shape, scale=stored[".weight_scale"])
    a, b, c = torch.chunk(q, 3, dim=0)
    assert isinstance(a, quant.QTensor) and a.shape == (32, 32)
    torch.testing.assert_close(b.dequantize(), dq[32:64])
    swapped = torch.cat([c, a], dim=0)
    assert isinstance(swapped, quant.QTensor)
    torch.testing.assert_close(swapped.dequantize(), torch.cat([dq[64:], dq[:32]]))
    other_stored, other = quantize("float8_e4m3fn", w * 3)
    mixed = torch.cat([a, quant.QTensor("fp8_e4m3fn_scaled", other_stored[""], w.shape, scale=other_stored[".weight_scale"])])
    assert isinstance(mixed, quant.QTensor) and mixed.scale.shape == (128, 1)
    torch.testing.assert_close(mixed.dequantize(), torch.cat([dq[:32], other]))


def lora_file(tmp_path, model):
    w = U.Writer(3)
    shapes = {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for layer in ("transformer_blocks.0.attn.to_q", "transformer_blocks.0.ff.net.2", "single_transformer_blocks.0.proj_out"):
        w.lora("diffusers", layer, shapes[layer], rank=4, alpha=2.0)
    return w.save(tmp_path / "lora.safetensors")


@pytest.mark.parametrize("kind", ["gguf", "nvfp4"])
def test_lora_on_quantized_torch_model(flux, engine, kind, tmp_path):
    """A LoRA on a quantized model: the outputs of the same LoRA on the decoded model (lazy and merged); the stored
    weights never change."""
    from gguf import GGMLQuantizationType

    import test_gguf as G

    root, src = flux
    if kind == "gguf":
        p = G.write_gguf(load_file(str(src)), root / "lora-base.gguf", GGMLQuantizationType.Q4_0)
    else:
        p = write_quantized(src, root / "lora-base.safetensors", "nvfp4")
    h = load_model(engine, p)
    ref = load_model(engine, p.with_suffix(".decoded.safetensors"))
    lora = lora_file(tmp_path, ref.transformer)
    layer = h.transformer.transformer_blocks[0].attn.to_q
    stored = layer.qweight.data.clone()
    for merge in (False, True):
        hl, rl = apply_loras(h, [LoRASpec(lora, 0.8)], merge=merge), apply_loras(ref, [LoRASpec(lora, 0.8)], merge=merge)
        assert hl.loras[-1].matched == 3
        torch.testing.assert_close(_run("flux", hl.transformer, "dev"), _run("flux", rl.transformer, "dev"), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(_run("flux", hl.transformer, "dev"), _run("flux", h.transformer, "dev"))
    assert isinstance(h.transformer.transformer_blocks[0].attn.to_q, quant.QuantLinear)
    assert torch.equal(layer.qweight.data, stored)  # the base is untouched


FAMILIES = [("pixart", "sigma"), ("sd3", "sd3.5-medium"), ("sana", ""), ("dit", "")]


@pytest.mark.parametrize("family,variant", FAMILIES, ids=[f[0] for f in FAMILIES])
@pytest.mark.parametrize("kind", ["int8_rows", "gguf"])
def test_every_family_quantized(tmp_path, engine, family, variant, kind):
    """The other families' original layouts (their key maps, and diffusers' converters with their chunks and
    concatenations) quantized as ComfyUI and as GGUF: the outputs of the decoded model, the weights stored."""
    from gguf import GGMLQuantizationType

    import test_gguf as G

    kw = {"variant": variant} if variant else {}
    src = getattr(tm, f"make_{family}")(tmp_path, layout="original", **kw)
    if kind == "gguf":
        p = G.write_gguf(load_file(str(src)), tmp_path / f"{family}.gguf", GGMLQuantizationType.Q8_0, arch=family)
    else:
        p = write_quantized(src, tmp_path / f"{family}-q.safetensors", kind)
    h = load_model(engine, p)
    assert h.family == family and sum(isinstance(m, quant.QuantLinear) for m in h.transformer.modules()) >= 4
    ref = load_model(engine, p.with_suffix(".decoded.safetensors"))
    torch.testing.assert_close(_run(family, h.transformer, variant), _run(family, ref.transformer, variant), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt,name", [("mxfp8", "mxfp8"), ("nvfp4", "nvfp4"), ("int8_convrot", "int8_convrot")])
def test_block_formats_split_and_join_by_rows(fmt, name):
    """Row splits and joins of the block-scaled formats keep each row's scales (what the key maps do to fused
    q/k/v and to swapped modulation halves), without decoding."""
    w = torch.randn(192, 64)
    stored, dq = quantize(fmt, w)
    from spriteforge.models.safetensors_header import QuantInfo

    info = QuantInfo(name, None, tuple(w.shape), {"scale": "s", "scale_2": "s2"}, {"convrot_groupsize": 16})
    tensors = {"w": stored[""], "s": stored[".weight_scale"], "s2": stored.get(".weight_scale_2")}
    q = quant.load(info, lambda k: tensors[k], "w", torch.device("cpu"), torch.float32)
    a, b, c = torch.chunk(q, 3, dim=0)
    joined = torch.cat([c, a, b], dim=0)
    assert isinstance(joined, quant.QTensor) and joined.data.dtype == stored[""].dtype
    torch.testing.assert_close(joined.dequantize(), torch.cat([dq[128:], dq[:128]]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["int8_rows", "nvfp4", "mxfp8", "gguf-Q4_K", "gguf-Q5_1"])
def test_layers_decode_and_multiply_slab_by_slab(flux, engine, kind, monkeypatch):
    """A quantized layer's forward decodes its weight a slab of output rows at a time and multiplies each slab into
    its columns of the result (it never holds the whole decoded weight): with 8-row slabs (every tiny layer split),
    the outputs of the decoded model, and no layer decoded whole while the model runs."""
    from gguf import GGMLQuantizationType

    import test_gguf as G

    root, src = flux
    if kind.startswith("gguf"):
        qt = getattr(GGMLQuantizationType, kind.split("-")[1])
        p = root / f"slabs-{qt.name}.gguf"
        if not p.exists():
            G.write_gguf(load_file(str(src)), p, qt)
    else:
        p = write_quantized(src, root / f"slabs-{kind}.safetensors", kind)
    monkeypatch.setattr(quant, "DECODE_BYTES", 64)  # decode_rows: MIN_ROWS (8) rows a slab
    h = load_model(engine, p)
    ref = load_model(engine, p.with_suffix(".decoded.safetensors"))
    layers = [m for m in h.transformer.modules() if isinstance(m, quant.QuantLinear)]
    assert layers and all(m.qweight.slab_rows() == 8 for m in layers if m.out_features > 8)
    whole = []
    real = quant.QTensor.dequantize
    monkeypatch.setattr(quant.QTensor, "dequantize", lambda self, *a, **k: whole.append(self.shape) or real(self, *a, **k))
    got = _run("flux", h.transformer, "dev")
    assert not [s for s in whole if s[0] > 8], whole[:3]
    torch.testing.assert_close(got, _run("flux", ref.transformer, "dev"), rtol=1e-5, atol=1e-5)
