"""The README's main job: the sprite-demo workflow on the built-in model, end to end, as a user runs it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
WF = REPO / "example_workflows" / "api" / "sprite_demo.json"

pytestmark = pytest.mark.skipif(not (REPO / "demo_model" / "model_index.json").exists(),
                                reason="demo_model/ is not present")


def test_main_job_makes_indexed_sprites_and_a_sheet(tmp_path):
    out = subprocess.run(
        ["spriteforge", "-q", "run", str(WF), "--out", str(tmp_path), "--set", "3.batch_size=4", "--set", "3.steps=12"],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr
    sprites = sorted(tmp_path.rglob("demo_sprite_*.png"))
    sheets = sorted(tmp_path.rglob("demo_sheet_*.png"))
    assert len(sprites) == 4 and len(sheets) == 1
    red_share = []
    for p in sprites:
        with Image.open(p) as im:
            assert im.mode == "P" and im.size == (32, 32) and im.info.get("transparency") == 0
            rgba = np.asarray(im.convert("RGBA"))
        alpha = rgba[..., 3]
        assert set(np.unique(alpha)) <= {0, 255}
        assert 0.05 < (alpha > 0).mean() < 0.95  # a sprite on a transparent background, not all or nothing
        px = rgba[alpha > 0][:, :3].astype(int)
        red_share.append(((px[:, 0] > px[:, 1] + 40) & (px[:, 0] > px[:, 2] + 40)).mean())
    assert np.median(red_share) > 0.4, red_share  # "red potion" is mostly red
    atlas = json.loads(next(tmp_path.rglob("demo_sheet_*.json")).read_text())
    assert len(atlas["frames"]) == 4
