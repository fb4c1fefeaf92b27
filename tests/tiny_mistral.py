"""Tiny real-format FLUX.2 [dev] text encoders: Mistral Small 3.1's language model (transformers' ``MistralModel`` in
``Mistral3ForConditionalGeneration``), scaled down but with the release's facts the loaders read from the shapes
(131072-token vocabulary, 128-wide heads, no q/k norm, no q/k/v bias, rope theta 1e9) and enough layers for the
hidden states FLUX.2 reads (10, 20, 30); a tokenizer with Mistral's control tokens, with or without the
Mistral-Small-3 chat template."""

from __future__ import annotations

from pathlib import Path

from spriteforge.tests.tiny_models import _randomize, _save_file
from spriteforge.tests.tiny_qwen import QWEN3_DIM

MISTRAL_LAYERS = 31  # hidden state 30 is a layer's output, not the final norm's (as in the 40-layer release)
MISTRAL_VOCAB = 131072
SPECIALS = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "<pad>")
# the Mistral-Small-3 chat template's text part, as transformers renders it (content a string or a list of text parts)
CHAT_TEMPLATE = (
    "{{- bos_token }}{%- for m in messages %}"
    "{%- if m['content'] is string %}{%- set t = m['content'] %}"
    "{%- else %}{%- set t = m['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') %}{%- endif %}"
    "{%- if m['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' + t + '[/SYSTEM_PROMPT]' }}"
    "{%- elif m['role'] == 'user' %}{{- '[INST]' + t + '[/INST]' }}{%- endif %}{%- endfor %}")


def mistral_config(**kw):
    import transformers

    return transformers.MistralConfig(**{**dict(vocab_size=MISTRAL_VOCAB, hidden_size=QWEN3_DIM, intermediate_size=64,
                                                 num_hidden_layers=MISTRAL_LAYERS, num_attention_heads=2, num_key_value_heads=1,
                                                 head_dim=128, rms_norm_eps=1e-5, rope_theta=1e9, sliding_window=None), **kw})


def build_mistral3(seed: int = 0):
    """A tiny real ``Mistral3ForConditionalGeneration`` (a one-layer Pixtral vision tower beside the language model)."""
    import transformers

    vision = transformers.PixtralVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                              image_size=32, patch_size=8, head_dim=8)
    cfg = transformers.Mistral3Config(text_config=mistral_config(), vision_config=vision, spatial_merge_size=2)
    return _randomize(transformers.Mistral3ForConditionalGeneration(cfg), seed).eval()


def make_mistral_tokenizer(root, template: bool = True) -> Path:
    """A fast tokenizer (``tokenizer.json`` + ``tokenizer_config.json``) with Mistral's control tokens as special
    tokens; ``template``: carrying the Mistral-Small-3 chat template (else a bare one)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from spriteforge.models.families.flux2 import SYSTEM_MESSAGE

    d = Path(root) / ("mistral_tokenizer" if template else "mistral_tokenizer_bare")
    if (d / "tokenizer_config.json").exists():
        return d
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [SYSTEM_MESSAGE, "a red knight", "a blue slime sprite, pixel art", "a small green dragon on a hill"] * 4
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=list(SPECIALS),
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                               pad_token="<pad>", additional_special_tokens=list(SPECIALS[3:7]))
    if template:
        tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(d))
    return d


# Mistral's tekken pre-tokenizer pattern (tekken.json's config.pattern)
TEKKEN_PATTERN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
                  r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")


def make_tekken(root) -> Path:
    """``tekken.json`` in Mistral's format (control tokens by rank, then byte-level BPE tokens by rank as base64 bytes)
    with the tiny tokenizer's vocabulary: what ComfyUI's Mistral-3 file embeds as ``tekken_model``."""
    import base64
    import json

    from transformers.convert_slow_tokenizer import bytes_to_unicode

    path = Path(root) / "tekken.json"
    if path.exists():
        return path
    src = json.loads((make_mistral_tokenizer(root, template=False) / "tokenizer.json").read_text())["model"]["vocab"]
    decode = {c: b for b, c in bytes_to_unicode().items()}
    pieces = [bytes(decode[c] for c in piece) for piece, _ in sorted(src.items(), key=lambda kv: kv[1]) if piece not in SPECIALS]
    vocab = [{"rank": i, "token_bytes": base64.b64encode(b).decode(), "token_str": b.decode("utf-8", "replace")} for i, b in enumerate(pieces)]
    specials = [{"rank": i, "token_str": t, "is_control": True} for i, t in enumerate(SPECIALS)]
    cfg = {"pattern": TEKKEN_PATTERN, "num_vocab_tokens": len(vocab) + len(SPECIALS), "default_vocab_size": len(vocab) + len(SPECIALS),
           "default_num_special_tokens": len(SPECIALS), "version": "v7"}
    path.write_text(json.dumps({"config": cfg, "vocab": vocab, "special_tokens": specials}))
    return path


def make_mistral3(root, layout: str = "comfy", seed: int = 0, template: bool = False, tekken: bool = False,
                  pruned: bool = False) -> Path:
    """``layout``: ``comfy`` — ``mistral_3_small_flux2_bf16.safetensors`` as ComfyUI users hold it (the language model
    under ``model.``, no vision tower, no head) with its tokenizer beside it (``<stem>_tokenizer/``), or ``tekken``:
    inside it as ComfyUI's file carries it (``tekken_model``, the bytes of ``tekken.json``); ``pruned``: cut after
    layer 30, as ComfyUI's 30-layer file (the same weights otherwise); ``folder`` — a
    diffusers FLUX.2 [dev] folder's ``text_encoder/`` (``Mistral3ForConditionalGeneration.save_pretrained``) and
    ``tokenizer/``, returning the ``text_encoder/`` folder."""
    import shutil

    root = Path(root)
    model = build_mistral3(seed)
    tok = make_mistral_tokenizer(root / "tokenizers", template=template)
    if layout == "comfy":
        path = root / "mistral_3_small_flux2_bf16.safetensors"
        sd = {"model." + k: v for k, v in model.model.language_model.state_dict().items()
              if not (pruned and k.startswith(tuple(f"layers.{i}." for i in range(30, MISTRAL_LAYERS))))}
        if tekken:
            import torch

            sd["tekken_model"] = torch.frombuffer(bytearray(make_tekken(root / "tokenizers").read_bytes()), dtype=torch.uint8)
        else:
            shutil.copytree(tok, root / f"{path.stem}_tokenizer", dirs_exist_ok=True)
        _save_file(sd, path)
        return path
    d = root / "flux2-dev-folder"
    model.save_pretrained(str(d / "text_encoder"))
    shutil.copytree(tok, d / "tokenizer", dirs_exist_ok=True)
    return d / "text_encoder"
