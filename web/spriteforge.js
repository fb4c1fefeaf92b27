// SpriteForge editor extension for ComfyUI's frontend.
//
// * palette swatches on palette nodes (an SF_PALETTE output or a palette-name widget), colours from
//   GET /spriteforge/palettes ({name: ["#rrggbb", ...]}), or from a node's executed `palette` output, in a
//   DOM widget (so the Vue node renderer shows them too);
// * an engine/device badge on model nodes (SF_MODEL outputs) from GET /spriteforge/capabilities, and the error
//   code of a node's failed run, as node badges (the frontend draws them on the canvas and in its Vue nodes);
// * widgets that do not apply to the model family (from GET /spriteforge/model_family) or to the
//   engine's capabilities are disabled, with a hint in their label;
// * SpriteForge error codes in execution errors are shown with their what-to-do text
//   (the capabilities route's `error_codes`).
//
// It uses only `window.comfyAPI` (app.registerExtension, api.addEventListener, api.fetchApi), and
// exports its pure helpers so `node --test web/tests/` can check them against a stand-in.

export const EXTENSION_NAME = "SpriteForge.Editor";
export const PALETTE_TYPE = "SF_PALETTE";
export const MODEL_TYPE = "SF_MODEL";
export const SWATCH_H = 16;
export const SWATCH_WIDGET = "sf_swatches";
// Nodes that are not palette nodes by their definition but send the palette they used ({palette: [...]}).
export const PALETTE_UI_NODES = ["SpriteForgePixelQuantize"];
// Nodes whose report ({text: [...]}) is shown on the node after a run, in a read-only text box like
// core's Preview Any.
export const TEXT_NODES = ["SpriteForgeEngineInfo", "SpriteForgeLoRAInfo"];
export const REPORT_WIDGET = "sf_report";

// Widgets that apply only to some model families (name -> {only?: [families], not?: [families], hint}) and widgets
// relabelled for a family (name -> {family: label}): each family declares them in the pack's family registry
// (models/families), served as `family_widgets` in /spriteforge/capabilities.
export const familyRules = () => state.capabilities?.family_widgets?.rules || {};
export const familyLabels = () => state.capabilities?.family_widgets?.labels || {};
// Widgets that need an engine capability: [widget name pattern, capability key in /spriteforge/capabilities].
// The LoRA nodes' name and strength widgets (LoRA Stack numbers them). The Sampler's and VAE Decode's `tile`
// is seamless tiling, which every engine does: no rule (the `vae_tiling` capability is a memory feature).
export const CAPABILITY_WIDGETS = [[/^(lora_name|lora_\d+|strength_(model|text)(_\d+)?)$/, "lora"]];

/** The engine capability widget `name` needs (null when any engine can honour it). */
export function capabilityFor(name) {
  return CAPABILITY_WIDGETS.find(([re]) => re.test(name))?.[1] ?? null;
}

export const state = {
  capabilities: null, // the /spriteforge/capabilities report
  palettes: {}, // name -> ["#rrggbb"]
  families: {}, // model name -> {family, variant, error} | "pending"
  app: null,
  api: null,
};

// ----------------------------------------------------------------------------- pure helpers

/** The SpriteForge error code in an exception message ("[CODE] ..." or "CODE: ..."), or null. */
export function errorCode(message, codes) {
  if (!message) return null;
  const text = String(message);
  const m = text.match(/\[([A-Z][A-Z_]+)\]/) || text.match(/^([A-Z][A-Z_]+):/m);
  if (!m) return null;
  if (codes && !(m[1] in codes)) return null;
  return m[1];
}

/** Toast payload for a ws execution_error detail, or null when it is not a SpriteForge error. */
export function describeError(detail, codes) {
  if (!detail) return null;
  const code = errorCode(detail.exception_message, codes);
  if (!code) return null;
  const hint = codes?.[code] || "";
  const node = detail.node_id != null ? `node ${detail.node_id} (${detail.node_type || "?"})` : "a node";
  return {
    code,
    hint,
    nodeId: detail.node_id,
    summary: `SpriteForge ${code} in ${node}`,
    detail: `${String(detail.exception_message || "").trim()}${hint && !String(detail.exception_message).includes(hint) ? `\nWhat to do: ${hint}` : ""}`,
  };
}

