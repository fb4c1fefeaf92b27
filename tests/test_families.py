"""The family registry (spriteforge.models.families) is the one home of a family's facts: every registered family
is detected from its real-format files and reference manifests, a new family is one registry entry (detection,
``inspect`` and folders see it without any other file changing), and what the other layers keep per family (engine
tables, LoRA slots, defaults, the editor's hints) is read from it."""

from __future__ import annotations

import ast
import importlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_models as T  # noqa: E402
from spriteforge.errors import UNSUPPORTED_ARCHITECTURE, SpriteForgeError
from spriteforge.models.detect import detect, detect_tensors
from spriteforge.models.families import FAMILIES, Family, TextEncoder, registry
from spriteforge.models.families.pixart import PixArt
from spriteforge.models.families.sana import Sana
from spriteforge.models.safetensors_header import header_from_manifest

REPO = Path(__file__).resolve().parents[1]


def test_families_are_the_registry():
    assert FAMILIES == registry.names() == tuple(f.name for f in registry.ENTRIES if f.generation)
    assert registry.recognised() == registry.ENTRIES
    for f in registry.recognised():
        assert registry.get(f.name) is f and registry.by_transformer_class(f.transformer_class) is f
        assert f.label and f.transformer_class
    for f in registry.families():
        assert f.mlx_port and f.keymap is not None


@pytest.mark.parametrize(("family", "layout"), [(f.name, layout) for f in registry.families()
                                                 for layout in ("diffusers", "original")[: 2 if f.original_markers else 1]])
def test_every_family_is_detected_from_its_tiny_real_file(tmp_path, family, layout):
    """The recipe's "tests": each registered family has a tiny real-format builder (tests/tiny_models.make_<name>),
    and both of its layouts are detected as it."""
    path = getattr(T, f"make_{family}")(tmp_path, layout=layout)
    det = detect(path)
    fam = registry.get(family)
    assert (det.family, det.kind, det.layout) == (family, "transformer", layout)
    assert det.needs == fam.needs
    assert det.config["_class_name"] == fam.transformer_class


@pytest.mark.parametrize("family", [f.name for f in registry.recognised() if f.reference_manifests])
def test_every_family_is_detected_from_its_reference_manifests(shared_dir, family):
    fam = registry.get(family)
    for name, variant in fam.reference_manifests.items():
        path = shared_dir / "checkpoints" / f"{name}.json"
        assert path.exists(), f"{family} names {name}, which is not in the reference set"
        det = detect_tensors(header_from_manifest(json.loads(path.read_text())).tensors, name=name)
        assert (det.family, det.variant) == (family, variant), name


# --------------------------------------------------------------------------- a new family is one entry


class Toy(Family):
    """A made-up family: a patch embedding and some blocks, T5 prompts, the SD3 VAE."""

    name = "toy"
    label = "Toy"
    original_markers = (("toy_in.weight", "toy_blocks.*"),)
    diffusers_markers = (("x_embedder.proj.weight", "toy_transformer_blocks.*"),)
    transformer_class = "ToyTransformer2DModel"
    mlx_port = "toy"
    text_encoders = (TextEncoder("t5", "text_encoder", ("t5xxl",)),)
    latent_channels = 16
    prediction = "flow"
    defaults = {"cfg": 2.0, "steps": 8, "sampler": "euler", "schedule": "normal"}
    widgets_only = ("guidance",)
    lora_names = (r"(^|_)toy_blocks_\d", "block names (toy_blocks)")
    lora_shared = ("joint",)
    lora_rank = 15

    def detect(self, t, original):
        n = "toy_in.weight" if original else "x_embedder.proj.weight"
        hidden, in_ch = t[n].shape[:2]
        blocks = "toy_blocks." if original else "toy_transformer_blocks."
        layers = len({k.split(".")[1] for k in t if k.startswith(blocks)})
        cfg = {"_class_name": self.transformer_class, "in_channels": in_ch, "num_layers": layers, "hidden": hidden}
        return self.detection(f"{layers}-layer", cfg, original)


@pytest.fixture
def toy():
    fam = registry.register(Toy())
    try:
        yield fam
    finally:
        registry.unregister("toy")


def _toy_file(path: Path) -> Path:
    z = np.zeros
    save_file({"toy_in.weight": z((8, 16), np.float32), "toy_blocks.0.w": z((8, 8), np.float32),
               "toy_blocks.1.w": z((8, 8), np.float32)}, str(path))
    return path


