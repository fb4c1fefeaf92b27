"""Choosing the MLX engine: ``auto`` on simulated machines, ``--engine mlx`` on the CLI and in workflows, what
``doctor`` / the capabilities route / the Engine Info node say per engine, and the coded errors where MLX is
missing (simulated by making ``import mlx`` fail) or a family has no MLX port (its port module failing to import).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from spriteforge import engines as E
from spriteforge.engines import FAMILIES, EngineStatus, choose_engine
from spriteforge.engines.devices import DeviceInfo
from spriteforge.errors import BAD_INPUT, CODES, ENGINE_UNAVAILABLE, UNSUPPORTED_ARCHITECTURE, SpriteForgeError

REPO = Path(__file__).resolve().parents[1]
GiB = 1024**3

# -- simulated machines ----------------------------------------------------------------------

MAC_MPS = DeviceInfo(kind="mps", name="Apple M3", macos_version=(15, 1), memory_bytes=36 * GiB, unified_memory=True)
MAC_MLX = DeviceInfo(kind="mlx", backend="mlx", name="Metal GPU", macos_version=(15, 1), memory_bytes=36 * GiB,
                     unified_memory=True, metal=True)
LINUX_MLX_CPU = DeviceInfo(kind="mlx", backend="mlx", name="CPU", memory_bytes=16 * GiB, unified_memory=True, metal=False)
CPU = DeviceInfo(kind="cpu", name="x86_64", memory_bytes=16 * GiB)
CUDA = DeviceInfo(kind="cuda", name="NVIDIA test", compute_capability=(8, 9), memory_bytes=24 * GiB, arch="sm_89")


def st(name, *devices, usable=True):
    return EngineStatus(name, usable, "ok" if usable else "mlx is not importable (ModuleNotFoundError)", list(devices))


def fams(*names):
    table = {"torch": FAMILIES, "mlx": names}
    return lambda status: table[status.name]


MAC = [st("torch", MAC_MPS, CPU), st("mlx", MAC_MLX)]


def test_auto_prefers_mlx_on_apple_silicon_when_it_runs_the_model():
    assert choose_engine(MAC, families_of=fams(*FAMILIES)) == "mlx"
    assert choose_engine(MAC, family="pixart", families_of=fams("pixart")) == "mlx"


def test_auto_stays_on_torch_where_mlx_cannot_run_the_model():
    assert choose_engine(MAC, family="flux", families_of=fams("pixart")) == "torch"  # no Flux port: MPS
    assert choose_engine(MAC, families_of=fams("pixart", "sd3")) == "torch"  # family unknown, MLX runs only some
    assert choose_engine(MAC, families_of=fams()) == "torch"
    assert choose_engine(MAC, device="mps", families_of=fams(*FAMILIES)) == "torch"  # a torch device was asked for


def test_auto_is_torch_elsewhere():
    everything = fams(*FAMILIES)
    assert choose_engine([st("torch", CUDA, CPU), st("mlx", LINUX_MLX_CPU)], families_of=everything) == "torch"
    assert choose_engine([st("torch", CPU), st("mlx", LINUX_MLX_CPU)], families_of=everything) == "torch"
    assert choose_engine([st("torch", CPU), st("mlx", usable=False)], families_of=everything) == "torch"
    # a Mac without MLX installed
    assert choose_engine([st("torch", MAC_MPS, CPU), st("mlx", usable=False)], families_of=everything) == "torch"


def test_auto_takes_mlx_when_it_is_the_only_engine_and_refuses_when_none_is():
    assert choose_engine([st("torch", usable=False), st("mlx", LINUX_MLX_CPU)], families_of=fams()) == "mlx"
    with pytest.raises(SpriteForgeError) as ei:
        choose_engine([st("torch", usable=False), st("mlx", usable=False)])
    assert ei.value.code == ENGINE_UNAVAILABLE and "doctor" in ei.value.message


def test_default_families_come_from_the_engines_declared_capabilities():
    pytest.importorskip("mlx.core")
    from spriteforge.engines.mlx_engine import MLXEngine
    from spriteforge.engines.policy import decide

    declared = MLXEngine(MAC_MLX, decide(MAC_MLX)).capabilities.families
    assert E.engine_families(st("mlx", MAC_MLX)) == declared
    assert E.engine_families(st("mlx", usable=False)) == ()
    for fam in FAMILIES:
        assert choose_engine(MAC, family=fam) == ("mlx" if fam in declared else "torch")


# -- doctor, the capabilities route, the Engine Info node -------------------------------------


def _by_name(entries):
    return {e["name"]: e for e in entries}


def test_doctor_lists_families_and_lora_per_engine(capsys):
    from spriteforge.cli.main import main

    assert main(["doctor", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    eng = _by_name(rep["engines"])
    assert eng["torch"]["available"] and eng["torch"]["families"] == list(FAMILIES) and eng["torch"]["lora"] is True
    assert rep["auto"] == E.choose_engine(E.engine_status())
    try:
        import mlx.core  # noqa: F401
    except ImportError:
        assert eng["mlx"]["available"] is False and eng["mlx"]["families"] == []
    else:
        from spriteforge.engines import get_engine

        caps = get_engine("mlx").capabilities
        assert eng["mlx"]["available"] and eng["mlx"]["families"] == list(caps.families) and eng["mlx"]["lora"] is caps.lora
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "families: " + ", ".join(FAMILIES) + "; LoRA: yes" in text and "engine 'auto' picks" in text


def _no_mlx(monkeypatch):
    """Simulate a machine without MLX: ``import mlx`` fails, and no MLX engine was created before."""
    monkeypatch.setitem(sys.modules, "mlx", None)
    monkeypatch.setitem(sys.modules, "mlx.core", None)
    monkeypatch.setattr(E, "_cache", {})


def test_doctor_and_route_without_mlx(monkeypatch, capsys):
    from spriteforge.cli.main import main
    from spriteforge.nodes import routes

    _no_mlx(monkeypatch)
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "-- mlx" in text and "pip install" in text
    caps = routes.capabilities()
    eng = _by_name(caps["engines"])
    assert eng["mlx"] == {**eng["mlx"], "available": False, "families": [], "lora": False}
    assert "mlx" not in caps["capabilities"] and caps["auto"] == "torch"


def test_capabilities_route_and_engine_info_node():
    from spriteforge.nodes import routes
    from spriteforge.nodes.info import EngineInfo

    caps = routes.capabilities()
    eng = _by_name(caps["engines"])
    assert eng["torch"]["families"] == list(FAMILIES) and eng["torch"]["lora"] is True
    for name, e in eng.items():
        if e["available"]:
            assert list(caps["capabilities"][name]["families"]) == e["families"]
            assert caps["capabilities"][name]["lora"] == e["lora"]
    assert set(caps["error_codes"]) == set(CODES)
    json.dumps(caps, default=str)
    out = EngineInfo.execute(as_json=False)
    text = out[0]
    assert "torch: available; families " + ", ".join(FAMILIES) + "; LoRA yes" in text
    for name, e in eng.items():
        if e["available"]:
            fam_text = ", ".join(e["families"]) or "none yet"
            assert f"{name}: available; families {fam_text}; LoRA {'yes' if e['lora'] else 'no'}" in text
    assert f"engine 'auto' picks {caps['auto']}" in text
    as_json = json.loads(EngineInfo.execute(as_json=True)[0])
    assert _by_name(as_json["engines"])["torch"]["lora"] is True


# -- --engine on the CLI and in workflows -----------------------------------------------------


def test_run_engine_sets_every_load_model_node(capsys):
    from spriteforge.cli.main import main
    from spriteforge.execution.runner import set_engine

    wf = REPO / "example_workflows" / "sprite_demo.json"
    assert main(["run", str(wf), "--engine", "mlx", "--print-api"]) == 0
    prompt = json.loads(capsys.readouterr().out)
    loaders = [n for n in prompt.values() if n["class_type"] == "SpriteForgeLoadModel"]
    assert loaders and all(n["inputs"]["engine"] == "mlx" for n in loaders)
    assert main(["run", str(wf), "--print-api"]) == 0  # without --engine the workflow's own choice stays
    prompt = json.loads(capsys.readouterr().out)
    assert [n["inputs"]["engine"] for n in prompt.values() if n["class_type"] == "SpriteForgeLoadModel"] == ["auto"]
    p = {"1": {"class_type": "SpriteForgeLoadModel", "inputs": {"model": "x"}}, "2": {"class_type": "Other", "inputs": {}}}
    assert set_engine(p, "torch") == ["1"] and p["1"]["inputs"]["engine"] == "torch" and "engine" not in p["2"]["inputs"]
    with pytest.raises(SpriteForgeError) as ei:
        set_engine(p, "tpu")
    assert ei.value.code == BAD_INPUT


def test_explicit_mlx_without_mlx_is_engine_unavailable_with_what_to_do(monkeypatch):
    _no_mlx(monkeypatch)
    with pytest.raises(SpriteForgeError) as ei:
        E.get_engine("mlx")
    err = ei.value
    assert err.code == ENGINE_UNAVAILABLE
    assert "pip install" in err.message and "engine 'torch'" in err.message
    assert E.get_engine("auto").name == "torch"


def test_generate_and_run_with_engine_mlx_without_mlx(monkeypatch, tmp_path, capsys):
    from spriteforge.cli.main import main

    _no_mlx(monkeypatch)
    rc = main(["-q", "generate", "--engine", "mlx", "--model", str(REPO / "demo_model"), "--prompt", "red potion",
               "--steps", "1", "--width", "32", "--height", "32", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == CODES[ENGINE_UNAVAILABLE] and err.startswith("ENGINE_UNAVAILABLE:") and "pip install" in err
    rc = main(["-q", "run", str(REPO / "example_workflows" / "sprite_demo.json"), "--engine", "mlx", "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert rc == CODES[ENGINE_UNAVAILABLE] and "ENGINE_UNAVAILABLE" in err
    assert not list((tmp_path).rglob("*.png"))


def test_generate_engine_mlx_for_a_family_without_port(monkeypatch, tmp_path, capsys):
    """A family whose MLX port does not import answers UNSUPPORTED_ARCHITECTURE naming the port and what to do."""
    pytest.importorskip("mlx.core")
    from spriteforge.cli.main import main
    from spriteforge.engines.mlx_models import loading

    monkeypatch.setitem(sys.modules, "spriteforge.engines.mlx_models.pixart", None)
    monkeypatch.setattr(loading, "_port_cache", {})
    monkeypatch.setattr(E, "_cache", {})
    assert "pixart" not in E.get_engine("mlx").capabilities.families
    rc = main(["-q", "generate", "--engine", "mlx", "--model", str(REPO / "demo_model"), "--prompt", "red potion",
               "--steps", "1", "--width", "32", "--height", "32", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == CODES[UNSUPPORTED_ARCHITECTURE], err
    assert err.startswith("UNSUPPORTED_ARCHITECTURE:") and "pixart" in err and "engine 'torch'" in err
    # and auto on a Mac would keep such a model on torch
    assert choose_engine(MAC, family="pixart") == "torch"
