"""Today's models (Z-Image, FLUX.2, Qwen-Image, Krea 2; issues #23.5 and #24.6) are named from the header alone:
every reference manifest, written as a sparse file of the real size with the real header (and, for transformers,
under ComfyUI's all-in-one ``model.diffusion_model.`` prefix), is inspected as its family, variant and kind while
reading only the header. SpriteForge runs every family it ships (Krea 2, the last recognised only, since issue #24.3:
tests/test_krea2.py); a family registered as recognised only (``generation = False``: here a made-up one, Sketch) is
refused by Load Model and ``generate`` with UNSUPPORTED_ARCHITECTURE naming what the file is."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_inspect_cli import _bytes_read, _fake_file  # noqa: E402

from spriteforge.cli.main import main  # noqa: E402
from spriteforge.errors import UNSUPPORTED_ARCHITECTURE, SpriteForgeError  # noqa: E402
from spriteforge.models.detection import count  # noqa: E402
from spriteforge.models.families import registry  # noqa: E402
from spriteforge.models.families.base import Family, TextEncoder  # noqa: E402

# manifest -> (kind, family, variant, layout) `inspect` must report
EXPECTED = {
    # today's models
    "z-image-turbo.transformer.original": ("transformer", "zimage", "turbo-or-base", "original"),
    "z-image-turbo.transformer.diffusers": ("transformer", "zimage", "turbo-or-base", "diffusers"),
    "flux2-klein-4b.transformer.original": ("transformer", "flux2", "klein-4B", "original"),
    "flux2-klein-4b.transformer.diffusers": ("transformer", "flux2", "klein-4B", "diffusers"),
    "flux2-klein-9b.transformer.original": ("transformer", "flux2", "klein-9B", "original"),
    "flux2-klein-9b.transformer.diffusers": ("transformer", "flux2", "klein-9B", "diffusers"),
    "flux2-dev.transformer.original": ("transformer", "flux2", "dev", "original"),
    "flux2-dev.transformer.diffusers": ("transformer", "flux2", "dev", "diffusers"),
    "qwen-image.transformer.diffusers": ("transformer", "qwenimage", "20B", "diffusers"),
    "krea2.transformer.original": ("transformer", "krea2", "raw-or-turbo", "original"),
    "krea2.transformer.diffusers": ("transformer", "krea2", "raw-or-turbo", "diffusers"),
    "qwen3-4b.text-encoder": ("text_encoder", None, "qwen3_4b", "hf"),
    "qwen3-8b.text-encoder": ("text_encoder", None, "qwen3_8b", "hf"),
    "qwen2.5-vl-7b.text-encoder": ("text_encoder", None, "qwen25_7b", "hf"),
    "flux2-vae.original": ("vae", None, "flux2", "original"),
    "flux2-vae.diffusers": ("vae", None, "flux2", "diffusers"),
    "qwen-image.vae.original": ("vae", None, "qwen-image", "original"),
    "qwen-image.vae.diffusers": ("vae", None, "qwen-image", "diffusers"),
    # the families SpriteForge runs, unchanged
    "flux1-dev.transformer.original": ("transformer", "flux", "dev", "original"),
    "flux1-dev.transformer.diffusers": ("transformer", "flux", "dev", "diffusers"),
    "flux1-schnell.transformer.original": ("transformer", "flux", "schnell", "original"),
    "flux1-schnell.transformer.diffusers": ("transformer", "flux", "schnell", "diffusers"),
    "sd3-medium.mmdit.original": ("transformer", "sd3", "sd3-medium", "original"),
    "sd3-medium.mmdit.diffusers": ("transformer", "sd3", "sd3-medium", "diffusers"),
    "sd3.5-medium.mmdit.original": ("transformer", "sd3", "sd3.5-medium", "original"),
    "sd3.5-medium.mmdit.diffusers": ("transformer", "sd3", "sd3.5-medium", "diffusers"),
    "sd3.5-large.mmdit.original": ("transformer", "sd3", "sd3.5-large", "original"),
    "sd3.5-large.mmdit.diffusers": ("transformer", "sd3", "sd3.5-large", "diffusers"),
    "pixart-sigma-xl-2-1024-ms.original": ("transformer", "pixart", "sigma-1024", "original"),
    "pixart-sigma-xl-2-1024-ms.diffusers": ("transformer", "pixart", "sigma-1024", "diffusers"),
    "clip-l.text.hf": ("text_encoder", None, "clip_l", "hf"),
    "clip-g.text.hf": ("text_encoder", None, "clip_g", "hf"),
    "t5xxl-fp16.encoder.hf": ("text_encoder", None, "t5", "hf"),
    "vae16-flux-ae.original": ("vae", None, "kl16", "original"),
    "vae16-flux.diffusers": ("vae", None, "kl16", "diffusers"),
    "vae16-sd3.original": ("vae", None, "kl16", "original"),
    "vae4-sdxl.original": ("vae", None, "kl4", "original"),
    "vae4-sdxl.diffusers": ("vae", None, "kl4", "diffusers"),
}
# the all-in-one prefix each kind sits under in ComfyUI checkpoints (the SD3 manifests already carry theirs)
PREFIX = {"transformer": "model.diffusion_model."}
TE_PREFIX = {"qwen3-4b.text-encoder": "text_encoders.qwen3_4b.transformer.",
             "qwen2.5-vl-7b.text-encoder": "text_encoders.qwen25_7b.transformer."}
HEADER_ONLY = 16 * 2**20  # bytes a header-only inspect may read (the largest header here is a few hundred KiB)


def _manifest(shared_dir, name) -> dict:
    return json.loads((shared_dir / "checkpoints" / f"{name}.json").read_text())


def _inspect(capsys, path: Path) -> tuple[dict, int | None]:
    """``inspect --json`` of ``path`` and the bytes this process read meanwhile (None without /proc/self/io)."""
    before = _bytes_read()
    rc = main(["inspect", str(path), "--json"])
    read = None if before is None else _bytes_read() - before
    out = capsys.readouterr().out
    assert rc == 0, out
    return json.loads(out), read


def test_every_reference_manifest_is_listed(shared_dir):
    """A manifest added to the reference set without an expectation here fails (BiRefNet has its own tests)."""
    names = {p.stem for p in (shared_dir / "checkpoints").glob("*.json")} - {"birefnet-general", "birefnet-lite"}
    assert names == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_inspect_names_the_real_size_file(shared_dir, tmp_path, capsys, name):
    man = _manifest(shared_dir, name)
    kind, family, variant, layout = EXPECTED[name]
    path = _fake_file(tmp_path / f"{name}.safetensors", man["tensors"])
    out, read = _inspect(capsys, path)
    assert (out["kind"], out["family"], out["variant"], out["layout"]) == (kind, family, variant, layout)
    assert out["parameters"] == man["parameter_count"] and out["file_size"] == path.stat().st_size
    if read is not None:  # Linux: header only, however large the file (flux2-dev: 64 GB)
        assert read < HEADER_ONLY
    if kind == "transformer" and "diffusers_config" in man:  # the config read from the shapes is the release's
        got = {k: out["config"].get(k) for k in man["diffusers_config"]}
        assert got == man["diffusers_config"]


@pytest.mark.parametrize("name", sorted(n for n, e in EXPECTED.items() if e[0] == "transformer" and not n.startswith("sd3")))
def test_all_in_one_prefix(shared_dir, tmp_path, capsys, name):
    """Under ComfyUI's ``model.diffusion_model.`` prefix the same family and variant, the prefix reported."""
    _, family, variant, layout = EXPECTED[name]
    tensors = {PREFIX["transformer"] + k: v for k, v in _manifest(shared_dir, name)["tensors"].items()}
    out, read = _inspect(capsys, _fake_file(tmp_path / "checkpoint.safetensors", tensors))
    assert (out["kind"], out["family"], out["variant"], out["layout"]) == ("transformer", family, variant, layout)
    assert out["components"] == {"transformer": "model.diffusion_model."}
    assert read is None or read < HEADER_ONLY


