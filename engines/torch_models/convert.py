"""Original checkpoint layouts -> the diffusers/transformers classes SpriteForge runs.

Every converter takes a ``{name: tensor}`` dict of prefix-less original keys and returns
a new dict of diffusers keys. Tensors are only sliced (``chunk``/``split`` give views) or
passed through, never copied, so converting a memory-mapped state dict costs no memory;
the same code runs on ``meta`` tensors to check key sets and shapes of released files
without their data.

Where diffusers has a single-file converter that works for any size, it is used (the families naming it as their
``original_converter``: SD3/SD3.5, Sana; the LDM KL VAE, DC-AE). Flux's hard-codes the 3072 hidden width, and
PixArt and DiT have none in diffusers: those three are renamed by their family's original-to-diffusers
key map (:mod:`spriteforge.models.families`, rules of :mod:`spriteforge.models.keymaps`), the same table
the LoRA layouts read (Flux's checked against diffusers' converter on the real key manifests).
"""

from __future__ import annotations

import functools
import re

import torch

from ...errors import UNSUPPORTED_ARCHITECTURE, SpriteForgeError
from ...models import keymaps
from ...models.families import registry


def _layers(sd, prefix: str) -> int:
    rx = re.compile(re.escape(prefix) + r"(\d+)\.")
    nums = {int(m.group(1)) for k in sd if (m := rx.match(k))}
    return max(nums) + 1 if nums else 0


def _move(src: dict, dst: dict, old: str, new: str, required: bool = True) -> None:
    for suffix in (".weight", ".bias"):
        if old + suffix in src:
            dst[new + suffix] = src.pop(old + suffix)
        elif required and suffix == ".weight":
            raise KeyError(old + suffix)


def _swap_scale_shift(w: torch.Tensor) -> torch.Tensor:
    shift, scale = w.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)


def _rows(weight: torch.Tensor, n: int, split: str) -> list[int]:
    """Row counts of the ``n`` targets of a fused weight (see :class:`spriteforge.models.keymaps.Rule`)."""
    if split == "width":
        width = weight.shape[1]
        return [width] * (n - 1) + [weight.shape[0] - width * (n - 1)]
    return [t.shape[0] for t in weight.chunk(n, dim=0)]


def _apply(rule: keymaps.Rule, sd: dict, out: dict, i, blocks: int) -> None:
    orig = keymaps.fill(rule.original, i)
    targets = [keymaps.fill(t, i) for t in rule.targets]
    if rule.optional and orig + ".weight" not in sd and orig not in sd:
        return
    if rule.kind == "tensor":
        out[targets[0]] = sd.pop(orig)
    elif rule.kind == "shared":  # one tensor under every block's name (views of the same storage, not copies)
        parts = {s: sd.pop(orig + s) for s in (".weight", ".bias") if orig + s in sd or s == ".weight"}
        for b in range(blocks):
            for s, t in parts.items():
                out[keymaps.fill(targets[0], b) + s] = t
    elif len(targets) == 1 and rule.swap is None:
        _move(sd, out, orig, targets[0])
    else:
        sizes = None
        for part in ("weight", "bias"):
            if part == "bias" and f"{orig}.bias" not in sd:  # bias-free layers (FLUX.2)
                continue
            w = sd.pop(f"{orig}.{part}")
            if rule.swap == "always":
                w = _swap_scale_shift(w)
            sizes = sizes or _rows(w, len(targets), rule.split)
            for t, piece in zip(targets, torch.split(w, sizes, dim=0)):
                out[f"{t}.{part}"] = piece


def keymap_to_diffusers(family: str, sd: dict, what: str) -> dict:
    """An original-layout state dict renamed (and fused weights split by rows) to diffusers' names by the
    family's key map (:mod:`spriteforge.models.families`); rules with block indices run block by block."""
    sd = dict(sd)
    out: dict = {}
    fam = registry.get(family)
    for name in fam.dropped:
        sd.pop(name, None)
    rules = fam.keymap
    counts: dict = {}

    def count(prefix):
        if prefix not in counts:
            counts[prefix] = _layers(sd, prefix)
        return counts[prefix]

    k = 0
    while k < len(rules):
        prefix = keymaps.block_prefix(rules[k].original)
        if prefix is None:
            rule = rules[k]
            _apply(rule, sd, out, None, count(keymaps.block_prefix(rule.per)) if rule.per else 0)
            k += 1
            continue
        run = [rules[k]]
        while k + len(run) < len(rules) and keymaps.block_prefix(rules[k + len(run)].original) == prefix:
            run.append(rules[k + len(run)])
        for i in range(count(prefix)):
            for rule in run:
                _apply(rule, sd, out, i, 0)
        k += len(run)
    _leftover(sd, what)
    return out


# --------------------------------------------------------------------------- diffusers' own converters


def diffusers_converter(name: str, sd: dict, placeholders=()) -> dict:
    """diffusers' single-file converter ``name`` (``diffusers.loaders.single_file_utils``) on ``sd``, with an empty meta
    tensor for each of ``placeholders`` the file lacks (tensors the converter pops unconditionally)."""
    from diffusers.loaders import single_file_utils

    sd = dict(sd)
    for key in placeholders:
        sd.setdefault(key, torch.empty(0, device="meta"))
    return getattr(single_file_utils, name)(sd)


