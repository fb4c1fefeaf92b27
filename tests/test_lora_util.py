"""Helpers for the LoRA tests: tiny model handles, LoRA files written in every format, the formula in numpy.

(No tests here; the module name keeps it with the LoRA tests.)
"""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import save_file

from spriteforge.engines.base import ModelHandle

FAMILY_BUILDERS = ("pixart", "sd3", "flux", "sana", "dit", "zimage", "flux2", "qwenimage")


def tiny():
    import spriteforge.tests.tiny_models as tm

    return tm


def engine(name: str = "torch"):
    from spriteforge.engines import engine_class
    from spriteforge.engines.devices import DeviceInfo
    from spriteforge.engines.policy import decide

    dev = DeviceInfo(kind="cpu") if name == "torch" else DeviceInfo(kind="mlx", backend="mlx", metal=False)
    return engine_class(name)(dev, decide(dev))


def engine_without_lora():
    """A real torch engine that declares no LoRA support (capabilities are declared, never guessed)."""
    import dataclasses

    from spriteforge.engines.torch_engine import TorchEngine

    class NoLoRAEngine(TorchEngine):
        name = "no-lora"

        @property
        def capabilities(self):
            return dataclasses.replace(super().capabilities, lora=False)

    base = engine("torch")
    return NoLoRAEngine(base.device, base.policy)


def build(family: str, seed: int = 0, variant: str | None = None):
    tm = tiny()
    if family == "sd3":
        return tm.build_sd3(variant or "sd3.5-medium", seed=seed)
    if family == "flux2":
        from spriteforge.tests.tiny_flux2 import build_flux2

        return build_flux2(variant if variant in ("klein", "dev") else "klein", seed=seed)
    return getattr(tm, f"build_{family}")(seed=seed)


_CACHE: dict = {}


def handle(family: str, *, te: tuple = (), seed: int = 0, engine_name: str = "torch", variant: str | None = None,
           fresh: bool = False) -> ModelHandle:
    """A tiny handle; cached per arguments (LoRA application never changes it) unless ``fresh``."""
    key = (family, tuple(te), seed, engine_name, variant)
    if not fresh and key in _CACHE:
        return _CACHE[key]
    h = _handle(family, te=te, seed=seed, engine_name=engine_name, variant=variant)
    if not fresh:
        _CACHE[key] = h
    return h


def _handle(family, *, te, seed, engine_name, variant):
    tm = tiny()
    tes = {}
    for k in te:
        if k == "t5":
            tes[k] = tm.build_t5(seed=seed + 1).eval()
        elif k in ("clip_l", "clip_g"):
            tes[k] = tm.build_clip(k, seed=seed + 2).eval()
        elif k == "gemma":
            tes[k] = tm.build_gemma(seed=seed + 3).eval()
    return ModelHandle(family=family, variant=variant or "tiny", engine=engine(engine_name),
                       transformer=build(family, seed, variant), text_encoders=tes)


