"""Input checks of the pack's nodes, made when a prompt is queued and again when a node runs.

ComfyUI (0.3.64) calls a V3 node's ``validate_inputs`` classmethod while it validates ``POST /prompt``, before
anything runs, with the node's widget values (``None`` for inputs fed by a link). It does not check V3 combo
values against their options, and NaN passes its min/max checks; a ``validate_inputs`` that takes
``**values`` also turns its min/max checks off. So :class:`ValidatedNode` makes every check itself:

* :func:`check_value`: the type, min/max, finite number and combo option of one widget value (also what
  :func:`spriteforge.execution.graph.validate_prompt` checks for any node, ours or not);
* ``CHECKS``: per node, input name -> the function its ``execute`` parses that input with (which raises
  ``SpriteForgeError``), so a rule lives in one place and holds at queue time and at run time.

``spriteforge run`` applies the same two (``execution.graph.validate_prompt`` with the node classes), one issue per
input. ComfyUI lists the text ``validate_inputs`` returns once under each input it passed in, so each problem
starts with its input's name.
"""

from __future__ import annotations

import json
import math
from enum import Enum
from typing import Any, Callable

from ..errors import SpriteForgeError
from ._compat import io

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def combo_options(typ, opts: dict) -> list | None:
    """The choices of a combo input (``None`` for other types)."""
    if isinstance(typ, (list, tuple)):
        return list(typ)
    if typ == "COMBO":
        return list(opts.get("options") or [])
    return None


def _fmt(v) -> str:
    return json.dumps(v) if isinstance(v, str) else repr(v)


def _convert(typ: str, val):
    if typ == "INT":
        return int(val)
    if typ == "FLOAT":
        if isinstance(val, (dict, list)):
            raise TypeError("not a number")
        return float(val)
    if typ == "STRING":
        if isinstance(val, (dict, list)):
            raise TypeError("not text")
        return str(val)
    if typ == "BOOLEAN" and isinstance(val, str):
        low = val.strip().lower()
        if low not in ("true", "false", "1", "0"):
            raise ValueError("not a boolean")
        return low in ("true", "1")
    return bool(val) if typ == "BOOLEAN" else val


def check_value(typ, opts: dict, val) -> tuple[Any, str | None, str | None]:
    """(converted value, error kind, message) for one widget value, like ComfyUI's validate_inputs."""
    if isinstance(val, dict) and "__value__" in val:
        val = val["__value__"]
    want = {"INT": "an integer", "FLOAT": "a number", "STRING": "text", "BOOLEAN": "true or false"}.get(typ)
    if typ == "INT" and isinstance(val, float) and not val.is_integer():
        return val, "invalid_input_type", f"{_fmt(val)} is not a whole number. Give an integer."
    try:
        val = _convert(typ, val)
    except (TypeError, ValueError, OverflowError):
        return val, "invalid_input_type", f"{_fmt(val)} is not {want}. Give {want}."
    if typ == "FLOAT" and not math.isfinite(val):
        return val, "invalid_input_type", f"{val} is not a finite number. Give a number."
    if typ in ("INT", "FLOAT"):
        lo, hi = opts.get("min"), opts.get("max")
        if lo is not None and val < lo:
            return val, "value_smaller_than_min", f"{val} is below the minimum {lo}. Set it to at least {lo}."
        if hi is not None and val > hi:
            return val, "value_bigger_than_max", f"{val} is above the maximum {hi}. Set it to at most {hi}."
    options = combo_options(typ, opts)
    if options is not None and not opts.get("multiselect") and val not in options:
        if not options:
            return val, "value_not_in_list", (f"{_fmt(val)} is not available: there are no choices (for a model list, "
                                              f"put the files in the model folder, or pass --models DIR).")
        shown = ", ".join(_fmt(o) for o in options[:20]) + (f", ... ({len(options)} in all)" if len(options) > 20 else "")
        return val, "value_not_in_list", f"{_fmt(val)} is not one of the choices: {shown}. Pick one of them."
    return val, None, None


def widget_spec(inp) -> tuple[str, dict] | None:
    """(type, {min, max, options, multiselect}) of a schema input that is a widget; None for sockets."""
    typ = inp.get_io_type() if hasattr(inp, "get_io_type") else inp.io_type
    typ = typ.value if isinstance(typ, Enum) else typ
    if typ not in WIDGET_TYPES or getattr(inp, "force_input", False) or getattr(inp, "forceInput", False):
        return None
    opts = {k: getattr(inp, k, None) for k in ("min", "max", "options", "multiselect")}
    return typ, {k: v for k, v in opts.items() if v is not None}


def problems(cls, values: dict) -> list[str]:
    """What is wrong with the given widget values of node class ``cls`` (``None`` values are linked: skipped)."""
    out = []
    for inp in cls.define_schema().inputs or []:
        val = values.get(inp.id)
        spec = widget_spec(inp)
        if val is None or spec is None:
            continue
        val, kind, msg = check_value(*spec, val)
        msg = msg if kind else node_check(cls, inp.id, val)
        if msg:
            out.append(f"{inp.id}: {msg}")
    return out


def node_check(cls, name: str, val) -> str | None:
    """The message of the node's own rule for input ``name`` (its ``CHECKS`` entry) on ``val``; None when it holds."""
    check = getattr(cls, "CHECKS", {}).get(name)
    if check is None:
        return None
    try:
        check(val)
    except SpriteForgeError as e:
        return e.message
    return None


class ValidatedNode(io.ComfyNode):
    """A node whose inputs ComfyUI checks when the prompt is queued (and ``spriteforge run`` before it runs)."""

    CHECKS: dict[str, Callable[[Any], Any]] = {}

    @classmethod
    def validate_inputs(cls, **values) -> bool | str:
        found = problems(cls, values)
        return True if not found else " ".join(found)


__all__ = ["ValidatedNode", "check_value", "combo_options", "node_check", "problems", "widget_spec", "WIDGET_TYPES"]