def test_a_new_family_is_one_registry_entry(tmp_path, toy, capsys):
    from spriteforge.cli.main import main

    path = _toy_file(tmp_path / "toy.safetensors")
    det = detect(path)
    assert (det.family, det.variant, det.layout, det.kind) == ("toy", "2-layer", "original", "transformer")
    assert det.config["in_channels"] == 16
    assert det.needs == ["vae", "t5"]
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "family:     toy" in out and "variant:    2-layer" in out and "needs:      vae, t5" in out
    # in an all-in-one checkpoint the family is found under ComfyUI's prefix, its VAE by the family's latent width
    ckpt = detect_tensors({"model.diffusion_model." + k: v for k, v in _header(path).items()}, name="toy-checkpoint")
    assert (ckpt.family, ckpt.needs) == ("toy", ["vae", "t5"])
    assert registry.vae_config_name("toy", None, 16) == "vae-kl16-sd3"
    assert registry.widget_hints()["rules"]["guidance"]["only"] == ["flux", "flux2", "toy"]


def test_a_new_family_s_lora_names_are_read(tmp_path, toy):
    """LoRA detection (the LoRA layer's and ``inspect``'s) reads the names a family declares: its own names settle it,
    shared joint-attention names make it a candidate in its rank."""
    from spriteforge.lora import detect_family

    assert detect_family(["toy_blocks_0_w"]).candidates == ["toy"]
    assert detect_family(["transformer_blocks_0_attn_add_q_proj"]).candidates == ["flux", "toy", "sd3", "flux2", "qwenimage"]
    z = np.zeros((4, 8), np.float32)
    save_file({"lora_unet_toy_blocks_0_w.lora_down.weight": z, "lora_unet_toy_blocks_0_w.lora_up.weight": z.T.copy()},
              str(tmp_path / "toy-lora.safetensors"))
    det = detect(tmp_path / "toy-lora.safetensors")
    assert (det.kind, det.family, det.extras["rank"]) == ("lora", "toy", 4)


def test_inspect_s_lora_guess_is_the_lora_layer_s(tmp_path):
    """models/detect reads a LoRA's family with the LoRA layer's rules: an SD3.5-medium LoRA (joint attention with
    attn2) is SD3, as lora.detect_family says, not PixArt."""
    from spriteforge.lora import detect_family

    z = np.zeros((4, 8), np.float32)
    mods = ["transformer_blocks.0.attn.add_q_proj", "transformer_blocks.0.attn2.to_q"]
    save_file({f"transformer.{m}.lora_{ab}.weight": (z if ab == "A" else z.T.copy()) for m in mods for ab in "AB"},
              str(tmp_path / "sd35m-lora.safetensors"))
    assert detect_family([m.replace(".", "_") for m in mods]).candidates == ["sd3"]
    assert detect(tmp_path / "sd35m-lora.safetensors").family == "sd3"


def test_a_new_family_folder_is_found_by_its_class(tmp_path, toy):
    d = tmp_path / "toy-pipe"
    (d / "transformer").mkdir(parents=True)
    (d / "model_index.json").write_text(json.dumps({"_class_name": "ToyPipeline", "transformer": ["diffusers", "ToyTransformer2DModel"]}))
    (d / "transformer" / "config.json").write_text(json.dumps({"_class_name": "ToyTransformer2DModel", "in_channels": 16}))
    det = detect(d)
    assert (det.family, det.kind, det.needs) == ("toy", "diffusers", ["vae", "t5"])


def test_without_its_entry_the_family_is_unknown(tmp_path):
    path = _toy_file(tmp_path / "toy.safetensors")
    with pytest.raises(SpriteForgeError) as e:
        detect(path)
    assert e.value.code == UNSUPPORTED_ARCHITECTURE


def _header(path):
    from spriteforge.models.safetensors_header import read_header

    return read_header(path).tensors


# --------------------------------------------------------------------------- the other layers read it


def test_engine_lora_and_pipeline_tables_come_from_the_registry():
    from spriteforge.engines import model_files, text_encoding
    from spriteforge.engines.mlx_models import loading
    from spriteforge.engines.torch_models import building
    from spriteforge.pipeline import FAMILY_DEFAULTS

    lora_family = importlib.import_module("spriteforge.lora.family")
    plan = importlib.import_module("spriteforge.lora.plan")  # (spriteforge.lora.plan is also a function's name)

    for f in registry.families():
        keys = [te.key for te in f.text_encoders]
        assert model_files.TRANSFORMER_CLASSES[f.name] == f.transformer_class
        assert [k for ks in model_files.FOLDER_TEXT_ENCODERS[f.name].values() for k in ks] == keys
        assert list(text_encoding.ROLE_NAMES[f.name]) == keys
        assert list(plan.TE_ORDER[f.name]) == keys
        assert lora_family.NAMES[f.name] == f.label
        assert FAMILY_DEFAULTS[f.name] == f.defaults
        assert loading.PORTS[f.name] == (f.mlx_port, f.transformer_class)
        assert loading.FAMILY_PORTS[f.name][0] == f.name
        assert building.CLASS_MODULES[f.transformer_class] == f.transformer_module


