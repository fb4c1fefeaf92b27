"""Tokenizers for both engines (the torch and MLX loaders hand out the same tokenizer objects); no torch or mlx here.

:func:`find_tokenizer`: the tokenizer of a text encoder, looked for in the file itself, beside it, in the
user's diffusers models and in the tokenizers ComfyUI ships. :func:`folder_tokenizer`: the tokenizer
beside a diffusers folder's text encoder. :func:`tokenizer_from_spm`: a T5/Gemma tokenizer straight
from a sentencepiece model file.

:func:`fold_case_if_lowercase`: a tokenizer whose vocabulary has no upper-case letters at all was trained
on case-folded text (the built-in demo model's word-level sentencepiece model, trained with
``nmt_nfkc_cf``). transformers 5 rebuilds a T5Tokenizer's normaliser when it loads one, dropping the
lower-casing, so "Red Sword" becomes two unknown tokens while "red sword" works. Such tokenizers get a
lower-casing step in their own normaliser, so every caller (torch or MLX generation, the nodes, the
command line) sees case-insensitive prompts. Tokenizers with upper-case pieces (real T5, Gemma) are left
exactly as they are; ones that already lower-case (CLIP) too. Decided from the tokenizer's own vocabulary
and normaliser, never from the prompt.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .. import paths
from ..errors import MODEL_NOT_FOUND, SpriteForgeError
from ..log import get_logger

log = get_logger()

# ComfyUI ships these tokenizers (relative to the ``comfy`` package folder)
COMFY_TOKENIZERS = {
    "clip": ("sd1_tokenizer", "text_encoders/sd1_tokenizer"),
    "t5": ("text_encoders/t5_tokenizer", "t5_tokenizer"),
    "gemma": ("text_encoders/gemma2_tokenizer", "text_encoders/gemma_tokenizer"),
    "qwen": ("text_encoders/qwen25_tokenizer",),  # Qwen's byte-level BPE (Qwen2.5 and Qwen3 share it)
}
TOKENIZER_FILES = {
    "clip": (("vocab.json", "merges.txt"), ("tokenizer.json",)),
    "t5": (("spiece.model",), ("tokenizer.json",)),
    "gemma": (("tokenizer.model",), ("tokenizer.json",)),
    "qwen": (("vocab.json", "merges.txt"), ("tokenizer.json",)),
    "mistral": (("tokenizer.json",),),  # Mistral's (tekken) vocabulary as transformers writes it
}


def _tok_kind(key: str) -> str:
    """The tokenizer kind of text encoder ``key`` (``clip_l`` -> ``clip``, ``qwen3_4b`` -> ``qwen``)."""
    for kind in ("clip", "qwen", "mistral"):
        if key.startswith(kind):
            return kind
    return key


def _has_tokenizer_files(d: Path, kind: str) -> bool:
    return d.is_dir() and any(all((d / f).exists() for f in group) for group in TOKENIZER_FILES[kind])


def tokenizer_from_spm(model_file, kind: str):
    """A T5/Gemma tokenizer straight from a sentencepiece model file.

    transformers 5 converts ``spiece.model``/``tokenizer.model`` through protobuf, which
    ComfyUI installs do not always have; reading pieces and scores with sentencepiece
    itself needs nothing else.
    """
    import sentencepiece as spm
    import transformers

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    n = sp.get_piece_size()
    if kind == "t5":
        vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(n)]
        return transformers.T5Tokenizer(vocab=vocab, extra_ids=0)  # any <extra_id_*> pieces are in the vocabulary
    vocab = {sp.id_to_piece(i): i for i in range(n)}
    merges = []
    for piece, i in vocab.items():
        for j in range(1, len(piece)):
            a, b = piece[:j], piece[j:]
            if a in vocab and b in vocab:
                merges.append((i, vocab[a], vocab[b], a, b))
    merges.sort()
    specials = {sp.id_to_piece(i) for i in range(n) if sp.is_control(i) or sp.is_unknown(i)}
    pick = lambda *names: next((x for x in names if x in specials or x in vocab), names[0])  # noqa: E731
    return transformers.GemmaTokenizer(
        vocab=vocab,
        merges=[(m[3], m[4]) for m in merges],
        bos_token=pick("<bos>", "<s>"),
        eos_token=pick("<eos>", "</s>"),
        pad_token=pick("<pad>"),
        unk_token=pick("<unk>"),
    )


def _load_tokenizer_dir(d: Path, kind: str):
    import transformers

    if kind == "mistral":
        return with_chat_template(transformers.AutoTokenizer.from_pretrained(str(d), local_files_only=True), d)
    cls = {"clip": transformers.CLIPTokenizer, "t5": transformers.T5Tokenizer, "gemma": transformers.GemmaTokenizer,
           "qwen": transformers.Qwen2Tokenizer}[kind]
    errors = []
    if (d / "tokenizer.json").exists() or kind in ("clip", "qwen"):
        try:
            return cls.from_pretrained(str(d), local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - try the other ways
            errors.append(exc)
    spm_file = d / ("spiece.model" if kind == "t5" else "tokenizer.model")
    if spm_file.exists():
        return tokenizer_from_spm(spm_file, kind)
    try:
        return transformers.AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise errors[0] if errors else exc


def with_chat_template(tok, d: Path):
    """``tok`` with the chat template its folder holds beside it when it carries none itself: a processor's
    ``chat_template.json`` (a diffusers FLUX.2 [dev] folder's ``tokenizer/`` is Mistral's PixtralProcessor) or a
    ``chat_template.jinja``. A tokenizer without any keeps none (the family renders its prompt template itself)."""
    if getattr(tok, "chat_template", None):
        return tok
    try:
        if (d / "chat_template.jinja").is_file():
            tok.chat_template = (d / "chat_template.jinja").read_text(encoding="utf-8")
        elif (d / "chat_template.json").is_file():
            tok.chat_template = json.loads((d / "chat_template.json").read_text(encoding="utf-8")).get("chat_template") or None
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("chat template in %s could not be read: %s", d, exc)
    return tok


def comfy_tokenizer_dirs(kind: str) -> list[Path]:
    try:
        import comfy  # type: ignore

        base = Path(os.path.dirname(comfy.__file__))
    except Exception:  # noqa: BLE001 - not inside ComfyUI
        return []
    return [base / rel for rel in COMFY_TOKENIZERS.get(kind, ())]


def find_tokenizer(key: str, near: Path | None = None, *, source=None, required: bool = True):
    """The tokenizer for text encoder ``key`` (``clip_l``, ``clip_g``, ``t5``, ``gemma``, ``qwen3_4b``...).

    Looked for, in order: tokenizer data embedded in the file (ComfyUI's ``spiece_model``, ``tekken_model``; a
    llama.cpp GGUF's vocabulary, merges and chat template, ``tokenizer.ggml.*``),
    a tokenizer folder beside the file (``<stem>_tokenizer/``, ``tokenizer/``, or the
    folder itself), the tokenizer sub-folders of the user's diffusers models, and the
    tokenizers ComfyUI ships. Raises MODEL_NOT_FOUND saying where to put one.
    """
    kind = _tok_kind(key)
    if source is not None and kind in ("gemma", "t5") and "spiece_model" in source.tensors:
        tok = _embedded_spiece(source, kind)
        if tok is not None:
            return fold_case_if_lowercase(tok)
    if source is not None and kind == "mistral" and "tekken_model" in source.tensors:
        tok = _embedded_tekken(source)
        if tok is not None:
            return tok
    if source is not None and kind == "qwen" and _gguf_tokenizer_model(source) == "gpt2":
        tok = _embedded_gguf(source)
        if tok is not None:
            return _with_chat_tokens(tok)
    cands: list[Path] = []
    if near is not None:
        near = Path(near)
        if near.is_dir():  # a text_encoder*/ folder of a diffusers model: its tokenizer*/ siblings
            cands += [near] + sorted(d for d in near.parent.glob("tokenizer*") if d.is_dir())
        else:
            cands += [near.parent / f"{near.stem}_tokenizer", near.parent / "tokenizer", near.parent / f"{kind}_tokenizer", near.parent / near.stem]
    for root in paths.roots("diffusers"):
        if root.is_dir():
            for model in sorted(root.iterdir()):
                if model.is_dir():
                    cands += sorted(d for d in model.glob("tokenizer*") if d.is_dir())
    cands += comfy_tokenizer_dirs(kind)
    for d in cands:
        if _has_tokenizer_files(d, kind) and _tokenizer_matches(d, kind):
            try:
                tok = _load_tokenizer_dir(d, kind)
                return fold_case_if_lowercase(_with_chat_tokens(tok) if kind == "qwen" else tok)
            except Exception as exc:  # noqa: BLE001 - try the next place
                log.warning("tokenizer in %s could not be loaded: %s", d, exc)
    if not required:
        return None
    where = str(near.parent / f"{near.stem}_tokenizer") if near is not None and not near.is_dir() else "a tokenizer/ folder beside the model"
    files = " + ".join(TOKENIZER_FILES[kind][0]) + ("" if TOKENIZER_FILES[kind][0] == ("tokenizer.json",) else " (or tokenizer.json)")
    raise SpriteForgeError(
        MODEL_NOT_FOUND,
        f"no {key} tokenizer was found. Put its files ({files}) in {where}, or keep the model's diffusers folder in models/diffusers; "
        "inside ComfyUI the tokenizers ComfyUI ships are used.",
        details={"tokenizer": key, "searched": [str(c) for c in cands]},
    )


# Qwen's chat-template markers, the special tokens right after ``<|endoftext|>`` in its vocabulary (151643, 151644, 151645)
QWEN_CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
# the special tokens after them in Qwen2.5's vocabulary (151646 to 151656), up to Qwen2.5-VL's vision tokens
# (``<|image_pad|>`` = 151655: Qwen-Image-Edit's reference images)
QWEN_VISION_TOKENS = ("<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
                      "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
QWEN_VOCAB = 151643  # the byte-level vocabulary's size (``<|endoftext|>`` is the first id after it)


def _with_chat_tokens(tok):
    """``tok`` knowing Qwen's chat markers as single special tokens: a folder of only ``vocab.json`` + ``merges.txt``
    has ``<|endoftext|>`` (the tokenizer's default) but would spell ``<|im_start|>`` out in bytes. Added in order after
    it, they get the ids Qwen's vocabulary gives them."""
    vocab = tok.get_vocab()
    missing = [t for t in QWEN_CHAT_TOKENS if t not in vocab]
    if tok.vocab_size == QWEN_VOCAB and "<|image_pad|>" not in vocab:  # Qwen's own vocabulary: its vision tokens at their ids
        missing += [t for t in QWEN_VISION_TOKENS if t not in vocab]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing})
    return tok


