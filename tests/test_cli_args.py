"""The command line says what is true (issues #21.4, #21.5, #21.7, #22.8): every ``generate`` argument is checked
before a model loads or a file is written, ``run`` names the model files a workflow misses and where it looked,
``--models`` must exist, the built-in model keeps its own size when named by path, and the output is quiet with
``-q`` and readable outside a terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spriteforge.cli.main import main
from spriteforge.resolve import DEMO_DIR

ROOT = Path(__file__).resolve().parents[1]
TXT2IMG = ROOT / "example_workflows" / "api" / "txt2img.json"


def _cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([*map(str, argv)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.parametrize("args,code,said", [
    (["--shift", "-1"], "BAD_INPUT", "--shift"),
    (["--shift", "0"], "BAD_INPUT", "--shift"),
    (["--guidance", "nan"], "BAD_INPUT", "--guidance"),
    (["--cfg", "inf"], "BAD_INPUT", "--cfg"),
    (["--steps", "0"], "BAD_INPUT", "--steps"),
    (["--denoise", "1.5"], "BAD_INPUT", "--denoise"),
    (["--batch", "0"], "BAD_INPUT", "--batch"),
    (["--feather", "-3"], "BAD_INPUT", "--feather"),
    (["--max-side", "0"], "BAD_INPUT", "--max-side"),
    (["--seed", str(2**70)], "BAD_INPUT", "2**64-1"),
    (["--seed", "-1"], "BAD_INPUT", "2**64-1"),
    (["--seed", str(2**64 - 1), "--batch", "2"], "BAD_INPUT", "seed + i"),
    (["--sampler", "nope"], "BAD_INPUT", "dpmpp_2m"),
    (["--schedule", "nope"], "BAD_INPUT", "karras"),
    (["--width", "0"], "BAD_INPUT", "--width"),
    (["--height", "4096"], "DIMENSION_LIMIT", "--max-side"),
    (["--prefix", "a" * 5000], "BAD_INPUT", "255 bytes"),
    (["--prefix", "../x"], "BAD_INPUT", "--prefix"),
    (["--mask", "m.png"], "BAD_INPUT", "--init"),
])
def test_generate_refuses_bad_arguments_before_loading_or_writing(args, code, said, tmp_path, capsys):
    """The model named does not exist: a refusal that names the argument (not MODEL_NOT_FOUND) shows the argument
    was checked before any model was looked for; the output folder is never created."""
    out = tmp_path / "out"
    rc, _, err = _cli(capsys, "generate", "--model", tmp_path / "missing.safetensors", "--prompt", "x",
                      "--out", out, *args)
    assert err.startswith(f"{code}:") and said in err, err
    assert rc != 0 and not out.exists()


def test_generate_refuses_an_out_that_is_a_file_and_a_lora_strength_that_is_not_a_number(tmp_path, capsys):
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"")
    rc, _, err = _cli(capsys, "generate", "--prompt", "x", "--out", tmp_path / "o", "--lora", f"{lora}:nan")
    assert rc == 19 and "'nan' is not a strength" in err and "does not exist" not in err, err
    rc, _, err = _cli(capsys, "generate", "--prompt", "x", "--out", tmp_path / "o", "--lora", f"{lora}:1e999")
    assert rc == 19 and "finite" in err, err
    rc, _, err = _cli(capsys, "generate", "--prompt", "x", "--out", lora)
    assert rc == 19 and "is a file, not a folder" in err, err


@pytest.mark.parametrize("argv", [
    ["generate", "--prompt", "x", "--out", "{tmp}/o"],
    ["run", str(TXT2IMG), "--out", "{tmp}/o"],
    ["run", str(TXT2IMG), "--check"],
    ["inspect", "some-model.safetensors"],
    ["convert", "some-model.safetensors"],
])
def test_models_folder_that_does_not_exist_is_refused(argv, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    rc, _, err = _cli(capsys, *argv, "--models", "/does/not/exist")
    assert rc == 10 and err.startswith("MODEL_NOT_FOUND: --models /does/not/exist: that folder does not exist"), err
    assert not (tmp_path / "o").exists()


def test_run_without_the_models_names_the_files_the_folders_and_how_to_point_at_them(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SPRITEFORGE_MODELS", raising=False)
    rc, _, err = _cli(capsys, "run", TXT2IMG, "--out", tmp_path / "o")
    assert rc == 10 and err.startswith("MODEL_NOT_FOUND:"), err
    for name in ("flux1-schnell.safetensors", "ae.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors"):
        assert name in err
    assert "--models" in err and "SPRITEFORGE_MODELS" in err and "not one of the choices" not in err
    models = tmp_path / "models"
    models.mkdir()
    rc, _, err = _cli(capsys, "run", TXT2IMG, "--check", "--models", models)
    assert rc == 10 and f"Searched {models}" in err and "flux1-schnell.safetensors" in err, err
    monkeypatch.setenv("SPRITEFORGE_MODELS", str(models))
    rc, _, err = _cli(capsys, "run", TXT2IMG, "--out", tmp_path / "o")
    assert rc == 10 and f"Searched {models}" in err, err
    assert not (tmp_path / "o").exists()


def test_print_api_does_not_need_the_models(capsys, monkeypatch):
    monkeypatch.delenv("SPRITEFORGE_MODELS", raising=False)
    rc, out, err = _cli(capsys, "run", TXT2IMG, "--print-api", "--set", "4.model=other.safetensors")
    assert rc == 0, err
    prompt = json.loads(out)
    assert prompt["4"]["inputs"]["model"] == "other.safetensors"
    assert prompt["4"]["class_type"] == "SpriteForgeLoadModel"


def test_other_problems_stay_bad_input(tmp_path, capsys):
    rc, _, err = _cli(capsys, "run", ROOT / "example_workflows" / "api" / "sprite_demo.json", "--check",
                      "--set", "3.sampler=nope")
    assert rc == 19 and err.startswith("BAD_INPUT:") and "sampler" in err, err


def _generate(*argv, env_extra=None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "spriteforge.cli.main", "generate", *map(str, argv)],
                          capture_output=True, text=True, env=env, timeout=600)


def test_demo_model_named_by_path_keeps_its_size_and_generate_reports_progress(tmp_path):
    """By its path the built-in model used to switch to 512x512. Outside a terminal each image's steps show as lines;
    a rounding note shows once."""
    res = _generate("--model", DEMO_DIR, "--prompt", "red sword", "--steps", "2", "--json", "--out", tmp_path / "a")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)["info"]
    assert (info["width"], info["height"]) == (32, 32)
    assert "2/2" in res.stderr and "\r" not in res.stderr  # plain step lines, no carriage-return bar
    res = _generate("--prompt", "red sword", "--steps", "1", "--width", "30", "--out", tmp_path / "b")
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("width 30 rounded to 32") == 1, res.stderr


def test_quiet_shows_no_bars_at_all(tmp_path):
    res = _generate("-q", "--prompt", "red sword", "--steps", "2", "--out", tmp_path / "q")
    assert res.returncode == 0, res.stderr
    assert "Loading weights" not in res.stderr and "2/2" not in res.stderr, res.stderr


def test_a_5000_character_filename_prefix_in_a_workflow_is_bad_input(tmp_path, capsys):
    rc, _, err = _cli(capsys, "-q", "run", ROOT / "example_workflows" / "api" / "sprite_demo.json", "--out", tmp_path / "o",
                      "--set", "3.steps=1", "--set", f"9.filename_prefix={'a' * 5000}")
    assert rc == 19 and err.startswith("BAD_INPUT:") and "over the file system's limit" in err, err


def test_progress_outside_a_terminal_prints_plain_lines_and_quiet_prints_none(monkeypatch):
    import io

    from spriteforge import progress

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.setattr(progress, "_LINE_EVERY_S", 3600.0)  # no line between first and last, however slow the machine
    try:
        progress.set_cli_bars(True)
        out = io.StringIO()  # not a terminal
        with progress.Progress(50, "sampling", stream=out) as bar:
            for _ in range(50):
                bar.update()
        lines = out.getvalue().splitlines()
        assert [ln.split(" (")[0] for ln in lines] == ["sampling: 1/50", "sampling: 50/50"]
        assert "\r" not in out.getvalue()
        progress.set_cli_bars(False)
        assert os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") == "1"  # transformers' loading bars too
        quiet = io.StringIO()
        with progress.Progress(3, "sampling", stream=quiet) as bar:
            for _ in range(3):
                bar.update()
        assert quiet.getvalue() == ""
        progress.set_cli_bars(True)
        assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # the user's own setting stays
        progress.set_cli_bars(False)
        progress.set_cli_bars(True)
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    finally:
        progress.set_cli_bars(True)
        progress._cli_bars["lines"] = False
