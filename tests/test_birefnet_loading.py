"""Loading BiRefNet files: fp16/fp32, training prefixes, detection from shapes, coded errors for bad files.

A tiny BiRefNet (same module tree, small widths) stands in for the 440 MB releases; the
real key sets and shapes are covered by test_birefnet_golden.py against the manifests.
"""

from __future__ import annotations

import json
import pickle

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402

from spriteforge.engines.torch_models import birefnet as bn  # noqa: E402
from spriteforge.engines.torch_models.deform_conv import deform_conv2d, deform_conv2d_reference  # noqa: E402
from spriteforge.errors import BAD_INPUT, MODEL_NOT_FOUND, UNSUPPORTED_ARCHITECTURE, SpriteForgeError  # noqa: E402

TINY = bn.BiRefNetConfig(
    embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=4,
    dec_inter=8, aspp_inter=8, ipt_inter=8, gdt_channels=4,
)


def tiny_model(seed: int = 0) -> bn.BiRefNet:
    torch.manual_seed(seed)
    m = bn.BiRefNet(TINY).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics and deformable offsets
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
            if isinstance(mod, bn.DeformableConv2d):
                mod.offset_conv.weight.normal_(0, 0.3)
                mod.modulator_conv.weight.normal_(0, 0.3)
    return m


def save_tiny(path, model, *, dtype=torch.float32, prefix=""):
    sd = {prefix + k: (v.to(dtype) if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


def _run(model, x):
    with torch.inference_mode():
        return model(x).float()


@pytest.mark.parametrize(
    "dtype,prefix,tol",
    [
        (torch.float32, "", 0.0),
        (torch.float32, "module.", 0.0),
        (torch.float16, "_orig_mod.", 5e-2),
        (torch.float16, "module._orig_mod.", 5e-2),
    ],
)
def test_load_fp16_fp32_with_prefixes(tmp_path, tiny, dtype, prefix, tol):
    p = save_tiny(tmp_path / "BiRefNet-general.safetensors", tiny, dtype=dtype, prefix=prefix)
    h = bn.load_birefnet(p, device="cpu", use_comfy=False)
    assert h.config == TINY
    assert h.dtype == torch.float32 and h.file_dtype == str(dtype).replace("torch.", "")
    assert h.model.bb.layers[0].blocks[0].attn.relative_position_index.dtype == torch.int64
    x = torch.randn(1, 3, 64, 96)
    ref = _run(tiny, x)
    got = _run(h.model, x)
    assert torch.allclose(got, ref, atol=tol + 1e-6, rtol=0)


def test_missing_integer_buffers_are_computed(tmp_path, tiny):
    sd = {k: v for k, v in tiny.state_dict().items() if not (k.endswith("relative_position_index") or k.endswith("num_batches_tracked"))}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "m.safetensors"))
    h = bn.load_birefnet(tmp_path / "m.safetensors", device="cpu", use_comfy=False)
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(_run(h.model, x), _run(tiny, x), atol=1e-6, rtol=0)


def test_weights_only_pth(tmp_path, tiny):
    torch.save({"module." + k: v for k, v in tiny.state_dict().items()}, tmp_path / "BiRefNet-general-epoch_244.pth")
    h = bn.load_birefnet(tmp_path / "BiRefNet-general-epoch_244.pth", device="cpu", use_comfy=False)
    assert h.config == TINY


def test_config_and_variant_from_real_manifests(shared_dir):
    for name, cfg, var in (("general", bn.SWIN_L, "general"), ("lite", bn.SWIN_T, "lite")):
        man = json.loads((shared_dir / "checkpoints" / f"birefnet-{name}.json").read_text())["tensors"]
        shapes = {"module." + k: tuple(v["shape"]) for k, v in man.items()}
        got = bn.config_from_shapes({k[len("module."):]: s for k, s in shapes.items()})
        assert got == cfg
        assert bn.DEFAULT_VARIANT_FOR_BACKBONE[got.backbone] == var


@pytest.mark.parametrize(
    "name,backbone,variant,res",
    [
        ("model.safetensors", "swin_v1_l", "general", (1024, 1024)),
        ("BiRefNet-general-epoch_244.safetensors", "swin_v1_l", "general", (1024, 1024)),
        ("BiRefNet_HR.safetensors", "swin_v1_l", "HR", (2048, 2048)),
        ("BiRefNet_HR-matting.safetensors", "swin_v1_l", "HR-matting", (2048, 2048)),
        ("BiRefNet-matting.safetensors", "swin_v1_l", "matting", (1024, 1024)),
        ("BiRefNet-portrait-epoch_150.safetensors", "swin_v1_l", "portrait", (1024, 1024)),
        ("BiRefNet_dynamic.safetensors", "swin_v1_l", "dynamic", (1024, 1024)),
        ("BiRefNet-massive-TR_DIS5K_TR_TEs-epoch_420.pth", "swin_v1_l", "massive", (1024, 1024)),
        ("BiRefNet_lite.safetensors", "swin_v1_t", "lite", (1024, 1024)),
        ("BiRefNet_lite-2K.safetensors", "swin_v1_t", "lite-2K", (2560, 1440)),
        ("model.safetensors", "swin_v1_t", "lite", (1024, 1024)),
    ],
)
def test_variant_from_name(name, backbone, variant, res):
    got = bn.variant_from_name(name, backbone)
    assert got == variant
    assert bn.VARIANTS[got]["resolution"] == res
    assert bn.VARIANTS[got]["backbone"] == backbone


