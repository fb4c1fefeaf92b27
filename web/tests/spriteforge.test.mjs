// node --test web/tests/ : the editor extension against a stand-in for window.comfyAPI.
import { test } from "node:test";
import assert from "node:assert/strict";

// ---------------------------------------------------------------------------- stand-in
const listeners = {};
const registered = [];
const toasts = [];
const fetched = [];
const CAPS = {
  engines: [
    { name: "torch", usable: true, reason: "ok", devices: [{ label: "CPU x86_64" }] },
    { name: "mlx", usable: false, reason: "mlx is not installed", devices: [] },
  ],
  devices: [{ engine: "torch", device: { kind: "cpu", label: "CPU x86_64" }, policy: { weight_dtype: "fp32" } }],
  capabilities: { torch: { lora: true, vae_tiling: false, families: ["pixart", "flux", "dit"] } },
  error_codes: { DIMENSION_LIMIT: "Lower the width/height (or the batch size) below the limit shown.", BAD_INPUT: "Check the input." },
  // as the family registry serves it (tests/test_families.py checks this line against it)
  family_widgets: {"rules": {"guidance": {"only": ["flux"], "hint": "Flux only"}, "sana_instruction": {"only": ["sana"], "hint": "Sana only"}, "negative": {"not": ["dit"], "hint": "unused by DiT"}}, "labels": {"positive": {"dit": "class label (0-999 or ImageNet name)"}}},
};
const PALETTES = { "pico-8": ["#000000", "#1d2b53", "#7e2553"], "gameboy-dmg": ["#0f380f", "#306230"] };
const FAMILIES = { "flux-tiny.safetensors": "flux", "dit-tiny.safetensors": "dit" };

function response(obj) {
  return { ok: true, json: async () => obj };
}
const api = {
  addEventListener(type, fn) {
    (listeners[type] ||= []).push(fn);
  },
  async fetchApi(path) {
    fetched.push(path);
    if (path === "/spriteforge/capabilities") return response(CAPS);
    if (path === "/spriteforge/palettes") return response(PALETTES);
    const m = path.match(/^\/spriteforge\/model_family\?name=(.*)$/);
    if (m) return response({ family: FAMILIES[decodeURIComponent(m[1])] ?? null });
    return { ok: false, json: async () => ({}) };
  },
};
const graph = {
  _nodes: [],
  links: new Map(),
  getNodeById(id) {
    return this._nodes.find((n) => n.id === id) ?? null;
  },
  setDirtyCanvas() {},
};
const app = {
  graph,
  registerExtension(ext) {
    registered.push(ext);
  },
  extensionManager: { toast: { add: (t) => toasts.push(t) } },
};
globalThis.window = { comfyAPI: { app: { app }, api: { api } } };

const mod = await import("../spriteforge.js");
const ext = registered[0];

class FakeCtx {
  constructor() {
    this.calls = [];
    this.fillStyle = "";
    this.font = "";
  }
  fillRect(x, y, w, h) {
    this.calls.push(["fillRect", this.fillStyle, x, y, w, h]);
  }
  fillText(t, x, y) {
    this.calls.push(["fillText", t, x, y]);
  }
  measureText(t) {
    return { width: t.length * 6 };
  }
  save() {}
  restore() {}
  beginPath() {}
  fill() {
    this.calls.push(["fill", this.fillStyle]);
  }
}

async function makeNode(nodeData, widgets, extra = {}) {
  class NodeType {}
  NodeType.prototype.onDrawForeground = function () {
    this.baseDrawn = true;
  };
  await ext.beforeRegisterNodeDef(NodeType, nodeData, app);
  const node = new NodeType();
  Object.assign(node, {
    id: graph._nodes.length + 1,
    size: [300, 120],
    widgets: widgets.map(([name, value]) => ({ name, value })),
    inputs: [],
    outputs: (nodeData.output || []).map((t) => ({ type: t, links: [] })),
    setDirtyCanvas() {
      this.dirty = true;
    },
    ...extra,
  });
  graph._nodes.push(node);
  node.onNodeCreated?.();
  return node;
}

