"""Applying LoRAs to a loaded model handle, whatever the engine."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BAD_INPUT, LORA_UNSUPPORTED_ENGINE, SpriteForgeError


@dataclass(frozen=True)
class LoRASpec:
    """One LoRA to apply: a file (or an in-memory ``{name: array}`` dict) and its strengths.

    ``strength_text`` defaults to ``strength_model``.
    """

    source: object
    strength_model: float = 1.0
    strength_text: float | None = None
    name: str | None = None

    @property
    def text_strength(self) -> float:
        return self.strength_model if self.strength_text is None else float(self.strength_text)

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if isinstance(self.source, (str, Path)):
            return Path(self.source).name
        return "LoRA"


@dataclass(frozen=True)
class AppliedLoRA:
    """What one applied LoRA did; kept in ``ModelHandle.loras``."""

    name: str
    path: str | None
    strength_model: float
    strength_text: float
    family: tuple = ()
    format: str = ""
    layers: dict = field(default_factory=dict)  # component -> number of model layers patched
    matched: int = 0
    unmatched: tuple = ()
    skipped: tuple = ()  # (module, reason)
    missing_components: tuple = ()
    ignored: tuple = ()  # tensor names not applied (bias diffs, norm parts) of applied layers

    def summary(self) -> str:
        parts = [f"{self.name}: {self.matched} LoRA layers applied"]
        if self.layers:
            parts.append("(" + ", ".join(f"{k} {v}" for k, v in self.layers.items()) + ")")
        if self.unmatched:
            parts.append(f"; {len(self.unmatched)} not in this model: {', '.join(self.unmatched[:8])}"
                         + ("…" if len(self.unmatched) > 8 else ""))
        if self.skipped:
            parts.append(f"; {len(self.skipped)} skipped: " + "; ".join(f"{k} ({r})" for k, r in self.skipped[:4]))
        if self.ignored:
            parts.append(f"; {len(self.ignored)} bias/norm parts not applied: {', '.join(self.ignored[:4])}"
                         + ("…" if len(self.ignored) > 4 else ""))
        if self.missing_components:
            parts.append("; for parts not loaded: " + ", ".join(f"{c} ({n} layers)" for c, n in self.missing_components))
        return " ".join(parts)


_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_ARG = re.compile(rf"^(?P<path>.+?)(?::(?P<sm>{_NUM}))?(?::(?P<st>{_NUM}))?$")


def parse_lora_arg(text: str) -> LoRASpec:
    """``FILE[:STRENGTH[:TEXT_STRENGTH]]`` (the ``--lora`` option) → :class:`LoRASpec`.

    A colon followed by something that is not a number stays part of the path
    (``C:\\loras\\x.safetensors`` works).
    """
    text = str(text).strip()
    if not text:
        raise SpriteForgeError(BAD_INPUT, "--lora needs a file name, optionally followed by :STRENGTH.")
    m = _ARG.match(text)
    path, sm, st = m.group("path"), m.group("sm"), m.group("st")
    head, _, tail = path.rpartition(":")
    if head and not Path(path).expanduser().exists() and Path(_ARG.match(head).group("path")).expanduser().exists():
        raise SpriteForgeError(BAD_INPUT, f"--lora {text}: {tail!r} is not a strength. Give a number after the colon "
                               "(FILE:0.8, or FILE:0.8:0.5 for a separate text-encoder strength).")
    strengths = [float(x) for x in (sm, st) if x is not None]
    if not all(math.isfinite(x) for x in strengths):
        raise SpriteForgeError(BAD_INPUT, f"--lora {text}: the strength must be a finite number (such as 0.8).")
    return LoRASpec(path, float(sm) if sm is not None else 1.0, float(st) if st is not None else None)


def add_cli_arguments(parser) -> None:
    """``--lora FILE[:STRENGTH[:TEXT_STRENGTH]]`` (repeatable) for a command's parser; read back with :func:`specs_from_args`."""
    parser.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH[:TEXT_STRENGTH]]",
                        help="apply a LoRA (repeatable); STRENGTH defaults to 1, TEXT_STRENGTH to STRENGTH")


def specs_from_args(args) -> list:
    """The :class:`LoRASpec` list of parsed ``--lora`` options."""
    return [parse_lora_arg(t) for t in (getattr(args, "lora", None) or [])]


