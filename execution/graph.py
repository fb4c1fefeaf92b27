"""Workflow formats: node descriptions, graph -> API conversion, validation of an API prompt.

Three things, all driven by *object_info-style descriptions* (the JSON ComfyUI serves at
``GET /object_info``), so the same code works for our V3 nodes (described from their schema
by :func:`describe_node`), the core IO nodes of :mod:`.core_io`, and any node a running
ComfyUI knows (``spriteforge submit`` passes the server's ``/object_info``):

* :func:`describe_node` / :func:`object_info`: a V3 schema as ComfyUI's ``/object_info`` entry.
* :func:`graph_to_api`: the editor's *graph format* (``nodes`` + ``links``, what "Save" writes)
  to the *API format* ``{node_id: {"class_type", "inputs"}}`` that ``POST /prompt`` takes,
  following the frontend's ``graphToPrompt`` (widget order, the extra ``control_after_generate``
  value after seed-like inputs, the upload button value, muted/bypassed nodes, reroutes,
  primitive nodes, notes).
* :func:`validate_prompt` / :func:`check_prompt`: the checks of ComfyUI's ``validate_inputs``
  (required inputs, link shape and type, INT/FLOAT/STRING/BOOLEAN conversion, min/max, combo
  options) with messages that name the node, the input and what to do;
  :func:`format_node_errors` turns a ComfyUI ``node_errors`` answer into the same lines.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from enum import Enum
from typing import Any, Iterable

from ..errors import BAD_INPUT, SpriteForgeError
from ..nodes.validation import WIDGET_TYPES, check_value, combo_options, node_check

# Frontend-only nodes: never sent to the server.
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode", "Primitive"}
# Inputs whose widget gets an extra, unserialised companion widget in the editor.
UPLOAD_KEYS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload", "3d_model_upload",
               "upload")
MODE_MUTED = 2
MODE_BYPASS = 4


def _bad(msg: str, **details) -> SpriteForgeError:
    return SpriteForgeError(BAD_INPUT, msg, details=details or None)


# --------------------------------------------------------------------------- schema -> object_info

def _plain(v):
    if isinstance(v, Enum):
        return v.value
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _io_type(obj) -> str:
    if hasattr(obj, "get_io_type"):
        try:
            t = obj.get_io_type()
            return str(t.value if isinstance(t, Enum) else t)
        except Exception:  # noqa: BLE001
            pass
    return str(getattr(obj, "io_type", "*"))


def _input_options(inp) -> dict:
    if hasattr(inp, "as_dict"):  # comfy_api.latest.io
        d = dict(inp.as_dict())
    else:  # our stand-in: constructor keywords are attributes
        d = {k: v for k, v in vars(inp).items() if not k.startswith("_")}
        d.pop("id", None)
    d.pop("optional", None)
    return {k: _plain(v) for k, v in d.items() if v is not None}


def describe_node(cls) -> dict:
    """The ``/object_info`` entry of a V3 node class (same keys and shapes as ComfyUI's)."""
    s = cls.define_schema()
    req: dict = {}
    opt: dict = {}
    for inp in s.inputs or []:
        (opt if getattr(inp, "optional", False) else req)[inp.id] = [_io_type(inp), _input_options(inp)]
    inputs = {"required": req}
    if opt:
        inputs["optional"] = opt
    if s.hidden:
        inputs["hidden"] = {str(getattr(h, "name", h)): [str(_plain(h))] for h in s.hidden}
    outs = list(s.outputs or [])
    return {
        "input": inputs,
        "input_order": {k: list(v) for k, v in inputs.items()},
        "output": [_io_type(o) for o in outs],
        "output_is_list": [bool(getattr(o, "is_output_list", False)) for o in outs],
        "output_name": [getattr(o, "display_name", None) or _io_type(o) for o in outs],
        "output_tooltips": [getattr(o, "tooltip", None) for o in outs],
        "name": s.node_id,
        "display_name": s.display_name or s.node_id,
        "description": s.description or "",
        "category": s.category,
        "output_node": bool(s.is_output_node),
        "deprecated": bool(getattr(s, "is_deprecated", False)),
        "experimental": bool(getattr(s, "is_experimental", False)),
        "api_node": bool(getattr(s, "is_api_node", False)),
        "python_module": "spriteforge",
    }


def node_classes(include_core: bool = True, folders=None) -> dict[str, type]:
    """Node id -> class: the pack's nodes, plus the core IO stand-ins (LoadImage, SaveImage, PreviewImage).

    With ``folders`` (a :class:`~spriteforge.nodes.folders.Folders`) every class reads and writes there
    (:func:`bind_folders`): LoadImage lists that input folder, the save nodes write to that output folder.
    """
    from ..nodes import node_map

    out = dict(node_map())
    if include_core:
        from .core_nodes import CORE_NODES

        for cls in CORE_NODES:
            out.setdefault(cls.define_schema().node_id, cls)
    return out if folders is None else bind_folders(out, folders)


def bind_folders(classes: dict[str, type], folders) -> dict[str, type]:
    """``classes`` with each class replaced by a subclass that reads and writes in ``folders``."""
    from ..nodes.folders import with_folders

    return {name: with_folders(cls, folders) for name, cls in classes.items()}


def object_info(classes: dict[str, type] | None = None, *, folders=None) -> dict:
    """``/object_info`` for ``classes`` (default :func:`node_classes` for ``folders``)."""
    classes = node_classes(folders=folders) if classes is None else classes
    return {name: describe_node(cls) for name, cls in classes.items()}


# --------------------------------------------------------------------------- helpers on descriptions

def input_spec(info: dict, name: str) -> tuple[str | None, Any, dict]:
    """(category, type, options) of input ``name`` in an object_info entry; category None when unknown."""
    for cat in ("required", "optional", "hidden"):
        spec = (info.get("input") or {}).get(cat, {}).get(name)
        if spec is not None:
            typ = spec[0] if spec else None
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            return cat, typ, opts
    return None, None, {}


def ordered_inputs(info: dict) -> list[tuple[str, str, Any, dict]]:
    """(name, category, type, options) for required then optional inputs, in the frontend's order."""
    out = []
    order = info.get("input_order") or {}
    for cat in ("required", "optional"):
        specs = (info.get("input") or {}).get(cat) or {}
        names = order.get(cat) or list(specs)
        for name in names:
            spec = specs.get(name)
            if spec is None:
                continue
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            out.append((name, cat, spec[0], opts))
    return out


def is_widget(typ, opts: dict) -> bool:
    if opts.get("forceInput"):
        return False
    return isinstance(typ, (list, tuple)) or typ in WIDGET_TYPES


def widget_slots(info: dict) -> list[str | None]:
    """The names behind each ``widgets_values`` position (``None`` for companion widgets).

    Follows the frontend: one widget per widget input, then a ``control_after_generate``
    combo after an INT/COMBO input that asks for it (and after INT inputs named ``seed`` or
    ``noise_seed``), and the upload button after an ``image_upload`` combo.
    """
    slots: list[str | None] = []
    for name, _cat, typ, opts in ordered_inputs(info):
        if not is_widget(typ, opts):
            continue
        slots.append(name)
        cag = opts.get("control_after_generate")
        if cag is None and typ == "INT" and name in ("seed", "noise_seed"):
            cag = True
        if cag and (typ in ("INT", "COMBO") or isinstance(typ, (list, tuple))):
            slots.append(None)
        if any(opts.get(k) for k in UPLOAD_KEYS):
            slots.append(None)
    return slots


def output_types(info: dict) -> list[str]:
    return [t if isinstance(t, str) else "COMBO" for t in info.get("output") or []]


def types_match(received: str, expected) -> bool:
    """ComfyUI's ``validate_node_input`` (non-strict): ``*`` matches, comma lists must overlap."""
    if isinstance(expected, (list, tuple)):
        expected = "COMBO"
    if received == expected or "*" in (received, expected):
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    r = {t.strip() for t in received.split(",")}
    e = {t.strip() for t in expected.split(",")}
    return "*" in r or "*" in e or bool(r & e)


# --------------------------------------------------------------------------- graph -> API

def is_graph_format(data) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


def is_api_format(data) -> bool:
    return (isinstance(data, dict) and bool(data)
            and all(isinstance(v, dict) and "class_type" in v for v in data.values()))


def _links_table(graph: dict) -> dict:
    table = {}
    for link in graph.get("links") or []:
        if isinstance(link, dict):  # newer serialisation
            lid = link.get("id")
            table[lid] = (link.get("origin_id"), link.get("origin_slot"), link.get("target_id"),
                          link.get("target_slot"), link.get("type"))
        elif isinstance(link, (list, tuple)) and len(link) >= 5:
            table[link[0]] = (link[1], link[2], link[3], link[4], link[5] if len(link) > 5 else "*")
    return table


def _label(node: dict) -> str:
    return f"node {node.get('id')} ({node.get('type')})"


def graph_to_api(graph: dict, info: dict | None = None, *, strict: bool = True, titles: bool = True) -> dict:
    """Convert a graph-format workflow to the API format, as the editor's "Queue" does.

    ``info`` is an object_info mapping (default: ours + core IO). Unknown node types raise
    (``strict``) or are left out. Subgraphs / group nodes are not expanded. A damaged graph
    (entries of the wrong type) raises BAD_INPUT.
    """
    try:
        return _graph_to_api(graph, info, strict=strict, titles=titles)
    except SpriteForgeError:
        raise
    except (AttributeError, TypeError, ValueError, KeyError, IndexError, RecursionError) as exc:
        raise _bad(f"the graph-format workflow is malformed ({type(exc).__name__}: {str(exc)[:200]}). Save it "
                   "again from the editor, or give the API format.") from None


def _graph_to_api(graph: dict, info: dict | None, *, strict: bool, titles: bool) -> dict:
    if not is_graph_format(graph):
        raise _bad("this is not a graph-format workflow (no 'nodes' and 'links'). Export it from the editor "
                   "with Workflow > Save, or give the API format.")
    info = object_info() if info is None else info
    nodes = {str(n.get("id")): n for n in graph["nodes"]}
    links = _links_table(graph)
    out: dict = {}
    for nid, node in nodes.items():
        ctype = node.get("type")
        if ctype in VIRTUAL_NODES or node.get("mode") in (MODE_MUTED, MODE_BYPASS):
            continue
        desc = info.get(ctype)
        if desc is None:
            if strict:
                raise _bad(f"{_label(node)}: the node type {ctype!r} is not known here. Install the node pack that "
                           f"provides it, or run the workflow on a ComfyUI that has it (`spriteforge submit`).",
                           node_id=nid, class_type=ctype)
            continue
        inputs = _widget_inputs(node, desc)
        _link_inputs(node, desc, inputs, lambda lid: _follow_link(nodes, links, lid))
        for k, v in list(inputs.items()):
            if isinstance(v, list) and not (len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int)):
                inputs[k] = {"__value__": v}
        entry = {"inputs": inputs, "class_type": ctype}
        if titles:
            entry["_meta"] = {"title": node.get("title") or desc.get("display_name") or ctype}
        out[nid] = entry
    for entry in out.values():  # links to nodes that were left out
        for k, v in list(entry["inputs"].items()):
            if isinstance(v, list) and len(v) == 2 and v[0] not in out:
                del entry["inputs"][k]
    return out


