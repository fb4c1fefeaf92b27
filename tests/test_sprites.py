"""The procedural sprite generator: deterministic, well-formed RGBA, captions that mean what they say."""

from __future__ import annotations

import numpy as np
import pytest

from spriteforge import sprites as S


def test_at_least_ten_kinds_and_distinct_colours():
    assert len(S.KINDS) >= 10 and len(set(S.KINDS)) == len(S.KINDS)
    assert {"potion", "sword", "shield", "gem", "coin", "heart", "key", "tree", "slime", "chest"} <= set(S.KINDS)
    assert len(S.COLORS) >= 8


def test_same_seed_same_sprite_and_caption():
    a, ca = S.sample(1234)
    b, cb = S.sample(1234)
    assert ca == cb and np.array_equal(a, b)
    imgs1, caps1, _ = S.dataset(40, seed=7)
    imgs2, caps2, _ = S.dataset(40, seed=7)
    assert caps1 == caps2 and np.array_equal(imgs1, imgs2)
    imgs3, _, _ = S.dataset(40, seed=8)
    assert not np.array_equal(imgs1, imgs3)


def test_sprites_are_32x32_rgba_with_binary_alpha_and_transparent_border():
    imgs, caps, specs = S.dataset(300, seed=3)
    assert imgs.shape == (300, 32, 32, 4) and imgs.dtype == np.uint8
    assert set(np.unique(imgs[..., 3])) <= {0, 255}
    assert (imgs[..., :3][imgs[..., 3] == 0] == 0).all()  # clean transparent pixels
    cover = (imgs[..., 3] > 0).mean(axis=(1, 2))
    assert cover.min() > 0.04 and cover.max() < 0.9
    # nothing is cut at the frame for sprites with an outline (the outline needs the border pixel)
    for im, sp in zip(imgs, specs):
        if sp.outline:
            a = im[..., 3]
            assert a[0].max() == 0 and a[-1].max() == 0 and a[:, 0].max() == 0 and a[:, -1].max() == 0


def test_captions_follow_the_grammar_and_round_trip():
    spec = S.SpriteSpec("gem", "blue", "small", True)
    assert S.caption(spec) == "small blue gem with outline"
    assert S.caption(S.SpriteSpec("potion", "red")) == "red potion"
    _, caps, specs = S.dataset(200, seed=5)
    vocab = set(S.vocabulary())
    for c, sp in zip(caps, specs):
        assert set(c.split()) <= vocab
        back = S.parse_caption(c)
        assert (back.kind, back.color, back.size, back.outline) == (sp.kind, sp.color, sp.size, sp.outline)
    with pytest.raises(ValueError):
        S.SpriteSpec("dragon", "red")


def test_colour_word_dominates_the_drawn_colours():
    for color in ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink"):
        for i, kind in enumerate(S.KINDS):
            im = S.render(S.SpriteSpec(kind, color, "", i % 2 == 0, variant=i))
            assert S.dominant_family(im) == S.WORD_FAMILY[color], (color, kind, S.chromatic_shares(im))


def test_kinds_differ_in_silhouette_and_sizes_in_area():
    masks = {k: S.silhouette(S.render(S.SpriteSpec(k, "red", "large", False, 1))) for k in S.KINDS}
    for a in S.KINDS:
        for b in S.KINDS:
            if a < b:
                assert S.iou(masks[a], masks[b]) < 0.85, (a, b)
    small = S.silhouette(S.render(S.SpriteSpec("gem", "red", "small", False, 2))).sum()
    large = S.silhouette(S.render(S.SpriteSpec("gem", "red", "large", False, 2))).sum()
    assert large > 1.8 * small


def test_outline_is_dark_and_variations_exist():
    plain = S.render(S.SpriteSpec("heart", "pink", "", False, 4))
    lined = S.render(S.SpriteSpec("heart", "pink", "", True, 4))
    dark = lambda im: ((im[..., :3].astype(int).sum(-1) < 120) & (im[..., 3] > 0)).sum()
    assert dark(lined) > dark(plain) + 20
    variants = {S.render(S.SpriteSpec("potion", "red", "", False, v)).tobytes() for v in range(12)}
    assert len(variants) >= 6


def test_key_colour_round_trip_gives_exact_alpha():
    imgs, _, _ = S.dataset(50, seed=9)
    rgb = S.to_key_rgb(imgs)
    assert rgb.shape == (50, 32, 32, 3)
    back = S.key_to_alpha(rgb)
    assert np.array_equal(back[..., 3], imgs[..., 3])
    assert np.array_equal(back, imgs)
    # float input with a slightly off background still keys out, and alpha stays 0/255
    f = rgb.astype(np.float32) / 255.0
    f[imgs[..., 3] == 0] += np.array([-0.08, 0.06, -0.05], np.float32)
    back = S.key_to_alpha(f)
    assert set(np.unique(back[..., 3])) <= {0, 255}
    assert np.array_equal(back[..., 3], imgs[..., 3])


def test_contact_sheet(tmp_path):
    imgs, caps, _ = S.dataset(8, seed=1)
    sheet = S.contact_sheet(imgs, caps, cols=4)
    assert sheet.size[0] >= 4 * 32 * 4
    sheet.save(tmp_path / "s.png")
