"""The device policy: data plus pure functions.

For a :class:`~spriteforge.engines.devices.DeviceInfo` it decides the weight,
compute, VAE and text-encoder dtypes, attention slicing and VAE tiling/slicing, bf16
support, environment variables to set before torch is imported, and hints for the
user, with a reason for every decision. Every decision is one the engines apply
(``tests/test_policy.py`` checks that each field is read). Every rule is a row of :data:`RULES` (or
of the architecture and memory tables above it), evaluated by one pure function
(:func:`apply_rules`), so it can be read, tested with simulated devices, and changed in one place.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .devices import DeviceInfo

GiB = 1024**3

# ROCm architectures where fp16/bf16 diffusion gives NaNs or black images: run fp32.
ROCM_FP32_ARCHS = {
    "gfx1103": "Radeon 780M/760M (Phoenix) iGPUs produce NaNs/black images in fp16 and bf16 diffusion",
    "gfx1035": "Radeon 680M (Rembrandt) iGPUs produce NaNs/black images in half precision",
}
# ROCm architectures with fast bf16 (CDNA and RDNA3+).
ROCM_BF16_ARCHS = {"gfx90a", "gfx940", "gfx941", "gfx942", "gfx950", "gfx1100", "gfx1101", "gfx1102", "gfx1150", "gfx1151", "gfx1200", "gfx1201"}
# Archs where AOTriton's flash/mem-efficient attention is experimental (needs the opt-in variable).
ROCM_AOTRITON_EXPERIMENTAL = {"gfx1100", "gfx1101", "gfx1102", "gfx1150", "gfx1151", "gfx1200", "gfx1201"}
# Consumer archs not in ROCm's support list, with the HSA_OVERRIDE_GFX_VERSION that makes them use a supported one.
ROCM_HSA_OVERRIDE = {
    "gfx1031": "10.3.0",
    "gfx1032": "10.3.0",
    "gfx1034": "10.3.0",
    "gfx1035": "10.3.0",
    "gfx1036": "10.3.0",
    "gfx1103": "11.0.0",
    "gfx1150": "11.0.0",
}

LOW_VRAM = 6 * GiB  # at or below: attention slicing and VAE tiling
MID_VRAM = 12 * GiB  # at or below: VAE tiling for large images


@dataclass(frozen=True)
class Policy:
    device: DeviceInfo
    weight_dtype: str
    compute_dtype: str
    vae_dtype: str
    text_encoder_dtype: str
    attention_slicing: bool  # the denoiser runs the CFG batch one row at a time
    vae_tiling: bool
    vae_slicing: bool
    bf16: bool
    env: dict = field(default_factory=dict)
    hints: tuple = ()
    reasons: tuple = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["device"] = self.device.to_dict()
        d["hints"] = list(self.hints)
        d["reasons"] = list(self.reasons)
        return d


def _slicing(mem: int, unified: bool, reasons: list) -> tuple[bool, bool, bool]:
    """(attention_slicing, vae_tiling, vae_slicing) from the memory the device can use."""
    if not mem:
        return False, False, False
    if unified:
        # Unified memory is shared with the OS: count about two thirds of it.
        mem = int(mem * 2 / 3)
    if mem <= LOW_VRAM:
        reasons.append(f"{mem / GiB:.1f} GiB usable: attention slicing, VAE tiling and slicing on")
        return True, True, True
    if mem <= MID_VRAM:
        reasons.append(f"{mem / GiB:.1f} GiB usable: VAE tiling on for large images")
        return False, True, True
    return False, False, False


# --------------------------------------------------------------------------- the rules
#
# A rule: ``group`` (rules of one group are alternatives: the first that holds is used; None: every rule that
# holds is used), ``when`` (conditions on the device's facts and the decisions so far, all must hold), ``then``
# (decisions: dtypes, bf16; ``env``: variables to set; ``hint``: a line for the user) and
# ``reason`` (said for every decision; ``{name}`` fills in a fact). Read top to bottom, in this order.


@dataclass(frozen=True)
class Rule:
    group: str | None
    when: tuple  # of (fact, op, value), op one of "==", "in", "not in", ">="
    then: dict
    reason: str | None = None


def _dtypes(weights: str, vae: str | None = None) -> dict:
    """Weight, compute and text-encoder dtype ``weights``; VAE ``vae`` when given."""
    d = {"weight_dtype": weights, "compute_dtype": weights, "text_encoder_dtype": weights}
    return d if vae is None else {**d, "vae_dtype": vae}


_VAE_OVERFLOW = "(fp16 VAEs overflow to NaN on large images)"
_KINDS = ("cuda", "rocm", "mps", "mlx")

RULES: tuple[Rule, ...] = (
    # NVIDIA CUDA: by compute capability
    Rule("cuda dtype", (("kind", "==", "cuda"), ("cc", ">=", (8, 0))), {**_dtypes("bfloat16"), "bf16": True},
         "CUDA sm_{sm} has fast bf16: bf16 weights and compute"),
    Rule("cuda dtype", (("kind", "==", "cuda"), ("cc", ">=", (7, 0))), _dtypes("float16"),
         "CUDA sm_{sm} has fp16 tensor cores but no bf16: fp16"),
    Rule("cuda dtype", (("kind", "==", "cuda"),), _dtypes("float32"), "CUDA sm_{sm} has slow half precision: fp32"),
    # the 4-channel KL VAEs overflow in fp16; bf16 is safe where present
    Rule("cuda vae", (("kind", "==", "cuda"), ("bf16", "==", True)), {"vae_dtype": "bfloat16"}, "VAE in bfloat16 " + _VAE_OVERFLOW),
    Rule("cuda vae", (("kind", "==", "cuda"),), {"vae_dtype": "float32"}, "VAE in float32 " + _VAE_OVERFLOW),
    # AMD ROCm: by GPU architecture
    Rule("rocm dtype", (("kind", "==", "rocm"), ("arch", "in", ROCM_FP32_ARCHS)), _dtypes("float32", "float32"),
         "ROCm {arch}: fp32 everywhere ({fp32_why})"),
    Rule("rocm dtype", (("kind", "==", "rocm"), ("arch", "in", ROCM_BF16_ARCHS)), {**_dtypes("bfloat16", "float32"), "bf16": True},
         "ROCm {arch} has fast bf16: bf16 weights and compute, VAE in fp32"),
    Rule("rocm dtype", (("kind", "==", "rocm"),), _dtypes("float16", "float32"),
         "ROCm {arch_or_unknown}: fp16 weights and compute, VAE in fp32"),
    Rule(None, (("kind", "==", "rocm"), ("arch", "in", ROCM_AOTRITON_EXPERIMENTAL)),
         {"env": {"TORCH_ROCM_AOTRITON_ENABLE_EXPERIMENTAL": "1"}},
         "{arch}: AOTriton flash attention is experimental; opt in before torch is imported"),
    Rule(None, (("kind", "==", "rocm"), ("arch", "in", ROCM_HSA_OVERRIDE)),
         {"hint": "{arch} is not on ROCm's support list; if kernels fail to load, set "
                  "HSA_OVERRIDE_GFX_VERSION={hsa_override} before starting ComfyUI."}),
    # Apple MPS
    Rule(None, (("kind", "==", "mps"),), _dtypes("float16"), "MPS: fp16 weights and compute"),
    Rule("mps bf16", (("kind", "==", "mps"), ("mac", ">=", (14,))), {"bf16": True},
         "macOS {mac_text} supports bf16 on MPS (used for bf16 files)"),
    Rule("mps bf16", (("kind", "==", "mps"),), {}, "bf16 on MPS needs macOS 14: bf16 files are cast to fp16"),
    Rule(None, (("kind", "==", "mps"),), {"vae_dtype": "float32", "env": {"PYTORCH_ENABLE_MPS_FALLBACK": "1"}},
         "MPS: VAE in fp32 (fp16 VAEs give black images on MPS)"),
    # Apple MLX
    Rule(None, (("kind", "==", "mlx"), ("metal", "==", True), ("mac", ">=", (14,))), {"bf16": True}),
    Rule("mlx", (("kind", "==", "mlx"), ("metal", "==", True)), _dtypes("float16", "float32"),
         "MLX on Metal: fp16 weights/compute, VAE in fp32"),
    Rule("mlx", (("kind", "==", "mlx"),), _dtypes("float32", "float32"), "MLX on the CPU: fp32"),
    # anything else: the CPU
    Rule(None, (("kind", "not in", _KINDS),), _dtypes("float32", "float32"),
         "CPU: fp32 (half precision is slow or unsupported on CPUs)"),
)

_START = {"bf16": False}


def facts(device: DeviceInfo) -> dict:
    """What the rules look at (and their reasons quote) of ``device``."""
    cc = tuple(device.compute_capability or (0, 0))
    arch = (device.arch or "").split(":")[0]
    mac = tuple(device.macos_version or (0,))
    return {
        "kind": device.kind,
        "cc": cc,
        "sm": f"{cc[0]}{cc[1]}",
        "arch": arch,
        "arch_or_unknown": arch or "unknown arch",
        "fp32_why": ROCM_FP32_ARCHS.get(arch, ""),
        "hsa_override": ROCM_HSA_OVERRIDE.get(arch, ""),
        "mac": mac,
        "mac_text": ".".join(map(str, mac)),
        "metal": bool(device.metal),
    }


_OPS = {"==": lambda a, b: a == b, "in": lambda a, b: a in b, "not in": lambda a, b: a not in b, ">=": lambda a, b: a >= b}


def apply_rules(rules, facts: dict) -> tuple[dict, dict, list, list]:
    """``(decisions, env, hints, reasons)`` of ``rules`` over ``facts`` (pure)."""
    state = dict(_START)
    env: dict[str, str] = {}
    hints: list[str] = []
    reasons: list[str] = []
    done: set = set()
    for rule in rules:
        if rule.group in done:
            continue
        seen = {**facts, **state}
        if not all(_OPS[op](seen.get(key), value) for key, op, value in rule.when):
            continue
        if rule.group is not None:
            done.add(rule.group)
        then = dict(rule.then)
        env.update(then.pop("env", {}))
        if "hint" in then:
            hints.append(then.pop("hint").format(**facts))
        state.update(then)
        if rule.reason:
            reasons.append(rule.reason.format(**facts))
    return state, env, hints, reasons


def _override(state: dict, dtype_override: str, kind: str, reasons: list) -> None:
    if dtype_override not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, not {dtype_override!r}")
    if dtype_override == "bfloat16" and not state["bf16"] and kind != "cpu":
        reasons.append("bf16 requested but the device lacks it: fp16 instead")
        dtype_override = "float16"
    state.update(_dtypes(dtype_override))
    reasons.append(f"weight/compute dtype forced to {dtype_override}")


def decide(device: DeviceInfo, *, dtype_override: str | None = None) -> Policy:
    """The policy for ``device`` (:data:`RULES` in order, then memory). ``dtype_override`` ('float32', 'float16',
    'bfloat16') forces the weight/compute dtype."""
    state, env, hints, reasons = apply_rules(RULES, facts(device))
    kind = device.kind
    if dtype_override:
        _override(state, dtype_override, kind, reasons)
    unified = device.unified_memory or kind in ("mps", "mlx")
    att_slice, vae_tile, vae_slice = _slicing(device.memory_bytes if kind != "cpu" else 0, unified, reasons)
    return Policy(device=device, attention_slicing=att_slice, vae_tiling=vae_tile, vae_slicing=vae_slice, env=env,
                  hints=tuple(hints), reasons=tuple(reasons), **state)


def env_before_torch(archs: list[str]) -> dict[str, str]:
    """Environment variables to set before ``import torch`` for the given ROCm archs (read from KFD)."""
    env: dict[str, str] = {}
    for arch in archs:
        if arch in ROCM_AOTRITON_EXPERIMENTAL:
            env["TORCH_ROCM_AOTRITON_ENABLE_EXPERIMENTAL"] = "1"
    return env


def apply_env_before_torch() -> dict[str, str]:
    """Set :func:`env_before_torch`'s variables (never overriding the user's) if torch is not imported yet."""
    import os
    import sys

    if "torch" in sys.modules:
        return {}
    from .devices import probe_rocm_arch_without_torch

    applied = {}
    for k, v in env_before_torch(probe_rocm_arch_without_torch()).items():
        if k not in os.environ:
            os.environ[k] = v
            applied[k] = v
    return applied
