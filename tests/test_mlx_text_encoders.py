"""Parity of the MLX text encoders (T5, CLIP, Gemma-2) with transformers on the same weights.

Each reference is the real transformers class (the tiny builders in tests/tiny_models.py or the
built-in demo model's T5), its state dict goes through our ``map_weights`` and the strict
``layers.load_weights``; both run in float32 on the same ids/masks (batch 2, with padding).
"""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from spriteforge.engines.mlx_models import layers  # noqa: E402
from spriteforge.errors import MODEL_NOT_CONVERTED, SpriteForgeError  # noqa: E402
from spriteforge.tests import tiny_models as tm  # noqa: E402

REPO = tm.Path(__file__).resolve().parents[1]


def _mx_sd(model) -> dict:
    return {k: mx.array(v.detach().float().numpy()) for k, v in model.state_dict().items()}


def _close(out, ref, what=""):
    out, ref = np.asarray(out, dtype=np.float32), np.asarray(ref, dtype=np.float32)
    assert out.shape == ref.shape, (what, out.shape, ref.shape)
    diff = float(np.abs(out - ref).max())
    tol = 1e-4 * (1.0 + float(np.abs(ref).max()))
    print(f"{what}: max|diff| {diff:.3g} (max|ref| {float(np.abs(ref).max()):.3g})")
    assert diff <= tol, f"{what}: max |diff| {diff} > {tol}"
    return diff


def _ids(vocab: int, length: int, seed: int, lo: int = 3):
    return np.random.default_rng(seed).integers(lo, vocab, (2, length)).astype(np.int64)


# --------------------------------------------------------------------------- T5
def _t5_pair(ref):
    from spriteforge.engines.mlx_models import t5

    model = t5.T5EncoderModel(ref.config.to_dict())
    layers.load_weights(model, t5.map_weights(_mx_sd(ref)), what="t5 text encoder")
    return model


def _t5_check(ref, ids, mask, what):
    model = _t5_pair(ref)
    with torch.no_grad():
        want = ref(torch.tensor(ids), attention_mask=None if mask is None else torch.tensor(mask)).last_hidden_state
    got = model(mx.array(ids), attention_mask=None if mask is None else mx.array(mask))
    return _close(got, want.float().numpy(), what)


def _padded(ids, lengths, pad=0):
    ids = ids.copy()
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = pad
    return ids, mask


def test_t5_gated_gelu_tiny_masked():
    ref = tm.build_t5()
    assert ref.config.is_gated_act and ref.config.dense_act_fn == "gelu_new"
    ids, mask = _padded(_ids(200, 40, 1), [40, 23])
    _t5_check(ref, ids, mask, "t5 gated-gelu masked")
    _t5_check(ref, ids, None, "t5 gated-gelu no mask")


def test_t5_relu_two_layers_long_sequence():
    # T5 v1.0 style: plain relu feed-forward, second block reuses the first block's bias;
    # 150 tokens > max_distance so the logarithmic and clipped buckets are all used
    cfg = transformers.T5Config(vocab_size=120, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                                relative_attention_num_buckets=16, relative_attention_max_distance=40,
                                feed_forward_proj="relu", is_encoder_decoder=False, use_cache=False)
    ref = tm._randomize(transformers.T5EncoderModel(cfg), 3)
    assert not ref.config.is_gated_act
    ids, mask = _padded(_ids(120, 150, 2), [97, 150])
    _t5_check(ref, ids, mask, "t5 relu 2 layers")


def test_t5_demo_model_text_encoder():
    folder = REPO / "demo_model" / "text_encoder"
    if not (folder / "config.json").is_file():
        pytest.skip("the demo model is not in this checkout")
    ref = transformers.T5EncoderModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32).eval()
    ids, mask = _padded(_ids(ref.config.vocab_size, 64, 4, lo=2), [64, 9])
    ids[1, 8] = 1  # eos before the padding, as the tokenizer writes it
    _t5_check(ref, ids, mask, "demo T5")


def test_t5_relative_position_buckets_match_transformers():
    from spriteforge.engines.mlx_models.t5 import relative_position_bucket

    rp = torch.arange(-700, 701)[None, :]
    for bidirectional in (True, False):
        for nb, md in ((32, 128), (8, 16), (16, 40), (32, 20)):
            want = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
                rp, bidirectional=bidirectional, num_buckets=nb, max_distance=md)
            got = relative_position_bucket(rp.numpy(), bidirectional, nb, md)
            np.testing.assert_array_equal(got, want.numpy())


def test_t5_map_weights_tied_embedding_and_coded_error():
    from spriteforge.engines.mlx_models import t5

    ref = tm.build_t5()
    sd = _mx_sd(ref)
    assert "shared.weight" in sd and "encoder.embed_tokens.weight" in sd
    only_tied = {k: v for k, v in sd.items() if k != "shared.weight"}
    mapped = t5.map_weights(only_tied)
    assert "encoder.embed_tokens.weight" not in mapped
    assert np.array_equal(np.array(mapped["shared.weight"]), ref.shared.weight.detach().numpy())
    only_shared = {k: v for k, v in sd.items() if k != "encoder.embed_tokens.weight"}
    assert set(t5.map_weights(only_shared)) == set(mapped)

    cfg = ref.config.to_dict()
    broken = dict(mapped)
    broken.pop("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    with pytest.raises(SpriteForgeError) as ei:
        layers.load_weights(t5.T5EncoderModel(cfg), broken, what="t5 text encoder")
    assert ei.value.code == MODEL_NOT_CONVERTED and "relative_attention_bias" in str(ei.value)
    wrong = dict(mapped)
    wrong["encoder.final_layer_norm.weight"] = mx.zeros((7,))
    with pytest.raises(SpriteForgeError) as ei:
        layers.load_weights(t5.T5EncoderModel(cfg), wrong, what="t5 text encoder")
    assert ei.value.code == MODEL_NOT_CONVERTED