def inputs(family: str, model, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    cfg = model.config

    def r(*s):
        return torch.randn(*s, generator=g)

    t = torch.tensor([500.0])
    if family == "pixart":
        kw = dict(hidden_states=r(1, cfg.in_channels, 8, 8), encoder_hidden_states=r(1, 5, cfg.caption_channels), timestep=t,
                  added_cond_kwargs={"resolution": None, "aspect_ratio": None})
        if cfg.use_additional_conditions:
            kw["added_cond_kwargs"] = {"resolution": torch.tensor([[64.0, 64.0]]), "aspect_ratio": torch.tensor([[1.0]])}
        return kw
    if family == "sd3":
        return dict(hidden_states=r(1, cfg.in_channels, 8, 8), encoder_hidden_states=r(1, 5, cfg.joint_attention_dim),
                    pooled_projections=r(1, cfg.pooled_projection_dim), timestep=t)
    if family == "flux":
        kw = dict(hidden_states=r(1, 16, cfg.in_channels), encoder_hidden_states=r(1, 5, cfg.joint_attention_dim),
                  pooled_projections=r(1, cfg.pooled_projection_dim), timestep=t / 1000, img_ids=torch.zeros(16, 3),
                  txt_ids=torch.zeros(5, 3))
        if cfg.guidance_embeds:
            kw["guidance"] = torch.tensor([3.5])
        return kw
    if family == "sana":
        return dict(hidden_states=r(1, cfg.in_channels, 8, 8), encoder_hidden_states=r(1, 5, cfg.caption_channels), timestep=t)
    if family == "dit":
        return dict(hidden_states=r(1, cfg.in_channels, 8, 8), timestep=t, class_labels=torch.tensor([3]))
    if family == "zimage":  # a list of latents (C, 1, H, W) and of captions (tokens, width), t = 1 - sigma
        return dict(x=[r(cfg.in_channels, 1, 8, 8)], t=t / 1000, cap_feats=[r(5, cfg.cap_feat_dim)])
    if family == "flux2":
        ids = torch.tensor([[0.0, i, j, 0.0] for i in range(4) for j in range(4)])
        kw = dict(hidden_states=r(1, 16, cfg.in_channels), encoder_hidden_states=r(1, 5, cfg.joint_attention_dim), timestep=t / 1000,
                  img_ids=ids, txt_ids=torch.tensor([[0.0, 0.0, 0.0, k] for k in range(5)]))
        if cfg.guidance_embeds:
            kw["guidance"] = torch.tensor([4.0])
        return kw
    if family == "qwenimage":
        return dict(hidden_states=r(1, 16, cfg.in_channels), encoder_hidden_states=r(1, 5, cfg.joint_attention_dim),
                    timestep=t / 1000, img_shapes=[[(1, 4, 4)]])
    raise ValueError(family)


@torch.no_grad()
def run(family: str, model, seed: int = 0):
    out = model(**inputs(family, model, seed), return_dict=False)[0]
    return torch.stack(out) if isinstance(out, list) else out


# -- writing LoRA files -------------------------------------------------------------

PARAMS = {
    "kohya": (".lora_down.weight", ".lora_up.weight"),
    "onetrainer": (".lora_down.weight", ".lora_up.weight"),
    "comfyui": (".lora_down.weight", ".lora_up.weight"),
    "comfyui_ab": (".lora_A.weight", ".lora_B.weight"),
    "diffusers": (".lora_A.weight", ".lora_B.weight"),
    "peft": (".lora_A.weight", ".lora_B.weight"),
}


def module_key(fmt: str, name: str, component: str = "transformer") -> str:
    flat = name.replace(".", "_")
    if component == "transformer":
        return {
            "kohya": "lora_unet_" + flat,
            "onetrainer": "lora_transformer_" + flat,
            "comfyui": "diffusion_model." + name,
            "comfyui_ab": "diffusion_model." + name,
            "diffusers": "transformer." + name,
            "peft": name,
            "lycoris": "lycoris_" + flat,
        }[fmt]
    idx = {"te1": "1", "te2": "2", "te3": "3"}[component]
    if fmt in ("kohya", "onetrainer", "lycoris"):
        return f"lora_te{idx}_" + flat
    return ("text_encoder." if idx == "1" else f"text_encoder_{idx}.") + name


class Writer:
    """Builds a LoRA state dict module by module and keeps the numpy ΔW of each (the formula, written independently)."""

    def __init__(self, seed: int = 0):
        self.g = torch.Generator().manual_seed(seed)
        self.sd: dict[str, torch.Tensor] = {}
        self.delta: dict[str, np.ndarray] = {}  # module key -> ΔW (alpha/rank applied), numpy float64
        self.dora: dict[str, np.ndarray] = {}

    def r(self, *shape, scale=0.5):
        return torch.randn(*shape, generator=self.g) * scale

    def lora(self, fmt, name, shape, rank=4, alpha=None, component="transformer", dora=None):
        out, rest = shape[0], shape[1:]
        key = module_key(fmt, name, component)
        dn, up = PARAMS[fmt]
        down = self.r(rank, *rest)
        upw = self.r(out, rank, *([1] * (len(rest) - 1)))
        self.sd[key + dn] = down
        self.sd[key + up] = upw
        if alpha is not None:
            self.sd[key + ".alpha"] = torch.tensor(float(alpha))
        s = (alpha / rank) if alpha is not None else 1.0
        d = upw.double().reshape(out, rank).numpy() @ down.double().reshape(rank, -1).numpy() * s
        self.delta[key] = d.reshape(shape)
        if dora == "peft":
            m = self.r(out).abs() + 0.5
            self.sd[key + ".lora_magnitude_vector"] = m
            self.dora[key] = m.double().numpy()
        elif dora == "lycoris":
            m = self.r(1, rest[0], *([1] * (len(rest) - 1))).abs() + 0.5
            self.sd[key + ".dora_scale"] = m
            self.dora[key] = m.double().numpy()
        return key

    def loha(self, fmt, name, shape, rank=4, alpha=2.0, component="transformer"):
        out = shape[0]
        inn = int(np.prod(shape[1:]))
        key = module_key(fmt, name, component)
        t = {k: self.r(*s) for k, s in (("w1_a", (out, rank)), ("w1_b", (rank, inn)), ("w2_a", (out, rank)), ("w2_b", (rank, inn)))}
        for k, v in t.items():
            self.sd[f"{key}.hada_{k}"] = v
        self.sd[key + ".alpha"] = torch.tensor(float(alpha))
        n = {k: v.double().numpy() for k, v in t.items()}
        self.delta[key] = ((n["w1_a"] @ n["w1_b"]) * (n["w2_a"] @ n["w2_b"]) * (alpha / rank)).reshape(shape)
        return key

    def lokr(self, fmt, name, shape, factor=2, rank=2, alpha=1.0, factorised=True, component="transformer"):
        out, inn = shape[0], shape[1]
        key = module_key(fmt, name, component)
        w1 = self.r(factor, factor)
        self.sd[key + ".lokr_w1"] = w1
        if factorised:
            w2a, w2b = self.r(out // factor, rank), self.r(rank, inn // factor)
            self.sd[key + ".lokr_w2_a"] = w2a
            self.sd[key + ".lokr_w2_b"] = w2b
            w2 = w2a.double().numpy() @ w2b.double().numpy()
            s = alpha / rank
        else:
            w2t = self.r(out // factor, inn // factor)
            self.sd[key + ".lokr_w2"] = w2t
            w2 = w2t.double().numpy()
            s = 1.0
        self.sd[key + ".alpha"] = torch.tensor(float(alpha))
        self.delta[key] = np.kron(w1.double().numpy(), w2) * s
        return key

    def save(self, path, metadata=None):
        save_file({k: v.contiguous() for k, v in self.sd.items()}, str(path), metadata=metadata)
        return path


def expected_dora(W: np.ndarray, d: np.ndarray, m: np.ndarray, strength: float) -> np.ndarray:
    """DoRA written out for the tests: row norms for a (out,) magnitude, column norms otherwise."""
    V = W + d
    if m.ndim == 1:
        n = np.sqrt((V.reshape(V.shape[0], -1) ** 2).sum(1)).reshape((-1,) + (1,) * (V.ndim - 1))
        Wd = m.reshape(n.shape) * V / n
    else:
        axes = (0,) + tuple(range(2, V.ndim))
        n = np.sqrt((V ** 2).sum(axis=axes, keepdims=True))
        Wd = m.reshape(n.shape) * V / n
    return W + strength * (Wd - W)


_STATES: dict = {}


def state(model, clone: bool = True) -> dict:
    """Every tensor of ``model`` with its LoRA patches applied (a clone, cached for unpatched cached models)."""
    from spriteforge.engines.torch_models.lora import merged_state_dict

    if any(model is h.transformer for h in _CACHE.values()):
        if id(model) not in _STATES:
            _STATES[id(model)] = {k: v.detach().clone() for k, v in merged_state_dict(model).items()}
        return _STATES[id(model)]
    sd = merged_state_dict(model)
    return {k: v.detach().clone() for k, v in sd.items()} if clone else sd


def check_weights(base_sd: dict, new_model, expected: dict, rtol=1e-5, atol=1e-5):
    """``expected``: param name -> numpy weight. Every other tensor must be bit-identical to ``base_sd``."""
    new_sd = state(new_model, clone=False)
    assert set(new_sd) == set(base_sd)
    for k, v in new_sd.items():
        if k in expected:
            np.testing.assert_allclose(v.double().numpy(), expected[k], rtol=rtol, atol=atol, err_msg=k)
        else:
            assert torch.equal(v, base_sd[k]), f"{k} changed but no LoRA targets it"
