"""The shipped workflows in the real editor: opt-in, it boots a ComfyUI server on the CPU and drives
its real frontend (the ``comfyui-frontend-package`` ComfyUI serves) in headless Chromium.

Set ``SPRITEFORGE_COMFYUI=/path/to/ComfyUI`` (with this pack in its ``custom_nodes``), and have
Playwright importable (``pip install playwright``) and a Chromium (``SPRITEFORGE_CHROMIUM``, default
``/usr/bin/chromium``); ``SPRITEFORGE_COMFY_PYTHON`` / ``SPRITEFORGE_COMFY_PYTHONPATH`` /
``SPRITEFORGE_COMFY_TORCHVISION_STUB=1`` as for ``test_lora_comfyui.py``. Screenshots go to
``SPRITEFORGE_SCREENSHOTS`` (default: the test's tmp folder).

The server must list the shipped graphs (``example_workflows/NAME.json``) under ``/api/workflow_templates``
and serve each graph and its ``.jpg`` thumbnail from ``/api/workflow_templates/<pack>/``. The editor is opened as a
new user sees it, with the first-run template browser: the test picks the pack's category there, checks every
card's thumbnail loaded, and clicks the card, so the frontend fetches the graph through the template route and
loads it (and closes the dialog) itself; later templates are opened the same way from the Templates command.
The loaded graph must be the shipped one; the test reads every node's box from ``app.graph`` (the frontend's
``getBounding``, title bar included, plus the engine badge drawn above model nodes) and every group's box and
title bar, and checks that no node overlaps another, a group's title bar or another group's box. Then it runs sprite_demo (the built-in model) from
the editor with an Engine Info and a LoRA Info node added, waits for the run to end and checks:

* the swatch strip of Palette Extract and Quantize (a DOM widget) shows the colours those nodes sent
  (``/history`` ui ``palette``) and the frontend laid it out inside the node;
* the two info nodes show their report text in their text box;
* Load Model's node badge names the engine and device;
* the family route knows the demo model (the prompt's widget hints), and nothing overlaps now
  that the image previews and swatches are drawn;
* no sampler preview reached the editor (ComfyUI's default ``--preview-method none``);
* a second, fully cached run (ComfyUI resends only the Save nodes' output) keeps the swatch strips.

No screenshot is taken while a dialog covers the graph.

The other workflows need release models the test does not have: for them the test puts sprite_demo's
output images into their image nodes' outputs (as a run would) and checks the layout again.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path

import pytest

from spriteforge.tests.comfyui_server import COMFY, get as _get, server

CHROMIUM = os.environ.get("SPRITEFORGE_CHROMIUM", "/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run"]

pytestmark = pytest.mark.skipif(not COMFY, reason="set SPRITEFORGE_COMFYUI=/path/to/ComfyUI to run the real-editor test")

# Boxes of everything drawn for a node (title bar, body, engine badge) and group title bars, from app.graph.
JS_LAYOUT = """() => {
  const app = window.comfyAPI.app.app;
  const g = app.graph;
  const titleH = LiteGraph.NODE_TITLE_HEIGHT;
  const nodes = (g._nodes || g.nodes).map((n) => {
    const b = n.getBounding ? Array.from(n.getBounding()) : [n.pos[0], n.pos[1] - titleH, n.size[0], n.size[1] + titleH];
    if (n.sfModelNode) { b[1] -= 19; b[3] += 19; }  // the engine badge above the title bar
    const sw = (n.widgets || []).find((w) => w.name === "sf_swatches");
    return { id: n.id, type: n.type, box: b, pos: Array.from(n.pos), size: Array.from(n.size),
             widgets: (n.widgets || []).map((w) => w.name), text: n.sfText || null,
             report: (n.widgets || []).find((w) => w.name === "sf_report")?.value ?? null,
             // the swatch strip: the colours its DOM element shows, where the frontend laid it out, its element's size
             palette: sw ? (sw.element.dataset.colors ? sw.element.dataset.colors.split(",") : []) : null,
             swatch: sw ? { y: sw.y ?? sw.last_y ?? null, h: sw.computedHeight ?? null, dom: sw.element.getBoundingClientRect().height,
                            cells: sw.element.children.length } : null,
             badges: (n.badges || []).map((x) => (typeof x === "function" ? x() : x)?.text ?? null),
             imgs: (n.imgs || []).length };
  });
  const groups = (g._groups || g.groups || []).map((gr) => {
    const r = Array.from(gr._bounding || gr.bounding);
    return { title: gr.title, box: r, titleBox: [r[0], r[1], r[2], gr.titleHeight ?? LiteGraph.NODE_TITLE_HEIGHT] };
  });
  return { nodes, groups };
}"""


def _overlaps(a, b) -> bool:  # [x, y, w, h]
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def layout_problems(layout: dict) -> list[str]:
    out = []
    nodes = layout["nodes"]
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            if _overlaps(a["box"], b["box"]):
                out.append(f"nodes {a['id']} {a['type']} and {b['id']} {b['type']} overlap: {a['box']} / {b['box']}")
    for gi, g in enumerate(layout["groups"]):
        for n in nodes:
            if _overlaps(g["titleBox"], n["box"]):
                out.append(f"group {g['title']!r} title bar overlaps node {n['id']} {n['type']}")
        for h in layout["groups"]:
            if h is not g and _overlaps(g["box"], h["titleBox"]):
                out.append(f"group {g['title']!r} overlaps the title bar of group {h['title']!r}")
    return out


def _setup(tmp_path):
    """The models folder (the shipped night LoRA), its extra_model_paths.yaml, the output folder and the server flags."""
    models = tmp_path / "models"
    (models / "loras").mkdir(parents=True)
    shutil.copy(REPO / "demo_model" / "loras" / "night.safetensors", models / "loras" / "night.safetensors")
    cfg = tmp_path / "extra_model_paths.yaml"
    cfg.write_text(f"sf_browser:\n    base_path: {models}\n    loras: loras\n")
    for d in ("user", "temp", "input"):
        (tmp_path / d).mkdir()
    args = ("--user-directory", str(tmp_path / "user"), "--temp-directory", str(tmp_path / "temp"),
            "--input-directory", str(tmp_path / "input"), "--database-url", "sqlite:///:memory:")
    return cfg, tmp_path / "out", args


DIALOG = "[data-testid=template-workflows-content]"


def _open_template(page, pack: str, name: str, graph: dict):
    """Open template ``name`` as a user does: the template browser (the first-run one, or from the Templates
    command), the pack's category, its card (whose thumbnail must have loaded); the frontend fetches
    ``/api/workflow_templates/<pack>/<name>.json``, loads it and closes the dialog."""
    dialog = page.locator(DIALOG)
    if not dialog.is_visible():
        page.evaluate("async () => { await window.comfyAPI.app.app.extensionManager.command.execute('Comfy.BrowseTemplates'); }")
    dialog.wait_for(state="visible", timeout=60_000)
    page.locator(f"{DIALOG} li[role=option][aria-label='{pack}']").click()
    card = f"{DIALOG} [data-testid='template-workflow-{name}']"
    page.locator(card).scroll_into_view_if_needed(timeout=60_000)  # thumbnails load lazily, when a card is in view
    page.wait_for_function("(sel) => { const i = document.querySelector(sel + ' img'); return i && i.complete && i.naturalWidth > 0; }",
                           arg=card, timeout=60_000, polling=200)
    page.locator(card).click()
    dialog.wait_for(state="hidden", timeout=60_000)
    want = sorted((n["id"], n["type"]) for n in graph["nodes"])
    page.wait_for_function("""(want) => { const g = window.comfyAPI.app.app.graph;
        const got = (g._nodes || g.nodes).map((n) => [n.id, n.type]).sort((a, b) => a[0] - b[0]);
        return JSON.stringify(got) === JSON.stringify(want); }""", arg=want, timeout=60_000, polling=200)
    page.wait_for_timeout(800)  # a few frames: widgets, DOM widgets and the extension's refresh


def _screenshot(page, path: Path):
    assert not page.locator(".p-dialog").is_visible(), f"a dialog covers the graph in {path.name}"
    page.screenshot(path=str(path))


def _check_template_route(base: str) -> str:
    """The pack's folder name in ``/api/workflow_templates``; every graph and thumbnail is served from there."""
    listed = _get(f"{base}/api/workflow_templates")
    names = sorted(p.stem for p in (REPO / "example_workflows").glob("*.json"))
    packs = [k for k, v in listed.items() if sorted(v) == names]
    assert len(packs) == 1, (listed, names)
    for name in names:
        for ext, ctype in (("json", "application/json"), ("jpg", "image/jpeg")):
            with urllib.request.urlopen(f"{base}/api/workflow_templates/{packs[0]}/{name}.{ext}", timeout=30) as r:
                assert r.status == 200 and r.headers.get_content_type() == ctype, (name, ext, r.status, r.headers)
                assert r.read() == (REPO / "example_workflows" / f"{name}.{ext}").read_bytes()
    return packs[0]