/** Is this node definition (object_info entry) a palette node? */
export function isPaletteNode(nodeData) {
  if (!nodeData) return false;
  if ((nodeData.output || []).includes(PALETTE_TYPE) || PALETTE_UI_NODES.includes(nodeData.name)) return true;
  const inputs = { ...(nodeData.input?.required || {}), ...(nodeData.input?.optional || {}) };
  return "palette" in inputs && isWidgetSpec(inputs.palette);
}

/** Is this node definition a model node (gives an SF_MODEL or has an `engine` widget)? */
export function isModelNode(nodeData) {
  if (!nodeData) return false;
  if ((nodeData.output || []).includes(MODEL_TYPE)) return true;
  const inputs = { ...(nodeData.input?.required || {}), ...(nodeData.input?.optional || {}) };
  return "engine" in inputs;
}

export function isWidgetSpec(spec) {
  if (!Array.isArray(spec)) return false;
  const t = spec[0];
  return Array.isArray(t) || ["INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"].includes(t);
}

/** The node's widget values as one string (what a run's result depends on), the extension's own widgets left out. */
export function widgetValuesKey(node) {
  return JSON.stringify((node?.widgets || []).filter((w) => !w.name?.startsWith("sf_")).map((w) => w.value ?? null));
}

/** The palette colours a node shows: what its last run made while its widgets still hold the values of that
 * run, else the palette its palette-name widget names. */
export function paletteColors(node, palettes) {
  if (node?.sfPalette && node.sfPaletteFrom === widgetValuesKey(node)) return node.sfPalette;
  for (const w of node?.widgets || []) {
    if (typeof w.value === "string" && palettes && Array.isArray(palettes[w.value])) return palettes[w.value];
  }
  return null;
}

/** The colours of an executed node's `palette` ui output as "#rrggbb" strings (null when none). */
export function executedPalette(message) {
  const pal = message?.palette;
  if (!Array.isArray(pal)) return null;
  return pal.flat().map((c) => (String(c).startsWith("#") ? String(c) : `#${c}`));
}

/** The report text of an executed node's `text` ui output (null when none). */
export function executedText(message) {
  const t = message?.text;
  if (t == null) return null;
  return Array.isArray(t) ? t.flat().map(String).join("\n") : String(t);
}

/** Add the read-only report text box (ComfyWidgets.STRING, multiline) a text node shows its report in. */
export function addReportWidget(node, app) {
  const widgets = (globalThis.window ?? globalThis).comfyAPI?.widgets?.ComfyWidgets;
  if (!widgets?.STRING || (node.widgets || []).some((w) => w.name === REPORT_WIDGET)) return null;
  const w = widgets.STRING(node, REPORT_WIDGET, ["STRING", { multiline: true }], app).widget;
  if (w.element) w.element.readOnly = true;
  w.serialize = false;
  return w;
}

/** Grid of a swatch strip of `count` colours: up to 32 a row, rows sharing `height`. */
export function swatchGrid(count, height = SWATCH_H) {
  const columns = Math.max(1, Math.min(count, 32));
  return { columns, rowHeight: height / Math.max(1, Math.ceil(count / columns)) };
}

/** Add the swatch strip under a palette node's widgets: a DOM widget (`addDOMWidget`), so it shows in the
 * canvas renderer and in the Vue node renderer ("Nodes 2.0") alike, and the node is sized around it. */
export function addSwatchWidget(node) {
  const doc = globalThis.document;
  if (!node.addDOMWidget || !doc || (node.widgets || []).some((w) => w.name === SWATCH_WIDGET)) return null;
  const el = doc.createElement("div");
  el.className = "sf-swatches";
  Object.assign(el.style, { display: "grid", height: `${SWATCH_H}px`, margin: "3px 8px", overflow: "hidden" });
  const h = () => SWATCH_H + 6;
  const w = node.addDOMWidget(SWATCH_WIDGET, "sf_swatches", el, { serialize: false, hideOnZoom: false, getMinHeight: h, getMaxHeight: h });
  w.serialize = false;
  return w;
}

