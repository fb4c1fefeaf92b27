"""GGUF text encoders beyond T5: the decoder LMs Z-Image, FLUX.2 [klein], Qwen-Image and Krea 2 read (Qwen3-4B/8B,
Qwen2.5-VL-7B's language model, Qwen3-VL-4B's) as llama.cpp writes them: ``general.architecture`` ``qwen3`` /
``qwen2vl`` / ``qwen3vl``, llama.cpp's tensor names (``token_embd``, ``blk.N.attn_q``..., taken here from the gguf
package's own ``TensorNameMap``, not from our map), norms and biases in F32, q/k rows as the release stores them
(llama.cpp's converter permutes them for its llama architecture only), and the vision tower left out (an mmproj file).

Each tiny real-class LM is written as GGUF and loaded through the user's path (``load_text_encoder`` on both engines,
the tokenizer found beside the file); ``inspect``'s detection names it from the header alone. Its hidden states
(``TextEncoding.decoder``) equal those of its safetensors twin holding the gguf package's decoding of the same
weights, exactly (the same weights; on torch they stay stored and are decoded per layer). A tiny Z-Image generates
with a GGUF Qwen3 the picture its twin gives, on both engines."""

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
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_gguf as G  # noqa: E402

from spriteforge.engines import get_engine  # noqa: E402
from spriteforge.engines.base import ModelHandle  # noqa: E402
from spriteforge.engines.torch_models import quant  # noqa: E402
from spriteforge.errors import SpriteForgeError  # noqa: E402
from spriteforge.models.detect import detect  # noqa: E402
from spriteforge.tests import tiny_qwen as tq  # noqa: E402

mx = pytest.importorskip("mlx.core")

# our key -> (gguf architecture, family reading it, transformers' prefix of the language model in the release file)
KINDS = {"qwen3_4b": (gguf.MODEL_ARCH.QWEN3, "zimage", "model."), "qwen3_8b": (gguf.MODEL_ARCH.QWEN3, "flux2", "model."),
         "qwen25_7b": (gguf.MODEL_ARCH.QWEN2VL, "qwenimage", "model."),
         "qwen3_vl_4b": (gguf.MODEL_ARCH.QWEN3VL, "krea2", "model.language_model.")}


def _release_lm(kind: str, vocab: int) -> dict:
    """The language model of a tiny real-class model, under its release's names (vision tower and tied head left out)."""
    import transformers

    from spriteforge.tests.tiny_models import _randomize

    if kind == "qwen3_4b":  # 32 wide, tied head (the release stores no lm_head)
        sd = tq.build_qwen3(1, vocab_size=vocab, tied=True).state_dict()
    elif kind == "qwen3_8b":  # 256 wide (K-quant blocks fit its rows), untied head: llama.cpp writes ``output``
        cfg = transformers.Qwen3Config(vocab_size=vocab, hidden_size=256, intermediate_size=256, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-6,
                                       rope_theta=1000000.0, max_position_embeddings=512, tie_word_embeddings=False,
                                       bos_token_id=None, eos_token_id=None, pad_token_id=None)
        sd = _randomize(transformers.Qwen3ForCausalLM(cfg), 2).state_dict()
    elif kind == "qwen25_7b":  # ComfyUI's names (model.layers.*, visual.*); q/k/v biases
        from spriteforge.tests.tiny_qwenimage import build_qwen25_vl, qwen25_vl_legacy_names

        sd = qwen25_vl_legacy_names(build_qwen25_vl(3, vocab).state_dict())
    else:
        from spriteforge.tests.tiny_krea2 import build_qwen3_vl

        sd = build_qwen3_vl(4, vocab).state_dict()
    drop = ("visual.", "model.visual.") + (("lm_head.",) if kind in ("qwen3_4b", "qwen3_vl_4b") else ())
    return {k: v for k, v in sd.items() if not k.startswith(drop)}


def _llama_cpp_name(kind: str, n_layers: int):
    """The name llama.cpp's converter gives a release tensor: the gguf package's TensorNameMap of the architecture."""
    arch, _, pre = KINDS[kind]
    names = gguf.get_tensor_name_map(arch, n_layers)

    def rename(k: str) -> str:
        hf = "model." + k[len(pre):] if k.startswith(pre) else k  # (llama.cpp strips language_model. first)
        out = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        assert out, k
        return out

    return rename


# a Q4_K_M-like mix (llama.cpp's: Q6_K on the embedding, attn_v and ffn_down, Q4_K elsewhere; rows whose width is no
# multiple of 256 fall back to Q8_0), and plain files of one type
MIXES = {"Q4_K_M": lambda name: T.Q6_K if ("token_embd" in name or "attn_v" in name or "ffn_down" in name) else T.Q4_K}


def _qtype(mix: str, name: str, a: np.ndarray):
    if not (name.endswith(".weight") and a.ndim == 2) or "norm" in name:
        return T.F32
    qt = MIXES[mix](name) if mix in MIXES else T[mix]
    block = gguf.GGML_QUANT_SIZES[qt][0]
    return qt if a.shape[1] % block == 0 else T.Q8_0


