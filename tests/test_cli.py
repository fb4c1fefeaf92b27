from __future__ import annotations

import json
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