def _tokenizer_matches(d: Path, kind: str) -> bool:
    cfg = d / "tokenizer_config.json"
    if not cfg.exists():
        return True
    try:
        cls = json.loads(cfg.read_text()).get("tokenizer_class", "") or ""
    except (OSError, json.JSONDecodeError):
        return True
    if not cls:
        return True
    low = cls.lower()
    if kind == "mistral":  # Mistral's tokenizer.json loads as a generic fast tokenizer (LlamaTokenizerFast...)
        return not any(other in low for other in ("clip", "t5", "gemma", "qwen"))
    return kind in low


def _embedded_spiece(source, kind):
    import tempfile

    try:
        data = source.raw("spiece_model")
        with tempfile.TemporaryDirectory() as tmp:
            f = Path(tmp) / "tokenizer.model"
            f.write_bytes(data)
            return tokenizer_from_spm(f, kind)
    except Exception as exc:  # noqa: BLE001
        log.warning("embedded tokenizer could not be used: %s", exc)
        return None

def _gguf_tokenizer_model(source) -> str | None:
    """A GGUF file's ``tokenizer.ggml.model`` (``gpt2``: a byte-level BPE such as Qwen's), None for any other file."""
    header = getattr(source, "header", None)
    if getattr(header, "format", "") != "gguf":
        return None
    return (header.metadata or {}).get("tokenizer.ggml.model")


