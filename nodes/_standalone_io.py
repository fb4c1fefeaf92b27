"""A small stand-in for ``comfy_api.latest.io`` used when ComfyUI is not present.

It implements only the subset of the V3 schema that SpriteForge's nodes use, with the
same names and constructor arguments, so the very same node classes run inside
ComfyUI (real ``comfy_api``) and in ``spriteforge run`` / the tests (this module).
Widget values are checked by :mod:`spriteforge.nodes.validation` (each node's ``validate_inputs``, as ComfyUI calls
it when a prompt is queued) and, for any node, by :mod:`spriteforge.execution.graph`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class _Input:
    def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                 lazy: bool | None = None, default: Any = None, **extra):
        self.id = id
        self.display_name = display_name
        self.optional = optional
        self.tooltip = tooltip
        self.lazy = lazy
        self.default = default
        for k, v in extra.items():
            setattr(self, k, v)

    @property
    def io_type(self) -> str:
        return self.Parent.io_type


class _Output:
    def __init__(self, id: str | None = None, display_name: str | None = None, tooltip: str | None = None,
                 is_output_list: bool = False, **extra):
        self.id = id
        self.display_name = display_name
        self.tooltip = tooltip
        self.is_output_list = is_output_list

    @property
    def io_type(self) -> str:
        return self.Parent.io_type


def _comfytype(io_type: str, widget: bool = False):
    in_cls = type("Input", (_Input,), {"widget": widget})
    out_cls = type("Output", (_Output,), {})
    cls = type(io_type.title(), (), {"io_type": io_type, "Input": in_cls, "Output": out_cls})
    in_cls.Parent = cls
    out_cls.Parent = cls
    return cls


class _ComboInput(_Input):
    widget = True

    def __init__(self, id: str, options=None, display_name=None, optional=False, tooltip=None, lazy=None,
                 default=None, **extra):
        if isinstance(options, type) and issubclass(options, Enum):
            options = [v.value for v in options]
        if isinstance(default, Enum):
            default = default.value
        super().__init__(id, display_name, optional, tooltip, lazy, default, **extra)
        self.options = list(options or [])


Boolean = _comfytype("BOOLEAN", widget=True)
Int = _comfytype("INT", widget=True)
Float = _comfytype("FLOAT", widget=True)
String = _comfytype("STRING", widget=True)
Combo = _comfytype("COMBO", widget=True)
Combo.Input = type("Input", (_ComboInput,), {})
Combo.Input.Parent = Combo
Image = _comfytype("IMAGE")
Mask = _comfytype("MASK")
Latent = _comfytype("LATENT")
Conditioning = _comfytype("CONDITIONING")
Model = _comfytype("MODEL")
Vae = _comfytype("VAE")
Clip = _comfytype("CLIP")


def Custom(io_type: str):
    return _comfytype(io_type)


class Hidden(str, Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"


@dataclass
class Schema:
    node_id: str
    display_name: str | None = None
    category: str = "sd"
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    hidden: list = field(default_factory=list)
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False


class NodeOutput:
    def __init__(self, *args: Any, ui: dict | None = None, expand: dict | None = None, block_execution: str | None = None):
        self.args = args
        self.ui = ui
        self.expand = expand
        self.block_execution = block_execution

    @property
    def result(self):
        return self.args if self.args else None

    def __getitem__(self, index):
        return self.args[index]


class _HiddenHolder:
    def __init__(self, unique_id=None, prompt=None, extra_pnginfo=None, dynprompt=None):
        self.unique_id = unique_id
        self.prompt = prompt
        self.extra_pnginfo = extra_pnginfo
        self.dynprompt = dynprompt


class ComfyNode:
    """Base class matching ``comfy_api.latest.io.ComfyNode``'s classmethod protocol."""

    hidden: _HiddenHolder = _HiddenHolder()

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs) -> NodeOutput:
        raise NotImplementedError

    @classmethod
    def validate_inputs(cls, **kwargs) -> bool | str:
        """Called with the widget values when a prompt is queued (``None`` for linked inputs): True, or what is wrong."""
        return True

    @classmethod
    def GET_SCHEMA(cls) -> Schema:
        return cls.define_schema()


class ComfyExtension:
    async def on_load(self) -> None:  # pragma: no cover - parity with comfy_api
        return None

    async def get_node_list(self) -> list[type[ComfyNode]]:
        raise NotImplementedError
