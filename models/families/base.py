"""What a model family declares: :class:`Family`, the one home of a family's facts.

A family is one subclass of :class:`Family` (one module in this package) and one line in
:mod:`.registry`. Its class attributes are data (names, markers, key map, text-encoder slots, VAE,
defaults, engine names, LoRA and editor hints); its few methods are what is truly family-specific
(:meth:`Family.detect` reads the config from the shapes; :meth:`Family.flow_shift`,
:meth:`Family.handle_extras`, :meth:`Family.vae_config_name` where a family differs from the rule).
Everything here is framework-free: the engines resolve the class and module names it gives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from ...errors import BAD_INPUT, SpriteForgeError
from .. import configs, keymaps
from ..detection import Detection, count
from ..safetensors_header import TensorInfo


@dataclass(frozen=True)
class TextEncoder:
    """One text-encoder slot of a family: our key (``t5``, ``clip_l``, ...), the diffusers folder sub-folder it
    is found in, and other names a handle may hold it under (``t5xxl``)."""

    key: str
    folder: str
    aliases: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """The names to look for in a handle, ours first, diffusers' component name last."""
        return (self.key, *self.aliases, self.folder)


# the MLX port of each text-encoder key (engines/mlx_models/<port>.py)
# (``decoder_lm``: the decoder-only language models, whose hidden states ``TextEncoding.decoder`` gives)
TEXT_ENCODER_PORTS = {"t5": "t5", "clip_l": "clip", "clip_g": "clip", "gemma": "gemma", "qwen3_4b": "decoder_lm", "qwen3_8b": "decoder_lm",
                      "mistral3": "decoder_lm", "qwen25_7b": "decoder_lm", "qwen3_vl_4b": "decoder_lm",
                      "qwen3_vl_8b": "decoder_lm"}
# the vision tower a text encoder key may carry (reference images: Qwen-Image-Edit), by its port module
# (engines/torch_models/<port>.py and engines/mlx_models/<port>.py)
VISION_TOWERS = {"qwen25_7b": "qwen_vision"}
# the MLX port of each VAE class
VAE_PORTS = {"AutoencoderKL": "vae", "AutoencoderDC": "dcae", "AutoencoderKLFlux2": "vae_flux2",
             "AutoencoderKLQwenImage": "vae_qwenimage", "AutoencoderKLQwenImage21": "vae_qwenimage21"}
# the shipped VAE config (models/configs) a family's release uses, by latent channels, unless the family says otherwise
VAE_BY_LATENT = {16: "vae-kl16-sd3", 4: "vae-kl4-sdxl"}
RELEASE_KEYS = ("scheduler", "prediction", "flow_shift", "max_sequence_length", "num_classes", "sigma_learned", "text_encoders", "vae")


def _has_all(t: dict, marker: tuple[str, ...]) -> bool:
    """Whether ``t`` holds every name of ``marker`` (a name ending in ``*`` is a prefix some tensor starts with)."""
    for name in marker:
        if name.endswith("*"):
            if not any(k.startswith(name[:-1]) for k in t):
                return False
        elif name not in t:
            return False
    return True


