"""The demo model that travels with the repository (``demo_model/``): an ordinary PixArt-Sigma diffusers folder
trained on procedural sprites by ``training/train_demo_model.py``.

These tests check meaning, not only shapes: the colour word decides the colours, the object word the
silhouette, the night LoRA moves the palette darker and bluer at strength 1 and changes nothing at 0, and a
seed is a sprite. Generation runs diffusers' own ``PixArtSigmaPipeline`` (the reference path for a PixArt
folder) at 32x32 with few steps, and once through the pack's engine + pipeline.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from spriteforge import sprites as S

REPO = Path(__file__).resolve().parents[1]
MODEL = Path(os.environ.get("SPRITEFORGE_DEMO_MODEL_DIR", REPO / "demo_model"))
LORA = MODEL / "loras" / "night.safetensors"
STEPS = 15
CFG = 4.5
SEEDS = (0, 1, 2, 3, 4)

pytestmark = pytest.mark.skipif(not (MODEL / "model_index.json").exists(), reason="demo_model/ is not present")


@lru_cache(maxsize=1)
def _pipe():
    import torch
    from diffusers import PixArtSigmaPipeline

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    pipe = PixArtSigmaPipeline.from_pretrained(MODEL, local_files_only=True, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _lora_state():
    from safetensors import safe_open

    with safe_open(str(LORA), "pt") as f:
        meta = f.metadata() or {}
        sd = {k: f.get_tensor(k).float() for k in f.keys()}
    cfg = json.loads(meta.get("lora_adapter_metadata", "{}"))
    return sd, cfg


@lru_cache(maxsize=None)
def _generate(prompts: tuple, seeds: tuple, lora_scale: float | None = None) -> np.ndarray:
    """RGBA uint8 sprites (key colour removed) for prompt x seed pairs; the night LoRA merged at ``lora_scale``
    (None: not loaded at all)."""
    import torch

    pipe = _pipe()
    tr = pipe.transformer
    saved = []
    if lora_scale is not None:  # merge W + scale * (alpha / r) * B @ A (also at 0, which must change nothing)
        sd, cfg = _lora_state()
        rank, alpha = cfg.get("transformer.r"), cfg.get("transformer.lora_alpha")
        with torch.no_grad():
            for k, a in sd.items():
                if not k.endswith(".lora_A.weight"):
                    continue
                mod = tr.get_submodule(k[len("transformer."):-len(".lora_A.weight")])
                b = sd[k.replace("lora_A", "lora_B")]
                saved.append((mod, mod.weight.detach().clone()))
                mod.weight += lora_scale * (alpha / rank if rank else 1.0) * (b @ a)
    try:
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        out = pipe(list(prompts), num_inference_steps=STEPS, guidance_scale=CFG, height=32, width=32,
                   use_resolution_binning=False, generator=gens, output_type="np", max_sequence_length=16)
    finally:
        with torch.no_grad():
            for mod, w in saved:
                mod.weight.copy_(w)
    return S.key_to_alpha(out.images)


def _grid(prompts, seeds=SEEDS, lora_scale=None):
    pairs = [(p, s) for p in prompts for s in seeds]
    imgs = _generate(tuple(p for p, _ in pairs), tuple(s for _, s in pairs), lora_scale)
    return {pair: im for pair, im in zip(pairs, imgs)}


# --------------------------------------------------------------------------- the folder


def test_folder_is_an_ordinary_small_pixart_sigma_folder():
    index = json.loads((MODEL / "model_index.json").read_text())
    assert index["_class_name"] == "PixArtSigmaPipeline"
    for part in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert part in index and (MODEL / part).is_dir()
    weights = list(MODEL.rglob("*.safetensors"))
    assert len(weights) >= 4 and not list(MODEL.rglob("*.bin")) and not list(MODEL.rglob("*.pt"))
    total = sum(w.stat().st_size for w in weights)
    assert total < 16 * 2**20, f"{total / 2**20:.1f} MiB of weights"
    from safetensors import safe_open

    for w in weights:
        with safe_open(str(w), "pt") as f:
            assert all(str(f.get_slice(k).get_dtype()) in ("F16", "I64") for k in f.keys()), w
    card = (MODEL / "MODEL_CARD.md").read_text()
    assert "licen" in card.lower() and "Apache-2.0" in card
    assert (MODEL / "loss_curve.png").stat().st_size > 1000 and (MODEL / "training_log.csv").stat().st_size > 100
    assert (MODEL / "samples.png").exists()


def test_tokenizer_knows_every_caption_word():
    tok = _pipe().tokenizer
    for w in S.vocabulary():
        ids = tok(w).input_ids
        assert len(ids) == 2 and ids[0] > 2 and ids[1] == tok.eos_token_id, w
    assert tok("").input_ids == [tok.eos_token_id]


# --------------------------------------------------------------------------- meaning


def test_same_seed_same_sprite_and_other_seed_other_sprite():
    a = _generate(("red potion", "red potion"), (7, 8))
    b = _generate.__wrapped__(("red potion", "red potion"), (7, 8))
    assert np.array_equal(a, b)
    assert not np.array_equal(a[0], a[1])


def test_sprites_have_exact_alpha_and_a_transparent_background():
    g = _grid(("red potion", "blue gem", "green tree"))
    for im in g.values():
        assert set(np.unique(im[..., 3])) <= {0, 255}
    covered = [(im[..., 3] > 0).mean() for im in g.values()]
    border = [np.concatenate([im[0, :, 3], im[-1, :, 3], im[:, 0, 3], im[:, -1, 3]]).mean() / 255 for im in g.values()]
    assert np.median(covered) > 0.08 and max(covered) < 0.95
    assert np.median(border) < 0.1


COLOUR_PROMPTS = (("red potion", "red"), ("blue gem", "blue"), ("green slime", "green"), ("yellow star", "yellow"),
                  ("purple heart", "purple"), ("orange coin", "orange"), ("cyan shield", "cyan"), ("red sword", "red"))


def test_colour_word_dominates_the_sprite_colours():
    g = _grid(tuple(p for p, _ in COLOUR_PROMPTS))
    hits, shares = 0, {}
    for prompt, fam in COLOUR_PROMPTS:
        per = [S.chromatic_shares(g[(prompt, s)])[fam] for s in SEEDS]
        shares[prompt] = [round(x, 2) for x in per]
        ok = sum(S.dominant_family(g[(prompt, s)]) == fam for s in SEEDS)
        assert ok > len(SEEDS) / 2, (prompt, shares[prompt])  # the colour wins for most seeds
        assert np.median(per) > 0.4, (prompt, shares[prompt])
        hits += ok
    # Over all prompts: the named colour wins 9 times in 10 and is "mostly" the sprite's colour.
    # (Measured: 40/40 wins; thin objects such as swords are the weakest, "red sword" median share 0.51 - the
    # model before issue #15's retraining: 38/40, 0.41.)
    assert hits >= 0.9 * len(COLOUR_PROMPTS) * len(SEEDS), shares
    assert np.median([x for v in shares.values() for x in v]) > 0.7, shares


def test_same_object_in_other_colours_changes_colour_not_shape():
    g = _grid(("red gem", "blue gem"))
    for s in SEEDS:
        assert S.dominant_family(g[("red gem", s)]) == "red" and S.dominant_family(g[("blue gem", s)]) == "blue"


SHAPE_KINDS = ("potion", "sword", "coin", "key", "tree", "chest", "heart", "slime")


@lru_cache(maxsize=1)
def _reference_silhouettes():
    """Mean silhouette of each kind over the generator's variations (medium size, both outline states)."""
    ref = {}
    for k in S.KINDS:
        ms = [S.silhouette(S.render(S.SpriteSpec(k, "red", sz, o, v))) for v in range(6) for o in (False, True) for sz in ("", "large")]
        ref[k] = np.mean(ms, axis=0)
    return ref


