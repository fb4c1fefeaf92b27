"""The decoder-only LM text encoders (Qwen3-4B/8B; the port also runs Qwen2's and Llama's stacks): the MLX port
(``engines/mlx_models/decoder_lm.py``) against transformers' own classes on the same tiny weights, and the files
ComfyUI users hold (``qwen_3_4b.safetensors``: ``model.*`` names, no tied ``lm_head``; ``qwen_3_8b``: an untied
``lm_head``) and transformers folders loaded on both engines, their hidden states through
``TextEncoding.decoder`` equal to transformers' ``output_hidden_states`` (float32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from spriteforge.engines import get_engine
from spriteforge.engines.base import ModelHandle
from spriteforge.errors import MODEL_NOT_CONVERTED, SpriteForgeError
from spriteforge.models.families import registry
from spriteforge.models.families.base import Family, TextEncoder
from spriteforge.tests import tiny_qwen as tq
from spriteforge.tests.parity import assert_close, mx_weights

mx = pytest.importorskip("mlx.core")

LAYERS = (0, 1, -2, -1)


def _tiny(kind: str, seed: int = 1):
    common = dict(vocab_size=120, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=256)
    if kind == "qwen3":  # q/k norms, head_dim wider than hidden/heads, GQA
        model = transformers.Qwen3Model(transformers.Qwen3Config(head_dim=16, rope_theta=1e6, **common))
    elif kind == "qwen2":  # q/k/v biases (Qwen2 / Qwen2.5's text stack)
        model = transformers.Qwen2Model(transformers.Qwen2Config(rope_theta=1e6, **common))
    else:  # Llama / Mistral: neither
        model = transformers.LlamaModel(transformers.LlamaConfig(rope_theta=5e5, **common))
    from spriteforge.tests.tiny_models import _randomize

    return _randomize(model, seed)


def _batch(vocab: int, lengths=(17, 9), seed: int = 3):
    ids = np.random.default_rng(seed).integers(0, vocab, (len(lengths), max(lengths))).astype(np.int64)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return ids, mask


def _reference(model, ids, mask, layers=LAYERS):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
    return [out.hidden_states[i].float().numpy() for i in layers]


def _real(states, mask):
    """Only the real tokens' rows (padded rows are whatever each framework leaves there)."""
    keep = np.asarray(mask).astype(bool)
    return [np.asarray(s, dtype=np.float32)[keep] for s in states]


@pytest.mark.parametrize("kind", ["qwen3", "qwen2", "llama"])
def test_port_matches_transformers(kind):
    from spriteforge.engines.mlx_models import decoder_lm, layers

    ref = _tiny(kind)
    port = decoder_lm.DecoderLM(ref.config.to_dict())
    assert port.config.qk_norm == (kind == "qwen3") and port.config.qkv_bias == (kind == "qwen2")
    layers.load_weights(port, decoder_lm.map_weights(mx_weights(ref)), what=f"{kind} text encoder")
    ids, mask = _batch(120)
    got = port(mx.array(ids), attention_mask=mx.array(mask), layers=LAYERS)
    for i, g, w in zip(LAYERS, _real(got, mask), _real(_reference(ref, ids, mask), mask)):
        assert_close(g, w, f"{kind} hidden state {i}")
    assert_close(port(mx.array(ids), attention_mask=mx.array(mask)), _reference(ref, ids, mask, (-1,))[0], f"{kind} last")


def test_map_weights_takes_the_released_files_and_refuses_others():
    """``qwen_3_4b`` (``model.*``, no lm_head) and ``qwen_3_8b`` (with lm_head) both fill the port strictly; a
    truncated state dict is MODEL_NOT_CONVERTED naming what is missing."""
    from spriteforge.engines.mlx_models import decoder_lm, layers

    for tied in (True, False):
        causal = tq.build_qwen3(vocab_size=100, tied=tied)
        sd = dict(causal.state_dict())
        if tied:
            sd.pop("lm_head.weight")
        port = decoder_lm.DecoderLM(causal.config.to_dict())
        layers.load_weights(port, decoder_lm.map_weights(mx_weights(sd)), what="qwen3")
    del sd["model.norm.weight"]
    with pytest.raises(SpriteForgeError) as e:
        layers.load_weights(port, decoder_lm.map_weights(mx_weights(sd)), what="qwen3_4b text encoder")
    assert e.value.code == MODEL_NOT_CONVERTED and "norm.weight" in str(e.value)


class _UsesQwen3(Family):
    """A family generating with the Qwen3 slots, so their files load (as a runnable family's would)."""

    name = "qwen3-test"
    label = "Qwen3 test"
    text_encoders = (TextEncoder("qwen3_4b", "text_encoder"), TextEncoder("qwen3_8b", "text_encoder_2"))


@pytest.fixture
def qwen3_family():
    registry.register(_UsesQwen3())
    yield _UsesQwen3.name
    registry.unregister(_UsesQwen3.name)