/** Show `colors` (["#rrggbb"], or none) in the node's swatch strip. */
export function showSwatches(node, colors) {
  const el = (node.widgets || []).find((x) => x.name === SWATCH_WIDGET)?.element;
  if (!el) return;
  const list = colors || [];
  if (el.dataset.colors === list.join(",")) return;
  const { columns, rowHeight } = swatchGrid(list.length);
  el.style.gridTemplateColumns = `repeat(${columns}, 1fr)`;
  el.style.gridAutoRows = `${rowHeight}px`;
  el.replaceChildren(
    ...list.map((c) => {
      const cell = globalThis.document.createElement("span");
      cell.style.background = c;
      cell.title = c;
      return cell;
    }),
  );
  el.dataset.colors = list.join(",");
}

/** The engine a model node will use and its device label, from the capabilities report. */
export function engineBadge(node, caps) {
  if (!caps) return null;
  const engineW = (node?.widgets || []).find((w) => w.name === "engine");
  const deviceW = (node?.widgets || []).find((w) => w.name === "device");
  let engine = engineW?.value;
  const usable = (caps.engines || []).filter((e) => e.usable && (e.devices || []).length);
  if (!engine || engine === "auto") engine = usable[0]?.name || (caps.devices || [])[0]?.engine;
  if (!engine) return { text: "no engine", ok: false, engine: null };
  const info = (caps.engines || []).find((e) => e.name === engine);
  if (!info || !info.usable) {
    return { text: `${engine}: unavailable`, ok: false, engine, reason: info?.reason || "not installed" };
  }
  let dev = null;
  const pick = deviceW?.value && deviceW.value !== "auto" ? deviceW.value : null;
  const devs = (caps.devices || []).filter((d) => d.engine === engine);
  dev = (pick && devs.find((d) => `${d.device?.kind}` === pick || d.device?.label === pick)) || devs[0];
  const label = dev?.device?.label || (info.devices || [])[0]?.label || pick || "?";
  const dtype = dev?.policy?.weight_dtype ? ` ${dev.policy.weight_dtype}` : "";
  return { text: `${engine} · ${label}${dtype}`, ok: true, engine };
}

/** Follow a node's SF_MODEL input upstream to the node that loads the model (or null). */
export function findModelSource(graph, node, depth = 0) {
  if (!graph || !node || depth > 32) return null;
  const hasModelOut = (node.outputs || []).some((o) => o.type === MODEL_TYPE);
  const modelW = (node.widgets || []).find((w) => w.name === "model");
  if (hasModelOut && modelW && !(node.inputs || []).some((i) => i.type === MODEL_TYPE && i.link != null)) return node;
  const input = (node.inputs || []).find((i) => i.type === MODEL_TYPE && i.link != null);
  if (!input) return hasModelOut && modelW ? node : null;
  const link = getLink(graph, input.link);
  if (!link) return null;
  const src = graph.getNodeById(link.origin_id);
  return findModelSource(graph, src, depth + 1);
}

export function getLink(graph, id) {
  const links = graph?.links;
  if (!links) return null;
  if (typeof links.get === "function") return links.get(id) ?? null;
  return links[id] ?? null;
}

/** What each widget of `node` should look like: [{name, disabled, hint, label}] for the family/engine. */
export function widgetStates(node, family, engineCaps) {
  const out = [];
  for (const w of node?.widgets || []) {
    let disabled = false;
    let hint = null;
    const rule = familyRules()[w.name];
    if (rule && family) {
      if (rule.only && !rule.only.includes(family)) disabled = true;
      if (rule.not && rule.not.includes(family)) disabled = true;
      if (disabled) hint = rule.hint;
    }
    const cap = capabilityFor(w.name);
    if (!disabled && cap && engineCaps && engineCaps[cap] === false) {
      disabled = true;
      hint = `not supported by this engine`;
    }
    const relabel = family ? familyLabels()[w.name]?.[family] : null;
    const label = disabled ? `${w.name} (${hint})` : relabel || undefined;
    out.push({ name: w.name, disabled, hint, label });
  }
  return out;
}

