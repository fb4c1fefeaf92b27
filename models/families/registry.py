"""The model families SpriteForge knows: one entry each, read by detection, both engines, LoRA, the nodes,
the CLI and the editor's hints. A family with ``generation = False`` is recognised only: detection and ``inspect``
name it, :func:`families` (what the engines and the rest read) leaves it out, :func:`check_generates` refuses it.

Adding a family is one line in :data:`ENTRIES` (its :class:`~.base.Family` subclass, in a module of this
package), one MLX port file and tests: see HACKING.md.
"""

from __future__ import annotations

from ...errors import UNSUPPORTED_ARCHITECTURE, SpriteForgeError
from ..detection import Detection
from ..safetensors_header import TensorInfo
from .base import Family
from .dit import DiT
from .flux import Flux
from .flux2 import Flux2
from .krea2 import Krea2
from .pixart import PixArt
from .qwenimage import QwenImage
from .qwenimage21 import QwenImage21
from .sana import Sana
from .sd3 import SD3
from .zimage import ZImage

# one entry a family, in the order reports list them; Qwen-Image 2.1 is recognised only (``generation = False``)
ENTRIES: tuple[Family, ...] = (PixArt(), SD3(), Flux(), Sana(), DiT(), ZImage(), Flux2(), QwenImage(), Krea2(), QwenImage21())

_BY_NAME: dict[str, Family] = {f.name: f for f in ENTRIES}
_DEFAULT = Family()  # the rules a family follows unless it says otherwise (VAE names for an unknown family)


def families() -> tuple[Family, ...]:
    """Every registered family SpriteForge generates with, in report order (what the engines, LoRA, the nodes and
    the editor read)."""
    return tuple(f for f in _BY_NAME.values() if f.generation)


def names() -> tuple[str, ...]:
    return tuple(f.name for f in families())


def recognised() -> tuple[Family, ...]:
    """Every registered family detection knows, the recognised-only ones included."""
    return tuple(_BY_NAME.values())


def get(name: str | None) -> Family | None:
    """The family called ``name``; None when there is none."""
    return _BY_NAME.get(name) if name else None


def rules(name: str | None) -> Family:
    """The family called ``name``, or the rules every family follows unless it says otherwise."""
    return (_BY_NAME.get(name) if name else None) or _DEFAULT


def register(family: Family) -> Family:
    """Add ``family`` (a family defined outside this package, or a test's); :func:`unregister` removes it."""
    if family.name in _BY_NAME:
        raise ValueError(f"family {family.name!r} is already registered")
    _BY_NAME[family.name] = family
    return family


def unregister(name: str) -> None:
    _BY_NAME.pop(name, None)


def by_transformer_class(cls_name: str) -> Family | None:
    """The family whose diffusers folders name ``cls_name`` as their transformer's class."""
    for f in _BY_NAME.values():
        if cls_name == f.transformer_class or cls_name in f.folder_classes:
            return f
    return None


def classify(t: dict[str, TensorInfo]) -> Detection | None:
    """The :class:`Detection` of the first family (by ``detect_order``) whose markers ``t`` holds; None when none."""
    for f in sorted(_BY_NAME.values(), key=lambda f: f.detect_order):
        layout = f.layout_of(t)
        if layout:
            return f.detect(t, layout == "original")
    return None


def needs(name: str | None, variant: str | None = None) -> list[str]:
    """What a bare transformer of family ``name`` (its ``variant``) still needs ([] for an unknown family)."""
    f = get(name)
    return f.needs_of(variant) if f else []


def check_generates(det: Detection, name: str) -> None:
    """UNSUPPORTED_ARCHITECTURE naming what ``det`` (of the file ``name``) is when SpriteForge recognises it but
    does not generate with it yet (a recognised-only family, or such a family's text encoder or VAE)."""
    fam = get(det.family)
    if fam is not None and not fam.generation:
        what, not_yet = fam.title(det.variant), "does not generate with this family yet"
    elif det.extras.get("recognised_as"):  # a text encoder or VAE only such families use
        what, not_yet = det.extras["recognised_as"], "does not load it yet"
    else:
        return
    runs = ", ".join(f.label for f in families())
    raise SpriteForgeError(
        UNSUPPORTED_ARCHITECTURE,
        f"{name} is recognised as {what}; SpriteForge {not_yet}; it runs {runs}.",
        hint="Load a model of one of those families.",  # (not the generic "not a model SpriteForge knows")
        details={"family": det.family, "variant": det.variant, "kind": det.kind},
    )


def vae_config_name(family: str | None, variant: str | None, latent: int) -> str:
    """The shipped KL VAE config for ``latent`` channels that family ``family`` (any string, or None) uses."""
    return rules(family).vae_config_name(variant, latent)


def widget_hints() -> dict:
    """What the editor greys out or relabels per family (``web/spriteforge.js``):
    ``{"rules": {input: {"only"|"not": [families], "hint"}}, "labels": {input: {family: label}}}``."""
    rules: dict = {}
    labels: dict = {}
    fams = families()
    for key, attr, word in (("only", "widgets_only", "{} only"), ("not", "widgets_unused", "unused by {}")):
        for w in dict.fromkeys(w for f in fams for w in getattr(f, attr)):
            who = [f for f in fams if w in getattr(f, attr)]
            rules[w] = {key: [f.name for f in who], "hint": word.format(" / ".join(f.label for f in who))}
    for f in fams:
        for w, label in f.widget_labels.items():
            labels.setdefault(w, {})[f.name] = label
    return {"rules": rules, "labels": labels}


__all__ = ["ENTRIES", "families", "names", "recognised", "check_generates", "get", "rules", "register", "unregister", "by_transformer_class", "classify", "needs",
           "vae_config_name", "widget_hints"]