def _follow_link(nodes: dict, links: dict, link_id, seen=()):
    """Follow a link through reroutes and bypassed nodes: ('link', node_id, slot) | ('value', v) | None."""
    if link_id is None or link_id not in links:
        return None
    origin, slot, _t, _s, typ = links[link_id]
    src = nodes.get(str(origin))
    if src is None or str(origin) in seen:
        return None
    seen = seen + (str(origin),)
    stype = src.get("type")
    if stype == "Reroute":
        ins = src.get("inputs") or []
        return _follow_link(nodes, links, ins[0].get("link"), seen) if ins else None
    if stype in ("PrimitiveNode", "Primitive"):
        vals = src.get("widgets_values") or []
        return ("value", vals[0]) if vals else None
    if src.get("mode") == MODE_MUTED:
        return None
    if src.get("mode") == MODE_BYPASS:
        return _through_bypassed(nodes, links, src, slot, typ, seen)
    return ("link", str(origin), int(slot))


def _through_bypassed(nodes: dict, links: dict, src: dict, slot, typ, seen):
    """A bypassed node passes on the input in the output's slot, else the first linked input of the output's type."""
    ins = src.get("inputs") or []
    otype = None
    outs = src.get("outputs") or []
    if isinstance(slot, int) and slot < len(outs):
        otype = outs[slot].get("type")
    otype = otype or typ
    cands = []
    if isinstance(slot, int) and slot < len(ins) and types_match(str(ins[slot].get("type")), otype):
        cands.append(ins[slot])
    cands += [i for i in ins if types_match(str(i.get("type")), otype) and i.get("link") is not None]
    for c in cands:
        r = _follow_link(nodes, links, c.get("link"), seen)
        if r is not None:
            return r
    return None