function link(from, slot, to, inputName) {
  const id = graph.links.size + 1;
  graph.links.set(id, { id, origin_id: from.id, origin_slot: slot, target_id: to.id, type: "SF_MODEL" });
  to.inputs.push({ name: inputName, type: "SF_MODEL", link: id });
}

const LOAD_MODEL = {
  name: "SpriteForgeLoadModel",
  output: ["SF_MODEL"],
  input: { required: { model: ["COMBO", { options: [] }] }, optional: { engine: ["COMBO", { options: ["auto", "torch", "mlx"] }] } },
};
const ENCODE = {
  name: "SpriteForgeEncodePrompt",
  output: ["SF_CONDITIONING"],
  input: { required: { model: ["SF_MODEL", {}], positive: ["STRING", {}] }, optional: { negative: ["STRING", {}], guidance: ["FLOAT", {}] } },
};
const PALETTE_LOAD = { name: "SpriteForgePixelPaletteLoad", output: ["SF_PALETTE", "IMAGE"], input: { required: { name: ["COMBO", {}] } } };

// ---------------------------------------------------------------------------- tests
test("registers through window.comfyAPI and loads server data in setup", async () => {
  assert.equal(registered.length, 1);
  assert.equal(ext.name, "SpriteForge.Editor");
  await ext.setup(app);
  assert.ok(fetched.includes("/spriteforge/capabilities") && fetched.includes("/spriteforge/palettes"));
  assert.deepEqual(mod.state.palettes, PALETTES);
  assert.equal(typeof listeners.execution_error?.[0], "function");
});

test("error codes: parsed from messages, shown with the what-to-do text", async () => {
  assert.equal(mod.errorCode("[DIMENSION_LIMIT] 9000 px is too big", CAPS.error_codes), "DIMENSION_LIMIT");
  assert.equal(mod.errorCode("BAD_INPUT: wrong", CAPS.error_codes), "BAD_INPUT");
  assert.equal(mod.errorCode("[NOT_OURS] x", CAPS.error_codes), null);
  assert.equal(mod.errorCode("RuntimeError: boom", CAPS.error_codes), null);
  const node = await makeNode(ENCODE, [["positive", "a"]]);
  listeners.execution_error[0]({
    detail: { node_id: String(node.id), node_type: "SpriteForgeSampler", exception_message: "[DIMENSION_LIMIT] 9000x9000 is above 8192." },
  });
  assert.equal(toasts.length, 1);
  assert.match(toasts[0].summary, /DIMENSION_LIMIT in node \d+ \(SpriteForgeSampler\)/);
  assert.match(toasts[0].detail, /What to do: Lower the width\/height/);
  assert.equal(node.sfError.code, "DIMENSION_LIMIT");
  listeners.execution_error[0]({ detail: { node_id: "1", exception_message: "ValueError: not ours" } });
  assert.equal(toasts.length, 1, "non-SpriteForge errors are left to ComfyUI");
  listeners.execution_start[0]({});
  assert.equal(node.sfError, undefined);
});