/** Apply widgetStates to the node's widgets; returns true when anything changed. */
export function applyWidgetStates(node, states) {
  let changed = false;
  for (const s of states) {
    const w = (node.widgets || []).find((x) => x.name === s.name);
    if (!w) continue;
    if (w.sfOrigLabel === undefined) w.sfOrigLabel = w.label ?? null;
    const label = s.label ?? w.sfOrigLabel ?? undefined;
    if (!!w.disabled !== s.disabled || w.label !== label) changed = true;
    w.disabled = s.disabled;
    if (label === undefined || label === null) delete w.label;
    else w.label = label;
    w.sfHint = s.hint;
    const el = w.element || w.inputEl; // multiline text widgets are DOM textareas: show it there too
    if (el && "placeholder" in el) {
      if (w.sfOrigPlaceholder === undefined) w.sfOrigPlaceholder = el.placeholder ?? "";
      const ph = s.label ?? w.sfOrigPlaceholder;
      if (el.placeholder !== ph || !!el.disabled !== s.disabled) changed = true;
      el.placeholder = ph;
      el.disabled = s.disabled;
    }
  }
  return changed;
}

// ----------------------------------------------------------------------------- talking to the server

async function getJSON(api, path) {
  try {
    const r = await api.fetchApi(path);
    if (!r || !r.ok) return null;
    return await r.json();
  } catch (e) {
    console.warn(`[SpriteForge] ${path}:`, e);
    return null;
  }
}

export async function loadServerData(api) {
  const [caps, pals] = await Promise.all([getJSON(api, "/spriteforge/capabilities"), getJSON(api, "/spriteforge/palettes")]);
  state.capabilities = caps;
  state.palettes = pals || {};
  return state;
}

/** The model family behind `node` (null while unknown; fetches once per model name and redraws). */
export function familyFor(node) {
  const graph = state.app?.graph ?? node?.graph;
  const src = findModelSource(graph, node);
  if (!src) return null;
  const name = (src.widgets || []).find((w) => w.name === "model")?.value;
  if (!name) return null;
  const known = state.families[name];
  if (known && known !== "pending") return known.family || null;
  if (!known && state.api) {
    state.families[name] = "pending";
    getJSON(state.api, `/spriteforge/model_family?name=${encodeURIComponent(name)}`).then((d) => {
      state.families[name] = d || { family: null };
      refreshAll();
    });
  }
  return null;
}

function engineCapsFor(node) {
  const caps = state.capabilities;
  if (!caps) return null;
  const graph = state.app?.graph ?? node?.graph;
  const src = findModelSource(graph, node) || node;
  const badge = engineBadge(src, caps);
  return badge?.engine ? caps.capabilities?.[badge.engine] || null : null;
}

export function refreshNode(node) {
  const states = widgetStates(node, familyFor(node), engineCapsFor(node));
  if (applyWidgetStates(node, states)) node.setDirtyCanvas?.(true, true);
  if (node.sfPaletteNode) showSwatches(node, paletteColors(node, state.palettes));
}

export function refreshAll() {
  const nodes = state.app?.graph?._nodes || state.app?.graph?.nodes || [];
  for (const n of nodes) if (n.sfSpriteForge) refreshNode(n);
  state.app?.graph?.setDirtyCanvas?.(true, true);
}

function showError(app, info) {
  const toast = app?.extensionManager?.toast;
  if (toast?.add) {
    toast.add({ severity: "error", summary: info.summary, detail: info.detail, life: 15000 });
  } else {
    console.error(`[SpriteForge] ${info.summary}: ${info.detail}`);
  }
}

// ----------------------------------------------------------------------------- the extension

