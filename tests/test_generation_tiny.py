"""Tiny real-format models of every family as ModelHandles (diffusers/transformers modules, random weights).

Used by the generation tests until (and alongside) the loaders' ``tests/tiny_models.py``.
The handles are built directly, not loaded from files, so these tests exercise generation only.
"""

from __future__ import annotations

import zlib

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")


class FakeTokenizer:
    """A deterministic word-hash tokenizer with the slice of the HF tokenizer API generation uses."""

    padding_side = "right"

    def __init__(self, vocab: int = 100, model_max_length: int = 77):
        self.vocab = vocab
        self.model_max_length = model_max_length

    def encode(self, text):
        ids = [2 + zlib.crc32(w.encode()) % (self.vocab - 3) for w in str(text).lower().split()]
        return ids + [1]

    def __call__(self, texts, padding="max_length", max_length=None, truncation=True, add_special_tokens=True,
                 return_tensors="pt"):
        if isinstance(texts, str):
            texts = [texts]
        ml = int(max_length or self.model_max_length)
        ids = torch.zeros(len(texts), ml, dtype=torch.long)
        mask = torch.zeros(len(texts), ml, dtype=torch.long)
        for i, t in enumerate(texts):
            e = self.encode(t)[:ml]
            ids[i, : len(e)] = torch.tensor(e)
            mask[i, : len(e)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def _seed(s=0):
    torch.manual_seed(s)


def tiny_t5(d=32):
    from transformers import T5Config, T5EncoderModel

    _seed(1)
    return T5EncoderModel(T5Config(vocab_size=100, d_model=d, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
                                   decoder_start_token_id=0)).eval()


def tiny_clip(hidden=32, proj=32):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    _seed(2 + hidden)
    return CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=100, hidden_size=hidden, intermediate_size=64,
                                                      num_hidden_layers=2, num_attention_heads=4,
                                                      max_position_embeddings=77, projection_dim=proj,
                                                      bos_token_id=0, eos_token_id=1)).eval()


def tiny_gemma(hidden=32):
    from transformers import Gemma2Config, Gemma2Model

    _seed(3)
    return Gemma2Model(Gemma2Config(vocab_size=100, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=8)).eval()


def tiny_vae(latent_channels=4):
    from diffusers import AutoencoderKL

    _seed(4)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8),
                         latent_channels=latent_channels, norm_num_groups=4, layers_per_block=1).eval()


def tiny_dcae():
    from diffusers import AutoencoderDC

    _seed(5)
    return AutoencoderDC(in_channels=3, latent_channels=8, attention_head_dim=4,
                         encoder_block_types="ResBlock", decoder_block_types="ResBlock",
                         encoder_block_out_channels=(8, 8, 8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8, 8, 8),
                         encoder_layers_per_block=(1, 1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1, 1),
                         encoder_qkv_multiscales=((),) * 6, decoder_qkv_multiscales=((),) * 6,
                         decoder_norm_types="rms_norm", decoder_act_fns="silu").eval()


def _handle(engine, family, variant, transformer, **kw):
    from spriteforge.engines.base import ModelHandle

    return ModelHandle(family=family, variant=variant, engine=engine, transformer=transformer,
                       config=dict(transformer.config), source=f"tiny-{family}", **kw)


def make_pixart(engine, variant="sigma", additional_conditions=False):
    from diffusers import PixArtTransformer2DModel

    _seed(10)
    heads = 3 if additional_conditions else 2  # the size embeddings need a width divisible by 3
    tr = PixArtTransformer2DModel(num_attention_heads=heads, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
                                  cross_attention_dim=8 * heads, sample_size=8, patch_size=2, caption_channels=32,
                                  norm_num_groups=4, use_additional_conditions=additional_conditions).eval()
    return _handle(engine, "pixart", variant, tr, vae=tiny_vae(4), text_encoders={"t5": tiny_t5()},
                   tokenizers={"t5": FakeTokenizer()}, prediction="eps", latent_channels=4, vae_scale_factor=8,
                   patch_size=2, scaling_factor=0.13025)


def make_dit(engine):
    from diffusers import DiTTransformer2DModel

    _seed(11)
    tr = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
                               sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_num_groups=4).eval()
    return _handle(engine, "dit", "dit-xl-2", tr, vae=tiny_vae(4), prediction="eps", latent_channels=4,
                   vae_scale_factor=8, patch_size=2, scaling_factor=0.18215)


def make_sd3(engine):
    from diffusers import SD3Transformer2DModel

    _seed(12)
    tr = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8,
                               num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
                               pooled_projection_dim=64, out_channels=16, pos_embed_max_size=16).eval()
    return _handle(engine, "sd3", "sd3-medium", tr, vae=tiny_vae(16),
                   text_encoders={"clip_l": tiny_clip(), "clip_g": tiny_clip(), "t5": tiny_t5()},
                   tokenizers={"clip_l": FakeTokenizer(), "clip_g": FakeTokenizer(), "t5": FakeTokenizer()},
                   prediction="flow", latent_channels=16, vae_scale_factor=8, patch_size=2, scaling_factor=1.5305,
                   shift_factor=0.0609, flow_shift=3.0)


def make_flux(engine, variant="dev", fill=False):
    from diffusers import FluxTransformer2DModel

    _seed(13)
    tr = FluxTransformer2DModel(patch_size=1, in_channels=384 if fill else 64, out_channels=64, num_layers=1,
                                num_single_layers=1, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                pooled_projection_dim=32, guidance_embeds=variant != "schnell",
                                axes_dims_rope=(4, 6, 6)).eval()
    return _handle(engine, "flux", ("fill" if fill else variant), tr, vae=tiny_vae(16),
                   text_encoders={"clip_l": tiny_clip(), "t5": tiny_t5()},
                   tokenizers={"clip_l": FakeTokenizer(), "t5": FakeTokenizer()},
                   prediction="flow", latent_channels=16, vae_scale_factor=8, patch_size=2, scaling_factor=0.3611,
                   shift_factor=0.1159)


def make_sana(engine):
    from diffusers import SanaTransformer2DModel

    _seed(14)
    tr = SanaTransformer2DModel(in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=8, num_layers=2,
                                num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16,
                                caption_channels=32, sample_size=8, patch_size=1).eval()
    return _handle(engine, "sana", "sana-600m", tr, vae=tiny_dcae(), text_encoders={"gemma": tiny_gemma()},
                   tokenizers={"gemma": FakeTokenizer()}, prediction="flow", latent_channels=8, vae_scale_factor=32,
                   patch_size=1, scaling_factor=0.41407, flow_shift=3.0)


MAKERS = {"pixart": make_pixart, "dit": make_dit, "sd3": make_sd3, "flux": make_flux, "sana": make_sana}


@pytest.fixture(scope="module")
def engine():
    from spriteforge.engines import get_engine

    return get_engine("torch", "cpu")


@pytest.mark.parametrize("family", sorted(MAKERS))
def test_tiny_handles_build(engine, family):
    h = MAKERS[family](engine)
    assert h.family == family and h.vae is not None
