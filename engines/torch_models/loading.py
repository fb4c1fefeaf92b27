"""Load DiT models (single files in original or diffusers layout, all-in-one checkpoints,
diffusers folders) with their VAE and text encoders, offline, onto the engine's device.

Public entry point: :func:`load_model` (``TorchEngine.load_model`` calls it). Pieces that
other code may reuse: :func:`load_vae`, :func:`load_text_encoder`, :func:`find_tokenizer`,
:func:`open_tensors`.

Memory: a safetensors file is memory-mapped (``UntypedStorage.from_file``). Tensors whose
stored dtype is the one wanted on a CPU device are views of the mapping (no copy at all);
every other tensor is read with one ``readinto`` into a reused buffer and cast/moved from
there, so peak RSS stays near the size of the loaded model, never twice the file. Models
are built on the meta device and filled with ``load_state_dict(assign=True)``.

Nothing in a file is executed: safetensors only; ``.ckpt/.pt/.pth/.bin`` go through
``torch.load(weights_only=True)`` which refuses anything but tensors and plain containers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ... import paths
from ...errors import BAD_INPUT, MODEL_NOT_FOUND, UNSUPPORTED_ARCHITECTURE, SpriteForgeError
from ...log import get_logger
from ...models import configs
from ...models.detect import Detection, detect, detect_tensors
from ...models.safetensors_header import DTYPES, TensorInfo, read_header
from ..base import ModelHandle, family_vae_name, handle_fields
from ..tokenizer_case import fold_case_if_lowercase
from . import convert

log = get_logger("torch")

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
FP8 = ("float8_e4m3fn", "float8_e5m2")

# diffusers folder sub-folders -> our text-encoder keys, per family
FOLDER_TEXT_ENCODERS = {
    "pixart": {"text_encoder": "t5"},
    "sd3": {"text_encoder": "clip_l", "text_encoder_2": "clip_g", "text_encoder_3": "t5"},
    "flux": {"text_encoder": "clip_l", "text_encoder_2": "t5"},
    "sana": {"text_encoder": "gemma"},
    "dit": {},
}
# where each class lives: importing it directly skips diffusers' lazy import of every model (seconds)
CLASS_MODULES = {
    "PixArtTransformer2DModel": "diffusers.models.transformers.pixart_transformer_2d",
    "SD3Transformer2DModel": "diffusers.models.transformers.transformer_sd3",
    "FluxTransformer2DModel": "diffusers.models.transformers.transformer_flux",
    "SanaTransformer2DModel": "diffusers.models.transformers.sana_transformer",
    "DiTTransformer2DModel": "diffusers.models.transformers.dit_transformer_2d",
    "AutoencoderKL": "diffusers.models.autoencoders.autoencoder_kl",
    "AutoencoderDC": "diffusers.models.autoencoders.autoencoder_dc",
}


def diffusers_class(name: str):
    """A diffusers model class by name, imported from its own module when known."""
    import importlib

    mod = CLASS_MODULES.get(name)
    if mod:
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            pass
    import diffusers

    return getattr(diffusers, name)


TRANSFORMER_CLASSES = {
    "pixart": "PixArtTransformer2DModel",
    "sd3": "SD3Transformer2DModel",
    "flux": "FluxTransformer2DModel",
    "sana": "SanaTransformer2DModel",
    "dit": "DiTTransformer2DModel",
}
# ComfyUI ships these tokenizers (relative to the ``comfy`` package folder)
COMFY_TOKENIZERS = {
    "clip": ("sd1_tokenizer", "text_encoders/sd1_tokenizer"),
    "t5": ("text_encoders/t5_tokenizer", "t5_tokenizer"),
    "gemma": ("text_encoders/gemma2_tokenizer", "text_encoders/gemma_tokenizer"),
}
TOKENIZER_FILES = {
    "clip": (("vocab.json", "merges.txt"), ("tokenizer.json",)),
    "t5": (("spiece.model",), ("tokenizer.json",)),
    "gemma": (("tokenizer.model",), ("tokenizer.json",)),
}


def torch_dtype(name: str) -> torch.dtype:
    from ..torch_engine import torch_dtype as td

    return td(name)


# --------------------------------------------------------------------------- tensor sources


class SafetensorsFile:
    """Lazy per-tensor access to a safetensors file through one memory mapping."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self.header = read_header(path)
        self.tensors: dict[str, TensorInfo] = self.header.tensors
        self._base = 8 + self.header.header_size
        self._storage = None
        self._fh = None
        self._buf: np.ndarray | None = None
        self._can_map = True

    def keys(self):
        return self.tensors.keys()

    def _mapped(self) -> torch.Tensor:
        if self._storage is None:
            self._storage = torch.UntypedStorage.from_file(self.path, shared=False, nbytes=self.header.file_size)
        return torch.empty(0, dtype=torch.uint8).set_(self._storage)

    def view(self, name: str) -> torch.Tensor:
        """A zero-copy tensor over the mapping (pages load when touched)."""
        info = self.tensors[name]
        b, e = info.offsets
        dt = torch_dtype(info.dtype)
        raw = self._mapped()[self._base + b : self._base + e]
        if (self._base + b) % max(1, torch.empty(0, dtype=dt).element_size()):
            raw = raw.clone()  # unaligned (rare writers): copy this one tensor
        return raw.view(dt).reshape(info.shape)

    def read(self, name: str) -> torch.Tensor:
        """The tensor read into a reused buffer (valid until the next ``read``)."""
        info = self.tensors[name]
        b, e = info.offsets
        n = e - b
        if self._buf is None or self._buf.size < n:
            self._buf = np.empty(max(n, 1 << 20), dtype=np.uint8)
        if self._fh is None:
            self._fh = open(self.path, "rb")
        self._fh.seek(self._base + b)
        mv = memoryview(self._buf)[:n]
        got = self._fh.readinto(mv)
        if got != n:
            raise SpriteForgeError(BAD_INPUT, f"{Path(self.path).name} ended early while reading {name!r} (truncated download?).")
        return torch.from_numpy(self._buf[:n]).view(torch_dtype(info.dtype)).reshape(info.shape)

    def get(self, name: str, dtype: torch.dtype | None, device: torch.device) -> torch.Tensor:
        info = self.tensors[name]
        src = torch_dtype(info.dtype)
        want = src if dtype is None else dtype
        if device.type == "cpu" and want == src and self._can_map:
            try:
                return self.view(name)
            except (RuntimeError, OSError) as exc:  # a platform without private file mappings: read instead
                log.debug("memory mapping %s failed (%s); reading tensors instead", self.path, exc)
                self._can_map = False
        return self.read(name).to(device=device, dtype=want, copy=True)

    def close(self):
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._buf = None
        self._storage = None