export function makeExtension(app, api) {
  state.app = app;
  state.api = api;
  return {
    name: EXTENSION_NAME,

    async setup() {
      await loadServerData(api);
      api.addEventListener("execution_error", (ev) => {
        const info = describeError(ev?.detail, state.capabilities?.error_codes);
        if (!info) return;
        const node = info.nodeId != null ? app.graph?.getNodeById?.(Number(info.nodeId) || info.nodeId) : null;
        if (node) {
          node.sfError = info;
          node.setDirtyCanvas?.(true, true);
        }
        showError(app, info);
      });
      api.addEventListener("execution_start", () => {
        for (const n of app.graph?._nodes || app.graph?.nodes || []) if (n.sfError) delete n.sfError;
      });
      refreshAll();
    },

    async beforeRegisterNodeDef(nodeType, nodeData) {
      const ours = String(nodeData?.name || "").startsWith("SpriteForge");
      const palette = isPaletteNode(nodeData);
      const model = isModelNode(nodeData);
      if (!ours && !palette && !model) return;
      const proto = nodeType.prototype;

      const onNodeCreated = proto.onNodeCreated;
      proto.onNodeCreated = function () {
        const r = onNodeCreated?.apply(this, arguments);
        this.sfSpriteForge = true;
        this.sfPaletteNode = palette;
        this.sfModelNode = model;
        this.sfTextNode = TEXT_NODES.includes(nodeData?.name);
        if (this.sfTextNode) addReportWidget(this, state.app);
        if (Array.isArray(this.badges)) this.badges.unshift(() => nodeBadge(this)); // first: left of the source badge
        if (palette) addSwatchWidget(this);
        const node = this;
        for (const w of this.widgets || []) {
          const cb = w.callback;
          w.callback = function () {
            // a changed value makes the last run's colours stale (paletteColors compares); the frontend also calls
            // callbacks without a change (a seed's "fixed" control when queueing), which must keep them
            const res = cb?.apply(this, arguments);
            refreshAll();
            return res;
          };
        }
        refreshNode(this);
        return r;
      };

      const onConnectionsChange = proto.onConnectionsChange;
      proto.onConnectionsChange = function () {
        const r = onConnectionsChange?.apply(this, arguments);
        refreshNode(this);
        return r;
      };

      const onExecuted = proto.onExecuted;
      proto.onExecuted = function (message) {
        const r = onExecuted?.apply(this, arguments);
        const pal = executedPalette(message);
        if (pal) {
          this.sfPalette = pal; // what the node made (an empty list: no colour left after quantizing)
          this.sfPaletteFrom = widgetValuesKey(this); // ... with these widget values
          this.sfPaletteNode = true;
          showSwatches(this, pal);
        }
        const text = executedText(message);
        if (text != null && this.sfTextNode) {
          this.sfText = text;
          const w = (this.widgets || []).find((x) => x.name === REPORT_WIDGET) || addReportWidget(this, state.app);
          if (w) w.value = text;
          this.setDirtyCanvas?.(true, true);
        }
        return r;
      };
    },
  };
}

/** A node badge (what the frontend draws above the title bar on the canvas and shows in its Vue node renderer):
 * the shape of litegraph's LGraphBadge, text and colours plus getWidth/draw for the canvas. */
export class NodeBadge {
  constructor(text, bgColor, fgColor = "#e8e8e8") {
    Object.assign(this, { text, bgColor, fgColor, fontSize: 10, padding: 5, height: 16, visible: !!text });
  }

  getWidth(ctx) {
    if (!this.visible) return 0;
    const { font } = ctx;
    ctx.font = `${this.fontSize}px sans-serif`;
    const w = ctx.measureText(this.text).width + 2 * this.padding;
    ctx.font = font;
    return w;
  }

  draw(ctx, x, y) {
    if (!this.visible) return;
    ctx.save();
    ctx.font = `${this.fontSize}px sans-serif`;
    ctx.fillStyle = this.bgColor;
    ctx.beginPath();
    if (ctx.roundRect) ctx.roundRect(x, y, this.getWidth(ctx), this.height, 4);
    else ctx.rect(x, y, this.getWidth(ctx), this.height);
    ctx.fill();
    ctx.fillStyle = this.fgColor;
    ctx.textBaseline = "middle";
    ctx.fillText(this.text, x + this.padding, y + this.height / 2 + 1);
    ctx.restore();
  }
}

/** The badge a SpriteForge node shows: its last error code, else (model nodes) the engine and device it will use. */
export function nodeBadge(node) {
  if (node.sfError) return new NodeBadge(`${node.sfError.code}`, "#8a2020");
  const badge = node.sfModelNode ? engineBadge(node, state.capabilities) : null;
  return new NodeBadge(badge?.text ?? "", badge?.ok ? "#2d5a3d" : "#6a2d2d");
}

// ----------------------------------------------------------------------------- registration

const comfy = globalThis.window?.comfyAPI ?? globalThis.comfyAPI;
const theApp = comfy?.app?.app;
const theApi = comfy?.api?.api;
if (theApp?.registerExtension && theApi) {
  theApp.registerExtension(makeExtension(theApp, theApi));
}
