"""Tiny Qwen text encoders in the real formats: a byte-level BPE tokenizer with Qwen's special tokens and chat
template (trained on the fly with the ``tokenizers`` library, saved as transformers' ``Qwen2Tokenizer`` saves it,
plus the ``vocab.json``/``merges.txt`` pair ComfyUI ships as ``qwen25_tokenizer``), and a tiny real ``Qwen3Model``
saved as ``qwen_3_4b.safetensors`` is (a ``Qwen3ForCausalLM`` state dict: ``model.*`` names, the tied ``lm_head``
absent; the 8B layout stores an untied ``lm_head``) or as a transformers folder.

    make_qwen_tokenizer(root, name="qwen_tokenizer") -> tokenizer folder
    build_qwen3(seed=0, vocab_size=..., layers=2) -> transformers.Qwen3Model
    make_qwen3(root, layout="file"|"folder", size="4b"|"8b", seed=0, name=None) -> the file or folder
"""

from __future__ import annotations

import json
from pathlib import Path

QWEN3_DIM = 32  # hidden width of the tiny Qwen3 (Z-Image's caption features, ``cap_feat_dim``)
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
VISION_SPECIALS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")  # Qwen2.5-VL's added tokens
# Qwen3's chat template, reduced to what one user message with ``add_generation_prompt`` renders (``enable_thinking``
# false adds the empty think block, as the real template does)
CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}")


def _corpus() -> list[str]:
    from spriteforge.tests.tiny_models import _TEXT

    return _TEXT.splitlines()


def make_qwen_tokenizer(root, name: str = "qwen_tokenizer", vision: bool = False) -> Path:
    """A ``Qwen2Tokenizer`` folder (``save_pretrained``: tokenizer.json + tokenizer_config.json with the chat template)
    with ``vocab.json`` and ``merges.txt`` beside it; ``vision``: with Qwen2.5-VL's vision tokens too
    (``<|vision_start|>``, ``<|image_pad|>``...), as its released tokenizer has them."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    d = Path(root) / name
    if (d / "tokenizer_config.json").exists():
        return d
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=320, special_tokens=list(SPECIALS),
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    regular = sorted((v, k) for k, v in model["vocab"].items() if k not in SPECIALS)
    vocab = {k: i for i, (_, k) in enumerate(regular)}  # the special tokens come after the vocabulary, as Qwen's do
    tok = transformers.Qwen2Tokenizer(vocab=vocab, merges=merges)
    extra = list(VISION_SPECIALS) if vision else []
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"] + extra})
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(d))
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return d


def tokenizer_size(root, name: str = "qwen_tokenizer", vision: bool = False) -> int:
    import transformers

    return len(transformers.AutoTokenizer.from_pretrained(str(make_qwen_tokenizer(root, name, vision)), local_files_only=True))


def build_qwen3(seed: int = 0, vocab_size: int = 400, layers: int = 3, tied: bool = True):
    """A tiny real ``Qwen3ForCausalLM`` (GQA: 4 query heads over 2 key/value heads, q/k norms)."""
    import transformers

    from spriteforge.tests.tiny_models import _randomize

    cfg = transformers.Qwen3Config(vocab_size=vocab_size, hidden_size=QWEN3_DIM, intermediate_size=64, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
                                   rope_theta=1000000.0, max_position_embeddings=512, tie_word_embeddings=tied,
                                   bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return _randomize(transformers.Qwen3ForCausalLM(cfg), seed)


def make_qwen3(root, layout: str = "file", size: str = "4b", seed: int = 0, name: str | None = None) -> Path:
    """``layout="file"``: ``qwen_3_<size>.safetensors`` as ComfyUI users hold it, with ``qwen_3_<size>_tokenizer/``
    beside it; ``"folder"``: a transformers folder (``save_pretrained`` of ``Qwen3ForCausalLM``) holding its tokenizer."""
    from spriteforge.tests.tiny_models import _save_file

    root = Path(root)
    tok = make_qwen_tokenizer(root)
    model = build_qwen3(seed, vocab_size=tokenizer_size(root), tied=size != "8b")
    stem = name or f"qwen_3_{size}"
    if layout == "folder":
        d = root / stem
        if not (d / "config.json").exists():
            model.save_pretrained(str(d))
            for f in tok.iterdir():
                (d / f.name).write_bytes(f.read_bytes())
        return d
    path = root / f"{stem}.safetensors"
    if not path.exists():
        sd = dict(model.state_dict())
        if size != "8b":
            sd.pop("lm_head.weight", None)  # tied: the release does not store it
        _save_file(sd, path)
        side = root / f"{stem}_tokenizer"
        if not side.exists():
            side.mkdir(parents=True)
            for f in tok.iterdir():
                (side / f.name).write_bytes(f.read_bytes())
    return path


def load_qwen3(path):
    """The tiny model back as a transformers ``Qwen3Model`` (for references)."""
    import transformers

    from spriteforge.models.keymaps import gemma_model_keys

    p = Path(path)
    if p.is_dir():
        return transformers.Qwen3Model.from_pretrained(str(p), local_files_only=True).eval()
    from safetensors.torch import load_file

    sd = gemma_model_keys(load_file(str(p)))
    model = build_qwen3(0, vocab_size=sd["embed_tokens.weight"].shape[0]).model
    model.load_state_dict(sd)
    return model.eval()
