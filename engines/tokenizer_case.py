"""Tokenizer fixes shared by every engine (the torch and MLX loaders hand out the same tokenizer objects).

:func:`fold_case_if_lowercase`: a tokenizer whose vocabulary has no upper-case letters at all was trained
on case-folded text (the built-in demo model's word-level sentencepiece model, trained with
``nmt_nfkc_cf``). transformers 5 rebuilds a T5Tokenizer's normaliser when it loads one, dropping the
lower-casing, so "Red Sword" becomes two unknown tokens while "red sword" works. Such tokenizers get a
lower-casing step in their own normaliser, so every caller (torch or MLX generation, the nodes, the
command line) sees case-insensitive prompts. Tokenizers with upper-case pieces (real T5, Gemma) are left
exactly as they are; ones that already lower-case (CLIP) too. Decided from the tokenizer's own vocabulary
and normaliser, never from the prompt. No torch or mlx here.
"""

from __future__ import annotations

from .. import log as _log

logger = _log.get_logger()


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
    logger.debug("tokenizer %s: lower-case-only vocabulary, prompts are lower-cased", type(tok).__name__)
    return tok


__all__ = ["fold_case_if_lowercase"]
