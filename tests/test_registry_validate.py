"""What ``comfy node validate`` (comfy-cli, the Comfy registry's publishing check) checks, without comfy-cli.

comfy-cli 1.23 pulls in ruff, uv, GitPython, cookiecutter, httpx and two telemetry clients, so the suite makes
its checks itself: ``project.version`` is set, every ``Environment ::`` classifier is one the registry knows
(others are dropped with a warning), and no ``exec``/``eval`` call or ``;``-joined statements (ruff S102, S307,
E702, which it announces will become errors) in the pack's Python files. And what the registry shows: the
``[tool.comfy]`` Icon is a file of this repository, a small square PNG.
"""

from __future__ import annotations

import ast
import io
import tokenize
import tomllib
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# comfy_cli/registry/config_parser.py: the accelerator classifiers the registry accepts
REGISTRY_ENVIRONMENTS = {"Environment :: GPU :: NVIDIA CUDA", "Environment :: GPU :: AMD ROCm", "Environment :: GPU :: Intel Arc",
                         "Environment :: NPU :: Huawei Ascend", "Environment :: GPU :: Apple Metal"}
SKIP = {".git", ".venv", "node_modules", "__pycache__"}


def _python_files():
    return [p for p in REPO.rglob("*.py") if not SKIP & set(p.relative_to(REPO).parts)]


def test_version_and_classifiers():
    assert PYPROJECT["project"]["version"]
    envs = [c for c in PYPROJECT["project"]["classifiers"] if c.startswith("Environment ::")]
    assert envs and set(envs) <= REGISTRY_ENVIRONMENTS, set(envs) - REGISTRY_ENVIRONMENTS


def _semicolon_statements(text: str) -> list[int]:
    """Lines where ``;`` joins two statements (E702), ignoring strings and comments."""
    rows = []
    depth = 0
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
        elif tok.type == tokenize.OP and tok.string in ")]}":
            depth -= 1
        elif tok.type == tokenize.OP and tok.string == ";" and depth == 0:
            rows.append(tok.start[0])
    return rows


def test_no_exec_eval_or_joined_statements():
    found = []
    for path in _python_files():
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("exec", "eval"):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.func.id}()")
        found += [f"{path.relative_to(REPO)}:{row}: ';' joins statements" for row in _semicolon_statements(text)]
    assert not found, "\n".join(found)


def test_the_check_finds_joined_statements():
    assert _semicolon_statements("a = 1; b = 2\nc = 'x;y'  # d; e\nf(';')\n") == [1]


def test_icon_is_a_shipped_png():
    icon = PYPROJECT["tool"]["comfy"]["Icon"]
    prefix = "https://raw.githubusercontent.com/spriteforge/comfyui-spriteforge/main/"
    assert icon.startswith(prefix), icon
    path = REPO / icon[len(prefix):]
    assert path.is_file(), f"{icon} names {path.relative_to(REPO)}, which is not in the repository"
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] == im.size[1] and 64 <= im.size[0] <= 400, (im.format, im.size)