def _embedded_gguf(source):
    """The tokenizer a llama.cpp GGUF carries (its vocabulary, merges, token types and chat template in
    ``tokenizer.ggml.*`` / ``tokenizer.chat_template``), rebuilt by transformers' own GGUF tokenizer reader as a
    ``Qwen2Tokenizer`` (the file is read locally, never fetched)."""
    try:
        import transformers

        p = Path(source.path)
        return transformers.Qwen2Tokenizer.from_pretrained(str(p.parent), gguf_file=p.name, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - a file without a usable vocabulary: look beside it instead
        log.warning("the tokenizer in %s could not be used: %s", getattr(source, "path", "the file"), exc)
        return None


def _embedded_tekken(source):
    """The tokenizer ComfyUI's Mistral-3 file carries: Mistral's ``tekken.json`` stored as bytes (``tekken_model``),
    converted by transformers' own tekken converter (its byte-level BPE, control tokens first). It has no chat
    template: the family renders the Mistral-Small-3 one."""
    import tempfile

    try:
        from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer

        with tempfile.TemporaryDirectory() as tmp:
            f = Path(tmp) / "tekken.json"
            f.write_bytes(source.raw("tekken_model"))
            return convert_tekken_tokenizer(str(f), chat_template="")
    except Exception as exc:  # noqa: BLE001 - then the tokenizer folders are looked for
        log.warning("embedded tekken tokenizer could not be used: %s", exc)
        return None


def folder_tokenizer(p: Path, sub: str, index: dict):
    """The tokenizer beside the diffusers text encoder ``p/sub`` (``model_index.json`` = ``index``), or None."""
    import transformers

    tsub = sub.replace("text_encoder", "tokenizer")
    tentry = index.get(tsub)
    if not (tentry and tentry[0]) and sub == "text_encoder" and (index.get("processor") or [None])[0]:
        tsub, tentry = "processor", index["processor"]  # (QwenImage21Pipeline: no tokenizer/, its processor holds it)
    if not (tentry and tentry[0] and (p / tsub).is_dir()):
        return None
    try:
        tok = getattr(transformers, tentry[1]).from_pretrained(p / tsub, local_files_only=True)
    except Exception:  # noqa: BLE001 - e.g. slow class unavailable: generic loader
        tok = transformers.AutoTokenizer.from_pretrained(p / tsub, local_files_only=True)
    if hasattr(tok, "tokenizer"):  # a processor (FLUX.2 [dev]'s PixtralProcessor): its tokenizer, with its chat template
        tok = with_chat_template(tok.tokenizer, p / tsub)
    return fold_case_if_lowercase(tok)  # a lower-case-only vocabulary: case-insensitive prompts


def _vocabulary_is_lowercase(tok) -> bool:
    """True when the vocabulary has cased letters and none of them is upper case (special tokens aside)."""
    try:
        vocab = tok.get_vocab()
    except Exception:  # noqa: BLE001 - not a transformers tokenizer
        return False
    special = set(getattr(tok, "all_special_tokens", []) or [])
    cased = False
    for piece in vocab:
        if piece in special or (piece.startswith("<") and piece.endswith(">")):
            continue
        if piece != piece.lower():
            return False
        cased = cased or piece != piece.upper()
    return cased


def fold_case_if_lowercase(tok):
    """Give ``tok`` a lower-casing normaliser when its vocabulary is lower-case only (see the module
    docstring); returns ``tok`` (changed in place). A tokenizer without a ``tokenizers`` backend (the slow
    sentencepiece classes, which apply the model's own case folding) is returned unchanged."""
    if tok is None or getattr(tok, "_spriteforge_case_folded", False):
        return tok
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None or not _vocabulary_is_lowercase(tok):
        return tok
    norm = backend.normalizer
    probe = "Aa Zz"
    if norm is not None and norm.normalize_str(probe) == norm.normalize_str(probe).lower() and \
            norm.normalize_str(probe) != probe:
        tok._spriteforge_case_folded = True  # already folds case (CLIP)
        return tok
    from tokenizers import normalizers

    backend.normalizer = normalizers.Sequence([normalizers.Lowercase()] + ([norm] if norm is not None else []))
    tok._spriteforge_case_folded = True
    log.debug("tokenizer %s: lower-case-only vocabulary, prompts are lower-cased", type(tok).__name__)
    return tok


SMALL_VOCABULARY = 300  # a vocabulary this small is listed in full when a prompt word is unknown to it


def unknown_words(tok, text: str) -> list[str]:
    """The words of ``text`` (punctuation aside) that ``tok`` can only encode with its unknown token: words the model
    never learned, which reach it as nothing. Empty for a tokenizer without an unknown token."""
    unk = getattr(tok, "unk_token_id", None)
    if unk is None or not callable(tok):
        return []
    words = list(dict.fromkeys(re.findall(r"\w[\w'-]*", str(text))))
    if not words:
        return []
    ids = tok(words, add_special_tokens=False)["input_ids"]
    return [w for w, got in zip(words, ids) if unk in got]


def known_words(tok) -> list[str] | None:
    """The whole vocabulary as plain words (special tokens and the word-start mark removed), sorted, when it has at
    most :data:`SMALL_VOCABULARY` entries (the built-in model's word-level one); None for a real vocabulary."""
    try:
        vocab = tok.get_vocab()
    except Exception:  # noqa: BLE001 - not a transformers tokenizer
        return None
    if len(vocab) > SMALL_VOCABULARY:
        return None
    special = set(getattr(tok, "all_special_tokens", []) or [])
    words = {p.replace("\u2581", "").strip() for p in vocab if p not in special}
    return sorted(w for w in words if w)


def warn_unknown_words(tok, prompts) -> list[str]:
    """Log a warning naming the prompt words ``tok`` does not know (and, for a small vocabulary, every word it
    does); returns the unknown words."""
    unknown = list(dict.fromkeys(w for p in prompts for w in unknown_words(tok, p)))
    if unknown:
        vocab = known_words(tok)
        knows = f" It knows only: {', '.join(vocab)}." if vocab else ""
        log.warning("the model's tokenizer does not know %s, so %s no effect on the image.%s",
                    ", ".join(repr(w) for w in unknown), "it has" if len(unknown) == 1 else "they have", knows)
    return unknown


__all__ = ["find_tokenizer", "folder_tokenizer", "tokenizer_from_spm", "fold_case_if_lowercase", "comfy_tokenizer_dirs",
           "COMFY_TOKENIZERS", "TOKENIZER_FILES", "unknown_words", "known_words", "warn_unknown_words"]