def as_spec(item) -> LoRASpec:
    if isinstance(item, LoRASpec):
        return item
    if isinstance(item, str):
        return parse_lora_arg(item) if not Path(item).exists() else LoRASpec(item)
    if isinstance(item, Path):
        return LoRASpec(item)
    if isinstance(item, (tuple, list)) and item:
        return LoRASpec(item[0], *[float(x) if x is not None else None for x in item[1:3]])
    if isinstance(item, dict) and "source" in item:
        return LoRASpec(**item)
    raise SpriteForgeError(BAD_INPUT, f"cannot read a LoRA spec from {type(item).__name__}; give a path, path:strength or LoRASpec.")


def check_engine(handle) -> None:
    """Raise LORA_UNSUPPORTED_ENGINE unless the handle's engine declares it applies LoRAs."""
    engine = handle.engine
    caps = getattr(engine, "capabilities", None)
    name = getattr(engine, "name", str(engine))
    if caps is None or not getattr(caps, "lora", False):
        raise SpriteForgeError(
            LORA_UNSUPPORTED_ENGINE,
            f"the {name} engine cannot apply LoRAs. Load the model with engine 'torch' to use LoRAs.",
            details={"engine": name},
        )


def plan_specs(handle, specs, *, ops, getter, transformer_shapes, text_encoder_shapes, log):
    """Read and plan every LoRA in ``specs`` for ``handle`` (framework-free; the engines patch).

    ``ops``: the engine's array operations (``engine.ops``: it reads the files with
    ``ops.load_safetensors`` and splits fused updates with them);
    ``getter(tensors)`` gives the planner's tensor lookup for one file's tensors; the shapes are the model's
    Linear/conv layers per component. Returns ``(transformer_patches, text_encoder_patches, records)``:
    ``{layer: [patch, ...]}``, ``{component: {layer: [patch, ...]}}`` and one :class:`AppliedLoRA` per spec.
    """
    from ..errors import classify
    from .files import read_lora
    from .keys import file_format
    from .plan import plan as make_plan

    tr_maps: dict[str, list] = {}
    te_maps: dict[str, dict[str, list]] = {}
    records = []
    for spec in specs:
        lf = read_lora(spec.source, load=getattr(ops, "load_safetensors", None),
                       load_pickled=getattr(ops, "load_pickled", None), name=spec.name)
        try:
            pl = make_plan(lf.modules, getter(lf.tensors), family=handle.family, transformer=transformer_shapes,
                           text_encoders=text_encoder_shapes, strength_model=float(spec.strength_model),
                           strength_text=spec.text_strength, metadata=lf.metadata, lora_name=lf.name, ops=ops)
        except SpriteForgeError:
            raise
        except Exception as exc:
            raise classify(exc, context=f"applying LoRA {lf.name}") from exc
        layers = {}
        for comp, cp in pl.components.items():
            target = tr_maps if comp == "transformer" else te_maps.setdefault(comp, {})
            for name, patches in cp.patches.items():
                target.setdefault(name, []).extend(patches)
            layers[comp] = len(cp.patches)
        rec = AppliedLoRA(
            name=lf.name, path=lf.path, strength_model=float(spec.strength_model), strength_text=spec.text_strength,
            family=tuple(pl.detection.candidates), format=file_format(lf.modules)["format"], layers=layers,
            matched=pl.matched, unmatched=tuple(pl.unmatched()), skipped=tuple(pl.skipped()),
            missing_components=tuple(pl.missing_components), ignored=tuple(pl.ignored()),
        )
        if rec.unmatched or rec.skipped or rec.missing_components or rec.ignored:
            log.warning("LoRA %s", rec.summary())
        else:
            log.info("LoRA %s", rec.summary())
        records.append(rec)
    return tr_maps, te_maps, records


def apply_loras(handle, specs, *, merge: bool = False):
    """A new :class:`~spriteforge.engines.base.ModelHandle` with ``specs`` applied; ``handle`` is unchanged.

    ``specs``: LoRASpec, ``"file[:strength[:text_strength]]"`` strings, paths or ``(path, strength[, text])``.
    Applying stacks onto LoRAs already on ``handle``; to remove a LoRA, use the handle
    without it (the base weights were never touched). ``merge`` materialises the patched
    weights once (faster sampling, one extra copy of every patched layer) instead of
    patching each layer on the fly.
    """
    check_engine(handle)
    specs = [as_spec(s) for s in (specs if isinstance(specs, (list, tuple)) else [specs])]
    if not specs:
        return handle
    return handle.engine.apply_loras(handle, specs, merge=merge)  # the engine interface (engines.base.Engine)
