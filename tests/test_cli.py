from __future__ import annotations

import json

import numpy as np
import subprocess
import sys


def test_doctor_json_lists_engines_policy_and_versions(capsys):
    from spriteforge.cli.main import main

    assert main(["doctor", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["ok"] is True
    assert {e["name"] for e in rep["engines"]} >= {"torch", "mlx"}
    assert rep["versions"]["numpy"]
    assert any(d["policy"]["reasons"] for d in rep["devices"])


def test_console_script_runs_doctor():
    out = subprocess.run(["spriteforge", "doctor"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Policy per device" in out.stdout and "because" in out.stdout


def test_errors_print_code_and_exit_nonzero_without_traceback():
    code = "from spriteforge.cli.main import main; import sys; sys.exit(main(['--models', '/nonexistent'] if False else ['nosuchcommand']))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr


def _tiny_pixart_and_lora(tmp_path):
    import sys as _sys

    _sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    import tiny_models
    import torch
    from safetensors.torch import save_file

    folder = tiny_models.make_pixart(tmp_path / "m", layout="folder")
    model = tiny_models.build_pixart()
    lin = model.transformer_blocks[0].attn1.to_q
    out_f, in_f = lin.weight.shape
    g = torch.Generator().manual_seed(0)
    lora = {
        "transformer.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.randn(4, in_f, generator=g),
        "transformer.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.randn(out_f, 4, generator=g),
    }
    lp = tmp_path / "style.safetensors"
    save_file(lora, str(lp))
    return folder, lp


def test_generate_applies_lora_and_inspect_recognises_it(tmp_path, capsys):
    from PIL import Image

    from spriteforge.cli.main import main

    folder, lp = _tiny_pixart_and_lora(tmp_path)
    assert main(["inspect", str(lp), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["kind"] == "lora" and rep["family"] == "pixart" and rep["rank"] == 4
    assert {"family", "variant", "dtype", "parameters"} <= set(rep)
    common = ["generate", "--model", str(folder), "--prompt", "red potion", "--steps", "2", "--width", "128",
              "--height", "128", "--seed", "3"]
    assert main(["-q", *common, "--out", str(tmp_path / "base")]) == 0
    assert main(["-q", *common, "--lora", f"{lp}:0", "--out", str(tmp_path / "zero")]) == 0
    assert main(["-q", *common, "--lora", f"{lp}:1.5", "--out", str(tmp_path / "strong")]) == 0
    img = {k: np.asarray(Image.open(tmp_path / k / "sf-3.png")) for k in ("base", "zero", "strong")}
    assert np.array_equal(img["base"], img["zero"])
    assert not np.array_equal(img["base"], img["strong"])


def test_cli_coded_error_for_missing_model(tmp_path):
    out = subprocess.run(["spriteforge", "generate", "--model", str(tmp_path / "nope.safetensors"), "--prompt", "x",
                          "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 10, out.stderr
    assert out.stderr.startswith("MODEL_NOT_FOUND:") and "Traceback" not in out.stderr