def _widget_inputs(node: dict, desc: dict) -> dict:
    """The node's widget values by input name (a list in slot order, or the newer name -> value dict)."""
    inputs: dict = {}
    values = node.get("widgets_values")
    if isinstance(values, dict):
        for name, _cat, typ, opts in ordered_inputs(desc):
            if name in values and is_widget(typ, opts):
                inputs[name] = values[name]
        return inputs
    values = list(values or [])
    for i, name in enumerate(widget_slots(desc)):
        if name is None:
            continue
        if i < len(values):
            if values[i] is not None:  # the editor's `undefined` (an empty combo): not sent
                inputs[name] = values[i]
        else:
            _c, _t, opts = input_spec(desc, name)
            if "default" in opts:
                inputs[name] = opts["default"]
    return inputs


def _link_inputs(node: dict, desc: dict, inputs: dict, follow) -> None:
    """Set the linked inputs in ``inputs``: ``[node_id, slot]``, or the value of a primitive node."""
    for slot in node.get("inputs") or []:
        name = slot.get("name")
        if name is None:
            continue
        cat, typ, opts = input_spec(desc, name)
        lid = slot.get("link")
        if lid is None:
            continue
        r = follow(lid)
        if r is None:
            inputs.pop(name, None) if not is_widget(typ, opts) else None
            continue
        if r[0] == "value":
            inputs[name] = r[1]
        else:
            inputs[name] = [r[1], r[2]]