test("palette swatches are drawn from /spriteforge/palettes and from executed palettes", async () => {
  assert.ok(mod.isPaletteNode(PALETTE_LOAD));
  assert.ok(mod.isPaletteNode({ input: { required: { palette: ["COMBO", { options: ["pico-8"] }] } } }));
  assert.ok(!mod.isPaletteNode({ output: ["IMAGE"], input: { required: { palette: ["SF_PALETTE", {}] } } }));
  const node = await makeNode(PALETTE_LOAD, [["name", "pico-8"], ["file", ""]]);
  assert.equal(node.size[1], 120 + mod.SWATCH_H + 8, "room made for the swatches");
  const ctx = new FakeCtx();
  node.onDrawForeground(ctx);
  assert.ok(node.baseDrawn, "the original onDrawForeground still runs");
  const rects = ctx.calls.filter((c) => c[0] === "fillRect");
  assert.deepEqual(rects.map((c) => c[1]), PALETTES["pico-8"]);
  node.widgets[0].value = "gameboy-dmg";
  const ctx2 = new FakeCtx();
  node.onDrawForeground(ctx2);
  assert.deepEqual(ctx2.calls.filter((c) => c[0] === "fillRect").map((c) => c[1]), PALETTES["gameboy-dmg"]);
  node.onExecuted({ palette: ["ff0000", "00ff00"] });
  const ctx3 = new FakeCtx();
  node.onDrawForeground(ctx3);
  assert.deepEqual(ctx3.calls.filter((c) => c[0] === "fillRect").map((c) => c[1]), ["#ff0000", "#00ff00"]);
  node.widgets[0].value = "pico-8";
  node.widgets[0].callback(); // a changed widget: the last run's colours are stale, the named palette shows
  const ctx4 = new FakeCtx();
  node.onDrawForeground(ctx4);
  assert.deepEqual(ctx4.calls.filter((c) => c[0] === "fillRect").map((c) => c[1]), PALETTES["pico-8"]);
  const r = mod.swatchRects(new Array(40).fill("#000000"), 300, 10);
  assert.equal(r.length, 40);
  assert.ok(r.every(([x, y, w]) => x >= 8 && x + w <= 300 - 8 + 1 && y >= 10));
});

test("engine badge on model nodes from the capabilities report", async () => {
  const loader = await makeNode(LOAD_MODEL, [["model", "flux-tiny.safetensors"], ["engine", "auto"]]);
  assert.deepEqual(mod.engineBadge(loader, CAPS), { text: "torch · CPU x86_64 fp32", ok: true, engine: "torch" });
  const ctx = new FakeCtx();
  loader.onDrawForeground(ctx);
  assert.ok(ctx.calls.some((c) => c[0] === "fillText" && c[1] === "torch · CPU x86_64 fp32"));
  loader.widgets[1].value = "mlx";
  const b = mod.engineBadge(loader, CAPS);
  assert.equal(b.ok, false);
  assert.equal(b.text, "mlx: unavailable");
  loader.widgets[1].value = "auto";
});

test("widgets that do not apply to the model family are disabled with a hint", async () => {
  const flux = await makeNode(LOAD_MODEL, [["model", "flux-tiny.safetensors"], ["engine", "auto"]]);
  const dit = await makeNode(LOAD_MODEL, [["model", "dit-tiny.safetensors"], ["engine", "auto"]]);
  const enc = await makeNode(ENCODE, [["positive", "a cat"], ["negative", ""], ["guidance", 3.5]]);
  enc.widgets[0].element = { placeholder: "positive", disabled: false }; // DOM textarea widgets
  enc.widgets[1].element = { placeholder: "negative", disabled: false };
  link(dit, 0, enc, "model");
  assert.equal(mod.findModelSource(graph, enc), dit);
  mod.refreshNode(enc);
  await new Promise((r) => setTimeout(r, 10)); // the family fetch resolves, then everything refreshes
  const byName = Object.fromEntries(enc.widgets.map((w) => [w.name, w]));
  assert.equal(byName.guidance.disabled, true);
  assert.equal(byName.positive.element.placeholder, "class label (0-999 or ImageNet name)");
  assert.equal(byName.negative.element.disabled, true);
  assert.equal(byName.guidance.label, "guidance (Flux only)");
  assert.equal(byName.negative.disabled, true);
  assert.equal(byName.positive.label, "class label (0-999 or ImageNet name)");
  assert.ok(fetched.includes("/spriteforge/model_family?name=dit-tiny.safetensors"));

  // reconnect to the Flux loader: guidance applies again, labels restored
  enc.inputs[0].link = null;
  link(flux, 0, enc, "model");
  enc.inputs.shift();
  mod.refreshNode(enc);
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(byName.guidance.disabled, false);
  assert.equal(byName.guidance.label, undefined);
  assert.equal(byName.positive.label, undefined);
  assert.equal(byName.negative.disabled, false);
  assert.equal(byName.positive.element.placeholder, "positive");
  assert.equal(byName.negative.element.disabled, false);
});

