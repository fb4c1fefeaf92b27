"""GGUF files (city96's ComfyUI-GGUF layout: the original checkpoint's names, dims reversed, blocks per row)
written with the gguf package, read by ``inspect``/detection from the header alone and loaded through
``load_model`` / ``load_text_encoder``: the outputs equal those of the same model with the weights decoded by
the gguf package, and the weights stay stored.

Types the gguf package can quantize (Q8_0, Q5_0, Q5_1, Q4_0, Q4_1, F16, BF16) are quantized from the model's
weights. The K and IQ types (Q6_K, Q5_K, Q4_K, Q3_K, Q2_K, IQ4_NL, IQ4_XS) it can only decode: their layers get
blocks of seeded random bytes with the block's fp16 scales set to small finite values, which the gguf package
decodes like any block; they run end to end through the same Flux layout (on its 256-wide layers)."""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf import quants
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_models as tm  # noqa: E402
from test_loading_tiny import _run  # noqa: E402

from spriteforge.engines.torch_models import quant  # noqa: E402
from spriteforge.engines.torch_models.loading import load_model, load_text_encoder  # noqa: E402
from spriteforge.errors import SpriteForgeError  # noqa: E402
from spriteforge.models.detect import detect  # noqa: E402

QUANTIZABLE = (T.Q8_0, T.Q5_0, T.Q5_1, T.Q4_0, T.Q4_1)
# byte offsets of the fp16 scale fields in a block of each decode-only type (llama.cpp's block structs)
F16_FIELDS = {T.Q6_K: (208,), T.Q5_K: (0, 2), T.Q4_K: (0, 2), T.Q3_K: (108,), T.Q2_K: (80, 82),
              T.IQ4_NL: (0,), T.IQ4_XS: (0,)}


def blocks(qtype, rows: int, cols: int, seed: int) -> np.ndarray:
    """Stored rows of ``qtype`` blocks: seeded random bytes, each fp16 scale field set to a small finite value."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        raw[..., off:off + 2] = (rng.uniform(0.002, 0.01, size=(rows, cols // block)).astype(np.float16)
                                 .view(np.uint8).reshape(rows, cols // block, 2))
    return raw.reshape(rows, -1)


def stored_for(qtype, key: str, a: np.ndarray):
    """``(stored array, its gguf type)`` of one tensor of a ``qtype`` file (others as city96 keeps them: F32)."""
    block = gguf.GGML_QUANT_SIZES[qtype][0] if qtype not in (T.F16, T.BF16) else 1
    if not (key.endswith(".weight") and a.ndim == 2 and a.shape[1] % block == 0):
        return a.astype(np.float32), T.F32
    if qtype in F16_FIELDS:
        return blocks(qtype, a.shape[0], a.shape[1], seed=zlib.crc32(key.encode())), qtype
    return quants.quantize(a, qtype), qtype


def write_gguf(sd: dict, path: Path, qtype, arch: str = "flux", rename=lambda k: k) -> Path:
    """``sd`` as a GGUF file of ``qtype`` and beside it ``<path>.decoded.safetensors``: the gguf package's decoding."""
    w = gguf.GGUFWriter(str(path), arch)
    decoded = {}
    for k, v in sd.items():
        data, t = stored_for(qtype, k, v.float().numpy())
        w.add_tensor(rename(k), data, raw_dtype=t if t not in (T.F32,) else None)
        decoded[k] = torch.from_numpy(quants.dequantize(data, t).copy()).reshape(v.shape) if t != T.F32 else v.float()
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file({k: v.contiguous() for k, v in decoded.items()}, str(path.with_suffix(".decoded.safetensors")))
    return path


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    return root, load_file(str(tm.make_flux(root, layout="original", variant="dev")))


@pytest.fixture(scope="module")
def engine():
    from spriteforge.engines import get_engine

    return get_engine("torch", "cpu")


TYPES = [T.F16, T.BF16, *QUANTIZABLE, *F16_FIELDS]


