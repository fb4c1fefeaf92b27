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
  family_widgets: {"rules": {"guidance": {"only": ["flux"], "hint": "Flux only"}, "sana_instruction": {"only": ["sana"], "hint": "Sana only"}, "negative": {"not": ["dit"], "hint": "unused by DiT"}}, "labels": {"positive": {"dit": "class label (0-999 or ImageNet name)"}, "text_encoder_1": {"zimage": "Qwen3-4B text encoder (qwen_3_4b.safetensors)"}, "negative": {"zimage": "what to avoid (only with cfg above 1: Turbo samples without CFG)"}}},
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

// the bit of the DOM the swatch widget uses
class FakeElement {
  constructor(tag) {
    this.tagName = tag;
    this.style = {};
    this.dataset = {};
    this.children = [];
  }
  replaceChildren(...kids) {
    this.children = kids;
  }
}
globalThis.document = { createElement: (tag) => new FakeElement(tag) };
const shown = (node) => node.widgets.find((w) => w.name === "sf_swatches")?.element.children.map((c) => c.style.background);

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
  rect(x, y, w, h) {
    this.calls.push(["rect", x, y, w, h]);
  }
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
    badges: [],
    outputs: (nodeData.output || []).map((t) => ({ type: t, links: [] })),
    setDirtyCanvas() {
      this.dirty = true;
    },
    addDOMWidget(name, type, element, options) {
      const w = { name, type, element, options };
      this.widgets.push(w);
      return w;
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
  assert.equal(node.badges[0]().text, "DIMENSION_LIMIT", "the error code shows as the node's badge");
  listeners.execution_error[0]({ detail: { node_id: "1", exception_message: "ValueError: not ours" } });
  assert.equal(toasts.length, 1, "non-SpriteForge errors are left to ComfyUI");
  listeners.execution_start[0]({});
  assert.equal(node.sfError, undefined);
});

test("palette swatches show /spriteforge/palettes and executed palettes in a DOM widget", async () => {
  assert.ok(mod.isPaletteNode(PALETTE_LOAD));
  assert.ok(mod.isPaletteNode({ input: { required: { palette: ["COMBO", { options: ["pico-8"] }] } } }));
  assert.ok(!mod.isPaletteNode({ output: ["IMAGE"], input: { required: { palette: ["SF_PALETTE", {}] } } }));
  const node = await makeNode(PALETTE_LOAD, [["name", "pico-8"], ["file", ""]]);
  const w = node.widgets.find((x) => x.name === mod.SWATCH_WIDGET);
  assert.equal(w.type, "sf_swatches");
  assert.equal(w.serialize, false, "not saved into widgets_values");
  assert.equal(w.options.getMinHeight(), mod.SWATCH_H + 6, "the node is sized around the strip");
  assert.deepEqual(shown(node), PALETTES["pico-8"]);
  const ctx = new FakeCtx();
  node.onDrawForeground(ctx);
  assert.ok(node.baseDrawn, "the node's own onDrawForeground is left as it was");
  assert.equal(ctx.calls.filter((c) => c[0] === "fillRect").length, 0, "nothing drawn on the canvas");
  node.widgets[0].value = "gameboy-dmg";
  node.widgets[0].callback();
  assert.deepEqual(shown(node), PALETTES["gameboy-dmg"]);
  node.onExecuted({ palette: ["ff0000", "00ff00"] });
  assert.deepEqual(shown(node), ["#ff0000", "#00ff00"]);
  node.widgets[0].callback(); // a callback without a change (queueing a cached run): the run's colours stay
  assert.deepEqual(shown(node), ["#ff0000", "#00ff00"]);
  node.widgets[0].value = "pico-8";
  node.widgets[0].callback(); // a changed widget: the last run's colours are stale, the named palette shows
  assert.deepEqual(shown(node), PALETTES["pico-8"]);
  const el = node.widgets.find((x) => x.name === mod.SWATCH_WIDGET).element;
  assert.equal(el.style.gridTemplateColumns, "repeat(3, 1fr)");
  assert.deepEqual(mod.swatchGrid(40), { columns: 32, rowHeight: mod.SWATCH_H / 2 });
});

test("engine badge on model nodes from the capabilities report", async () => {
  const loader = await makeNode(LOAD_MODEL, [["model", "flux-tiny.safetensors"], ["engine", "auto"]]);
  assert.deepEqual(mod.engineBadge(loader, CAPS), { text: "torch · CPU x86_64 fp32", ok: true, engine: "torch" });
  // a node badge: the frontend draws it above the title bar (canvas) and shows it in its Vue nodes (text)
  const badge = loader.badges[0]();
  assert.equal(badge.text, "torch · CPU x86_64 fp32");
  const ctx = new FakeCtx();
  assert.ok(badge.getWidth(ctx) > 0);
  badge.draw(ctx, 0, -48);
  assert.ok(ctx.calls.some((c) => c[0] === "fillText" && c[1] === "torch · CPU x86_64 fp32"));
  assert.match(String(loader.onDrawForeground), /baseDrawn/, "the extension draws nothing on the canvas itself");
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
  const noLora = { lora: false, vae_tiling: false };
  const node = { widgets: [{ name: "strength_model", value: 1 }, { name: "strength_text_2", value: 1 }, { name: "lora_3", value: "x" }, { name: "steps", value: 4 }] };
  const st = mod.widgetStates(node, null, noLora);
  assert.deepEqual(st[0], { name: "strength_model", disabled: true, hint: "not supported by this engine", label: "strength_model (not supported by this engine)" });
  assert.deepEqual(st.map((s) => s.disabled), [true, true, true, false]);
  assert.equal(mod.widgetStates(node, null, null)[0].disabled, false, "unknown capabilities leave widgets alone");
});

test("the seamless tile toggle stays usable on an engine without VAE tiling (MLX)", () => {
  const mlx = { lora: true, vae_tiling: false, families: ["pixart"] };
  const sampler = { widgets: [{ name: "tile", value: true }, { name: "cfg", value: 4.5 }] };
  assert.deepEqual(mod.widgetStates(sampler, "pixart", mlx).map((s) => s.disabled), [false, false]);
  assert.equal(mod.capabilityFor("tile"), null);
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
  assert.deepEqual(shown(node), [], "nothing before a run");
  node.onExecuted({ palette: ["#102030", "a0b0c0"] });
  assert.deepEqual(shown(node), ["#102030", "#a0b0c0"]);
  for (const w of node.widgets) w.callback?.(w.value); // the frontend re-applies values when it queues
  assert.deepEqual(shown(node), ["#102030", "#a0b0c0"], "a fully cached re-run keeps the strip");
  node.widgets[0].value = "fs";
  node.widgets[0].callback();
  assert.deepEqual(shown(node), [], "a changed setting: the last run's colours no longer apply");
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
