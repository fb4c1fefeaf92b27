"""GGUF files read without a framework: the tensor table and metadata, through the ``gguf`` package.

A GGUF file (llama.cpp's format, city96's ComfyUI-GGUF files) holds key/value metadata, a tensor table
(name, GGML type, dims, offset) and the tensor data, quantized per block of a row. Its tensor names are
the ones of the safetensors file it was made from (city96 keeps the original layout's names), so the
:class:`~.safetensors_header.Header` made here goes through the same detection and key maps.

Two things differ from safetensors and are undone here:

* dims are stored fastest-first (``ne[0]`` is the last torch dim): the shapes are reversed;
* ComfyUI-GGUF's converter stores some tensors flattened to rows of 256 (``comfy.gguf.orig_shape.<name>``
  holds the real shape): the real shape is the tensor's shape here.

Each :class:`~.safetensors_header.TensorInfo` has ``dtype`` ``float32``/``float16``/``bfloat16`` for the
plain types and the lower-case GGML type name (``q4_k``, ``iq4_xs``...) for the quantized ones, and
``offsets`` absolute in the file. The block formats themselves are the ``gguf`` package's
(``gguf.quants.dequantize``); nothing here decodes a block.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import BAD_INPUT, UNSUPPORTED_ARCHITECTURE, SpriteForgeError

MAGIC = b"GGUF"
# GGML types that are plain floats: their canonical dtype names
PLAIN = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
# the quantized types SpriteForge computes with (dequantized by the gguf package); any other is refused by name
SUPPORTED = ("Q8_0", "Q6_K", "Q5_K", "Q5_0", "Q5_1", "Q4_K", "Q4_0", "Q4_1", "IQ4_NL", "IQ4_XS",
             "Q3_K", "Q2_K")
QUANT_DTYPES = frozenset(t.lower() for t in SUPPORTED)


# llama.cpp's tensor names of a T5 encoder (city96's t5-v1_1-xxl-encoder GGUFs are written by llama.cpp's converter)
# -> the transformers names the safetensors release uses; ``{}`` is the block number
LLAMA_CPP_T5 = (
    ("token_embd.weight", "shared.weight"),
    ("enc.output_norm.weight", "encoder.final_layer_norm.weight"),
    ("enc.blk.{}.attn_q.weight", "encoder.block.{}.layer.0.SelfAttention.q.weight"),
    ("enc.blk.{}.attn_k.weight", "encoder.block.{}.layer.0.SelfAttention.k.weight"),
    ("enc.blk.{}.attn_v.weight", "encoder.block.{}.layer.0.SelfAttention.v.weight"),
    ("enc.blk.{}.attn_o.weight", "encoder.block.{}.layer.0.SelfAttention.o.weight"),
    ("enc.blk.{}.attn_rel_b.weight", "encoder.block.{}.layer.0.SelfAttention.relative_attention_bias.weight"),
    ("enc.blk.{}.attn_norm.weight", "encoder.block.{}.layer.0.layer_norm.weight"),
    ("enc.blk.{}.ffn_gate.weight", "encoder.block.{}.layer.1.DenseReluDense.wi_0.weight"),
    ("enc.blk.{}.ffn_up.weight", "encoder.block.{}.layer.1.DenseReluDense.wi_1.weight"),
    ("enc.blk.{}.ffn_down.weight", "encoder.block.{}.layer.1.DenseReluDense.wo.weight"),
    ("enc.blk.{}.ffn_norm.weight", "encoder.block.{}.layer.1.layer_norm.weight"),
)


def _llama_cpp_decoder(pre: str) -> tuple:
    """llama.cpp's tensor names of a Qwen-style decoder LM (``gguf.constants.TENSOR_NAMES``: qwen2, qwen2vl, qwen3,
    qwen3vl) -> the transformers ``...ForCausalLM`` names of its safetensors release, its layers under ``pre``.
    llama.cpp's converter permutes q/k rows only for its llama architecture (``LlamaModel.permute``); its Qwen2 and
    Qwen3 models (and Qwen2-VL's text model) write the rows as they are, so nothing is un-permuted here. Biases:
    Qwen2/2.5's q/k/v; norms: Qwen3's per-head q/k."""
    layer = f"{pre}layers.{{}}."
    rows = [("token_embd.weight", f"{pre}embed_tokens.weight"), ("output_norm.weight", f"{pre}norm.weight"),
            ("output.weight", "lm_head.weight")]
    for a, b in (("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"), ("attn_v", "self_attn.v_proj"),
                 ("attn_output", "self_attn.o_proj"), ("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"),
                 ("ffn_down", "mlp.down_proj")):
        rows += [(f"blk.{{}}.{a}.{s}", f"{layer}{b}.{s}") for s in ("weight", "bias")]
    for a, b in (("attn_q_norm", "self_attn.q_norm"), ("attn_k_norm", "self_attn.k_norm"),
                 ("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm")):
        rows.append((f"blk.{{}}.{a}.weight", f"{layer}{b}.weight"))
    return tuple(rows)


# a Qwen3 / Qwen2.5-VL language model as its release names it (``model.layers.*``); Qwen3-VL's language model under
# ``model.language_model.`` (as its release), which is what tells it from a plain Qwen3 of the same width
LLAMA_CPP_QWEN = _llama_cpp_decoder("model.")
LLAMA_CPP_QWEN3_VL = _llama_cpp_decoder("model.language_model.")
# ``general.architecture`` -> its names. Qwen2.5-VL's text model is written as ``qwen2vl`` (llama.cpp's Qwen2VLModel
# serves Qwen2-VL and Qwen2.5-VL); a plain ``qwen2`` file is Qwen2.5's text-only LM, whose weights are not the VL's
# language model: it is left unmapped and so not recognised.
LLAMA_CPP_NAMES = {"t5": LLAMA_CPP_T5, "t5encoder": LLAMA_CPP_T5, "qwen3": LLAMA_CPP_QWEN, "qwen2vl": LLAMA_CPP_QWEN,
                   "qwen3vl": LLAMA_CPP_QWEN3_VL}


def _renamer(arch: str):
    """A function renaming llama.cpp's tensor names of ``arch`` to the safetensors release's (identity otherwise)."""
    import re

    rules = [(re.compile("^" + re.escape(a).replace(r"\{\}", r"(\d+)") + "$"), b) for a, b in LLAMA_CPP_NAMES.get(arch, ())]

    def rename(name: str) -> str:
        for rx, target in rules:
            m = rx.match(name)
            if m:
                return target.format(*m.groups())
        return name

    return rename


def is_gguf(head: bytes) -> bool:
    return head[:4] == MAGIC


def _gguf():
    try:
        import gguf
    except ImportError:  # pragma: no cover - a dependency of the pack
        raise SpriteForgeError(BAD_INPUT, "reading a GGUF file needs the gguf package. Install SpriteForge's "
                               "requirements (pip install gguf).") from None
    return gguf


def _field_value(field):
    try:
        value = field.contents()
    except Exception:  # noqa: BLE001 - a field the reader cannot turn into a value
        return None
    return value


def read_gguf(path: str | os.PathLike):
    """The tensor table of the GGUF file ``path``: ``(entries, metadata, file size)``, an entry being ``(name, dtype,
    shape, (begin, end), stored shape)`` (shapes in torch order, the ``comfy.gguf.orig_shape`` ones restored; the
    stored shape of a quantized tensor's ``uint8`` block rows, None for a plain one), metadata as strings.
    :func:`~.safetensors_header.read_header` makes it a ``Header``. BAD_INPUT for a damaged file,
    UNSUPPORTED_ARCHITECTURE naming a quantization type SpriteForge does not compute."""
    gguf = _gguf()
    p = Path(path)
    try:
        reader = gguf.GGUFReader(p)
    except Exception as exc:  # noqa: BLE001 - any parse failure of a damaged/truncated file
        raise SpriteForgeError(BAD_INPUT, f"{p.name} is a GGUF file that cannot be read ({exc.__class__.__name__}: "
                               f"{str(exc)[:120]}): it is damaged or incomplete. Download it again.",
                               details={"path": str(p), "format": "a GGUF file"}) from None
    if not reader.tensors:
        raise SpriteForgeError(BAD_INPUT, f"{p.name} is a GGUF file that cannot be read (it lists no tensors): it is "
                               "damaged or incomplete. Download it again.", details={"path": str(p), "format": "a GGUF file"})
    meta = {}
    orig = {}
    for key, field in reader.fields.items():
        value = _field_value(field)
        if key.startswith("comfy.gguf.orig_shape."):
            orig[key[len("comfy.gguf.orig_shape."):]] = tuple(int(v) for v in value)
        elif not key.startswith("GGUF.") and not isinstance(value, list):
            meta[key] = str(value)
    entries = []
    size = p.stat().st_size
    arch = meta.get("general.architecture", "")
    if arch == "qwen2":
        raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"{p.name} is a Qwen2/Qwen2.5 language model (GGUF architecture "
                               "'qwen2'), which no model SpriteForge runs uses: Qwen-Image's text encoder is Qwen2.5-VL-7B's "
                               "language model (a GGUF of architecture 'qwen2vl', e.g. Qwen2.5-VL-7B-Instruct-Q4_K_M.gguf). "
                               "Use that file.", details={"path": str(p), "architecture": arch})
    rename = _renamer(arch)
    for t in reader.tensors:
        qname = t.tensor_type.name
        if qname not in PLAIN and qname not in SUPPORTED:
            raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"{p.name}: tensor {t.name!r} is quantized as {qname}, which "
                                   f"SpriteForge does not compute. Use a file quantized as one of "
                                   f"{', '.join(SUPPORTED)} (or F16/BF16).", details={"path": str(p), "type": qname})
        shape = orig.get(t.name) or tuple(int(d) for d in reversed(t.shape.tolist()))
        begin = int(t.data_offset)
        end = begin + int(t.n_bytes)
        if end > size:
            raise SpriteForgeError(BAD_INPUT, f"{p.name}: tensor {t.name!r} reaches past the end of the file (truncated "
                                   "download?). Download it again.", details={"path": str(p)})
        stored = None if qname in PLAIN else tuple(int(d) for d in t.data.shape)
        entries.append((rename(t.name), PLAIN.get(qname, qname.lower()), shape, (begin, end), stored))
    return entries, meta, size