class TensorDict:
    """Same interface over an in-memory dict (from a ``weights_only`` pickle load)."""

    def __init__(self, sd: dict, path: str = ""):
        self.path = path
        self.sd = sd
        self.tensors = {
            k: TensorInfo(str(v.dtype).replace("torch.", ""), tuple(v.shape)) for k, v in sd.items() if isinstance(v, torch.Tensor)
        }

    def keys(self):
        return self.tensors.keys()

    def get(self, name, dtype, device):
        t = self.sd[name]
        return t.to(device=device, dtype=dtype or t.dtype)

    def close(self):
        self.sd = {}


def open_tensors(path: str | os.PathLike):
    """A tensor source for ``path``: safetensors (mapped) or a pickle loaded with ``weights_only``."""
    p = Path(path)
    if p.suffix.lower() in PICKLE_SUFFIXES:
        return TensorDict(_load_pickle(p), str(p))
    return SafetensorsFile(p)


def _load_pickle(p: Path) -> dict:
    try:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # old (non-zip) format cannot be mapped
            if "mmap" not in str(exc):
                raise
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - anything the safe unpickler refuses
        raise SpriteForgeError(
            UNSUPPORTED_ARCHITECTURE,
            f"{p.name} is a pickle checkpoint that holds more than plain tensors, so it was not loaded "
            f"(loading it could run code from the file: {str(exc).splitlines()[0][:200]}). Use a .safetensors version of the model.",
            details={"path": str(p)},
        ) from None
    for key in ("state_dict", "model", "module", "ema"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict) and not isinstance(obj.get(key), torch.Tensor):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"{p.name} does not hold a state dict of tensors.")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


# --------------------------------------------------------------------------- model building


def _empty(build):
    from accelerate import init_empty_weights

    with init_empty_weights():
        return build()


def _plan(info: TensorInfo, weight: torch.dtype, keep_fp8: bool) -> torch.dtype | None:
    if not info.dtype.startswith(("float", "bfloat")):
        return None  # integer buffers keep their dtype
    if info.dtype in FP8 and keep_fp8:
        return None
    return weight


