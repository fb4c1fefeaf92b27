#!/usr/bin/env python
"""Train SpriteForge's demo model on procedural sprites, on the CPU, and write it as a diffusers folder.

    nice -n 10 python training/train_demo_model.py --out demo_model --work /tmp/sf_demo_train

Stages (each cached in --work, so a rerun resumes; ``--stage`` runs one):

1. ``data``      - procedural sprites (:mod:`spriteforge.sprites`), RGB on the magenta key colour, captions;
                   a sentencepiece unigram model trained on the caption vocabulary -> ``T5Tokenizer``.
2. ``vae``       - a small ``AutoencoderKL`` (3 -> 4 latent channels, factor 4: 32x32 -> 4x8x8).
3. ``dit``       - a tiny ``PixArtTransformer2DModel`` (PixArt-Sigma style: adaLN-single, no extra
                   conditions, epsilon prediction) trained jointly with a tiny ``T5EncoderModel``,
                   10 % caption dropout (for classifier-free guidance), optional Min-SNR loss weighting,
                   EMA of both; ``--init-dit`` continues from an earlier output folder instead.
4. ``lora``      - a rank-4 LoRA on the DiT's attention projections for a "night palette" style
                   (darker, blue-shifted colours) the base model never saw; written in the diffusers/peft key format.
5. ``save``      - ``model_index.json`` (PixArtSigmaPipeline), transformer/ vae/ text_encoder/ tokenizer/ scheduler/
                   (safetensors, fp16), ``loras/night.safetensors``, ``training_log.csv``, ``loss_curve.png``,
                   ``training.json``.

Seeded (``--seed``); single-threaded by default (``--threads``; on a machine shared with other work, one thread
was up to 16x faster per step than two). Per-stage wall and CPU seconds go to ``training.json``. No network.

The shipped demo model is the default run followed by two continuations of the DiT stage (see its MODEL_CARD.md):

    python training/train_demo_model.py --out /tmp/m0 --work /tmp/w0 --threads 2
    python training/train_demo_model.py --out /tmp/m1 --work /tmp/w1 --reuse-vae /tmp/m0 --init-dit /tmp/m0 \
        --dit-steps 1400 --dit-lr 2.5e-4 --min-snr 5
    python training/train_demo_model.py --out demo_model --work /tmp/w2 --reuse-vae /tmp/m0 --init-dit /tmp/m1 \
        --dit-steps 1400 --dit-lr 2.5e-4 --min-snr 5
This script is not part of the pack's runtime; it needs torch, diffusers, transformers, sentencepiece.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

LORA_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
MAX_TOKENS = 10

# "night palette": darker, blue-shifted colours; applied to opaque sprite pixels only
NIGHT_MUL = np.array([0.42, 0.5, 0.72], np.float32)
NIGHT_ADD = np.array([6.0, 14.0, 52.0], np.float32)


def night(rgba: np.ndarray) -> np.ndarray:
    out = rgba.copy()
    m = out[..., 3] >= 128
    out[..., :3][m] = np.clip(out[..., :3][m].astype(np.float32) * NIGHT_MUL + NIGHT_ADD, 0, 255).astype(np.uint8)
    return out


def log(msg: str):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


# --------------------------------------------------------------------------- stage 1: data + tokenizer


def build_tokenizer(work: Path):
    import sentencepiece as spm
    import transformers

    from spriteforge import sprites as S
    from spriteforge.sprites.terrain import TERRAINS

    tok_dir = work / "tokenizer"
    if (tok_dir / "tokenizer_config.json").exists():
        return transformers.T5Tokenizer.from_pretrained(tok_dir, local_files_only=True)
    corpus = work / "captions.txt"
    lines = []
    for kind in S.KINDS:
        for col in S.COLORS:
            for size in ("small", "", "large"):
                for outline in (False, True):
                    lines.append(S.caption(S.SpriteSpec(kind, col, size, outline)))
    lines += list(TERRAINS)
    corpus.write_text("\n".join(lines) + "\n")
    prefix = work / "spiece"
    # a word-level sentencepiece model of the caption vocabulary (case-folded): pad 0, eos 1, unk 2 as T5 expects
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(prefix), model_type="word", vocab_size=len(S.vocabulary()) + len(TERRAINS) + 3,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        character_coverage=1.0, num_threads=1, normalization_rule_name="nmt_nfkc_cf", minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(prefix) + ".model")
    # the same pieces and ids as a transformers T5Tokenizer (tokenizers backend; tokenizer.json needs no protobuf),
    # with a lower-casing normaliser like the sentencepiece model's case folding
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    tok = transformers.T5Tokenizer(vocab=vocab, extra_ids=0)
    from tokenizers import normalizers

    bt = tok.backend_tokenizer
    bt.normalizer = normalizers.Sequence([normalizers.Lowercase()] + ([bt.normalizer] if bt.normalizer is not None else []))
    tok.model_max_length = 300
    tok.save_pretrained(tok_dir)
    import shutil

    shutil.copy(str(prefix) + ".model", tok_dir / "spiece.model")  # for transformers 4's sentencepiece T5Tokenizer
    tok = transformers.T5Tokenizer.from_pretrained(tok_dir, local_files_only=True)
    # (transformers 5's T5Tokenizer rebuilds its normaliser on load, so upper case is not folded there; the
    # pack's loaders fold case for lower-case-only vocabularies, engines/tokenizer_case.py; diffusers' PixArt
    # pipelines lower-case prompts themselves)
    assert tok("small blue gem").input_ids == sp.encode("small blue gem") + [1], (tok("small blue gem").input_ids, sp.encode("small blue gem"))
    for w in [*S.vocabulary(), *TERRAINS]:  # every caption word is a single token
        ids = tok(w).input_ids
        assert len(ids) == 2 and ids[-1] == 1 and ids[0] > 2, (w, ids, tok.convert_ids_to_tokens(ids))
        assert sp.encode(w) == ids[:1]
    return tok


def build_data(work: Path, n: int, seed: int, n_terrain: int = 0):
    """``n`` sprites, then ``n_terrain`` seamless terrain textures (:mod:`spriteforge.sprites.terrain`, captioned
    with the terrain's name): the sprites come first, so ``caps[:k]`` (the night LoRA's data) are sprites only."""
    from spriteforge import sprites as S
    from spriteforge.sprites.terrain import terrain_dataset

    f = work / "data.npz"
    if f.exists():
        d = np.load(f, allow_pickle=False)
        return d["rgba"], list(d["captions"])
    rgba, caps, _ = S.dataset(n, seed=seed)
    if n_terrain:
        tex, names = terrain_dataset(n_terrain, seed=seed + 17)
        rgba, caps = np.concatenate([rgba, tex]), caps + names
    np.savez_compressed(f, rgba=rgba, captions=np.array(caps))
    return rgba, caps


def to_tensor(rgba: np.ndarray):
    import torch

    from spriteforge import sprites as S

    rgb = S.to_key_rgb(rgba).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(rgb.transpose(0, 3, 1, 2).copy())


# --------------------------------------------------------------------------- stage 2: VAE


def vae_config():
    return dict(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
        block_out_channels=[16, 32, 32], layers_per_block=1, norm_num_groups=16, sample_size=32, act_fn="silu",
        mid_block_add_attention=True,
    )


def train_vae(work: Path, rgba: np.ndarray, steps: int, batch: int, seed: int, logw):
    import torch
    from diffusers import AutoencoderKL

    out = work / "vae"
    if (out / "config.json").exists():
        return AutoencoderKL.from_pretrained(out, local_files_only=True)
    torch.manual_seed(seed)
    vae = AutoencoderKL(**vae_config())
    x_all = to_tensor(rgba)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / steps))))
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    ema_loss = None
    for step in range(steps):
        idx = torch.randint(0, x_all.shape[0], (batch,), generator=g)
        x = x_all[idx]
        post = vae.encode(x).latent_dist
        z = post.sample(generator=g)
        rec = vae.decode(z).sample
        mse = torch.nn.functional.mse_loss(rec, x)
        l1 = (rec - x).abs().mean()
        kl = post.kl().mean() / (4 * 8 * 8)
        loss = mse + 0.5 * l1 + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        if step % 25 == 0 or step == steps - 1:
            logw("vae", step, loss.item(), mse=mse.item(), kl=kl.item(), elapsed=time.time() - t0)
            if step % 100 == 0:
                log(f"vae step {step}/{steps} loss {loss.item():.4f} (ema {ema_loss:.4f}) mse {mse.item():.4f} kl {kl.item():.2f} {time.time() - t0:.0f}s")
    # scaling factor: 1 / std of the latent means over the data
    vae.eval()
    with torch.no_grad():
        zs = torch.cat([vae.encode(x_all[i:i + 256]).latent_dist.mode() for i in range(0, min(4096, len(x_all)), 256)])
    sf = float(1.0 / zs.std())
    vae.register_to_config(scaling_factor=sf)
    log(f"vae done in {time.time() - t0:.0f}s, latent std {zs.std():.3f} mean {zs.mean():.3f} -> scaling_factor {sf:.4f}")
    vae.save_pretrained(out, safe_serialization=True)
    return vae


def finetune_vae(work: Path, base: Path, rgba: np.ndarray, n_sprites: int, steps: int, batch: int, seed: int, logw,
                 anchor: float = 4.0):
    """The VAE of an earlier model (``base``) taught the terrain textures as well: encoder and decoder trained on
    batches that are half sprites, half textures, with the sprites' latents held to the old encoder's (``anchor``
    times their MSE in the DiT's latent units), so the earlier DiT's sprites stay valid; the scaling factor is kept."""
    import torch
    from diffusers import AutoencoderKL

    out = work / "vae"
    if (out / "config.json").exists():
        return AutoencoderKL.from_pretrained(out, local_files_only=True)
    old = AutoencoderKL.from_pretrained(base / "vae", local_files_only=True, torch_dtype=torch.float32).eval().requires_grad_(False)
    vae = copy.deepcopy(old).train().requires_grad_(True)
    sf = float(old.config.scaling_factor)
    torch.manual_seed(seed + 40)
    opt = torch.optim.AdamW(vae.parameters(), lr=4e-4, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / steps))))
    x_all = to_tensor(rgba)
    n_tex = len(x_all) - n_sprites
    g = torch.Generator().manual_seed(seed + 41)
    t0, ema_loss, half = time.time(), None, batch // 2
    for step in range(steps):
        spr = torch.randint(0, n_sprites, (half,), generator=g)
        tex = n_sprites + torch.randint(0, max(n_tex, 1), (batch - half,), generator=g)
        x = x_all[torch.cat([spr, tex])]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=g)).sample
        mse = torch.nn.functional.mse_loss(rec, x)
        kl = post.kl().mean() / (4 * 8 * 8)
        with torch.no_grad():
            ref = old.encode(x[:half]).latent_dist.mode()
        held = torch.nn.functional.mse_loss(post.mode()[:half] * sf, ref * sf)
        loss = mse + 0.5 * (rec - x).abs().mean() + 1e-4 * kl + anchor * held
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        if step % 25 == 0 or step == steps - 1:
            logw("vae", step, loss.item(), mse=mse.item(), kl=held.item(), loss_ema=ema_loss, elapsed=time.time() - t0)
            if step % 100 == 0:
                log(f"vae fine-tune step {step}/{steps} loss {loss.item():.4f} (ema {ema_loss:.4f}) mse {mse.item():.4f} "
                    f"sprite latents held {held.item():.4f} {time.time() - t0:.0f}s")
    vae.eval().requires_grad_(False)
    vae.register_to_config(scaling_factor=sf)
    vae.save_pretrained(out, safe_serialization=True)
    log(f"vae fine-tune done in {time.time() - t0:.0f}s")
    return vae


def train_decoder(work: Path, vae, rgba: np.ndarray, steps: int, batch: int, seed: int, logw, n_sprites: int | None = None):
    """More decoder training with the encoder frozen: the latents (and so the DiT's training data and the
    scaling factor) stay exactly the same, only the reconstruction gets sharper. Depends only on the
    ``vae`` stage, so it may run beside the ``dit`` stage (``--stage decoder``).

    With terrain textures after the first ``n_sprites`` images, half of each batch is textures, decoded with
    circular padding (as the pack decodes seamless tiles): a decoder trained on zero-padded frames only reads its
    position from the padding and draws noise when it wraps."""
    import torch
    from diffusers import AutoencoderKL

    out = work / "vae_decoder"
    if (out / "config.json").exists():
        return AutoencoderKL.from_pretrained(out, local_files_only=True)
    vae = copy.deepcopy(vae)
    torch.manual_seed(seed + 20)
    vae.requires_grad_(False)
    vae.decoder.requires_grad_(True)
    vae.post_quant_conv.requires_grad_(True)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / steps))))
    x_all = to_tensor(rgba)
    g = torch.Generator().manual_seed(seed + 21)
    t0 = time.time()
    ema_loss = None
    vae.train()
    from spriteforge.engines.torch_models.generation import circular

    textures = n_sprites is not None and n_sprites < len(x_all)
    for step in range(steps):
        if textures:
            half = batch // 2
            idx = torch.cat([torch.randint(0, n_sprites, (half,), generator=g),
                             torch.randint(n_sprites, len(x_all), (batch - half,), generator=g)])
        else:
            idx = torch.randint(0, x_all.shape[0], (batch,), generator=g)
        x = x_all[idx]
        with torch.no_grad():
            if textures:  # textures are encoded as the DiT's data are: circularly (see encode_latents)
                with circular(vae.encoder, True):
                    z_t = vae.encode(x[half:]).latent_dist.sample(generator=g)
                z = torch.cat([vae.encode(x[:half]).latent_dist.sample(generator=g), z_t])
            else:
                z = vae.encode(x).latent_dist.sample(generator=g)
        if textures:
            with circular(vae.decoder, True):
                rec_t = vae.decode(z[half:]).sample
            rec = torch.cat([vae.decode(z[:half]).sample, rec_t])
        else:
            rec = vae.decode(z).sample
        mse = torch.nn.functional.mse_loss(rec, x)
        loss = mse + 0.5 * (rec - x).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        if step % 25 == 0 or step == steps - 1:
            logw("vae_decoder", step, loss.item(), mse=mse.item(), loss_ema=ema_loss, elapsed=time.time() - t0)
            if step % 100 == 0:
                log(f"decoder step {step}/{steps} loss {loss.item():.4f} (ema {ema_loss:.4f}) mse {mse.item():.4f} {time.time() - t0:.0f}s")
    vae.eval().requires_grad_(False)
    vae.save_pretrained(out, safe_serialization=True)
    log(f"decoder done in {time.time() - t0:.0f}s, final smoothed loss {ema_loss:.4f}")
    return vae


def encode_latents(vae, rgba: np.ndarray, path: Path, n_sprites: int | None = None):
    """The scaled latent means of ``rgba``; images after the first ``n_sprites`` (terrain textures) are encoded
    with circular padding, so their latents are as periodic as the textures and carry no frame at the border."""
    import torch

    from spriteforge.engines.torch_models.generation import circular

    if path.exists():
        return torch.load(path, weights_only=True)
    x_all = to_tensor(rgba)
    n_sprites = len(x_all) if n_sprites is None else n_sprites
    parts = []
    with torch.no_grad():
        for i in range(0, len(x_all), 256):
            j = min(i + 256, len(x_all))
            if j <= n_sprites:
                parts.append(vae.encode(x_all[i:j]).latent_dist.mode())
                continue
            k = max(i, n_sprites)
            if k > i:
                parts.append(vae.encode(x_all[i:k]).latent_dist.mode())
            with circular(vae.encoder, True):
                parts.append(vae.encode(x_all[k:j]).latent_dist.mode())
    z = torch.cat(parts) * vae.config.scaling_factor
    torch.save(z, path)
    return z


# --------------------------------------------------------------------------- stage 3: DiT + T5


def t5_config(vocab_size: int):
    return dict(
        vocab_size=vocab_size, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False, tie_word_embeddings=False,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )


def dit_config():
    return dict(
        num_attention_heads=4, attention_head_dim=32, in_channels=4, out_channels=4, num_layers=6,
        dropout=0.0, norm_num_groups=32, cross_attention_dim=128, attention_bias=True, sample_size=8, patch_size=2,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, upcast_attention=False, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, interpolation_scale=None, use_additional_conditions=False,
        caption_channels=64, attention_type="default",
    )


def tokenize(tok, captions):
    import torch

    enc = tok(list(captions), padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
    return enc.input_ids, enc.attention_mask


def betas_alphas():
    import torch

    betas = torch.linspace(0.0001, 0.02, 1000, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, 0).float()


def dit_loss(transformer, te, ids, mask, z0, g, acp, min_snr: float = 0.0):
    """epsilon-prediction MSE at uniform timesteps; with ``min_snr`` > 0 each sample is weighted by
    min(SNR, min_snr) / SNR (Min-SNR weighting): the nearly clean timesteps, where the noise is easy to read
    and the global shape is already fixed, count less than the noisy ones that decide the silhouette."""
    import torch

    b = z0.shape[0]
    t = torch.randint(0, 1000, (b,), generator=g)
    noise = torch.randn(z0.shape, generator=g)
    a = acp[t].view(b, 1, 1, 1)
    zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
    emb = te(input_ids=ids, attention_mask=mask).last_hidden_state
    pred = transformer(zt, encoder_hidden_states=emb, encoder_attention_mask=mask, timestep=t,
                       added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0]
    return torch.nn.functional.mse_loss(pred, noise)


def remap_vocabulary(te, old_tok, tok, seed: int):
    """``te`` (trained with ``old_tok``) for ``tok``'s ids: each piece both know keeps its embedding row; a new
    piece starts at the mean of the old rows plus a little noise (seeded)."""
    import torch
    import transformers

    old_emb = te.get_input_embeddings().weight.detach()
    cfg = te.config.to_dict()
    cfg["vocab_size"] = len(tok)
    new = transformers.T5EncoderModel(transformers.T5Config(**cfg))
    sd = {k: v for k, v in te.state_dict().items() if "embed_tokens" not in k and k != "shared.weight"}
    new.load_state_dict(sd, strict=False)
    g = torch.Generator().manual_seed(seed + 30)
    rows = old_emb.mean(0, keepdim=True) + 0.5 * old_emb.std(0, keepdim=True) * torch.randn(len(tok), old_emb.shape[1], generator=g)
    old_ids = old_tok.get_vocab()
    kept = 0
    for piece, i in tok.get_vocab().items():
        if piece in old_ids:
            rows[i] = old_emb[old_ids[piece]]
            kept += 1
    with torch.no_grad():
        new.get_input_embeddings().weight.copy_(rows)
    log(f"text encoder vocabulary {len(old_ids)} -> {len(tok)} ({kept} pieces kept, {len(tok) - kept} new)")
    return new


def train_dit(work: Path, tok, lat, caps, steps: int, batch: int, seed: int, logw, lr: float = 4e-4, min_snr: float = 0.0,
              init: Path | None = None, n_sprites: int | None = None):
    import torch
    import transformers
    from diffusers import PixArtTransformer2DModel

    out_t, out_e = work / "transformer", work / "text_encoder"
    if (out_t / "config.json").exists() and (out_e / "config.json").exists():
        return (PixArtTransformer2DModel.from_pretrained(out_t, local_files_only=True),
                transformers.T5EncoderModel.from_pretrained(out_e, local_files_only=True))
    torch.manual_seed(seed + 1)
    if init is not None:  # continue from an earlier model's DiT + text encoder (the EMA starts there too)
        transformer = PixArtTransformer2DModel.from_pretrained(init / "transformer", local_files_only=True, torch_dtype=torch.float32)
        te = transformers.T5EncoderModel.from_pretrained(init / "text_encoder", local_files_only=True, dtype=torch.float32)
        if te.config.vocab_size != len(tok):  # new words (terrains): every known word keeps its learned embedding
            te = remap_vocabulary(te, transformers.T5Tokenizer.from_pretrained(init / "tokenizer", local_files_only=True), tok, seed)
        assert dict(transformer.config)["num_layers"] == dit_config()["num_layers"] and te.config.vocab_size == len(tok)
        transformer.train()
        te.train()
    else:
        transformer = PixArtTransformer2DModel(**dit_config())
        te = transformers.T5EncoderModel(transformers.T5Config(**t5_config(len(tok))))
    ema_t, ema_e = copy.deepcopy(transformer).requires_grad_(False), copy.deepcopy(te).requires_grad_(False)
    params = list(transformer.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    warm = 200 if init is None else 50
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    ids_all, mask_all = tokenize(tok, caps)
    empty_ids, empty_mask = tokenize(tok, [""])
    g = torch.Generator().manual_seed(seed + 2)
    acp = betas_alphas()
    t0 = time.time()
    ema_loss = None
    for step in range(steps):
        idx = torch.randint(0, lat.shape[0], (batch,), generator=g)
        ids, mask = ids_all[idx].clone(), mask_all[idx].clone()
        drop = torch.rand(batch, generator=g) < 0.1
        ids[drop], mask[drop] = empty_ids[0], empty_mask[0]
        z0 = lat[idx]
        if n_sprites is not None and n_sprites < len(lat):  # a periodic texture rolled by whole patches is one too:
            tex = (idx >= n_sprites).nonzero().flatten()     # the pack's seamless sampling rolls it so every step
            if len(tex):
                z0 = z0.clone()
                dy, dx = (2 * torch.randint(0, lat.shape[-1] // 2, (2,), generator=g)).tolist()
                z0[tex] = z0[tex].roll(shifts=(dy, dx), dims=(-2, -1))
        loss = dit_loss(transformer, te, ids, mask, z0, g, acp, min_snr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for m, e in ((transformer, ema_t), (te, ema_e)):
                for p, q in zip(m.parameters(), e.parameters()):
                    q.lerp_(p, 1 - decay)
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        if step % 25 == 0 or step == steps - 1:
            logw("dit", step, loss.item(), loss_ema=ema_loss, elapsed=time.time() - t0)
            if step % 100 == 0:
                log(f"dit step {step}/{steps} loss {loss.item():.4f} (ema {ema_loss:.4f}) {time.time() - t0:.0f}s")
    log(f"dit done in {time.time() - t0:.0f}s, final smoothed loss {ema_loss:.4f}")
    ema_t.save_pretrained(out_t, safe_serialization=True)
    ema_e.save_pretrained(out_e, safe_serialization=True)
    return ema_t, ema_e


# --------------------------------------------------------------------------- stage 4: LoRA


class LoRALinear:
    """Wraps an nn.Linear: y = W x + b + scale * B(A(x)); A ~ kaiming, B = 0 (starts as the identity)."""

    def __init__(self, base, rank: int, alpha: float, g):
        import torch

        self.base = base
        self.rank, self.alpha = rank, alpha
        self.A = torch.nn.Parameter(torch.randn(rank, base.in_features, generator=g) / math.sqrt(base.in_features))
        self.B = torch.nn.Parameter(torch.zeros(base.out_features, rank))
        self.orig = base.forward
        lora = self

        def forward(x):
            return lora.orig(x) + (x @ lora.A.t() @ lora.B.t()) * (lora.alpha / lora.rank)

        base.forward = forward

    def remove(self):
        self.base.forward = self.orig


def add_lora(transformer, rank: int, alpha: float, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    layers = {}
    for i, blk in enumerate(transformer.transformer_blocks):
        for t in LORA_TARGETS:
            mod = blk.get_submodule(t)
            layers[f"transformer_blocks.{i}.{t}"] = LoRALinear(mod, rank, alpha, g)
    return layers


def train_lora(work: Path, transformer, te, tok, lat_night, caps, steps: int, batch: int, seed: int, logw, rank=4):
    import torch
    from safetensors.torch import load_file

    path = work / "lora_night.safetensors"
    if path.exists():
        return load_file(path)
    transformer.requires_grad_(False)
    te.requires_grad_(False)
    layers = add_lora(transformer, rank, float(rank), seed + 10)
    params = [p for l in layers.values() for p in (l.A, l.B)]
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0)
    ids_all, mask_all = tokenize(tok, caps)
    g = torch.Generator().manual_seed(seed + 11)
    acp = betas_alphas()
    t0 = time.time()
    ema_loss = None
    for step in range(steps):
        idx = torch.randint(0, lat_night.shape[0], (batch,), generator=g)
        loss = dit_loss(transformer, te, ids_all[idx], mask_all[idx], lat_night[idx], g, acp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        if step % 25 == 0 or step == steps - 1:
            logw("lora", step, loss.item(), loss_ema=ema_loss, elapsed=time.time() - t0)
            if step % 100 == 0:
                log(f"lora step {step}/{steps} loss {loss.item():.4f} (ema {ema_loss:.4f}) {time.time() - t0:.0f}s")
    sd = {}
    for name, l in layers.items():
        sd[f"transformer.{name}.lora_A.weight"] = l.A.detach().clone().contiguous()
        sd[f"transformer.{name}.lora_B.weight"] = l.B.detach().clone().contiguous()
        l.remove()
    from safetensors.torch import save_file

    save_file(sd, path)
    log(f"lora done in {time.time() - t0:.0f}s, final smoothed loss {ema_loss:.4f}")
    return sd


# --------------------------------------------------------------------------- stage 5: save


SCHEDULER = {
    "_class_name": "DPMSolverMultistepScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
    "beta_schedule": "linear", "trained_betas": None, "solver_order": 2, "prediction_type": "epsilon",
    "thresholding": False, "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0, "algorithm_type": "dpmsolver++",
    "solver_type": "midpoint", "lower_order_final": True, "euler_at_final": False, "use_karras_sigmas": False,
    "lambda_min_clipped": -float("inf"), "variance_type": None, "timestep_spacing": "linspace", "steps_offset": 0,
}


def save_model(out: Path, work: Path, tok, vae, transformer, te, lora_sd, rank: int):
    import torch
    from diffusers import DPMSolverMultistepScheduler
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    for name, m in (("vae", vae), ("transformer", transformer), ("text_encoder", te)):
        m = copy.deepcopy(m).to(torch.float16)
        m.save_pretrained(out / name, safe_serialization=True)
        cfg_path = out / name / "config.json"  # no local path of the training machine in the shipped config
        cfg_json = json.loads(cfg_path.read_text())
        if cfg_json.pop("_name_or_path", None) is not None:
            cfg_path.write_text(json.dumps(cfg_json, indent=2, sort_keys=True) + "\n")
    tok.save_pretrained(out / "tokenizer")
    cfg = {k: v for k, v in SCHEDULER.items() if not k.startswith("_")}
    DPMSolverMultistepScheduler(**cfg).save_pretrained(out / "scheduler")
    import diffusers

    index = {
        "_class_name": "PixArtSigmaPipeline", "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "DPMSolverMultistepScheduler"], "text_encoder": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "T5Tokenizer"], "transformer": ["diffusers", "PixArtTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "loras").mkdir(exist_ok=True)
    meta = {
        "format": "pt",
        "lora_adapter_metadata": json.dumps({"transformer.r": rank, "transformer.lora_alpha": rank,
                                             "transformer.target_modules": sorted(set(LORA_TARGETS))}, sort_keys=True),
        "spriteforge.style": "night palette: darker, blue-shifted colours",
        "spriteforge.base_model": "spriteforge demo_model",
    }
    save_file({k: v.to(torch.float16) for k, v in lora_sd.items()}, out / "loras" / "night.safetensors", metadata=meta)


def loss_curve_png(rows, path: Path):
    """The loss curves (log scale) of the three stages, drawn with PIL."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    stages = [s for s in ("vae", "vae_decoder", "dit", "lora") if any(r["stage"] == s for r in rows)]
    W, H, pad = 360, 240, 40
    img = Image.new("RGB", (W * len(stages), H), (255, 255, 255))
    d = ImageDraw.Draw(img)
    for k, s in enumerate(stages):
        pts = [(r["step"], r["loss"]) for r in rows if r["stage"] == s]
        sm = [(r["step"], r.get("loss_ema") or r["loss"]) for r in rows if r["stage"] == s]
        xs = [p[0] for p in pts]
        ys = [math.log10(max(p[1], 1e-6)) for p in pts + sm]
        x0, x1 = min(xs), max(max(xs), 1)
        y0, y1 = min(ys), max(ys)
        if y1 - y0 < 1e-6:
            y1 = y0 + 1
        ox = k * W

        def P(x, y):
            return (ox + pad + (x - x0) / max(1, x1 - x0) * (W - 1.5 * pad), H - pad - (math.log10(max(y, 1e-6)) - y0) / (y1 - y0) * (H - 1.7 * pad))

        d.rectangle([ox + pad, pad * 0.7, ox + W - pad / 2, H - pad], outline=(0, 0, 0))
        d.line([P(*p) for p in pts], fill=(150, 170, 230), width=1)
        d.line([P(*p) for p in sm], fill=(20, 40, 160), width=2)
        d.text((ox + pad, 8), f"{s} loss (log10 scale)", fill=(0, 0, 0), font=font)
        d.text((ox + pad, H - pad + 6), f"step 0 .. {x1}", fill=(0, 0, 0), font=font)
        d.text((ox + 2, pad * 0.7), f"{10 ** y1:.3g}", fill=(0, 0, 0), font=font)
        d.text((ox + 2, H - pad - 10), f"{10 ** y0:.3g}", fill=(0, 0, 0), font=font)
    img.save(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "demo_model"))
    ap.add_argument("--work", default="/tmp/spriteforge_demo_train")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-sprites", type=int, default=24000)
    ap.add_argument("--n-night", type=int, default=4000)
    ap.add_argument("--vae-steps", type=int, default=700)
    ap.add_argument("--vae-batch", type=int, default=24)
    ap.add_argument("--decoder-steps", type=int, default=800)
    ap.add_argument("--dit-steps", type=int, default=2800)
    ap.add_argument("--dit-lr", type=float, default=4e-4)
    ap.add_argument("--init-dit", default=None, metavar="MODEL_DIR",
                    help="start the DiT stage from this earlier output folder's transformer/ and text_encoder/ instead of "
                         "random weights (a continuation: --dit-steps more steps; recorded in training.json)")
    ap.add_argument("--min-snr", type=float, default=0.0,
                    help="Min-SNR-gamma loss weighting of the DiT stage (0: plain MSE; the shipped model's two "
                         "continuation runs used 5, see demo_model/MODEL_CARD.md)")
    ap.add_argument("--dit-batch", type=int, default=64)
    ap.add_argument("--lora-steps", type=int, default=300)
    ap.add_argument("--lora-batch", type=int, default=32)
    ap.add_argument("--lora-rank", type=int, default=4)
    ap.add_argument("--reuse-vae", default=None, metavar="MODEL_DIR",
                    help="take the VAE (both VAE stages) from an earlier output folder of this script instead of training "
                         "it (the VAE stages do not depend on the DiT settings; recorded in training.json)")
    ap.add_argument("--n-terrain", type=int, default=0,
                    help="seamless terrain textures (grass, water, sand, stone; spriteforge.sprites.terrain) added to the "
                         "sprites, captioned with the terrain's name")
    ap.add_argument("--finetune-vae", default=None, metavar="MODEL_DIR",
                    help="fine-tune this earlier output folder's VAE on sprites and terrains (--vae-steps steps), the sprites' "
                         "latents held to the old encoder's, instead of training one (both VAE stages)")
    ap.add_argument("--stage", choices=["all", "data", "vae", "decoder", "dit", "lora", "save"], default="all")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "training_log.csv"
    rows = []
    if log_path.exists():
        with open(log_path) as fh:
            for r in csv.DictReader(fh):
                rows.append({k: (v if k == "stage" else (float(v) if v not in ("", None) else None)) for k, v in r.items()})
    fields = ["stage", "step", "loss", "loss_ema", "mse", "kl", "elapsed"]

    def logw(stage, step, loss, **kw):
        rows.append({"stage": stage, "step": step, "loss": loss, **kw})
        new = not log_path.exists()
        with open(log_path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            if new:
                w.writeheader()
            w.writerow({"stage": stage, "step": step, "loss": f"{loss:.6f}", **{k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in kw.items()}})

    times = json.loads((work / "times.json").read_text()) if (work / "times.json").exists() else {}
    cpu_times = json.loads((work / "cpu_times.json").read_text()) if (work / "cpu_times.json").exists() else {}

    def timed(name, fn):
        # wall seconds and CPU seconds of this process (all threads; the machine may be shared, so wall time
        # can be longer than the work itself)
        t, c = time.time(), time.process_time()
        r = fn()
        for store, fname, value in ((times, "times.json", time.time() - t), (cpu_times, "cpu_times.json", time.process_time() - c)):
            if name not in store:
                # merge with the file: a stage may have run in another process beside this one
                disk = json.loads((work / fname).read_text()) if (work / fname).exists() else {}
                store.update({k: v for k, v in disk.items() if k not in store})
                store.setdefault(name, round(value, 1))
                (work / fname).write_text(json.dumps(store, indent=2))
        return r

    log(f"torch {torch.__version__}, {args.threads} thread(s), work {work}")
    if args.reuse_vae and not (work / "vae" / "config.json").exists():
        from diffusers import AutoencoderKL

        # the shipped VAE is the decoder stage's output: its encoder (frozen in that stage) is the vae stage's
        v = AutoencoderKL.from_pretrained(Path(args.reuse_vae) / "vae", local_files_only=True, torch_dtype=torch.float32)
        v.save_pretrained(work / "vae", safe_serialization=True)
        v.save_pretrained(work / "vae_decoder", safe_serialization=True)
        log(f"VAE taken from {args.reuse_vae} (scaling factor {v.config.scaling_factor:.4f})")
    tok = timed("tokenizer", lambda: build_tokenizer(work))
    rgba, caps = timed("data", lambda: build_data(work, args.n_sprites, args.seed, args.n_terrain))
    log(f"{len(caps)} sprites, vocabulary {len(tok)} tokens")
    if args.stage == "data":
        return 0
    if args.finetune_vae:
        vae = timed("vae", lambda: finetune_vae(work, Path(args.finetune_vae), rgba, args.n_sprites, args.vae_steps,
                                                args.vae_batch, args.seed, logw))
    else:
        vae = timed("vae", lambda: train_vae(work, rgba, args.vae_steps, args.vae_batch, args.seed, logw))
    vae.eval().requires_grad_(False)
    lat = timed("latents", lambda: encode_latents(vae, rgba, work / "latents.pt", args.n_sprites))
    if args.stage == "vae":
        return 0
    vae_out = timed("vae_decoder", lambda: train_decoder(work, vae, rgba, args.decoder_steps, args.vae_batch, args.seed, logw,
                                                                      n_sprites=args.n_sprites))
    if args.stage == "decoder":
        return 0
    transformer, te = timed("dit", lambda: train_dit(work, tok, lat, caps, args.dit_steps, args.dit_batch, args.seed, logw,
                                                                   lr=args.dit_lr, min_snr=args.min_snr,
                                                                   init=Path(args.init_dit) if args.init_dit else None,
                                                                   n_sprites=args.n_sprites))
    transformer.eval()
    te.eval()
    if args.stage == "dit":
        return 0
    from spriteforge import sprites as S

    n_night = min(args.n_night, len(caps))
    lat_night = timed("latents_night", lambda: encode_latents(vae, np.stack([night(x) for x in rgba[:n_night]]), work / "latents_night.pt"))
    lora_sd = timed("lora", lambda: train_lora(work, transformer, te, tok, lat_night, caps[:n_night], args.lora_steps, args.lora_batch,
                                               args.seed, logw, rank=args.lora_rank))
    if args.stage == "lora":
        return 0
    out = Path(args.out)
    save_model(out, work, tok, vae_out, transformer, te, lora_sd, args.lora_rank)
    with open(log_path) as fh:
        (out / "training_log.csv").write_text(fh.read())
    loss_curve_png(rows, out / "loss_curve.png")
    n_params = {k: sum(p.numel() for p in m.parameters()) for k, m in (("vae", vae_out), ("transformer", transformer), ("text_encoder", te))}
    last = {s: next((r for r in reversed(rows) if r["stage"] == s), None) for s in ("vae", "vae_decoder", "dit", "lora")}
    info = {
        "seed": args.seed, "threads": args.threads, "torch": torch.__version__, "args": vars(args), "times_s": times,
        "cpu_times_s": cpu_times, "total_s": round(sum(times.values()), 1), "total_cpu_s": round(sum(cpu_times.values()), 1),
        "parameters": n_params, "lora_parameters": sum(v.numel() for v in lora_sd.values()),
        "final": {s: ({"step": r["step"], "loss": r["loss"], "loss_ema": r.get("loss_ema")} if r else None) for s, r in last.items()},
        "vae_scaling_factor": vae.config.scaling_factor,
    }
    for opt, key in ((args.reuse_vae or args.finetune_vae, "vae_reused_from"), (args.init_dit, "dit_initialised_from")):
        if opt:  # what the earlier model's own training was (its arguments, times, losses)
            prev = Path(opt) / "training.json"
            info[key] = json.loads(prev.read_text()) if prev.exists() else str(opt)
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    log(f"wrote {out}: {json.dumps(info['times_s'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
