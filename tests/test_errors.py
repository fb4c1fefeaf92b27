from __future__ import annotations

import pytest

from spriteforge import errors
from spriteforge.errors import SpriteForgeError, classify


def test_codes_are_the_published_set_with_distinct_exit_codes():
    assert set(errors.CODES) == {
        "MODEL_NOT_FOUND", "MODEL_NOT_CONVERTED", "UNSUPPORTED_ARCHITECTURE", "LORA_KEY_MISMATCH",
        "LORA_UNSUPPORTED_ENGINE", "DIMENSION_LIMIT", "OUT_OF_MEMORY", "ENGINE_UNAVAILABLE", "ENGINE_INTERNAL", "BAD_INPUT",
    }
    assert len(set(errors.CODES.values())) == len(errors.CODES)
    assert set(errors.HINTS) == set(errors.CODES)


def test_unknown_code_is_refused():
    with pytest.raises(ValueError):
        SpriteForgeError("NOPE", "x")


@pytest.mark.parametrize(
    "exc,code",
    [
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "OUT_OF_MEMORY"),
        (RuntimeError("HIP out of memory. Tried to allocate 1.00 GiB"), "OUT_OF_MEMORY"),
        (RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB)"), "OUT_OF_MEMORY"),
        (RuntimeError("[METAL] Command buffer execution failed: Insufficient Memory"), "OUT_OF_MEMORY"),
        (MemoryError(), "OUT_OF_MEMORY"),
        (AssertionError("Torch not compiled with CUDA enabled"), "ENGINE_UNAVAILABLE"),
        (RuntimeError("HIP error: invalid device function"), "ENGINE_UNAVAILABLE"),
        (ModuleNotFoundError("No module named 'mlx'", name="mlx"), "ENGINE_UNAVAILABLE"),
        (FileNotFoundError(2, "No such file", "/x/model.safetensors"), "MODEL_NOT_FOUND"),
        (ValueError("height must be positive"), "BAD_INPUT"),
        (OSError(36, "File name too long", "/out/" + "a" * 5000 + "_00001_.png"), "BAD_INPUT"),  # a user's prefix
        (RuntimeError("something odd in a kernel"), "ENGINE_INTERNAL"),
    ],
)
def test_classifier_maps_raw_exceptions(exc, code):
    err = classify(exc, context="decoding the latent")
    assert err.code == code
    assert err.message.startswith("While decoding the latent")
    assert err.hint


def test_classified_error_passes_through():
    e = SpriteForgeError("BAD_INPUT", "width must be a multiple of 16.")
    assert classify(e) is e
    assert "[BAD_INPUT]" in str(e) and e.to_dict()["code"] == "BAD_INPUT"


def test_cli_prints_code_and_message_without_traceback(capsys):
    from spriteforge.cli.main import main

    rc = main(["doctor", "--json"])
    assert rc == 0
    # an error path: an unknown model kind through paths.resolve is BAD_INPUT
    from spriteforge import paths

    with pytest.raises(SpriteForgeError) as ei:
        paths.resolve("nope", "x")
    assert ei.value.code == "BAD_INPUT"