# Tensors are read (and cast) in groups of at most this many tensors and file bytes; each group ends with a
# progress step, the interrupt point (a group is well under a second of reading and casting on a CPU).
LOAD_GROUP_TENSORS = 32
LOAD_GROUP_BYTES = 64 << 20


def _load_groups(source, mapping) -> list[list[str]]:
    groups: list[list[str]] = [[]]
    size = 0
    for src_key in mapping:
        info = source.tensors[src_key]
        b, e = info.offsets
        n = (e - b) or info.numel * 4
        if groups[-1] and (len(groups[-1]) >= LOAD_GROUP_TENSORS or size + n > LOAD_GROUP_BYTES):
            groups.append([])
            size = 0
        groups[-1].append(src_key)
        size += n
    return groups if groups[0] else []


def _load_into(model, source, mapping: dict[str, str], convert_fn, *, dtype, device, keep_fp8=False, what="model", fill=None):
    """Read ``mapping`` (source key -> prefix-less key), convert, and assign into ``model`` (on meta).

    ``convert_fn`` maps the prefix-less dict to the model's keys. Returns the model.
    """
    from ...progress import Progress

    sd = {}
    groups = _load_groups(source, mapping)
    with Progress(len(groups), f"loading {what}") as bar:
        for group in groups:
            for src_key in group:
                sd[mapping[src_key]] = source.get(src_key, _plan(source.tensors[src_key], dtype, keep_fp8), device)
            bar.update()  # also the interrupt point: Cancel stops within one group
    sd = convert_fn(sd)
    expected = model.state_dict()
    if fill:
        for k, fn in fill.items():
            if k in expected and k not in sd:
                sd[k] = fn(expected[k]).to(device=device, dtype=dtype)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [(k, tuple(sd[k].shape), tuple(expected[k].shape)) for k in sd if k in expected and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        bits = []
        if wrong:
            bits.append("shape mismatch " + "; ".join(f"{k}: file {a} vs model {b}" for k, a, b in wrong[:4]))
        if missing:
            bits.append(f"{len(missing)} missing (e.g. {', '.join(missing[:4])})")
        if unexpected:
            bits.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:4])})")
        raise SpriteForgeError(
            UNSUPPORTED_ARCHITECTURE,
            f"{Path(source.path).name}: the {what} weights do not fit the detected architecture: {'; '.join(bits)}.",
            details={"missing": missing[:50], "unexpected": unexpected[:50], "shape_mismatch": [list(w) for w in wrong[:50]]},
        )
    model.load_state_dict(sd, strict=True, assign=True)
    # buffers that are not in the file (computed at init: pos tables, rotary freqs) follow the device
    for mod in model.modules():
        for name, buf in list(mod._buffers.items()):
            if buf is None:
                continue
            if buf.device.type == "meta":
                raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"{what}: buffer {name} was not initialised.")
            mod._buffers[name] = buf.to(device=device, dtype=dtype if buf.is_floating_point() else buf.dtype)
    return model.eval().requires_grad_(False)


def _has_fp8(tensors: dict[str, TensorInfo]) -> bool:
    return any(t.dtype in FP8 for t in tensors.values())


def _keep_fp8(engine) -> bool:
    """Keep fp8 storage (and upcast per layer at run time) where the device can hold fp8 tensors."""
    return engine.device.kind in ("cuda", "rocm", "cpu")


def _enable_fp8(model, tensors, weight_dtype):
    """Keep fp8 weights stored as fp8 and upcast them one layer at a time, only for its forward."""
    fp8 = [t.dtype for t in tensors.values() if t.dtype in FP8]
    if not fp8:
        return None
    fp8_types = {torch.float8_e4m3fn, torch.float8_e5m2}
    n = 0
    for mod in model.modules():
        if any(p is not None and p.dtype in fp8_types for p in mod._parameters.values()):
            mod.register_forward_pre_hook(_Fp8Upcast(weight_dtype).pre)
            mod.register_forward_hook(_Fp8Upcast.post)
            n += 1
    return max(set(fp8), key=fp8.count) if n else None


class _Fp8Upcast:
    def __init__(self, compute: torch.dtype):
        self.compute = compute

    def pre(self, mod, args):
        stored = {}
        for name, p in mod._parameters.items():
            if p is not None and p.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
                stored[name] = p
                mod._parameters[name] = torch.nn.Parameter(p.to(self.compute), requires_grad=False)
        mod.__dict__["_sf_fp8_stored"] = stored

    @staticmethod
    def post(mod, args, out):
        for name, p in mod.__dict__.pop("_sf_fp8_stored", {}).items():
            mod._parameters[name] = p
        return out


