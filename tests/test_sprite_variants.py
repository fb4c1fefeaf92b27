"""The shipped ``sprite_variants`` workflow end to end on tiny real-format models: a reference sprite (the shipped
indexed ``input/spriteforge_knight_sprite.png``) -> Reference Sprite for Edit -> five FLUX.2 [klein] Edit nodes
(``flux-2-klein-4b.safetensors`` + ``qwen_3_4b.safetensors`` + ``flux2-vae.safetensors`` of the models root
``test_workflows_e2e`` builds) -> Match Reference Sprite -> Save Indexed each -> Sprite Batch -> Sprite Sheet.

Every variant must come out an indexed PNG of the reference's size whose colours are the reference's (the random
tiny model draws noise, not a knight: what is checked is the lock, which holds whatever the model draws), and the
sheet holds the reference and the five variants.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from spriteforge.tests import test_workflows_e2e as E2E  # noqa: E402
from spriteforge.tests.test_workflows_e2e import tiny_models_root, workflow_runs  # noqa: E402,F401

NAME = "sprite_variants"
WF = E2E.WF
SPRITE = "spriteforge_knight_sprite.png"
VARIANTS = ("recolour", "damaged", "night", "left", "back")


def _png(path):
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im.copy()


def _rgba(path) -> np.ndarray:
    return np.asarray(_png(path).convert("RGBA"))


def _opaque_colours(rgba: np.ndarray) -> set:
    return {tuple(c) for c in rgba[..., :3][rgba[..., 3] > 0].tolist()}


@pytest.fixture(scope="module")
def variants_run(workflow_runs):  # noqa: F811
    """The run ``test_workflows_e2e`` makes of every shipped workflow (once a session): 2 edit steps, the reference
    enlarged x2 to 64x64 (x32 = 1024 as shipped)."""
    return workflow_runs(NAME)


def test_the_workflow_edits_five_variants_on_flux2_klein():
    """(The generic checks: test_workflows_e2e's NAMES holds it: built by tools/build_workflows.py, valid with the
    models installed, release file names.)"""
    assert NAME in E2E.NAMES
    api = json.loads((WF / "api" / f"{NAME}.json").read_text())
    (load,) = [n for n in api.values() if n["class_type"] == "SpriteForgeLoadModel"]
    assert load["inputs"]["model"] in E2E.RELEASE_FILES["diffusion_models"]
    assert load["inputs"]["vae"] in E2E.RELEASE_FILES["vae"]
    assert load["inputs"]["text_encoder_1"] in E2E.RELEASE_FILES["text_encoders"]
    edits = [n for n in api.values() if n["class_type"] == "SpriteForgeEdit"]
    assert len(edits) == len(VARIANTS) and len({e["inputs"]["prompt"] for e in edits}) == len(VARIANTS)
    matches = [n for n in api.values() if n["class_type"] == "SpriteForgePixelMatchReference"]
    assert len(matches) == len(VARIANTS) + 1  # each variant, and the reference itself for the sheet's first frame
    assert all(m["inputs"]["reference"] == api_ref(api) for m in matches)


def api_ref(api: dict) -> list:
    """The link [node id, 0] of the LoadImage that reads the reference sprite."""
    (nid,) = [k for k, n in api.items() if n["class_type"] == "LoadImage" and n["inputs"]["image"] == SPRITE]
    return [nid, 0]


def test_the_shipped_reference_is_an_indexed_sprite():
    im = _png(WF / "input" / SPRITE)
    assert im.mode == "P" and im.size == (32, 32) and im.info.get("transparency") == 0
    rgba = _rgba(WF / "input" / SPRITE)
    assert set(np.unique(rgba[..., 3]).tolist()) == {0, 255} and 4 <= len(_opaque_colours(rgba)) <= 16


@pytest.mark.slow
def test_every_variant_is_an_indexed_sprite_locked_to_the_reference(variants_run):
    ref_im = _png(Path(variants_run["inputs"]) / SPRITE)  # the shipped file, copied as it is (32x32)
    ref = _rgba(Path(variants_run["inputs"]) / SPRITE)
    assert ref_im.size == (32, 32) and np.array_equal(ref, _rgba(WF / "input" / SPRITE))
    ref_colours = _opaque_colours(ref)
    out = Path(variants_run["out"]) / "spriteforge" / "variants"
    for name in VARIANTS:
        (png,) = sorted(out.glob(f"knight_{name}_0*.png"))
        im = _png(png)
        assert im.mode == "P" and im.size == ref_im.size and im.info.get("transparency") == 0, png.name
        # the file's palette is the reference file's: same colours at the same indices
        assert im.getpalette()[: 3 * (len(ref_colours) + 1)] == ref_im.getpalette()[: 3 * (len(ref_colours) + 1)]
        rgba = _rgba(png)
        assert set(np.unique(rgba[..., 3]).tolist()) <= {0, 255}
        assert _opaque_colours(rgba) <= ref_colours, f"{png.name} has colours the reference does not"
        assert sorted(out.glob(f"knight_{name}_palette*.hex"))
    (sheet,) = sorted(out.glob("knight_sheet_0*.png"))
    sim = _png(sheet)
    assert sim.mode == "P"
    atlas = json.loads(sheet.with_suffix(".json").read_text())
    frames = list(atlas["frames"].values())
    assert len(frames) == 1 + len(VARIANTS)
    srgba = np.asarray(sim.convert("RGBA"))
    assert _opaque_colours(srgba) <= ref_colours
    cut = []
    for f in frames:
        r = f["frame"]
        assert (r["w"], r["h"]) == ref_im.size
        cut.append(srgba[r["y"]:r["y"] + r["h"], r["x"]:r["x"] + r["w"]])
    # frame 0 is the reference itself, matched back to itself; the others are the saved variants
    assert np.array_equal(cut[0], np.where(ref[..., 3:] > 0, ref, 0))
    for name, frame in zip(VARIANTS, cut[1:]):
        (png,) = sorted(out.glob(f"knight_{name}_0*.png"))
        saved = _rgba(png)
        assert np.array_equal(frame, np.where(saved[..., 3:] > 0, saved, 0)), name


@pytest.mark.slow
def test_on_mlx_the_variants_are_locked_too_and_match_torchs(variants_run, tiny_models_root, tmp_path_factory):  # noqa: F811
    """The same workflow with Load Model's engine mlx: every variant locked to the reference as on torch, and the
    files agree with torch's (the edits are within 2/255; the lock's cell colours and key threshold are not
    continuous, so a few pixels may differ)."""
    pytest.importorskip("mlx.core")
    res = E2E.run_small(NAME, tiny_models_root, tmp_path_factory.getbasetemp() / "workflow_runs", engine="mlx")
    ref = _rgba(Path(res["inputs"]) / SPRITE)
    out_t = Path(variants_run["out"]) / "spriteforge" / "variants"
    out_m = Path(res["out"]) / "spriteforge" / "variants"
    for name in (*VARIANTS, "sheet"):
        (pt,) = sorted(out_t.glob(f"knight_{name}_0*.png"))
        (pm,) = sorted(out_m.glob(f"knight_{name}_0*.png"))
        a, b = _rgba(pt), _rgba(pm)
        assert _png(pm).mode == "P" and a.shape == b.shape
        assert set(np.unique(b[..., 3]).tolist()) <= {0, 255} and _opaque_colours(b) <= _opaque_colours(ref)
        assert (a != b).any(-1).mean() <= 0.02, f"{name}: torch and MLX differ in {(a != b).any(-1).mean():.1%}"