test("engine capabilities disable widgets the engine cannot honour", () => {
  const node = { widgets: [{ name: "tile", value: true }, { name: "steps", value: 4 }] };
  const st = mod.widgetStates(node, null, CAPS.capabilities.torch);
  assert.deepEqual(st[0], { name: "tile", disabled: true, hint: "not supported by this engine", label: "tile (not supported by this engine)" });
  assert.equal(st[1].disabled, false);
  assert.equal(mod.widgetStates(node, null, null)[0].disabled, false, "unknown capabilities leave widgets alone");
});

test("nodes of other packs are left untouched", async () => {
  class Other {}
  const before = Other.prototype.onDrawForeground;
  await ext.beforeRegisterNodeDef(Other, { name: "KSampler", output: ["LATENT"], input: { required: {} } }, app);
  assert.equal(Other.prototype.onDrawForeground, before);
  assert.equal(Other.prototype.onNodeCreated, undefined);
});

test("Quantize shows the colours it used; an executed palette replaces the named one", async () => {
  const QUANTIZE = { name: "SpriteForgePixelQuantize", output: ["IMAGE", "MASK"], input: { required: { palette: ["SF_PALETTE", {}] } } };
  assert.ok(mod.isPaletteNode(QUANTIZE));
  const node = await makeNode(QUANTIZE, [["dither", "none"], ["strength", 1.0]]);
  let ctx = new FakeCtx();
  node.onDrawForeground(ctx);
  assert.equal(ctx.calls.filter((c) => c[0] === "fillRect").length, 0, "nothing before a run");
  node.onExecuted({ palette: ["#102030", "a0b0c0"] });
  ctx = new FakeCtx();
  node.onDrawForeground(ctx);
  assert.deepEqual(ctx.calls.filter((c) => c[0] === "fillRect").map((c) => c[1]), ["#102030", "#a0b0c0"]);
  const top = mod.swatchTop(node);
  assert.ok(node.size[1] >= top + mod.SWATCH_H, "the strip stays inside the node");
  assert.deepEqual(mod.executedPalette({ palette: [["ff0000"], ["00ff00"]] }), ["#ff0000", "#00ff00"]);
  assert.equal(mod.executedPalette({ images: [] }), null);
});

test("Engine Info / LoRA Info show their report in a read-only text box after a run", async () => {
  const made = [];
  window.comfyAPI.widgets = {
    ComfyWidgets: {
      STRING(node, name, spec) {
        const widget = { name, value: "", type: "customtext", element: { readOnly: false }, spec };
        node.widgets.push(widget);
        made.push(widget);
        return { widget };
      },
    },
  };
  const INFO = { name: "SpriteForgeEngineInfo", output: ["STRING"], input: { required: { as_json: ["BOOLEAN", {}] } } };
  const node = await makeNode(INFO, [["as_json", false]]);
  const w = node.widgets.find((x) => x.name === mod.REPORT_WIDGET);
  assert.ok(w, "the text box exists before the run, so the node keeps its size");
  assert.equal(w.element.readOnly, true);
  assert.equal(w.serialize, false, "not saved into widgets_values");
  assert.deepEqual(w.spec, ["STRING", { multiline: true }]);
  node.onExecuted({ text: ["torch: available; families pixart\nengine 'auto' picks torch"] });
  assert.equal(w.value, "torch: available; families pixart\nengine 'auto' picks torch");
  node.onExecuted({ text: ["second run"] });
  assert.equal(w.value, "second run");
  assert.equal(made.length, 1, "one text box, reused");
  assert.equal(mod.executedText({ text: ["a", "b"] }), "a\nb");
  assert.equal(mod.executedText({}), null);
  // other SpriteForge nodes get no text box
  const other = await makeNode(PALETTE_LOAD, [["name", "pico-8"]]);
  assert.ok(!other.widgets.some((x) => x.name === mod.REPORT_WIDGET));
  delete window.comfyAPI.widgets;
});