@pytest.mark.parametrize("qtype", TYPES, ids=[t.name for t in TYPES])
def test_gguf_flux_loads_stored_and_computes_like_the_decoded_model(flux, engine, qtype):
    root, sd = flux
    p = write_gguf(sd, root / f"flux-{qtype.name}.gguf", qtype)
    det = detect(p)  # inspect's path: the header alone
    assert (det.family, det.variant, det.layout) == ("flux", "dev", "original")
    h = load_model(engine, p)
    layers = [m for m in h.transformer.modules() if isinstance(m, quant.QuantLinear)]
    if qtype in (T.F16, T.BF16):
        assert not layers and det.dtype == {T.F16: "float16", T.BF16: "bfloat16"}[qtype]
    else:
        assert det.dtype == qtype.name.lower() or qtype in F16_FIELDS  # K types cover the 256-wide layers only
        assert layers and {m.qweight.fmt for m in layers} == {qtype.name.lower()}
        assert all(m.qweight.data.dtype == torch.uint8 for m in layers)
    ref = load_model(engine, p.with_suffix(".decoded.safetensors"))
    # inputs in the compute dtype (float32 here): an F16/BF16 file's weights stay stored as such, upcast per layer
    f32 = torch.float32
    torch.testing.assert_close(_run("flux", h.transformer, "dev", f32), _run("flux", ref.transformer, "dev", f32), rtol=1e-5, atol=1e-5)
    if qtype in QUANTIZABLE:  # and close to the unquantized model
        orig = _run("flux", tm.build_flux("dev"), "dev")
        assert ((_run("flux", h.transformer, "dev") - orig).abs().mean() / orig.abs().mean()) < 0.25


def test_t5_gguf_with_llama_cpp_names(tmp_path, engine):
    """city96's T5 encoder GGUFs carry llama.cpp's tensor names: they map to the release's names."""
    src = tm.make_t5(tmp_path)
    sd = load_file(str(src))
    sd.pop("encoder.embed_tokens.weight")
    names = {v: k for k, v in _t5_names(sd).items()}
    p = write_gguf(sd, tmp_path / "t5xxl-q8_0.gguf", T.Q8_0, arch="t5encoder", rename=lambda k: names[k])
    det = detect(p)
    assert det.kind == "text_encoder" and det.variant == "t5" and det.dtype == "q8_0"
    key, model, tok = load_text_encoder(engine, p)
    assert key == "t5" and isinstance(model.encoder.block[0].layer[0].SelfAttention.q, quant.QuantLinear)
    _, ref, _ = load_text_encoder(engine, p.with_suffix(".decoded.safetensors"))
    ids = tok(["pixel art knight"], return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).last_hidden_state, ref(ids).last_hidden_state, rtol=1e-5, atol=1e-5)


def _t5_names(sd):
    """``{llama.cpp name: release name}`` of a T5 encoder's tensors (the inverse of the loader's renaming)."""
    import re

    from spriteforge.models.gguf import LLAMA_CPP_T5, _renamer

    rename = _renamer("t5")
    out = {}
    for k in sd:
        for a, b in LLAMA_CPP_T5:
            m = re.match("^" + re.escape(b).replace(r"\{\}", r"(\d+)") + "$", k)
            if m:
                out[a.format(*m.groups())] = k
    assert all(rename(a) == b for a, b in out.items())
    return out


def test_gguf_unsupported_type_and_damaged_file(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "tq.gguf"), "flux")
    w.add_tensor("x.weight", np.zeros((4, 54), np.uint8), raw_dtype=T.TQ1_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(SpriteForgeError) as e:
        detect(tmp_path / "tq.gguf")
    assert e.value.code == "UNSUPPORTED_ARCHITECTURE" and "TQ1_0" in str(e.value)
    (tmp_path / "cut.gguf").write_bytes((tmp_path / "tq.gguf").read_bytes()[:40])
    with pytest.raises(SpriteForgeError) as e:
        detect(tmp_path / "cut.gguf")
    assert e.value.code == "BAD_INPUT"


def test_inspect_names_family_variant_and_quantization(flux, capsys):
    """``spriteforge inspect --json`` on a GGUF and on a ComfyUI-quantized file: from the header alone."""
    import json

    import test_quant as Q

    from spriteforge.cli.main import main

    root, sd = flux
    for p, want in ((write_gguf(sd, root / "inspect.gguf", T.Q4_1), "q4_1"),
                    (Q.write_quantized(root / "flux-dev-original.safetensors", root / "inspect.safetensors", "mxfp8"), "mxfp8")):
        assert main(["inspect", "--json", str(p)]) == 0
        info = json.loads(capsys.readouterr().out)
        assert (info["family"], info["variant"], info["kind"], info["dtype"]) == ("flux", "dev", "transformer", want)