# BFL's FLUX.2 ae.safetensors keeps the quant convs inside the encoder/decoder (LDM files have them at the top)
_INNER_QUANT = {"encoder.quant_conv.": "quant_conv.", "decoder.post_quant_conv.": "post_quant_conv."}


def vae_kl_to_diffusers(sd: dict, config: dict) -> dict:
    """An LDM/BFL KL VAE with diffusers' names (diffusers' converter); latent batch-norm statistics (``bn.*``,
    FLUX.2) pass through as they are, ``num_batches_tracked`` keeping its int64."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    sd = dict(sd)
    for old, new in _INNER_QUANT.items():
        for k in [k for k in sd if k.startswith(old)]:
            sd[new + k[len(old):]] = sd.pop(k)
    bn = {k: sd.pop(k) for k in [k for k in sd if k.startswith("bn.")]}
    out = convert_ldm_vae_checkpoint(sd, config)
    out.update(bn)
    return out


def dcae_to_diffusers(sd: dict) -> dict:
    from diffusers.loaders.single_file_utils import convert_autoencoder_dc_checkpoint_to_diffusers

    return convert_autoencoder_dc_checkpoint_to_diffusers(dict(sd))


def to_diffusers(family: str, sd: dict) -> dict:
    """A transformer state dict of ``family`` in its original layout, with diffusers' keys: by the family's key map or
    by diffusers' own converter, as the family says (``original_converter``)."""
    fam = registry.get(family)
    if fam.original_converter == "keymap":
        return keymap_to_diffusers(family, sd, fam.label)
    return diffusers_converter(fam.original_converter, sd, fam.converter_placeholders)


def __getattr__(name: str):
    """``<family>_to_diffusers(sd)``: :func:`to_diffusers` of one registered family (``convert.flux_to_diffusers``)."""
    fam = registry.get(name[: -len("_to_diffusers")]) if name.endswith("_to_diffusers") else None
    if fam is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return functools.partial(to_diffusers, fam.name)


def convert_transformer(family: str, sd: dict, layout: str) -> dict:
    """Diffusers keys for a transformer state dict in ``layout`` (``original`` or ``diffusers``)."""
    if layout == "diffusers":
        return dict(sd)
    try:
        return to_diffusers(family, sd)
    except KeyError as exc:
        raise SpriteForgeError(
            UNSUPPORTED_ARCHITECTURE,
            f"the {family} checkpoint lacks tensor {exc.args[0]!r} that its layout needs; the file is incomplete or a variant SpriteForge does not know.",
            details={"missing": str(exc.args[0])},
        ) from None


def convert_vae(variant: str, sd: dict, layout: str, config: dict) -> dict:
    if layout == "diffusers":
        return dict(sd)
    if variant.startswith("dc-ae"):
        return dcae_to_diffusers(sd)
    if variant == "qwen-image":  # the Wan-2.1 layout (qwen_image_vae.safetensors)
        return diffusers_converter("convert_wan_vae_to_diffusers", sd)
    return vae_kl_to_diffusers(sd, config)


def convert_text_encoder(variant: str, sd: dict, model_keys: set) -> dict:
    """Match a text-encoder state dict to ``model_keys`` (the transformers class's own keys)."""
    sd = dict(sd)
    if variant in ("clip_l", "clip_g"):
        sd.pop("text_model.embeddings.position_ids", None)
        sd.pop("embeddings.position_ids", None)
        has_prefix = any(k.startswith("text_model.") for k in model_keys)
        out = {}
        for k, v in sd.items():
            if k == "text_projection.weight" or k.startswith("text_projection"):
                out[k] = v
            elif k.startswith("text_model.") and not has_prefix:
                out[k[len("text_model."):]] = v
            elif not k.startswith("text_model.") and has_prefix:
                out["text_model." + k] = v
            else:
                out[k] = v
        return out
    if variant == "t5":
        # the released file also stores the tied copy encoder.embed_tokens; keep one
        if "shared.weight" not in sd and "encoder.embed_tokens.weight" in sd:
            sd["shared.weight"] = sd.pop("encoder.embed_tokens.weight")
        else:
            sd.pop("encoder.embed_tokens.weight", None)
        if "encoder.embed_tokens.weight" in model_keys:
            sd["encoder.embed_tokens.weight"] = sd["shared.weight"]  # tied: one tensor under both names
        return sd
    if variant == "gemma" or variant.startswith(("qwen", "mistral")):  # a ...ForCausalLM file: "model." stripped, lm_head dropped
        return keymaps.gemma_model_keys(sd)
    return sd


def _leftover(sd: dict, what: str) -> None:
    if sd:
        names = ", ".join(sorted(sd)[:8])
        raise SpriteForgeError(
            UNSUPPORTED_ARCHITECTURE,
            f"the {what} checkpoint has {len(sd)} tensor(s) SpriteForge does not know where to put: {names}.",
            details={"unexpected": sorted(sd)[:50]},
        )