def add_vocab(w, tok_dir: Path) -> None:
    """The tokenizer of ``tok_dir`` as llama.cpp's converter writes a Qwen vocabulary (``_set_vocab_gpt2``): model
    ``gpt2``, pre-tokenizer ``qwen2``, the tokens by id with their types, the merges, special ids, chat template."""
    import json

    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    vocab = tok.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    merges = json.loads((tok_dir / "tokenizer.json").read_text())["model"]["merges"]
    control = set(tq.SPECIALS)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in control else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_eos_token_id(vocab["<|im_end|>"])
    w.add_pad_token_id(vocab["<|endoftext|>"])
    w.add_bos_token_id(vocab["<|endoftext|>"])
    w.add_add_bos_token(False)
    w.add_chat_template(tq.CHAT_TEMPLATE)


def write_lm_gguf(sd: dict, path: Path, kind: str, mix: str, vocab: Path | None = None) -> Path:
    """``sd`` (release names) as llama.cpp would write it (with the tokenizer of folder ``vocab``), and its decoded
    twin ``<path>.decoded.safetensors``."""
    import re

    n_layers = 1 + max(int(m.group(1)) for k in sd if (m := re.search(r"layers\.(\d+)\.", k)))
    rename = _llama_cpp_name(kind, n_layers)
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[KINDS[kind][0]])
    if vocab is not None:
        add_vocab(w, vocab)
    decoded = {}
    for k, v in sd.items():
        a = v.float().numpy()
        qt = _qtype(mix, rename(k), a)
        if qt in (T.F32, T.F16, T.BF16):
            data = a if qt == T.F32 else quants.quantize(a, qt)
        elif qt in G.F16_FIELDS:  # decode-only types: seeded blocks, as test_gguf writes them
            data = G.blocks(qt, a.shape[0], a.shape[1], seed=zlib.crc32(k.encode()))
        else:
            data = quants.quantize(a, qt)
        w.add_tensor(rename(k), data, raw_dtype=None if qt == T.F32 else qt)
        decoded[k] = v.float() if qt == T.F32 else torch.from_numpy(quants.dequantize(data, qt).copy()).reshape(v.shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file({k: v.contiguous() for k, v in decoded.items()}, str(path.with_suffix(".decoded.safetensors")))
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("gguf_te")
    tq.make_qwen_tokenizer(r, name="tokenizer")  # beside every file: found for either
    return r


def _encode(engine_name: str, kind: str, path, family: str):
    """``TextEncoding.decoder``'s hidden states (two layers) of a chat-templated prompt batch, real tokens only."""
    engine = get_engine(engine_name, "cpu", "float32")
    if engine_name == "torch":
        from spriteforge.engines.torch_models.generation import TorchTextEncoding as Encoding
        from spriteforge.engines.torch_models.text_encoders import load_text_encoder
    else:
        from spriteforge.engines.mlx_models.generation import MLXTextEncoding as Encoding
        from spriteforge.engines.mlx_models.loading import load_text_encoder
    key, enc, tok = load_text_encoder(engine, str(path), family=family)
    handle = ModelHandle(family=family, variant="", engine=engine, transformer=None, text_encoders={key: enc}, tokenizers={key: tok})
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in ("a red knight with a sword", "a cat")]
    states, mask = Encoding(engine, handle).decoder(key, texts, layers=(1, -1))
    keep = np.asarray(mask).astype(bool)
    return key, enc, [np.asarray(s, dtype=np.float32)[keep] for s in states]


CASES = [("qwen3_4b", "Q8_0"), ("qwen3_4b", "F16"), ("qwen3_8b", "Q4_K_M"), ("qwen3_8b", "Q4_0"), ("qwen25_7b", "Q8_0"),
         ("qwen25_7b", "Q4_K_M"), ("qwen3_vl_4b", "Q8_0")]


@pytest.mark.parametrize("kind, mix", CASES, ids=[f"{k}-{m}" for k, m in CASES])
def test_gguf_lm_loads_on_both_engines_as_its_decoded_twin(root, kind, mix):
    arch, family, _ = KINDS[kind]
    sd = _release_lm(kind, tq.tokenizer_size(root))
    p = write_lm_gguf(sd, root / f"{kind}-{mix}.gguf", kind, mix)
    det = detect(p)  # inspect's path: the header alone
    want_dtype = {"Q4_K_M": "q4_k", "F16": "float16"}.get(mix, mix.lower())
    assert (det.kind, det.variant, det.dtype) == ("text_encoder", kind, want_dtype), (det.kind, det.variant, det.dtype)
    assert "recognised_as" not in det.extras
    for engine_name in ("torch", "mlx"):
        key, enc, got = _encode(engine_name, kind, p, family)
        assert key == kind
        if engine_name == "torch":
            layers = [m for m in enc.modules() if isinstance(m, quant.QuantLinear)]
            assert bool(layers) == (mix != "F16") and all(m.qweight.data.dtype == torch.uint8 for m in layers)
        _, _, want = _encode(engine_name, kind, p.with_suffix(".decoded.safetensors"), family)
        for g, w in zip(got, want):
            assert np.isfinite(g).all() and g.std() > 0
            assert np.array_equal(g, w), f"{engine_name} {kind} {mix}: max diff {np.abs(g - w).max()}"