def _closest_kind(mask):
    ref = _reference_silhouettes()
    m = mask.astype(np.float32)
    score = {k: float((m * r).sum() / (np.sqrt((m * m).sum() * (r * r).sum()) + 1e-6)) for k, r in ref.items()}
    return max(score, key=score.get)


def test_different_objects_differ_in_silhouette():
    prompts = tuple(f"red {k}" for k in SHAPE_KINDS)
    g = _grid(prompts)
    masks = {(k, s): S.silhouette(g[(f"red {k}", s)]) for k in SHAPE_KINDS for s in SEEDS}
    within = np.mean([S.iou(masks[(k, a)], masks[(k, b)]) for k in SHAPE_KINDS for a in SEEDS for b in SEEDS if a < b])
    between = np.mean([S.iou(masks[(k, s)], masks[(j, s)]) for k in SHAPE_KINDS for j in SHAPE_KINDS if k < j for s in SEEDS])
    assert within > between + 0.15, (within, between)
    right = sum(_closest_kind(masks[(k, s)]) == k for k in SHAPE_KINDS for s in SEEDS)
    assert right >= 0.7 * len(SHAPE_KINDS) * len(SEEDS), right


NIGHT_PROMPTS = ("red potion", "yellow star", "green tree", "orange coin", "white slime", "pink heart")