def read_workflow(data_or_path):
    """The workflow JSON (dict) from a path, JSON text or dict; a saved POST /prompt body gives its prompt."""
    from pathlib import Path

    data = data_or_path
    if isinstance(data, os.PathLike):
        data = os.fspath(data)
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            data = os.fsdecode(data)  # a file name in bytes
    if isinstance(data, str) and not data.lstrip().startswith("{"):
        p = Path(data)
        try:
            exists = p.is_file()
        except (OSError, ValueError):  # a name the file system cannot hold (too long, NUL)
            exists = False
        if not exists:
            raise _bad(f"workflow file {data[:200]!r} does not exist. Give the path of a workflow .json file.")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise _bad(f"{p} is not valid JSON ({type(exc).__name__}: {str(exc)[:200]}). Export the workflow again.") from None
        except OSError as exc:
            raise _bad(f"workflow file {p} cannot be read ({exc.strerror or exc}). Check the path.") from None
    elif isinstance(data, str):
        try:
            data = json.loads(data)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise _bad(f"the workflow text is not valid JSON ({type(exc).__name__}: {str(exc)[:200]}). "
                       "Export the workflow again.") from None
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict) and is_api_format(data["prompt"]):
        data = data["prompt"]  # a saved POST /prompt body
    return data


def load_workflow(data_or_path, info: dict | None = None) -> tuple[dict, dict | None]:
    """(API prompt, graph or None) from a path, JSON text or dict in either format."""
    data = read_workflow(data_or_path)
    if is_graph_format(data):
        return graph_to_api(data, info), data
    if is_api_format(data):
        return copy.deepcopy(data), None
    raise _bad("this JSON is neither an API-format workflow ({id: {class_type, inputs}}) nor a graph-format one "
               "(nodes + links). Export it from ComfyUI (Workflow > Export (API), or Save).")


