"""Prompts are case-insensitive on tokenizers trained on case-folded text (the demo model), and only there.

transformers 5's T5Tokenizer rebuilds its normaliser on load and drops the demo tokenizer's lower-casing;
the loaders (torch and MLX) give such tokenizers a lower-casing normaliser, decided from the vocabulary
(engines/tokenizers.py). Tokenizers with upper-case pieces keep telling cases apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "demo_model"
needs_demo = pytest.mark.skipif(not (MODEL / "model_index.json").exists(), reason="demo_model/ is not present")


@needs_demo
def test_plain_transformers_load_is_case_sensitive_but_ours_is_not():
    import transformers

    from spriteforge.engines.tokenizers import find_tokenizer

    plain = transformers.T5Tokenizer.from_pretrained(MODEL / "tokenizer", local_files_only=True)
    assert plain("Red Sword").input_ids != plain("red sword").input_ids  # the bug: two unknown tokens
    assert plain.unk_token_id in plain("Red Sword").input_ids
    ours = find_tokenizer("t5", MODEL / "text_encoder")
    for text in ("Red Sword", "RED SWORD", "rEd sWoRd"):
        assert ours(text).input_ids == plain("red sword").input_ids
    assert ours.unk_token_id not in ours("Small Blue Gem With Outline").input_ids


def _tiny_t5_tokenizer(pieces):
    import transformers

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(p, -1.0 - i * 0.01) for i, p in enumerate(pieces)]
    return transformers.T5Tokenizer(vocab=vocab, extra_ids=0)


def test_only_lower_case_vocabularies_are_folded():
    from spriteforge.engines.tokenizers import fold_case_if_lowercase

    lower = fold_case_if_lowercase(_tiny_t5_tokenizer(["\u2581red", "\u2581sword", "\u2581a"]))
    assert lower("Red Sword").input_ids == lower("red sword").input_ids == [3, 4, 1]
    # a vocabulary with upper-case pieces (every real T5/Gemma vocabulary) means case matters: untouched
    cased = fold_case_if_lowercase(_tiny_t5_tokenizer(["\u2581red", "\u2581Red", "\u2581sword"]))
    assert cased("Red sword").input_ids == [4, 5, 1] and cased("red sword").input_ids == [3, 5, 1]
    # idempotent, and a tokenizer that already lower-cases (CLIP-style normaliser) is left as it is
    assert fold_case_if_lowercase(lower)("RED").input_ids == [3, 1]


@needs_demo
def test_red_sword_and_red_sword_give_the_same_image_on_the_demo_model():
    from spriteforge import pipeline as P
    from spriteforge.engines import get_engine

    eng = get_engine("torch", "cpu")
    h = eng.load_model(str(MODEL))
    imgs = [P.generate(eng, h, P.GenerateParams(prompt=p, seed=3, steps=6, cfg=4.5, width=32, height=32))
            for p in ("Red Sword", "red sword", "red potion")]
    assert np.array_equal(imgs[0], imgs[1])
    assert not np.array_equal(imgs[1], imgs[2])  # the prompt does matter


@needs_demo
def test_the_mlx_loader_hands_out_the_same_case_folding_tokenizer():
    import json

    pytest.importorskip("mlx.core")
    from spriteforge.engines.tokenizers import folder_tokenizer as _folder_tokenizer

    tok = _folder_tokenizer(MODEL, "text_encoder", json.loads((MODEL / "model_index.json").read_text()))
    assert tok("Red Sword").input_ids == tok("red sword").input_ids
    assert tok.unk_token_id not in tok("Red Sword").input_ids
