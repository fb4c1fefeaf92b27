"""Parse the tensor names of every LoRA format into modules: component, module name, parameters.

Formats recognised (the *naming*; the algorithm — LoRA, LoHa, LoKr, full diff, DoRA — is
read from the parameter names, whatever the naming):

======================  ===========================================================  =====================
format                  module prefix                                                parameters
======================  ===========================================================  =====================
``kohya``               ``lora_unet_<name_with_underscores>``, ``lora_te[1-3]_...``   ``lora_down``/``lora_up``, ``alpha``
``onetrainer``          ``lora_transformer_<name>``, ``lora_te[1-3]_...``             ``lora_down``/``lora_up``, ``alpha``
``comfyui``             ``diffusion_model.<dotted>`` (also ``model.diffusion_model.``)  either
``diffusers``           ``transformer.<dotted>``, ``text_encoder[_2|_3].<dotted>``     ``lora_A``/``lora_B``
``peft``                bare ``<dotted>`` or ``base_model.model.<dotted>``             ``lora_A``/``lora_B``
``lycoris``             ``lycoris_<name>`` (SimpleTuner) or any of the above          ``hada_*``, ``lokr_*``, ``diff``
======================  ===========================================================  =====================

Module names are compared in *underscore form* (``.`` → ``_``), so kohya's flattened
names and dotted names meet on the same string (:func:`underscore`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# parameter suffix -> role; longest first when matching
_PARAMS = [
    (".lora_A.default.weight", "down"),
    (".lora_B.default.weight", "up"),
    (".lora_linear_layer.down.weight", "down"),
    (".lora_linear_layer.up.weight", "up"),
    (".lora_magnitude_vector.default.weight", "dora"),
    (".lora_magnitude_vector.default", "dora"),
    (".lora_magnitude_vector.weight", "dora"),
    (".lora_magnitude_vector", "dora"),
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".lora_mid.weight", "mid"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    (".dora_scale", "dora"),
    (".alpha", "alpha"),
    (".hada_w1_a", "w1a_h"),
    (".hada_w1_b", "w1b_h"),
    (".hada_w2_a", "w2a_h"),
    (".hada_w2_b", "w2b_h"),
    (".hada_t1", "t1_h"),
    (".hada_t2", "t2_h"),
    (".lokr_w1_a", "w1a_k"),
    (".lokr_w1_b", "w1b_k"),
    (".lokr_w2_a", "w2a_k"),
    (".lokr_w2_b", "w2b_k"),
    (".lokr_w1", "w1_k"),
    (".lokr_w2", "w2_k"),
    (".lokr_t2", "t2_k"),
    (".diff_b", "diff_b"),
    (".diff", "diff"),
    (".w_norm", "w_norm"),
    (".b_norm", "b_norm"),
    (".bias_indices", "unsupported"),
    (".bias_values", "unsupported"),
    (".on_input", "unsupported"),
    (".lora_B.bias", "bias_b"),
]
_PARAMS.sort(key=lambda kv: -len(kv[0]))

# component prefixes: (prefix, component, naming). Text-encoder components are te1..te3.
_PREFIXES = [
    ("lora_unet_", "transformer", "kohya"),
    ("lora_transformer_", "transformer", "onetrainer"),
    ("lycoris_", "transformer", "lycoris"),
    ("lora_te1_", "te1", "kohya"),
    ("lora_te2_", "te2", "kohya"),
    ("lora_te3_", "te3", "kohya"),
    ("lora_te_", "te1", "kohya"),
    ("model.diffusion_model.", "transformer", "comfyui"),
    ("diffusion_model.", "transformer", "comfyui"),
    ("base_model.model.", "transformer", "peft"),
    ("transformer.", "transformer", "diffusers"),
    ("unet.", "transformer", "diffusers"),
    ("text_encoder.", "te1", "diffusers"),
    ("text_encoder_2.", "te2", "diffusers"),
    ("text_encoder_3.", "te3", "diffusers"),
    ("text_encoders.clip_l.transformer.", "te1", "comfyui"),
    ("text_encoders.clip_g.transformer.", "te2", "comfyui"),
    ("text_encoders.t5xxl.transformer.", "te3", "comfyui"),
]


def underscore(name: str) -> str:
    """The flattened form every format agrees on: ``a.b_c.0`` → ``a_b_c_0``."""
    return name.replace(".", "_")


@dataclass
class LoRAModule:
    """One adapted layer of a LoRA file."""

    key: str  # the raw module key (file names minus the parameter suffix)
    component: str  # "transformer" | "te1" | "te2" | "te3"
    body: str  # module name inside the component, as the file spells it
    naming: str  # kohya | onetrainer | comfyui | diffusers | peft | lycoris
    params: dict = field(default_factory=dict)  # role -> full tensor name

    @property
    def algorithm(self) -> str:
        p = self.params
        if "w1a_h" in p:
            return "loha"
        if "w1_k" in p or "w1a_k" in p:
            return "lokr"
        if "down" in p and "up" in p:
            return "lora"
        if "diff" in p:
            return "full"
        return "unknown"

    @property
    def dora(self) -> bool:
        return "dora" in self.params

    @property
    def flat(self) -> str:
        return underscore(self.body)


def split_key(key: str) -> tuple[str, str] | None:
    """``(module key, role)`` of a tensor name, or None when it is not an adapter tensor."""
    for suffix, role in _PARAMS:
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return None


def split_component(module_key: str) -> tuple[str, str, str]:
    """``(component, body, naming)`` of a module key."""
    for prefix, comp, naming in _PREFIXES:
        if module_key.startswith(prefix):
            return comp, module_key[len(prefix):], naming
    return "transformer", module_key, "peft"


def group_modules(keys) -> tuple[list[LoRAModule], list[str]]:
    """The adapted modules of a LoRA file, and the tensor names that are no adapter part."""
    mods: dict[str, LoRAModule] = {}
    stray: list[str] = []
    for key in keys:
        sk = split_key(key)
        if sk is None:
            stray.append(key)
            continue
        mkey, role = sk
        m = mods.get(mkey)
        if m is None:
            comp, body, naming = split_component(mkey)
            m = mods[mkey] = LoRAModule(mkey, comp, body, naming)
        m.params[role] = key
    return list(mods.values()), stray


def file_format(modules: list[LoRAModule]) -> dict:
    """Naming, algorithms and DoRA use of a list of modules (for `inspect` and messages)."""
    naming = Counter(m.naming for m in modules)
    algos = Counter(m.algorithm for m in modules)
    fmt = naming.most_common(1)[0][0] if naming else "unknown"
    if fmt in ("kohya", "peft", "diffusers") and (algos.get("loha") or algos.get("lokr")):
        fmt = f"lycoris ({fmt} naming)"
    return {
        "format": fmt,
        "namings": dict(naming),
        "algorithms": dict(algos),
        "dora": any(m.dora for m in modules),
    }