def fill_defaults(prompt: dict, info: dict | None = None, *, optional: bool = False) -> dict:
    """Give every missing required widget input (and optional ones with ``optional``) its default; returns ``prompt``."""
    info = object_info() if info is None else info
    for node in prompt.values():
        desc = info.get(node.get("class_type"))
        if desc is None:
            continue
        inputs = node.setdefault("inputs", {})
        for name, cat, typ, opts in ordered_inputs(desc):
            if name in inputs or not is_widget(typ, opts) or (cat == "optional" and not optional):
                continue
            if "default" in opts:
                inputs[name] = opts["default"]
            else:
                options = combo_options(typ, opts)
                if options:
                    inputs[name] = options[0]
    return prompt


# --------------------------------------------------------------------------- overrides

def parse_value(text: str):
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return text


def _find_node(prompt: dict, ref: str) -> str:
    if ref in prompt:
        return ref
    matches = [k for k, v in prompt.items() if isinstance(v.get("_meta"), dict) and v["_meta"].get("title") == ref]
    if len(matches) == 1:
        return matches[0]
    matches = [k for k, v in prompt.items() if v.get("class_type") == ref]
    if len(matches) == 1:
        return matches[0]
    ids = ", ".join(f"{k} ({v.get('class_type')})" for k, v in sorted(prompt.items(), key=lambda kv: _id_key(kv[0])))
    raise _bad(f"there is no node {ref!r} in the workflow. Use one of the node ids: {ids}.", node=ref)


def apply_overrides(prompt: dict, sets: Iterable[str] = (), info: dict | None = None) -> dict:
    """Apply ``NODE.INPUT=VALUE`` overrides (value parsed as JSON when it is JSON); returns ``prompt``."""
    for item in sets or ():
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise _bad(f"--set {item!r} is not NODE_ID.INPUT=VALUE (e.g. --set 12.seed=7).")
        lhs, text = item.split("=", 1)
        ref, name = lhs.rsplit(".", 1)
        nid = _find_node(prompt, ref.strip())
        node = prompt[nid]
        if structure_issues({nid: node}):
            raise _bad(f"--set {item!r}: node {nid} is malformed: {structure_issues({nid: node})[0].message}")
        desc = (info or {}).get(node.get("class_type"))
        if desc is not None and input_spec(desc, name)[0] is None:
            names = ", ".join(n for n, *_ in ordered_inputs(desc))
            raise _bad(f"--set {item!r}: node {nid} ({node.get('class_type')}) has no input {name!r}. "
                       f"Its inputs are: {names}.")
        node.setdefault("inputs", {})[name.strip()] = parse_value(text)
    return prompt


def find_prompt_input(prompt: dict, spec: str | None = None) -> tuple[str, str]:
    """The (node_id, input) a batch line replaces: ``spec`` ``NODE.INPUT``, or the first
    SpriteForgeEncodePrompt's ``positive`` (lowest id)."""
    if spec:
        if "." not in spec:
            raise _bad(f"--prompt-input {spec!r} is not NODE_ID.INPUT (e.g. 6.positive).")
        ref, name = spec.rsplit(".", 1)
        return _find_node(prompt, ref), name
    for nid in sorted(prompt, key=_id_key):
        if prompt[nid].get("class_type") == "SpriteForgeEncodePrompt":
            return nid, "positive"
    raise _bad("the workflow has no SpriteForgeEncodePrompt node to put the --prompts lines into. "
               "Name the input with --prompt-input NODE_ID.INPUT.")


def _id_key(k):
    s = str(k)
    return (0, int(s), s) if s.isdigit() else (1, 0, s)


# --------------------------------------------------------------------------- validation

@dataclass
class Issue:
    node_id: str
    class_type: str
    input: str | None
    kind: str
    message: str

    def __str__(self) -> str:
        where = f"node {self.node_id} ({self.class_type})"
        if self.input:
            where += f", input '{self.input}'"
        return f"{where}: {self.message}"

    def to_dict(self) -> dict:
        return {"node_id": self.node_id, "class_type": self.class_type, "input": self.input, "type": self.kind,
                "message": self.message, "text": str(self)}


def _fmt(v) -> str:
    return json.dumps(v) if isinstance(v, str) else repr(v)