def test_variant_override_must_fit_backbone(tmp_path, tiny):
    p = save_tiny(tmp_path / "x.safetensors", tiny)
    with pytest.raises(SpriteForgeError) as e:
        bn.load_birefnet(p, device="cpu", variant="HR", use_comfy=False)
    assert e.value.code == BAD_INPUT


def test_bad_files_give_coded_errors(tmp_path, tiny):
    def code(p):
        with pytest.raises(SpriteForgeError) as e:
            bn.load_birefnet(p, device="cpu", use_comfy=False)
        return e.value.code

    assert code(tmp_path / "absent.safetensors") == MODEL_NOT_FOUND
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00\x01not a model at all" * 50)
    assert code(tmp_path / "garbage.safetensors") == BAD_INPUT
    good = save_tiny(tmp_path / "good.safetensors", tiny)
    data = good.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    assert code(tmp_path / "truncated.safetensors") == BAD_INPUT
    (tmp_path / "pickled.safetensors").write_bytes(pickle.dumps({"a": 1}))
    assert code(tmp_path / "pickled.safetensors") == BAD_INPUT

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    with open(tmp_path / "evil.pth", "wb") as fh:
        pickle.dump({"x": Evil()}, fh)
    assert code(tmp_path / "evil.pth") == BAD_INPUT
    # A valid safetensors file of another model (a VAE-like key set) is not BiRefNet.
    save_file({"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3)}, str(tmp_path / "vae.safetensors"))
    assert code(tmp_path / "vae.safetensors") == UNSUPPORTED_ARCHITECTURE
    # BiRefNet keys with one tensor of the wrong shape / one missing.
    sd = {k: v.contiguous() for k, v in tiny.state_dict().items()}
    sd["decoder.conv_out1.0.weight"] = torch.zeros(1, 3, 1, 1)
    save_file(sd, str(tmp_path / "wrong_shape.safetensors"))
    assert code(tmp_path / "wrong_shape.safetensors") == UNSUPPORTED_ARCHITECTURE
    sd = {k: v.contiguous() for k, v in tiny.state_dict().items() if not k.startswith("decoder.lateral_block2")}
    save_file(sd, str(tmp_path / "missing.safetensors"))
    assert code(tmp_path / "missing.safetensors") == UNSUPPORTED_ARCHITECTURE
    (tmp_path / "model.txt").write_text("hello")
    assert code(tmp_path / "model.txt") == BAD_INPUT


def test_deform_conv_matches_reference_semantics():
    torch.manual_seed(1)
    for k, pad, stride, dil, groups in ((3, 1, 1, 1, 1), (7, 3, 1, 1, 1), (1, 0, 1, 1, 1), (3, 2, 2, 2, 2)):
        x = torch.randn(2, 4, 6, 5)
        w = torch.randn(3, 4, k, k)
        b = torch.randn(3)
        Ho = (6 + 2 * pad - (dil * (k - 1) + 1)) // stride + 1
        Wo = (5 + 2 * pad - (dil * (k - 1) + 1)) // stride + 1
        off = torch.randn(2, 2 * groups * k * k, Ho, Wo) * 2.0  # reaches outside the map
        m = torch.rand(2, groups * k * k, Ho, Wo) * 2
        got = deform_conv2d(x, off, w, b, stride, pad, dil, m)
        ref = deform_conv2d_reference(x, off, w, b, stride, pad, dil, m)
        assert (got - ref).abs().max() < 1e-4
        plain = deform_conv2d(x, torch.zeros_like(off), w, b, stride, pad, dil, None)
        assert (plain - torch.nn.functional.conv2d(x, w, b, stride, pad, dil)).abs().max() < 1e-4
    # Border rule: a sample exactly at -1 or at H is 0; in between, corners outside count 0.
    x = torch.ones(1, 1, 3, 3)
    w = torch.ones(1, 1, 1, 1)
    off = torch.zeros(1, 2, 3, 3)
    off[:, 0] = -1.0  # row 0 samples y = -1 -> 0; row 1 samples y = 0 -> 1
    out = deform_conv2d(x, off, w)
    assert out[0, 0, 0].abs().max() == 0 and torch.allclose(out[0, 0, 1:], torch.ones(2, 3))
    off[:, 0] = -0.25  # row 0 samples y = -0.25 -> 0.75 * x[0]
    assert torch.allclose(deform_conv2d(x, off, w)[0, 0, 0], torch.full((3,), 0.75))


def test_legacy_patch_order_permutation_is_a_permutation():
    for G in (1, 2, 4):
        p = bn.legacy_patch_order_permutation(G)
        assert sorted(p.tolist()) == list(range(3 * G * G))
    # Head order: channel = c*G*G + i*G + j for tile row i, column j.
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    st = bn.image_to_patch_stack(x, (2, 3))  # G = 2
    for c in range(3):
        for i in range(2):
            for j in range(2):
                assert torch.equal(st[:, c * 4 + i * 2 + j], x[:, c, i * 2:(i + 1) * 2, j * 3:(j + 1) * 3])


def test_precision_policy_defaults():
    assert bn._default_precision("cpu") == torch.float32
    assert bn._default_precision("cuda") == torch.float16
