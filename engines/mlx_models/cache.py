"""A converted MLX cache of a model (``spriteforge convert --engine mlx MODEL``), checked on every load.

Converting loads the model once through :mod:`.loading` (every component in float32, so nothing is
rounded twice) and writes a folder of MLX-native files:

* ``transformer.safetensors``, ``vae.safetensors``, ``te_<key>.safetensors``: each component's
  parameters under the port's own names (``mx.save_safetensors``), so loading is ``mx.load`` (lazy,
  no torch, no renaming, no converters). Dtype ``auto`` stores each tensor in the dtype its source file
  stored it in when that round-trips exactly (fp8 as float16, which holds it exactly) and in float32
  otherwise, so a cache loads bit-identical to the source; ``float16``/``bfloat16``/``float32`` cast
  every floating tensor (smaller or larger, then not bit-identical);
* ``tokenizers/<key>/``: a copy of each tokenizer (``save_pretrained``). Copied rather than pointed
  at: the source may carry its tokenizer inside the weights file (ComfyUI's ``spiece_model``) or it
  may have been found in another model's folder or in ComfyUI's own, and a copy keeps the cache
  self-contained (a few MB) and immune to those places changing;
* ``manifest.json``: format version, family/variant, the handle's fields and configs (transformer,
  VAE, each text encoder as its port takes it), the tokenizer classes and where they were found,
  the SpriteForge version, and the integrity record: for every source file its size, mtime and
  the sha256 of the safetensors header and of the tensor bytes (other files: the whole file),
  computed streaming in 16 MiB chunks (:mod:`.cache_hashes`), plus the sha256 of every cache file.

Where: ``--out DIR``, else the default folder for that source, ``<cache root>/<name>-<key>/`` with
key = sha256 of the resolved source path (and the VAE/text-encoder paths given with it). The cache
root is ``$SPRITEFORGE_MLX_CACHE``, else ``mlx_cache/`` under the models root (ComfyUI's ``models/``,
``--models`` or ``$SPRITEFORGE_MODELS``), else ``~/.cache/spriteforge/mlx`` (``$XDG_CACHE_HOME``).
Never next to or inside the user's model (a cache folder in ``models/diffusers`` would be listed as a
model), and never over a folder that is not an earlier cache.

Loading: :func:`load_model` (what ``MLXEngine.load_model`` calls) takes the cache folder itself, or
the source, in which case the default folder is used when it holds a cache, and the source's own files
(:func:`spriteforge.engines.mlx_models.loading.load_model`) otherwise. Every load re-hashes
every cache file (a changed file: MODEL_NOT_CONVERTED) and, when the source is reachable, checks each
source file's size and header hash, and re-hashes its tensor bytes only when its mtime changed (a
full re-hash of a 20 GB source on every load would cost more than the cache saves; a same-size edit
that keeps the mtime is the one change this does not see). A stale or tampered cache is refused with
MODEL_NOT_CONVERTED saying to run the converter again. The weights are then loaded lazily: a tensor
is read from disk when a forward pass first needs it (the VAE encoder of a txt2img run never is).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
from pathlib import Path

from ...errors import BAD_INPUT, MODEL_NOT_CONVERTED, SpriteForgeError
from ...log import get_logger
from ..model_files import MODEL_KINDS, coded_errors, resolve
from . import loading
from .cache_hashes import check_record, sha256_file, source_files, source_record

log = get_logger("mlx")

FORMAT = "spriteforge-mlx-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DTYPES = ("auto", "float16", "bfloat16", "float32")
HANDLE_FIELDS = ("prediction", "latent_channels", "vae_scale_factor", "patch_size", "scaling_factor", "shift_factor",
                 "flow_shift", "extras")


def _mx():
    import mlx.core as mx

    return mx


# --------------------------------------------------------------------------- where
def cache_root() -> Path:
    """Where default caches go (see the module doc)."""
    env = os.environ.get("SPRITEFORGE_MLX_CACHE")
    if env:
        return Path(env).expanduser()
    from ... import paths

    fp = paths._folder_paths()
    if fp is not None and getattr(fp, "models_dir", None):
        return Path(fp.models_dir) / "mlx_cache"
    roots = paths.roots("diffusers")
    if roots:
        return roots[0].parent / "mlx_cache"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "spriteforge" / "mlx"


def _resolved(vae=None, text_encoders=()):
    v = str(resolve(vae, ("vae",))) if vae else None
    tes = [str(resolve(t, ("text_encoders",))) for t in (text_encoders or ()) if t]
    return v, tes


def default_dir(p: Path, vae=None, text_encoders=(), quantize: int | None = None) -> Path:
    """The default cache folder of a source: ``<name>-<key>``, or ``<name>-q<bits>-<key>`` for an MLX-quantized one
    (``--quantize``, Load Model's q8/q4), so a quantized cache and the plain one of the same source sit side by side."""
    v, tes = _resolved(vae, text_encoders)
    ident = [str(Path(p).resolve()), v, tes] + ([quantize] if quantize else [])
    key = hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]
    name = Path(p).name[:-len(Path(p).suffix)] if Path(p).is_file() and Path(p).suffix else Path(p).name
    return cache_root() / (f"{name}-q{quantize}-{key}" if quantize else f"{name}-{key}")