def reachable_nodes(prompt: dict, info: dict) -> set[str]:
    """Ids of the output nodes and everything they depend on (what ComfyUI validates and runs)."""
    todo = [k for k, n in prompt.items() if (info.get(n.get("class_type")) or {}).get("output_node")]
    seen: set[str] = set()
    while todo:
        nid = todo.pop()
        if nid in seen or nid not in prompt:
            continue
        seen.add(nid)
        for v in (prompt[nid].get("inputs") or {}).values():
            if isinstance(v, list) and len(v) == 2 and isinstance(v[1], int):
                todo.append(str(v[0]))
    return seen


def structure_issues(prompt: dict) -> list[Issue]:
    """Nodes whose id, ``class_type`` or ``inputs`` have the wrong JSON type (checked before anything else)."""
    issues = []
    for nid, node in prompt.items():
        ctype = node.get("class_type")
        label = ctype if isinstance(ctype, str) else "?"
        if not isinstance(nid, str):
            issues.append(Issue(str(nid), label, None, "invalid_prompt", "the node id is not text. Use string ids."))
        if not isinstance(ctype, str):
            issues.append(Issue(str(nid), label, None, "invalid_prompt",
                                f"class_type {_fmt(ctype)[:60]} is not a node type name. Give the node's type as text."))
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict) or not all(isinstance(k, str) for k in inputs):
            issues.append(Issue(str(nid), label, None, "invalid_prompt",
                                f"inputs {_fmt(inputs)[:60]} is not an object {{name: value}}. Export the workflow again."))
    return issues


def validate_prompt(prompt: dict, info: dict | None = None, *, convert: bool = True,
                    require_output: bool = True, only_needed: bool = False, classes: dict | None = None) -> list[Issue]:
    """Every problem ComfyUI's validation would report, as :class:`Issue` objects.

    With ``convert`` the widget values are converted in place (``"7"`` -> ``7`` for INT), as ComfyUI does.
    ``only_needed`` checks only the output nodes and their inputs, like ComfyUI (which ignores the rest);
    by default every node is checked. With ``classes`` (node id -> class) each node's own rules
    (:func:`~spriteforge.nodes.validation.node_check`, what its ``validate_inputs`` checks in ComfyUI) are
    checked too.
    """
    info = object_info() if info is None else info
    issues: list[Issue] = []
    if not is_api_format(prompt):
        return [Issue("?", "?", None, "invalid_prompt", "the prompt is not in API format {id: {class_type, inputs}}.")]
    shape = structure_issues(prompt)
    if shape:
        return shape
    needed = reachable_nodes(prompt, info) if only_needed else None
    for nid in sorted(prompt, key=_id_key):
        if needed is not None and nid not in needed and prompt[nid].get("class_type") in info:
            continue
        node = prompt[nid]
        ctype = node.get("class_type")
        desc = info.get(ctype)
        if desc is None:
            issues.append(Issue(nid, str(ctype), None, "missing_node_type",
                                f"the node type {ctype!r} is not known. Install the node pack that provides it "
                                f"or remove the node."))
            continue
        issues += _node_issues(prompt, nid, ctype, desc, info, convert, (classes or {}).get(ctype))
    if require_output and not any((info.get(n.get("class_type")) or {}).get("output_node") for n in prompt.values()):
        issues.append(Issue("-", "workflow", None, "prompt_no_outputs",
                            "the workflow has no output node (SaveImage, PreviewImage, a Save/Preview node). "
                            "Add one, or nothing would run."))
    return issues


def _node_issues(prompt: dict, nid: str, ctype: str, desc: dict, info: dict, convert: bool, cls=None) -> list[Issue]:
    """The problems of one node's inputs (missing, badly linked, wrong type, out-of-range values)."""
    issues: list[Issue] = []
    inputs = prompt[nid].setdefault("inputs", {})
    for name, cat, typ, opts in ordered_inputs(desc):
        if name not in inputs:
            if cat == "required":
                hint = "Connect it to an output" if not is_widget(typ, opts) else "Give it a value"
                issues.append(Issue(nid, ctype, name, "required_input_missing",
                                    f"required input is missing. {hint} (type {_tname(typ)})."))
            continue
        val = inputs[name]
        if isinstance(val, list):
            issue = _link_issue(prompt, info, nid, ctype, name, typ, val)
            if issue is not None:
                issues.append(issue)
            continue
        if not is_widget(typ, opts):
            issues.append(Issue(nid, ctype, name, "bad_linked_input",
                                f"a {_tname(typ)} input must be connected to another node's output, "
                                f"not given the value {_fmt(val)[:60]}."))
            continue
        conv, kind, msg = check_value(typ if isinstance(typ, str) else "COMBO", opts, val)
        if not kind and cls is not None:
            kind, msg = "custom_validation_failed", node_check(cls, name, conv)
            kind = kind if msg else None
        if kind:
            issues.append(Issue(nid, ctype, name, kind, msg))
        elif convert:
            inputs[name] = conv
    return issues


