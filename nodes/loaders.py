"""Model loading node: a DiT model file or diffusers folder (with optional VAE / text-encoder overrides)
on an engine, device and dtype, giving a model handle (``SF_MODEL``).

:func:`load_handle` is the plain function behind the node; ``spriteforge generate`` uses it too.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import BAD_INPUT, MODEL_NOT_FOUND, SpriteForgeError
from ..log import get_logger
from ._compat import IN_COMFYUI, io

log = get_logger("nodes")

CATEGORY = "SpriteForge/generate"
ModelType = io.Custom("SF_MODEL")
MODEL_KINDS = ("diffusion_models", "checkpoints", "diffusers")
FROM_MODEL = "(from model)"
DEMO = "spriteforge-demo (built-in)"
DEMO_DIR = Path(__file__).resolve().parents[1] / "demo_model"
NONE = "(none)"
ENGINES = ["auto", "torch", "mlx"]
DEVICES = ["auto", "gpu", "cpu", "cuda", "mps"]
DTYPES = ["auto", "float32", "float16", "bfloat16"]


def model_choices() -> list[str]:
    """Names for the model dropdown: diffusion_models + checkpoints files, then diffusers folders."""
    from .. import paths

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


def _choices(kind: str, first: str) -> list[str]:
    from .. import paths

    try:
        return [first] + paths.list_models(kind)
    except Exception:
        return [first]


def resolve_model(name: str, *, allow_path: bool | None = None):
    """Full path of a model name from the dropdown (any of :data:`MODEL_KINDS`), or a path outside ComfyUI."""
    from pathlib import Path

    from .. import paths

    if not name or not str(name).strip() or name in (FROM_MODEL, NONE):
        raise SpriteForgeError(BAD_INPUT, "no model was chosen. Pick a DiT model file or diffusers folder.")
    if name == DEMO:
        if not (DEMO_DIR / "model_index.json").exists():
            raise SpriteForgeError(MODEL_NOT_FOUND, f"the built-in demo model is missing from {DEMO_DIR}. Reinstall the pack.")
        return DEMO_DIR
    allow = (not IN_COMFYUI) if allow_path is None else allow_path
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


def _resolve_part(kind: str, name, allow):
    from .. import paths

    if name in (None, "", FROM_MODEL, NONE):
        return None
    return str(paths.resolve(kind, str(name), allow_absolute=allow))


def load_handle(model: str, *, vae=None, text_encoders=(), engine: str = "auto", device: str = "auto",
                dtype: str = "auto", allow_path: bool | None = None):
    """Load ``model`` (name or path) on the chosen engine; returns a :class:`~spriteforge.engines.ModelHandle`."""
    from ..engines import get_engine
    from ..errors import classify

    allow = (not IN_COMFYUI) if allow_path is None else allow_path
    path = resolve_model(model, allow_path=allow)
    vae_path = _resolve_part("vae", vae, allow)
    tes = [p for p in (_resolve_part("text_encoders", t, allow) for t in (text_encoders or ())) if p]
    dt = None if dtype in (None, "", "auto") else dtype
    eng = get_engine(engine or "auto", device or "auto", dt)
    try:
        handle = eng.load_model(str(path), vae=vae_path, text_encoders=tes, dtype=dt)
    except SpriteForgeError:
        raise
    except Exception as exc:
        raise classify(exc, context=f"loading {path.name}") from exc
    log.info("loaded %s (%s %s) on %s", path.name, handle.family, handle.variant, getattr(eng, "name", eng))
    return handle


class LoadModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        tes = _choices("text_encoders", FROM_MODEL)
        return io.Schema(
            node_id="SpriteForgeLoadModel",
            display_name="SpriteForge Load Model",
            category=CATEGORY,
            description="Loads a DiT image model (PixArt-α/Σ, SD3/3.5, Flux.1, Sana, DiT) from a single file or a diffusers "
            "folder, with its VAE and text encoders (taken from the file/folder unless overridden), on the chosen "
            "engine, device and dtype. The family is detected from the weights.",
            inputs=[
                io.Combo.Input("model", options=model_choices(), tooltip="The DiT model: a file in models/diffusion_models or "
                               "models/checkpoints, or a diffusers folder in models/diffusers."),
                io.Combo.Input("vae", options=_choices("vae", FROM_MODEL), default=FROM_MODEL, optional=True,
                               tooltip="A VAE file to use instead of the one in the model (needed when the model file has none)."),
                io.Combo.Input("text_encoder_1", options=tes, default=FROM_MODEL, optional=True,
                               tooltip="A text encoder file (T5 for PixArt, CLIP-L for SD3/Flux, Gemma-2 for Sana) when the model has none."),
                io.Combo.Input("text_encoder_2", options=tes, default=FROM_MODEL, optional=True,
                               tooltip="A second text encoder file (CLIP-G for SD3, T5 for Flux)."),
                io.Combo.Input("text_encoder_3", options=tes, default=FROM_MODEL, optional=True,
                               tooltip="A third text encoder file (T5 for SD3/3.5)."),
                io.Combo.Input("engine", options=ENGINES, default="auto", optional=True,
                               tooltip="The engine: auto (torch where available), torch, or mlx (Apple silicon)."),
                io.Combo.Input("device", options=DEVICES, default="auto", optional=True,
                               tooltip="The device: auto (the first GPU, else the CPU), gpu, cpu, cuda or mps."),
                io.Combo.Input("dtype", options=DTYPES, default="auto", optional=True,
                               tooltip="Weight/compute precision: auto follows the device policy (bf16 on modern GPUs, fp32 on CPU)."),
            ],
            outputs=[ModelType.Output(display_name="model", tooltip="The loaded model, for SpriteForge Encode Prompt / Sampler / VAE nodes.")],
        )

    @classmethod
    def execute(cls, model, vae=FROM_MODEL, text_encoder_1=FROM_MODEL, text_encoder_2=FROM_MODEL,
                text_encoder_3=FROM_MODEL, engine="auto", device="auto", dtype="auto"):
        handle = load_handle(model, vae=vae, text_encoders=(text_encoder_1, text_encoder_2, text_encoder_3),
                             engine=engine, device=device, dtype=dtype)
        return io.NodeOutput(handle)


NODES = [LoadModel]