@pytest.mark.parametrize("name", sorted(TE_PREFIX))
def test_text_encoder_under_its_all_in_one_prefix(shared_dir, tmp_path, capsys, name):
    tensors = {TE_PREFIX[name] + k: v for k, v in _manifest(shared_dir, name)["tensors"].items()}
    out, _ = _inspect(capsys, _fake_file(tmp_path / "te.safetensors", tensors))
    assert (out["kind"], out["variant"]) == ("text_encoder", EXPECTED[name][2])
    assert out["components"] == {EXPECTED[name][2]: TE_PREFIX[name]}


def test_z_image_checkpoint_with_its_text_encoder_needs_only_a_vae(shared_dir, tmp_path, capsys):
    """An all-in-one Z-Image file (transformer + Qwen3-4B under their ComfyUI prefixes, plus the unused
    ``norm_final.weight`` ComfyUI's save writes) still needs its VAE only."""
    t = {PREFIX["transformer"] + k: v for k, v in _manifest(shared_dir, "z-image-turbo.transformer.original")["tensors"].items()}
    t.update({TE_PREFIX["qwen3-4b.text-encoder"] + k: v for k, v in _manifest(shared_dir, "qwen3-4b.text-encoder")["tensors"].items()})
    t["model.diffusion_model.norm_final.weight"] = {"shape": [3840], "dtype": "bf16"}  # ComfyUI's own save adds it (unused)
    out, _ = _inspect(capsys, _fake_file(tmp_path / "z_image_aio.safetensors", t))
    assert (out["kind"], out["family"], out["variant"]) == ("checkpoint", "zimage", "turbo-or-base")
    assert out["needs"] == ["vae"] and out["parts"]["qwen3_4b"]["variant"] == "qwen3_4b"