class Family:
    """The facts of one model family. Subclasses set the attributes and override what differs."""

    # --- identity
    name: ClassVar[str] = ""
    label: ClassVar[str] = ""  # as people write it: "PixArt", "SD3"
    variant_titles: ClassVar[dict] = {}  # variant -> how people write it after the label ("[klein] 9B"), for messages
    # --- status: False = recognised only (detection and ``inspect`` name it; Load Model and generate refuse it with
    # UNSUPPORTED_ARCHITECTURE naming it). Such a family is left out of :func:`.registry.families` (what the engines,
    # LoRA, the nodes and the editor read) until it becomes runnable: see HACKING.md "Model families".
    generation: ClassVar[bool] = True
    # --- detection: a file is this family when it holds every name of one marker (``prefix*`` = any key under it)
    original_markers: ClassVar[tuple[tuple[str, ...], ...]] = ()
    diffusers_markers: ClassVar[tuple[tuple[str, ...], ...]] = ()
    detect_order: ClassVar[int] = 100  # lower is tried first (markers of one family may be a subset of another's)
    folder_classes: ClassVar[tuple[str, ...]] = ()  # other transformer ``_class_name``s of its diffusers folders
    # variants whose distilled and base releases share one layout -> (the distilled name, the base name): a diffusers
    # folder's ``model_index.json`` ``is_distilled`` tells them apart where the weights cannot
    distilled_variants: ClassVar[dict] = {}
    # released files whose key/shape manifests (``../shared/reference/checkpoints/<name>.json``) detection is
    # checked against: manifest name -> the variant it must be named
    reference_manifests: ClassVar[dict] = {}
    # --- weights
    transformer_class: ClassVar[str] = ""  # the diffusers class (torch builds it; MLX ports the same config)
    transformer_module: ClassVar[str] = ""  # the diffusers module defining it (imported directly: no lazy import of all)
    keymap: ClassVar[tuple[keymaps.Rule, ...]] = ()  # original layout <-> diffusers names (converter and LoRA)
    dropped: ClassVar[tuple[str, ...]] = ()  # original tensors diffusers has no place for
    # how the original layout becomes diffusers': "keymap" (:attr:`keymap`), or the name of diffusers' own single-file
    # converter in ``diffusers.loaders.single_file_utils``, given empty placeholders for the tensors it pops
    # unconditionally and a file may lack (:attr:`converter_placeholders`)
    original_converter: ClassVar[str] = "keymap"
    converter_placeholders: ClassVar[tuple[str, ...]] = ()
    # --- parts
    text_encoders: ClassVar[tuple[TextEncoder, ...]] = ()
    latent_channels: ClassVar[int] = 4
    vae_scale_factor: ClassVar[int] = 8
    # the VAE's latents are cut into p x p patches stacked on the channels before sampling (FLUX.2: 2): the model
    # samples p*p*latent_channels channels at p times the VAE's scale factor (the VAE's encode/decode do the patching)
    latent_patch: ClassVar[int] = 1
    vae_class: ClassVar[str] = "AutoencoderKL"
    vae_by_latent: ClassVar[dict] = {}  # overrides of :data:`VAE_BY_LATENT`
    projected_clip: ClassVar[bool] = False  # every CLIP is built as CLIPTextModelWithProjection (its pooled output is projected)
    # --- sampling
    prediction: ClassVar[str | None] = None  # "flow", or None: the scheduler's (eps / v)
    flow_multiplier: ClassVar[float] = 1000.0  # a flow model's timestep is sigma times this
    float32_timestep: ClassVar[bool] = False  # its pipeline feeds the timestep in float32, not the model's dtype
    resolution_shift: ClassVar[bool] = False  # the flow shift follows the image size (Flux), unless given or by variant
    variant_shift: ClassVar[dict] = {}  # a word in the variant name -> its fixed flow shift (with resolution_shift)
    class_conditional: ClassVar[bool] = False  # prompts are class labels (its negative is the null class), no text encoder
    distilled_guidance: ClassVar[bool] = False  # guidance is a model input; a negative prompt only with CFG above 1
    square_only: ClassVar[bool] = False  # draws square images only
    text_mask: ClassVar[bool] = False  # its attention honours the text mask: padding no prompt attends to is dropped once a run
    patch_size: ClassVar[int | None] = None  # None: the config's
    size_multiple: ClassVar[int] = 0  # pixel sizes are multiples of this where coarser than VAE factor x patch (Qwen-Image 2.1)
    defaults: ClassVar[dict] = {"cfg": 4.5, "steps": 20, "sampler": "dpmpp_2m", "schedule": "normal"}
    variant_defaults: ClassVar[dict] = {}  # a word in the variant name -> overrides of :attr:`defaults`
    # --- engines
    mlx_port: ClassVar[str] = ""  # engines/mlx_models/<mlx_port>.py holds the port of :attr:`transformer_class`
    # --- LoRA (models/families/loras.py reads these; names are flat module paths, ``transformer_blocks_0_attn_to_q``)
    lora_names: ClassVar[tuple[str, str] | None] = None  # (a pattern of names only its LoRAs hold, what they are)
    lora_unless: ClassVar[str] = ""  # a pattern whose names, present too, make :attr:`lora_names` tell nothing
    lora_shared: ClassVar[tuple[str, ...]] = ()  # the name groups of loras.SHARED (joint, cross, self) it shares
    lora_rank: ClassVar[int] = 100  # its place among the candidates that shared names give (the more common first)
    lora_tells: ClassVar[str] = ""  # a pattern of names only it has among the families sharing a group
    lora_max_blocks: ClassVar[int | None] = None  # its most ``transformer_blocks``: a LoRA on more is another family's
    lora_widths: ClassVar[tuple[int, ...]] = ()  # model widths that tell this family from others with the same names
    lora_metadata: ClassVar[tuple[str, ...]] = ()  # words in a LoRA's training metadata naming this family
    # --- editor hints (web/spriteforge.js reads them from /spriteforge/capabilities)
    widgets_only: ClassVar[tuple[str, ...]] = ()  # node inputs only this family (and others naming them) uses
    widgets_unused: ClassVar[tuple[str, ...]] = ()  # node inputs this family ignores
    widget_labels: ClassVar[dict] = {}  # node input -> what it means for this family
    # --- reference images (editing: HACKING.md "Reference images"): how many its model call takes (0: it cannot
    # edit), the size each is VAE-encoded at (:meth:`reference_size`), the sampling defaults an edit run starts from
    max_references: ClassVar[int] = 0
    edit_title: ClassVar[str] = ""  # its models that edit, as people name them (messages; "" = :attr:`label`)
    reference_resolutions: ClassVar[tuple[tuple[int, int], ...]] = ()  # (w, h) a reference is scaled to: the nearest aspect
    reference_max_area: ClassVar[int | None] = None  # a larger reference is scaled down to this area (aspect kept)
    reference_min_side: ClassVar[int] = 0  # a smaller reference is refused (the pipeline's rule)
    reference_max_aspect: ClassVar[float | None] = None  # a longer/narrower reference is refused
    # how a reference reaches its size: "stretch" (resized to it, Kontext) or "crop" (scaled by
    # :meth:`reference_scaled`, then the grid's remainder cut evenly off each side: the FLUX.2 pipelines' centre crop)
    reference_fit: ClassVar[str] = "stretch"
    edit_defaults: ClassVar[dict] = {}  # overrides of :meth:`sampling_defaults` when references are given
    # its text encoder reads the reference images too (``encode(images=)``: Qwen-Image-Edit's vision tower): a
    # conditioning given references afterwards (the Reference Images node) is encoded again with them
    encode_sees_references: ClassVar[bool] = False

    # ------------------------------------------------------------------ detection
    def layout_of(self, t: dict[str, TensorInfo]) -> str | None:
        """``"original"`` or ``"diffusers"`` when ``t`` (prefix-less tensors) is this family's transformer, else None."""
        if any(_has_all(t, m) for m in self.original_markers):
            return "original"
        if any(_has_all(t, m) for m in self.diffusers_markers):
            return "diffusers"
        return None

    def detect(self, t: dict[str, TensorInfo], original: bool) -> Detection:
        """The :class:`Detection` (variant, full diffusers config, release extras) of this family's transformer ``t``."""
        raise NotImplementedError

    def names(self, t: dict[str, TensorInfo], original: bool):
        """``(name, blocks)``: a diffusers tensor name as this file spells it, and the number of blocks in one of
        diffusers' block lists (``transformer_blocks.``), either layout (names through :attr:`keymap`)."""
        if not original:
            return (lambda name: name), (lambda prefix: count(t.keys(), re.escape(prefix) + r"(\d+)\."))
        return (lambda name: keymaps.original_name(self.keymap, name),
                lambda prefix: count(t.keys(), re.escape(keymaps.original_prefix(self.keymap, prefix)) + r"(\d+)\."))

    def detection(self, variant: str, cfg: dict, original: bool) -> Detection:
        det = Detection(self.name, variant, "transformer", cfg, layout="original" if original else "diffusers")
        if not self.generation:
            det.extras["recognised_as"] = self.title(variant)
        return det

    def title(self, variant: str | None) -> str:
        """The family and variant as people write them (``FLUX.2 [klein] 9B``), for messages."""
        shown = self.variant_titles.get(variant, variant) if variant else ""
        return f"{self.label} {shown}" if shown else self.label

    @staticmethod
    def release(name: str) -> dict:
        """A shipped release config (``models/configs/<name>.json``)."""
        return configs.load(name)

    @staticmethod
    def finish(det: Detection, rel: dict) -> Detection:
        """``det`` with the release facts (scheduler, prediction, ...) its own extras do not set."""
        for k in RELEASE_KEYS:
            if k in rel and k not in det.extras:
                det.extras[k] = rel[k]
        return det

    @staticmethod
    def patch_config(cfg: dict, heads: int, head_dim: int, in_ch: int, out: int, patch: int, layers: int, **more) -> None:
        """The fields every patch-embedding DiT's config (PixArt, Sana, DiT) takes from the file's shapes, and ``more``."""
        cfg.update(num_attention_heads=heads, attention_head_dim=head_dim, in_channels=in_ch, out_channels=out // (patch * patch),
                   num_layers=layers, patch_size=patch, **more)

    def variant_distilled(self, variant: str | None, distilled: bool) -> str | None:
        """``variant`` named as its distilled or its base release (a folder's pipeline config says which)."""
        pair = self.distilled_variants.get(variant)
        return pair[0 if distilled else 1] if pair else variant

    def variant_from_folder(self, cfg: dict, pipeline_class: str, detected: str | None, vae_factor: int = 8) -> str | None:
        """A diffusers folder's variant: from its transformer's ``config.json``, pipeline class and VAE scale factor
        where the weights alone do not tell; ``detected`` (from the weights, or None) otherwise."""
        return detected

    def variant_from_config(self, det, cfg: dict, vae_factor: int = 8) -> None:
        """Refine ``det`` (a transformer read from its weights) with the ``config.json`` found with it, for settings
        the weights do not record; ``vae_factor``: the scale factor of the VAE it sits with."""

    def lora_claim(self, names, widths: dict | None) -> bool | None:
        """Whether a LoRA on module ``names`` (flat; ``widths``: their ``in_features`` where known), whose names an
        earlier rule cannot settle, is this family's: True (it is), None (it may be: another family's names match
        too and nothing tells them apart), False (default: the names decide)."""
        return False

    # ------------------------------------------------------------------ parts
    @property
    def needs(self) -> list[str]:
        """What a bare transformer file of this family still needs: its VAE and text encoders."""
        return ["vae", *(te.key for te in self.text_encoders)]

    def text_encoders_of(self, variant: str | None) -> tuple[TextEncoder, ...]:
        """The text-encoder slots ``variant`` uses (a family whose variants use different encoders narrows them)."""
        return self.text_encoders

    def needs_of(self, variant: str | None) -> list[str]:
        """What a bare transformer file of ``variant`` still needs."""
        return ["vae", *(te.key for te in self.text_encoders_of(variant))]

    def vae_config_name(self, variant: str | None, latent: int) -> str:
        """The shipped KL VAE config (``models/configs``) this family's release uses for ``latent`` channels."""
        latent = 16 if latent == 16 else 4  # the KL VAEs shipped: 16 channels (SD3, Flux) or 4
        return self.vae_by_latent.get(latent) or VAE_BY_LATENT[latent]

    def release_vae(self, variant: str | None) -> str:
        """The shipped config of the VAE this family's release comes with."""
        return self.vae_config_name(variant, self.latent_channels)

    def mlx_ports(self) -> tuple[str, ...]:
        """The MLX port keys this family needs: its transformer, its VAE, its text encoders."""
        tes = dict.fromkeys(TEXT_ENCODER_PORTS[te.key] for te in self.text_encoders)
        return (self.name, VAE_PORTS[self.vae_class], *tes)

    # ------------------------------------------------------------------ sampling
    def prediction_of(self, sched: dict) -> str:
        """``flow`` for the rectified-flow families, else the scheduler's ``v`` or ``eps``."""
        if self.prediction:
            return self.prediction
        return "v" if sched.get("prediction_type", "epsilon") == "v_prediction" else "eps"

    def flow_shift(self, sched: dict) -> float | None:
        """The sampling schedule's shift, from the release's scheduler config (None: no fixed shift)."""
        return None

    def mu_args(self, sched: dict) -> dict:
        """With :attr:`resolution_shift`: the line of the image-size shift mu (``FlowSchedule.flux``'s keywords:
        base/max sequence length and shift) from the release's scheduler config ``sched``; {} = Flux's line."""
        return {}

    def handle_extras(self, det: Detection, cfg: dict) -> dict:
        """Family facts a :class:`~spriteforge.engines.base.ModelHandle`'s extras carry (from the loaded config)."""
        return {}

    def is_fill(self, variant: str | None, in_channels: int) -> bool:
        """Whether the model is the family's native inpaint model (its input carries the masked image and mask)."""
        return False

    def check_input_channels(self, in_channels: int) -> None:
        """UNSUPPORTED_ARCHITECTURE when a model of this family with ``in_channels`` inputs cannot generate."""

    # ------------------------------------------------------------------ prompts and the model call
    # Written once for every engine, as the samplers are: ``te`` is the engine's
    # :class:`~spriteforge.engines.text_encoding.TextEncoding` and ``den`` its
    # :class:`~spriteforge.engines.denoiser.Denoiser`; a family calls only the methods their "what a family calls"
    # sections list (the encoders, ``ops`` and a few array calls), so no framework is imported here.
    def encode(self, te, prompts: list[str], cond, *, max_length: int | None = None, instruction=False,
               class_labels=None, negative: bool = False, images=None) -> None:
        """Fill ``cond`` (a :class:`~spriteforge.engines.base.Conditioning`) for ``prompts`` with ``te``'s encoders:
        how this family's text-encoder outputs combine. ``instruction``: Sana's complex human instruction (True, a
        list of lines, or False); ``negative`` marks the unconditional prompt; ``images``: the run's reference images
        as given (a list of numpy float32 ``[H,W,3]`` in 0..1, not resized), or None, for a family whose text
        encoder sees them (Qwen-Image-Edit's vision tower); their latents reach :meth:`forward` either way."""
        raise SpriteForgeError(BAD_INPUT, f"family {te.handle.family!r} has no text encoding in the {te.engine_name} engine.")

    def forward(self, den, x, t, cond: dict):
        """The transformer's output (eps, v or flow velocity, possibly with learned-sigma channels) for latents ``x``
        [N,C,h,w] at model timesteps ``t`` [N] with ``cond``'s arrays (``embeds``, ``mask``, ``pooled``, ``labels``,
        ``N`` rows each): which keywords the transformer takes and how its input and output are shaped. A family
        with :attr:`max_references` reads the reference latents with ``den.references(cond)`` (``[N,C,h_i,w_i]``
        each, VAE-scaled as ``vae_encode`` gives them), puts their tokens after the image's and returns the output
        of the image's tokens only."""
        raise SpriteForgeError(BAD_INPUT, f"unknown family {den.handle.family!r}.")

    def num_classes(self, handle) -> int:
        """A class-conditional family's class count (the null class, its unconditional input, is this number)."""
        raise NotImplementedError

    def guide(self, ops, uncond, cond, scale: float):
        """Classifier-free guidance on the network's outputs ``uncond`` / ``cond`` [N,C,h,w] (engine arrays, ``ops``
        their operations): ``uncond + scale (cond - uncond)`` unless the family's pipeline combines them otherwise."""
        return uncond + (cond - uncond) * scale

    def sampling_defaults(self, variant: str | None) -> dict:
        """CFG scale, steps, sampler and schedule for ``variant``."""
        d = dict(self.defaults)
        for over in _by_variant(self.variant_defaults, variant):
            d.update(over)
        return d

    def edit_sampling_defaults(self, variant: str | None) -> dict:
        """:meth:`sampling_defaults` for a run with reference images (:attr:`edit_defaults` over them; ``guidance``
        too where the family's edit guidance differs)."""
        return {**self.sampling_defaults(variant), **self.edit_defaults}

    # ------------------------------------------------------------------ reference images
    def references_of(self, variant: str | None, in_channels: int = 0) -> int:
        """How many reference images a model of ``variant`` (``in_channels`` inputs) takes: 0 = none (it cannot edit)."""
        return self.max_references

    def reference_scaled(self, width: int, height: int, *, auto: bool = True) -> tuple[int, int]:
        """The size a ``width`` x ``height`` reference is scaled to before :meth:`reference_size` rounds it to the grid
        (``auto``: to the family's trained sizes, :attr:`reference_resolutions` (the nearest aspect) /
        :attr:`reference_max_area` (scaled down above it); otherwise as given). BAD_INPUT for a reference the family's
        pipeline refuses (:attr:`reference_min_side`, :attr:`reference_max_aspect`)."""
        w, h = int(width), int(height)
        if w < self.reference_min_side or h < self.reference_min_side:
            raise SpriteForgeError(BAD_INPUT, f"a {w}x{h} reference image is too small: {self.label} takes references of at "
                                   f"least {self.reference_min_side} pixels a side. Scale it up first (nearest-neighbour "
                                   "keeps pixel art sharp).", details={"width": w, "height": h, "min_side": self.reference_min_side})
        if self.reference_max_aspect and max(w / h, h / w) > self.reference_max_aspect:
            raise SpriteForgeError(BAD_INPUT, f"a {w}x{h} reference image is too long or narrow: {self.label} takes aspect "
                                   f"ratios up to {self.reference_max_aspect:g}:1. Crop or pad it first.",
                                   details={"width": w, "height": h})
        if auto and self.reference_resolutions:
            aspect = w / h
            _, w, h = min((abs(aspect - rw / rh), rw, rh) for rw, rh in self.reference_resolutions)
        if auto and self.reference_max_area and w * h > self.reference_max_area:
            scale = (self.reference_max_area / (w * h)) ** 0.5
            w, h = int(w * scale), int(h * scale)
        return w, h

    def reference_size(self, width: int, height: int, multiple: int, *, auto: bool = True) -> tuple[int, int]:
        """The pixel size a ``width`` x ``height`` reference is VAE-encoded at, a multiple of ``multiple`` (the model's
        latent grid), as the family's pipeline sizes it: :meth:`reference_scaled`, rounded down to the grid (how the
        image gets there: :attr:`reference_fit`)."""
        w, h = self.reference_scaled(width, height, auto=auto)
        w, h = (w // multiple) * multiple, (h // multiple) * multiple
        if w < multiple or h < multiple:
            raise SpriteForgeError(BAD_INPUT, f"a {width}x{height} reference image is smaller than one patch ({multiple} "
                                   "pixels) of this model. Scale it up first.", details={"width": width, "height": height})
        return w, h

    def resolution_mu(self, image_seq_len: int, steps: int) -> float | None:
        """With :attr:`resolution_shift`: the shift ``mu`` (``sigma' = e^mu / (e^mu + 1/t - 1)``) for an image of
        ``image_seq_len`` latent tokens sampled in ``steps`` steps; None: Flux's rule (``samplers.schedules.flux_mu``)."""
        return None

    def fixed_shift(self, variant: str | None) -> float | None:
        """The flow shift ``variant`` always samples with (Flux schnell: 1.0), or None."""
        return next(iter(_by_variant(self.variant_shift, variant)), None)


def _by_variant(table: dict, variant: str | None) -> list:
    """The values of ``table`` whose key is a word in ``variant``'s name (any case)."""
    low = (variant or "").lower()
    return [v for word, v in table.items() if word in low]


def learned_sigma(cfg: dict) -> bool:
    """Whether a config's model predicts its variance too (twice the input channels out)."""
    return int(cfg.get("out_channels") or 0) == 2 * int(cfg.get("in_channels") or 0)


__all__ = ["Family", "TextEncoder", "TEXT_ENCODER_PORTS", "VISION_TOWERS", "VAE_PORTS", "VAE_BY_LATENT", "learned_sigma"]
