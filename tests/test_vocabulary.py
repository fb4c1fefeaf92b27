"""Prompt words a model cannot read are said, not dropped in silence (issue #21.5): the built-in model's word-level
tokenizer knows 28 words; "iron", "dragon" and "monster" reach it as its unknown token."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny_models  # noqa: E402

from spriteforge.engines.tokenizers import folder_tokenizer, known_words, unknown_words  # noqa: E402
from spriteforge.resolve import DEMO_DIR  # noqa: E402


def _demo_tokenizer():
    index = json.loads((DEMO_DIR / "model_index.json").read_text())
    return folder_tokenizer(DEMO_DIR, "text_encoder", index)


def test_demo_tokenizer_names_the_words_it_does_not_know():
    tok = _demo_tokenizer()
    assert unknown_words(tok, "Red iron sword, dragon monster!") == ["iron", "dragon", "monster"]
    assert unknown_words(tok, "small red potion with outline") == []
    vocab = known_words(tok)
    assert {"sword", "potion", "slime", "red", "outline"} <= set(vocab) and "iron" not in vocab
    assert not any(w.startswith("<") or "\u2581" in w for w in vocab)


def test_a_sentencepiece_vocabulary_spells_words_it_never_saw_whole(tmp_path):
    """A subword tokenizer (T5's kind) encodes new words from pieces: nothing to warn about."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models.make_tokenizer(tmp_path, "t5"), local_files_only=True)
    assert unknown_words(tok, "a knight with a sword near the castle") == []


def test_generate_warns_and_lists_the_vocabulary(tmp_path, capsys, caplog):
    from spriteforge.cli.main import main

    with caplog.at_level(logging.WARNING):
        rc = main(["-q", "generate", "--prompt", "iron dragon sword", "--steps", "1", "--out", str(tmp_path)])
    assert rc == 0
    text = caplog.text + capsys.readouterr().err
    assert "'iron', 'dragon'" in text and "It knows only:" in text and "sword" in text.split("It knows only:")[1]
