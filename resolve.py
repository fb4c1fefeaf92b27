"""Model resolution: from a name (a node's dropdown entry, a command-line name or path) to the files to load.

The Load Model node, ``spriteforge generate``, the routes and the workflow preflight all resolve models
here, the same way: :func:`resolve_model` (a DiT model file or diffusers folder, or the built-in demo
model), :func:`resolve_part` (a separate VAE / text-encoder file), :func:`load_handle` (both, then the
engine's ``load_model``) and :func:`resolve_lora` (a LoRA, shipped or in models/loras). Inside ComfyUI names
come from ComfyUI's folders and paths are refused; on the command line a path is accepted where a name is
expected.
"""

from __future__ import annotations

from pathlib import Path

from . import paths
from .errors import BAD_INPUT, MODEL_NOT_FOUND, SpriteForgeError, classify
from .log import get_logger

log = get_logger("resolve")

MODEL_KINDS = ("diffusion_models", "checkpoints", "diffusers")
FROM_MODEL = "(from model)"
DEMO = "spriteforge-demo (built-in)"
DEMO_DIR = Path(__file__).resolve().parent / "demo_model"
NONE = "(none)"
# the dtype choices that are MLX-quantized weights (the bits of ``convert --engine mlx --quantize``), not a float dtype
QUANTIZED = {"q8": 8, "q4": 4}


def load_options(dtype: str | None, engine: str | None) -> tuple[str | None, int | None, str]:
    """``(float dtype or None for auto, quantize bits or None, engine)`` of a dtype choice: ``q8``/``q4`` are MLX's
    quantized weights at the engine's automatic compute dtype, so engine ``auto`` becomes ``mlx`` (the engine that
    makes them; torch refuses them with BAD_INPUT when loading)."""
    engine = engine or "auto"
    if dtype in QUANTIZED:
        return None, QUANTIZED[dtype], "mlx" if engine == "auto" else engine
    return (None if dtype in (None, "", "auto") else dtype), None, engine


def model_choices() -> list[str]:
    """Names for the model dropdown: the demo model, diffusion_models + checkpoints files, then diffusers folders."""
    names: list[str] = []
    for kind in MODEL_KINDS:
        try:
            names += paths.list_models(kind, folders=(kind == "diffusers"))
        except Exception as exc:  # a broken folder must not hide the node
            log.warning("could not list %s models: %s", kind, exc)
    if (DEMO_DIR / "model_index.json").exists():
        names.insert(0, DEMO)  # the small sprite model that ships with the pack: the default
    seen: set = set()
    return [n for n in names if not (n in seen or seen.add(n))]


def part_choices(kind: str, first: str = FROM_MODEL) -> list[str]:
    """``first`` then the files of ``kind`` (``vae``, ``text_encoders``): the dropdown of a separate part."""
    try:
        return [first] + paths.list_models(kind)
    except Exception:
        return [first]


def _allow(allow_path: bool | None) -> bool:
    return (not paths.in_comfyui()) if allow_path is None else allow_path


def resolve_model(name: str, *, allow_path: bool | None = None) -> Path:
    """Full path of a model name from the dropdown (any of :data:`MODEL_KINDS`), or a path outside ComfyUI."""
    if not name or not str(name).strip() or name in (FROM_MODEL, NONE):
        raise SpriteForgeError(BAD_INPUT, "no model was chosen. Pick a DiT model file or diffusers folder.")
    if name == DEMO:
        if not (DEMO_DIR / "model_index.json").exists():
            raise SpriteForgeError(MODEL_NOT_FOUND, f"the built-in demo model is missing from {DEMO_DIR}. Reinstall the pack.")
        return DEMO_DIR
    allow = _allow(allow_path)
    p = Path(str(name)).expanduser()
    if allow and p.exists():
        return p
    searched = []
    for kind in MODEL_KINDS:
        try:
            return paths.resolve(kind, str(name), allow_absolute=allow)
        except SpriteForgeError as exc:
            if exc.code == BAD_INPUT and not allow:
                raise
            searched += exc.details.get("searched", [])
    where = ", ".join(searched) or "models/diffusion_models, models/checkpoints, models/diffusers (no models folder is configured)"
    raise SpriteForgeError(MODEL_NOT_FOUND, f"model {name!r} was not found in {where}.",
                           hint=paths.not_found_hint(full_path=allow), details={"name": str(name), "searched": searched})


def resolve_part(kind: str, name, allow_path: bool | None = None) -> str | None:
    """Full path of a separate part (``vae``, ``text_encoders``); None for "(from model)" / "(none)" / empty."""
    if name in (None, "", FROM_MODEL, NONE):
        return None
    return str(paths.resolve(kind, str(name), allow_absolute=_allow(allow_path)))


def load_handle(model: str, *, vae=None, text_encoders=(), engine: str = "auto", device: str = "auto",
                dtype: str = "auto", allow_path: bool | None = None):
    """Load ``model`` (name or path) on the chosen engine; returns a :class:`~spriteforge.engines.ModelHandle`."""
    from .engines import get_engine

    allow = _allow(allow_path)
    path = resolve_model(model, allow_path=allow)
    vae_path = resolve_part("vae", vae, allow)
    tes = [p for p in (resolve_part("text_encoders", t, allow) for t in (text_encoders or ())) if p]
    dt, bits, engine = load_options(dtype, engine)
    eng = get_engine(engine, device or "auto", dt)
    try:
        handle = eng.load_model(str(path), vae=vae_path, text_encoders=tes, dtype=dt, quantize=bits)
    except SpriteForgeError:
        raise
    except Exception as exc:
        raise classify(exc, context=f"loading {path.name}") from exc
    log.info("loaded %s (%s %s) on %s", path.name, handle.family, handle.variant, getattr(eng, "name", eng))
    return handle


def shipped_loras() -> dict:
    """The LoRAs that ship with the pack (for the built-in demo model), by their dropdown name."""
    return {f"spriteforge-demo {p.stem} (built-in)": p for p in sorted((DEMO_DIR / "loras").glob("*.safetensors"))}


def lora_choices(first: str | None = None) -> list[str]:
    """Names for a LoRA dropdown: ``first`` (e.g. "(none)"), the files of models/loras, then the shipped LoRAs."""
    try:
        names = paths.list_models("loras")
    except Exception as exc:  # a broken folder must not hide the node
        log.warning("could not list loras: %s", exc)
        names = []
    return ([first] if first else []) + names + [n for n in shipped_loras() if n not in names]


def resolve_lora(name: str, *, allow_path: bool | None = None) -> Path:
    """Full path of a LoRA dropdown name (a shipped one, a file of models/loras), or a file path outside ComfyUI."""
    if not name or name == NONE:
        raise SpriteForgeError(BAD_INPUT, "no LoRA was chosen. Pick a file from models/loras.")
    shipped = shipped_loras().get(str(name))
    if shipped is not None:
        return shipped
    allow = _allow(allow_path)
    p = Path(str(name)).expanduser()
    if allow and p.is_file():
        return p
    return paths.resolve("loras", str(name), allow_absolute=allow)


__all__ = ["MODEL_KINDS", "FROM_MODEL", "DEMO", "DEMO_DIR", "NONE", "QUANTIZED", "load_options", "model_choices", "part_choices", "resolve_model",
           "resolve_part", "load_handle", "shipped_loras", "lora_choices", "resolve_lora"]