def test_the_tokenizer_inside_the_gguf_is_used(root, tmp_path):
    """A GGUF carrying its vocabulary (as llama.cpp writes every one), alone in its folder: its tokenizer is rebuilt
    from the file (transformers' GGUF reader) and gives the ids and the hidden states of the model's own tokenizer."""
    sd = _release_lm("qwen3_4b", tq.tokenizer_size(root))
    p = write_lm_gguf(sd, tmp_path / "Qwen3-4B-Q8_0.gguf", "qwen3_4b", "Q8_0", vocab=root / "tokenizer")
    twin = root / "qwen3_4b-Q8_0-twin.safetensors"  # beside the folder tokenizer
    p.with_suffix(".decoded.safetensors").replace(twin)
    assert not any(d.is_dir() for d in tmp_path.iterdir())  # no tokenizer folder beside the GGUF
    for engine_name in ("torch", "mlx"):
        _, enc, got = _encode(engine_name, "qwen3_4b", p, "zimage")
        _, _, want = _encode(engine_name, "qwen3_4b", twin, "zimage")
        for g, w in zip(got, want):
            assert g.shape == w.shape and np.array_equal(g, w), engine_name
    from spriteforge.engines.torch_models.text_encoders import load_text_encoder

    _, _, tok = load_text_encoder(get_engine("torch", "cpu", "float32"), str(p), family="zimage")
    import transformers

    ref = transformers.AutoTokenizer.from_pretrained(str(root / "tokenizer"), local_files_only=True)
    text = tok.apply_chat_template([{"role": "user", "content": "Pixel ART knight, red cape"}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>" in text and tok(text).input_ids == ref(text).input_ids


def test_inspect_names_a_gguf_text_encoder(root, capsys):
    """``spriteforge inspect --json`` on a Qwen2.5-VL language-model GGUF: role, variant and quant type from the header."""
    import json

    from spriteforge.cli.main import main

    p = write_lm_gguf(_release_lm("qwen25_7b", tq.tokenizer_size(root)), root / "inspect-qwen25.gguf", "qwen25_7b", "Q4_K_M")
    assert main(["inspect", "--json", str(p)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["kind"], info["variant"], info["dtype"]) == ("text_encoder", "qwen25_7b", "q4_k")
    assert "absent" in info["extras"]["vision_tower"]


def test_a_plain_qwen2_gguf_is_refused_by_name(root):
    """A ``qwen2`` GGUF (Qwen2.5's text-only LM) is not Qwen2.5-VL's language model: refused, saying which file to use."""
    sd = _release_lm("qwen25_7b", tq.tokenizer_size(root))
    w = gguf.GGUFWriter(str(root / "qwen2.gguf"), "qwen2")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, 2)
    for k, v in sd.items():
        w.add_tensor(names.get_name(k, try_suffixes=(".weight", ".bias")), v.float().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(SpriteForgeError) as e:
        detect(root / "qwen2.gguf")
    assert e.value.code == "UNSUPPORTED_ARCHITECTURE" and "qwen2vl" in str(e.value)


def test_zimage_generates_with_a_gguf_qwen3(tmp_path):
    """A tiny Z-Image with its Qwen3-4B as a Q8_0 GGUF: the picture of its decoded twin on each engine (exactly the
    same weights), and torch and MLX within 2/255 of each other."""
    from safetensors.torch import load_file

    from spriteforge import pipeline
    from spriteforge.tests import tiny_models as tm

    parts = tm.make_zimage_parts(tmp_path)
    te = parts["text_encoders"][0]
    d = te.parent
    tq.make_qwen_tokenizer(d, name="tokenizer")
    p = write_lm_gguf(load_file(str(te)), d / "Qwen3-4B-Q8_0.gguf", "qwen3_4b", "Q8_0")
    model = str(tm.make_zimage(tmp_path, layout="original"))
    params = pipeline.GenerateParams(prompt="a red knight", negative="blurry", cfg=2.0, seed=3, steps=2, width=32, height=32)
    images = {}
    for name in ("torch", "mlx"):
        engine = get_engine(name, "cpu")
        for which in (p, p.with_suffix(".decoded.safetensors")):
            h = engine.load_model(model, vae=parts["vae"], text_encoders=[which])
            assert list(h.text_encoders) == ["qwen3_4b"] and h.extras["needs"] == []
            images[name, which.suffix] = pipeline.generate(engine, h, params)
        assert np.array_equal(images[name, ".gguf"], images[name, ".safetensors"]), name
    assert images["torch", ".gguf"].std() > 0
    assert np.abs(images["torch", ".gguf"] - images["mlx", ".gguf"]).max() <= 2 / 255
