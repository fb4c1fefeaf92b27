"""Run an exported workflow in-process, without ComfyUI: ``spriteforge run``.

:func:`run_workflow` takes the API format (``{id: {class_type, inputs}}``) or the graph format
(converted by :func:`spriteforge.execution.graph.graph_to_api`), applies ``--set`` overrides,
validates every input against the nodes' schemas, then executes -- like ComfyUI -- only the
nodes the output nodes (``is_output_node``) need, in dependency order, calling each class's
``execute(**inputs)`` (``async def execute`` too). Results are cached by node signature, so a
:class:`Cache` shared between runs re-executes only what changed. The core IO nodes
LoadImage / SaveImage / PreviewImage come from :mod:`spriteforge.execution.core_nodes`.

Errors are :class:`~spriteforge.errors.SpriteForgeError` naming the node (id and type), the
input and what to do.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import inspect
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ..errors import BAD_INPUT, SpriteForgeError, classify
from ..progress import Interrupted

Event = Callable[[str, dict], None]


@dataclass
class RunResult:
    prompt: dict                      # the API prompt that ran (after conversion and overrides)
    outputs: dict = field(default_factory=dict)   # node_id -> ui dict of output nodes (ComfyUI's history "outputs")
    files: list = field(default_factory=list)     # Paths written under out_dir
    executed: list = field(default_factory=list)  # node ids executed (not from the cache), in order
    cached: list = field(default_factory=list)    # node ids taken from the cache
    seconds: float = 0.0


class Cache:
    """Node outputs by signature (class, inputs, upstream signatures). Share one between runs.

    Like ComfyUI's default cache it holds the last prompt's outputs: after a run completes, entries that run did not
    use are dropped (:meth:`keep`), so a queue of prompts with varied seeds does not grow memory without bound.
    """

    def __init__(self):
        self.data: dict[str, tuple] = {}

    def __len__(self):
        return len(self.data)

    def keep(self, sigs) -> None:
        """Drop every entry whose signature is not in ``sigs``."""
        sigs = set(sigs)
        for k in [k for k in self.data if k not in sigs]:
            del self.data[k]


class _Hidden:
    def __init__(self, **kw):
        self.__dict__.update(kw)

    def __getattr__(self, key):  # missing hidden values are None, as in ComfyUI
        return None


def _node_label(nid: str, ctype: str) -> str:
    return f"node {nid} ({ctype})"


def _is_link(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[1], int) and isinstance(v[0], (str, int))


def needed_nodes(prompt: dict, info: dict, outputs: Iterable[str] | None = None) -> list[str]:
    """Ids of the nodes the output nodes depend on, in an execution (topological) order."""
    if outputs is None:
        outputs = [nid for nid, n in prompt.items() if (info.get(n["class_type"]) or {}).get("output_node")]
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(start: str):  # depth-first with an explicit stack: no recursion limit on long chains
        stack = [(start, iter(_upstream(start)))]
        state[start] = 1
        while stack:
            nid, it = stack[-1]
            for src in it:
                st = state.get(src)
                if st == 1:
                    path = [n for n, _ in stack]
                    cyc = " -> ".join(path[path.index(src):] + [src])
                    raise SpriteForgeError(BAD_INPUT, f"the workflow has a cycle: {cyc}. Remove one of those links.")
                if st is None:
                    state[src] = 1
                    stack.append((src, iter(_upstream(src))))
                    break
            else:
                stack.pop()
                state[nid] = 2
                order.append(nid)

    def _upstream(nid: str) -> list[str]:
        return [str(v[0]) for v in (prompt[nid].get("inputs") or {}).values() if _is_link(v) and str(v[0]) in prompt]

    for nid in sorted(outputs, key=lambda k: (0, int(k)) if str(k).isdigit() else (1, str(k))):
        if str(nid) in prompt and state.get(str(nid)) is None:
            visit(str(nid))
    return order


def _sig(obj) -> str:
    try:
        return json.dumps(obj, sort_keys=True, default=repr)
    except Exception:  # noqa: BLE001
        return repr(obj)


def _call_execute(cls, kwargs: dict):
    res = cls.execute(**kwargs)
    if inspect.isawaitable(res):
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(res)
        with concurrent.futures.ThreadPoolExecutor(1) as ex:  # called from async code: run on a fresh loop
            return ex.submit(asyncio.run, res).result()
    return res


def _unpack(res, n_out: int) -> tuple[tuple, dict | None]:
    """(output values, ui) of a V3 NodeOutput, a V1 tuple or a V1 dict {"ui", "result"}."""
    if res is None:
        return (None,) * n_out, None
    if hasattr(res, "args") and hasattr(res, "ui"):
        args = tuple(res.args or ())
        ui = res.ui
        if ui is not None and not isinstance(ui, dict):
            ui = ui.as_dict() if hasattr(ui, "as_dict") else dict(ui)
        return args, ui
    if isinstance(res, dict):
        return tuple(res.get("result") or ()), res.get("ui")
    if isinstance(res, tuple):
        return res, None
    return (res,), None


def _printer(stream) -> Event:
    def on_event(kind: str, data: dict):
        if kind == "executing":
            stream.write(f"[{data['index']}/{data['total']}] {_node_label(data['node'], data['class_type'])}...\n")
        elif kind == "executed":
            how = "cached" if data.get("cached") else f"{data['seconds']:.2f}s"
            files = data.get("files") or []
            stream.write(f"      done ({how})" + (f": {', '.join(str(f) for f in files)}" if files else "") + "\n")
        stream.flush()
    return on_event


LOADERS_WITH_ENGINE = ("SpriteForgeLoadModel",)


def set_engine(prompt: dict, engine: str) -> list[str]:
    """Set the ``engine`` input of every SpriteForge Load Model node of an API ``prompt``; returns their ids.

    ``engine`` is ``auto`` or a registered engine name (``torch``, ``mlx``); anything else is BAD_INPUT.
    """
    from ..engines import REGISTRY

    name = str(engine).strip().lower()
    if name not in ("auto",) + tuple(REGISTRY):
        raise SpriteForgeError(BAD_INPUT, f"unknown engine {engine!r}. Choose one of auto, {', '.join(REGISTRY)}.")
    ids = []
    for nid, node in prompt.items():
        if node.get("class_type") in LOADERS_WITH_ENGINE:
            node.setdefault("inputs", {})["engine"] = name
            ids.append(nid)
    return ids


def run_workflow(
    workflow,
    *,
    overrides: Iterable[str] = (),
    out_dir: str | os.PathLike = "output",
    input_dir: str | os.PathLike | None = None,
    models_dir: str | os.PathLike | None = None,
    cache: Cache | None = None,
    on_event: Event | None = None,
    progress_stream=None,
    classes: dict[str, type] | None = None,
    outputs: Iterable[str] | None = None,
    extra_pnginfo: dict | None = None,
    engine: str | None = None,
) -> RunResult:
    """Execute ``workflow`` (path, JSON text or dict; API or graph format) in-process.

    ``overrides``: ``"NODE_ID.INPUT=VALUE"`` strings (VALUE parsed as JSON when possible).
    ``out_dir``: where SaveImage and the pack's save nodes write (never overwriting).
    ``input_dir``: LoadImage's folder (default ``./input``).
    ``models_dir``: a models root laid out like ComfyUI's ``models/``.
    ``on_event(kind, data)``: ``"executing"``/``"executed"`` per node (default: lines on
    ``progress_stream`` when given). ``classes``: node id -> class (default: the pack + core IO).
    ``outputs``: run only these output node ids.
    ``engine``: ``auto``/``torch``/``mlx`` for every SpriteForge Load Model node (:func:`set_engine`).

    The folders reach the nodes as a :class:`~spriteforge.nodes.folders.Folders` carried by the classes of
    this run (:func:`spriteforge.execution.graph.bind_folders`), never through the environment.
    """
    from .. import paths
    from ..nodes.folders import Folders

    t0 = time.monotonic()
    folders = Folders(input=input_dir or "input", output=out_dir)
    with paths.models_root(models_dir):
        run = prepare(workflow, folders, classes, overrides, engine, outputs, extra_pnginfo)
        run.cache = cache if cache is not None else Cache()
        run.emit = on_event or (_printer(progress_stream) if progress_stream is not None else _no_event)
        run.emit("execution_start", {"nodes": run.order})
        for index, nid in enumerate(run.order, 1):
            _execute_node(run, nid, index)
        run.cache.keep(run.sigs.values())
    run.result.seconds = time.monotonic() - t0
    run.emit("execution_success", {"seconds": run.result.seconds, "files": run.result.files})
    return run.result


def _no_event(kind: str, data: dict) -> None:
    pass


@dataclass
class _Run:
    """What one execution of a prompt carries from node to node."""

    prompt: dict
    info: dict                       # object_info of the classes
    classes: dict                    # node id -> class, bound to the run's folders
    folders: object                  # nodes.folders.Folders
    order: list                      # node ids to execute, in dependency order
    pnginfo: dict                    # extra_pnginfo handed to the save nodes (the graph as "workflow")
    result: RunResult
    cache: Cache = None
    emit: Event = _no_event
    values: dict = field(default_factory=dict)   # node id -> output lists
    sigs: dict = field(default_factory=dict)     # node id -> signature
    schemas: dict = field(default_factory=dict)  # class type -> its schema, built once per run


def prepare(workflow, folders, classes=None, overrides=None, engine=None, outputs=None, extra_pnginfo=None) -> _Run:
    """Read, convert, override and validate the workflow; work out the nodes to execute (``--check`` stops here)."""
    from . import graph as G
    from .preflight import check_sizes

    classes = G.node_classes(folders=folders) if classes is None else G.bind_folders(classes, folders)
    info = G.object_info(classes)
    prompt, graph = G.load_workflow(workflow, info)
    G.apply_overrides(prompt, overrides, info)
    if engine:
        set_engine(prompt, engine)
    G.check_prompt(prompt, info, only_needed=outputs is None, classes=classes)
    check_sizes(prompt, folders.input)  # an input image the model cannot draw: say so now, before any model loads
    if outputs is not None:
        outputs = [str(o) for o in outputs]
        for o in outputs:
            if o not in prompt:
                raise SpriteForgeError(BAD_INPUT, f"output node {o} is not in the workflow.")
    pnginfo = dict(extra_pnginfo or {})
    if graph is not None and "workflow" not in pnginfo:
        pnginfo["workflow"] = graph
    return _Run(prompt=prompt, info=info, classes=classes, folders=folders, order=needed_nodes(prompt, info, outputs),
                pnginfo=pnginfo, result=RunResult(prompt=prompt))


def _execute_node(run: _Run, nid: str, index: int) -> None:
    """Execute one node (or take it from the cache), record its outputs and files, emit its events."""
    node = run.prompt[nid]
    ctype = node["class_type"]
    cls, desc = run.classes[ctype], run.info[ctype]
    run.emit("executing", {"node": nid, "class_type": ctype, "index": index, "total": len(run.order)})
    lists, sig_inputs = _gather_inputs(run, node, desc)
    schema = run.schemas.get(ctype)
    if schema is None:
        schema = run.schemas[ctype] = cls.define_schema()
    sig = run.sigs[nid] = hashlib.sha256(_sig([ctype, sig_inputs]).encode()).hexdigest()
    idempotent = not getattr(schema, "not_idempotent", False)
    t1 = time.monotonic()
    was_cached = idempotent and sig in run.cache.data
    if was_cached:
        outs, ui = run.cache.data[sig]
        run.result.cached.append(nid)
    else:
        hidden = _Hidden(unique_id=nid, prompt=run.prompt, extra_pnginfo=run.pnginfo, dynprompt=None)
        bound = type(cls.__name__, (cls,), {"hidden": hidden, "__module__": cls.__module__})
        outs, ui = _call_node(bound, schema, desc, lists, _node_label(nid, ctype), {"node_id": nid, "class_type": ctype})
        if idempotent:
            run.cache.data[sig] = (outs, ui)
        run.result.executed.append(nid)
    run.values[nid] = outs
    files = _record_ui(run, nid, desc, ui)
    run.emit("executed", {"node": nid, "class_type": ctype, "output": ui, "cached": was_cached,
                          "seconds": time.monotonic() - t1, "files": files, "index": index, "total": len(run.order)})


def _gather_inputs(run: _Run, node: dict, desc: dict) -> tuple[dict[str, list], dict]:
    """Every declared input as a list (ComfyUI's list semantics), and the inputs' part of the node's signature."""
    from . import graph as G

    lists: dict[str, list] = {}
    sig_inputs = {}
    for name, v in node["inputs"].items():
        if G.input_spec(desc, name)[0] is None:
            continue  # ComfyUI ignores inputs the node does not declare
        if _is_link(v):
            src = str(v[0])
            lists[name] = run.values[src][v[1]] if v[1] < len(run.values[src]) else [None]
            sig_inputs[name] = ["link", run.sigs[src], v[1]]
        else:
            if isinstance(v, dict) and "__value__" in v:
                v = v["__value__"]
            lists[name] = [v]
            sig_inputs[name] = v
    return lists, sig_inputs


def _call_node(bound, schema, desc: dict, lists: dict[str, list], label: str, details: dict) -> tuple[tuple, dict | None]:
    """Call ``execute`` once per item of the longest input list (once with the lists for ``is_input_list``
    nodes); (the output lists, the merged ui)."""
    n_out = len(desc.get("output") or [])
    out_is_list = list(desc.get("output_is_list") or [False] * n_out)
    if getattr(schema, "is_input_list", False):
        calls = [dict(lists)]
    else:  # one call per item of the longest list; shorter lists repeat their last item
        n = max([len(v) for v in lists.values()] or [1])
        calls = [{k: (v[min(i, len(v) - 1)] if v else None) for k, v in lists.items()} for i in range(n)]
    outs: list[list] = [[] for _ in range(n_out)]
    ui: dict | None = None
    for kwargs in calls:
        args, one_ui = _unpack(_call_reporting(bound, kwargs, label, details), n_out)
        for k in range(n_out):
            val = args[k] if k < len(args) else None
            if k < len(out_is_list) and out_is_list[k] and isinstance(val, (list, tuple)):
                outs[k].extend(val)
            else:
                outs[k].append(val)
        ui = _merge_ui(ui, one_ui)
    return tuple(outs), ui


def _call_reporting(bound, kwargs: dict, label: str, details: dict):
    """``bound.execute(**kwargs)``; an error comes back as a SpriteForgeError naming the node."""
    try:
        return _call_execute(bound, kwargs)
    except (Interrupted, KeyboardInterrupt):
        raise
    except SpriteForgeError as exc:
        raise SpriteForgeError(exc.code, f"{label}: {exc.message}", hint=exc.hint,
                               details={**exc.details, **details}) from exc
    except Exception as exc:  # noqa: BLE001
        err = classify(exc, context=f"running {label}")
        err.details.update(details)
        raise err from exc


def _merge_ui(ui: dict | None, one_ui: dict | None) -> dict | None:
    if not one_ui:
        return ui
    ui = ui or {}
    for key, val in one_ui.items():
        ui[key] = ui[key] + val if isinstance(val, list) and isinstance(ui.get(key), list) else val
    return ui


def _record_ui(run: _Run, nid: str, desc: dict, ui: dict | None) -> list[Path]:
    """Keep an output node's ui as ComfyUI's history does; the files it names that are new to this run."""
    if not ui:
        return []
    if desc.get("output_node"):
        run.result.outputs[nid] = ui
    files = []
    for items in ui.values():
        if not isinstance(items, list):
            continue
        for it in items:
            if isinstance(it, dict) and "filename" in it:
                root = run.folders.previews if it.get("type") == "temp" else run.folders.output
                p = root / (it.get("subfolder") or "") / it["filename"]
                if p not in run.result.files:
                    files.append(p)
    run.result.files.extend(files)
    return files


__all__ = ["run_workflow", "RunResult", "Cache", "needed_nodes"]


if __name__ == "__main__":  # pragma: no cover
    run_workflow(sys.argv[1], progress_stream=sys.stderr)
