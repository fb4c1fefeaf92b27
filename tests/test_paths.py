from __future__ import annotations

import pytest

from spriteforge import paths
from spriteforge.errors import SpriteForgeError


def test_models_root_layout_and_confinement(tmp_path):
    (tmp_path / "vae").mkdir()
    f = tmp_path / "vae" / "ae.safetensors"
    f.write_bytes(b"\0" * 8)
    (tmp_path / "diffusers" / "pixart").mkdir(parents=True)
    (tmp_path / "diffusers" / "pixart" / "model_index.json").write_text("{}")
    paths.set_models_root(tmp_path)
    try:
        assert paths.resolve("vae", "ae.safetensors") == f
        assert paths.list_models("vae") == ["ae.safetensors"]
        assert paths.list_models("diffusers", folders=True) == ["pixart"]
        for bad in ("../vae/ae.safetensors", "/etc/passwd"):
            with pytest.raises(SpriteForgeError) as ei:
                paths.resolve("vae", bad)
            assert ei.value.code == "BAD_INPUT"
        with pytest.raises(SpriteForgeError) as ei:
            paths.resolve("vae", "missing.safetensors", expected="ae.safetensors")
        assert ei.value.code == "MODEL_NOT_FOUND" and str(tmp_path / "vae") in ei.value.message
        assert paths.resolve("vae", str(f), allow_absolute=True) == f
    finally:
        paths.set_models_root(None)


def test_register_comfy_folders_keeps_user_paths(monkeypatch, tmp_path):
    """With a folder_paths module (ComfyUI's API), the pack appends its folder and keeps configured ones."""
    import sys
    import types

    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(tmp_path / "models")
    user = str(tmp_path / "elsewhere" / "birefnet")
    fp.folder_names_and_paths = {"birefnet": ([user], {".safetensors"})}
    fp.get_folder_paths = lambda kind: list(fp.folder_names_and_paths[kind][0])
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    paths.register_comfy_folders()
    got = fp.folder_names_and_paths["birefnet"][0]
    assert got[0] == user and got[1].endswith("birefnet") and len(got) == 2
    paths.register_comfy_folders()
    assert len(fp.folder_names_and_paths["birefnet"][0]) == 2
