"""What a model file or folder is, from tensor names and shapes alone.

:func:`detect` reads only the safetensors header (or a diffusers folder's JSON files)
and returns a :class:`Detection`: family, variant, kind, the full diffusers config,
dominant stored dtype, parameter count, what else the model needs, and for all-in-one
checkpoints which components were found under which prefix.

:func:`detect_tensors` does the same for a plain ``{name: TensorInfo}`` map, so reference
manifests (key/shape lists of released files) can be checked without any file.

A family's transformer is recognised and read by its entry in the family registry
(:mod:`.families`: markers, ``detect``); this module handles the rest: files and folders,
all-in-one prefixes, VAEs, text encoders and LoRAs.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..errors import BAD_INPUT, MODEL_NOT_FOUND, UNSUPPORTED_ARCHITECTURE, SpriteForgeError
from . import configs
from .detection import Detection, count as _count, heads as _heads
from .families import components, loras, registry
from .safetensors_header import WEIGHT_DTYPES, Header, TensorInfo, read_header

KINDS = ("transformer", "vae", "text_encoder", "checkpoint", "diffusers", "lora")

# All-in-one checkpoint prefixes -> component name.
PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.diffusion_model.", "transformer"),
    ("first_stage_model.", "vae"),
    ("vae.", "vae"),
    ("text_encoders.clip_l.transformer.", "clip_l"),
    ("text_encoders.clip_g.transformer.", "clip_g"),
    ("text_encoders.t5xxl.transformer.", "t5"),
    ("text_encoders.qwen3_4b.transformer.", "qwen3_4b"),
    ("text_encoders.qwen25_7b.transformer.", "qwen25_7b"),
)
TEXT_ENCODERS = ("clip_l", "clip_g", "t5", "gemma")


# --------------------------------------------------------------------------- helpers


def _dominant_dtype(tensors: dict[str, TensorInfo]) -> str:
    by: dict[str, float] = {}
    for t in tensors.values():
        if t.dtype in WEIGHT_DTYPES:  # floats and quantized formats (inspect names a file's quantization)
            by[t.dtype] = by.get(t.dtype, 0) + t.numel
    if not by:
        return next(iter(tensors.values())).dtype if tensors else ""
    return max(by.items(), key=lambda kv: kv[1])[0]


def _params(tensors) -> int:
    return sum(t.numel for t in tensors.values())


def _vae_factor(folder: Path) -> int:
    """The scale factor of the VAE in a diffusers folder's ``vae/`` (2 ** (blocks - 1)); 8 when there is none."""
    cfg = folder / "vae" / "config.json"
    try:
        blocks = json.loads(cfg.read_text(encoding="utf-8")).get("block_out_channels") if cfg.is_file() else None
    except (OSError, json.JSONDecodeError):
        blocks = None
    return 2 ** (len(blocks) - 1) if isinstance(blocks, list) and blocks else 8


def _variant_from_config(det: Detection, cfg: dict, pipeline: Path) -> None:
    """Let the family refine ``det``'s variant from a config.json (settings its weights do not record), in pixels
    of the VAE of the diffusers folder ``pipeline`` it sits in."""
    fam = registry.get(det.family)
    if fam is not None:
        fam.variant_from_config(det, cfg, _vae_factor(pipeline))


# --------------------------------------------------------------------------- VAEs / text encoders