@pytest.mark.parametrize("name, lines", [
    ("flux2-klein-9b.transformer.original", ["family:     flux2", "variant:    klein-9B", "needs:      vae, qwen3_8b",
                                             "ambiguous:  distilled or base: same layout (FLUX.2 [klein] 9B (distilled or base"]),
    ("flux2-dev.transformer.diffusers", ["variant:    dev", "needs:      vae, mistral3", "guidance_embeds: True"]),
    ("flux2-klein-4b.transformer.diffusers", ["needs:      vae, qwen3_4b", "ambiguous:  distilled or base: same layout"]),
    ("z-image-turbo.transformer.original", ["family:     zimage", "variant:    turbo-or-base",
                                            "needs:      vae, qwen3_4b", "dtype:      bfloat16"]),
    ("krea2.transformer.original", ["family:     krea2", "dtypes:     bfloat16 12.50B, float32 321.57M", "parameters: 12.82B",
                                    "needs:      vae, qwen3_vl_4b", "ambiguous:  raw or turbo: same layout"]),  # runnable
    ("qwen-image.transformer.diffusers", ["family:     qwenimage", "variant:    20B", "needs:      vae, qwen25_7b"]),  # runnable
    ("qwen3-4b.text-encoder", ["kind:       text_encoder (hf layout)", "variant:    qwen3_4b",
                               "lm_head:    tied (no lm_head.weight"]),
    ("qwen3-8b.text-encoder", ["variant:    qwen3_8b", "lm_head:    untied (lm_head.weight stored)"]),
    ("qwen2.5-vl-7b.text-encoder", ["variant:    qwen25_7b", "vision_tower: present: 32 blocks, 1280 wide (visual.*; Qwen-Image-Edit reads it)",
                                    "lm_head:    untied"]),
    ("flux2-vae.original", ["kind:       vae (original layout)", "variant:    flux2", "dtypes:     float32 84.05M, int64 1",
                            "batch_norm: bn.running_mean/var [128], num_batches_tracked int64"]),
    ("flux2-vae.diffusers", ["kind:       vae (diffusers layout)", "variant:    flux2", "num_batches_tracked int64"]),
    ("qwen-image.vae.original", ["kind:       vae (original layout)", "variant:    qwen-image"]),  # loaded: no refusal
])
def test_inspect_text(shared_dir, tmp_path, capsys, name, lines):
    path = _fake_file(tmp_path / f"{name}.safetensors", _manifest(shared_dir, name)["tensors"])
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    for line in lines:
        assert line in text, f"{line!r} not in:\n{text}"


@pytest.mark.parametrize("name", ["flux1-dev.transformer.original", "z-image-turbo.transformer.original", "qwen3-4b.text-encoder",
                                  "krea2.transformer.original", "krea2.transformer.diffusers"])
def test_runnable_families_say_nothing_of_generation(shared_dir, tmp_path, capsys, name):
    """Flux.1; Z-Image and the Qwen3-4B text encoder it runs with, Krea 2 (once recognised only)."""
    path = _fake_file(tmp_path / f"{name}.safetensors", _manifest(shared_dir, name)["tensors"])
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "generation:" not in text and "recognised:" not in text


# --------------------------------------------------------------------------- recognised, not run