def _frame(page, n=6):
    for _ in range(n):
        page.evaluate("() => { const c = window.comfyAPI.app.app.canvas; c.setDirty(true, true); c.draw(true, true); }")
        page.wait_for_timeout(100)


def _fit(page):
    page.evaluate("""() => { const app = window.comfyAPI.app.app; const c = app.canvas; const ns = app.graph._nodes || app.graph.nodes;
      const x0 = Math.min(...ns.map((n) => n.pos[0])) - 40, y0 = Math.min(...ns.map((n) => n.pos[1])) - 140;
      const x1 = Math.max(...ns.map((n) => n.pos[0] + n.size[0])) + 40, y1 = Math.max(...ns.map((n) => n.pos[1] + n.size[1])) + 300;
      const W = c.canvas.width / (window.devicePixelRatio || 1), H = c.canvas.height / (window.devicePixelRatio || 1);
      c.ds.scale = Math.min(W / (x1 - x0), H / (y1 - y0), 1); c.ds.offset = [-x0, -y0]; c.setDirty(true, true); }""")
    _frame(page)


def test_shipped_workflows_in_the_real_editor(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (set SPRITEFORGE_CHROMIUM)")
    shots = Path(os.environ.get("SPRITEFORGE_SCREENSHOTS", tmp_path / "shots"))
    shots.mkdir(parents=True, exist_ok=True)
    graphs = {p.stem: json.loads(p.read_text()) for p in sorted((REPO / "example_workflows").glob("*.json"))}
    cfg, out, args = _setup(tmp_path)
    with server(tmp_path, cfg, out, *args, tries=480) as (proc, base, _info):
        fam = _get(f"{base}/spriteforge/model_family?name=spriteforge-demo%20(built-in)")
        assert fam["family"] == "pixart" and fam["error"] is None, fam
        pack = _check_template_route(base)
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1800, "height": 1000})
            errors: list[str] = []
            phase = ["start"]
            page.on("pageerror", lambda e: errors.append(f"{phase[0]}: {e}\n{getattr(e, 'stack', '') or ''}"))
            page.goto(base, wait_until="domcontentloaded", timeout=180_000)
            page.wait_for_function("() => window.comfyAPI?.app?.app?.graph && window.LiteGraph?.registered_node_types?.SpriteForgeSampler",
                                   timeout=300_000, polling=500)
            # the frontend (1.27) breaks on every `lora_name` combo when one of the core loaders it maps model folders
            # to is missing (a ComfyUI whose comfy_extras failed to import, e.g. without spandrel)
            missing = page.evaluate("""() => ['CheckpointLoaderSimple', 'ImageOnlyCheckpointLoader', 'LoraLoader', 'LoraLoaderModelOnly',
              'VAELoader', 'ControlNetLoader', 'UNETLoader', 'UpscaleModelLoader', 'StyleModelLoader', 'GLIGENLoader']
              .filter((t) => !LiteGraph.registered_node_types[t])""")
            assert not missing, f"ComfyUI is missing core nodes {missing}: install its requirements (see its log)"
            page.locator(DIALOG).wait_for(state="visible", timeout=60_000)  # a new user's first-run template browser
            problems = {}
            for name, graph in graphs.items():
                phase[0] = f"open template {name}"
                _open_template(page, pack, name, graph)
                _fit(page)
                _screenshot(page, shots / f"{name}_opened.png")
                pr = layout_problems(page.evaluate(JS_LAYOUT))
                if pr:
                    problems[name] = pr
            assert not problems, json.dumps(problems, indent=1)

            # --- run sprite_demo from the editor, with Engine Info and LoRA Info added
            phase[0] = "run sprite_demo"
            _open_template(page, pack, "sprite_demo", graphs["sprite_demo"])
            page.evaluate("""() => {
              const app = window.comfyAPI.app.app; const g = app.graph;
              const right = Math.max(...(g._nodes || g.nodes).map((n) => n.pos[0] + n.size[0]));
              const a = LiteGraph.createNode('SpriteForgeEngineInfo'); a.pos = [right + 120, 140]; g.add(a);
              const b = LiteGraph.createNode('SpriteForgeLoRAInfo'); b.pos = [right + 120, 140 + a.size[1] + 120]; g.add(b);
              b.widgets.find((w) => w.name === 'lora_name').value = 'night.safetensors';
              window.sfDone = null; window.sfPreviews = 0;
              app.api.addEventListener('b_preview', () => { window.sfPreviews += 1; });
              app.api.addEventListener('execution_success', () => { window.sfDone = 'ok'; });
              app.api.addEventListener('execution_error', (e) => { window.sfDone = 'error: ' + JSON.stringify(e.detail).slice(0, 2000); });
            }""")
            page.evaluate("async () => { await window.comfyAPI.app.app.queuePrompt(0, 1); }")
            page.wait_for_function("() => window.sfDone", timeout=600_000, polling=500)
            assert page.evaluate("() => window.sfDone") == "ok", page.evaluate("() => window.sfDone")
            # ComfyUI runs with its default --preview-method none: the sampler sends no previews
            assert page.evaluate("() => window.sfPreviews") == 0
            _fit(page)  # every node on screen, so the frontend draws (and sizes) all of them
            page.wait_for_timeout(1500)  # previews load
            _frame(page, 10)
            lay = page.evaluate(JS_LAYOUT)
            _screenshot(page, shots / "sprite_demo_after_run.png")
            page.evaluate("""() => { const app = window.comfyAPI.app.app; const c = app.canvas; const g = app.graph;
              const q = (g._nodes || g.nodes).find((n) => n.type === 'SpriteForgePixelQuantize');
              c.ds.scale = 0.9; c.ds.offset = [-q.pos[0] + 60, -q.pos[1] + 140]; c.setDirty(true, true); }""")
            _frame(page)
            _screenshot(page, shots / "sprite_demo_after_run_zoom.png")
            page.evaluate("""() => { const c = window.comfyAPI.app.app.canvas; c.ds.scale = 0.9; c.ds.offset = [40, 140];
              c.setDirty(true, true); }""")
            _frame(page)
            _screenshot(page, shots / "sprite_demo_after_run_model.png")

            hist = _get(f"{base}/history")
            outputs = list(hist.values())[-1]["outputs"]
            by_type = {n["type"]: n for n in lay["nodes"]}
            for t in ("SpriteForgePixelPaletteExtract", "SpriteForgePixelQuantize"):
                n = by_type[t]
                sent = outputs[str(n["id"])]["palette"]
                assert sent and n["palette"] == [c if c.startswith("#") else "#" + c for c in sent], (t, n["palette"], sent)
                sw = n["swatch"]  # a DOM widget laid out inside the node, and its element on screen
                assert sw["y"] is not None and sw["y"] + sw["h"] <= n["size"][1] + 0.5, (t, sw, n["size"])
                assert sw["cells"] == len(sent) and sw["dom"] > 0, (t, sw)
            for t, want in (("SpriteForgeEngineInfo", "torch"), ("SpriteForgeLoRAInfo", "pixart")):
                n = by_type[t]
                assert n["report"] and want in n["report"].lower(), (t, n["report"])
            assert by_type["SpriteForgeLoadModel"]["badges"][0].startswith("torch · "), by_type["SpriteForgeLoadModel"]["badges"]
            save = by_type["SpriteForgePixelSaveIndexed"]
            assert save["imgs"] > 0 or "$$canvas-image-preview" in save["widgets"], "the run's previews are on the node"
            after = layout_problems(lay)
            assert not after, "\n".join(after)

            # --- the same graph again: everything is cached and ComfyUI resends only the output nodes' results
            phase[0] = "cached re-run"
            page.evaluate("() => { window.sfDone = null; }")
            page.evaluate("async () => { await window.comfyAPI.app.app.queuePrompt(0, 1); }")
            page.wait_for_function("() => window.sfDone", timeout=600_000, polling=500)
            assert page.evaluate("() => window.sfDone") == "ok", page.evaluate("() => window.sfDone")
            _frame(page)
            again = {n["type"]: n for n in page.evaluate(JS_LAYOUT)["nodes"]}
            for t in ("SpriteForgePixelPaletteExtract", "SpriteForgePixelQuantize"):
                assert again[t]["palette"] == by_type[t]["palette"], (t, again[t]["palette"], by_type[t]["palette"])
            _screenshot(page, shots / "sprite_demo_cached_rerun.png")

            # --- the other workflows with sprite_demo's images in their image nodes' outputs
            imgs = outputs[str(by_type["SpriteForgePixelSaveIndexed"]["id"])]["images"]
            problems = {}
            for name, graph in graphs.items():
                if name == "sprite_demo":
                    continue
                phase[0] = f"outputs {name}"
                _open_template(page, pack, name, graph)
                page.evaluate("""(imgs) => {
                  const app = window.comfyAPI.app.app; const out = {};
                  for (const n of app.graph._nodes || app.graph.nodes) {
                    if (['PreviewImage', 'SaveImage', 'SpriteForgePixelSaveIndexed', 'SpriteForgePixelSpriteSheet'].includes(n.type))
                      out[n.id] = { images: imgs };
                    if (['SpriteForgePixelPaletteExtract', 'SpriteForgePixelPaletteLoad', 'SpriteForgePixelQuantize'].includes(n.type))
                      n.onExecuted?.({ palette: ['#ff0000', '#00ff00', '#0000ff'] });
                  }
                  app.nodeOutputs = out;
                }""", imgs)
                _fit(page)
                page.wait_for_timeout(1200)
                _frame(page, 10)
                lay2 = page.evaluate(JS_LAYOUT)
                _screenshot(page, shots / f"{name}_after_run.png")
                pr = layout_problems(lay2)
                if pr:
                    problems[name] = pr
            assert not problems, json.dumps(problems, indent=1)
            (shots / "page_errors.txt").write_text("\n\n".join(errors))
            ours = [e for e in errors if "spriteforge" in e.lower()]  # the frontend's own boot errors are not ours
            assert not ours, ours
            browser.close()