def build_transformer(det: Detection):
    cls = diffusers_class(TRANSFORMER_CLASSES[det.family])
    cfg = {k: v for k, v in det.config.items() if not k.startswith("_")}
    return _empty(lambda: cls.from_config(cfg))


def _load_transformer(engine, source, det: Detection, prefix: str, dtype):
    device = engine.torch_device
    keep = _keep_fp8(engine) and _has_fp8(source.tensors)
    model = build_transformer(det)
    mapping = {k: k[len(prefix):] for k in source.keys() if k.startswith(prefix)}
    model = _load_into(
        model,
        source,
        mapping,
        lambda sd: convert.convert_transformer(det.family, sd, det.layout),
        dtype=dtype,
        device=device,
        keep_fp8=keep,
        what=f"{det.family} transformer",
    )
    fp8 = _enable_fp8(model, {k: source.tensors[k] for k in mapping}, dtype) if keep else None
    return model, fp8


# --------------------------------------------------------------------------- VAE


def vae_config_for(det: Detection, family: str | None, variant: str | None = None) -> dict:
    cfg = dict(det.config)
    if det.variant and det.variant.startswith("kl"):
        name = _family_vae_name(family, variant, int(det.variant[2:]))
        ref = configs.load(name)["config"]
        cfg["scaling_factor"] = ref["scaling_factor"]
        cfg["shift_factor"] = ref.get("shift_factor")
    return cfg


_family_vae_name = family_vae_name  # shared with the MLX loader (engines/base.py)


def _build_vae(cfg: dict):
    cls = diffusers_class(cfg.get("_class_name", "AutoencoderKL"))
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    return _empty(lambda: cls.from_config(cfg))


def _load_vae_from(engine, source, det: Detection, prefix: str, family, variant, dtype):
    cfg = vae_config_for(det, family, variant)
    model = _build_vae(cfg)
    mapping = {k: k[len(prefix):] for k in source.keys() if k.startswith(prefix)}
    model = _load_into(
        model,
        source,
        mapping,
        lambda sd: convert.convert_vae(det.variant or "", sd, det.layout, cfg),
        dtype=dtype,
        device=engine.torch_device,
        what="VAE",
    )
    return model, dict(model.config)


def load_vae(engine, path, *, family: str | None = None, variant: str | None = None, dtype=None):
    """A VAE from a single file (original or diffusers layout) or a diffusers ``vae`` folder -> (model, config)."""
    p = _resolve(path, ("vae",))
    dt = torch_dtype(dtype or engine.policy.vae_dtype)
    if p.is_dir():
        sub = p / "vae" if (p / "vae" / "config.json").exists() else p
        cfg = json.loads((sub / "config.json").read_text())
        cls = diffusers_class(cfg.get("_class_name", "AutoencoderKL"))
        model = cls.from_pretrained(sub, local_files_only=True, torch_dtype=dt).to(engine.torch_device).eval().requires_grad_(False)
        return model, dict(model.config)
    source = open_tensors(p)
    try:
        return _vae_from_source(engine, source, p, family, variant, dt)
    finally:
        source.close()


def _vae_from_source(engine, source, p: Path, family, variant, dt):
    det = detect_tensors(source.tensors, name=p.name, family_hint=family)
    prefix = ""
    if det.kind != "vae":
        if "vae" in det.parts:
            prefix = det.components["vae"]
            det = det.parts["vae"]
        else:
            raise SpriteForgeError(BAD_INPUT, f"{p.name} is a {det.kind} ({det.family or det.variant}), not a VAE. Choose a VAE file for the VAE input.")
    elif det.components.get("vae"):
        prefix = det.components["vae"]
    return _load_vae_from(engine, source, det, prefix, family, variant, dt)


# --------------------------------------------------------------------------- text encoders


def _te_model(variant: str, cfg: dict, family: str | None):
    import transformers

    cfg = {k: v for k, v in cfg.items() if k != "model_type"}
    if variant in ("clip_l", "clip_g"):
        conf = transformers.CLIPTextConfig(**cfg)
        cls = transformers.CLIPTextModelWithProjection if (variant == "clip_g" or family == "sd3") else transformers.CLIPTextModel
    elif variant == "t5":
        conf = transformers.T5Config(**cfg)
        cls = transformers.T5EncoderModel
    elif variant == "gemma":
        conf = transformers.Gemma2Config(**cfg)
        cls = transformers.Gemma2Model
    else:
        raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"text encoder {variant!r} is not supported.")
    return _empty(lambda: cls(conf))


