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
from spriteforge.tests.parity import assert_close, mx_weights

REPO = tm.Path(__file__).resolve().parents[1]


def _ids(vocab: int, length: int, seed: int, lo: int = 3):
    return np.random.default_rng(seed).integers(lo, vocab, (2, length)).astype(np.int64)


# --------------------------------------------------------------------------- T5
def _t5_pair(ref):
    from spriteforge.engines.mlx_models import t5

    model = t5.T5EncoderModel(ref.config.to_dict())
    layers.load_weights(model, t5.map_weights(mx_weights(ref)), what="t5 text encoder")
    return model


def _t5_check(ref, ids, mask, what):
    model = _t5_pair(ref)
    with torch.no_grad():
        want = ref(torch.tensor(ids), attention_mask=None if mask is None else torch.tensor(mask)).last_hidden_state
    got = model(mx.array(ids), attention_mask=None if mask is None else mx.array(mask))
    return assert_close(got, want.float().numpy(), what)


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
    # the demo model's own tokenizer, padded to PixArt's 120 tokens as the pipeline does
    tok = transformers.AutoTokenizer.from_pretrained(REPO / "demo_model" / "tokenizer", local_files_only=True)
    ti = tok(["a knight with a sword, pixel art", "red slime"], padding="max_length", max_length=120,
             truncation=True, return_tensors="np")
    assert ti["attention_mask"].sum(1).max() < 120
    _t5_check(ref, ti["input_ids"].astype(np.int64), ti["attention_mask"].astype(np.int64), "demo T5 tokenized")


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
    sd = mx_weights(ref)
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


# --------------------------------------------------------------------------- CLIP
def _clip_ids(vocab: int, eos: int, pad: int, lengths, seq: int = 77, seed: int = 5):
    """Tokenizer-like rows: bos, words, eos, then padding."""
    rng = np.random.default_rng(seed)
    ids = np.full((len(lengths), seq), pad, dtype=np.int64)
    for i, n in enumerate(lengths):
        ids[i, 0] = 0
        ids[i, 1:n - 1] = rng.integers(3, vocab - 1, n - 2)
        ids[i, n - 1] = eos
    return ids


def _clip_check(ref, ids, projection, what):
    from spriteforge.engines.mlx_models import clip

    model = clip.CLIPTextModel(ref.config.to_dict(), projection=projection)
    layers.load_weights(model, clip.map_weights(mx_weights(ref)), what="clip text encoder")
    with torch.no_grad():
        out = ref(torch.tensor(ids), output_hidden_states=True)
    want_pooled = out.text_embeds if projection else out.pooler_output
    hidden, pooled = model(mx.array(ids))
    assert len(hidden) == len(out.hidden_states)
    diffs = [assert_close(hidden[-2], out.hidden_states[-2].numpy(), f"{what} hidden_states[-2]"),
             assert_close(hidden[-1], out.hidden_states[-1].numpy(), f"{what} hidden_states[-1]"),
             assert_close(pooled, want_pooled.numpy(), f"{what} pooled")]
    assert_close(model.last_hidden_state(mx.array(ids)), out.last_hidden_state.numpy(), f"{what} last_hidden_state")
    return max(diffs)


@pytest.mark.parametrize("kind", ["clip_l", "clip_g"])
@pytest.mark.parametrize("projection", [True, False])
def test_clip_tiny_legacy_eos(kind, projection):
    ref = tm.build_clip(kind, projection=projection)
    assert ref.config.eos_token_id == 2 and ref.config.hidden_act == ("quick_gelu" if kind == "clip_l" else "gelu")
    # legacy rule: the pooled token is the largest id; the eos here (599) is the vocabulary's last id
    ids = _clip_ids(600, 599, 1, [9, 30])
    _clip_check(ref, ids, projection, f"{kind} proj={projection}")


def test_clip_eos_id_rule_two_layers():
    # released configs after transformers PR #24773: the first position holding eos_token_id
    # (pad == eos as in clip_l's tokenizer, and an eos id that is not the largest id)
    cfg = transformers.CLIPTextConfig(vocab_size=300, hidden_size=32, intermediate_size=48, projection_dim=24,
                                      num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=40,
                                      hidden_act="gelu", bos_token_id=0, eos_token_id=250, pad_token_id=250)
    ref = tm._randomize(transformers.CLIPTextModelWithProjection(cfg), 7)
    ids = _clip_ids(300, 250, 250, [6, 40], seq=40)
    ids[0, 3] = 299  # larger than eos: the legacy rule would pick this one
    _clip_check(ref, ids, True, "clip eos-id rule")


