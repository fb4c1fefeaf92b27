"""The pack loads from any folder name, imports without ComfyUI with no side effects, and its nodes are well formed."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package():
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())
    listed = set(cfg["tool"]["setuptools"]["packages"])
    found = {"spriteforge"}
    for init in REPO.rglob("__init__.py"):
        rel = init.parent.relative_to(REPO)
        if rel.parts and rel.parts[0] in ("tests", "benchmarks", "build", "scripts", "training") or any(p.startswith(".") for p in rel.parts):
            continue
        if rel.parts:
            found.add("spriteforge." + ".".join(rel.parts))
    assert found == listed
    assert cfg["project"]["name"] == "comfyui-spriteforge"
    assert cfg["project"]["scripts"]["spriteforge"] == "spriteforge.cli.main:main"
    for key in ("PublisherId", "DisplayName", "Icon", "requires-comfyui"):
        assert key in cfg["tool"]["comfy"]
    assert not any(d.startswith("torch") for d in cfg["project"]["dependencies"])


def test_import_has_no_side_effects(tmp_path):
    code = r"""
import socket, sys, os
def refuse(*a, **k): raise AssertionError("network access at import")
socket.socket.connect = refuse
socket.create_connection = refuse
import spriteforge, spriteforge.nodes
spriteforge.nodes.all_nodes(strict=True)
if "torch" in sys.modules:
    import torch
    assert not torch.cuda.is_initialized()
assert spriteforge.WEB_DIRECTORY == "./web"
print("ok", sorted(os.listdir(".")))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok []"


def test_loads_from_any_folder_name_like_comfyui(tmp_path):
    """ComfyUI imports a custom node folder by its own name with relative imports."""
    link = tmp_path / "ComfyUI-SpriteForge-main"
    link.symlink_to(REPO, target_is_directory=True)
    code = f"""
import importlib.util, sys, asyncio
spec = importlib.util.spec_from_file_location("ComfyUI-SpriteForge-main", r"{link / '__init__.py'}",
        submodule_search_locations=[r"{link}"])
mod = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = mod
spec.loader.exec_module(mod)
ext = asyncio.run(mod.comfy_entrypoint())
nodes = asyncio.run(ext.get_node_list())
assert "spriteforge" not in sys.modules, "must not depend on the installed name"
print(len(nodes))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= 1


def test_every_node_is_namespaced_described_and_tooltipped():
    from spriteforge.nodes import all_nodes, comfy_entrypoint

    nodes = all_nodes(strict=True)
    ext = asyncio.run(comfy_entrypoint())
    assert asyncio.run(ext.get_node_list()) == nodes
    ids = set()
    for cls in nodes:
        s = cls.define_schema()
        assert s.node_id.startswith("SpriteForge"), s.node_id
        assert s.node_id not in ids
        ids.add(s.node_id)
        assert s.category.startswith("SpriteForge"), s.node_id
        assert s.description and len(s.description) > 20, s.node_id
        for inp in s.inputs or []:
            assert inp.tooltip, f"{s.node_id}.{inp.id} has no tooltip"


def test_comfyignore_keeps_tests_and_benchmarks_out():
    lines = (REPO / ".comfyignore").read_text().split()
    assert "tests/" in lines and "benchmarks/" in lines


def test_development_scripts_stay_out_of_the_installed_package():
    """training/, tools/ and benchmarks/ are not packages, and no package-data glob picks up a script."""
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    for folder in ("training", "tools", "benchmarks", "tests"):
        assert not any(p == f"spriteforge.{folder}" or p.startswith(f"spriteforge.{folder}.") for p in cfg["packages"])
    scripts = []
    for package, globs in cfg["package-data"].items():
        root = REPO.joinpath(*package.split(".")[1:])
        for pattern in globs:
            scripts += [p.relative_to(REPO) for p in root.glob(pattern) if p.suffix == ".py"]
    assert scripts == []