class Sketch(Family):
    """A made-up recognised-only family (every shipped family runs): markers, shapes, a title, nothing to run."""

    name = "sketch"
    label = "Sketch"
    variant_titles = {"fast-or-slow": "(fast or slow: same layout)"}
    generation = False
    original_markers = (("sketch_in.weight", "sketch_blocks.*"),)
    transformer_class = "SketchTransformer2DModel"
    text_encoders = (TextEncoder("qwen3_4b", "text_encoder"),)

    def detect(self, t, original):
        cfg = {"_class_name": self.transformer_class, "num_layers": count(t.keys(), r"sketch_blocks\.(\d+)\.")}
        return self.detection("fast-or-slow", cfg, original)


@pytest.fixture
def sketch():
    fam = registry.register(Sketch())
    try:
        yield fam
    finally:
        registry.unregister("sketch")


def _sketch_file(path: Path) -> Path:
    import numpy as np
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"sketch_in.weight": np.zeros((8, 16), np.float32), "sketch_blocks.0.w": np.zeros((8, 8), np.float32)}, str(path))
    return path


def test_every_shipped_family_runs():
    assert all(f.generation for f in registry.recognised())
    assert {"zimage", "flux2", "qwenimage", "krea2"} <= set(registry.names())


def test_recognised_families_are_not_the_runnable_ones(sketch):
    known = {f.name: f for f in registry.recognised()}
    assert {n for n, f in known.items() if not f.generation} == {"sketch"}
    assert "sketch" not in registry.names()
    from spriteforge.engines.model_files import TRANSFORMER_CLASSES

    assert set(TRANSFORMER_CLASSES) == set(registry.names())  # the engines never see them


def _refusal(exc_info, what: str, not_yet: str = "does not generate with this family yet") -> str:
    err = exc_info.value
    assert err.code == UNSUPPORTED_ARCHITECTURE, err
    assert f"is recognised as {what}; SpriteForge {not_yet}" in err.message
    assert f"it runs {', '.join(f.label for f in registry.families())}" in err.message
    assert str(err).endswith("Load a model of one of those families.") and "not a model SpriteForge knows" not in str(err)
    return err.message


@pytest.fixture
def models_root(tmp_path, shared_dir, sketch):
    from spriteforge import paths

    root = tmp_path / "models"
    _sketch_file(root / "diffusion_models" / "sketch_fast.safetensors")
    for sub, name, manifest in (("vae", "flux2-vae.safetensors", "flux2-vae.diffusers"),
                                ("text_encoders", "qwen_3_4b.safetensors", "qwen3-4b.text-encoder")):
        (root / sub).mkdir(parents=True, exist_ok=True)
        _fake_file(root / sub / name, _manifest(shared_dir, manifest)["tensors"])
    paths.set_models_root(root)
    yield root
    paths.set_models_root(None)


def test_load_model_refuses_a_recognised_only_family(models_root):
    from spriteforge.nodes import loaders

    with pytest.raises(SpriteForgeError) as e:
        loaders.LoadModel.execute("sketch_fast.safetensors", engine="torch", device="cpu")
    assert _refusal(e, "Sketch (fast or slow: same layout)").startswith("sketch_fast.safetensors ")


def test_their_text_encoders_and_vaes_load_once_a_family_runs_them(shared_dir, tmp_path):
    """Once refused by name while their families were recognised only; Z-Image, FLUX.2 and Qwen-Image run them now."""
    from spriteforge.engines import model_files
    from spriteforge.models.safetensors_header import header_from_manifest

    te = header_from_manifest(_manifest(shared_dir, "qwen2.5-vl-7b.text-encoder")).tensors
    det, _ = model_files.text_encoder_in(te, "qwen_2.5_vl_7b.safetensors", None)
    assert det.variant == "qwen25_7b" and "recognised_as" not in det.extras
    qwen3 = header_from_manifest(_manifest(shared_dir, "qwen3-4b.text-encoder")).tensors
    det, prefix = model_files.text_encoder_in(qwen3, "qwen_3_4b.safetensors", None)
    assert (det.variant, prefix, det.config["rope_theta"], det.config["head_dim"]) == ("qwen3_4b", "", 1000000, 128)
    for name in ("qwen3-4b", "qwen3-8b"):  # FLUX.2 [klein] runs them (tests/test_flux2.py)
        te = header_from_manifest(_manifest(shared_dir, f"{name}.text-encoder")).tensors
        det, _ = model_files.text_encoder_in(te, f"{name}.safetensors", None)
        assert det.variant == name.replace("-", "_") and "recognised_as" not in det.extras
    for layout in ("original", "diffusers"):  # the FLUX.2 VAE loads (tests/test_flux2_vae.py): both layouts are read
        vae = header_from_manifest(_manifest(shared_dir, f"flux2-vae.{layout}")).tensors
        det, prefix = model_files.vae_in(vae, "flux2-vae.safetensors", None)
        assert (det.variant, det.layout, prefix) == ("flux2", layout, "")
        want = {k: v for k, v in _manifest(shared_dir, "flux2-vae.diffusers")["diffusers_config"].items() if v is not None}
        assert model_files.vae_config_for(det, None) == {"_class_name": "AutoencoderKLFlux2", **want}