def _load_te_from(engine, source, det: Detection, prefix: str, family, dtype):
    variant = det.variant
    model = _te_model(variant, det.config, family)
    # tokenizer data some files carry (ComfyUI's "spiece_model") is not a weight
    mapping = {k: k[len(prefix):] for k in source.keys() if k.startswith(prefix) and not k.endswith("spiece_model")}
    expected = set(model.state_dict())

    def conv(sd):
        out = convert.convert_text_encoder(variant, sd, expected)
        if variant in ("clip_l", "clip_g") and "text_projection.weight" not in expected:
            out.pop("text_projection.weight", None)
        return out

    fill = {}
    if variant in ("clip_l", "clip_g"):
        # published clip_l has no projection; ComfyUI then uses the identity, so do we
        fill["text_projection.weight"] = lambda ref: torch.eye(ref.shape[0], ref.shape[1])
    model = _load_into(model, source, mapping, conv, dtype=dtype, device=engine.torch_device, what=f"{variant} text encoder", fill=fill)
    if variant == "t5":
        model.encoder.embed_tokens = model.shared
    return model


def load_text_encoder(engine, path, *, family: str | None = None, hint: str | None = None, dtype=None):
    """One text encoder from a single file or a transformers folder -> (key, model, tokenizer)."""
    p = _resolve(path, ("text_encoders",))
    dt = torch_dtype(dtype or engine.policy.text_encoder_dtype)
    if p.is_dir():
        return _te_from_folder(engine, p, family, hint, dt)
    source = open_tensors(p)
    try:
        det = detect_tensors(source.tensors, name=p.name, family_hint=hint)
        prefix = det.components.get(det.variant, "") if det.components else ""
        if det.kind != "text_encoder":
            raise SpriteForgeError(BAD_INPUT, f"{p.name} is a {det.kind} ({det.family or det.variant}), not a text encoder.")
        model = _load_te_from(engine, source, det, prefix, family, dt)
        tok = find_tokenizer(det.variant, p, source=source)
        return det.variant, model, tok
    finally:
        source.close()


def _te_from_folder(engine, p: Path, family, hint, dt):
    import transformers

    cfg = json.loads((p / "config.json").read_text())
    mt = cfg.get("model_type", "")
    archs = cfg.get("architectures") or []
    if mt.startswith("t5"):
        key, cls = "t5", transformers.T5EncoderModel
    elif mt.startswith("gemma"):
        key, cls = "gemma", transformers.Gemma2Model
    elif mt.startswith("clip"):
        key = hint if hint in ("clip_l", "clip_g") else ("clip_g" if cfg.get("hidden_size") == 1280 else "clip_l")
        with_proj = any("WithProjection" in a for a in archs) or family == "sd3"
        cls = transformers.CLIPTextModelWithProjection if with_proj else transformers.CLIPTextModel
    else:
        raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"{p.name}: text encoder type {mt!r} is not supported.")
    model = cls.from_pretrained(p, local_files_only=True, dtype=dt).to(engine.torch_device).eval().requires_grad_(False)
    tok = find_tokenizer(key, p)
    return key, model, tok


def _tok_kind(key: str) -> str:
    return "clip" if key.startswith("clip") else key


def _has_tokenizer_files(d: Path, kind: str) -> bool:
    return d.is_dir() and any(all((d / f).exists() for f in group) for group in TOKENIZER_FILES[kind])


def tokenizer_from_spm(model_file, kind: str):
    """A T5/Gemma tokenizer straight from a sentencepiece model file.

    transformers 5 converts ``spiece.model``/``tokenizer.model`` through protobuf, which
    ComfyUI installs do not always have; reading pieces and scores with sentencepiece
    itself needs nothing else.
    """
    import sentencepiece as spm
    import transformers

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    n = sp.get_piece_size()
    if kind == "t5":
        vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(n)]
        extra = sum(1 for p, _ in vocab if p.startswith("<extra_id_"))
        return transformers.T5Tokenizer(vocab=vocab, extra_ids=0 if extra else 0)
    vocab = {sp.id_to_piece(i): i for i in range(n)}
    merges = []
    for piece, i in vocab.items():
        for j in range(1, len(piece)):
            a, b = piece[:j], piece[j:]
            if a in vocab and b in vocab:
                merges.append((i, vocab[a], vocab[b], a, b))
    merges.sort()
    specials = {sp.id_to_piece(i) for i in range(n) if sp.is_control(i) or sp.is_unknown(i)}
    pick = lambda *names: next((x for x in names if x in specials or x in vocab), names[0])  # noqa: E731
    return transformers.GemmaTokenizer(
        vocab=vocab,
        merges=[(m[3], m[4]) for m in merges],
        bos_token=pick("<bos>", "<s>"),
        eos_token=pick("<eos>", "</s>"),
        pad_token=pick("<pad>"),
        unk_token=pick("<unk>"),
    )