def _link_issue(prompt: dict, info: dict, nid: str, ctype: str, name: str, typ, val: list) -> Issue | None:
    """What is wrong with the link ``val`` of input ``name`` (None when it is a good link)."""
    if len(val) != 2 or not isinstance(val[1], int):
        return Issue(nid, ctype, name, "bad_linked_input",
                     f"{_fmt(val)} is not a link [node_id, output_slot]. Wrap list values as {{\"__value__\": [...]}}.")
    src_id = str(val[0])
    src = prompt.get(src_id)
    if src is None:
        return Issue(nid, ctype, name, "bad_linked_input",
                     f"it is linked to node {src_id}, which is not in the workflow. Reconnect it to an existing node.")
    sdesc = info.get(src.get("class_type"))
    if sdesc is None:
        return None  # reported on that node
    outs = output_types(sdesc)
    if not 0 <= val[1] < len(outs):
        return Issue(nid, ctype, name, "bad_linked_input",
                     f"it is linked to output {val[1]} of node {src_id} ({src.get('class_type')}), "
                     f"which has only {len(outs)} output(s). Reconnect it.")
    if not types_match(outs[val[1]], typ):
        oname = (sdesc.get("output_name") or outs)[val[1]]
        return Issue(nid, ctype, name, "return_type_mismatch",
                     f"expects {_tname(typ)} but is linked to output {val[1]} '{oname}' "
                     f"({outs[val[1]]}) of node {src_id} ({src.get('class_type')}). "
                     f"Connect an output of type {_tname(typ)}.")
    return None


def _tname(typ) -> str:
    return "COMBO" if isinstance(typ, (list, tuple)) else str(typ)


def check_prompt(prompt: dict, info: dict | None = None, **kw) -> dict:
    """Validate and raise one :class:`SpriteForgeError` listing every problem; returns ``prompt``."""
    issues = validate_prompt(prompt, info, **kw)
    if issues:
        lines = [str(i) for i in issues]
        head = "the workflow is not valid" if len(lines) > 1 else lines[0]
        msg = head if len(lines) == 1 else head + ":\n  - " + "\n  - ".join(lines)
        raise SpriteForgeError(BAD_INPUT, msg, hint="", details={"issues": [i.to_dict() for i in issues]})
    return prompt


_COMFY_KINDS = {
    "required_input_missing": "required input is missing. Connect it or give it a value.",
    "value_smaller_than_min": None,
    "value_bigger_than_max": None,
    "value_not_in_list": None,
    "return_type_mismatch": None,
}


def format_node_errors(node_errors: dict, prompt: dict | None = None, error: dict | None = None) -> list[str]:
    """Readable lines for a ComfyUI ``/prompt`` 400 answer (``error`` + ``node_errors``)."""
    lines = []
    prompt = prompt or {}
    for nid in sorted(node_errors or {}, key=_id_key):
        ne = node_errors[nid] or {}
        ctype = ne.get("class_type") or (prompt.get(nid) or {}).get("class_type") or "?"
        for e in ne.get("errors") or []:
            extra = e.get("extra_info") or {}
            name = extra.get("input_name")
            kind = e.get("type")
            val = extra.get("received_value")
            cfg = extra.get("input_config")
            opts = cfg[1] if isinstance(cfg, (list, tuple)) and len(cfg) > 1 and isinstance(cfg[1], dict) else {}
            if kind == "value_smaller_than_min" and "min" in opts:
                msg = f"{val} is below the minimum {opts['min']}. Set it to at least {opts['min']}."
            elif kind == "value_bigger_than_max" and "max" in opts:
                msg = f"{val} is above the maximum {opts['max']}. Set it to at most {opts['max']}."
            elif kind == "value_not_in_list":
                msg = f"{_fmt(val)} is not one of the choices ({e.get('details')}). Pick one the server offers."
            elif kind == "return_type_mismatch":
                msg = f"{e.get('details')}. Connect an output of the right type."
            elif kind == "required_input_missing":
                msg = _COMFY_KINDS[kind]
            else:
                msg = f"{e.get('message')}: {e.get('details')}".rstrip(": ")
            where = f"node {nid} ({ctype})" + (f", input '{name}'" if name else "")
            lines.append(f"{where}: {msg}")
    if not lines and error:
        lines.append(f"{error.get('message', 'the server refused the workflow')}: {error.get('details', '')}".rstrip(": "))
    return lines


