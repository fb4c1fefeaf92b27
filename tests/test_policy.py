"""Every device-policy rule, on simulated devices (CI has only a CPU); every decision is one an engine applies."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from spriteforge.engines.devices import DeviceInfo, gfx_from_target_version
from spriteforge.engines.policy import decide, env_before_torch

GiB = 1024**3


def cuda(cc, mem=24):
    return DeviceInfo(kind="cuda", name="NVIDIA test", compute_capability=cc, memory_bytes=mem * GiB, arch=f"sm_{cc[0]}{cc[1]}")


def rocm(arch, mem=16):
    return DeviceInfo(kind="rocm", name="AMD test", arch=arch, memory_bytes=mem * GiB)


def mps(mac=(14, 5), mem=32):
    return DeviceInfo(kind="mps", name="Apple M2", macos_version=mac, memory_bytes=mem * GiB, unified_memory=True)


@pytest.mark.parametrize(
    "cc,wd,vae,bf16",
    [((9, 0), "bfloat16", "bfloat16", True), ((8, 9), "bfloat16", "bfloat16", True), ((8, 6), "bfloat16", "bfloat16", True),
     ((7, 5), "float16", "float32", False), ((6, 1), "float32", "float32", False)],
)
def test_cuda_dtypes_follow_compute_capability(cc, wd, vae, bf16):
    p = decide(cuda(cc))
    assert (p.weight_dtype, p.compute_dtype, p.vae_dtype, p.bf16) == (wd, wd, vae, bf16)
    assert p.reasons


def test_rocm_gfx1103_runs_fp32_everywhere():
    p = decide(rocm("gfx1103"))
    assert {p.weight_dtype, p.compute_dtype, p.vae_dtype, p.text_encoder_dtype} == {"float32"}
    assert any("NaN" in r for r in p.reasons)
    assert any("HSA_OVERRIDE_GFX_VERSION=11.0.0" in h for h in p.hints)


def test_rocm_rdna3_bf16_with_fp32_vae_and_aotriton_env():
    p = decide(rocm("gfx1100"))
    assert p.weight_dtype == "bfloat16" and p.vae_dtype == "float32"
    assert p.env == {"TORCH_ROCM_AOTRITON_ENABLE_EXPERIMENTAL": "1"}


def test_rocm_gcn_arch_name_with_features_is_normalised():
    p = decide(rocm("gfx1151:sramecc-:xnack-"))
    assert p.bf16 and p.env.get("TORCH_ROCM_AOTRITON_ENABLE_EXPERIMENTAL") == "1"


def test_rocm_unknown_arch_fp16_and_rdna2_hint():
    p = decide(rocm("gfx1032", mem=8))
    assert p.weight_dtype == "float16" and p.vae_dtype == "float32"
    assert any("10.3.0" in h for h in p.hints)
    assert p.vae_tiling and not p.attention_slicing


def test_mps_fp32_vae_and_bf16_only_from_macos_14():
    assert decide(mps((14, 0))).bf16 is True
    old = decide(mps((13, 6)))
    assert old.bf16 is False and old.vae_dtype == "float32" and old.weight_dtype == "float16"
    assert any("macOS 14" in r for r in old.reasons)
    assert decide(mps((13, 6)), dtype_override="bfloat16").weight_dtype == "float16"


def test_low_memory_turns_on_slicing_and_tiling():
    p = decide(cuda((8, 6), mem=4))
    assert p.attention_slicing and p.vae_tiling and p.vae_slicing
    big = decide(cuda((8, 6), mem=80))
    assert not (big.attention_slicing or big.vae_tiling)
    # unified memory counts about two thirds
    assert decide(mps(mem=8)).attention_slicing


def test_cpu_and_mlx():
    cpu = decide(DeviceInfo(kind="cpu"))
    assert cpu.weight_dtype == "float32" and not cpu.attention_slicing
    metal = decide(DeviceInfo(kind="mlx", backend="mlx", metal=True, macos_version=(15, 0), memory_bytes=64 * GiB))
    assert metal.weight_dtype == "float16" and metal.vae_dtype == "float32" and metal.bf16
    mcpu = decide(DeviceInfo(kind="mlx", backend="mlx", metal=False))
    assert mcpu.weight_dtype == "float32"


def test_dtype_override_and_bad_override():
    assert decide(DeviceInfo(kind="cpu"), dtype_override="bfloat16").weight_dtype == "bfloat16"
    with pytest.raises(ValueError):
        decide(DeviceInfo(kind="cpu"), dtype_override="int8")


def test_gfx_target_version_decoding_and_env_before_torch():
    assert gfx_from_target_version(110003) == "gfx1103"
    assert gfx_from_target_version(90010) == "gfx90a"
    assert gfx_from_target_version(110501) == "gfx1151"
    assert gfx_from_target_version(100300) == "gfx1030"
    assert env_before_torch(["gfx1100"]) == {"TORCH_ROCM_AOTRITON_ENABLE_EXPERIMENTAL": "1"}
    assert env_before_torch(["gfx90a"]) == {}


def test_policy_serialises():
    d = decide(rocm("gfx1103")).to_dict()
    assert d["device"]["label"].startswith("ROCm") and isinstance(d["reasons"], list)


_INFORMATION = {"device", "env", "hints", "reasons"}  # shown by `spriteforge doctor`; env is set by apply_env_before_torch


def test_every_decision_of_the_policy_is_read_by_the_code_that_generates():
    """A decision nothing reads is a claim, not a setting: each field of Policy (but the explanations) is read as
    ``policy.<field>`` by the engines or the pipeline. The attention kind, the VAE's attention kind and fp8 compute
    were decided (and shown) but never applied, and are gone."""
    root = Path(__file__).resolve().parents[1]
    code = "\n".join(p.read_text(encoding="utf-8") for d in ("engines", "generation") for p in (root / d).rglob("*.py")
                     if p.name != "policy.py") + (root / "pipeline.py").read_text(encoding="utf-8")
    unread = [f.name for f in dataclasses.fields(decide(DeviceInfo(kind="cpu")))
              if f.name not in _INFORMATION and not re.search(rf"\.{f.name}\b", code)]
    assert not unread, unread