def test_clip_projection_rule_and_map_weights():
    from spriteforge.engines.mlx_models import clip

    plain = tm.build_clip("clip_l", projection=False)
    with_proj = tm.build_clip("clip_g", projection=True)
    cfg = plain.config.to_dict()
    assert not clip.wants_projection(cfg)
    assert clip.wants_projection({**cfg, "architectures": ["CLIPTextModelWithProjection"]})
    assert clip.wants_projection(cfg, keys=with_proj.state_dict().keys())
    assert not clip.wants_projection(cfg, keys=plain.state_dict().keys())
    assert not clip.CLIPTextModel(cfg).has_projection
    mapped = clip.map_weights(mx_weights(plain))
    assert all(k.startswith("text_model.") for k in mapped) and not any("position_ids" in k for k in mapped)
    # a file without the projection does not fit a model that wants one: coded error
    with pytest.raises(SpriteForgeError) as ei:
        layers.load_weights(clip.CLIPTextModel(cfg, projection=True), mapped, what="clip_l text encoder")
    assert ei.value.code == MODEL_NOT_CONVERTED and "text_projection.weight" in str(ei.value)


# --------------------------------------------------------------------------- Gemma-2
def _gemma_check(ref, ids, mask, what):
    from spriteforge.engines.mlx_models import gemma

    model = gemma.Gemma2Model(ref.config.to_dict())
    layers.load_weights(model, gemma.map_weights(mx_weights(ref)), what="gemma text encoder")
    with torch.no_grad():
        want = ref(torch.tensor(ids), attention_mask=None if mask is None else torch.tensor(mask)).last_hidden_state
    got = model(mx.array(ids), attention_mask=None if mask is None else mx.array(mask))
    return assert_close(got, want.float().numpy(), what)


def test_gemma_tiny_right_padding():
    ref = tm.build_gemma()
    ids, mask = _padded(_ids(200, 30, 8), [30, 12])  # right padding, as Sana's tokenizer call
    ids[:, 0] = 2  # bos
    _gemma_check(ref, ids, mask, "gemma tiny right-padded")


def test_gemma_gqa_sliding_window_softcap_three_layers():
    # 4 query heads on 2 key/value heads, a window (5) shorter than the prompt on the alternating
    # sliding layers, a soft-cap small enough to bite, query_pre_attn_scalar != head_dim, rope_theta
    cfg = transformers.Gemma2Config(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
                                    sliding_window=5, attn_logit_softcapping=2.0,
                                    rope_parameters={"rope_theta": 500.0, "rope_type": "default"},
                                    pad_token_id=0, eos_token_id=1, bos_token_id=2)
    ref = tm._randomize(transformers.Gemma2Model(cfg), 4)
    assert ref.config.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    ids, mask = _padded(_ids(100, 20, 9), [7, 20])
    _gemma_check(ref, ids, mask, "gemma gqa/sliding/softcap")


def test_gemma_map_weights_and_coded_error():
    from spriteforge.engines.mlx_models import gemma

    ref = tm.build_gemma()
    sd = mx_weights(ref)
    causal_lm = {"model." + k: v for k, v in sd.items()}
    causal_lm["lm_head.weight"] = sd["embed_tokens.weight"]
    assert set(gemma.map_weights(causal_lm)) == set(sd)
    broken = gemma.map_weights(sd)
    broken["layers.0.self_attn.k_proj.weight"] = mx.zeros((3, 32))
    with pytest.raises(SpriteForgeError) as ei:
        layers.load_weights(gemma.Gemma2Model(ref.config.to_dict()), broken, what="gemma text encoder")
    assert ei.value.code == MODEL_NOT_CONVERTED and "k_proj" in str(ei.value)


# --------------------------------------------------------------------------- half precision
@pytest.mark.parametrize("family", ["t5", "clip", "gemma"])
def test_float16_stays_close_to_float32(family):
    # the MLX engine may run text encoders in half precision: finite and near the float32 reference
    from spriteforge.engines.mlx_models import clip, gemma, t5

    if family == "clip":
        ref = tm.build_clip("clip_g")
        ids, mask = _clip_ids(600, 599, 1, [9, 30]), None
        model = clip.CLIPTextModel(ref.config.to_dict(), projection=True)
        layers.load_weights(model, clip.map_weights(mx_weights(ref)))
        with torch.no_grad():
            want = ref(torch.tensor(ids)).text_embeds.numpy()
        run = lambda m: m(mx.array(ids))[1]  # noqa: E731
    else:
        mod, ref = (t5, tm.build_t5()) if family == "t5" else (gemma, tm.build_gemma())
        ids, mask = _padded(_ids(200, 40, 1), [40, 23])
        model = (t5.T5EncoderModel if family == "t5" else gemma.Gemma2Model)(ref.config.to_dict())
        layers.load_weights(model, mod.map_weights(mx_weights(ref)))
        with torch.no_grad():
            want = ref(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
        run = lambda m: m(mx.array(ids), attention_mask=mx.array(mask))  # noqa: E731
    layers.cast_module(model, mx.float16)
    got = run(model)
    assert got.dtype == mx.float16
    got = np.array(got.astype(mx.float32))
    assert np.isfinite(got).all()
    diff = np.abs(got - want) if mask is None else np.abs(got - want)[mask.astype(bool)]
    print(f"{family} float16 vs float32: max|diff| {diff.max():.3g}")
    assert diff.max() <= 2e-2 * (1 + np.abs(want).max())