__all__ = [
    "describe_node", "node_classes", "bind_folders", "object_info",
    "input_spec", "ordered_inputs", "widget_slots", "combo_options",
    "is_widget", "types_match", "is_graph_format", "is_api_format", "graph_to_api", "read_workflow", "load_workflow",
    "fill_defaults", "reachable_nodes", "structure_issues", "parse_value", "apply_overrides", "find_prompt_input", "Issue", "check_value", "validate_prompt",
    "check_prompt", "format_node_errors", "api_to_graph",
]


# --------------------------------------------------------------------------- API -> graph (for tests and authoring)

def api_to_graph(prompt: dict, info: dict | None = None) -> dict:
    """A minimal graph-format workflow for an API prompt (grid layout); inverse of :func:`graph_to_api`."""
    info = object_info() if info is None else info
    ids = sorted(prompt, key=_id_key)
    nodes, links = [], []
    out_links: dict = {}
    lid = 0
    for k, nid in enumerate(ids):
        node = prompt[nid]
        desc = info.get(node["class_type"]) or {}
        ins, wv = [], []
        for name, _cat, typ, opts in ordered_inputs(desc):
            val = node["inputs"].get(name)
            linked = isinstance(val, list) and len(val) == 2
            if is_widget(typ, opts):
                _c, _t, o = input_spec(desc, name)
                wv.append(val if not linked and name in node["inputs"] else o.get("default"))
                cag = opts.get("control_after_generate")
                if cag is None and typ == "INT" and name in ("seed", "noise_seed"):
                    cag = True
                if cag:
                    wv.append("fixed")
                if any(opts.get(x) for x in UPLOAD_KEYS):
                    wv.append("image")
            slot = {"name": name, "type": _tname(typ), "link": None}
            if is_widget(typ, opts):
                slot["widget"] = {"name": name}
            if linked:
                lid += 1
                src, sslot = str(val[0]), val[1]
                stype = output_types(info.get(prompt[src]["class_type"], {}))[sslot] if src in prompt else "*"
                links.append([lid, _num(src), sslot, _num(nid), len(ins), stype])
                out_links.setdefault((src, sslot), []).append(lid)
                slot["link"] = lid
            if linked or not is_widget(typ, opts):
                ins.append(slot)
            elif is_widget(typ, opts):
                ins.append(slot)
        nodes.append({"id": _num(nid), "type": node["class_type"], "pos": [40 + 360 * (k % 4), 40 + 320 * (k // 4)],
                      "size": [320, 260], "flags": {}, "order": k, "mode": 0, "inputs": ins,
                      "outputs": [], "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": wv})
        if node.get("_meta", {}).get("title"):
            nodes[-1]["title"] = node["_meta"]["title"]
    for n in nodes:
        desc = info.get(n["type"]) or {}
        for s, t in enumerate(output_types(desc)):
            names = desc.get("output_name") or []
            n["outputs"].append({"name": names[s] if s < len(names) else t, "type": t,
                                 "links": out_links.get((str(n["id"]), s)) or [], "slot_index": s})
    return {"id": "00000000-0000-0000-0000-000000000000", "revision": 0, "last_node_id": max([n["id"] for n in nodes if isinstance(n["id"], int)] or [0]),
            "last_link_id": lid, "nodes": nodes, "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def _num(s):
    s = str(s)
    return int(s) if s.isdigit() else s
