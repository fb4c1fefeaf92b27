"""web/: the editor extension's JavaScript tests (node --test) and the routes it reads (nodes/routes.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from spriteforge.nodes import routes

REPO = Path(__file__).resolve().parents[1]
WEB = REPO / "web"


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_javascript_extension_with_node_test_runner():
    r = subprocess.run(["node", "--test", "web/tests/"], cwd=REPO, capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "# fail 0" in r.stdout


def test_web_directory_layout():
    # ComfyUI serves WEB_DIRECTORY and imports every .js in it as an extension: only the extension is .js
    js = sorted(p.relative_to(WEB).as_posix() for p in WEB.rglob("*.js"))
    assert js == ["spriteforge.js"]
    text = (WEB / "spriteforge.js").read_text()
    assert "comfyAPI" in text and "import " not in text.split("export", 1)[0]  # no bare imports ComfyUI cannot resolve


def test_palettes_route_data():
    pals = routes.palettes()
    assert "pico-8" in pals and len(pals["pico-8"]) == 16
    assert all(c.startswith("#") and len(c) == 7 for cs in pals.values() for c in cs)


def test_model_family_route_data(tmp_path):
    from spriteforge import paths

    res = routes.model_family("")
    assert res["family"] is None and res["error"]
    paths.set_models_root(tmp_path)
    try:
        res = routes.model_family("missing.safetensors")
        assert res["family"] is None and "not found" in res["error"]
        (tmp_path / "diffusion_models").mkdir()
        (tmp_path / "diffusion_models" / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
        res = routes.model_family("junk.safetensors")
        assert res["family"] is None and res["error"]  # unknown file: reported, editor leaves widgets alone
    finally:
        paths.set_models_root(None)


def test_register_routes_without_comfyui_is_a_no_op():
    assert routes.register_routes() is False


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_widget_rules_name_real_widgets():
    # every widget the extension greys out or relabels exists on some node; seamless `tile` is never greyed out
    from spriteforge.execution import graph as G

    names = sorted({n for d in G.object_info().values() for n, _c, typ, opts in G.ordered_inputs(d) if G.is_widget(typ, opts)})
    script = ("import('./web/spriteforge.js').then((m) => { const names = JSON.parse(process.argv[1]); console.log(JSON.stringify({"
              "caps: m.CAPABILITY_WIDGETS.map(([re, cap]) => [cap, names.filter((n) => re.test(n))]),"
              "tile: m.capabilityFor('tile')})); })")
    r = subprocess.run(["node", "-e", script, json.dumps(names)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    rules = json.loads(r.stdout)
    assert all(matched for _cap, matched in rules["caps"]), rules["caps"]
    lora = dict((cap, m) for cap, m in rules["caps"])["lora"]
    assert {"lora_name", "strength_model", "strength_text", "strength_model_1", "lora_1"} <= set(lora)
    from spriteforge.models.families import registry

    hints = registry.widget_hints()  # the family rules and labels the extension applies (served by the registry)
    named = {*hints["rules"], *hints["labels"]}
    assert named and named <= set(names), named - set(names)
    assert rules["tile"] is None