def is_cache(p) -> bool:
    m = Path(p) / MANIFEST
    if not (Path(p).is_dir() and m.is_file()):
        return False
    try:
        return json.loads(m.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def find_cache(p, *, vae=None, text_encoders=(), quantize: int | None = None) -> Path | None:
    """The default cache folder of this source (quantized to ``quantize`` bits) when it holds a cache, else None."""
    try:
        d = default_dir(Path(p), vae, text_encoders, quantize)
    except Exception:  # noqa: BLE001 - an unresolvable VAE/text encoder: the normal loader reports it
        return None
    return d if is_cache(d) else None


# --------------------------------------------------------------------------- convert
def _jsonable(obj, what):
    try:
        return json.loads(json.dumps(obj))
    except (TypeError, ValueError) as exc:
        raise SpriteForgeError(BAD_INPUT, f"the {what} of this model cannot be written to the cache manifest ({exc}). "
                               "Load the model from its own files.") from exc


def _component_arrays(model, dtype: str) -> tuple[dict, str]:
    from mlx.utils import tree_flatten

    mx = _mx()
    stored = getattr(model, "_sf_port", (None, None, "float32"))[2]
    out = {}
    for k, v in tree_flatten(model.parameters()):
        if mx.issubdtype(v.dtype, mx.floating):
            if dtype == "auto":
                if stored != "float32":
                    c = v.astype(loading.mx_dtype(stored))
                    if bool(mx.array_equal(c.astype(v.dtype), v).item()):
                        v = c
            else:
                v = v.astype(loading.mx_dtype(dtype))
        out[k] = v
    return out, stored


def _check_out(out: Path, sources) -> None:
    out = out.resolve()
    for s in sources:
        s = Path(s).resolve()
        inside = s == out or (s.is_dir() and out.is_relative_to(s)) or s.is_relative_to(out)
        if inside:
            raise SpriteForgeError(BAD_INPUT, f"the cache folder {out} would overlap the model's own files ({s}); the "
                                   "converter never writes into a model. Choose another --out (or none: the default folder).")
    if out.exists() and not (out.is_dir() and (is_cache(out) or not any(out.iterdir()))):
        raise SpriteForgeError(BAD_INPUT, f"{out} exists and is not a SpriteForge MLX cache; the converter replaces only "
                               "earlier caches. Choose another --out (an empty or new folder).")


def convert(engine, path, *, out=None, vae=None, text_encoders=(), dtype: str = "auto", quantize: int | None = None) -> Path:
    """Convert the model at ``path`` (with ``vae``/``text_encoders``) into an MLX cache folder; returns the folder.
    ``quantize`` (4 or 8): the transformer's and text encoders' Linear layers MLX-quantized (``mlx.nn.quantize``)."""
    if dtype not in DTYPES:
        raise SpriteForgeError(BAD_INPUT, f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}.")
    if quantize not in (None, 4, 8):
        raise SpriteForgeError(BAD_INPUT, f"--quantize {quantize}: MLX-quantized caches hold 4 or 8 bits. Use 4 or 8.")
    p = resolve(path, MODEL_KINDS)
    if is_cache(p):
        raise SpriteForgeError(BAD_INPUT, f"{p} is already an MLX cache. Convert the model it was made from.")
    v, tes = _resolved(vae, text_encoders)
    sources = [str(p)] + ([v] if v else []) + tes
    dest = Path(out).expanduser() if out else default_dir(p, vae, text_encoders, quantize)
    _check_out(dest, sources)
    record = source_record(sources)
    handle = loading._load_model(engine, p, vae=v, text_encoders=tes, all_dtype="float32")
    if quantize:
        for model in (handle.transformer, *(handle.text_encoders or {}).values()):
            loading.quantize_model(model, quantize)
            object.__setattr__(model, "_sf_quantize", {"bits": quantize, "group_size": loading.QUANT_GROUP})
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        entries = _write_components(tmp, handle, dtype)
        toks = _write_tokenizers(tmp, handle)
        source = {"path": str(p), "vae": v, "text_encoders": tes, **record}
        (tmp / MANIFEST).write_text(json.dumps(_manifest(tmp, handle, dtype, source, entries, toks), indent=1))
        _replace(dest, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("MLX cache of %s written to %s", p.name, dest)
    return dest


def _write_components(tmp: Path, handle, dtype: str) -> dict:
    """One ``<component>.safetensors`` per model part (port-named arrays); their manifest entries."""
    from ...progress import Progress

    mx = _mx()
    comps = {"transformer": handle.transformer}
    if handle.vae is not None:
        comps["vae"] = handle.vae
    for k, m in (handle.text_encoders or {}).items():
        comps[f"te_{k}"] = m
        if getattr(m, "_sf_visual", None) is not None:  # its vision tower (Qwen-Image-Edit's reference images)
            comps[f"tv_{k}"] = m._sf_visual
    entries = {}
    with Progress(len(comps), "writing the MLX cache") as bar:
        for name, model in comps.items():
            port_key, config, _ = getattr(model, "_sf_port")
            arrays, stored = _component_arrays(model, dtype)
            fn = f"{name}.safetensors"
            mx.save_safetensors(str(tmp / fn), arrays, metadata={"format": "mlx", "spriteforge_port": port_key})
            del arrays
            entries[name] = {"file": fn, "port": port_key, "config": _jsonable(config, f"{name} config"),
                             "source_dtype": stored}
            if getattr(model, "_sf_quantize", None):
                entries[name]["quantize"] = dict(model._sf_quantize)
            bar.update()
    return entries


def _write_tokenizers(tmp: Path, handle) -> dict:
    """A copy of each tokenizer under ``tokenizers/<key>/``; their manifest entries."""
    toks = {}
    for k, tok in (handle.tokenizers or {}).items():
        if tok is None:
            continue
        tok.save_pretrained(str(tmp / "tokenizers" / k))
        toks[k] = {"dir": f"tokenizers/{k}", "class": type(tok).__name__,
                   "found_at": str(getattr(tok, "name_or_path", "") or "") or None}
    return toks


def _manifest(tmp: Path, handle, dtype: str, source: dict, entries: dict, toks: dict) -> dict:
    from ...version import __version__

    files = {str(f.relative_to(tmp)): sha256_file(f) for f in sorted(tmp.rglob("*")) if f.is_file()}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "spriteforge_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "family": handle.family,
        "variant": handle.variant,
        "dtype": dtype,
        "source": source,
        "handle": _jsonable({f: getattr(handle, f) for f in HANDLE_FIELDS}, "handle fields"),
        "config": _jsonable(handle.config, "transformer config"),
        "vae_config": _jsonable(handle.vae_config, "VAE config"),
        "text_encoder_configs": {n[3:]: e["config"] for n, e in entries.items() if n.startswith("te_")},
        "components": entries,
        "tokenizers": toks,
        "files": files,
    }


def _replace(dest: Path, tmp: Path) -> None:
    """``tmp`` becomes ``dest``; an earlier cache there is removed only once the new one is in place."""
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{os.getpid()}"
        dest.rename(old)
    tmp.rename(dest)
    if old is not None:
        shutil.rmtree(old)


# --------------------------------------------------------------------------- load
def _refuse(d: Path, source: str, why: str):
    raise SpriteForgeError(MODEL_NOT_CONVERTED, f"the MLX cache {d} does not match what it was made from: {why}. "
                           f"Run `spriteforge convert --engine mlx {source}` again (or delete {d} to load the model "
                           "from its own files).", hint="", details={"cache": str(d), "source": source, "reason": why})


def read_manifest(d: Path) -> dict:
    try:
        man = json.loads((Path(d) / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise SpriteForgeError(MODEL_NOT_CONVERTED, f"{d} has no readable {MANIFEST} ({exc}). Convert the model again with "
                               "`spriteforge convert --engine mlx MODEL`.") from exc
    if man.get("format") != FORMAT:
        raise SpriteForgeError(BAD_INPUT, f"{d} is not a SpriteForge MLX cache.")
    return man


def verify(d: Path, man: dict) -> None:
    """MODEL_NOT_CONVERTED unless every cache file and (when reachable) the source are as the manifest records."""
    d = Path(d)
    source = (man.get("source") or {}).get("path") or "MODEL"
    if man.get("format_version") != FORMAT_VERSION:
        _refuse(d, source, f"it is cache format {man.get('format_version')}, this SpriteForge reads format {FORMAT_VERSION}")
    files = man.get("files") or {}
    needed = {c["file"] for c in (man.get("components") or {}).values()}
    if not files or needed - set(files):
        _refuse(d, source, "its manifest lists no hash for some cache files")
    on_disk = {str(f.relative_to(d)) for f in d.rglob("*") if f.is_file()} - {MANIFEST}
    if on_disk - set(files):
        _refuse(d, source, f"it holds files the converter did not write ({', '.join(sorted(on_disk - set(files))[:3])})")
    for name, digest in files.items():
        f = d / name
        if not f.is_file():
            _refuse(d, source, f"{name} is missing")
        if sha256_file(f) != digest:
            _refuse(d, source, f"{name} was changed after converting (its sha256 differs)")
    src = man.get("source") or {}
    roots = [src.get("path")] + ([src["vae"]] if src.get("vae") else []) + list(src.get("text_encoders") or [])
    if not all(r and Path(r).exists() for r in roots):
        log.info("the source of the MLX cache %s is not reachable: only the cache files were checked", d)
        return
    recorded = {r["path"] for r in src.get("files") or []}
    now = {str(f) for r in roots for f in source_files(Path(r))}
    if now != recorded:
        extra = sorted(now - recorded) + sorted(recorded - now)
        _refuse(d, source, f"the source's files changed ({', '.join(Path(x).name for x in extra[:3])})")
    for rec in src.get("files") or []:
        why = check_record(rec)
        if why:
            _refuse(d, source, f"the source changed since converting: {why}")


def _component(d: Path, entry: dict, dt, what: str):
    from . import layers

    mx = _mx()
    cls, _ = loading.port(entry["port"])
    model = cls(dict(entry["config"]))
    object.__setattr__(model, "_sf_port", (entry["port"], dict(entry["config"]), entry.get("source_dtype", "float32")))
    if entry.get("quantize"):
        loading.quantize_model(model, **entry["quantize"])
        object.__setattr__(model, "_sf_quantize", dict(entry["quantize"]))
    w = mx.load(str(d / entry["file"]))  # lazy: read when a forward pass first needs a tensor
    w = {k: (v.astype(dt) if mx.issubdtype(v.dtype, mx.floating) and v.dtype != dt else v) for k, v in w.items()}
    layers.load_weights(model, w, what=what)
    model.eval()
    return model


def load_cache(engine, d, *, vae=None, text_encoders=(), dtype=None):
    """The :class:`ModelHandle` of the cache folder ``d``, after :func:`verify`."""
    import transformers

    from ..base import ModelHandle

    d = Path(d)
    if vae or any(t for t in (text_encoders or ())):
        raise SpriteForgeError(BAD_INPUT, f"{d.name} is an MLX cache: it carries its VAE and text encoders. Convert the model "
                               "with --vae/--text-encoder instead, or load the source model with them.")
    man = read_manifest(d)
    verify(d, man)
    comps = man["components"]
    for entry in comps.values():
        if not loading._port_ok(entry["port"]):
            raise SpriteForgeError(MODEL_NOT_CONVERTED, f"the MLX cache {d} needs the port {entry['port']}, which does not "
                                   "import in this SpriteForge. Convert the model again.")
    wname = loading._weight_dtype(engine, dtype)
    wdt = loading.mx_dtype(wname)
    vdt = loading.mx_dtype(engine.policy.vae_dtype)
    tdt = loading.mx_dtype(loading._weight_dtype(engine, dtype or engine.policy.text_encoder_dtype))
    fam = man["family"]
    transformer = _component(d, comps["transformer"], wdt, f"{fam} transformer")
    vae_model = _component(d, comps["vae"], vdt, "VAE") if "vae" in comps else None
    tes, toks = {}, {}
    for name, entry in comps.items():
        if name.startswith("te_"):
            tes[name[3:]] = _component(d, entry, tdt, f"{name[3:]} text encoder")
    for name, entry in comps.items():
        if name.startswith("tv_") and name[3:] in tes:  # a text encoder's vision tower rides beside it, as loading puts it
            object.__setattr__(tes[name[3:]], "_sf_visual", _component(d, entry, tdt, f"{name[3:]} vision tower"))
    for k, t in (man.get("tokenizers") or {}).items():
        cls = getattr(transformers, t["class"], None) or transformers.AutoTokenizer
        toks[k] = cls.from_pretrained(str(d / t["dir"]), local_files_only=True)
    for k in tes:
        toks.setdefault(k, None)
    fields = dict(man["handle"])
    log.info("loaded %s from the MLX cache %s", Path(man["source"]["path"]).name, d)
    return ModelHandle(family=fam, variant=man.get("variant") or "", engine=engine, transformer=transformer,
                       config=dict(man["config"]), vae=vae_model, vae_config=dict(man.get("vae_config") or {}),
                       text_encoders=tes, tokenizers=toks, dtype=wname, source=man["source"]["path"], **fields)


def load_model(engine, path, *, vae=None, text_encoders=(), dtype=None, quantize: int | None = None):
    """The model at ``path`` on MLX: from its converted cache when ``path`` is one or the source's default cache
    folder (made with these same VAE/text encoders) holds one, checked against the source and loaded lazily;
    else from the source's own files (:func:`.loading.load_model`). Every failure is a :class:`SpriteForgeError`.

    ``quantize`` (4 or 8: Load Model's q4/q8): the source's MLX-quantized cache, ``<name>-q<bits>-<key>`` in the cache
    root, made first by :func:`convert` (what ``spriteforge convert --engine mlx --quantize`` runs) when it holds none
    or a stale one; ``path`` being a cache already, it must be one of those bits."""
    p = resolve(path, MODEL_KINDS)
    with coded_errors(f"loading {p.name} on MLX"):
        if is_cache(p):
            if quantize and (read_manifest(p)["components"]["transformer"].get("quantize") or {}).get("bits") != quantize:
                raise SpriteForgeError(BAD_INPUT, f"{p.name} is an MLX cache that is not quantized to {quantize} bits. Load it "
                                       "with dtype auto, or choose its source model for q4/q8.")
            return load_cache(engine, p, vae=vae, text_encoders=text_encoders, dtype=dtype)
        if quantize:
            return _quantized(engine, p, vae, text_encoders, dtype, quantize)
        found = find_cache(p, vae=vae, text_encoders=text_encoders)
        if found is not None:
            return load_cache(engine, found, dtype=dtype)
    return loading.load_model(engine, p, vae=vae, text_encoders=text_encoders, dtype=dtype)


def _quantized(engine, p: Path, vae, text_encoders, dtype, bits: int):
    """The source ``p``'s ``bits``-quantized cache: loaded when its default folder holds a current one, else made
    there (again, when the source changed) and loaded."""
    found = find_cache(p, vae=vae, text_encoders=text_encoders, quantize=bits)
    if found is not None:
        try:
            return load_cache(engine, found, dtype=dtype)
        except SpriteForgeError as e:
            if e.code != MODEL_NOT_CONVERTED:
                raise
            log.info("the %s-bit MLX cache %s is stale (%s): converting again", bits, found, e.message)
    log.info("writing the %s-bit MLX cache of %s (once; later loads read it)", bits, p.name)
    return load_cache(engine, convert(engine, p, vae=vae, text_encoders=text_encoders, quantize=bits), dtype=dtype)


__all__ = ["load_model", "convert", "load_cache", "find_cache", "is_cache", "verify", "default_dir", "cache_root", "source_record",
           "FORMAT", "FORMAT_VERSION"]