def test_the_editor_hints_are_the_registry_s(repo_dir):
    """web/spriteforge.js reads `family_widgets` from /spriteforge/capabilities; its test fixture holds what the
    registry serves."""
    js = (repo_dir / "web" / "spriteforge.js").read_text()
    assert "FAMILY_RULES = {" not in js and "family_widgets" in js
    fixture = (repo_dir / "web" / "tests" / "spriteforge.test.mjs").read_text()
    line = re.search(r"^\s*family_widgets: (\{.*\}),$", fixture, re.M)
    assert json.loads(line.group(1)) == registry.widget_hints()


# --------------------------------------------------------------------------- prompts and the model call are the family's


class HalfPixArt(PixArt):
    """PixArt with its own prompt length and a model call that halves the network's prediction: a new family's
    ``encode`` and ``forward``, run by the engine code as it is."""

    name = "half_pixart"
    label = "Half PixArt"

    def encode(self, te, prompts, cond, **how):
        cond.embeds, cond.mask = te.t5(prompts, 7)

    def forward(self, den, x, t, cond):
        return super().forward(den, x, t, cond) * 0.5


@pytest.mark.parametrize("engine_name", ["torch", "mlx"])
def test_a_family_s_encode_and_forward_are_what_the_engine_runs(tmp_path, engine_name):
    """Both engines run a family's own ``encode`` and ``forward`` (a tiny PixArt folder, loaded as a user's is)."""
    import dataclasses

    if engine_name == "mlx":
        pytest.importorskip("mlx.core")
    from spriteforge.engines import get_engine

    eng = get_engine(engine_name, "cpu")
    h = eng.load_model(str(T.make_pixart(tmp_path, layout="folder")))
    ref = eng.encode_text(h, ["red potion"])
    short = eng.encode_text(h, ["red potion"], max_length=7)
    x = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    x0_ref = eng.denoiser(h, ref, None, cfg=1.0)(x, 1.5)
    registry.register(HalfPixArt())
    try:
        half = dataclasses.replace(h, family="half_pixart")
        cond = eng.encode_text(half, ["red potion"])
        x0 = eng.denoiser(half, ref, None, cfg=1.0)(x, 1.5)
    finally:
        registry.unregister("half_pixart")
    assert ref.embeds.shape[1] == 300 and cond.embeds.shape[1] == 7  # the family's length, not PixArt-Σ's
    np.testing.assert_array_equal(eng.to_numpy(cond.embeds), eng.to_numpy(short.embeds))
    np.testing.assert_allclose(x - x0, 0.5 * (x - x0_ref), atol=1e-5, rtol=1e-5)  # eps halved: x0 = x - eps * sigma


class SanaLike(Sana):
    """A family whose original layout diffusers' own converter reads (with its placeholders), declared as data."""

    name = "sana_like"
    label = "Sana-like"


def test_a_family_s_original_layout_is_converted_as_it_declares(tmp_path):
    from safetensors.torch import load_file

    from spriteforge.engines.torch_models import convert

    sd = load_file(T.make_sana(tmp_path, layout="original"))
    want = convert.convert_transformer("sana", sd, "original")
    registry.register(SanaLike())
    try:
        got = convert.convert_transformer("sana_like", sd, "original")
    finally:
        registry.unregister("sana_like")
    assert got.keys() == want.keys() and all(got[k] is want[k] or got[k].equal(want[k]) for k in want)


def _family_literals(path: Path) -> set:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    known = {f.name for f in registry.recognised()}  # the recognised-only families too
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in known}


def test_family_names_are_spelled_only_in_the_registry(repo_dir):
    found = set()
    for path in sorted(repo_dir.rglob("*.py")):
        rel = path.relative_to(repo_dir).as_posix()
        if rel.split("/")[0] in ("tests", "training", "benchmarks", "tools") or rel.startswith("models/families/"):
            continue
        if _family_literals(path):
            found.add(rel)
    # no module outside the registry's package branches on a family's name (see HACKING.md "Adding a family")
    assert not found, f"family names spelled outside models/families: {sorted(found)}"