def _vae_kl(t: dict[str, TensorInfo], original: bool, family_hint: str | None = None) -> Detection:
    k = t.keys()
    if original:
        nblocks = _count(k, r"encoder\.down\.(\d+)\.")
        ch = [t[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in range(nblocks)]
        lpb = _count(k, r"encoder\.down\.0\.block\.(\d+)\.")
    else:
        nblocks = _count(k, r"encoder\.down_blocks\.(\d+)\.")
        ch = [t[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(nblocks)]
        lpb = _count(k, r"encoder\.down_blocks\.0\.resnets\.(\d+)\.")
    latent = t["decoder.conv_in.weight"].shape[1]
    name = registry.vae_config_name(family_hint, None, 16 if latent == 16 else 4)
    rel = configs.load(name)
    cfg = rel["config"]
    groups = t["encoder.conv_norm_out.weight" if not original else "encoder.norm_out.weight"].shape[0]
    cfg.update(
        block_out_channels=ch,
        down_block_types=["DownEncoderBlock2D"] * nblocks,
        up_block_types=["UpDecoderBlock2D"] * nblocks,
        layers_per_block=lpb,
        latent_channels=latent,
        in_channels=t["encoder.conv_in.weight"].shape[1],
        out_channels=t["decoder.conv_out.weight"].shape[0],
        use_quant_conv="quant_conv.weight" in t,
        use_post_quant_conv="post_quant_conv.weight" in t,
        norm_num_groups=min(32, groups),
    )
    det = Detection(None, f"kl{latent}", "vae", cfg, layout="original" if original else "diffusers")
    det.extras["config_name"] = name
    return det


def _vae_dc(t: dict[str, TensorInfo], original: bool) -> Detection:
    rel = configs.load("dc-ae-f32c32-sana")
    det = Detection(None, "dc-ae-f32c32", "vae", rel["config"], layout="original" if original else "diffusers")
    det.extras["config_name"] = "dc-ae-f32c32-sana"
    return det


def _clip(t: dict[str, TensorInfo], hint: str | None, name: str = "") -> Detection:
    pre = "text_model." if "text_model.embeddings.token_embedding.weight" in t else ""
    vocab, hidden = t[f"{pre}embeddings.token_embedding.weight"].shape
    layers = _count(t.keys(), rf"{re.escape(pre)}encoder\.layers\.(\d+)\.")
    inter = t[f"{pre}encoder.layers.0.mlp.fc1.weight"].shape[0] if layers else 4 * hidden
    if hint in ("clip_l", "clip_g"):
        variant = hint
    elif hidden == 1280:
        variant = "clip_g"
    elif hidden == 768:
        variant = "clip_l"
    else:
        low = name.lower()
        variant = "clip_g" if ("clip_g" in low or "clip-g" in low or "bigg" in low) else "clip_l"
    rel = configs.load("te-clip-g" if variant == "clip_g" else "te-clip-l")
    cfg = rel["config"]
    heads, _ = _heads(hidden, (64,))
    proj = t["text_projection.weight"].shape[0] if "text_projection.weight" in t else hidden
    cfg.update(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=t[f"{pre}embeddings.position_embedding.weight"].shape[0],
        projection_dim=proj,
    )
    det = Detection(None, variant, "text_encoder", cfg, layout="hf")
    det.extras.update(model_class=rel["class"], tokenizer=rel["tokenizer"], has_projection="text_projection.weight" in t)
    return det


def _t5(t: dict[str, TensorInfo]) -> Detection:
    emb = t.get("shared.weight") or t.get("encoder.embed_tokens.weight")
    vocab, d_model = emb.shape
    layers = _count(t.keys(), r"encoder\.block\.(\d+)\.")
    inner = t["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]
    rel_bias = t.get("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    heads = rel_bias.shape[1] if rel_bias is not None else max(1, inner // 64)
    buckets = rel_bias.shape[0] if rel_bias is not None else 32
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in t
    d_ff = t["encoder.block.0.layer.1.DenseReluDense.wi_0.weight" if gated else "encoder.block.0.layer.1.DenseReluDense.wi.weight"].shape[0]
    rel = configs.load("te-t5-xxl")
    cfg = rel["config"]
    cfg.update(
        vocab_size=vocab,
        d_model=d_model,
        d_kv=inner // heads,
        d_ff=d_ff,
        num_layers=layers,
        num_heads=heads,
        relative_attention_num_buckets=buckets,
        feed_forward_proj="gated-gelu" if gated else "relu",
    )
    det = Detection(None, "t5", "text_encoder", cfg, layout="hf")
    det.extras.update(model_class=rel["class"], tokenizer="t5", size="xxl" if d_model == 4096 else ("xl" if d_model == 2048 else "custom"))
    return det


def _gemma(t: dict[str, TensorInfo]) -> Detection:
    pre = "model." if "model.embed_tokens.weight" in t else ""
    vocab, hidden = t[f"{pre}embed_tokens.weight"].shape
    layers = _count(t.keys(), rf"{re.escape(pre)}layers\.(\d+)\.")
    rel = configs.load("te-gemma-2-2b")
    cfg = rel["config"]
    hd = cfg["head_dim"]
    q = t[f"{pre}layers.0.self_attn.q_proj.weight"].shape[0]
    kv = t[f"{pre}layers.0.self_attn.k_proj.weight"].shape[0]
    cfg.update(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        intermediate_size=t[f"{pre}layers.0.mlp.gate_proj.weight"].shape[0],
        num_attention_heads=max(1, q // hd),
        num_key_value_heads=max(1, kv // hd),
    )
    det = Detection(None, "gemma", "text_encoder", cfg, layout="hf")
    det.extras.update(model_class=rel["class"], tokenizer="gemma", size="2b" if hidden == 2304 else "custom")
    return det


_LORA_DOWN = (".lora_down.weight", ".lora_A.weight", ".lora_A.default.weight")
_LORA_TE = ("lora_te", "text_encoder", "te1.", "te2.", "te3.")  # text-encoder modules: no family in their names


def _lora(t: dict[str, TensorInfo]) -> Detection | None:
    keys = list(t)
    down = [k for k in keys if k.endswith(_LORA_DOWN)]
    if not down:
        return None
    if any(k.startswith(("lora_unet_", "lora_te", "lora_transformer_")) for k in keys):
        fmt = "kohya"
    elif any(k.startswith("diffusion_model.") for k in keys):
        fmt = "comfy"
    elif any(".lora_A." in k for k in keys):
        fmt = "peft"
    else:
        fmt = "kohya"
    rank = min(t[k].shape[0] for k in down)
    # the family the module names say (models/families/loras.py; the LoRA layer's own guess reads the same)
    flat = {k.rsplit(".lora_", 1)[0].replace(".", "_"): k for k in down if not k.startswith(_LORA_TE)}
    widths = {n: t[k].shape[1] for n, k in flat.items() if len(t[k].shape) >= 2}
    cands, _ = loras.candidates(flat, widths)
    target = cands[0] if cands and registry.get(cands[0]) is not None else None
    det = Detection(target, None, "lora", {}, layout=fmt)
    det.extras.update(format=fmt, rank=rank, modules=len(down))
    return det


# --------------------------------------------------------------------------- classification


def _strip(t: dict[str, TensorInfo], prefix: str) -> dict[str, TensorInfo]:
    n = len(prefix)
    return {k[n:]: v for k, v in t.items() if k.startswith(prefix)}


def classify(t: dict[str, TensorInfo], *, hint: str | None = None, name: str = "") -> Detection | None:
    """Classify prefix-less tensors; ``None`` when nothing matches.

    A file that has a family's marker tensors but lacks the others (or has them with impossible shapes)
    gives UNSUPPORTED_ARCHITECTURE naming what is wrong, never a raw KeyError/IndexError.
    """
    try:
        return _classify(t, hint=hint, name=name)
    except SpriteForgeError:
        raise
    except (KeyError, IndexError, ValueError, TypeError, ZeroDivisionError) as exc:
        what = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise SpriteForgeError(
            UNSUPPORTED_ARCHITECTURE,
            f"{name or 'the file'} looks like a model SpriteForge knows but is incomplete or malformed "
            f"({type(exc).__name__}: {what!s}). Check that the file downloaded completely.",
            details={"error": type(exc).__name__},
        ) from None


def _classify(t: dict[str, TensorInfo], *, hint: str | None = None, name: str = "") -> Detection | None:
    has = t.__contains__
    det = registry.classify(t) or components.classify(t)  # a family's transformer; a recognised-only family's part
    if det is not None:
        return det
    if any(k.startswith(("encoder.stages.", "encoder.project_in.")) for k in t):
        return _vae_dc(t, True)
    if has("encoder.conv_in.weight") and any("to_qkv_multiscale" in k or ".conv_depth." in k for k in t):
        return _vae_dc(t, False)
    if has("encoder.down.0.block.0.conv1.weight") and has("decoder.conv_in.weight"):
        return _vae_kl(t, True, hint)
    if has("encoder.down_blocks.0.resnets.0.conv1.weight") and has("decoder.conv_in.weight"):
        return _vae_kl(t, False, hint)
    if has("text_model.embeddings.token_embedding.weight") or has("embeddings.token_embedding.weight"):
        return _clip(t, hint, name)
    if has("encoder.block.0.layer.0.SelfAttention.q.weight"):
        return _t5(t)
    if (has("embed_tokens.weight") or has("model.embed_tokens.weight")) and any("pre_feedforward_layernorm" in k for k in t):
        return _gemma(t)
    return _lora(t)


def _describe_unknown(t: dict[str, TensorInfo]) -> str:
    tops: dict[str, int] = {}
    for k in t:
        top = k.split(".")[0]
        tops[top] = tops.get(top, 0) + 1
    best = sorted(tops.items(), key=lambda kv: -kv[1])[:8]
    return f"{len(t)} tensors; top-level names: " + ", ".join(f"{k} ({n})" for k, n in best)


def detect_tensors(tensors: dict[str, TensorInfo], *, name: str = "", family_hint: str | None = None) -> Detection:
    """Detect from a ``{name: TensorInfo}`` map (a header, or a manifest)."""
    if not tensors:
        raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"{name or 'the file'} holds no tensors.")
    found: dict[str, str] = {}
    for prefix, comp in PREFIXES:
        if comp in found:
            continue
        if any(k.startswith(prefix) for k in tensors):
            found[comp] = prefix
    # a standalone transformer/VAE with a single prefix; or an all-in-one checkpoint
    if found:
        parts: dict[str, Detection] = {}
        claimed = set()
        for comp, prefix in found.items():
            sub = _strip(tensors, prefix)
            claimed.update(prefix + k for k in sub)
            d = classify(sub, hint=comp if comp in TEXT_ENCODERS else None, name=name)
            if d is not None:
                d.parameters = _params(sub)
                d.dtype = _dominant_dtype(sub)
                parts[comp] = d
        main = parts.get("transformer")
        rest = {k: v for k, v in tensors.items() if k not in claimed}
        if main is not None:
            if "vae" in parts and parts["vae"].kind == "vae":
                # re-detect the VAE with the family's default scaling
                parts["vae"] = _redetect_vae(_strip(tensors, found["vae"]), main.family)
            det = Detection(
                main.family,
                main.variant,
                "checkpoint" if len(parts) > 1 else "transformer",
                main.config,
                layout=main.layout,
                extras=dict(main.extras),
            )
            det.components = {c: found[c] for c in parts}
            det.parts = parts
            det.needs = [n for n in registry.needs(main.family, main.variant) if n not in parts]
            det.extras["other_tensors"] = len(rest)
        elif len(parts) == 1 and not rest:
            (comp, det), = parts.items()
            det.components = {comp: found[comp]}
        else:
            det = classify(tensors, hint=family_hint, name=name)
            if det is None:
                raise SpriteForgeError(
                    UNSUPPORTED_ARCHITECTURE,
                    f"{name or 'the file'} has {', '.join(found.values())} entries but no diffusion model SpriteForge knows "
                    f"({_describe_unknown(tensors)}).{_unet_hint(tensors)}",
                    details={"prefixes": list(found.values())},
                )
    else:
        det = classify(tensors, hint=family_hint, name=name)
        if det is None:
            raise SpriteForgeError(
                UNSUPPORTED_ARCHITECTURE,
                f"{name or 'the file'} is not a model SpriteForge knows: {_describe_unknown(tensors)}.{_unet_hint(tensors)}",
                details={"tensors": len(tensors)},
            )
        if det.kind == "transformer":
            det.needs = registry.needs(det.family, det.variant)
    det.parameters = _params(tensors)
    det.dtype = _dominant_dtype(tensors)
    if len(mixed := _dtype_elements(tensors)) > 1:  # mixed precision (Krea 2), int64 buffers: every dtype, not one
        det.extras["dtypes"] = mixed
    return det


def _dtype_elements(tensors) -> dict[str, int]:
    """Elements stored in each dtype, most first."""
    by: dict[str, int] = {}
    for t in tensors.values():
        by[t.dtype] = by.get(t.dtype, 0) + t.numel
    return dict(sorted(by.items(), key=lambda kv: -kv[1]))


def _unet_hint(tensors) -> str:
    if any("input_blocks." in k or "down_blocks.0.attentions." in k for k in tensors):
        runs = ", ".join(f.label for f in registry.families())
        return f" It looks like a UNet model (SD1.x/SD2/SDXL), which SpriteForge does not run: it runs DiT models ({runs})."
    return ""


def _redetect_vae(t, family):
    d = classify(t, hint=family)
    d.parameters = _params(t)
    d.dtype = _dominant_dtype(t)
    return d


def detect_header(header: Header, *, family_hint: str | None = None) -> Detection:
    det = detect_tensors(header.tensors, name=Path(header.path).name, family_hint=family_hint)
    det.path = header.path
    return det


# --------------------------------------------------------------------------- folders


def _read_json(p: Path) -> dict:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SpriteForgeError(BAD_INPUT, f"{p} is not valid JSON ({exc.__class__.__name__}).", details={"path": str(p)}) from None


def weight_files(folder: Path) -> list[Path]:
    """The safetensors weight files of one diffusers/transformers component folder."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return []
    # prefer the un-suffixed full-precision names; fall back to any
    main = [f for f in files if not re.search(r"\.(fp16|bf16|fp8)\.safetensors$", f.name)]
    return main or files


def folder_tensors(folder: Path) -> dict[str, TensorInfo]:
    out: dict[str, TensorInfo] = {}
    for f in weight_files(folder):
        out.update(read_header(f).tensors)
    return out


def _detect_folder(p: Path) -> Detection:
    if (p / "model_index.json").exists():
        index = _read_json(p / "model_index.json")
        tdir = p / "transformer"
        if not (tdir / "config.json").exists():
            raise SpriteForgeError(
                UNSUPPORTED_ARCHITECTURE,
                f"{p.name} is a diffusers folder for {index.get('_class_name', 'an unknown pipeline')} without a transformer/; SpriteForge runs DiT models only.",
            )
        cfg = _read_json(tdir / "config.json")
        cls = cfg.get("_class_name", "")
        fam = registry.by_transformer_class(cls)
        family = fam.name if fam else None
        tensors = folder_tensors(tdir)
        if family is None:
            raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"{p.name}: transformer class {cls!r} is not supported.")
        det = classify(tensors) if tensors else None
        variant = det.variant if (det is not None and det.family == family) else None
        pipe = index.get("_class_name", "")
        variant = fam.variant_from_folder(cfg, pipe, variant, _vae_factor(p))
        if isinstance(index.get("is_distilled"), bool):  # one layout, two releases: the pipeline config says which
            variant = fam.variant_distilled(variant, index["is_distilled"])
        out = Detection(family, variant, "diffusers", {k: v for k, v in cfg.items() if not k.startswith("_") or k == "_class_name"}, layout="diffusers", path=str(p))
        out.parameters = _params(tensors)
        out.dtype = _dominant_dtype(tensors) if tensors else ""
        comps = {k: v for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v and v[0]}
        out.components = {k: f"{k}/" for k in comps}
        have = set()
        for sub in comps:
            if sub.startswith("text_encoder"):
                tc = _read_json(p / sub / "config.json") if (p / sub / "config.json").exists() else {}
                mt = tc.get("model_type", "")
                if mt.startswith("t5"):
                    have.add("t5")
                elif mt.startswith("gemma"):
                    have.add("gemma")
                elif mt.startswith("clip"):
                    have.add("clip_g" if tc.get("hidden_size") == 1280 or sub == "text_encoder_2" else "clip_l")
                elif components.folder_text_encoder(tc):
                    have.add(components.folder_text_encoder(tc))
            elif sub == "vae":
                have.add("vae")
        out.needs = [n for n in registry.needs(family, variant) if n not in have]
        if det is not None:
            out.extras.update({k: v for k, v in det.extras.items() if k in ("guidance_embeds", "in_channels", "num_classes", "sigma_learned")})
        if not fam.generation:
            out.extras["recognised_as"] = fam.title(variant)
        if (p / "scheduler" / "scheduler_config.json").exists():
            out.extras["scheduler"] = _read_json(p / "scheduler" / "scheduler_config.json")
        return out
    if (p / "config.json").exists():
        cfg = _read_json(p / "config.json")
        tensors = folder_tensors(p)
        det = classify(tensors, name=p.name) if tensors else None
        if det is None:
            raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"{p} holds a config.json for {cfg.get('_class_name') or cfg.get('model_type')!r} that SpriteForge does not know.")
        det.config = {**det.config, **{k: v for k, v in cfg.items() if not k.startswith("_") or k == "_class_name"}}
        _variant_from_config(det, cfg, p.parent)
        det.path = str(p)
        det.parameters = _params(tensors)
        det.dtype = _dominant_dtype(tensors)
        if det.kind == "transformer":
            det.needs = registry.needs(det.family)
        det.extras["folder"] = True
        return det
    st = sorted(p.glob("*.safetensors"))
    if len(st) == 1:
        return detect(st[0])
    raise SpriteForgeError(
        UNSUPPORTED_ARCHITECTURE,
        f"{p} is a folder without model_index.json or config.json; give the model file itself or a diffusers folder.",
    )


def with_side_config(det: Detection, p: Path) -> Detection:
    """A diffusers-layout file does not record settings that have no weights (PixArt's sample size...):
    take them from ``<name>.json`` or ``config.json`` beside it when that names the same class."""
    if det.kind not in ("transformer", "vae") or det.layout != "diffusers":
        return det
    for cand in (p.with_suffix(".json"), p.parent / "config.json"):
        if cand.is_file():
            try:
                cfg = json.loads(cand.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(cfg, dict) and cfg.get("_class_name") == det.config.get("_class_name"):
                keep = {k: v for k, v in cfg.items() if not k.startswith("_")}
                det.config.update(keep)
                det.extras["config_file"] = str(cand)
                det.extras.pop("ambiguous", None)
                _variant_from_config(det, keep, cand.parent.parent)
                break
    return det


def detect(path: str | os.PathLike, *, family_hint: str | None = None) -> Detection:
    """What ``path`` (a safetensors file or a diffusers folder) is. Reads headers and JSON only."""
    p = Path(path).expanduser()
    if not p.exists():
        raise SpriteForgeError(MODEL_NOT_FOUND, f"{p} does not exist.", details={"path": str(p)})
    if p.is_dir():
        return _detect_folder(p)
    suffix = p.suffix.lower()
    if suffix in (".safetensors", ".sft"):
        return with_side_config(detect_header(read_header(p), family_hint=family_hint), p)
    if suffix in (".ckpt", ".pt", ".pth", ".bin"):
        raise SpriteForgeError(
            UNSUPPORTED_ARCHITECTURE,
            f"{p.name} is a pickle checkpoint ({suffix}); inspecting it would mean unpickling it. "
            "Convert it to .safetensors, or load it with the torch engine (which only accepts plain tensor dicts via weights_only).",
            details={"path": str(p), "format": "pickle"},
        )
    # sniff: maybe a safetensors file with another extension; read_header names other formats (GGUF, PNG...) by their bytes
    return detect_header(read_header(p), family_hint=family_hint)