FRONTEND_ROOT = os.environ.get("SPRITEFORGE_COMFY_FRONTEND_ROOT")


@pytest.mark.skipif(not FRONTEND_ROOT, reason="set SPRITEFORGE_COMFY_FRONTEND_ROOT to a newer frontend's static folder "
                                               "(comfyui-frontend-package's) to check the Vue node renderer")
def test_the_extension_in_the_vue_node_renderer(tmp_path):
    """Nodes 2.0: with ``Comfy.VueNodes.Enabled`` the frontend renders nodes as Vue components and no longer calls
    canvas drawing hooks; the swatch strips (DOM widgets) and the engine badge (a node badge) must show there too."""
    sync_api = pytest.importorskip("playwright.sync_api")
    shots = Path(os.environ.get("SPRITEFORGE_SCREENSHOTS", tmp_path / "shots"))
    shots.mkdir(parents=True, exist_ok=True)
    cfg, out, args = _setup(tmp_path)
    with server(tmp_path, cfg, out, *args, "--front-end-root", FRONTEND_ROOT, tries=480) as (_proc, base, _info):
        pack = _check_template_route(base)
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1800, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(f"{e}\n{getattr(e, 'stack', '') or ''}"))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(base, wait_until="domcontentloaded", timeout=180_000)
            page.wait_for_function("() => window.comfyAPI?.app?.app?.graph && window.LiteGraph?.registered_node_types?.SpriteForgeSampler",
                                   timeout=300_000, polling=500)
            page.keyboard.press("Escape")  # this frontend's template browser differs: the graph is fetched as it does
            page.evaluate("async () => { await window.comfyAPI.app.app.extensionManager.setting.set('Comfy.VueNodes.Enabled', true); }")
            page.wait_for_function("() => LiteGraph.vueNodesMode === true", timeout=60_000)
            page.evaluate("""async (pack) => { const app = window.comfyAPI.app.app;
              const r = await fetch(app.api.apiURL(`/workflow_templates/${pack}/sprite_demo.json`));
              await app.loadGraphData(await r.json(), true, true, 'sprite_demo'); }""", pack)
            page.wait_for_timeout(2000)  # the Vue nodes mount; then a run's results arrive
            page.evaluate("""() => { const app = window.comfyAPI.app.app;
              for (const n of app.graph._nodes || app.graph.nodes)
                if (['SpriteForgePixelPaletteExtract', 'SpriteForgePixelQuantize'].includes(n.type))
                  n.onExecuted?.({ palette: ['#ff0000', '#00ff00', '#0000ff'] }); }""")
            _fit(page)
            page.wait_for_timeout(2000)
            strips = page.evaluate("""() => Array.from(document.querySelectorAll('.sf-swatches')).map((e) => ({
                node: e.closest('[data-node-id]')?.getAttribute('data-node-id') ?? null, height: e.getBoundingClientRect().height,
                colors: Array.from(e.children).map((c) => getComputedStyle(c).backgroundColor) }))""")
            ids = {str(n["id"]) for n in json.loads((REPO / "example_workflows" / "sprite_demo.json").read_text())["nodes"]
                   if n["type"] in ("SpriteForgePixelPaletteExtract", "SpriteForgePixelQuantize")}
            assert {s["node"] for s in strips} == ids, strips
            assert all(s["height"] > 0 and s["colors"] == ["rgb(255, 0, 0)", "rgb(0, 255, 0)", "rgb(0, 0, 255)"] for s in strips), strips
            badge = page.evaluate("""() => { const g = window.comfyAPI.app.app.graph;
                const n = (g._nodes || g.nodes).find((x) => x.type === 'SpriteForgeLoadModel');
                return document.querySelector(`[data-node-id="${n.id}"]`)?.textContent ?? ''; }""")
            assert "torch · " in badge, badge
            _screenshot(page, shots / "sprite_demo_vue_nodes.png")
            (shots / "vue_page_errors.txt").write_text("\n\n".join(errors))
            ours = [e for e in errors if "spriteforge" in e.lower()]
            assert not ours, ours
            browser.close()