def _load_tokenizer_dir(d: Path, kind: str):
    import transformers

    cls = {"clip": transformers.CLIPTokenizer, "t5": transformers.T5Tokenizer, "gemma": transformers.GemmaTokenizer}[kind]
    errors = []
    if (d / "tokenizer.json").exists() or kind == "clip":
        try:
            return cls.from_pretrained(str(d), local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - try the other ways
            errors.append(exc)
    spm_file = d / ("spiece.model" if kind == "t5" else "tokenizer.model")
    if spm_file.exists():
        return tokenizer_from_spm(spm_file, kind)
    try:
        return transformers.AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise errors[0] if errors else exc


def comfy_tokenizer_dirs(kind: str) -> list[Path]:
    try:
        import comfy  # type: ignore

        base = Path(os.path.dirname(comfy.__file__))
    except Exception:  # noqa: BLE001 - not inside ComfyUI
        return []
    return [base / rel for rel in COMFY_TOKENIZERS.get(kind, ())]


def find_tokenizer(key: str, near: Path | None = None, *, source=None, required: bool = True):
    """The tokenizer for text encoder ``key`` (``clip_l``, ``clip_g``, ``t5``, ``gemma``).

    Looked for, in order: tokenizer data embedded in the file (ComfyUI's ``spiece_model``),
    a tokenizer folder beside the file (``<stem>_tokenizer/``, ``tokenizer/``, or the
    folder itself), the tokenizer sub-folders of the user's diffusers models, and the
    tokenizers ComfyUI ships. Raises MODEL_NOT_FOUND saying where to put one.
    """
    kind = _tok_kind(key)
    if source is not None and kind in ("gemma", "t5") and "spiece_model" in source.tensors:
        tok = _embedded_spiece(source, kind)
        if tok is not None:
            return fold_case_if_lowercase(tok)
    cands: list[Path] = []
    if near is not None:
        near = Path(near)
        if near.is_dir():  # a text_encoder*/ folder of a diffusers model: its tokenizer*/ siblings
            cands += [near] + sorted(d for d in near.parent.glob("tokenizer*") if d.is_dir())
        else:
            cands += [near.parent / f"{near.stem}_tokenizer", near.parent / "tokenizer", near.parent / f"{kind}_tokenizer", near.parent / near.stem]
    for root in paths.roots("diffusers"):
        if root.is_dir():
            for model in sorted(root.iterdir()):
                if model.is_dir():
                    cands += sorted(d for d in model.glob("tokenizer*") if d.is_dir())
    cands += comfy_tokenizer_dirs(kind)
    for d in cands:
        if _has_tokenizer_files(d, kind) and _tokenizer_matches(d, kind):
            try:
                return fold_case_if_lowercase(_load_tokenizer_dir(d, kind))
            except Exception as exc:  # noqa: BLE001 - try the next place
                log.warning("tokenizer in %s could not be loaded: %s", d, exc)
    if not required:
        return None
    where = str(near.parent / f"{near.stem}_tokenizer") if near is not None and not near.is_dir() else "a tokenizer/ folder beside the model"
    files = " + ".join(TOKENIZER_FILES[kind][0]) + " (or tokenizer.json)"
    raise SpriteForgeError(
        MODEL_NOT_FOUND,
        f"no {key} tokenizer was found. Put its files ({files}) in {where}, or keep the model's diffusers folder in models/diffusers; "
        "inside ComfyUI the tokenizers ComfyUI ships are used.",
        details={"tokenizer": key, "searched": [str(c) for c in cands]},
    )


def _tokenizer_matches(d: Path, kind: str) -> bool:
    cfg = d / "tokenizer_config.json"
    if not cfg.exists():
        return True
    try:
        cls = json.loads(cfg.read_text()).get("tokenizer_class", "") or ""
    except (OSError, json.JSONDecodeError):
        return True
    if not cls:
        return True
    low = cls.lower()
    return {"clip": "clip" in low, "t5": "t5" in low, "gemma": "gemma" in low}[kind]


def _embedded_spiece(source, kind):
    import tempfile

    try:
        data = source.get("spiece_model", None, torch.device("cpu")).numpy().tobytes()
        with tempfile.TemporaryDirectory() as tmp:
            f = Path(tmp) / "tokenizer.model"
            f.write_bytes(data)
            return tokenizer_from_spm(f, kind)
    except Exception as exc:  # noqa: BLE001
        log.warning("embedded tokenizer could not be used: %s", exc)
        return None


# --------------------------------------------------------------------------- entry point


def _resolve(path, kinds) -> Path:
    p = Path(str(path)).expanduser()
    if p.exists():
        return p
    if not p.is_absolute():
        for kind in kinds:
            try:
                return paths.resolve(kind, str(path))
            except SpriteForgeError:
                continue
    raise SpriteForgeError(
        MODEL_NOT_FOUND,
        f"{path} was not found (looked for it as a path and in the {', '.join(kinds)} model folders). "
        "Put the file there or give its full path.",
        details={"path": str(path), "kinds": list(kinds)},
    )


def _weight_dtype(engine, dtype: str | None) -> torch.dtype:
    name = dtype or engine.policy.weight_dtype
    if name in ("bfloat16", "bf16") and not engine.policy.bf16 and engine.device.kind not in ("cpu",):
        name = "float16"
    return torch_dtype(name)


def load_model(engine, path, *, vae=None, text_encoders=(), dtype=None) -> ModelHandle:
    """Load a DiT model (file or diffusers folder) with its VAE and text encoders.

    ``path``: a diffusers folder (``model_index.json``), a transformer component folder
    (``config.json``), or a single file: a transformer in the original or diffusers layout,
    or an all-in-one SD3/SD3.5 (or ComfyUI Flux) checkpoint. A bare name is looked up in the
    ``diffusion_models``, ``checkpoints`` and ``diffusers`` model folders. ``vae`` and
    ``text_encoders`` are optional paths/names (files or folders) that replace or complete
    what ``path`` carries. ``dtype`` overrides the policy's weight dtype. Every failure is a
    :class:`SpriteForgeError`.
    """
    p = _resolve(path, ("diffusion_models", "checkpoints", "diffusers"))
    try:
        return _load_model(engine, p, vae=vae, text_encoders=text_encoders, dtype=dtype)
    except SpriteForgeError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes a coded error
        from ...errors import classify

        raise classify(exc, context=f"loading {p.name}") from exc


def _load_model(engine, p: Path, *, vae=None, text_encoders=(), dtype=None) -> ModelHandle:
    wdt = _weight_dtype(engine, dtype)
    vdt = torch_dtype(engine.policy.vae_dtype)
    tdt = torch_dtype(dtype or engine.policy.text_encoder_dtype)
    extras: dict = {}
    tes: dict = {}
    toks: dict = {}
    vae_model = None
    vae_cfg: dict = {}
    if p.is_dir():
        det = detect(p)
        if det.kind == "diffusers":
            transformer, vae_model, vae_cfg, tes, toks = _load_folder(engine, p, det, wdt, vdt, tdt)
        elif det.kind == "transformer":
            transformer = _load_component_folder(engine, p, det, wdt)
        else:
            raise SpriteForgeError(BAD_INPUT, f"{p.name} is a {det.kind} folder, not a diffusion model.")
        fp8 = None
    else:
        source = open_tensors(p)
        det = detect_tensors(source.tensors, name=p.name)
        det.path = str(p)
        if det.kind not in ("transformer", "checkpoint"):
            raise SpriteForgeError(
                BAD_INPUT,
                f"{p.name} is a {det.kind} ({det.variant or det.family}), not a diffusion model. "
                "Load it through the matching VAE/text-encoder input instead.",
                details={"kind": det.kind},
            )
        prefix = det.components.get("transformer", "")
        transformer, fp8 = _load_transformer(engine, source, det, prefix, wdt)
        if fp8:
            extras["fp8_storage"] = fp8
        if "vae" in det.parts and vae is None:
            vae_model, vae_cfg = _load_vae_from(engine, source, det.parts["vae"], det.components["vae"], det.family, det.variant, vdt)
        for comp in ("clip_l", "clip_g", "t5"):
            if comp in det.parts and det.parts[comp].kind == "text_encoder":
                sub = det.parts[comp]
                sub.variant = comp
                tes[comp] = _load_te_from(engine, source, sub, det.components[comp], det.family, tdt)
                toks[comp] = find_tokenizer(comp, p, source=source, required=False)
        source.close()  # tensors that are views keep the mapping alive on their own
    family = det.family
    if vae is not None:
        vae_model, vae_cfg = load_vae(engine, vae, family=family, variant=det.variant)
    for te in text_encoders or ():
        if te is None or te == "":
            continue
        key, model, tok = load_text_encoder(engine, te, family=family, dtype=dtype or engine.policy.text_encoder_dtype)
        tes[key] = model  # an explicit text encoder replaces one the model file carries
        toks[key] = tok
    missing_tok = [k for k in tes if toks.get(k) is None]
    for k in missing_tok:
        toks[k] = find_tokenizer(k, p, required=True)
    return _handle(engine, det, p, transformer, vae_model, vae_cfg, tes, toks, wdt, extras)


def _load_component_folder(engine, p: Path, det: Detection, wdt):
    cls = diffusers_class(TRANSFORMER_CLASSES[det.family])
    return cls.from_pretrained(p, local_files_only=True, torch_dtype=wdt).to(engine.torch_device).eval().requires_grad_(False)


def _variant(folder: Path) -> dict:
    """``{"variant": "fp16"}`` when a component folder only has ``*.fp16.safetensors`` (or bf16) weights."""
    import re

    files = [f.name for f in folder.glob("*.safetensors")]
    if not files or any(not re.search(r"\.(fp16|bf16|fp8)\.safetensors$", f) and not re.search(r"\.(fp16|bf16)-\d+-of-\d+\.safetensors$", f) for f in files):
        return {}
    for v in ("fp16", "bf16"):
        if any(f".{v}." in f or f".{v}-" in f for f in files):
            return {"variant": v}
    return {}


def _load_folder(engine, p: Path, det: Detection, wdt, vdt, tdt):
    import transformers

    index = json.loads((p / "model_index.json").read_text())
    device = engine.torch_device
    tcls = diffusers_class(TRANSFORMER_CLASSES[det.family])
    transformer = tcls.from_pretrained(p, subfolder="transformer", local_files_only=True, torch_dtype=wdt, **_variant(p / "transformer"))
    transformer = transformer.to(device).eval().requires_grad_(False)
    vae_model, vae_cfg = None, {}
    if (p / "vae" / "config.json").exists():
        vcfg = json.loads((p / "vae" / "config.json").read_text())
        vcls = diffusers_class(vcfg.get("_class_name", "AutoencoderKL"))
        vae_model = vcls.from_pretrained(p, subfolder="vae", local_files_only=True, torch_dtype=vdt, **_variant(p / "vae"))
        vae_model = vae_model.to(device).eval().requires_grad_(False)
        vae_cfg = dict(vae_model.config)
    tes, toks = {}, {}
    for sub, key in FOLDER_TEXT_ENCODERS.get(det.family, {}).items():
        entry = index.get(sub)
        if not entry or not entry[0] or not (p / sub).is_dir():
            continue
        lib, cls_name = entry
        cls = getattr(transformers, cls_name)
        tes[key] = cls.from_pretrained(p / sub, local_files_only=True, dtype=tdt, **_variant(p / sub)).to(device).eval().requires_grad_(False)
        tsub = sub.replace("text_encoder", "tokenizer")
        tentry = index.get(tsub)
        if tentry and tentry[0] and (p / tsub).is_dir():
            try:
                toks[key] = getattr(transformers, tentry[1]).from_pretrained(p / tsub, local_files_only=True)
            except Exception:  # noqa: BLE001 - e.g. slow class unavailable: generic loader
                toks[key] = transformers.AutoTokenizer.from_pretrained(p / tsub, local_files_only=True)
            fold_case_if_lowercase(toks[key])  # a lower-case-only vocabulary: case-insensitive prompts
    return transformer, vae_model, vae_cfg, tes, toks


def _handle(engine, det: Detection, p: Path, transformer, vae_model, vae_cfg, tes, toks, wdt, extras) -> ModelHandle:
    cfg = dict(transformer.config)
    fields = handle_fields(det, cfg, vae_cfg, has_vae=vae_model is not None, text_encoders=tes, extras=extras)
    return ModelHandle(
        family=det.family,
        variant=det.variant or "",
        engine=engine,
        transformer=transformer,
        config=cfg,
        vae=vae_model,
        vae_config=dict(vae_cfg),
        text_encoders=tes,
        tokenizers=toks,
        dtype=str(wdt).replace("torch.", ""),
        source=str(p),
        **fields,
    )