def test_generate_refuses_a_recognised_only_family(models_root, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["-q", "generate", "--models", str(models_root), "--model", "sketch_fast.safetensors", "--prompt", "a knight",
               "--engine", "torch", "--device", "cpu", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == SpriteForgeError(UNSUPPORTED_ARCHITECTURE, "").exit_code
    assert "UNSUPPORTED_ARCHITECTURE" in err and "recognised as Sketch" in err
    assert not out.exists() or not any(out.iterdir())  # nothing written


def test_a_diffusers_folder_is_named(shared_dir, tmp_path, capsys):
    """A FLUX.2 [klein] 9B diffusers folder (transformer weights, its Qwen3-8B text encoder and VAE sub-folders):
    named from the transformer's shapes (distilled or base from the pipeline config's ``is_distilled`` where it has
    one), nothing more needed."""
    d = tmp_path / "FLUX.2-klein-9B"
    for sub in ("transformer", "text_encoder", "vae"):
        (d / sub).mkdir(parents=True)
    (d / "model_index.json").write_text(json.dumps({
        "_class_name": "Flux2KleinPipeline", "is_distilled": True, "transformer": ["diffusers", "Flux2Transformer2DModel"],
        "text_encoder": ["transformers", "Qwen3ForCausalLM"], "vae": ["diffusers", "AutoencoderKLFlux2"]}))
    (d / "transformer" / "config.json").write_text(json.dumps({"_class_name": "Flux2Transformer2DModel",
                                                                **_manifest(shared_dir, "flux2-klein-9b.transformer.diffusers")["diffusers_config"]}))
    _fake_file(d / "transformer" / "diffusion_pytorch_model.safetensors", _manifest(shared_dir, "flux2-klein-9b.transformer.diffusers")["tensors"])
    (d / "text_encoder" / "config.json").write_text(json.dumps({"model_type": "qwen3", "hidden_size": 4096}))
    (d / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLFlux2"}))
    out, read = _inspect(capsys, d)
    # the pipeline config says which of the two releases of this layout the folder is
    assert (out["kind"], out["family"], out["variant"], out["needs"]) == ("diffusers", "flux2", "klein-9B-distilled", [])
    assert "recognised_as" not in out["extras"]  # FLUX.2 runs
    assert read is None or read < HEADER_ONLY
    index = json.loads((d / "model_index.json").read_text())
    (d / "model_index.json").write_text(json.dumps({**index, "is_distilled": False}))
    assert _inspect(capsys, d)[0]["variant"] == "klein-base-9B"
    del index["is_distilled"]  # no word on it: one layout, said so
    (d / "model_index.json").write_text(json.dumps(index))
    out, _ = _inspect(capsys, d)
    assert out["variant"] == "klein-9B" and registry.get("flux2").title("klein-9B") == "FLUX.2 [klein] 9B (distilled or base: same layout)"


def test_load_model_refuses_the_flux2_vae_for_another_family(tmp_path):
    """A PixArt folder with the FLUX.2 VAE chosen for it: refused before sampling, naming the VAE's latent width."""
    import tiny_flux2
    import tiny_models as tm

    from spriteforge.engines import get_engine

    folder = tm.make_pixart(tmp_path, layout="folder")
    with pytest.raises(SpriteForgeError) as e:
        get_engine("torch", "cpu").load_model(str(folder), vae=str(tiny_flux2.make_flux2_vae(tmp_path, name="flux2-vae.safetensors")))
    assert e.value.code == "BAD_INPUT"
    assert e.value.message.startswith("flux2-vae.safetensors is a VAE for 32-channel latents") and "needs a VAE for 4-channel" in e.value.message