@pytest.mark.parametrize("engine_name", ["torch", "mlx"])
@pytest.mark.parametrize("layout, size", [("file", "4b"), ("file", "8b"), ("folder", "4b")])
def test_loaded_on_both_engines(tmp_path, qwen3_family, engine_name, layout, size):
    """The file or folder through the engine's ``load_text_encoder`` (tokenizer found beside it), then
    ``TextEncoding.decoder`` on a chat-templated prompt batch: transformers' hidden states of the real tokens."""
    path = tq.make_qwen3(tmp_path, layout=layout, size=size)
    engine = get_engine(engine_name, "cpu", "float32")
    if engine_name == "torch":
        from spriteforge.engines.torch_models.generation import TorchTextEncoding as Encoding
        from spriteforge.engines.torch_models.text_encoders import load_text_encoder
    else:
        from spriteforge.engines.mlx_models.generation import MLXTextEncoding as Encoding
        from spriteforge.engines.mlx_models.loading import load_text_encoder
    key, enc, tok = load_text_encoder(engine, str(path), family=qwen3_family)
    assert key == f"qwen3_{size}" and type(tok).__name__ == "Qwen2Tokenizer"
    handle = ModelHandle(family=qwen3_family, variant="", engine=engine, transformer=None,
                         text_encoders={key: enc}, tokenizers={key: tok})
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in ("a red knight with a sword", "a cat")]
    states, mask = Encoding(engine, handle).decoder(key, texts, layers=(-2, -1))
    mask = np.asarray(mask)
    ti = tok(texts, padding=True, return_tensors="pt")
    assert (mask == ti["attention_mask"].numpy()).all() and mask[1].sum() < mask[0].sum()
    ref = tq.load_qwen3(path)
    want = _reference(ref, ti["input_ids"].numpy(), ti["attention_mask"].numpy(), (-2, -1))
    for i, g, w in zip((-2, -1), _real(states, mask), _real(want, mask)):
        assert_close(g, w, f"{engine_name} {layout} {size} hidden state {i}")


def test_tokenizer_is_found_beside_the_file_and_in_comfyuis_layout(tmp_path):
    """``qwen_3_4b_tokenizer/`` beside the file; a ``tokenizer/`` folder holding only ComfyUI's
    ``qwen25_tokenizer`` files (vocab.json, merges.txt, tokenizer_config.json) gives the same ids."""
    from spriteforge.engines.tokenizers import find_tokenizer

    path = tq.make_qwen3(tmp_path)
    text = "<|im_start|>user\na red knight<|im_end|>\n<|im_start|>assistant\n"
    want = find_tokenizer("qwen3_4b", path)(text)["input_ids"]
    other = tmp_path / "other"
    comfy = other / "tokenizer"
    comfy.mkdir(parents=True)
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        (comfy / f).write_bytes((tmp_path / "qwen_tokenizer" / f).read_bytes())
    (other / "qwen_3_4b.safetensors").write_bytes(path.read_bytes())
    tok = find_tokenizer("qwen3_4b", other / "qwen_3_4b.safetensors")
    assert tok(text)["input_ids"] == want and want[0] == tok.convert_tokens_to_ids("<|im_start|>")


@pytest.mark.parametrize("engine_name", ["torch", "mlx"])
def test_float16_overflow_is_encoded_again_in_float32(tmp_path, qwen3_family, engine_name):
    """A decoder LM loaded in float16 whose activations overflow it (one MLP scaled far past 65504): the hidden states
    come back finite, those of the float32 model, and the encoder keeps its float16 weights."""
    from spriteforge.tests.tiny_models import _save_file

    tq.make_qwen_tokenizer(tmp_path)
    model = tq.build_qwen3(vocab_size=tq.tokenizer_size(tmp_path))
    with torch.no_grad():  # weights float16 holds, a product it does not
        model.model.layers[0].mlp.up_proj.weight.mul_(500.0)
        model.model.layers[0].mlp.down_proj.weight.mul_(500.0)
    sd = dict(model.state_dict())
    sd.pop("lm_head.weight")
    path = _save_file(sd, tmp_path / "qwen_3_4b.safetensors")
    engine = get_engine(engine_name, "cpu", "float32")
    if engine_name == "torch":
        from spriteforge.engines.torch_models.generation import TorchTextEncoding as Encoding
        from spriteforge.engines.torch_models.text_encoders import load_text_encoder
    else:
        from spriteforge.engines.mlx_models.generation import MLXTextEncoding as Encoding
        from spriteforge.engines.mlx_models.loading import load_text_encoder
    key, enc, tok = load_text_encoder(engine, str(path), family=qwen3_family, dtype="float16")
    if engine_name == "mlx":  # MLX on a CPU offers float32 only; on Metal the loader gives float16, as here
        from spriteforge.engines.mlx_models import layers

        layers.cast_module(enc, mx.float16)
    handle = ModelHandle(family=qwen3_family, variant="", engine=engine, transformer=None, text_encoders={key: enc},
                         tokenizers={key: tok})
    texts = ["<|im_start|>user\na red knight<|im_end|>\n"]
    states, mask = Encoding(engine, handle).decoder(key, texts, layers=(1, -1))
    ti = tok(texts, return_tensors="pt")
    want = _reference(model.model, ti["input_ids"].numpy(), ti["attention_mask"].numpy(), (1, -1))
    assert float(np.abs(want[0]).max()) > 65504  # float16 cannot hold it
    for g, w in zip(states, want):
        g = np.asarray(g, dtype=np.float32)
        assert np.isfinite(g).all()
        assert np.abs(g - w).max() <= 1e-2 * (1 + np.abs(w).max())
    dtype = next(enc.parameters()).dtype if engine_name == "torch" else enc.embed_tokens.weight.dtype
    assert "float16" in str(dtype)