def test_night_lora_moves_the_palette_darker_and_bluer_at_1_and_not_at_0():
    base = _grid(NIGHT_PROMPTS)
    zero = _grid(NIGHT_PROMPTS, lora_scale=0.0)
    night = _grid(NIGHT_PROMPTS, lora_scale=1.0)
    base_again = _generate.__wrapped__(tuple(p for p in NIGHT_PROMPTS for _ in SEEDS), tuple(s for _ in NIGHT_PROMPTS for s in SEEDS))
    for k, im in base.items():
        assert np.array_equal(im, zero[k])  # strength 0 is the base model, bit for bit
    assert np.array_equal(np.stack(list(base.values())), base_again)  # and the LoRA was taken out again exactly
    darker = sum(S.mean_luminance(night[k]) < S.mean_luminance(base[k]) - 0.03 for k in base)
    bluer = sum(S.blue_share(night[k]) > S.blue_share(base[k]) + 0.02 for k in base)
    # Measured: darker 30/30, bluer 30/30 (the model before issue #15's retraining: 30/30, 23/30; white and
    # yellow sprites shift least in hue).
    assert darker >= 0.8 * len(base) and bluer >= 0.7 * len(base), (darker, bluer, len(base))
    lum_b = np.mean([S.mean_luminance(v) for v in base.values()])
    lum_n = np.mean([S.mean_luminance(v) for v in night.values()])
    assert lum_n < lum_b - 0.1, (lum_b, lum_n)


def test_lora_file_is_in_the_diffusers_peft_format():
    sd, cfg = _lora_state()
    assert cfg["transformer.r"] == cfg["transformer.lora_alpha"] > 0
    names = _pipe().transformer.state_dict().keys()
    for k, v in sd.items():
        assert k.startswith("transformer.transformer_blocks.") and (k.endswith(".lora_A.weight") or k.endswith(".lora_B.weight"))
        base = k[len("transformer."):].replace(".lora_A.weight", ".weight").replace(".lora_B.weight", ".weight")
        assert base in names, k
        assert cfg["transformer.r"] in v.shape


# --------------------------------------------------------------------------- the pack's own path


def test_the_pack_loads_and_generates_the_demo_model():
    from spriteforge import pipeline as P
    from spriteforge.engines import get_engine

    eng = get_engine("torch", "cpu")
    h = eng.load_model(str(MODEL))
    assert h.family == "pixart"
    reds = 0
    for seed in (0, 1, 2):
        img = P.generate(eng, h, P.GenerateParams(prompt="red potion", seed=seed, steps=STEPS, cfg=CFG, width=32, height=32))
        assert img.shape == (1, 32, 32, 3)
        rgba = S.key_to_alpha(img[0])
        reds += S.dominant_family(rgba) == "red" and (rgba[..., 3] > 0).mean() > 0.05
    assert reds >= 2
